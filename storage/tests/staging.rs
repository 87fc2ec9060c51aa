//! A log with a staging area: appends are acknowledged once staged and
//! readable at once, the write releases them, and at open the batches
//! staged past the log's end are appended again — or refused when they
//! would leave a gap.

mod common;

use common::*;
use fjord_core::FsyncPolicy;
use fjord_core::batch;
use fjord_storage::staging::{Pieces, Staging, StagingFile};
use fjord_storage::{BatchCache, Log, LogConfig, StorageError};
use futures::FutureExt;
use std::rc::Rc;
use std::time::Duration;

const STAGING_BYTES: usize = 4 << 20;

fn staging_file(dir: &fjord_storage::DataDir) -> StagingFile {
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

/// `batch(seed)` as the log stores it at `base`.
fn stored(seed: u64, base: u64) -> Vec<u8> {
    let mut bytes = batch(seed, 3, 40, 1000);
    batch::set_base_offset(&mut bytes, base as i64);
    batch::set_partition_leader_epoch(&mut bytes, 0);
    bytes
}

#[test]
fn staged_appends_are_acknowledged_and_readable_before_their_write() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let area = Rc::new(Staging::new(file, dir.path().to_path_buf()));
        let cache = BatchCache::new(8 << 20);
        let log = Log::open_staged(
            dir.path().join("p"),
            LogConfig::default(),
            cache,
            Some(area.clone()),
        )
        .await
        .expect("open");
        let mut want = Vec::new();
        for seed in 0..20 {
            let appended = log.append(&batch(seed, 3, 40, 1000)).await.expect("append");
            // Safe from a killed process already: no wait for the disk.
            appended
                .durable
                .now_or_never()
                .expect("acknowledged once staged")
                .expect("durable");
            want.push(stored(seed, appended.base_offset));
        }
        assert_eq!(log.offset_visible(), 60);
        assert!(log.offset_written() < 60, "the flusher has not run yet");
        assert_eq!(
            area.staged_batches(),
            20 - log.offset_written() as usize / 3
        );
        let mut got = Vec::new();
        let mut offset = 0;
        while offset < log.offset_visible() {
            let read = log.read(offset, 1000).await.expect("read");
            for slice in &read.slices {
                got.extend(batch::batches(slice).map(|b| b.as_bytes().to_vec()));
            }
            offset = read.offset_next;
        }
        assert!(got == want, "staged batches read back differ");
        log.close().await.expect("close");
        assert_eq!(area.staged_batches(), 0, "written batches are released");
    });
}

#[test]
fn under_fsync_always_an_append_is_answered_after_its_sync_not_once_staged() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let area = Rc::new(Staging::new(file, dir.path().to_path_buf()));
        let config = LogConfig {
            fsync: FsyncPolicy::Always,
            ..LogConfig::default()
        };
        let log = open_in(&dir, &area, config).await;
        let appended = log.append(&batch(0, 3, 40, 1000)).await.expect("append");
        // The staging area would survive a killed process, not a power
        // loss: `always` promises the latter, so it waits for the sync.
        assert_eq!(area.staged_batches(), 0, "nothing staged under always");
        let mut durable = appended.durable;
        assert!(
            (&mut durable).now_or_never().is_none(),
            "answered before the write and its sync"
        );
        durable.await.expect("durable");
        assert_eq!(log.offset_durable(), 3);
        log.close().await.expect("close");
    });
}

/// The log `p` of `dir` with `config`, staging in `area`.
async fn open_in(dir: &fjord_storage::DataDir, area: &Rc<Staging>, config: LogConfig) -> Log {
    Log::open_staged(
        dir.path().join("p"),
        config,
        BatchCache::new(8 << 20),
        Some(area.clone()),
    )
    .await
    .expect("open")
}

/// A staged log whose write-behind lingers long enough that only the byte
/// threshold or a waiter ends it.
async fn open_lingering(dir: &fjord_storage::DataDir, file: StagingFile) -> Log {
    let area = Rc::new(Staging::new(file, dir.path().to_path_buf()));
    let config = LogConfig {
        write_behind: Duration::from_secs(30),
        ..LogConfig::default()
    };
    open_in(dir, &area, config).await
}

