//! The cleaner's I/O budget: after each chunk it sleeps (a glommio timer,
//! so the shard serves produce and fetch meanwhile) until its bytes per
//! second fall back under the limit.

use std::time::{Duration, Instant};

/// Paces a pass to `bytes_per_sec` of disk reads and writes.
pub(crate) struct Throttle {
    bytes_per_sec: u64,
    started: Instant,
    bytes: u64,
    /// Time spent asleep, for the report.
    pub(crate) slept: Duration,
}

impl Throttle {
    pub(crate) fn new(bytes_per_sec: u64) -> Throttle {
        assert!(bytes_per_sec > 0, "a zero budget never finishes");
        Throttle {
            bytes_per_sec,
            started: Instant::now(),
            bytes: 0,
            slept: Duration::ZERO,
        }
    }

    /// Counts `bytes` moved, then waits as long as the pass is ahead of
    /// its budget.
    pub(crate) async fn spend(&mut self, bytes: u64) {
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        let ahead = due.saturating_sub(self.started.elapsed());
        if !ahead.is_zero() {
            glommio::timer::sleep(ahead).await;
            self.slept += ahead;
        }
    }
}
