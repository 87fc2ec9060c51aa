//! `/metrics`: a node snapshot in Prometheus' text exposition format,
//! written by the `prometheus-client` crate's encoder. The figures are not
//! kept in its registry (whose metrics are atomics shared between threads):
//! a registry is made per scrape with one collector that reads the
//! gathered snapshot.
//!
//! Label cardinality: `shard` takes at most `cores` values and `api` the
//! fixed set of APIs; `topic` follows the topics of the node; per-partition
//! families (`topic`, `partition`) list at most `metrics_partitions_max`
//! partitions (the first by topic and number; per-topic sums cover all of
//! them, and `fjord_metrics_partitions_omitted` says how many are left
//! out), and group lag is summed per group and topic under the same cap.
//! With 10,000 partitions and the default 1,000 a scrape stays around ten
//! thousand series.

use super::metrics::{Api, Latency};
use super::snapshot::{NodeSnapshot, PartitionRow};
use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Group-commit size buckets, in batches.
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The node's figures as Prometheus text.
pub fn render(snapshot: NodeSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(snapshot)));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

#[derive(Debug)]
struct Exposition(NodeSnapshot);

type Labels = Vec<(&'static str, String)>;

/// Writes one family: its descriptor, then each labelled value.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

fn shard_label(shard: usize) -> Labels {
    vec![("shard", shard.to_string())]
}

/// A histogram of microseconds, or of plain counts, as Prometheus buckets.
struct Buckets<'a> {
    histogram: &'a Histogram<u64>,
    bounds: &'a [f64],
    /// Recorded units per exported unit (1e6 for µs to seconds).
    scale: f64,
}

impl std::fmt::Debug for Buckets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Buckets")
    }
}

impl prometheus_client::metrics::TypedMetric for Buckets<'_> {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Buckets<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let h = self.histogram;
        // The encoder adds the buckets up itself: each gets only the values
        // above the previous bound.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .map(|&le| (le, h.count_between(0, (le * self.scale) as u64)))
            .chain(std::iter::once((f64::INFINITY, h.len())))
            .map(|(le, cumulative)| {
                let own = cumulative.saturating_sub(below);
                below = cumulative.max(below);
                (le, own)
            })
            .collect();
        // hdrhistogram keeps no exact sum: its mean times the count is
        // within the histogram's 1 %.
        let sum = h.mean() * h.len() as f64 / self.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, h.len(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn seconds(histogram: &Histogram<u64>) -> Buckets<'_> {
    Buckets {
        histogram,
        bounds: &LATENCY_BUCKETS_S,
        scale: 1e6,
    }
}

/// An API's name: `Produce`, `Fetch`… (`Unknown(n)` past the tables).
pub fn api_name(api: Api) -> (&'static str, String) {
    match api {
        Api::Native(tag) => {
            let name = fjord_net::wire::Request(tag).variant_name().map_or_else(
                || format!("Unknown({tag})"),
                |n| n.trim_end_matches("Request").to_owned(),
            );
            ("native", name)
        }
        Api::Kafka(key) => {
            use fjord_net::kafka::kafka_protocol::messages::ApiKey;
            let name = ApiKey::try_from(key)
                .map_or_else(|_| format!("Unknown({key})"), |k| format!("{k:?}"));
            ("kafka", name)
        }
    }
}

/// Each API's histograms merged over the shards.
pub fn requests_by_api(snapshot: &NodeSnapshot) -> BTreeMap<Api, Latency> {
    let mut merged: BTreeMap<Api, Latency> = BTreeMap::new();
    for (api, latency) in snapshot.shards.iter().flat_map(|s| &s.requests) {
        let into = merged.entry(*api).or_default();
        // Same bounds on every shard: adding cannot fail.
        let _ = into.total.add(&latency.total);
        let _ = into.last_second.add(&latency.last_second);
    }
    merged
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let e = &mut encoder;
        family(
            e,
            "fjord_ready",
            "1 when every shard serves (see /health for why not)",
            MetricType::Gauge,
            [(vec![], gauge(i64::from(super::health::check(s).ready)))],
        )?;
        self.traffic(e)?;
        self.requests(e)?;
        self.storage(e)?;
        self.shards(e)?;
        self.partitions(e)?;
        Ok(())
    }
}

