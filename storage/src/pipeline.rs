//! A log's writes in flight: several at once, counted as written in file
//! order.
//!
//! Consecutive writes of a segment share the file's partial last block: each
//! write's buffer starts with the block the one before it ended in (see
//! `appender`). Two operations covering one block that are in flight
//! together may reach the device in either order, so the older, shorter
//! copy of that block could win; and the virtual disk here is slower with
//! overlapping requests (`probe`'s QD4 writes each over the last block of
//! the one before: −5 % on average against the same writes apart, see
//! BENCHMARKS.md).
//! So no two operations in flight ever cover one block: a write whose first
//! block is still covered by the write before it goes out without that
//! block, and the block is *held* — written on its own, from its newest
//! content, once nothing covers it any more (a *head write*, one 4 KiB
//! write). Only the shared block waits; the rest of the write goes to the
//! device at once.
//!
//! A write counts as written (it is *published*: `offset_written`, cache,
//! staging release, waiters) once it, every write issued before it and, if
//! its first block was held, a head write issued after it have completed.
//! A held block's newest content holds every older write's bytes too
//! (appends add to a block, never change what it holds), so one head write
//! settles every write held on that block before it was issued.
//!
//! Completions are taken in the order the device finishes them, not in
//! issue order: a head write is issued behind the writes that followed its
//! own, and waiting for those before counting it would hold back its
//! write's publication, and with it every later one, while the window of
//! writes in flight stayed full and the device ran dry.

use crate::appender::{BLOCK, Write};
use crate::error::{Result, StorageError};
use crate::files::SegmentFile;
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use glommio::io::DmaBuffer;
use std::cell::Cell;
use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;
use std::time::Instant;

/// Writes of one log issued and not yet published. Four keep the device's
/// queue busy (the probe's QD4 limit) while bounding what a failure or a
/// crash leaves unpublished.
pub const WRITES_IN_FLIGHT_MAX: usize = 4;

/// A block of a segment file: (segment base offset, aligned file position).
type BlockKey = (u64, u64);

/// A version of a block: the buffer of a write and where the block starts
/// in it.
#[derive(Clone)]
struct Version {
    buffer: Rc<DmaBuffer>,
    at: usize,
}

impl Version {
    /// Writes this version of block `key` of `file`.
    fn write(self, file: Rc<SegmentFile>, key: BlockKey) -> impl Future<Output = Result<()>> {
        let range = self.at..self.at + BLOCK as usize;
        timed(write_range_at(file, self.buffer, range, key.1))
    }
}

/// A block that an operation in flight begins or ends in.
struct Block {
    key: BlockKey,
    file: Rc<SegmentFile>,
    /// Operations in flight that cover it: one (two only under the
    /// [`Adversary`]'s planted bug).
    in_flight: u32,
    /// The newest content of a write's first block, held back while an
    /// operation covers the block; written on its own once none does.
    held: Option<Version>,
    /// Adversary only: the content of the operation that a second one
    /// overlapped, which the emulated device lands last.
    stale: Option<Version>,
    /// The content of the last operation issued over it.
    newest: Version,
}

/// What the completion of one operation settles.
#[derive(Clone, Copy)]
enum Op {
    /// A write's own operation (its entry in `pending` has the same id).
    Write,
    /// A held block's head write: settles the writes held on it before.
    Head,
    /// The adversary's stale copy: settles nothing.
    Stale,
}

struct Issued {
    /// Names the operation among those in flight; ids grow in issue order.
    id: u64,
    blocks: [Option<BlockKey>; 2],
    op: Op,
}

/// An issued write, not yet published.
struct Pending {
    /// Its operation's [`Issued::id`] (allocated even when the write has no
    /// operation of its own: a one-block write whose block is held).
    id: u64,
    segment: u64,
    write: Write,
    first: BlockKey,
    /// Its own operation completed.
    done: bool,
    /// Its first block holds its bytes for good.
    settled: bool,
}

/// Test-only stand-in for a device that completes overlapping operations
/// in the worst order, with a planted bug that makes some overlap: the
/// storage tests must catch the damage it does.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Adversary {
    /// The planted bug: a write goes out whole even while the write before
    /// it covers its first block, and the emulated device then lands the
    /// older copy of that block last.
    pub overlap: bool,
}

thread_local! {
    static ADVERSARY: Cell<Adversary> = const { Cell::new(Adversary { overlap: false }) };
}

/// Sets this thread's [`Adversary`]; for tests only.
#[doc(hidden)]
pub fn set_adversary(adversary: Adversary) {
    ADVERSARY.with(|a| a.set(adversary));
}

