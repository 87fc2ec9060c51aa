//! A segment: one `<base offset>.log` file of batches laid end to end and its
//! sparse `<base offset>.index`. Also the walk over the batches of a file,
//! shared by the read path and recovery.

use crate::appender::{self, Appender};
use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::files::{Create, SegmentFile};
use crate::index::{Index, IndexEntry};
use fjord_core::Batch;
use glommio::io::ReadResult;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The segment files of `base_offset` in `dir`: (log, index).
pub fn file_paths(dir: &Path, base_offset: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{base_offset:020}.log")),
        dir.join(format!("{base_offset:020}.index")),
    )
}

/// Parses a segment file name (`00000000000000000042.log`) to its base offset.
pub fn parse_log_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// Whether a batch based at `base` may follow the batches before it, which
/// end at `expected`: right after them, or later when it starts at or below
/// `offset_clean` (the cleaner removed the batches in between).
pub fn follows(expected: u64, base: i64, offset_clean: u64) -> bool {
    let Ok(base) = u64::try_from(base) else {
        return false;
    };
    base == expected || (base > expected && base <= offset_clean)
}

/// The index rule, shared by appends and recovery: a batch at `position`
/// gets an entry when it lies `interval_bytes` or more past the last entry.
pub fn index_entry_due(
    last: Option<&IndexEntry>,
    segment_base: u64,
    position: u64,
    base_offset: u64,
    max_timestamp: i64,
    interval_bytes: u64,
) -> Option<IndexEntry> {
    let last_position = last.map_or(0, |e| u64::from(e.position));
    (position >= last_position + interval_bytes).then(|| IndexEntry {
        // Both fit: segments are at most `SEGMENT_BYTES_MAX` long and hold
        // fewer offsets than bytes.
        offset_delta: u32::try_from(base_offset - segment_base).unwrap_or(u32::MAX),
        position: u32::try_from(position).unwrap_or(u32::MAX),
        max_timestamp,
    })
}

/// One segment of a log.
pub struct Segment {
    /// Offset of the first batch.
    pub base_offset: u64,
    /// Offset after the last staged batch.
    pub offset_next: u64,
    /// Largest batch timestamp, or -1 while empty.
    pub max_timestamp: i64,
    /// Wall-clock ms the segment started counting its age from.
    pub created_ms: i64,
    /// The log file.
    pub log: Appender,
    /// The sparse index.
    pub index: Index,
    index_interval_bytes: u64,
}

impl Segment {
    /// Assembles a segment from recovered or freshly created parts.
    pub fn new(
        base_offset: u64,
        offset_next: u64,
        max_timestamp: i64,
        created_ms: i64,
        log: Appender,
        index: Index,
        config: &LogConfig,
    ) -> Segment {
        Segment {
            base_offset,
            offset_next,
            max_timestamp,
            created_ms,
            log,
            index,
            index_interval_bytes: u64::from(config.index_interval_bytes),
        }
    }

    /// A new, empty segment, whose files are created by their first use
    /// (`files::SegmentFile::create_on_first_use`): no I/O, so that an
    /// append that rolls never waits for the disk.
    pub fn create(dir: &Path, base_offset: u64, now_ms: i64, config: &LogConfig) -> Segment {
        let (log_path, index_path) = file_paths(dir, base_offset);
        let log = Appender::new(
            SegmentFile::create_on_first_use(&log_path, Create::Keep),
            config.preallocate_bytes,
            config.write_buffer_bytes,
        );
        let index = Index::new(
            Vec::new(),
            Appender::new(
                SegmentFile::create_on_first_use(&index_path, Create::Empty),
                appender::BLOCK * 16,
                16 * 1024,
            ),
        );
        Segment::new(base_offset, base_offset, -1, now_ms, log, index, config)
    }

    /// Creates the segment's files now, where they are not yet: a new log
    /// reports a directory it cannot write at once.
    pub async fn create_files(&self) -> Result<()> {
        self.log.file().get().await?;
        self.index.file().file().get().await?;
        Ok(())
    }

    /// True when no batch was ever staged.
    pub fn is_empty(&self) -> bool {
        self.offset_next == self.base_offset
    }

    /// Records a batch just staged at `position`: offsets, timestamps and, on
    /// the interval, an index entry. Recovery replays the same rule, so an
    /// index rebuilt from the log is the index the appends would have made.
    pub fn note_batch(
        &mut self,
        position: u64,
        base_offset: u64,
        offset_count: u64,
        max_timestamp: i64,
    ) {
        assert_eq!(base_offset, self.offset_next, "batches are contiguous");
        self.offset_next = base_offset + offset_count;
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
        if let Some(entry) = index_entry_due(
            self.index.entries().last(),
            self.base_offset,
            position,
            base_offset,
            self.max_timestamp,
            self.index_interval_bytes,
        ) {
            self.index.push(entry);
        }
    }

    /// Drops the batches from offset `end` on, which start at file position
    /// `position`; `max_timestamp` is that of the batches kept and `head`
    /// the bytes of `position`'s block before it. Returns the two files to
    /// cut on disk (log, index).
    pub fn cut(
        &mut self,
        end: u64,
        position: u64,
        max_timestamp: i64,
        head: &[u8],
    ) -> [appender::FileEnd; 2] {
        assert!(
            (self.base_offset..=self.offset_next).contains(&end),
            "cut at {end} outside the segment [{}, {}]",
            self.base_offset,
            self.offset_next
        );
        self.offset_next = end;
        self.max_timestamp = max_timestamp;
        self.log.cut(position, head);
        self.index
            .cut(u32::try_from(end - self.base_offset).unwrap_or(u32::MAX));
        [self.log.file_end(), self.index.file_mut().file_end()]
    }

