//! What a run reports: a progress line a second, a final summary, and the
//! same figures as JSON (field names documented in the README).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latencies are recorded in microseconds, 1 µs to 60 s, 3 significant
/// digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// How often a thread merges its latencies into the run's. Often enough
/// that a progress line's percentiles are those of its own second (give or
/// take this much), rarely enough that the lock is no cost.
pub const MERGE_EVERY: Duration = Duration::from_millis(50);

/// Counters and latencies shared by a run's threads. Threads record into
/// histograms of their own and merge them here every [`MERGE_EVERY`], so
/// the lock is taken rarely and never by the broker (which is another
/// process).
pub struct Progress {
    /// Messages acknowledged (or delivered, for consumers).
    pub messages: AtomicU64,
    /// Their payload bytes.
    pub bytes: AtomicU64,
    /// Messages that failed.
    pub errors: AtomicU64,
    /// Producers: when the last batch went out, in ns since the run began.
    /// Rates are taken over this span, so that the wait for the last
    /// answers does not read as a lower rate.
    pub sent_until_ns: AtomicU64,
    latencies: Mutex<Histogram<u64>>,
    /// Latencies merged since the last progress line: the line shows the
    /// last second, so a stall at the start does not read as a slow decay.
    recent: Mutex<Histogram<u64>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sent_until_ns: AtomicU64::new(0),
            latencies: Mutex::new(histogram()),
            recent: Mutex::new(histogram()),
        }
    }
}

impl Progress {
    /// Adds a thread's latencies and clears them.
    pub fn merge(&self, local: &mut Histogram<u64>) {
        for into in [&self.latencies, &self.recent] {
            if let Ok(mut all) = into.lock() {
                // Same bounds everywhere: adding cannot fail.
                let _ = all.add(&*local);
            }
        }
        local.reset();
    }

    /// A copy of the latencies so far.
    pub fn latencies(&self) -> Histogram<u64> {
        self.latencies
            .lock()
            .map_or_else(|_| histogram(), |h| h.clone())
    }

    /// p50 and p99 of the latencies merged since the last call (0 when
    /// none were), which it clears.
    fn take_recent(&self) -> (u64, u64) {
        let Ok(mut recent) = self.recent.lock() else {
            return (0, 0);
        };
        let quantiles = if recent.is_empty() {
            (0, 0)
        } else {
            (
                recent.value_at_quantile(0.5),
                recent.value_at_quantile(0.99),
            )
        };
        recent.reset();
        quantiles
    }

    /// The one-line progress report: rates and percentiles of the interval
    /// since the previous line (threads merge every [`MERGE_EVERY`], so the
    /// percentiles are those of the last second, not of the run so far).
    pub fn line(&self, elapsed: Duration, last: (u64, u64), interval: Duration) -> String {
        let messages = self.messages.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let seconds = interval.as_secs_f64().max(1e-9);
        let (p50, p99) = self.take_recent();
        format!(
            "{:6.1}s  {:>10.0} msg/s  {:>8.1} MB/s  p50 {p50:>7} µs  p99 {p99:>7} µs  errors {}",
            elapsed.as_secs_f64(),
            (messages - last.0) as f64 / seconds,
            (bytes - last.1) as f64 / seconds / 1e6,
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// What `e2e`'s progress line adds: the delivery latencies of the
    /// interval since the previous line.
    pub fn delivery_line(&self) -> String {
        let (p50, p99) = self.take_recent();
        format!("  delivered p50 {p50:>7} µs  p99 {p99:>7} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_shows_the_latencies_since_the_one_before() {
        let progress = Progress::default();
        let mut local = histogram();
        // A stall at the start...
        for _ in 0..100 {
            local.record(200_000).unwrap();
        }
        progress.merge(&mut local);
        let first = progress.line(Duration::from_secs(1), (0, 0), Duration::from_secs(1));
        assert!(first.contains("p99  200063 µs"), "{first}");
        // ...is not in the next second's line.
        for _ in 0..100 {
            local.record(300).unwrap();
        }
        progress.merge(&mut local);
        let second = progress.line(Duration::from_secs(2), (0, 0), Duration::from_secs(1));
        assert!(second.contains("p99     300 µs"), "{second}");
        // The run's own figures keep both.
        assert_eq!(progress.latencies().len(), 200);
        let quiet = progress.delivery_line();
        assert!(quiet.contains("p99       0 µs"), "{quiet}");
    }
}

/// The final figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The rate asked for (0 when "as fast as possible").
    pub target_msgs_per_sec: f64,
    /// Messages acknowledged (delivered) per second, over the span in which
    /// batches were sent (producers) or the whole run (consumers).
    pub achieved_msgs_per_sec: f64,
    /// Payload megabytes (10^6) per second.
    pub mb_per_sec: f64,
    /// Messages acknowledged (delivered).
    pub messages: u64,
    /// Messages that failed.
    pub errors: u64,
    /// Wall time of the run, in seconds.
    pub elapsed_sec: f64,
    /// Latency percentiles in µs (0 when nothing was measured).
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// 99.99th percentile.
    pub p9999_us: u64,
    /// Largest latency.
    pub max_us: u64,
    /// Whether the target rate was held (always true without a target).
    pub sustained: bool,
}

impl Summary {
    /// Summarises a run of `elapsed` against `target` (0: none).
    pub fn new(progress: &Progress, elapsed: Duration, target: f64) -> Summary {
        let messages = progress.messages.load(Ordering::Relaxed);
        let bytes = progress.bytes.load(Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let sent_until = progress.sent_until_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let span = if sent_until > 0.0 {
            sent_until
        } else {
            seconds
        };
        let h = progress.latencies();
        let q = |q| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        let achieved = messages as f64 / span;
        Summary {
            target_msgs_per_sec: target,
            achieved_msgs_per_sec: achieved,
            mb_per_sec: bytes as f64 / span / 1e6,
            messages,
            errors: progress.errors.load(Ordering::Relaxed),
            elapsed_sec: seconds,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            // Held: within 2 % of the target (the run's start and its last
            // acknowledgements cost a little), and nothing failed.
            sustained: target == 0.0 || (achieved >= 0.98 * target),
        }
    }

    /// The human report.
    pub fn print(&self, what: &str) {
        println!("{what}:");
        if self.target_msgs_per_sec > 0.0 {
            println!("  target      {:>12.0} msg/s", self.target_msgs_per_sec);
        }
        println!(
            "  achieved    {:>12.0} msg/s  {:.1} MB/s  ({} messages in {:.2} s, {} errors)",
            self.achieved_msgs_per_sec,
            self.mb_per_sec,
            self.messages,
            self.elapsed_sec,
            self.errors
        );
        if self.max_us > 0 {
            println!(
                "  latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
                self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.p9999_us, self.max_us
            );
        }
        if !self.sustained {
            println!(
                "  NOT SUSTAINED: {:.0} msg/s is below the target of {:.0}",
                self.achieved_msgs_per_sec, self.target_msgs_per_sec
            );
        }
    }
}

/// A run's JSON report: what was asked and what came out.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a, C: Serialize> {
    /// `produce`, `consume` or `e2e`.
    pub command: &'a str,
    /// The settings of the run.
    pub config: &'a C,
    /// The figures.
    #[serde(flatten)]
    pub summary: &'a Summary,
    /// The broker's own figures of the run (with `--admin`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<&'a crate::scrape::BrokerSide>,
    /// What the machine's cores did meanwhile (Linux only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<&'a crate::host::CpuShare>,
}

/// Writes the JSON report.
pub fn write_json<C: Serialize>(
    path: &std::path::Path,
    report: &JsonReport<'_, C>,
) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}
