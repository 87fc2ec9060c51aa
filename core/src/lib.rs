//! Fjord's core types: the record batch format shared by every layer, and
//! the configuration vocabulary. Nothing here performs I/O, so every type can
//! be used from a shard, a client thread or a test alike.

pub mod batch;
pub mod builder;
pub mod compression;
pub mod config;
pub mod crc;
pub mod record;
pub mod topic;
mod varint;

pub use batch::{Batch, BatchError, Compression, HEADER_LEN};
pub use builder::{BatchBuilder, Header as RecordHeader};
pub use config::FsyncPolicy;
pub use record::{Record, Records};
pub use topic::{CleanupPolicy, DirtyRatio, TopicConfig, TopicError};
