//! `bench e2e`: produce at a rate while one consumer follows the topic;
//! each record's latency runs from its due time (stamped in its first
//! bytes by the producer) to its delivery to the consumer.

use crate::produce::{self, ProduceConfig, STAMP_LEN};
use crate::report::{Progress, histogram};
use fjord_client::{Client, Consumer, ConsumerConfig, Seek};
use futures::executor::block_on;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the consumer may trail the last acknowledgement at the end.
const CATCH_UP_MAX: Duration = Duration::from_secs(10);

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
    let mut consumer = Consumer::new(consumer_client, ConsumerConfig::default());
    block_on(consumer.assign(&config.topic, None, Seek::Latest)).map_err(|e| e.to_string())?;
    let producing = Arc::new(AtomicBool::new(true));
    let reader = {
        let (delivered, acked, producing) = (delivered.clone(), acked.clone(), producing.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut latencies = histogram();
            let mut last_merge = Instant::now();
            let mut caught_up_by = None;
            loop {
                let polled = block_on(consumer.poll_batches(Duration::from_millis(100)))
                    .map_err(|e| e.to_string())?;
                let now_ns = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                for part in polled.parts() {
                    for batch in part.batches() {
                        for record in batch.records().map_err(|e| e.to_string())? {
                            let record = record.map_err(|e| e.to_string())?;
                            if record.offset < part.position {
                                continue;
                            }
                            let stamp = record
                                .value
                                .and_then(|v| v.first_chunk::<STAMP_LEN>())
                                .map_or(now_ns, |s| u64::from_be_bytes(*s));
                            let _ = latencies.record((now_ns.saturating_sub(stamp) / 1000).max(1));
                            delivered.messages.fetch_add(1, Ordering::Relaxed);
                            delivered.bytes.fetch_add(
                                record.value.map_or(0, |v| v.len()) as u64,
                                Ordering::Relaxed,
                            );
                        }
                    }
                }
                if last_merge.elapsed() >= Duration::from_secs(1) {
                    delivered.merge(&mut latencies);
                    last_merge = Instant::now();
                }
                if !producing.load(Ordering::Relaxed) {
                    let deadline =
                        *caught_up_by.get_or_insert_with(|| Instant::now() + CATCH_UP_MAX);
                    let all = delivered.messages.load(Ordering::Relaxed)
                        >= acked.messages.load(Ordering::Relaxed);
                    if all || Instant::now() >= deadline {
                        break;
                    }
                }
            }
            delivered.merge(&mut latencies);
            Ok(())
        })
    };
    let elapsed = produce::run(config, producers, routes, acked);
    producing.store(false, Ordering::Relaxed);
    reader
        .join()
        .map_err(|_| "the consumer thread panicked".to_string())??;
    elapsed
}
