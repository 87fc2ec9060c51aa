//! Recovery from damaged files: each case must come back to the last valid
//! batch, serve nothing past it, and accept appends from there.

mod common;

use common::*;
use fjord_core::batch::Batch;
use fjord_storage::{BatchCache, DataDir, LogConfig};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

use std::path::PathBuf;

const BATCHES: u64 = 60;

/// Writes `BATCHES` batches of 3 records to a fresh log `p0` and closes it;
/// returns each batch's (file position, length).
fn write_log(dir: &DataDir, config: LogConfig) -> Vec<(u64, usize)> {
    let (tx, rx) = std::sync::mpsc::channel();
    run(dir, move |dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, "p0", config, &cache).await;
        let mut position = 0u64;
        let mut layout = Vec::new();
        for seed in 0..BATCHES {
            let bytes = batch(seed, 3, 300, 0);
            log.append(&bytes).await.expect("append");
            layout.push((position, bytes.len()));
            position += bytes.len() as u64;
        }
        log.close().await.expect("close");
        tx.send(layout).expect("send");
    });
    rx.recv().expect("layout")
}

fn segment_file(dir: &DataDir, base: u64, ext: &str) -> PathBuf {
    dir.path().join("p0").join(format!("{base:020}.{ext}"))
}

/// Reopens `p0` and returns (offset_next, batches read, recovery report),
/// after checking every batch read validates and offsets are contiguous,
/// and that appends continue at the recovered end.
fn reopen(
    dir: &DataDir,
    config: LogConfig,
) -> (u64, usize, fjord_storage::recovery::RecoveryReport) {
    let (tx, rx) = std::sync::mpsc::channel();
    run(dir, move |dir| async move {
        let cache = BatchCache::new(0);
        let log = open(&dir, "p0", config, &cache).await;
        let report = log.recovery_report().clone();
        let end = log.offset_next();
        let batches = read_all(&log, log.offset_start()).await;
        let mut next = log.offset_start() as i64;
        for bytes in &batches {
            let batch = Batch::validate(bytes).expect("served batch is valid");
            assert_eq!(batch.base_offset(), next, "offsets not contiguous");
            next = batch.last_offset() + 1;
        }
        assert_eq!(next as u64, end);
        let appended = log
            .append(&batch(777, 1, 10, 0))
            .await
            .expect("append after recovery");
        assert_eq!(appended.base_offset, end);
        appended.durable.await.expect("durable");
        log.close().await.expect("close");
        tx.send((end, batches.len(), report)).expect("send");
    });
    rx.recv().expect("result")
}

#[test]
fn truncation_mid_batch_recovers_to_the_batch_before() {
    let (_tmp, dir) = data_dir();
    let layout = write_log(&dir, LogConfig::default());
    let (position, len) = layout[50];
    let file = OpenOptions::new()
        .write(true)
        .open(segment_file(&dir, 0, "log"))
        .expect("open");
    file.set_len(position + len as u64 / 2).expect("truncate");
    let (end, batches, report) = reopen(&dir, LogConfig::default());
    assert_eq!((end, batches), (150, 50));
    assert_eq!(report.truncated_bytes, len as u64 / 2);
}

#[test]
fn flipped_byte_in_the_tail_cuts_the_log_there() {
    let (_tmp, dir) = data_dir();
    let layout = write_log(&dir, LogConfig::default());
    let (position, len) = layout[58];
    let path = segment_file(&dir, 0, "log");
    let at = (position + len as u64 - 10) as usize;
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[at] ^= 0x5a;
    std::fs::write(&path, &bytes).expect("flip");
    let (end, batches, _) = reopen(&dir, LogConfig::default());
    // Batch 58 fails its CRC; batch 59 after it is valid but never served.
    assert_eq!((end, batches), (58 * 3, 58));
}

#[test]
fn zero_filled_tail_block_recovers_to_the_last_whole_batch() {
    let (_tmp, dir) = data_dir();
    let layout = write_log(&dir, LogConfig::default());
    let (last_position, last_len) = layout[layout.len() - 1];
    let size = last_position + last_len as u64;
    let block = (size - 1) / 4096 * 4096;
    let mut file = OpenOptions::new()
        .write(true)
        .open(segment_file(&dir, 0, "log"))
        .expect("open");
    file.seek(SeekFrom::Start(block)).expect("seek");
    file.write_all(&vec![0u8; (size - block) as usize])
        .expect("zero");
    let survivors = layout
        .iter()
        .filter(|(p, l)| p + *l as u64 <= block)
        .count();
    let (end, batches, _) = reopen(&dir, LogConfig::default());
    assert_eq!((end, batches), (survivors as u64 * 3, survivors));
}

#[test]
fn missing_or_damaged_index_is_rebuilt_identically() {
    let (_tmp, dir) = data_dir();
    let config = LogConfig {
        index_interval_bytes: 1024,
        ..LogConfig::default()
    };
    write_log(&dir, config.clone());
    let index = segment_file(&dir, 0, "index");
    let original = std::fs::read(&index).expect("index");
    assert!(
        original.len() >= 10 * 20,
        "index too small to test: {}",
        original.len()
    );

    std::fs::remove_file(&index).expect("rm index");
    let (end, batches, report) = reopen(&dir, config.clone());
    assert_eq!((end, batches, report.indexes_rebuilt), (180, 60, 1));
    let rebuilt = std::fs::read(&index).expect("rebuilt index");
    assert_eq!(
        rebuilt[..original.len()],
        original[..],
        "rebuilt index differs"
    );

    // Garbage in the middle: entries after it are distrusted and rebuilt.
    let mut damaged = rebuilt.clone();
    damaged[45..60].fill(0xee);
    std::fs::write(&index, &damaged).expect("damage");
    let (end, _, report) = reopen(&dir, config);
    assert_eq!((end, report.indexes_rebuilt), (181, 1));
    assert_eq!(
        std::fs::read(&index).expect("index")[..original.len()],
        original[..]
    );
}

#[test]
fn a_segment_after_a_gap_is_deleted() {
    let (_tmp, dir) = data_dir();
    let config = LogConfig {
        segment_bytes: 8 * 1024,
        ..LogConfig::default()
    };
    write_log(&dir, config.clone());
    let mut bases: Vec<u64> = std::fs::read_dir(dir.path().join("p0"))
        .expect("ls")
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    bases.sort_unstable();
    assert!(bases.len() >= 4);
    // Cut the second segment short: the third no longer follows it.
    let second = segment_file(&dir, bases[1], "log");
    let len = std::fs::metadata(&second).expect("stat").len();
    OpenOptions::new()
        .write(true)
        .open(&second)
        .expect("open")
        .set_len(len - 100)
        .expect("truncate");
    let (end, _, report) = reopen(&dir, config);
    assert_eq!(report.segments_deleted, bases.len() - 2);
    assert!(end < bases[2], "served offsets past the gap");
    assert!(!segment_file(&dir, bases[2], "log").exists());
}
