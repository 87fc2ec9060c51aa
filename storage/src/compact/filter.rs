//! The cleaner's two decisions, free of I/O: which offset is the newest of
//! each key (pass 1, the offset map) and what of a batch survives (pass 2).
//!
//! A compressed batch is judged as Kafka's cleaner judges one: its records
//! decompressed, and those kept compressed again with its codec. Batches the
//! cleaner must not or cannot judge record by record are kept whole and
//! never mapped: control batches (transaction markers, leader changes),
//! transactional ones (aborted transactions are not tracked, so a
//! transactional record must not hide an older committed value), and
//! damaged ones (records that do not decompress or decode, a rewrite that
//! does not check). Records without a key are kept: Kafka refuses them at
//! produce on a compacted topic, but a topic may have been switched to
//! `compact` with some in it.

use fjord_core::compression::decompressed_records;
use fjord_core::record::Records;
use fjord_core::{Batch, Compression};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;

/// Key hash -> newest offset of the key in the range mapped, bounded to
/// `keys_max` keys. Keys are hashed to 128 bits (two SipHash runs under
/// different prefixes; the map lives for one pass, so the hash need not be
/// stable across releases): a collision would drop a live record, and at
/// 2^-128 per pair it is as unlikely as Kafka's MD5.
pub(crate) struct OffsetMap {
    offsets: HashMap<u128, u64>,
    keys_max: usize,
}

fn hash(key: &[u8]) -> u128 {
    let half = |prefix: u8| {
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write_u8(prefix);
        hasher.write(key);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

impl OffsetMap {
    pub(crate) fn new(keys_max: usize) -> OffsetMap {
        assert!(keys_max > 0, "a map that holds no key makes no progress");
        OffsetMap {
            offsets: HashMap::new(),
            keys_max,
        }
    }

    /// Notes `offset` as the newest of `key`; false, noting nothing, when
    /// the key is new and the map full.
    fn put(&mut self, key: &[u8], offset: u64) -> bool {
        let full = self.offsets.len() >= self.keys_max;
        match self.offsets.entry(hash(key)) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                // Mapped in offset order; the larger wins all the same.
                let newest = e.get_mut();
                *newest = (*newest).max(offset);
                true
            }
            std::collections::hash_map::Entry::Vacant(_) if full => false,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(offset);
                true
            }
        }
    }

    fn newest(&self, key: &[u8]) -> Option<u64> {
        self.offsets.get(&hash(key)).copied()
    }

    /// Keys mapped.
    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }
}

/// Whether the cleaner judges this batch's records one by one.
fn judged(batch: &Batch<'_>) -> bool {
    !batch.is_control() && !batch.is_transactional()
}

/// The records section of `batch`, decompressed; `None` when it does not
/// decompress within the bound a batch may take (it is then kept whole).
fn records_section<'a>(batch: &Batch<'a>) -> Option<Cow<'a, [u8]>> {
    match batch.compression() {
        Compression::None => Some(Cow::Borrowed(batch.records_bytes())),
        _ => decompressed_records(batch, fjord_core::batch::BATCH_LEN_MAX)
            .ok()
            .map(Cow::Owned),
    }
}

/// What pass 1 gathers over the dirty range.
pub(crate) struct DirtyScan {
    pub(crate) map: OffsetMap,
    /// Producer id -> base offset of its last batch seen, for at most
    /// `keys_max` producers (past that, `producers_complete` is false and
    /// every emptied batch of an unknown producer is kept).
    pub(crate) producers: BTreeMap<i64, u64>,
    pub(crate) producers_complete: bool,
    /// Bytes of compressed batches' records decompressed since the caller
    /// last took them (see [`Tally::decompressed`]).
    pub(crate) decompressed: usize,
}

impl DirtyScan {
    pub(crate) fn new(keys_max: usize) -> DirtyScan {
        DirtyScan {
            map: OffsetMap::new(keys_max),
            producers: BTreeMap::new(),
            producers_complete: true,
            decompressed: 0,
        }
    }

