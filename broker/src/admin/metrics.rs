//! What a shard counts as it serves: bytes and records in and out per
//! topic, request latency per API, append latency. Each shard owns its
//! counters (`Cell`/`RefCell` behind an `Rc`, never shared between cores);
//! the admin listener gathers copies of them over the mesh
//! ([`crate::admin::snapshot`]).
//!
//! Latencies go into hdrhistograms at two significant digits (1 %), which
//! keeps one at a few tens of KiB. Besides the running totals, histograms
//! and traffic keep the last whole second (closed by
//! [`rotate_every_second`]), from which the console and `fjord top` draw
//! their figures per second: measured by the broker, whenever and however
//! often they ask.

use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

/// Highest latency a histogram tells apart: a minute, in microseconds
/// (longer ones count as a minute).
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// An API, by protocol and number: its name is looked up when exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Api {
    /// A native API: the request body's union tag.
    Native(u8),
    /// A Kafka API key.
    Kafka(i16),
}

/// One topic's traffic on one shard: since start and in the last whole
/// second.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    /// Since the shard started.
    pub total: TopicCounts,
    /// In the last whole second.
    pub last_second: TopicCounts,
    /// `total` when the second under way began.
    at_tick: TopicCounts,
}

impl Traffic {
    fn rotate(&mut self) {
        self.last_second = self.total.minus(&self.at_tick);
        self.at_tick = self.total;
    }
}

/// Counts of one topic's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicCounts {
    /// Record-batch bytes appended (produce).
    pub produced_bytes: u64,
    /// Records appended.
    pub produced_records: u64,
    /// Record-batch bytes read by consumers (fetch).
    pub fetched_bytes: u64,
    /// Records read by consumers.
    pub fetched_records: u64,
    /// Produces answered `REQUEST_TIMED_OUT` (their batches may yet have
    /// been written).
    pub produce_timeouts: u64,
}

impl TopicCounts {
    /// Adds `other` in.
    pub fn add(&mut self, other: &TopicCounts) {
        self.produced_bytes += other.produced_bytes;
        self.produced_records += other.produced_records;
        self.fetched_bytes += other.fetched_bytes;
        self.fetched_records += other.fetched_records;
        self.produce_timeouts += other.produce_timeouts;
    }

    fn minus(&self, earlier: &TopicCounts) -> TopicCounts {
        TopicCounts {
            produced_bytes: self.produced_bytes - earlier.produced_bytes,
            produced_records: self.produced_records - earlier.produced_records,
            fetched_bytes: self.fetched_bytes - earlier.fetched_bytes,
            fetched_records: self.fetched_records - earlier.fetched_records,
            produce_timeouts: self.produce_timeouts - earlier.produce_timeouts,
        }
    }
}

/// A latency histogram: since start, the second under way, and the last
/// whole second.
#[derive(Debug, Clone)]
pub struct Latency {
    /// Every value since the shard started, in microseconds.
    pub total: Histogram<u64>,
    current: Histogram<u64>,
    /// The last whole second's values.
    pub last_second: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        let total = new_histogram(LATENCY_US_MAX);
        Latency {
            current: total.clone(),
            last_second: total.clone(),
            total,
        }
    }
}

impl Latency {
    fn record(&mut self, elapsed: Duration) {
        let us = fjord_storage::io_stats::micros(elapsed);
        self.total.saturating_record(us);
        self.current.saturating_record(us);
    }

    fn rotate(&mut self) {
        std::mem::swap(&mut self.current, &mut self.last_second);
        self.current.reset();
    }
}

/// An empty histogram of values `1..=high` at two significant digits.
pub fn new_histogram(high: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, high, 2)
        .unwrap_or_else(|e| panic!("constant histogram bounds: {e}"))
}

/// A copy of one shard's counters.
pub struct Counted {
    /// Traffic per topic.
    pub topics: Vec<(String, Traffic)>,
    /// Request latency per API.
    pub requests: Vec<(Api, Latency)>,
    /// Append latency.
    pub append: Latency,
}

/// One shard's counters.
pub struct ShardMetrics {
    /// Off (`metrics = false`): nothing is counted, for measuring the cost.
    enabled: bool,
    topics: RefCell<HashMap<String, Traffic>>,
    requests: RefCell<BTreeMap<Api, Latency>>,
    append: RefCell<Latency>,
}

impl ShardMetrics {
    /// Empty counters; `enabled: false` keeps them so.
    pub fn new(enabled: bool) -> Rc<ShardMetrics> {
        Rc::new(ShardMetrics {
            enabled,
            topics: RefCell::default(),
            requests: RefCell::default(),
            append: RefCell::default(),
        })
    }

    /// Counts batches appended to a partition of `topic`.
    pub fn record_produced(&self, topic: &str, batches: &[u8]) {
        if self.enabled {
            let records = records_in(batches);
            self.count(topic, |c| {
                c.produced_bytes += batches.len() as u64;
                c.produced_records += records;
            });
        }
    }

