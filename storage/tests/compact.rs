//! Log compaction against a real disk: the newest value per key survives
//! at its original offset, tombstones expire, the lag and the dirty ratio
//! hold cleaning back, the active segment is never touched, and a crash at
//! any step of the swap leaves a consistent log.

mod common;

use common::*;
use fjord_core::{BatchBuilder, CleanupPolicy};
use fjord_storage::compact::{CLEANED_SUFFIX, state::CleanerState};
use fjord_storage::{BatchCache, Compaction, Log, LogConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// (offset, key, value) of one record.
type Rec = (u64, String, Option<String>);

const BUDGET: u64 = 1 << 30;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        cleanup: CleanupPolicy::COMPACT,
        compaction: Compaction {
            delete_retention: Duration::from_secs(100),
            min_dirty_ratio: 0.0,
            min_lag: Duration::ZERO,
            max_lag: Duration::from_millis(i64::MAX as u64),
            keys_max: 1 << 16,
            io_bytes_per_sec: BUDGET,
            keep_empty_batches: false,
        },
        ..LogConfig::default()
    }
}

fn keyed(key: &str, value: Option<&str>, ts: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    builder.push(ts, Some(key.as_bytes()), value.map(str::as_bytes), &[]);
    builder.build()
}

async fn put(log: &Log, key: &str, value: Option<&str>, ts: i64) -> Rec {
    let appended = log.append(&keyed(key, value, ts)).await.expect("append");
    appended.durable.await.expect("durable");
    (
        appended.base_offset,
        key.to_owned(),
        value.map(str::to_owned),
    )
}

/// `rounds` overwrites of `keys` keys; returns every record appended.
async fn overwrite(log: &Log, keys: usize, rounds: usize, ts: i64) -> Vec<Rec> {
    let mut all = Vec::new();
    for round in 0..rounds {
        for k in 0..keys {
            let key = format!("key{k}");
            all.push(put(log, &key, Some(&format!("{key}-v{round}")), ts).await);
        }
    }
    log.flush().await.expect("flush");
    all
}

/// Every record readable from the log's start.
async fn records(log: &Log) -> Vec<Rec> {
    let mut out = Vec::new();
    for bytes in read_all(log, log.offset_start()).await {
        let batch = fjord_core::Batch::validate(&bytes).expect("valid batch on read");
        for record in batch.records().expect("uncompressed") {
            let record = record.expect("decodable");
            out.push((
                record.offset as u64,
                String::from_utf8(record.key.expect("keyed").to_vec()).expect("utf8"),
                record
                    .value
                    .map(|v| String::from_utf8(v.to_vec()).expect("utf8")),
            ));
        }
    }
    out
}

/// What a compacted log must hold: every record of `appended` at or past
/// `keep_all_from` (the clean offset), and below it only the newest of each
/// key there (tombstones included unless `tombstones_gone`). As in Kafka, a
/// clean record superseded only past the clean offset stays until the
/// next cleaning.
fn expected(appended: &[Rec], keep_all_from: u64, tombstones_gone: bool) -> Vec<Rec> {
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    for (offset, key, _) in appended.iter().filter(|r| r.0 < keep_all_from) {
        newest.insert(key, *offset);
    }
    appended
        .iter()
        .filter(|(offset, key, value)| {
            *offset >= keep_all_from
                || (newest[key.as_str()] == *offset && !(tombstones_gone && value.is_none()))
        })
        .cloned()
        .collect()
}

fn assert_offsets_increase(records: &[Rec]) {
    for pair in records.windows(2) {
        assert!(pair[0].0 < pair[1].0, "offsets increase: {pair:?}");
    }
}

