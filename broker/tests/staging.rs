//! The staging area on a real broker: with the default `fsync=never` and
//! `acks=1`, answers come once a batch is in shared memory, so a SIGKILL
//! under load (and another while the node starts again) must lose nothing
//! acknowledged; batches staged past a log's
//! end are appended again at start and a torn one is dropped; a staging
//! file of another data directory, layout or node shape stops the start
//! with a clear error and changes nothing.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::freeze::{Freeze, STAGING_BYTES, freezable_disk, staged_batches};
use common::{Broker, FJORD};
use fjord_broker::cli::top::get;
use fjord_client::{Admin, Producer, ProducerConfig, RecordMetadata};
use fjord_core::{BatchBuilder, batch};
use fjord_storage::staging::{self, Pieces, Staging, StagingFile};
use futures::executor::block_on;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ROUNDS: u64 = 6;

type Ack = Pin<Box<dyn Future<Output = fjord_client::Result<RecordMetadata>> + Send>>;

/// A value that names its round and sequence number, padded so that batches
/// are a few KiB.
fn value(round: u64, i: u64) -> Vec<u8> {
    let mut v = format!("{round:02}-{i:09}-").into_bytes();
    v.extend((0..100u64).map(|k| (i.wrapping_mul(31).wrapping_add(k) % 251) as u8));
    v
}

fn sequence_of(value: &[u8]) -> (u64, u64) {
    let text = String::from_utf8_lossy(&value[..13]);
    let (round, i) = text.split_once('-').unwrap();
    (
        round.parse().unwrap(),
        i.trim_end_matches('-').parse().unwrap(),
    )
}

fn random_below(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos.wrapping_mul(2_654_435_761)) % n
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_record() {
    let admin = format!("127.0.0.1:{}", common::free_port());
    let mut broker = Broker::start_with(2, &["--admin-listen", &admin]);
    block_on(Admin::new(broker.client()).create_topic("staged", 2, &[])).unwrap();
    let mut acked: Vec<BTreeMap<i64, Vec<u8>>> = vec![BTreeMap::new(), BTreeMap::new()];
    let mut staged_at_kills = 0;
    for round in 0..ROUNDS {
        // Staging is on in every shard, so the acks below come from the
        // staging area, not from the write: a node that fell back to waiting
        // for the disk would pass the checks without testing the promise.
        for shard in 0..2 {
            let capacity = shard_metric(&admin, shard, "fjord_staging_capacity_bytes");
            assert!(
                capacity > 0.0,
                "round {round}: shard {shard} runs without staging"
            );
        }
        let config = ProducerConfig {
            acks: fjord_net::api::ACKS_LEADER,
            idempotence: false,
            retries: 0,
            linger: Duration::from_millis(1),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(&broker.client(), config).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut sent: Vec<(i32, Vec<u8>, Ack)> = Vec::new();
            let mut answered = Vec::new();
            let mut i = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                for _ in 0..400 {
                    let (p, v) = ((i % 2) as i32, value(round, i));
                    let ack = producer.send("staged", Some(p), None, Some(&v), &[]);
                    sent.push((p, v, Box::pin(ack)));
                    i += 1;
                }
                // Closed loop by chunks: the broker stays busy, the client
                // queue bounded. A failed answer means the broker is gone.
                let Some((p, v, last)) = sent.pop() else {
                    break;
                };
                let outcome = block_on(last);
                let gone = outcome.is_err();
                answered.push((p, v, outcome));
                if gone {
                    break;
                }
            }
            answered.extend(sent.into_iter().map(|(p, v, ack)| (p, v, block_on(ack))));
            answered
        });
        std::thread::sleep(Duration::from_millis(200 + random_below(1300)));
        broker.kill();
        stop.store(true, Ordering::Relaxed);
        let answered = sender.join().unwrap();
        let mut this_round = 0;
        for (p, v, outcome) in answered {
            if let Ok(landed) = outcome {
                assert_eq!(landed.partition, p);
                let previous = acked[p as usize].insert(landed.offset, v);
                assert!(
                    previous.is_none(),
                    "offset {} acknowledged twice",
                    landed.offset
                );
                this_round += 1;
            }
        }
        let staged = staged_batches(&broker, 2);
        staged_at_kills += staged;
        if round % 2 == 1 {
            // Killed again while it starts: in its recovery, or while it
            // appends what it found staged.
            let mut early = Command::new(FJORD)
                .args(broker.serve_args())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(random_below(80)));
            early.kill().unwrap();
            early.wait().unwrap();
        }
        broker.restart();
        for (p, want) in acked.iter().enumerate() {
            let got = broker.records("staged", p as i32);
            for (offset, value) in want {
                let found = got.get(offset).unwrap_or_else(|| {
                    panic!("round {round}: acknowledged offset {offset} of partition {p} lost")
                });
                assert!(found == value, "round {round}: offset {offset} differs");
            }
            // In order: each partition's records in the order they were sent.
            let order: Vec<(u64, u64)> = got.values().map(|v| sequence_of(v)).collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "partition {p} out of order"
            );
        }
        eprintln!(
            "round {round}: {this_round} acknowledged, {} in all, {staged} staged batches at the kill",
            acked.iter().map(|a| a.len()).sum::<usize>()
        );
    }
    assert!(
        acked.iter().map(|a| a.len()).sum::<usize>() > 1000,
        "too few acknowledgements to mean anything"
    );
    eprintln!("{staged_at_kills} staged batches found at {ROUNDS} kills");
}

