//! A shard's replicated partitions: one Raft group per partition replica
//! (the `replication` crate's sans-I/O core, all of a shard's groups in one
//! [`Mux`]), driven here with the shard's real clock, disk and sockets.
//!
//! - Messages leave per peer shard, one frame per tick and peer shard for
//!   every group between them ([`Links`]); a leader's appends carry the
//!   batches read back from its log, byte for byte.
//! - Storage actions of a group run in order on a worker of its own
//!   ([`StorageOp`]): appends at the offset the core chose (the log refuses
//!   any other), truncations, syncs and the hard state (term and vote, in
//!   `raft-state` beside the log, replaced atomically). Completions go back
//!   into the core.
//! - Events settle the producers waiting on a partition: `acks=1` once the
//!   leader's copy is durable by the topic's policy, `acks=all` once
//!   committed (the high watermark); a leader that steps down fails them
//!   with `NOT_LEADER_OR_FOLLOWER`, and the client retries.
//!
//! - The partition's producer state follows the Raft log: each entry's
//!   batch is recorded as the core appends it (a leader's proposal, a
//!   follower's entries from its leader, in log order), and a cut of a
//!   divergent suffix cuts it too, so a new leader knows every producer
//!   batch its log holds. A leader checks a producer's batch and proposes
//!   it in one synchronous step.
//!
//! Nothing here awaits while the mux is borrowed: a round of the core and
//! the carrying out of its outputs is synchronous, and I/O runs in tasks
//! that report back by starting a new round.

mod membership;
mod moves;
mod recent;

pub use membership::{Configs, read_configs};

use crate::partition::{Acks, Partition};
use crate::peer::Links;
use fjord_core::batch::{self, Batch};
use fjord_net::{ErrorCode, api};
use fjord_replication::control::{LeaderReport, METADATA_GROUP};
use fjord_replication::raft::mux::{GroupId, Mux, Outbox, PeerBatch};
use fjord_replication::raft::{
    Config, Durability, Entry, EntryKind, Event, Group, HardState, LogState, Membership, Message,
    NodeId, Offset, Output, ProposeError, Replicate, Term,
};
use fjord_replication::wire;
use fjord_storage::{BatchSlice, ProducerBatch, StorageError, Verdict};
use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::ops::{Deref, Range};
use std::rc::Rc;
use std::time::Duration;

/// Heartbeats a leader sends per election timeout: enough that a lost one
/// or two do not start an election, few enough that ten thousand idle
/// groups cost little (each is a message through the core both ways).
const HEARTBEATS_PER_ELECTION: u32 = 4;
/// Ticks between sweeps of links no replica uses.
const LINK_SWEEP_TICKS: u64 = 200;
/// Bytes of proposals a leader holds before its log takes them.
const PROPOSED_BYTES_MAX: u64 = 64 << 20;

/// A batch's bytes until its log takes them; validated already, whichever
/// the variant (its log does not read its CRC again).
pub enum Payload {
    /// Copied out of a producer's request: it holds the leader's room.
    /// Shared with [`recent::Recent`] once proposed.
    Proposed(Rc<Vec<u8>>),
    /// Built here (a new leader's control batch).
    Owned(Vec<u8>),
    /// In a peer's frame, shared by the frame's batches (`receive`
    /// validated each against its entry).
    Shared(Rc<wire::Payload>, Range<usize>),
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Payload::Proposed(bytes) => bytes,
            Payload::Owned(bytes) => bytes,
            Payload::Shared(frame, range) => &frame[range.clone()],
        }
    }
}

/// What a group's storage worker does, in order.
enum StorageOp {
    Append {
        entry: Entry,
        payload: Payload,
        generation: u64,
    },
    Truncate {
        end: Offset,
    },
    Sync {
        end: Offset,
        generation: u64,
    },
    Persist {
        state: HardState,
        version: u64,
    },
    Reset {
        start: Offset,
        membership: Membership,
    },
}

/// Where the payloads of a round's appends come from.
enum Source<'a> {
    None,
    /// A producer's batch: the one entry `propose` appends.
    Proposal(Option<Payload>),
    /// A peer's frame: the batches of its append requests, by group and
    /// offset.
    Frame(
        &'a Rc<wire::Payload>,
        &'a HashMap<(GroupId, Offset), Range<usize>>,
    ),
}

/// A producer waiting for its batches to be acknowledged.
struct Ack {
    end: Offset,
    all: bool,
    tx: oneshot::Sender<Result<(), ErrorCode>>,
}

/// What the shard knows of a group's state, for its requests.
#[derive(Default)]
struct View {
    term: Term,
    leader: Option<NodeId>,
    leading: bool,
    commit: Offset,
    durable: Offset,
    acks: Vec<Ack>,
    readers: Vec<(Offset, oneshot::Sender<()>)>,
    failed: bool,
    /// A leader committed an entry of its own term (its mark). Until then
    /// its high watermark is what it last heard as a follower, which may
    /// be behind what the previous leader committed: quiet groups send no
    /// heartbeats to carry the last commit.
    term_committed: bool,
    /// A leader's uncommitted proposals, for its followers.
    recent: recent::Recent,
}

/// The replication side of one partition replica.
pub struct Replica {
    /// The group.
    pub group: GroupId,
    /// The other replicas' shard addresses, by node.
    peers: RefCell<HashMap<NodeId, SocketAddr>>,
    /// The group's voters before any membership entry in its log (the
    /// replicas it was created with, or had when this replica opened).
    base: Vec<NodeId>,
    /// Where the replicas are, as the metadata says.
    layout: RefCell<Layout>,
    /// The membership entries of the log (see [`membership`]).
    configs: RefCell<Configs>,
    durability: Durability,
    view: RefCell<View>,
    /// Dropped when the group stops: its worker then ends.
    ops: RefCell<Option<LocalSender<StorageOp>>>,
    worker: RefCell<Option<LocalReceiver<StorageOp>>>,
    /// Bytes of a leader's proposals not yet staged by the log: producers
    /// wait for room (acks=0 included), as on an unreplicated log.
    room: Semaphore,
}

