//! What Raft replication needs of the log, against a real disk: appends at
//! a stated offset and epoch, truncation of the tail (staged, written,
//! across segments, across a restart), the leader-epoch cache and the
//! atomic checkpoint files.

mod common;

use common::*;
use fjord_core::batch;
use fjord_storage::epochs::{self, EpochCache};
use fjord_storage::staging::{Pieces, Staging, StagingFile};
use fjord_storage::{BatchCache, DataDir, Log, LogConfig, StorageError, checkpoint};
use futures::FutureExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

const STAGING_BYTES: usize = 4 << 20;

/// `batch(seed)` (3 records) as the log stores it at `base` under `epoch`.
fn stored(seed: u64, base: u64, epoch: i32) -> Vec<u8> {
    let mut bytes = batch(seed, 3, 200, 1000 + seed as i64);
    batch::set_base_offset(&mut bytes, base as i64);
    batch::set_partition_leader_epoch(&mut bytes, epoch);
    bytes
}

/// Appends `stored(seed, next, epoch)` for each seed as a leader would.
async fn append_all(log: &Log, seeds: impl IntoIterator<Item = u64>, epoch: i32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for seed in seeds {
        let base = log.offset_next();
        let bytes = stored(seed, base, epoch);
        let appended = log
            .append_at(&bytes, base, Some(epoch))
            .await
            .expect("append");
        assert_eq!(appended.base_offset, base);
        out.push(bytes);
    }
    out
}

/// The epoch file of `log`, decoded.
async fn epoch_file(log: &Log) -> Option<Vec<(i32, u64)>> {
    let bytes = checkpoint::read(&epochs::file_path(log.dir()))
        .await
        .expect("epoch file readable")?;
    Some(
        EpochCache::decode(&bytes)
            .expect("epoch file decodes")
            .entries()
            .to_vec(),
    )
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 300,
        ..LogConfig::default()
    }
}

#[test]
fn append_at_refuses_another_offset_and_a_lower_epoch_staging_nothing() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(8 << 20);
        let log = open(&dir, "p", LogConfig::default(), &cache).await;
        append_all(&log, [0], 2).await;
        let stats = log.stats();
        let wrong = log.append_at(&stored(1, 0, 2), 0, Some(2)).await;
        assert!(
            matches!(
                wrong,
                Err(StorageError::OffsetMismatch {
                    expected: 0,
                    next: 3
                })
            ),
            "{wrong:?}"
        );
        let ahead = log.append_at(&stored(1, 9, 2), 9, Some(2)).await;
        assert!(matches!(ahead, Err(StorageError::OffsetMismatch { .. })));
        let lower = log.append_at(&stored(1, 3, 1), 3, Some(1)).await;
        assert!(
            matches!(
                lower,
                Err(StorageError::EpochRegression { epoch: 1, last: 2 })
            ),
            "{lower:?}"
        );
        assert_eq!(log.offset_next(), 3);
        assert_eq!(log.stats().appends, stats.appends, "nothing staged");
        // A follower's append keeps the leader's epoch byte for byte.
        let leaders = stored(7, 3, 5);
        log.append_at(&leaders, 3, None)
            .await
            .expect("follower append");
        log.flush().await.expect("flush");
        assert_eq!(read_all(&log, 3).await, [leaders]);
        assert_eq!(log.epochs(), [(2, 0), (5, 3)]);
        log.close().await.expect("close");
    });
}

#[test]
fn truncate_in_the_active_segment_then_append_reads_back_exactly() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(8 << 20);
        let config = LogConfig {
            index_interval_bytes: 300,
            ..LogConfig::default()
        };
        let log = open(&dir, "p", config.clone(), &cache).await;
        let mut want = append_all(&log, 0..10, 1).await;
        want.extend(append_all(&log, 10..20, 2).await);
        log.flush().await.expect("flush");
        assert_eq!(log.epochs(), [(1, 0), (2, 30)]);
        // Inside a batch, below the start: refused, nothing changes.
        assert!(matches!(
            log.truncate(40).await,
            Err(StorageError::NotBatchBoundary { offset: 40 })
        ));
        log.truncate(60).await.expect("no-op at the end");
        log.truncate(99).await.expect("no-op past the end");
        assert_eq!(log.offset_next(), 60);

        log.truncate(39).await.expect("truncate");
        want.truncate(13);
        assert_eq!(log.offset_next(), 39);
        assert_eq!(log.offset_written(), 39);
        assert_eq!(log.epochs(), [(1, 0), (2, 30)]);
        assert_eq!(epoch_file(&log).await.expect("file"), [(1, 0), (2, 30)]);
        assert_eq!(read_all(&log, 0).await, want);
        // The cut batch is gone from cache and index alike.
        assert!(matches!(
            log.read(39, 1000).await,
            Ok(read) if read.slices.is_empty()
        ));

        want.extend(append_all(&log, 100..105, 3).await);
        log.flush().await.expect("flush");
        assert_eq!(read_all(&log, 0).await, want);
        assert_eq!(log.epochs(), [(1, 0), (2, 30), (3, 39)]);
        // Down to the first batch of epoch 2: its entry goes.
        log.truncate(30).await.expect("truncate");
        want.truncate(10);
        assert_eq!(log.epochs(), [(1, 0)]);
        want.extend(append_all(&log, 200..203, 4).await);
        log.close().await.expect("close");

        let cache = BatchCache::new(0);
        let log = open(&dir, "p", config, &cache).await;
        assert_eq!(read_all(&log, 0).await, want, "after reopen");
        assert_eq!(log.epochs(), [(1, 0), (4, 30)]);
        log.close().await.expect("close");
    });
}