/// Shard 0's value of the metric `name` on the node's `/metrics`.
fn shard0_metric(admin: &str, name: &str) -> f64 {
    shard_metric(admin, 0, name)
}

/// A shard's value of the metric `name` on the node's `/metrics`.
fn shard_metric(admin: &str, shard: usize, name: &str) -> f64 {
    let metrics = get(admin, "/metrics").unwrap();
    let prefix = format!("{name}{{shard=\"{shard}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
        .parse()
        .unwrap()
}

/// A one-shard broker serving a data directory on `disk` (with `extra`
/// flags, its stderr appended to `stderr` if given), a topic of one
/// partition with segments of `segment_bytes` holding one record, and an
/// `acks=1` producer to it.
fn on_disk(
    disk: &common::SmallDisk,
    extra: &[&str],
    stderr: Option<&Path>,
    topic: &str,
    segment_bytes: u64,
) -> (Broker, Producer) {
    let broker = Broker::launch(
        1,
        extra,
        common::Launch {
            data_dir: Some(disk.mount.join("data")),
            stderr: stderr.map(Path::to_path_buf),
            ..common::Launch::default()
        },
    );
    let configs = [("segment.bytes".to_owned(), segment_bytes.to_string())];
    block_on(Admin::new(broker.client()).create_topic(topic, 1, &configs)).unwrap();
    let producer = Producer::new(&broker.client(), acks_leader()).unwrap();
    block_on(producer.send(topic, Some(0), None, Some(b"before"), &[])).unwrap();
    (broker, producer)
}

/// The promise itself: with the data directory's filesystem frozen (no
/// write reaches it, no file can be created), `acks=1` answers still come,
/// from the staging area, across segment rolls; a SIGKILL while it is
/// frozen loses none of them.
#[test]
fn acks_do_not_wait_for_a_frozen_disk_and_a_kill_then_loses_none() {
    let Some(disk) = freezable_disk("acks_do_not_wait_for_a_frozen_disk…") else {
        return;
    };
    // Small segments: the 500 records roll several while frozen, and a
    // roll must not wait for its new files.
    let (mut broker, producer) = on_disk(&disk, &[], None, "frozen", 16384);

    let freeze = Freeze::start(&disk.mount, Duration::from_secs(30));
    let acked = send_all(&producer, "frozen", 500);
    assert!(
        !freeze.timed_out(),
        "the answers waited for the frozen disk"
    );
    // Nothing of it reached the segment: the answers did not come from the disk.
    let dir = &broker.partition_dirs("frozen")[0];
    let on_disk = common::segment_bytes(dir);
    assert!(
        !common::contains(&on_disk, &acked[0].0),
        "written while frozen?"
    );

    // SIGKILL while frozen: the process goes once the writes it left in
    // the kernel are let through, so thaw, then reap.
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(broker.pid() as i32, libc::SIGKILL) }, 0);
    freeze.thaw();
    broker.kill();
    broker.restart();
    assert_all_present(&broker, "frozen", &acked);
}