/// The writes of one log in flight; see the module doc.
#[derive(Default)]
pub(crate) struct Pipeline {
    /// Completes in the order the device completes, each output carrying
    /// what its operation settles.
    ops: FuturesUnordered<LocalBoxFuture<'static, (Issued, Result<()>)>>,
    /// The next operation's [`Issued::id`].
    next_id: u64,
    pending: VecDeque<Pending>,
    blocks: Vec<Block>,
    /// The last block of the last write issued per segment: writes go in
    /// file order.
    ends: Vec<BlockKey>,
    heads: u64,
}

impl Pipeline {
    /// Writes issued and not yet published.
    pub(crate) fn unpublished(&self) -> usize {
        self.pending.len()
    }

    /// Head writes of held blocks issued so far.
    pub(crate) fn heads(&self) -> u64 {
        self.heads
    }

    /// Issues `write` to segment `segment`'s `file`; writes of a segment go
    /// in file order.
    pub(crate) fn issue(&mut self, segment: u64, file: &Rc<SegmentFile>, write: Write) {
        let size = write.buffer.len() as u64;
        assert!(
            size > 0 && size.is_multiple_of(BLOCK) && write.position.is_multiple_of(BLOCK),
            "writes are whole aligned blocks"
        );
        let first = (segment, write.position);
        let last = (segment, write.position + size - BLOCK);
        match self.ends.iter_mut().find(|e| e.0 == segment) {
            Some(end) => {
                assert!(first.1 >= end.1, "write at {} behind {}", first.1, end.1);
                *end = last;
            }
            None => self.ends.push(last),
        }
        let id = self.take_id();
        // Only a write's first block can be covered already: by the last
        // block of the write before it, or by that block's own head write.
        let overlap = ADVERSARY.with(|a| a.get()).overlap;
        let held = match self.blocks.iter_mut().find(|b| b.key == first) {
            Some(block) if !overlap => {
                block.held = Some(Version {
                    buffer: write.buffer.clone(),
                    at: 0,
                });
                true
            }
            _ => false,
        };
        let from = if held { BLOCK } else { 0 };
        if from < size {
            let start = (segment, write.position + from);
            let blocks = [Some(start), (last != start).then_some(last)];
            for key in blocks.into_iter().flatten() {
                let version = Version {
                    buffer: write.buffer.clone(),
                    at: (key.1 - write.position) as usize,
                };
                self.enter(key, file, version);
            }
            let range = from as usize..size as usize;
            let op = timed(write_range_at(
                file.clone(),
                write.buffer.clone(),
                range,
                start.1,
            ));
            self.push(
                Issued {
                    id,
                    blocks,
                    op: Op::Write,
                },
                op,
            );
        }
        self.pending.push_back(Pending {
            id,
            segment,
            write,
            first,
            done: from == size,
            settled: !held,
        });
    }

    /// A fresh [`Issued::id`].
    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Starts `op`, the operation `issued` describes.
    fn push(&mut self, issued: Issued, op: impl Future<Output = Result<()>> + 'static) {
        self.ops.push(Box::pin(async move { (issued, op.await) }));
    }

    /// Waits for the next operation to complete, in whatever order the
    /// device completes them; `None` when nothing is in flight. Then
    /// [`Pipeline::take_published`] yields what it settled.
    pub(crate) async fn complete_next(&mut self) -> Option<Result<()>> {
        let (issued, result) = self.ops.next().await?;
        if result.is_ok() {
            match issued.op {
                Op::Write => {
                    let p = self
                        .pending
                        .iter_mut()
                        .find(|p| p.id == issued.id)
                        .expect("a completed write is pending");
                    assert!(!p.done, "a write completed twice");
                    p.done = true;
                }
                Op::Head => {
                    let key = issued.blocks[0].expect("a head write has its block");
                    for p in self.pending.iter_mut() {
                        if p.first == key && p.id < issued.id {
                            p.settled = true;
                        }
                    }
                }
                Op::Stale => {}
            }
            for key in issued.blocks.into_iter().flatten() {
                self.leave(key);
            }
        }
        Some(result)
    }

    /// The next write, in file order, that is now written for good.
    pub(crate) fn take_published(&mut self) -> Option<(u64, Write)> {
        let front = self.pending.front()?;
        if !(front.done && front.settled) {
            return None;
        }
        let p = self.pending.pop_front()?;
        Some((p.segment, p.write))
    }

    /// Waits for everything in flight, whatever its outcome: after a
    /// failure, nothing may land on the files once the log gave up on them
    /// (a reopened log recovers them without it). Publishes nothing.
    pub(crate) async fn drain(&mut self) {
        while self.ops.next().await.is_some() {}
        self.pending.clear();
        self.blocks.clear();
    }

    /// An operation covering `key` is issued with `version` of it.
    fn enter(&mut self, key: BlockKey, file: &Rc<SegmentFile>, version: Version) {
        match self.blocks.iter_mut().find(|b| b.key == key) {
            Some(block) => {
                assert!(
                    ADVERSARY.with(|a| a.get()).overlap,
                    "two operations in flight over block {} of segment {}",
                    key.1,
                    key.0
                );
                block.stale.get_or_insert_with(|| block.newest.clone());
                block.in_flight += 1;
                block.newest = version;
            }
            None => self.blocks.push(Block {
                key,
                file: file.clone(),
                in_flight: 1,
                held: None,
                stale: None,
                newest: version,
            }),
        }
    }

