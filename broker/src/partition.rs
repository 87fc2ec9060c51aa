//! One partition as its shard serves it: the log, plus the fetches parked
//! until new batches are written. Errors are Kafka's codes, ready for the
//! wire.

use fjord_core::Batch;
use fjord_net::ErrorCode;
use fjord_storage::{Log, LogRead, StorageError};
use futures::channel::oneshot;
use std::cell::RefCell;
use std::time::Duration;

/// Where a produce landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Offset of the first record.
    pub base_offset: i64,
    /// The log start at the time.
    pub log_start_offset: i64,
}

/// A partition's offsets and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Described {
    /// First offset held.
    pub log_start_offset: i64,
    /// Next offset to be readable (the high watermark on one node).
    pub log_end_offset: i64,
    /// Bytes on disk.
    pub size_bytes: i64,
}

/// A partition on its owning shard.
pub struct Partition {
    /// The topic's id: a partition of a re-created topic is a new partition.
    pub topic_id: u64,
    log: Log,
    parked: RefCell<Vec<oneshot::Sender<()>>>,
}

/// Kafka's code for a storage failure.
pub fn error_code(error: &StorageError) -> ErrorCode {
    match error {
        StorageError::InvalidBatch(_) => ErrorCode::CorruptMessage,
        StorageError::BatchTooLarge { .. } => ErrorCode::MessageTooLarge,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::Io { .. }
        | StorageError::Corrupt { .. }
        | StorageError::Failed(_)
        | StorageError::Closed => ErrorCode::KafkaStorageError,
    }
}

impl Partition {
    /// Wraps an open log.
    pub fn new(topic_id: u64, log: Log) -> Partition {
        Partition {
            topic_id,
            log,
            parked: RefCell::new(Vec::new()),
        }
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Appends every batch in `records` (whole batches laid end to end) and,
    /// when `wait` is set, waits until they are as durable as the topic's
    /// fsync policy promises. Either every batch is accepted or the first
    /// refusal is the answer; batches before it stay appended, as in Kafka.
    pub async fn produce(&self, records: &[u8], wait: bool) -> Result<Produced, ErrorCode> {
        if records.is_empty() {
            return Err(ErrorCode::InvalidRequest);
        }
        let mut rest = records;
        let mut base_offset = None;
        let mut durable = Vec::new();
        while !rest.is_empty() {
            let len = match Batch::peek_len(rest) {
                Ok(len) if len <= rest.len() => len,
                _ => return Err(ErrorCode::CorruptMessage),
            };
            let appended = self
                .log
                .append(&rest[..len])
                .await
                .map_err(|e| error_code(&e))?;
            base_offset.get_or_insert(appended.base_offset);
            durable.push(appended.durable);
            rest = &rest[len..];
        }
        // Parked readers wait on the log's visible mark, not on this answer.
        if wait {
            futures::future::try_join_all(durable)
                .await
                .map_err(|e| error_code(&e))?;
        }
        Ok(Produced {
            base_offset: base_offset.unwrap_or(0) as i64,
            log_start_offset: self.log.offset_start() as i64,
        })
    }

    /// Whole batches from `offset`, at most `max_bytes` (but at least one).
    /// Reading at the end returns nothing.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<LogRead, ErrorCode> {
        let offset = u64::try_from(offset).map_err(|_| ErrorCode::OffsetOutOfRange)?;
        self.log
            .read(offset, max_bytes)
            .await
            .map_err(|e| error_code(&e))
    }

    /// Resolves when batches past `offset` are readable, or after `wait`, or
    /// at shutdown.
    pub async fn wait_past(&self, offset: i64, wait: Duration) {
        if self.log.offset_visible() as i64 > offset {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.parked.borrow_mut().push(tx);
        let visible = std::pin::pin!(self.log.wait_visible(offset.max(0) as u64 + 1));
        let timeout = std::pin::pin!(glommio::timer::sleep(wait));
        let _ = futures::future::select(futures::future::select(rx, visible), timeout).await;
    }

    /// Releases every parked reader (shutdown).
    pub fn wake_parked(&self) {
        for tx in self.parked.borrow_mut().drain(..) {
            let _ = tx.send(());
        }
    }

    /// Offsets and size.
    pub fn describe(&self) -> Described {
        Described {
            log_start_offset: self.log.offset_start() as i64,
            log_end_offset: self.log.offset_visible() as i64,
            size_bytes: self.log.size_bytes() as i64,
        }
    }

    /// `ListOffsets`: the log start (`EARLIEST`), the end (`LATEST`), or the
    /// first record at or after a timestamp; `(offset, timestamp)`, with
    /// offset -1 when no record is that recent (as Kafka answers).
    pub async fn offset_for(&self, timestamp: i64) -> Result<(i64, i64), ErrorCode> {
        match timestamp {
            fjord_net::api::EARLIEST => Ok((self.log.offset_start() as i64, -1)),
            fjord_net::api::LATEST => Ok((self.log.offset_visible() as i64, -1)),
            t if t < 0 => Err(ErrorCode::InvalidRequest),
            t => match self.log.offset_for_timestamp(t).await {
                Ok(Some((offset, timestamp))) => Ok((offset as i64, timestamp)),
                Ok(None) => Ok((-1, -1)),
                Err(e) => Err(error_code(&e)),
            },
        }
    }

    /// Wakes parked readers (they find nothing new and answer) and closes
    /// the log.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.wake_parked();
        self.log.close().await
    }
}
