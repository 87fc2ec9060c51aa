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

/// Reads one whole frame, prefix included, into a buffer of its own (which
/// can then be moved to another shard without a copy). `Ok(None)` on a
/// clean end of stream between frames. The length is checked against
/// `limits` before anything is allocated.
///
/// `fd` is the socket `reader` reads, which `reader` keeps open. What has
/// arrived of the frame's body is received straight into the new buffer
/// with one non-blocking `recv`; only the rest, if any, is zeroed and read
/// through `reader` (a `&mut [u8]` must be initialised: zeroing the whole
/// buffer first was a pass over every byte a broker receives).
pub async fn read_socket_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    fd: RawFd,
    limits: &Limits,
) -> Result<Option<Vec<u8>>, ReadError> {
    read_frame_from(reader, Some(fd), limits).await
}

/// [`read_socket_frame`], from any stream when `socket` is `None`.
async fn read_frame_from<R: AsyncRead + Unpin>(
    reader: &mut R,
    socket: Option<RawFd>,
    limits: &Limits,
) -> Result<Option<Vec<u8>>, ReadError> {
    let mut prefix = [0u8; frame::PREFIX_LEN];
    let mut got = 0;
    while got < prefix.len() {
        match reader.read(&mut prefix[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            n => got += n,
        }
    }
    let len = frame::frame_len(&prefix, limits)?.unwrap_or(0);
    // Not `vec![0; n]`: a zeroed allocation of this size makes jemalloc hand
    // pages back and fault fresh ones in (seen as `clear_page` under recv);
    // an explicit fill reuses warm pages.
    let mut buf = Vec::with_capacity(frame::PREFIX_LEN + len);
    buf.extend_from_slice(&prefix);
    if let Some(fd) = socket {
        receive_now(fd, &mut buf, frame::PREFIX_LEN + len)?;
    }
    let received = buf.len();
    buf.resize(frame::PREFIX_LEN + len, 0);
    reader.read_exact(&mut buf[received..]).await?;
    Ok(Some(buf))
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
    // (`read_socket_frame`'s contract) for the length of this call.
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
        let mut cursor = Cursor::new(bytes);
        let limits = Limits::default();
        let mut payloads = Vec::new();
        while let Some(buf) = block_on(read_frame_from(&mut cursor, None, &limits)).unwrap() {
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
        let mut reader = futures::io::AllowStdIo::new(receiver);
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
            let buf = block_on(read_socket_frame(&mut reader, fd, &limits))
                .unwrap()
                .unwrap();
            assert!(buf == expected, "a frame read back differs");
        }
        writing.join().unwrap();
        assert!(
            block_on(read_socket_frame(&mut reader, fd, &limits))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn refuses_absurd_length_before_allocating() {
        let mut cursor = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        let err = block_on(read_frame_from(&mut cursor, None, &Limits::default())).unwrap_err();
        assert!(matches!(err, ReadError::Frame(FrameError::TooLarge { .. })));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut bytes = Vec::new();
        frame::encode_head(b"hh", 10, &mut bytes);
        bytes.extend_from_slice(b"short");
        let mut cursor = Cursor::new(bytes);
        let err = block_on(read_frame_from(&mut cursor, None, &Limits::default())).unwrap_err();
        assert!(matches!(err, ReadError::Io(_)));
        let mut cursor = Cursor::new(vec![0u8, 0]);
        assert!(block_on(read_frame_from(&mut cursor, None, &Limits::default())).is_err());
    }
}
