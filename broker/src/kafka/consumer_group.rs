//! KIP-848's ConsumerGroupHeartbeat and ConsumerGroupDescribe on the Kafka
//! port, mapped onto the native coordinator's (`api::groups`, the same membership, epochs and
//! server-side assignment Fjord's own consumers use). Kafka names topics by
//! id here: ids become names through the metadata ([`super::topic_uuid`])
//! on the way in and back on the way out; an owned partition of a topic
//! that is gone is left out, as the coordinator would drop it.

use super::{str_bytes, text, topic_uuid};
use crate::api::groups::coordinate;
use crate::shard::Shard;
use fjord_net::kafka::kafka_protocol::messages::TopicName;
use fjord_net::kafka::kafka_protocol::messages::consumer_group_describe_request::ConsumerGroupDescribeRequest;
use fjord_net::kafka::kafka_protocol::messages::consumer_group_describe_response::{
    self as describe, ConsumerGroupDescribeResponse, DescribedGroup, Member,
};
use fjord_net::kafka::kafka_protocol::messages::consumer_group_heartbeat_request::ConsumerGroupHeartbeatRequest;
use fjord_net::kafka::kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment, ConsumerGroupHeartbeatResponse, TopicPartitions,
};
use fjord_net::kafka::kafka_protocol::protocol::StrBytes;
use fjord_net::{ErrorCode, wire};
use fjord_replication::metadata::ClusterMetadata;
use uuid::Uuid;

pub(super) async fn consumer_group_heartbeat(
    shard: &Shard,
    request: ConsumerGroupHeartbeatRequest,
    client_id: Option<String>,
) -> ConsumerGroupHeartbeatResponse {
    let metadata = shard.metadata();
    let group = request.group_id.as_str().to_owned();
    let owned = request.topic_partitions.map(|owned| {
        owned
            .into_iter()
            .filter_map(|tp| {
                Some(wire::TopicPartitionsT {
                    name: Some(topic_name(&metadata, tp.topic_id)?),
                    partitions: Some(tp.partitions),
                })
            })
            .collect()
    });
    let native = wire::ConsumerGroupHeartbeatRequestT {
        group_id: Some(group.clone()),
        member_id: Some(text(&request.member_id)),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.as_ref().map(text),
        client_id,
        // The coordinator's default: Kafka's session timeout is the
        // broker's, not the member's.
        session_timeout_ms: -1,
        subscribed_topic_names: request
            .subscribed_topic_names
            .map(|names| names.iter().map(|n| n.as_str().to_owned()).collect()),
        subscribed_topic_regex: request.subscribed_topic_regex.as_ref().map(text),
        owned,
    };
    let body = wire::RequestT::ConsumerGroupHeartbeatRequest(Box::new(native));
    let answer = match coordinate(shard, &group, body).await {
        Ok(wire::ResponseT::ConsumerGroupHeartbeatResponse(r)) => *r,
        Ok(_) => return failed(ErrorCode::UnknownServerError),
        Err(code) => return failed(code),
    };
    let metadata = shard.metadata();
    let assignment = answer.assignment.map(|assigned| {
        let topic_partitions = assigned
            .into_iter()
            .filter_map(|tp| {
                let id = metadata.topics.get(tp.name.as_deref()?)?.id;
                Some(
                    TopicPartitions::default()
                        .with_topic_id(topic_uuid(id))
                        .with_partitions(tp.partitions.unwrap_or_default()),
                )
            })
            .collect();
        Assignment::default().with_topic_partitions(topic_partitions)
    });
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(answer.error_code)
        .with_error_message(answer.error_message.map(str_bytes))
        .with_member_id(answer.member_id.map(str_bytes))
        .with_member_epoch(answer.member_epoch)
        .with_heartbeat_interval_ms(answer.heartbeat_interval_ms)
        .with_assignment(assignment)
}

/// Kafka's `ConsumerGroupDescribe`: each consumer group (KIP-848's, native
/// or Kafka members alike) with its epoch, members, their subscriptions and
/// their current and target assignments, topics by id and name. A classic
/// group, or none, is `GROUP_ID_NOT_FOUND`, as Kafka answers.
pub(super) async fn consumer_group_describe(
    shard: &Shard,
    request: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let mut groups = Vec::with_capacity(request.group_ids.len());
    for id in request.group_ids {
        let name = id.as_str().to_owned();
        let body = wire::RequestT::DescribeGroupsRequest(Box::new(wire::DescribeGroupsRequestT {
            group_ids: Some(vec![name.clone()]),
        }));
        let found = match coordinate(shard, &name, body).await {
            Ok(wire::ResponseT::DescribeGroupsResponse(r)) => r
                .groups
                .into_iter()
                .flatten()
                .next()
                .ok_or(ErrorCode::GroupIdNotFound),
            Ok(_) => Err(ErrorCode::UnknownServerError),
            Err(code) => Err(code),
        };
        let described = DescribedGroup::default()
            .with_group_id(id)
            .with_authorized_operations(i32::MIN);
        groups.push(match found {
            Ok(g) if g.error_code == 0 => {
                let metadata = shard.metadata();
                let members = g
                    .members
                    .into_iter()
                    .flatten()
                    .map(|m| member(&metadata, m))
                    .collect();
                described
                    .with_group_state(str_bytes(g.state.unwrap_or_default()))
                    .with_group_epoch(g.group_epoch)
                    // The target assignment is computed with each epoch.
                    .with_assignment_epoch(g.group_epoch)
                    .with_assignor_name(str_bytes("uniform"))
                    .with_members(members)
            }
            Ok(g) => described.with_error_code(g.error_code),
            Err(code) => described.with_error_code(code.code()),
        });
    }
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}

/// One member as ConsumerGroupDescribe gives it.
fn member(metadata: &ClusterMetadata, m: wire::GroupMemberT) -> Member {
    let assignment = |owned: Option<Vec<wire::TopicPartitionsT>>| {
        let topic_partitions = owned
            .into_iter()
            .flatten()
            .filter_map(|tp| {
                let name = tp.name?;
                let id = metadata.topics.get(&name)?.id;
                Some(
                    describe::TopicPartitions::default()
                        .with_topic_id(topic_uuid(id))
                        .with_topic_name(TopicName(str_bytes(name)))
                        .with_partitions(tp.partitions.unwrap_or_default()),
                )
            })
            .collect();
        describe::Assignment::default().with_topic_partitions(topic_partitions)
    };
    Member::default()
        // A KIP-848 member (1), not a classic one (0).
        .with_member_type(1)
        .with_member_id(str_bytes(m.member_id.unwrap_or_default()))
        .with_instance_id(m.instance_id.map(str_bytes))
        .with_member_epoch(m.member_epoch)
        .with_client_id(str_bytes(m.client_id.unwrap_or_default()))
        .with_subscribed_topic_names(
            m.subscribed_topic_names
                .into_iter()
                .flatten()
                .map(|n| TopicName(str_bytes(n)))
                .collect(),
        )
        .with_subscribed_topic_regex(m.subscribed_topic_regex.map(str_bytes))
        .with_assignment(assignment(m.assignment))
        .with_target_assignment(assignment(m.target))
}

/// The name of the topic Kafka calls `id`, if it still exists.
fn topic_name(metadata: &ClusterMetadata, id: Uuid) -> Option<String> {
    metadata
        .topics
        .iter()
        .find(|(_, t)| topic_uuid(t.id) == id)
        .map(|(name, _)| name.clone())
}

fn failed(code: ErrorCode) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(code.code())
        .with_member_id(None::<StrBytes>)
        .with_member_epoch(-1)
}
