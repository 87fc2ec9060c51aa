//! The controller: cluster metadata, kept on shard 0 as a log of commands
//! plus a snapshot, and pushed to every shard after each change.
//!
//! The log is an ordinary Fjord partition log (`cluster/metadata`, fsync
//! always) whose record values are rkyv-encoded [`Command`]s; a command's
//! index is its offset + 1. That is exactly the shape Raft group 0 needs:
//! with replication the same log becomes the Raft log and `commit` waits for
//! a quorum instead of the local fdatasync. The snapshot (rkyv, CRC'd) only
//! shortens replay: it is written after the log, so it is never ahead of it,
//! and a lost or stale snapshot costs a longer replay, never state.
//!
//! With a controller quorum (`controller_voters` of 3 or 5) the same log is
//! Raft group 0 ([`METADATA_GROUP`]) over the voters' shard 0, driven by the
//! shard's replication like any replicated partition: the group's leader is
//! the active controller; it proposes each command as a batch and answers
//! once the command is committed and applied. Every voter applies committed
//! commands in log order ([`Controller::run_quorum`]) and keeps a snapshot
//! of what it applied after each round, so that it serves at once after a
//! restart; the log itself is not replayed at start, since its tail may not
//! be committed. A command refused at apply time (checked against older
//! state when it was proposed) is consumed the same way on every voter.
//!
//! On a full disk metadata must still change — deleting a topic is how an
//! operator makes room. The controller holds a preallocated reserve file
//! (`cluster/reserve`) and gives it up when the disk is low or a metadata
//! write finds no room; a metadata log that stopped for want of room is
//! opened again (replaying what it holds) and the command retried once.

use crate::mesh::NotServed;
use crate::partition::{Acks, Partition, PartitionSetup};
use crate::replica::{Layout, Replica};
use crate::shard::{Shard, topic_dir_name, topics_dir};
use fjord_core::{BatchBuilder, FsyncPolicy, batch};
use fjord_net::ErrorCode;
use fjord_replication::control::{METADATA_GROUP, Proposal};
use fjord_replication::metadata::{ClusterMetadata, Command, MetadataError};
use fjord_replication::raft::{Durability, NodeId};
use fjord_storage::space::{Reserve, SpaceWatch};
use fjord_storage::{BatchCache, Log, LogConfig, StorageError};
use futures::AsyncWriteExt;
use futures::channel::oneshot;
use glommio::io::{DmaFile, DmaStreamWriterBuilder};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Commands between snapshots.
const SNAPSHOT_EVERY: u64 = 256;
/// Largest metadata snapshot read back: a bound on what a damaged file can
/// make the controller allocate.
const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;
/// Bytes read per replay step.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// Longest a quorum's apply loop sleeps between leadership checks.
const APPLY_POLL: Duration = Duration::from_millis(100);
/// Longest a proposed command waits to be applied once committed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new quorum leader waits for nodes to follow it before it
/// places replicas.
const NEW_LEADER_GRACE: Duration = Duration::from_secs(2);
/// The metadata log's name in log lines (KRaft's).
const METADATA_LOG_NAME: &str = "__cluster_metadata";

/// Why a command was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// The state machine refused it.
    #[error(transparent)]
    Refused(#[from] MetadataError),
    /// The controller is not running (shutting down).
    #[error("the controller is not available")]
    Unavailable,
    /// The metadata log could not take it.
    #[error("metadata log: {0}")]
    Storage(String),
    /// The metadata log found no room (disk full, no descriptors).
    #[error("metadata log out of room: {0}")]
    OutOfRoom(String),
    /// The cluster's controller refused the command or could not be
    /// reached: Kafka's code, and why.
    #[error("{1}")]
    Remote(fjord_net::ErrorCode, String),
}

impl From<StorageError> for CommandError {
    fn from(e: StorageError) -> Self {
        if e.is_out_of_room() {
            CommandError::OutOfRoom(e.to_string())
        } else {
            CommandError::Storage(e.to_string())
        }
    }
}

/// Where the metadata log lives.
enum Backing {
    /// One controller: the log is its own, each command durable before it
    /// is applied.
    Local {
        log: RefCell<Rc<Log>>,
        dir: PathBuf,
        config: LogConfig,
        cache: Rc<BatchCache>,
    },
    /// A quorum: the log is Raft group 0 over the voters.
    Quorum(Quorum),
}

