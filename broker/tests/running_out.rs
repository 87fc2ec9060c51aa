//! Running out of things, with real `fjord serve` processes: descriptors
//! (10,000 partitions under a low limit; a flood of connections), disk space
//! (a small loop-mounted filesystem filled up, then freed by a delete), and a
//! data directory another process already serves.

mod common;

use common::{Broker, FJORD, Launch, SmallDisk, free_port};
use fjord_client::{
    Admin, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig,
    Seek,
};
use fjord_net::ErrorCode;
use futures::executor::block_on;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn patient_client(broker: &Broker) -> Client {
    let mut config = ClientConfig::new(broker.addr);
    config.request_timeout = Duration::from_secs(120);
    Client::new(config).expect("client")
}

/// Descriptors the process holds now.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn no_retries() -> ProducerConfig {
    ProducerConfig {
        retries: 0,
        acks: fjord_net::api::ACKS_LEADER,
        idempotence: false,
        ..ProducerConfig::default()
    }
}

/// Runs `fjord serve` with `args`, which must make it fail at once, and
/// returns what it said.
fn serve_fails_at_once(args: &[String]) -> String {
    let started = Instant::now();
    let mut second = Command::new(FJORD)
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second fjord serve");
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = second.kill();
            panic!("the second server did not exit: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(second.stderr.take().expect("stderr")).expect("stderr");
    assert!(!status.success(), "the second server must fail: {args:?}");
    stderr
}

#[test]
fn a_second_server_on_a_data_directory_exits_at_once_naming_the_first() {
    let broker = Broker::start(1);
    let args = [
        "--data-dir".to_owned(),
        broker.data_dir().display().to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        "--shard-port-base=0".to_owned(),
        "--cores=1".to_owned(),
    ];
    let stderr = serve_fails_at_once(&args);
    let expected = format!(
        "data directory {} is in use by pid {}",
        broker.data_dir().display(),
        broker.pid()
    );
    assert!(stderr.contains(&expected), "stderr: {stderr}");
    // The first goes on serving.
    block_on(Admin::new(broker.client()).create_topic("still", 1, &[])).expect("first serves");
}

/// glommio listens with SO_REUSEPORT, which would let a second node bind
/// the same ports without an error and take half of the first's
/// connections: every listener is refused instead, by the setting's name.
#[test]
fn a_second_server_on_a_port_in_use_exits_at_once_naming_it() {
    let kafka = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with(2, &["--kafka-listen", &kafka, "--admin-listen", &admin]);
    let own_shard_port = format!("127.0.0.1:{}", broker.shard_port_base() + 1);
    let taken = [
        ("listen", broker.addr.to_string()),
        ("kafka_listen", kafka.clone()),
        ("admin_listen", admin.clone()),
        ("shard_port_base, shard 0", own_shard_port.clone()),
    ];
    for (setting, addr) in taken {
        let dir = tempfile::tempdir().expect("temp dir");
        // This one address taken, the others free.
        let addr_of = |name: &str| match name == setting {
            true => addr.clone(),
            false => format!("127.0.0.1:{}", free_port()),
        };
        let shard_port_base = match setting.starts_with("shard_port_base") {
            true => broker.shard_port_base() + 1,
            false => 0,
        };
        let args = [
            format!("--data-dir={}", dir.path().display()),
            format!("--staging-dir={}", dir.path().join("staging").display()),
            "--cores=1".to_owned(),
            format!("--listen={}", addr_of("listen")),
            format!("--kafka-listen={}", addr_of("kafka_listen")),
            format!("--admin-listen={}", addr_of("admin_listen")),
            format!("--shard-port-base={shard_port_base}"),
        ];
        let stderr = serve_fails_at_once(&args);
        let expected = format!("cannot listen on {addr} ({setting})");
        assert!(stderr.contains(&expected), "{setting}: stderr: {stderr}");
    }
    // The first goes on serving.
    block_on(Admin::new(broker.client()).create_topic("still", 1, &[])).expect("first serves");
}

#[test]
fn ten_thousand_partitions_are_served_under_a_low_descriptor_limit() {
    const PARTITIONS: i32 = 10_000;
    const NOFILE: u64 = 1024;
    let broker = Broker::launch(
        2,
        &[],
        Launch {
            nofile: Some(NOFILE),
            ..Launch::default()
        },
    );
    let idle = descriptors(broker.pid());
    let client = patient_client(&broker);
    let started = Instant::now();
    block_on(Admin::new(client.clone()).create_topic("big", PARTITIONS, &[]))
        .expect("every partition is created and served");
    let created_in = started.elapsed();
    let after_create = descriptors(broker.pid());

    let producer = Producer::new(&client, no_retries()).expect("producer");
    let sends: Vec<_> = (0..PARTITIONS)
        .map(|p| producer.send("big", Some(p), None, Some(format!("v{p}").as_bytes()), &[]))
        .collect();
    for (p, sent) in sends.into_iter().enumerate() {
        block_on(sent).unwrap_or_else(|e| panic!("produce to big-{p}: {e}"));
    }
    let after_produce = descriptors(broker.pid());
    let produced_in = started.elapsed() - created_in;

    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign("big", None, Seek::Earliest)).expect("assign");
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < PARTITIONS as usize && Instant::now() < deadline {
        for record in block_on(consumer.poll(Duration::from_secs(2))).expect("poll") {
            let value = String::from_utf8(record.value.unwrap_or_default()).expect("utf-8");
            seen.insert(record.partition, value);
        }
    }
    assert_eq!(
        seen.len(),
        PARTITIONS as usize,
        "a record from every partition"
    );
    for (p, value) in &seen {
        assert_eq!(value, &format!("v{p}"));
    }
    let after_consume = descriptors(broker.pid());
    let consumed_in = started.elapsed() - created_in - produced_in;
    eprintln!(
        "descriptors of fjord serve (RLIMIT_NOFILE {NOFILE}, 2 shards): idle {idle}, \
         {PARTITIONS} partitions created {after_create} (in {created_in:?}), \
         after a produce to each {after_produce} (in {produced_in:?}), \
         after consuming each {after_consume} (in {consumed_in:?})"
    );
    assert!(after_produce < NOFILE as usize && after_consume < NOFILE as usize);
}

