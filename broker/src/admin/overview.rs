//! `/v1/overview`: the node snapshot as JSON for the console and `fjord
//! top`. Counters are totals since start, rates (`per_second`) and latency
//! percentiles the last whole second's as the broker measured it
//! (milliseconds), so every reader sees the same figures however often it
//! asks. Unlike `/metrics` it lists every partition: it is read by
//! a person's page or terminal, one node at a time.

use super::exposition::{api_name, requests_by_api};
use super::metrics::{Api, TopicCounts, Traffic};
use super::snapshot::NodeSnapshot;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The JSON document.
pub fn render(snapshot: &NodeSnapshot) -> Value {
    let health = super::health::check(snapshot);
    let shards = &snapshot.shards;
    let mut totals = Traffic::default();
    let mut topics: BTreeMap<&str, Traffic> = BTreeMap::new();
    for (name, traffic) in shards.iter().flat_map(|s| &s.topics) {
        for sum in [topics.entry(name).or_default(), &mut totals] {
            sum.total.add(&traffic.total);
            sum.last_second.add(&traffic.last_second);
        }
    }
    let partitions = snapshot.partitions();
    let groups = snapshot.group_lag();
    let mut per_topic: BTreeMap<&str, (usize, i64, i64, i64)> = BTreeMap::new();
    for p in &partitions {
        topics.entry(&p.topic).or_default();
        let t = per_topic.entry(&p.topic).or_default();
        t.0 += 1;
        t.1 += p.size_bytes;
        t.2 += p.log_end;
    }
    for (_, topic, _, lag) in &groups {
        per_topic.entry(topic).or_default().3 += lag;
    }
    let requests = requests_by_api(snapshot);
    let p99_of = |apis: &[Api]| {
        let mut merged: Option<Histogram<u64>> = None;
        for latency in apis.iter().filter_map(|api| requests.get(api)) {
            match &mut merged {
                Some(m) => drop(m.add(&latency.last_second)),
                None => merged = Some(latency.last_second.clone()),
            }
        }
        merged.map_or(0.0, |h| p99_ms(&h))
    };
    let produce = [
        Api::Native(fjord_net::wire::Request::ProduceRequest.0),
        Api::Kafka(0),
    ];
    let fetch = [
        Api::Native(fjord_net::wire::Request::FetchRequest.0),
        Api::Kafka(1),
    ];
    let mut append = None::<Histogram<u64>>;
    let mut fdatasync = None::<Histogram<u64>>;
    let mut commit_batches = (0u64, 0.0f64);
    for s in shards {
        for (into, from) in [
            (&mut append, &s.append.last_second),
            (&mut fdatasync, &s.io.fdatasync_us),
        ] {
            match into {
                Some(h) => drop(h.add(from)),
                None => *into = Some(from.clone()),
            }
        }
        let g = &s.io.group_commit_batches;
        commit_batches.0 += g.len();
        commit_batches.1 += g.mean() * g.len() as f64;
    }
    let disk = shards.first();
    json!({
        "node": snapshot.node,
        "ready": health.ready,
        "reasons": health.reasons,
        "warnings": health.warnings,
        "metrics": snapshot.metrics_enabled,
        "shards": snapshot.shard_count,
        "controller": snapshot.controller,
        "disk": {
            "free_bytes": disk.map_or(0, |s| s.disk_free_bytes),
            "total_bytes": disk.map_or(0, |s| s.disk_total_bytes),
            "low": disk.is_some_and(|s| s.disk_low),
            // The longest wait of a storage operation in flight, once it is
            // a stall (see `disk_stall`); 0 otherwise.
            "stalled_ms": shards.iter().filter_map(|s| s.stalled_ms()).max().unwrap_or(0),
        },
        "connections": shards.iter().map(|s| s.connections).sum::<usize>(),
        "staged_batches": shards.iter().map(|s| s.staged_batches).sum::<usize>(),
        "staged_bytes": shards.iter().map(|s| s.staged_bytes).sum::<usize>(),
        "cache": {
            "hits": shards.iter().map(|s| s.cache_hits).sum::<u64>(),
            "misses": shards.iter().map(|s| s.cache_misses).sum::<u64>(),
            "bytes": shards.iter().map(|s| s.cache_bytes).sum::<u64>(),
        },
        "totals": counts_json(&totals.total),
        "per_second": counts_json(&totals.last_second),
        "latency_ms": {
            "produce_p99": p99_of(&produce),
            "fetch_p99": p99_of(&fetch),
            "append_p99": append.map_or(0.0, |h| p99_ms(&h)),
            "fdatasync_p99": fdatasync.map_or(0.0, |h| p99_ms(&h)),
        },
        "group_commit_batches_mean": if commit_batches.0 == 0 { 0.0 } else { commit_batches.1 / commit_batches.0 as f64 },
        "requests": requests.iter().map(|(api, latency)| {
            let (protocol, name) = api_name(*api);
            json!({
                "protocol": protocol,
                "api": name,
                "count": latency.total.len(),
                "p99_ms": p99_ms(&latency.total),
            })
        }).collect::<Vec<_>>(),
        "topics": topics.iter().map(|(name, traffic)| {
            let (partitions, size_bytes, end_offsets, lag) = per_topic.get(name).copied().unwrap_or_default();
            let mut topic = counts_json(&traffic.total);
            topic["per_second"] = counts_json(&traffic.last_second);
            topic["name"] = json!(name);
            topic["partitions"] = json!(partitions);
            topic["size_bytes"] = json!(size_bytes);
            topic["end_offsets"] = json!(end_offsets);
            topic["group_lag"] = json!(lag);
            topic
        }).collect::<Vec<_>>(),
        "partitions": partitions.iter().map(|p| json!({
            "topic": p.topic,
            "partition": p.partition,
            "shard": p.shard,
            "leader": p.leader,
            "log_start": p.log_start,
            "log_end": p.log_end,
            "size_bytes": p.size_bytes,
            "replicas": p.replicas,
            "in_sync": p.in_sync,
            "replication_lag": p.replication_lag,
        })).collect::<Vec<_>>(),
        "groups": groups.iter().map(|(group, topic, partition, lag)| json!({
            "group": group,
            "topic": topic,
            "partition": partition,
            "lag": lag,
        })).collect::<Vec<_>>(),
    })
}

fn counts_json(c: &TopicCounts) -> Value {
    json!({
        "produced_bytes": c.produced_bytes,
        "produced_records": c.produced_records,
        "fetched_bytes": c.fetched_bytes,
        "fetched_records": c.fetched_records,
    })
}

/// The 99th percentile in milliseconds (0 for no values).
fn p99_ms(h: &Histogram<u64>) -> f64 {
    h.value_at_quantile(0.99) as f64 / 1000.0
}
