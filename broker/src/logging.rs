//! The server's log: `tracing` events to stderr, as text or JSON lines,
//! filtered by `RUST_LOG` (`info` when unset), and a limiter for errors
//! that repeat.
//!
//! Events of a shard carry `shard = N`, and those about a partition
//! `topic` and `partition` fields, so one can grep (or a log shipper can
//! index) a shard's or a partition's story. A clustered node's events
//! carry its id too (`node{id=N}`), so the logs of several nodes can be
//! merged and still read.

use std::cell::Cell;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the process's subscriber. Later calls do nothing (tests and the
/// bench may start more than one node in a process).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_thread_names(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The span a clustered node's thread logs in for its whole life, entered;
/// nothing for a single node.
pub fn node_span(node_id: Option<u32>) -> Option<tracing::span::EnteredSpan> {
    node_id.map(|id| tracing::info_span!("node", id).entered())
}

/// How often a repeated error is logged at most.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Counts occurrences of one repeated condition and lets one log line
/// through per interval, carrying how many occurred since the last.
/// Shard-local (not `Sync`): each shard keeps its own.
pub struct Repeated {
    interval: Duration,
    last: Cell<Option<Instant>>,
    count: Cell<u64>,
}

impl Repeated {
    /// A limiter letting one line through per `interval`.
    pub fn new(interval: Duration) -> Repeated {
        Repeated {
            interval,
            last: Cell::new(None),
            count: Cell::new(0),
        }
    }

    /// Counts one occurrence; `Some(n)` when it is time to log, with `n`
    /// occurrences since the last line (this one included).
    pub fn hit(&self) -> Option<u64> {
        self.count.set(self.count.get() + 1);
        let now = Instant::now();
        if self
            .last
            .get()
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            return None;
        }
        self.last.set(Some(now));
        Some(self.count.replace(0))
    }
}

impl Default for Repeated {
    fn default() -> Self {
        Repeated::new(REPEAT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_carries_the_count() {
        let repeated = Repeated::new(Duration::from_secs(3600));
        assert_eq!(repeated.hit(), Some(1));
        for _ in 0..99 {
            assert_eq!(repeated.hit(), None);
        }
        let quick = Repeated::new(Duration::ZERO);
        assert_eq!(quick.hit(), Some(1));
        assert_eq!(quick.hit(), Some(1));
    }
}
