//! What nodes say to the controller over their peer connections: a node
//! follows the cluster metadata (registering itself and reporting the
//! leaders it knows on every round), and forwards the commands its clients
//! send (topic create, delete, alter) to the controller.
//!
//! A follower's round is a long poll: the controller answers at once when
//! its metadata is newer than the follower's, else after `wait_ms`. The
//! metadata travels as the state machine's own snapshot (CRC'd), so a node
//! installs exactly what the controller applied.

use crate::metadata::{Command, NodeInfo};
use crate::raft::mux::GroupId;
use crate::raft::{NodeId, Term};

/// A request to the controller.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ControlRequest {
    /// One round of following the metadata.
    Follow(Follow),
    /// Commit a command.
    Command(Proposal),
}

/// A command for the controller, with what it needs to complete it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Proposal {
    /// The change.
    pub command: Command,
    /// For a topic create: replicas per partition; `None`: the cluster's
    /// default. The controller places them and logs the placement.
    pub replication_factor: Option<u16>,
}

impl Proposal {
    /// A proposal of `command` alone.
    pub fn of(command: Command) -> Proposal {
        Proposal {
            command,
            replication_factor: None,
        }
    }
}

/// A follower's round.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Follow {
    /// Who asks, and where it is reached: registers the node (again, if its
    /// addresses changed).
    pub node: NodeInfo,
    /// The metadata the follower has applied.
    pub applied_index: u64,
    /// Longest wait for newer metadata.
    pub wait_ms: u32,
    /// Leaders of the groups this node holds a replica of, as it knows them.
    pub leaders: Vec<LeaderReport>,
}

/// Who leads a group, in which term, as some replica knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LeaderReport {
    /// The partition's group.
    pub group: GroupId,
    /// The term.
    pub term: Term,
    /// The leader, if one is known in `term`.
    pub leader: Option<NodeId>,
}

/// The controller's answer.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ControlResponse {
    /// The round's answer.
    Followed(Followed),
    /// The command committed at this metadata index.
    Committed(u64),
    /// The command was refused or could not commit: Kafka's error code,
    /// and why.
    Failed(i16, String),
    /// This node is not the controller; here it is, if known.
    NotController(Option<(String, u16)>),
}

/// What a follower learns in a round.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Followed {
    /// The controller's metadata as a snapshot, when newer than the
    /// follower's; else empty.
    pub metadata: Vec<u8>,
    /// The newest leader of every group, as the nodes reported them.
    pub leaders: Vec<LeaderReport>,
    /// Nodes heard from within the liveness timeout.
    pub live: Vec<NodeId>,
}

/// The controller quorum's metadata log. Topic ids start at 1, so no
/// partition's group is 0.
pub const METADATA_GROUP: GroupId = 0;

/// A group's id: the topic's id and the partition number, so that a
/// re-created topic's partitions are new groups.
pub fn group_id(topic_id: u64, partition: u32) -> GroupId {
    assert!(
        partition < (1 << 16),
        "partition {partition} beyond the group id's room"
    );
    (topic_id << 16) | u64::from(partition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn control_frames_round_trip() {
        let node = NodeInfo {
            id: 2,
            host: "127.0.0.1".into(),
            port: 9093,
            shard_ports: vec![9094, 9095],
            first_data_shard: 0,
            data_shards: 2,
            controller: false,
        };
        let request = ControlRequest::Follow(Follow {
            node,
            applied_index: 7,
            wait_ms: 500,
            leaders: vec![LeaderReport {
                group: group_id(3, 1),
                term: 4,
                leader: Some(1),
            }],
        });
        let frame = wire::encode_request(2, &request);
        let decoded = wire::decode(frame[4..].to_vec()).expect("valid");
        assert_eq!(decoded.from, 2);
        assert_eq!(decoded.body, wire::Body::Request(request));
        let response = ControlResponse::NotController(Some(("10.0.0.1".into(), 9093)));
        let frame = wire::encode_response(1, &response);
        let decoded = wire::decode(frame[4..].to_vec()).expect("valid");
        assert_eq!(decoded.body, wire::Body::Response(response));
    }
}
