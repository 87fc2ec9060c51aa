//! The partition log against a real disk: append, read, group commit,
//! roll, retention, timestamps, reopen.

mod common;

use common::*;
use fjord_core::FsyncPolicy;
use fjord_core::batch::Batch;
use fjord_storage::{BatchCache, LogConfig, StorageError};
use std::time::Duration;

#[test]
fn appends_assign_contiguous_offsets_and_read_back_byte_identical() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0); // disk path only
        let log = open(&dir, "p0", LogConfig::default(), &cache).await;
        let mut expected = Vec::new();
        for seed in 0..200u64 {
            let records = 1 + (seed % 7) as usize;
            let bytes = batch(seed, records, 10 + seed as usize * 3, 1_000 + seed as i64);
            let appended = log.append(&bytes).await.expect("append");
            assert_eq!(
                appended.last_offset - appended.base_offset + 1,
                records as u64
            );
            appended.durable.await.expect("durable");
            let mut patched = bytes.clone();
            fjord_core::batch::set_base_offset(&mut patched, appended.base_offset as i64);
            fjord_core::batch::set_partition_leader_epoch(&mut patched, 0);
            expected.push(patched);
        }
        let read = read_all(&log, 0).await;
        assert_eq!(read.len(), expected.len());
        assert_eq!(read, expected, "bytes read back differ from bytes appended");
        let mut next = 0;
        for bytes in &read {
            let b = Batch::validate(bytes).expect("valid on read");
            assert_eq!(b.base_offset(), next);
            next = b.last_offset() + 1;
        }
        assert_eq!(log.offset_next(), next as u64);
        log.close().await.expect("close");
    });
}

#[test]
fn read_starts_at_the_batch_holding_the_offset_and_respects_max_bytes() {
    run_fresh(|dir| async move {
        for budget in [0, 64 << 20] {
            let cache = BatchCache::new(budget);
            let log = open(
                &dir,
                &format!("p{budget}"),
                LogConfig {
                    index_interval_bytes: 512,
                    ..LogConfig::default()
                },
                &cache,
            )
            .await;
            for seed in 0..100 {
                log.append(&batch(seed, 5, 100, 0))
                    .await
                    .expect("append")
                    .durable
                    .await
                    .expect("durable");
            }
            // Offset 53 lies inside the batch 50..=54.
            let read = log.read(53, 1).await.expect("read");
            let first = fjord_core::batch::batches(&read.slices[0])
                .next()
                .expect("a batch");
            assert_eq!(first.base_offset(), 50, "cache budget {budget}");
            assert_eq!(
                read.offset_next, 55,
                "at least one batch, even past max_bytes"
            );
            let read = log.read(0, 3000).await.expect("read");
            assert!(read.len_bytes() <= 3000 && read.len_bytes() > 3000 - 700);
            // The readable end: empty; past it: out of range.
            assert!(
                log.read(500, 1000)
                    .await
                    .expect("read at end")
                    .slices
                    .is_empty()
            );
            assert!(matches!(
                log.read(501, 1000).await,
                Err(StorageError::OffsetOutOfRange { .. })
            ));
            log.close().await.expect("close");
        }
    });
}

#[test]
fn tail_reads_come_from_the_cache_within_its_budget() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(1 << 20);
        let log = open(&dir, "p0", LogConfig::default(), &cache).await;
        for seed in 0..64 {
            log.append(&batch(seed, 10, 4000, 0))
                .await
                .expect("append")
                .durable
                .await
                .expect("durable");
        }
        assert!(
            cache.used_bytes() > 0 && cache.used_bytes() <= 1 << 20,
            "used {}",
            cache.used_bytes()
        );
        let tail = log
            .read(log.offset_written() - 1, 1 << 20)
            .await
            .expect("tail read");
        assert!(
            format!("{:?}", tail.slices[0]).contains("memory"),
            "tail read not served from cache"
        );
        let head = log.read(0, 1 << 20).await.expect("head read");
        assert!(
            format!("{:?}", head.slices[0]).contains("disk"),
            "evicted head still in cache"
        );
        // Both paths return the same bytes for the same offsets.
        assert_eq!(read_all(&log, 0).await.len(), 64);
        log.close().await.expect("close");
        assert_eq!(
            cache.used_bytes(),
            0,
            "a closed log leaves nothing in the cache"
        );
    });
}

