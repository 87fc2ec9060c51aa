//! Batches received from the network straight into memory the log writes
//! from, so that the request's bytes are never copied into the log.
//!
//! A log writes from DMA buffers laid out as its file: a batch that starts
//! `k` bytes into a block lies `k` bytes into its buffer, after the bytes
//! of that block already in the file (the appender carries them over). A
//! connection that learns from a request's header that a large batch goes to
//! a log of its shard asks that log where the batch will land
//! ([`crate::Log::receive`]) and receives the payload there; the append then
//! takes the buffer over instead of copying the batch into one of its own
//! ([`crate::appender::Appender::adopt`]).
//!
//! Where the batch lands is a prediction: an append that comes between
//! (another connection's, a roll) moves the log's tail, and the batch is
//! then copied as any other, so a wrong prediction costs the copy this
//! saves and nothing more. Batches received but not yet appended are
//! counted, so that one connection's pipelined requests are each placed
//! behind the one before.

use crate::appender::{BLOCK, align_up};
use glommio::io::DmaBuffer;
use std::cell::Cell;
use std::rc::Rc;

/// A batch in a DMA buffer at the spot a log predicted for it.
pub struct Received {
    /// `None` once the log has taken it over.
    buffer: Option<DmaBuffer>,
    /// Where the batch starts in `buffer`: where the log's tail was
    /// predicted to be within its last block.
    at: usize,
    len: usize,
    /// The log's count of bytes received for it and not yet appended.
    receiving: Rc<Cell<u64>>,
}

impl Received {
    /// A buffer for `len` bytes at `at` (`< BLOCK`), counted in `receiving`
    /// until dropped. Allocates on the calling shard.
    pub(crate) fn new(at: usize, len: usize, receiving: Rc<Cell<u64>>) -> Received {
        assert!((at as u64) < BLOCK, "{at} is not a place within a block");
        let buffer = glommio::allocate_dma_buffer(align_up((at + len) as u64) as usize);
        receiving.set(receiving.get() + len as u64);
        Received {
            buffer: Some(buffer),
            at,
            len,
            receiving,
        }
    }

    /// Where in its first block the batch lands.
    pub fn at(&self) -> usize {
        self.at
    }

    /// The batch's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.buffer {
            Some(buffer) => &buffer.as_bytes()[self.at..self.at + self.len],
            None => &[],
        }
    }

    /// The buffer, for the log to write from. Taken once: the appender takes
    /// it as it consumes the `Received`.
    pub(crate) fn take(&mut self) -> DmaBuffer {
        self.buffer.take().expect("a received buffer is taken once")
    }
}

/// The memory the payload is received into.
impl AsMut<[u8]> for Received {
    fn as_mut(&mut self) -> &mut [u8] {
        match &mut self.buffer {
            Some(buffer) => &mut buffer.as_bytes_mut()[self.at..self.at + self.len],
            None => &mut [],
        }
    }
}

impl Drop for Received {
    /// Appended (its bytes now count in the log's length) or given up.
    fn drop(&mut self) {
        let left = self.receiving.get().checked_sub(self.len as u64);
        self.receiving
            .set(left.expect("a log counts every batch received for it"));
    }
}

/// Batches to append: bytes to copy into the log's buffer, or a batch
/// received into one of its own.
pub enum Incoming<'a> {
    /// Copied in.
    Bytes(&'a [u8]),
    /// Written from where it was received, if it lies where the log expects.
    Received(Received),
}

impl Incoming<'_> {
    /// The batches' bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Incoming::Bytes(bytes) => bytes,
            Incoming::Received(received) => received.bytes(),
        }
    }
}