    /// Maps the records of `batch` at or after `from`. `Some(offset)`: the
    /// map filled at `offset`, which is not mapped (nor anything after).
    pub(crate) fn map_batch(&mut self, batch: &Batch<'_>, from: u64) -> Option<u64> {
        if batch.producer_id() >= 0 {
            let base = batch.base_offset() as u64;
            if self.producers.len() < self.map.keys_max
                || self.producers.contains_key(&batch.producer_id())
            {
                self.producers.insert(batch.producer_id(), base);
            } else {
                self.producers_complete = false;
            }
        }
        if !judged(batch) {
            return None;
        }
        // Validated (CRC) when appended and again by recovery: records that
        // do not decode are left alone, unmapped.
        let section = records_section(batch)?;
        if batch.compression() != Compression::None {
            self.decompressed += section.len();
        }
        for record in Records::over(*batch, &section) {
            let Ok(record) = record else {
                return None;
            };
            let offset = record.offset as u64;
            let Some(key) = record.key else { continue };
            // A record whose offset lies outside its batch (the log does
            // not check records' offset deltas) is not mapped: kept.
            let inside = batch.base_offset() as u64..=batch.last_offset() as u64;
            if offset < from || !inside.contains(&offset) {
                continue;
            }
            if !self.map.put(key, offset) {
                return Some(offset);
            }
        }
        None
    }
}

/// Pass 2's rules for one segment.
pub(crate) struct Rules<'a> {
    pub(crate) scan: &'a DirtyScan,
    /// A batch kept whole without being judged (transactional, damaged)
    /// came before, in this pass over the log from its start: it may hold
    /// an older value of any key, which a tombstone must go on hiding, so
    /// no tombstone after it is dropped.
    pub(crate) unjudged_below: &'a std::cell::Cell<bool>,
    /// End of the mapped range: records at or past it are kept.
    pub(crate) offset_mapped_end: u64,
    /// The segment has been clean for `delete.retention.ms`: its
    /// tombstones go.
    pub(crate) drop_tombstones: bool,
    /// Batches left without records stay, empty (see
    /// `Compaction::keep_empty_batches`).
    pub(crate) keep_empty: bool,
    /// What judging took beyond the rules.
    pub(crate) tally: Tally,
}

/// What pass 2 counts as it judges.
#[derive(Default)]
pub(crate) struct Tally {
    /// Bytes of compressed batches' records decompressed since the caller
    /// last took them: its work between yields counts them, not only the
    /// bytes read from disk.
    pub(crate) decompressed: std::cell::Cell<usize>,
    /// Batches kept whole because they are damaged (records that do not
    /// decompress or decode, a rewrite that does not check or read back).
    pub(crate) damaged: std::cell::Cell<u64>,
}

/// What becomes of a batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Unchanged.
    Keep,
    /// Rewritten with fewer records (possibly none, for a producer's last
    /// batch), `removed` of them gone; `max_timestamp` is the rewritten
    /// batch's (the record that set the old one may be gone).
    Rewrite {
        bytes: Vec<u8>,
        removed: u64,
        max_timestamp: i64,
    },
    /// Gone with its `removed` records.
    Drop { removed: u64 },
}

