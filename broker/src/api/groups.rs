//! The group APIs: FindCoordinator, ConsumerGroupHeartbeat, OffsetCommit,
//! OffsetFetch, ListGroups, DescribeGroups, DeleteGroups. Each group
//! request goes to the shard owning the group's `__consumer_offsets`
//! partition (over the mesh when that is another shard of this node); a
//! node that does not lead that partition answers NOT_COORDINATOR.

use super::Reply;
use super::admin::partition_info;
use crate::group::coordinator::{GroupReply, GroupRequest, coordinator_error};
use crate::group::{self, Call, OFFSETS_TOPIC};
use crate::logging::Repeated;
use crate::mesh::PartitionOp;
use crate::shard::Shard;
use fjord_net::{ErrorCode, wire};
use fjord_replication::control::Proposal;
use fjord_replication::metadata::{Command, CreateTopic};
use std::collections::BTreeMap;

/// `__consumer_offsets`'s configs: compacted, in Kafka's segment size.
const OFFSETS_TOPIC_CONFIGS: [(&str, &str); 2] = [
    ("cleanup.policy", "compact"),
    ("segment.bytes", "104857600"),
];

pub(super) async fn find_coordinator(
    shard: &Shard,
    correlation_id: u32,
    request: wire::FindCoordinatorRequestT,
) -> Reply {
    let answer = |code: ErrorCode, message: &str| {
        Reply::body(
            correlation_id,
            wire::ResponseT::FindCoordinatorResponse(Box::new(wire::FindCoordinatorResponseT {
                error_code: code.code(),
                error_message: Some(message.to_owned()),
                ..Default::default()
            })),
        )
    };
    let group_id = request.group_id.unwrap_or_default();
    let found = match coordinator(shard, &group_id).await {
        Ok(found) => found,
        Err((code, message)) => return answer(code, message),
    };
    let (metadata, info) = (shard.metadata(), found.info);
    let p = found.partition;
    let (host, port) = if metadata.nodes.is_empty() {
        let port = shard.shard_ports.get(usize::from(info.shard)).copied();
        (shard.config.advertised_host(), port)
    } else {
        match metadata.nodes.get(&(info.leader as u32)) {
            Some(node) => (
                node.host.clone(),
                node.shard_ports.get(usize::from(info.shard)).copied(),
            ),
            None => (String::new(), None),
        }
    };
    let Some(port) = port else {
        return answer(
            ErrorCode::CoordinatorNotAvailable,
            "the coordinator's node is not registered",
        );
    };
    Reply::body(
        correlation_id,
        wire::ResponseT::FindCoordinatorResponse(Box::new(wire::FindCoordinatorResponseT {
            error_code: 0,
            error_message: None,
            partition: p,
            node_id: info.leader,
            host: Some(host),
            port,
        })),
    )
}

/// Where a group's coordinator runs.
pub(crate) struct Coordinator {
    /// The group's `__consumer_offsets` partition.
    pub partition: i32,
    /// That partition's leader and shard, as Metadata gives them.
    pub info: wire::PartitionInfoT,
}

/// Finds a group's coordinator (creating `__consumer_offsets` on first
/// use); on failure, the code and message to answer FindCoordinator with.
/// Native and Kafka FindCoordinator.
pub(crate) async fn coordinator(
    shard: &Shard,
    group_id: &str,
) -> Result<Coordinator, (ErrorCode, &'static str)> {
    if group_id.is_empty() || group_id.len() > group::records::GROUP_ID_LEN_MAX {
        return Err((ErrorCode::InvalidGroupId, "group id empty or too long"));
    }
    let partitions = offsets_topic(shard)
        .await
        .map_err(|code| (code, "__consumer_offsets is not available yet"))?;
    let p = group::partition_for(group_id, partitions);
    let metadata = shard.metadata();
    let unknown = (
        ErrorCode::CoordinatorNotAvailable,
        "__consumer_offsets not known here yet",
    );
    let topic = metadata.topics.get(OFFSETS_TOPIC).ok_or(unknown)?;
    let meta = topic.partitions.get(p as usize).ok_or(unknown)?;
    let info = partition_info(shard, &metadata, topic.id, p as usize, meta);
    if info.error_code != 0 {
        return Err((
            ErrorCode::CoordinatorNotAvailable,
            "the coordinator is being elected",
        ));
    }
    Ok(Coordinator { partition: p, info })
}