#[test]
fn truncate_across_segments_reactivates_the_earlier_one() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(8 << 20);
        let log = open(&dir, "p", small_segments(), &cache).await;
        let mut want = append_all(&log, 0..30, 1).await;
        log.flush().await.expect("flush");
        let segments = log.segment_count();
        assert!(segments >= 4, "{segments} segments");
        // Into the second segment: later ones go, it is active again.
        log.truncate(3 * 9).await.expect("truncate");
        want.truncate(9);
        assert!(log.segment_count() < segments);
        assert_eq!(read_all(&log, 0).await, want);
        let files = std::fs::read_dir(log.dir())
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count();
        assert_eq!(files, log.segment_count(), "deleted segment files");
        want.extend(append_all(&log, 50..70, 2).await);
        log.flush().await.expect("flush");
        assert_eq!(read_all(&log, 0).await, want);
        // Exactly at a segment's start.
        let cache_reader = BatchCache::new(0);
        let boundary = {
            let probe = open(&dir, "p", small_segments(), &cache_reader).await;
            drop(probe);
            std::fs::read_dir(log.dir())
                .expect("list")
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    fjord_storage::segment::parse_log_name(&e.file_name().to_string_lossy())
                })
                .filter(|&b| b > 0)
                .min()
                .expect("a second segment")
        };
        log.truncate(boundary)
            .await
            .expect("truncate at a segment start");
        want.truncate(boundary as usize / 3);
        assert_eq!(log.offset_next(), boundary);
        assert_eq!(log.epochs(), [(1, 0)]);
        want.extend(append_all(&log, 90..92, 3).await);
        log.close().await.expect("close");
        let log = open(&dir, "p", small_segments(), &cache).await;
        assert_eq!(read_all(&log, 0).await, want, "after reopen");
        log.close().await.expect("close");
    });
}

#[test]
fn truncate_drops_staged_batches_without_a_staging_area() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(8 << 20);
        let log = open(&dir, "p", LogConfig::default(), &cache).await;
        let mut want = append_all(&log, 0..5, 1).await;
        log.flush().await.expect("flush");
        // Staged, not yet written: the flusher has not run.
        let mut pending = Vec::new();
        for seed in 5..10 {
            let base = log.offset_next();
            let appended = log
                .append_at(&stored(seed, base, 1), base, Some(1))
                .await
                .expect("append");
            pending.push(appended.durable);
        }
        assert_eq!(log.offset_written(), 15, "staged only");
        // The cut lies in the written part: staged batches go unwritten.
        log.truncate(9).await.expect("truncate");
        want.truncate(3);
        for durable in pending {
            let outcome = durable.now_or_never().expect("resolved by the cut");
            assert!(matches!(outcome, Err(StorageError::Truncated { end: 9 })));
        }
        assert_eq!(read_all(&log, 0).await, want);
        // The cut lies in the staged part: written first, then cut.
        want.extend(append_all(&log, 20..22, 1).await);
        log.flush().await.expect("flush");
        want.extend(append_all(&log, 22..26, 2).await);
        log.truncate(21).await.expect("truncate staged");
        want.truncate(7);
        assert_eq!(log.offset_next(), 21);
        assert_eq!(log.epochs(), [(1, 0), (2, 15)]);
        want.extend(append_all(&log, 30..31, 3).await);
        log.flush().await.expect("flush");
        assert_eq!(read_all(&log, 0).await, want);
        assert_eq!(log.epochs(), [(1, 0), (2, 15), (3, 21)]);
        log.close().await.expect("close");
    });
}

