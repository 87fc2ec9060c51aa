//! Broker-side figures of a run (`--admin HOST:PORT`): the `/metrics` of
//! the broker the run drives, scraped before and after it, and turned into
//! what happened in between: fdatasync and write p99 (interpolated within
//! Prometheus buckets, as `histogram_quantile` does) and the mean
//! group-commit size, summed over the node's shards.

use serde::Serialize;
use std::collections::BTreeMap;

/// One scrape: every sample line, `name{labels}` → value.
pub struct Scrape(BTreeMap<String, f64>);

/// Reads the broker's `/metrics`.
pub fn scrape(admin: &str) -> Result<Scrape, String> {
    let text = fjord_broker::cli::top::get(admin, "/metrics").map_err(|e| e.to_string())?;
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect();
    Ok(Scrape(samples))
}

/// What the broker did during the run.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerSide {
    /// fdatasync latency p99, ms (`None`: no fdatasync ran).
    pub fdatasync_p99_ms: Option<f64>,
    /// Write latency p99 of group commits, ms.
    pub write_p99_ms: Option<f64>,
    /// Batches per group commit, mean.
    pub group_commit_batches_mean: Option<f64>,
    /// Group commits.
    pub group_commits: u64,
}

impl BrokerSide {
    /// The difference of two scrapes of the same broker.
    pub fn between(before: &Scrape, after: &Scrape) -> BrokerSide {
        let commits = after.sum("fjord_storage_group_commit_batches_count")
            - before.sum("fjord_storage_group_commit_batches_count");
        let batches = after.sum("fjord_storage_group_commit_batches_sum")
            - before.sum("fjord_storage_group_commit_batches_sum");
        let p99_ms = |family: &str| {
            quantile(0.99, &after.buckets(family), &before.buckets(family)).map(|s| s * 1e3)
        };
        BrokerSide {
            fdatasync_p99_ms: p99_ms("fjord_storage_fdatasync_latency_seconds"),
            write_p99_ms: p99_ms("fjord_storage_write_latency_seconds"),
            group_commit_batches_mean: (commits > 0.0).then(|| batches / commits),
            group_commits: commits.max(0.0) as u64,
        }
    }

    /// One line for the text report.
    pub fn print(&self) {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} ms"));
        println!(
            "broker: fdatasync p99 {}, write p99 {}, {} group commits of {} batches on average",
            ms(self.fdatasync_p99_ms),
            ms(self.write_p99_ms),
            self.group_commits,
            self.group_commit_batches_mean
                .map_or("-".to_owned(), |m| format!("{m:.1}"))
        );
    }
}

impl Scrape {
    /// A family's samples summed over their labels.
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }

    /// A histogram's cumulative buckets summed over their other labels, by
    /// upper bound.
    fn buckets(&self, family: &str) -> Vec<(f64, f64)> {
        let name = format!("{family}_bucket");
        let mut by_bound: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (series, value) in &self.0 {
            if series.split('{').next() != Some(name.as_str()) {
                continue;
            }
            let Some(le) = series
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
            else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            // f64 bits order like the values for non-negative bounds.
            by_bound.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += value;
        }
        by_bound.into_values().collect()
    }
}

/// The `q` quantile of what `after` counted past `before` (cumulative
/// buckets), interpolated linearly within its bucket; `None` for no values.
fn quantile(q: f64, after: &[(f64, f64)], before: &[(f64, f64)]) -> Option<f64> {
    let counted = |i: usize| after[i].1 - before.get(i).map_or(0.0, |b| b.1);
    let total = counted(after.len().checked_sub(1)?);
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (i, &(bound, _)) in after.iter().enumerate() {
        let cumulative = counted(i);
        if cumulative >= rank {
            if bound.is_infinite() {
                // Past the last bound: its value is all that is known.
                return Some(lower.0);
            }
            let within = (rank - lower.1) / (cumulative - lower.1).max(f64::MIN_POSITIVE);
            return Some(lower.0 + (bound - lower.0) * within);
        }
        lower = (bound, cumulative);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_and_mean_are_of_the_run_only() {
        let text = |fsyncs: [f64; 3], commits: f64, batches: f64| {
            let mut m = BTreeMap::new();
            for (le, v) in ["0.001", "0.01", "+Inf"].iter().zip(fsyncs) {
                m.insert(
                    format!(
                        "fjord_storage_fdatasync_latency_seconds_bucket{{shard=\"0\",le=\"{le}\"}}"
                    ),
                    v,
                );
            }
            m.insert(
                "fjord_storage_group_commit_batches_count{shard=\"0\"}".into(),
                commits,
            );
            m.insert(
                "fjord_storage_group_commit_batches_sum{shard=\"0\"}".into(),
                batches,
            );
            Scrape(m)
        };
        // Before: 10 fast syncs. During the run: 100 more, all between 1
        // and 10 ms.
        let before = text([10.0, 10.0, 10.0], 5.0, 5.0);
        let after = text([10.0, 110.0, 110.0], 25.0, 85.0);
        let side = BrokerSide::between(&before, &after);
        let p99 = side.fdatasync_p99_ms.expect("syncs ran");
        assert!((9.8..=10.0).contains(&p99), "{p99}");
        assert_eq!(side.group_commit_batches_mean, Some(4.0));
        assert_eq!(side.group_commits, 20);
        assert_eq!(BrokerSide::between(&after, &after).fdatasync_p99_ms, None);
    }
}
