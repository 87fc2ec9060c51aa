//! One Raft group: a pure state machine over one partition's replicas.
//!
//! Inputs are method calls — a clock tick, a message, a proposal, a storage
//! completion — and every effect is an [`Output`] pushed onto the caller's
//! vector, in order: messages to send, log appends and truncations, syncs,
//! hard-state writes, and events for the owner. No clock, socket, file or
//! random source is read here, so the simulator replays a run exactly.
//!
//! Rules the rest of the file relies on:
//! - Every message leaves only once the hard state it was decided under is
//!   persisted (votes and terms survive a crash before anyone hears of them).
//! - A replica counts toward a quorum only for entries that match the leader
//!   *and* are durable by the group's [`Durability`].
//! - The commit position advances only to an entry of the leader's own term
//!   (Raft Figure 8); it never moves back, and nothing below it is truncated.
//! - A leader that has not heard from a majority within an election timeout
//!   steps down (check-quorum), and then acknowledges nothing.

use crate::raft::log::{LogState, LogView};
use crate::raft::message::{
    AppendRequest, AppendResponse, Event, Heartbeat, Message, Output, Replicate, ResetRequest,
    VoteRequest, VoteResponse,
};
use crate::raft::progress::{Mode, Progress};
use crate::raft::types::{
    Durability, Entry, EntryKind, HardState, Membership, MembershipChange, MembershipError, NodeId,
    Offset, Term,
};
use std::collections::{BTreeMap, VecDeque};

/// Bytes the core assumes for a control batch (leader mark, membership):
/// only flow control uses it.
pub const CONTROL_BATCH_BYTES: u32 = 80;

/// Recent entries a leader remembers the sizes of, to pipeline exact ranges;
/// a follower further behind is caught up by probes instead.
const RECENT_ENTRIES_MAX: usize = 4096;

/// Fixed parameters of a group.
#[derive(Debug, Clone)]
pub struct Config {
    /// This replica.
    pub id: NodeId,
    /// The shortest election timeout, in ticks; each timeout is drawn from
    /// `[election_ticks, election_ticks + jitter)`.
    pub election_ticks: u32,
    /// The spread of election timeouts, in ticks; `None`: `election_ticks`
    /// (Raft's `[T, 2T)`). A narrower spread bounds failover sooner; wide
    /// enough that two followers rarely time out together.
    pub election_jitter_ticks: Option<u32>,
    /// How recently a replica must have heard its leader to refuse a
    /// (pre-)vote (Raft thesis §4.2.3), in ticks; `None`: `election_ticks`.
    /// Shorter than the election timeout, a follower that heard the last
    /// heartbeat a tick after the candidate did no longer refuses it, which
    /// would cost a whole second timeout; still several heartbeats long, so
    /// a node cut off from a working leader cannot disrupt it. A leader
    /// steps down after this long without a majority (check-quorum), so it
    /// stops acknowledging before another can be elected.
    pub lease_ticks: Option<u32>,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: u32,
    /// Let the group go quiet when idle: once every replica has the whole
    /// log and knows it committed, the leader stops its heartbeats, and its
    /// followers stop waiting for them as long as the caller hears from the
    /// leader's node (node-level liveness, passed to [`Group::tick`]) —
    /// ten thousand idle partitions then cost their nodes next to nothing
    /// (CockroachDB quiesces idle ranges the same way). Anything to send
    /// wakes the group: a proposal, a change, a follower that missed the
    /// last heartbeat and asks for votes.
    pub quiesce: bool,
    /// When a copy counts toward the quorum.
    pub durability: Durability,
    /// Bytes a leader sends one follower ahead of what it reports durable:
    /// what a follower holds in memory for its disk (`Progress::unwritten`).
    pub max_inflight_bytes: u64,
    /// Bytes in one append message (at least one batch is always sent).
    pub max_append_bytes: u64,
    /// Seeds the election timeouts' jitter (the caller's randomness).
    pub seed: u64,
    /// Deliberately wrong behaviour, to show the simulator's checker finds it.
    #[cfg(feature = "sim")]
    pub bugs: Bugs,
}

impl Config {
    /// Defaults for replica `id`: 10-tick elections, heartbeats every 2 ticks.
    pub fn new(id: NodeId, durability: Durability, seed: u64) -> Config {
        Config {
            id,
            election_ticks: 10,
            election_jitter_ticks: None,
            lease_ticks: None,
            heartbeat_ticks: 2,
            quiesce: false,
            durability,
            max_inflight_bytes: 4 << 20,
            max_append_bytes: 1 << 20,
            seed,
            #[cfg(feature = "sim")]
            bugs: Bugs::default(),
        }
    }
}

/// Planted bugs, each off by default: the checker must catch every one.
#[cfg(feature = "sim")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Commit any entry a majority holds, of whatever term (Figure 8), and
    /// so append no leader mark on election.
    pub commit_old_term_by_count: bool,
    /// Answer before the term and vote are persisted.
    pub skip_hard_state_persistence: bool,
    /// Serve reads up to the log end instead of the high watermark.
    pub follower_reads_unflushed_tail: bool,
    /// Never step down for want of a quorum.
    pub skip_check_quorum: bool,
}

/// Where a replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether it could win, without changing its term.
    PreCandidate,
    /// Standing for election in its term.
    Candidate,
    /// Leads its term.
    Leader,
}

/// Why a proposal is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader appends; the known leader, if any, is given.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// Leadership is being handed over.
    #[error("leadership transfer in progress")]
    Transferring,
    /// A membership change is already under way, or the leader has not
    /// committed an entry of its term yet.
    #[error("a membership change is pending")]
    ChangePending,
    /// The change itself is invalid.
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

#[derive(Debug)]
struct Votes {
    granted: Vec<NodeId>,
    refused: Vec<NodeId>,
}

impl Votes {
    fn new(me: NodeId) -> Votes {
        Votes {
            granted: vec![me],
            refused: Vec::new(),
        }
    }

    fn record(&mut self, from: NodeId, granted: bool) {
        if self.granted.contains(&from) || self.refused.contains(&from) {
            return;
        }
        if granted {
            self.granted.push(from)
        } else {
            self.refused.push(from)
        }
    }

