//! Frames read from sockets: the reader shared by the broker's connections
//! and the client's transport (the writer is `gather`). Runtime-agnostic
//! (`futures::io` traits), so glommio sockets and tests' streams both fit.

use crate::frame::{self, FrameError, Limits};
use futures::io::{AsyncRead, AsyncReadExt};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, RawFd};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed, or closed in the middle of a frame.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The prefix announces a frame the limits refuse.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// How far ahead of what has arrived a frame's buffer is zeroed to be read
/// into: a peer that announces a large frame and sends little of it costs
/// what it sent plus this, not the announced length in zeroed pages (the
/// rest is reserved, not touched). A whole frame up to this size is read
/// in one step, as before.
const READ_STEP_BYTES: usize = 1 << 20;

/// Reads whole frames, prefix included, each into a buffer of its own
/// (which can then be moved to another shard without a copy), from a
/// stream it owns. The length is checked against the limits before
/// anything is allocated.
///
/// It reads no further than the frame it reads. Reading ahead (1 KiB, so
/// that small frames came several to a receive) cut a third of the
/// receives, but a receive that did not fill the read-ahead made glommio
/// arm its poll at once, so the next read waited for the reactor to reap
/// that poll even when data had come; for 1–2 % of CPU (BENCHMARKS.md,
/// *Small frames several to a receive*). Reverted.
pub struct FrameReader<R> {
    reader: R,
    /// The socket `reader` reads, which `reader` keeps open: what has
    /// arrived of a frame's body is received straight into the frame's
    /// buffer with one non-blocking `recv`, and only the rest, if any, is
    /// zeroed and read through `reader` (a `&mut [u8]` must be initialised:
    /// zeroing the whole buffer first was a pass over every byte a broker
    /// receives). `None`: any stream (tests).
    socket: Option<RawFd>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `reader`, whose socket is `fd` (which `reader`
    /// keeps open).
    pub fn new(reader: R, fd: RawFd) -> FrameReader<R> {
        FrameReader::from_stream(reader, Some(fd))
    }

    fn from_stream(reader: R, socket: Option<RawFd>) -> FrameReader<R> {
        FrameReader { reader, socket }
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    /// A read given up before it completes (its future dropped) leaves the
    /// stream out of step: the reader must not be used after that.
    pub async fn read_frame(&mut self, limits: &Limits) -> Result<Option<Vec<u8>>, ReadError> {
        let Some(prefix) = self.read_prefix().await? else {
            return Ok(None);
        };
        let len = frame::frame_len(&prefix, limits)?.unwrap_or(0);
        let mut buf = Vec::with_capacity(frame::PREFIX_LEN + len);
        buf.extend_from_slice(&prefix);
        self.read_to(&mut buf, frame::PREFIX_LEN + len).await?;
        Ok(Some(buf))
    }

    /// Like [`FrameReader::read_frame`], but a frame of at least `min`
    /// bytes has its head read first (prefix, header length, header), and
    /// `place` is asked, with the header and the payload's length, for
    /// memory of exactly that length to receive the payload into: a log's
    /// write buffer, so that the payload is never copied there. `None`
    /// reads the frame whole, as `read_frame` does.
    pub async fn read_frame_placed<P: AsMut<[u8]>>(
        &mut self,
        limits: &Limits,
        min: usize,
        place: impl FnOnce(&[u8], usize) -> Option<P>,
    ) -> Result<Option<Read<P>>, ReadError> {
        let Some(prefix) = self.read_prefix().await? else {
            return Ok(None);
        };
        let len = frame::frame_len(&prefix, limits)?.unwrap_or(0);
        let frame_bytes = frame::PREFIX_LEN + len;
        let peek = frame_bytes.min(frame::HEAD_FIELDS_LEN + HEAD_PEEK_BYTES);
        let mut buf = Vec::with_capacity(peek);
        buf.extend_from_slice(&prefix);
        if frame_bytes < min.max(frame::HEAD_FIELDS_LEN) {
            self.read_to(&mut buf, frame_bytes).await?;
            return Ok(Some(Read::Whole(buf)));
        }
        // The head, and what came of the payload with it: a header within
        // the peek costs one receive.
        self.read_to(&mut buf, peek).await?;
        let header_len = frame::header_len(&buf[frame::PREFIX_LEN..], len, limits)?;
        let head_len = frame::HEAD_FIELDS_LEN + header_len;
        self.read_to(&mut buf, head_len).await?;
        let payload_len = frame_bytes - head_len;
        let Some(mut payload) = place(&buf[frame::HEAD_FIELDS_LEN..head_len], payload_len) else {
            self.read_to(&mut buf, frame_bytes).await?;
            return Ok(Some(Read::Whole(buf)));
        };
        let into = payload.as_mut();
        assert_eq!(into.len(), payload_len, "placed memory fits the payload");
        let early = &buf[head_len..];
        into[..early.len()].copy_from_slice(early);
        let mut got = early.len();
        buf.truncate(head_len);
        while got < payload_len {
            if let Some(fd) = self.socket {
                got += receive_now(fd, as_uninit(&mut into[got..]))?;
            }
            if got < payload_len {
                let n = self.reader.read(&mut into[got..]).await?;
                if n == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                got += n;
            }
        }
        Ok(Some(Read::Placed { head: buf, payload }))
    }

    /// A frame's length prefix; `None` on a clean end of stream.
    async fn read_prefix(&mut self) -> Result<Option<[u8; frame::PREFIX_LEN]>, ReadError> {
        let mut prefix = [0u8; frame::PREFIX_LEN];
        let mut got = 0;
        while got < prefix.len() {
            match self.reader.read(&mut prefix[got..]).await? {
                0 if got == 0 => return Ok(None),
                0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                n => got += n,
            }
        }
        Ok(Some(prefix))
    }

    /// Reads into `buf` until it holds `end` bytes (no more when it holds
    /// them already).
    async fn read_to(&mut self, buf: &mut Vec<u8>, end: usize) -> std::io::Result<()> {
        buf.reserve_exact(end.saturating_sub(buf.len()));
        // Not `vec![0; n]`: a zeroed allocation of this size makes jemalloc
        // hand pages back and fault fresh ones in (seen as `clear_page` under
        // recv); an explicit fill reuses warm pages.
        while buf.len() < end {
            if let Some(fd) = self.socket {
                let received = buf.len();
                let spare = &mut buf.spare_capacity_mut()[..end - received];
                let n = receive_now(fd, spare)?;
                // SAFETY: the kernel initialised the first `n` bytes of the
                // spare capacity.
                unsafe { buf.set_len(received + n) };
            }
            let received = buf.len();
            if received == end {
                break;
            }
            buf.resize(end.min(received + READ_STEP_BYTES), 0);
            self.reader.read_exact(&mut buf[received..]).await?;
        }
        Ok(())
    }
}

/// Bytes read with a large frame's head in one receive: a produce request's
/// header (a topic name, a partition, a range) fits with room to spare; a
/// longer header takes a second receive.
const HEAD_PEEK_BYTES: usize = 512;

/// A frame read by [`FrameReader::read_frame_placed`].
pub enum Read<P> {
    /// The whole frame in one buffer, prefix included.
    Whole(Vec<u8>),
    /// A frame whose payload was received into the memory `place` gave.
    Placed {
        /// The prefix, the header length and the header.
        head: Vec<u8>,
        /// The payload.
        payload: P,
    },
}

/// Receives into `into` what the socket holds, without waiting: never more
/// than `into`, so never a byte of the next frame. Returns the bytes
/// received, which the kernel initialised.
fn receive_now(fd: RawFd, into: &mut [MaybeUninit<u8>]) -> std::io::Result<usize> {
    if into.is_empty() {
        return Ok(0);
    }
    let want = into.len();
    // SAFETY: `fd` is the socket the caller's reader reads and keeps open
    // (`FrameReader::new`'s contract) for the length of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    // MSG_DONTWAIT: the socket may be in blocking mode, and a shard must
    // not block.
    match socket2::SockRef::from(&fd).recv_with_flags(into, libc::MSG_DONTWAIT) {
        Ok(n) => {
            assert!(n <= want, "received {n} bytes into {want}");
            Ok(n)
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Initialised bytes as memory a receive may write.
fn as_uninit(bytes: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: same layout; a receive writes only initialised bytes, so the
    // slice stays initialised.
    unsafe { &mut *(bytes as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    #[test]
    fn reads_frames_back_to_back_then_eof() {
        let mut bytes = Vec::new();
        for payload in [&b"one"[..], b"", b"three"] {
            frame::encode_head(b"hh", payload.len(), &mut bytes);
            bytes.extend_from_slice(payload);
        }
        let mut frames = FrameReader::from_stream(Cursor::new(bytes), None);
        let limits = Limits::default();
        let mut payloads = Vec::new();
        while let Some(buf) = block_on(frames.read_frame(&limits)).unwrap() {
            let (frame, used) = frame::decode(&buf, &limits).unwrap().unwrap();
            assert_eq!(used, buf.len());
            payloads.push(frame.payload.to_vec());
        }
        assert_eq!(payloads, [&b"one"[..], b"", b"three"]);
    }

    #[test]
    fn a_socket_frame_is_read_whether_its_body_has_arrived_or_not() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (mut sender, receiver) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = receiver.as_raw_fd();
        let mut frames = FrameReader::new(futures::io::AllowStdIo::new(receiver), fd);
        let limits = Limits::default();
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut bytes = Vec::new();
        frame::encode_head(b"hh", body.len(), &mut bytes);
        bytes.extend_from_slice(&body);
        let expected = bytes.clone();
        // Whole and followed at once by the next frame's first piece (a
        // receive must stop at its frame's end), then the rest of that one
        // in pieces that arrive while it is being read (the first receive
        // takes what is there, the reader the rest).
        let writing = std::thread::spawn(move || {
            let mut pieces = bytes.chunks(70_000);
            let first = pieces.next().unwrap();
            sender.write_all(&[&bytes[..], first].concat()).unwrap();
            for piece in pieces {
                std::thread::sleep(std::time::Duration::from_millis(20));
                sender.write_all(piece).unwrap();
            }
        });
        for _ in 0..2 {
            let buf = block_on(frames.read_frame(&limits)).unwrap().unwrap();
            assert!(buf == expected, "a frame read back differs");
        }
        writing.join().unwrap();
        assert!(block_on(frames.read_frame(&limits)).unwrap().is_none());
    }

    /// Frames of many sizes back to back, each as it is on the wire, with a
    /// header of `header_len` bytes.
    fn frames_of_many_sizes(header_len: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let sizes: Vec<usize> = (0..1100)
            .step_by(7)
            .chain([0, 1, 3000, 70_000, 5 * READ_STEP_BYTES / 2, 5])
            .collect();
        let header = vec![b'h'; header_len];
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
            let start = bytes.len();
            frame::encode_head(&header, payload.len(), &mut bytes);
            bytes.extend_from_slice(&payload);
            expected.push(bytes[start..].to_vec());
        }
        (bytes, expected)
    }

    /// A reader of `bytes` from a socket they reach in pieces of odd sizes
    /// (prefixes split between pieces; frames larger than a read step), and
    /// the thread that sends them.
    fn in_pieces(
        bytes: Vec<u8>,
    ) -> (
        FrameReader<futures::io::AllowStdIo<std::os::unix::net::UnixStream>>,
        std::thread::JoinHandle<()>,
    ) {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (mut sender, receiver) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = receiver.as_raw_fd();
        let writing = std::thread::spawn(move || {
            let mut at = 0;
            let mut step = 1;
            while at < bytes.len() {
                // 1, 4, 13, … bytes, wrapping at about 3 KiB.
                step = (step * 3 + 1) % 3001 + 1;
                let end = (at + step).min(bytes.len());
                sender.write_all(&bytes[at..end]).unwrap();
                at = end;
                if step % 5 == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
        });
        (
            FrameReader::new(futures::io::AllowStdIo::new(receiver), fd),
            writing,
        )
    }

    /// Frames of many sizes, back to back, come back whole and in order:
    /// from a stream that fills every read, and from a socket they reach in
    /// pieces.
    #[test]
    fn frames_of_many_sizes_come_back_whole_in_order() {
        fn read_all<R: AsyncRead + Unpin>(frames: &mut FrameReader<R>) -> Vec<Vec<u8>> {
            let mut got = Vec::new();
            while let Some(buf) = block_on(frames.read_frame(&Limits::default())).unwrap() {
                got.push(buf);
            }
            got
        }
        let (bytes, expected) = frames_of_many_sizes(1);
        let mut frames = FrameReader::from_stream(Cursor::new(bytes.clone()), None);
        assert!(read_all(&mut frames) == expected, "read back from a stream");
        let (mut frames, writing) = in_pieces(bytes);
        let got = read_all(&mut frames);
        writing.join().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "read back from a socket");
    }

    /// Frames read with a place for their payloads come back whole and in
    /// order: those under the size read whole, every other one with its
    /// payload in the memory given for it, except where the place declines
    /// (every third); headers longer than a receive's peek too.
    #[test]
    fn placed_payloads_come_back_whole_in_order() {
        const MIN: usize = 1000;
        fn read_all<R: AsyncRead + Unpin>(
            frames: &mut FrameReader<R>,
            header_len: usize,
        ) -> Vec<Vec<u8>> {
            let mut got = Vec::new();
            let mut asked = 0;
            loop {
                let place = |header: &[u8], len: usize| {
                    assert_eq!(header, vec![b'h'; header_len], "the header, whole");
                    asked += 1;
                    (asked % 3 != 0).then(|| vec![0xee; len])
                };
                let read = block_on(frames.read_frame_placed(&Limits::default(), MIN, place));
                match read.unwrap() {
                    None => {
                        assert!(asked > 10, "payloads were placed");
                        return got;
                    }
                    Some(Read::Whole(buf)) => got.push(buf),
                    Some(Read::Placed { head, payload }) => {
                        assert!(head.len() + payload.len() >= MIN);
                        got.push([head, payload].concat());
                    }
                }
            }
        }
        for header_len in [3, HEAD_PEEK_BYTES + 100] {
            let (bytes, expected) = frames_of_many_sizes(header_len);
            let mut frames = FrameReader::from_stream(Cursor::new(bytes.clone()), None);
            let got = read_all(&mut frames, header_len);
            assert!(got == expected, "read back from a stream");
            let (mut frames, writing) = in_pieces(bytes);
            let got = read_all(&mut frames, header_len);
            writing.join().unwrap();
            assert!(got == expected, "read back from a socket");
        }
    }

    /// A large frame whose header length runs past the frame is refused
    /// before anything is placed.
    #[test]
    fn a_placed_frame_with_a_header_past_its_end_is_refused() {
        let mut bytes = 5000u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&5000u32.to_be_bytes());
        bytes.resize(4 + 5000, 0);
        let mut frames = FrameReader::from_stream(Cursor::new(bytes), None);
        let limits = Limits::default();
        let read = frames.read_frame_placed(&limits, 1000, |_, _| -> Option<Vec<u8>> {
            panic!("placed a frame whose header runs past it")
        });
        let err = block_on(read).err().expect("refused");
        assert!(matches!(
            err,
            ReadError::Frame(FrameError::HeaderPastFrame { .. })
        ));
    }

    #[test]
    fn refuses_absurd_length_before_allocating() {
        let mut frames =
            FrameReader::from_stream(Cursor::new(u32::MAX.to_be_bytes().to_vec()), None);
        let err = block_on(frames.read_frame(&Limits::default())).unwrap_err();
        assert!(matches!(err, ReadError::Frame(FrameError::TooLarge { .. })));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut bytes = Vec::new();
        frame::encode_head(b"hh", 10, &mut bytes);
        bytes.extend_from_slice(b"short");
        let mut frames = FrameReader::from_stream(Cursor::new(bytes), None);
        let err = block_on(frames.read_frame(&Limits::default())).unwrap_err();
        assert!(matches!(err, ReadError::Io(_)));
        let mut frames = FrameReader::from_stream(Cursor::new(vec![0u8, 0]), None);
        assert!(block_on(frames.read_frame(&Limits::default())).is_err());
    }
}
