//! Reports a disk that stops answering. Acknowledgements from the staging
//! area keep producers from seeing a stall, so without this the operator
//! would not either, until the staging budget filled (or a stop waited on
//! the disk with nothing said). Each shard checks its oldest storage
//! operation in flight (`fjord_storage::io_stats::oldest_pending`) every
//! disk check; one that has waited [`STALLED_AFTER`] is a stall, reported
//! at once, again every [`REPEAT_EVERY`] while it lasts, and once more when
//! the disk answers again.

use fjord_storage::io_stats::Oldest;
use std::time::{Duration, Instant};

/// An operation that has waited this long is a stall: well past a busy
/// disk's queueing (milliseconds), short enough to be seen while it lasts.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);
/// A stall that lasts is reported again this often.
pub const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// What to say about the disk after one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// An operation has waited past [`STALLED_AFTER`] (first report, or a
    /// repeat while it lasts).
    Stalled {
        /// What waits: `write`, `fdatasync` or `truncate`.
        op: &'static str,
        /// The file it is on.
        path: String,
        /// How long it has waited.
        waited: Duration,
        /// Operations in flight on the shard.
        in_flight: usize,
    },
    /// Nothing waits past [`STALLED_AFTER`] any more after a reported stall.
    Answers {
        /// From the start of the oldest operation first reported to now.
        stalled_for: Duration,
    },
}

/// One shard's stall state between checks.
#[derive(Debug, Default)]
pub struct Watch {
    /// While a stall is reported: when it started and when it was last said.
    stall: Option<(Instant, Instant)>,
}

impl Watch {
    /// Looks at the oldest operation in flight (`None`: nothing in flight)
    /// at `now`; says something when a stall starts, lasts another
    /// [`REPEAT_EVERY`], or ends.
    pub fn check(&mut self, oldest: Option<&Oldest>, now: Instant) -> Option<Report> {
        let stalled = oldest.filter(|o| o.waited >= STALLED_AFTER);
        match (stalled, &mut self.stall) {
            (Some(o), None) => {
                self.stall = Some((now - o.waited, now));
                Some(stalled_report(o))
            }
            (Some(o), Some((_, said))) if now.duration_since(*said) >= REPEAT_EVERY => {
                *said = now;
                Some(stalled_report(o))
            }
            (Some(_), Some(_)) => None,
            (None, Some((started, _))) => {
                let stalled_for = now.duration_since(*started);
                self.stall = None;
                Some(Report::Answers { stalled_for })
            }
            (None, None) => None,
        }
    }
}

fn stalled_report(o: &Oldest) -> Report {
    Report::Stalled {
        op: o.op,
        path: o.path.display().to_string(),
        waited: o.waited,
        in_flight: o.in_flight,
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
            matches!(first, Some(Report::Stalled { waited, in_flight: 3, .. }) if waited == Duration::from_secs(1)),
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
}