    fn won(&self, membership: &Membership) -> bool {
        self.granted
            .iter()
            .filter(|&&id| membership.is_voter(id))
            .count()
            >= membership.quorum()
    }
}

#[derive(Debug)]
struct Leadership {
    progress: BTreeMap<NodeId, Progress>,
    /// `(offset, end, bytes)` of the newest entries, contiguous up to the
    /// log end: what pipelined followers are sent from.
    recent: VecDeque<(Offset, Offset, u32)>,
    /// Where `recent` starts.
    recent_start: Offset,
    /// The largest entry proposed in this term: what an accepted probe,
    /// read from the log by byte budget, is charged at least (it always
    /// carries a whole entry).
    largest_entry: u64,
    heartbeat_elapsed: u32,
    transfer: Option<(NodeId, u64)>,
    durable_reported: Offset,
    /// The last heartbeat said `quiesce`, and nothing was sent since.
    quiesced: bool,
}

#[derive(Debug)]
enum RoleState {
    Follower,
    PreCandidate(Votes),
    Candidate(Votes),
    Leader(Box<Leadership>),
}

/// One replica's Raft state for one partition.
#[derive(Debug)]
pub struct Group {
    cfg: Config,
    hard: HardState,
    hard_version: u64,
    persisted_version: u64,
    /// Messages decided under a hard state not yet persisted.
    held: Vec<(NodeId, Message)>,
    log: LogView,
    generation: u64,
    written: Offset,
    synced: Offset,
    sync_requested: Offset,
    commit: Offset,
    /// A follower's log equals its current leader's below this.
    verified: Offset,
    /// The durable match last reported to the leader.
    durable_sent: Offset,
    base_membership: Membership,
    membership: Membership,
    role: RoleState,
    leader: Option<NodeId>,
    now: u64,
    heard_at: u64,
    timeout: u64,
    rng: u64,
    /// A follower told by its leader that the group is quiet: hearing the
    /// leader's node stands in for its heartbeats.
    quiesced: bool,
}

impl Group {
    /// A replica restored from what its storage kept: the hard state, the
    /// log's shape, the membership before any membership entry in the log,
    /// and a commit position known to be safe (0 if none was checkpointed).
    pub fn new(
        cfg: Config,
        hard: HardState,
        log: LogState,
        base_membership: Membership,
        commit: Offset,
    ) -> Group {
        assert!(
            cfg.election_ticks > cfg.heartbeat_ticks,
            "elections must outlast heartbeats"
        );
        assert!(
            cfg.heartbeat_ticks > 0 && cfg.max_append_bytes > 0,
            "zero limits in {cfg:?}"
        );
        let log = LogView::new(log);
        assert!(
            commit <= log.end(),
            "commit {commit} past the log end {}",
            log.end()
        );
        let end = log.end();
        let mut group = Group {
            rng: cfg.seed ^ (u64::from(cfg.id) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            cfg,
            hard,
            hard_version: 0,
            persisted_version: 0,
            held: Vec::new(),
            log,
            generation: 0,
            written: end,
            synced: end,
            sync_requested: end,
            commit,
            verified: commit,
            durable_sent: 0,
            membership: base_membership.clone(),
            base_membership,
            role: RoleState::Follower,
            leader: None,
            now: 0,
            heard_at: 0,
            timeout: 0,
            quiesced: false,
        };
        group.refresh_membership();
        group.reset_election_timer();
        group
    }

    // ----- accessors --------------------------------------------------------

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.hard.term
    }

    /// The hard state (last asked to persist).
    pub fn hard_state(&self) -> HardState {
        self.hard
    }

    /// Where this replica stands.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate(_) => Role::PreCandidate,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// Whether this replica leads `term`.
    pub fn is_leader_in(&self, term: Term) -> bool {
        matches!(self.role, RoleState::Leader(_)) && self.hard.term == term
    }

    /// The leader this replica knows of in its term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The high watermark.
    pub fn commit(&self) -> Offset {
        self.commit
    }

    /// Reads may return offsets below this: the high watermark.
    pub fn read_limit(&self) -> Offset {
        #[cfg(feature = "sim")]
        if self.cfg.bugs.follower_reads_unflushed_tail {
            return self.log.end();
        }
        self.commit
    }

    /// The log end offset.
    pub fn log_end(&self) -> Offset {
        self.log.end()
    }

    /// The membership in effect.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The local log is durable by the group's policy below this.
    pub fn durable_end(&self) -> Offset {
        match self.cfg.durability {
            Durability::Written => self.written,
            Durability::Synced => self.synced,
        }
    }

