//! Cutting a log's tail (`Log::truncate`): Raft removes a follower's
//! entries that disagree with its leader's.
//!
//! The cut runs with the log's append turn and its flusher's turn held: no
//! append, no write in flight. It finds the file position of the offset to
//! cut at by walking the segment from its index, then, in one step of the
//! in-memory state, drops the later segments, the staged batches (their
//! staging copies released, which marks them in the staging file so a
//! restart never replays them), the index entries, cached batches and epoch
//! entries past the cut, and clamps the marks. Then it makes the cut
//! durable: the segment's files are cut to length and fdatasynced, later
//! segments are unlinked and the directory synced, and the epoch file is
//! written. A failure there leaves the log failed: memory and disk may
//! disagree, and only a reopen (recovery) knows what the disk holds.

use crate::appender::{self, BLOCK};
use crate::commit::{Failure, Inner};
use crate::error::{Result, StorageError};
use crate::recovery;
use crate::segment::{self, Visit, WalkEnd};
use std::ops::Bound;

/// Bytes read per step of the walk to the cut.
const WINDOW_BYTES: usize = 256 * 1024;

/// Clears `truncating` however the cut ends.
struct Truncating<'a>(&'a Inner);

impl Drop for Truncating<'_> {
    fn drop(&mut self) {
        self.0.state.borrow_mut().truncating = false;
    }
}

