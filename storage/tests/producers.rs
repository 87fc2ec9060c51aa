//! Producer state against a real disk: rebuilt from the log alone, from a
//! snapshot and the batches after it, after retention deleted the
//! segments that held a producer's batches, and cut back with a
//! replicated log.

mod common;

use common::*;
use fjord_core::BatchBuilder;
use fjord_storage::producer_snapshot;
use fjord_storage::{BatchCache, LogConfig, ProducerBatch, ProducerTable, Verdict};
use std::time::Duration;

/// A batch of `records` records from producer `id` at sequence `seq`.
fn idempotent(id: i64, epoch: i16, seq: i32, records: usize, ts: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new().producer(id, epoch, seq);
    for i in 0..records {
        builder.push(ts + i as i64, None, Some(b"v"), &[]);
    }
    builder.build()
}

fn producer_of(bytes: &[u8]) -> ProducerBatch {
    let b = fjord_core::Batch::validate(bytes).expect("valid");
    ProducerBatch::of(&b).expect("an idempotent batch")
}

#[test]
fn state_is_rebuilt_from_the_log_and_from_a_snapshot() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, "p", LogConfig::default(), &cache).await;
        let mut table = ProducerTable::new();
        let mut seqs = [0i32; 3];
        for i in 0..30u64 {
            let id = (i % 3) as i64;
            let bytes = idempotent(id, 0, seqs[id as usize], 2, 1_000);
            seqs[id as usize] += 2;
            let p = producer_of(&bytes);
            assert_eq!(table.check(&p), Ok(Verdict::Append));
            let appended = log.append(&bytes).await.expect("append");
            table.apply(&p, appended.base_offset, appended.last_offset, u64::MAX);
            // A producer without an id in between changes nothing.
            log.append(&batch(i, 1, 4, 1_000)).await.expect("append");
            if i == 14 {
                producer_snapshot::write(log.dir(), log.offset_next(), &table)
                    .await
                    .expect("snapshot");
            }
        }
        log.flush().await.expect("flush");
        let (rebuilt, from) = producer_snapshot::load(&log, false).await.expect("load");
        assert_eq!(rebuilt, table, "snapshot + tail");
        assert!(from > 0, "from the snapshot");
        // Without snapshots: the whole log.
        let mut scanned = ProducerTable::new();
        producer_snapshot::scan(&log, 0, log.offset_next(), &mut scanned, u64::MAX)
            .await
            .expect("scan");
        assert_eq!(scanned, table, "whole log");
        // A snapshot past the log's end (a lost tail) is not used.
        let mut ahead = table.clone();
        ahead.clear();
        producer_snapshot::write(log.dir(), log.offset_next() + 10, &ahead)
            .await
            .expect("snapshot");
        assert_eq!(
            producer_snapshot::load(&log, false).await.expect("load").0,
            table
        );
        log.close().await.expect("close");
    });
}

#[test]
fn retention_keeps_the_state_of_producers_whose_segments_went() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let config = LogConfig {
            segment_bytes: 4096,
            ..LogConfig::default()
        };
        let log = open(&dir, "p", config, &cache).await;
        let mut table = ProducerTable::new();
        let old = idempotent(7, 2, 40, 3, 1_000);
        let appended = log.append(&old).await.expect("append");
        table.apply(
            &producer_of(&old),
            appended.base_offset,
            appended.last_offset,
            u64::MAX,
        );
        for i in 0..200u64 {
            log.append(&batch(i, 1, 100, 2_000)).await.expect("append");
        }
        log.flush().await.expect("flush");
        producer_snapshot::write(log.dir(), log.offset_next(), &table)
            .await
            .expect("snapshot");
        log.set_retention(Some(4096), Some(Duration::from_millis(1)));
        let deleted = log
            .enforce_retention(i64::MAX / 2)
            .await
            .expect("retention");
        assert!(deleted > 0 && log.offset_start() > appended.last_offset);
        let (rebuilt, _) = producer_snapshot::load(&log, false).await.expect("load");
        let retry = producer_of(&old);
        assert_eq!(
            rebuilt.check(&retry),
            Ok(Verdict::Duplicate {
                base_offset: appended.base_offset,
                last_offset: appended.last_offset
            })
        );
        log.close().await.expect("close");
    });
}

/// A replicated log may be cut back to what its snapshot covers: the
/// state loaded keeps every batch past the snapshot, so a cut there leaves
/// the producer and its last batches below, and a retry of one of them is
/// a duplicate, not a second copy.
#[test]
fn a_replicated_state_cut_back_to_its_snapshot_keeps_what_lies_below() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, "p", LogConfig::default(), &cache).await;
        let mut table = ProducerTable::new();
        let mut below = None;
        for seq in 0..12 {
            let bytes = idempotent(3, 0, seq, 1, 1_000);
            let appended = log.append(&bytes).await.expect("append");
            table.apply(
                &producer_of(&bytes),
                appended.base_offset,
                appended.last_offset,
                u64::MAX,
            );
            if seq == 5 {
                below = Some((bytes, appended));
                producer_snapshot::write(log.dir(), log.offset_next(), &table)
                    .await
                    .expect("snapshot");
            }
        }
        log.flush().await.expect("flush");
        let (bytes, appended) = below.expect("written");
        let cut = appended.last_offset + 1;
        let retry = producer_of(&bytes);
        let duplicate = Verdict::Duplicate {
            base_offset: appended.base_offset,
            last_offset: appended.last_offset,
        };
        let (mut replicated, from) = producer_snapshot::load(&log, true).await.expect("load");
        assert_eq!(from, cut);
        replicated.truncate(cut);
        assert_eq!(replicated.check(&retry), Ok(duplicate), "replicated");
        // A log that is never cut keeps five: the cut would forget it all.
        let (mut unreplicated, _) = producer_snapshot::load(&log, false).await.expect("load");
        assert_eq!(unreplicated, table);
        unreplicated.truncate(cut);
        assert!(unreplicated.get(3).is_none());
        log.close().await.expect("close");
    });
}