    /// A leader's view of its followers: `(id, matched, durable)`.
    pub fn followers(&self) -> Vec<(NodeId, Offset, Offset)> {
        match &self.role {
            RoleState::Leader(l) => l
                .progress
                .iter()
                .map(|(&id, p)| (id, p.matched, p.durable))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A leader's in-sync voters (itself included): those heard from within
    /// `max_lag_ticks` whose log has reached the leader's end, or moved
    /// toward it, within that time (Kafka's `replica.lag.time.max.ms`).
    /// Empty when not leading.
    pub fn in_sync(&self, max_lag_ticks: u64) -> Vec<NodeId> {
        let RoleState::Leader(l) = &self.role else {
            return Vec::new();
        };
        let end = self.log.end();
        let recent = |tick: u64| self.now.saturating_sub(tick) < max_lag_ticks;
        let mut in_sync: Vec<NodeId> = l
            .progress
            .iter()
            .filter(|(id, p)| {
                self.membership.is_voter(**id)
                    && recent(p.heard_at)
                    && (p.matched == end || recent(p.progressed_at))
            })
            .map(|(&id, _)| id)
            .chain(std::iter::once(self.cfg.id))
            .collect();
        in_sync.sort_unstable();
        in_sync.dedup();
        in_sync
    }

    // ----- inputs -----------------------------------------------------------

    /// One clock tick. `heard(node)` is how many ticks ago anything at all
    /// arrived from that replica's node (`None`: never); a quiet group
    /// takes it for the heartbeats it no longer exchanges.
    pub fn tick(&mut self, heard: &dyn Fn(NodeId) -> Option<u64>, out: &mut Vec<Output>) {
        self.advance(1, heard);
        if !matches!(self.role, RoleState::Leader(_)) {
            if self.now - self.heard_at >= self.timeout && self.membership.is_voter(self.cfg.id) {
                self.start_pre_vote(out);
            }
            return;
        }
        let heartbeat_ticks = self.cfg.heartbeat_ticks;
        let heartbeat_due = {
            let RoleState::Leader(l) = &mut self.role else {
                unreachable!()
            };
            l.heartbeat_elapsed += 1;
            let heartbeat_due = l.heartbeat_elapsed >= heartbeat_ticks;
            if heartbeat_due {
                l.heartbeat_elapsed = 0;
            }
            if l.transfer.is_some_and(|(_, deadline)| self.now >= deadline) {
                // The target did not take over in time: lead on.
                l.transfer = None;
            }
            heartbeat_due
        };
        if !self.check_quorum() {
            self.step_down(self.hard.term, None, out);
            return;
        }
        self.resume_stalled_pipelines();
        if heartbeat_due {
            let quiet = self.is_quiet();
            let RoleState::Leader(l) = &mut self.role else {
                unreachable!()
            };
            if quiet && l.quiesced {
                return;
            }
            let beat = Heartbeat {
                term: self.hard.term,
                commit: self.commit,
                quiesce: quiet,
            };
            for to in self.peers() {
                self.send(to, Message::Heartbeat(beat), out);
            }
            // After the sends: any other message wakes the group.
            if let RoleState::Leader(l) = &mut self.role {
                l.quiesced = quiet;
            }
        }
    }

    /// Moves the clock `ticks` on at once, for a quiet group whose caller
    /// skipped its ticks (see [`Group::quiet_nodes`]): it catches up before
    /// it handles anything, exactly as if it had ticked, since nothing
    /// happens to a quiet group while its nodes are heard from.
    pub fn skip(&mut self, ticks: u64, heard: &dyn Fn(NodeId) -> Option<u64>) {
        self.advance(ticks, heard);
        if matches!(self.role, RoleState::Leader(_)) {
            // Renews the leader's own lease, as its ticks would have.
            let _ = self.check_quorum();
        }
    }

    /// The nodes a quiet group relies on (a follower's leader, a leader's
    /// followers), and how recently each must have been heard for the
    /// group's ticks to be skipped; `None` while the group is not quiet.
    /// Skipping within that bound changes nothing: no timeout can fall due
    /// before a node has been silent for a lease.
    pub fn quiet_nodes(&self) -> Option<(Vec<NodeId>, u64)> {
        let lease = self.lease_ticks();
        let fresh = (lease / 2).max(1);
        match &self.role {
            RoleState::Leader(l) if l.quiesced => Some((self.peers(), fresh)),
            RoleState::Follower if self.quiesced => Some((vec![self.leader?], fresh)),
            _ => None,
        }
    }

    /// Moves the clock on; a quiet group takes hearing from the nodes it
    /// relies on for the heartbeats and answers they no longer send.
    fn advance(&mut self, ticks: u64, heard: &dyn Fn(NodeId) -> Option<u64>) {
        self.now += ticks;
        let now = self.now;
        let since = |id: NodeId| heard(id).map(|ticks| now.saturating_sub(ticks));
        match &mut self.role {
            RoleState::Leader(l) if l.quiesced => {
                for (&id, p) in &mut l.progress {
                    if let Some(at) = since(id) {
                        p.heard_at = p.heard_at.max(at);
                    }
                }
            }
            RoleState::Leader(_) => {}
            _ => {
                if self.quiesced
                    && let Some(at) = self.leader.and_then(since)
                {
                    self.heard_at = self.heard_at.max(at);
                }
            }
        }
    }

    /// Whether a leader's group has nothing to say for now: quiescing is on,
    /// everything is committed and durable everywhere, nothing is in flight
    /// or being handed over, and every replica answered within its lease.
    fn is_quiet(&self) -> bool {
        let RoleState::Leader(l) = &self.role else {
            return false;
        };
        let end = self.log.end();
        let lease = self.lease_ticks();
        self.cfg.quiesce
            && l.transfer.is_none()
            && self.commit == end
            && self.durable_end() == end
            && self.hard_state_durable()
            && l.progress.values().all(|p| {
                p.mode == Mode::Replicate
                    && p.unwritten.is_empty()
                    && p.matched == end
                    && p.durable == end
                    && self.now - p.heard_at < lease
            })
    }

    /// A message from replica `from`.
    pub fn receive(&mut self, from: NodeId, message: Message, out: &mut Vec<Output>) {
        if from == self.cfg.id {
            return;
        }
        let term = message.term();
        if term > self.hard.term {
            match &message {
                Message::PreVote(_) => {}
                Message::PreVoteResponse(r) if r.granted => {}
                Message::Vote(r) if !r.transfer && self.leader_is_recent() => return,
                Message::Append(_)
                | Message::Heartbeat(_)
                | Message::Reset(_)
                | Message::TimeoutNow { .. } => {
                    self.become_follower(term, Some(from), out);
                }
                _ => self.become_follower(term, None, out),
            }
        } else if term < self.hard.term {
            // A stale sender learns the newer term from the answer, so a
            // deposed leader or a partitioned candidate rejoins.
            let refusal = VoteResponse {
                term: self.hard.term,
                granted: false,
            };
            match message {
                Message::PreVote(_) => self.send(from, Message::PreVoteResponse(refusal), out),
                Message::Vote(_) => self.send(from, Message::VoteResponse(refusal), out),
                Message::Append(_) | Message::Heartbeat(_) | Message::Reset(_) => {
                    let answer = self.append_response(None);
                    self.send(from, Message::AppendResponse(answer), out);
                }
                _ => {}
            }
            return;
        }
        match message {
            Message::PreVote(r) => self.on_pre_vote(from, r, out),
            Message::Vote(r) => self.on_vote(from, r, out),
            Message::PreVoteResponse(r) => self.on_pre_vote_response(from, r, out),
            Message::VoteResponse(r) => self.on_vote_response(from, r, out),
            Message::Append(r) => self.on_append(from, r, out),
            Message::Reset(r) => self.on_reset(from, r, out),
            Message::Heartbeat(h) => self.on_heartbeat(from, h, out),
            Message::AppendResponse(r) | Message::HeartbeatResponse(r) => {
                self.on_append_response(from, r, out)
            }
            Message::TimeoutNow { .. } => {
                if self.leader == Some(from) && self.membership.is_voter(self.cfg.id) {
                    self.start_election(true, out);
                }
            }
        }
    }

    /// Appends a batch of `records` records and `bytes` bytes as leader;
    /// returns its entry (offset range and term) for the caller to write.
    pub fn propose(
        &mut self,
        records: u32,
        bytes: u32,
        out: &mut Vec<Output>,
    ) -> Result<Entry, ProposeError> {
        assert!(records > 0, "a batch holds at least one record");
        self.check_can_propose()?;
        Ok(self.append_as_leader(u64::from(records), bytes, EntryKind::Data, out))
    }

    /// The log's entries below `start` are gone (retention deleted them,
    /// below the commit position); followers that need them are reset.
    pub fn log_start_advanced(&mut self, start: Offset) {
        if start > self.log.start() && start <= self.commit.min(self.log.end()) {
            self.log.advance_start(start);
        }
    }

    /// Whether a membership entry is in the log but not yet committed: no
    /// other change may start until it is.
    pub fn pending_membership(&self) -> bool {
        self.log
            .last_config()
            .is_some_and(|&(offset, _)| offset >= self.commit)
    }

    /// Starts a membership change as leader: one replica at a time, once
    /// the leader has committed in its term and no other change is pending.
    pub fn change_membership(
        &mut self,
        change: MembershipChange,
        out: &mut Vec<Output>,
    ) -> Result<Entry, ProposeError> {
        self.check_can_propose()?;
        let committed_in_term = self.log.term_at_end(self.commit) == Some(self.hard.term);
        if !committed_in_term || self.pending_membership() {
            return Err(ProposeError::ChangePending);
        }
        let next = self.membership.apply(change)?;
        Ok(self.append_as_leader(1, CONTROL_BATCH_BYTES, EntryKind::Config(next), out))
    }

    /// Hands leadership to `target` once it has the whole log; proposals are
    /// refused meanwhile, for at most an election timeout.
    pub fn transfer_leadership(&mut self, target: NodeId, out: &mut Vec<Output>) -> bool {
        if target == self.cfg.id || !self.membership.is_voter(target) {
            return false;
        }
        let deadline = self.now + u64::from(self.cfg.election_ticks);
        let end = self.log.end();
        let RoleState::Leader(l) = &mut self.role else {
            return false;
        };
        l.transfer = Some((target, deadline));
        let caught_up = l.progress.get(&target).is_some_and(|p| p.matched == end);
        if caught_up {
            let term = self.hard.term;
            self.send(target, Message::TimeoutNow { term }, out);
        }
        true
    }

    /// The log is written below `end` (in `generation`).
    pub fn log_written(&mut self, end: Offset, generation: u64, out: &mut Vec<Output>) {
        if generation != self.generation {
            return;
        }
        let end = end.min(self.log.end());
        if end <= self.written {
            return;
        }
        self.written = end;
        if self.cfg.durability == Durability::Synced && self.sync_requested < end {
            self.sync_requested = end;
            out.push(Output::Sync { end, generation });
        }
        self.on_durable_progress(out);
    }

    /// The log is synced below `end` (in `generation`).
    pub fn log_synced(&mut self, end: Offset, generation: u64, out: &mut Vec<Output>) {
        if generation != self.generation {
            return;
        }
        let end = end.min(self.written);
        if end <= self.synced {
            return;
        }
        self.synced = end;
        self.on_durable_progress(out);
    }

    /// The hard state of `version` is on stable storage.
    pub fn hard_state_persisted(&mut self, version: u64, out: &mut Vec<Output>) {
        assert!(
            version <= self.hard_version,
            "persisted a future version {version}"
        );
        self.persisted_version = self.persisted_version.max(version);
        if self.hard_state_durable() {
            for (to, message) in std::mem::take(&mut self.held) {
                out.push(Output::Send { to, message });
            }
            self.maybe_win(out);
        }
    }

    // ----- elections --------------------------------------------------------

    /// The voters' lease and the leader's check-quorum window, in ticks.
    fn lease_ticks(&self) -> u64 {
        u64::from(self.cfg.lease_ticks.unwrap_or(self.cfg.election_ticks))
    }

    fn leader_is_recent(&self) -> bool {
        self.leader.is_some() && self.now - self.heard_at < self.lease_ticks()
    }

    fn reset_election_timer(&mut self) {
        // xorshift64*: the jitter is drawn from the caller's seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let draw = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let base = u64::from(self.cfg.election_ticks);
        let jitter = self
            .cfg
            .election_jitter_ticks
            .map_or(base, u64::from)
            .max(1);
        self.heard_at = self.now;
        self.timeout = base + draw % jitter;
    }

    fn log_is_current(&self, r: &VoteRequest) -> bool {
        (r.last_term, r.end) >= (self.log.last_term(), self.log.end())
    }

    fn start_pre_vote(&mut self, out: &mut Vec<Output>) {
        self.quiesced = false;
        self.reset_election_timer();
        self.set_leader(None, out);
        self.role = RoleState::PreCandidate(Votes::new(self.cfg.id));
        let request = self.vote_request(self.hard.term + 1, false);
        for to in self.voters() {
            self.send(to, Message::PreVote(request.clone()), out);
        }
        self.maybe_win(out);
    }

    fn start_election(&mut self, transfer: bool, out: &mut Vec<Output>) {
        let was_leader = matches!(self.role, RoleState::Leader(_));
        assert!(!was_leader, "a leader does not stand for election");
        self.reset_election_timer();
        self.set_hard(
            HardState {
                term: self.hard.term + 1,
                vote: Some(self.cfg.id),
            },
            out,
        );
        self.verified = self.commit;
        self.durable_sent = 0;
        self.set_leader(None, out);
        self.role = RoleState::Candidate(Votes::new(self.cfg.id));
        let request = self.vote_request(self.hard.term, transfer);
        for to in self.voters() {
            self.send(to, Message::Vote(request.clone()), out);
        }
        self.maybe_win(out);
    }

    fn vote_request(&self, term: Term, transfer: bool) -> VoteRequest {
        VoteRequest {
            term,
            last_term: self.log.last_term(),
            end: self.log.end(),
            transfer,
        }
    }

    fn on_pre_vote(&mut self, from: NodeId, r: VoteRequest, out: &mut Vec<Output>) {
        // Someone is without a leader: stop trusting the leader's node for
        // its heartbeats. If it is the leader itself, asking for a later
        // term, it no longer leads this one (it restarted, or stepped down)
        // while its node stays up.
        self.quiesced = false;
        if r.term > self.hard.term && self.leader == Some(from) {
            self.set_leader(None, out);
        }
        let granted =
            r.term > self.hard.term && !self.leader_is_recent() && self.log_is_current(&r);
        let term = if granted { r.term } else { self.hard.term };
        self.send(
            from,
            Message::PreVoteResponse(VoteResponse { term, granted }),
            out,
        );
    }

    fn on_vote(&mut self, from: NodeId, r: VoteRequest, out: &mut Vec<Output>) {
        self.quiesced = false;
        debug_assert_eq!(
            r.term, self.hard.term,
            "terms are reconciled before dispatch"
        );
        let free = self.hard.vote.is_none_or(|v| v == from);
        let granted = free && self.leader.is_none() && self.log_is_current(&r);
        if granted {
            self.set_hard(
                HardState {
                    term: self.hard.term,
                    vote: Some(from),
                },
                out,
            );
            self.reset_election_timer();
        }
        let answer = VoteResponse {
            term: self.hard.term,
            granted,
        };
        self.send(from, Message::VoteResponse(answer), out);
    }

    fn on_pre_vote_response(&mut self, from: NodeId, r: VoteResponse, out: &mut Vec<Output>) {
        if let RoleState::PreCandidate(votes) = &mut self.role {
            votes.record(from, r.granted);
            self.maybe_win(out);
        }
    }

    fn on_vote_response(&mut self, from: NodeId, r: VoteResponse, out: &mut Vec<Output>) {
        if let RoleState::Candidate(votes) = &mut self.role {
            votes.record(from, r.granted);
            self.maybe_win(out);
        }
    }

    /// Moves a pre-candidate to candidate, or a candidate to leader, once a
    /// majority granted — and, for a candidate, once its own vote is durable.
    fn maybe_win(&mut self, out: &mut Vec<Output>) {
        match &self.role {
            RoleState::PreCandidate(votes) if votes.won(&self.membership) => {
                self.start_election(false, out);
            }
            RoleState::Candidate(votes)
                if votes.won(&self.membership) && self.hard_state_durable() =>
            {
                self.become_leader(out);
            }
            _ => {}
        }
    }

    fn become_leader(&mut self, out: &mut Vec<Output>) {
        let end = self.log.end();
        let progress = self
            .peers()
            .into_iter()
            .map(|id| (id, Progress::new(end, self.now)))
            .collect();
        self.role = RoleState::Leader(Box::new(Leadership {
            progress,
            recent: VecDeque::new(),
            recent_start: end,
            largest_entry: 0,
            heartbeat_elapsed: 0,
            transfer: None,
            durable_reported: self.durable_end(),
            quiesced: false,
        }));
        self.quiesced = false;
        self.heard_at = self.now;
        out.push(Output::Event(Event::BecameLeader {
            term: self.hard.term,
        }));
        self.set_leader(Some(self.cfg.id), out);
        // Entries of earlier terms commit only under one of this term. (An
        // implementation that commits them by counting sees no need for the
        // mark: the planted bug leaves it out, as such code would.)
        #[cfg(feature = "sim")]
        let mark = !self.cfg.bugs.commit_old_term_by_count;
        #[cfg(not(feature = "sim"))]
        let mark = true;
        if mark {
            self.append_as_leader(1, CONTROL_BATCH_BYTES, EntryKind::LeaderMark, out);
        } else {
            for to in self.peers() {
                self.send_append(to, out);
            }
        }
        self.maybe_commit(out);
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>, out: &mut Vec<Output>) {
        if term > self.hard.term {
            self.set_hard(HardState { term, vote: None }, out);
            self.verified = self.commit;
            self.durable_sent = 0;
        }
        if let RoleState::Leader(_) = self.role {
            out.push(Output::Event(Event::SteppedDown {
                term: self.hard.term,
            }));
        }
        self.role = RoleState::Follower;
        self.quiesced = false;
        self.reset_election_timer();
        self.set_leader(leader, out);
    }

    fn step_down(&mut self, term: Term, leader: Option<NodeId>, out: &mut Vec<Output>) {
        self.become_follower(term, leader, out);
    }

    fn check_quorum(&mut self) -> bool {
        #[cfg(feature = "sim")]
        if self.cfg.bugs.skip_check_quorum {
            return true;
        }
        // Checked every tick against each voter's last answer, so a leader
        // that resumes after a long pause steps down on its first round of
        // ticks (its driver counts a pause as the ticks it lasted). The
        // window is the voters' lease: by the time they may elect another
        // leader, this one has stopped acknowledging.
        let window = self.lease_ticks();
        let RoleState::Leader(l) = &self.role else {
            return true;
        };
        let heard = self
            .membership
            .voters
            .iter()
            .filter(|&&id| {
                id == self.cfg.id
                    || l.progress
                        .get(&id)
                        .is_some_and(|p| self.now - p.heard_at < window)
            })
            .count();
        let ok = heard >= self.membership.quorum();
        if ok {
            self.heard_at = self.now;
        }
        ok
    }

    fn set_leader(&mut self, leader: Option<NodeId>, out: &mut Vec<Output>) {
        if self.leader != leader {
            self.leader = leader;
            out.push(Output::Event(Event::LeaderChanged {
                term: self.hard.term,
                leader,
            }));
        }
    }

    // ----- the follower's side of replication -------------------------------

    /// A message only `from`, leading this term, sends: this replica
    /// follows it (a leader of the same term is a broken invariant).
    fn hear_leader(&mut self, from: NodeId, what: &str, out: &mut Vec<Output>) {
        assert!(
            !matches!(self.role, RoleState::Leader(_)),
            "replica {} leads term {} and got {what} from {from} in it",
            self.cfg.id,
            self.hard.term
        );
        if !matches!(self.role, RoleState::Follower) || self.leader != Some(from) {
            self.role = RoleState::Follower;
            self.set_leader(Some(from), out);
        }
        self.heard_at = self.now;
        self.quiesced = false;
    }

    fn on_append(&mut self, from: NodeId, r: AppendRequest, out: &mut Vec<Output>) {
        self.hear_leader(from, "an append", out);
        if !r.is_well_formed() {
            return;
        }
        if self.log.term_at_end(r.prev_end) != Some(r.prev_term) {
            let answer = self.append_response(Some(r.prev_end));
            self.send(from, Message::AppendResponse(answer), out);
            return;
        }
        let mut fresh = 0;
        for (i, e) in r.entries.iter().enumerate() {
            if e.offset >= self.log.end() {
                fresh = i;
                break;
            }
            fresh = i + 1;
            if self.log.term_at_end(e.offset + 1) != Some(e.term) {
                self.truncate(e.offset, out);
                fresh = i;
                break;
            }
        }
        let appended = &r.entries[fresh..];
        if !appended.is_empty() {
            for e in appended {
                self.log.append(e);
            }
            if appended
                .iter()
                .any(|e| matches!(e.kind, EntryKind::Config(_)))
            {
                self.refresh_membership();
            }
            out.push(Output::Append {
                entries: appended.to_vec(),
                generation: self.generation,
            });
        }
        self.verified = self.verified.max(r.end());
        self.advance_commit_to(r.commit.min(self.verified), out);
        let answer = self.append_response(None);
        self.durable_sent = answer.durable;
        self.send(from, Message::AppendResponse(answer), out);
    }

    /// The leader's log starts past where this one can follow it: unless
    /// this log already holds the leader's entry ending at its start, it
    /// starts again, empty, there. Nothing committed here is lost: a log
    /// that differs from the leader's at the start committed less.
    fn on_reset(&mut self, from: NodeId, r: ResetRequest, out: &mut Vec<Output>) {
        self.hear_leader(from, "a reset", out);
        let holds =
            r.start >= self.log.start() && self.log.term_at_end(r.start) == Some(r.start_term);
        if holds {
            self.verified = self.verified.max(r.start);
        } else if self.commit <= r.start && r.start_term <= r.term {
            self.generation += 1;
            self.log = LogView::new(LogState {
                start: r.start,
                start_term: r.start_term,
                end: r.start,
                epochs: Vec::new(),
                configs: Vec::new(),
            });
            self.base_membership = r.membership.clone();
            self.refresh_membership();
            self.written = r.start;
            self.synced = r.start;
            self.sync_requested = r.start;
            self.verified = r.start;
            out.push(Output::Reset {
                start: r.start,
                term: r.start_term,
                membership: r.membership,
                generation: self.generation,
            });
        } else {
            // Committed past the leader's start yet different there: not
            // this group's leader's log. Nothing is dropped.
            return;
        }
        self.advance_commit_to(r.commit.min(self.verified), out);
        let answer = self.append_response(None);
        self.durable_sent = answer.durable;
        self.send(from, Message::AppendResponse(answer), out);
    }

    fn on_heartbeat(&mut self, from: NodeId, h: Heartbeat, out: &mut Vec<Output>) {
        if !matches!(self.role, RoleState::Follower) || self.leader != Some(from) {
            self.role = RoleState::Follower;
            self.set_leader(Some(from), out);
        }
        self.heard_at = self.now;
        self.advance_commit_to(h.commit.min(self.verified), out);
        // Quiet only with the whole log committed: a follower still missing
        // entries keeps waiting for them (and times out if they never come).
        self.quiesced = self.cfg.quiesce && h.quiesce && self.commit == self.log.end();
        let answer = self.append_response(None);
        self.send(from, Message::HeartbeatResponse(answer), out);
    }

    fn append_response(&self, rejected: Option<Offset>) -> AppendResponse {
        // On a rejection the leader looks for divergence at or below the
        // request's start: say what this log holds there.
        let end = rejected.map_or(self.log.end(), |prev| prev.min(self.log.end()));
        let last_term = self.log.term_at_end(end).unwrap_or(0);
        let term_start = self
            .log
            .epoch_range(last_term)
            .map_or(self.log.start(), |(s, _)| s);
        AppendResponse {
            term: self.hard.term,
            rejected,
            end,
            last_term,
            term_start,
            matched: self.verified,
            durable: self.verified.min(self.durable_end()),
        }
    }

    fn truncate(&mut self, end: Offset, out: &mut Vec<Output>) {
        assert!(
            end >= self.commit,
            "replica {} asked to truncate to {end}, below its commit {}",
            self.cfg.id,
            self.commit
        );
        assert!(
            end >= self.verified,
            "truncating the leader's own entries at {end}"
        );
        self.log.truncate(end);
        self.generation += 1;
        self.written = self.written.min(end);
        self.synced = self.synced.min(end);
        self.sync_requested = self.sync_requested.min(end);
        out.push(Output::Truncate {
            end,
            generation: self.generation,
        });
        self.refresh_membership();
    }

    fn advance_commit_to(&mut self, commit: Offset, out: &mut Vec<Output>) {
        if commit <= self.commit {
            return;
        }
        assert!(
            commit <= self.log.end(),
            "commit {commit} past the log end {}",
            self.log.end()
        );
        self.commit = commit;
        if let Some(before) = self.log.compact_configs(commit) {
            // What was in effect before the entries kept (a reset follower
            // is told it).
            self.base_membership = before;
        }
        out.push(Output::Event(Event::Committed { commit }));
    }

    fn on_durable_progress(&mut self, out: &mut Vec<Output>) {
        let durable = self.durable_end();
        if let RoleState::Leader(l) = &mut self.role {
            if durable > l.durable_reported {
                l.durable_reported = durable;
                out.push(Output::Event(Event::LeaderDurable { end: durable }));
            }
            self.maybe_commit(out);
            return;
        }
        let Some(leader) = self.leader else { return };
        let answer = self.append_response(None);
        if answer.durable > self.durable_sent {
            self.durable_sent = answer.durable;
            self.send(leader, Message::AppendResponse(answer), out);
        }
    }

    // ----- the leader's side of replication ---------------------------------

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        match &self.role {
            RoleState::Leader(l) if l.transfer.is_some() => Err(ProposeError::Transferring),
            RoleState::Leader(_) => Ok(()),
            _ => Err(ProposeError::NotLeader(self.leader)),
        }
    }

    fn append_as_leader(
        &mut self,
        records: u64,
        bytes: u32,
        kind: EntryKind,
        out: &mut Vec<Output>,
    ) -> Entry {
        let offset = self.log.end();
        let entry = Entry {
            offset,
            end: offset + records,
            term: self.hard.term,
            bytes,
            kind,
        };
        self.log.append(&entry);
        let config = matches!(entry.kind, EntryKind::Config(_));
        out.push(Output::Append {
            entries: vec![entry.clone()],
            generation: self.generation,
        });
        let RoleState::Leader(l) = &mut self.role else {
            unreachable!("checked by the caller")
        };
        l.recent.push_back((entry.offset, entry.end, entry.bytes));
        l.largest_entry = l.largest_entry.max(u64::from(entry.bytes));
        if l.recent.len() > RECENT_ENTRIES_MAX {
            if let Some((_, end, _)) = l.recent.pop_front() {
                l.recent_start = end;
            }
            for p in l.progress.values_mut() {
                if p.mode == Mode::Replicate && p.next < l.recent_start {
                    p.rewind();
                }
            }
        }
        if config {
            self.refresh_membership();
        }
        for to in self.peers() {
            self.send_append(to, out);
        }
        entry
    }

    fn on_append_response(&mut self, from: NodeId, r: AppendResponse, out: &mut Vec<Output>) {
        let now = self.now;
        let end = self.log.end();
        let max_append = self.cfg.max_append_bytes;
        let heartbeat_ticks = u64::from(self.cfg.heartbeat_ticks);
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let Some(p) = l.progress.get_mut(&from) else {
            return;
        };
        p.heard_at = now;
        // A follower's claims never exceed what this leader has.
        let matched = r.matched.min(end);
        let durable = r.durable.min(matched);
        if let Some(prev) = r.rejected {
            let stale = match p.mode {
                Mode::Replicate => prev < p.durable,
                Mode::Probe { .. } => prev != p.next,
            };
            if stale {
                return;
            }
            let start = self.log.start();
            if prev <= start && start > 0 {
                // The follower lacks this log's first entry, and nothing
                // older is left to look for: it starts again here, empty,
                // with nothing left to write.
                p.matched = p.matched.min(start);
                p.probe(start);
                p.mode = Mode::Probe { inflight: true };
                p.progressed_at = now;
                p.probe_sent_at = now;
                p.probe_empty = true;
                let reset = self.reset_request();
                self.send(from, Message::Reset(reset), out);
                return;
            }
            // Only the durable prefix is sure to be there: a follower that
            // restarted lost what it had matched but not yet written.
            let next = divergence_hint(&self.log, &r).max(p.durable);
            p.matched = p.matched.min(next);
            p.probe(next);
        } else {
            let probed = p.next;
            let took = p.acknowledge(matched, durable, now);
            if let Mode::Probe { inflight } = p.mode {
                if took {
                    // A probe's entries, read from the log by byte budget:
                    // their size is not known here. At most `max_append`,
                    // or one entry past it.
                    p.took(p.matched, max_append.max(l.largest_entry));
                }
                let caught_up = matched >= l.recent_start;
                // A probe out below the recent window carries entries
                // (unless empty): its own answer shows more than where it
                // looked. Any other answer (a heartbeat's, a report of what
                // the follower wrote) leaves it out for a heartbeat: sent
                // again for every batch of a backlog the follower reports
                // written, the same megabyte would go out dozens of times.
                let waiting = inflight
                    && matched <= probed
                    && !caught_up
                    && !p.probe_empty
                    && now - p.probe_sent_at < heartbeat_ticks;
                if !waiting && matched >= probed {
                    // Accepted: the follower's log matches up to `matched`.
                    p.next = matched;
                    p.mode = if caught_up {
                        Mode::Replicate
                    } else {
                        Mode::Probe { inflight: false }
                    };
                } else if !waiting {
                    // No match where the probe looks (a new replica answers
                    // with nothing matched): probe again.
                    p.mode = Mode::Probe { inflight: false };
                }
            }
        }
        self.maybe_commit(out);
        self.send_append(from, out);
        self.maybe_finish_transfer(from, out);
    }

    /// What a follower whose log cannot continue this one's (it ends below
    /// this log's start, or differs there) is told.
    fn reset_request(&self) -> ResetRequest {
        let start = self.log.start();
        ResetRequest {
            term: self.hard.term,
            start,
            start_term: self.log.term_at_end(start).unwrap_or(0),
            membership: self
                .log
                .config_before(start)
                .unwrap_or(&self.base_membership)
                .clone(),
            commit: self.commit,
        }
    }

    fn maybe_finish_transfer(&mut self, from: NodeId, out: &mut Vec<Output>) {
        let end = self.log.end();
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        let Some((target, _)) = l.transfer else {
            return;
        };
        if target == from && l.progress.get(&from).is_some_and(|p| p.matched == end) {
            let term = self.hard.term;
            self.send(target, Message::TimeoutNow { term }, out);
        }
    }

    fn send_append(&mut self, to: NodeId, out: &mut Vec<Output>) {
        let term = self.hard.term;
        let commit = self.commit;
        let end = self.log.end();
        let now = self.now;
        let max_append = self.cfg.max_append_bytes;
        let max_inflight = self.cfg.max_inflight_bytes;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let Some(p) = l.progress.get_mut(&to) else {
            return;
        };
        let mut requests = Vec::new();
        match p.mode {
            Mode::Probe { inflight: true } => return,
            Mode::Probe { inflight: false } => {
                debug_assert!(p.next >= p.matched, "a probe looks past what matched");
                // With the budget spent, a probe goes only when a rewind
                // asks, and carries nothing: it checks that the follower
                // still holds what it matched. One that restarted and lost
                // what it had not written rejects it, and is probed from
                // what it holds.
                let to = if p.unwritten_bytes < max_inflight {
                    end
                } else if std::mem::take(&mut p.recheck) {
                    p.next
                } else {
                    return;
                };
                p.mode = Mode::Probe { inflight: true };
                p.progressed_at = now;
                p.probe_sent_at = now;
                p.probe_empty = to == p.next;
                p.recheck = false;
                requests.push((p.next, to, max_append));
            }
            Mode::Replicate => {
                while p.next < end && p.unwritten_bytes < max_inflight {
                    let budget = max_append.min(max_inflight - p.unwritten_bytes);
                    let skip = l.recent.partition_point(|&(o, _, _)| o < p.next);
                    debug_assert!(
                        l.recent.get(skip).is_some_and(|&(o, _, _)| o == p.next),
                        "a pipelined follower's next {} is an entry start in the recent window",
                        p.next
                    );
                    let mut to_end = p.next;
                    let mut bytes = 0;
                    for &(_, e, b) in l.recent.range(skip..) {
                        if bytes > 0 && bytes + u64::from(b) > budget {
                            break;
                        }
                        bytes += u64::from(b);
                        to_end = e;
                    }
                    requests.push((p.next, to_end, bytes));
                    p.sent(to_end, bytes, now);
                }
            }
        }
        if !requests.is_empty()
            && let RoleState::Leader(l) = &mut self.role
        {
            l.quiesced = false;
        }
        for (from, end, max_bytes) in requests {
            let prev_term = self.log.term_at_end(from);
            let Some(prev_term) = prev_term else {
                // Below the log start (retention removed it): the follower
                // starts its log again at this log's start.
                self.send(to, Message::Reset(self.reset_request()), out);
                return;
            };
            out.push(Output::Replicate(Replicate {
                to,
                term,
                from,
                prev_term,
                end,
                max_bytes,
                commit,
            }));
        }
    }

    /// Followers that answered or wrote nothing new for a while: a request
    /// or its answer was lost, a follower's disk stalls, or it restarted and
    /// lost what it had not written. Look again from what each matched: one
    /// that lost it rejects the look.
    fn resume_stalled_pipelines(&mut self) {
        let stall = 2 * u64::from(self.cfg.heartbeat_ticks);
        let now = self.now;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        for p in l.progress.values_mut() {
            if now - p.progressed_at <= stall {
                continue;
            }
            if !p.unwritten.is_empty() || p.durable < p.matched {
                p.rewind();
                p.progressed_at = now;
            } else if p.mode == (Mode::Probe { inflight: true }) {
                p.mode = Mode::Probe { inflight: false };
                p.progressed_at = now;
            }
        }
    }

    fn maybe_commit(&mut self, out: &mut Vec<Output>) {
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        let mut durable: Vec<Offset> = self
            .membership
            .voters
            .iter()
            .map(|&id| {
                if id == self.cfg.id {
                    self.durable_end()
                } else {
                    l.progress.get(&id).map_or(0, |p| p.durable)
                }
            })
            .collect();
        durable.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = durable[self.membership.quorum() - 1];
        if candidate <= self.commit {
            return;
        }
        let of_this_term = self.log.term_at_end(candidate) == Some(self.hard.term);
        #[cfg(feature = "sim")]
        let of_this_term = of_this_term || self.cfg.bugs.commit_old_term_by_count;
        if !of_this_term {
            return;
        }
        self.advance_commit_to(candidate, out);
        self.trim_recent();
        if !self.membership.is_voter(self.cfg.id)
            && self
                .log
                .last_config()
                .is_some_and(|&(o, _)| o < self.commit)
        {
            // Removed, and the removal is committed: let the others elect.
            self.step_down(self.hard.term, None, out);
        }
    }

    fn trim_recent(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let needed = l
            .progress
            .values()
            .filter(|p| p.mode == Mode::Replicate)
            .map(|p| p.next)
            .min()
            .unwrap_or(Offset::MAX)
            .min(self.commit);
        while l.recent.front().is_some_and(|&(_, end, _)| end <= needed) {
            if let Some((_, end, _)) = l.recent.pop_front() {
                l.recent_start = end;
            }
        }
    }

    // ----- membership and plumbing ------------------------------------------

    fn refresh_membership(&mut self) {
        self.membership = match self.log.last_config() {
            Some((_, m)) => m.clone(),
            None => self.base_membership.clone(),
        };
        let end = self.log.end();
        let now = self.now;
        let peers = self.peers();
        if let RoleState::Leader(l) = &mut self.role {
            l.progress.retain(|id, _| peers.contains(id));
            for id in peers {
                l.progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(end, now));
            }
        }
    }