#[test]
fn a_flood_of_connections_leaves_a_client_served_and_stderr_quiet() {
    const NOFILE: u64 = 256;
    let log = tempfile::NamedTempFile::new().expect("stderr file");
    let broker = Broker::launch(
        2,
        &[],
        Launch {
            nofile: Some(NOFILE),
            stderr: Some(log.path().to_path_buf()),
            ..Launch::default()
        },
    );
    let client = broker.client();
    block_on(Admin::new(client.clone()).create_topic("calm", 2, &[])).expect("create");
    // The client's connections (to both shards, both lanes) are open before
    // the flood: existing connections are what must go on being served.
    let producer = Producer::new(&client, no_retries()).expect("producer");
    for p in 0..2 {
        block_on(producer.send("calm", Some(p), None, Some(b"before"), &[])).expect("produce");
    }
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign("calm", Some(&[0, 1]), Seek::Earliest)).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while records.len() < 2 && Instant::now() < deadline {
        records.extend(block_on(consumer.poll(Duration::from_secs(1))).expect("poll"));
    }
    assert_eq!(records.len(), 2);
    let lines_before = std::fs::read_to_string(log.path())
        .expect("log")
        .lines()
        .count();

    // Four times what the broker may hold, all at once and held open.
    let flood: Vec<std::net::TcpStream> = (0..4 * NOFILE)
        .filter_map(|_| std::net::TcpStream::connect(broker.addr).ok())
        .collect();
    assert!(
        flood.len() as u64 > NOFILE,
        "the flood got through the backlog"
    );
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..20 {
        for p in 0..2 {
            block_on(producer.send(
                "calm",
                Some(p),
                None,
                Some(format!("during{i}").as_bytes()),
                &[],
            ))
            .expect("the well-behaved client is served during the flood");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while records.len() < 42 && Instant::now() < deadline {
        records.extend(block_on(consumer.poll(Duration::from_secs(1))).expect("poll"));
    }
    assert_eq!(records.len(), 42, "fetch is served during the flood");
    let flood_len = flood.len();
    drop(flood);
    // A new connection is accepted again once the flood is gone.
    std::thread::sleep(Duration::from_millis(500));
    block_on(Admin::new(broker.client()).create_topic("after", 1, &[])).expect("accepted again");

    let text = std::fs::read_to_string(log.path()).expect("log");
    let new_lines = text.lines().count() - lines_before;
    // One line per shard and listener per 10 s at most, not one per refusal.
    assert!(
        new_lines <= 12,
        "stderr flooded: {new_lines} lines:\n{text}"
    );
    eprintln!("broker stderr during a flood of {} connections:", flood_len);
    for line in text.lines().skip(lines_before) {
        eprintln!("  {line}");
    }
}

#[test]
fn accepts_failing_for_want_of_descriptors_back_off_quietly() {
    // So few descriptors that the table fills before the connection limit
    // (16, the least a shard gets): accept fails with EMFILE.
    const NOFILE: u64 = 32;
    let log = tempfile::NamedTempFile::new().expect("stderr file");
    let broker = Broker::launch(
        1,
        &[],
        Launch {
            nofile: Some(NOFILE),
            stderr: Some(log.path().to_path_buf()),
            ..Launch::default()
        },
    );
    let client = broker.client();
    block_on(Admin::new(client.clone()).create_topic("tight", 1, &[])).expect("create");
    let producer = Producer::new(&client, no_retries()).expect("producer");
    block_on(producer.send("tight", Some(0), None, Some(b"before"), &[])).expect("produce");
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign("tight", None, Seek::Earliest)).expect("assign");
    let mut records = block_on(consumer.poll(Duration::from_secs(5))).expect("poll");
    assert_eq!(records.len(), 1);

    let flood: Vec<std::net::TcpStream> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(broker.addr).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        descriptors(broker.pid()) >= NOFILE as usize - 1,
        "the descriptor table is full"
    );
    for i in 0..10 {
        block_on(producer.send(
            "tight",
            Some(0),
            None,
            Some(format!("during{i}").as_bytes()),
            &[],
        ))
        .expect("an existing connection is served while accepts fail");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while records.len() < 11 && Instant::now() < deadline {
        records.extend(block_on(consumer.poll(Duration::from_secs(1))).expect("poll"));
    }
    assert_eq!(records.len(), 11);
    drop(flood);
    std::thread::sleep(Duration::from_millis(1500));
    block_on(Admin::new(broker.client()).create_topic("after", 1, &[])).expect("accepted again");

    let text = std::fs::read_to_string(log.path()).expect("log");
    let failing: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("accept failing"))
        .collect();
    assert!(
        !failing.is_empty() && failing.len() <= 2,
        "accept errors logged once per interval: {text}"
    );
    assert!(failing[0].contains("Too many open files"), "{}", failing[0]);
}

