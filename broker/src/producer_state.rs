//! A partition's idempotent-producer state as its shard serves it: the
//! table (`fjord_storage::producers`), the turn that makes check, append
//! and update one step on a partition of its own, and when to write the
//! next snapshot.
//!
//! A snapshot is written before retention deletes segments (every
//! `retention_check_interval_ms`) when the table changed since the last
//! one, or when the log rolled a segment since; and at close when the log
//! grew since the last one (as Kafka does at roll and at close). So an
//! open reads back at most about a segment's batches, and a partition
//! that is not written to writes nothing. On a replica it covers what is
//! below the high watermark — never cut by Raft, so a snapshot is never
//! ahead of what the log will hold — and the batches above it are read
//! back from the log at open.

use fjord_storage::{
    Log, ProducerBatch, ProducerTable, SequenceError, StorageError, Verdict, producer_snapshot,
};
use glommio::sync::{Permit, Semaphore};
use std::cell::{Cell, RefCell};

/// What the last producer snapshot covers.
#[derive(Debug, Clone, Copy)]
struct SnapshotMark {
    /// Its offset: batches below it.
    offset: u64,
    /// The state's version when it was taken.
    version: u64,
    /// It held the whole table (a replica's leaves out what is above the
    /// high watermark).
    whole: bool,
    /// The log's segments at the time: another one means a roll.
    segments: usize,
}

/// One partition's producer state.
pub struct ProducerState {
    table: RefCell<ProducerTable>,
    /// One idempotent append at a time on a partition of its own.
    turn: Semaphore,
    /// Bumped on every change of `table`.
    version: Cell<u64>,
    snapshot: Cell<SnapshotMark>,
}

impl ProducerState {
    /// The state loaded at open from `log` and its snapshot at
    /// `snapshot_offset` (0 for none): on disk already.
    pub fn new(table: ProducerTable, log: &Log, snapshot_offset: u64) -> ProducerState {
        ProducerState {
            table: RefCell::new(table),
            turn: Semaphore::new(1),
            version: Cell::new(0),
            snapshot: Cell::new(SnapshotMark {
                offset: snapshot_offset,
                version: 0,
                whole: true,
                segments: log.segment_count(),
            }),
        }
    }

    /// Waits for the turn of idempotent appends (a partition of its own).
    pub async fn turn(&self) -> Result<Permit<'_>, StorageError> {
        self.turn
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)
    }

    /// Checks a batch; changes nothing.
    pub fn check(&self, batch: &ProducerBatch) -> Result<Verdict, SequenceError> {
        self.table.borrow().check(batch)
    }

    /// Records a batch the log took at `base..=last`, in log order; no cut
    /// will come below `committed`.
    pub fn apply(&self, batch: &ProducerBatch, base: u64, last: u64, committed: u64) {
        self.table.borrow_mut().apply(batch, base, last, committed);
        self.changed();
    }

    /// The log was cut at `end`.
    pub fn truncate(&self, end: u64) {
        self.table.borrow_mut().truncate(end);
        self.changed();
    }

    /// Replaces the whole state (a log opened again, or started anew).
    pub fn replace(&self, table: ProducerTable) {
        *self.table.borrow_mut() = table;
        self.changed();
    }

    /// Drops producers idle for longer than `max_age_ms`; how many went.
    pub fn expire(&self, now_ms: i64, max_age_ms: i64) -> usize {
        let expired = self.table.borrow_mut().expire(now_ms, max_age_ms);
        if expired > 0 {
            self.changed();
        }
        expired
    }

    fn changed(&self) {
        self.version.set(self.version.get() + 1);
    }

    /// Writes a snapshot of `log`'s producers if it is due (see the module
    /// doc; `closing`: the partition closes): below `high_watermark` on a
    /// replica, below the log's end otherwise.
    pub async fn write_snapshot(
        &self,
        log: &Log,
        high_watermark: Option<u64>,
        closing: bool,
    ) -> Result<(), StorageError> {
        // What no cut can remove any more goes, on every check: producers
        // that stopped writing hold only their newest batches.
        let offset = high_watermark.map(|hw| hw.min(log.offset_next()));
        if let Some(offset) = offset {
            self.table.borrow_mut().settle(offset);
        }
        let last = self.snapshot.get();
        let version = self.version.get();
        let changed = version != last.version || !last.whole;
        let rolled = log.segment_count() != last.segments;
        if !(changed || rolled || closing) {
            return Ok(());
        }
        let (offset, table, whole) = match offset {
            Some(offset) => {
                let current = self.table.borrow();
                let mut table = current.clone();
                // Settled at `offset` above: cut there, it keeps five a
                // producer, as a snapshot holds.
                table.truncate(offset);
                let whole = table == *current;
                (offset, table, whole)
            }
            None => {
                // No idempotent append between its offset and the table.
                let _turn = self.turn().await?;
                (log.offset_next(), self.table.borrow().clone(), true)
            }
        };
        if offset < last.offset || (offset == last.offset && !changed) {
            return Ok(());
        }
        producer_snapshot::write(log.dir(), offset, &table).await?;
        self.snapshot.set(SnapshotMark {
            offset,
            version,
            whole,
            segments: log.segment_count(),
        });
        Ok(())
    }
}