    /// Every other replica.
    fn peers(&self) -> Vec<NodeId> {
        self.membership
            .replicas()
            .filter(|&id| id != self.cfg.id)
            .collect()
    }

    /// Every other voter.
    fn voters(&self) -> Vec<NodeId> {
        self.membership
            .voters
            .iter()
            .copied()
            .filter(|&id| id != self.cfg.id)
            .collect()
    }

    fn set_hard(&mut self, state: HardState, out: &mut Vec<Output>) {
        assert!(
            state.term > self.hard.term
                || (state.term == self.hard.term
                    && (self.hard.vote.is_none() || self.hard.vote == state.vote)),
            "hard state may only move forward: {:?} -> {state:?}",
            self.hard
        );
        if state == self.hard {
            return;
        }
        self.hard = state;
        self.hard_version += 1;
        out.push(Output::PersistHardState {
            state,
            version: self.hard_version,
        });
    }

    fn hard_state_durable(&self) -> bool {
        #[cfg(feature = "sim")]
        if self.cfg.bugs.skip_hard_state_persistence {
            return true;
        }
        self.persisted_version == self.hard_version
    }

    fn send(&mut self, to: NodeId, message: Message, out: &mut Vec<Output>) {
        if let RoleState::Leader(l) = &mut self.role {
            l.quiesced = false;
        }
        if self.hard_state_durable() {
            out.push(Output::Send { to, message });
        } else {
            self.held.push((to, message));
        }
    }
}

/// Where to probe next after a rejection: the follower's position cut to
/// where its term last agrees with the leader's log (KIP-101/KIP-279).
fn divergence_hint(log: &LogView, r: &AppendResponse) -> Offset {
    let (term, end) = log.end_of_epoch_at_most(r.last_term);
    if term == r.last_term {
        // Both logs hold that term's entries, from one leader: they agree as
        // far as both have them.
        end.min(r.end)
    } else {
        // None of the follower's entries of that term are in this log: go
        // below where they start, to a boundary of this log.
        end.min(log.epoch_start_at_or_below(r.term_start))
    }
}