#[test]
fn small_staged_appends_are_written_behind_together() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let log = open_lingering(&dir, file).await;
        // Appends answered from the staging area, apart in time: a flusher
        // without write-behind writes each as it comes.
        for seed in 0..5 {
            log.append(&batch(seed, 3, 40, 1000)).await.expect("append");
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert_eq!(log.offset_visible(), 15);
        assert_eq!(
            log.offset_written(),
            0,
            "small staged appends wait to gather"
        );
        // A waiter ends the linger: all five go out as one write.
        log.flush().await.expect("flush");
        assert_eq!(log.offset_written(), 15);
        assert_eq!(log.stats().flushes, 1, "five appends, one write");
        // Enough bytes end it too, without anyone waiting.
        let mut staged = 0;
        let mut seed = 5;
        while staged < 1100 << 10 {
            let bytes = batch(seed, 16, 1000, 1000);
            staged += bytes.len();
            log.append(&bytes).await.expect("append");
            seed += 1;
        }
        let end = log.offset_visible();
        for _ in 0..5000 {
            if log.offset_written() == end {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(log.offset_written(), end, "1 MiB staged is written at once");
        log.close().await.expect("close");
    });
}

/// Logs letting their staged bytes gather do not hold the area's room
/// from another log's append: the append that finds no room has them
/// write at once, and is staged (answered) rather than made to wait for
/// the 5 s fallback and its own write.
#[test]
fn an_append_that_finds_no_room_ends_the_other_logs_write_behind() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let area = Rc::new(Staging::new(file, dir.path().to_path_buf()));
        let config = LogConfig {
            write_behind: Duration::from_secs(30),
            max_batch_bytes: 2 << 20,
            ..LogConfig::default()
        };
        let open = |name: &str| {
            Log::open_staged(
                dir.path().join(name),
                config.clone(),
                BatchCache::new(8 << 20),
                Some(area.clone()),
            )
        };
        let quarter = area.capacity_bytes() / 4;
        let mut idle = Vec::new();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let log = open(name).await.expect("open");
            // Just under what a log may gather (a quarter of the area).
            let mut staged = 0;
            let mut seed = 100 * i as u64;
            loop {
                let bytes = batch(seed, 16, 1000, 1000);
                if staged + 2 * bytes.len() > quarter {
                    break;
                }
                staged += bytes.len();
                log.append(&bytes).await.expect("append");
                seed += 1;
            }
            idle.push(log);
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
        for log in &idle {
            assert_eq!(log.offset_written(), 0, "each gathers its appends");
        }
        let free = area.capacity_bytes() - area.staged_bytes();
        let big = batch(9, 1500, 1000, 1000);
        assert!(big.len() > free, "{} bytes do not fit in {free}", big.len());

        let log = open("d").await.expect("open");
        let started = std::time::Instant::now();
        let appended = log.append(&big).await.expect("append");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the append waited {:?} for room the lingering logs held",
            started.elapsed()
        );
        appended
            .durable
            .now_or_never()
            .expect("answered from the staging area, not after its write")
            .expect("durable");
        for log in idle.iter().chain([&log]) {
            log.close().await.expect("close");
        }
    });
}

#[test]
fn a_read_runs_from_the_written_batches_on_into_the_staged_ones() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let log = open_lingering(&dir, file).await;
        let first = log.append(&batch(0, 3, 40, 1000)).await.expect("append");
        log.flush().await.expect("flush");
        let second = log.append(&batch(1, 3, 40, 1000)).await.expect("append");
        assert_eq!(log.offset_written(), 3, "the second batch is staged only");
        let read = log.read(0, 1 << 20).await.expect("read");
        assert_eq!(read.offset_next, 6, "one read up to the visible end");
        let got: Vec<Vec<u8>> = read
            .slices
            .iter()
            .flat_map(|slice| batch::batches(slice).map(|b| b.as_bytes().to_vec()))
            .collect();
        assert!(got == [stored(0, first.base_offset), stored(1, second.base_offset)]);
        // A read with room for the written batch only stops there.
        let small = log.read(0, got[0].len()).await.expect("read");
        assert_eq!(small.offset_next, 3);
        log.close().await.expect("close");
    });
}

/// A timestamp lookup walks the files: batches only staged (answered,
/// not yet written) are written first, so it finds them (it answered
/// "none newer" before).
#[test]
fn a_timestamp_lookup_finds_batches_not_yet_written() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let log = open_lingering(&dir, file).await;
        log.append(&batch(0, 3, 40, 1000)).await.expect("append");
        log.append(&batch(1, 3, 40, 5000)).await.expect("append");
        assert_eq!(log.offset_written(), 0, "both batches staged only");
        let found = log.offset_for_timestamp(5000, 0).await.expect("lookup");
        assert_eq!(found, Some((3, 5000)));
        assert_eq!(log.offset_written(), 6);
        log.close().await.expect("close");
    });
}