#[test]
fn overwritten_keys_shrink_to_the_newest_value_at_their_offsets_and_reopen_the_same() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(64 << 20);
        let log = open(&dir, "p", config(), &cache).await;
        let appended = overwrite(&log, 20, 30, 1_000).await;
        assert!(log.segment_count() > 5, "the test needs closed segments");
        let before = log.size_bytes();
        assert_eq!(log.offset_clean(), 0, "never cleaned yet");
        assert!(log.needs_compaction(now()));
        let report = log.compact(now(), BUDGET).await.expect("compact");
        assert!(report.segments_rewritten > 0, "{report:?}");
        assert!(report.records_removed > 0);
        let after = log.size_bytes();
        assert!(after < before / 2, "log shrank: {before} -> {after}");
        assert_eq!(before - after, report.bytes_before - report.bytes_after);

        // Everything below the checkpoint is clean; the active segment is not.
        let clean = log.offset_clean();
        assert!(clean > 0 && clean < log.offset_next());
        let read = records(&log).await;
        assert_offsets_increase(&read);
        assert_eq!(read, expected(&appended, clean, false));
        // The reads went to disk and to the cache: read again, cache cold.
        log.close().await.expect("close");
        drop(log);
        let cold = BatchCache::new(0);
        let log = open(&dir, "p", config(), &cold).await;
        assert_eq!(log.offset_clean(), clean);
        assert_eq!(records(&log).await, read, "reopened log reads the same");
        assert!(!log.needs_compaction(now()), "nothing dirty is cleanable");
        log.close().await.expect("close");
    });
}

fn now() -> i64 {
    fjord_storage::log::now_ms()
}

#[test]
fn the_active_segment_is_never_touched() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, "p", config(), &cache).await;
        let mut appended = overwrite(&log, 5, 100, 1_000).await;
        // Overwrites of every key into the active segment: they supersede
        // the older ones but stay themselves, and so do the active
        // segment's own duplicates.
        let active_from = log.offset_next();
        for round in 0..3 {
            for k in 0..5 {
                let key = format!("key{k}");
                appended.push(put(&log, &key, Some(&format!("active{round}")), 1_000).await);
            }
        }
        log.flush().await.expect("flush");
        let segments = log.segment_count();
        let size_before = log.size_bytes();
        log.compact(now(), BUDGET).await.expect("compact");
        assert_eq!(log.segment_count(), segments);
        assert!(log.size_bytes() < size_before);
        // The active segment holds the last appends: the clean offset stops
        // at its base, at the latest before the last round.
        let clean = log.offset_clean();
        assert!(clean > 0 && clean <= active_from + 10, "clean to {clean}");
        let read = records(&log).await;
        let tail: Vec<Rec> = appended.iter().filter(|r| r.0 >= clean).cloned().collect();
        let read_tail: Vec<Rec> = read.iter().filter(|r| r.0 >= clean).cloned().collect();
        assert_eq!(read_tail, tail, "active segment intact");
        assert!(tail.len() >= 5, "the last round is never cleaned");
        assert_eq!(read, expected(&appended, log.offset_clean(), false));
        log.close().await.expect("close");
    });
}

#[test]
fn tombstones_survive_delete_retention_then_disappear() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, "p", config(), &cache).await;
        let mut appended = vec![put(&log, "gone", Some("v"), 1_000).await];
        appended.push(put(&log, "gone", None, 1_000).await);
        appended.extend(overwrite(&log, 10, 10, 1_000).await);
        let t0 = now();
        log.compact(t0, BUDGET).await.expect("first cleaning");
        let read = records(&log).await;
        assert!(
            read.iter().any(|r| r.1 == "gone" && r.2.is_none()),
            "tombstone kept after the first cleaning"
        );
        assert!(
            !read.iter().any(|r| r.1 == "gone" && r.2.is_some()),
            "its value gone"
        );

        // Cleanings run when something is dirty: add some each time.
        appended.extend(overwrite(&log, 10, 10, 1_000).await);
        let retention = 100_000;
        log.compact(t0 + retention - 1, BUDGET)
            .await
            .expect("second");
        let read = records(&log).await;
        assert!(
            read.iter().any(|r| r.1 == "gone"),
            "still within delete.retention.ms"
        );
        assert_eq!(read, expected(&appended, log.offset_clean(), false));

        appended.extend(overwrite(&log, 10, 10, 1_000).await);
        log.compact(t0 + retention, BUDGET).await.expect("third");
        let read = records(&log).await;
        assert!(!read.iter().any(|r| r.1 == "gone"), "tombstone expired");
        assert_offsets_increase(&read);
        assert_eq!(read, expected(&appended, log.offset_clean(), true));
        log.close().await.expect("close");
    });
}

#[test]
fn min_compaction_lag_holds_recent_records_back() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let mut config = config();
        config.compaction.min_lag = Duration::from_secs(3600);
        let log = open(&dir, "p", config, &cache).await;
        let t = now();
        let appended = overwrite(&log, 10, 30, t).await;
        assert!(!log.needs_compaction(t), "nothing old enough");
        let report = log.compact(t, BUDGET).await.expect("compact");
        assert_eq!(report.segments_rewritten, 0);
        assert_eq!(records(&log).await, appended, "untouched");
        let later = t + 3_600_001;
        assert!(log.needs_compaction(later));
        let report = log.compact(later, BUDGET).await.expect("compact");
        assert!(report.segments_rewritten > 0);
        assert_eq!(
            records(&log).await,
            expected(&appended, log.offset_clean(), false)
        );
        log.close().await.expect("close");
    });
}

