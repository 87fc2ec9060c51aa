//! Rebuilds a log from its files, after a clean stop or a crash.
//!
//! For each segment, in offset order: load the index's valid prefix, walk
//! the log from an entry at least one group-commit write before the last
//! (a crash tears at most the writes in flight) to the end, validating every batch in full
//! (framing, CRC-32C, contiguous offsets), cut the file at the first batch
//! that fails, and rebuild the index entries past that point. If that
//! entry does not lead to a valid batch, the index is distrusted and rebuilt
//! from the start of the segment. A segment that does not begin where the
//! previous one ends is unreachable, as is everything after it: those files
//! are deleted, so nothing after a gap or a corrupt byte is ever served.
//! The one exception is the log's clean part (below the cleaner's
//! checkpoint): compaction removes batches there, so gaps are expected.
//! Before any of this, a cleaning's swap interrupted by a crash is finished
//! or discarded (see [`crate::compact`]).

use crate::appender::Appender;
use crate::compact::CleanerState;
use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::files::SegmentFile;
use crate::index::{self, ENTRY_LEN, Index, IndexEntry};
use crate::segment::{self, Segment, SegmentReader, Visit, WalkEnd};
use fjord_core::{Batch, batch::HEADER_LEN};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Bytes read per step of a recovery walk.
const WINDOW_BYTES: usize = 1 << 20;

/// What recovery found and did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes cut from segment tails (torn or corrupt data, preallocation).
    pub truncated_bytes: u64,
    /// Segments whose index was rebuilt in whole or in part.
    pub indexes_rebuilt: usize,
    /// Segments deleted because they lay after a gap.
    pub segments_deleted: usize,
    /// Batches appended again from the staging area (acknowledged, not yet
    /// written when the process died).
    pub batches_replayed: usize,
    /// Segments whose interrupted compaction swap was finished.
    pub cleaned_swapped: usize,
    /// Compacted files of a cleaning that never committed, removed.
    pub cleaned_discarded: usize,
}

/// Recovers the segments of the log in `dir`, oldest first, and the
/// cleaner's state.
pub async fn recover(
    dir: &Path,
    config: &LogConfig,
    now_ms: i64,
) -> Result<(Vec<Segment>, RecoveryReport, CleanerState)> {
    let mut report = RecoveryReport::default();
    let names = list_dir(dir).await?;
    let cleaner = crate::compact::recover_swap(dir, &names, &mut report).await?;
    let names = if report.cleaned_swapped + report.cleaned_discarded > 0 {
        list_dir(dir).await?
    } else {
        names
    };
    let offset_clean = cleaner.offset_clean;
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| segment::parse_log_name(n))
        .collect();
    bases.sort_unstable();
    // An index whose log is gone belongs to no segment.
    for name in &names {
        let base = name
            .strip_suffix(".index")
            .and_then(|stem| segment::parse_log_name(&format!("{stem}.log")));
        if base.is_some_and(|b| bases.binary_search(&b).is_err()) {
            remove(&dir.join(name)).await?;
        }
    }
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        if let Some(prev) = segments.last_mut()
            && prev.offset_next < base
            && base <= offset_clean
        {
            // Cleaning removed the last batches of a clean segment: it ends
            // where the next begins, as it did before.
            prev.offset_next = base;
        }
        if segments.last().is_some_and(|prev| prev.offset_next != base) {
            for &unreachable in &bases[i..] {
                let (log, index) = segment::file_paths(dir, unreachable);
                remove(&log).await?;
                remove(&index).await?;
                report.segments_deleted += 1;
            }
            break;
        }
        segments.push(recover_segment(dir, base, config, now_ms, offset_clean, &mut report).await?);
    }
    // Only the active segment rolls by age; sealed ones never look at it.
    if let Some(active) = segments.last_mut()
        && let Some(first) = first_timestamp(&active.reader()).await?
    {
        active.created_ms = first;
    }
    Ok((segments, report, cleaner))
}

