//! Kafka's RecordBatch v2 (magic 2), byte for byte.
//!
//! The broker treats a batch as an opaque, validated unit: it checks the
//! framing and the CRC, reads a few header fields and patches the two fields
//! that lie outside the CRC (base offset and partition leader epoch). It never
//! decodes or re-encodes the records on the hot path; that is `record`'s job,
//! for tools and tests.
//!
//! ```text
//! offset  size  field
//!      0     8  base_offset
//!      8     4  batch_length            (bytes that follow this field)
//!     12     4  partition_leader_epoch
//!     16     1  magic                   (= 2)
//!     17     4  crc                     (CRC-32C of bytes 21..end)
//!     21     2  attributes              (compression, timestamp type, txn, control)
//!     23     4  last_offset_delta
//!     27     8  base_timestamp
//!     35     8  max_timestamp
//!     43     8  producer_id
//!     51     2  producer_epoch
//!     53     4  base_sequence
//!     57     4  record_count
//!     61     …  records
//! ```

use crate::record::Records;

/// Length of the fixed batch header, before the first record.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batch_length`'s count starts: base_offset and batch_length.
pub const LOG_OVERHEAD: usize = 12;
/// The only record format Fjord accepts.
pub const MAGIC: i8 = 2;
/// Largest batch any layer accepts, whatever a topic's `max.message.bytes`
/// says: a hard ceiling so that a hostile length never drives an allocation.
pub const BATCH_LEN_MAX: usize = 64 * 1024 * 1024;
/// Smallest encoding of one record (length, attributes, timestamp delta,
/// offset delta, key length, value length, header count: one byte each).
pub const RECORD_LEN_MIN: usize = 7;

pub(crate) const OFFSET_BATCH_LENGTH: usize = 8;
pub(crate) const OFFSET_LEADER_EPOCH: usize = 12;
pub(crate) const OFFSET_MAGIC: usize = 16;
pub(crate) const OFFSET_CRC: usize = 17;
/// Where the bytes the batch's CRC covers begin (they run to its end).
pub const OFFSET_ATTRIBUTES: usize = 21;
pub(crate) const OFFSET_LAST_OFFSET_DELTA: usize = 23;
pub(crate) const OFFSET_BASE_TIMESTAMP: usize = 27;
pub(crate) const OFFSET_MAX_TIMESTAMP: usize = 35;
pub(crate) const OFFSET_PRODUCER_ID: usize = 43;
pub(crate) const OFFSET_PRODUCER_EPOCH: usize = 51;
pub(crate) const OFFSET_BASE_SEQUENCE: usize = 53;
pub(crate) const OFFSET_RECORD_COUNT: usize = 57;

const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
const ATTRIBUTE_CONTROL: i16 = 0x20;

/// Why bytes are not a valid record batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than a batch header.
    #[error("batch truncated: {available} bytes, need at least {needed}")]
    Truncated {
        /// Bytes needed to go on.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// `batch_length` is below the header size or above [`BATCH_LEN_MAX`].
    #[error("batch length {0} out of range")]
    LengthOutOfRange(i64),
    /// Magic byte other than 2.
    #[error("unsupported magic {0}, only record format v2 is accepted")]
    BadMagic(i8),
    /// CRC-32C over attributes..end does not match the stored one.
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Compression codec bits 5, 6 or 7.
    #[error("unknown compression codec {0}")]
    UnknownCompression(i16),
    /// Record count negative, above the offsets the batch spans, or more
    /// records than its body could hold.
    #[error("record count {count} inconsistent with last offset delta {last_offset_delta}")]
    BadRecordCount {
        /// Declared record count.
        count: i32,
        /// Declared last offset delta.
        last_offset_delta: i32,
    },
    /// A record inside the batch is malformed (only found by iterating).
    #[error("malformed record {index}: {reason}")]
    BadRecord {
        /// Position of the record in the batch.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Records are compressed; iterating them needs the codec.
    #[error("records are compressed with {0:?}; iteration needs decompression")]
    Compressed(Compression),
    /// A record without a key, sent to a compacted topic (Kafka's
    /// `INVALID_RECORD`: a compacted topic cannot accept it).
    #[error("record {index} has no key; a compacted topic needs keys")]
    KeylessRecord {
        /// Position of the record in the batch.
        index: usize,
    },
}

/// Compression codec named by the low attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Records stored as they are.
    None,
    /// gzip.
    Gzip,
    /// snappy (xerial framing).
    Snappy,
    /// lz4 frame.
    Lz4,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The attribute bits of this codec.
    pub fn attribute_bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    fn from_attributes(attributes: i16) -> Result<Self, BatchError> {
        match attributes & ATTRIBUTE_COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }
}

