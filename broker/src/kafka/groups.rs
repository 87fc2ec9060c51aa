//! Kafka's FindCoordinator, OffsetCommit and OffsetFetch, mapped onto the
//! group coordinator (`crate::group`, reached through
//! `api::groups::coordinate`). Commits with generation -1 and no member are
//! the "simple consumer" commits the coordinator takes for groups without
//! members; the classic JoinGroup/SyncGroup protocol is not served yet.

use super::metadata::{broker_id, kafka_address};
use super::{str_bytes, text};
use crate::api::groups::{coordinate, coordinator};
use crate::shard::Shard;
use fjord_net::kafka::kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use fjord_net::kafka::kafka_protocol::messages::find_coordinator_response::{
    Coordinator, FindCoordinatorResponse,
};
use fjord_net::kafka::kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use fjord_net::kafka::kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use fjord_net::kafka::kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use fjord_net::kafka::kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use fjord_net::kafka::kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use fjord_net::kafka::kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use fjord_net::kafka::kafka_protocol::messages::{BrokerId, ProducerId, TopicName};
use fjord_net::{ErrorCode, wire};

/// FindCoordinator's key type for groups (1 is transactions).
const KEY_TYPE_GROUP: i8 = 0;
/// The first version that asks for many keys at once.
const BATCHED_VERSION: i16 = 4;

pub(super) async fn find_coordinator(
    shard: &Shard,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    if version >= BATCHED_VERSION {
        let mut coordinators = Vec::with_capacity(request.coordinator_keys.len());
        for key in request.coordinator_keys {
            let found = locate(shard, request.key_type, key.as_str()).await;
            coordinators.push(found.with_key(key));
        }
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let found = locate(shard, request.key_type, request.key.as_str()).await;
    FindCoordinatorResponse::default()
        .with_error_code(found.error_code)
        .with_error_message(found.error_message)
        .with_node_id(found.node_id)
        .with_host(found.host)
        .with_port(found.port)
}

/// One key's coordinator: the node leading its `__consumer_offsets`
/// partition, at its Kafka listener.
async fn locate(shard: &Shard, key_type: i8, key: &str) -> Coordinator {
    let failed = |code: ErrorCode, message: &str| {
        Coordinator::default()
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(message)))
            .with_node_id(BrokerId(-1))
            .with_port(-1)
    };
    if key_type != KEY_TYPE_GROUP {
        return failed(
            ErrorCode::InvalidRequest,
            "transactions are not supported yet",
        );
    }
    let found = match coordinator(shard, key).await {
        Ok(found) => found,
        Err((code, message)) => return failed(code, message),
    };
    let metadata = shard.metadata();
    let node = u32::try_from(found.info.leader).unwrap_or(u32::MAX);
    match kafka_address(shard, &metadata, node, found.info.shard) {
        Some((host, port)) => Coordinator::default()
            .with_node_id(BrokerId(broker_id(
                shard,
                found.info.leader,
                found.info.shard,
            )))
            .with_host(str_bytes(host))
            .with_port(i32::from(port)),
        None => failed(
            ErrorCode::CoordinatorNotAvailable,
            "the coordinator's node has no Kafka listener registered",
        ),
    }
}

pub(super) async fn offset_commit(
    shard: &Shard,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = request.group_id.as_str().to_owned();
    let topics = request
        .topics
        .iter()
        .map(|t| wire::OffsetCommitTopicT {
            name: Some(t.name.as_str().to_owned()),
            partitions: Some(
                t.partitions
                    .iter()
                    .map(|p| wire::OffsetCommitPartitionT {
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(text),
                    })
                    .collect(),
            ),
        })
        .collect();
    let native = wire::OffsetCommitRequestT {
        group_id: Some(group.clone()),
        member_id: Some(text(&request.member_id)),
        member_epoch: request.generation_id_or_member_epoch,
        topics: Some(topics),
    };
    let body = wire::RequestT::OffsetCommitRequest(Box::new(native));
    let answered = match coordinate(shard, &group, body).await {
        Ok(wire::ResponseT::OffsetCommitResponse(r)) => Ok(*r),
        Ok(_) => Err(ErrorCode::UnknownServerError),
        Err(code) => Err(code),
    };
    // Kafka's OffsetCommit has no error for the whole request: one that
    // failed as a whole fails every partition.
    let whole = match &answered {
        Ok(r) if r.error_code != 0 => r.error_code,
        Ok(_) => 0,
        Err(code) => code.code(),
    };
    let codes = answered.ok().and_then(|r| r.topics).unwrap_or_default();
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let done = codes
                .iter()
                .find(|c| c.name.as_deref() == Some(t.name.as_str()));
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if whole != 0 {
                        whole
                    } else {
                        done.and_then(|c| c.partitions.as_ref())
                            .and_then(|ps| ps.iter().find(|r| r.partition == p.partition_index))
                            .map_or(ErrorCode::UnknownServerError.code(), |r| r.error_code)
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

pub(super) async fn offset_fetch(
    shard: &Shard,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let group = request.group_id.as_str().to_owned();
    let topics = request.topics.as_ref().map(|topics| {
        topics
            .iter()
            .map(|t| wire::OffsetFetchTopicT {
                name: Some(t.name.as_str().to_owned()),
                partitions: Some(t.partition_indexes.clone()),
            })
            .collect()
    });
    let native = wire::OffsetFetchRequestT {
        group_id: Some(group.clone()),
        topics,
    };
    let body = wire::RequestT::OffsetFetchRequest(Box::new(native));
    let answered = match coordinate(shard, &group, body).await {
        Ok(wire::ResponseT::OffsetFetchResponse(r)) => *r,
        Ok(_) => return failed_fetch(ErrorCode::UnknownServerError),
        Err(code) => return failed_fetch(code),
    };
    if answered.error_code != 0 {
        return OffsetFetchResponse::default().with_error_code(answered.error_code);
    }
    let topics = answered
        .topics
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(p.partition)
                        .with_committed_offset(p.offset)
                        .with_committed_leader_epoch(p.leader_epoch)
                        .with_metadata(Some(str_bytes(p.metadata.unwrap_or_default())))
                        .with_error_code(p.error_code)
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(t.name.unwrap_or_default())))
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

fn failed_fetch(code: ErrorCode) -> OffsetFetchResponse {
    OffsetFetchResponse::default().with_error_code(code.code())
}

/// InitProducerId for idempotent producers (the Java client and
/// kafka-python enable idempotence by default); transactional ids are
/// refused until transactions exist.
pub(super) async fn init_producer_id(
    shard: &Shard,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let failed = |code: ErrorCode| {
        InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.is_empty())
    {
        return failed(ErrorCode::TransactionalIdAuthorizationFailed);
    }
    match crate::api::producer_id::producer_id_for(
        shard,
        request.producer_id.0,
        request.producer_epoch,
    )
    .await
    {
        Ok((id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Err(code) => failed(code),
    }
}
