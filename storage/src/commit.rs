//! The log's shared state and its group commit.
//!
//! Appends stage batches into the active segment; the flusher task, one per
//! log on the log's shard, takes everything staged at once, writes it in
//! file order, syncs it per the fsync policy and then publishes the new
//! marks: that round is one group commit, and appends that arrive while it
//! runs join the next. Waiters resolve in offset order as the marks pass them.

use crate::appender::{FileEnd, Flush, Write};
use crate::cache::{BatchCache, CacheKey};
use crate::config::LogConfig;
use crate::epochs::EpochCache;
use crate::error::{Result, StorageError};
use crate::files::SegmentFile;
use crate::log::LogStats;
use crate::pipeline::{Pipeline, WRITES_IN_FLIGHT_MAX};
use crate::segment::Segment;
use crate::slice::BatchSlice;
use crate::staging::{Staging, Ticket};
use fjord_core::FsyncPolicy;
use futures::channel::oneshot;
use glommio::channels::local_channel::LocalReceiver;
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Most bytes one round takes before it ends and lets the index, a
/// truncate and the shard's other logs have their turn: about 40 ms of
/// writes at this machine's limit.
const ROUND_BYTES_MAX: u64 = 64 << 20;
/// Fewest bytes of full buffers written beside writes in flight. A write
/// that shares its first block with one in flight counts as written only
/// after that block's head write, issued once the other is done (another
/// write's latency); at 256 KiB and more the device's extra queue depth is
/// worth it.
const OVERLAP_BYTES_MIN: u64 = 256 * 1024;
/// Staged bytes that end a write-behind linger (`LogConfig::write_behind`)
/// early. A write costs about the same CPU whatever its size up to here (an
/// io_uring worker's wake-up, the device's doorbell and its completion
/// interrupt, each a VM exit on a virtual machine; and a virtual machine's
/// host may charge each request of its virtual disk to the guest's share of
/// CPU, stopping both cores once it is spent: BENCHMARKS.md, "Fewer, larger
/// writes behind"). Fewer, larger writes leave more of the core to the
/// appends, and no acknowledgement waits for them. 1 MiB: the largest
/// request the device takes whole.
const WRITE_BEHIND_BYTES: u64 = 1024 * 1024;

pub(crate) struct Waiter {
    /// Offsets below this must be safe.
    pub(crate) offset_end: u64,
    /// Needs fdatasync, not only the write.
    pub(crate) needs_sync: bool,
    /// Waits for its own batch (an append), not for a mark (a flush): a
    /// truncate that cuts the batch off fails it.
    pub(crate) batch: bool,
    pub(crate) tx: oneshot::Sender<Result<(), Failure>>,
}

/// Why a log stopped taking appends: the flusher's error, and whether it
/// was for want of room (the log may be reopened) or damage (it may not).
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) out_of_room: bool,
    /// Not a failure of the log: `truncate` cut the batch off at this end.
    pub(crate) truncated: Option<u64>,
}

impl Failure {
    pub(crate) fn of(error: &StorageError) -> Failure {
        Failure {
            message: error.to_string(),
            out_of_room: error.is_out_of_room(),
            truncated: None,
        }
    }

    pub(crate) fn truncated(end: u64) -> Failure {
        Failure {
            message: String::new(),
            out_of_room: false,
            truncated: Some(end),
        }
    }

    pub(crate) fn error(&self) -> StorageError {
        if let Some(end) = self.truncated {
            StorageError::Truncated { end }
        } else if self.out_of_room {
            StorageError::OutOfRoom(self.message.clone())
        } else {
            StorageError::Failed(self.message.clone())
        }
    }
}

/// A batch staged since the last flush, to be cached once written.
pub(crate) struct Staged {
    pub(crate) segment: u64,
    pub(crate) base_offset: u64,
    pub(crate) last_offset: u64,
    pub(crate) position: u64,
    pub(crate) len: usize,
    /// Its copy in the staging area, released once written.
    pub(crate) ticket: Option<Ticket>,
}

/// A log's part of its shard's staging area.
pub(crate) struct LogStaging {
    pub(crate) area: Rc<Staging>,
    /// The log's key in the area.
    pub(crate) key: String,
}