fn staging_file(dir: &DataDir) -> StagingFile {
    StagingFile::open(
        &dir.path().join("staging"),
        dir.path(),
        1,
        0,
        2,
        STAGING_BYTES,
    )
    .expect("staging file")
}

#[test]
fn truncated_staged_batches_never_come_back_after_a_kill() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let area = Rc::new(Staging::new(file, dir.path().to_path_buf()));
        let cache = BatchCache::new(8 << 20);
        let path = dir.path().join("p");
        let log = Log::open_staged(
            &path,
            LogConfig::default(),
            cache.clone(),
            Some(area.clone()),
        )
        .await
        .expect("open");
        let mut want = append_all(&log, 0..3, 1).await;
        log.flush().await.expect("flush");
        // Another log's entry, never written, holds the ring's head: every
        // entry after it is found again after a kill unless marked released.
        let other = area.key(&dir.path().join("q"));
        area.stage(&other, 0, 2, Pieces::whole(&stored(99, 0, 1)), None)
            .expect("stage");
        for seed in 3..6 {
            let base = log.offset_next();
            let appended = log
                .append_at(&stored(seed, base, 1), base, Some(1))
                .await
                .expect("append");
            // Acknowledged once staged, readable before the write.
            appended
                .durable
                .now_or_never()
                .expect("staged")
                .expect("ok");
        }
        assert_eq!(log.offset_visible(), 18);
        assert!(log.offset_written() < 18);
        log.truncate(3).await.expect("truncate");
        want.truncate(1);
        assert_eq!(area.staged_batches(), 1, "only the other log's entry");
        assert_eq!(log.offset_visible(), 3);
        assert_eq!(read_all(&log, 0).await, want);
        // A kill: no close, the staging file left as it is. The log's
        // flusher lets go of the area once it sees the log gone; until then
        // the area's mapping holds the file's lock, as a dying process would.
        let gone = Rc::downgrade(&area);
        drop(log);
        drop(area);
        while gone.strong_count() > 0 {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let area = Rc::new(Staging::new(staging_file(&dir), dir.path().to_path_buf()));
        let log = Log::open_staged(&path, LogConfig::default(), cache, Some(area.clone()))
            .await
            .expect("reopen");
        assert_eq!(log.recovery_report().batches_replayed, 0);
        assert_eq!(log.offset_next(), 3);
        assert_eq!(read_all(&log, 0).await, want);
        assert_eq!(log.epochs(), [(1, 0)]);
        assert_eq!(epoch_file(&log).await.expect("file"), [(1, 0)]);
        log.close().await.expect("close");
    });
}

#[test]
fn a_truncation_survives_a_crash() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(8 << 20);
        let log = open(&dir, "p", small_segments(), &cache).await;
        let mut want = append_all(&log, 0..12, 1).await;
        want.extend(append_all(&log, 12..24, 2).await);
        log.flush().await.expect("flush");
        log.truncate(3 * 14).await.expect("truncate");
        want.truncate(14);
        // No close: the segment files keep their preallocated tails.
        drop(log);
        let log = open(&dir, "p", small_segments(), &cache).await;
        assert_eq!(log.offset_next(), 42, "truncated batches came back");
        assert_eq!(read_all(&log, 0).await, want);
        assert_eq!(log.epochs(), [(1, 0), (2, 36)]);
        assert_eq!(epoch_file(&log).await.expect("file"), [(1, 0), (2, 36)]);
        log.close().await.expect("close");
    });
}

#[test]
fn the_epoch_cache_follows_appends_reopens_and_is_rebuilt() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(8 << 20);
        let log = open(&dir, "p", small_segments(), &cache).await;
        assert!(log.epochs().is_empty());
        log.set_leader_epoch(3);
        for seed in 0..4 {
            log.append(&batch(seed, 3, 200, 0)).await.expect("append");
        }
        append_all(&log, 4..10, 5).await;
        append_all(&log, 10..11, 5).await;
        append_all(&log, 11..20, 8).await;
        let want = [(3, 0), (5, 12), (8, 33)];
        assert_eq!(log.epochs(), want);
        assert_eq!(epoch_file(&log).await.expect("file"), want);
        log.close().await.expect("close");

        let log = open(&dir, "p", small_segments(), &cache).await;
        assert_eq!(log.epochs(), want);
        let file = epochs::file_path(log.dir());
        log.close().await.expect("close");
        std::fs::remove_file(&file).expect("remove");
        let log = open(&dir, "p", small_segments(), &cache).await;
        assert_eq!(log.epochs(), want, "rebuilt from the batches");
        assert_eq!(epoch_file(&log).await.expect("rewritten"), want);
        log.close().await.expect("close");
        let mut bytes = std::fs::read(&file).expect("read");
        bytes[14] ^= 1;
        std::fs::write(&file, &bytes).expect("damage");
        let log = open(&dir, "p", small_segments(), &cache).await;
        assert_eq!(log.epochs(), want, "rebuilt after damage");

        // Retention trims: the first kept entry starts at the log start.
        log.set_retention(Some(2 * 4096), None);
        let removed = log.enforce_retention(0).await.expect("retention");
        assert!(removed > 0);
        let start = log.offset_start();
        assert!(start > 12, "start {start}");
        let trimmed = if start < 33 {
            vec![(5, start), (8, 33)]
        } else {
            vec![(8, start)]
        };
        assert_eq!(log.epochs(), trimmed);
        assert_eq!(epoch_file(&log).await.expect("file"), trimmed);
        log.close().await.expect("close");
        let log = open(&dir, "p", small_segments(), &cache).await;
        assert_eq!(log.epochs(), trimmed);
        log.close().await.expect("close");
    });
}

