//! Errors of the storage layer.

use fjord_core::BatchError;
use std::path::PathBuf;

/// What went wrong in a log operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The batch handed to `append` is not a valid batch.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The batch is larger than the log's `max.message.bytes`.
    #[error("batch of {len} bytes exceeds the limit of {max}")]
    BatchTooLarge {
        /// Batch length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The offset lies outside `[log start, log end]`.
    #[error("offset {offset} out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: u64,
        /// First offset of the log.
        start: u64,
        /// Next offset to be written.
        end: u64,
    },
    /// Bytes on disk inside the written range do not frame a valid batch.
    #[error("corrupt data in {} at position {position}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position in the file.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or fdatasync failed; the log accepts nothing more
    /// (after a failed fsync the page state is unknown, so retrying is unsafe).
    #[error("log failed earlier and is read-only: {0}")]
    Failed(String),
    /// The log was closed.
    #[error("log is closed")]
    Closed,
}

impl StorageError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(glommio::GlommioError<()>) -> StorageError {
        let path = path.into();
        move |e| StorageError::Io {
            op,
            path,
            source: e.into(),
        }
    }
}

/// Shorthand for storage results.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
