//! A leader's newest entries as it proposed them, so that sending them to
//! its followers does not read them back from the log: a staged batch read
//! back is copied out of the staging area, once per follower.
//!
//! Only a run of the current term's data entries is kept, contiguous, up to
//! the commit (a follower that needs an entry below it reads the log), at
//! most [`BYTES_MAX`] per leader and [`SHARD_BYTES_MAX`] over a shard's
//! leaders (followers away, `acks=1` producers go on: nothing commits).
//! A leader never changes its log within its term, so an entry kept in the
//! term a read is for is the log's entry.

use fjord_replication::raft::{Offset, Term};
use fjord_storage::BatchSlice;
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

/// Bytes kept per leader: a few rounds of replication at full speed.
const BYTES_MAX: usize = 8 << 20;
/// Bytes kept over every leader of a shard.
const SHARD_BYTES_MAX: usize = 64 << 20;

thread_local! {
    /// Bytes kept by this thread's (shard's) leaders.
    static SHARD_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// One kept entry: its batch, base offset and leader epoch set.
struct Kept {
    offset: Offset,
    end: Offset,
    batch: Rc<Vec<u8>>,
}

/// The kept entries of one replica.
#[derive(Default)]
pub struct Recent {
    term: Term,
    entries: VecDeque<Kept>,
    bytes: usize,
}

impl Recent {
    /// Keeps the entry `offset..end` of `term`, whose batch is `batch`. One
    /// that does not follow the last kept starts the run afresh.
    pub fn push(&mut self, term: Term, offset: Offset, end: Offset, batch: Rc<Vec<u8>>) {
        debug_assert!(offset < end);
        if term != self.term || self.entries.back().is_some_and(|k| k.end != offset) {
            self.clear();
            self.term = term;
        }
        while !self.entries.is_empty() && self.bytes + batch.len() > BYTES_MAX {
            self.pop_front();
        }
        if SHARD_BYTES.get() + batch.len() > SHARD_BYTES_MAX {
            // Not kept: the run ends here, the log serves what follows.
            self.clear();
            return;
        }
        self.bytes += batch.len();
        SHARD_BYTES.set(SHARD_BYTES.get() + batch.len());
        self.entries.push_back(Kept { offset, end, batch });
    }

    /// Forgets the entries below `commit`.
    pub fn forget_below(&mut self, commit: Offset) {
        while self.entries.front().is_some_and(|k| k.end <= commit) {
            self.pop_front();
        }
    }

    /// Forgets everything: leadership moved.
    pub fn clear(&mut self) {
        SHARD_BYTES.set(SHARD_BYTES.get() - self.bytes);
        self.entries.clear();
        self.bytes = 0;
    }

    /// The kept batches of `term` from `from`, below `end`, at most
    /// `max_bytes` of them but at least one; `None` unless an entry kept
    /// for that term starts at `from`.
    pub fn read(
        &self,
        term: Term,
        from: Offset,
        end: Offset,
        max_bytes: usize,
    ) -> Option<Vec<BatchSlice>> {
        if term != self.term {
            return None;
        }
        // Kept in offset order, contiguous: a search, not a walk (small
        // batches make thousands of entries).
        let first = self
            .entries
            .binary_search_by_key(&from, |k| k.offset)
            .ok()?;
        let mut slices = Vec::new();
        let mut bytes = 0;
        for kept in self.entries.range(first..) {
            let full = !slices.is_empty() && bytes + kept.batch.len() > max_bytes;
            if kept.offset >= end || full {
                break;
            }
            bytes += kept.batch.len();
            slices.push(BatchSlice::shared(Rc::clone(&kept.batch)));
        }
        (!slices.is_empty()).then_some(slices)
    }

    fn pop_front(&mut self) {
        if let Some(kept) = self.entries.pop_front() {
            self.bytes -= kept.batch.len();
            SHARD_BYTES.set(SHARD_BYTES.get() - kept.batch.len());
        }
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(len: usize) -> Rc<Vec<u8>> {
        Rc::new(vec![7; len])
    }

    #[test]
    fn reads_a_run_of_the_term_from_an_entry_start() {
        let mut recent = Recent::default();
        recent.push(2, 10, 13, batch(100));
        recent.push(2, 13, 14, batch(50));
        recent.push(2, 14, 20, batch(300));
        let lens = |s: Option<Vec<BatchSlice>>| s.map(|s| s.iter().map(|b| b.len()).collect());
        assert_eq!(lens(recent.read(2, 13, 100, 1 << 20)), Some(vec![50, 300]));
        assert_eq!(lens(recent.read(2, 10, 14, 1 << 20)), Some(vec![100, 50]));
        // At least one, however small the budget.
        assert_eq!(lens(recent.read(2, 10, 100, 1)), Some(vec![100]));
        assert_eq!(lens(recent.read(2, 11, 100, 1 << 20)), None, "mid-entry");
        assert_eq!(lens(recent.read(3, 10, 100, 1 << 20)), None, "another term");
        recent.forget_below(14);
        assert_eq!(lens(recent.read(2, 10, 100, 1 << 20)), None);
        assert_eq!(lens(recent.read(2, 14, 100, 1 << 20)), Some(vec![300]));
        // A gap (an entry not kept came between) starts afresh.
        recent.push(2, 21, 22, batch(10));
        assert_eq!(lens(recent.read(2, 14, 100, 1 << 20)), None);
        assert_eq!(lens(recent.read(2, 21, 100, 1 << 20)), Some(vec![10]));
    }

    #[test]
    fn holds_at_most_its_budget_and_the_shards() {
        let mut recent = Recent::default();
        for i in 0..40 {
            recent.push(1, i, i + 1, batch(1 << 20));
        }
        assert!(recent.bytes <= BYTES_MAX);
        assert!(recent.read(1, 0, 100, usize::MAX).is_none());
        assert!(recent.read(1, 39, 100, usize::MAX).is_some());
        // Many leaders of one shard share its budget; what they drop or
        // forget goes back to it.
        let mut leaders: Vec<Recent> = (0..20).map(|_| Recent::default()).collect();
        for (i, leader) in leaders.iter_mut().enumerate() {
            leader.push(1, 0, 1, batch(4 << 20));
            assert_eq!(leader.read(1, 0, 1, 1).is_some(), i < 14, "leader {i}");
        }
        assert_eq!(SHARD_BYTES.get(), SHARD_BYTES_MAX);
        drop(leaders);
        recent.forget_below(100);
        assert_eq!(SHARD_BYTES.get(), 0);
    }
}