/// A replicated partition's replicas as the metadata places them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Every node holding a replica: the current ones, preferred leader
    /// first, then those a move adds. Only their messages are taken.
    pub members: Vec<NodeId>,
    /// A move's target, preferred leader first; empty when not moving.
    pub target: Vec<fjord_replication::placement::Replica>,
    /// The partition, for the report that a move is done.
    pub topic: String,
    /// The topic's id.
    pub topic_id: u64,
    /// The partition number.
    pub partition: u32,
}

impl Layout {
    /// The report that the group reached this layout's target.
    fn moved(&self) -> fjord_replication::metadata::PartitionMoved {
        fjord_replication::metadata::PartitionMoved {
            topic: self.topic.clone(),
            topic_id: self.topic_id,
            partition: self.partition,
            replicas: self.target.clone(),
        }
    }
}

impl Replica {
    /// A replica of `group` whose voters were `base` (node ids) before any
    /// membership entry, placed as `layout` says, reaching the others at
    /// `peers`.
    pub fn new(
        group: GroupId,
        base: Vec<NodeId>,
        layout: Layout,
        peers: HashMap<NodeId, SocketAddr>,
        durability: Durability,
    ) -> Replica {
        let (ops, worker) = local_channel::new_unbounded();
        Replica {
            group,
            peers: RefCell::new(peers),
            base,
            layout: RefCell::new(layout),
            configs: RefCell::new(Vec::new()),
            durability,
            view: RefCell::new(View::default()),
            ops: RefCell::new(Some(ops)),
            worker: RefCell::new(Some(worker)),
            room: Semaphore::new(PROPOSED_BYTES_MAX),
        }
    }

    fn push(&self, op: StorageOp) {
        // Unbounded: a follower's appends are bounded by its leader's
        // budget of bytes sent and not yet reported durable, a leader's by
        // `room`. Gone: the group stopped.
        if let Some(ops) = self.ops.borrow().as_ref() {
            let _ = ops.try_send(op);
        }
    }

    /// Updates where the other replicas are and are reached (a node
    /// re-registered, a move started or ended).
    pub fn set_placement(&self, layout: Layout, peers: HashMap<NodeId, SocketAddr>) {
        *self.layout.borrow_mut() = layout;
        *self.peers.borrow_mut() = peers;
    }

    fn is_member(&self, node: NodeId) -> bool {
        self.layout.borrow().members.contains(&node)
    }

    fn preferred_leader(&self) -> Option<NodeId> {
        self.layout.borrow().members.first().copied()
    }

    fn peer(&self, node: NodeId) -> Option<SocketAddr> {
        self.peers.borrow().get(&node).copied()
    }

    /// The high watermark this replica knows.
    pub fn high_watermark(&self) -> Offset {
        self.view.borrow().commit
    }

    /// Whether the high watermark is one clients may be given: not while
    /// this replica leads without having committed an entry of its term
    /// (Kafka answers ListOffsets with OFFSET_NOT_AVAILABLE then, and
    /// clients retry).
    pub fn high_watermark_settled(&self) -> bool {
        let view = self.view.borrow();
        !view.leading || view.term_committed
    }

    /// The term this replica leads in, while it leads and serves.
    pub fn leading_term(&self) -> Option<Term> {
        let view = self.view.borrow();
        (view.leading && !view.failed).then_some(view.term)
    }

    /// Whether this replica leads and serves requests.
    pub fn is_leader(&self) -> bool {
        let view = self.view.borrow();
        view.leading && !view.failed
    }

    /// Resolves once the high watermark passes `offset`, or `wait` passes.
    pub async fn wait_past(&self, offset: Offset, wait: Duration) {
        let rx = {
            let mut view = self.view.borrow_mut();
            if view.commit > offset {
                return;
            }
            view.readers.retain(|(_, tx)| !tx.is_canceled());
            let (tx, rx) = oneshot::channel();
            view.readers.push((offset, tx));
            rx
        };
        let timeout = std::pin::pin!(glommio::timer::sleep(wait));
        let _ = futures::future::select(rx, timeout).await;
    }

    /// Releases every parked reader (shutdown).
    pub fn wake_readers(&self) {
        self.view.borrow_mut().readers.clear();
    }

    fn fail_acks(view: &mut View, code: ErrorCode) {
        for ack in view.acks.drain(..) {
            let _ = ack.tx.send(Err(code));
        }
    }

    fn on_event(&self, me: NodeId, event: &Event) {
        let mut view = self.view.borrow_mut();
        match *event {
            // The leader's durable mark is of its term: a new term starts
            // it afresh (the log may have been cut meanwhile), or an acks=1
            // could be answered by a mark of an earlier term.
            Event::BecameLeader { term } => {
                view.term = term;
                view.leader = Some(me);
                view.leading = true;
                view.term_committed = false;
                view.durable = 0;
                view.recent.clear();
            }
            Event::SteppedDown { .. } => {
                view.leading = false;
                view.durable = 0;
                view.recent.clear();
                Self::fail_acks(&mut view, ErrorCode::NotLeaderOrFollower);
            }
            Event::LeaderChanged { term, leader } => {
                view.term = term;
                view.leader = leader;
                if leader != Some(me) {
                    view.leading = false;
                    view.durable = 0;
                    view.recent.clear();
                    Self::fail_acks(&mut view, ErrorCode::NotLeaderOrFollower);
                }
            }
            Event::Committed { commit } => {
                // A leader advances its commit only over an entry of its
                // own term (Raft's rule; its mark is the first).
                view.term_committed |= view.leading;
                view.commit = commit;
                view.recent.forget_below(commit);
                view.readers.retain(|(offset, _)| *offset >= commit);
                settle(&mut view.acks, |ack| ack.all && ack.end <= commit);
            }
            Event::LeaderDurable { end } => {
                view.durable = end;
                settle(&mut view.acks, |ack| !ack.all && ack.end <= end);
            }
        }
    }
}

/// Answers the acknowledgements `done` picks.
fn settle(acks: &mut Vec<Ack>, done: impl Fn(&Ack) -> bool) {
    let mut i = 0;
    while i < acks.len() {
        if done(&acks[i]) {
            let _ = acks.swap_remove(i).tx.send(Ok(()));
        } else {
            i += 1;
        }
    }
}