/// The cache's budget bounds the memory it keeps: a small batch written
/// from a larger buffer is charged the whole buffer, not the blocks written.
#[test]
fn the_cache_charges_the_buffers_it_keeps_not_the_bytes_written() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(1 << 20);
        let log = open(&dir, "p0", LogConfig::default(), &cache).await;
        let appended = log.append(&batch(1, 1, 100, 0)).await.expect("append");
        appended.durable.await.expect("durable");
        // A log's first write buffer is 16 KiB; the batch fills one block.
        assert_eq!(cache.used_bytes(), 16 << 10, "charged for the first write");
        log.close().await.expect("close");
    });
}

#[test]
fn concurrent_appends_share_group_commits_under_fsync_always() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(16 << 20);
        let config = LogConfig {
            fsync: FsyncPolicy::Always,
            ..LogConfig::default()
        };
        let log = std::rc::Rc::new(open(&dir, "p0", config, &cache).await);
        let mut tasks = Vec::new();
        for writer in 0..16u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut offsets = Vec::new();
                for i in 0..50u64 {
                    let appended = log
                        .append(&batch(writer * 1000 + i, 4, 200, 0))
                        .await
                        .expect("append");
                    appended.durable.await.expect("durable");
                    assert!(
                        log.offset_durable() > appended.last_offset,
                        "acknowledged before fdatasync"
                    );
                    offsets.push(appended.base_offset);
                }
                offsets
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            let offsets = task.await;
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "one writer's appends out of order"
            );
            all.extend(offsets);
        }
        all.sort_unstable();
        assert_eq!(all, (0..800).map(|i| i * 4).collect::<Vec<_>>());
        let stats = log.stats();
        assert_eq!(stats.appends, 800);
        assert!(
            stats.syncs < stats.appends / 2,
            "no group commit: {stats:?}"
        );
        log.close().await.expect("close");
    });
}

/// Under `fsync=always` an opening syncs what the last run wrote before
/// it counts as durable: that run may have stopped between a write and
/// its fdatasync.
#[test]
fn an_opening_under_fsync_always_syncs_before_it_counts_anything_durable() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let config = LogConfig {
            fsync: FsyncPolicy::Always,
            segment_bytes: 4096,
            ..LogConfig::default()
        };
        let log = open(&dir, "p0", config.clone(), &cache).await;
        for i in 0..40u64 {
            log.append(&batch(i * 4, 4, 200, 0)).await.expect("append");
        }
        log.flush().await.expect("flush");
        let end = log.offset_next();
        log.close().await.expect("close");
        let log = open(&dir, "p0", config, &cache).await;
        assert_eq!(log.offset_durable(), end);
        assert_eq!(log.stats().syncs, 1, "synced at the opening");
        log.close().await.expect("close");
    });
}

/// A roll does no I/O: the append that rolls returns before the new
/// segment's files exist (a stalled disk holds file creation too), and the
/// flusher's first write creates both.
#[test]
fn a_roll_creates_its_files_with_the_first_write_not_in_the_append() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let config = LogConfig {
            segment_bytes: 4096,
            ..LogConfig::default()
        };
        let log = open(&dir, "p", config, &cache).await;
        let first = log.append(&batch(0, 1, 3000, 1)).await.expect("append");
        first.durable.await.expect("durable");
        let rolled = log.append(&batch(1, 1, 3000, 1)).await.expect("append");
        assert_eq!(
            log.segment_count(),
            2,
            "3000 + 3000 bytes roll a 4 KiB segment"
        );
        let (next_log, next_index) =
            fjord_storage::segment::file_paths(&dir.path().join("p"), rolled.base_offset);
        assert!(
            !next_log.exists() && !next_index.exists(),
            "the rolling append created files"
        );
        rolled.durable.await.expect("durable");
        assert!(
            next_log.exists() && next_index.exists(),
            "written, yet no files"
        );
        log.close().await.expect("close");
        let log = open(&dir, "p", LogConfig::default(), &cache).await;
        assert_eq!(read_all(&log, 0).await.len(), 2, "both batches back");
        log.close().await.expect("close");
    });
}

