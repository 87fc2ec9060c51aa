//! Frames read from sockets: the reader shared by the broker's connections
//! and the client's transport (the writer is `gather`). Runtime-agnostic
//! (`futures::io` traits), so glommio sockets and tests' streams both fit.

use crate::frame::{self, FrameError, Limits};
use futures::io::{AsyncRead, AsyncReadExt};
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
        let mut prefix = [0u8; frame::PREFIX_LEN];
        let mut got = 0;
        while got < prefix.len() {
            match self.reader.read(&mut prefix[got..]).await? {
                0 if got == 0 => return Ok(None),
                0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                n => got += n,
            }
        }
        let len = frame::frame_len(&prefix, limits)?.unwrap_or(0);
        let frame_bytes = frame::PREFIX_LEN + len;
        // Not `vec![0; n]`: a zeroed allocation of this size makes jemalloc
        // hand pages back and fault fresh ones in (seen as `clear_page` under
        // recv); an explicit fill reuses warm pages.
        let mut buf = Vec::with_capacity(frame_bytes);
        buf.extend_from_slice(&prefix);
        while buf.len() < frame_bytes {
            if let Some(fd) = self.socket {
                receive_now(fd, &mut buf, frame_bytes)?;
            }
            let received = buf.len();
            if received == frame_bytes {
                break;
            }
            buf.resize(frame_bytes.min(received + READ_STEP_BYTES), 0);
            self.reader.read_exact(&mut buf[received..]).await?;
        }
        Ok(Some(buf))
    }
}

/// Receives into `buf`'s spare capacity what the socket holds, without
/// waiting, up to `end` bytes in all: never a byte of the next frame.
fn receive_now(fd: RawFd, buf: &mut Vec<u8>, end: usize) -> std::io::Result<()> {
    let want = end - buf.len();
    if want == 0 {
        return Ok(());
    }
    let spare = &mut buf.spare_capacity_mut()[..want];
    // SAFETY: `fd` is the socket the caller's reader reads and keeps open
    // (`FrameReader::new`'s contract) for the length of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    // MSG_DONTWAIT: the socket may be in blocking mode, and a shard must
    // not block.
    match socket2::SockRef::from(&fd).recv_with_flags(spare, libc::MSG_DONTWAIT) {
        Ok(n) => {
            assert!(n <= want, "received {n} bytes into {want}");
            // SAFETY: the kernel initialised the first `n` bytes of the spare
            // capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Ok(())
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
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

    /// Frames of many sizes, back to back, come back whole and in order:
    /// from a stream that fills every read, and from a socket they reach in
    /// pieces of odd sizes (prefixes split between pieces; frames larger
    /// than a read step).
    #[test]
    fn frames_of_many_sizes_come_back_whole_in_order() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let sizes: Vec<usize> = (0..1100)
            .step_by(7)
            .chain([0, 1, 3000, 70_000, 5 * READ_STEP_BYTES / 2, 5])
            .collect();
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
            let start = bytes.len();
            frame::encode_head(b"h", payload.len(), &mut bytes);
            bytes.extend_from_slice(&payload);
            expected.push(bytes[start..].to_vec());
        }
        fn read_all<R: AsyncRead + Unpin>(frames: &mut FrameReader<R>) -> Vec<Vec<u8>> {
            let mut got = Vec::new();
            while let Some(buf) = block_on(frames.read_frame(&Limits::default())).unwrap() {
                got.push(buf);
            }
            got
        }

        let mut frames = FrameReader::from_stream(Cursor::new(bytes.clone()), None);
        assert!(read_all(&mut frames) == expected, "read back from a stream");

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
        let mut frames = FrameReader::new(futures::io::AllowStdIo::new(receiver), fd);
        let got = read_all(&mut frames);
        writing.join().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "read back from a socket");
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
