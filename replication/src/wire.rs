//! The peer wire format: how one shard's [`PeerBatch`] for a peer replica
//! travels over their connection, with the record batches it replicates.
//!
//! ```text
//! connection = "FJRP" frame*        (a caller's: control requests, answered in order)
//!            | "FJRL" hello frame*  (a link: Raft traffic both ways, see below)
//! hello  = dialer's shard address: ip:16 bytes (IPv6, v4-mapped) | port:u16be
//! frame  = len:u32be | crc32:u32be | body            (len = 4 + body length)
//! body   = magic "FJRP" | version:u8 | kind:u8 | from:u32be | header_len:u32be
//!          | header (rkyv: PeerBatch, ControlRequest or ControlResponse)
//!          | payload
//! ```
//! A Raft frame's payload is the bytes of every batch the header's append
//! requests carry, in order; each entry's `bytes` says how long its batch
//! is, and the sum must equal the payload's length. Control frames (a node
//! registering and following the controller's metadata, commands forwarded
//! to the controller) carry no payload. Everything from the network is
//! hostile: lengths are bounded before anything is allocated, the CRC is
//! checked, rkyv validates the header, and append requests are checked for
//! shape — an error, never a panic.
//!
//! The frame's CRC covers the body up to the payload. The payload's batches
//! carry their own CRC-32C, which the receiving replica checks, with each
//! batch's offsets and leader epoch against its entry, before anything of
//! the request is applied (the broker's `Replication::receive`). A frame
//! CRC over the same bytes cost the leader a pass per follower and the
//! follower one more, for nothing the batches' own did not catch.

use crate::control::{ControlRequest, ControlResponse};
use crate::raft::mux::PeerBatch;
use crate::raft::{Message, NodeId};

/// Largest frame accepted (a full in-flight budget's worth of batches and
/// then some): bounds what one read allocates.
pub const FRAME_BYTES_MAX: usize = 72 << 20;

/// What a peer writes first on a connection to a shard port. Read as a
/// native frame length it is over a gigabyte, which no native client sends.
pub const CONNECTION_MAGIC: [u8; 4] = *b"FJRP";
/// What a peer shard writes first on a link: a connection both shards send
/// their Raft traffic on, so that a pair of shards needs only one. The
/// [`LINK_HELLO_BYTES`] that follow name the dialing shard.
pub const LINK_MAGIC: [u8; 4] = *b"FJRL";
/// The dialing shard's address after [`LINK_MAGIC`].
pub const LINK_HELLO_BYTES: usize = 18;
const MAGIC: &[u8; 4] = b"FJRP";
const VERSION: u8 = 4;
/// len + crc.
pub const PREFIX_BYTES: usize = 8;
const BODY_FIXED: usize = 4 + 1 + 1 + 4 + 4;

const KIND_RAFT: u8 = 0;
const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;

/// A link's opening: the magic and the dialing shard's address, as its
/// peers know it (the address the metadata gives for its shard).
pub fn encode_link_hello(dialer: std::net::SocketAddr) -> [u8; 4 + LINK_HELLO_BYTES] {
    let ip = match dialer.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut hello = [0u8; 4 + LINK_HELLO_BYTES];
    hello[..4].copy_from_slice(&LINK_MAGIC);
    hello[4..20].copy_from_slice(&ip.octets());
    hello[20..].copy_from_slice(&dialer.port().to_be_bytes());
    hello
}

/// The dialing shard's address from the bytes after [`LINK_MAGIC`]. Every
/// 18 bytes name some address: nothing to refuse.
pub fn decode_link_hello(hello: [u8; LINK_HELLO_BYTES]) -> std::net::SocketAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&hello[..16]);
    let ip = std::net::Ipv6Addr::from(octets);
    let ip = ip
        .to_ipv4_mapped()
        .map_or(std::net::IpAddr::V6(ip), std::net::IpAddr::V4);
    std::net::SocketAddr::new(ip, u16::from_be_bytes([hello[16], hello[17]]))
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its fixed parts, or longer than [`FRAME_BYTES_MAX`].
    #[error("frame length {0} out of bounds")]
    Length(usize),
    /// The CRC does not match: damaged on the way.
    #[error("frame CRC mismatch")]
    Crc,
    /// Not this protocol, or another version of it.
    #[error("not a Fjord peer frame of version {VERSION}")]
    Magic,
    /// The header is not a valid batch.
    #[error("invalid header: {0}")]
    Header(String),
    /// The batches' lengths and the payload disagree, or an append request
    /// is malformed.
    #[error("payload does not match the header: {0}")]
    Payload(String),
}

/// A decoded frame: the sender, its messages, and the payload they index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The sending node.
    pub from: NodeId,
    /// What it says.
    pub body: Body,
    /// The batches of its append requests, back to back.
    pub payload: Payload,
}

/// A frame's payload, left in the buffer the frame was read into: batches
/// of hundreds of kilobytes are not copied out of it.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    buf: Vec<u8>,
    start: usize,
}

