//! Log compaction on a real broker: a keyed topic overwritten many times
//! shrinks on disk, a reader from the start sees the newest value of every
//! key at its original offset, tombstones go after `delete.retention.ms`,
//! and cleanings cut short by SIGKILL leave a consistent log.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Broker, segment_bytes};
use fjord_client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek};
use futures::executor::block_on;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KEYS: usize = 50;
const TOMBSTONED: usize = 10;
const RETENTION: Duration = Duration::from_millis(1500);

/// Key -> (offset, value) of the newest record of each key.
type Newest = BTreeMap<String, (i64, Option<String>)>;

fn write(broker: &Broker, records: &[(String, Option<String>)], newest: &mut Newest) {
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    let sends: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            producer.send(
                "kv",
                Some(0),
                Some(k.as_bytes()),
                v.as_deref().map(str::as_bytes),
                &[],
            )
        })
        .collect();
    for ((key, value), send) in records.iter().zip(sends) {
        let offset = block_on(send).unwrap().offset;
        newest.insert(key.clone(), (offset, value.clone()));
    }
}

fn round(r: usize) -> Vec<(String, Option<String>)> {
    (0..KEYS)
        .map(|k| {
            (
                format!("k{k}"),
                Some(format!("k{k}-round{r}-{}", "x".repeat(80))),
            )
        })
        .collect()
}

/// Every record from the start: (offset, key, value).
fn read_all(broker: &Broker) -> Vec<(i64, String, Option<String>)> {
    let client = broker.client();
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign("kv", Some(&[0]), Seek::Earliest)).unwrap();
    let end =
        block_on(Admin::new(client.clone()).list_offsets("kv", fjord_net::api::LATEST)).unwrap()[0];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumer.position("kv", 0).unwrap() < end {
        assert!(Instant::now() < deadline, "reading to {end} timed out");
        for r in block_on(consumer.poll(Duration::from_millis(200))).unwrap() {
            let key = String::from_utf8(r.key.unwrap()).unwrap();
            out.push((
                r.offset,
                key,
                r.value.map(|v| String::from_utf8(v).unwrap()),
            ));
        }
    }
    out
}

/// Checks what a reader from the start sees against the newest records:
/// offsets increase, every newest record is there at its offset (a
/// tombstone may be gone once `cleaned`), and no key has more than its
/// newest once `compacted`.
fn check(read: &[(i64, String, Option<String>)], newest: &Newest, cleaned: bool, compacted: bool) {
    assert!(read.windows(2).all(|w| w[0].0 < w[1].0), "offsets increase");
    let mut last: BTreeMap<&str, (i64, &Option<String>)> = BTreeMap::new();
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for (offset, key, value) in read {
        last.insert(key, (*offset, value));
        *per_key.entry(key).or_default() += 1;
    }
    for (key, (offset, value)) in newest {
        if value.is_none() && cleaned {
            continue; // A tombstone may be gone already.
        }
        assert_eq!(
            last.get(key.as_str()),
            Some(&(*offset, value)),
            "newest of {key}"
        );
    }
    if compacted {
        assert!(
            per_key.values().all(|&n| n == 1),
            "one record per key: {per_key:?}"
        );
    }
}

fn log_bytes(broker: &Broker) -> usize {
    segment_bytes(&broker.partition_dirs("kv")[0]).len()
}

#[test]
fn a_compacted_topic_keeps_the_newest_value_of_each_key() {
    let mut broker = Broker::start_with(1, &["--log-cleaner-backoff-ms", "200"]);
    let configs: Vec<(String, String)> = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "8192"),
        ("delete.retention.ms", "1500"),
        ("min.cleanable.dirty.ratio", "0.01"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let admin = Admin::new(broker.client());
    block_on(admin.create_topic("kv", 1, &configs)).unwrap();

    // Keyless records are refused on a compacted topic, as Kafka does.
    let producer = Producer::new(
        &broker.client(),
        ProducerConfig {
            retries: 0,
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let keyless = block_on(producer.send("kv", Some(0), None, Some(b"v"), &[]));
    assert!(
        format!("{keyless:?}").contains("InvalidRecord"),
        "{keyless:?}"
    );

    let mut newest = Newest::new();
    for r in 0..30 {
        write(&broker, &round(r), &mut newest);
    }
    let tombstones: Vec<_> = (0..TOMBSTONED).map(|k| (format!("k{k}"), None)).collect();
    write(&broker, &tombstones, &mut newest);
    // Fillers of keys of their own roll the overwrites out of the active
    // segment, which is never cleaned.
    let fillers: Vec<_> = (0..100)
        .map(|f| {
            (
                format!("f{f}"),
                Some(format!("filler-{f}-{}", "y".repeat(80))),
            )
        })
        .collect();
    write(&broker, &fillers, &mut newest);
    let before = log_bytes(&broker);
    check(&read_all(&broker), &newest, false, false);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = read_all(&broker);
        let keys: std::collections::BTreeSet<&str> =
            read.iter().map(|(_, k, _)| k.as_str()).collect();
        if read.len() == keys.len() {
            check(&read, &newest, true, true);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted: {} records",
            read.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = log_bytes(&broker);
    assert!(
        after * 3 < before,
        "the log shrank from {before} to {after} bytes only"
    );

    // More overwrites, and cleanings cut short by SIGKILL at random moments.
    for r in 30..40 {
        write(&broker, &round(r)[TOMBSTONED..], &mut newest);
    }
    write(&broker, &fillers, &mut newest);
    for i in 0..5u64 {
        std::thread::sleep(Duration::from_millis(150 + (i * 97) % 300));
        broker.kill();
        broker.restart();
        check(&read_all(&broker), &newest, true, false);
    }
    // After delete.retention.ms and one more cleaning, tombstones are gone.
    std::thread::sleep(RETENTION);
    // Dirt to clean (not the tombstoned keys: they stay deleted).
    write(&broker, &round(40)[TOMBSTONED..], &mut newest);
    write(&broker, &fillers, &mut newest);
    // Keys written once, so that the overwrites above leave the active
    // segment.
    let tail: Vec<_> = (0..100)
        .map(|t| {
            (
                format!("t{t}"),
                Some(format!("tail-{t}-{}", "z".repeat(80))),
            )
        })
        .collect();
    write(&broker, &tail, &mut newest);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = read_all(&broker);
        let tombstones_left = read.iter().filter(|(_, _, v)| v.is_none()).count();
        let keys: std::collections::BTreeSet<&str> =
            read.iter().map(|(_, k, _)| k.as_str()).collect();
        if tombstones_left == 0 && read.len() == keys.len() {
            check(&read, &newest, true, true);
            assert_eq!(keys.len(), KEYS - TOMBSTONED + fillers.len() + tail.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{tombstones_left} tombstones left, {} records",
            read.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
