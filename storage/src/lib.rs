//! Fjord's partition log, owned by one shard and driven through that shard's
//! io_uring ring (glommio, O_DIRECT). Nothing here blocks the executor.
//!
//! The append path is a short walk: [`log::Log::append`] validates a batch,
//! assigns its offsets and stages it in the active [`segment`]'s
//! [`appender`]; the log's flusher task writes what is staged (group commit)
//! and, per the fsync policy, `fdatasync`s it; then written batches enter the
//! shard's [`cache`] and durability handles resolve. [`recovery`] rebuilds a
//! log from its files after a clean stop or a crash.

pub mod alloc;
pub mod appender;
pub mod cache;
pub mod checkpoint;
mod commit;
pub mod compact;
pub mod config;
pub mod epochs;
pub mod error;
pub mod files;
pub mod index;
pub mod io_stats;
pub mod log;
pub mod pipeline;
pub mod producer_snapshot;
pub mod producers;
pub mod recovery;
pub mod segment;
pub mod shard;
pub mod slice;
pub mod space;
pub mod staging;
mod stream_copy;
mod truncate;

pub use cache::BatchCache;
pub use compact::CompactionReport;
pub use config::{Compaction, LogConfig};
pub use error::StorageError;
pub use log::{Appended, Durable, Log, LogRead, LogStats};
pub use producers::{ProducerBatch, ProducerTable, SequenceError, Verdict};
pub use shard::DataDir;
pub use slice::BatchSlice;
pub use staging::{Staging, StagingError, StagingFile};