pub(crate) struct State {
    /// By base offset; the last one is active.
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// Rolled segments the flusher has not yet finished.
    pub(crate) sealing: Vec<u64>,
    /// Segments written since the last fdatasync.
    pub(crate) unsynced: Vec<u64>,
    pub(crate) offset_next: u64,
    pub(crate) offset_written: u64,
    /// Offsets below this are readable: written, or safe in the staging
    /// area (`offset_written <= offset_visible <= offset_next`).
    pub(crate) offset_visible: u64,
    pub(crate) offset_durable: u64,
    pub(crate) staged: Vec<Staged>,
    pub(crate) waiters: VecDeque<Waiter>,
    /// Readers waiting for `offset_visible` to reach an offset.
    pub(crate) readers: Vec<(u64, oneshot::Sender<()>)>,
    pub(crate) synced_at: Instant,
    pub(crate) failed: Option<Failure>,
    pub(crate) closed: bool,
    pub(crate) leader_epoch: i32,
    /// First offset of each leader epoch in the log.
    pub(crate) epochs: EpochCache,
    /// The entry of an append whose batch opens a new epoch, from before
    /// the epoch file is written until the batch is staged: every write of
    /// the file includes it, so the file is never behind the data.
    pub(crate) epoch_pending: Option<(i32, u64)>,
    /// A truncate is under way: retention waits (it would remove segments
    /// the truncate is working on).
    pub(crate) truncating: bool,
    pub(crate) stats: LogStats,
    /// What the cleaner knows: below `offset_clean` batches may be missing.
    pub(crate) cleaner: crate::compact::CleanerState,
}

impl State {
    pub(crate) fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    /// For each segment in offset order, whether a later one has its file
    /// on disk. A segment rolled to gets its file from its first write,
    /// which with staging follows the answers; until then the one before it
    /// is where a recovery after a kill finds the log's end, so retention
    /// must not delete it, nor compaction clean it (which may end it early).
    pub(crate) fn followed_by_a_file(&self) -> Vec<bool> {
        let mut later = false;
        let mut followed: Vec<bool> = self
            .segments
            .values()
            .rev()
            .map(|s| {
                let this = later;
                later |= s.log.file().created();
                this
            })
            .collect();
        followed.reverse();
        followed
    }

