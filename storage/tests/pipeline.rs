//! A log's pipelined writes: many small appends with several writes in
//! flight, whose shared blocks the flusher holds back and writes once the
//! write before is done. The bytes on disk are checked after close and again
//! after a reopen (recovery); a planted bug (writes that overlap, on a
//! stand-in for a device that lands the older copy of a block last) must be
//! caught.

mod common;

use common::*;
use fjord_core::FsyncPolicy;
use fjord_core::batch;
use fjord_storage::pipeline::{Adversary, set_adversary};
use fjord_storage::{BatchCache, LogConfig};
use futures::future::{Either, select};
use std::rc::Rc;
use std::time::Duration;

const BATCHES: u64 = 6000;
/// A segment size that holds all of [`BATCHES`] (about 12 MiB).
const ONE_SEGMENT_BYTES: u64 = 64 << 20;

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

/// Batch `seed`: one record of 20 to 2019 bytes, so writes end anywhere in
/// a block.
fn batch_for(seed: u64) -> Vec<u8> {
    batch(
        seed,
        1 + (seed % 3) as usize,
        20 + (seed * 7919 % 2000) as usize,
        0,
    )
}

/// What the log must hold: batch `seed` at the offsets it was given.
fn expected(seed: u64, base_offset: u64) -> Vec<u8> {
    let mut bytes = batch_for(seed);
    batch::set_base_offset(&mut bytes, base_offset as i64);
    batch::set_partition_leader_epoch(&mut bytes, 0);
    bytes
}

/// What one run found.
struct Outcome {
    head_writes: u64,
    /// First difference between the log and what was appended, after close
    /// and reopen; `None` when they match exactly.
    damage: Option<String>,
    /// The log's one segment file, when it has one, and what it must hold.
    file: Option<(Vec<u8>, Vec<u8>)>,
}

/// Appends [`BATCHES`] small batches faster than they are written (so
/// writes go out while earlier ones are in flight), closes, reopens and
/// compares.
fn run_appends(adversary: Adversary, segment_bytes: u64) -> Outcome {
    let one_segment = segment_bytes >= ONE_SEGMENT_BYTES;
    let (_tmp, dir) = data_dir();
    let (tx, rx) = std::sync::mpsc::channel();
    run(&dir, move |dir| async move {
        set_adversary(adversary);
        let cache = BatchCache::new(0); // reads come from the disk
        let log = open(&dir, "p0", config(segment_bytes), &cache).await;
        // One producer that outpaces the disk, yielding now and then so the
        // flusher takes what is staged while earlier writes are in flight:
        // buffers fill, and full ones go out beside those in flight.
        let mut placed = Vec::new();
        let mut durables = Vec::new();
        for seed in 0..BATCHES {
            let appended = log.append(&batch_for(seed)).await.expect("append");
            placed.push((appended.base_offset, seed));
            durables.push(appended.durable);
            if seed % 16 == 0 {
                glommio::executor().yield_now().await;
            }
        }
        for durable in durables {
            durable.await.expect("written");
        }
        placed.sort_unstable();
        let head_writes = log.stats().head_writes;
        log.close().await.expect("close");
        let log = open(&dir, "p0", config(segment_bytes), &cache).await;
        let damage = check(&log, &placed).await;
        log.close().await.expect("close");
        let segment = dir.path().join("p0").join(format!("{:020}.log", 0));
        let file = one_segment.then(|| {
            let want: Vec<u8> = placed
                .iter()
                .flat_map(|&(offset, seed)| expected(seed, offset))
                .collect();
            // The test's own check, after the shard is done with the file.
            (std::fs::read(&segment).expect("segment file"), want)
        });
        tx.send(Outcome {
            head_writes,
            damage,
            file,
        })
        .expect("send");
    });
    rx.recv().expect("outcome")
}

/// Compares the reopened log with what was appended; the first difference.
async fn check(log: &fjord_storage::Log, placed: &[(u64, u64)]) -> Option<String> {
    let report = log.recovery_report();
    if report.truncated_bytes > 0 {
        return Some(format!(
            "recovery cut {} bytes of a cleanly closed log",
            report.truncated_bytes
        ));
    }
    // Batch `seed` holds 1 + seed % 3 records.
    let end = placed
        .last()
        .map_or(0, |&(offset, seed)| offset + 1 + seed % 3);
    if log.offset_next() != end {
        return Some(format!("log ends at {}, not {end}", log.offset_next()));
    }
    let served = read_all(log, 0).await;
    if served.len() != placed.len() {
        return Some(format!("{} batches of {}", served.len(), placed.len()));
    }
    for (got, &(offset, seed)) in served.iter().zip(placed) {
        if *got != expected(seed, offset) {
            return Some(format!("batch at {offset} differs"));
        }
    }
    None
}

#[test]
fn many_small_appends_with_writes_in_flight_land_intact() {
    // One segment: the file itself is compared, byte for byte.
    let outcome = run_appends(Adversary::default(), ONE_SEGMENT_BYTES);
    assert!(
        outcome.head_writes > 0,
        "no write shared a block with one in flight: the test did not exercise the pipeline"
    );
    assert_eq!(outcome.damage, None);
    let (file, want) = outcome.file.expect("one segment");
    assert_eq!(file.len(), want.len(), "segment file length");
    assert!(
        file == want,
        "segment file differs from the appended batches"
    );
}

#[test]
fn held_blocks_land_intact_across_rolls() {
    let outcome = run_appends(Adversary::default(), 256 * 1024);
    assert!(
        outcome.head_writes > 0,
        "no write shared a block with one in flight"
    );
    assert_eq!(outcome.damage, None);
}

#[test]
fn overlapping_writes_are_caught() {
    // The planted bug: writes go out whole over a block still in flight,
    // and the device keeps the older copy. The same check must find the
    // damage.
    let outcome = run_appends(Adversary { overlap: true }, 256 * 1024);
    assert_eq!(outcome.head_writes, 0, "the planted bug holds no block");
    assert!(
        outcome.damage.is_some(),
        "stale shared blocks went unnoticed: the check cannot fail"
    );
}

/// A log closed while appends keep coming (a replica mid-step when its node
/// stops) closes. A flusher's round hears the kicks that arrive while it
/// runs, the close's among them; the flusher must not then wait for another.
#[test]
fn a_log_closes_while_appends_keep_coming() {
    let (_tmp, dir) = data_dir();
    run(&dir, move |dir| async move {
        let cache = BatchCache::new(0);
        for round in 0..12u64 {
            let log = Rc::new(
                open(
                    &dir,
                    &format!("p{round}"),
                    config(ONE_SEGMENT_BYTES),
                    &cache,
                )
                .await,
            );
            let appender = glommio::spawn_local({
                let log = log.clone();
                async move {
                    let mut seed = 0;
                    while log.append(&batch_for(seed)).await.is_ok() {
                        seed += 1;
                        if seed % 8 == 0 {
                            glommio::executor().yield_now().await;
                        }
                    }
                }
            });
            glommio::timer::sleep(Duration::from_millis(round % 7)).await;
            let close = std::pin::pin!(log.close());
            let limit = std::pin::pin!(glommio::timer::sleep(Duration::from_secs(10)));
            match select(close, limit).await {
                Either::Left((closed, _)) => closed.expect("close"),
                Either::Right(_) => {
                    panic!("round {round}: close still waiting after 10 s")
                }
            }
            appender.await;
        }
    });
}
