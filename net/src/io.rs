//! Frames over async byte streams: one reader and one writer, shared by the
//! broker's connections and the client's transport. Runtime-agnostic
//! (`futures::io` traits), so glommio sockets and tests' streams both fit.

use crate::frame::{self, FrameError, Limits};
use futures::io::{AsyncRead, AsyncReadExt};

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
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
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
    buf.resize(frame::PREFIX_LEN + len, 0);
    reader.read_exact(&mut buf[frame::PREFIX_LEN..]).await?;
    Ok(Some(buf))
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
        while let Some(buf) = block_on(read_frame(&mut cursor, &limits)).unwrap() {
            let (frame, used) = frame::decode(&buf, &limits).unwrap().unwrap();
            assert_eq!(used, buf.len());
            payloads.push(frame.payload.to_vec());
        }
        assert_eq!(payloads, [&b"one"[..], b"", b"three"]);
    }

    #[test]
    fn refuses_absurd_length_before_allocating() {
        let mut cursor = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        let err = block_on(read_frame(&mut cursor, &Limits::default())).unwrap_err();
        assert!(matches!(err, ReadError::Frame(FrameError::TooLarge { .. })));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut bytes = Vec::new();
        frame::encode_head(b"hh", 10, &mut bytes);
        bytes.extend_from_slice(b"short");
        let mut cursor = Cursor::new(bytes);
        let err = block_on(read_frame(&mut cursor, &Limits::default())).unwrap_err();
        assert!(matches!(err, ReadError::Io(_)));
        let mut cursor = Cursor::new(vec![0u8, 0]);
        assert!(block_on(read_frame(&mut cursor, &Limits::default())).is_err());
    }
}
