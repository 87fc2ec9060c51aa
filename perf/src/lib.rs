//! Measuring Fjord against the machine it runs on.
//!
//! [`limits`] probes the physical ceilings with raw io_uring (no glommio, no
//! Fjord code): O_DIRECT sequential write bandwidth, fdatasync latency and
//! loopback TCP throughput. [`append`] drives Fjord's partition log through
//! the same kinds of load, so each Fjord figure can be stated as a fraction
//! of the ceiling measured in the same run.

pub mod aligned;
pub mod append;
pub mod limits;

/// Bytes per second, for reports.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Rate {
    /// Bytes moved.
    pub bytes: u64,
    /// Over this many seconds.
    pub seconds: f64,
}

impl Rate {
    /// Bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// GB/s (10^9 bytes), as disks are rated.
    pub fn gb_per_sec(&self) -> f64 {
        self.bytes_per_sec() / 1e9
    }

    /// Both runs as one: their bytes over their time.
    pub fn merge(self, other: Rate) -> Rate {
        Rate {
            bytes: self.bytes + other.bytes,
            seconds: self.seconds + other.seconds,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    /// Samples taken.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of a histogram recorded in nanoseconds.
    pub fn from_histogram_ns(h: &hdrhistogram::Histogram<u64>) -> Latency {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
        }
    }
}
