//! Appends bytes to an O_DIRECT file through aligned DMA buffers.
//!
//! O_DIRECT writes whole blocks at aligned positions, but a log ends
//! mid-block. The appender keeps the file's partial last block in memory at
//! the head of its open buffer and rewrites that block, now longer, with the
//! next write. Staged bytes go straight into the open buffer (the only copy on
//! the append path); a flush seals it and hands the caller the writes to
//! issue, in file order. Consecutive writes share the partial block: the log
//! keeps several in flight and rewrites a block two of them shared once both
//! are done (see `pipeline`), since a reordered pair could leave the older,
//! shorter copy of that block on disk.

use crate::error::{Result, StorageError};
use crate::files::SegmentFile;
use glommio::io::DmaBuffer;
use glommio::task::JoinHandle;
use std::rc::Rc;

/// Write alignment: the page size, which every O_DIRECT device accepts.
pub const BLOCK: u64 = 4096;
/// The first preallocation step of a file; see `take_flush`. Small: a node
/// may hold tens of thousands of quiet replicas (30,000 at 1 MiB reserved
/// 59 GB), and a busy log doubles its way to the configured step within a
/// few megabytes.
const PREALLOCATE_STEP_MIN: u64 = 64 << 10;
/// Smallest buffer the appender allocates.
const BUFFER_BYTES_MIN: usize = 16 * 1024;

/// Rounds `v` down to a block boundary.
pub fn align_down(v: u64) -> u64 {
    v & !(BLOCK - 1)
}

/// Rounds `v` up to a block boundary.
pub fn align_up(v: u64) -> u64 {
    align_down(v + BLOCK - 1)
}

/// A buffer covering the file from `position` (aligned) on.
struct Chunk {
    buffer: DmaBuffer,
    position: u64,
    /// Valid bytes in `buffer`.
    len: usize,
    /// Leading bytes that were already written when the chunk was made.
    written: usize,
}

/// One sealed buffer to write at `position`; `len` bytes of it are data, the
/// rest of its last block is zeros.
#[derive(Clone)]
pub struct Write {
    /// Aligned file position of the buffer's first byte.
    pub position: u64,
    /// Data bytes in the buffer.
    pub len: usize,
    /// The buffer, shared so the batch cache can keep what was written.
    pub buffer: Rc<DmaBuffer>,
    /// Bytes the buffer holds in memory: its length before it was trimmed
    /// to the written blocks. What the batch cache charges for keeping it.
    pub capacity: usize,
}

/// The I/O of one flush, taken out of the appender so that no borrow of it
/// is held across an await.
pub struct Flush {
    file: Rc<SegmentFile>,
    /// The writes, in file order.
    pub writes: Vec<Write>,
    /// Logical file length once all writes are done.
    pub len: u64,
    allocate_to: Option<u64>,
}

impl Flush {
    /// The file the writes go to.
    pub fn file(&self) -> &Rc<SegmentFile> {
        &self.file
    }

    /// Grows the file first when the writes need room.
    pub async fn preallocate(&self) -> Result<()> {
        if let Some(size) = self.allocate_to {
            let _pending = crate::io_stats::pending("fallocate", self.file.path().clone());
            self.file
                .get()
                .await?
                .pre_allocate(size, false)
                .await
                .map_err(StorageError::io("fallocate", &**self.file.path()))?;
        }
        Ok(())
    }

    /// Issues one of the writes. Call in order, each after the previous one
    /// completed: consecutive writes share a block (the log's pipeline
    /// holds that block back instead, see `pipeline`).
    pub async fn write(&self, write: &Write) -> Result<()> {
        let range = 0..write.buffer.len();
        crate::pipeline::write_range_at(
            self.file.clone(),
            write.buffer.clone(),
            range,
            write.position,
        )
        .await
    }

    /// Preallocates and issues every write, in order.
    pub async fn run(&self) -> Result<()> {
        self.preallocate().await?;
        for write in &self.writes {
            self.write(write).await?;
        }
        Ok(())
    }
}