/// A replicated partition as one replica sees it (fully on the leader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Its term (the leader epoch).
    pub term: Term,
    /// The high watermark.
    pub high_watermark: Offset,
    /// Every voter and its log end as far as known (the leader knows all).
    pub replicas: Vec<(NodeId, Option<Offset>)>,
    /// Voters in sync (the leader's view): heard from, and caught up or
    /// catching up, within `replica_lag_time_max_ms`.
    pub in_sync: Vec<NodeId>,
}

/// Settings of a shard's groups.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// This node.
    pub node: NodeId,
    /// The shard, for log lines.
    pub shard: usize,
    /// The Raft clock.
    pub tick: Duration,
    /// The shortest election timeout, in ticks.
    pub election_ticks: u32,
    /// `replica_lag_time_max_ms`, in ticks.
    pub lag_ticks: u64,
    /// Ticks between checks that hand leadership back to preferred leaders
    /// (`leader_rebalance_interval_ms`); 0: never.
    pub rebalance_ticks: u64,
}

/// A shard's replicated partitions.
pub struct Replication {
    settings: Settings,
    mux: RefCell<Mux>,
    partitions: RefCell<HashMap<GroupId, Rc<Partition>>>,
    links: Links,
    reports: LocalSender<LeaderReport>,
    /// Partitions whose replica failed, for the shard to open again.
    failed: LocalSender<Rc<Partition>>,
    seeds: std::collections::hash_map::RandomState,
    /// Refused peer messages, for the rate-limited log line.
    refusals: crate::logging::Repeated,
    store: RefCell<Option<HardStateStore>>,
    /// Moves this shard's leaders finished, for the shard to report.
    moved: LocalSender<fjord_replication::metadata::PartitionMoved>,
    /// When each finished move was last reported.
    reported_moves: RefCell<HashMap<GroupId, std::time::Instant>>,
    /// When anything last arrived from each node: the liveness that stands
    /// in for the heartbeats of quiet groups.
    heard: RefCell<HashMap<NodeId, std::time::Instant>>,
}

/// Records a group's hard state durably; resolves once synced.
pub type HardStateStore =
    Rc<dyn Fn(GroupId, HardState) -> futures::future::LocalBoxFuture<'static, Result<(), String>>>;

impl Replication {
    /// A shard's replication, reporting leader changes on `reports`.
    pub fn new(
        settings: Settings,
        links: Links,
        reports: LocalSender<LeaderReport>,
        failed: LocalSender<Rc<Partition>>,
        moved: LocalSender<fjord_replication::metadata::PartitionMoved>,
    ) -> Replication {
        assert!(
            settings.election_ticks >= HEARTBEATS_PER_ELECTION,
            "elections outlast heartbeats"
        );
        Replication {
            settings,
            mux: RefCell::new(Mux::new()),
            partitions: RefCell::new(HashMap::new()),
            links,
            reports,
            failed,
            seeds: std::collections::hash_map::RandomState::new(),
            refusals: crate::logging::Repeated::default(),
            store: RefCell::new(None),
            moved,
            reported_moves: RefCell::new(HashMap::new()),
            heard: RefCell::new(HashMap::new()),
        }
    }

    /// A link connection a peer shard at `dialer` opened to this one.
    pub fn adopt(&self, dialer: SocketAddr, stream: glommio::net::TcpStream) {
        self.links.adopt(dialer, stream);
    }

    /// Where hard states are recorded (the node's [`crate::hardstate`] log).
    pub fn set_hard_state_store(&self, store: HardStateStore) {
        *self.store.borrow_mut() = Some(store);
    }

    /// Starts the group of a partition just opened, from its hard state and
    /// its log's shape, and starts its storage worker.
    pub fn add(self: &Rc<Self>, partition: Rc<Partition>, hard: HardState, configs: Configs) {
        let replica = partition.replica().expect("a replicated partition");
        let log = partition.log();
        let start = log.offset_start();
        let epochs: Vec<(Term, Offset)> = log
            .epochs()
            .into_iter()
            .filter(|&(epoch, _)| epoch > 0)
            .map(|(epoch, offset)| (epoch as Term, offset))
            .collect();
        let state = LogState {
            start,
            start_term: if start == 0 {
                0
            } else {
                epochs.first().map_or(0, |e| e.0)
            },
            end: log.offset_next(),
            epochs,
            configs: configs.clone(),
        };
        *replica.configs.borrow_mut() = configs;
        let mut config = Config::new(
            self.settings.node,
            replica.durability,
            self.seeds.hash_one(replica.group),
        );
        config.election_ticks = self.settings.election_ticks;
        // Failover within 1.5 election timeouts (Raft's default spread
        // allows 2): a killed leader's partitions serve again within 2 s
        // with the default 1 s timeout, new leaders' news included.
        config.election_jitter_ticks = Some((self.settings.election_ticks / 2).max(1));
        // Three quarters of an election timeout: three heartbeats.
        config.lease_ticks = Some((self.settings.election_ticks * 3 / 4).max(1));
        config.heartbeat_ticks = self.settings.election_ticks / HEARTBEATS_PER_ELECTION;
        // Two batches at least ahead of a follower's durable reports: one
        // at a time, a topic of batches past the budget would replicate
        // one per round trip and write.
        let two_batches = 2 * partition.max_batch_bytes() as u64;
        config.max_inflight_bytes = config.max_inflight_bytes.max(two_batches);
        // Idle partitions go quiet, their liveness carried by the beats
        // every link sends. Not the metadata group: its traffic reaches
        // shard 0 through a voter's listener on any shard, so shard 0 may
        // not hear the beats of the nodes it talks to; one group costs
        // nothing anyway.
        config.quiesce = replica.group != METADATA_GROUP;
        let group = Group::new(config, hard, state, Membership::of_voters(&replica.base), 0);
        let id = replica.group;
        let worker = replica
            .worker
            .borrow_mut()
            .take()
            .expect("a replica starts once");
        self.partitions.borrow_mut().insert(id, partition.clone());
        self.mux.borrow_mut().insert(id, group);
        glommio::spawn_local(self.clone().run_storage(partition, worker)).detach();
    }

    /// Below what offset a replica's log may delete segments: its high
    /// watermark, and on a leader what every follower has.
    pub fn retention_floor(&self, group: GroupId) -> Offset {
        let mux = self.mux.borrow();
        let Some(g) = mux.get(group) else {
            return 0;
        };
        g.followers()
            .iter()
            .map(|&(_, matched, _)| matched)
            .fold(g.commit(), Offset::min)
    }

