//! Crash safety for real: a child process appends from several tasks and
//! reports each acknowledged batch over a pipe; rounds take turns between
//! `fsync=always`, `fsync=never` with many more tasks (acknowledged once
//! written, with several writes in flight: see `pipeline`), and
//! `fsync=never` with a staging area (acknowledged once staged, before the
//! write: what a killed process leaves there is replayed at open). The parent
//! SIGKILLs it at random moments, many times, and after each kill reopens
//! the log and checks that every acknowledged batch is present and
//! byte-identical, offsets are contiguous and every batch served is valid.
//!
//! One binary plays both parts (`harness = false`): with `FJORD_CRASH_CHILD`
//! set it is the child.

mod common;

use common::*;
use fjord_core::FsyncPolicy;
use fjord_core::batch::{self, Batch};
use fjord_storage::staging::{Staging, StagingFile};
use fjord_storage::{BatchCache, DataDir, Log, LogConfig};
use rand::Rng;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

const ROUNDS: u64 = 27;
/// What the child says once its log is open.
const READY: &str = "ready";
/// The staging area's size: room for most of what 64 writers keep in
/// flight, so that most acknowledgements come from it.
const STAGING_BYTES: usize = 16 << 20;

/// A third of the rounds sync each group commit; the others only write,
/// from enough tasks to keep several writes in flight, and half of those
/// answer once a batch is staged.
fn policy(round: u64) -> (FsyncPolicy, u64, bool) {
    match round % 3 {
        0 => (FsyncPolicy::Always, 8, false),
        1 => (FsyncPolicy::Never, 64, false),
        _ => (FsyncPolicy::Never, 64, true),
    }
}

/// The log `p0`, with the data directory's staging area when `staged`.
async fn open_log(dir: &DataDir, config: LogConfig, cache: &Rc<BatchCache>, staged: bool) -> Log {
    let area = staged.then(|| {
        let file = StagingFile::open(
            &dir.path().join("staging"),
            dir.path(),
            1,
            0,
            2,
            STAGING_BYTES,
        )
        .expect("staging file");
        Rc::new(Staging::new(file, dir.path().to_path_buf()))
    });
    Log::open_staged(dir.path().join("p0"), config, cache.clone(), area)
        .await
        .expect("open log")
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        fsync,
        segment_bytes: 256 * 1024,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

/// The batch writer `w` appends as its `i`-th in round `round`.
fn seed(round: u64, writer: u64, i: u64) -> u64 {
    (round << 40) | (writer << 32) | i
}

fn batch_for(seed: u64) -> Vec<u8> {
    batch(
        seed,
        1 + (seed % 5) as usize,
        50 + (seed % 700) as usize,
        seed as i64 & 0xffff,
    )
}

fn child(path: String, round: u64) {
    let dir = DataDir::create(&path).expect("data dir");
    run(&dir, move |dir| async move {
        let cache = BatchCache::new(8 << 20);
        let (fsync, writers, staged) = policy(round);
        let log = Rc::new(open_log(&dir, config(fsync), &cache, staged).await);
        println!("{READY}");
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0.. {
                    let seed = seed(round, writer, i);
                    let appended = log.append(&batch_for(seed)).await.expect("append");
                    appended.durable.await.expect("durable");
                    // One line per acknowledgement, written whole.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{seed} {}", appended.base_offset).expect("report");
                    out.flush().expect("flush");
                }
            }));
        }
        for task in tasks {
            task.await;
        }
    });
}

fn verify(dir: &DataDir, acked: &BTreeMap<u64, u64>) -> u64 {
    let acked = acked.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    run(dir, move |dir| async move {
        let cache = BatchCache::new(0);
        // With the staging area always: what a staged round left there is
        // appended again before the log serves.
        let log = open_log(&dir, config(FsyncPolicy::Always), &cache, true).await;
        let served = read_all(&log, 0).await;
        let mut by_offset = BTreeMap::new();
        let mut next = 0i64;
        for bytes in served {
            let batch = Batch::validate(&bytes).expect("every served batch is valid");
            assert_eq!(batch.base_offset(), next, "offsets not contiguous");
            next = batch.last_offset() + 1;
            by_offset.insert(batch.base_offset() as u64, bytes);
        }
        for (&offset, &seed) in &acked {
            let got = by_offset
                .get(&offset)
                .unwrap_or_else(|| panic!("acknowledged batch at {offset} lost"));
            let mut want = batch_for(seed);
            batch::set_base_offset(&mut want, offset as i64);
            batch::set_partition_leader_epoch(&mut want, 0);
            assert!(got == &want, "acknowledged batch at {offset} differs");
        }
        log.close().await.expect("close");
        tx.send(log.offset_next()).expect("send");
    });
    rx.recv().expect("verify")
}

fn main() {
    if let Ok(path) = std::env::var("FJORD_CRASH_CHILD") {
        let round = std::env::var("FJORD_CRASH_ROUND")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        return child(path, round);
    }
    let (_tmp, dir) = data_dir();
    let mut rng = rand::thread_rng();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env("FJORD_CRASH_CHILD", dir.path())
            .env("FJORD_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| {
                    if line == READY {
                        let _ = ready_tx.send(());
                        return None;
                    }
                    let (seed, offset) = line.split_once(' ')?;
                    Some((offset.parse::<u64>().ok()?, seed.parse::<u64>().ok()?))
                })
                .collect::<Vec<_>>()
        });
        // Every other three rounds (each policy both ways) the window starts
        // at the spawn, so that kills land in the open (recovery, a replay
        // of what was staged: a grown log takes longer to open than the
        // window); the others start it once the log serves.
        if (round / 3).is_multiple_of(2) {
            ready
                .recv_timeout(Duration::from_secs(60))
                .expect("the child opened its log");
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..300)));
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        child.wait().expect("reap");
        let reported = reader.join().expect("reader");
        for (offset, seed) in &reported {
            assert!(
                acked.insert(*offset, *seed).is_none(),
                "offset {offset} acknowledged twice"
            );
        }
        let end = verify(&dir, &acked);
        println!(
            "round {round}: {} acknowledged this round, {} in all, log end {end}",
            reported.len(),
            acked.len()
        );
    }
    assert!(
        acked.len() as u64 > ROUNDS * 10,
        "too few acknowledgements to mean anything: {}",
        acked.len()
    );
    println!("crash: {ROUNDS} passed, 0 failed");
}
