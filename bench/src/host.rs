//! What the machine's cores did over a run, from `/proc/stat`: busy, idle
//! with I/O pending, and *stolen* (time the hypervisor gave another guest
//! while this one had work). On a shared VM steal moves throughput and
//! tails by itself, so every report states it beside the figures.

use serde::Serialize;

/// The kernel's cumulative CPU counters, all cores together, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    busy: u64,
    iowait: u64,
    steal: u64,
    total: u64,
}

impl CpuTimes {
    /// The counters now; `None` where `/proc/stat` is missing or unreadable.
    pub fn now() -> Option<CpuTimes> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// The aggregate `cpu` line of `/proc/stat`: user nice system idle iowait
/// irq softirq steal (guest time is already inside user and nice).
fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let &[user, nice, system, idle, iowait, irq, softirq, steal] = fields.as_slice() else {
        return None;
    };
    let busy = user + nice + system + irq + softirq;
    Some(CpuTimes {
        busy,
        iowait,
        steal,
        total: busy + idle + iowait + steal,
    })
}

/// Shares of the machine's CPU time between two readings, in percent.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuShare {
    /// Running code (user, system, interrupts).
    pub busy_percent: f64,
    /// Idle with I/O outstanding.
    pub iowait_percent: f64,
    /// Taken by the hypervisor for other guests.
    pub steal_percent: f64,
}

impl CpuShare {
    /// From `before` to `after`; `None` if no time passed between them.
    pub fn between(before: CpuTimes, after: CpuTimes) -> Option<CpuShare> {
        let total = after.total.checked_sub(before.total).filter(|&t| t > 0)? as f64;
        let percent = |a: u64, b: u64| b.saturating_sub(a) as f64 * 100.0 / total;
        Some(CpuShare {
            busy_percent: percent(before.busy, after.busy),
            iowait_percent: percent(before.iowait, after.iowait),
            steal_percent: percent(before.steal, after.steal),
        })
    }

    /// The report's line.
    pub fn print(&self) {
        println!(
            "  machine     cores busy {:.0} %, idle on I/O {:.0} %, stolen by the host {:.0} %",
            self.busy_percent, self.iowait_percent, self.steal_percent
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 20 3 2 20 0 0\ncpu0 50 2 25 400 10 1 1 10 0 0\n";

    #[test]
    fn shares_come_from_the_aggregate_line() {
        let before = parse(STAT).expect("parsed");
        let after = parse("cpu  150 5 100 830 40 3 2 70 0 0\n").expect("parsed");
        let share = CpuShare::between(before, after).expect("time passed");
        // 200 ticks passed: 100 busy, 30 idle, 20 on I/O, 50 stolen.
        assert_eq!(share.busy_percent, 50.0);
        assert_eq!(share.iowait_percent, 10.0);
        assert_eq!(share.steal_percent, 25.0);
        assert!(CpuShare::between(after, after).is_none());
    }

    #[test]
    fn a_short_or_garbled_line_reads_as_nothing() {
        assert_eq!(parse("cpu  1 2 3\n"), None);
        assert_eq!(parse("cpu  1 2 x 4 5 6 7 8\n"), None);
        assert_eq!(parse("intr 5\n"), None);
    }
}
