//! The vocabulary of the Raft core: ids, terms, offsets, the metadata of one
//! log entry, membership and the durability a replica must reach before it
//! counts toward a quorum.
//!
//! One entry is one record batch. Positions are Kafka offsets, and an entry
//! covers `[offset, end)` (a batch of `end - offset` records); a log position
//! ("end") is the offset after the last record, as Kafka's log end offset.

/// A replica's id within its group (Fjord maps it to a node and a shard).
pub type NodeId = u32;

/// A Raft term: the partition leader epoch written into every batch.
pub type Term = u64;

/// A Kafka offset.
pub type Offset = u64;

/// What a batch is to the protocol. The payload itself never enters the core.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum EntryKind {
    /// Records from a producer.
    Data,
    /// The batch a new leader appends so that earlier terms' entries can
    /// commit (Raft §5.4.2): a control batch of one record.
    LeaderMark,
    /// A new membership, in effect from the moment it is appended.
    Config(Membership),
}

/// The metadata of one batch in the log.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Entry {
    /// Base offset.
    pub offset: Offset,
    /// Offset after the last record (`offset + record count`).
    pub end: Offset,
    /// The term (leader epoch) in which the batch was appended by a leader.
    pub term: Term,
    /// Length of the batch on the wire and on disk.
    pub bytes: u32,
    /// What the batch is.
    pub kind: EntryKind,
}

impl Entry {
    /// Checks the shape every entry must have.
    pub fn is_well_formed(&self) -> bool {
        self.end > self.offset && self.term > 0
    }
}

/// The replicas of a group. Voters form quorums; learners only receive the
/// log (a replica being added catches up as a learner before it votes).
#[derive(
    Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Membership {
    /// Sorted, no duplicates.
    pub voters: Vec<NodeId>,
    /// Sorted, no duplicates, disjoint from `voters`.
    pub learners: Vec<NodeId>,
}

impl Membership {
    /// A membership of these voters and no learners.
    pub fn of_voters(voters: &[NodeId]) -> Membership {
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters.dedup();
        Membership {
            voters,
            learners: Vec::new(),
        }
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Whether `id` holds a replica at all.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.binary_search(&id).is_ok()
    }

    /// Votes needed for a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Every replica, voters first.
    pub fn replicas(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The membership after `change`, or why the change is refused. Only one
    /// replica changes at a time (single-server changes, Raft thesis §4.1):
    /// any two consecutive memberships then share a majority.
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, MembershipError> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner(id) => {
                if self.contains(id) {
                    return Err(MembershipError::AlreadyMember(id));
                }
                next.learners.push(id);
                next.learners.sort_unstable();
            }
            MembershipChange::Promote(id) => {
                let Ok(at) = self.learners.binary_search(&id) else {
                    return Err(MembershipError::NotLearner(id));
                };
                next.learners.remove(at);
                next.voters.push(id);
                next.voters.sort_unstable();
            }
            MembershipChange::Remove(id) => {
                if let Ok(at) = self.voters.binary_search(&id) {
                    if self.voters.len() == 1 {
                        return Err(MembershipError::LastVoter);
                    }
                    next.voters.remove(at);
                } else if let Ok(at) = self.learners.binary_search(&id) {
                    next.learners.remove(at);
                } else {
                    return Err(MembershipError::NotMember(id));
                }
            }
        }
        Ok(next)
    }
}

/// One step of a replica move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Start replicating to a new replica that does not vote yet.
    AddLearner(NodeId),
    /// Make a caught-up learner a voter.
    Promote(NodeId),
    /// Remove a voter or a learner.
    Remove(NodeId),
}

/// Why a membership change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The replica is in the group already.
    #[error("replica {0} is already a member")]
    AlreadyMember(NodeId),
    /// Only learners are promoted.
    #[error("replica {0} is not a learner")]
    NotLearner(NodeId),
    /// The replica is not in the group.
    #[error("replica {0} is not a member")]
    NotMember(NodeId),
    /// A group keeps at least one voter.
    #[error("the last voter cannot be removed")]
    LastVoter,
}

/// When a replica's copy of an entry counts toward the quorum: the topic's
/// `fsync` policy, seen from replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once written (`fsync=never` and `interval`): survives a killed process.
    Written,
    /// Once synced (`fsync=always`): survives power loss.
    Synced,
}

/// What must be on stable storage before the replica answers anything that
/// depends on it (Raft's `currentTerm` and `votedFor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    /// The latest term this replica has seen.
    pub term: Term,
    /// The candidate it voted for in `term`, if any.
    pub vote: Option<NodeId>,
}
