//! Idempotent producers' state in one partition (Kafka's
//! `ProducerStateManager`, KIP-98 and KIP-360): per producer id its epoch,
//! its last batches (sequences and offsets: the [`BATCHES_RETAINED`]
//! newest, and on a replicated log those a cut may still remove) and the
//! timestamp of the last one. A pure data structure: the broker
//! checks a batch against it ([`ProducerTable::check`]) and records the
//! batches its log takes ([`ProducerTable::apply`]), in log order; the
//! snapshot files and the rebuild from the log are in
//! [`crate::producer_snapshot`].
//!
//! The rules, as Kafka's leader applies them:
//! - an epoch below the producer's → [`SequenceError::StaleEpoch`]
//!   (`INVALID_PRODUCER_EPOCH`): an older incarnation, fenced;
//! - the same epoch and the sequences of one of its
//!   [`BATCHES_RETAINED`] newest batches → a duplicate, answered with the
//!   offsets it was first written at;
//! - the same epoch, next sequence → appended; any other sequence →
//!   [`SequenceError::OutOfOrder`] (`OUT_OF_ORDER_SEQUENCE_NUMBER`);
//! - a higher epoch must start at sequence 0 (else out of order);
//! - a producer the table does not know is taken at any sequence: Kafka
//!   ≥ 2.5 does the same (`ProducerAppendInfo.checkSequence`: "if there is
//!   no current producer epoch (possibly because all producer records have
//!   been deleted due to retention …) accept writes with any sequence
//!   number"), and no longer answers `UNKNOWN_PRODUCER_ID` for it.
//!
//! Sequences wrap from `i32::MAX` to 0, as Kafka's do.
//!
//! A replicated log may be cut back to its commit point (Raft truncates an
//! uncommitted tail). Kafka reloads the producer state from a snapshot and
//! the log below the cut; this table instead keeps, per producer, every
//! batch a cut may still remove (at or past the `committed` offset
//! [`ProducerTable::apply`] is given) and the [`BATCHES_RETAINED`] newest
//! below it, so [`ProducerTable::truncate`] at or past that offset leaves
//! exactly the state the log below the cut gives — synchronously, with no
//! read of the log that appends after the cut would race. What it keeps
//! past the commit point is capped at [`UNCOMMITTED_MAX`] batches a
//! producer (followers far behind and a producer sending without waiting
//! for them): past that the oldest go, and a cut that deep may forget the
//! producer, which is then taken at any sequence.

use fjord_core::Batch;
use std::collections::{BTreeMap, VecDeque};

/// Batches kept per producer for duplicate detection: Kafka's, matching
/// the producer's `max.in.flight.requests.per.connection` ceiling of 5.
pub const BATCHES_RETAINED: usize = 5;
/// Batches kept per producer in all, past the commit point included: a
/// producer's state stays within 32 KiB however far commits lag.
pub const UNCOMMITTED_MAX: usize = 1024;
/// Snapshot encoding version.
const ENCODING_VERSION: u8 = 1;

/// The producer fields of a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    /// Producer id (>= 0).
    pub producer_id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Sequence of the last record (wrapped).
    pub last_seq: i32,
    /// The batch's max timestamp (Kafka's `lastTimestamp`).
    pub timestamp: i64,
}

impl ProducerBatch {
    /// The producer fields of the batch at the start of `bytes`; `None`
    /// for a producer without an id (one read and a branch) or bytes that
    /// do not frame a batch.
    pub fn peek(bytes: &[u8]) -> Option<ProducerBatch> {
        if fjord_core::batch::peek_producer_id(bytes) < 0 {
            return None;
        }
        Self::of(&Batch::parse(bytes).ok()?)
    }

    /// The producer fields of `batch`; `None` for a batch of a producer
    /// without an id (id -1) or a control batch.
    pub fn of(batch: &Batch<'_>) -> Option<ProducerBatch> {
        let producer_id = batch.producer_id();
        if producer_id < 0 || batch.is_control() {
            return None;
        }
        let first_seq = batch.base_sequence();
        Some(ProducerBatch {
            producer_id,
            epoch: batch.producer_epoch(),
            first_seq,
            last_seq: seq_add(first_seq, batch.last_offset_delta()),
            timestamp: batch.max_timestamp(),
        })
    }
}

/// `seq + delta`, wrapping past `i32::MAX` to 0 (Kafka's
/// `DefaultRecordBatch.incrementSequence`).
pub fn seq_add(seq: i32, delta: i32) -> i32 {
    debug_assert!(seq >= 0 && delta >= 0);
    if seq > i32::MAX - delta {
        delta - (i32::MAX - seq) - 1
    } else {
        seq + delta
    }
}