impl From<Vec<u8>> for Payload {
    fn from(buf: Vec<u8>) -> Payload {
        Payload { buf, start: 0 }
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Raft messages of the groups between two shards.
    Raft(PeerBatch),
    /// A request to a node's controller shard.
    Request(ControlRequest),
    /// Its answer, on the same connection.
    Response(ControlResponse),
}

/// Encodes a Raft frame; `payload` must hold exactly the batches the append
/// requests in `batch` describe, in order.
pub fn encode(from: NodeId, batch: &PeerBatch, payload: &[u8]) -> Vec<u8> {
    let mut frame = encode_head(from, batch, payload.len());
    frame.extend_from_slice(payload);
    frame
}

/// Encodes a Raft frame but for its payload (`payload_len` bytes), which
/// follows it on the wire as it is: a leader's batches go out without being
/// copied into a frame.
pub fn encode_head(from: NodeId, batch: &PeerBatch, payload_len: usize) -> Vec<u8> {
    debug_assert_eq!(
        payload_bytes(batch),
        Some(payload_len as u64),
        "payload matches the header"
    );
    let header =
        rkyv::to_bytes::<rkyv::rancor::Error>(batch).expect("peer batches always serialize");
    head(KIND_RAFT, from, &header, payload_len)
}

/// Encodes a control request.
pub fn encode_request(from: NodeId, request: &ControlRequest) -> Vec<u8> {
    let header = rkyv::to_bytes::<rkyv::rancor::Error>(request).expect("requests always serialize");
    head(KIND_REQUEST, from, &header, 0)
}

/// Encodes a control response.
pub fn encode_response(from: NodeId, response: &ControlResponse) -> Vec<u8> {
    let header =
        rkyv::to_bytes::<rkyv::rancor::Error>(response).expect("responses always serialize");
    head(KIND_RESPONSE, from, &header, 0)
}

/// A frame up to its payload, the CRC covering what it holds (not the
/// payload: its batches carry their own).
fn head(kind: u8, from: NodeId, header: &[u8], payload_len: usize) -> Vec<u8> {
    let body_len = BODY_FIXED + header.len() + payload_len;
    let mut head = Vec::with_capacity(PREFIX_BYTES + BODY_FIXED + header.len());
    head.extend_from_slice(&((4 + body_len) as u32).to_be_bytes());
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(MAGIC);
    head.push(VERSION);
    head.push(kind);
    head.extend_from_slice(&from.to_be_bytes());
    head.extend_from_slice(&(header.len() as u32).to_be_bytes());
    head.extend_from_slice(header);
    let crc = crc32fast::hash(&head[PREFIX_BYTES..]);
    head[4..8].copy_from_slice(&crc.to_be_bytes());
    head
}

/// The length a frame announces in its first four bytes (including the
/// CRC), checked against the bounds before the caller reads that much.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if !(4 + BODY_FIXED..=FRAME_BYTES_MAX).contains(&len) {
        return Err(WireError::Length(len));
    }
    Ok(len)
}

/// Decodes what follows the length prefix: `rest` = crc | body. The
/// payload stays in `rest`.
pub fn decode(rest: Vec<u8>) -> Result<Frame, WireError> {
    if rest.len() < 4 + BODY_FIXED || rest.len() > FRAME_BYTES_MAX {
        return Err(WireError::Length(rest.len()));
    }
    let frame = rest;
    let (crc, body) = frame.split_at(4);
    let header_len = u32::from_be_bytes([body[10], body[11], body[12], body[13]]) as usize;
    if header_len > body.len() - BODY_FIXED {
        return Err(WireError::Length(header_len));
    }
    let (head, payload) = body.split_at(BODY_FIXED + header_len);
    if crc32fast::hash(head).to_be_bytes() != crc {
        return Err(WireError::Crc);
    }
    if &body[..4] != MAGIC || body[4] != VERSION {
        return Err(WireError::Magic);
    }
    let kind = body[5];
    let from = u32::from_be_bytes([body[6], body[7], body[8], body[9]]);
    let header = &head[BODY_FIXED..];
    // rkyv reads in place and needs its alignment.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(header.len());
    aligned.extend_from_slice(header);
    let invalid = |e: rkyv::rancor::Error| WireError::Header(e.to_string());
    let control = |body: Body| {
        if !payload.is_empty() {
            return Err(WireError::Payload(
                "a control frame carries no payload".into(),
            ));
        }
        Ok(Frame {
            from,
            body,
            payload: Payload::default(),
        })
    };
    let batch = match kind {
        KIND_RAFT => {
            rkyv::from_bytes::<PeerBatch, rkyv::rancor::Error>(&aligned).map_err(invalid)?
        }
        KIND_REQUEST => {
            let request = rkyv::from_bytes::<ControlRequest, rkyv::rancor::Error>(&aligned)
                .map_err(invalid)?;
            return control(Body::Request(request));
        }
        KIND_RESPONSE => {
            let response = rkyv::from_bytes::<ControlResponse, rkyv::rancor::Error>(&aligned)
                .map_err(invalid)?;
            return control(Body::Response(response));
        }
        _ => return Err(WireError::Magic),
    };
    for (group, message) in &batch.messages {
        if let Message::Append(r) = message
            && !r.is_well_formed()
        {
            return Err(WireError::Payload(format!(
                "malformed append for group {group}"
            )));
        }
    }
    match payload_bytes(&batch) {
        Some(expected) if expected == payload.len() as u64 => {}
        expected => {
            return Err(WireError::Payload(format!(
                "entries announce {expected:?} bytes, payload has {}",
                payload.len()
            )));
        }
    }
    let start = frame.len() - payload.len();
    Ok(Frame {
        from,
        body: Body::Raft(batch),
        payload: Payload { buf: frame, start },
    })
}