impl Exposition {
    fn traffic(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut topics: BTreeMap<&str, super::metrics::TopicCounts> = BTreeMap::new();
        for (name, traffic) in self.0.shards.iter().flat_map(|s| &s.topics) {
            topics.entry(name).or_default().add(&traffic.total);
        }
        let per_topic = |pick: fn(&super::metrics::TopicCounts) -> u64| {
            topics
                .iter()
                .map(move |(name, c)| (vec![("topic", name.to_string())], counter(pick(c))))
        };
        family(
            e,
            "fjord_topic_produced_bytes",
            "Record-batch bytes appended by producers",
            MetricType::Counter,
            per_topic(|c| c.produced_bytes),
        )?;
        family(
            e,
            "fjord_topic_produced_records",
            "Records appended by producers",
            MetricType::Counter,
            per_topic(|c| c.produced_records),
        )?;
        family(
            e,
            "fjord_topic_fetched_bytes",
            "Record-batch bytes read by consumers",
            MetricType::Counter,
            per_topic(|c| c.fetched_bytes),
        )?;
        family(
            e,
            "fjord_topic_fetched_records",
            "Records read by consumers",
            MetricType::Counter,
            per_topic(|c| c.fetched_records),
        )?;
        family(
            e,
            "fjord_topic_produce_timeouts",
            "Produces answered REQUEST_TIMED_OUT: their batches may yet have been written",
            MetricType::Counter,
            per_topic(|c| c.produce_timeouts),
        )
    }

    fn requests(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let merged = requests_by_api(&self.0);
        family(
            e,
            "fjord_request_latency_seconds",
            "Time to serve a request, by protocol and API (its count is the request count)",
            MetricType::Histogram,
            merged.iter().map(|(api, latency)| {
                let (protocol, name) = api_name(*api);
                (
                    vec![("protocol", protocol.to_owned()), ("api", name)],
                    seconds(&latency.total),
                )
            }),
        )
    }