    /// Counts a produce to a partition of `topic` answered
    /// `REQUEST_TIMED_OUT`.
    pub fn record_produce_timeout(&self, topic: &str) {
        if self.enabled {
            self.count(topic, |c| c.produce_timeouts += 1);
        }
    }

    /// Counts batches read by a consumer from a partition of `topic`.
    pub fn record_fetched<'a>(&self, topic: &str, slices: impl Iterator<Item = &'a [u8]>) {
        if self.enabled {
            let (mut bytes, mut records) = (0, 0);
            for slice in slices {
                bytes += slice.len() as u64;
                records += records_in(slice);
            }
            if bytes > 0 {
                self.count(topic, |c| {
                    c.fetched_bytes += bytes;
                    c.fetched_records += records;
                });
            }
        }
    }

    fn count(&self, topic: &str, add: impl FnOnce(&mut TopicCounts)) {
        let mut topics = self.topics.borrow_mut();
        // Looked up by &str first: the name is allocated once per topic.
        match topics.get_mut(topic) {
            Some(traffic) => add(&mut traffic.total),
            None => add(&mut topics.entry(topic.to_owned()).or_default().total),
        }
    }

    /// Records how long one request took to serve.
    pub fn record_request(&self, api: Api, elapsed: Duration) {
        if self.enabled {
            self.requests
                .borrow_mut()
                .entry(api)
                .or_default()
                .record(elapsed);
        }
    }

    /// Records how long a partition took to append a produce request's
    /// batches and make them as safe as its acks ask.
    pub fn record_append(&self, elapsed: Duration) {
        if self.enabled {
            self.append.borrow_mut().record(elapsed);
        }
    }

    /// Forgets topics the metadata no longer lists, so that deleted topics
    /// do not stay in `/metrics` for ever.
    pub fn retain_topics(&self, listed: impl Fn(&str) -> bool) {
        self.topics.borrow_mut().retain(|name, _| listed(name));
    }

    /// Copies of the counters, for a snapshot.
    pub fn copy(&self) -> Counted {
        let topics = self
            .topics
            .borrow()
            .iter()
            .map(|(name, traffic)| (name.clone(), *traffic))
            .collect();
        let requests = self
            .requests
            .borrow()
            .iter()
            .map(|(api, latency)| (*api, latency.clone()))
            .collect();
        Counted {
            topics,
            requests,
            append: self.append.borrow().clone(),
        }
    }

    fn rotate(&self) {
        for traffic in self.topics.borrow_mut().values_mut() {
            traffic.rotate();
        }
        for latency in self.requests.borrow_mut().values_mut() {
            latency.rotate();
        }
        self.append.borrow_mut().rotate();
    }
}

/// Closes each second's histograms, for as long as the shard runs: one
/// timer a second per shard, nothing when metrics are off.
pub async fn rotate_every_second(metrics: Rc<ShardMetrics>) {
    if !metrics.enabled {
        return;
    }
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        metrics.rotate();
    }
}

/// Records in whole batches (their headers' counts).
fn records_in(batches: &[u8]) -> u64 {
    fjord_core::batch::batches(batches)
        .map(|b| u64::try_from(b.record_count()).unwrap_or(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_closes_into_last_second_and_the_total_keeps_everything() {
        let metrics = ShardMetrics::new(true);
        let api = Api::Kafka(0);
        metrics.record_request(api, Duration::from_millis(3));
        metrics.rotate();
        metrics.record_request(api, Duration::from_millis(5));
        let requests = metrics.copy().requests;
        let latency = &requests[0].1;
        assert_eq!(latency.total.len(), 2);
        assert_eq!(latency.last_second.len(), 1);
        assert!(latency.last_second.max() <= 3_100);
        metrics.rotate();
        let requests = metrics.copy().requests;
        assert!(requests[0].1.last_second.max() >= 4_900);
    }

    #[test]
    fn traffic_of_the_last_second_is_what_came_between_two_ticks() {
        let metrics = ShardMetrics::new(true);
        let mut builder = fjord_core::BatchBuilder::new();
        builder.push(0, None, Some(b"v"), &[]);
        let batch = builder.build();
        metrics.record_produced("t", &batch);
        metrics.rotate();
        metrics.record_produced("t", &batch);
        metrics.record_produced("t", &batch);
        metrics.rotate();
        let traffic = metrics.copy().topics[0].1;
        assert_eq!(traffic.total.produced_records, 3);
        assert_eq!(traffic.last_second.produced_records, 2);
        assert_eq!(traffic.last_second.produced_bytes, 2 * batch.len() as u64);
    }

    #[test]
    fn off_counts_nothing() {
        let metrics = ShardMetrics::new(false);
        metrics.record_request(Api::Native(1), Duration::from_millis(1));
        metrics.record_produced("t", &[]);
        let counted = metrics.copy();
        assert!(counted.topics.is_empty() && counted.requests.is_empty());
        assert!(counted.append.total.is_empty());
    }
}
