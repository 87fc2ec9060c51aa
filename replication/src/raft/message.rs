//! Messages between the replicas of one group, and what the core asks its
//! caller to do ([`Output`]).
//!
//! A leader never puts batches into a message itself: it asks its caller to
//! [`Output::Replicate`] a range of its log, and the caller reads the bytes
//! (batch cache or disk) and sends an [`Message::Append`] carrying the
//! entries' metadata beside the payload.

use crate::raft::types::{Entry, HardState, Membership, NodeId, Offset, Term};

/// A message from one replica of a group to another.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Message {
    /// "Would you vote for me in `term`?" — asked without changing any term,
    /// so a replica that cannot win does not disrupt a working leader
    /// (Raft thesis §9.6).
    PreVote(VoteRequest),
    /// The answer to a pre-vote.
    PreVoteResponse(VoteResponse),
    /// A vote request in `term`.
    Vote(VoteRequest),
    /// The answer to a vote request.
    VoteResponse(VoteResponse),
    /// Entries after `prev_end` (possibly none).
    Append(AppendRequest),
    /// How far the follower's log matches the leader's.
    AppendResponse(AppendResponse),
    /// The leader is alive; here is its commit position. Coalesced with
    /// every other group's heartbeat to the same peer.
    Heartbeat(Heartbeat),
    /// The follower heard the heartbeat.
    HeartbeatResponse(AppendResponse),
    /// Start an election now, skipping pre-vote: the leader hands over.
    TimeoutNow {
        /// The leader's term.
        term: Term,
    },
    /// The leader's log no longer holds where the follower's ends (retention
    /// removed it): start the log again at the leader's log start. Answered
    /// as an append.
    Reset(ResetRequest),
}

impl Message {
    /// The sender's term.
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote(r) | Message::Vote(r) => r.term,
            Message::PreVoteResponse(r) | Message::VoteResponse(r) => r.term,
            Message::Append(r) => r.term,
            Message::AppendResponse(r) | Message::HeartbeatResponse(r) => r.term,
            Message::Heartbeat(h) => h.term,
            Message::TimeoutNow { term } => *term,
            Message::Reset(r) => r.term,
        }
    }
}

/// A (pre-)vote request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct VoteRequest {
    /// The term the candidate stands in.
    pub term: Term,
    /// The term of the candidate's last entry.
    pub last_term: Term,
    /// The candidate's log end.
    pub end: Offset,
    /// Sent on the leader's [`Message::TimeoutNow`]: voters do not wait for
    /// their current leader to fall silent.
    pub transfer: bool,
}

/// The answer to a (pre-)vote request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct VoteResponse {
    /// The request's term when granted; the voter's term when refused.
    pub term: Term,
    /// Whether the vote is given.
    pub granted: bool,
}

/// Entries for a follower, or a probe when `entries` is empty.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AppendRequest {
    /// The leader's term.
    pub term: Term,
    /// Where the entries start; the follower's log must hold exactly the
    /// leader's log below it.
    pub prev_end: Offset,
    /// The term of the entry ending at `prev_end` (0 at offset 0).
    pub prev_term: Term,
    /// The leader's commit position (high watermark).
    pub commit: Offset,
    /// Contiguous entries from `prev_end`.
    pub entries: Vec<Entry>,
}

impl AppendRequest {
    /// The offset after the last entry carried (or `prev_end`).
    pub fn end(&self) -> Offset {
        self.entries.last().map_or(self.prev_end, |e| e.end)
    }

    /// Whether the entries are well formed and contiguous from `prev_end`,
    /// with terms that never decrease and never exceed the leader's.
    pub fn is_well_formed(&self) -> bool {
        let mut at = self.prev_end;
        let mut term = self.prev_term;
        self.entries.iter().all(|e| {
            let ok = e.is_well_formed() && e.offset == at && e.term >= term && e.term <= self.term;
            at = e.end;
            term = e.term;
            ok
        }) && self.prev_term <= self.term
    }
}

/// Where a follower's log starts again (Kafka's followers do the same when
/// their leader's log start passed their end).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ResetRequest {
    /// The leader's term.
    pub term: Term,
    /// The leader's log start: every entry below it is committed.
    pub start: Offset,
    /// The term of the entry ending at `start`.
    pub start_term: Term,
    /// The membership in effect at `start`.
    pub membership: Membership,
    /// The leader's commit position.
    pub commit: Offset,
}

/// A heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Heartbeat {
    /// The leader's term.
    pub term: Term,
    /// The leader's commit position.
    pub commit: Offset,
    /// The last heartbeat for now: every replica has the whole log and
    /// knows it committed, so the leader goes quiet until there is news;
    /// a follower that is as far then stops waiting for heartbeats while it
    /// hears from the leader's node (see `Config::quiesce`).
    pub quiesce: bool,
}

