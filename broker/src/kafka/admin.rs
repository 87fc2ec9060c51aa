//! Kafka's CreateTopics, DeleteTopics and CreatePartitions, through the
//! controller as the native ones (`api::admin::{create_topic, delete_topic,
//! grow_topic}`).

use super::str_bytes;
use crate::api::admin::{create_topic, delete_topic, grow_topic};
use crate::shard::Shard;
use fjord_net::ErrorCode;
use fjord_net::kafka::kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use fjord_net::kafka::kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use fjord_net::kafka::kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use fjord_net::kafka::kafka_protocol::messages::create_topics_response::{
    CreatableTopicResult, CreateTopicsResponse,
};
use fjord_net::kafka::kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use fjord_net::kafka::kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};

/// Partitions of a topic created without a count (Kafka's `num.partitions`).
const PARTITIONS_DEFAULT: i64 = 1;

pub(super) async fn create_topics(
    shard: &Shard,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.as_str().to_owned();
        let (error_code, error_message) = if !topic.assignments.is_empty() {
            (
                ErrorCode::InvalidRequest.code(),
                Some("replica assignments are not supported: Fjord places replicas".to_owned()),
            )
        } else if request.validate_only {
            validate(shard, &name)
        } else {
            let partitions = match topic.num_partitions {
                -1 => PARTITIONS_DEFAULT,
                n => i64::from(n),
            };
            let configs = topic
                .configs
                .iter()
                .filter_map(|c| {
                    Some((
                        c.name.as_str().to_owned(),
                        c.value.as_ref()?.as_str().to_owned(),
                    ))
                })
                .collect();
            let rf = i32::from(topic.replication_factor);
            create_topic(shard, &name, partitions, rf, configs).await
        };
        let mut result = CreatableTopicResult::default()
            .with_name(topic.name)
            .with_error_code(error_code)
            .with_error_message(error_message.map(str_bytes))
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        if let Some(meta) = shard
            .metadata()
            .topics
            .get(&name)
            .filter(|_| error_code == 0)
        {
            let replicas = meta
                .partitions
                .first()
                .map_or(1, |p| p.replicas.len().max(1));
            result = result
                .with_topic_id(super::topic_uuid(meta.id))
                .with_num_partitions(meta.partitions.len() as i32)
                .with_replication_factor(i16::try_from(replicas).unwrap_or(i16::MAX));
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// What a create would answer, creating nothing (`validate_only`).
fn validate(shard: &Shard, name: &str) -> (i16, Option<String>) {
    if let Err(e) = fjord_core::topic::validate_name(name) {
        return (ErrorCode::InvalidTopicException.code(), Some(e.to_string()));
    }
    if shard.metadata().topics.contains_key(name) {
        return (
            ErrorCode::TopicAlreadyExists.code(),
            Some(format!("topic {name:?} already exists")),
        );
    }
    (0, None)
}

pub(super) async fn delete_topics(
    shard: &Shard,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut responses = Vec::with_capacity(request.topic_names.len());
    for name in request.topic_names {
        let (error_code, error_message) = delete_topic(shard, name.as_str()).await;
        responses.push(
            DeletableTopicResult::default()
                .with_name(Some(name))
                .with_error_code(error_code)
                .with_error_message(error_message.map(str_bytes)),
        );
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub(super) async fn create_partitions(
    shard: &Shard,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let (error_code, error_message) = if topic.assignments.is_some() {
            (
                ErrorCode::InvalidRequest.code(),
                Some("replica assignments are not supported: Fjord places replicas".to_owned()),
            )
        } else {
            grow_topic(
                shard,
                topic.name.as_str(),
                i64::from(topic.count),
                request.validate_only,
            )
            .await
        };
        results.push(
            CreatePartitionsTopicResult::default()
                .with_name(topic.name)
                .with_error_code(error_code)
                .with_error_message(error_message.map(str_bytes)),
        );
    }
    CreatePartitionsResponse::default().with_results(results)
}