/// A view of one structurally valid batch: exactly its bytes, no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch<'a> {
    bytes: &'a [u8],
}

impl<'a> Batch<'a> {
    /// Total length of the batch that starts at `bytes`, from its header.
    /// Needs only the first [`LOG_OVERHEAD`] bytes; checks the bounds.
    pub fn peek_len(bytes: &[u8]) -> Result<usize, BatchError> {
        let declared = i64::from(read_i32(bytes, OFFSET_BATCH_LENGTH).ok_or(
            BatchError::Truncated {
                needed: LOG_OVERHEAD,
                available: bytes.len(),
            },
        )?);
        let total = declared + LOG_OVERHEAD as i64;
        if total < HEADER_LEN as i64 || total > BATCH_LEN_MAX as i64 {
            return Err(BatchError::LengthOutOfRange(declared));
        }
        Ok(total as usize)
    }

    /// Frames the batch at the start of `bytes` and checks what is cheap:
    /// length bounds, magic and codec. For bytes this process wrote itself
    /// (the read path); use [`Batch::validate`] for anything from outside.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let total = Self::peek_len(bytes)?;
        if bytes.len() < total {
            return Err(BatchError::Truncated {
                needed: total,
                available: bytes.len(),
            });
        }
        let batch = Batch {
            bytes: &bytes[..total],
        };
        if batch.magic() != MAGIC {
            return Err(BatchError::BadMagic(batch.magic()));
        }
        Compression::from_attributes(batch.attributes())?;
        Ok(batch)
    }

    /// Frames and fully validates the batch at the start of `bytes`: bounds,
    /// magic, codec, CRC-32C and the record count against the offsets the
    /// batch spans and the room its body has.
    pub fn validate(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let batch = Self::parse(bytes)?;
        let computed = crc32c::crc32c(&batch.bytes[OFFSET_ATTRIBUTES..]);
        if computed != batch.crc() {
            return Err(BatchError::CrcMismatch {
                stored: batch.crc(),
                computed,
            });
        }
        let count = batch.record_count();
        let last_offset_delta = batch.last_offset_delta();
        let count_fits = count >= 0
            && last_offset_delta >= 0
            && i64::from(count) <= i64::from(last_offset_delta) + 1
            && (batch.compression() != Compression::None
                || count as usize <= batch.records_bytes().len() / RECORD_LEN_MIN);
        if !count_fits {
            return Err(BatchError::BadRecordCount {
                count,
                last_offset_delta,
            });
        }
        Ok(batch)
    }

    /// The batch's bytes, header included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a batch has at least a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        read_i64(self.bytes, 0).unwrap_or_default()
    }

    /// Offset of the last record the batch spans.
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(self.last_offset_delta())
    }

    /// Offsets the batch spans (`last_offset_delta + 1`).
    pub fn offset_count(&self) -> u64 {
        u64::try_from(i64::from(self.last_offset_delta()) + 1).unwrap_or(0)
    }

    /// Leader epoch (Raft term) of the leader that appended the batch.
    pub fn partition_leader_epoch(&self) -> i32 {
        read_i32(self.bytes, OFFSET_LEADER_EPOCH).unwrap_or_default()
    }

    /// Record format version.
    pub fn magic(&self) -> i8 {
        self.bytes[OFFSET_MAGIC] as i8
    }

    /// CRC-32C stored in the header.
    pub fn crc(&self) -> u32 {
        read_i32(self.bytes, OFFSET_CRC).unwrap_or_default() as u32
    }

    /// Raw attribute bits.
    pub fn attributes(&self) -> i16 {
        read_i16(self.bytes, OFFSET_ATTRIBUTES).unwrap_or_default()
    }

    /// Codec of the records section. `parse` has checked the bits.
    pub fn compression(&self) -> Compression {
        Compression::from_attributes(self.attributes()).unwrap_or(Compression::None)
    }

    /// Whether timestamps are the broker's append time rather than the producer's.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & ATTRIBUTE_LOG_APPEND_TIME != 0
    }

    /// Part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTRIBUTE_TRANSACTIONAL != 0
    }

    /// A control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTRIBUTE_CONTROL != 0
    }

    /// Offset delta of the last record.
    pub fn last_offset_delta(&self) -> i32 {
        read_i32(self.bytes, OFFSET_LAST_OFFSET_DELTA).unwrap_or_default()
    }

    /// Timestamp of the first record, ms since the epoch.
    pub fn base_timestamp(&self) -> i64 {
        read_i64(self.bytes, OFFSET_BASE_TIMESTAMP).unwrap_or_default()
    }

    /// Largest timestamp in the batch, ms since the epoch.
    pub fn max_timestamp(&self) -> i64 {
        read_i64(self.bytes, OFFSET_MAX_TIMESTAMP).unwrap_or_default()
    }

    /// Idempotent producer id, or -1.
    pub fn producer_id(&self) -> i64 {
        read_i64(self.bytes, OFFSET_PRODUCER_ID).unwrap_or_default()
    }

    /// Idempotent producer epoch, or -1.
    pub fn producer_epoch(&self) -> i16 {
        read_i16(self.bytes, OFFSET_PRODUCER_EPOCH).unwrap_or_default()
    }

    /// Sequence number of the first record, or -1.
    pub fn base_sequence(&self) -> i32 {
        read_i32(self.bytes, OFFSET_BASE_SEQUENCE).unwrap_or_default()
    }

    /// Number of records in the batch.
    pub fn record_count(&self) -> i32 {
        read_i32(self.bytes, OFFSET_RECORD_COUNT).unwrap_or_default()
    }

    /// The records section, possibly compressed.
    pub fn records_bytes(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// Checks that every record has a key, as a compacted topic requires
    /// at produce (Kafka refuses keyless records there). Control batches
    /// are exempt. A compressed batch passes unchecked here: its records
    /// must be decompressed first (the broker does, for compacted topics).
    pub fn check_keyed(&self) -> Result<(), BatchError> {
        if self.is_control() || self.compression() != Compression::None {
            return Ok(());
        }
        for (index, record) in Records::new(*self).enumerate() {
            if record?.key.is_none() {
                return Err(BatchError::KeylessRecord { index });
            }
        }
        Ok(())
    }

    /// This batch with only `records`, `count` of them (encoded records
    /// taken from it, in order, decompressed, end to end), left in it: the
    /// log cleaner's rewrite. Base
    /// offset, last offset delta, base timestamp, producer fields and
    /// attributes stay, so the batch spans the same offsets and every record
    /// keeps its offset and timestamp (their deltas are from the base
    /// timestamp, which Kafka's rewrite moves to the first record kept:
    /// the same timestamps either way); `max_timestamp` is the largest of the records
    /// kept (under create time; the header's stays under log-append time
    /// and for no record); length, record count and CRC are recomputed. A
    /// compressed batch's records are compressed again with its codec. No
    /// record gives a header-only batch, uncompressed (Kafka keeps
    /// those for a producer's last sequence).
    pub fn with_records(
        &self,
        count: usize,
        records: &[u8],
        max_timestamp: i64,
    ) -> std::io::Result<Vec<u8>> {
        let codec = match count {
            0 => Compression::None,
            _ => self.compression(),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + records.len());
        out.extend_from_slice(&self.bytes[..HEADER_LEN]);
        if codec == Compression::None {
            out.extend_from_slice(records);
        } else {
            out.extend(crate::compression::compressed(codec, records)?);
        }
        let attributes = self.attributes() & !ATTRIBUTE_COMPRESSION_MASK | codec.attribute_bits();
        out[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        if count > 0 && !self.is_log_append_time() {
            out[OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8]
                .copy_from_slice(&max_timestamp.to_be_bytes());
        }
        // Compression can make a batch larger: its length is checked.
        let batch_length = i32::try_from(out.len() - LOG_OVERHEAD)
            .map_err(|_| std::io::Error::other("a rewritten batch past i32::MAX bytes"))?;
        // Fewer records than the batch had.
        let count = i32::try_from(count).unwrap_or(i32::MAX);
        out[OFFSET_BATCH_LENGTH..OFFSET_BATCH_LENGTH + 4]
            .copy_from_slice(&batch_length.to_be_bytes());
        out[OFFSET_RECORD_COUNT..OFFSET_RECORD_COUNT + 4].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&out[OFFSET_ATTRIBUTES..]);
        out[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }

    /// Iterates the records of an uncompressed batch.
    pub fn records(&self) -> Result<Records<'a>, BatchError> {
        match self.compression() {
            Compression::None => Ok(Records::new(*self)),
            codec => Err(BatchError::Compressed(codec)),
        }
    }
}

