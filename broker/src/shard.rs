//! A shard: one pinned core's share of the node. It owns its partitions and
//! a copy of the cluster metadata pushed by the controller, routes work on
//! partitions it does not own to their shard over the mesh, and runs what
//! other shards send it.

use crate::admin::metrics::ShardMetrics;
use crate::config::ServeConfig;
use crate::controller::{CommandError, Controller};
use crate::disk_stall::Report;
use crate::hardstate::HardStates;
use crate::logging::Repeated;
use crate::mesh::{Fetched, NotServed, Outbox, PartitionOp, ShardMsg};
use crate::partition::{Described, Partition, PartitionSetup};
use crate::replica::{Layout, Replica, Replication};
use fjord_net::ErrorCode;
use fjord_replication::control::{LeaderReport, METADATA_GROUP, Proposal, group_id};
use fjord_replication::metadata::{ClusterMetadata, Command, PartitionMoved, TopicMeta};
use fjord_replication::raft::mux::GroupId;
use fjord_replication::raft::{Durability, HardState, NodeId};
use fjord_storage::space::SpaceWatch;
use fjord_storage::{BatchCache, DataDir, LogConfig, Staging, StorageError};
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How often a shard tries again to open partitions it could not.
pub const RETRY_UNSERVED_INTERVAL: Duration = Duration::from_secs(5);
/// How often a stop that waits on something closing says so.
const CLOSE_REPORT_INTERVAL: Duration = Duration::from_secs(3);

/// Partitions by (topic, partition).
type PartitionMap = HashMap<(String, i32), Rc<Partition>>;

/// One shard's state; shared by its tasks with `Rc`, never across threads.
pub struct Shard {
    /// This shard's index (its mesh peer id).
    pub id: usize,
    /// Shards in the node.
    pub count: usize,
    /// The node's settings.
    pub config: ServeConfig,
    /// Each shard's own port, by shard index.
    pub shard_ports: Vec<u16>,
    /// Each shard's Kafka port, by shard index, when Kafka clients see a
    /// broker per shard; empty otherwise.
    pub kafka_shard_ports: Vec<u16>,
    data: DataDir,
    staging: Option<Rc<Staging>>,
    cache: Rc<BatchCache>,
    metadata: RefCell<Rc<ClusterMetadata>>,
    partitions: RefCell<PartitionMap>,
    mesh: Outbox<ShardMsg>,
    controller: RefCell<Option<Rc<Controller>>>,
    /// Free space of the data directory, sampled on a timer.
    space: Rc<SpaceWatch>,
    /// Partitions the metadata gives this shard that failed to open, and why.
    unserved: RefCell<BTreeMap<(String, i32), String>>,
    /// Failed opens, for the rate-limited log line.
    open_failures: Repeated,
    /// Failed retention runs, likewise.
    retention_failures: Repeated,
    /// Failed cleanings, likewise.
    compaction_failures: Repeated,
    /// Whether a stalled disk is being reported (see `disk_stall`).
    disk_watch: RefCell<crate::disk_stall::Watch>,
    /// Metadata convergences run one at a time, in arrival order.
    converge_turn: Semaphore,
    /// Set once the first metadata is installed; listeners wait for it.
    ready: RefCell<Option<oneshot::Sender<()>>>,
    /// Set when the node shuts down: long polls answer at once.
    pub closing: Cell<bool>,
    /// Open client connections.
    pub connections: Cell<usize>,
    /// Partitions live on shards `first_data_shard..count`: shard 0 is
    /// left to the controller unless it hosts partitions too.
    first_data_shard: usize,
    data_shards: usize,
    /// This shard's replicated partitions.
    replication: Rc<Replication>,
    /// Hands out producer ids (InitProducerId).
    pub producer_ids: crate::producer_ids::ProducerIds,
    /// Who leads each replicated partition, as last heard (newest term).
    leaders: RefCell<HashMap<GroupId, LeaderReport>>,
    /// Woken when the leaders table changes (the follow loop reports it).
    leader_watchers: RefCell<Vec<oneshot::Sender<()>>>,
    /// Nodes the controller heard from lately.
    live: RefCell<Vec<NodeId>>,
    /// Why the newest metadata could not be kept, while it cannot (shard 0:
    /// the node then goes on serving the metadata it had).
    metadata_unkept: RefCell<Option<String>>,
    /// The node's replicas' hard states (shard 0 of a cluster node).
    hard_states: RefCell<Option<Rc<HardStates>>>,
    /// What replication reports to the shard, until its tasks start.
    replication_outlets: RefCell<Option<ReplicationOutlets>>,
    /// What the shard counts for the admin listener.
    metrics: Rc<ShardMetrics>,
}

/// Leader changes, failed replicas and finished moves, as replication
/// reports them, and what its links read.
type ReplicationOutlets = (
    LocalReceiver<LeaderReport>,
    LocalReceiver<Rc<Partition>>,
    LocalReceiver<PartitionMoved>,
    LocalReceiver<crate::peer::Inbound>,
);