#[test]
fn segments_roll_by_size_and_age_and_retention_moves_the_start() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let config = LogConfig {
            segment_bytes: 64 * 1024,
            retention_bytes: Some(200 * 1024),
            retention_age: None,
            ..LogConfig::default()
        };
        let log = open(&dir, "p0", config.clone(), &cache).await;
        for seed in 0..100 {
            log.append(&batch(seed, 10, 1000, 1_000))
                .await
                .expect("append")
                .durable
                .await
                .expect("durable");
        }
        assert!(
            log.segment_count() >= 10,
            "segments: {}",
            log.segment_count()
        );
        let before = read_all(&log, 0).await;
        log.flush().await.expect("flush");
        let deleted = log
            .enforce_retention(fjord_storage::log::now_ms())
            .await
            .expect("retention");
        assert!(deleted > 0);
        let start = log.offset_start();
        assert!(
            start > 0
                && log.size_bytes() >= 200 * 1024
                && log.size_bytes() < 200 * 1024 + 2 * 64 * 1024,
            "start {start} size {}",
            log.size_bytes()
        );
        assert!(matches!(
            log.read(0, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let after = read_all(&log, start).await;
        assert_eq!(
            after[..],
            before[before.len() - after.len()..],
            "retained batches changed"
        );
        // Segment files only: the leader-epoch file lives beside them.
        let files = std::fs::read_dir(dir.path().join("p0"))
            .expect("ls")
            .filter(|e| {
                e.as_ref().is_ok_and(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.ends_with(".log") || name.ends_with(".index")
                })
            })
            .count();
        assert_eq!(
            files,
            2 * log.segment_count(),
            "deleted segments left files"
        );
        log.close().await.expect("close");

        // Age: every batch is stamped in 1970, so all but the active segment expire.
        let config = LogConfig {
            retention_bytes: None,
            retention_age: Some(Duration::from_secs(3600)),
            ..config
        };
        let log = open(&dir, "p0", config, &cache).await;
        assert_eq!(
            log.offset_start(),
            start,
            "log start changed across restart"
        );
        log.enforce_retention(fjord_storage::log::now_ms())
            .await
            .expect("retention");
        assert_eq!(log.segment_count(), 1);
        let end = log.offset_next();
        log.close().await.expect("close");

        // segment.ms: an old active segment rolls on the next append.
        let config = LogConfig {
            segment_age: Some(Duration::from_millis(50)),
            ..LogConfig::default()
        };
        let log = open(&dir, "p1", config, &cache).await;
        log.append(&batch(1, 1, 10, fjord_storage::log::now_ms()))
            .await
            .expect("append");
        glommio::timer::sleep(Duration::from_millis(80)).await;
        log.append(&batch(2, 1, 10, fjord_storage::log::now_ms()))
            .await
            .expect("append");
        assert_eq!(log.segment_count(), 2);
        log.close().await.expect("close");
        assert!(end > start);
    });
}

#[test]
fn offsets_for_timestamps() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let config = LogConfig {
            segment_bytes: 64 * 1024,
            index_interval_bytes: 1024,
            ..LogConfig::default()
        };
        let log = open(&dir, "p0", config, &cache).await;
        // Batch n holds 4 records stamped 10n .. 10n+3.
        for n in 0..300i64 {
            log.append(&batch(n as u64, 4, 100, 10 * n))
                .await
                .expect("append");
        }
        log.flush().await.expect("flush");
        assert_eq!(
            log.offset_for_timestamp(0, 0).await.expect("lookup"),
            Some((0, 0))
        );
        assert_eq!(
            log.offset_for_timestamp(1502, 0).await.expect("lookup"),
            Some((602, 1502))
        );
        // Between batches: the next batch's first record.
        assert_eq!(
            log.offset_for_timestamp(1505, 0).await.expect("lookup"),
            Some((604, 1510))
        );
        assert_eq!(
            log.offset_for_timestamp(2993, 0).await.expect("lookup"),
            Some((1199, 2993))
        );
        assert_eq!(
            log.offset_for_timestamp(2994, 0).await.expect("lookup"),
            None
        );
        // From an offset on (the start clients may read from): a record
        // below it never answers, also within its batch.
        assert_eq!(
            log.offset_for_timestamp(0, 602).await.expect("lookup"),
            Some((602, 1502))
        );
        assert_eq!(
            log.offset_for_timestamp(1502, 1000).await.expect("lookup"),
            Some((1000, 2500))
        );
        // The record with the largest timestamp (ListOffsets' -3).
        assert_eq!(
            log.max_timestamp_offset(0).await.expect("lookup"),
            Some((1199, 2993))
        );
        log.close().await.expect("close");
    });
}

