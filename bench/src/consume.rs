//! `bench consume`: read a topic from the beginning to its end as it was
//! when the run started, as fast as one consumer can, counting records in
//! the batches where they arrive (the consumer's zero-copy `poll_batches`);
//! or, with `--group`, as the members of a consumer group joining one after
//! another, reporting each partition's longest pause (the rebalances).

use crate::report::Progress;
use fjord_client::{Admin, Client, Consumer, ConsumerConfig, Seek};
use futures::executor::block_on;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Polls that find nothing before the run gives up on reaching the end.
const EMPTY_POLLS_MAX: u32 = 5;

/// Reads `topic` to its current end; returns the wall time.
pub fn run(client: &Client, topic: &str, progress: &Arc<Progress>) -> Result<Duration, String> {
    let described =
        block_on(Admin::new(client.clone()).describe_topic(topic)).map_err(|e| e.to_string())?;
    let total: i64 = described
        .partitions
        .iter()
        .map(|p| p.log_end_offset - p.log_start_offset)
        .sum();
    let total = u64::try_from(total).unwrap_or(0);
    let config = ConsumerConfig {
        partition_bytes_max: 8 << 20,
        fetch_bytes_max: 64 << 20,
        // A benchmark reads what it asked for or fails: no silent skips.
        offset_reset: None,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config);
    block_on(consumer.assign(topic, None, Seek::Earliest)).map_err(|e| e.to_string())?;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (progress, done) = (progress.clone(), done.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut empty = 0;
            let mut consumed = 0u64;
            while consumed < total && empty < EMPTY_POLLS_MAX {
                let polled = block_on(consumer.poll_batches(Duration::from_millis(200)))
                    .map_err(|e| e.to_string())?;
                let records = polled.record_count();
                empty = if records == 0 { empty + 1 } else { 0 };
                consumed += records;
                progress.messages.fetch_add(records, Ordering::Relaxed);
                progress
                    .bytes
                    .fetch_add(polled.len_bytes() as u64, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
            Ok(())
        })
    };
    let start = Instant::now();
    crate::watch(progress, start, || {
        done.load(Ordering::Relaxed) || reader.is_finished()
    });
    let elapsed = start.elapsed();
    reader
        .join()
        .map_err(|_| "the consumer thread panicked".to_string())??;
    let consumed = progress.messages.load(Ordering::Relaxed);
    if consumed < total {
        return Err(format!(
            "read {consumed} of {total} records: the end was not reached"
        ));
    }
    Ok(elapsed)
}

/// A group run's rebalance pauses: per partition, the longest time between
/// two deliveries while records were left to read (a partition moving
/// between members, or a member joining, shows here).
#[derive(Debug, Default, Clone)]
pub struct Pauses {
    /// By partition: the longest gap.
    pub longest: BTreeMap<i32, Duration>,
}

impl Pauses {
    /// The longest gap of any partition, and which.
    pub fn worst(&self) -> Option<(i32, Duration)> {
        self.longest
            .iter()
            .max_by_key(|(_, d)| **d)
            .map(|(p, d)| (*p, *d))
    }
}

/// Reads `topic` to its current end as the members of `group`, one per
/// client, the k-th joining `stagger × k` after the first, so that the run
/// goes through rebalances; returns the wall time and the pauses.
pub fn run_group(
    clients: Vec<Client>,
    topic: &str,
    group: &str,
    stagger: Duration,
    progress: &Arc<Progress>,
) -> Result<(Duration, Pauses), String> {
    let first = clients.first().ok_or("no consumer")?;
    let described =
        block_on(Admin::new(first.clone()).describe_topic(topic)).map_err(|e| e.to_string())?;
    let ends: BTreeMap<i32, i64> = described
        .partitions
        .iter()
        .map(|p| (p.partition, p.log_end_offset))
        .collect();
    let total: i64 = described
        .partitions
        .iter()
        .map(|p| p.log_end_offset - p.log_start_offset)
        .sum();
    let total = u64::try_from(total).unwrap_or(0);
    let done = Arc::new(AtomicBool::new(false));
    // The bench's own bookkeeping, off the measured path: a lock is fine.
    // Per partition: its first delivery, its longest pause, its last offset.
    type Seen = BTreeMap<i32, (Instant, Duration, i64)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let start = Instant::now();
    let members: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, client)| {
            let (progress, done, seen) = (progress.clone(), done.clone(), seen.clone());
            let (topic, group, ends) = (topic.to_owned(), group.to_owned(), ends.clone());
            std::thread::spawn(move || -> Result<(), String> {
                std::thread::sleep(stagger * k as u32);
                let config = ConsumerConfig {
                    partition_bytes_max: 8 << 20,
                    fetch_bytes_max: 64 << 20,
                    offset_reset: Some(Seek::Earliest),
                    ..ConsumerConfig::default()
                };
                let mut consumer = Consumer::new(&client, config);
                block_on(consumer.subscribe(&[&topic], &group)).map_err(|e| e.to_string())?;
                while !done.load(Ordering::Relaxed) {
                    let polled = block_on(consumer.poll_batches(Duration::from_millis(100)))
                        .map_err(|e| e.to_string())?;
                    let now = Instant::now();
                    let mut seen = seen.lock().map_err(|_| "poisoned")?;
                    for part in polled.parts() {
                        let next = part
                            .batches()
                            .last()
                            .map_or(part.position, |b| b.last_offset() + 1);
                        let entry = seen
                            .entry(part.partition)
                            .or_insert((now, Duration::ZERO, 0));
                        entry.1 = entry.1.max(now - entry.0);
                        entry.0 = now;
                        entry.2 = entry.2.max(next);
                    }
                    let finished = ends
                        .iter()
                        .all(|(p, end)| seen.get(p).is_some_and(|s| s.2 >= *end));
                    drop(seen);
                    progress
                        .messages
                        .fetch_add(polled.record_count(), Ordering::Relaxed);
                    progress
                        .bytes
                        .fetch_add(polled.len_bytes() as u64, Ordering::Relaxed);
                    if finished {
                        done.store(true, Ordering::Relaxed);
                    }
                }
                block_on(consumer.close()).map_err(|e| e.to_string())
            })
        })
        .collect();
    crate::watch(progress, start, || {
        done.load(Ordering::Relaxed) || members.iter().all(|m| m.is_finished())
    });
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    for member in members {
        member
            .join()
            .map_err(|_| "a consumer thread panicked".to_string())??;
    }
    let consumed = progress.messages.load(Ordering::Relaxed);
    if consumed < total {
        return Err(format!(
            "read {consumed} of {total} records: the end was not reached"
        ));
    }
    let pauses = Pauses {
        longest: seen
            .lock()
            .map_err(|_| "poisoned")?
            .iter()
            .map(|(p, (_, gap, _))| (*p, *gap))
            .collect(),
    };
    Ok((elapsed, pauses))
}