impl Shard {
    /// A shard with empty metadata; `ready` fires when the first arrives.
    pub fn new(
        mesh: Senders<ShardMsg>,
        config: ServeConfig,
        shard_ports: Vec<u16>,
        kafka_shard_ports: Vec<u16>,
        data: DataDir,
        staging: Option<Rc<Staging>>,
        ready: oneshot::Sender<()>,
    ) -> Shard {
        let id = mesh.peer_id();
        let count = mesh.nr_consumers();
        assert!(id < count && count == shard_ports.len());
        assert!(
            config.cores.is_some() && config.controller_hosts_partitions.is_some(),
            "the node resolves its shape before shards start"
        );
        let cache = BatchCache::new(config.cache_bytes_per_shard);
        let space = SpaceWatch::new(data.path(), config.disk_threshold());
        let first_data_shard = config.first_data_shard();
        let data_shards = count - first_data_shard;
        assert!(data_shards > 0, "validated: some shard hosts partitions");
        let tick = Duration::from_millis(config.raft_tick_ms);
        let (reports, reported) = local_channel::new_unbounded();
        let (failed, failures) = local_channel::new_unbounded();
        let (moved, moves) = local_channel::new_unbounded();
        let (inbox, inbound) = local_channel::new_bounded(crate::peer::INBOX_LEN);
        // Where peers reach this shard, as the metadata tells them.
        let own = config
            .advertised_host()
            .parse()
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, shard_ports[id]));
        let replication = Rc::new(Replication::new(
            crate::replica::Settings {
                node: config.node_id.unwrap_or(0),
                shard: id,
                tick,
                election_ticks: u32::try_from(config.election_timeout_ms / config.raft_tick_ms)
                    .unwrap_or(u32::MAX),
                lag_ticks: config.replica_lag_time_max_ms / config.raft_tick_ms,
                rebalance_ticks: config.leader_rebalance_interval_ms / config.raft_tick_ms,
            },
            crate::peer::Links::new(own, inbox),
            reports,
            failed,
            moved,
        ));
        let producer_ids =
            crate::producer_ids::ProducerIds::new(data.path(), config.node_id.unwrap_or(0), id);
        let metrics = ShardMetrics::new(config.metrics);
        Shard {
            metrics,
            id,
            count,
            config,
            shard_ports,
            kafka_shard_ports,
            producer_ids,
            data,
            staging,
            cache,
            metadata: RefCell::new(Rc::new(ClusterMetadata::new(
                u16::try_from(data_shards).unwrap_or(u16::MAX),
            ))),
            partitions: RefCell::new(HashMap::new()),
            mesh: Outbox::new(mesh),
            controller: RefCell::new(None),
            space,
            unserved: RefCell::new(BTreeMap::new()),
            open_failures: Repeated::default(),
            retention_failures: Repeated::default(),
            compaction_failures: Repeated::default(),
            disk_watch: RefCell::default(),
            converge_turn: Semaphore::new(1),
            ready: RefCell::new(Some(ready)),
            closing: Cell::new(false),
            connections: Cell::new(0),
            first_data_shard,
            data_shards,
            replication,
            leaders: RefCell::new(HashMap::new()),
            leader_watchers: RefCell::new(Vec::new()),
            live: RefCell::new(Vec::new()),
            metadata_unkept: RefCell::new(None),
            replication_outlets: RefCell::new(Some((reported, failures, moves, inbound))),
            hard_states: RefCell::new(None),
        }
    }

    /// Starts the tasks behind the shard's replicated partitions: the Raft
    /// clock (in a cluster), sharing leader changes with the node's shards,
    /// and reopening replicas whose storage failed.
    pub fn start_replication(self: &Rc<Self>) {
        let Some((reported, failures, moves, inbound)) =
            self.replication_outlets.borrow_mut().take()
        else {
            return;
        };
        let shard = Rc::downgrade(self);
        self.replication
            .set_hard_state_store(Rc::new(move |group, state| {
                let shard = shard.clone();
                Box::pin(async move {
                    let shard = shard.upgrade().ok_or("the shard is gone")?;
                    shard.hard_state(group, Some(state)).await.map(drop)
                })
            }));
        if self.config.node_id.is_some() {
            glommio::spawn_local(self.replication.clone().run_ticks()).detach();
        }
        glommio::spawn_local(crate::peer::deliver(self.clone(), inbound)).detach();
        glommio::spawn_local(self.clone().share_leaders(reported)).detach();
        glommio::spawn_local(self.clone().reopen_failed(failures)).detach();
        glommio::spawn_local(self.clone().report_moves(moves)).detach();
    }

    /// Tells the controller of moves this shard's leaders finished, for as
    /// long as the shard runs. A report the controller refuses (the move
    /// was replaced) or misses is sent again while the move stands.
    async fn report_moves(self: Rc<Self>, moves: LocalReceiver<PartitionMoved>) {
        while let Some(moved) = moves.recv().await {
            let what = format!("{}-{}", moved.topic, moved.partition);
            let proposal = Proposal::of(Command::PartitionMoved(Box::new(moved)));
            match self.command(proposal).await {
                Ok(_) => tracing::info!(shard = self.id, partition = %what, "partition move done"),
                Err(e) => {
                    tracing::warn!(shard = self.id, partition = %what, error = %e, "partition move: cannot report it done yet")
                }
            }
        }
    }

    /// Takes this shard's leader changes to every shard of the node (and, on
    /// the controller's shard, to the nodes following it).
    async fn share_leaders(self: Rc<Self>, reported: LocalReceiver<LeaderReport>) {
        while let Some(report) = reported.recv().await {
            let mut reports = vec![report];
            while let Some(Some(more)) = futures::FutureExt::now_or_never(reported.recv()) {
                reports.push(more);
            }
            if self.merge_leaders(&reports)
                && let Some(controller) = self.controller()
            {
                controller.notify();
            }
            self.broadcast_leaders(reports).await;
        }
    }

    /// Opens the node's hard-state log (shard 0 of a cluster node), before
    /// any partition opens.
    pub async fn open_hard_states(&self) -> Result<(), StorageError> {
        assert_eq!(self.id, 0, "shard 0 keeps the hard states");
        let states = HardStates::open(self.data.path(), self.cache.clone()).await?;
        *self.hard_states.borrow_mut() = Some(Rc::new(states));
        Ok(())
    }

    /// Reads (`state: None`) or durably records a group's hard state in the
    /// node's hard-state log, on shard 0.
    pub async fn hard_state(
        &self,
        group: GroupId,
        state: Option<HardState>,
    ) -> Result<HardState, String> {
        if self.id != 0 {
            let (reply, rx) = oneshot::channel();
            let msg = ShardMsg::HardState {
                group,
                state,
                reply,
            };
            self.send_to(0, msg)
                .await
                .map_err(|_| "shard 0 is not answering".to_string())?;
            return rx
                .await
                .unwrap_or_else(|_| Err("shard 0 is not answering".into()));
        }
        let states = self
            .hard_states
            .borrow()
            .clone()
            .ok_or("the hard-state log is not open")?;
        match state {
            None => Ok(states.get(group)),
            Some(state) => states
                .persist(group, state)
                .await
                .map(|()| state)
                .map_err(|e| e.to_string()),
        }
    }

    /// The controller, on the shard that runs it.
    pub fn controller(&self) -> Option<Rc<Controller>> {
        self.controller.borrow().clone()
    }

    /// Nodes the controller heard from lately.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.live.borrow().clone()
    }

    /// Records which nodes are live.
    pub fn set_live(&self, live: Vec<NodeId>) {
        *self.live.borrow_mut() = live;
    }

    /// Records whether the newest metadata could be kept, and if not, why.
    pub fn set_metadata_unkept(&self, why: Option<String>) {
        *self.metadata_unkept.borrow_mut() = why;
    }

    /// Why the newest metadata could not be kept, while it cannot.
    pub fn metadata_unkept(&self) -> Option<String> {
        self.metadata_unkept.borrow().clone()
    }

    /// Sends a message to another shard of the node, after every message
    /// sent to it before (see [`Outbox`]).
    pub async fn send_to(&self, to: usize, msg: ShardMsg) -> Result<(), ()> {
        self.mesh.send_to(to, msg).await
    }

    /// This node's id in the cluster (0 on a node of its own).
    pub fn node_id(&self) -> NodeId {
        self.config.node_id.unwrap_or(0)
    }

    /// The shard's replicated partitions.
    pub fn replication(&self) -> &Rc<Replication> {
        &self.replication
    }

    /// The node that runs the active controller, as this shard knows it:
    /// in a quorum, the leader of the metadata group.
    pub fn controller_node(&self) -> Option<NodeId> {
        match self.leader_of(METADATA_GROUP) {
            Some(report) => report.leader,
            None => self.metadata().controller().map(|n| n.id),
        }
    }

    /// The leader of a replicated partition and its term, as last heard.
    pub fn leader_of(&self, group: GroupId) -> Option<LeaderReport> {
        self.leaders.borrow().get(&group).copied()
    }

    /// Resolves at the next change of the leaders table.
    pub fn leaders_changed(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut watchers = self.leader_watchers.borrow_mut();
        watchers.retain(|w| !w.is_canceled());
        watchers.push(tx);
        rx
    }

    /// Every leader this shard knows of.
    pub fn leaders(&self) -> Vec<LeaderReport> {
        self.leaders.borrow().values().copied().collect()
    }

    /// Takes in leader reports, the newest term winning; returns whether
    /// anything changed.
    pub fn merge_leaders(&self, reports: &[LeaderReport]) -> bool {
        let mut leaders = self.leaders.borrow_mut();
        let mut changed = false;
        for report in reports {
            let newer = leaders.get(&report.group).is_none_or(|known| {
                (report.term, report.leader.is_some()) > (known.term, known.leader.is_some())
            });
            if newer {
                leaders.insert(report.group, *report);
                changed = true;
            }
        }
        if changed {
            for watcher in self.leader_watchers.borrow_mut().drain(..) {
                let _ = watcher.send(());
            }
        }
        changed
    }

    /// Tells every other shard of the node about leader reports.
    pub async fn broadcast_leaders(&self, reports: Vec<LeaderReport>) {
        if reports.is_empty() {
            return;
        }
        for to in (0..self.count).filter(|&to| to != self.id) {
            // A shard that stopped listening is shutting down.
            let _ = self.send_to(to, ShardMsg::Leaders(reports.clone())).await;
        }
    }

    /// The shard that hosts this node's replica of a partition, if it has one.
    fn replica_shard(&self, meta: &fjord_replication::metadata::PartitionMeta) -> Option<usize> {
        if meta.replicas.is_empty() {
            return Some(self.owner(meta.shard));
        }
        let me = self.node_id();
        meta.hosts()
            .find(|r| r.node == me)
            .map(|r| self.owner(r.shard))
    }

    /// The data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The shard cache (for logs this shard opens).
    pub fn cache(&self) -> &Rc<BatchCache> {
        &self.cache
    }

    /// The data directory's free-space watch.
    pub fn space(&self) -> &Rc<SpaceWatch> {
        &self.space
    }

    /// What the shard counts for the admin listener.
    pub fn metrics(&self) -> &Rc<ShardMetrics> {
        &self.metrics
    }

    /// The partitions this shard has open.
    pub fn partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    /// Whether the first metadata is installed: the shard serves.
    pub fn is_ready(&self) -> bool {
        self.ready.borrow().is_none()
    }

    /// Batches in the shard's staging area not yet written, the bytes they
    /// take there, and the bytes it has (all 0 without one).
    pub fn staged(&self) -> (usize, usize, usize) {
        self.staging.as_ref().map_or((0, 0, 0), |s| {
            (s.staged_batches(), s.staged_bytes(), s.capacity_bytes())
        })
    }

    /// Partitions the metadata gives this shard that it could not open.
    pub fn not_served_count(&self) -> usize {
        self.unserved.borrow().len()
    }

    /// Why this shard does not serve a partition the metadata gives it, if
    /// it tried and failed to open it.
    pub fn not_served(&self, topic: &str, partition: i32) -> Option<String> {
        self.unserved
            .borrow()
            .get(&(topic.to_owned(), partition))
            .cloned()
    }

    /// The code for a partition this shard should own but has not open:
    /// retriable `KAFKA_STORAGE_ERROR` if opening it failed (it is retried),
    /// else unknown (not created yet, or deleted).
    fn missing(&self, topic: &str, partition: i32) -> ErrorCode {
        if self.not_served(topic, partition).is_some() {
            ErrorCode::KafkaStorageError
        } else {
            ErrorCode::UnknownTopicOrPartition
        }
    }

    /// The metadata as last pushed.
    pub fn metadata(&self) -> Rc<ClusterMetadata> {
        self.metadata.borrow().clone()
    }

    /// Installs the controller (shard 0 only).
    pub fn set_controller(&self, controller: Rc<Controller>) {
        assert_eq!(self.id, 0, "the controller runs on shard 0");
        *self.controller.borrow_mut() = Some(controller);
    }

    /// The shard that owns partitions assigned to metadata shard `assigned`.
    /// Assignments are kept modulo the shards running now, so a node
    /// restarted with fewer cores still serves every partition.
    pub fn owner(&self, assigned: u16) -> usize {
        self.first_data_shard + usize::from(assigned) % self.data_shards
    }

    /// Shards that host partitions.
    pub fn data_shards(&self) -> u16 {
        u16::try_from(self.data_shards).unwrap_or(u16::MAX)
    }

    /// The owning shard of a partition, by the metadata.
    pub fn owner_of(&self, topic: &str, partition: i32) -> Result<usize, ErrorCode> {
        let metadata = self.metadata.borrow();
        let meta = metadata
            .topics
            .get(topic)
            .and_then(|t| {
                usize::try_from(partition)
                    .ok()
                    .and_then(|p| t.partitions.get(p))
            })
            .ok_or(ErrorCode::UnknownTopicOrPartition)?;
        // Not a replica here: the client's metadata is stale.
        self.replica_shard(meta)
            .ok_or(ErrorCode::NotLeaderOrFollower)
    }

    /// A partition this shard owns.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<Rc<Partition>> {
        self.partitions
            .borrow()
            .get(&(topic.to_owned(), partition))
            .cloned()
    }

    /// A partition's offsets, size and replication, from its owner.
    pub async fn describe_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Described, ErrorCode> {
        self.on_owner(
            topic,
            partition,
            async |p| Ok(p.describe()),
            |reply| PartitionOp::Describe { reply },
        )
        .await
    }

    /// Runs `local` here when this shard owns the partition; otherwise sends
    /// the operation `remote` builds to the owner and waits for its answer.
    pub async fn on_owner<T>(
        &self,
        topic: &str,
        partition: i32,
        local: impl AsyncFnOnce(Rc<Partition>) -> Result<T, ErrorCode>,
        remote: impl FnOnce(oneshot::Sender<Result<T, ErrorCode>>) -> PartitionOp,
    ) -> Result<T, ErrorCode> {
        let owner = self.owner_of(topic, partition)?;
        if owner == self.id {
            let found = self.partition(topic, partition);
            return match found {
                Some(p) => local(p).await,
                None => Err(self.missing(topic, partition)),
            };
        }
        let (tx, rx) = oneshot::channel();
        let msg = ShardMsg::Partition {
            topic: topic.to_owned(),
            partition,
            op: remote(tx),
        };
        if self.send_to(owner, msg).await.is_err() {
            return Err(ErrorCode::BrokerNotAvailable);
        }
        // Dropped unanswered: the owner is shutting down.
        rx.await.unwrap_or(Err(ErrorCode::BrokerNotAvailable))
    }

    /// Waits until batches past `offset` are readable, or `wait` passes.
    pub async fn wait_past(&self, topic: &str, partition: i32, offset: i64, wait: Duration) {
        // An error (partition gone, owner stopping) ends the wait as well.
        let _ = self
            .on_owner(
                topic,
                partition,
                async |p| {
                    p.wait_past(offset, wait).await;
                    Ok(())
                },
                |reply| PartitionOp::WaitPast {
                    offset,
                    wait,
                    reply,
                },
            )
            .await;
    }

    /// Commits a metadata command through the controller: this node's
    /// (shard 0), or, on a node that does not run it, the cluster's.
    pub async fn command(&self, proposal: Proposal) -> Result<Vec<NotServed>, CommandError> {
        let controller = self.controller.borrow().clone();
        if let Some(controller) = controller.filter(|c| c.is_active()) {
            return controller.commit(self, proposal).await;
        }
        if self.id == 0 {
            // Another node runs the active controller (or, in a quorum,
            // another voter leads).
            return crate::cluster::forward(self, proposal).await;
        }
        let (reply, rx) = oneshot::channel();
        let unavailable = || CommandError::Unavailable;
        if self
            .send_to(0, ShardMsg::Command { proposal, reply })
            .await
            .is_err()
        {
            return Err(unavailable());
        }
        rx.await.unwrap_or_else(|_| Err(unavailable()))
    }

    /// Pushes `metadata` to every shard, this one included, and waits until
    /// all have converged; returns the partitions some shard could not open.
    pub async fn push_metadata(&self, metadata: &ClusterMetadata) -> Vec<NotServed> {
        let mut pending = Vec::new();
        for to in (0..self.count).filter(|&to| to != self.id) {
            let (done, rx) = oneshot::channel();
            let msg = ShardMsg::Metadata {
                metadata: metadata.clone(),
                done,
            };
            if self.send_to(to, msg).await.is_ok() {
                pending.push(rx);
            }
        }
        let mut not_served = self.converge(metadata.clone()).await;
        // A shard that stopped answering is shutting down; nothing to wait for.
        for answer in futures::future::join_all(pending).await {
            not_served.extend(answer.unwrap_or_default());
        }
        not_served
    }

    /// Opens the partitions the metadata gives this shard and closes and
    /// deletes those it no longer lists, then installs it. Returns the
    /// partitions it could not open (kept, and retried on a timer).
    pub async fn converge(&self, metadata: ClusterMetadata) -> Vec<NotServed> {
        let Ok(_turn) = self.converge_turn.acquire_permit(1).await else {
            return Vec::new();
        };
        // Pushes run as tasks of their own and may take their turns out of
        // order (a command committed while the start's push is on its way):
        // older metadata never replaces newer.
        if metadata.applied_index < self.metadata().applied_index {
            return Vec::new();
        }
        let mut wanted = HashMap::new();
        for (name, topic) in &metadata.topics {
            for (p, meta) in topic.partitions.iter().enumerate() {
                if self.replica_shard(meta) == Some(self.id) {
                    wanted.insert((name.clone(), p as i32), topic);
                }
            }
        }
        let doomed: Vec<((String, i32), Rc<Partition>)> = self
            .partitions
            .borrow()
            .iter()
            .filter(|(key, p)| wanted.get(*key).is_none_or(|t| t.id != p.topic_id))
            .map(|(key, p)| (key.clone(), p.clone()))
            .collect();
        for (key, partition) in doomed {
            self.partitions.borrow_mut().remove(&key);
            if let Err(e) = partition.close().await {
                tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "closing");
            }
            let dir = partition.dir().to_path_buf();
            if let Err(e) = fjord_storage::recovery::remove_tree(&dir).await {
                tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "deleting");
            }
        }
        self.unserved
            .borrow_mut()
            .retain(|key, _| wanted.contains_key(key));
        let mut not_served = Vec::new();
        let mut wanted: Vec<_> = wanted.into_iter().collect();
        wanted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((name, p), topic) in wanted {
            if let Some(partition) = self.partition(&name, p) {
                // Served: whatever kept it from being served is past.
                self.unserved.borrow_mut().remove(&(name.clone(), p));
                if let Some(replica) = partition.replica() {
                    replica.set_placement(
                        layout_of(&name, topic, p),
                        self.peers_of(&metadata, topic, p),
                    );
                }
                partition.apply_retention(&topic.config()).await;
                partition.set_log_start(log_start_of(topic, p)).await;
                continue;
            }
            let setup = PartitionSetup {
                shard: self.id,
                dir: partition_dir(self.data.path(), &name, topic.id, p),
                topic: name.clone(),
                partition: p,
                topic_id: topic.id,
                config: LogConfig::for_topic(&topic.config()),
                cache: self.cache.clone(),
                space: self.space.clone(),
                staging: self.staging.clone(),
                metrics: self.metrics.clone(),
                replica: self.replica_for(&metadata, &name, topic, p),
            };
            let opened = match Partition::open(setup).await {
                Ok(partition) => {
                    let partition = Rc::new(partition);
                    match partition.replica().map(|r| r.group) {
                        Some(group) => match self.replica_state(&partition, group).await {
                            Ok((hard, configs)) => {
                                self.replication.add(partition.clone(), hard, configs);
                                Ok(partition)
                            }
                            Err(e) => {
                                // Its log is open: closed, or each retry
                                // would open it once more.
                                let _ = partition.close().await;
                                Err(e)
                            }
                        },
                        None => Ok(partition),
                    }
                }
                Err(e) => Err(e),
            };
            match opened {
                Ok(partition) => {
                    if self
                        .unserved
                        .borrow_mut()
                        .remove(&(name.clone(), p))
                        .is_some()
                    {
                        tracing::info!(shard = self.id, topic = %name, partition = p, "opened on retry: served");
                    }
                    partition.set_log_start(log_start_of(topic, p)).await;
                    self.partitions.borrow_mut().insert((name, p), partition);
                }
                Err(e) => {
                    let reason = e.to_string();
                    if let Some(count) = self.open_failures.hit() {
                        tracing::warn!(
                            shard = self.id,
                            topic = %name,
                            partition = p,
                            error = %reason,
                            failed_opens = count,
                            "cannot open partition: not served, retried every {}s",
                            RETRY_UNSERVED_INTERVAL.as_secs()
                        );
                    }
                    self.unserved
                        .borrow_mut()
                        .insert((name.clone(), p), reason.clone());
                    not_served.push(NotServed {
                        topic: name,
                        partition: p,
                        reason,
                    });
                }
            }
        }
        self.metrics
            .retain_topics(|name| metadata.topics.contains_key(name));
        *self.metadata.borrow_mut() = Rc::new(metadata);
        self.release_unclaimed_staged();
        if let Some(ready) = self.ready.borrow_mut().take() {
            let _ = ready.send(());
        }
        not_served
    }

    /// Releases what the staging area holds for logs the metadata no longer
    /// give this shard (deleted, moved away): every log they list has been
    /// opened and has taken its batches, and one that failed to open keeps
    /// them for its retry. Batches of a topic newer than the metadata stay
    /// too: a follower starts from the copy it kept, which a kill can leave
    /// behind the metadata its last run served.
    fn release_unclaimed_staged(&self) {
        let Some(staging) = self.staging.as_ref().filter(|s| s.holds_unclaimed()) else {
            return;
        };
        let listed: std::collections::HashSet<String> = self
            .owned_dirs()
            .iter()
            .map(|dir| staging.key(dir))
            .collect();
        let next_topic_id = self.metadata().next_topic_id();
        let kept = |key: &str| {
            listed.contains(key) || topic_id_in(key).is_some_and(|id| id >= next_topic_id)
        };
        for (log, batches) in staging.release_unclaimed(kept) {
            tracing::warn!(
                shard = self.id,
                log,
                batches,
                "staged batches of a log no longer listed: dropped"
            );
        }
    }

    /// Where this shard reaches the other replicas of a partition.
    fn peers_of(
        &self,
        metadata: &ClusterMetadata,
        topic: &TopicMeta,
        p: i32,
    ) -> HashMap<NodeId, std::net::SocketAddr> {
        let me = self.node_id();
        let Some(meta) = topic.partitions.get(p as usize) else {
            return HashMap::new();
        };
        meta.hosts()
            .filter(|r| r.node != me)
            .filter_map(|r| {
                let node = metadata.nodes.get(&r.node)?;
                let ip: std::net::IpAddr = node.host.parse().ok()?;
                Some((
                    r.node,
                    std::net::SocketAddr::new(ip, node.replica_port(r.shard)?),
                ))
            })
            .collect()
    }

    /// The replica side of a partition this shard opens, if it is replicated.
    fn replica_for(
        &self,
        metadata: &ClusterMetadata,
        name: &str,
        topic: &TopicMeta,
        p: i32,
    ) -> Option<(Replica, Rc<Replication>)> {
        let meta = topic.partitions.get(p as usize)?;
        if meta.replicas.is_empty() {
            return None;
        }
        let durability = match topic.config().fsync {
            fjord_core::FsyncPolicy::Always => Durability::Synced,
            _ => Durability::Written,
        };
        let replica = Replica::new(
            group_id(topic.id, p as u32),
            meta.replicas.iter().map(|r| r.node).collect(),
            layout_of(name, topic, p),
            self.peers_of(metadata, topic, p),
            durability,
        );
        Some((replica, self.replication.clone()))
    }

    /// What a replica's group restarts from besides its log: the term and
    /// vote, and the membership entries its log holds.
    pub async fn replica_state(
        &self,
        partition: &Partition,
        group: GroupId,
    ) -> Result<(HardState, crate::replica::Configs), StorageError> {
        let hard = self
            .hard_state(group, None)
            .await
            .map_err(StorageError::Failed)?;
        let end = partition.log().offset_next();
        let configs = crate::replica::read_configs(partition.dir(), end).await?;
        Ok((hard, configs))
    }

    /// The directories of the partitions the metadata gives this shard.
    pub fn owned_dirs(&self) -> Vec<PathBuf> {
        let metadata = self.metadata();
        let mut dirs = Vec::new();
        for (name, topic) in &metadata.topics {
            for (p, meta) in topic.partitions.iter().enumerate() {
                if self.replica_shard(meta) == Some(self.id) {
                    dirs.push(partition_dir(self.data.path(), name, topic.id, p as i32));
                }
            }
        }
        dirs
    }

    /// Closes partitions whose replica failed and leaves them to
    /// [`Shard::retry_unserved`], which opens them again (recovery, then a
    /// group restored from the disk), for as long as the shard runs.
    async fn reopen_failed(self: Rc<Self>, failed: LocalReceiver<Rc<Partition>>) {
        while let Some(partition) = failed.recv().await {
            let key = self
                .partitions
                .borrow()
                .iter()
                .find(|(_, p)| Rc::ptr_eq(p, &partition))
                .map(|(key, _)| key.clone());
            let Some(key) = key else {
                // The controller quorum's log, or closed meanwhile (deleted,
                // or shutting down).
                if let Some(controller) = self.controller() {
                    controller.reopen_failed(&self, &partition).await;
                }
                continue;
            };
            // Not while a convergence runs: missing from the map, the
            // partition would be opened again before this closed it, and
            // then listed as unserved although served.
            let Ok(_turn) = self.converge_turn.acquire_permit(1).await else {
                return;
            };
            let still_ours = self
                .partitions
                .borrow()
                .get(&key)
                .is_some_and(|p| Rc::ptr_eq(p, &partition));
            if !still_ours {
                continue; // Closed meanwhile (deleted, moved away).
            }
            self.partitions.borrow_mut().remove(&key);
            if let Err(e) = partition.close().await {
                tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "closing a failed replica");
            }
            self.unserved
                .borrow_mut()
                .insert(key, "its replica failed; opened again".into());
        }
    }

    /// Tries again, every [`RETRY_UNSERVED_INTERVAL`], to open partitions
    /// that failed to open, forever.
    pub async fn retry_unserved(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(RETRY_UNSERVED_INTERVAL).await;
            if self.unserved.borrow().is_empty() {
                continue;
            }
            let metadata = (*self.metadata()).clone();
            self.converge(metadata).await;
        }
    }

    /// Samples the data directory's free space on a timer, forever, and says
    /// when the shard starts or stops refusing produce.
    pub async fn watch_space(self: Rc<Self>) {
        let interval = Duration::from_millis(self.config.disk_check_interval_ms);
        let id = self.id;
        let floor = |space| self.space.threshold().floor(space);
        self.space
            .clone()
            .run(interval, |low, space| {
                if low {
                    tracing::warn!(
                        shard = id,
                        free_bytes = space.free_bytes,
                        min_free_bytes = floor(space),
                        "disk space low: produce refused (KAFKA_STORAGE_ERROR); fetch, metadata and deletes go on"
                    );
                } else {
                    tracing::info!(
                        shard = id,
                        free_bytes = space.free_bytes,
                        "disk space back above the threshold: produce accepted again"
                    );
                }
            })
            .await;
    }

    /// Reports a disk that stops answering (see `disk_stall`), every disk
    /// check, from the shard's start (a start held by the disk is reported)
    /// until it stops (so is a stop).
    pub async fn watch_disk(self: Rc<Self>) {
        let interval = Duration::from_millis(self.config.disk_check_interval_ms);
        loop {
            glommio::timer::sleep(interval).await;
            self.check_disk();
        }
    }

    /// One look at the oldest storage operation in flight; logs a stall as
    /// it starts, lasts and ends. The node also calls it once the shard is
    /// closed, so that a stop that waited on the disk says it answered.
    pub fn check_disk(&self) {
        let oldest = fjord_storage::io_stats::oldest_pending();
        let report = self
            .disk_watch
            .borrow_mut()
            .check(oldest.as_ref(), Instant::now());
        match report {
            Some(Report::Stalled {
                op,
                path,
                waited,
                in_flight,
                unreported,
            }) => {
                let staged = if self.staging.is_some() {
                    "acks=1 is answered from the staging area meanwhile, until its budget fills"
                } else {
                    "acks wait for it (staging is off)"
                };
                tracing::warn!(
                    shard = self.id,
                    op,
                    path,
                    waited_ms = waited.as_millis() as u64,
                    in_flight,
                    stalls_unreported = unreported,
                    "disk stalled: a storage operation has not completed; {staged}"
                );
            }
            Some(Report::Answers { stalled_for }) => tracing::info!(
                shard = self.id,
                stalled_ms = stalled_for.as_millis() as u64,
                "disk answers again"
            ),
            None => {}
        }
    }

    /// Serves what other shards send, each message in a task of its own so a
    /// long poll never holds up the next message.
    pub fn serve_mesh(self: &Rc<Self>, mut receivers: Receivers<ShardMsg>) {
        for (_, receiver) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = receiver.recv().await {
                    let shard = shard.clone();
                    glommio::spawn_local(async move { shard.run(msg).await }).detach();
                }
            })
            .detach();
        }
    }

    async fn run(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Metadata { metadata, done } => {
                let _ = done.send(self.converge(metadata).await);
            }
            ShardMsg::Command { proposal, reply } => {
                let _ = reply.send(self.command(proposal).await);
            }
            ShardMsg::Live(live) => self.set_live(live),
            ShardMsg::Metrics { reply } => {
                let _ = reply.send(Box::new(crate::admin::snapshot::of_shard(self)));
            }
            ShardMsg::Peer {
                from,
                batch,
                payload,
            } => self.replication.receive(from, batch, payload),
            ShardMsg::HardState {
                group,
                state,
                reply,
            } => {
                let _ = reply.send(self.hard_state(group, state).await);
            }
            ShardMsg::Leaders(reports) => {
                if self.merge_leaders(&reports)
                    && let Some(controller) = self.controller.borrow().as_ref()
                {
                    controller.notify();
                }
            }
            ShardMsg::Partition {
                topic,
                partition,
                op,
            } => match self.partition(&topic, partition) {
                Some(p) => run_op(&p, op).await,
                None => op.fail(self.missing(&topic, partition)),
            },
        }
    }

    /// Applies retention to every partition, forever; expires idle
    /// producer ids and writes producer snapshots on the way.
    pub async fn enforce_retention(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(Duration::from_millis(
                self.config.retention_check_interval_ms,
            ))
            .await;
            let partitions: Vec<Rc<Partition>> =
                self.partitions.borrow().values().cloned().collect();
            let now = fjord_storage::log::now_ms();
            for partition in partitions {
                partition.expire_producers(now, self.config.producer_id_expiration_ms);
                if let Err(e) = partition.enforce_retention(now).await
                    && let Some(count) = self.retention_failures.hit()
                {
                    tracing::warn!(shard = self.id, error = %e, failures = count, "retention");
                }
            }
        }
    }

    /// Cleans compacted partitions due for it, one at a time, every
    /// `log_cleaner_backoff_ms` (Kafka's log cleaner, one per shard here).
    pub async fn compact_logs(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(Duration::from_millis(self.config.log_cleaner_backoff_ms)).await;
            let partitions: Vec<Rc<Partition>> =
                self.partitions.borrow().values().cloned().collect();
            for partition in partitions {
                let now = fjord_storage::log::now_ms();
                let budget = self.config.log_cleaner_io_bytes_per_sec;
                if let Err(e) = partition.compact(now, budget).await
                    && let Some(count) = self.compaction_failures.hit()
                {
                    tracing::warn!(shard = self.id, error = %e, failures = count, "compaction");
                }
            }
        }
    }

    /// Marks the shard as closing and releases every long poll, so that
    /// connections drain quickly.
    pub fn begin_close(&self) {
        self.closing.set(true);
        for partition in self.partitions.borrow().values() {
            partition.wake_parked();
        }
    }

    /// Stops long polls and closes every partition (flushing what is staged).
    pub async fn close(&self) {
        self.closing.set(true);
        let partitions: Vec<((String, i32), Rc<Partition>)> =
            self.partitions.borrow_mut().drain().collect();
        for ((topic, p), partition) in partitions {
            let closing = reported(self.id, "the partition", partition.close())
                .instrument(tracing::info_span!("closing", %topic, partition = p));
            if let Err(e) = closing.await {
                tracing::warn!(shard = self.id, %topic, partition = p, error = %e, "closing");
            }
        }
        let controller = self.controller.borrow_mut().take();
        if let Some(controller) = controller {
            reported(self.id, "the metadata log", controller.close()).await;
        }
        let hard_states = self.hard_states.borrow_mut().take();
        if let Some(states) = hard_states
            && let Err(e) = reported(self.id, "the hard-state log", states.close()).await
        {
            tracing::warn!(shard = self.id, error = %e, "closing the hard-state log");
        }
    }
}

