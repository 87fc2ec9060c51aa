//! Kafka's ListGroups, DescribeGroups, DeleteGroups and OffsetDelete (what
//! `kafka-consumer-groups.sh` and the admin clients ask), over the same
//! coordinator as the native APIs. A classic group is described with its
//! members' metadata and assignment bytes (the client tools decode them); a
//! KIP-848 group of native clients with its members' ids.

use super::str_bytes;
use crate::api::groups::{coordinate, coordinate_request, listed_groups};
use crate::group::coordinator::{ClassicCall, ClassicReply, GroupReply, GroupRequest};
use crate::shard::Shard;
use fjord_net::kafka::kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use fjord_net::kafka::kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use fjord_net::kafka::kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use fjord_net::kafka::kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use fjord_net::kafka::kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use fjord_net::kafka::kafka_protocol::messages::list_groups_response::{
    ListGroupsResponse, ListedGroup,
};
use fjord_net::kafka::kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use fjord_net::kafka::kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use fjord_net::kafka::kafka_protocol::messages::{GroupId, TopicName};
use fjord_net::{ErrorCode, wire};

/// DescribeGroups v6 and later answer an unknown group GROUP_ID_NOT_FOUND;
/// earlier ones describe it as "Dead" without an error.
const NOT_FOUND_VERSION: i16 = 6;

pub(super) async fn list_groups(shard: &Shard, request: ListGroupsRequest) -> ListGroupsResponse {
    let wanted = |filter: &[fjord_net::kafka::kafka_protocol::protocol::StrBytes], value: &str| {
        filter.is_empty()
            || filter
                .iter()
                .any(|f| f.as_str().eq_ignore_ascii_case(value))
    };
    let (groups, error) = listed_groups(shard).await;
    let groups = groups
        .into_iter()
        .filter_map(|g| {
            let state = g.state.unwrap_or_default();
            let kind = g.group_type.unwrap_or_default();
            (wanted(&request.states_filter, &state) && wanted(&request.types_filter, &kind)).then(
                || {
                    ListedGroup::default()
                        .with_group_id(GroupId(str_bytes(g.group_id.unwrap_or_default())))
                        .with_protocol_type(str_bytes("consumer"))
                        .with_group_state(str_bytes(state))
                        .with_group_type(str_bytes(kind))
                },
            )
        })
        .collect();
    ListGroupsResponse::default()
        .with_error_code(error.map_or(0, |e| e.code()))
        .with_groups(groups)
}

pub(super) async fn describe_groups(
    shard: &Shard,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(request.groups.len());
    for id in request.groups {
        groups.push(describe_one(shard, id, version).await);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

async fn describe_one(shard: &Shard, id: GroupId, version: i16) -> DescribedGroup {
    let name = id.as_str().to_owned();
    let described = DescribedGroup::default().with_group_id(id);
    let classic = GroupRequest::Classic(name.clone(), ClassicCall::Describe);
    match coordinate_request(shard, &name, classic).await {
        Ok(GroupReply::Classic(ClassicReply::Described {
            state,
            protocol_type,
            protocol,
            members,
        })) => {
            let members = members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_group_instance_id(m.instance_id.map(str_bytes))
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_member_metadata(m.metadata.into())
                        .with_member_assignment(m.assignment.into())
                })
                .collect();
            return described
                .with_group_state(str_bytes(state))
                .with_protocol_type(str_bytes(protocol_type))
                .with_protocol_data(str_bytes(protocol))
                .with_members(members);
        }
        Ok(_) => return described.with_error_code(ErrorCode::UnknownServerError.code()),
        Err(ErrorCode::GroupIdNotFound) => {}
        Err(code) => return described.with_error_code(code.code()),
    }
    // Not a classic group: a native one, or none.
    let body = wire::RequestT::DescribeGroupsRequest(Box::new(wire::DescribeGroupsRequestT {
        group_ids: Some(vec![name.clone()]),
    }));
    let native = match coordinate(shard, &name, body).await {
        Ok(wire::ResponseT::DescribeGroupsResponse(r)) => r.groups.into_iter().flatten().next(),
        _ => None,
    };
    match native {
        Some(g) if g.error_code == 0 => described
            .with_group_state(str_bytes(g.state.unwrap_or_default()))
            .with_protocol_type(str_bytes("consumer"))
            .with_protocol_data(str_bytes("uniform"))
            .with_members(
                g.members
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(str_bytes(m.member_id.unwrap_or_default()))
                            .with_group_instance_id(m.instance_id.map(str_bytes))
                            .with_client_id(str_bytes(m.client_id.unwrap_or_default()))
                    })
                    .collect(),
            ),
        _ if version >= NOT_FOUND_VERSION => described
            .with_error_code(ErrorCode::GroupIdNotFound.code())
            .with_group_state(str_bytes("Dead")),
        _ => described.with_group_state(str_bytes("Dead")),
    }
}

pub(super) async fn delete_groups(
    shard: &Shard,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for id in request.groups_names {
        let name = id.as_str().to_owned();
        let body = wire::RequestT::DeleteGroupsRequest(Box::new(wire::DeleteGroupsRequestT {
            group_ids: Some(vec![name.clone()]),
        }));
        let code = match coordinate(shard, &name, body).await {
            Ok(wire::ResponseT::DeleteGroupsResponse(r)) => r
                .results
                .into_iter()
                .flatten()
                .map(|g| g.error_code)
                .next()
                .unwrap_or(0),
            Ok(_) => ErrorCode::UnknownServerError.code(),
            Err(code) => code.code(),
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// OffsetDelete: a group's commits of some partitions, unless its members
/// read those topics now (`GROUP_SUBSCRIBED_TO_TOPIC`).
pub(super) async fn offset_delete(
    shard: &Shard,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group = request.group_id.as_str().to_owned();
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| {
            let name = t.name.as_str().to_owned();
            t.partitions
                .iter()
                .map(move |p| (name.clone(), p.partition_index))
        })
        .collect();
    let codes = match coordinate_request(
        shard,
        &group,
        GroupRequest::DeleteOffsets(group.clone(), partitions),
    )
    .await
    {
        Ok(GroupReply::OffsetsDeleted(codes)) => codes,
        Ok(_) => {
            return OffsetDeleteResponse::default()
                .with_error_code(ErrorCode::UnknownServerError.code());
        }
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code.code()),
    };
    let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
    for ((topic, partition), code) in codes {
        let answer = OffsetDeleteResponsePartition::default()
            .with_partition_index(partition)
            .with_error_code(code);
        match topics.last_mut() {
            Some(last) if last.name.as_str() == topic => last.partitions.push(answer),
            _ => topics.push(
                OffsetDeleteResponseTopic::default()
                    .with_name(TopicName(str_bytes(topic)))
                    .with_partitions(vec![answer]),
            ),
        }
    }
    OffsetDeleteResponse::default().with_topics(topics)
}