/// Cuts the log at `end`, a written batch boundary below `offset_next`; the
/// caller holds the append turn.
pub(crate) async fn cut(inner: &Inner, end: u64) -> Result<()> {
    let _flush = inner
        .flush_turn
        .acquire_permit(1)
        .await
        .map_err(|_| inner.closed_or_failed())?;
    // No cleaning swaps the files this cut works on.
    let _swap = inner
        .swap_turn
        .acquire_permit(1)
        .await
        .map_err(|_| inner.closed_or_failed())?;
    let (target, reader, floor, offset_clean) = {
        let mut st = inner.state.borrow_mut();
        st.check_writable()?;
        assert!(
            end < st.offset_next && end <= st.offset_written && end >= st.offset_start(),
            "cut at {end} outside the written log"
        );
        st.truncating = true;
        // The segment that keeps `end` as its end: the last starting below
        // it, or the first when the whole log goes.
        let target = st
            .segments
            .range(..end)
            .next_back()
            .or_else(|| st.segments.iter().next())
            .map(|(_, s)| s)
            .expect("a log always has a segment");
        // The last entry before `end`'s batch: an entry's timestamp counts
        // its own batch, which must not count if it is cut.
        let delta = u32::try_from(end - target.base_offset).unwrap_or(u32::MAX);
        let entry = delta
            .checked_sub(1)
            .and_then(|d| target.index.floor_offset(d));
        let floor = entry.map_or((0, target.base_offset, -1), |e| {
            (
                u64::from(e.position),
                target.base_offset + u64::from(e.offset_delta),
                e.max_timestamp,
            )
        });
        (
            target.base_offset,
            target.reader(),
            floor,
            st.cleaner.offset_clean,
        )
    };
    let _truncating = Truncating(inner);

    // Where `end` starts in the file, and the newest timestamp before it.
    let (from, mut expected, mut max_timestamp) = floor;
    let mut inside = false;
    let mut position = None;
    let walk = segment::walk(&reader, from, WINDOW_BYTES, |at, batch, _, _| {
        if !segment::follows(expected, batch.base_offset(), offset_clean) {
            return Visit::Invalid(format!(
                "batch at offset {} where {expected} was expected",
                batch.base_offset()
            ));
        }
        // At or past `end` (after a gap the cleaner left, `end` may fall
        // between batches): this batch goes with everything after it.
        if batch.base_offset() as u64 >= end {
            position = Some(at);
            return Visit::Stop;
        }
        if batch.last_offset() as u64 >= end {
            inside = true;
            return Visit::Stop;
        }
        max_timestamp = max_timestamp.max(batch.max_timestamp());
        expected = batch.last_offset() as u64 + 1;
        Visit::Next
    })
    .await?;
    if inside {
        return Err(StorageError::NotBatchBoundary { offset: end });
    }
    let position = match (position, walk.end) {
        (Some(position), _) => position,
        // `end` falls in the gap the cleaner left at the segment's end.
        (None, WalkEnd::Limit) if expected == end || (expected < end && end <= offset_clean) => {
            walk.position
        }
        (None, WalkEnd::Invalid(reason)) => {
            return Err(StorageError::Corrupt {
                path: reader.file.path().to_path_buf(),
                position: walk.position,
                reason,
            });
        }
        (None, _) => {
            return Err(StorageError::Corrupt {
                path: reader.file.path().to_path_buf(),
                position: walk.position,
                reason: format!("segment ends at offset {expected}, before {end}"),
            });
        }
    };
    // The bytes of the cut block before the cut: the next write rewrites
    // that block whole (O_DIRECT).
    let block = appender::align_down(position);
    let head_len = (position - block) as usize;
    let head = if head_len == 0 {
        Vec::new()
    } else {
        let read = reader
            .file
            .get()
            .await?
            .read_at_aligned(block, BLOCK as usize)
            .await
            .map_err(StorageError::io("read", &**reader.file.path()))?;
        if read.len() < head_len {
            return Err(StorageError::Corrupt {
                path: reader.file.path().to_path_buf(),
                position: block,
                reason: "file shorter than its written length".into(),
            });
        }
        read[..head_len].to_vec()
    };

    let (files, doomed, cleaner) = {
        let mut st = inner.state.borrow_mut();
        let st = &mut *st;
        // What was clean past the cut is gone: the checkpoint follows.
        let cleaner = (end < st.cleaner.offset_clean).then(|| {
            st.cleaner.offset_clean = end;
            st.cleaner.cleaned.retain(|&base, _| base < end);
            st.cleaner.clone()
        });
        // Everything staged lies past the cut: `end` is written.
        let mut staged_bytes = 0u64;
        for staged in st.staged.drain(..) {
            assert!(staged.base_offset >= end, "a staged batch below the cut");
            staged_bytes += staged.len as u64;
            if let (Some(ticket), Some(staging)) = (staged.ticket, &inner.staging) {
                staging.area.release(ticket);
            }
        }
        let mut kept = std::collections::VecDeque::with_capacity(st.waiters.len());
        for mut waiter in st.waiters.drain(..) {
            if waiter.offset_end <= end {
                kept.push_back(waiter);
            } else if waiter.batch {
                let _ = waiter.tx.send(Err(Failure::truncated(end)));
            } else {
                // A flush: what it waited for is now what stays.
                waiter.offset_end = end;
                kept.push_back(waiter);
            }
        }
        st.waiters = kept;
        let doomed: Vec<u64> = st
            .segments
            .range((Bound::Excluded(target), Bound::Unbounded))
            .map(|(&base, _)| base)
            .collect();
        for base in &doomed {
            st.segments.remove(base);
        }
        st.sealing.retain(|b| *b != target && !doomed.contains(b));
        st.unsynced.retain(|b| !doomed.contains(b));
        let files = st
            .segments
            .get_mut(&target)
            .expect("the cut segment is kept")
            .cut(end, position, max_timestamp, &head);
        st.offset_next = end;
        st.offset_written = end;
        st.offset_visible = end;
        st.offset_durable = st.offset_durable.min(end);
        st.epochs.truncate_end(end);
        inner.cache.forget_from(inner.cache_key, end);
        inner.staged_room.signal(staged_bytes);
        st.release_waiters();
        (files, doomed, cleaner)
    };
    let durable = make_durable(inner, files, &doomed, cleaner).await;
    if let Err(e) = &durable {
        inner.state.borrow_mut().fail(Failure::of(e));
        inner.append_turn.close();
        inner.staged_room.close();
    }
    durable
}

async fn make_durable(
    inner: &Inner,
    files: [appender::FileEnd; 2],
    doomed: &[u64],
    cleaner: Option<crate::compact::CleanerState>,
) -> Result<()> {
    for file in files {
        file.truncate_synced().await?;
    }
    for &base in doomed {
        // Readers holding the open file keep reading it; the name goes now.
        let (log, index) = segment::file_paths(&inner.dir, base);
        recovery::remove(&log).await?;
        recovery::remove(&index).await?;
    }
    if !doomed.is_empty() {
        // The unlinks must survive power loss: a segment that came back
        // starting right at the cut would join the log again.
        crate::checkpoint::sync_dir(&inner.dir).await?;
    }
    if let Some(cleaner) = cleaner {
        crate::compact::state::write(&inner.dir, &cleaner).await?;
    }
    inner.write_epochs().await
}