thread_local! {
    /// Failed creations of `__consumer_offsets` on this shard's thread, for
    /// the rate-limited log line (every FindCoordinator retries it).
    static CREATE_FAILURES: Repeated = Repeated::default();
}

/// The partition count of `__consumer_offsets`, created on first use with
/// `offsets_topic_replication_factor` replicas: until that many nodes are
/// live the creation fails and clients are told the coordinator is not
/// available, as Kafka does.
async fn offsets_topic(shard: &Shard) -> Result<u32, ErrorCode> {
    if let Some(topic) = shard.metadata().topics.get(OFFSETS_TOPIC) {
        return Ok(topic.partitions.len() as u32);
    }
    let command = Command::CreateTopic(CreateTopic {
        name: OFFSETS_TOPIC.to_owned(),
        partitions: shard.config.offsets_topic_partitions,
        configs: OFFSETS_TOPIC_CONFIGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    });
    let proposal = Proposal {
        command,
        replication_factor: Some(shard.config.offsets_topic_replication_factor),
    };
    match shard.command(proposal).await {
        Ok(_) => tracing::info!(shard = shard.id, "created {OFFSETS_TOPIC}"),
        // Another request created it meanwhile.
        Err(e) if super::command_error_code(&e) == ErrorCode::TopicAlreadyExists => {}
        Err(e) => {
            if let Some(failures) = CREATE_FAILURES.with(Repeated::hit) {
                tracing::warn!(
                    shard = shard.id,
                    error = %e,
                    failures,
                    replication_factor = shard.config.offsets_topic_replication_factor,
                    "cannot create {OFFSETS_TOPIC}: group clients retry"
                );
            }
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
    }
    shard
        .metadata()
        .topics
        .get(OFFSETS_TOPIC)
        .map(|t| t.partitions.len() as u32)
        .ok_or(ErrorCode::CoordinatorNotAvailable)
}

/// Serves a request for one group on its coordinator.
pub(super) async fn for_group(
    shard: &Shard,
    correlation_id: u32,
    group_id: &str,
    body: wire::RequestT,
) -> Reply {
    let kind = body.request_type();
    let outcome = coordinate(shard, group_id, body).await;
    let body = outcome.unwrap_or_else(|code| failed(kind, group_id, code));
    Reply::body(correlation_id, body)
}

/// ListGroups: the groups of every `__consumer_offsets` partition led on
/// this node (a client asks every node and merges).
pub(super) async fn list_groups(shard: &Shard, correlation_id: u32) -> Reply {
    let (groups, error) = listed_groups(shard).await;
    Reply::body(
        correlation_id,
        wire::ResponseT::ListGroupsResponse(Box::new(wire::ListGroupsResponseT {
            error_code: error.map_or(0, |e| e.code()),
            groups: Some(groups),
        })),
    )
}

/// The groups of every `__consumer_offsets` partition led on this node,
/// and `COORDINATOR_LOAD_IN_PROGRESS` if one of them is still loading its
/// own: as Kafka's ListGroups, an error the client retries on, with the
/// groups the others listed.
pub(crate) async fn listed_groups(shard: &Shard) -> (Vec<wire::GroupListingT>, Option<ErrorCode>) {
    let partitions = shard
        .metadata()
        .topics
        .get(OFFSETS_TOPIC)
        .map_or(0, |t| t.partitions.len() as i32);
    let calls = (0..partitions).map(|p| {
        let body = wire::RequestT::ListGroupsRequest(Box::default());
        call_partition(shard, p, GroupRequest::Native(body))
    });
    merge_listings(futures::future::join_all(calls).await)
}

/// Each partition's ListGroups outcome as one listing (see
/// [`listed_groups`]).
fn merge_listings(
    outcomes: Vec<Result<GroupReply, ErrorCode>>,
) -> (Vec<wire::GroupListingT>, Option<ErrorCode>) {
    let mut groups = Vec::new();
    let mut error = None;
    for outcome in outcomes {
        match outcome {
            Ok(GroupReply::Native(wire::ResponseT::ListGroupsResponse(list))) => {
                groups.extend(list.groups.unwrap_or_default());
            }
            Err(code @ ErrorCode::CoordinatorLoadInProgress) => {
                error.get_or_insert(code);
            }
            // Partitions led elsewhere answer on their own node; a replica
            // this node does not serve (or not yet, or no longer) is a
            // follower, or its leader's groups are nobody's for now.
            Err(_) => {}
            Ok(other) => debug_assert!(false, "a ListGroups answered {other:?}"),
        }
    }
    (groups, error)
}

/// DescribeGroups and DeleteGroups: each group on its own coordinator.
pub(super) async fn each_group(
    shard: &Shard,
    correlation_id: u32,
    ids: Vec<String>,
    one: impl Fn(String) -> wire::RequestT,
) -> Reply {
    let mut described = Vec::new();
    let mut results = Vec::new();
    let mut is_describe = true;
    for id in ids {
        let body = one(id.clone());
        is_describe = matches!(body, wire::RequestT::DescribeGroupsRequest(_));
        let kind = body.request_type();
        match coordinate(shard, &id, body)
            .await
            .unwrap_or_else(|code| failed(kind, &id, code))
        {
            wire::ResponseT::DescribeGroupsResponse(r) => {
                described.extend(r.groups.unwrap_or_default())
            }
            wire::ResponseT::DeleteGroupsResponse(r) => {
                results.extend(r.results.unwrap_or_default())
            }
            _ => {}
        }
    }
    let body = if is_describe {
        wire::ResponseT::DescribeGroupsResponse(Box::new(wire::DescribeGroupsResponseT {
            groups: Some(described),
        }))
    } else {
        wire::ResponseT::DeleteGroupsResponse(Box::new(wire::DeleteGroupsResponseT {
            results: Some(results),
        }))
    };
    Reply::body(correlation_id, body)
}

/// Serves a native group request on the group's coordinator: the shard
/// owning its `__consumer_offsets` partition. Kafka's group APIs map onto it.
pub(crate) async fn coordinate(
    shard: &Shard,
    group_id: &str,
    body: wire::RequestT,
) -> Result<wire::ResponseT, ErrorCode> {
    match coordinate_request(shard, group_id, GroupRequest::Native(body)).await? {
        GroupReply::Native(body) => Ok(body),
        _ => Err(ErrorCode::UnknownServerError),
    }
}

/// Runs a group request on the group's coordinator (this node's shard that
/// owns the group's `__consumer_offsets` partition, if this node leads it).
pub async fn coordinate_request(
    shard: &Shard,
    group_id: &str,
    request: GroupRequest,
) -> Result<GroupReply, ErrorCode> {
    if group_id.is_empty() || group_id.len() > group::records::GROUP_ID_LEN_MAX {
        return Err(ErrorCode::InvalidGroupId);
    }
    let partitions = shard
        .metadata()
        .topics
        .get(OFFSETS_TOPIC)
        .map(|t| t.partitions.len() as u32)
        .ok_or(ErrorCode::CoordinatorNotAvailable)?;
    let p = group::partition_for(group_id, partitions);
    call_partition(shard, p, request).await
}

async fn call_partition(
    shard: &Shard,
    p: i32,
    body: GroupRequest,
) -> Result<GroupReply, ErrorCode> {
    let call = Call {
        body,
        topics: partition_counts(shard),
        limits: shard.config.group_limits(),
        heartbeat_interval_ms: shard.config.group_heartbeat_interval_ms as i32,
        now_ms: fjord_storage::log::now_ms(),
    };
    // The call moves to the owner or runs here; `on_owner` takes both
    // paths' closures, so it travels in a cell that the chosen one empties.
    let call = std::cell::Cell::new(Some(Box::new(call)));
    shard
        .on_owner(
            OFFSETS_TOPIC,
            p,
            async |partition| match call.take() {
                Some(call) => partition.coordinator().serve(&partition, *call).await,
                None => Err(ErrorCode::UnknownServerError),
            },
            |reply| PartitionOp::Group {
                call: call.take().expect("one path is taken"),
                reply,
            },
        )
        .await
        .map_err(coordinator_error)
}

/// Every topic's partition count, as this shard's metadata has it.
fn partition_counts(shard: &Shard) -> BTreeMap<String, i32> {
    shard
        .metadata()
        .topics
        .iter()
        .map(|(name, topic)| (name.clone(), topic.partitions.len() as i32))
        .collect()
}

/// A whole-request failure, in the response type of the request.
fn failed(kind: wire::Request, group_id: &str, code: ErrorCode) -> wire::ResponseT {
    let error_code = code.code();
    use wire::ResponseT as S;
    match kind {
        wire::Request::ConsumerGroupHeartbeatRequest => {
            S::ConsumerGroupHeartbeatResponse(Box::new(wire::ConsumerGroupHeartbeatResponseT {
                error_code,
                ..Default::default()
            }))
        }
        wire::Request::OffsetCommitRequest => {
            S::OffsetCommitResponse(Box::new(wire::OffsetCommitResponseT {
                error_code,
                topics: None,
            }))
        }
        wire::Request::OffsetFetchRequest => {
            S::OffsetFetchResponse(Box::new(wire::OffsetFetchResponseT {
                error_code,
                topics: None,
            }))
        }
        wire::Request::DescribeGroupsRequest => {
            S::DescribeGroupsResponse(Box::new(wire::DescribeGroupsResponseT {
                groups: Some(vec![wire::DescribedGroupT {
                    group_id: Some(group_id.to_owned()),
                    error_code,
                    ..Default::default()
                }]),
            }))
        }
        wire::Request::DeleteGroupsRequest => {
            S::DeleteGroupsResponse(Box::new(wire::DeleteGroupsResponseT {
                results: Some(vec![wire::GroupResultT {
                    group_id: Some(group_id.to_owned()),
                    error_code,
                }]),
            }))
        }
        _ => S::ListGroupsResponse(Box::new(wire::ListGroupsResponseT {
            error_code,
            groups: None,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(groups: &[&str]) -> Result<GroupReply, ErrorCode> {
        let groups = groups
            .iter()
            .map(|&g| wire::GroupListingT {
                group_id: Some(g.to_owned()),
                ..Default::default()
            })
            .collect();
        Ok(GroupReply::Native(wire::ResponseT::ListGroupsResponse(
            Box::new(wire::ListGroupsResponseT {
                error_code: 0,
                groups: Some(groups),
            }),
        )))
    }

    fn ids(groups: &[wire::GroupListingT]) -> Vec<&str> {
        groups
            .iter()
            .filter_map(|g| g.group_id.as_deref())
            .collect()
    }

    #[test]
    fn partitions_led_elsewhere_are_left_to_their_nodes() {
        let (groups, error) = merge_listings(vec![
            listing(&["a"]),
            Err(ErrorCode::NotCoordinator),
            // A replica this node does not serve.
            Err(ErrorCode::CoordinatorNotAvailable),
            listing(&["b", "c"]),
        ]);
        assert_eq!(ids(&groups), ["a", "b", "c"]);
        assert_eq!(error, None);
    }

    /// As Kafka's: a partition still loading makes the answer an error the
    /// client retries on, rather than a list that silently lacks its groups.
    #[test]
    fn a_partition_still_loading_is_an_error_with_the_others_groups() {
        let (groups, error) = merge_listings(vec![
            listing(&["a"]),
            Err(ErrorCode::CoordinatorNotAvailable),
            Err(ErrorCode::CoordinatorLoadInProgress),
        ]);
        assert_eq!(ids(&groups), ["a"]);
        assert_eq!(error, Some(ErrorCode::CoordinatorLoadInProgress));
    }
}