/// Where a proposed command's outcome goes.
type Outcome = oneshot::Sender<Result<Vec<NotServed>, CommandError>>;

/// A voter's side of a controller quorum.
struct Quorum {
    /// The metadata log as a replicated partition (opened again if its
    /// storage fails).
    partition: RefCell<Rc<Partition>>,
    /// The voters, to open it again.
    voters: Vec<(NodeId, std::net::SocketAddr)>,
    /// The next log offset to apply.
    applied_next: Cell<u64>,
    /// Commands proposed here, by the id in their record's key, until
    /// applied: the outcome goes back to the proposer.
    waiting: RefCell<HashMap<u64, Outcome>>,
    next_id: Cell<u64>,
    /// Since when this voter leads (is the active controller).
    leading_since: Cell<Option<Instant>>,
}

/// The controller of one node.
pub struct Controller {
    backing: Backing,
    reserve: Reserve,
    state: RefCell<ClusterMetadata>,
    /// Commands commit one at a time, in arrival order.
    turn: Semaphore,
    /// Set by `close`: the apply loop ends.
    closed: Cell<bool>,
    snapshot_path: PathBuf,
    since_snapshot: Cell<u64>,
    /// When each node was last heard from (its follow rounds).
    heard: RefCell<HashMap<u32, Instant>>,
    /// Follow rounds waiting for the metadata (or a leader) to change.
    watchers: RefCell<Vec<oneshot::Sender<()>>>,
}

/// A node not heard from for this long is not live: new replicas are not
/// placed on it.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);

impl Controller {
    /// Opens the metadata log under `data/cluster`, restores the snapshot and
    /// replays the commands after it.
    pub async fn open(
        data: &Path,
        data_shards: u16,
        cache: Rc<BatchCache>,
        reserve_bytes: u64,
    ) -> Result<Controller, CommandError> {
        let dir = data.join("cluster");
        let snapshot_path = dir.join("snapshot");
        let config = metadata_log_config();
        let log_dir = dir.join("metadata");
        let log = Log::open(&log_dir, config.clone(), cache.clone()).await?;
        let mut state = match read_snapshot(&snapshot_path).await? {
            Some(state) => state,
            None => ClusterMetadata::new(data_shards),
        };
        if log.offset_written() < state.applied_index {
            return Err(CommandError::Storage(format!(
                "metadata log ends at {} but the snapshot has applied {}",
                log.offset_written(),
                state.applied_index
            )));
        }
        let replayed = replay(&log, &mut state).await?;
        tracing::info!(
            shard = 0,
            topics = state.topics.len(),
            snapshot_at = state.applied_index - replayed,
            replayed,
            "controller: metadata restored"
        );
        let backing = Backing::Local {
            log: RefCell::new(Rc::new(log)),
            dir: log_dir,
            config,
            cache,
        };
        Ok(Controller::with(
            backing,
            Reserve::new(dir.join("reserve"), reserve_bytes),
            state,
            snapshot_path,
            replayed,
        ))
    }

    /// Opens a voter's side of a controller quorum on shard 0: the metadata
    /// log as Raft group 0 over `voters` (id and listener), and the state
    /// this voter last applied. Committed commands past it are applied by
    /// [`Controller::run_quorum`].
    pub async fn open_quorum(
        shard: &Shard,
        voters: &[(NodeId, std::net::SocketAddr)],
    ) -> Result<Controller, CommandError> {
        let dir = shard.data().path().join("cluster");
        let snapshot_path = dir.join("snapshot");
        let partition = open_metadata_group(shard, voters).await?;
        let state = match read_snapshot(&snapshot_path).await? {
            Some(state) => state,
            None => ClusterMetadata::new(shard.data_shards()),
        };
        tracing::info!(
            shard = 0,
            topics = state.topics.len(),
            applied_index = state.applied_index,
            voters = ?voters.iter().map(|v| v.0).collect::<Vec<_>>(),
            "controller quorum: metadata restored; committed commands past it follow"
        );
        // Ids of commands proposed by an earlier run never meet these.
        let first_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let backing = Backing::Quorum(Quorum {
            partition: RefCell::new(partition),
            voters: voters.to_vec(),
            applied_next: Cell::new(state.applied_index),
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(first_id),
            leading_since: Cell::new(None),
        });
        Ok(Controller::with(
            backing,
            Reserve::new(dir.join("reserve"), shard.config.metadata_reserve_bytes),
            state,
            snapshot_path,
            0,
        ))
    }