/// A file and the length it should have once finished.
pub struct FileEnd {
    file: Rc<SegmentFile>,
    len: u64,
    preallocating: Option<JoinHandle<()>>,
}

impl FileEnd {
    /// Cuts the file to its logical length, dropping preallocated space.
    /// Waits for a background preallocation first, which would otherwise
    /// grow the file again after the cut.
    pub async fn truncate(self) -> Result<()> {
        self.cut(false).await
    }

    /// Like [`FileEnd::truncate`], then fdatasyncs the file: the cut
    /// survives power loss.
    pub async fn truncate_synced(self) -> Result<()> {
        self.cut(true).await
    }

    async fn cut(self, sync: bool) -> Result<()> {
        if let Some(preallocating) = self.preallocating {
            preallocating.await;
        }
        let _pending = crate::io_stats::pending("truncate", self.file.path().clone());
        let file = self.file.get().await?;
        file.truncate(self.len)
            .await
            .map_err(StorageError::io("truncate", &**self.file.path()))?;
        if sync {
            file.fdatasync()
                .await
                .map_err(StorageError::io("fdatasync", &**self.file.path()))?;
        }
        Ok(())
    }
}

/// Appends to one file; see the module doc.
pub struct Appender {
    file: Rc<SegmentFile>,
    /// Logical length once everything staged is written.
    len: u64,
    /// Logical length already written.
    len_written: u64,
    /// Logical length handed to flushes (written or being written).
    len_taken: u64,
    /// The file has been fallocated up to here, or will be once the
    /// background preallocation is done.
    allocated: u64,
    preallocating: Option<JoinHandle<()>>,
    preallocate_bytes: u64,
    open: Chunk,
    /// Chunks that filled up, waiting for the next flush, in file order.
    sealed: Vec<Write>,
    /// Capacity of the next buffer: follows the size of recent flushes, so a
    /// trickle of small appends does not pin large buffers in the cache.
    buffer_bytes: usize,
    buffer_bytes_max: usize,
}

impl Appender {
    /// Appends to a new, empty file (which need not exist yet). No I/O.
    pub fn new(file: Rc<SegmentFile>, preallocate_bytes: u64, buffer_bytes_max: usize) -> Appender {
        let buffer = glommio::allocate_dma_buffer(BUFFER_BYTES_MIN);
        Appender::assemble(file, 0, 0, buffer, preallocate_bytes, buffer_bytes_max)
    }

    /// Appends to `file`, whose first `len` bytes are valid and on disk and
    /// whose size is `allocated`. Reads the partial last block back.
    pub async fn resume(
        file: Rc<SegmentFile>,
        len: u64,
        allocated: u64,
        preallocate_bytes: u64,
        buffer_bytes_max: usize,
    ) -> Result<Appender> {
        let position = align_down(len);
        let head = (len - position) as usize;
        let mut buffer = glommio::allocate_dma_buffer(BUFFER_BYTES_MIN);
        if head > 0 {
            let read = file
                .get()
                .await?
                .read_at_aligned(position, BLOCK as usize)
                .await
                .map_err(StorageError::io("read", &**file.path()))?;
            if read.len() < head {
                return Err(StorageError::Corrupt {
                    path: file.path().to_path_buf(),
                    position,
                    reason: "file shorter than its valid length".into(),
                });
            }
            buffer.as_bytes_mut()[..head].copy_from_slice(&read[..head]);
        }
        Ok(Appender::assemble(
            file,
            len,
            allocated,
            buffer,
            preallocate_bytes,
            buffer_bytes_max,
        ))
    }

