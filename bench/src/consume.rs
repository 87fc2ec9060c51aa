//! `bench consume`: read a topic from the beginning to its end as it was
//! when the run started, as fast as one consumer can, counting records in
//! the batches where they arrive (the consumer's zero-copy `poll_batches`);
//! or, with `--group`, as the members of a consumer group joining one after
//! another, reporting each partition's longest pause (the rebalances).

use crate::kafka::KafkaClient;
use crate::report::Progress;
use fjord_client::{Admin, Client, Consumer, ConsumerConfig, Seek};
use futures::executor::block_on;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Polls that find nothing before the run gives up on reaching the end.
const EMPTY_POLLS_MAX: u32 = 5;

/// Reads `topic` to its current end; returns the wall time.
pub fn run(client: &Client, topic: &str, progress: &Arc<Progress>) -> Result<Duration, String> {
    let (_, total) = extent(client, topic)?;
    let config = ConsumerConfig {
        // A benchmark reads what it asked for or fails: no silent skips.
        offset_reset: None,
        ..read_config()
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
    crate::watch(progress, None, start, || {
        done.load(Ordering::Relaxed) || reader.is_finished()
    });
    let elapsed = start.elapsed();
    reader
        .join()
        .map_err(|_| "the consumer thread panicked".to_string())??;
    reached(progress, total)?;
    Ok(elapsed)
}

/// Each partition's end now, and the records the topic holds.
fn extent(client: &Client, topic: &str) -> Result<(BTreeMap<i32, i64>, u64), String> {
    let (ranges, total) = ranges(client, topic)?;
    let ends = ranges.iter().map(|(&p, &(_, end))| (p, end)).collect();
    Ok((ends, total))
}

/// By partition, its offsets now: `(start, end)`.
type Ranges = BTreeMap<i32, (i64, i64)>;

/// Each partition's offsets now, and the records the topic holds.
fn ranges(client: &Client, topic: &str) -> Result<(Ranges, u64), String> {
    let described =
        block_on(Admin::new(client.clone()).describe_topic(topic)).map_err(|e| e.to_string())?;
    let ranges = described
        .partitions
        .iter()
        .map(|p| (p.partition, (p.log_start_offset, p.log_end_offset)))
        .collect();
    let total: i64 = described
        .partitions
        .iter()
        .map(|p| p.log_end_offset - p.log_start_offset)
        .sum();
    Ok((ranges, u64::try_from(total).unwrap_or(0)))
}

/// Reads `topic` to its current end through the Kafka listener at
/// `bootstrap` (every partition fetched at once, one request in flight
/// each, from the partition's leader); returns the wall time.
pub fn run_kafka(
    client: &Client,
    bootstrap: SocketAddr,
    topic: &str,
    cpu: Option<usize>,
    progress: &Arc<Progress>,
) -> Result<Duration, String> {
    let (ranges, total) = ranges(client, topic)?;
    let failed = Arc::new(OnceLock::new());
    let done = Arc::new(AtomicBool::new(false));
    let placement = cpu.map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
    let (topic, task_progress, task_failed, task_done) = (
        topic.to_owned(),
        progress.clone(),
        failed.clone(),
        done.clone(),
    );
    glommio::LocalExecutorBuilder::new(placement)
        .name("bench-kafka")
        .io_memory(crate::kafka::IO_MEMORY)
        .spawn(move || async move {
            let kafka = KafkaClient::default();
            let read = async {
                let leaders = kafka.leaders(bootstrap, &topic).await?;
                let reads = ranges.iter().map(|(&p, &range)| {
                    let leader = usize::try_from(p)
                        .ok()
                        .and_then(|p| leaders.get(p).copied());
                    let (kafka, topic, progress) = (&kafka, &topic, &task_progress);
                    async move {
                        let leader = leader.ok_or(format!("partition {p}: no leader"))?;
                        read_partition(kafka, leader, topic, p, range, progress).await
                    }
                });
                futures::future::try_join_all(reads).await.map(|_| ())
            };
            if let Err(why) = read.await {
                let _ = task_failed.set(why);
            }
            task_done.store(true, Ordering::Relaxed);
        })
        .map_err(|e| format!("cannot start the consumer: {e}"))?;
    let start = Instant::now();
    crate::watch(progress, None, start, || done.load(Ordering::Relaxed));
    let elapsed = start.elapsed();
    if let Some(why) = failed.get() {
        return Err(why.clone());
    }
    reached(progress, total)?;
    Ok(elapsed)
}

/// Fetches one partition from `start` to `end`, counting its records.
async fn read_partition(
    kafka: &KafkaClient,
    leader: SocketAddr,
    topic: &str,
    partition: i32,
    (start, end): (i64, i64),
    progress: &Progress,
) -> Result<(), String> {
    let mut offset = start;
    let mut empty = 0;
    while offset < end {
        let (records, _) = kafka
            .fetch(
                leader,
                topic,
                partition,
                offset,
                KAFKA_FETCH_BYTES,
                Duration::from_millis(200),
            )
            .await?;
        let mut count = 0u64;
        for batch in fjord_core::batch::batches(&records) {
            // A fetch may begin inside the batch holding `offset` (Kafka
            // sends whole batches): what is below it was counted before.
            if batch.last_offset() < offset {
                continue;
            }
            count += u64::try_from(batch.last_offset() + 1 - offset.max(batch.base_offset()))
                .unwrap_or(0);
            offset = batch.last_offset() + 1;
        }
        empty = if count == 0 { empty + 1 } else { 0 };
        if empty >= EMPTY_POLLS_MAX {
            return Err(format!(
                "partition {partition}: nothing past offset {offset} of {end}"
            ));
        }
        progress.messages.fetch_add(count, Ordering::Relaxed);
        progress
            .bytes
            .fetch_add(records.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Bytes of one partition a Kafka fetch asks for (the native consumer's
/// `partition_bytes_max` in [`read_config`]).
const KAFKA_FETCH_BYTES: i32 = 8 << 20;

/// Large fetches: the consumer is measured, not its batching.
fn read_config() -> ConsumerConfig {
    ConsumerConfig {
        partition_bytes_max: 8 << 20,
        fetch_bytes_max: 64 << 20,
        ..ConsumerConfig::default()
    }
}

/// An error unless the run read the `total` records it set out to.
fn reached(progress: &Progress, total: u64) -> Result<(), String> {
    let consumed = progress.messages.load(Ordering::Relaxed);
    if consumed < total {
        return Err(format!(
            "read {consumed} of {total} records: the end was not reached"
        ));
    }
    Ok(())
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

/// One partition's deliveries so far in a group run.
struct Delivered {
    /// The last one.
    last: Instant,
    /// The longest gap between two.
    longest: Duration,
    /// The offset after the last record delivered.
    next: i64,
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
    let (ends, total) = extent(clients.first().ok_or("no consumer")?, topic)?;
    let done = Arc::new(AtomicBool::new(false));
    // The bench's own bookkeeping, off the measured path: a lock is fine.
    let seen: Arc<Mutex<BTreeMap<i32, Delivered>>> = Arc::default();
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
                    offset_reset: Some(Seek::Earliest),
                    ..read_config()
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
                        let entry = seen.entry(part.partition).or_insert(Delivered {
                            last: now,
                            longest: Duration::ZERO,
                            next: 0,
                        });
                        entry.longest = entry.longest.max(now - entry.last);
                        entry.last = now;
                        entry.next = entry.next.max(next);
                    }
                    let finished = ends
                        .iter()
                        .all(|(p, end)| seen.get(p).is_some_and(|s| s.next >= *end));
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
    crate::watch(progress, None, start, || {
        done.load(Ordering::Relaxed) || members.iter().all(|m| m.is_finished())
    });
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    for member in members {
        member
            .join()
            .map_err(|_| "a consumer thread panicked".to_string())??;
    }
    reached(progress, total)?;
    let pauses = Pauses {
        longest: seen
            .lock()
            .map_err(|_| "poisoned")?
            .iter()
            .map(|(p, delivered)| (*p, delivered.longest))
            .collect(),
    };
    Ok((elapsed, pauses))
}