/// Writes the base offset into the batch header at the start of `bytes`.
/// The field lies outside the CRC, so the batch stays valid.
pub fn set_base_offset(bytes: &mut [u8], base_offset: i64) {
    assert!(bytes.len() >= HEADER_LEN);
    bytes[..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes the partition leader epoch into the batch header at the start of
/// `bytes`. Outside the CRC, like the base offset.
pub fn set_partition_leader_epoch(bytes: &mut [u8], epoch: i32) {
    assert!(bytes.len() >= HEADER_LEN);
    bytes[OFFSET_LEADER_EPOCH..OFFSET_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// The producer id of the batch at the start of `bytes`, read without
/// framing the batch (-1 when the bytes are too short): all that batches
/// of producers without an id (-1) pay for idempotence on the broker.
pub fn peek_producer_id(bytes: &[u8]) -> i64 {
    read_i64(bytes, OFFSET_PRODUCER_ID).unwrap_or(-1)
}

/// Writes an idempotent producer's id, epoch and base sequence into the
/// header of the batch at the start of `bytes` and recomputes its CRC
/// (they lie under it): a producer stamps a sealed batch when it sends it
/// first, and again when a new epoch restarts its sequences.
pub fn set_producer(bytes: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    let len = Batch::peek_len(bytes).expect("a batch this process built");
    assert!(bytes.len() >= len);
    bytes[OFFSET_PRODUCER_ID..OFFSET_PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    bytes[OFFSET_PRODUCER_EPOCH..OFFSET_PRODUCER_EPOCH + 2].copy_from_slice(&epoch.to_be_bytes());
    bytes[OFFSET_BASE_SEQUENCE..OFFSET_BASE_SEQUENCE + 4]
        .copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[OFFSET_ATTRIBUTES..len]);
    bytes[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Iterates the batches laid end to end in `bytes`, as written in a log
/// segment or a fetch response, stopping at the first byte that does not
/// frame a batch. Uses [`Batch::parse`]: for bytes already validated once.
pub fn batches(bytes: &[u8]) -> impl Iterator<Item = Batch<'_>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let batch = Batch::parse(rest).ok()?;
        rest = &rest[batch.len()..];
        Some(batch)
    })
}

fn read_i16(bytes: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn read_i64(bytes: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BatchBuilder;

    #[test]
    fn check_keyed_refuses_a_keyless_record_and_names_it() {
        let mut keyed = BatchBuilder::new();
        keyed.push(1, Some(b"k"), Some(b"v"), &[]);
        keyed.push(2, Some(b"k"), None, &[]);
        let bytes = keyed.build();
        assert_eq!(
            Batch::validate(&bytes).and_then(|b| b.check_keyed()),
            Ok(())
        );

        let mut keyless = BatchBuilder::new();
        keyless.push(1, Some(b"k"), Some(b"v"), &[]);
        keyless.push(2, None, Some(b"v"), &[]);
        let bytes = keyless.build();
        assert_eq!(
            Batch::validate(&bytes).and_then(|b| b.check_keyed()),
            Err(BatchError::KeylessRecord { index: 1 })
        );
    }

    #[test]
    fn with_records_keeps_offsets_and_timestamps_of_the_records_kept() {
        let mut builder = BatchBuilder::new().producer(7, 1, 100);
        for i in 0..5i64 {
            builder.push(1000 + i, Some(&[b'k', i as u8]), Some(b"value"), &[]);
        }
        let mut bytes = builder.build();
        set_base_offset(&mut bytes, 40);
        let batch = Batch::validate(&bytes).expect("valid");
        let mut records = batch.records().expect("uncompressed");
        let mut kept = Vec::new();
        while let Some(next) = records.next_with_bytes() {
            let (record, raw) = next.expect("record");
            if record.offset % 2 == 1 {
                kept.push(raw);
            }
        }
        let rewritten = batch.with_records(kept.len(), &kept.concat(), 1003);
        let rewritten = rewritten.expect("rewritten");
        let again = Batch::validate(&rewritten).expect("valid after rewrite");
        assert_eq!(again.max_timestamp(), 1003, "the largest of those kept");
        assert_eq!(again.base_offset(), 40);
        assert_eq!(again.last_offset(), 44, "still spans its offsets");
        assert_eq!(again.record_count(), 2);
        assert_eq!(again.producer_id(), 7);
        assert_eq!(again.base_sequence(), 100);
        let offsets: Vec<(i64, i64)> = again
            .records()
            .expect("records")
            .map(|r| r.map(|r| (r.offset, r.timestamp)))
            .collect::<Result<_, _>>()
            .expect("decodable");
        assert_eq!(offsets, vec![(41, 1001), (43, 1003)]);
        let empty = batch.with_records(0, &[], -1).expect("rewritten");
        let empty = Batch::validate(&empty).expect("an empty batch is valid");
        assert_eq!((empty.record_count(), empty.last_offset()), (0, 44));
        assert_eq!(empty.max_timestamp(), 1004, "the header's, with no record");
    }
}