    /// The voters of a group this shard leads that answered within an
    /// election timeout (the leader included); empty when it does not lead.
    pub fn answering(&self, group: GroupId) -> Vec<NodeId> {
        let mux = self.mux.borrow();
        mux.get(group)
            .filter(|g| g.leader() == Some(self.settings.node))
            .map(|g| g.in_sync(u64::from(self.settings.election_ticks)))
            .unwrap_or_default()
    }

    /// A group's log lost its first entries (retention): followers that
    /// need them start their logs again at the new start.
    pub fn log_start_advanced(self: &Rc<Self>, group: GroupId, start: Offset) {
        self.round(group, Source::None, |g, _| g.log_start_advanced(start));
    }

    /// A group's Raft log end (Kafka's log end offset): the partition log
    /// trails it while its writes are queued.
    pub fn log_end(&self, group: GroupId) -> Option<Offset> {
        self.mux.borrow().get(group).map(|g| g.log_end())
    }

    /// A group's state, for describe.
    pub fn status(&self, group: GroupId) -> Option<Status> {
        let mux = self.mux.borrow();
        let g = mux.get(group)?;
        let me = self.settings.node;
        let followers = g.followers();
        let leading = g.leader() == Some(me);
        let replicas: Vec<(NodeId, Option<Offset>)> = g
            .membership()
            .replicas()
            .map(|n| {
                let end = if n == me {
                    Some(g.log_end())
                } else {
                    followers.iter().find(|f| f.0 == n).map(|f| f.1)
                };
                (n, end)
            })
            .collect();
        let in_sync = if leading {
            g.in_sync(self.settings.lag_ticks)
        } else {
            Vec::new()
        };
        Some(Status {
            leader: g.leader(),
            term: g.term(),
            high_watermark: g.commit(),
            replicas,
            in_sync,
        })
    }

    /// Groups not quiet (ticked every tick).
    pub fn groups_ticking(&self) -> usize {
        self.mux.borrow().ticking()
    }

    /// Stops a group (its partition is closing): waiting producers fail.
    pub fn remove(&self, group: GroupId) {
        self.mux.borrow_mut().remove(group);
        let removed = self.partitions.borrow_mut().remove(&group);
        if let Some(replica) = removed.as_ref().and_then(|p| p.replica()) {
            replica.ops.borrow_mut().take();
            replica.room.close();
            let mut view = replica.view.borrow_mut();
            view.leading = false;
            view.leader = None;
            Replica::fail_acks(&mut view, ErrorCode::NotLeaderOrFollower);
            // Whoever reads the leaders table stops sending here.
            let _ = self.reports.try_send(LeaderReport {
                group,
                term: view.term,
                leader: None,
            });
        }
    }

    /// Ticks every group, forever; now and then hands leadership back to
    /// preferred leaders.
    pub async fn run_ticks(self: Rc<Self>) {
        let mut ticks = 0u64;
        let beat = wire::encode(self.settings.node, &PeerBatch::default(), &[]);
        let beat_every = u64::from(self.settings.election_ticks / HEARTBEATS_PER_ELECTION);
        let tick = self.settings.tick;
        let mut ticked_at = std::time::Instant::now();
        loop {
            glommio::timer::sleep(tick).await;
            // A pause (the process stopped, the host halted it) counts as
            // the ticks it lasted, up to an election timeout: a leader
            // resuming after one finds its lease run out at once and steps
            // down (check-quorum), rather than lead on for a lease's ticks
            // while another leads. A timer a little late is one tick.
            let paused = ticked_at.elapsed().as_nanos() / tick.as_nanos().max(1);
            let due = paused.clamp(1, u128::from(self.settings.election_ticks) + 1);
            ticked_at = std::time::Instant::now();
            if self.mux.borrow().is_empty() {
                continue;
            }
            for _ in 0..due {
                let mut outbox = Outbox::default();
                self.mux.borrow_mut().tick(&self.hearing(), &mut outbox);
                self.dispatch(outbox, Source::None);
            }
            ticks += 1;
            if ticks.is_multiple_of(beat_every) {
                self.links.send_to_all(&beat);
            }
            let every = self.settings.rebalance_ticks;
            if every > 0 && ticks.is_multiple_of(every) {
                self.rebalance();
            }
            if ticks.is_multiple_of(moves::STEP_TICKS) {
                self.step_moves();
            }
            if ticks.is_multiple_of(LINK_SWEEP_TICKS) {
                self.sweep_links();
            }
        }
    }

