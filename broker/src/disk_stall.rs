//! Reports a disk that stops answering. Acknowledgements from the staging
//! area keep producers from seeing a stall, so without this the operator
//! would not either, until the staging budget filled (or a stop waited on
//! the disk with nothing said). Each shard checks its oldest storage
//! operation in flight (`fjord_storage::io_stats::oldest_pending`) every
//! disk check; one that has waited [`STALLED_AFTER`] is a stall. A stall is
//! reported when it starts, again every [`REPEAT_EVERY`] while it lasts,
//! and when the disk answers again; stalls that start within
//! [`REPEAT_EVERY`] of the last report are counted into the next one
//! instead (a disk slow on every operation would otherwise log a pair of
//! lines a second).
//!
//! The watcher runs on the shard it watches: a stall it can see is one the
//! kernel holds in io_uring's workers, never the shard's own thread (which
//! nothing on a shard may block).

use fjord_storage::io_stats::Oldest;
use std::time::{Duration, Instant};

/// An operation that has waited this long is a stall: well past a busy
/// disk's queueing (milliseconds), short enough to be seen while it lasts.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);
/// Reports come at most this often.
pub const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// What to say about the disk after one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// An operation has waited past [`STALLED_AFTER`] (a stall starting, or
    /// a repeat while it lasts).
    Stalled {
        /// What waits: `write`, `create`, `fallocate`, `fdatasync`, …
        op: &'static str,
        /// The file it is on.
        path: String,
        /// How long it has waited.
        waited: Duration,
        /// Operations in flight on the shard.
        in_flight: usize,
        /// Stalls since the last report that were not reported (they
        /// started too soon after it).
        unreported: u64,
    },
    /// A reported stall is over: nothing waits past [`STALLED_AFTER`].
    Answers {
        /// From the start of the oldest operation first reported to now.
        stalled_for: Duration,
    },
}

/// One shard's stall state between checks.
#[derive(Debug, Default)]
pub struct Watch {
    /// The stall going on: when it started, and whether it was reported.
    stall: Option<(Instant, bool)>,
    /// When a stall was last reported.
    said: Option<Instant>,
    /// Stalls started since then that were not.
    unreported: u64,
}

impl Watch {
    /// Looks at the oldest operation in flight (`None`: nothing in flight)
    /// at `now`; says something when a stall starts or lasts and no report
    /// came for [`REPEAT_EVERY`], or when a reported one ends.
    pub fn check(&mut self, oldest: Option<&Oldest>, now: Instant) -> Option<Report> {
        let stalled = oldest.filter(|o| o.waited >= STALLED_AFTER);
        let due = self
            .said
            .is_none_or(|said| now.duration_since(said) >= REPEAT_EVERY);
        match (stalled, &mut self.stall) {
            (Some(o), None) => {
                self.stall = Some((now - o.waited, due));
                if due {
                    return Some(self.report(o, now));
                }
                self.unreported += 1;
                None
            }
            (Some(o), Some((_, reported))) if due => {
                *reported = true;
                Some(self.report(o, now))
            }
            (Some(_), Some(_)) => None,
            (None, Some((started, reported))) => {
                let said = reported.then(|| Report::Answers {
                    stalled_for: now.duration_since(*started),
                });
                self.stall = None;
                said
            }
            (None, None) => None,
        }
    }

    fn report(&mut self, o: &Oldest, now: Instant) -> Report {
        self.said = Some(now);
        Report::Stalled {
            op: o.op,
            path: o.path.display().to_string(),
            waited: o.waited,
            in_flight: o.in_flight,
            unreported: std::mem::take(&mut self.unreported),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::rc::Rc;

    fn oldest(waited_ms: u64) -> Oldest {
        Oldest {
            op: "write",
            path: Rc::from(Path::new("/d/t/0/00000000000000000000.log")),
            waited: Duration::from_millis(waited_ms),
            in_flight: 3,
        }
    }

    #[test]
    fn a_stall_is_said_when_it_starts_while_it_lasts_and_when_it_ends() {
        let mut watch = Watch::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // A busy disk's queueing is no stall.
        assert_eq!(watch.check(Some(&oldest(200)), at(0)), None);
        assert_eq!(watch.check(None, at(500)), None);
        let first = watch.check(Some(&oldest(1000)), at(1500));
        assert!(
            matches!(first, Some(Report::Stalled { waited, in_flight: 3, unreported: 0, .. }) if waited == Duration::from_secs(1)),
            "{first:?}"
        );
        // Quiet while it lasts, until the repeat is due.
        assert_eq!(watch.check(Some(&oldest(6000)), at(6500)), None);
        assert!(matches!(
            watch.check(Some(&oldest(11_000)), at(11_500)),
            Some(Report::Stalled { .. })
        ));
        // A newer operation that has not waited long yet: the stall ended.
        assert_eq!(
            watch.check(Some(&oldest(100)), at(12_000)),
            Some(Report::Answers {
                stalled_for: Duration::from_millis(11_500)
            })
        );
        assert_eq!(watch.check(None, at(12_500)), None);
    }

    #[test]
    fn a_disk_slow_on_every_operation_is_reported_every_ten_seconds() {
        let mut watch = Watch::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // Operations of 1.5 s, one after the other: a stall starts and ends
        // every 1.5 s.
        let mut said = Vec::new();
        for i in 0..20u64 {
            let start = i * 1500;
            for (now, waited) in [(start + 1200, 1200), (start + 1400, 100)] {
                if let Some(report) = watch.check(Some(&oldest(waited)), at(now)) {
                    said.push((now, report));
                }
            }
        }
        let stalls: Vec<(u64, u64)> = said
            .iter()
            .filter_map(|(now, r)| match r {
                Report::Stalled { unreported, .. } => Some((*now, *unreported)),
                Report::Answers { .. } => None,
            })
            .collect();
        // 30 s of it: three reports, the later ones counting the stalls
        // between them; each followed by its end.
        assert_eq!(stalls, [(1200, 0), (11700, 6), (22200, 6)]);
        assert_eq!(said.len(), 6, "{said:?}");
    }
}