/// `path` relative to the working directory: up to the root and down.
fn relative(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().expect("working directory");
    let mut relative: PathBuf = std::iter::repeat_n("..", cwd.components().count() - 1).collect();
    relative.push(path.strip_prefix("/").expect("an absolute path"));
    relative
}

#[test]
fn a_checkpoint_at_a_relative_path_is_written_and_read() {
    // glommio's `Directory::open` once made every relative checkpoint fail
    // with EBADF (a log opened in a relative directory could not take its
    // first leader epoch).
    let (tmp, dir) = data_dir();
    let path = relative(&tmp.path().join("hard-state"));
    assert!(path.is_relative());
    run(&dir, move |_| async move {
        checkpoint::write(&path, b"term 3").await.expect("write");
        let read = checkpoint::read(&path).await.expect("read");
        assert_eq!(read.as_deref(), Some(&b"term 3"[..]));
    });
}

#[test]
fn checkpoint_files_round_trip_and_refuse_damage() {
    let (tmp, dir) = data_dir();
    let path = tmp.path().join("hard-state");
    let (bytes_path, read_path) = (path.clone(), path.clone());
    run(&dir, move |_| async move {
        assert!(
            checkpoint::read(&read_path)
                .await
                .expect("missing")
                .is_none()
        );
        checkpoint::write(&bytes_path, b"first")
            .await
            .expect("write");
        checkpoint::write(&bytes_path, b"term 9 vote 2")
            .await
            .expect("write");
        let read = checkpoint::read(&read_path).await.expect("read");
        assert_eq!(read.as_deref(), Some(&b"term 9 vote 2"[..]));
    });
    let good = std::fs::read(&path).expect("read");
    assert!(!path.with_file_name("hard-state.tmp").exists());
    let mut flipped = good.clone();
    flipped[good.len() - 2] ^= 0x04;
    std::fs::write(&path, &flipped).expect("flip");
    let damaged = path.clone();
    run(&dir, move |_| async move {
        let read = checkpoint::read(&damaged).await;
        assert!(
            matches!(read, Err(StorageError::Corrupt { .. })),
            "{read:?}"
        );
    });
    std::fs::write(&path, &good[..good.len() - 3]).expect("cut");
    let torn = path.clone();
    run(&dir, move |_| async move {
        let read = checkpoint::read(&torn).await;
        assert!(
            matches!(read, Err(StorageError::Corrupt { .. })),
            "{read:?}"
        );
    });
}

#[test]
fn a_reset_log_starts_empty_at_the_given_offset_and_goes_on_from_there() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(1 << 20);
        let log = open(&dir, "p0", small_segments(), &cache).await;
        append_all(&log, 0..10, 1).await;
        let path = log.dir().to_path_buf();
        log.close().await.expect("close");

        fjord_storage::recovery::reset(&path, 1000)
            .await
            .expect("reset");
        let log = open(&dir, "p0", small_segments(), &cache).await;
        assert_eq!(log.offset_start(), 1000);
        assert_eq!(log.offset_next(), 1000);
        assert!(log.epochs().is_empty(), "no epoch survives a reset");
        let appended = append_all(&log, 20..25, 4).await;
        log.flush().await.expect("flush");
        assert_eq!(read_all(&log, 1000).await, appended);
        assert_eq!(log.epochs(), vec![(4, 1000)]);
        log.close().await.expect("close");

        // Reopened as a restart finds it.
        let log = open(&dir, "p0", small_segments(), &cache).await;
        assert_eq!(log.offset_start(), 1000);
        assert_eq!(read_all(&log, 1000).await, appended);
        log.close().await.expect("close");
    });
}