/// One batch a producer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// Epoch it was written under.
    pub epoch: i16,
    /// First and last sequence.
    pub first_seq: i32,
    /// Last sequence.
    pub last_seq: i32,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
}

/// What the table knows of one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    /// The newest epoch seen.
    pub epoch: i16,
    /// Its last batches, oldest first; never empty: at least the
    /// [`BATCHES_RETAINED`] newest below the commit point and every one
    /// past it (up to [`UNCOMMITTED_MAX`]); more until the next settle.
    pub batches: VecDeque<BatchMeta>,
    /// Max timestamp of its last batch, for expiry.
    pub last_timestamp: i64,
}

/// What to do with a batch that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: append it, then [`ProducerTable::apply`] it.
    Append,
    /// Already in the log: answer with its offsets, append nothing.
    Duplicate {
        /// Where it was written first.
        base_offset: u64,
        /// Its last record's offset.
        last_offset: u64,
    },
}

/// Why a batch is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// Not the next sequence of the producer (`OUT_OF_ORDER_SEQUENCE_NUMBER`).
    #[error("producer {producer_id}: sequence {got}, expected {expected}")]
    OutOfOrder {
        /// The producer.
        producer_id: i64,
        /// The batch's first sequence.
        got: i32,
        /// What would have been in order.
        expected: i32,
    },
    /// An epoch older than the producer's (`INVALID_PRODUCER_EPOCH`).
    #[error("producer {producer_id}: epoch {got} is older than {current}")]
    StaleEpoch {
        /// The producer.
        producer_id: i64,
        /// The batch's epoch.
        got: i16,
        /// The newest epoch seen.
        current: i16,
    },
}

/// Every producer's state in one partition, by producer id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerTable {
    producers: BTreeMap<i64, ProducerEntry>,
}

impl ProducerTable {
    /// An empty table.
    pub fn new() -> ProducerTable {
        ProducerTable::default()
    }

