//! Reference-counted views of batch bytes, wherever they live: a buffer read
//! from disk or a buffer that was appended and is still cached. A fetch hands
//! these to the socket as they are: no copy into an intermediate `Vec`.

use glommio::io::{DmaBuffer, ReadResult};
use std::ops::Deref;
use std::rc::Rc;

#[derive(Clone)]
enum Backing {
    Disk(ReadResult),
    Memory(Rc<DmaBuffer>),
    /// Copied out of the staging area (acknowledged, not yet written), or
    /// shared with a leader's proposal. Kept as the `Vec` it was copied into
    /// (an `Rc<[u8]>` would copy it again).
    Heap(Rc<Vec<u8>>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Disk(read) => read,
            Backing::Memory(buffer) => buffer.as_bytes(),
            Backing::Heap(bytes) => bytes,
        }
    }
}

/// Whole batches, contiguous in one buffer.
#[derive(Clone)]
pub struct BatchSlice {
    backing: Backing,
    start: usize,
    len: usize,
}

impl BatchSlice {
    pub(crate) fn from_disk(read: ReadResult, start: usize, len: usize) -> Self {
        assert!(start + len <= read.len());
        BatchSlice {
            backing: Backing::Disk(read),
            start,
            len,
        }
    }

    pub(crate) fn from_memory(buffer: Rc<DmaBuffer>, start: usize, len: usize) -> Self {
        assert!(start + len <= buffer.len());
        BatchSlice {
            backing: Backing::Memory(buffer),
            start,
            len,
        }
    }

    pub(crate) fn from_copy(bytes: Vec<u8>) -> Self {
        Self::shared(Rc::new(bytes))
    }

    /// Whole batches in a buffer shared with whoever else holds it (a
    /// leader's proposals, kept for its followers).
    pub fn shared(bytes: Rc<Vec<u8>>) -> Self {
        let len = bytes.len();
        BatchSlice {
            backing: Backing::Heap(bytes),
            start: 0,
            len,
        }
    }

    /// The first `len` bytes (whole batches, the caller's to ensure), sharing
    /// the buffer: a read cut at the high watermark.
    pub fn prefix(&self, len: usize) -> BatchSlice {
        assert!(len <= self.len, "prefix {len} of a {}-byte slice", self.len);
        BatchSlice {
            backing: self.backing.clone(),
            start: self.start,
            len,
        }
    }

    /// Extends this slice by `next` when `next` starts where this one ends in
    /// the same buffer, so adjacent batches go out as one piece.
    pub(crate) fn try_extend(&mut self, next: &BatchSlice) -> bool {
        let same = std::ptr::eq(self.backing.bytes().as_ptr(), next.backing.bytes().as_ptr());
        if same && self.start + self.len == next.start {
            self.len += next.len;
            return true;
        }
        false
    }
}

impl Deref for BatchSlice {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.backing.bytes()[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for BatchSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backing {
            Backing::Disk(_) => "disk",
            Backing::Memory(_) => "memory",
            Backing::Heap(_) => "heap",
        };
        write!(f, "BatchSlice({kind}, {} bytes)", self.len)
    }
}