    pub(crate) fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    pub(crate) fn offset_start(&self) -> u64 {
        self.segments
            .keys()
            .next()
            .copied()
            .unwrap_or(self.offset_next)
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if let Some(failure) = &self.failed {
            return Err(failure.error());
        }
        if self.closed {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// Resolves every waiter whose offsets are now safe; waiters are in
    /// offset order, so this stops at the first that is not.
    pub(crate) fn release_waiters(&mut self) {
        while let Some(w) = self.waiters.front() {
            let mark = if w.needs_sync {
                self.offset_durable
            } else {
                self.offset_written
            };
            // A flush also waits for the segments its bytes rolled out of
            // to be finished (cut to length), as it did when rolls created
            // files in the append path: what follows a flush (retention, a
            // close) finds them settled.
            let finishing = !w.batch && self.sealing.iter().any(|&b| b < w.offset_end);
            if w.offset_end > mark || finishing {
                break;
            }
            if let Some(w) = self.waiters.pop_front() {
                let _ = w.tx.send(Ok(()));
            }
        }
    }

    /// Moves `offset_visible` over the written batches and the staged ones
    /// right after them, and wakes the readers it passes.
    pub(crate) fn advance_visible(&mut self) {
        let mut visible = self.offset_visible.max(self.offset_written);
        if visible < self.offset_next {
            let first = self.staged.partition_point(|b| b.last_offset < visible);
            for b in &self.staged[first..] {
                if b.base_offset != visible || b.ticket.is_none() {
                    break;
                }
                visible = b.last_offset + 1;
            }
        }
        assert!(visible <= self.offset_next, "visible past the log's end");
        self.offset_visible = visible;
        if self.readers.iter().any(|(end, _)| *end <= visible) {
            let (ready, waiting) = std::mem::take(&mut self.readers)
                .into_iter()
                .partition(|(end, _)| *end <= visible);
            self.readers = waiting;
            for (_, reader) in ready {
                let _ = reader.send(());
            }
        }
    }

    pub(crate) fn fail(&mut self, failure: Failure) {
        for w in self.waiters.drain(..) {
            let _ = w.tx.send(Err(failure.clone()));
        }
        self.failed.get_or_insert(failure);
    }
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    /// `retention.bytes` and `retention.ms`: changed on a live log when the
    /// topic's configs are altered (the rest of `config` is fixed at open).
    pub(crate) retention: std::cell::Cell<(Option<u64>, Option<std::time::Duration>)>,
    /// `cleanup.policy` and the cleaner's settings, alterable like
    /// `retention`.
    pub(crate) cleanup: std::cell::Cell<(fjord_core::CleanupPolicy, crate::config::Compaction)>,
    /// One cleaning of this log at a time.
    pub(crate) clean_turn: Semaphore,
    /// Held by a cleaning's swap, by retention and by a truncate: each
    /// replaces or removes segment files the others work on.
    pub(crate) swap_turn: Semaphore,
    pub(crate) cache: Rc<BatchCache>,
    pub(crate) cache_key: CacheKey,
    pub(crate) state: RefCell<State>,
    /// Serializes appends, so offsets follow call order even across a roll.
    /// A truncate holds it too: no append meanwhile.
    pub(crate) append_turn: Semaphore,
    /// Held by the flusher for a group commit, and by a truncate so that
    /// no write is in flight while it cuts.
    pub(crate) flush_turn: Semaphore,
    /// Serializes writes of the leader-epoch file: the last one written
    /// must be the latest state.
    pub(crate) epochs_write: Semaphore,
    /// Bytes that may be staged but not yet written: appends wait for room.
    pub(crate) staged_room: Semaphore,
    /// Where acknowledged batches wait for their write, when the log
    /// answers before it (not under `fsync=always`).
    pub(crate) staging: Option<LogStaging>,
}

impl Inner {
    /// Gives back the staging places of every batch staged and not
    /// written: another log holds them now (see `Log::reopen`).
    pub(crate) fn release_staged(&self) {
        let staged = std::mem::take(&mut self.state.borrow_mut().staged);
        if let Some(s) = &self.staging {
            for ticket in staged.into_iter().filter_map(|b| b.ticket) {
                s.area.release(ticket);
            }
        }
    }

    /// Whether the last batch not yet written waits for its write (it has
    /// no place in the staging area): the batches after it must too.
    pub(crate) fn behind_unstaged(&self) -> bool {
        let st = self.state.borrow();
        st.staged.last().is_some_and(|b| b.ticket.is_none())
    }

    /// Takes the staging tickets of the batches not yet written: their
    /// entries go back to the area (a log that failed), and a write of them
    /// that completes later releases nothing.
    pub(crate) fn disown_staged(&self) -> Vec<Ticket> {
        let mut st = self.state.borrow_mut();
        st.staged
            .iter_mut()
            .filter_map(|b| b.ticket.take())
            .collect()
    }

    /// Hands the batches staged and not written back to the staging area,
    /// for the next opening of this log (or the next start): a log closed
    /// after it failed leaves them there.
    pub(crate) fn put_back_staged(&self) {
        if let Some(s) = &self.staging {
            s.area.put_back(&s.key, self.disown_staged());
        }
    }

    /// Writes the leader-epoch file from the cache (and the pending entry).
    pub(crate) async fn write_epochs(&self) -> Result<()> {
        let _turn = self
            .epochs_write
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        // Taken under the turn: the last write carries the latest state.
        let cache = {
            let st = self.state.borrow();
            match st.epoch_pending {
                Some((epoch, offset)) => st.epochs.with(epoch, offset),
                None => st.epochs.clone(),
            }
        };
        crate::epochs::persist(&self.dir, &cache).await
    }

    /// Why an append found the log's semaphores closed.
    pub(crate) fn closed_or_failed(&self) -> StorageError {
        self.state
            .borrow()
            .check_writable()
            .err()
            .unwrap_or(StorageError::Closed)
    }

    pub(crate) fn roll_due(&self, batch_len: usize, now_ms: i64) -> bool {
        let st = self.state.borrow();
        let active = st.active();
        if active.is_empty() {
            return false;
        }
        let full = active.log.len() + batch_len as u64 > self.config.segment_bytes;
        let old = self
            .config
            .segment_age
            .is_some_and(|age| now_ms - active.created_ms >= age.as_millis() as i64);
        full || old
    }

    /// Starts a new active segment at the next offset. The flusher creates
    /// its files with its first write and finishes the old one once its
    /// last bytes are written: no I/O here, so an append never waits for
    /// the disk to roll.
    pub(crate) fn roll(&self, now_ms: i64) {
        let mut st = self.state.borrow_mut();
        let base = st.offset_next;
        let segment = Segment::create(&self.dir, base, now_ms, &self.config);
        let old = st.active().base_offset;
        st.sealing.push(old);
        st.segments.insert(base, segment);
    }

    /// One group commit: write what every unfinished segment has staged,
    /// several writes in flight (see `pipeline`), publishing each write in
    /// offset order as it is written for good; then sync per policy and
    /// publish durability. Under `never` and `interval` the round goes on
    /// taking what is staged meanwhile, up to [`ROUND_BYTES_MAX`], so the
    /// device's queue does not drain between rounds.
    pub(crate) async fn flush_once(&self, kicked: &LocalReceiver<()>) -> Result<()> {
        let mut pipeline = Pipeline::default();
        let written = self.write_round(&mut pipeline, kicked).await;
        self.state.borrow_mut().stats.head_writes += pipeline.heads();
        let wrote = match written {
            Ok(wrote) => wrote,
            Err(e) => {
                // Writes issued after the failing one may still be in flight:
                // they must not land once the log has given its files up (a
                // reopened log recovers them without those writes).
                pipeline.drain().await;
                return Err(e);
            }
        };
        let sync_files = {
            let st = self.state.borrow();
            let due = match self.config.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Interval(every) => st.synced_at.elapsed() >= every,
                FsyncPolicy::Never => false,
            };
            // `flush()` callers wait with `needs_sync`, whatever the policy.
            let wanted = due || st.waiters.iter().any(|w| w.needs_sync);
            (wanted && !st.unsynced.is_empty()).then(|| {
                st.unsynced
                    .iter()
                    .filter_map(|b| st.segments.get(b))
                    .map(|s| s.reader())
                    .collect::<Vec<_>>()
            })
        };
        if let Some(files) = &sync_files {
            for file in files {
                // An fdatasync that finds no room (ext4 converting the
                // preallocated extents it wrote into) leaves the log to be
                // reopened like a failed write: the files are O_DIRECT, so
                // no page cache holds data the disk lost, and recovery
                // reads back exactly what the disk kept. Nothing that waited
                // on this sync was acknowledged.
                let _pending = crate::io_stats::pending("fdatasync", file.file.path().clone());
                let open = file.file.get().await?;
                let started = Instant::now();
                open.fdatasync()
                    .await
                    .map_err(StorageError::io("fdatasync", &**file.file.path()))?;
                crate::io_stats::record_fdatasync(started.elapsed());
            }
        }
        {
            let mut st = self.state.borrow_mut();
            st.stats.flushes += u64::from(wrote);
            if sync_files.is_some() {
                // The flusher is the only writer and it synced every unsynced
                // file after its writes: nothing written is unsynced now.
                st.stats.syncs += 1;
                st.unsynced.clear();
                st.synced_at = Instant::now();
            }
            if st.unsynced.is_empty() {
                st.offset_durable = st.offset_written;
            }
            st.release_waiters();
        }
        self.finish_segments().await
    }

    /// The writes of one round: takes what is staged, keeps up to
    /// [`WRITES_IN_FLIGHT_MAX`] writes unpublished, and returns once all
    /// it took are published; true if it wrote anything. Appends `kicked`
    /// meanwhile join the round as their own writes while the window has
    /// room, so acknowledged appenders refill while earlier writes are in
    /// flight.
    async fn write_round(
        &self,
        pipeline: &mut Pipeline,
        kicked: &LocalReceiver<()>,
    ) -> Result<bool> {
        // Taken and not yet issued, in file order.
        let mut queued: VecDeque<(u64, Rc<SegmentFile>, Write)> = VecDeque::new();
        // Staged batches whose bytes are taken and not yet published.
        let mut batches_taken = 0usize;
        let mut bytes_taken = 0u64;
        let mut first = true;
        // Whether to wake for an append's kick: once per completion, so
        // that a stream of small appends does not wake the flusher for each
        // (a kick costs a task switch; the channel holds one, and appends
        // that find it full cost nothing). Off for good once the log's
        // sender is gone.
        let mut hear = true;
        let mut deaf = false;
        loop {
            while pipeline.unpublished() < WRITES_IN_FLIGHT_MAX {
                if let Some((base, file, write)) = queued.pop_front() {
                    pipeline.issue(base, &file, write);
                    continue;
                }
                // While others are in flight, only full buffers of at least
                // OVERLAP_BYTES_MIN are worth a write of their own: smaller
                // ones would pay a head write's latency before they count as
                // written, for no gain in throughput. With none, anything
                // goes, unless it may linger (then the round ends and the
                // flusher lets it gather).
                let worth =
                    (pipeline.unpublished() == 0 && !self.may_linger()) || self.buffer_filled();
                if !(first || (worth && self.round_goes_on(bytes_taken))) {
                    break;
                }
                first = false;
                let (flushes, batches) = self.take_flushes(batches_taken);
                batches_taken += batches;
                if batches > 0 {
                    crate::io_stats::record_group_commit(batches);
                }
                if flushes.is_empty() {
                    break;
                }
                for (base, flush) in flushes {
                    // A segment's index comes into being with its log's
                    // first write, as its log does.
                    let index = self.state.borrow().segments.get(&base).and_then(|s| {
                        let index = s.index.file().file();
                        (!index.created()).then(|| index.clone())
                    });
                    if let Some(index) = index {
                        index.get().await?;
                    }
                    flush.preallocate().await?;
                    for write in flush.writes.iter() {
                        bytes_taken += write.len as u64;
                        queued.push_back((base, flush.file().clone(), write.clone()));
                    }
                }
            }
            let listen = hear
                && !deaf
                && pipeline.unpublished() < WRITES_IN_FLIGHT_MAX
                && pipeline.unpublished() > 0
                && self.round_goes_on(bytes_taken);
            let next = if listen {
                // Cancel-safe: a completion not yet taken stays in the
                // pipeline for the next call.
                let completion = std::pin::pin!(pipeline.complete_next());
                let kick = std::pin::pin!(kicked.recv());
                match futures::future::select(completion, kick).await {
                    futures::future::Either::Left((next, _)) => next,
                    futures::future::Either::Right((kick, _)) => {
                        deaf = kick.is_none();
                        hear = false;
                        continue;
                    }
                }
            } else {
                pipeline.complete_next().await
            };
            let Some(completed) = next else {
                assert!(queued.is_empty(), "writes queued with none in flight");
                return Ok(bytes_taken > 0);
            };
            completed?;
            hear = true;
            while let Some((base, write)) = pipeline.take_published() {
                batches_taken -= self.publish_write(base, &write);
            }
        }
    }

    /// Bytes staged in the unfinished segments and not yet taken by a flush.
    pub(crate) fn untaken_bytes(&self) -> u64 {
        let st = self.state.borrow();
        st.sealing
            .iter()
            .chain(std::iter::once(&st.active().base_offset))
            .filter_map(|b| st.segments.get(b))
            .map(|s| s.log.len_untaken())
            .sum()
    }

    /// Whether the unfinished segments filled buffers of at least
    /// [`OVERLAP_BYTES_MIN`] since their last flush.
    fn buffer_filled(&self) -> bool {
        let st = self.state.borrow();
        let sealed: u64 = st
            .sealing
            .iter()
            .chain(std::iter::once(&st.active().base_offset))
            .filter_map(|b| st.segments.get(b))
            .map(|s| s.log.len_sealed())
            .sum();
        sealed >= OVERLAP_BYTES_MIN
    }

    /// Seals what every unfinished segment has staged into flushes, in file
    /// order, with the number of staged batches they newly cover (the
    /// first `batches_taken` were taken before).
    fn take_flushes(&self, batches_taken: usize) -> (Vec<(u64, Flush)>, usize) {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        assert!(batches_taken <= st.staged.len(), "took more than staged");
        let batches = st.staged.len() - batches_taken;
        let active = st.active().base_offset;
        let mut flushes: Vec<(u64, Flush)> = Vec::new();
        for base in st.sealing.iter().copied().chain(std::iter::once(active)) {
            if let Some(flush) = st.segments.get_mut(&base).and_then(|s| s.log.take_flush()) {
                if !st.unsynced.contains(&base) {
                    st.unsynced.push(base);
                }
                flushes.push((base, flush));
            }
        }
        (flushes, batches)
    }

    /// Whether a round that took `bytes_taken` takes more: not when a sync
    /// is owed (it waits for the round to end), nor past
    /// [`ROUND_BYTES_MAX`] (a truncate, the index and other logs' rounds
    /// wait for it too).
    fn round_goes_on(&self, bytes_taken: u64) -> bool {
        if bytes_taken >= ROUND_BYTES_MAX {
            return false;
        }
        let st = self.state.borrow();
        let sync_owed = match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => st.synced_at.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        !st.closed && !sync_owed && !st.waiters.iter().any(|w| w.needs_sync)
    }

    /// After one write: move `offset_written` past the batches it completed,
    /// cache them, resolve the waiters that needed only the write, and give
    /// their bytes back to the staging budget. Returns how many batches it
    /// completed.
    fn publish_write(&self, segment_base: u64, write: &Write) -> usize {
        let mut st = self.state.borrow_mut();
        let end = write.position + write.len as u64;
        let Some(segment) = st.segments.get_mut(&segment_base) else {
            return 0;
        };
        let written_bytes = end.saturating_sub(segment.log.len_written());
        segment.log.complete_to(end);
        // Segments are written in offset order, so the batches this write
        // completed are a prefix of the staged ones.
        let done = st
            .staged
            .iter()
            .take_while(|b| b.segment == segment_base && b.position + b.len as u64 <= end)
            .count();
        // The batches share what keeping the buffer costs: its whole
        // allocation, not the written part a trim left visible (a write of
        // a few blocks may sit in a buffer of megabytes).
        let share = write.capacity.checked_div(done).unwrap_or(0);
        for staged in st.staged.drain(..done) {
            debug_assert!(staged.position >= write.position);
            if let (Some(ticket), Some(staging)) = (staged.ticket, &self.staging) {
                staging.area.release(ticket);
            }
            let start = (staged.position - write.position) as usize;
            let slice = BatchSlice::from_memory(write.buffer.clone(), start, staged.len);
            self.cache.insert(
                self.cache_key,
                staged.base_offset,
                staged.last_offset,
                slice,
                share,
            );
        }
        let offset_written = st.staged.first().map_or(st.offset_next, |b| b.base_offset);
        assert!(
            offset_written >= st.offset_written,
            "written mark moved back"
        );
        st.offset_written = offset_written;
        st.release_waiters();
        st.advance_visible();
        self.staged_room.signal(written_bytes);
        done
    }

    /// Writes due index entries, and completes rolled segments whose data is
    /// all written: index flushed, file cut to its length.
    pub(crate) async fn finish_segments(&self) -> Result<()> {
        let (index_flushes, finished) = {
            let mut st = self.state.borrow_mut();
            let st = &mut *st;
            let mut finished = Vec::new();
            for &base in &st.sealing {
                if st
                    .segments
                    .get(&base)
                    .is_some_and(|s| s.log.len_written() == s.log.len())
                {
                    finished.push(base);
                }
            }
            let mut flushes = Vec::new();
            for (base, segment) in st.segments.iter_mut() {
                segment.index.file_below(segment.log.len_written());
                let due = finished.contains(base) || segment.index.flush_due();
                if let Some(flush) = due.then(|| segment.index.file_mut().take_flush()).flatten() {
                    flushes.push((*base, flush));
                }
            }
            // Both files are cut to their length: a clean stop leaves nothing
            // for recovery to repair.
            let finished: Vec<(u64, [FileEnd; 2])> = finished
                .iter()
                .filter_map(|b| {
                    st.segments
                        .get_mut(b)
                        .map(|s| (*b, [s.log.file_end(), s.index.file_mut().file_end()]))
                })
                .collect();
            (flushes, finished)
        };
        for (_, flush) in &index_flushes {
            flush.run().await?;
        }
        let finished_bases: Vec<u64> = finished.iter().map(|(b, _)| *b).collect();
        for file in finished.into_iter().flat_map(|(_, files)| files) {
            file.truncate().await?;
        }
        let mut st = self.state.borrow_mut();
        for (base, flush) in &index_flushes {
            if let Some(segment) = st.segments.get_mut(base) {
                segment.index.file_mut().complete(flush);
            }
        }
        st.sealing.retain(|b| !finished_bases.contains(b));
        st.release_waiters();
        Ok(())
    }

    /// When the interval policy owes a sync, the instant it falls due.
    pub(crate) fn sync_deadline(&self) -> Option<Instant> {
        let st = self.state.borrow();
        match self.config.fsync {
            FsyncPolicy::Interval(every) if !st.unsynced.is_empty() => Some(st.synced_at + every),
            _ => None,
        }
    }

    /// Waits while what is staged may gather into a larger write: until
    /// [`WRITE_BEHIND_BYTES`] are staged, `write_behind` has passed, or
    /// someone waits for the write (an append not answered from the staging
    /// area, a flush, a close).
    async fn linger(&self, kicked: &LocalReceiver<()>) {
        use futures::future::{Either, select};
        // Not past an interval sync that falls due: what it covers must be
        // written first.
        let deadline = self
            .sync_deadline()
            .map_or(Instant::now() + self.config.write_behind, |due| {
                due.min(Instant::now() + self.config.write_behind)
            });
        // Asked for once a linger, on its first turn, not on every kick.
        let mut room_wanted = None;
        while self.may_linger() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if room_wanted.is_none() {
                room_wanted = self.staging.as_ref().map(|s| s.area.room_wanted());
            }
            let timer = std::pin::pin!(glommio::timer::sleep(left));
            let room_wanted = std::pin::pin!(async {
                match room_wanted.as_mut() {
                    Some(rx) => drop(rx.await),
                    None => futures::future::pending().await,
                }
            });
            let kick = std::pin::pin!(kicked.recv());
            match select(kick, select(timer, room_wanted)).await {
                Either::Left((Some(()), _)) => {}
                // The time is up, an append found the staging area full, or
                // the log's sender is gone (it closes).
                _ => return,
            }
        }
    }