    /// Where a read of `offset` starts: a position at a batch boundary and
    /// the base offset of the batch there.
    pub fn seek(&self, offset: u64) -> (u64, u64) {
        let delta = u32::try_from(offset.saturating_sub(self.base_offset)).unwrap_or(u32::MAX);
        self.index
            .floor_offset(delta)
            .map_or((0, self.base_offset), |e| {
                (
                    u64::from(e.position),
                    self.base_offset + u64::from(e.offset_delta),
                )
            })
    }

    /// Like [`Segment::seek`], for the first batch whose timestamps may reach
    /// `timestamp`.
    pub fn seek_timestamp(&self, timestamp: i64) -> (u64, u64) {
        self.index
            .floor_timestamp(timestamp)
            .map_or((0, self.base_offset), |e| {
                (
                    u64::from(e.position),
                    self.base_offset + u64::from(e.offset_delta),
                )
            })
    }

    /// The log file and what of it is readable.
    pub fn reader(&self) -> SegmentReader {
        SegmentReader {
            file: self.log.file().clone(),
            limit: self.log.len_written(),
        }
    }
}

/// What a read of a segment needs, detached from the log's state so that no
/// borrow is held across the I/O.
#[derive(Clone)]
pub struct SegmentReader {
    /// The log file.
    pub file: Rc<SegmentFile>,
    /// Bytes of the file that hold written batches.
    pub limit: u64,
}

/// What the visitor of a walk says about a batch.
pub enum Visit {
    /// Keep walking.
    Next,
    /// Stop before this batch.
    Stop,
    /// The batch is not acceptable; stop, reporting why.
    Invalid(String),
}

/// Where a walk ended.
pub enum WalkEnd {
    /// At the limit, after the last batch.
    Limit,
    /// The visitor stopped it.
    Stopped,
    /// Bytes at the end position do not frame an acceptable batch.
    Invalid(String),
}

/// Outcome of a walk: the position after the last visited batch and why it
/// stopped there.
pub struct Walk {
    /// File position after the last batch accepted.
    pub position: u64,
    /// Why it ended.
    pub end: WalkEnd,
}

impl Walk {
    /// The walk as a read of whole, valid batches: bytes that do not frame
    /// one (below what recovery kept) are corruption.
    pub fn valid(self, reader: &SegmentReader) -> Result<Walk> {
        if let WalkEnd::Invalid(reason) = self.end {
            return Err(StorageError::Corrupt {
                path: reader.file.path().to_path_buf(),
                position: self.position,
                reason,
            });
        }
        Ok(self)
    }
}

/// Reads batches from `position` up to `reader.limit` in windows of
/// `window_bytes`, framing each with [`Batch::parse`] and handing it to
/// `visit` with the window it lives in and its range there.
pub async fn walk(
    reader: &SegmentReader,
    mut position: u64,
    window_bytes: usize,
    mut visit: impl FnMut(u64, Batch<'_>, &ReadResult, usize) -> Visit,
) -> Result<Walk> {
    let mut want = window_bytes.max(appender::BLOCK as usize);
    // Held for the whole walk: the budget never closes a file mid-read, and
    // a segment that retention deletes meanwhile stays readable.
    let file = reader.file.get().await?;
    while position < reader.limit {
        let window_start = appender::align_down(position);
        let window_end = appender::align_up((position + want as u64).min(reader.limit));
        let read = file
            .read_at_aligned(window_start, (window_end - window_start) as usize)
            .await
            .map_err(StorageError::io("read", &**reader.file.path()))?;
        let skip = (position - window_start) as usize;
        let usable = ((reader.limit - window_start) as usize).min(read.len());
        if usable <= skip {
            return Ok(Walk {
                position,
                end: WalkEnd::Invalid("file ends before its valid length".into()),
            });
        }
        // The last window of the file: nothing more can be read after it.
        let last_window =
            usable < (window_end - window_start) as usize || window_end >= reader.limit;
        let mut at = skip;
        while at < usable {
            let bytes = &read[at..usable];
            let total = match Batch::peek_len(bytes) {
                Ok(total) => total,
                Err(fjord_core::BatchError::Truncated { .. }) if !last_window => break,
                Err(e) => {
                    return Ok(Walk {
                        position,
                        end: WalkEnd::Invalid(e.to_string()),
                    });
                }
            };
            if total > bytes.len() {
                if last_window || position + total as u64 > reader.limit {
                    return Ok(Walk {
                        position,
                        end: WalkEnd::Invalid(format!("batch of {total} bytes runs past the end")),
                    });
                }
                // The batch continues past this window: read again from it,
                // with a window that holds it whole.
                want = want.max(total);
                break;
            }
            let batch = match Batch::parse(bytes) {
                Ok(batch) => batch,
                Err(e) => {
                    return Ok(Walk {
                        position,
                        end: WalkEnd::Invalid(e.to_string()),
                    });
                }
            };
            match visit(position, batch, &read, at) {
                Visit::Next => {}
                Visit::Stop => {
                    return Ok(Walk {
                        position,
                        end: WalkEnd::Stopped,
                    });
                }
                Visit::Invalid(reason) => {
                    return Ok(Walk {
                        position,
                        end: WalkEnd::Invalid(reason),
                    });
                }
            }
            at += total;
            position += total as u64;
        }
    }
    Ok(Walk {
        position,
        end: WalkEnd::Limit,
    })
}