#[test]
fn clean_reopen_restores_offsets_exactly_and_repairs_nothing() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let config = LogConfig {
            segment_bytes: 128 * 1024,
            // Small steps: background preallocation runs throughout, and a
            // clean stop must still leave nothing to repair.
            preallocate_bytes: 16 * 1024,
            ..LogConfig::default()
        };
        let log = open(&dir, "p0", config.clone(), &cache).await;
        for seed in 0..120 {
            log.append(&batch(seed, 3, 500, 0)).await.expect("append");
        }
        log.close().await.expect("close");
        let (start, next) = (log.offset_start(), log.offset_next());
        drop(log);
        let log = open(&dir, "p0", config, &cache).await;
        assert_eq!(
            (log.offset_start(), log.offset_next(), log.offset_written()),
            (start, next, next)
        );
        assert_eq!(
            log.recovery_report(),
            &Default::default(),
            "a clean stop needed repairs"
        );
        assert_eq!(read_all(&log, 0).await.len(), 120);
        // Appends continue from where the log left off.
        assert_eq!(
            log.append(&batch(999, 1, 10, 0))
                .await
                .expect("append")
                .base_offset,
            next
        );
        log.close().await.expect("close");
    });
}

/// A batch whose records at or after the timestamp all lie below `from`
/// (or were cleaned away) does not answer a timestamp lookup: the next
/// batch that holds one does.
#[test]
fn a_timestamp_lookup_passes_over_a_batch_with_no_record_left_to_answer() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, "p0", LogConfig::default(), &cache).await;
        let mut first = fjord_core::BatchBuilder::new();
        first.push(100, Some(b"a"), Some(b"1"), &[]);
        first.push(50, Some(b"b"), Some(b"2"), &[]);
        log.append(&first.build()).await.expect("append");
        let mut second = fjord_core::BatchBuilder::new();
        second.push(200, Some(b"c"), Some(b"3"), &[]);
        log.append(&second.build()).await.expect("append");
        log.flush().await.expect("flush");
        assert_eq!(
            log.offset_for_timestamp(80, 0).await.expect("lookup"),
            Some((0, 100))
        );
        assert_eq!(
            log.offset_for_timestamp(80, 1).await.expect("lookup"),
            Some((2, 200))
        );
        log.close().await.expect("close");
    });
}

/// Records deleted below a start (DeleteRecords) free their segments on a
/// compacted topic too, as Kafka's; its retention by time and size does
/// not apply.
#[test]
fn records_deleted_below_a_start_go_on_a_compacted_log() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let config = LogConfig {
            segment_bytes: 4096,
            ..LogConfig::default()
        };
        let log = open(&dir, "p0", config, &cache).await;
        for i in 0..100u64 {
            log.append(&batch(i, 1, 100, 0)).await.expect("append");
        }
        log.flush().await.expect("flush");
        let (mut policy, compaction) = log.cleanup();
        (policy.delete, policy.compact) = (false, true);
        log.set_cleanup(policy, compaction);
        log.set_retention(Some(1), Some(Duration::from_millis(1)));
        let now = fjord_storage::log::now_ms();
        assert_eq!(log.enforce_retention(now).await.expect("retention"), 0);
        let deleted = log.enforce_retention_below(now, u64::MAX, 50).await;
        assert!(deleted.expect("retention") > 0);
        assert!(log.offset_start() > 0 && log.offset_start() <= 50);
        log.close().await.expect("close");
    });
}