async fn recover_segment(
    dir: &Path,
    base: u64,
    config: &LogConfig,
    now_ms: i64,
    offset_clean: u64,
    report: &mut RecoveryReport,
) -> Result<Segment> {
    let (log_path, index_path) = segment::file_paths(dir, base);
    let log_file = SegmentFile::open(&log_path, false).await?;
    let size = log_file
        .get()
        .await?
        .file_size()
        .await
        .map_err(StorageError::io("stat", &log_path))?;
    let reader = SegmentReader {
        file: log_file.clone(),
        limit: size,
    };

    let index_file = SegmentFile::open(&index_path, true).await?;
    let index_size = index_file
        .get()
        .await?
        .file_size()
        .await
        .map_err(StorageError::io("stat", &index_path))?;
    // No valid index holds more entries than the log holds batches.
    let index_bytes_max = (size / HEADER_LEN as u64 + 1) * ENTRY_LEN as u64;
    let on_disk = read_all(
        &*index_file.get().await?,
        &index_path,
        index_size.min(index_bytes_max),
    )
    .await?;
    let mut entries = index::decode_prefix(&on_disk);
    let valid_prefix = entries.len();
    entries.truncate(entries.partition_point(|e| u64::from(e.position) < size));

    // Validate at least one group-commit write back from the last entry: a
    // crash can tear the last write, and that write may start before it.
    let tail_bytes = config.write_buffer_bytes as u64;
    let resume_from = entries.last().map_or(0, |last| {
        u64::from(last.position).saturating_sub(tail_bytes)
    });
    let resume = entries.partition_point(|e| u64::from(e.position) <= resume_from);
    let interval = u64::from(config.index_interval_bytes);
    let mut scan = scan_from(&reader, base, &entries[..resume], interval, offset_clean).await?;
    let mut kept = resume;
    if scan.rejected_start && resume > 0 {
        kept = 0;
        scan = scan_from(&reader, base, &[], interval, offset_clean).await?;
    }
    // The walk regenerates every entry after the ones kept; the file needs
    // a rewrite only if those differ from what it holds.
    let index_changed = scan.new_entries[..] != entries[kept..]
        || entries.len() != valid_prefix
        || index_size != (valid_prefix * ENTRY_LEN) as u64;
    entries.truncate(kept);
    entries.extend(scan.new_entries);

    if scan.end != size {
        log_file
            .get()
            .await?
            .truncate(scan.end)
            .await
            .map_err(StorageError::io("truncate", &log_path))?;
        report.truncated_bytes += size - scan.end;
    }
    let log = Appender::resume(
        log_file,
        scan.end,
        scan.end,
        config.preallocate_bytes,
        config.write_buffer_bytes,
    )
    .await?;

    let index = if index_changed {
        report.indexes_rebuilt += 1;
        rewrite_index(index_file, entries).await?
    } else {
        let len = (entries.len() * ENTRY_LEN) as u64;
        Index::new(
            entries,
            Appender::resume(index_file, len, len, crate::appender::BLOCK * 16, 16 * 1024).await?,
        )
    };
    Ok(Segment::new(
        base,
        scan.offset_next,
        scan.max_timestamp,
        now_ms,
        log,
        index,
        config,
    ))
}

struct Scan {
    end: u64,
    offset_next: u64,
    max_timestamp: i64,
    new_entries: Vec<IndexEntry>,
    /// The first batch the walk met was not valid: the index lied.
    rejected_start: bool,
}