impl Rules<'_> {
    fn keeps(&self, offset: u64, key: Option<&[u8]>, value: Option<&[u8]>) -> bool {
        let Some(key) = key else { return true };
        if offset >= self.offset_mapped_end {
            return true;
        }
        if self
            .scan
            .map
            .newest(key)
            .is_some_and(|newest| offset < newest)
        {
            return false;
        }
        !(value.is_none() && self.drop_tombstones && !self.unjudged_below.get())
    }

    /// A producer's last batch keeps its header even when emptied: the
    /// producer's sequence must survive for idempotence.
    fn keeps_header(&self, batch: &Batch<'_>) -> bool {
        let producer = batch.producer_id();
        if producer < 0 {
            return false;
        }
        let base = batch.base_offset() as u64;
        match self.scan.producers.get(&producer) {
            Some(&last) => last <= base,
            // Not seen in the dirty range: this may be its last batch.
            None => true,
        }
    }

    /// Decides what of `batch` survives.
    pub(crate) fn apply(&self, batch: &Batch<'_>) -> Outcome {
        if !judged(batch) {
            if !batch.is_control() {
                self.unjudged_below.set(true);
            }
            return Outcome::Keep;
        }
        let outcome = self.judge(batch);
        if outcome.is_none() {
            self.unjudged_below.set(true);
            self.tally.damaged.set(self.tally.damaged.get() + 1);
        }
        outcome.unwrap_or(Outcome::Keep)
    }

    /// [`Rules::apply`] for a batch judged; `None` when it turns out
    /// damaged, and is kept whole.
    fn judge(&self, batch: &Batch<'_>) -> Option<Outcome> {
        let section = records_section(batch)?;
        let compressed = batch.compression() != Compression::None;
        if compressed {
            let decompressed = &self.tally.decompressed;
            decompressed.set(decompressed.get() + section.len());
        }
        let mut records = Records::over(*batch, &section);
        let (mut kept, mut kept_bytes) = (0, Vec::new());
        let mut kept_max_timestamp = -1;
        let mut removed = 0u64;
        while let Some(next) = records.next_with_bytes() {
            let (record, raw) = next.ok()?;
            if self.keeps(record.offset as u64, record.key, record.value) {
                kept += 1;
                kept_bytes.extend_from_slice(raw);
                kept_max_timestamp = kept_max_timestamp.max(record.timestamp);
            } else {
                removed += 1;
            }
        }
        if removed == 0 {
            return Some(Outcome::Keep);
        }
        if kept == 0 && !self.keep_empty && !self.keeps_header(batch) {
            return Some(Outcome::Drop { removed });
        }
        let bytes = batch
            .with_records(kept, &kept_bytes, kept_max_timestamp)
            .ok()?;
        // Checked before it is written, as every batch of the log is: one
        // that does not check (the batch was damaged on disk in a way its
        // framing did not show) is kept as it was, untouched. Compressed
        // again, it is read back too: an encoder's fault must never
        // replace records with bytes no client can read.
        let again = Batch::validate(&bytes).ok()?;
        let whole = again.last_offset() == batch.last_offset()
            && (!compressed || records_section(&again)? == kept_bytes);
        whole.then_some(Outcome::Rewrite {
            max_timestamp: again.max_timestamp(),
            bytes,
            removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_core::BatchBuilder;
    use fjord_core::batch::set_base_offset;
    use std::cell::Cell;

    fn batch_at(base: i64, records: &[(Option<&str>, Option<&str>)], producer: i64) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        if producer >= 0 {
            builder = builder.producer(producer, 0, 0);
        }
        for (i, (key, value)) in records.iter().enumerate() {
            builder.push(
                i as i64,
                key.map(str::as_bytes),
                value.map(str::as_bytes),
                &[],
            );
        }
        let mut bytes = builder.build();
        set_base_offset(&mut bytes, base);
        bytes
    }

    fn parse(bytes: &[u8]) -> Batch<'_> {
        Batch::validate(bytes).expect("valid")
    }

    #[test]
    fn only_the_newest_of_each_key_survives() {
        let first = batch_at(0, &[(Some("a"), Some("1")), (Some("b"), Some("1"))], -1);
        let second = batch_at(2, &[(Some("a"), Some("2")), (None, Some("x"))], -1);
        let mut scan = DirtyScan::new(100);
        assert_eq!(scan.map_batch(&parse(&first), 0), None);
        assert_eq!(scan.map_batch(&parse(&second), 0), None);
        assert_eq!(scan.map.len(), 2);
        let rules = Rules {
            scan: &scan,
            unjudged_below: &Cell::new(false),
            offset_mapped_end: 4,
            drop_tombstones: false,
            keep_empty: false,
            tally: Tally::default(),
        };
        let Outcome::Rewrite { bytes, removed, .. } = rules.apply(&parse(&first)) else {
            panic!("a is superseded in the first batch");
        };
        assert_eq!(removed, 1);
        let rewritten = parse(&bytes);
        let keys: Vec<_> = rewritten
            .records()
            .expect("records")
            .map(|r| r.expect("record").offset)
            .collect();
        assert_eq!(keys, vec![1]);
        assert_eq!(
            rules.apply(&parse(&second)),
            Outcome::Keep,
            "newest and keyless"
        );
    }

    #[test]
    fn a_full_map_stops_and_records_past_its_end_are_kept() {
        let bytes = batch_at(
            0,
            &[
                (Some("a"), Some("1")),
                (Some("b"), Some("1")),
                (Some("a"), Some("2")),
            ],
            -1,
        );
        let mut scan = DirtyScan::new(1);
        assert_eq!(scan.map_batch(&parse(&bytes), 0), Some(1), "b does not fit");
        let rules = Rules {
            scan: &scan,
            unjudged_below: &Cell::new(false),
            offset_mapped_end: 1,
            drop_tombstones: false,
            keep_empty: false,
            tally: Tally::default(),
        };
        // Offset 0 is a's newest in the mapped range; 1 and 2 lie past it.
        assert_eq!(rules.apply(&parse(&bytes)), Outcome::Keep);
    }

    #[test]
    fn tombstones_go_only_when_expired_and_emptied_producer_batches_keep_the_last() {
        let tomb = batch_at(0, &[(Some("a"), None)], 9);
        let later = batch_at(1, &[(Some("b"), Some("1"))], 9);
        let mut scan = DirtyScan::new(10);
        scan.map_batch(&parse(&tomb), 0);
        let keep = Rules {
            scan: &scan,
            unjudged_below: &Cell::new(false),
            offset_mapped_end: 1,
            drop_tombstones: false,
            keep_empty: false,
            tally: Tally::default(),
        };
        assert_eq!(keep.apply(&parse(&tomb)), Outcome::Keep);
        let expire = Rules {
            drop_tombstones: true,
            ..keep
        };
        // Producer 9's last batch seen is this one: its header stays.
        let Outcome::Rewrite {
            bytes, removed: 1, ..
        } = expire.apply(&parse(&tomb))
        else {
            panic!("header kept");
        };
        assert_eq!(parse(&bytes).record_count(), 0);
        scan.map_batch(&parse(&later), 0);
        let expire = Rules {
            scan: &scan,
            unjudged_below: &Cell::new(false),
            offset_mapped_end: 2,
            drop_tombstones: true,
            keep_empty: false,
            tally: Tally::default(),
        };
        assert_eq!(expire.apply(&parse(&tomb)), Outcome::Drop { removed: 1 });
        // A replica's log keeps the emptied batch: no gap in its entries.
        let replica = Rules {
            keep_empty: true,
            ..expire
        };
        let Outcome::Rewrite {
            bytes, removed: 1, ..
        } = replica.apply(&parse(&tomb))
        else {
            panic!("emptied batch kept");
        };
        assert_eq!(parse(&bytes).record_count(), 0);
        assert_eq!(parse(&bytes).last_offset(), 0);
    }

    /// A compressed batch is judged as an uncompressed one: what it keeps
    /// comes back compressed with its codec, its max timestamp that of the
    /// records kept; emptied, it is a header, uncompressed.
    #[test]
    fn compressed_batches_are_cleaned_and_compressed_again() {
        use fjord_core::compression::compressed;
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut builder = BatchBuilder::new().producer(4, 0, 0);
            builder.push(10, Some(b"a"), Some(b"old"), &[]);
            builder.push(20, Some(b"b"), Some(b"kept"), &[]);
            builder.push(30, Some(b"c"), Some(b"old"), &[]);
            let first = builder.build_with(codec, |r| compressed(codec, r).unwrap());
            let later = batch_at(3, &[(Some("a"), Some("new")), (Some("c"), Some("new"))], -1);
            let mut scan = DirtyScan::new(10);
            assert_eq!(scan.map_batch(&parse(&first), 0), None);
            assert_eq!(scan.map_batch(&parse(&later), 0), None);
            assert_eq!(scan.map.len(), 3, "{codec:?}: the compressed keys mapped");
            let seen = Cell::new(false);
            let rules = Rules {
                scan: &scan,
                unjudged_below: &seen,
                offset_mapped_end: 5,
                drop_tombstones: true,
                keep_empty: false,
                tally: Tally::default(),
            };
            let Outcome::Rewrite {
                bytes, removed: 2, ..
            } = rules.apply(&parse(&first))
            else {
                panic!("{codec:?}: a and c are superseded");
            };
            assert!(!seen.get(), "{codec:?}: judged");
            let rewritten = parse(&bytes);
            assert_eq!(rewritten.compression(), codec);
            assert_eq!(rewritten.max_timestamp(), 20, "{codec:?}: b's");
            assert_eq!((rewritten.base_offset(), rewritten.last_offset()), (0, 2));
            let section = decompressed_records(&rewritten, 1 << 20).unwrap();
            let kept: Vec<(i64, i64, Option<&[u8]>)> = Records::over(rewritten, &section)
                .map(|r| r.map(|r| (r.offset, r.timestamp, r.value)))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(kept, [(1, 20, Some(&b"kept"[..]))], "{codec:?}");

            // b superseded too: producer 4's last batch keeps its header.
            let newest_b = batch_at(5, &[(Some("b"), Some("new"))], -1);
            let mut scan = DirtyScan::new(10);
            for batch in [&first, &later, &newest_b] {
                assert_eq!(scan.map_batch(&parse(batch), 0), None);
            }
            let rules = Rules {
                scan: &scan,
                offset_mapped_end: 6,
                ..rules
            };
            let Outcome::Rewrite {
                bytes, removed: 3, ..
            } = rules.apply(&parse(&first))
            else {
                panic!("{codec:?}: emptied, header kept");
            };
            let header = parse(&bytes);
            assert_eq!(header.record_count(), 0);
            assert_eq!(header.compression(), Compression::None);
        }
    }

    /// A compressed batch whose records do not decompress is kept as it
    /// is, and counts as one not judged: tombstones after it stay.
    #[test]
    fn a_compressed_batch_that_does_not_decompress_is_kept_whole() {
        let mut builder = BatchBuilder::new();
        builder.push(0, Some(b"a"), Some(b"1"), &[]);
        let damaged = builder.build_with(Compression::Gzip, |_| b"not gzip".to_vec());
        let scan = DirtyScan::new(10);
        let seen = Cell::new(false);
        let rules = Rules {
            scan: &scan,
            unjudged_below: &seen,
            offset_mapped_end: 1,
            drop_tombstones: true,
            keep_empty: false,
            tally: Tally::default(),
        };
        assert_eq!(rules.apply(&parse(&damaged)), Outcome::Keep);
        assert!(seen.get());
        assert_eq!(rules.tally.damaged.get(), 1, "counted for the report");
    }

    /// A value kept whole in a batch the cleaner does not judge (here a
    /// transactional one; a damaged one alike) is hidden by a later
    /// tombstone, which must then stay: dropping it once expired would
    /// bring the value back.
    #[test]
    fn tombstones_after_a_batch_kept_whole_stay() {
        let mut builder = BatchBuilder::new().producer(3, 0, 0).transactional(true);
        builder.push(0, Some(b"a"), Some(b"1"), &[]);
        let whole = builder.build();
        let tomb = batch_at(1, &[(Some("a"), None)], -1);
        let mut scan = DirtyScan::new(10);
        scan.map_batch(&parse(&whole), 0);
        scan.map_batch(&parse(&tomb), 0);
        let seen = Cell::new(false);
        let expire = Rules {
            scan: &scan,
            unjudged_below: &seen,
            offset_mapped_end: 2,
            drop_tombstones: true,
            keep_empty: false,
            tally: Tally::default(),
        };
        assert_eq!(expire.apply(&parse(&whole)), Outcome::Keep);
        assert!(seen.get());
        assert_eq!(
            expire.apply(&parse(&tomb)),
            Outcome::Keep,
            "a=1 would return"
        );
    }

    /// A record whose offset delta points outside its batch (the log does
    /// not check deltas) is not mapped, and nothing panics over it.
    #[test]
    fn a_record_outside_its_batch_is_not_mapped() {
        let mut bytes = batch_at(0, &[(Some("a"), Some("1"))], -1);
        // The record: length, attributes, timestamp delta, offset delta.
        assert_eq!(bytes[61 + 3], 0, "offset delta 0");
        bytes[61 + 3] = 10; // zigzag 5
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let mut scan = DirtyScan::new(10);
        assert_eq!(scan.map_batch(&parse(&bytes), 0), None);
        assert_eq!(scan.map.len(), 0);
    }
}