    /// An appender whose open buffer holds the partial block at `len`.
    fn assemble(
        file: Rc<SegmentFile>,
        len: u64,
        allocated: u64,
        buffer: DmaBuffer,
        preallocate_bytes: u64,
        buffer_bytes_max: usize,
    ) -> Appender {
        let position = align_down(len);
        let head = (len - position) as usize;
        Appender {
            file,
            len,
            len_written: len,
            len_taken: len,
            allocated,
            preallocating: None,
            preallocate_bytes: preallocate_bytes.max(BLOCK),
            open: Chunk {
                buffer,
                position,
                len: head,
                written: head,
            },
            sealed: Vec::new(),
            buffer_bytes: BUFFER_BYTES_MIN,
            buffer_bytes_max: buffer_bytes_max.max(BUFFER_BYTES_MIN),
        }
    }

    /// The file, for reads and syncs.
    pub fn file(&self) -> &Rc<SegmentFile> {
        &self.file
    }

    /// The file and its logical length, for a final truncate.
    pub fn file_end(&mut self) -> FileEnd {
        FileEnd {
            file: self.file.clone(),
            len: self.len,
            preallocating: self.preallocating.take(),
        }
    }

    /// Logical length including staged bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was ever appended.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Logical length already written.
    pub fn len_written(&self) -> u64 {
        self.len_written
    }

    /// Bytes staged and not yet handed to a flush.
    pub fn len_untaken(&self) -> u64 {
        self.len - self.len_taken
    }

    /// Bytes of the buffers that filled up since the last flush.
    pub fn len_sealed(&self) -> u64 {
        self.sealed.iter().map(|w| w.buffer.len() as u64).sum()
    }

    /// Reserves `n` bytes at the end of the file and returns their logical
    /// position and the buffer space to fill. The bytes go out with the next
    /// flush; they are contiguous in one buffer.
    pub fn reserve(&mut self, n: usize) -> (u64, &mut [u8]) {
        if self.open.len + n > self.open.buffer.len() {
            let capacity = self.buffer_bytes.max(align_up(
                (self.open.len - align_down(self.open.len as u64) as usize + n) as u64,
            ) as usize);
            let next = self.next_chunk(capacity);
            let full = std::mem::replace(&mut self.open, next);
            if full.len > full.written {
                self.sealed.push(seal(full));
            }
        }
        let at = self.open.len;
        let position = self.open.position + at as u64;
        debug_assert_eq!(position, self.len);
        self.open.len += n;
        self.len += n as u64;
        (position, &mut self.open.buffer.as_bytes_mut()[at..at + n])
    }

    /// Seals everything staged since the last flush into writes; `None` when
    /// nothing is staged. Call [`Appender::complete`] once they are done.
    pub fn take_flush(&mut self) -> Option<Flush> {
        if self.open.len == self.open.written && self.sealed.is_empty() {
            return None;
        }
        // Twice what is staged and in flight: a steady load fits one buffer
        // per flush. Only a heavier one fills buffers, and a full buffer is
        // what the log writes beside those in flight (see `pipeline`): a
        // write that shares a block with one in flight is published only
        // after that block's head write, a second write's latency, which
        // small writes would pay for no gain in throughput.
        // It shrinks by half a flush at most: a small flush between large
        // ones (taken as a write completed, before the appenders it
        // released staged again) leaves room for their next round in one
        // buffer instead of filling many small ones.
        let staged = (self.len - self.len_written) as usize;
        self.buffer_bytes = (staged * 2)
            .next_power_of_two()
            .max(self.buffer_bytes / 2)
            .clamp(BUFFER_BYTES_MIN, self.buffer_bytes_max);
        self.len_taken = self.len;
        let mut writes = std::mem::take(&mut self.sealed);
        if self.open.len > self.open.written {
            let next = self.next_chunk(self.buffer_bytes);
            writes.push(seal(std::mem::replace(&mut self.open, next)));
        }
        let end = align_up(self.len);
        let mut allocate_to = None;
        // Steps double with the file, from PREALLOCATE_STEP_MIN up to the
        // configured step: a quiet partition (of the thousands a node may
        // hold) keeps little unused space, a busy one reaches full steps
        // within a few.
        let step = self.allocated.next_power_of_two().clamp(
            PREALLOCATE_STEP_MIN.min(self.preallocate_bytes),
            self.preallocate_bytes,
        );
        if end + step / 2 > self.allocated {
            let size = (end + step).div_ceil(step) * step;
            if end > self.allocated {
                // No room for these writes: they wait for the fallocate.
                allocate_to = Some(size);
            } else {
                // Half a step is left: grow the file now, beside the writes,
                // so that they never wait for block allocation. A failure
                // costs only speed: writes past the allocation extend the
                // file themselves, and a full disk fails them.
                let file = self.file.clone();
                let previous = self.preallocating.take();
                let task = glommio::spawn_local(async move {
                    if let Some(previous) = previous {
                        previous.await;
                    }
                    let _pending = crate::io_stats::pending("fallocate", file.path().clone());
                    if let Ok(file) = file.get().await {
                        let _ = file.pre_allocate(size, false).await;
                    }
                });
                self.preallocating = Some(task.detach());
            }
            self.allocated = size;
        }
        Some(Flush {
            file: self.file.clone(),
            writes,
            len: self.len,
            allocate_to,
        })
    }