    /// An operation covering `key` completed.
    fn leave(&mut self, key: BlockKey) {
        let i = self
            .blocks
            .iter()
            .position(|b| b.key == key)
            .expect("a block in flight is tracked");
        let block = &mut self.blocks[i];
        assert!(block.in_flight > 0, "block left more often than entered");
        block.in_flight -= 1;
        if block.in_flight > 0 {
            return;
        }
        let file = block.file.clone();
        let (op, version) = if let Some(stale) = block.stale.take() {
            (Op::Stale, stale)
        } else if let Some(held) = block.held.take() {
            self.heads += 1;
            (Op::Head, held)
        } else {
            self.blocks.swap_remove(i);
            return;
        };
        block.in_flight = 1;
        block.newest = version.clone();
        let issued = Issued {
            id: self.take_id(),
            blocks: [Some(key), None],
            op,
        };
        self.push(issued, version.write(file, key));
    }
}

/// Runs a pipelined write, recording its latency for the shard's I/O
/// figures.
async fn timed(write: impl Future<Output = Result<()>>) -> Result<()> {
    let started = Instant::now();
    write.await?;
    crate::io_stats::record_write(started.elapsed());
    Ok(())
}

/// Writes the bytes `range` of `buffer` at `position` of `file`.
pub(crate) async fn write_range_at(
    file: Rc<SegmentFile>,
    buffer: Rc<DmaBuffer>,
    range: Range<usize>,
    position: u64,
) -> Result<()> {
    let len = range.len();
    let _pending = crate::io_stats::pending("write", file.path().clone());
    let done = file
        .get()
        .await?
        .write_rc_range_at(buffer, range, position)
        .await
        .map_err(StorageError::io("write", &**file.path()))?;
    if done != len {
        return Err(StorageError::Io {
            op: "write",
            path: file.path().to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {done} of {len}"),
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::shard::DataDir;

    /// Byte `offset` of the test's segment.
    fn byte(offset: usize) -> u8 {
        (offset % 251) as u8
    }

    /// `blocks` blocks from block `at` on, holding the segment's bytes up to
    /// `end` (zeros after, as the file's partial last block is): each write
    /// extends what the one before held, as appends do.
    fn write(at: u64, blocks: usize, end: usize) -> Write {
        let mut buffer = glommio::allocate_dma_buffer(blocks * BLOCK as usize);
        let position = (at * BLOCK) as usize;
        for (i, b) in buffer.as_bytes_mut().iter_mut().enumerate() {
            *b = if position + i < end {
                byte(position + i)
            } else {
                0
            };
        }
        Write {
            position: position as u64,
            len: end - position,
            capacity: buffer.len(),
            buffer: Rc::new(buffer),
        }
    }

    /// Two writes held on one block, issued while the write before still
    /// covers it: one head write, from the newer, and both published only
    /// once it is done, in file order.
    #[test]
    fn a_held_block_is_written_once_from_its_newest_content() {
        // A real disk, not tmpfs: the writes are direct I/O.
        let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let dir = DataDir::create(tmp.path().join("data")).unwrap();
        let path = dir.path().join("segment");
        let segment = path.clone();
        crate::shard::run_test(&dir, move |_| async move {
            let file = SegmentFile::open(&segment, true).await.unwrap();
            let mut pipeline = Pipeline::default();
            let block = BLOCK as usize;
            pipeline.issue(0, &file, write(0, 4, 3 * block + 100));
            pipeline.issue(0, &file, write(3, 1, 3 * block + 200));
            pipeline.issue(0, &file, write(3, 3, 5 * block + 300));
            let mut published = Vec::new();
            while let Some(result) = pipeline.complete_next().await {
                result.unwrap();
                while let Some((_, w)) = pipeline.take_published() {
                    // Published means on disk: a held write's block too
                    // (a blocking read is fine in a test).
                    let on_disk = std::fs::read(&segment).unwrap();
                    let at = w.position as usize;
                    let held = &w.buffer.as_bytes()[..w.len];
                    assert!(&on_disk[at..at + w.len] == held, "published, not on disk");
                    published.push(w.len);
                }
            }
            let block = BLOCK as usize;
            assert_eq!(published, vec![3 * block + 100, 200, 2 * block + 300]);
            assert_eq!(pipeline.heads(), 1);
        });
        let bytes = std::fs::read(&path).unwrap();
        let end = 5 * BLOCK as usize + 300;
        assert!(bytes[..end].iter().enumerate().all(|(i, &b)| b == byte(i)));
    }
}
