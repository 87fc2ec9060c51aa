//! Records inside a batch (an uncompressed one, or a compressed one's records
//! once decompressed), decoded for tools, tests and timestamp lookups.
//!
//! Each record is bounded by its own length prefix, and every length inside
//! it is checked against what remains, so hostile bytes end in an error, not
//! a panic or an allocation sized by the input.

use crate::batch::{Batch, BatchError};
use crate::varint::{read_varint, read_varlong};

/// One decoded record, borrowing from the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Absolute offset (base offset + offset delta).
    pub offset: i64,
    /// Absolute timestamp in ms; the batch's max timestamp under log-append time.
    pub timestamp: i64,
    /// Key, or `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Value, or `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// Headers in order: key and optional value.
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// Iterator over a batch's records; yields an error once, then stops.
#[derive(Debug)]
pub struct Records<'a> {
    batch: Batch<'a>,
    rest: &'a [u8],
    index: usize,
    failed: bool,
}

impl<'a> Records<'a> {
    pub(crate) fn new(batch: Batch<'a>) -> Self {
        Records::over(batch, batch.records_bytes())
    }

    /// The records of `batch` read from `records`: its records section
    /// decompressed ([`crate::compression::decompressed_records`]).
    pub fn over(batch: Batch<'a>, records: &'a [u8]) -> Self {
        Records {
            batch,
            rest: records,
            index: 0,
            failed: false,
        }
    }

    fn next_record(&mut self) -> Result<Record<'a>, &'static str> {
        let (length, used) = read_varint(self.rest).map_err(|_| "bad length")?;
        let length = usize::try_from(length).map_err(|_| "negative length")?;
        let body = self
            .rest
            .get(used..used + length)
            .ok_or("length past batch end")?;
        self.rest = &self.rest[used + length..];

        let mut cursor = Cursor { bytes: body };
        let _attributes = cursor.take(1)?;
        let timestamp_delta = cursor.varlong()?;
        let offset_delta = cursor.varint()?;
        let key = cursor.nullable_bytes()?;
        let value = cursor.nullable_bytes()?;
        let header_count =
            usize::try_from(cursor.varint()?).map_err(|_| "negative header count")?;
        // Each header needs at least two bytes: bound the allocation by the input.
        if header_count > cursor.bytes.len() / 2 {
            return Err("header count past record end");
        }
        let mut headers = Vec::with_capacity(header_count);
        for _ in 0..header_count {
            let header_key = cursor.nullable_bytes()?.ok_or("null header key")?;
            headers.push((header_key, cursor.nullable_bytes()?));
        }
        if !cursor.bytes.is_empty() {
            return Err("trailing bytes in record");
        }
        let timestamp = if self.batch.is_log_append_time() {
            self.batch.max_timestamp()
        } else {
            self.batch.base_timestamp().wrapping_add(timestamp_delta)
        };
        Ok(Record {
            offset: self
                .batch
                .base_offset()
                .wrapping_add(i64::from(offset_delta)),
            timestamp,
            key,
            value,
            headers,
        })
    }
}

impl<'a> Records<'a> {
    /// Like `next`, with the record's encoded bytes (length prefix
    /// included), for a rewrite that copies the records it keeps: their
    /// deltas are relative to the batch header, which the rewrite keeps.
    pub fn next_with_bytes(&mut self) -> Option<Result<(Record<'a>, &'a [u8]), BatchError>> {
        let before = self.rest;
        let record = self.next()?;
        Some(record.map(|r| (r, &before[..before.len() - self.rest.len()])))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let declared = usize::try_from(self.batch.record_count()).unwrap_or(0);
        let fail = |this: &mut Self, reason| {
            this.failed = true;
            Some(Err(BatchError::BadRecord {
                index: this.index,
                reason,
            }))
        };
        if self.index == declared {
            if self.rest.is_empty() {
                return None;
            }
            return fail(self, "bytes after the declared record count");
        }
        if self.rest.is_empty() {
            return fail(self, "fewer records than the declared count");
        }
        match self.next_record() {
            Ok(record) => {
                self.index += 1;
                Some(Ok(record))
            }
            Err(reason) => fail(self, reason),
        }
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        if len > self.bytes.len() {
            return Err("field past record end");
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn varint(&mut self) -> Result<i32, &'static str> {
        let (value, used) = read_varint(self.bytes).map_err(|_| "bad varint")?;
        self.bytes = &self.bytes[used..];
        Ok(value)
    }

    fn varlong(&mut self) -> Result<i64, &'static str> {
        let (value, used) = read_varlong(self.bytes).map_err(|_| "bad varlong")?;
        self.bytes = &self.bytes[used..];
        Ok(value)
    }

    fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, &'static str> {
        match self.varint()? {
            -1 => Ok(None),
            len => Ok(Some(
                self.take(usize::try_from(len).map_err(|_| "negative length")?)?,
            )),
        }
    }
}