    /// How many ticks ago anything last arrived from each node.
    fn hearing(&self) -> impl Fn(NodeId) -> Option<u64> + '_ {
        let now = std::time::Instant::now();
        let heard = self.heard.borrow();
        let tick = self.settings.tick.as_nanos().max(1);
        move |node| {
            heard.get(&node).map(|&at| {
                let ticks = now.saturating_duration_since(at).as_nanos() / tick;
                u64::try_from(ticks).unwrap_or(u64::MAX)
            })
        }
    }

    /// Drops links to peer shards no replica here talks to any more.
    fn sweep_links(&self) {
        let used = self
            .partitions
            .borrow()
            .values()
            .filter_map(|p| p.replica())
            .flat_map(|r| r.peers.borrow().values().copied().collect::<Vec<_>>())
            .collect();
        self.links.keep_only(&used);
    }

    /// Hands each group this shard leads but is not the preferred leader of
    /// (the first replica placed) to the preferred one, once it has the
    /// whole log: after a failover leaders drift to the nodes that stayed
    /// up; this brings them back, as Kafka's preferred-leader election does.
    fn rebalance(self: &Rc<Self>) {
        let me = self.settings.node;
        let moves: Vec<(GroupId, NodeId)> = {
            let mux = self.mux.borrow();
            self.partitions
                .borrow()
                .iter()
                .filter_map(|(&id, p)| {
                    let preferred = p.replica()?.preferred_leader()?;
                    let g = mux.get(id)?;
                    let caught_up = g
                        .followers()
                        .iter()
                        .any(|&(n, matched, _)| n == preferred && matched == g.log_end());
                    // Heard from within an election timeout: a stopped or
                    // cut-off node, caught up when it went quiet, must not
                    // be handed a leadership it cannot take (proposals wait
                    // on a transfer).
                    let answering = g
                        .in_sync(u64::from(self.settings.election_ticks))
                        .contains(&preferred);
                    (g.leader() == Some(me) && preferred != me && caught_up && answering)
                        .then_some((id, preferred))
                })
                .collect()
        };
        for (id, preferred) in moves {
            tracing::info!(
                shard = self.settings.shard,
                group = id,
                to = preferred,
                "leadership back to the preferred leader"
            );
            self.round(id, Source::None, |g, out| {
                g.transfer_leadership(preferred, out)
            });
        }
    }

    /// A peer's frame. What the core must not see is dropped here: messages
    /// from a node that is not a voter of the group, terms beyond a leader
    /// epoch's range, and append requests whose batches do not match what
    /// they announce (offsets, epoch, CRC) — the leader sends again.
    pub fn receive(self: &Rc<Self>, from: NodeId, mut batch: PeerBatch, payload: wire::Payload) {
        self.heard
            .borrow_mut()
            .insert(from, std::time::Instant::now());
        if batch.is_empty() {
            return; // A beat.
        }
        let payload = Rc::new(payload);
        // Where each carried batch lies in the payload (the wire decoder
        // checked that the entries' lengths add up to it).
        let mut positions = HashMap::new();
        let mut at = 0usize;
        let mut refused = 0usize;
        {
            let partitions = self.partitions.borrow();
            let member = |group: &GroupId| {
                partitions
                    .get(group)
                    .and_then(|p| p.replica())
                    .is_some_and(|r| r.is_member(from))
            };
            let sane_term = |term: Term| term <= i32::MAX as Term;
            batch
                .heartbeats
                .retain(|(g, h)| member(g) && sane_term(h.term));
            batch
                .heartbeat_responses
                .retain(|(g, r)| member(g) && sane_term(r.term));
            batch.messages.retain(|(group, message)| {
                let Message::Append(request) = message else {
                    return member(group) && sane_term(message.term());
                };
                let start = at;
                at += request
                    .entries
                    .iter()
                    .map(|e| e.bytes as usize)
                    .sum::<usize>();
                let mut position = start;
                let matches = request.entries.iter().all(|entry| {
                    let Some(bytes) = payload.get(position..position + entry.bytes as usize) else {
                        return false;
                    };
                    position += entry.bytes as usize;
                    // The one check of these bytes on a follower: the
                    // frame's CRC stops before them, and the log takes them
                    // as validated.
                    Batch::validate(bytes).is_ok_and(|b| {
                        b.len() == bytes.len()
                            && b.base_offset() as u64 == entry.offset
                            && b.last_offset() as u64 + 1 == entry.end
                            && i64::from(b.partition_leader_epoch()) == entry.term as i64
                    })
                });
                let known = partitions.contains_key(group);
                let keep = member(group) && sane_term(request.term) && matches;
                if keep {
                    let mut position = start;
                    for entry in &request.entries {
                        let end = position + entry.bytes as usize;
                        positions.insert((*group, entry.offset), position..end);
                        position = end;
                    }
                } else if known {
                    // Unknown groups are not news: created here later, or
                    // deleted already.
                    refused += 1;
                }
                keep
            });
        }
        if refused > 0
            && let Some(count) = self.refusals.hit()
        {
            tracing::warn!(
                shard = self.settings.shard,
                from,
                refused,
                refusals = count,
                "peer messages refused: not a voter, a term out of range, or batches that do not match their entries"
            );
        }
        let mut outbox = Outbox::default();
        self.mux
            .borrow_mut()
            .receive(from, batch, &self.hearing(), &mut outbox);
        self.dispatch(outbox, Source::Frame(&payload, &positions));
    }

    /// Appends `records` (whole batches) as the leader of `partition`'s
    /// group and waits as `acks` says: not at all, until the leader's copy
    /// is durable, or until committed.
    pub async fn produce(
        self: &Rc<Self>,
        partition: &Partition,
        records: &[u8],
        acks: Acks,
        max_batch_bytes: usize,
    ) -> Result<Offset, ErrorCode> {
        let replica = partition.replica().ok_or(ErrorCode::UnknownServerError)?;
        if !replica.is_leader() {
            return Err(ErrorCode::NotLeaderOrFollower);
        }
        let mut rest = records;
        let mut base = None;
        let mut end = 0;
        // Every batch proposed in one term: an ack waits for the commit of
        // the last one, which covers the others only if no leader came
        // between (one could have cut an earlier batch meanwhile).
        let mut term = None;
        while !rest.is_empty() {
            let len = match Batch::peek_len(rest) {
                Ok(len) if len <= rest.len() => len,
                _ => return Err(ErrorCode::CorruptMessage),
            };
            // Refused here, not by the log: a batch every replica's log
            // refuses must never enter the Raft log.
            if len > max_batch_bytes {
                return Err(ErrorCode::MessageTooLarge);
            }
            let parsed = Batch::validate(&rest[..len]).map_err(|_| ErrorCode::CorruptMessage)?;
            let count =
                u32::try_from(parsed.offset_count()).map_err(|_| ErrorCode::CorruptMessage)?;
            // Past the deadline the batch is not taken. A wait dropped once
            // granted hands its units on (the vendored semaphore's fix).
            let room = replica.room.acquire(len as u64);
            acks.within(async { room.await.map_err(|_| ErrorCode::NotLeaderOrFollower) })
                .await?;
            // Checked and proposed with no await between: the table takes
            // the batch in the same round (`carry_out`).
            if let Some(producer) = ProducerBatch::of(&parsed) {
                let verdict = match partition.check_producer(&producer) {
                    Ok(_) if !replica.is_leader() => Err(ErrorCode::NotLeaderOrFollower),
                    other => other,
                };
                match verdict {
                    Ok(Verdict::Append) => {}
                    Ok(Verdict::Duplicate {
                        base_offset,
                        last_offset,
                    }) => {
                        replica.room.signal(len as u64);
                        base.get_or_insert(base_offset);
                        end = end.max(last_offset + 1);
                        rest = &rest[len..];
                        continue;
                    }
                    Err(code) => {
                        replica.room.signal(len as u64);
                        return Err(code);
                    }
                }
            }
            let source = Source::Proposal(Some(Payload::Proposed(Rc::new(rest[..len].to_vec()))));
            let entry = self
                .round(replica.group, source, |group, out| {
                    group.propose(count, len as u32, out)
                })
                .ok_or(ErrorCode::NotLeaderOrFollower)
                .inspect_err(|_| replica.room.signal(len as u64))?
                .inspect_err(|_| replica.room.signal(len as u64))
                .map_err(|e| match e {
                    ProposeError::NotLeader(_) | ProposeError::Transferring => {
                        ErrorCode::NotLeaderOrFollower
                    }
                    _ => ErrorCode::UnknownServerError,
                })?;
            if *term.get_or_insert(entry.term) != entry.term {
                return Err(ErrorCode::NotLeaderOrFollower);
            }
            base.get_or_insert(entry.offset);
            end = end.max(entry.end);
            rest = &rest[len..];
        }
        let base = base.ok_or(ErrorCode::InvalidRequest)?;
        if term.is_some_and(|term| replica.leading_term() != Some(term)) {
            return Err(ErrorCode::NotLeaderOrFollower);
        }
        if acks.required == api::ACKS_NONE {
            return Ok(base);
        }
        let rx = {
            let mut view = replica.view.borrow_mut();
            let all = acks.required == api::ACKS_ALL;
            let (tx, rx) = oneshot::channel();
            let done = if all {
                view.commit >= end
            } else {
                view.durable >= end
            };
            if done {
                return Ok(base);
            }
            // Producers that gave up (timed out) go now.
            view.acks.retain(|ack| !ack.tx.is_canceled());
            view.acks.push(Ack { end, all, tx });
            rx
        };
        let acked = acks.within(async {
            match rx.await {
                Ok(acked) => acked,
                Err(_) => Err(ErrorCode::NotLeaderOrFollower),
            }
        });
        acked.await.map(|()| base)
    }

    /// Hands leadership of every group this shard leads to another voter
    /// (a node stopping), and waits up to `wait` for them to take it.
    pub async fn transfer_all(self: &Rc<Self>, wait: Duration) {
        let groups: Vec<(GroupId, Vec<NodeId>)> = self
            .partitions
            .borrow()
            .iter()
            .filter_map(|(&id, p)| {
                let replica = p.replica()?;
                let voters = self.mux.borrow().get(id)?.membership().voters.clone();
                replica.is_leader().then_some((id, voters))
            })
            .collect();
        if groups.is_empty() {
            return;
        }
        for (id, voters) in &groups {
            let me = self.settings.node;
            // The most caught-up other voter takes over.
            let best = self.mux.borrow().get(*id).and_then(|g| {
                g.followers()
                    .into_iter()
                    .filter(|(n, _, _)| *n != me && voters.contains(n))
                    .max_by_key(|&(_, matched, _)| matched)
                    .map(|(n, _, _)| n)
            });
            if let Some(target) = best {
                self.round(*id, Source::None, |g, out| {
                    g.transfer_leadership(target, out)
                });
            }
        }
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline
            && groups.iter().any(|(id, _)| {
                self.partitions
                    .borrow()
                    .get(id)
                    .and_then(|p| p.replica().map(|r| r.is_leader()))
                    .unwrap_or(false)
            })
        {
            glommio::timer::sleep(self.settings.tick).await;
        }
    }

    /// Runs `f` on a group and carries out what it outputs.
    fn round<R>(
        self: &Rc<Self>,
        group: GroupId,
        source: Source<'_>,
        f: impl FnOnce(&mut Group, &mut Vec<Output>) -> R,
    ) -> Option<R> {
        let mut outbox = Outbox::default();
        let result = self
            .mux
            .borrow_mut()
            .with(group, &self.hearing(), &mut outbox, f)?;
        self.dispatch(outbox, source);
        Some(result)
    }

    fn dispatch(self: &Rc<Self>, outbox: Outbox, mut source: Source<'_>) {
        for (node, batch) in outbox.batches {
            self.send(node, batch);
        }
        for (group, output) in outbox.local {
            self.carry_out(group, output, &mut source);
        }
    }

    /// Sends a round's messages for `node`: one frame per peer shard.
    fn send(&self, node: NodeId, batch: PeerBatch) {
        let partitions = self.partitions.borrow();
        let addr = |group: &GroupId| partitions.get(group)?.replica()?.peer(node);
        let mut frames: HashMap<SocketAddr, PeerBatch> = HashMap::new();
        route(batch.heartbeats, &addr, &mut frames, |b| &mut b.heartbeats);
        route(batch.heartbeat_responses, &addr, &mut frames, |b| {
            &mut b.heartbeat_responses
        });
        route(batch.messages, &addr, &mut frames, |b| &mut b.messages);
        for (a, batch) in frames {
            self.links
                .send(a, wire::encode(self.settings.node, &batch, &[]));
        }
    }

    fn carry_out(self: &Rc<Self>, group: GroupId, output: Output, source: &mut Source<'_>) {
        let Some(partition) = self.partitions.borrow().get(&group).cloned() else {
            return;
        };
        let Some(replica) = partition.replica() else {
            return;
        };
        let op = match output {
            Output::Send { .. } => unreachable!("the outbox routes messages"),
            Output::Replicate(read) => {
                glommio::spawn_local(self.clone().replicate(partition.clone(), group, read))
                    .detach();
                return;
            }
            Output::Append {
                entries,
                generation,
            } => {
                for entry in entries {
                    let Some(mut payload) = payload_of(group, &entry, source) else {
                        tracing::error!(
                            shard = self.settings.shard,
                            group,
                            offset = entry.offset,
                            "no bytes for an entry to append: replica stopped"
                        );
                        self.fail(
                            &partition,
                            &StorageError::Failed("an entry came without its batch".into()),
                        );
                        return;
                    };
                    if let Some(producer) = ProducerBatch::peek(&payload) {
                        partition.apply_producer(&producer, entry.offset, entry.end - 1);
                    }
                    if let Payload::Proposed(bytes) = &mut payload
                        && let Some(batch) = Rc::get_mut(bytes)
                    {
                        // As its log will write it, and as followers check
                        // it against the entry.
                        batch::set_base_offset(batch, entry.offset as i64);
                        batch::set_partition_leader_epoch(batch, entry.term as i32);
                        let kept = Rc::clone(bytes);
                        let mut view = replica.view.borrow_mut();
                        view.recent.push(entry.term, entry.offset, entry.end, kept);
                    }
                    replica.push(StorageOp::Append {
                        entry,
                        payload,
                        generation,
                    });
                }
                return;
            }
            Output::Truncate { end, .. } => {
                partition.truncate_producers(end);
                StorageOp::Truncate { end }
            }
            Output::Reset {
                start, membership, ..
            } => {
                partition.clear_producers();
                StorageOp::Reset { start, membership }
            }
            Output::Sync { end, generation } => StorageOp::Sync { end, generation },
            Output::PersistHardState { state, version } => StorageOp::Persist { state, version },
            Output::Event(event) => {
                replica.on_event(self.settings.node, &event);
                if let Event::LeaderChanged { term, leader } = event {
                    tracing::debug!(
                        shard = self.settings.shard,
                        group,
                        term,
                        leader = ?leader,
                        "leader changed"
                    );
                    let _ = self.reports.try_send(LeaderReport {
                        group,
                        term,
                        leader,
                    });
                }
                return;
            }
        };
        replica.push(op);
    }

    /// Sends the follower the range `read` asks for (the leader's kept
    /// proposals, or its log), if this replica still leads that term.
    async fn replicate(self: Rc<Self>, partition: Rc<Partition>, group: GroupId, read: Replicate) {
        let max_bytes = usize::try_from(read.max_bytes).unwrap_or(usize::MAX);
        let mut entries = Vec::new();
        // Whole batches, sent as they are, not copied into one buffer.
        let mut payload = Vec::new();
        let mut payload_len = 0;
        if read.from < read.end {
            let Some(slices) = self
                .read_for_follower(&partition, group, &read, max_bytes)
                .await
            else {
                return;
            };
            let mut done = false;
            for slice in &slices {
                let mut taken = 0;
                for batch in batch::batches(slice) {
                    let base = batch.base_offset() as u64;
                    let full = !entries.is_empty() && payload_len + batch.len() > max_bytes;
                    done = base >= read.end || full;
                    if done {
                        break;
                    }
                    entries.push(Entry {
                        offset: base,
                        end: batch.last_offset() as u64 + 1,
                        term: batch.partition_leader_epoch().max(0) as Term,
                        bytes: batch.len() as u32,
                        kind: membership::entry_kind(&batch),
                    });
                    taken += batch.len();
                    payload_len += batch.len();
                }
                if taken > 0 {
                    payload.push(slice.prefix(taken));
                }
                if done {
                    break;
                }
            }
            if entries.is_empty() {
                return; // Not readable yet: the core asks again.
            }
        }
        let leads = self
            .mux
            .borrow()
            .get(group)
            .is_some_and(|g| g.is_leader_in(read.term));
        let Some(addr) = partition.replica().and_then(|r| r.peer(read.to)) else {
            return;
        };
        if !leads {
            return; // Deposed meanwhile: the log may have changed under the read.
        }
        let batch = PeerBatch {
            messages: vec![(group, Message::Append(read.request(entries)))],
            ..PeerBatch::default()
        };
        let head = wire::encode_head(self.settings.node, &batch, payload_len);
        self.links.send_parts(addr, head, payload);
    }

    /// The batches from `read.from` a follower is sent: the leader's own
    /// proposals while it keeps them, else read from its log (waiting a
    /// little for its own append of the range). `None`: nothing to send now.
    async fn read_for_follower(
        self: &Rc<Self>,
        partition: &Partition,
        group: GroupId,
        read: &Replicate,
        max_bytes: usize,
    ) -> Option<Vec<BatchSlice>> {
        if let Some(replica) = partition.replica() {
            let view = replica.view.borrow();
            let kept = view.recent.read(read.term, read.from, read.end, max_bytes);
            if kept.is_some() {
                return kept;
            }
        }
        let log = partition.log();
        // The leader's own append of the range may still be on its way to
        // the log; the first batch must be readable.
        let visible = std::pin::pin!(log.wait_visible(read.from + 1));
        let timeout = std::pin::pin!(glommio::timer::sleep(
            self.settings.tick * self.settings.election_ticks
        ));
        futures::future::select(visible, timeout).await;
        match log.read(read.from, max_bytes).await {
            Ok(got) => Some(got.slices),
            Err(e) => {
                tracing::debug!(shard = self.settings.shard, group, from = read.from, error = %e, "replication read");
                // Below the log's start: the group learns where it is, and
                // sends the follower a reset instead next time.
                if read.from < log.offset_start() {
                    self.log_start_advanced(group, log.offset_start());
                }
                None
            }
        }
    }

    /// Carries out a group's storage actions in order, reporting each
    /// completion back to the core, until the partition closes.
    async fn run_storage(self: Rc<Self>, partition: Rc<Partition>, ops: LocalReceiver<StorageOp>) {
        let Some(replica) = partition.replica() else {
            return;
        };
        let group = replica.group;
        let synced_with_write = replica.durability == Durability::Synced;
        while let Some(op) = ops.recv().await {
            let log = partition.log();
            let outcome: Result<(), StorageError> = match op {
                StorageOp::Append {
                    entry,
                    payload,
                    generation,
                } => 'append: {
                    // Listed before it is in the log: a restart keeps what
                    // is below the log's end.
                    if let EntryKind::Config(m) = &entry.kind {
                        let mut configs = replica.configs.borrow().clone();
                        configs.push((entry.offset, m.clone()));
                        if let Err(e) = membership::write_configs(partition.dir(), &configs).await {
                            break 'append Err(e);
                        }
                        *replica.configs.borrow_mut() = configs;
                    }
                    // Validated where it came in: by `produce` on the
                    // leader, by the frame's decoding on a follower.
                    let appended = log
                        .append_validated_at(&payload, entry.offset, entry.term as i32)
                        .await;
                    if let Payload::Proposed(bytes) = &payload {
                        replica.room.signal(bytes.len() as u64);
                    }
                    appended.map(|appended| {
                        let this = self.clone();
                        let partition = partition.clone();
                        glommio::spawn_local(async move {
                            match appended.durable.await {
                                Ok(()) => {
                                    this.round(group, Source::None, |g, out| {
                                        g.log_written(entry.end, generation, out);
                                        // `fsync=always` appends resolve once synced.
                                        if synced_with_write {
                                            g.log_synced(entry.end, generation, out);
                                        }
                                    });
                                }
                                // Cut by a truncation: Raft asked for it.
                                Err(StorageError::Truncated { .. }) => {}
                                Err(e) => this.fail(&partition, &e),
                            }
                        })
                        .detach();
                    })
                }
                StorageOp::Truncate { end } => 'truncate: {
                    // The log first: a kill between the two leaves entries
                    // listed past the log's end, which its next opening
                    // drops (`read_configs`). The other way round it would
                    // leave a membership entry in the log that the list no
                    // longer names, read as data from then on.
                    if let Err(e) = log.truncate(end).await {
                        break 'truncate Err(e);
                    }
                    let mut configs = replica.configs.borrow().clone();
                    let before = configs.len();
                    configs.retain(|&(offset, _)| offset < end);
                    if configs.len() != before {
                        *replica.configs.borrow_mut() = configs.clone();
                        membership::write_configs(partition.dir(), &configs).await
                    } else {
                        Ok(())
                    }
                }
                // Under `fsync=always` every append is synced before it is
                // reported written: nothing is left to sync.
                StorageOp::Sync { end, generation } if synced_with_write => {
                    self.round(group, Source::None, |g, out| {
                        g.log_synced(end, generation, out)
                    });
                    Ok(())
                }
                StorageOp::Sync { end, generation } => log.flush().await.map(|()| {
                    self.round(group, Source::None, |g, out| {
                        g.log_synced(end, generation, out)
                    });
                }),
                // The leader's log starts past this one's end: start again
                // there, with the membership in effect there listed.
                StorageOp::Reset { start, membership } => 'reset: {
                    tracing::info!(
                        shard = self.settings.shard,
                        group,
                        start,
                        "replica behind its leader's log start: log starts again there"
                    );
                    if let Err(e) = partition.reset_log(start).await {
                        break 'reset Err(e);
                    }
                    let configs = vec![(start.saturating_sub(1), membership)];
                    let written = membership::write_configs(partition.dir(), &configs).await;
                    *replica.configs.borrow_mut() = configs;
                    written
                }
                StorageOp::Persist { state, version } => {
                    let store = self.store.borrow().clone();
                    let persisted = match store {
                        Some(store) => store(group, state).await,
                        None => Err("no hard-state store".into()),
                    };
                    persisted.map_err(StorageError::Failed).map(|()| {
                        self.round(group, Source::None, |g, out| {
                            g.hard_state_persisted(version, out)
                        });
                    })
                }
            };
            if let Err(e) = outcome {
                self.fail(&partition, &e);
                return;
            }
        }
    }

    /// A group's storage failed: the core's view of the log and the log no
    /// longer agree, so the replica stops (the others go on without it)
    /// rather than answer from a log it cannot trust, and its shard opens
    /// the partition again — recovery, then a group restored from what the
    /// disk holds — as it retries any partition it could not open.
    fn fail(&self, partition: &Rc<Partition>, error: &StorageError) {
        let Some(replica) = partition.replica() else {
            return;
        };
        if std::mem::replace(&mut replica.view.borrow_mut().failed, true) {
            return;
        }
        tracing::error!(
            shard = self.settings.shard,
            group = replica.group,
            dir = %partition.dir().display(),
            error = %error,
            "replica storage failed: replica stopped, the partition is opened again"
        );
        self.remove(replica.group);
        let _ = self.failed.try_send(partition.clone());
    }
}

