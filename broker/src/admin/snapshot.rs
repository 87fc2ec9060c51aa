//! A copy of what each shard knows, gathered over the mesh for one admin
//! request: every shard answers [`ShardMsg::Metrics`] with a
//! [`ShardSnapshot`] taken on its own thread, so no counter is ever read
//! from another core.

use super::metrics::{Api, Latency, Traffic};
use crate::mesh::ShardMsg;
use crate::shard::Shard;
use fjord_storage::io_stats::IoStats;
use futures::channel::oneshot;

/// One partition as its shard sees it.
#[derive(Debug, Clone)]
pub struct PartitionRow {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// The shard that owns it.
    pub shard: usize,
    /// First offset held.
    pub log_start: i64,
    /// Next offset readers reach (the high watermark when replicated).
    pub log_end: i64,
    /// Bytes on disk.
    pub size_bytes: i64,
    /// The leader's node id, if known (this node's on a node of its own).
    pub leader: Option<u32>,
    /// Whether this node leads it (always, unreplicated).
    pub leading: bool,
    /// Voters (1 unreplicated).
    pub replicas: usize,
    /// Voters in sync, as the leader sees them (`replicas` unreplicated;
    /// 0 on a follower, which does not know).
    pub in_sync: usize,
    /// Records the slowest voter is behind the leader's log end (leader
    /// only; 0 otherwise).
    pub replication_lag: i64,
}

/// What one shard knows, copied on its thread.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    /// Which shard.
    pub shard: usize,
    /// Whether the shard has metadata (serves).
    pub ready: bool,
    /// Traffic per topic.
    pub topics: Vec<(String, Traffic)>,
    /// Request latency per API.
    pub requests: Vec<(Api, Latency)>,
    /// Partition append latency.
    pub append: Latency,
    /// Write and fdatasync latency, group-commit sizes.
    pub io: IoStats,
    /// Batch-cache reads served, ever.
    pub cache_hits: u64,
    /// Batch-cache reads missed, ever.
    pub cache_misses: u64,
    /// Bytes the batch cache holds.
    pub cache_bytes: u64,
    /// Open client connections.
    pub connections: usize,
    /// Batches staged and not yet written.
    pub staged_batches: usize,
    /// Bytes of the staging area they take.
    pub staged_bytes: usize,
    /// Bytes the staging area has (0: the shard stages nothing).
    pub staging_capacity_bytes: usize,
    /// Raft groups ticked every tick: those not quiet.
    pub raft_groups_ticking: usize,
    /// Free bytes of the data directory's filesystem, last sampled.
    pub disk_free_bytes: u64,
    /// Size of that filesystem.
    pub disk_total_bytes: u64,
    /// Whether produce is refused for want of space.
    pub disk_low: bool,
    /// How long the oldest storage operation in flight has waited, in
    /// microseconds (0: none in flight). A stalled disk shows here.
    pub io_waiting_us: u64,
    /// Storage operations in flight.
    pub io_in_flight: usize,
    /// Partitions the metadata gives the shard that it could not open.
    pub not_served: usize,
    /// The partitions it owns.
    pub partitions: Vec<PartitionRow>,
    /// Committed offsets of the groups it coordinates: `(group, topic,
    /// partition, offset)`.
    pub committed: Vec<(String, String, i32, i64)>,
}

impl ShardSnapshot {
    /// How long its oldest storage operation in flight has waited, in
    /// milliseconds, once that is a stall (see `disk_stall`).
    pub fn stalled_ms(&self) -> Option<u64> {
        let after = crate::disk_stall::STALLED_AFTER.as_micros() as u64;
        (self.io_waiting_us >= after).then_some(self.io_waiting_us / 1000)
    }
}

/// What every shard of the node knows, with the node's identity.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    /// This node's id (0 on a node of its own).
    pub node: u32,
    /// Whether the node runs in a cluster.
    pub clustered: bool,
    /// The node running the active controller, as shard 0 knows it.
    pub controller: Option<u32>,
    /// Why the newest metadata could not be kept, while it cannot: the
    /// node serves the metadata it had meanwhile.
    pub metadata_unkept: Option<String>,
    /// Whether shards count traffic (`metrics`).
    pub metrics_enabled: bool,
    /// Partitions `/metrics` lists one by one at most.
    pub partitions_max: usize,
    /// Shards the node runs (some may not have answered).
    pub shard_count: usize,
    /// Every shard's copy, by shard.
    pub shards: Vec<ShardSnapshot>,
}

impl NodeSnapshot {
    /// Every partition of the node, sorted by topic and number.
    pub fn partitions(&self) -> Vec<&PartitionRow> {
        let mut rows: Vec<&PartitionRow> = self.shards.iter().flat_map(|s| &s.partitions).collect();
        rows.sort_unstable_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        rows
    }