    /// Producers known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// No producer known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// A producer's state.
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Checks a batch against the producer's state; changes nothing.
    pub fn check(&self, batch: &ProducerBatch) -> Result<Verdict, SequenceError> {
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            return Ok(Verdict::Append);
        };
        let out_of_order = |expected| SequenceError::OutOfOrder {
            producer_id: batch.producer_id,
            got: batch.first_seq,
            expected,
        };
        if batch.epoch < entry.epoch {
            return Err(SequenceError::StaleEpoch {
                producer_id: batch.producer_id,
                got: batch.epoch,
                current: entry.epoch,
            });
        }
        if batch.epoch > entry.epoch {
            return match batch.first_seq {
                0 => Ok(Verdict::Append),
                _ => Err(out_of_order(0)),
            };
        }
        // Kafka's window: only the newest batches are duplicates.
        if let Some(b) = entry.batches.iter().rev().take(BATCHES_RETAINED).find(|b| {
            b.epoch == batch.epoch && b.first_seq == batch.first_seq && b.last_seq == batch.last_seq
        }) {
            return Ok(Verdict::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            });
        }
        // Same epoch: the newest batch is of this epoch (epochs only grow).
        let last = entry.batches.back().map_or(-1, |b| b.last_seq);
        let expected = if last < 0 { 0 } else { seq_add(last, 1) };
        if batch.first_seq == expected {
            Ok(Verdict::Append)
        } else {
            Err(out_of_order(expected))
        }
    }

    /// Records a batch the log took at `base_offset..=last_offset`. Called
    /// in log order, for every batch of a producer, checked or not (a
    /// follower's batches were checked by its leader). No cut will come
    /// below `committed` (`u64::MAX` for a log that is never cut).
    pub fn apply(
        &mut self,
        batch: &ProducerBatch,
        base_offset: u64,
        last_offset: u64,
        committed: u64,
    ) {
        assert!(base_offset <= last_offset, "a batch spans its offsets");
        let meta = BatchMeta {
            epoch: batch.epoch,
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            base_offset,
            last_offset,
        };
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.epoch,
                batches: VecDeque::with_capacity(BATCHES_RETAINED),
                last_timestamp: batch.timestamp,
            });
        // The table follows the log: offsets only grow.
        assert!(
            entry
                .batches
                .back()
                .is_none_or(|b| b.last_offset < base_offset),
            "producer {} batch at {base_offset} applied out of log order",
            batch.producer_id
        );
        // Older epochs' batches stay: a cut of the new epoch's batches
        // brings the producer back to where it was.
        entry.epoch = entry.epoch.max(batch.epoch);
        entry.batches.push_back(meta);
        entry.last_timestamp = batch.timestamp;
        settle(&mut entry.batches, committed);
    }

    /// Drops the batches no cut at or past `committed` can bring back into
    /// the window: all but the [`BATCHES_RETAINED`] newest below it. Bounds
    /// what producers that stopped writing hold while the commit point
    /// moves on without them.
    pub fn settle(&mut self, committed: u64) {
        for entry in self.producers.values_mut() {
            settle(&mut entry.batches, committed);
        }
    }

    /// Forgets every batch at or past `end` (a log cut there): a
    /// producer's epoch goes back to that of its last batch kept, and a
    /// producer with none left is forgotten. Its batches and epoch are
    /// exact — the state the log below `end` gives — when `end` is at or
    /// past every `committed` the batches were applied with (its last
    /// timestamp stays that of the batch cut: it only delays expiry).
    pub fn truncate(&mut self, end: u64) {
        self.producers.retain(|_, entry| {
            entry.batches.retain(|b| b.base_offset < end);
            match entry.batches.back() {
                Some(last) => {
                    entry.epoch = last.epoch;
                    true
                }
                None => false,
            }
        });
    }

    /// Drops producers whose last batch is older than `max_age_ms` at
    /// `now_ms` (`producer.id.expiration.ms`); how many went.
    pub fn expire(&mut self, now_ms: i64, max_age_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp) < max_age_ms);
        before - self.producers.len()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.producers.clear();
    }

    /// The table's bytes for a snapshot (little-endian, versioned); it
    /// holds no cut-able batches ([`ProducerTable::settle`]d at its end).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.producers.len() * 64);
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        for (id, e) in &self.producers {
            assert!(
                e.batches.len() <= BATCHES_RETAINED,
                "producer {id}: a snapshot of an unsettled table"
            );
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&e.epoch.to_le_bytes());
            out.extend_from_slice(&e.last_timestamp.to_le_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.epoch.to_le_bytes());
                out.extend_from_slice(&b.first_seq.to_le_bytes());
                out.extend_from_slice(&b.last_seq.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
            }
        }
        out
    }

    /// A table from [`ProducerTable::encode`]'s bytes; why not, if they do
    /// not decode (bounds are checked: the bytes come from disk).
    pub fn decode(bytes: &[u8]) -> Result<ProducerTable, String> {
        let mut r = Reader(bytes);
        let version = r.take::<1>()?[0];
        if version != ENCODING_VERSION {
            return Err(format!("producer state version {version}"));
        }
        let count = u32::from_le_bytes(r.take()?);
        let mut producers = BTreeMap::new();
        for _ in 0..count {
            let id = i64::from_le_bytes(r.take()?);
            let epoch = i16::from_le_bytes(r.take()?);
            let last_timestamp = i64::from_le_bytes(r.take()?);
            let n = usize::from(r.take::<1>()?[0]);
            if n == 0 || n > BATCHES_RETAINED || id < 0 {
                return Err(format!("producer {id} with {n} batches"));
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMeta {
                    epoch: i16::from_le_bytes(r.take()?),
                    first_seq: i32::from_le_bytes(r.take()?),
                    last_seq: i32::from_le_bytes(r.take()?),
                    base_offset: u64::from_le_bytes(r.take()?),
                    last_offset: u64::from_le_bytes(r.take()?),
                });
            }
            producers.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_timestamp,
                },
            );
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the producer state", r.0.len()));
        }
        Ok(ProducerTable { producers })
    }
}

