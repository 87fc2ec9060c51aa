//! Log compaction, as Kafka's LogCleaner does it: keep only the newest
//! record of each key, and tombstones until `delete.retention.ms` after
//! their segment was first cleaned. Offsets never change.
//!
//! A cleaning ([`Log::compact`]) works on the log's closed segments up to
//! the first one holding a record younger than `min.compaction.lag.ms`
//! (never the active one). Pass 1 reads the dirty part (past the cleaner
//! checkpoint, [`state`]) into a bounded offset map: key -> newest offset;
//! when the map fills, the cleaning ends where it got. Pass 2 rewrites
//! every cleanable segment up to there into `<base>.log.cleaned` (and its
//! rebuilt `<base>.index.cleaned`), keeping per record only the newest of
//! its key ([`filter`]); a segment nothing was removed from is left alone.
//! Both passes pace their I/O ([`throttle`]).
//!
//! The swap, crash-safe at every step:
//! 1. the `.cleaned` files are written, cut to length and fdatasynced;
//! 2. the cleaner checkpoint is written with the swap's segments pending
//!    (atomic rename, directory synced): the commit point;
//! 3. each `.cleaned` file is renamed over its segment's file;
//! 4. the checkpoint is written again, nothing pending.
//!
//! Recovery ([`recover_swap`], before segments are recovered) finishes the
//! renames of a pending swap, or, with none pending, deletes `.cleaned`
//! files: a crash leaves the old segments or the new ones, never a mix.
//! Readers in flight keep the old file open (it is retired first: its
//! descriptor stays and its name is never reopened), as they do when
//! retention unlinks a segment; the batch cache forgets the range.

mod filter;
pub mod state;
mod throttle;

pub use state::CleanerState;

use crate::appender::{self, Appender};
use crate::commit::{Failure, Inner, State};
use crate::config::{Compaction, LogConfig};
use crate::error::{Result, StorageError};
use crate::files::SegmentFile;
use crate::index::{ENTRY_LEN, Index, IndexEntry};
use crate::log::Log;
use crate::recovery::{RecoveryReport, remove};
use crate::segment::{self, Segment, SegmentReader, Visit, WalkEnd};
use filter::{DirtyScan, Outcome, Rules, Tally};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;
use throttle::Throttle;

/// Suffix of a segment's files written by a cleaning, before its swap.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Bytes a pass reads between two looks at its I/O budget.
const CHUNK_BYTES: usize = 1 << 20;
/// What a byte of a compressed batch's records weighs against the chunk:
/// the cleaner decompresses it (to map it, and again to judge it),
/// compresses it again and reads that back, at 2.5–7 ms a MiB in all (gzip
/// the slowest; `perf` bench `cleaner_codec_1MiB`), on the shard that
/// serves produce. Counted four times, a chunk of them is about 2 ms of
/// work between yields.
const DECOMPRESSED_WEIGHT: usize = 4;

/// The files a cleaning writes for the segment of `base_offset`: (log, index).
pub fn cleaned_paths(dir: &Path, base_offset: u64) -> (PathBuf, PathBuf) {
    let (log, index) = segment::file_paths(dir, base_offset);
    let with_suffix = |p: PathBuf| {
        let mut name = p.into_os_string();
        name.push(CLEANED_SUFFIX);
        PathBuf::from(name)
    };
    (with_suffix(log), with_suffix(index))
}

/// What one cleaning did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactionReport {
    /// Bytes of the rewritten segments before.
    pub bytes_before: u64,
    /// Bytes of the rewritten segments after.
    pub bytes_after: u64,
    /// Records removed (superseded values, expired tombstones).
    pub records_removed: u64,
    /// Batches removed whole.
    pub batches_removed: u64,
    /// Batches kept whole because they are damaged: no tombstone after one
    /// is dropped (it may hide an older value in it).
    pub batches_damaged: u64,
    /// Segments rewritten and swapped in.
    pub segments_rewritten: usize,
    /// Distinct keys in the offset map.
    pub keys_mapped: usize,
    /// The cleaner checkpoint after the cleaning.
    pub offset_clean: u64,
    /// Time the pass slept to stay within its I/O budget.
    pub throttled: Duration,
}

/// A segment the cleaning may rewrite, as it was when the cleaning looked.
struct Target {
    base: u64,
    offset_next: u64,
    reader: SegmentReader,
    index_file: Rc<SegmentFile>,
    /// Where pass 1 starts in it: the index entry at or below the dirty start.
    dirty_position: u64,
    cleaned_ms: Option<i64>,
}