/// Produces 256 KiB batches to `topic` until the broker refuses one (with
/// the storage error); returns how many it took.
fn fill(producer: &Producer, topic: &str) -> usize {
    let value = vec![b'x'; 256 << 10];
    for sent in 0.. {
        match block_on(producer.send(topic, Some(0), None, Some(&value), &[])) {
            Ok(_) => {}
            Err(ClientError::Broker { code, .. }) => {
                assert_eq!(
                    code,
                    ErrorCode::KafkaStorageError,
                    "a full disk refuses produce"
                );
                return sent;
            }
            Err(e) => panic!("produce failed otherwise: {e}"),
        }
        assert!(sent < 10_000, "a 64 MiB disk never filled");
    }
    unreachable!()
}

/// Waits until a produce to `topic` succeeds again.
fn produce_resumes(producer: &Producer, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match block_on(producer.send(topic, Some(0), None, Some(b"resumed"), &[])) {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("produce did not resume after the delete: {e}"),
        }
    }
}

#[test]
fn a_full_disk_refuses_produce_and_a_topic_delete_brings_it_back() {
    let disk = match SmallDisk::make(64) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_refuses_produce…: {why}");
            return;
        }
    };
    let data = disk.mount.join("data");
    // First below a threshold (16 MiB free), then with no threshold, so
    // that writes hit ENOSPC for real.
    for min_free in ["16777216", "0"] {
        let _ = std::fs::remove_dir_all(&data);
        let broker = Broker::launch(
            2,
            &[
                "--disk-min-free-bytes",
                min_free,
                "--disk-check-interval-ms",
                "50",
                "--metadata-reserve-bytes",
                "4194304",
            ],
            Launch {
                data_dir: Some(data.clone()),
                ..Launch::default()
            },
        );
        let client = broker.client();
        let admin = Admin::new(client.clone());
        block_on(admin.create_topic("filler", 1, &[])).expect("create filler");
        block_on(admin.create_topic("keep", 1, &[])).expect("create keep");
        let producer = Producer::new(&client, no_retries()).expect("producer");
        block_on(producer.send("keep", Some(0), None, Some(b"first"), &[])).expect("keep");
        let filled = fill(&producer, "filler");
        assert!(
            filled > 10,
            "min_free {min_free}: only {filled} batches fit"
        );
        // Every partition refuses produce once the disk is full: at once
        // below a threshold; after what its preallocated room still holds
        // without one, when its write hits ENOSPC and its log stops.
        let kept = fill(&producer, "keep");
        let described = broker.cli(&["topic", "describe", "keep"], "");
        let text = String::from_utf8_lossy(&described.stdout);
        assert!(
            text.contains("read-only"),
            "min_free {min_free}: describe shows the state: {text}"
        );
        // Reads go on.
        let mut consumer = Consumer::new(&client, ConsumerConfig::default());
        block_on(consumer.assign("keep", None, Seek::Earliest)).expect("assign");
        let records =
            block_on(consumer.poll(Duration::from_secs(5))).expect("fetch on a full disk");
        assert_eq!(
            records.first().and_then(|r| r.value.clone()),
            Some(b"first".to_vec())
        );
        // The operator's way out works on a full disk.
        block_on(admin.delete_topic("filler")).expect("delete on a full disk");
        produce_resumes(&producer, "keep");
        // Nothing acknowledged was lost on the way: with staging, batches
        // acknowledged before their write hit ENOSPC were carried into the
        // reopened log.
        let end = block_on(admin.describe_topic("keep"))
            .expect("describe")
            .partitions[0]
            .log_end_offset;
        assert!(
            end >= kept as i64 + 2,
            "min_free {min_free}: {kept} acknowledged, log ends at {end}"
        );
        let mut reader = Consumer::new(&client, ConsumerConfig::default());
        block_on(reader.assign("keep", None, Seek::Earliest)).expect("assign");
        let mut read = 0;
        while read < end {
            let polled = block_on(reader.poll(Duration::from_secs(5))).expect("read back");
            assert!(
                !polled.is_empty(),
                "min_free {min_free}: {read} of {end} read"
            );
            read += polled.len() as i64;
        }
        drop(producer);
        drop(broker);
    }
}