/// A disk that stops is seen while it stops: the log names the operation
/// and the file after a second, `/metrics` and `/health` show the wait, and
/// the log says when the disk answers again. A stop meanwhile waits for the
/// writes (the kernel holds them), exits cleanly after the thaw and loses
/// nothing.
#[test]
fn a_stalled_disk_is_reported_and_a_stop_waits_for_it_losing_nothing() {
    let Some(disk) = freezable_disk("a_stalled_disk_is_reported…") else {
        return;
    };
    let log = tempfile::NamedTempFile::new().unwrap();
    let admin = format!("127.0.0.1:{}", common::free_port());
    // Small segments: the frozen writes include a roll's new files.
    let (mut broker, producer) = on_disk(
        &disk,
        &["--admin-listen", &admin],
        Some(log.path()),
        "stalled",
        16384,
    );
    let dir = broker.partition_dirs("stalled").remove(0);
    let stderr = || std::fs::read_to_string(log.path()).unwrap();
    assert!(!stderr().contains("disk stalled"), "{}", stderr());

    let freeze = Freeze::start(&disk.mount, Duration::from_secs(30));
    let acked = send_all(&producer, "stalled", 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stalled = loop {
        let text = stderr();
        if let Some(line) = text.lines().find(|l| l.contains("disk stalled")) {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stall reported:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // What the flusher does first on the frozen disk: a write, or a
    // roll's file creation and preallocation.
    assert!(
        ["write", "create", "fallocate"]
            .iter()
            .any(|op| stalled.contains(&format!("op=\"{op}\""))),
        "{stalled}"
    );
    assert!(
        stalled.contains(&dir.display().to_string()),
        "{stalled} names {}",
        dir.display()
    );
    let waiting = shard0_metric(&admin, "fjord_storage_io_waiting_seconds");
    assert!(waiting >= 1.0, "oldest I/O waited {waiting} s");
    let health = get(&admin, "/health").unwrap();
    assert!(health.contains("disk stalled"), "{health}");
    let overview: serde_json::Value =
        serde_json::from_str(&get(&admin, "/v1/overview").unwrap()).unwrap();
    let stalled_ms = overview["disk"]["stalled_ms"].as_u64().unwrap();
    assert!(stalled_ms >= 1000, "{overview}");
    let top = Command::new(FJORD)
        .args(["top", "--admin", &admin, "--iterations", "1"])
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("ready, but: disk stalled"), "{top}");

    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(broker.pid() as i32, libc::SIGTERM) }, 0);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        broker.is_running(),
        "stopped with its writes held by the kernel?"
    );
    // The stop says what it waits on (every 3 s).
    let waiting = stderr();
    assert!(
        waiting
            .lines()
            .any(|l| l.contains("still closing the partition") && l.contains("topic=stalled")),
        "{waiting}"
    );
    freeze.thaw();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while broker.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "no exit 30 s after the thaw:\n{}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = broker.wait();
    assert!(status.success(), "{status}\n{}", stderr());
    assert!(stderr().contains("disk answers again"), "{}", stderr());
    broker.restart();
    assert_all_present(&broker, "stalled", &acked);
}

