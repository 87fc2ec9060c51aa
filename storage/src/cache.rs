//! The shard's cache of recently written batches, so that a fetch at the
//! tail is served from memory: the very buffers that were written, shared by
//! reference count.
//!
//! Eviction is first-in first-out under a byte budget: tail readers want the
//! newest batches, and batches written together leave together, which frees
//! whole buffers. A batch is charged its share of the buffer it lives in, so
//! the budget bounds the memory really held, not just the batch bytes.

use crate::slice::BatchSlice;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

/// Identifies one log's batches in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(u64);

struct Entry {
    last_offset: u64,
    slice: BatchSlice,
    charge: usize,
}

#[derive(Default)]
struct Inner {
    budget_bytes: usize,
    used_bytes: usize,
    keys_issued: u64,
    logs: HashMap<CacheKey, BTreeMap<u64, Entry>>,
    /// Insertion order; entries forgotten since are skipped when popped.
    order: VecDeque<(CacheKey, u64)>,
    entries: usize,
    /// Reads served from the cache, ever.
    hits: u64,
    /// Reads that found the batch at their offset not cached, ever.
    misses: u64,
}

/// A per-shard batch cache. Single-threaded: the shard owns it.
pub struct BatchCache {
    inner: RefCell<Inner>,
}

impl BatchCache {
    /// A cache that holds at most `budget_bytes`; zero disables it.
    pub fn new(budget_bytes: usize) -> Rc<BatchCache> {
        Rc::new(BatchCache {
            inner: RefCell::new(Inner {
                budget_bytes,
                ..Inner::default()
            }),
        })
    }

    /// Bytes charged to cached batches.
    pub fn used_bytes(&self) -> usize {
        self.inner.borrow().used_bytes
    }

    /// Reads served from the cache and reads that missed it, ever.
    pub fn hits_misses(&self) -> (u64, u64) {
        let inner = self.inner.borrow();
        (inner.hits, inner.misses)
    }

    /// A key for a new log.
    pub(crate) fn register(&self) -> CacheKey {
        let mut inner = self.inner.borrow_mut();
        inner.keys_issued += 1;
        CacheKey(inner.keys_issued)
    }

    /// Caches a written batch spanning `base_offset..=last_offset`.
    pub(crate) fn insert(
        &self,
        key: CacheKey,
        base_offset: u64,
        last_offset: u64,
        slice: BatchSlice,
        charge: usize,
    ) {
        let mut inner = self.inner.borrow_mut();
        if charge > inner.budget_bytes {
            return;
        }
        inner.used_bytes += charge;
        inner.entries += 1;
        inner.order.push_back((key, base_offset));
        let replaced = inner.logs.entry(key).or_default().insert(
            base_offset,
            Entry {
                last_offset,
                slice,
                charge,
            },
        );
        if let Some(old) = replaced {
            inner.used_bytes -= old.charge;
            inner.entries -= 1;
        }
        while inner.used_bytes > inner.budget_bytes {
            let Some((key, base)) = inner.order.pop_front() else {
                break;
            };
            inner.remove(key, base);
        }
        // Forgotten entries leave stale places in `order`; keep it bounded.
        if inner.order.len() > 2 * inner.entries + 1024 {
            let Inner { order, logs, .. } = &mut *inner;
            order.retain(|(key, base)| logs.get(key).is_some_and(|log| log.contains_key(base)));
        }
    }

    /// Cached batches from the one containing `offset`, contiguous, until
    /// `max_bytes` is reached (the first batch is returned whatever its
    /// size). Adjacent batches of one buffer come back as one slice. `None`
    /// when the batch containing `offset` is not cached.
    pub(crate) fn read(
        &self,
        key: CacheKey,
        offset: u64,
        max_bytes: usize,
    ) -> Option<(Vec<BatchSlice>, u64)> {
        let found = self.inner.borrow().read(key, offset, max_bytes);
        let mut inner = self.inner.borrow_mut();
        match found {
            Some(_) => inner.hits += 1,
            None => inner.misses += 1,
        }
        found
    }

    /// Drops a log's batches below `offset` (retention moved its start).
    pub(crate) fn forget_below(&self, key: CacheKey, offset: u64) {
        let mut inner = self.inner.borrow_mut();
        let Some(log) = inner.logs.get_mut(&key) else {
            return;
        };
        let kept = log.split_off(&offset);
        let dropped = std::mem::replace(log, kept);
        inner.used_bytes -= dropped.values().map(|e| e.charge).sum::<usize>();
        inner.entries -= dropped.len();
    }

    /// Drops a log's batches at or after `offset` (the log was truncated).
    pub(crate) fn forget_from(&self, key: CacheKey, offset: u64) {
        let mut inner = self.inner.borrow_mut();
        let Some(log) = inner.logs.get_mut(&key) else {
            return;
        };
        let dropped = log.split_off(&offset);
        inner.used_bytes -= dropped.values().map(|e| e.charge).sum::<usize>();
        inner.entries -= dropped.len();
    }

    /// Drops a log's batches based in `from..to` (a cleaning rewrote them).
    pub(crate) fn forget_range(&self, key: CacheKey, from: u64, to: u64) {
        let mut inner = self.inner.borrow_mut();
        let Some(log) = inner.logs.get_mut(&key) else {
            return;
        };
        let doomed: Vec<u64> = log.range(from..to).map(|(&base, _)| base).collect();
        for base in doomed {
            inner.remove(key, base);
        }
    }

    /// Drops all of a log's batches (the log closed or was deleted).
    pub(crate) fn forget(&self, key: CacheKey) {
        let mut inner = self.inner.borrow_mut();
        if let Some(log) = inner.logs.remove(&key) {
            inner.used_bytes -= log.values().map(|e| e.charge).sum::<usize>();
            inner.entries -= log.len();
        }
    }
}

impl Inner {
    fn remove(&mut self, key: CacheKey, base: u64) {
        if let Some(entry) = self.logs.get_mut(&key).and_then(|log| log.remove(&base)) {
            self.used_bytes -= entry.charge;
            self.entries -= 1;
        }
    }

    /// See [`BatchCache::read`].
    fn read(&self, key: CacheKey, offset: u64, max_bytes: usize) -> Option<(Vec<BatchSlice>, u64)> {
        let log = self.logs.get(&key)?;
        let (_, first) = log
            .range(..=offset)
            .next_back()
            .filter(|(_, e)| e.last_offset >= offset)?;
        let mut slices: Vec<BatchSlice> = Vec::new();
        let mut bytes = 0;
        let mut offset_next = first.last_offset + 1;
        slices.push(first.slice.clone());
        bytes += first.slice.len();
        for (&base, entry) in log.range(offset_next..) {
            if base != offset_next || bytes + entry.slice.len() > max_bytes {
                break;
            }
            bytes += entry.slice.len();
            offset_next = entry.last_offset + 1;
            let extended = slices
                .last_mut()
                .is_some_and(|last| last.try_extend(&entry.slice));
            if !extended {
                slices.push(entry.slice.clone());
            }
        }
        Some((slices, offset_next))
    }
}