#[test]
fn partitions_that_cannot_be_opened_are_reported_by_create_and_retried() {
    let broker = Broker::start(2);
    // Topic ids count from 1: the partitions of "blocked" go under
    // topics/blocked.1/, which a plain file makes impossible to create.
    let topics = broker.data_dir().join("topics");
    std::fs::create_dir_all(&topics).expect("topics dir");
    let blocker = topics.join("blocked.1");
    std::fs::write(&blocker, b"not a directory").expect("blocker");

    let created = broker.cli(&["topic", "create", "blocked", "--partitions", "3"], "");
    let stdout = String::from_utf8_lossy(&created.stdout);
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(!created.status.success(), "never \"created\": {stdout}");
    assert!(!stdout.contains("created topic"), "{stdout}");
    assert!(
        stderr.contains("KafkaStorageError")
            && stderr.contains("3 partition(s) could not be opened")
            && stderr.contains("blocked-0: "),
        "each partition is named with its reason: {stderr}"
    );
    let described = broker.cli(&["topic", "describe", "blocked"], "");
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(text.contains("not served"), "describe: {text}");
    let producer = Producer::new(&broker.client(), no_retries()).expect("producer");
    match block_on(producer.send("blocked", Some(0), None, Some(b"x"), &[])) {
        Err(ClientError::Broker { code, .. }) => assert_eq!(code, ErrorCode::KafkaStorageError),
        other => panic!("produce to a partition not served: {other:?}"),
    }

    // Once the cause is gone, the shards' retry opens them.
    std::fs::remove_file(&blocker).expect("unblock");
    produce_resumes(&producer, "blocked");
}