#[test]
fn dirty_ratio_threshold_decides_and_a_small_map_cleans_over_several_passes() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let mut config = config();
        config.compaction.min_dirty_ratio = 0.5;
        config.compaction.keys_max = 7;
        let log = open(&dir, "p", config, &cache).await;
        let mut appended = overwrite(&log, 20, 30, 1_000).await;
        assert_eq!(log.cleanable_ratio(now()), 1.0, "all dirty");
        assert!(log.needs_compaction(now()));
        let mut passes = 0;
        while log.needs_compaction(now()) {
            let report = log.compact(now(), BUDGET).await.expect("compact");
            assert!(report.keys_mapped <= 7, "{report:?}");
            passes += 1;
            assert!(passes < 200, "cleaning makes progress");
        }
        assert!(passes > 1, "a 7-key map needs several passes");
        assert!(log.cleanable_ratio(now()) < 0.5);
        assert_eq!(
            records(&log).await,
            expected(&appended, log.offset_clean(), false)
        );

        // A little dirt over a large clean part: below the ratio.
        let clean_bytes = log.size_bytes();
        appended.extend(overwrite(&log, 20, 3, 1_000).await);
        let ratio = log.cleanable_ratio(now());
        if ratio < 0.5 {
            assert!(!log.needs_compaction(now()), "ratio {ratio} below 0.5");
        }
        // Dirt enough: above it.
        while log.cleanable_ratio(now()) < 0.5 {
            appended.extend(overwrite(&log, 20, 5, 1_000).await);
        }
        assert!(log.needs_compaction(now()));
        assert!(log.size_bytes() > clean_bytes);
        log.close().await.expect("close");
    });
}

#[test]
fn retention_deletes_nothing_under_compact_alone() {
    run_fresh(|dir| async move {
        let cache = BatchCache::new(0);
        let mut config = config();
        config.retention_age = Some(Duration::from_millis(1));
        let log = open(&dir, "p", config.clone(), &cache).await;
        overwrite(&log, 10, 30, 1_000).await;
        let segments = log.segment_count();
        assert_eq!(log.enforce_retention(now()).await.expect("retention"), 0);
        assert_eq!(log.segment_count(), segments);
        log.set_cleanup(
            CleanupPolicy {
                compact: true,
                delete: true,
            },
            config.compaction,
        );
        assert_eq!(
            log.enforce_retention(now()).await.expect("retention"),
            segments - 1,
            "compact,delete applies retention too"
        );
        log.close().await.expect("close");
    });
}

/// Copies the regular files of `from` into a new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn cleaner_state(dir: &Path) -> CleanerState {
    let bytes = std::fs::read(dir.join("cleaner.checkpoint")).expect("checkpoint");
    let body = fjord_storage::checkpoint::decode(&bytes).expect("framed");
    CleanerState::decode(body).expect("state")
}

fn write_cleaner_state(dir: &Path, state: &CleanerState) {
    std::fs::write(
        dir.join("cleaner.checkpoint"),
        fjord_storage::checkpoint::encode(&state.encode()),
    )
    .expect("write checkpoint");
}

fn names_of(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Opens the log in `dir/name` on an executor and returns its records.
fn reopen_and_read(data: &fjord_storage::DataDir, name: &str) -> Vec<Rec> {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = name.to_owned();
    run(data, move |dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, &name, config(), &cache).await;
        let read = records(&log).await;
        assert_offsets_increase(&read);
        log.close().await.expect("close");
        tx.send(read).expect("send");
    });
    rx.recv().expect("records")
}