/// The budget bounds what a stall may hold: with the disk frozen and a
/// 1 MiB staging area, answers come until it is full and then stop
/// (backpressure, not errors), and `/metrics` counts the appends that
/// waited for room and, once the area's oldest entry has been held for
/// 5 s, those that wait for their write; at the thaw the rest are
/// answered, and every record is there.
#[test]
fn a_stall_that_fills_the_staging_budget_holds_the_producers_back() {
    let Some(disk) = freezable_disk("a_stall_that_fills_the_staging_budget…") else {
        return;
    };
    let admin = format!("127.0.0.1:{}", common::free_port());
    let (broker, producer) = on_disk(
        &disk,
        &[
            "--staging-bytes-per-shard",
            "1048576",
            "--admin-listen",
            &admin,
        ],
        None,
        "held",
        1 << 30,
    );
    let capacity = shard0_metric(&admin, "fjord_staging_capacity_bytes");
    assert!(capacity > 0.0 && capacity <= 1048576.0, "{capacity}");
    assert_eq!(shard0_metric(&admin, "fjord_staging_full_waits_total"), 0.0);
    assert_eq!(
        shard0_metric(&admin, "fjord_storage_appends_waiting_for_write_total"),
        0.0
    );

    let freeze = Freeze::start(&disk.mount, Duration::from_secs(30));
    // About 2.6 MB of records: more than the budget holds.
    const RECORDS: u64 = 20_000;
    let sent = send(&producer, "held", RECORDS);
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let waiter = {
        let answered = answered.clone();
        std::thread::spawn(move || {
            sent.into_iter()
                .map(|(v, ack)| {
                    let offset = block_on(ack).unwrap().offset;
                    answered.fetch_add(1, Ordering::SeqCst);
                    (v, offset)
                })
                .collect::<Vec<_>>()
        })
    };
    // Until the answers stop: none for two seconds (on a loaded machine
    // the last ones from the budget may trickle in for a while).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut held_at = answered.load(Ordering::SeqCst);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = answered.load(Ordering::SeqCst);
        if now == held_at && now > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "answers went on while the disk was frozen and the budget full: {now}"
        );
        held_at = now;
    }
    assert!(
        held_at > 0 && held_at < RECORDS,
        "{held_at} of {RECORDS} answered from a 1 MiB budget while frozen"
    );
    assert!(shard0_metric(&admin, "fjord_staging_full_waits_total") >= 1.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while shard0_metric(&admin, "fjord_storage_appends_waiting_for_write_total") == 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no append waits for its write with the area held full"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!freeze.timed_out());
    freeze.thaw();
    let acked = waiter.join().unwrap();
    eprintln!("{held_at} of {RECORDS} answered while frozen, the rest after the thaw");
    assert_all_present(&broker, "held", &acked);
}

fn acks_leader() -> ProducerConfig {
    ProducerConfig {
        acks: fjord_net::api::ACKS_LEADER,
        idempotence: false,
        retries: 0,
        ..ProducerConfig::default()
    }
}

/// Sends `count` records to partition 0 of `topic` and waits for every
/// answer: each value with its offset.
fn send_all(producer: &Producer, topic: &str, count: u64) -> Vec<(Vec<u8>, i64)> {
    send(producer, topic, count)
        .into_iter()
        .map(|(v, ack)| (v, block_on(ack).unwrap().offset))
        .collect()
}

/// Sends `count` records to partition 0 of `topic`: each value with its
/// answer to come.
fn send(producer: &Producer, topic: &str, count: u64) -> Vec<(Vec<u8>, Ack)> {
    (0..count)
        .map(|i| {
            let v = value(0, i);
            let ack = producer.send(topic, Some(0), None, Some(&v), &[]);
            (v, Box::pin(ack) as Ack)
        })
        .collect()
}

fn assert_all_present(broker: &Broker, topic: &str, acked: &[(Vec<u8>, i64)]) {
    let got = broker.records(topic, 0);
    for (value, offset) in acked {
        assert_eq!(got.get(offset), Some(value), "acknowledged offset {offset}");
    }
}

/// A batch of `records` values `tag-<i>`, its base offset set to `base`.
fn batch_at(tag: &str, base: u64, records: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        builder.push(0, None, Some(format!("{tag}-{i}").as_bytes()), &[]);
    }
    let mut bytes = builder.build();
    batch::set_base_offset(&mut bytes, base as i64);
    bytes
}