/// Keeps every batch at or past `committed` and the [`BATCHES_RETAINED`]
/// newest below it (batches lie in offset order), [`UNCOMMITTED_MAX`] in
/// all; gives back the memory of a list that was long.
fn settle(batches: &mut VecDeque<BatchMeta>, committed: u64) {
    let below = batches.partition_point(|b| b.base_offset < committed);
    let over = batches.len().saturating_sub(UNCOMMITTED_MAX);
    batches.drain(..below.saturating_sub(BATCHES_RETAINED).max(over));
    if batches.capacity() > 4 * BATCHES_RETAINED.max(batches.len()) {
        batches.shrink_to(2 * BATCHES_RETAINED.max(batches.len()));
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or("producer state truncated")?;
        self.0 = rest;
        Ok(*head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: i64, epoch: i16, first_seq: i32, records: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: id,
            epoch,
            first_seq,
            last_seq: seq_add(first_seq, records - 1),
            timestamp: 1_000,
        }
    }

    /// Checks and applies `b` at `offset` as the leader would.
    fn write(
        t: &mut ProducerTable,
        b: ProducerBatch,
        offset: u64,
    ) -> Result<Verdict, SequenceError> {
        let verdict = t.check(&b)?;
        if verdict == Verdict::Append {
            let count = u64::from(b.last_seq.wrapping_sub(b.first_seq) as u32) + 1;
            t.apply(&b, offset, offset + count - 1, u64::MAX);
        }
        Ok(verdict)
    }

    #[test]
    fn in_order_batches_append_and_a_gap_is_out_of_order() {
        let mut t = ProducerTable::new();
        assert_eq!(write(&mut t, batch(7, 0, 0, 3), 0), Ok(Verdict::Append));
        assert_eq!(write(&mut t, batch(7, 0, 3, 2), 3), Ok(Verdict::Append));
        assert_eq!(
            write(&mut t, batch(7, 0, 6, 1), 5),
            Err(SequenceError::OutOfOrder {
                producer_id: 7,
                got: 6,
                expected: 5
            })
        );
    }

    #[test]
    fn a_duplicate_of_the_last_five_answers_its_first_offsets() {
        let mut t = ProducerTable::new();
        for i in 0..7 {
            write(&mut t, batch(1, 0, i * 2, 2), 100 + i as u64 * 2).unwrap();
        }
        // Batches 2..=6 are retained; 0 and 1 fell out.
        assert_eq!(
            t.check(&batch(1, 0, 4, 2)),
            Ok(Verdict::Duplicate {
                base_offset: 104,
                last_offset: 105
            })
        );
        assert_eq!(
            t.check(&batch(1, 0, 12, 2)),
            Ok(Verdict::Duplicate {
                base_offset: 112,
                last_offset: 113
            })
        );
        assert!(matches!(
            t.check(&batch(1, 0, 2, 2)),
            Err(SequenceError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn epochs_fence_and_a_new_epoch_starts_at_zero() {
        let mut t = ProducerTable::new();
        write(&mut t, batch(1, 3, 0, 1), 0).unwrap();
        write(&mut t, batch(1, 3, 1, 1), 1).unwrap();
        assert!(matches!(
            t.check(&batch(1, 2, 2, 1)),
            Err(SequenceError::StaleEpoch { current: 3, .. })
        ));
        assert!(matches!(
            t.check(&batch(1, 4, 5, 1)),
            Err(SequenceError::OutOfOrder { expected: 0, .. })
        ));
        assert_eq!(write(&mut t, batch(1, 4, 0, 1), 2), Ok(Verdict::Append));
        // The old epoch is fenced now, even for what was once in order.
        assert!(matches!(
            t.check(&batch(1, 3, 2, 1)),
            Err(SequenceError::StaleEpoch { .. })
        ));
        // Its batches are no duplicates under the new epoch.
        assert_eq!(t.check(&batch(1, 4, 1, 1)), Ok(Verdict::Append));
        assert_eq!(
            t.check(&batch(1, 4, 0, 1)),
            Ok(Verdict::Duplicate {
                base_offset: 2,
                last_offset: 2
            })
        );
    }

    #[test]
    fn an_unknown_producer_is_taken_at_any_sequence() {
        let t = ProducerTable::new();
        assert_eq!(t.check(&batch(9, 0, 42, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(seq_add(i32::MAX, 0), i32::MAX);
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(i32::MAX - 1, 3), 1);
        let mut t = ProducerTable::new();
        write(&mut t, batch(1, 0, i32::MAX - 1, 2), 0).unwrap();
        assert_eq!(write(&mut t, batch(1, 0, 0, 2), 2), Ok(Verdict::Append));
        let crossing = batch(1, 0, i32::MAX, 3);
        assert_eq!(crossing.last_seq, 1);
    }

    #[test]
    fn truncation_forgets_the_cut_batches_and_their_epoch() {
        let mut t = ProducerTable::new();
        write(&mut t, batch(1, 0, 0, 1), 0).unwrap();
        write(&mut t, batch(2, 0, 0, 1), 1).unwrap();
        write(&mut t, batch(1, 1, 0, 1), 2).unwrap();
        t.truncate(2);
        assert_eq!(t.get(1).unwrap().epoch, 0);
        assert_eq!(t.check(&batch(1, 0, 1, 1)), Ok(Verdict::Append));
        t.truncate(1);
        assert!(t.get(2).is_none());
        t.truncate(0);
        assert!(t.is_empty());
    }

    /// A cut at or past the commit point leaves exactly the state the
    /// batches below it give, however many a producer wrote past it (Raft
    /// cuts a replica's uncommitted tail; the five newest batches may all
    /// lie in it).
    #[test]
    fn a_cut_past_the_commit_point_leaves_what_the_log_below_gives() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        for _ in 0..500 {
            let mut t = ProducerTable::new();
            let mut written = Vec::new();
            let (mut epochs, mut seqs) = ([0i16; 3], [0i32; 3]);
            let mut committed = 0;
            for offset in 0..rng.gen_range(1..40u64) {
                let id = rng.gen_range(0..3);
                if rng.gen_ratio(1, 10) {
                    (epochs[id], seqs[id]) = (epochs[id] + 1, 0);
                }
                let b = batch(id as i64, epochs[id], seqs[id], 1);
                seqs[id] += 1;
                committed = rng.gen_range(committed..=offset);
                t.apply(&b, offset, offset, committed);
                written.push(b);
            }
            let end = rng.gen_range(committed..=written.len() as u64);
            t.truncate(end);
            t.settle(end);
            let mut below = ProducerTable::new();
            for (offset, b) in written.iter().enumerate().take(end as usize) {
                below.apply(b, offset as u64, offset as u64, u64::MAX);
            }
            assert_eq!(t, below, "cut at {end}, committed {committed}");
        }
    }

    #[test]
    fn a_duplicate_is_one_of_the_five_newest_past_the_commit_point_too() {
        let mut t = ProducerTable::new();
        for seq in 0..8 {
            t.apply(&batch(1, 0, seq, 1), seq as u64, seq as u64, 0);
        }
        assert_eq!(t.get(1).unwrap().batches.len(), 8, "all may be cut");
        assert!(matches!(
            t.check(&batch(1, 0, 2, 1)),
            Err(SequenceError::OutOfOrder { expected: 8, .. })
        ));
        assert!(matches!(
            t.check(&batch(1, 0, 3, 1)),
            Ok(Verdict::Duplicate { base_offset: 3, .. })
        ));
        t.settle(8);
        assert_eq!(t.get(1).unwrap().batches.len(), BATCHES_RETAINED);
    }

    #[test]
    fn what_waits_for_commits_is_capped_and_its_memory_given_back() {
        let mut t = ProducerTable::new();
        let count = UNCOMMITTED_MAX as i32 + 10;
        for seq in 0..count {
            t.apply(&batch(1, 0, seq, 1), seq as u64, seq as u64, 0);
        }
        let kept = &t.get(1).unwrap().batches;
        assert_eq!(kept.len(), UNCOMMITTED_MAX);
        assert_eq!(kept.front().unwrap().base_offset, 10, "the oldest went");
        t.settle(count as u64);
        let kept = &t.get(1).unwrap().batches;
        assert_eq!(kept.len(), BATCHES_RETAINED);
        assert!(
            kept.capacity() <= 4 * BATCHES_RETAINED,
            "{}",
            kept.capacity()
        );
    }

    #[test]
    fn producers_silent_too_long_expire() {
        let mut t = ProducerTable::new();
        write(&mut t, batch(1, 0, 0, 1), 0).unwrap();
        let mut late = batch(2, 0, 0, 1);
        late.timestamp = 5_000;
        write(&mut t, late, 1).unwrap();
        assert_eq!(t.expire(5_500, 1_000), 1);
        assert!(t.get(1).is_none() && t.get(2).is_some());
    }

    #[test]
    fn encoding_round_trips_and_refuses_damage() {
        let mut t = ProducerTable::new();
        for i in 0..8 {
            write(&mut t, batch(i % 3, 1, (i / 3) as i32, 1), i as u64).unwrap();
        }
        let bytes = t.encode();
        assert_eq!(ProducerTable::decode(&bytes), Ok(t));
        assert!(ProducerTable::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(ProducerTable::decode(&[]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(ProducerTable::decode(&extra).is_err());
    }

    #[test]
    #[should_panic(expected = "out of log order")]
    fn applying_out_of_log_order_is_a_bug() {
        let mut t = ProducerTable::new();
        t.apply(&batch(1, 0, 0, 1), 5, 5, u64::MAX);
        t.apply(&batch(1, 0, 1, 1), 3, 3, u64::MAX);
    }
}