/// Walks from the last index entry (or the segment start) validating each
/// batch in full, and collects the index entries the appends would have made.
async fn scan_from(
    reader: &SegmentReader,
    base: u64,
    entries: &[IndexEntry],
    interval: u64,
    offset_clean: u64,
) -> Result<Scan> {
    let last = entries.last().copied();
    let start = last.map_or(0, |e| u64::from(e.position));
    let mut offset_next = last.map_or(base, |e| base + u64::from(e.offset_delta));
    let mut max_timestamp = last.map_or(-1, |e| e.max_timestamp);
    let mut new_entries: Vec<IndexEntry> = Vec::new();
    let mut first = true;
    let walk = segment::walk(reader, start, WINDOW_BYTES, |position, batch, _, _| {
        if let Err(e) = Batch::validate(batch.as_bytes()) {
            return Visit::Invalid(e.to_string());
        }
        if !segment::follows(offset_next, batch.base_offset(), offset_clean) {
            return Visit::Invalid(format!(
                "batch at offset {} where {offset_next} was expected",
                batch.base_offset()
            ));
        }
        offset_next = batch.base_offset() as u64 + batch.offset_count();
        max_timestamp = max_timestamp.max(batch.max_timestamp());
        // The batch of the last entry is indexed already; later ones follow the rule.
        if !first {
            let latest = new_entries.last().or(last.as_ref());
            if let Some(entry) = segment::index_entry_due(
                latest,
                base,
                position,
                batch.base_offset() as u64,
                max_timestamp,
                interval,
            ) {
                new_entries.push(entry);
            }
        }
        first = false;
        Visit::Next
    })
    .await?;
    let rejected_start = first && start > 0 && matches!(walk.end, WalkEnd::Invalid(_));
    Ok(Scan {
        end: walk.position,
        offset_next,
        max_timestamp,
        new_entries,
        rejected_start,
    })
}

async fn rewrite_index(file: Rc<SegmentFile>, entries: Vec<IndexEntry>) -> Result<Index> {
    file.clear().await?;
    let mut index = Index::new(
        Vec::new(),
        Appender::resume(file, 0, 0, crate::appender::BLOCK * 16, 16 * 1024).await?,
    );
    for entry in entries {
        index.push(entry);
    }
    index.file_below(u64::MAX);
    if let Some(flush) = index.file_mut().take_flush() {
        flush.run().await?;
        index.file_mut().complete(&flush);
    }
    Ok(index)
}

/// The largest timestamp of the segment's first batch: the active segment
/// counts its age for `segment.ms` from it, as Kafka does.
async fn first_timestamp(reader: &SegmentReader) -> Result<Option<i64>> {
    let mut first = None;
    segment::walk(
        reader,
        0,
        crate::appender::BLOCK as usize,
        |_, batch, _, _| {
            first = Some(batch.max_timestamp());
            Visit::Stop
        },
    )
    .await?;
    Ok(first)
}

async fn read_all(file: &glommio::io::DmaFile, path: &Path, len: u64) -> Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let read = file
        .read_at(0, len as usize)
        .await
        .map_err(StorageError::io("read", path))?;
    Ok(read.to_vec())
}

/// Lists a directory's file names (creating it if missing) on glommio's
/// blocking pool: there is no io_uring readdir, and the shard must not block.
pub async fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let owned: PathBuf = dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || -> std::io::Result<Vec<String>> {
            std::fs::create_dir_all(&owned)?;
            std::fs::read_dir(&owned)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .await
        .map_err(|source| StorageError::Io {
            op: "list",
            path: dir.to_path_buf(),
            source,
        })
}

/// Removes a file if it exists.
pub(crate) async fn remove(path: &Path) -> Result<()> {
    match glommio::io::remove(path).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let e: std::io::Error = e.into();
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(StorageError::Io {
                    op: "remove",
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        }
    }
}

/// Removes `dir` and everything under it (missing is fine), on glommio's
/// blocking pool: no shard thread waits on the unlinks.
pub async fn remove_tree(dir: &Path) -> Result<()> {
    let owned = dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || match std::fs::remove_dir_all(&owned) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
        .map_err(|source| StorageError::Io {
            op: "remove",
            path: dir.to_path_buf(),
            source,
        })
}

/// Empties a closed log's directory and starts the log again, empty, at
/// `start` (one empty segment based there): a follower whose leader's log
/// starts past its end continues from there, as Kafka's followers do.
/// Durable (file and directories synced) when it returns.
pub async fn reset(dir: &Path, start: u64) -> Result<()> {
    remove_tree(dir).await?;
    let (log, _) = segment::file_paths(dir, start);
    let owned = dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&owned)?;
            std::fs::File::create(&log)?.sync_all()?;
            std::fs::File::open(&owned)?.sync_all()?;
            if let Some(parent) = owned.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|source| StorageError::Io {
            op: "reset",
            path: dir.to_path_buf(),
            source,
        })
}