fn values(broker: &Broker, topic: &str) -> Vec<String> {
    broker
        .records(topic, 0)
        .into_values()
        .map(|v| String::from_utf8(v).unwrap())
        .collect()
}

/// Makes topic `t` of one partition, writes "first" to it, and kills the
/// broker.
fn write_first_then_kill(broker: &mut Broker) {
    block_on(Admin::new(broker.client()).create_topic("t", 1, &[])).unwrap();
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    block_on(producer.send("t", Some(0), None, Some(b"first"), &[])).unwrap();
    broker.kill();
}

/// Runs `fjord` with `args`, which must refuse to start; its stderr.
fn refused_start(args: &[String]) -> String {
    // Bounded: a node that starts anyway serves until killed.
    let out = Command::new("timeout")
        .arg("20")
        .arg(FJORD)
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started without its staged batches");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn staged_batches_past_the_end_are_replayed_and_a_torn_one_dropped() {
    let mut broker = Broker::start(1);
    write_first_then_kill(&mut broker);
    // What a broker killed mid-stall leaves: two batches staged past the
    // log's end, and a third torn while it was being copied.
    let torn = batch_at("torn", 4, 1);
    let path = stage(
        &broker,
        "t",
        &[
            (1, 2, batch_at("second", 1, 2)),
            (3, 3, batch_at("third", 3, 1)),
            (4, 4, torn.clone()),
        ],
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(torn.len())
        .rposition(|w| w == torn.as_slice())
        .unwrap();
    bytes[at + torn.len() - 1] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    // A node of another shape would open the log on another shard: refused.
    let mut args = broker.serve_args();
    let cores = args.iter().position(|a| a == "--cores").unwrap() + 1;
    args[cores] = "2".into();
    let out = Command::new(FJORD).args(&args).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another shape"), "{stderr}");

    broker.restart();
    assert_eq!(
        values(&broker, "t"),
        ["first", "second-0", "second-1", "third-0"]
    );
    // The log goes on after them.
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    let landed = block_on(producer.send("t", Some(0), None, Some(b"after"), &[])).unwrap();
    assert_eq!(landed.offset, 4);
    broker.terminate();
    assert!(
        !path.exists(),
        "a clean stop removes the empty staging file"
    );
}

/// Stages `batches` (base offset, last offset, bytes) for partition 0 of
/// `topic` in shard 0's staging file, as a broker killed before writing
/// them would leave them; the file's path.
fn stage(broker: &Broker, topic: &str, batches: &[(u64, u64, Vec<u8>)]) -> std::path::PathBuf {
    let dir = broker.partition_dirs(topic).remove(0);
    let id = staging::data_dir_id(broker.data_dir()).unwrap();
    let file = StagingFile::open(
        &broker.staging_dir(),
        broker.data_dir(),
        id,
        0,
        staging::topology(1, 0),
        STAGING_BYTES,
    )
    .unwrap();
    let path = file.path().to_path_buf();
    let area = Staging::new(file, broker.data_dir().to_path_buf());
    let key = area.key(&dir);
    for (base, last, batch) in batches {
        area.stage(&key, *base, *last, Pieces::whole(batch), None)
            .unwrap();
    }
    path
}

/// A staging file is named after its data directory's path: a directory
/// moved after a crash does not find it under its new name, and starting
/// without its batches would lose what they acknowledged. The start is
/// refused, naming the file and the name it needs; renamed, it replays.
#[test]
fn a_data_directory_moved_after_a_crash_is_told_where_its_staged_batches_are() {
    let root = tempfile::tempdir().unwrap();
    let mut broker = Broker::launch(
        1,
        &[],
        common::Launch {
            data_dir: Some(root.path().join("before")),
            ..common::Launch::default()
        },
    );
    write_first_then_kill(&mut broker);
    let left = stage(&broker, "t", &[(1, 2, batch_at("second", 1, 2))]);

    let moved = root.path().join("after");
    std::fs::rename(root.path().join("before"), &moved).unwrap();
    broker.set_data_dir(moved.clone());
    let stderr = refused_start(&broker.serve_args());
    let wanted = staging::file_path(&broker.staging_dir(), &moved, 0);
    assert!(
        stderr.contains("staged for this data directory"),
        "{stderr}"
    );
    assert!(stderr.contains(&left.display().to_string()), "{stderr}");
    assert!(stderr.contains(&wanted.display().to_string()), "{stderr}");

    std::fs::rename(&left, &wanted).unwrap();
    broker.restart();
    assert_eq!(values(&broker, "t"), ["first", "second-0", "second-1"]);
}

/// The data directory records where its last run staged: a node started
/// with another `staging_dir`, or with staging off, would pass over what
/// was acknowledged there. The start is refused, naming the directory;
/// started with it again, the node replays.
#[test]
fn a_node_started_with_another_staging_dir_is_told_where_its_staged_batches_are() {
    let mut broker = Broker::start(1);
    write_first_then_kill(&mut broker);
    stage(&broker, "t", &[(1, 2, batch_at("second", 1, 2))]);
    let elsewhere = broker.data_dir().with_file_name("elsewhere");
    let elsewhere = elsewhere.display().to_string();
    // Staging elsewhere, and off as well (where no file of its own would
    // tell it of the batches).
    for bytes in ["134217728", "0"] {
        let mut args = broker.serve_args();
        let at = args.iter().position(|a| a == "--staging-dir").unwrap();
        args[at + 1] = elsewhere.clone();
        args.extend(["--staging-bytes-per-shard".to_owned(), bytes.to_owned()]);
        let stderr = refused_start(&args);
        let wanted = format!("staging_dir = {}", broker.staging_dir().display());
        assert!(stderr.contains(&wanted), "{stderr}");
    }
    broker.restart();
    assert_eq!(values(&broker, "t"), ["first", "second-0", "second-1"]);
}

#[test]
fn a_staging_file_of_another_data_dir_or_layout_is_refused() {
    let mut broker = Broker::start(1);
    block_on(Admin::new(broker.client()).create_topic("t", 1, &[])).unwrap();
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    block_on(producer.send("t", Some(0), None, Some(b"kept"), &[])).unwrap();
    broker.kill();
    let serve = |broker: &Broker| {
        let out = Command::new(FJORD)
            .args(broker.serve_args())
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with a foreign staging file");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let path = staging::file_path(&broker.staging_dir(), broker.data_dir(), 0);
    // One batch staged for certain (the record sent is likely written by
    // now): a file holding nothing to replay is not refused but made anew.
    stage_unclaimed(&broker, &broker.data_dir().join("gone-0"));
    let original = std::fs::read(&path).unwrap();

    // The data directory was replaced by another one at the same path.
    let id_file = broker.data_dir().join("fjord.id");
    let id = std::fs::read(&id_file).unwrap();
    std::fs::write(&id_file, format!("{:032x}\n", 42)).unwrap();
    let stderr = serve(&broker);
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(stderr.contains("written for data directory"), "{stderr}");
    std::fs::write(&id_file, &id).unwrap();

    // A file of an older layout.
    let mut old = original.clone();
    old[8..12].copy_from_slice(&0u32.to_le_bytes());
    std::fs::write(&path, &old).unwrap();
    let stderr = serve(&broker);
    assert!(stderr.contains("layout version 0"), "{stderr}");

    // Refusing applied nothing and kept the file: with it back, the node
    // starts and has its record.
    assert_eq!(std::fs::read(&path).unwrap(), old);
    std::fs::write(&path, &original).unwrap();
    broker.restart();
    assert_eq!(values(&broker, "t"), ["kept"]);
}

/// Stages one batch in shard 0's staging file of `broker`'s data directory
/// (one shard), for the log in `dir`, which the metadata does not list: the
/// next start releases it.
fn stage_unclaimed(broker: &Broker, dir: &Path) {
    stage_one(&broker.staging_dir(), broker.data_dir(), STAGING_BYTES, dir);
}

/// Stages one batch for the log in `dir` in shard 0's staging file (of
/// `bytes`) of the data directory `data_dir`, creating its identity if new.
fn stage_one(staging_dir: &Path, data_dir: &Path, bytes: usize, dir: &Path) {
    let id = staging::data_dir_id(data_dir).unwrap();
    let file =
        StagingFile::open(staging_dir, data_dir, id, 0, staging::topology(1, 0), bytes).unwrap();
    let area = Staging::new(file, data_dir.to_path_buf());
    let mut batch = BatchBuilder::new();
    batch.push(0, None, Some(b"staged"), &[]);
    area.stage(&area.key(dir), 0, 0, Pieces::whole(&batch.build()), None)
        .unwrap();
}

/// Staging files left behind are not left forever: one under this data
/// directory's name but of another identity (a directory removed and made
/// anew at the same path after a kill) holding nothing to replay is made
/// afresh, not refused; the files of a data directory that is gone are
/// removed at any node's start (tmpfs is memory), even with batches in
/// them; those of a directory that still exists stay.
#[test]
fn staging_files_left_behind_are_made_anew_or_removed() {
    let mut broker = Broker::start(1);
    block_on(Admin::new(broker.client()).create_topic("t", 1, &[])).unwrap();
    broker.kill();
    let staging_dir = broker.staging_dir();
    let ours = staging::file_path(&staging_dir, broker.data_dir(), 0);
    std::fs::remove_file(&ours).unwrap();
    let other_id = 42;
    drop(
        StagingFile::open(
            &staging_dir,
            broker.data_dir(),
            other_id,
            0,
            staging::topology(1, 0),
            STAGING_BYTES,
        )
        .unwrap(),
    );

    let parent = tempfile::tempdir().unwrap();
    let gone = parent.path().join("gone");
    let alive = parent.path().join("alive");
    for dir in [&gone, &alive] {
        std::fs::create_dir(dir).unwrap();
        stage_one(&staging_dir, dir, 1 << 20, &dir.join("t-0"));
    }
    let gone_file = staging::file_path(&staging_dir, &gone, 0);
    let alive_file = staging::file_path(&staging_dir, &alive, 0);
    std::fs::remove_dir_all(&gone).unwrap();

    broker.restart();
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    block_on(producer.send("t", Some(0), None, Some(b"after"), &[])).unwrap();
    assert_eq!(values(&broker, "t"), ["after"]);
    assert!(!gone_file.exists(), "the gone directory's file stays");
    assert!(alive_file.exists(), "a live directory's file was removed");
    broker.kill();
    // The file under our name is ours again (the header's owner field).
    let id = staging::data_dir_id(broker.data_dir()).unwrap();
    let header = std::fs::read(&ours).unwrap();
    assert_eq!(
        header[16..32],
        id.to_le_bytes(),
        "made anew for this directory"
    );
    assert_ne!(id, other_id);
}

/// The line a broker started with `broker`'s arguments prints first.
fn serving_line(broker: &Broker) -> String {
    let mut child = Command::new(FJORD)
        .args(broker.serve_args())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.starts_with("fjord: serving"), "{line}");
    line
}

/// An answer that waits for its write (staging off) waits no longer than
/// its request's `timeout_ms` says: on a frozen disk an `acks=all` produce
/// with 300 ms is answered `REQUEST_TIMED_OUT`, and its record, appended,
/// is there once the disk thaws (as on Kafka, a timeout is not a refusal);
/// `/metrics` counts the timeout.
#[test]
fn an_answer_waiting_for_a_frozen_disk_comes_when_its_request_times_out() {
    let Some(disk) = freezable_disk("an_answer_waiting_for_a_frozen_disk…") else {
        return;
    };
    let admin = format!("127.0.0.1:{}", common::free_port());
    let args = [
        "--staging-dir",
        "/proc/fjord-no-staging",
        "--admin-listen",
        &admin,
    ];
    let (broker, producer) = on_disk(&disk, &args, None, "late", 1 << 30);
    let freeze = Freeze::start(&disk.mount, Duration::from_secs(30));
    let acks = fjord_net::api::ACKS_ALL;
    let timeout = Duration::from_millis(300);
    common::assert_produce_times_out(&broker.client(), broker.addr, "late", acks, timeout);
    let metrics = get(&admin, "/metrics").unwrap();
    let counted = "fjord_topic_produce_timeouts_total{topic=\"late\"} 1";
    assert!(metrics.contains(counted), "{metrics}");
    freeze.thaw();
    // Answered once written, after the batch before it.
    block_on(producer.send("late", Some(0), None, Some(b"after"), &[])).unwrap();
    assert_eq!(values(&broker, "late"), ["before", "late", "after"]);
}

#[test]
fn without_shared_memory_the_node_says_so_and_acks_wait_for_the_write() {
    // Nothing can be created under /proc, not even by root.
    let admin = format!("127.0.0.1:{}", common::free_port());
    let mut broker = Broker::start_with(
        1,
        &[
            "--staging-dir",
            "/proc/fjord-no-staging",
            "--admin-listen",
            &admin,
        ],
    );
    block_on(Admin::new(broker.client()).create_topic("t", 1, &[])).unwrap();
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    block_on(producer.send("t", Some(0), None, Some(b"written"), &[])).unwrap();
    assert_eq!(values(&broker, "t"), ["written"]);
    assert_eq!(shard0_metric(&admin, "fjord_staging_capacity_bytes"), 0.0);
    assert!(shard0_metric(&admin, "fjord_storage_appends_waiting_for_write_total") >= 1.0);
    broker.kill();
    let line = serving_line(&broker);
    assert!(line.contains("staging off: staging unavailable"), "{line}");
}

/// A small tmpfs, as a container's /dev/shm; unmounted on drop.
struct SmallShm {
    dir: tempfile::TempDir,
}

impl SmallShm {
    /// `Err` (with the reason) when this machine does not let the test mount one.
    fn mount(mib: u64) -> Result<SmallShm, String> {
        // SAFETY: geteuid has no memory effects.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot mount a tmpfs".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(SmallShm { dir })
    }
}

impl Drop for SmallShm {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_budget_shared_memory_cannot_hold_shrinks_to_fit_and_the_node_says_so() {
    let shm = match SmallShm::mount(8) {
        Ok(shm) => shm,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let dir = shm.dir.path().display().to_string();
    // Two shards of the default 128 MiB do not fit 8 MiB: each gets a share
    // of three quarters of it, and staging stays on.
    let mut broker = Broker::start_with(2, &["--staging-dir", &dir]);
    block_on(Admin::new(broker.client()).create_topic("t", 2, &[])).unwrap();
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    block_on(producer.send("t", Some(0), None, Some(b"staged"), &[])).unwrap();
    assert_eq!(values(&broker, "t"), ["staged"]);
    broker.kill();
    let line = serving_line(&broker);
    assert!(
        line.contains("staging 3145728 B per shard (shrunk from 134217728"),
        "{line}"
    );
    for shard in 0..2 {
        let file = staging::file_path(shm.dir.path(), broker.data_dir(), shard);
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert_eq!(
            len,
            3 << 20,
            "shard {shard}'s staging file {}",
            file.display()
        );
    }
}

/// A shard that runs only the controller stages nothing: it gets no
/// staging file (no share of shared memory), and the data shard's file
/// still keeps what a kill leaves.
#[test]
fn a_controller_only_shard_has_no_staging_file() {
    let mut broker = Broker::start_with(2, &["--controller-hosts-partitions", "false"]);
    block_on(Admin::new(broker.client()).create_topic("t", 1, &[])).unwrap();
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    block_on(producer.send("t", Some(0), None, Some(b"kept"), &[])).unwrap();
    broker.kill();
    let file = |shard| staging::file_path(&broker.staging_dir(), broker.data_dir(), shard);
    assert!(
        !file(0).exists(),
        "the controller's shard has a staging file"
    );
    assert!(file(1).exists(), "the data shard has none");
    broker.restart();
    assert_eq!(values(&broker, "t"), ["kept"]);
}
