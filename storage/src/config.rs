//! Per-log settings, named after the Kafka topic configs they implement.

use fjord_core::{FsyncPolicy, TopicConfig};
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
        self
    }
}
