//! A log's writes in flight: several at once, counted as written in file
//! order.
//!
//! Consecutive writes of a segment share the file's partial last block: each
//! write's buffer starts with the block the one before it ended in (see
//! `appender`). Two writes covering one block that are in flight together may
//! reach the device in either order, so the older, shorter copy of that block
//! can win. Instead of waiting for each write before issuing the next, the
//! pipeline lets them overlap and repairs the block afterwards: once every
//! operation covering a contested block has completed, it rewrites that one
//! block from its newest content (a *fix-up*, one 4 KiB write).
//!
//! A write counts as written (it is *published*: `offset_written`, cache,
//! staging release, waiters) once it, every write issued before it and the
//! fix-up of its first block, if that block was contested, have completed.
//! Only a write's first block can lose its bytes: its other blocks are either
//! its alone or its last block, which later writes only ever extend (appends
//! add to a block, never change what it holds), so every copy of that block
//! holds the write's bytes.
//!
//! Completions are taken in the order the device finishes them, not in
//! issue order: a fix-up is issued behind the writes that followed its own,
//! and waiting for those before counting it held back its write's
//! publication, and with it every later one, while the window of writes in
//! flight stayed full and the device ran dry.

use crate::appender::{BLOCK, Write};
use crate::error::{Result, StorageError};
use crate::files::SegmentFile;
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use glommio::io::DmaBuffer;
use std::cell::Cell;
use std::collections::VecDeque;
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
    /// A buffer of its own holding this version of the block.
    fn copy(&self) -> Rc<DmaBuffer> {
        let mut block = glommio::allocate_dma_buffer(BLOCK as usize);
        block
            .as_bytes_mut()
            .copy_from_slice(&self.buffer.as_bytes()[self.at..self.at + BLOCK as usize]);
        Rc::new(block)
    }
}

/// A block that begins or ends an operation in flight, or is contested.
struct Block {
    key: BlockKey,
    file: Rc<SegmentFile>,
    /// Operations in flight that cover it.
    in_flight: u32,
    /// Two operations covering it were in flight together: its content on
    /// disk is undefined until a fix-up rewrites it.
    contested: bool,
    /// The content of the last operation issued over it.
    newest: Version,
    /// The content in flight when it was first contested: what a device
    /// that completed the writes in the worst order would keep (see
    /// [`Adversary`]).
    oldest: Option<Version>,
}

/// What the completion of one operation settles.
struct Issued {
    /// Names the operation among those in flight.
    id: u64,
    blocks: [Option<BlockKey>; 2],
    /// A write (with its entry in `pending`), not a fix-up.
    write: bool,
}

/// An issued write, not yet published.
struct Pending {
    /// Its operation's [`Issued::id`].
    id: u64,
    segment: u64,
    write: Write,
    first: BlockKey,
    /// Its own operation completed.
    done: bool,
    /// Its first block holds its bytes for good.
    settled: bool,
}

/// Test-only stand-in for a device that completes overlapping writes in the
/// worst order: before each fix-up, the oldest content issued over the
/// contested block is written again, as if the older write had reached the
/// device last. `skip_fixup` then leaves the block that way: a planted bug
/// that the storage tests must catch.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Adversary {
    /// Rewrite the contested block's oldest content before its fix-up.
    pub stale_last: bool,
    /// Issue no fix-up (only with `stale_last`: the stale content stays).
    pub skip_fixup: bool,
}

thread_local! {
    static ADVERSARY: Cell<Adversary> = const {
        Cell::new(Adversary { stale_last: false, skip_fixup: false })
    };
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
    /// what its operation settles: a fix-up issued behind later writes must
    /// count as soon as it is done, not once they are (its write's
    /// publication, and every later one's, waits for it).
    ops: FuturesUnordered<LocalBoxFuture<'static, (Issued, Result<()>)>>,
    /// The next operation's [`Issued::id`].
    next_id: u64,
    pending: VecDeque<Pending>,
    blocks: Vec<Block>,
    /// The last block of the last write issued per segment: writes go in
    /// file order.
    ends: Vec<BlockKey>,
    fixups: u64,
}

impl Pipeline {
    /// Writes issued and not yet published.
    pub(crate) fn unpublished(&self) -> usize {
        self.pending.len()
    }

    /// Fix-up writes issued so far.
    pub(crate) fn fixups(&self) -> u64 {
        self.fixups
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
        let blocks = [Some(first), (last != first).then_some(last)];
        for key in blocks.into_iter().flatten() {
            let version = Version {
                buffer: write.buffer.clone(),
                at: (key.1 - write.position) as usize,
            };
            self.enter(key, file, version);
        }
        let id = self.push(
            blocks,
            true,
            write_at(file.clone(), write.buffer.clone(), write.position),
        );
        self.pending.push_back(Pending {
            id,
            segment,
            write,
            first,
            done: false,
            settled: false,
        });
    }

    /// Starts `op`, an operation over `blocks`, and names it.
    fn push(
        &mut self,
        blocks: [Option<BlockKey>; 2],
        write: bool,
        op: impl std::future::Future<Output = Result<()>> + 'static,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let issued = Issued { id, blocks, write };
        self.ops.push(Box::pin(async move { (issued, op.await) }));
        id
    }

    /// Waits for the next operation to complete, in whatever order the
    /// device completes them; `None` when nothing is in flight. Then
    /// [`Pipeline::take_published`] yields what it settled.
    pub(crate) async fn complete_next(&mut self) -> Option<Result<()>> {
        let (issued, result) = self.ops.next().await?;
        if result.is_ok() {
            if issued.write {
                let p = self
                    .pending
                    .iter_mut()
                    .find(|p| p.id == issued.id)
                    .expect("a completed write is pending");
                assert!(!p.done, "a write completed twice");
                p.done = true;
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
                if block.in_flight > 0 && !block.contested {
                    block.contested = true;
                    block.oldest = Some(block.newest.clone());
                }
                block.in_flight += 1;
                block.newest = version;
            }
            None => self.blocks.push(Block {
                key,
                file: file.clone(),
                in_flight: 1,
                contested: false,
                newest: version,
                oldest: None,
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
        if block.contested {
            // Every operation over it is done: one more, alone, leaves the
            // newest content. Writes issued meanwhile contest it again and
            // are repaired by the next fix-up.
            block.contested = false;
            block.in_flight = 1;
            let adversary = ADVERSARY.with(|a| a.get());
            let stale = block
                .oldest
                .take()
                .filter(|_| adversary.stale_last)
                .map(|v| v.copy());
            let newest = (!adversary.skip_fixup || stale.is_none()).then(|| block.newest.copy());
            let file = block.file.clone();
            let position = key.1;
            self.fixups += 1;
            self.push([Some(key), None], false, async move {
                if let Some(stale) = stale {
                    write_at(file.clone(), stale, position).await?;
                }
                if let Some(newest) = newest {
                    write_at(file, newest, position).await?;
                }
                Ok(())
            });
            return;
        }
        // Alone and settled: every write that starts in it keeps its bytes.
        self.blocks.swap_remove(i);
        for p in self.pending.iter_mut().filter(|p| p.first == key) {
            p.settled = true;
        }
    }
}

/// Writes all of `buffer` at `position` of `file`.
pub(crate) async fn write_at(
    file: Rc<SegmentFile>,
    buffer: Rc<DmaBuffer>,
    position: u64,
) -> Result<()> {
    let started = Instant::now();
    let len = buffer.len();
    let done = file
        .get()
        .await?
        .write_rc_at(buffer, position)
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
    crate::io_stats::record_write(started.elapsed());
    Ok(())
}