/// Puts each group's item into the frame for the peer shard that holds the
/// group's replica (`addr`), in the list `field` picks.
fn route<T>(
    items: Vec<(GroupId, T)>,
    addr: &impl Fn(&GroupId) -> Option<SocketAddr>,
    frames: &mut HashMap<SocketAddr, PeerBatch>,
    field: fn(&mut PeerBatch) -> &mut Vec<(GroupId, T)>,
) {
    for (group, item) in items {
        if let Some(a) = addr(&group) {
            field(frames.entry(a).or_default()).push((group, item));
        }
    }
}

/// The bytes of an entry the core asks to append: a follower's come in the
/// peer's frame; a leader's are the producer's batch, the leader-change
/// batch it writes on taking over (in whatever round it won the vote), or a
/// membership entry of a move.
fn payload_of(group: GroupId, entry: &Entry, source: &mut Source<'_>) -> Option<Payload> {
    if let Source::Frame(frame, positions) = source
        && let Some(range) = positions.get(&(group, entry.offset))
    {
        return Some(Payload::Shared(Rc::clone(frame), range.clone()));
    }
    match (source, &entry.kind) {
        (Source::Proposal(payload), EntryKind::Data) => payload.take(),
        (_, EntryKind::LeaderMark) => Some(Payload::Owned(membership::leader_change_batch())),
        (_, EntryKind::Config(m)) => Some(Payload::Owned(membership::membership_batch(m))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new leader's high watermark is what it heard as a follower, which
    /// may be behind the last leader's: it is settled only once the leader
    /// commits an entry of its own term; a follower's never blocks.
    #[test]
    fn a_new_leaders_high_watermark_settles_with_its_first_commit() {
        let replica = Replica::new(
            7,
            vec![1, 2, 3],
            Layout::default(),
            HashMap::new(),
            Durability::Written,
        );
        replica.on_event(1, &Event::Committed { commit: 2 });
        assert!(replica.high_watermark_settled(), "a follower's");
        replica.on_event(1, &Event::BecameLeader { term: 2 });
        assert!(!replica.high_watermark_settled(), "before its mark commits");
        assert_eq!(replica.high_watermark(), 2);
        replica.on_event(1, &Event::Committed { commit: 53 });
        assert!(replica.high_watermark_settled(), "after its first commit");
        replica.on_event(1, &Event::BecameLeader { term: 3 });
        assert!(!replica.high_watermark_settled(), "each term anew");
    }
}
