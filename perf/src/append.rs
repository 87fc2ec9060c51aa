//! Fjord's partition log under the loads the limit probes apply: many
//! batches of one size, from one or more appenders on one shard.

use crate::{Latency, Rate};
use fjord_core::{BatchBuilder, FsyncPolicy};
use fjord_storage::{BatchCache, DataDir, Log, LogConfig};
use futures::stream::{FuturesUnordered, StreamExt};
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

/// One load on the log.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Scenario {
    /// Bytes per batch.
    pub batch_bytes: usize,
    /// Concurrent appenders (tasks on the shard).
    pub appenders: usize,
    /// Appends each appender keeps unacknowledged (1: wait for each ack).
    pub in_flight: usize,
    /// Fsync policy of the log.
    #[serde(serialize_with = "display")]
    pub fsync: FsyncPolicy,
    /// Bytes to append in all.
    pub total_bytes: u64,
}

fn display<S: serde::Serializer>(policy: &FsyncPolicy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&policy.to_string())
}

/// What a scenario achieved.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Outcome {
    /// Bytes appended and acknowledged, over the time from first append to last ack.
    pub rate: Rate,
    /// Append-to-acknowledgement latency.
    pub latency: Latency,
    /// Batches appended.
    pub appends: u64,
    /// Group commits.
    pub flushes: u64,
    /// fdatasync rounds.
    pub syncs: u64,
    /// Shared blocks held back and written on their own (see the storage
    /// crate's `pipeline`).
    pub head_writes: u64,
}

/// A batch of about `bytes` bytes made of 1 KiB records (one record if smaller).
pub fn batch_of(bytes: usize) -> Vec<u8> {
    let record = bytes.min(1024);
    let mut builder = BatchBuilder::new();
    let value = vec![0x66u8; record.saturating_sub(80)];
    loop {
        builder.push(1_700_000_000_000, Some(b"key"), Some(&value), &[]);
        if builder.encoded_len() + record > bytes {
            break;
        }
    }
    builder.build()
}

/// Runs `scenario` against a fresh log under `dir`, on a glommio executor
/// pinned to `cpu` (or unbound).
pub fn run(dir: &Path, scenario: Scenario, cpu: Option<usize>) -> io::Result<Outcome> {
    let data = DataDir::create(dir)?;
    let placement = cpu.map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
    // The shard's DMA memory, faulted in as the executor starts (as a
    // broker's is), before the clock: what the log's cache and staged
    // bytes fill.
    let dma_memory =
        fjord_storage::shard::dma_memory_bytes(CACHE_BYTES, LogConfig::default().staged_bytes_max);
    fjord_storage::shard::executor("perf-append", placement, dma_memory)
        .spawn(move || async move { drive(data, scenario).await })
        .map_err(|e| io::Error::other(e.to_string()))?
        .join()
        .map_err(|e| io::Error::other(e.to_string()))?
}

/// The log's batch cache.
pub const CACHE_BYTES: usize = 64 << 20;

async fn drive(data: DataDir, scenario: Scenario) -> io::Result<Outcome> {
    data.prime().await.map_err(io::Error::other)?;
    let config = LogConfig {
        fsync: scenario.fsync,
        max_batch_bytes: scenario.batch_bytes + 4096,
        ..LogConfig::default()
    };
    // Unique per run: concurrent runs (two benches, a bench and a probe)
    // must not share a log directory.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = data
        .path()
        .join(format!("perf-{}-{run}", std::process::id()));
    let log = Rc::new(
        Log::open(&dir, config, BatchCache::new(CACHE_BYTES))
            .await
            .map_err(io::Error::other)?,
    );
    let batch = Rc::new(batch_of(scenario.batch_bytes));
    let batches = (scenario.total_bytes / batch.len() as u64).max(1);
    let per_appender = batches.div_ceil(scenario.appenders as u64);
    let start = Instant::now();
    let mut appenders = Vec::new();
    for _ in 0..scenario.appenders {
        let (log, batch) = (log.clone(), batch.clone());
        appenders.push(glommio::spawn_local(async move {
            let mut histogram = hdrhistogram::Histogram::<u64>::new(3).map_err(io::Error::other)?;
            let mut pending = FuturesUnordered::new();
            for _ in 0..per_appender {
                if pending.len() >= scenario.in_flight {
                    record(&mut histogram, pending.next().await)?;
                }
                let sent = Instant::now();
                let appended = log.append(&batch).await.map_err(io::Error::other)?;
                pending.push(async move { appended.durable.await.map(|()| sent.elapsed()) });
            }
            while let Some(done) = pending.next().await {
                record(&mut histogram, Some(done))?;
            }
            Ok::<_, io::Error>(histogram)
        }));
    }
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3).map_err(io::Error::other)?;
    for appender in appenders {
        latencies.add(appender.await?).map_err(io::Error::other)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let stats = log.stats();
    log.close().await.map_err(io::Error::other)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(Outcome {
        rate: Rate {
            bytes: stats.appends * batch.len() as u64,
            seconds,
        },
        latency: Latency::from_histogram_ns(&latencies),
        appends: stats.appends,
        flushes: stats.flushes,
        syncs: stats.syncs,
        head_writes: stats.head_writes,
    })
}

fn record(
    histogram: &mut hdrhistogram::Histogram<u64>,
    done: Option<fjord_storage::error::Result<std::time::Duration>>,
) -> io::Result<()> {
    if let Some(done) = done {
        let latency = done.map_err(io::Error::other)?;
        histogram
            .record((latency.as_nanos() as u64).max(1))
            .map_err(io::Error::other)?;
    }
    Ok(())
}