    fn with(
        backing: Backing,
        reserve: Reserve,
        state: ClusterMetadata,
        snapshot_path: PathBuf,
        since_snapshot: u64,
    ) -> Controller {
        Controller {
            backing,
            reserve,
            state: RefCell::new(state),
            turn: Semaphore::new(1),
            closed: Cell::new(false),
            snapshot_path,
            since_snapshot: Cell::new(since_snapshot),
            heard: RefCell::new(HashMap::new()),
            watchers: RefCell::new(Vec::new()),
        }
    }

    /// Opens the quorum's metadata log again after its storage failed (the
    /// replica stopped): recovery, then a group restored from the disk.
    /// `false` when `failed` is not this controller's log.
    pub async fn reopen_failed(&self, shard: &Shard, failed: &Rc<Partition>) -> bool {
        let Backing::Quorum(quorum) = &self.backing else {
            return false;
        };
        if !Rc::ptr_eq(&quorum.partition(), failed) {
            return false;
        }
        let _ = failed.close().await;
        loop {
            if self.closed.get() {
                return true;
            }
            match open_metadata_group(shard, &quorum.voters).await {
                Ok(partition) => {
                    tracing::info!(shard = 0, "controller quorum: metadata log opened again");
                    *quorum.partition.borrow_mut() = partition;
                    return true;
                }
                Err(e) => {
                    tracing::warn!(shard = 0, error = %e, "controller quorum: cannot open the metadata log again yet");
                    glommio::timer::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Whether this controller commits commands now: always when it is the
    /// only one; in a quorum, while it leads group 0.
    pub fn is_active(&self) -> bool {
        match &self.backing {
            Backing::Local { .. } => true,
            Backing::Quorum(q) => q.partition().replica().is_some_and(|r| r.is_leader()),
        }
    }

    /// The current metadata.
    pub fn metadata(&self) -> ClusterMetadata {
        self.state.borrow().clone()
    }

    /// Removes topic directories the metadata does not list: leftovers of a
    /// delete interrupted by a crash.
    pub async fn remove_stale_topics(&self, data: &Path) -> Result<(), CommandError> {
        let dir = topics_dir(data);
        let live: Vec<String> = self
            .state
            .borrow()
            .topics
            .iter()
            .map(|(name, t)| topic_dir_name(name, t.id))
            .collect();
        for name in fjord_storage::recovery::list_dir(&dir).await? {
            if !live.contains(&name) {
                tracing::info!(shard = 0, directory = %name, "controller: removing stale topic directory");
                fjord_storage::recovery::remove_tree(&dir.join(&name)).await?;
            }
        }
        Ok(())
    }

    /// Notes that node `id` was heard from now.
    pub fn heard(&self, id: u32) {
        self.heard.borrow_mut().insert(id, Instant::now());
    }

    /// Nodes heard from within [`LIVENESS_TIMEOUT`], this one included.
    pub fn live(&self, me: u32) -> Vec<u32> {
        let now = Instant::now();
        let mut live: Vec<u32> = self
            .heard
            .borrow()
            .iter()
            .filter(|(_, at)| now.duration_since(**at) < LIVENESS_TIMEOUT)
            .map(|(&id, _)| id)
            .chain(std::iter::once(me))
            .collect();
        live.sort_unstable();
        live.dedup();
        live
    }

    /// Resolves at the next change of the metadata or of a leader.
    pub fn changed(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut watchers = self.watchers.borrow_mut();
        watchers.retain(|w| !w.is_canceled());
        watchers.push(tx);
        rx
    }

    /// Wakes every follow round waiting for a change.
    pub fn notify(&self) {
        for watcher in self.watchers.borrow_mut().drain(..) {
            let _ = watcher.send(());
        }
    }

    /// The command to log for `proposal`: in a cluster a topic create and
    /// new partitions are placed over the live nodes first, and a move's new
    /// replicas get shards.
    fn resolve(&self, shard: &Shard, proposal: Proposal) -> Result<Command, CommandError> {
        if let Command::MovePartition(the) = proposal.command {
            let placed = self.state.borrow().place_move(*the);
            return Ok(Command::MovePartition(Box::new(placed)));
        }
        if let Command::CreatePartitions(add) = proposal.command {
            let live = shard.config.node_id.map(|me| self.live(me));
            return Ok(self
                .state
                .borrow()
                .place_partitions(*add, live.as_deref())?);
        }
        let Command::CreateTopic(create) = &proposal.command else {
            return Ok(proposal.command);
        };
        let Some(me) = shard.config.node_id else {
            return Ok(proposal.command);
        };
        let state = self.state.borrow();
        let factor = proposal
            .replication_factor
            .or(shard.config.default_replication_factor)
            .unwrap_or(if state.nodes.len() >= 3 { 3 } else { 1 });
        let live = self.live(me);
        Ok(state.place_topic(create, usize::from(factor), Some(&live))?)
    }

    /// Validates a proposal's command, logs it durably, applies it, and
    /// pushes the new metadata to every shard before answering; returns the
    /// partitions a shard could not open (they are not served until a retry
    /// succeeds).
    pub async fn commit(
        &self,
        shard: &Shard,
        proposal: Proposal,
    ) -> Result<Vec<NotServed>, CommandError> {
        let _turn = self
            .turn
            .acquire_permit(1)
            .await
            .map_err(|_| CommandError::Unavailable)?;
        if let Backing::Quorum(quorum) = &self.backing {
            return self.commit_quorum(shard, quorum, proposal).await;
        }
        let command = self.resolve(shard, proposal)?;
        if shard.space().is_low() {
            self.release_reserve().await;
        }
        let mut attempt = 0;
        let next = loop {
            match self.log_command(&command).await {
                Ok(next) => break next,
                Err(CommandError::OutOfRoom(_)) if attempt == 0 => {
                    attempt += 1;
                    self.release_reserve().await;
                }
                Err(e) => return Err(e),
            }
        };
        *self.state.borrow_mut() = next.clone();
        self.since_snapshot.set(self.since_snapshot.get() + 1);
        if self.since_snapshot.get() >= SNAPSHOT_EVERY {
            self.snapshot(&next).await;
        }
        self.notify();
        let not_served = shard.push_metadata(&next).await;
        if let Command::DeleteTopic(_) = command {
            // Every shard has deleted its partitions; the topic's own
            // directory goes last.
            self.remove_stale_topics(shard.data().path()).await?;
        }
        Ok(not_served)
    }

    /// A quorum's leader: proposes the command to group 0 and waits until it
    /// is committed and applied here (pushed to every shard). The check
    /// against the applied state refuses early what is plainly refused; the
    /// state machine has the last word when the command is applied.
    async fn commit_quorum(
        &self,
        shard: &Shard,
        quorum: &Quorum,
        proposal: Proposal,
    ) -> Result<Vec<NotServed>, CommandError> {
        if !self.is_active() {
            return Err(not_controller());
        }
        self.await_followers(shard, quorum).await;
        let command = self.resolve(shard, proposal)?;
        let mut check = self.state.borrow().clone();
        check.apply(check.applied_index + 1, &command)?;
        let id = quorum.next_id.get();
        quorum.next_id.set(id.wrapping_add(1));
        let (tx, rx) = oneshot::channel();
        quorum.waiting.borrow_mut().insert(id, tx);
        let mut builder = BatchBuilder::new();
        builder.push(
            fjord_storage::log::now_ms(),
            Some(&id.to_be_bytes()),
            Some(&command.encode()),
            &[],
        );
        let partition = quorum.partition();
        if let Err(code) = partition.produce(&builder.build(), Acks::internal()).await {
            quorum.waiting.borrow_mut().remove(&id);
            return Err(match code {
                ErrorCode::NotLeaderOrFollower => not_controller(),
                code => CommandError::Remote(code, format!("metadata log: {code:?}")),
            });
        }
        let timeout = std::pin::pin!(glommio::timer::sleep(APPLY_TIMEOUT));
        match futures::future::select(rx, timeout).await {
            futures::future::Either::Left((Ok(outcome), _)) => outcome,
            _ => {
                quorum.waiting.borrow_mut().remove(&id);
                Err(CommandError::Unavailable)
            }
        }
    }

    /// A new leader's liveness view starts empty: nodes find it within a
    /// few follow rounds (a round to a dead controller fails at once, then
    /// a voter's listener names the new one). Until every registered node
    /// has — but voters the quorum does not hear from, which are down — or
    /// [`NEW_LEADER_GRACE`] has passed, placement waits: it would leave out
    /// live nodes.
    async fn await_followers(&self, shard: &Shard, quorum: &Quorum) {
        let Some(since) = quorum.leading_since.get() else {
            return;
        };
        let voters: Vec<NodeId> = quorum.voters.iter().map(|v| v.0).collect();
        while since.elapsed() < NEW_LEADER_GRACE {
            // Voters the quorum does not hear from are not coming.
            let answering = shard.replication().answering(METADATA_GROUP);
            let missing = {
                let now = Instant::now();
                let heard = self.heard.borrow();
                let state = self.state.borrow();
                state
                    .nodes
                    .keys()
                    .filter(|&&id| id != shard.node_id())
                    .filter(|id| !voters.contains(id) || answering.contains(id))
                    .filter(|id| {
                        heard
                            .get(id)
                            .is_none_or(|at| now.duration_since(*at) >= LIVENESS_TIMEOUT)
                    })
                    .count()
            };
            if missing == 0 {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A voter, for as long as the node runs: applies committed commands of
    /// group 0 in order, pushes the metadata to every shard after each
    /// round, snapshots it, answers commands proposed here; and follows this
    /// voter's leadership (a new leader registers its node).
    pub async fn run_quorum(self: Rc<Self>, shard: Rc<Shard>) {
        let Backing::Quorum(quorum) = &self.backing else {
            return;
        };
        let failures = crate::logging::Repeated::default();
        loop {
            if self.closed.get() {
                return;
            }
            self.watch_leadership(&shard, quorum);
            let partition = quorum.partition();
            let Some(replica) = partition.replica() else {
                return;
            };
            let next = quorum.applied_next.get();
            if replica.high_watermark() <= next {
                replica.wait_past(next, APPLY_POLL).await;
                continue;
            }
            if let Err(e) = self.apply_committed(&shard, quorum).await {
                if let Some(count) = failures.hit() {
                    tracing::warn!(shard = 0, error = %e, failures = count, "controller quorum: cannot apply committed metadata yet");
                }
                glommio::timer::sleep(APPLY_POLL).await;
            }
        }
    }

    fn watch_leadership(&self, shard: &Rc<Shard>, quorum: &Quorum) {
        let leading = self.is_active();
        match (leading, quorum.leading_since.get()) {
            (true, None) => {
                quorum.leading_since.set(Some(Instant::now()));
                self.heard.borrow_mut().clear();
                tracing::info!(
                    shard = 0,
                    "controller quorum: this node is the active controller"
                );
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    if let Err(e) = crate::cluster::register_self(&shard).await {
                        tracing::warn!(shard = 0, error = %e, "controller: cannot register this node");
                    }
                })
                .detach();
                self.notify();
            }
            (false, Some(_)) => {
                quorum.leading_since.set(None);
                tracing::info!(
                    shard = 0,
                    "controller quorum: no longer the active controller"
                );
                // Follow rounds parked here go and find the new leader.
                self.notify();
            }
            _ => {}
        }
    }

    /// Applies the committed commands readable from the applied mark.
    async fn apply_committed(&self, shard: &Shard, quorum: &Quorum) -> Result<(), CommandError> {
        let partition = quorum.partition();
        let Some(replica) = partition.replica() else {
            return Ok(());
        };
        let commit = replica.high_watermark();
        let next = quorum.applied_next.get();
        let log = partition.log();
        let read = log.read(next, REPLAY_READ_BYTES).await?;
        let mut state = self.state.borrow().clone();
        let mut applied_next = next;
        let mut outcomes = Vec::new();
        let mut deleted = false;
        'read: for slice in &read.slices {
            for batch in batch::batches(slice) {
                if batch.base_offset() as u64 >= commit {
                    break 'read;
                }
                applied_next = batch.last_offset() as u64 + 1;
                // A new leader's LEADER_CHANGE batch carries no command.
                if batch.is_control() {
                    continue;
                }
                for record in batch.records().map_err(StorageError::from)? {
                    let record = record.map_err(StorageError::from)?;
                    let command = Command::decode(record.value.unwrap_or_default())
                        .map_err(|e| CommandError::Storage(e.to_string()))?;
                    let outcome = state.apply(record.offset as u64 + 1, &command);
                    match &outcome {
                        Ok(()) => deleted |= matches!(command, Command::DeleteTopic(_)),
                        Err(e) => {
                            tracing::info!(shard = 0, offset = record.offset, error = %e, "controller quorum: a committed command is refused by the state it meets")
                        }
                    }
                    let id = record
                        .key
                        .and_then(|k| <[u8; 8]>::try_from(k).ok())
                        .map(u64::from_be_bytes);
                    outcomes.push((id, outcome));
                }
            }
        }
        if applied_next == next {
            // Committed but not yet readable here: written very soon.
            let visible = std::pin::pin!(log.wait_visible(next + 1));
            let timeout = std::pin::pin!(glommio::timer::sleep(APPLY_POLL));
            futures::future::select(visible, timeout).await;
            return Ok(());
        }
        let changed = state.applied_index != self.state.borrow().applied_index;
        if changed {
            // Every round, and before anything is served: a voter restarted
            // by kill -9 serves at once what its snapshot holds, and never
            // replays an uncommitted tail. Served unkept, a round would be
            // forgotten by the restart, which would then remove the
            // directories of topics the round created and drop what was
            // staged for the partitions it gave this node. A round that
            // cannot be kept (a full disk) is applied again next time.
            keep_metadata(shard, &self.snapshot_path, &state.snapshot())
                .await
                .map_err(CommandError::Storage)?;
            self.since_snapshot.set(0);
        }
        *self.state.borrow_mut() = state.clone();
        quorum.applied_next.set(applied_next);
        let mut not_served = Vec::new();
        if changed {
            self.notify();
            not_served = shard.push_metadata(&state).await;
            if deleted {
                self.remove_stale_topics(shard.data().path()).await?;
            }
        }
        for (id, outcome) in outcomes {
            let waiter = id.and_then(|id| quorum.waiting.borrow_mut().remove(&id));
            if let Some(tx) = waiter {
                let _ = tx.send(
                    outcome
                        .map(|()| not_served.clone())
                        .map_err(CommandError::from),
                );
            }
        }
        Ok(())
    }

    /// Applies `command` to a copy of the state and appends it durably to
    /// the metadata log (reopened first if it stopped for want of room).
    async fn log_command(&self, command: &Command) -> Result<ClusterMetadata, CommandError> {
        let log = self.writable_log().await?;
        let mut next = self.state.borrow().clone();
        let index = next.applied_index + 1;
        next.apply(index, command)?;
        // Offsets follow command indexes; they part only if an append was
        // staged and then failed to become durable, after which the log is
        // read-only until reopened. Refuse rather than log out of step.
        if log.offset_next() != index - 1 {
            return Err(CommandError::Storage(format!(
                "metadata log at offset {} but the next command is {index}",
                log.offset_next()
            )));
        }
        let mut builder = BatchBuilder::new();
        builder.push(
            fjord_storage::log::now_ms(),
            None,
            Some(&command.encode()),
            &[],
        );
        let durable = match log.append(&builder.build()).await {
            Ok(appended) => appended.durable.await,
            Err(e) => Err(e),
        };
        durable.map_err(CommandError::from)?;
        Ok(next)
    }

    /// The metadata log; if it stopped for want of room, opened again from
    /// disk and replayed (a command it took before failing is applied, as a
    /// restart would).
    async fn writable_log(&self) -> Result<Rc<Log>, CommandError> {
        let Backing::Local {
            log: current,
            dir,
            config,
            cache,
        } = &self.backing
        else {
            unreachable!("a quorum's log is its group's");
        };
        let log = current.borrow().clone();
        if !log.is_out_of_room() {
            return Ok(log);
        }
        let reopened = Rc::new(Log::open(dir, config.clone(), cache.clone()).await?);
        let mut state = self.state.borrow().clone();
        let replayed = replay(&reopened, &mut state).await?;
        *self.state.borrow_mut() = state;
        *current.borrow_mut() = reopened.clone();
        tracing::info!(
            shard = 0,
            replayed,
            "controller: metadata log reopened after running out of room"
        );
        Ok(reopened)
    }

    /// Deletes the reserve's file. Also when it is not known as held: a
    /// file left by an earlier run goes too (a missing file is no error).
    async fn release_reserve(&self) {
        let held = self.reserve.is_held();
        match self.reserve.release().await {
            Ok(()) if !held => {}
            Ok(()) => tracing::warn!(
                shard = 0,
                "controller: metadata reserve released: the disk is full or low"
            ),
            Err(e) => {
                tracing::warn!(shard = 0, error = %e, "controller: cannot release the metadata reserve")
            }
        }
    }

    /// Keeps the metadata reserve, forever: taken while the disk has room
    /// for it with margin (twice its size above the threshold, so that
    /// taking it does not make the disk low at once), released when low.
    pub async fn keep_reserve(
        self: Rc<Self>,
        space: Rc<SpaceWatch>,
        interval: std::time::Duration,
    ) {
        let failures = crate::logging::Repeated::default();
        loop {
            let sample = space.space();
            let floor = space.threshold().floor(sample);
            if space.is_low() {
                self.release_reserve().await;
            } else if !self.reserve.is_held()
                && sample.free_bytes >= floor.saturating_add(2 * self.reserve.bytes())
            {
                match self.reserve.take().await {
                    Ok(()) => tracing::info!(
                        shard = 0,
                        bytes = self.reserve.bytes(),
                        "controller: metadata reserve held"
                    ),
                    Err(e) => {
                        if let Some(count) = failures.hit() {
                            tracing::warn!(shard = 0, error = %e, failures = count, "controller: cannot take the metadata reserve");
                        }
                    }
                }
            }
            glommio::timer::sleep(interval).await;
        }
    }

    async fn snapshot(&self, state: &ClusterMetadata) {
        match write_snapshot(&self.snapshot_path, &state.snapshot()).await {
            Ok(()) => self.since_snapshot.set(0),
            // The log still holds everything: a failed snapshot costs replay.
            Err(e) => {
                tracing::warn!(shard = 0, error = %e, "controller: snapshot failed (replay covers it)")
            }
        }
    }

    /// Snapshots and closes the log.
    pub async fn close(&self) {
        let Ok(_turn) = self.turn.acquire_permit(1).await else {
            return;
        };
        self.turn.close();
        self.closed.set(true);
        if self.since_snapshot.get() > 0 {
            let state = self.state.borrow().clone();
            self.snapshot(&state).await;
        }
        let closed = match &self.backing {
            Backing::Local { log, .. } => {
                let log = log.borrow().clone();
                log.close().await
            }
            Backing::Quorum(quorum) => {
                quorum.waiting.borrow_mut().clear();
                quorum.partition().close().await
            }
        };
        if let Err(e) = closed {
            tracing::warn!(shard = 0, error = %e, "controller: closing the metadata log");
        }
    }
}

impl Quorum {
    fn partition(&self) -> Rc<Partition> {
        self.partition.borrow().clone()
    }
}

/// Opens the metadata log as Raft group 0 over `voters` and starts its
/// group on shard 0's replication.
async fn open_metadata_group(
    shard: &Shard,
    voters: &[(NodeId, std::net::SocketAddr)],
) -> Result<Rc<Partition>, CommandError> {
    let dir = shard.data().path().join("cluster").join("metadata");
    let me = shard.node_id();
    let peers = voters.iter().filter(|(id, _)| *id != me).copied().collect();
    let ids: Vec<NodeId> = voters.iter().map(|(id, _)| *id).collect();
    let layout = Layout {
        members: ids.clone(),
        target: Vec::new(),
        topic: METADATA_LOG_NAME.into(),
        topic_id: 0,
        partition: 0,
    };
    let replica = Replica::new(METADATA_GROUP, ids, layout, peers, Durability::Synced);
    let setup = PartitionSetup {
        shard: 0,
        topic: METADATA_LOG_NAME.into(),
        partition: 0,
        topic_id: 0,
        dir: dir.clone(),
        config: metadata_log_config(),
        cache: shard.cache().clone(),
        space: shard.space().clone(),
        staging: None,
        metrics: shard.metrics().clone(),
        replica: Some((replica, shard.replication().clone())),
    };
    let partition = Rc::new(Partition::open(setup).await?);
    let log = partition.log();
    if log.offset_next() > 0 && log.epochs().is_empty() {
        // Written by a single controller: its entries carry no Raft terms,
        // and the other voters never saw them.
        let _ = partition.close().await;
        return Err(CommandError::Storage(format!(
            "{} holds the metadata of a single controller; a controller quorum starts on fresh data directories",
            dir.display()
        )));
    }
    let (hard, configs) = match shard.replica_state(&partition, METADATA_GROUP).await {
        Ok(state) => state,
        Err(e) => {
            let _ = partition.close().await;
            return Err(e.into());
        }
    };
    shard.replication().add(partition.clone(), hard, configs);
    Ok(partition)
}

/// The metadata log's settings: every command synced before it counts.
fn metadata_log_config() -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Always,
        // Commands are small and rare: grow the file in small steps.
        preallocate_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

/// What a voter that does not lead answers a command.
fn not_controller() -> CommandError {
    CommandError::Remote(
        ErrorCode::NotController,
        "this node is not the active controller".into(),
    )
}

/// Applies every logged command after `state.applied_index`; returns how many.
async fn replay(log: &Log, state: &mut ClusterMetadata) -> Result<u64, CommandError> {
    let start = state.applied_index;
    let mut offset = state.applied_index;
    while offset < log.offset_written() {
        let read = log.read(offset, REPLAY_READ_BYTES).await?;
        for slice in &read.slices {
            for batch in batch::batches(slice) {
                let records = batch.records().map_err(StorageError::from)?;
                for record in records {
                    let record = record.map_err(StorageError::from)?;
                    let index = record.offset as u64 + 1;
                    if index <= state.applied_index {
                        continue;
                    }
                    let command = Command::decode(record.value.unwrap_or_default())
                        .map_err(|e| CommandError::Storage(e.to_string()))?;
                    // Only accepted commands are logged; a refusal here means
                    // the state machine changed its rules, which it must not.
                    state.apply(index, &command)?;
                }
            }
        }
        assert!(read.offset_next > offset, "replay makes progress");
        offset = read.offset_next;
    }
    Ok(state.applied_index - start)
}

/// Reads a metadata snapshot; `None` if there is none.
pub async fn read_snapshot(path: &Path) -> Result<Option<ClusterMetadata>, CommandError> {
    let storage = |op| {
        move |e: glommio::GlommioError<()>| {
            CommandError::Storage(format!("{op} {}: {e}", path.display()))
        }
    };
    let file = match DmaFile::open(path).await {
        Ok(file) => file,
        Err(e) => {
            let e: std::io::Error = e.into();
            if e.kind() == std::io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(CommandError::Storage(format!(
                "open {}: {e}",
                path.display()
            )));
        }
    };
    let size = file.file_size().await.map_err(storage("stat"))?;
    if size > SNAPSHOT_BYTES_MAX {
        return Err(CommandError::Storage(format!(
            "{} is {size} bytes, more than a snapshot can be",
            path.display()
        )));
    }
    let bytes = file
        .read_at(0, size as usize)
        .await
        .map_err(storage("read"))?;
    let _ = file.close().await;
    ClusterMetadata::restore(&bytes)
        .map(Some)
        .map_err(|e| CommandError::Storage(format!("{}: {e}", path.display())))
}

/// Keeps metadata about to be served (`bytes` at `path`, a voter's snapshot
/// or a follower's copy), and notes on `shard` whether it could, for
/// `/health`. Nothing may serve metadata this did not keep: a restart after
/// a kill starts from what it kept, and what it does not find there is
/// removed (topics' directories, staged batches).
pub async fn keep_metadata(shard: &Shard, path: &Path, bytes: &[u8]) -> Result<(), String> {
    let kept = write_snapshot(path, bytes)
        .await
        .map_err(|e| format!("cannot keep the metadata: {e}"));
    shard.set_metadata_unkept(kept.as_ref().err().cloned());
    kept
}

/// Writes `bytes` to a temporary file, syncs it and renames it over `path`:
/// a crash leaves the old snapshot or the new one, never a torn one.
pub async fn write_snapshot(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let file = DmaFile::create(&tmp).await?;
    let mut writer = DmaStreamWriterBuilder::new(file).build();
    writer.write_all(bytes).await?;
    writer.sync().await?;
    writer.close().await?;
    glommio::io::rename(&tmp, path).await?;
    Ok(())
}