/// Bytes of every batch the append requests carry (`None` on overflow).
fn payload_bytes(batch: &PeerBatch) -> Option<u64> {
    batch
        .messages
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Append(r) => Some(r),
            _ => None,
        })
        .flat_map(|r| r.entries.iter())
        .try_fold(0u64, |sum, e| sum.checked_add(u64::from(e.bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{AppendRequest, Entry, EntryKind, Heartbeat};

    #[test]
    fn a_link_hello_names_the_dialer_v4_and_v6() {
        for addr in ["127.0.0.1:9093", "[::1]:65535", "10.1.2.3:0"] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            let hello = encode_link_hello(addr);
            assert_eq!(hello[..4], LINK_MAGIC);
            let mut rest = [0u8; LINK_HELLO_BYTES];
            rest.copy_from_slice(&hello[4..]);
            assert_eq!(decode_link_hello(rest), addr);
        }
    }

    fn records(count: usize) -> Vec<u8> {
        let mut builder = fjord_core::BatchBuilder::new();
        for i in 0..count {
            builder.push(i as i64, None, Some(b"value"), &[]);
        }
        builder.build()
    }

    fn sample() -> (PeerBatch, Vec<u8>) {
        let (data, mark) = (records(3), records(1));
        let entries = vec![
            Entry {
                offset: 10,
                end: 13,
                term: 2,
                bytes: data.len() as u32,
                kind: EntryKind::Data,
            },
            Entry {
                offset: 13,
                end: 14,
                term: 2,
                bytes: mark.len() as u32,
                kind: EntryKind::LeaderMark,
            },
        ];
        let append = AppendRequest {
            term: 2,
            prev_end: 10,
            prev_term: 1,
            commit: 9,
            entries,
        };
        let batch = PeerBatch {
            heartbeats: vec![(
                7,
                Heartbeat {
                    term: 2,
                    commit: 9,
                    quiesce: true,
                },
            )],
            heartbeat_responses: Vec::new(),
            messages: vec![
                (3, Message::Append(append)),
                (4, Message::TimeoutNow { term: 5 }),
            ],
        };
        (batch, [data, mark].concat())
    }

    #[test]
    fn frames_round_trip() {
        let (batch, payload) = sample();
        let frame = encode(9, &batch, &payload);
        let len = frame_len([frame[0], frame[1], frame[2], frame[3]]).expect("in bounds");
        assert_eq!(len, frame.len() - 4);
        let decoded = decode(frame[4..].to_vec()).expect("valid");
        assert_eq!(
            decoded,
            Frame {
                from: 9,
                body: Body::Raft(batch.clone()),
                payload: payload.clone().into()
            }
        );
        // Sent as a head and the payload after it, the same frame.
        let mut parts = encode_head(9, &batch, payload.len());
        parts.extend_from_slice(&payload);
        assert_eq!(parts, frame);
    }

    #[test]
    fn damaged_frames_are_refused() {
        let (batch, payload) = sample();
        let frame = encode(9, &batch, &payload);
        // The head by the frame's CRC, the payload by its batches' own
        // (which the replica checks).
        let mut flipped = frame.clone();
        flipped[PREFIX_BYTES + BODY_FIXED] ^= 1;
        assert_eq!(decode(flipped[4..].to_vec()), Err(WireError::Crc));
        let mut flipped = frame.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let decoded = decode(flipped[4..].to_vec()).expect("the head is whole");
        let mark = &decoded.payload[payload.len() - records(1).len()..];
        assert!(matches!(
            fjord_core::Batch::validate(mark),
            Err(fjord_core::BatchError::CrcMismatch { .. })
        ));
        assert_eq!(decode(frame[4..10].to_vec()), Err(WireError::Length(6)));
        assert!(frame_len([0xff; 4]).is_err());
        assert!(frame_len([0, 0, 0, 1]).is_err());
        // A valid head over a payload it does not announce.
        let short = frame[..frame.len() - 1].to_vec();
        assert!(matches!(
            decode(short[4..].to_vec()),
            Err(WireError::Payload(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = decode(bytes.clone());
            // With a valid CRC and magic around garbage, validation refuses it.
            let mut body = MAGIC.to_vec();
            body.push(VERSION);
            body.push(KIND_RAFT);
            body.extend_from_slice(&1u32.to_be_bytes());
            body.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            body.extend_from_slice(&bytes);
            let mut rest = crc32fast::hash(&body).to_be_bytes().to_vec();
            rest.extend_from_slice(&body);
            let _ = decode(rest);
        }
    }
}
