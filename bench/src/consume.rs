//! `bench consume`: read a topic from the beginning to its end as it was
//! when the run started, as fast as one consumer can, counting records in
//! the batches where they arrive (the consumer's zero-copy `poll_batches`).

use crate::report::Progress;
use fjord_client::{Admin, Client, Consumer, ConsumerConfig, Seek};
use futures::executor::block_on;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