#[test]
fn a_crash_at_each_step_of_the_swap_leaves_old_or_new_never_a_mix() {
    let (_tmp, data) = data_dir();
    let root = data.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    run(&data, move |dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, "orig", config(), &cache).await;
        let appended = overwrite(&log, 20, 30, 1_000).await;
        log.close().await.expect("close");
        tx.send(appended).expect("send");
    });
    let appended = rx.recv().expect("appended");
    copy_dir(&root.join("orig"), &root.join("before"));
    let (tx, rx) = std::sync::mpsc::channel();
    run(&data, move |dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, "orig", config(), &cache).await;
        let report = log.compact(now(), BUDGET).await.expect("compact");
        assert!(report.segments_rewritten > 1, "{report:?}");
        log.close().await.expect("close");
        tx.send(()).expect("send");
    });
    rx.recv().expect("compacted");
    let before_dir = root.join("before");
    let after_dir = root.join("orig");
    let before = reopen_and_read(&data, "before");
    let after = reopen_and_read(&data, "orig");
    assert_eq!(before, appended, "the copy holds the log as it was");
    assert_ne!(before, after, "compaction changed something");
    let committed = cleaner_state(&after_dir);
    assert!(committed.pending.is_empty());
    let rewritten: Vec<u64> = names_of(&after_dir)
        .iter()
        .filter_map(|n| fjord_storage::segment::parse_log_name(n))
        .filter(|base| {
            let (log, _) = fjord_storage::segment::file_paths(Path::new(""), *base);
            std::fs::read(before_dir.join(&log)).ok() != std::fs::read(after_dir.join(&log)).ok()
        })
        .collect();
    assert!(rewritten.len() > 1, "several segments rewritten");

    // A crash state: the old directory, with the new files of the rewritten
    // segments under `.cleaned` names or already renamed (`renamed`
    // counts files: each segment has a log then an index), and the
    // checkpoint committed (pending) or not.
    let crash = |name: &str, committed_state: Option<&CleanerState>, renamed: usize| {
        let dir = root.join(name);
        copy_dir(&before_dir, &dir);
        let mut files = 0;
        for &base in &rewritten {
            let (log, index) = fjord_storage::segment::file_paths(Path::new(""), base);
            for file in [log, index] {
                let mut cleaned = file.clone().into_os_string();
                cleaned.push(CLEANED_SUFFIX);
                let target = if files < renamed {
                    file.clone().into()
                } else {
                    cleaned
                };
                std::fs::copy(after_dir.join(&file), dir.join(target)).expect("copy");
                files += 1;
            }
        }
        if let Some(state) = committed_state {
            let mut pending = state.clone();
            pending.pending = rewritten.clone();
            write_cleaner_state(&dir, &pending);
        }
        dir
    };
    // Step 1: copies written, no commit: the old log, copies discarded.
    let dir = crash("written", None, 0);
    assert_eq!(reopen_and_read(&data, "written"), before);
    assert!(
        names_of(&dir).iter().all(|n| !n.ends_with(CLEANED_SUFFIX)),
        "{:?}",
        names_of(&dir)
    );
    // Step 2 and 3: committed, renamed up to each file: the new log.
    let files = 2 * rewritten.len();
    for renamed in 0..=files {
        let name = format!("renamed{renamed}");
        let dir = crash(&name, Some(&committed), renamed);
        assert_eq!(
            reopen_and_read(&data, &name),
            after,
            "{renamed} files renamed"
        );
        assert!(names_of(&dir).iter().all(|n| !n.ends_with(CLEANED_SUFFIX)));
        assert!(cleaner_state(&dir).pending.is_empty(), "swap finished");
        assert_eq!(cleaner_state(&dir).offset_clean, committed.offset_clean);
    }
    // And every surviving record is one that was appended, at its offset.
    assert_eq!(after, expected(&appended, committed.offset_clean, false));

    // Committed on disk while the swap failed in memory, and retention then
    // deleted the first rewritten segment: its copy does not come back
    // below the log's start (its cleaned files go with the others).
    let dir = crash("deleted", Some(&committed), 0);
    let first = *rewritten.iter().min().expect("rewritten");
    for name in names_of(&dir) {
        let log_name = name.replace(".index", ".log");
        if fjord_storage::segment::parse_log_name(&log_name).is_some_and(|b| b <= first) {
            std::fs::remove_file(dir.join(&name)).expect("delete");
        }
    }
    let read = reopen_and_read(&data, "deleted");
    let first_log = format!("{first:020}.log");
    assert!(
        !names_of(&dir).contains(&first_log),
        "a deleted segment came back"
    );
    let later: Vec<Rec> = after.iter().filter(|r| r.0 >= first).cloned().collect();
    assert!(read.len() <= later.len() && read == later[later.len() - read.len()..]);
    assert!(names_of(&dir).iter().all(|n| !n.ends_with(CLEANED_SUFFIX)));
}
