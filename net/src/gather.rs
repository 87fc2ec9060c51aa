//! Frames written to a socket with one `sendmsg` per flush, each piece sent
//! from where it lies. futures' `BufWriter` copied every piece smaller than
//! its buffer into the buffer first — a fetch's batches, a produce
//! request's batch, a replicated batch — so every byte a broker served and
//! a client produced went through one more `memcpy` than the kernel's own.
//! The frames are kept, not copied, until a flush has sent them; only
//! pieces too small to be worth an iovec (heads, small answers) are copied,
//! together, for each `sendmsg`.

use futures::io::{AsyncWrite, AsyncWriteExt};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::fd::{BorrowedFd, RawFd};

/// Pieces one `sendmsg` takes at most (Linux's `UIO_MAXIOV`).
const IOVECS_MAX: usize = 1024;
/// Pieces shorter than this are copied, back to back, into a scratch buffer
/// and go out as one iovec: for a frame's head or a small answer, an iovec
/// of its own costs more than the copy (`cargo bench -p fjord-perf --
/// frame_send`: four 1 KiB frames a flush took 10.5 µs as eight iovecs,
/// 8.0 µs copied).
const COPY_BELOW: usize = 4096;
/// Bytes one `sendmsg` copies at most.
const SCRATCH_BYTES_MAX: usize = 256 << 10;

/// A frame to send: its bytes, in pieces, in order.
pub trait Frame {
    /// The pieces; empty ones are allowed.
    fn pieces(&self) -> impl Iterator<Item = &[u8]>;
}

/// Frames queued for one socket; see the module doc.
pub struct GatherWriter<W, F> {
    /// The socket, for `sendmsg`.
    fd: RawFd,
    /// Its write half: it keeps the socket open, and when the socket is full
    /// the runtime waits on it for room.
    half: W,
    /// Frames not wholly sent, with their lengths, oldest first.
    frames: VecDeque<(F, usize)>,
    /// Bytes of the oldest frame already sent.
    front_sent: usize,
    /// Bytes queued and not yet sent.
    queued: usize,
    /// Small pieces copied together for one `sendmsg`; kept for its memory.
    scratch: Vec<u8>,
}

impl<W: AsyncWrite + Unpin, F: Frame> GatherWriter<W, F> {
    /// Writes to socket `fd` through `half`, its write half: `fd` must be
    /// the socket `half` writes to, which `half` keeps open.
    pub fn new(fd: RawFd, half: W) -> GatherWriter<W, F> {
        GatherWriter {
            fd,
            half,
            frames: VecDeque::new(),
            front_sent: 0,
            queued: 0,
            scratch: Vec::new(),
        }
    }

    /// Queues `frame`; nothing is sent before [`GatherWriter::flush`].
    pub fn push(&mut self, frame: F) {
        let len = frame.pieces().map(<[u8]>::len).sum();
        self.queued += len;
        self.frames.push_back((frame, len));
    }