    /// Drops everything past logical length `len`, staged or written, and
    /// makes `head` (the bytes of `len`'s block before `len`) the start of
    /// the next write. The file itself is cut by [`Appender::file_end`]'s
    /// `truncate`, which the caller runs next; no flush may be in flight.
    pub fn cut(&mut self, len: u64, head: &[u8]) {
        assert!(len <= self.len, "cut at {len} past the end {}", self.len);
        let position = align_down(len);
        assert_eq!(head.len() as u64, len - position, "head of the cut block");
        self.len = len;
        self.len_written = self.len_written.min(len);
        self.len_taken = len;
        // The truncate drops the preallocated space: allocate again.
        self.allocated = len;
        self.sealed.clear();
        let mut buffer = glommio::allocate_dma_buffer(BUFFER_BYTES_MIN);
        buffer.as_bytes_mut()[..head.len()].copy_from_slice(head);
        let written = (self.len_written.saturating_sub(position) as usize).min(head.len());
        self.open = Chunk {
            buffer,
            position,
            len: head.len(),
            written,
        };
    }

    /// Records that a flush taken earlier is on disk.
    pub fn complete(&mut self, flush: &Flush) {
        self.complete_to(flush.len);
    }

    /// Records that the file is written up to `len`.
    pub fn complete_to(&mut self, len: u64) {
        assert!(
            len >= self.len_written && len <= self.len,
            "written length {len} outside [{}, {}]",
            self.len_written,
            self.len
        );
        self.len_written = len;
    }

    /// A chunk that continues the file after the open one: it starts at the
    /// open chunk's last block and carries that block's bytes.
    fn next_chunk(&self, capacity: usize) -> Chunk {
        let keep_from = align_down(self.open.len as u64) as usize;
        let head = self.open.len - keep_from;
        let mut buffer = glommio::allocate_dma_buffer(align_up(capacity as u64) as usize);
        buffer.as_bytes_mut()[..head]
            .copy_from_slice(&self.open.buffer.as_bytes()[keep_from..self.open.len]);
        // The carried bytes are on disk, or about to be: the open chunk is
        // only ever replaced when it is sealed for writing or has nothing new.
        Chunk {
            buffer,
            position: self.open.position + keep_from as u64,
            len: head,
            written: head,
        }
    }
}

/// Zeroes the tail of the last block and trims the buffer to whole blocks.
fn seal(mut chunk: Chunk) -> Write {
    let capacity = chunk.buffer.len();
    let padded = align_up(chunk.len as u64) as usize;
    chunk.buffer.as_bytes_mut()[chunk.len..padded].fill(0);
    chunk.buffer.trim_to_size(padded);
    Write {
        position: chunk.position,
        len: chunk.len,
        buffer: Rc::new(chunk.buffer),
        capacity,
    }
}
