//! `bench e2e`: produce at a rate while one consumer follows the topic;
//! each record's latency runs from its due time (stamped in its first
//! bytes by the producer) to its delivery to the consumer. With `--kafka`
//! both sides speak Kafka's protocol.

use crate::kafka::KafkaClient;
use crate::produce::{self, ProduceConfig, STAMP_LEN};
use crate::report::{MERGE_EVERY, Progress, histogram};
use fjord_client::{Admin, Client, Consumer, ConsumerConfig, Seek};
use fjord_core::batch::Batch;
use futures::executor::block_on;
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the consumer may trail the last acknowledgement at the end.
const CATCH_UP_MAX: Duration = Duration::from_secs(10);
/// How long a Kafka fetch waits for records (a native poll's timeout).
const KAFKA_WAIT: Duration = Duration::from_millis(100);
/// Bytes of one partition a Kafka fetch asks for.
const KAFKA_FETCH_BYTES: i32 = 1 << 20;

/// Runs producers and one consumer; `delivered` gets the end-to-end
/// latencies, `acked` the producers'. Returns the producers' wall time.
pub fn run(
    config: &ProduceConfig,
    producers: Vec<Client>,
    consumer_client: &Client,
    routes: Vec<SocketAddr>,
    acked: &Arc<Progress>,
    delivered: &Arc<Progress>,
) -> Result<Duration, String> {
    let producing = Arc::new(AtomicBool::new(true));
    let follow = Follow {
        latencies: histogram(),
        last_merge: Instant::now(),
        caught_up_by: None,
        delivered: delivered.clone(),
        acked: acked.clone(),
        producing: producing.clone(),
    };
    let reader = match config.kafka {
        None => follow_native(follow, consumer_client, &config.topic)?,
        Some(bootstrap) => follow_kafka(follow, consumer_client, bootstrap, &config.topic)?,
    };
    let elapsed = produce::run(config, producers, routes, acked, Some(delivered));
    producing.store(false, Ordering::Relaxed);
    reader()?;
    elapsed
}

/// Waits for the consumer's end: what it failed with, if it did.
type Reader = Box<dyn FnOnce() -> Result<(), String>>;

/// The consumer's side: latencies of what it delivered, and when to stop.
struct Follow {
    latencies: Histogram<u64>,
    last_merge: Instant,
    caught_up_by: Option<Instant>,
    delivered: Arc<Progress>,
    acked: Arc<Progress>,
    producing: Arc<AtomicBool>,
}

impl Follow {
    /// Counts the records of `batch` from `position` on.
    fn deliver(&mut self, batch: &Batch<'_>, position: i64) -> Result<(), String> {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // Counted here and added once a batch, not with two atomic adds a
        // message (a locked instruction each, a million a second).
        let (mut messages, mut bytes) = (0, 0);
        for record in batch.records().map_err(|e| e.to_string())? {
            let record = record.map_err(|e| e.to_string())?;
            if record.offset < position {
                continue;
            }
            let stamp = record
                .value
                .and_then(|v| v.first_chunk::<STAMP_LEN>())
                .map_or(now_ns, |s| u64::from_be_bytes(*s));
            let _ = self
                .latencies
                .record((now_ns.saturating_sub(stamp) / 1000).max(1));
            messages += 1;
            bytes += record.value.map_or(0, |v| v.len()) as u64;
        }
        self.delivered
            .messages
            .fetch_add(messages, Ordering::Relaxed);
        self.delivered.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// After each poll: merges latencies every [`MERGE_EVERY`]; whether to stop
    /// (production over and everything acknowledged delivered, or the
    /// catch-up time spent).
    fn done(&mut self) -> bool {
        if self.last_merge.elapsed() >= MERGE_EVERY {
            self.delivered.merge(&mut self.latencies);
            self.last_merge = Instant::now();
        }
        if self.producing.load(Ordering::Relaxed) {
            return false;
        }
        let deadline = *self
            .caught_up_by
            .get_or_insert_with(|| Instant::now() + CATCH_UP_MAX);
        self.delivered.messages.load(Ordering::Relaxed)
            >= self.acked.messages.load(Ordering::Relaxed)
            || Instant::now() >= deadline
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.delivered.merge(&mut self.latencies);
    }
}

/// Polls on the consumer client's transport thread, where its fetches
/// are answered: a poll's answer wakes no other thread. (Polling from a
/// thread of its own, each poll crossed threads twice: at 1M msg/s, with
/// the two vCPUs busy, those wake-ups put 20-30 % on delivery's p50 and
/// p99.)
fn follow_native(mut follow: Follow, client: &Client, topic: &str) -> Result<Reader, String> {
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    block_on(consumer.assign(topic, None, Seek::Latest)).map_err(|e| e.to_string())?;
    let (done_tx, done_rx) = futures::channel::oneshot::channel();
    client
        .run_on_transport(move || {
            glommio::spawn_local(async move {
                let followed = async {
                    while !follow.done() {
                        let polled = consumer
                            .poll_batches(Duration::from_millis(100))
                            .await
                            .map_err(|e| e.to_string())?;
                        for part in polled.parts() {
                            for batch in part.batches() {
                                follow.deliver(&batch, part.position)?;
                            }
                        }
                    }
                    Ok::<(), String>(())
                };
                let result = followed.await;
                // Its last latencies are merged on drop: before the reader
                // hears that it is done and the report is printed.
                drop(follow);
                let _ = done_tx.send(result);
            })
            .detach();
        })
        .map_err(|e| e.to_string())?;
    Ok(Box::new(move || {
        block_on(done_rx).map_err(|_| "the consumer ended without a word".to_string())?
    }))
}

/// Follows every partition from its end now, one fetch in flight each,
/// on a thread of its own.
fn follow_kafka(
    follow: Follow,
    client: &Client,
    bootstrap: SocketAddr,
    topic: &str,
) -> Result<Reader, String> {
    let described =
        block_on(Admin::new(client.clone()).describe_topic(topic)).map_err(|e| e.to_string())?;
    let offsets: Vec<i64> = described
        .partitions
        .iter()
        .map(|p| p.log_end_offset)
        .collect();
    let topic = topic.to_owned();
    let thread = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("bench-kafka")
        .io_memory(crate::kafka::IO_MEMORY)
        .spawn(move || async move {
            let follow = RefCell::new(follow);
            let kafka = KafkaClient::default();
            let leaders = kafka.leaders(bootstrap, &topic).await?;
            // A loop per partition: each long-polls its leader, so records
            // of one are never held back by another's wait.
            let loops = leaders
                .iter()
                .zip(offsets)
                .enumerate()
                .map(|(p, (&leader, start))| {
                    let (kafka, topic, follow) = (&kafka, &topic, &follow);
                    async move {
                        let mut offset = start;
                        while !follow.borrow_mut().done() {
                            let (records, _) = kafka
                                .fetch(
                                    leader,
                                    topic,
                                    p as i32,
                                    offset,
                                    KAFKA_FETCH_BYTES,
                                    KAFKA_WAIT,
                                )
                                .await?;
                            for batch in fjord_core::batch::batches(&records) {
                                follow.borrow_mut().deliver(&batch, offset)?;
                                offset = offset.max(batch.last_offset() + 1);
                            }
                        }
                        Ok::<(), String>(())
                    }
                });
            futures::future::try_join_all(loops).await.map(|_| ())
        })
        .map_err(|e| format!("cannot start the consumer: {e}"))?;
    Ok(Box::new(move || {
        thread
            .join()
            .map_err(|e| format!("the consumer thread failed: {e}"))?
    }))
}
