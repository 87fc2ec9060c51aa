//! The `bench` load generator: open-loop `produce` at a target rate,
//! `consume` as fast as possible, and `e2e` (produce while consuming).
//! Latencies go into hdrhistogram; every run prints a progress line a
//! second, a summary, and optionally a JSON report.

pub mod consume;
pub mod e2e;
pub mod host;
pub mod kafka;
pub mod local;
pub mod produce;
pub mod report;
pub mod scrape;
pub mod units;

use fjord_client::{Admin, Client, ClientConfig, ClientError};
use futures::executor::block_on;
use report::Progress;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A client for one producer or consumer, its transport pinned to `cpu`,
/// reaching the cluster through any of `bootstrap`.
pub fn client(bootstrap: &[SocketAddr], cpu: Option<usize>) -> Result<Client, String> {
    let mut config = ClientConfig::with_bootstrap(bootstrap.to_vec());
    config.client_id = "fjord-bench".into();
    config.pin_core = cpu;
    Client::new(config).map_err(|e| e.to_string())
}

/// Creates `topic` with `partitions` (one per data shard when `None`) and
/// `configs` unless it exists; returns each partition's shard address.
pub fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: &[(String, String)],
) -> Result<Vec<SocketAddr>, String> {
    let partitions = match partitions {
        Some(p) => p,
        None => {
            let metadata =
                block_on(client.metadata(Some(Vec::new()))).map_err(|e| e.to_string())?;
            // Every shard of every node.
            let shards: usize = metadata
                .brokers
                .iter()
                .flatten()
                .map(|b| b.shard_ports.as_ref().map_or(1, |p| p.len()))
                .sum();
            shards.max(1) as i32
        }
    };
    let admin = Admin::new(client.clone());
    match block_on(admin.create_replicated_topic(topic, partitions, replication_factor, configs)) {
        Ok(()) => eprintln!("bench: created topic {topic} with {partitions} partitions"),
        Err(ClientError::Broker {
            code: fjord_net::ErrorCode::TopicAlreadyExists,
            ..
        }) => {}
        Err(e) => return Err(format!("cannot create topic {topic}: {e}")),
    }
    // A replicated topic's partitions have leaders once elected, and in a
    // cluster the other nodes learn of a new topic a moment after the
    // controller answers.
    let deadline = Instant::now() + LEADERS_WAIT;
    loop {
        let routes = match block_on(client.routes(topic)) {
            Ok(routes) => routes,
            Err(ClientError::Broker {
                code: fjord_net::ErrorCode::UnknownTopicOrPartition,
                ..
            }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let found: Result<Vec<SocketAddr>, String> = routes
            .partitions
            .iter()
            .enumerate()
            .map(|(p, r)| {
                r.map(|r| r.addr)
                    .ok_or(format!("partition {p} of {topic} has no leader"))
            })
            .collect();
        match found {
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            found => return found,
        }
    }
}

/// Longest wait for a new topic's partitions to elect leaders.
const LEADERS_WAIT: Duration = Duration::from_secs(15);

/// Prints a progress line every second until `done`, with the share of
/// that second the host stole from this machine's cores where known, and,
/// for `e2e`, the latencies of what was `delivered`.
pub fn watch(
    progress: &Progress,
    delivered: Option<&Progress>,
    start: Instant,
    done: impl Fn() -> bool,
) {
    let mut last = (0, 0);
    let mut last_at = start;
    let mut cpu = host::CpuTimes::now();
    while !done() {
        std::thread::sleep(Duration::from_millis(20));
        if last_at.elapsed() >= Duration::from_secs(1) {
            let now = Instant::now();
            let cpu_now = host::CpuTimes::now();
            let steal = cpu
                .zip(cpu_now)
                .and_then(|(before, after)| host::CpuShare::between(before, after))
                .map_or(String::new(), |s| {
                    format!("  steal {:>2.0} %", s.steal_percent)
                });
            cpu = cpu_now;
            let delivery = delivered.map_or(String::new(), Progress::delivery_line);
            eprintln!(
                "{}{delivery}{steal}",
                progress.line(start.elapsed(), last, now - last_at)
            );
            last = (
                progress.messages.load(Ordering::Relaxed),
                progress.bytes.load(Ordering::Relaxed),
            );
            last_at = now;
        }
    }
}