/// The cleanable part of a log now.
struct Plan {
    targets: Vec<Target>,
    offset_clean: u64,
    /// The first offset not cleanable: the next segment's base.
    offset_end: u64,
    dirty_bytes: u64,
    total_bytes: u64,
    /// Newest timestamp of the first dirty segment.
    first_dirty_max_timestamp: Option<i64>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `limit`: segments reaching it are not cleanable (see
/// [`Log::compact_below`]).
fn plan(st: &State, compaction: &Compaction, now_ms: i64, limit: u64) -> Plan {
    let active = st.active().base_offset;
    let horizon = now_ms.saturating_sub(ms(compaction.min_lag));
    let offset_clean = st.cleaner.offset_clean;
    let mut plan = Plan {
        targets: Vec::new(),
        offset_clean,
        offset_end: active,
        dirty_bytes: 0,
        total_bytes: 0,
        first_dirty_max_timestamp: None,
    };
    let followed = st.followed_by_a_file();
    for (s, followed) in st.segments.values().zip(followed) {
        let closed = s.base_offset != active
            && !st.sealing.contains(&s.base_offset)
            && s.log.len_written() == s.log.len()
            && followed;
        if !closed || s.max_timestamp > horizon || s.offset_next > limit {
            plan.offset_end = s.base_offset;
            break;
        }
        let len = s.log.len();
        plan.total_bytes += len;
        let dirty = s.offset_next > offset_clean;
        if dirty {
            plan.dirty_bytes += len;
            plan.first_dirty_max_timestamp
                .get_or_insert(s.max_timestamp);
        }
        plan.targets.push(Target {
            base: s.base_offset,
            offset_next: s.offset_next,
            reader: s.reader(),
            index_file: s.index.file().file().clone(),
            dirty_position: if s.base_offset < offset_clean {
                s.seek(offset_clean).0
            } else {
                0
            },
            cleaned_ms: st.cleaner.cleaned.get(&s.base_offset).copied(),
        });
    }
    plan
}

impl Plan {
    fn ratio(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        self.dirty_bytes as f64 / self.total_bytes as f64
    }
}

impl Log {
    /// Offsets below this are clean (the cleaner checkpoint).
    pub fn offset_clean(&self) -> u64 {
        self.inner.state.borrow().cleaner.offset_clean
    }

    /// Changes `cleanup.policy` and the cleaner's settings on the live log
    /// (the topic's configs were altered).
    pub fn set_cleanup(&self, policy: fjord_core::CleanupPolicy, compaction: Compaction) {
        self.inner.cleanup.set((policy, compaction));
    }

    /// The `cleanup.policy` and cleaner settings in force.
    pub fn cleanup(&self) -> (fjord_core::CleanupPolicy, Compaction) {
        self.inner.cleanup.get()
    }

    /// Dirty bytes over cleanable bytes (closed segments older than
    /// `min.compaction.lag.ms`), Kafka's `cleanableRatio`; 0 with nothing
    /// cleanable.
    pub fn cleanable_ratio(&self, now_ms: i64) -> f64 {
        let compaction = self.inner.cleanup.get().1;
        plan(&self.inner.state.borrow(), &compaction, now_ms, u64::MAX).ratio()
    }

    /// Whether a cleaning is due: the policy compacts and the cleanable part
    /// is at least `min.cleanable.dirty.ratio` dirty, or a whole dirty
    /// segment is older than `max.compaction.lag.ms` (its newest record:
    /// the log keeps no oldest timestamp per segment, so this errs late).
    pub fn needs_compaction(&self, now_ms: i64) -> bool {
        self.needs_compaction_below(now_ms, u64::MAX)
    }

    /// [`Log::needs_compaction`] of the part below `limit`.
    pub fn needs_compaction_below(&self, now_ms: i64, limit: u64) -> bool {
        let (policy, compaction) = self.inner.cleanup.get();
        if !policy.compact {
            return false;
        }
        let plan = plan(&self.inner.state.borrow(), &compaction, now_ms, limit);
        let overdue = plan
            .first_dirty_max_timestamp
            .is_some_and(|t| t < now_ms.saturating_sub(ms(compaction.max_lag)));
        plan.dirty_bytes > 0 && (plan.ratio() >= compaction.min_dirty_ratio || overdue)
    }

    /// Runs one cleaning (see the module doc), moving at most
    /// `io_bytes_per_sec` bytes of disk I/O per second. Does nothing unless
    /// the policy compacts and something is dirty; whether it is worth it
    /// is [`Log::needs_compaction`]'s call. Run it on the log's shard, in
    /// the background: it yields between chunks.
    pub async fn compact(&self, now_ms: i64, io_bytes_per_sec: u64) -> Result<CompactionReport> {
        self.compact_below(now_ms, io_bytes_per_sec, u64::MAX).await
    }

    /// [`Log::compact`] of the segments wholly below `limit` only: a
    /// replica passes its high watermark, so that only committed records
    /// decide what survives (an uncommitted overwrite may yet be cut away).
    pub async fn compact_below(
        &self,
        now_ms: i64,
        io_bytes_per_sec: u64,
        limit: u64,
    ) -> Result<CompactionReport> {
        let inner = &self.inner;
        let (policy, compaction) = inner.cleanup.get();
        let _turn = inner
            .clean_turn
            .acquire_permit(1)
            .await
            .map_err(|_| inner.closed_or_failed())?;
        let plan = {
            let st = inner.state.borrow();
            st.check_writable()?;
            plan(&st, &compaction, now_ms, limit)
        };
        let mut report = CompactionReport {
            offset_clean: plan.offset_clean,
            ..CompactionReport::default()
        };
        if !policy.compact || plan.dirty_bytes == 0 {
            return Ok(report);
        }
        let mut throttle = Throttle::new(io_bytes_per_sec.max(1));

        // Pass 1: the offset map over the dirty part.
        let mut scan = DirtyScan::new(compaction.keys_max);
        let mut offset_mapped_end = plan.offset_end;
        for target in plan
            .targets
            .iter()
            .filter(|t| t.offset_next > plan.offset_clean)
        {
            if let Some(full_at) =
                map_segment(target, plan.offset_clean, &mut scan, &mut throttle).await?
            {
                offset_mapped_end = full_at;
                break;
            }
        }
        // A map that filled at the first dirty record maps nothing: only
        // records out of offset order inside a batch (their deltas are not
        // checked at append) get there. Nothing is cleaned; the log serves.
        if offset_mapped_end <= plan.offset_clean {
            tracing::warn!(
                dir = %inner.dir.display(),
                offset_clean = plan.offset_clean,
                "compaction mapped no key: records out of offset order; not cleaned"
            );
            return Ok(report);
        }
        report.keys_mapped = scan.map.len();

        // Pass 2: rewrite what the map makes obsolete.
        let retention_ms = ms(compaction.delete_retention);
        let mut rewritten = Vec::new();
        // The targets run from the log's first segment, oldest first.
        let unjudged_below = std::cell::Cell::new(false);
        for target in plan.targets.iter().filter(|t| t.base < offset_mapped_end) {
            let rules = Rules {
                scan: &scan,
                unjudged_below: &unjudged_below,
                offset_mapped_end,
                keep_empty: compaction.keep_empty_batches,
                tally: Tally::default(),
                drop_tombstones: target
                    .cleaned_ms
                    .is_some_and(|at| at.saturating_add(retention_ms) <= now_ms),
            };
            let done =
                rewrite_segment(&inner.dir, target, &rules, &inner.config, &mut throttle).await;
            report.batches_damaged += rules.tally.damaged.get();
            match done {
                Ok(Some(done)) => rewritten.push(done),
                Ok(None) => {}
                Err(e) => {
                    discard(
                        &inner.dir,
                        rewritten.iter().map(|r| r.base).chain([target.base]),
                    )
                    .await;
                    return Err(e);
                }
            }
        }
        for done in &rewritten {
            report.bytes_before += done.bytes_before;
            report.bytes_after += done.log_len;
            report.records_removed += done.records_removed;
            report.batches_removed += done.batches_removed;
        }
        report.throttled = throttle.slept;
        let swapped = swap(inner, &plan, rewritten, offset_mapped_end, now_ms).await?;
        report.segments_rewritten = swapped;
        report.offset_clean = inner.state.borrow().cleaner.offset_clean;
        tracing::info!(
            dir = %inner.dir.display(),
            segments = report.segments_rewritten,
            bytes_before = report.bytes_before,
            bytes_after = report.bytes_after,
            records_removed = report.records_removed,
            offset_clean = report.offset_clean,
            "log compacted"
        );
        // Once a cleaning: each finds them again, at most every
        // `log_cleaner_backoff_ms`.
        if report.batches_damaged > 0 {
            tracing::warn!(
                dir = %inner.dir.display(),
                batches = report.batches_damaged,
                "compaction kept damaged batches whole; tombstones after them stay"
            );
        }
        Ok(report)
    }
}

/// Maps the dirty records of one segment; `Some(offset)` when the map
/// filled there.
async fn map_segment(
    target: &Target,
    from: u64,
    scan: &mut DirtyScan,
    throttle: &mut Throttle,
) -> Result<Option<u64>> {
    let mut position = target.dirty_position;
    let mut window = CHUNK_BYTES;
    loop {
        let start = position;
        let mut read = 0usize;
        let mut full = None;
        let walk = segment::walk(&target.reader, position, window, |_, batch, _, _| {
            if read >= CHUNK_BYTES {
                return Visit::Stop;
            }
            read += batch.len();
            if (batch.last_offset() as u64) < from {
                return Visit::Next;
            }
            full = scan.map_batch(&batch, from);
            read += DECOMPRESSED_WEIGHT * std::mem::take(&mut scan.decompressed);
            if full.is_some() {
                Visit::Stop
            } else {
                Visit::Next
            }
        })
        .await?
        .valid(&target.reader)?;
        throttle.spend(walk.position - start).await;
        if full.is_some() {
            return Ok(full);
        }
        if matches!(walk.end, WalkEnd::Limit) {
            return Ok(None);
        }
        window = next_window(start, walk.position);
        position = walk.position;
    }
}

/// The window the next walk of a pass reads: about what the last one used.
/// A walk that codec work stopped a few batches into its window would
/// otherwise have the next one read most of that window again.
fn next_window(start: u64, end: u64) -> usize {
    ((end - start) as usize).clamp(appender::BLOCK as usize, CHUNK_BYTES)
}

/// A segment written anew, ready to swap in.
struct Rewritten {
    base: u64,
    log_len: u64,
    entries: Vec<IndexEntry>,
    max_timestamp: i64,
    bytes_before: u64,
    records_removed: u64,
    batches_removed: u64,
}

/// Writes the cleaned copy of a segment; `None` (and no files) when nothing
/// in it goes.
async fn rewrite_segment(
    dir: &Path,
    target: &Target,
    rules: &Rules<'_>,
    config: &LogConfig,
    throttle: &mut Throttle,
) -> Result<Option<Rewritten>> {
    let (log_path, index_path) = cleaned_paths(dir, target.base);
    let log_file = SegmentFile::open(&log_path, true).await?;
    // A file left by a cleaning that failed: start empty.
    log_file.clear().await?;
    let mut log = Appender::resume(
        log_file,
        0,
        0,
        appender::align_up(target.reader.limit).max(appender::BLOCK),
        config.write_buffer_bytes,
    )
    .await?;
    let interval = u64::from(config.index_interval_bytes);
    let mut entries: Vec<IndexEntry> = Vec::new();
    let mut max_timestamp = -1i64;
    let (mut records_removed, mut batches_removed) = (0u64, 0u64);
    let mut changed = false;
    let mut position = 0;
    let mut window = CHUNK_BYTES;
    loop {
        let start = position;
        let mut read = 0usize;
        let walk = segment::walk(&target.reader, position, window, |_, batch, _, _| {
            if read >= CHUNK_BYTES {
                return Visit::Stop;
            }
            let rewritten;
            let outcome = rules.apply(&batch);
            read += batch.len() + DECOMPRESSED_WEIGHT * rules.tally.decompressed.take();
            let (bytes, batch_max_timestamp) = match outcome {
                Outcome::Keep => (batch.as_bytes(), batch.max_timestamp()),
                Outcome::Rewrite {
                    bytes,
                    removed,
                    max_timestamp,
                } => {
                    changed = true;
                    records_removed += removed;
                    rewritten = bytes;
                    // Of the records kept (ListOffsets' MAX_TIMESTAMP,
                    // retention by time).
                    (&rewritten[..], max_timestamp)
                }
                Outcome::Drop { removed } => {
                    changed = true;
                    records_removed += removed;
                    batches_removed += 1;
                    return Visit::Next;
                }
            };
            let (at, space) = log.reserve(bytes.len());
            space.copy_from_slice(bytes);
            max_timestamp = max_timestamp.max(batch_max_timestamp);
            if let Some(entry) = segment::index_entry_due(
                entries.last(),
                target.base,
                at,
                batch.base_offset() as u64,
                max_timestamp,
                interval,
            ) {
                entries.push(entry);
            }
            Visit::Next
        })
        .await?
        .valid(&target.reader)?;
        let written_before = log.len_written();
        if let Some(flush) = log.take_flush() {
            flush.run().await?;
            log.complete(&flush);
        }
        throttle
            .spend(walk.position - start + (log.len_written() - written_before))
            .await;
        if matches!(walk.end, WalkEnd::Limit) {
            break;
        }
        window = next_window(start, walk.position);
        position = walk.position;
    }
    if !changed {
        log.file_end().truncate().await?;
        drop(log);
        remove(&log_path).await?;
        return Ok(None);
    }
    let log_len = log.len();
    // The copy is whole on disk before the swap may commit to it.
    log.file_end().truncate_synced().await?;

    let index_file = SegmentFile::open(&index_path, true).await?;
    index_file.clear().await?;
    let mut index = Index::new(
        Vec::new(),
        Appender::resume(index_file, 0, 0, appender::BLOCK * 16, 16 * 1024).await?,
    );
    for entry in &entries {
        index.push(*entry);
    }
    index.file_below(u64::MAX);
    if let Some(flush) = index.file_mut().take_flush() {
        flush.run().await?;
        index.file_mut().complete(&flush);
    }
    index.file_mut().file_end().truncate_synced().await?;
    Ok(Some(Rewritten {
        base: target.base,
        log_len,
        entries,
        max_timestamp,
        bytes_before: target.reader.limit,
        records_removed,
        batches_removed,
    }))
}

/// Removes the `.cleaned` files of these segments, best effort: recovery
/// removes what is left.
async fn discard(dir: &Path, bases: impl Iterator<Item = u64>) {
    for base in bases {
        let (log, index) = cleaned_paths(dir, base);
        for path in [log, index] {
            if let Err(e) = remove(&path).await {
                tracing::warn!(path = %path.display(), error = %e, "removing a cleaned file");
            }
        }
    }
}

/// Swaps the rewritten segments in (see the module doc) and moves the
/// checkpoint to `offset_mapped_end`. Returns how many were swapped: none
/// when retention or a truncate changed them meanwhile (the copies go).
async fn swap(
    inner: &Inner,
    plan: &Plan,
    rewritten: Vec<Rewritten>,
    offset_mapped_end: u64,
    now_ms: i64,
) -> Result<usize> {
    let _swap = inner
        .swap_turn
        .acquire_permit(1)
        .await
        .map_err(|_| inner.closed_or_failed())?;
    let target_of = |base: u64| plan.targets.iter().find(|t| t.base == base);
    let planned = {
        let st = inner.state.borrow();
        let unchanged = st.check_writable().is_ok()
            && plan.targets.iter().all(|t| {
                st.segments.get(&t.base).is_some_and(|s| {
                    Rc::ptr_eq(s.log.file(), &t.reader.file) && s.offset_next == t.offset_next
                })
            });
        unchanged.then(|| {
            let mut next = st.cleaner.clone();
            next.offset_clean = next.offset_clean.max(offset_mapped_end);
            for t in plan
                .targets
                .iter()
                .filter(|t| t.offset_next <= offset_mapped_end)
            {
                next.cleaned.entry(t.base).or_insert(now_ms);
            }
            next.cleaned
                .retain(|base, _| st.segments.contains_key(base));
            let retiring: Vec<Rc<SegmentFile>> = rewritten
                .iter()
                .filter_map(|r| target_of(r.base))
                .flat_map(|t| [t.reader.file.clone(), t.index_file.clone()])
                .collect();
            (next, retiring)
        })
    };
    let Some((mut next, retiring)) = planned else {
        discard(&inner.dir, rewritten.iter().map(|r| r.base)).await;
        return Ok(0);
    };
    if rewritten.is_empty() {
        state::write(&inner.dir, &next).await?;
        inner.state.borrow_mut().cleaner = next;
        return Ok(0);
    }
    for file in &retiring {
        file.retire().await?;
    }
    next.pending = rewritten.iter().map(|r| r.base).collect();
    // The commit point: from here recovery finishes this swap. A write
    // that fails may still have reached the disk (renamed, the directory
    // not synced): memory can no longer tell, so the log fails as below.
    let swapped = rewritten.len();
    let done = match state::write(&inner.dir, &next).await {
        Ok(()) => finish(inner, plan, rewritten, next).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &done {
        // Memory and disk may disagree now: only a reopen (which finishes
        // the swap) knows what the disk holds.
        tracing::error!(dir = %inner.dir.display(), error = %e, "compaction swap failed");
        inner.state.borrow_mut().fail(Failure::of(e));
        inner.append_turn.close();
        inner.staged_room.close();
    }
    done.map(|()| swapped)
}

/// Steps 3 and 4 of the swap, after its commit.
async fn finish(
    inner: &Inner,
    plan: &Plan,
    rewritten: Vec<Rewritten>,
    mut next: CleanerState,
) -> Result<()> {
    for r in &rewritten {
        rename_cleaned(&inner.dir, r.base).await?;
    }
    let mut segments = Vec::with_capacity(rewritten.len());
    for r in rewritten {
        let Some(target) = plan.targets.iter().find(|t| t.base == r.base) else {
            unreachable!("rewritten segments come from the plan");
        };
        let (log_path, index_path) = segment::file_paths(&inner.dir, r.base);
        let config = &inner.config;
        let log = Appender::resume(
            SegmentFile::open(&log_path, false).await?,
            r.log_len,
            r.log_len,
            config.preallocate_bytes,
            config.write_buffer_bytes,
        )
        .await?;
        let index_len = (r.entries.len() * ENTRY_LEN) as u64;
        let index = Index::new(
            r.entries,
            Appender::resume(
                SegmentFile::open(&index_path, false).await?,
                index_len,
                index_len,
                appender::BLOCK * 16,
                16 * 1024,
            )
            .await?,
        );
        // The segment still ends where it did: its last batches may be gone,
        // but the next segment starts at the same offset.
        segments.push(Segment::new(
            r.base,
            target.offset_next,
            r.max_timestamp,
            crate::log::now_ms(),
            log,
            index,
            config,
        ));
    }
    {
        let mut st = inner.state.borrow_mut();
        for segment in segments {
            inner
                .cache
                .forget_range(inner.cache_key, segment.base_offset, segment.offset_next);
            let replaced = st.segments.insert(segment.base_offset, segment);
            assert!(replaced.is_some(), "a swap replaces segments, never adds");
        }
        next.pending.clear();
        st.cleaner = next.clone();
    }
    state::write(&inner.dir, &next).await
}

/// Renames a segment's `.cleaned` files over its files, those that are
/// still there (a swap finished by recovery may have renamed some).
async fn rename_cleaned(dir: &Path, base: u64) -> Result<usize> {
    let (cleaned_log, cleaned_index) = cleaned_paths(dir, base);
    let (log, index) = segment::file_paths(dir, base);
    let mut renamed = 0;
    for (from, to) in [(cleaned_log, log), (cleaned_index, index)] {
        match glommio::io::rename(&from, &to).await {
            Ok(()) => renamed += 1,
            Err(e) => {
                let e = StorageError::io("rename", &from)(e);
                if let StorageError::Io { source, .. } = &e
                    && source.kind() == std::io::ErrorKind::NotFound
                {
                    continue;
                }
                return Err(e);
            }
        }
    }
    Ok(renamed)
}

/// Finishes or discards a cleaning's swap interrupted by a crash; called by
/// recovery with the directory's file names, before segments are read.
/// Returns the cleaner state.
pub(crate) async fn recover_swap(
    dir: &Path,
    names: &[String],
    report: &mut RecoveryReport,
) -> Result<CleanerState> {
    let mut cleaner = state::read(dir).await?;
    let mut pending = std::mem::take(&mut cleaner.pending);
    // A pending segment whose own file is gone was deleted since the swap
    // committed (retention, after the commit point failed in memory): its
    // cleaned copy must not come back below the log's start. Its files are
    // discarded with the uncommitted ones below.
    pending.retain(|&base| {
        let (log, _) = segment::file_paths(dir, base);
        log.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| names.iter().any(|m| m == n))
    });
    if !pending.is_empty() {
        for &base in &pending {
            if rename_cleaned(dir, base).await? > 0 {
                report.cleaned_swapped += 1;
            }
        }
        // Also makes the renames durable (the directory is synced).
        state::write(dir, &cleaner).await?;
        tracing::info!(
            dir = %dir.display(),
            segments = report.cleaned_swapped,
            "finished an interrupted compaction swap"
        );
    }
    let pending: Vec<(PathBuf, PathBuf)> = pending
        .iter()
        .map(|&base| cleaned_paths(dir, base))
        .collect();
    for name in names.iter().filter(|n| n.ends_with(CLEANED_SUFFIX)) {
        let path = dir.join(name);
        if pending
            .iter()
            .any(|(log, index)| *log == path || *index == path)
        {
            continue;
        }
        // A cleaning that never committed.
        remove(&path).await?;
        report.cleaned_discarded += 1;
    }
    Ok(cleaner)
}