/// A follower's answer to an append or a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AppendResponse {
    /// The follower's term.
    pub term: Term,
    /// The rejected request's `prev_end` if the follower's log does not hold
    /// the leader's entry there; `None` on success and for heartbeats.
    pub rejected: Option<Offset>,
    /// The follower's log end, and the term of its last entry: where a
    /// rejected leader starts looking for the point of divergence.
    pub end: Offset,
    /// See `end`.
    pub last_term: Term,
    /// Where `last_term` starts in the follower's log.
    pub term_start: Offset,
    /// How far the follower's log is known to equal this leader's.
    pub matched: Offset,
    /// How far the matched prefix is durable by the group's policy: what
    /// counts toward the quorum.
    pub durable: Offset,
}

/// What the core asks of its caller, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `message` to replica `to`.
    Send {
        /// Destination replica.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Read the log and send it to `to` (see [`Replicate`]).
    Replicate(Replicate),
    /// Append these entries to the log (the payloads are the caller's: the
    /// produce request's, or the append message's). Report with
    /// [`crate::raft::Group::log_written`] (and, under
    /// [`crate::raft::Durability::Synced`], `log_synced`) quoting `generation`.
    Append {
        /// The entries, contiguous from the current log end.
        entries: Vec<Entry>,
        /// Identifies the log's contents since the last truncation.
        generation: u64,
    },
    /// Remove every entry at or after `end` (never a committed one).
    Truncate {
        /// The new log end.
        end: Offset,
        /// The generation that starts with this truncation.
        generation: u64,
    },
    /// Drop the whole log and start it again, empty, at `start`, the entry
    /// ending there of `term`; `membership` is in effect there. Appends of
    /// `generation` follow. Durable before anything after it (no report).
    Reset {
        /// The new log start and end.
        start: Offset,
        /// The term of the entry ending at `start`.
        term: Term,
        /// The membership in effect at `start`.
        membership: Membership,
        /// The generation that starts with this reset.
        generation: u64,
    },
    /// Make the log durable up to `end` (fdatasync) and report it.
    Sync {
        /// Sync at least this far.
        end: Offset,
        /// The generation the request belongs to.
        generation: u64,
    },
    /// Write and sync the hard state, then report `version`.
    PersistHardState {
        /// What to persist.
        state: HardState,
        /// Quoted back by [`crate::raft::Group::hard_state_persisted`].
        version: u64,
    },
    /// The group's state changed in a way its owner cares about.
    Event(Event),
}

/// A read of the leader's log to send to a follower: whole batches from
/// `from`, below `end`, at most `max_bytes` but at least one batch, sent as
/// [`Replicate::request`]. Send it only while the group is still leader in
/// `term` ([`crate::raft::Group::is_leader_in`]): a log read after a
/// step-down may have been truncated under the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicate {
    /// Destination replica.
    pub to: NodeId,
    /// The leader's term.
    pub term: Term,
    /// First offset to send.
    pub from: Offset,
    /// Term of the entry ending at `from`.
    pub prev_term: Term,
    /// Send nothing at or past this offset.
    pub end: Offset,
    /// Byte budget for the message.
    pub max_bytes: u64,
    /// The leader's commit position.
    pub commit: Offset,
}

impl Replicate {
    /// The append request carrying `entries`, the batches read from `from`.
    pub fn request(&self, entries: Vec<Entry>) -> AppendRequest {
        debug_assert!(
            entries.first().is_none_or(|e| e.offset == self.from),
            "a replication read starts at an entry start"
        );
        AppendRequest {
            term: self.term,
            prev_end: self.from,
            prev_term: self.prev_term,
            commit: self.commit,
            entries,
        }
    }
}

/// State changes for the owner of the group (the shard, the simulator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This replica leads `term`.
    BecameLeader {
        /// The term.
        term: Term,
    },
    /// This replica no longer leads: every request waiting for an
    /// acknowledgement fails (`NOT_LEADER_OR_FOLLOWER`); the client retries.
    SteppedDown {
        /// The term it led.
        term: Term,
    },
    /// A leader is known (or none, `None`) in `term`.
    LeaderChanged {
        /// The term.
        term: Term,
        /// The leader.
        leader: Option<NodeId>,
    },
    /// The high watermark advanced: `acks=all` requests below it answer and
    /// reads may go up to it.
    Committed {
        /// The new high watermark.
        commit: Offset,
    },
    /// The leader's own copy is durable below `end`: `acks=1` requests below
    /// it answer. Only ever emitted by a leader in good standing.
    LeaderDurable {
        /// The leader's durable end.
        end: Offset,
    },
}
