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
    /// A write found no room — the disk full, or no descriptor to open a
    /// file with. Nothing is wrong with what is on disk: the log takes no
    /// appends until its owner reopens it (recovery keeps every whole batch),
    /// which it does once room is back.
    #[error("no room to write, appends paused until the log is reopened: {0}")]
    OutOfRoom(String),
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// `append_at` named an offset other than the log's next one.
    #[error("append at offset {expected}, but the log's next offset is {next}")]
    OffsetMismatch {
        /// The offset the caller wanted the batch at.
        expected: u64,
        /// The log's next offset.
        next: u64,
    },
    /// A batch's leader epoch is lower than the log's last one.
    #[error("leader epoch {epoch} is below the log's last epoch {last}")]
    EpochRegression {
        /// The batch's epoch.
        epoch: i32,
        /// The epoch of the log's last batch.
        last: i32,
    },
    /// `truncate` was asked to cut inside a batch.
    #[error("offset {offset} is inside a batch, not at its start")]
    NotBatchBoundary {
        /// The requested cut.
        offset: u64,
    },
    /// The batch was removed by `truncate` before it was safe.
    #[error("the log was truncated at {end} before the batch was safe")]
    Truncated {
        /// Where the log was cut.
        end: u64,
    },
}

/// Whether an I/O error means "no room" (disk space, quota, descriptors)
/// rather than damage: the operation may succeed once room is made.
pub fn is_out_of_room(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE)
    )
}

impl StorageError {
    /// Whether this is a failure for want of room; see [`is_out_of_room`].
    pub fn is_out_of_room(&self) -> bool {
        match self {
            StorageError::OutOfRoom(_) => true,
            StorageError::Io { source, .. } => is_out_of_room(source),
            _ => false,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(glommio::GlommioError<()>) -> StorageError {
        let path = path.into();
        move |e| StorageError::Io {
            op,
            path,
            source: match e {
                // The OS error itself, errno intact (glommio's conversion
                // keeps only its kind); the op and path are ours already.
                glommio::GlommioError::EnhancedIoError { source, .. } => source,
                other => other.into(),
            },
        }
    }
}

/// Shorthand for storage results.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