#[test]
fn batches_staged_past_the_end_are_appended_at_open_and_a_gap_is_refused() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let area = Rc::new(Staging::new(file, dir.path().to_path_buf()));
        let cache = BatchCache::new(8 << 20);
        let path = dir.path().join("p");
        let log = Log::open(&path, LogConfig::default(), cache.clone())
            .await
            .expect("open");
        log.append(&batch(0, 3, 40, 1000)).await.expect("append");
        log.close().await.expect("close");
        drop(log);
        // What a process killed mid-stall leaves: one batch already
        // written (0..=2), then two the log never wrote.
        let key = area.key(&path);
        area.stage(&key, 0, 2, Pieces::whole(&stored(0, 0)), None)
            .expect("stage");
        area.stage(&key, 3, 5, Pieces::whole(&stored(1, 3)), None)
            .expect("stage");
        area.stage(&key, 6, 8, Pieces::whole(&stored(2, 6)), None)
            .expect("stage");
        // A second copy of one of them, later in the ring: what a kill
        // leaves between the copy and the release of an entry the ring
        // moved along (`move_unclaimed_head`). Appended once.
        area.stage(&key, 3, 5, Pieces::whole(&stored(1, 3)), None)
            .expect("stage");
        // And for another log, one that would leave a gap.
        let other = dir.path().join("q");
        area.stage(&area.key(&other), 5, 7, Pieces::whole(&stored(3, 5)), None)
            .expect("stage");
        drop(area);
        let area = Rc::new(Staging::new(
            StagingFile::open(
                &dir.path().join("staging"),
                dir.path(),
                1,
                0,
                2,
                STAGING_BYTES,
            )
            .expect("reopen"),
            dir.path().to_path_buf(),
        ));
        let log = Log::open_staged(
            &path,
            LogConfig::default(),
            cache.clone(),
            Some(area.clone()),
        )
        .await
        .expect("open with staging");
        assert_eq!(log.recovery_report().batches_replayed, 2);
        assert_eq!(log.offset_visible(), 9);
        log.flush().await.expect("flush");
        let all = read_all(&log, 0).await;
        assert!(all == [stored(0, 0), stored(1, 3), stored(2, 6)]);
        assert_eq!(area.staged_batches(), 1, "all of p's released, q's kept");
        let gap = Log::open_staged(&other, LogConfig::default(), cache, Some(area.clone())).await;
        assert!(
            matches!(&gap, Err(StorageError::Corrupt { reason, .. }) if reason.contains("the log ends at 0")),
            "{:?}",
            gap.err()
        );
        log.close().await.expect("close");
    });
}

/// The area as a killed process leaves it: `entries` (first offset, last
/// offset, the batch's seed) staged for the log at `path`, in ring order,
/// then the file mapped again and walked as at start.
fn left_staged(
    file: StagingFile,
    dir: &fjord_storage::DataDir,
    path: &std::path::Path,
    entries: &[(u64, u64, u64)],
) -> Rc<Staging> {
    let area = Staging::new(file, dir.path().to_path_buf());
    let key = area.key(path);
    for &(base, last, seed) in entries {
        area.stage(&key, base, last, Pieces::whole(&stored(seed, base)), None)
            .expect("stage");
    }
    drop(area);
    Rc::new(Staging::new(staging_file(dir), dir.path().to_path_buf()))
}

/// Writes what `log` replayed, checks that it reads back as `want` and that
/// the area let every entry go, and closes the log.
async fn assert_replayed(log: Log, area: &Staging, want: &[Vec<u8>]) {
    log.flush().await.expect("flush");
    let all = read_all(&log, 0).await;
    assert!(all == want, "replayed batches differ");
    assert_eq!(area.staged_batches(), 0, "released once written");
    log.close().await.expect("close");
}

/// A replay that fails (here: the log ends below the staged batches, a
/// gap) hands every entry back: the next opening of the log in the same
/// run, once the gap is filled, appends them all, in offset order even
/// where the ring holds them out of it (as an area written by an older
/// build can after a kill during a replay).
#[test]
fn a_replay_that_fails_leaves_every_batch_for_the_next_opening() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let path = dir.path().join("p");
        let area = left_staged(file, &dir, &path, &[(6, 8, 2), (3, 5, 1)]);
        let cache = BatchCache::new(8 << 20);
        let failed = Log::open_staged(
            &path,
            LogConfig::default(),
            cache.clone(),
            Some(area.clone()),
        )
        .await;
        assert!(
            matches!(&failed, Err(StorageError::Corrupt { reason, .. }) if reason.contains("the log ends at 0")),
            "{:?}",
            failed.err()
        );
        assert_eq!(area.staged_batches(), 2, "nothing released");
        // The gap filled: the log's first batch written.
        let plain = Log::open(&path, LogConfig::default(), cache.clone())
            .await
            .expect("open without staging");
        plain.append(&batch(0, 3, 40, 1000)).await.expect("append");
        plain.close().await.expect("close");
        drop(plain);
        let log = Log::open_staged(&path, LogConfig::default(), cache, Some(area.clone()))
            .await
            .expect("open again");
        assert_eq!(log.recovery_report().batches_replayed, 2);
        assert_replayed(log, &area, &[stored(0, 0), stored(1, 3), stored(2, 6)]).await;
    });
}