    /// Whether what is staged may wait to gather: some is, less than a
    /// write worth its cost (and a quarter of what this log or its shard's
    /// staging area may hold), nobody waits for it to be written, and the
    /// area is not filling.
    fn may_linger(&self) -> bool {
        let untaken = self.untaken_bytes();
        let area = self.staging.as_ref().map(|s| &s.area);
        let area_bytes = area.map_or(u64::MAX, |a| a.capacity_bytes() as u64);
        let st = self.state.borrow();
        self.config.fsync != FsyncPolicy::Always
            && !self.config.write_behind.is_zero()
            && !st.closed
            && st.waiters.is_empty()
            && st.sealing.is_empty()
            && untaken > 0
            && untaken
                < WRITE_BEHIND_BYTES
                    .min(self.config.staged_bytes_max as u64 / 4)
                    .min(area_bytes / 4)
            && area.is_none_or(|a| a.has_room_to_linger())
    }

    pub(crate) fn has_work(&self) -> bool {
        let st = self.state.borrow();
        st.offset_written < st.offset_next
            || st.waiters.iter().any(|w| w.needs_sync)
            || !st.sealing.is_empty()
    }
}

/// The flusher task: one per log, on the log's shard. Runs a group commit
/// whenever appends kick it, or when an interval sync falls due.
pub(crate) async fn run_flusher(inner: Rc<Inner>, kicked: LocalReceiver<()>) {
    loop {
        // A round hears the kicks of appends that arrive while it runs; what
        // they staged after its last take goes without waiting for another.
        // So may the kick of `Log::close`: a closed log never waits for one.
        let open = if inner.untaken_bytes() > 0 || inner.state.borrow().closed {
            true
        } else {
            match inner.sync_deadline() {
                Some(deadline) => {
                    let wait = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_micros(100));
                    let timer = std::pin::pin!(glommio::timer::sleep(wait));
                    let kick = std::pin::pin!(kicked.recv());
                    match futures::future::select(kick, timer).await {
                        futures::future::Either::Left((kick, _)) => kick.is_some(),
                        futures::future::Either::Right(_) => true,
                    }
                }
                None => kicked.recv().await.is_some(),
            }
        };
        let closing = !open || inner.state.borrow().closed;
        if closing && !inner.has_work() {
            break;
        }
        if !closing {
            inner.linger(&kicked).await;
        }
        // One of the shard's group-commit slots while files are busy.
        let slots = crate::files::flush_slots_of_shard();
        let _slot = match &slots {
            Some(slots) => slots.acquire_permit(1).await.ok(),
            None => None,
        };
        let Ok(_turn) = inner.flush_turn.acquire_permit(1).await else {
            break;
        };
        if let Err(e) = inner.flush_once(&kicked).await {
            let mut st = inner.state.borrow_mut();
            st.fail(Failure::of(&e));
            drop(st);
            inner.append_turn.close();
            inner.staged_room.close();
            break;
        }
        if closing && !inner.has_work() {
            break;
        }
    }
}