    /// Bytes queued and not yet sent.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Sends everything queued, as few `sendmsg` calls as the socket's room
    /// allows.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.queued > 0 {
            let sent = match self.send_now() {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.send_when_room().await?,
                Err(e) => return Err(e),
            };
            if sent == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.advance(sent);
        }
        // Sent frames of no bytes are still queued.
        self.frames.clear();
        Ok(())
    }

    /// Flushes, then closes the socket's write side.
    pub async fn close(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.half.close().await
    }

    /// One `sendmsg` of what is queued, without waiting.
    fn send_now(&mut self) -> io::Result<usize> {
        /// Where an iovec's bytes are: a run of the scratch buffer, or a
        /// piece where it lies.
        enum Run<'a> {
            Copied(Range<usize>),
            Piece(&'a [u8]),
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut runs = Vec::new();
        let mut skip = self.front_sent;
        'frames: for (frame, _) in &self.frames {
            for piece in frame.pieces() {
                if piece.len() <= skip {
                    skip -= piece.len();
                    continue;
                }
                let unsent = &piece[skip..];
                skip = 0;
                if unsent.len() < COPY_BELOW {
                    let start = scratch.len();
                    scratch.extend_from_slice(unsent);
                    match runs.last_mut() {
                        Some(Run::Copied(run)) if run.end == start => run.end = scratch.len(),
                        _ => runs.push(Run::Copied(start..scratch.len())),
                    }
                } else {
                    runs.push(Run::Piece(unsent));
                }
                if runs.len() == IOVECS_MAX || scratch.len() >= SCRATCH_BYTES_MAX {
                    break 'frames;
                }
            }
        }
        debug_assert!(!runs.is_empty(), "called with bytes queued");
        // SAFETY: `fd` is the socket `half` writes to and keeps open (the
        // constructor's contract), and `half` lives as long as `self`.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let socket = socket2::SockRef::from(&fd);
        // MSG_DONTWAIT: the socket may be in blocking mode, and a shard
        // must not block; MSG_NOSIGNAL: a peer gone is an error, not SIGPIPE.
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let sent = if let [Run::Copied(_)] = runs.as_slice() {
            // Small frames only (acks): a plain send, as a buffered writer's.
            socket.send_with_flags(&scratch, flags)
        } else {
            let slices: Vec<IoSlice> = runs
                .iter()
                .map(|run| match run {
                    Run::Copied(range) => IoSlice::new(&scratch[range.clone()]),
                    Run::Piece(piece) => IoSlice::new(piece),
                })
                .collect();
            socket.send_vectored_with_flags(&slices, flags)
        };
        drop(runs);
        self.scratch = scratch;
        sent
    }

    /// The socket is full: lets the runtime wait for room and send part of
    /// the first unsent piece; `flush` sends the rest at once again.
    async fn send_when_room(&mut self) -> io::Result<usize> {
        let mut skip = self.front_sent;
        let piece = self
            .frames
            .iter()
            .flat_map(|(frame, _)| frame.pieces())
            .find_map(|piece| {
                let unsent = piece.get(skip..).filter(|rest| !rest.is_empty());
                skip = skip.saturating_sub(piece.len());
                unsent
            });
        match piece {
            Some(piece) => self.half.write(piece).await,
            None => unreachable!("bytes queued but no piece holds them"),
        }
    }

    /// Drops the `sent` bytes at the front of the queue.
    fn advance(&mut self, mut sent: usize) {
        assert!(sent <= self.queued, "sent {sent} of {} queued", self.queued);
        self.queued -= sent;
        while let Some((_, len)) = self.frames.front() {
            let unsent = len - self.front_sent;
            if sent < unsent {
                self.front_sent += sent;
                return;
            }
            // Wholly sent (frames of no bytes as soon as they are reached).
            sent -= unsent;
            self.front_sent = 0;
            self.frames.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::AllowStdIo;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    struct Pieces(Vec<Vec<u8>>);

    impl Frame for Pieces {
        fn pieces(&self) -> impl Iterator<Item = &[u8]> {
            self.0.iter().map(Vec::as_slice)
        }
    }

    /// Frames of pieces of every size from empty to 64 KiB, numbered bytes.
    fn frames(count: usize) -> (Vec<Pieces>, Vec<u8>) {
        let mut all = Vec::new();
        let mut frames = Vec::new();
        let mut next = 0u8;
        for f in 0..count {
            let pieces = (0..f % 5)
                .map(|p| {
                    let len = [0, 1, 37, 4096, 65536][(f + p) % 5];
                    (0..len)
                        .map(|_| {
                            next = next.wrapping_add(1);
                            next
                        })
                        .collect::<Vec<u8>>()
                })
                .collect::<Vec<_>>();
            for piece in &pieces {
                all.extend_from_slice(piece);
            }
            frames.push(Pieces(pieces));
        }
        (frames, all)
    }

    /// Sends `count` frames through a socket whose reader drains it
    /// slowly, so that the socket fills and the writer waits for room.
    fn round_trip(count: usize, flush_every: usize) {
        let (sender, mut receiver) = UnixStream::pair().unwrap();
        let (frames, expected) = frames(count);
        let len = expected.len();
        let reading = std::thread::spawn(move || {
            let mut got = vec![0; len];
            let mut at = 0;
            while at < len {
                let n = receiver.read(&mut got[at..(at + 7000).min(len)]).unwrap();
                assert!(n > 0, "closed after {at} of {len} bytes");
                at += n;
            }
            let mut rest = Vec::new();
            receiver.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{} bytes more than sent", rest.len());
            got
        });
        let fd = sender.as_raw_fd();
        let mut writer = GatherWriter::new(fd, AllowStdIo::new(sender));
        for (i, frame) in frames.into_iter().enumerate() {
            writer.push(frame);
            if (i + 1) % flush_every == 0 {
                block_on(writer.flush()).unwrap();
                assert_eq!(writer.queued_bytes(), 0);
            }
        }
        block_on(writer.close()).unwrap();
        drop(writer);
        let got = reading.join().unwrap();
        assert!(got == expected, "bytes differ from what was queued");
    }

    #[test]
    fn frames_arrive_whole_and_in_order_when_the_socket_fills() {
        round_trip(200, 1);
        round_trip(200, 7);
        round_trip(200, 1000);
    }

    #[test]
    fn more_pieces_or_small_bytes_than_one_sendmsg_takes() {
        // Pieces each of an iovec of its own, past `IOVECS_MAX`; then small
        // ones, copied, past `SCRATCH_BYTES_MAX`.
        let large = (0..2 * IOVECS_MAX).map(|i| vec![i as u8; COPY_BELOW]);
        let small = (0..2 * SCRATCH_BYTES_MAX / 3).map(|i| vec![i as u8; 3]);
        for pieces in [large.collect::<Vec<_>>(), small.collect()] {
            let (sender, mut receiver) = UnixStream::pair().unwrap();
            let reading = std::thread::spawn(move || {
                let mut got = Vec::new();
                receiver.read_to_end(&mut got).unwrap();
                got
            });
            let fd = sender.as_raw_fd();
            let mut writer = GatherWriter::new(fd, AllowStdIo::new(sender));
            let expected: Vec<u8> = pieces.concat();
            writer.push(Pieces(pieces));
            block_on(writer.close()).unwrap();
            drop(writer);
            assert!(reading.join().unwrap() == expected);
        }
    }

    #[test]
    fn a_closed_peer_is_an_error() {
        let (sender, receiver) = UnixStream::pair().unwrap();
        drop(receiver);
        let fd = sender.as_raw_fd();
        let mut writer = GatherWriter::new(fd, AllowStdIo::new(sender));
        writer.push(Pieces(vec![vec![1; 10]]));
        assert!(block_on(writer.flush()).is_err());
    }
}