/// Batches acknowledged under the limits of their day are replayed whole
/// after the limits were lowered: a `max.message.bytes` below them, and a
/// log staging budget below them too (it is widened to the largest).
#[test]
fn batches_over_limits_lowered_since_are_replayed() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let path = dir.path().join("p");
        let area = left_staged(file, &dir, &path, &[(0, 2, 0), (3, 5, 1)]);
        let lowered = LogConfig {
            max_batch_bytes: 64,
            staged_bytes_max: 128,
            ..LogConfig::default()
        };
        assert!(stored(0, 0).len() > lowered.staged_bytes_max);
        let log = Log::open_staged(&path, lowered, BatchCache::new(8 << 20), Some(area.clone()))
            .await
            .expect("open");
        assert_eq!(log.recovery_report().batches_replayed, 2);
        // New appends keep to the lowered limit.
        let refused = log.append(&batch(9, 3, 40, 1000)).await;
        assert!(
            matches!(refused, Err(StorageError::BatchTooLarge { .. })),
            "{:?}",
            refused.err()
        );
        assert_replayed(log, &area, &[stored(0, 0), stored(1, 3)]).await;
    });
}

/// An entry no log will write (a log that failed keeps its batches for
/// the next start) holds the ring's head: once it has for a while, appends
/// that find no room wait for their writes instead of for room that will
/// not come.
#[test]
fn a_ring_held_by_an_entry_no_log_writes_does_not_stop_appends() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let area = Rc::new(Staging::new(file, dir.path().to_path_buf()));
        let held = area.key(&dir.path().join("failed"));
        let _held = area
            .stage(&held, 0, 2, Pieces::whole(&stored(0, 0)), None)
            .expect("stage");
        let log = open_in(&dir, &area, LogConfig::default()).await;
        let appends = async {
            let mut bytes = 0;
            let mut seed = 1;
            // Twice the ring: past its end only if appends stop waiting.
            while bytes < 2 * STAGING_BYTES {
                let b = batch(seed, 64, 1000, 1000);
                bytes += b.len();
                let appended = log.append(&b).await.expect("append");
                appended.durable.await.expect("durable");
                seed += 1;
            }
            seed - 1
        };
        let limit = std::pin::pin!(glommio::timer::sleep(Duration::from_secs(60)));
        let appended = match futures::future::select(std::pin::pin!(appends), limit).await {
            futures::future::Either::Left((n, _)) => n,
            futures::future::Either::Right(_) => panic!("appends stopped behind the held entry"),
        };
        assert_eq!(log.offset_visible(), appended * 64);
        assert_eq!(area.staged_batches(), 1, "the held entry stays");
        log.close().await.expect("close");
    });
}

/// A batch behind one that waits for its write (too large for the ring
/// here) waits for its write too: answered from the staging area at once,
/// it would outlive a kill the one before it does not, and the replay
/// would find a gap.
#[test]
fn a_batch_behind_an_unstaged_one_is_not_answered_before_it() {
    let (_tmp, dir) = data_dir();
    let file = staging_file(&dir);
    run(&dir, move |dir| async move {
        let area = Rc::new(Staging::new(file, dir.path().to_path_buf()));
        let config = LogConfig {
            max_batch_bytes: 8 << 20,
            ..LogConfig::default()
        };
        let log = open_in(&dir, &area, config).await;
        // More than half the ring: never staged.
        let large = log
            .append(&batch(0, 3, STAGING_BYTES / 5, 1000))
            .await
            .expect("append");
        let small = log.append(&batch(1, 3, 40, 1000)).await.expect("append");
        // Neither was written yet: nothing has yielded to the flusher.
        assert_eq!(log.offset_written(), 0);
        assert_eq!(area.staged_batches(), 0, "the small one was staged");
        let mut small_durable = small.durable;
        assert!(
            (&mut small_durable).now_or_never().is_none(),
            "answered before the batch ahead of it is safe"
        );
        large.durable.await.expect("written");
        small_durable.await.expect("written");
        assert_eq!(log.offset_written(), 6);
        log.close().await.expect("close");
    });
}
