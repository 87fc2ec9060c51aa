//! Per-key ordering and a stable key → partition mapping (Kafka's murmur2),
//! through the client crate against a real broker; requests that land on
//! the wrong shard are forwarded.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::Broker;
use fjord_client::partitioner::partition_for_key;
use fjord_client::producer::{produce_request, produce_result};
use fjord_client::transport::Lane;
use fjord_client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek};
use futures::executor::block_on;
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 4;
const KEYS: usize = 13;

fn produce(broker: &Broker, round: usize) -> Vec<(String, i32)> {
    let client = broker.client();
    let producer = Producer::new(&client, ProducerConfig::default()).unwrap();
    let sends: Vec<_> = (0..2000)
        .map(|i| {
            let key = format!("key-{}", i % KEYS);
            let value = format!("{round}:{i}");
            let sent = producer.send(
                "events",
                None,
                Some(key.as_bytes()),
                Some(value.as_bytes()),
                &[],
            );
            (key, sent)
        })
        .collect();
    block_on(producer.flush()).unwrap();
    sends
        .into_iter()
        .map(|(key, sent)| (key, block_on(sent).unwrap().partition))
        .collect()
}

fn consume_all(broker: &Broker, expected: usize) -> Vec<fjord_client::ConsumerRecord> {
    let client = broker.client();
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign("events", None, Seek::Earliest)).unwrap();
    let mut records = Vec::new();
    while records.len() < expected {
        let polled = block_on(consumer.poll(Duration::from_secs(5))).unwrap();
        assert!(
            !polled.is_empty(),
            "records missing: {} of {expected}",
            records.len()
        );
        records.extend(polled);
    }
    assert_eq!(records.len(), expected);
    records
}

#[test]
fn keys_keep_their_partition_and_their_order_across_restarts() {
    let mut broker = Broker::start(2);
    block_on(Admin::new(broker.client()).create_topic("events", PARTITIONS, &[])).unwrap();
    let first = produce(&broker, 0);
    broker.terminate();
    broker.restart();
    let second = produce(&broker, 1);

    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for (key, partition) in first.iter().chain(&second) {
        assert_eq!(
            *partition,
            partition_for_key(key.as_bytes(), PARTITIONS as u32) as i32,
            "murmur2 mapping for {key}"
        );
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(*partition),
            *partition
        );
    }

    let records = consume_all(&broker, 4000);
    let mut last: HashMap<Vec<u8>, (usize, usize)> = HashMap::new();
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    for r in &records {
        let key = r.key.clone().unwrap();
        assert_eq!(
            partition_of[&String::from_utf8(key.clone()).unwrap()],
            r.partition
        );
        let value = String::from_utf8(r.value.clone().unwrap()).unwrap();
        let (round, i) = value.split_once(':').unwrap();
        let seq = (round.parse::<usize>().unwrap(), i.parse::<usize>().unwrap());
        if let Some(previous) = last.insert(key, seq) {
            assert!(previous < seq, "per-key order: {previous:?} then {seq:?}");
        }
        let next = offsets.entry(r.partition).or_insert(0);
        assert_eq!(r.offset, *next, "offsets are dense per partition");
        *next += 1;
    }
}

#[test]
fn requests_on_the_wrong_shard_are_forwarded() {
    let broker = Broker::start(2);
    let client = broker.client();
    block_on(Admin::new(client.clone()).create_topic("events", 2, &[])).unwrap();
    let metadata = block_on(client.metadata(None)).unwrap();
    let ports = metadata.brokers.unwrap()[0].shard_ports.clone().unwrap();
    let shards: Vec<u16> = metadata.topics.unwrap()[0]
        .partitions
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.shard)
        .collect();
    assert_ne!(shards[0], shards[1], "two partitions on two shards");
    // Partition 0's batch goes to the shard that owns partition 1, and the
    // node port (any shard) too.
    let wrong = std::net::SocketAddr::from(([127, 0, 0, 1], ports[usize::from(shards[1])]));
    for (i, addr) in [wrong, broker.addr].into_iter().enumerate() {
        let mut builder = fjord_core::BatchBuilder::new();
        builder.push(1, None, Some(format!("forwarded {i}").as_bytes()), &[]);
        let batch = builder.build();
        let body = produce_request("events", 0, 1, client.config().request_timeout, batch.len());
        let response = block_on(client.request(addr, Lane::Prompt, body, batch)).unwrap();
        // No error for the partition, and its offsets follow one another.
        assert_eq!(produce_result(&response, "events", 0).unwrap(), i as i64);
    }
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign("events", Some(&[0]), Seek::Earliest)).unwrap();
    // A poll may hand out the written batch before the staged one (a read
    // stops where the write ends): poll until both are in.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut values = Vec::new();
    while values.len() < 2 && std::time::Instant::now() < deadline {
        let records = block_on(consumer.poll(Duration::from_secs(1))).unwrap();
        values.extend(records.iter().map(|r| r.value.clone().unwrap()));
    }
    assert_eq!(values, [b"forwarded 0".to_vec(), b"forwarded 1".to_vec()]);
}

/// Bytes the files under `dir` take on disk (allocated blocks, not length).
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_usage(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

#[test]
fn a_topic_of_a_thousand_partitions() {
    let broker = Broker::start(2);
    let client = broker.client();
    block_on(Admin::new(client.clone()).create_topic("wide", 1000, &[])).unwrap();
    let producer = Producer::new(&client, ProducerConfig::default()).unwrap();
    let sends: Vec<_> = (0..3000)
        .map(|i| {
            let key = format!("k{i}");
            producer.send("wide", None, Some(key.as_bytes()), Some(b"v"), &[])
        })
        .collect();
    let mut partitions = std::collections::HashSet::new();
    for sent in sends {
        partitions.insert(block_on(sent).unwrap().partition);
    }
    assert!(
        partitions.len() > 900,
        "keys spread over the partitions: {}",
        partitions.len()
    );
    // Each written partition preallocates from a small first step, not a
    // full 64 MiB one: a thousand of them stay far below 64 GB.
    let used = disk_usage(broker.data_dir());
    assert!(used < 4 << 30, "{used} bytes on disk for 3000 tiny records");
    let described = block_on(Admin::new(client).describe_topic("wide")).unwrap();
    let total: i64 = described.partitions.iter().map(|p| p.log_end_offset).sum();
    assert_eq!(total, 3000);
}
