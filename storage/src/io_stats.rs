//! The shard's storage timings: how long the flushers' writes and
//! fdatasyncs take, how many batches one group commit carries, and which of
//! them are in flight now and since when (a disk that stops shows there
//! while it stops, not only once it answers; acknowledgements from the
//! staging area hide it from clients, so the operator must see it).
//!
//! Kept per shard in a thread local (a shard is one thread, and every log's
//! flusher runs on its shard's thread), so that recording is a plain
//! increment: no lock, no atomic, nothing shared between cores. The broker's
//! metrics read a copy of them on the shard ([`snapshot`]).

use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Highest latency a histogram tells apart: a minute, in microseconds
/// (longer ones are recorded as a minute).
const LATENCY_US_MAX: u64 = 60_000_000;
/// Most batches one group commit is counted as carrying.
const GROUP_COMMIT_BATCHES_MAX: u64 = 1_000_000;

/// The shard's storage timings since it started.
#[derive(Debug, Clone)]
pub struct IoStats {
    /// One write of a group commit, in microseconds.
    pub write_us: Histogram<u64>,
    /// One fdatasync, in microseconds.
    pub fdatasync_us: Histogram<u64>,
    /// Batches written by one group commit.
    pub group_commit_batches: Histogram<u64>,
    /// Appends whose answer waits for their write although their log does
    /// not sync on every write: the staging area was off, full or too small
    /// for the batch. With `acks=1` such an answer waits for the disk.
    pub appends_waiting_for_write: u64,
    /// Appends that found the staging area full and waited for room
    /// (backpressure while a stall holds it full).
    pub staging_full_waits: u64,
}

impl IoStats {
    fn new() -> IoStats {
        // Two significant digits (1 %) over these ranges: a few tens of KiB
        // each.
        let histogram = |high| {
            Histogram::new_with_bounds(1, high, 2)
                .unwrap_or_else(|e| panic!("constant histogram bounds: {e}"))
        };
        IoStats {
            write_us: histogram(LATENCY_US_MAX),
            fdatasync_us: histogram(LATENCY_US_MAX),
            group_commit_batches: histogram(GROUP_COMMIT_BATCHES_MAX),
            appends_waiting_for_write: 0,
            staging_full_waits: 0,
        }
    }
}

thread_local! {
    static STATS: RefCell<Option<IoStats>> = const { RefCell::new(None) };
    static ENABLED: Cell<bool> = const { Cell::new(true) };
    static IN_FLIGHT: RefCell<InFlight> = const {
        RefCell::new(InFlight { next: 0, ops: BTreeMap::new() })
    };
}

/// The shard's storage operations in flight, by the order they started:
/// ids rise with start times, so the first entry is the oldest.
struct InFlight {
    next: u64,
    ops: BTreeMap<u64, (Instant, &'static str, Rc<Path>)>,
}

/// An operation in flight; it leaves the registry when dropped (done,
/// failed or abandoned alike).
pub(crate) struct Pending(u64);

impl Drop for Pending {
    fn drop(&mut self) {
        // `try_with`: a task dropped while its thread's locals are torn
        // down has nothing left to leave.
        let _ = IN_FLIGHT.try_with(|f| f.borrow_mut().ops.remove(&self.0));
    }
}

/// Registers `op` on `path` as in flight until the returned guard drops.
/// Always on, unlike the timings: it is what a stall report reads. Every
/// operation on the data directory that a stalled disk holds registers:
/// segment and index writes, their creation, fallocate, fdatasync and
/// truncate, and the small files (checkpoints, producer snapshots).
pub(crate) fn pending(op: &'static str, path: Rc<Path>) -> Pending {
    IN_FLIGHT.with(|f| {
        let mut f = f.borrow_mut();
        let id = f.next;
        f.next += 1;
        f.ops.insert(id, (Instant::now(), op, path));
        Pending(id)
    })
}

/// The oldest storage operation in flight on this shard.
#[derive(Debug, Clone)]
pub struct Oldest {
    /// What it is: `write`, `create`, `fallocate`, `fdatasync`, `truncate`,
    /// `checkpoint` or `snapshot`.
    pub op: &'static str,
    /// The file it is on.
    pub path: Rc<Path>,
    /// How long it has waited.
    pub waited: Duration,
    /// Operations in flight on the shard, this one included.
    pub in_flight: usize,
}

/// The oldest storage operation in flight on this shard, if any.
pub fn oldest_pending() -> Option<Oldest> {
    IN_FLIGHT.with(|f| {
        let f = f.borrow();
        let (started, op, path) = f.ops.values().next()?;
        Some(Oldest {
            op,
            path: path.clone(),
            waited: started.elapsed(),
            in_flight: f.ops.len(),
        })
    })
}

/// Turns this shard's timings on or off (the broker's `metrics` setting;
/// off, for measuring what they cost). Call on the shard's thread.
pub fn set_enabled(on: bool) {
    ENABLED.with(|enabled| enabled.set(on));
}

fn with(record: impl FnOnce(&mut IoStats)) {
    if ENABLED.with(Cell::get) {
        STATS.with(|stats| record(stats.borrow_mut().get_or_insert_with(IoStats::new)));
    }
}

/// Microseconds, clamped into a histogram's range.
pub fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, LATENCY_US_MAX)
}

/// Records one write's latency.
pub(crate) fn record_write(elapsed: Duration) {
    with(|s| s.write_us.saturating_record(micros(elapsed)));
}

/// Records one fdatasync's latency.
pub(crate) fn record_fdatasync(elapsed: Duration) {
    with(|s| s.fdatasync_us.saturating_record(micros(elapsed)));
}

/// Records the batches one group commit wrote.
pub(crate) fn record_group_commit(batches: usize) {
    let batches = u64::try_from(batches).unwrap_or(u64::MAX);
    with(|s| s.group_commit_batches.saturating_record(batches));
}

/// Counts an append whose answer waits for its write though its log does
/// not sync on every write.
pub(crate) fn record_append_waiting_for_write() {
    with(|s| s.appends_waiting_for_write += 1);
}

/// Counts an append that found the staging area full.
pub(crate) fn record_staging_full_wait() {
    with(|s| s.staging_full_waits += 1);
}

/// A copy of this shard's timings.
pub fn snapshot() -> IoStats {
    STATS.with(|stats| stats.borrow().clone().unwrap_or_else(IoStats::new))
}
