//! Helpers shared by the storage tests: a primed data directory on a real
//! disk, an executor to run on, and deterministic batches.
#![allow(dead_code, missing_docs)]

use fjord_core::BatchBuilder;
use fjord_storage::{BatchCache, DataDir, Log, LogConfig};
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;

/// A fresh data directory under the target dir (a real disk, not tmpfs, so
/// O_DIRECT is exercised for real).
pub fn data_dir() -> (tempfile::TempDir, DataDir) {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let tmp = tempfile::tempdir_in(root).expect("temp dir");
    let dir = DataDir::create(tmp.path().join("data")).expect("data dir");
    (tmp, dir)
}

/// Runs `test` on a glommio executor, after priming the data directory.
pub fn run<F, Fut>(dir: &DataDir, test: F)
where
    F: FnOnce(DataDir) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = dir.clone();
    fjord_storage::shard::executor(
        "test",
        glommio::Placement::Unbound,
        fjord_storage::shard::IO_MEMORY_BYTES,
    )
    .spawn(move || async move {
        dir.prime().await.expect("prime");
        test(dir).await;
    })
    .expect("spawn executor")
    .join()
    .expect("executor");
}

/// Runs `test` on a fresh data directory that is removed afterwards.
pub fn run_fresh<F, Fut>(test: F)
where
    F: FnOnce(DataDir) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (_tmp, dir) = data_dir();
    run(&dir, test);
}

/// The payload of record `i` of batch `seed`: deterministic, so a reader can
/// check bytes without keeping what was written.
pub fn payload(seed: u64, i: usize, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A batch of `records` records of `value_len` bytes, timestamps from `ts`.
pub fn batch(seed: u64, records: usize, value_len: usize, ts: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        let key = format!("k{seed}-{i}");
        builder.push(
            ts + i as i64,
            Some(key.as_bytes()),
            Some(&payload(seed, i, value_len)),
            &[],
        );
    }
    builder.build()
}

/// Opens the log at `name` in `dir`.
pub async fn open(dir: &DataDir, name: &str, config: LogConfig, cache: &Rc<BatchCache>) -> Log {
    Log::open(dir.path().join(name), config, cache.clone())
        .await
        .expect("open log")
}

/// Reads every batch from `from` to the readable end, as owned byte vectors.
pub async fn read_all(log: &Log, from: u64) -> Vec<Vec<u8>> {
    let mut offset = from;
    let mut out = Vec::new();
    while offset < log.offset_written() {
        let read = log.read(offset, 64 * 1024).await.expect("read");
        assert!(
            !read.slices.is_empty(),
            "read at {offset} below the end returned nothing"
        );
        for slice in &read.slices {
            out.extend(fjord_core::batch::batches(slice).map(|b| b.as_bytes().to_vec()));
        }
        assert!(read.offset_next > offset);
        offset = read.offset_next;
    }
    out
}