/// A log opened again (after it ran out of room) keeps the retention and
/// cleanup settings a topic's altered configs gave it, not those it was
/// opened with: `compact` turning back into `delete` would let retention
/// delete latest values.
#[test]
fn a_reopened_log_keeps_its_altered_settings() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, "p0", LogConfig::default(), &cache).await;
        log.append(&batch(0, 1, 10, 0)).await.expect("append");
        log.flush().await.expect("flush");
        let (mut policy, mut compaction) = log.cleanup();
        (policy.delete, policy.compact) = (false, true);
        compaction.delete_retention = Duration::from_secs(7);
        log.set_cleanup(policy, compaction);
        log.set_retention(Some(1 << 20), Some(Duration::from_secs(60)));
        let reopened = log.reopen().await.expect("reopen");
        assert_eq!(reopened.cleanup(), (policy, compaction));
        assert_eq!(reopened.retention(), log.retention());
        reopened.close().await.expect("close");
        log.close().await.expect("close");
    });
}

/// The log's append turn (a glommio semaphore) goes to the first waiter
/// when it is released: a task asking in between does not take it. Before
/// the vendored glommio handed units over at the wake, it did: appends
/// waiting for staged room overtook one another, and a Kafka client saw
/// its pipelined records acknowledged out of send order.
#[test]
fn a_released_turn_goes_to_the_waiter_not_to_a_late_caller() {
    run_fresh(|_dir| async move {
        let turn = std::rc::Rc::new(glommio::sync::Semaphore::new(1));
        let held = turn.acquire_static_permit(1).await.expect("permit");
        let waiter = glommio::spawn_local({
            let turn = turn.clone();
            async move { drop(turn.acquire_static_permit(1).await.expect("turn")) }
        });
        glommio::executor().yield_now().await; // The waiter queues.
        drop(held); // Wakes it; before it runs, a late caller asks.
        let late = turn.try_acquire(1).expect("open");
        assert!(!late, "a late caller took the turn ahead of its waiter");
        waiter.await;
        assert!(
            turn.try_acquire(1).expect("open"),
            "the waiter gave it back"
        );
    });
}

#[test]
fn bad_batches_are_rejected_and_change_nothing() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let log = open(
            &dir,
            "p0",
            LogConfig {
                max_batch_bytes: 10_000,
                ..LogConfig::default()
            },
            &cache,
        )
        .await;
        log.append(&batch(1, 1, 10, 0)).await.expect("append");
        let mut corrupt = batch(2, 1, 10, 0);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(matches!(
            log.append(&corrupt).await,
            Err(StorageError::InvalidBatch(_))
        ));
        assert!(matches!(
            log.append(&batch(3, 1, 20_000, 0)).await,
            Err(StorageError::BatchTooLarge { .. })
        ));
        let mut trailing = batch(4, 1, 10, 0);
        trailing.push(0);
        assert!(log.append(&trailing).await.is_err());
        assert!(log.append(&[0u8; 7]).await.is_err());
        assert_eq!(log.offset_next(), 1);
        log.close().await.expect("close");
        assert!(matches!(
            log.append(&batch(5, 1, 10, 0)).await,
            Err(StorageError::Closed)
        ));
    });
}

#[test]
fn kafka_topic_configs_drive_the_log() {
    run_fresh(|dir| async move {
        let topic = fjord_core::TopicConfig::from_pairs([
            ("segment.bytes", "65536"),
            ("max.message.bytes", "4000"),
            ("fsync", "always"),
        ])
        .expect("configs");
        let cache = BatchCache::new(0);
        let log = open(&dir, "p0", LogConfig::for_topic(&topic), &cache).await;
        assert!(matches!(
            log.append(&batch(1, 1, 5000, 0)).await,
            Err(StorageError::BatchTooLarge { .. })
        ));
        for seed in 0..40 {
            let appended = log.append(&batch(seed, 1, 3000, 0)).await.expect("append");
            appended.durable.await.expect("durable");
            assert!(
                log.offset_durable() > appended.last_offset,
                "fsync=always acknowledged before sync"
            );
        }
        // 40 batches of ~3 KiB in 64 KiB segments.
        assert!(
            log.segment_count() >= 2,
            "segment.bytes ignored: {} segments",
            log.segment_count()
        );
        log.close().await.expect("close");
    });
}
