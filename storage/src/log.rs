//! A partition log: segments strung together, the append path with group
//! commit, reads, timestamp lookup, roll and retention.
//!
//! Offsets and visibility move through four marks, always in this order:
//! `offset_durable <= offset_written <= offset_visible <= offset_next`. An
//! append assigns offsets and stages the batch (`offset_next`), with a copy
//! in the shard's staging area when it has one (`offset_visible`: readable,
//! and survives a process crash); the flusher writes it (`offset_written`:
//! survives a process crash since writes are O_DIRECT) and, per the fsync
//! policy, fdatasyncs it (`offset_durable`: survives power loss). Appends
//! arriving while the flusher is busy join its next round: that is the
//! group commit. When every append was answered from the staging area and
//! nobody waits for the write, small appends first gather for up to
//! `LogConfig::write_behind` (write-behind: fewer writes, less CPU).

use crate::cache::BatchCache;
use crate::commit::{Failure, Inner, LogStaging, Staged, State, Waiter, run_flusher};
use crate::config::LogConfig;
use crate::epochs::EpochCheck;
use crate::error::{Result, StorageError};
use crate::recovery::{self, RecoveryReport};
use crate::segment::{self, Segment, SegmentReader, Visit};
use crate::slice::BatchSlice;
use crate::staging::{self, Replay, Staging, Ticket};
use crate::stream_copy;
use fjord_core::FsyncPolicy;
use fjord_core::batch::Compression;
use fjord_core::batch::{self, Batch, OFFSET_ATTRIBUTES};
use fjord_core::compression::decompressed_records;
use fjord_core::record::Records;
use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Bytes read per step when a timestamp search walks a segment.
const READ_WINDOW_BYTES: usize = 256 * 1024;
/// Most bytes a compressed batch's records may decompress to when the
/// broker reads them (a timestamp lookup, a compacted topic's key check;
/// Kafka's default `max.message.bytes` is 1 MiB compressed; records rarely
/// compress beyond 10×).
pub const DECOMPRESSED_MAX: usize = 64 << 20;
/// Largest single disk read a fetch makes; larger fetches read in steps.
const READ_BYTES_MAX: usize = 8 << 20;
/// Read beyond `max_bytes`: an index interval skipped before the offset, and
/// room for the batch that crosses the end.
const READ_SLACK_BYTES: usize = 64 * 1024;

/// Where an append landed, and when it is safe.
#[derive(Debug)]
pub struct Appended {
    /// Offset assigned to the first record.
    pub base_offset: u64,
    /// Offset assigned to the last record.
    pub last_offset: u64,
    /// Resolves when the batch is safe from a killed process: staged, or
    /// else written (and, under `fsync=always`, synced).
    pub durable: Durable,
}

/// Resolves once an append is as safe as the log's fsync policy promises;
/// at once for a batch in the staging area.
#[derive(Debug)]
pub struct Durable(Option<oneshot::Receiver<Result<(), Failure>>>);

impl Future for Durable {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        Pin::new(rx).poll(cx).map(|r| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(failure.error()),
            Err(oneshot::Canceled) => Err(StorageError::Closed),
        })
    }
}

/// Batches returned by a read.
#[derive(Debug)]
pub struct LogRead {
    /// Whole batches, in offset order; each slice holds one or more.
    pub slices: Vec<BatchSlice>,
    /// Offset after the last batch returned (the next offset to read).
    pub offset_next: u64,
    /// The log's first offset at the time of the read.
    pub offset_start: u64,
    /// The log's readable end at the time of the read (`offset_visible`:
    /// the high watermark of a node on its own).
    pub offset_written: u64,
}

impl LogRead {
    /// Total bytes returned.
    pub fn len_bytes(&self) -> usize {
        self.slices.iter().map(|s| s.len()).sum()
    }
}

/// Counters of a log's write path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Batches appended.
    pub appends: u64,
    /// Group commits that wrote something.
    pub flushes: u64,
    /// fdatasync rounds.
    pub syncs: u64,
    /// Blocks held back because the write before still covered them, and
    /// written on their own once it was done (see `pipeline`).
    pub head_writes: u64,
}

/// A partition log. Owned by one shard; share it on that shard with `Rc`.
pub struct Log {
    pub(crate) inner: Rc<Inner>,
    kick: LocalSender<()>,
    flusher: RefCell<Option<JoinHandle<()>>>,
    recovery: RecoveryReport,
}