    /// Each group's lag per partition, `(group, topic, partition, lag)`, for
    /// partitions this node leads (it knows their end): sorted.
    pub fn group_lag(&self) -> Vec<(&str, &str, i32, i64)> {
        let ends: std::collections::HashMap<(&str, i32), i64> = self
            .partitions()
            .into_iter()
            .filter(|p| p.leading)
            .map(|p| ((p.topic.as_str(), p.partition), p.log_end))
            .collect();
        let mut lag: Vec<(&str, &str, i32, i64)> = self
            .shards
            .iter()
            .flat_map(|s| &s.committed)
            .filter_map(|(group, topic, partition, offset)| {
                let end = ends.get(&(topic.as_str(), *partition))?;
                Some((
                    group.as_str(),
                    topic.as_str(),
                    *partition,
                    (end - offset).max(0),
                ))
            })
            .collect();
        lag.sort_unstable();
        lag
    }
}

/// This shard's snapshot, taken here.
pub fn of_shard(shard: &Shard) -> ShardSnapshot {
    let super::metrics::Counted {
        topics,
        requests,
        append,
    } = shard.metrics().copy();
    let (cache_hits, cache_misses) = shard.cache().hits_misses();
    let space = shard.space().space();
    let (staged_batches, staged_bytes, staging_capacity_bytes) = shard.staged();
    let mut partitions = Vec::new();
    let mut committed = Vec::new();
    for partition in shard.partitions() {
        let described = partition.describe();
        let me = shard.node_id();
        let row = match &described.replication {
            None => PartitionRow {
                leader: Some(me),
                leading: true,
                replicas: 1,
                in_sync: 1,
                replication_lag: 0,
                ..row_of(shard.id, &partition, &described)
            },
            Some(status) => {
                let leading = status.leader == Some(me);
                let own_end = status
                    .replicas
                    .iter()
                    .find(|(n, _)| *n == me)
                    .and_then(|(_, end)| *end);
                let slowest = status
                    .replicas
                    .iter()
                    .map(|(_, end)| end.unwrap_or(0))
                    .min();
                let replication_lag = match (leading, own_end, slowest) {
                    (true, Some(end), Some(slowest)) => end.saturating_sub(slowest) as i64,
                    _ => 0,
                };
                PartitionRow {
                    leader: status.leader,
                    leading,
                    replicas: status.replicas.len(),
                    in_sync: status.in_sync.len(),
                    replication_lag,
                    ..row_of(shard.id, &partition, &described)
                }
            }
        };
        if row.topic == crate::group::OFFSETS_TOPIC && row.leading {
            committed.extend(partition.coordinator().committed());
        }
        partitions.push(row);
    }
    let oldest_io = fjord_storage::io_stats::oldest_pending();
    ShardSnapshot {
        shard: shard.id,
        ready: shard.is_ready(),
        topics,
        requests,
        append,
        io: fjord_storage::io_stats::snapshot(),
        cache_hits,
        cache_misses,
        cache_bytes: shard.cache().used_bytes() as u64,
        connections: shard.connections.get(),
        staged_batches,
        staged_bytes,
        staging_capacity_bytes,
        raft_groups_ticking: shard.replication().groups_ticking(),
        disk_free_bytes: space.free_bytes,
        disk_total_bytes: space.total_bytes,
        disk_low: shard.space().is_low(),
        // Not clamped as the histograms are: a stall may last for hours.
        io_waiting_us: oldest_io.as_ref().map_or(0, |o| {
            u64::try_from(o.waited.as_micros()).unwrap_or(u64::MAX)
        }),
        io_in_flight: oldest_io.as_ref().map_or(0, |o| o.in_flight),
        not_served: shard.not_served_count(),
        partitions,
        committed,
    }
}

fn row_of(
    shard: usize,
    partition: &crate::partition::Partition,
    described: &crate::partition::Described,
) -> PartitionRow {
    PartitionRow {
        topic: partition.topic().to_owned(),
        partition: partition.number(),
        shard,
        log_start: described.log_start_offset,
        log_end: described.log_end_offset,
        size_bytes: described.size_bytes,
        leader: None,
        leading: false,
        replicas: 0,
        in_sync: 0,
        replication_lag: 0,
    }
}

/// Every shard's snapshot, this one's taken here and the others' asked for
/// over the mesh; a shard that does not answer (shutting down) is left out.
pub async fn gather(shard: &Shard) -> NodeSnapshot {
    let mut pending = Vec::new();
    for to in (0..shard.count).filter(|&to| to != shard.id) {
        let (reply, rx) = oneshot::channel();
        if shard.send_to(to, ShardMsg::Metrics { reply }).await.is_ok() {
            pending.push(rx);
        }
    }
    let mut shards = vec![of_shard(shard)];
    for answer in futures::future::join_all(pending).await {
        shards.extend(answer.ok().map(|boxed| *boxed));
    }
    shards.sort_unstable_by_key(|s| s.shard);
    NodeSnapshot {
        node: shard.node_id(),
        clustered: shard.config.node_id.is_some(),
        controller: shard.controller_node(),
        metadata_unkept: shard.metadata_unkept(),
        metrics_enabled: shard.config.metrics,
        partitions_max: shard.config.metrics_partitions_max,
        shard_count: shard.count,
        shards,
    }
}