/// Awaits `closing`, warning every [`CLOSE_REPORT_INTERVAL`] until it is
/// done: a stop that waits (on a stalled disk, or on a bug) says on what
/// (`what`, and the fields of the span it runs in).
async fn reported<T>(shard: usize, what: &str, closing: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let mut closing = std::pin::pin!(closing);
    loop {
        let tick = std::pin::pin!(glommio::timer::sleep(CLOSE_REPORT_INTERVAL));
        match futures::future::select(closing.as_mut(), tick).await {
            futures::future::Either::Left((closed, _)) => return closed,
            futures::future::Either::Right(_) => tracing::warn!(
                shard,
                waited_s = started.elapsed().as_secs(),
                "stopping: still closing {what}"
            ),
        }
    }
}

async fn run_op(partition: &Partition, op: PartitionOp) {
    // A requester that went away needs no answer: sends may fail.
    match op {
        PartitionOp::Produce {
            frame,
            range,
            acks,
            reply,
        } => {
            let produced = match frame.get(range) {
                Some(records) => partition.produce(records, acks).await,
                None => Err(ErrorCode::InvalidRequest),
            };
            let _ = reply.send(produced);
        }
        PartitionOp::Fetch {
            offset,
            max_bytes,
            reply,
        } => {
            let fetched = partition
                .read(offset, max_bytes)
                .await
                .map(|read| Fetched::copied(&read));
            let _ = reply.send(fetched);
        }
        PartitionOp::WaitPast {
            offset,
            wait,
            reply,
        } => {
            partition.wait_past(offset, wait).await;
            let _ = reply.send(Ok(()));
        }
        PartitionOp::Describe { reply } => {
            let _ = reply.send(Ok(partition.describe()));
        }
        PartitionOp::OffsetFor { timestamp, reply } => {
            let _ = reply.send(partition.offset_for(timestamp).await);
        }
        PartitionOp::Group { call, reply } => {
            let _ = reply.send(partition.coordinator().serve(partition, *call).await);
        }
    }
}

