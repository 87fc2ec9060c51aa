//! Frames of the native protocol.
//!
//! ```text
//! u32 frame_len | u32 header_len | header (flatbuffer) | payload
//! ```
//!
//! Lengths are big-endian; `frame_len` counts everything after itself. The
//! payload carries record batches exactly as they travel everywhere else;
//! the header addresses them with `PayloadRange`s, so batches are never
//! copied into or out of flatbuffers. Input is hostile: every length is
//! bounded before it is trusted, headers go through the flatbuffers
//! verifier with tight limits, and every failure is an error, not a panic.

use crate::wire;

/// Bytes of the `frame_len` prefix.
pub const PREFIX_LEN: usize = 4;
/// Bytes of the `header_len` field.
const HEADER_LEN_FIELD: usize = 4;

/// Bounds a decoder enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame accepted (after the prefix), like Kafka's
    /// `socket.request.max.bytes`.
    pub frame_bytes_max: usize,
    /// Largest header accepted.
    pub header_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 100 << 20,
            header_bytes_max: 1 << 20,
        }
    }
}

/// Why bytes are not an acceptable frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// `frame_len` above the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The frame is shorter than its own header length says.
    #[error("header of {header_len} bytes does not fit a frame of {frame_len}")]
    HeaderPastFrame {
        /// Declared header length.
        header_len: usize,
        /// Frame length.
        frame_len: usize,
    },
    /// `header_len` above the limit.
    #[error("header of {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge {
        /// Declared length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The header is not a valid flatbuffer of the expected table.
    #[error("malformed header: {0}")]
    BadHeader(String),
    /// A `PayloadRange` points outside the payload.
    #[error("payload range {offset}+{len} outside a payload of {payload_len} bytes")]
    BadPayloadRange {
        /// Range start.
        offset: u32,
        /// Range length.
        len: u32,
        /// Payload size.
        payload_len: usize,
    },
}

/// One frame, split: a header to verify and a payload of raw batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The flatbuffer header.
    pub header: &'a [u8],
    /// The raw payload section.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The payload bytes a header's `PayloadRange` addresses.
    pub fn payload_range(&self, range: &wire::PayloadRange) -> Result<&'a [u8], FrameError> {
        let (offset, len) = (range.offset(), range.len());
        let bad = FrameError::BadPayloadRange {
            offset,
            len,
            payload_len: self.payload.len(),
        };
        let start = offset as usize;
        let end = start.checked_add(len as usize).ok_or(bad.clone())?;
        self.payload.get(start..end).ok_or(bad)
    }

    /// The header as a verified request header.
    pub fn request_header(&self) -> Result<wire::RequestHeader<'a>, FrameError> {
        flatbuffers::root_with_opts::<wire::RequestHeader>(
            &verifier_options(self.header.len()),
            self.header,
        )
        .map_err(|e| FrameError::BadHeader(e.to_string()))
    }

    /// The header as a verified response header.
    pub fn response_header(&self) -> Result<wire::ResponseHeader<'a>, FrameError> {
        flatbuffers::root_with_opts::<wire::ResponseHeader>(
            &verifier_options(self.header.len()),
            self.header,
        )
        .map_err(|e| FrameError::BadHeader(e.to_string()))
    }
}

/// Verifier limits scaled to the header: no table nesting or count a valid
/// Fjord header needs can exceed them, and none can make verification slow.
/// The apparent size counts a shared vtable once per table that uses it, so
/// a header of many small tables (a Metadata answer for a topic of 1000
/// partitions) appears several times its length.
fn verifier_options(header_len: usize) -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: 16,
        max_tables: header_len / 4 + 16,
        max_apparent_size: header_len.saturating_mul(16).max(1024),
        ignore_missing_null_terminator: false,
    }
}

/// Reads the frame length from the prefix at the start of `bytes`; `None`
/// until four bytes are there.
pub fn frame_len(bytes: &[u8], limits: &Limits) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = bytes.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > limits.frame_bytes_max {
        return Err(FrameError::TooLarge {
            len,
            max: limits.frame_bytes_max,
        });
    }
    Ok(Some(len))
}

/// Splits the frame at the start of `bytes` (prefix included). Returns the
/// frame and the bytes it used, or `None` while the frame is incomplete.
pub fn decode<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
    let Some(frame_len) = frame_len(bytes, limits)? else {
        return Ok(None);
    };
    let Some(body) = bytes.get(PREFIX_LEN..PREFIX_LEN + frame_len) else {
        return Ok(None);
    };
    let header_len = match body.first_chunk::<HEADER_LEN_FIELD>() {
        Some(field) => u32::from_be_bytes(*field) as usize,
        None => {
            return Err(FrameError::HeaderPastFrame {
                header_len: HEADER_LEN_FIELD,
                frame_len,
            });
        }
    };
    if header_len > limits.header_bytes_max {
        return Err(FrameError::HeaderTooLarge {
            len: header_len,
            max: limits.header_bytes_max,
        });
    }
    let rest = &body[HEADER_LEN_FIELD..];
    if header_len > rest.len() {
        return Err(FrameError::HeaderPastFrame {
            header_len,
            frame_len,
        });
    }
    let (header, payload) = rest.split_at(header_len);
    Ok(Some((Frame { header, payload }, PREFIX_LEN + frame_len)))
}

/// Writes a frame's prefix and header for a payload of `payload_len` bytes;
/// the caller sends the payload after it (vectored, uncopied).
pub fn encode_head(header: &[u8], payload_len: usize, out: &mut Vec<u8>) {
    let frame_len = HEADER_LEN_FIELD + header.len() + payload_len;
    let frame_len =
        u32::try_from(frame_len).expect("frame length fits u32: callers bound payloads");
    let header_len = u32::try_from(header.len()).expect("header length fits u32");
    out.extend_from_slice(&frame_len.to_be_bytes());
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(header);
}