/// Wall-clock milliseconds since the epoch, the unit of Kafka timestamps.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Log {
    /// Opens the log in `dir`, creating it if missing and recovering it if
    /// not: see [`crate::recovery`]. Must run on the shard that will own it.
    pub async fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        cache: Rc<BatchCache>,
    ) -> Result<Log> {
        Log::open_staged(dir, config, cache, None).await
    }

    /// Like [`Log::open`], with the shard's staging area: the batches staged
    /// for this log past its recovered end are appended again first, and
    /// unless the policy is `fsync=always` appends answer once staged.
    pub async fn open_staged(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        cache: Rc<BatchCache>,
        staging: Option<Rc<Staging>>,
    ) -> Result<Log> {
        Log::open_with(dir.into(), config, cache, staging, None).await
    }

    /// Opens this log's directory again after it stopped for want of room
    /// (`is_out_of_room`), with its settings and staging area. The batches
    /// it acknowledged from the staging area but never wrote are appended
    /// again after recovery, like those found at start.
    pub async fn reopen(&self) -> Result<Log> {
        let inner = &self.inner;
        let staging = inner.staging.as_ref().map(|s| s.area.clone());
        // Copied, not taken over: this log serves reads of them from the
        // area until the new one replaces it, and a write of them still in
        // flight here releases its own.
        let carried: Vec<Replay> = match &staging {
            Some(area) => inner
                .state
                .borrow()
                .staged
                .iter()
                .filter_map(|b| {
                    let ticket = b.ticket.as_ref()?;
                    Some(area.replay_of(ticket, b.base_offset, b.last_offset))
                })
                .collect(),
            None => Vec::new(),
        };
        let carrying = !carried.is_empty();
        let log = Log::open_with(
            inner.dir.clone(),
            inner.config.clone(),
            inner.cache.clone(),
            staging,
            Some(carried),
        )
        .await?;
        // The settings a topic's altered configs set since the open, not
        // the ones it was opened with: a `cleanup.policy` changed to
        // `compact` must not become `delete` again (retention would delete
        // latest values).
        log.inner.retention.set(inner.retention.get());
        log.inner.cleanup.set(inner.cleanup.get());
        // The log has resumed only once what it carried is on disk: until
        // then a full disk would take acknowledgements it cannot write.
        if carrying && let Err(e) = log.flush().await {
            // This log's copies go; the failed one keeps the originals for
            // the next attempt (or the next start).
            log.inner.release_staged();
            return Err(e);
        }
        inner.release_staged();
        Ok(log)
    }

    async fn open_with(
        dir: PathBuf,
        config: LogConfig,
        cache: Rc<BatchCache>,
        staging: Option<Rc<Staging>>,
        carried: Option<Vec<Replay>>,
    ) -> Result<Log> {
        let mut config = config.normalized();
        let now = now_ms();
        let (mut segments, recovery, cleaner) = recovery::recover(&dir, &config, now).await?;
        if segments.is_empty() {
            let segment = Segment::create(&dir, 0, now, &config);
            segment.create_files().await?;
            segments.push(segment);
        }
        let offset_next = segments.last().map_or(0, |s| s.offset_next);
        let offset_start = segments.first().map_or(offset_next, |s| s.base_offset);
        let readers: Vec<_> = segments.iter().map(|s| s.reader()).collect();
        let epochs = crate::epochs::load(&dir, &readers, offset_start, offset_next).await?;
        drop(readers);
        // Under `fsync=always` what the last run wrote counts as durable only
        // once synced: it may have stopped between a write and its
        // fdatasync, and the device's cache would lose that write to a power
        // cut. A round writes at most the staged bytes' budget, across rolls:
        // the last segments that hold that much are synced below.
        let mut unsynced = Vec::new();
        if config.fsync == FsyncPolicy::Always {
            let mut covered = 0u64;
            for s in segments.iter().rev() {
                unsynced.push(s.base_offset);
                covered += s.log.len();
                if covered >= config.staged_bytes_max as u64 {
                    break;
                }
            }
        }
        let offset_durable = unsynced.last().copied().unwrap_or(offset_next);
        let state = State {
            segments: segments.into_iter().map(|s| (s.base_offset, s)).collect(),
            sealing: Vec::new(),
            unsynced,
            offset_next,
            offset_written: offset_next,
            offset_visible: offset_next,
            offset_durable,
            staged: Vec::new(),
            waiters: VecDeque::new(),
            readers: Vec::new(),
            synced_at: Instant::now(),
            failed: None,
            closed: false,
            leader_epoch: 0,
            epochs,
            epoch_pending: None,
            truncating: false,
            stats: LogStats::default(),
            cleaner,
        };
        // A log opened again carries what its failed predecessor staged;
        // one opened anew takes what the area found for it.
        let found = carried.is_none();
        let replay = staging
            .as_ref()
            .map(|area| carried.unwrap_or_else(|| area.take_replay(&dir)));
        // Each replayed batch passes through the log's staged bytes whole,
        // and was acknowledged under the limits of its day: a batch over a
        // `max.message.bytes` lowered since widens them rather than stop
        // the log from opening.
        if let Some(largest) = replay.iter().flatten().map(|r| r.batch.len()).max() {
            config.staged_bytes_max = config.staged_bytes_max.max(largest);
        }
        let area = staging.clone();
        let staging = staging
            .filter(|_| config.fsync != FsyncPolicy::Always)
            .map(|area| LogStaging {
                key: area.key(&dir),
                area,
            });
        let inner = Rc::new(Inner {
            staging,
            staged_room: Semaphore::new(config.staged_bytes_max as u64),
            retention: std::cell::Cell::new((config.retention_bytes, config.retention_age)),
            cleanup: std::cell::Cell::new((config.cleanup, config.compaction)),
            clean_turn: Semaphore::new(1),
            swap_turn: Semaphore::new(1),
            dir,
            config,
            cache_key: cache.register(),
            cache,
            state: RefCell::new(state),
            append_turn: Semaphore::new(1),
            flush_turn: Semaphore::new(1),
            epochs_write: Semaphore::new(1),
        });
        let (kick, kicked) = local_channel::new_bounded(1);
        let flusher = glommio::spawn_local(run_flusher(inner.clone(), kicked)).detach();
        let mut log = Log {
            inner,
            kick,
            flusher: RefCell::new(Some(flusher)),
            recovery,
        };
        if let (Some(area), Some(replay)) = (area, replay) {
            match replay_staged(&log.inner, &log.kick, &area, replay, found).await {
                Ok(replayed) => log.recovery.batches_replayed = replayed,
                Err(e) => {
                    // Closed before the error goes back: the next opening
                    // of this log (a retry, in this run) reads the same
                    // files, and none of this one's writes may still be
                    // in flight then. What it could not close is in `e`'s
                    // wake already (the batches went back to the area).
                    let _ = log.close_files().await;
                    return Err(e);
                }
            }
        }
        if log.inner.state.borrow().offset_durable < offset_next
            && let Err(e) = log.flush().await
        {
            let _ = log.close_files().await;
            return Err(e);
        }
        Ok(log)
    }

    /// What recovery did when the log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Changes `retention.bytes` and `retention.ms` on the live log (the
    /// topic's configs were altered); the next retention run applies them.
    pub fn set_retention(&self, bytes: Option<u64>, age: Option<std::time::Duration>) {
        self.inner.retention.set((bytes, age));
    }

    /// The `retention.bytes` and `retention.ms` in force.
    pub fn retention(&self) -> (Option<u64>, Option<std::time::Duration>) {
        self.inner.retention.get()
    }

    /// Sets the leader epoch written into the batches appended from now on.
    pub fn set_leader_epoch(&self, epoch: i32) {
        self.inner.state.borrow_mut().leader_epoch = epoch;
    }

    /// First offset still in the log.
    pub fn offset_start(&self) -> u64 {
        self.inner.state.borrow().offset_start()
    }

    /// Next offset an append will assign.
    pub fn offset_next(&self) -> u64 {
        self.inner.state.borrow().offset_next
    }

    /// Offsets below this are written.
    pub fn offset_written(&self) -> u64 {
        self.inner.state.borrow().offset_written
    }

    /// Offsets below this are readable: written, or acknowledged from the
    /// staging area (where a killed process leaves them for the restart).
    pub fn offset_visible(&self) -> u64 {
        self.inner.state.borrow().offset_visible
    }

    /// Offsets below this are fdatasynced.
    pub fn offset_durable(&self) -> u64 {
        self.inner.state.borrow().offset_durable
    }

    /// Bytes of batches in the log, staged ones included.
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .state
            .borrow()
            .segments
            .values()
            .map(|s| s.log.len())
            .sum()
    }

    /// Counters of the write path.
    pub fn stats(&self) -> LogStats {
        self.inner.state.borrow().stats
    }

    /// Whether the log stopped taking appends for want of room (disk space,
    /// descriptors): its owner may drop it and open the directory again once
    /// room is back, and appends resume.
    pub fn is_out_of_room(&self) -> bool {
        self.inner
            .state
            .borrow()
            .failed
            .as_ref()
            .is_some_and(|f| f.out_of_room)
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().segments.len()
    }

    /// Validates `batch`, assigns its offsets and stages it for the next
    /// group commit. Returns once staged: offsets follow the order in which
    /// appends are called. Waits only for a roll or when too many bytes are
    /// staged (backpressure).
    pub async fn append(&self, batch: &[u8]) -> Result<Appended> {
        append(
            &self.inner,
            &self.kick,
            batch,
            None,
            Epoch::OfLog,
            Origin::Outside,
            &mut None,
        )
        .await
    }

    /// Like [`Log::append`], at offset `base_offset`: fails with
    /// [`StorageError::OffsetMismatch`], staging nothing, unless that is the
    /// log's next offset when the append takes its turn. `epoch: Some(e)`
    /// writes `e` as the batch's partition leader epoch (a leader's append);
    /// `None` keeps the batch's own byte for byte (a follower appending its
    /// leader's batch). An epoch below the log's last is refused with
    /// [`StorageError::EpochRegression`].
    pub async fn append_at(
        &self,
        batch: &[u8],
        base_offset: u64,
        epoch: Option<i32>,
    ) -> Result<Appended> {
        let epoch = epoch.map_or(Epoch::Kept, Epoch::Set);
        append(
            &self.inner,
            &self.kick,
            batch,
            Some(base_offset),
            epoch,
            Origin::Outside,
            &mut None,
        )
        .await
    }

    /// [`Log::append_at`] of a batch the caller has validated
    /// ([`Batch::validate`]): a replica's append of what its Raft log
    /// carries, checked where it came in (the leader's produce, the
    /// follower's receipt of the frame). Its CRC is not read a second time;
    /// only its framing is checked.
    pub async fn append_validated_at(
        &self,
        batch: &[u8],
        base_offset: u64,
        epoch: i32,
    ) -> Result<Appended> {
        debug_assert!(Batch::validate(batch).is_ok(), "validated by the caller");
        append(
            &self.inner,
            &self.kick,
            batch,
            Some(base_offset),
            Epoch::Set(epoch),
            Origin::Validated,
            &mut None,
        )
        .await
    }

    /// Removes every batch at or after offset `end`, staged or written, so
    /// that the next append lands at `end`; durable once it returns (a
    /// restart never brings a removed batch back). `end` must start a batch
    /// in `[offset_start, offset_next]`; at or past `offset_next` it is a
    /// no-op. Appends wait meanwhile; appends of removed batches still
    /// waiting for their write fail with [`StorageError::Truncated`].
    ///
    /// When `end` lies in the part not yet written, everything staged is
    /// written first (removed batches included) and then cut: the rare case,
    /// kept simple. Cutting below a segment's start deletes that segment
    /// and makes the previous one active again.
    pub async fn truncate(&self, end: u64) -> Result<()> {
        let _turn = self
            .inner
            .append_turn
            .acquire_permit(1)
            .await
            .map_err(|_| self.inner.closed_or_failed())?;
        let unwritten = {
            let st = self.inner.state.borrow();
            st.check_writable()?;
            if end >= st.offset_next {
                return Ok(());
            }
            let start = st.offset_start();
            if end < start {
                return Err(StorageError::OffsetOutOfRange {
                    offset: end,
                    start,
                    end: st.offset_next,
                });
            }
            if end > st.offset_written && !st.staged.iter().any(|b| b.base_offset == end) {
                return Err(StorageError::NotBatchBoundary { offset: end });
            }
            end > st.offset_written
        };
        if unwritten {
            self.flush().await?;
        }
        let cut = crate::truncate::cut(&self.inner, end).await;
        // Flushes waiting for marks past the cut wait for `end` now.
        let _ = self.kick.try_send(());
        cut
    }

    /// The leader-epoch cache: for each leader epoch in the log, ascending,
    /// the first offset written under it, covering `[offset_start,
    /// offset_next)`.
    pub fn epochs(&self) -> Vec<(i32, u64)> {
        self.inner.state.borrow().epochs.entries().to_vec()
    }

    /// Whether the log takes appends (it has not failed or closed): a wait
    /// for what it will make readable can end only then.
    pub fn is_writable(&self) -> bool {
        self.inner.state.borrow().check_writable().is_ok()
    }

    /// Resolves once offsets below `offset_end` are readable, or the log
    /// fails or closes.
    pub fn wait_visible(&self, offset_end: u64) -> impl Future<Output = ()> + 'static {
        let rx = {
            let mut st = self.inner.state.borrow_mut();
            (st.offset_visible < offset_end && st.check_writable().is_ok()).then(|| {
                // Readers that gave up (a long poll's time ran out) go now,
                // so a quiet log does not collect them.
                st.readers.retain(|(_, tx)| !tx.is_canceled());
                let (tx, rx) = oneshot::channel();
                st.readers.push((offset_end, tx));
                rx
            })
        };
        async move {
            if let Some(rx) = rx {
                // Dropped unanswered: the log failed or closed; stop waiting.
                let _ = rx.await;
            }
        }
    }

    /// Writes and fdatasyncs everything appended so far, whatever the policy.
    pub async fn flush(&self) -> Result<()> {
        self.written(true).await
    }

    /// Waits until everything appended so far is written (and synced, if
    /// `synced`), kicking the flusher rather than letting it linger.
    async fn written(&self, synced: bool) -> Result<()> {
        let rx = {
            let mut st = self.inner.state.borrow_mut();
            st.check_writable()?;
            let (tx, rx) = oneshot::channel();
            let offset_end = st.offset_next;
            st.waiters.push_back(Waiter {
                offset_end,
                needs_sync: synced,
                batch: false,
                tx,
            });
            rx
        };
        let _ = self.kick.try_send(());
        Durable(Some(rx)).await
    }

    /// Reads whole batches from the one containing `offset`, up to
    /// `max_bytes` (at least one batch, whatever its size, as Kafka does).
    /// Batches below `offset_visible` are readable: written ones from the
    /// shard's cache or from disk, staged ones copied out of the staging
    /// area.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<LogRead> {
        let mut offset = offset;
        // Below the cleaner's checkpoint a segment may end early or be
        // empty (batches cleaned away): a read that finds nothing there goes
        // on at the next segment.
        loop {
            let read = self.read_from(offset, max_bytes).await?;
            match read {
                Ok(read) => return Ok(read),
                Err(next_segment) => offset = next_segment,
            }
        }
    }

    /// One step of [`Log::read`]: `Ok(Err(base))` when the segment holding
    /// `offset` has nothing at or after it and the next one starts at `base`.
    async fn read_from(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<std::result::Result<LogRead, u64>> {
        let (reader, position, expected_base, offset_start, offset_written, offset_clean, next) = {
            let st = self.inner.state.borrow();
            let offset_start = st.offset_start();
            let offset_written = st.offset_visible;
            if offset < offset_start || offset > offset_written {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    start: offset_start,
                    end: offset_written,
                });
            }
            if offset == offset_written {
                return Ok(Ok(LogRead {
                    slices: Vec::new(),
                    offset_next: offset,
                    offset_start,
                    offset_written,
                }));
            }
            if offset >= st.offset_written
                && let Some(staging) = &self.inner.staging
            {
                let Some((slice, offset_next)) = staging.area.read(&st.staged, offset, max_bytes)
                else {
                    return Err(st
                        .failed
                        .as_ref()
                        .map_or(StorageError::Closed, |f| f.error()));
                };
                return Ok(Ok(LogRead {
                    slices: vec![slice],
                    offset_next,
                    offset_start,
                    offset_written,
                }));
            }
            if let Some((mut slices, mut offset_next)) =
                self.inner
                    .cache
                    .read(self.inner.cache_key, offset, max_bytes)
            {
                // The cache ends where the writes do; the staged batches
                // after them follow in the same read while they fit, as a
                // fetch answers up to the high watermark (with write-behind
                // the last few ms are staged only).
                if offset_next == st.offset_written
                    && let Some(staging) = &self.inner.staging
                {
                    let room = max_bytes.saturating_sub(slices.iter().map(|s| s.len()).sum());
                    let next_staged = st.staged.first().filter(|b| {
                        b.base_offset == offset_next && b.ticket.is_some() && b.len <= room
                    });
                    if next_staged.is_some()
                        && let Some((slice, next)) =
                            staging.area.read(&st.staged, offset_next, room)
                    {
                        slices.push(slice);
                        offset_next = next;
                    }
                }
                return Ok(Ok(LogRead {
                    slices,
                    offset_next,
                    offset_start,
                    offset_written,
                }));
            }
            let segment = st
                .segments
                .range(..=offset)
                .next_back()
                .map(|(_, s)| s)
                .ok_or(StorageError::OffsetOutOfRange {
                    offset,
                    start: offset_start,
                    end: offset_written,
                })?;
            let (position, expected_base) = segment.seek(offset);
            let next = st
                .segments
                .range(offset + 1..)
                .next()
                .map(|(&base, _)| base);
            (
                segment.reader(),
                position,
                expected_base,
                offset_start,
                offset_written,
                st.cleaner.offset_clean,
                next,
            )
        };
        let (slices, offset_next) = read_segment(
            &reader,
            position,
            expected_base,
            offset,
            max_bytes,
            offset_clean,
        )
        .await?;
        if slices.is_empty()
            && let Some(next) = next.filter(|&next| next < offset_written)
        {
            return Ok(Err(next));
        }
        Ok(Ok(LogRead {
            slices,
            offset_next,
            offset_start,
            offset_written,
        }))
    }

    /// The first record at or after `timestamp` and at or past offset
    /// `from` (the start clients may read from): its offset and timestamp,
    /// or `None` when every such record is older. A compressed batch is
    /// decompressed to find it (bounded by [`DECOMPRESSED_MAX`]; past that,
    /// or if it does not decompress, the answer is the batch's base offset
    /// and max timestamp).
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
        from: u64,
    ) -> Result<Option<(u64, i64)>> {
        // The lookup walks the files: what is staged must be written first
        // (Kafka finds it in the page cache). A failed log answers from
        // what its files hold.
        if self.inner.state.borrow().check_writable().is_ok() {
            self.written(false).await?;
        }
        let candidates: Vec<(SegmentReader, u64, u64)> = {
            let st = self.inner.state.borrow();
            st.segments
                .values()
                .filter(|s| s.max_timestamp >= timestamp && s.offset_next > from)
                .map(|s| {
                    let (position, base) = s.seek_timestamp(timestamp);
                    (s.reader(), position, base)
                })
                .collect()
        };
        for (reader, position, _) in candidates {
            let mut found = None;
            segment::walk(&reader, position, READ_WINDOW_BYTES, |_, batch, _, _| {
                if batch.max_timestamp() < timestamp || (batch.last_offset() as u64) < from {
                    return Visit::Next;
                }
                let decompressed = match batch.compression() {
                    Compression::None => None,
                    _ => decompressed_records(&batch, DECOMPRESSED_MAX).ok(),
                };
                let records = match &decompressed {
                    Some(records) => Some(Records::over(batch, records)),
                    None if batch.compression() == Compression::None => batch.records().ok(),
                    None => None,
                };
                let Some(records) = records else {
                    // Unreadable: the batch answers for its records.
                    let base = (batch.base_offset() as u64).max(from);
                    found = Some((base, batch.max_timestamp()));
                    return Visit::Stop;
                };
                // None here (the record that made the batch's max timestamp
                // lies below `from`, or was cleaned away): a later batch
                // answers.
                found = records
                    .filter_map(|r| r.ok())
                    .find(|r| r.timestamp >= timestamp && r.offset as u64 >= from)
                    .map(|r| (r.offset as u64, r.timestamp));
                match found {
                    Some(_) => Visit::Stop,
                    None => Visit::Next,
                }
            })
            .await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The record with the largest timestamp (the first, if several share
    /// it), at or past offset `from`: its offset and timestamp, or `None`
    /// for a log without records there. As Kafka's, the timestamp is the
    /// largest its segments record; a record below `from` holding it
    /// leaves no answer.
    pub async fn max_timestamp_offset(&self, from: u64) -> Result<Option<(u64, i64)>> {
        let largest = {
            let st = self.inner.state.borrow();
            st.segments
                .values()
                .filter(|s| s.offset_next > from)
                .map(|s| s.max_timestamp)
                .max()
        };
        match largest {
            Some(t) if t >= 0 => self.offset_for_timestamp(t, from).await,
            _ => Ok(None),
        }
    }

    /// Deletes whole segments past `retention.bytes` or `retention.ms`
    /// (never the active one) and moves the log start. Returns how many.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        self.enforce_retention_below(now_ms, u64::MAX, 0).await
    }

    /// Like [`Log::enforce_retention`], but never deletes a segment holding
    /// offsets at or past `keep_from`: a replicated log keeps what its
    /// followers or its consumers below the high watermark still need; and
    /// deletes, whatever their age and the log's size, the segments that
    /// end at or below `deleted_below` (records deleted by Kafka's
    /// DeleteRecords). Under `cleanup.policy=compact` alone retention
    /// deletes nothing, as in Kafka.
    pub async fn enforce_retention_below(
        &self,
        now_ms: i64,
        keep_from: u64,
        deleted_below: u64,
    ) -> Result<usize> {
        // Without `delete` only records deleted below a start (Kafka's
        // DeleteRecords) go, whatever the policy, as Kafka's.
        let delete = self.inner.cleanup.get().0.delete;
        if !delete && deleted_below == 0 {
            return Ok(0);
        }
        // No cleaning swaps segments while their files are unlinked.
        let _swap = self
            .inner
            .swap_turn
            .acquire_permit(1)
            .await
            .map_err(|_| self.inner.closed_or_failed())?;
        let (doomed, epochs_trimmed) = {
            let mut st = self.inner.state.borrow_mut();
            if st.truncating {
                // The next run applies retention.
                return Ok(0);
            }
            let (retention_bytes, retention_age) = match delete {
                true => self.inner.retention.get(),
                false => (None, None),
            };
            let mut total: u64 = st.segments.values().map(|s| s.log.len()).sum();
            let active = st.active().base_offset;
            let bases: Vec<u64> = st.segments.keys().copied().collect();
            // A kill with no later segment on disk would leave the log no
            // segment to start from, and it would start again at offset 0,
            // below the batches staged for it.
            let followed = st.followed_by_a_file();
            let mut doomed = Vec::new();
            for (i, segment) in st.segments.values().enumerate() {
                if segment.base_offset == active
                    || st.sealing.contains(&segment.base_offset)
                    || !followed[i]
                {
                    break;
                }
                // A segment ends where the next begins.
                let Some(&end) = bases.get(i + 1).filter(|&&end| end <= keep_from) else {
                    break;
                };
                let deleted = end <= deleted_below;
                let over_size =
                    retention_bytes.is_some_and(|limit| total - segment.log.len() >= limit);
                let expired = retention_age
                    .is_some_and(|age| segment.max_timestamp < now_ms - age.as_millis() as i64);
                if !over_size && !expired && !deleted {
                    break;
                }
                total -= segment.log.len();
                doomed.push(segment.base_offset);
            }
            for base in &doomed {
                st.segments.remove(base);
                st.unsynced.retain(|b| b != base);
            }
            let start = st.offset_start();
            self.inner.cache.forget_below(self.inner.cache_key, start);
            let epochs_trimmed = st.epochs.truncate_start(start);
            (doomed, epochs_trimmed)
        };
        for &base in &doomed {
            // Readers holding the open file keep reading it; the name goes now.
            let (log, index) = segment::file_paths(&self.inner.dir, base);
            recovery::remove(&log).await?;
            recovery::remove(&index).await?;
        }
        if epochs_trimmed {
            self.inner.write_epochs().await?;
        }
        Ok(doomed.len())
    }

    /// Stops appends, writes and syncs everything staged, finishes the
    /// active segment's files and stops the flusher. A log that failed
    /// leaves the batches it acknowledged and could not write in the
    /// staging area, for its next opening (or the next start).
    pub async fn close(&self) -> Result<()> {
        let closed = self.close_files().await;
        self.inner.put_back_staged();
        closed
    }

    async fn close_files(&self) -> Result<()> {
        let flushed = self.flush().await;
        self.inner.append_turn.close();
        self.inner.staged_room.close();
        self.inner.state.borrow_mut().closed = true;
        let _ = self.kick.try_send(());
        let flusher = self.flusher.borrow_mut().take();
        if let Some(flusher) = flusher {
            flusher.await;
        }
        self.inner.cache.forget(self.inner.cache_key);
        flushed?;
        // Finish the active segment as a roll would, so that a clean reopen
        // finds nothing to repair.
        {
            let mut st = self.inner.state.borrow_mut();
            let active = st.active().base_offset;
            st.sealing.push(active);
        }
        self.inner.finish_segments().await?;
        let finished = {
            let st = self.inner.state.borrow();
            st.failed.clone()
        };
        match finished {
            Some(failure) => Err(failure.error()),
            None => Ok(()),
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // The flusher finishes what is staged and exits once the kick
        // channel closes with this handle.
        self.inner.state.borrow_mut().closed = true;
        self.inner.cache.forget(self.inner.cache_key);
    }
}

/// Reads batches from `position` in a segment until `max_bytes`, skipping
/// those before `offset`. Checks each batch's base offset against the one
/// expected (later only below `offset_clean`, where cleaning removed
/// batches), so a wrong index entry or damaged file shows as an error, not
/// as wrong data.
async fn read_segment(
    reader: &SegmentReader,
    position: u64,
    mut expected_base: u64,
    offset: u64,
    max_bytes: usize,
    offset_clean: u64,
) -> Result<(Vec<BatchSlice>, u64)> {
    let mut slices: Vec<BatchSlice> = Vec::new();
    let mut bytes = 0usize;
    // One read should usually do: the reply, plus the batches skipped
    // between the index entry and `offset`, plus the batch that straddles
    // the end. Too tight a window costs a second read of the same size.
    let window = max_bytes
        .min(READ_BYTES_MAX)
        .saturating_add(READ_SLACK_BYTES);
    segment::walk(reader, position, window, |_, batch, read, at| {
        if !segment::follows(expected_base, batch.base_offset(), offset_clean) {
            return Visit::Invalid(format!(
                "batch at offset {} where {expected_base} was expected",
                batch.base_offset()
            ));
        }
        if (batch.last_offset() as u64) < offset {
            expected_base = batch.last_offset() as u64 + 1;
            return Visit::Next;
        }
        if !slices.is_empty() && bytes + batch.len() > max_bytes {
            return Visit::Stop;
        }
        expected_base = batch.last_offset() as u64 + 1;
        bytes += batch.len();
        let slice = BatchSlice::from_disk(read.clone(), at, batch.len());
        if !slices
            .last_mut()
            .is_some_and(|last| last.try_extend(&slice))
        {
            slices.push(slice);
        }
        if bytes >= max_bytes {
            Visit::Stop
        } else {
            Visit::Next
        }
    })
    .await?
    .valid(reader)?;
    let offset_next = if slices.is_empty() {
        offset
    } else {
        expected_base
    };
    Ok((slices, offset_next))
}

/// The leader epoch an append writes into its batch.
#[derive(Debug, Clone, Copy)]
enum Epoch {
    /// The log's (`set_leader_epoch`).
    OfLog,
    /// This one.
    Set(i32),
    /// The batch's own, untouched.
    Kept,
}

/// Where an appended batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// From outside the log: validated here.
    Outside,
    /// Validated by the caller ([`Log::append_validated_at`]).
    Validated,
    /// Found in the staging area (at start, or handed back by a failed log),
    /// appended again: validated here; it takes no staging room (it keeps
    /// the entry it was found in), so it never waits for any (the ring may
    /// be full of entries of logs not yet open).
    Replay,
}

/// The one append path: see [`Log::append`] and [`Log::append_at`].
/// `base_offset`, when given, is the offset the batch must get.
async fn append(
    inner: &Inner,
    kick: &LocalSender<()>,
    batch: &[u8],
    base_offset: Option<u64>,
    epoch: Epoch,
    origin: Origin,
    adopt: &mut Option<Ticket>,
) -> Result<Appended> {
    // A replayed batch was acknowledged under the limit of its day: a
    // lowered `max.message.bytes` keeps it, as Kafka keeps what it holds.
    // It must still fit what the log stages at once, which its opening
    // widened to the largest it replays.
    let max = match origin {
        Origin::Replay => inner.config.staged_bytes_max,
        Origin::Outside | Origin::Validated => inner.config.max_batch_bytes,
    };
    if batch.len() > max {
        return Err(StorageError::BatchTooLarge {
            len: batch.len(),
            max,
        });
    }
    let parsed = match origin {
        Origin::Validated => Batch::parse(batch)?,
        Origin::Outside | Origin::Replay => Batch::validate(batch)?,
    };
    if parsed.len() != batch.len() {
        return Err(StorageError::InvalidBatch(
            fjord_core::BatchError::LengthOutOfRange(batch.len() as i64),
        ));
    }
    let _turn = inner
        .append_turn
        .acquire_permit(1)
        .await
        .map_err(|_| StorageError::Closed)?;
    // Holding the turn, nothing else moves `offset_next` or the epochs
    // until this batch is staged.
    let (epoch, new_epoch) = {
        let st = inner.state.borrow();
        st.check_writable()?;
        if let Some(expected) = base_offset
            && expected != st.offset_next
        {
            return Err(StorageError::OffsetMismatch {
                expected,
                next: st.offset_next,
            });
        }
        let epoch = match epoch {
            Epoch::OfLog => st.leader_epoch,
            Epoch::Set(e) => e,
            Epoch::Kept => parsed.partition_leader_epoch(),
        };
        match st.epochs.check(epoch) {
            EpochCheck::Regression(last) => {
                return Err(StorageError::EpochRegression { epoch, last });
            }
            check => (epoch, check == EpochCheck::New),
        }
    };
    inner
        .staged_room
        .acquire(batch.len() as u64)
        .await
        .map_err(|_| inner.closed_or_failed())?;
    let now = now_ms();
    if inner.roll_due(batch.len(), now) {
        inner.roll(now);
    }
    if new_epoch {
        // The file first: it must never be behind the data.
        let offset_next = inner.state.borrow().offset_next;
        inner.state.borrow_mut().epoch_pending = Some((epoch, offset_next));
        if let Err(e) = inner.write_epochs().await {
            inner.state.borrow_mut().epoch_pending = None;
            inner.staged_room.signal(batch.len() as u64);
            return Err(e);
        }
    }
    let staging = inner
        .staging
        .as_ref()
        .filter(|s| s.area.fits(&s.key, batch.len()));
    if let Some(s) = staging.filter(|_| origin != Origin::Replay && !inner.behind_unstaged()) {
        // The last await before the batch is staged: no other append of
        // this shard can take the room in between.
        s.area.wait_room(&s.key, batch.len()).await;
    }
    let appended = {
        // A batch behind one that waits for its write is not staged either:
        // answered at once, it could outlive a kill that the one before it
        // does not, and the replay would find a gap.
        let staging = staging.filter(|_| !inner.behind_unstaged());
        let mut st = inner.state.borrow_mut();
        let pending = st.epoch_pending.take();
        // Checked again: the log may have failed while this append waited.
        st.check_writable()?;
        let base_offset = st.offset_next;
        if new_epoch {
            assert_eq!(
                pending,
                Some((epoch, base_offset)),
                "epoch entry written ahead"
            );
            st.epochs.push(epoch, base_offset);
        }
        let last_offset = base_offset + parsed.offset_count() - 1;
        let active = st.active_mut();
        let (position, space) = active.log.reserve(batch.len());
        // The batch's header, with the offsets and epoch assigned (both in
        // its first OFFSET_ATTRIBUTES bytes, which its CRC does not cover):
        // the buffer and the staging entry both take them from here.
        let mut header = [0u8; batch::HEADER_LEN];
        header.copy_from_slice(&batch[..batch::HEADER_LEN]);
        batch::set_base_offset(&mut header, base_offset as i64);
        batch::set_partition_leader_epoch(&mut header, epoch);
        let (space_header, space_rest) = space.split_at_mut(batch::HEADER_LEN);
        space_header.copy_from_slice(&header);
        // The rest around the cache from 16 KiB: the buffer is cold (the
        // batch cache keeps written buffers, so they cycle through the whole
        // DMA pool), and what reads it next is the device, then maybe much
        // later a fetch. A plain copy would first read every line it
        // overwrites.
        stream_copy::copy_into(space_rest, &batch[batch::HEADER_LEN..]);
        // A replayed batch keeps the entry it was found in, which holds
        // these very bytes (same offsets, its own epoch). Otherwise the
        // second copy: the DMA buffer cannot live in shared memory (glommio
        // allocates it), so the staged bytes are copied from where the
        // buffer's came: the patched header's first bytes, and the request,
        // still in the cache (the buffer's copy went around it).
        debug_assert!(adopt.is_none() || inner.staging.is_some());
        let ticket = adopt.take().or_else(|| {
            staging.and_then(|s| {
                let head = &header[..OFFSET_ATTRIBUTES];
                let pieces = staging::Pieces::split(head, &batch[OFFSET_ATTRIBUTES..]);
                s.area
                    .stage(&s.key, base_offset, last_offset, pieces, Some(parsed.crc()))
            })
        });
        active.note_batch(
            position,
            base_offset,
            parsed.offset_count(),
            parsed.max_timestamp(),
        );
        let segment = active.base_offset;
        st.offset_next = last_offset + 1;
        st.stats.appends += 1;
        let needs_sync = inner.config.fsync == FsyncPolicy::Always;
        let staged = ticket.is_some();
        if !staged && !needs_sync && origin != Origin::Replay {
            crate::io_stats::record_append_waiting_for_write();
        }
        let durable = if staged && !needs_sync {
            Durable(None)
        } else {
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(Waiter {
                offset_end: last_offset + 1,
                needs_sync,
                batch: true,
                tx,
            });
            Durable(Some(rx))
        };
        st.staged.push(Staged {
            segment,
            base_offset,
            last_offset,
            position,
            len: batch.len(),
            ticket,
        });
        if staged {
            st.advance_visible();
        }
        Appended {
            base_offset,
            last_offset,
            durable,
        }
    };
    // A full channel means a flush is already due: nothing is lost.
    let _ = kick.try_send(());
    Ok(appended)
}

/// Appends again the batches staged for this log past its recovered end,
/// before the log serves. Returns how many were appended.
///
/// `found` at start, a batch keeps its entry: the log takes the entry over
/// and releases it once the batch is written, as if it had staged it (a
/// log without a part of the area, `fsync=always`, waits for each write and
/// releases the entry then). On failure every such entry not yet written
/// goes back to the area (`Staging::put_back`), for the next opening of the
/// log or the next start: nothing is lost or released.
///
/// Carried from a failed log (`Log::reopen`), a batch is staged again as a
/// copy; its original stays the failed log's, which serves reads from it
/// until the new log replaces it. On failure the copies go.
async fn replay_staged(
    inner: &Inner,
    kick: &LocalSender<()>,
    area: &Staging,
    replay: Vec<Replay>,
    found: bool,
) -> Result<usize> {
    let mut replayed = 0;
    let mut entries = replay.into_iter();
    let failure = loop {
        let Some(entry) = entries.next() else {
            return Ok(replayed);
        };
        match replay_one(inner, kick, area, entry, found).await {
            Ok(appended) => replayed += usize::from(appended),
            Err(failure) => break failure,
        }
    };
    let (error, ticket) = failure;
    if found {
        let mut tickets = inner.disown_staged();
        tickets.extend(ticket);
        tickets.extend(entries.map(|e| e.ticket));
        area.put_back(&area.key(&inner.dir), tickets);
    } else {
        inner.release_staged();
    }
    Err(error)
}

/// Appends one batch of [`replay_staged`] again; `Ok(false)` when the log
/// already holds it (written before the process died). On failure, the
/// entry's ticket unless the log took it over.
async fn replay_one(
    inner: &Inner,
    kick: &LocalSender<()>,
    area: &Staging,
    entry: Replay,
    found: bool,
) -> std::result::Result<bool, (StorageError, Option<Ticket>)> {
    let Replay {
        base_offset,
        last_offset,
        batch,
        ticket,
    } = entry;
    let offset_next = inner.state.borrow().offset_next;
    if last_offset < offset_next {
        if found {
            area.release(ticket);
        }
        return Ok(false);
    }
    if base_offset != offset_next {
        let gap = staging::gap(&inner.dir, base_offset, last_offset, offset_next);
        return Err((gap, Some(ticket)));
    }
    let mut ticket = Some(ticket);
    let mut copied = None;
    let adopt = if found && inner.staging.is_some() {
        &mut ticket
    } else {
        &mut copied
    };
    let appended = append(
        inner,
        kick,
        &batch,
        Some(base_offset),
        Epoch::Kept,
        Origin::Replay,
        adopt,
    )
    .await;
    let appended = match appended {
        Ok(appended) => appended,
        Err(e) => return Err((e, ticket)),
    };
    if appended.last_offset != last_offset {
        // The entry's offsets disagree with its batch's record count.
        let gap = staging::gap(
            &inner.dir,
            base_offset,
            last_offset,
            appended.last_offset + 1,
        );
        return Err((gap, ticket));
    }
    if let Some(ticket) = ticket {
        // Not taken over: safe once staged anew or written.
        if let Err(e) = appended.durable.await {
            return Err((e, Some(ticket)));
        }
        if found {
            area.release(ticket);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: usize) -> Vec<u8> {
        let mut builder = fjord_core::BatchBuilder::new();
        for i in 0..records {
            builder.push(i as i64, None, Some(b"value"), &[]);
        }
        builder.build()
    }

    /// A segment rolled to has no file until its first write. A round that
    /// ends on its byte cap can finish the segment before it first (built
    /// here by rolling by hand and flushing): retention and DeleteRecords
    /// must keep that one, or a kill would leave the log no file to start
    /// from, and it would start again at offset 0.
    #[test]
    fn retention_keeps_the_segment_before_one_without_a_file() {
        // A real disk, not tmpfs: the writes are direct I/O.
        let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let dir = crate::DataDir::create(tmp.path().join("data")).unwrap();
        crate::shard::run_test(&dir, |dir| async move {
            let path = dir.path().join("p");
            let log = Log::open(&path, LogConfig::default(), BatchCache::new(1 << 20))
                .await
                .unwrap();
            log.append(&batch(3)).await.unwrap();
            log.flush().await.unwrap();
            let rolled_at = log.offset_next();
            log.inner.roll(now_ms());
            log.flush().await.unwrap();
            assert!(log.inner.state.borrow().sealing.is_empty(), "finished");
            let (first, _) = segment::file_paths(&path, 0);
            let (second, _) = segment::file_paths(&path, rolled_at);
            assert!(!second.exists(), "a file before the first write");
            let deleted = log.enforce_retention_below(now_ms(), u64::MAX, rolled_at);
            assert_eq!(deleted.await.unwrap(), 0);
            assert!(first.exists(), "the log's only file deleted");
            // Once the new segment has its file, the old one may go.
            log.append(&batch(2)).await.unwrap();
            log.flush().await.unwrap();
            assert!(second.exists());
            let deleted = log.enforce_retention_below(now_ms(), u64::MAX, rolled_at);
            assert_eq!(deleted.await.unwrap(), 1);
            assert!(!first.exists());
            assert_eq!(log.offset_start(), rolled_at);
            log.close().await.unwrap();
        });
    }
}