/// The log start Kafka's DeleteRecords gave partition `p` (0: none).
fn log_start_of(topic: &TopicMeta, p: i32) -> u64 {
    usize::try_from(p)
        .ok()
        .and_then(|p| topic.partitions.get(p))
        .map_or(0, |meta| meta.log_start)
}

/// Where topics' partitions live: `topics/<name>.<topic id>/<partition>`;
/// the id keeps a re-created topic apart from the deleted one's leftovers.
pub fn partition_dir(
    data: &std::path::Path,
    topic: &str,
    topic_id: u64,
    partition: i32,
) -> PathBuf {
    topics_dir(data)
        .join(topic_dir_name(topic, topic_id))
        .join(partition.to_string())
}

/// The topic id in the path of a partition's directory relative to the
/// data directory (`topics/<name>.<id>/<partition>`), if it is one.
pub fn topic_id_in(relative: &str) -> Option<u64> {
    let (topic_dir, _partition) = relative.strip_prefix("topics/")?.split_once('/')?;
    topic_dir.rsplit_once('.')?.1.parse().ok()
}

/// The directory that holds every topic.
pub fn topics_dir(data: &std::path::Path) -> PathBuf {
    data.join("topics")
}

/// A topic's directory name.
pub fn topic_dir_name(topic: &str, topic_id: u64) -> String {
    format!("{topic}.{topic_id}")
}

/// Where a replicated partition's replicas are, as a replica needs it.
fn layout_of(name: &str, topic: &TopicMeta, p: i32) -> Layout {
    let meta = topic.partitions.get(p as usize);
    Layout {
        members: meta.map_or_else(Vec::new, |m| m.hosts().map(|r| r.node).collect()),
        target: meta.map_or_else(Vec::new, |m| m.target.clone()),
        topic: name.to_owned(),
        topic_id: topic.id,
        partition: p as u32,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_partition_directory_names_its_topic_id() {
        let data = std::path::Path::new("/data");
        let dir = partition_dir(data, "a.b", 17, 3);
        let relative = dir.strip_prefix(data).unwrap().to_str().unwrap();
        assert_eq!(topic_id_in(relative), Some(17));
        assert_eq!(topic_id_in("cluster/metadata"), None);
        assert_eq!(topic_id_in("topics/t/0"), None);
    }
}
