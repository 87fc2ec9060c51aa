//! Builds record batches: the client's producer path, tools and tests.

use crate::batch::*;
use crate::varint::{varlong_len, write_varlong};

/// A record header: key and optional value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Header key.
    pub key: &'a [u8],
    /// Header value, or `None` for null.
    pub value: Option<&'a [u8]>,
}

/// Accumulates records and encodes them as one RecordBatch v2.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// The batch as it will be sent: `HEADER_LEN` bytes of header, filled
    /// in by `build`, then the records. Encoding records after the room for
    /// the header lets an uncompressed batch be finished in place, with no
    /// copy of its records.
    buf: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
    control: bool,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty builder for a non-idempotent producer.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty builder with room for `bytes` of encoded batch, so that a
    /// batch filled up to a known size never reallocates.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(HEADER_LEN));
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf,
            count: 0,
            base_timestamp: 0,
            max_timestamp: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
            control: false,
        }
    }

    /// Marks the batch as from an idempotent producer.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Marks the batch as a control batch (Kafka's markers, and the leader
    /// change a new partition leader writes): consumers skip it.
    pub fn control(mut self, control: bool) -> Self {
        self.control = control;
        self
    }

    /// Marks the batch as part of a transaction.
    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True before the first push.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the uncompressed batch if built now.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Size the batch grows by if this record is pushed, for size limits.
    pub fn record_len(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) -> usize {
        let body = self.record_body_len(timestamp, key, value, headers);
        varlong_len(body as i64) + body
    }

    /// Appends a record. The first record's timestamp is the batch's base.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) {
        assert!(self.count < i32::MAX, "batch record count overflows i32");
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let body = self.record_body_len(timestamp, key, value, headers);
        let start = self.buf.len();
        write_varlong(&mut self.buf, body as i64);
        self.buf.push(0); // record attributes: unused in v2
        write_varlong(&mut self.buf, timestamp - self.base_timestamp);
        write_varlong(&mut self.buf, i64::from(self.count));
        write_nullable(&mut self.buf, key);
        write_nullable(&mut self.buf, value);
        write_varlong(&mut self.buf, headers.len() as i64);
        for header in headers {
            write_nullable(&mut self.buf, Some(header.key));
            write_nullable(&mut self.buf, header.value);
        }
        debug_assert_eq!(self.buf.len() - start, varlong_len(body as i64) + body);
        self.count += 1;
    }

    /// Encodes the batch uncompressed with base offset 0 and leader epoch -1;
    /// the broker assigns both.
    pub fn build(mut self) -> Vec<u8> {
        // The records are already in place after the room for the header.
        let out = std::mem::take(&mut self.buf);
        self.finish(out, Compression::None)
    }

    /// Encodes the batch with its records section passed through `compress`,
    /// and the codec recorded in the attributes. The broker passes such
    /// bodies through untouched.
    pub fn build_with(
        self,
        compression: Compression,
        compress: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Vec<u8> {
        let body = compress(&self.buf[HEADER_LEN..]);
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&self.buf[..HEADER_LEN]);
        out.extend_from_slice(&body);
        self.finish(out, compression)
    }

    /// Fills in the header of `out` (header room, then the records section)
    /// and its CRC.
    fn finish(&self, mut out: Vec<u8>, compression: Compression) -> Vec<u8> {
        assert!(self.count > 0, "a batch needs at least one record");
        assert!(out.len() >= HEADER_LEN);
        let batch_length =
            i32::try_from(out.len() - LOG_OVERHEAD).expect("batch longer than i32::MAX");
        let mut attributes = compression.attribute_bits();
        if self.transactional {
            attributes |= 0x10;
        }
        if self.control {
            attributes |= 0x20;
        }
        out[OFFSET_BATCH_LENGTH..OFFSET_BATCH_LENGTH + 4]
            .copy_from_slice(&batch_length.to_be_bytes());
        out[OFFSET_LEADER_EPOCH..OFFSET_LEADER_EPOCH + 4].copy_from_slice(&(-1i32).to_be_bytes());
        out[OFFSET_MAGIC] = MAGIC as u8;
        out[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        out[OFFSET_LAST_OFFSET_DELTA..OFFSET_LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&(self.count - 1).to_be_bytes());
        out[OFFSET_BASE_TIMESTAMP..OFFSET_BASE_TIMESTAMP + 8]
            .copy_from_slice(&self.base_timestamp.to_be_bytes());
        out[OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8]
            .copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[OFFSET_PRODUCER_ID..OFFSET_PRODUCER_ID + 8]
            .copy_from_slice(&self.producer_id.to_be_bytes());
        out[OFFSET_PRODUCER_EPOCH..OFFSET_PRODUCER_EPOCH + 2]
            .copy_from_slice(&self.producer_epoch.to_be_bytes());
        out[OFFSET_BASE_SEQUENCE..OFFSET_BASE_SEQUENCE + 4]
            .copy_from_slice(&self.base_sequence.to_be_bytes());
        out[OFFSET_RECORD_COUNT..OFFSET_RECORD_COUNT + 4]
            .copy_from_slice(&self.count.to_be_bytes());
        let crc = crc32c::crc32c(&out[OFFSET_ATTRIBUTES..]);
        out[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn record_body_len(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) -> usize {
        let base_timestamp = if self.count == 0 {
            timestamp
        } else {
            self.base_timestamp
        };
        1 + varlong_len(timestamp - base_timestamp)
            + varlong_len(i64::from(self.count))
            + nullable_len(key)
            + nullable_len(value)
            + varlong_len(headers.len() as i64)
            + headers
                .iter()
                .map(|h| nullable_len(Some(h.key)) + nullable_len(h.value))
                .sum::<usize>()
    }
}

fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varlong_len(-1),
        Some(b) => varlong_len(b.len() as i64) + b.len(),
    }
}

fn write_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => write_varlong(out, -1),
        Some(b) => {
            write_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}
