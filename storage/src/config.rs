//! Per-log settings, named after the Kafka topic configs they implement.

use fjord_core::{CleanupPolicy, FsyncPolicy, TopicConfig};
use std::time::Duration;

/// How a partition log rolls, retains, indexes and syncs.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment's first batch is this old.
    pub segment_age: Option<Duration>,
    /// `retention.bytes`: delete old segments while the log stays above this.
    pub retention_bytes: Option<u64>,
    /// `retention.ms`: delete segments whose newest timestamp is older.
    pub retention_age: Option<Duration>,
    /// `max.message.bytes`: the largest batch an append accepts.
    pub max_batch_bytes: usize,
    /// `fsync`: when appends are made durable.
    pub fsync: FsyncPolicy,
    /// `index.interval.bytes`: log bytes between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Files grow by fallocate in steps of this size.
    pub preallocate_bytes: u64,
    /// Largest single write of the group commit.
    pub write_buffer_bytes: usize,
    /// Bytes staged but not yet written before appends wait (backpressure).
    pub staged_bytes_max: usize,
    /// Write-behind: when every append was answered from the staging area
    /// and nobody waits for the write, staged bytes gather for up to this
    /// long (or until a write of 1 MiB) before the flusher writes them.
    /// Zero writes at once.
    pub write_behind: Duration,
    /// `cleanup.policy`: with `compact` alone, retention deletes nothing.
    pub cleanup: CleanupPolicy,
    /// The cleaner's settings, used when `cleanup` includes `compact`.
    pub compaction: Compaction,
}

/// How the log cleaner compacts a log (Kafka's LogCleaner settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compaction {
    /// `delete.retention.ms`: a tombstone is removed once its segment has
    /// been clean this long.
    pub delete_retention: Duration,
    /// `min.cleanable.dirty.ratio`: clean when dirty bytes over cleanable
    /// bytes reach this.
    pub min_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: segments holding a record younger than
    /// this are not cleaned.
    pub min_lag: Duration,
    /// `max.compaction.lag.ms`: the log is due for cleaning, whatever its
    /// ratio, once its dirty part holds a segment entirely older than this.
    pub max_lag: Duration,
    /// Most distinct keys one cleaning pass maps (its memory bound: about
    /// 24 bytes a key); a fuller dirty part is cleaned over several passes.
    pub keys_max: usize,
    /// Disk bytes (read plus written) a cleaning pass moves per second at
    /// most, so that produce and fetch on the shard are not starved.
    pub io_bytes_per_sec: u64,
    /// Keep a batch whose records are all removed as an empty batch (its
    /// header, spanning the same offsets) instead of dropping it: a
    /// replicated partition's log is its Raft log, whose entries followers
    /// catch up through one batch after another, without gaps.
    pub keep_empty_batches: bool,
}

impl Compaction {
    /// The settings a topic's configs give; the storage-only ones keep
    /// their defaults.
    pub fn for_topic(topic: &TopicConfig) -> Compaction {
        Compaction {
            delete_retention: topic.delete_retention,
            min_dirty_ratio: topic.min_cleanable_dirty_ratio.get(),
            min_lag: topic.min_compaction_lag,
            max_lag: topic.max_compaction_lag,
            keys_max: 1 << 20,
            io_bytes_per_sec: 32 << 20,
            keep_empty_batches: false,
        }
    }
}

/// Segment positions are 32-bit in the index, as in Kafka.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig::for_topic(&TopicConfig::default())
    }
}

impl LogConfig {
    /// The settings of a partition log of a topic configured so; the
    /// storage-only settings keep their defaults.
    pub fn for_topic(topic: &TopicConfig) -> LogConfig {
        LogConfig {
            segment_bytes: topic.segment_bytes,
            segment_age: Some(topic.segment_age),
            retention_bytes: topic.retention_bytes,
            retention_age: topic.retention,
            max_batch_bytes: topic.max_message_bytes as usize,
            fsync: topic.fsync,
            index_interval_bytes: 4096,
            preallocate_bytes: 64 << 20,
            write_buffer_bytes: 4 << 20,
            staged_bytes_max: 64 << 20,
            write_behind: Duration::from_millis(10),
            cleanup: topic.cleanup_policy,
            compaction: Compaction::for_topic(topic),
        }
    }

    /// Clamps values into the ranges the storage layout can represent.
    pub(crate) fn normalized(mut self) -> Self {
        self.segment_bytes = self.segment_bytes.clamp(4096, SEGMENT_BYTES_MAX);
        self.index_interval_bytes = self.index_interval_bytes.max(1);
        self.max_batch_bytes = self.max_batch_bytes.min(fjord_core::batch::BATCH_LEN_MAX);
        // A staged batch must always fit, or an append would wait forever.
        self.staged_bytes_max = self.staged_bytes_max.max(2 * self.max_batch_bytes);
        self.write_buffer_bytes = self.write_buffer_bytes.max(64 * 1024);
        self.compaction.keys_max = self.compaction.keys_max.max(1);
        self.compaction.io_bytes_per_sec = self.compaction.io_bytes_per_sec.max(64 * 1024);
        self
    }
}