    fn storage(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shards = &self.0.shards;
        family(
            e,
            "fjord_append_latency_seconds",
            "Time for a partition to append a produce request's batches as safely as its acks ask",
            MetricType::Histogram,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), seconds(&s.append.total))),
        )?;
        family(
            e,
            "fjord_storage_write_latency_seconds",
            "One write of a group commit",
            MetricType::Histogram,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), seconds(&s.io.write_us))),
        )?;
        family(
            e,
            "fjord_storage_fdatasync_latency_seconds",
            "One fdatasync of a group commit",
            MetricType::Histogram,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), seconds(&s.io.fdatasync_us))),
        )?;
        family(
            e,
            "fjord_storage_io_waiting_seconds",
            "How long the oldest storage operation in flight has waited (0: none); a stalled disk shows here while it lasts",
            MetricType::Gauge,
            shards.iter().map(|s| {
                let waited = s.io_waiting_us as f64 / 1e6;
                (shard_label(s.shard), ConstGauge::new(waited))
            }),
        )?;
        family(
            e,
            "fjord_storage_io_in_flight",
            "Storage operations (writes, fdatasyncs, truncates) in flight",
            MetricType::Gauge,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), gauge(s.io_in_flight as i64))),
        )?;
        family(
            e,
            "fjord_storage_group_commit_batches",
            "Batches one group commit wrote",
            MetricType::Histogram,
            shards.iter().map(|s| {
                let buckets = Buckets {
                    histogram: &s.io.group_commit_batches,
                    bounds: &BATCH_BUCKETS,
                    scale: 1.0,
                };
                (shard_label(s.shard), buckets)
            }),
        )
    }

    fn shards(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shards = &self.0.shards;
        let per_shard = |pick: fn(&super::snapshot::ShardSnapshot) -> u64| {
            shards
                .iter()
                .map(move |s| (shard_label(s.shard), gauge(pick(s) as i64)))
        };
        family(
            e,
            "fjord_batch_cache_hits",
            "Reads served from the batch cache",
            MetricType::Counter,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), counter(s.cache_hits))),
        )?;
        family(
            e,
            "fjord_batch_cache_misses",
            "Reads that missed the batch cache",
            MetricType::Counter,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), counter(s.cache_misses))),
        )?;
        family(
            e,
            "fjord_batch_cache_bytes",
            "Bytes the batch cache holds",
            MetricType::Gauge,
            per_shard(|s| s.cache_bytes),
        )?;
        family(
            e,
            "fjord_connections",
            "Open client connections",
            MetricType::Gauge,
            per_shard(|s| s.connections as u64),
        )?;
        family(
            e,
            "fjord_staged_batches",
            "Batches acknowledged from the staging area and not yet written",
            MetricType::Gauge,
            per_shard(|s| s.staged_batches as u64),
        )?;
        family(
            e,
            "fjord_staged_bytes",
            "Bytes of the staging area those batches take",
            MetricType::Gauge,
            per_shard(|s| s.staged_bytes as u64),
        )?;
        family(
            e,
            "fjord_staging_capacity_bytes",
            "Bytes the staging area has for entries (0: the shard stages nothing)",
            MetricType::Gauge,
            per_shard(|s| s.staging_capacity_bytes as u64),
        )?;
        family(
            e,
            "fjord_staging_full_waits",
            "Appends that found the staging area full: they waited for room, or for their \
             write once its oldest entry had been held 5 s",
            MetricType::Counter,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), counter(s.io.staging_full_waits))),
        )?;
        family(
            e,
            "fjord_storage_appends_waiting_for_write",
            "Appends made durable only by their write though their log does not sync each \
             write: the staging area off, full or too small for the batch, and those behind \
             them (an acks=1 answer then waits for the disk; replicas' appends count too)",
            MetricType::Counter,
            shards.iter().map(|s| {
                (
                    shard_label(s.shard),
                    counter(s.io.appends_waiting_for_write),
                )
            }),
        )?;
        family(
            e,
            "fjord_raft_groups_ticking",
            "Raft groups ticked every tick; idle ones go quiet and are not",
            MetricType::Gauge,
            per_shard(|s| s.raft_groups_ticking as u64),
        )?;
        family(
            e,
            "fjord_partitions_not_served",
            "Partitions a shard could not open (retried)",
            MetricType::Gauge,
            per_shard(|s| s.not_served as u64),
        )?;
        // Every shard samples the same directory: shard 0's figure serves.
        let disk = shards.first();
        family(
            e,
            "fjord_disk_free_bytes",
            "Free bytes of the data directory's filesystem",
            MetricType::Gauge,
            disk.map(|s| (vec![], gauge(s.disk_free_bytes as i64))),
        )?;
        family(
            e,
            "fjord_disk_total_bytes",
            "Size of the data directory's filesystem",
            MetricType::Gauge,
            disk.map(|s| (vec![], gauge(s.disk_total_bytes as i64))),
        )?;
        family(
            e,
            "fjord_disk_low",
            "1 while produce is refused for want of disk space",
            MetricType::Gauge,
            disk.map(|s| (vec![], gauge(i64::from(s.disk_low)))),
        )
    }

    fn partitions(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.0.partitions();
        let listed = &all[..all.len().min(self.0.partitions_max)];
        let labels = |p: &PartitionRow| {
            vec![
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ]
        };
        let each = |pick: fn(&PartitionRow) -> i64| {
            listed.iter().map(move |p| (labels(p), gauge(pick(p))))
        };
        family(
            e,
            "fjord_partitions",
            "Partitions this node holds a replica of",
            MetricType::Gauge,
            [(vec![], gauge(all.len() as i64))],
        )?;
        family(
            e,
            "fjord_metrics_partitions_omitted",
            "Partitions left out of the per-partition families (metrics_partitions_max)",
            MetricType::Gauge,
            [(vec![], gauge((all.len() - listed.len()) as i64))],
        )?;
        let under = all.iter().filter(|p| p.leading && p.in_sync < p.replicas);
        family(
            e,
            "fjord_under_replicated_partitions",
            "Partitions this node leads with fewer replicas in sync than it has",
            MetricType::Gauge,
            [(vec![], gauge(under.count() as i64))],
        )?;
        let mut topic_sizes: BTreeMap<&str, i64> = BTreeMap::new();
        for p in &all {
            *topic_sizes.entry(&p.topic).or_default() += p.size_bytes;
        }
        family(
            e,
            "fjord_topic_size_bytes",
            "Bytes on disk of the topic's partitions on this node",
            MetricType::Gauge,
            topic_sizes
                .iter()
                .map(|(t, b)| (vec![("topic", t.to_string())], gauge(*b))),
        )?;
        family(
            e,
            "fjord_partition_log_start_offset",
            "First offset held",
            MetricType::Gauge,
            each(|p| p.log_start),
        )?;
        family(
            e,
            "fjord_partition_log_end_offset",
            "Next offset readers reach (the high watermark when replicated)",
            MetricType::Gauge,
            each(|p| p.log_end),
        )?;
        family(
            e,
            "fjord_partition_size_bytes",
            "Bytes on disk",
            MetricType::Gauge,
            each(|p| p.size_bytes),
        )?;
        family(
            e,
            "fjord_partition_leader",
            "The leader's node id (-1 while unknown)",
            MetricType::Gauge,
            each(|p| p.leader.map_or(-1, i64::from)),
        )?;
        family(
            e,
            "fjord_partition_replicas",
            "Voting replicas",
            MetricType::Gauge,
            each(|p| p.replicas as i64),
        )?;
        family(
            e,
            "fjord_partition_in_sync_replicas",
            "Replicas in sync, as the leader sees them (0 on a follower)",
            MetricType::Gauge,
            each(|p| p.in_sync as i64),
        )?;
        family(
            e,
            "fjord_partition_replication_lag_records",
            "Records the slowest replica is behind the leader (leader only)",
            MetricType::Gauge,
            each(|p| p.replication_lag),
        )?;
        let mut lag: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (group, topic, _, records) in self.0.group_lag() {
            *lag.entry((group, topic)).or_default() += records;
        }
        family(
            e,
            "fjord_consumer_group_lag_records",
            "Records a group has yet to consume, summed over the topic's partitions this node leads",
            MetricType::Gauge,
            lag.iter().take(self.0.partitions_max).map(|((g, t), n)| {
                (
                    vec![("group", g.to_string()), ("topic", t.to_string())],
                    gauge(*n),
                )
            }),
        )
    }
}
