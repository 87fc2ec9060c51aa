//! The sparse index of one segment: every `index.interval.bytes` of log, an
//! entry maps an offset to its file position and records the largest
//! timestamp seen so far in the segment.
//!
//! Kafka keeps two files (offset and time index); one entry carrying both
//! serves the same two lookups with half the writes, and the two can never
//! disagree after a torn write. Each entry carries a CRC-32 (crc32fast), so
//! a torn or zeroed tail is detected entry by entry and the index is cut
//! there; recovery rebuilds what is missing from the log itself.

use crate::appender::Appender;

/// Bytes of one entry on disk.
pub const ENTRY_LEN: usize = 20;

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Batch base offset minus the segment's base offset.
    pub offset_delta: u32,
    /// File position of that batch.
    pub position: u32,
    /// Largest timestamp of all batches up to and including that batch.
    pub max_timestamp: i64,
}

impl IndexEntry {
    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0..4].copy_from_slice(&self.offset_delta.to_be_bytes());
        out[4..8].copy_from_slice(&self.position.to_be_bytes());
        out[8..16].copy_from_slice(&self.max_timestamp.to_be_bytes());
        let crc = crc32fast::hash(&out[..16]);
        out[16..20].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8; ENTRY_LEN]) -> Option<IndexEntry> {
        let field = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if crc32fast::hash(&bytes[..16]) != field(16) {
            return None;
        }
        let mut timestamp = [0u8; 8];
        timestamp.copy_from_slice(&bytes[8..16]);
        Some(IndexEntry {
            offset_delta: field(0),
            position: field(4),
            max_timestamp: i64::from_be_bytes(timestamp),
        })
    }
}

/// Decodes the longest valid prefix of an index file: entries with good
/// CRCs, strictly increasing offsets and positions, non-decreasing timestamps.
pub fn decode_prefix(bytes: &[u8]) -> Vec<IndexEntry> {
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / ENTRY_LEN);
    for raw in bytes.chunks_exact(ENTRY_LEN) {
        let Some(entry) = raw.try_into().ok().and_then(IndexEntry::decode) else {
            break;
        };
        if let Some(last) = entries.last() {
            let ordered = entry.offset_delta > last.offset_delta
                && entry.position > last.position
                && entry.max_timestamp >= last.max_timestamp;
            if !ordered {
                break;
            }
        }
        entries.push(entry);
    }
    entries
}

/// A segment's index: all entries in memory, appended to its file.
///
/// An entry reaches the file only once its batch is written
/// ([`Index::file_below`]): recovery trusts the log up to the last entry on
/// disk (less one write's worth), and writes complete out of order, so an
/// entry past a write still in flight could point beyond a hole.
pub struct Index {
    entries: Vec<IndexEntry>,
    /// The first `filed` entries are staged in `file` (or written).
    filed: usize,
    file: Appender,
}

/// Entries staged before the index is worth a write: one block's worth.
const FLUSH_ENTRIES: usize = 4096 / ENTRY_LEN;

impl Index {
    /// An index over `entries`, whose file already holds exactly them.
    pub fn new(entries: Vec<IndexEntry>, file: Appender) -> Index {
        assert_eq!(file.len(), (entries.len() * ENTRY_LEN) as u64);
        let filed = entries.len();
        Index {
            entries,
            filed,
            file,
        }
    }

    /// Adds an entry after the last one, in memory; [`Index::file_below`]
    /// stages it for the file.
    pub fn push(&mut self, entry: IndexEntry) {
        if let Some(last) = self.entries.last() {
            assert!(entry.offset_delta > last.offset_delta && entry.position > last.position);
            debug_assert!(entry.max_timestamp >= last.max_timestamp);
        }
        self.entries.push(entry);
    }

    /// Stages for the file the entries of batches that start below log
    /// position `position`: pass the log's written length (batches end
    /// where the next starts, so those are written whole), or `u64::MAX`
    /// for all.
    pub fn file_below(&mut self, position: u64) {
        while let Some(entry) = self.entries.get(self.filed) {
            if u64::from(entry.position) >= position {
                break;
            }
            self.file
                .reserve(ENTRY_LEN)
                .1
                .copy_from_slice(&entry.encode());
            self.filed += 1;
        }
        debug_assert_eq!(self.file.len(), (self.filed * ENTRY_LEN) as u64);
    }

    /// All entries.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// The last entry at or before `offset_delta`.
    pub fn floor_offset(&self, offset_delta: u32) -> Option<IndexEntry> {
        let after = self
            .entries
            .partition_point(|e| e.offset_delta <= offset_delta);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry whose batches all have timestamps below `timestamp`:
    /// a search for the first record at or after `timestamp` may skip to it.
    pub fn floor_timestamp(&self, timestamp: i64) -> Option<IndexEntry> {
        let after = self
            .entries
            .partition_point(|e| e.max_timestamp < timestamp);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops the entries of batches at or after `offset_delta` and cuts
    /// the file's appender after the last one kept; see [`Appender::cut`].
    pub fn cut(&mut self, offset_delta: u32) {
        let kept = self
            .entries
            .partition_point(|e| e.offset_delta < offset_delta);
        self.entries.truncate(kept);
        self.filed = self.filed.min(kept);
        let len = self.filed * ENTRY_LEN;
        let block_start = crate::appender::align_down(len as u64) as usize;
        // The cut block's bytes, encoded again from the entries in memory
        // (some may not be written yet).
        let first = block_start / ENTRY_LEN;
        let encoded: Vec<u8> = self.entries[first..self.filed]
            .iter()
            .flat_map(|e| e.encode())
            .collect();
        let skip = block_start - first * ENTRY_LEN;
        self.file.cut(len as u64, &encoded[skip..]);
    }

    /// True when enough entries are staged to be worth a write.
    pub fn flush_due(&self) -> bool {
        self.file.len() - self.file.len_written() >= (FLUSH_ENTRIES * ENTRY_LEN) as u64
    }

    /// The index file's appender.
    pub fn file(&self) -> &Appender {
        &self.file
    }

    /// The index file's appender, to flush or cut it.
    pub fn file_mut(&mut self) -> &mut Appender {
        &mut self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset_delta: u32, position: u32, max_timestamp: i64) -> IndexEntry {
        IndexEntry {
            offset_delta,
            position,
            max_timestamp,
        }
    }

    #[test]
    fn decodes_the_valid_prefix_only() {
        let good = [entry(3, 4096, 10), entry(9, 8200, 10), entry(20, 12500, 15)];
        let mut bytes: Vec<u8> = good.iter().flat_map(|e| e.encode()).collect();
        assert_eq!(decode_prefix(&bytes), good);

        // A torn last entry, a zeroed tail and a flipped bit all cut the index there.
        assert_eq!(decode_prefix(&bytes[..bytes.len() - 3]), good[..2]);
        let mut zeroed = bytes.clone();
        zeroed.extend_from_slice(&[0u8; 40]);
        assert_eq!(decode_prefix(&zeroed), good);
        bytes[ENTRY_LEN + 5] ^= 0x10;
        assert_eq!(decode_prefix(&bytes), good[..1]);

        // Entries out of order are as bad as a bad CRC.
        let disordered: Vec<u8> = [entry(9, 8200, 10), entry(3, 9000, 11)]
            .iter()
            .flat_map(|e| e.encode())
            .collect();
        assert_eq!(decode_prefix(&disordered), [entry(9, 8200, 10)]);
    }
}
