//! Moving replicas between real `fjord serve` nodes: `fjord partition move`
//! under acks=all load (the leader itself leaving), then `fjord cluster
//! drain`. After each: every acknowledged record is read back, the new
//! replicas hold the same bytes as the others, and the nodes that gave a
//! replica up deleted it from disk.

mod common;

use common::{Broker, segment_bytes};
use fjord_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, PartitionDescription, Producer,
    ProducerConfig, Seek,
};
use futures::executor::block_on;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TOPIC: &str = "moving";

/// Node 1 runs the controller; 2, 3 and 4 join through it.
fn start(nodes: u32, extra: &[&str]) -> Vec<Broker> {
    let first = Broker::start_with(1, &[&["--node-id", "1"][..], extra].concat());
    let seed = first.addr.to_string();
    let mut all = vec![first];
    for id in 2..=nodes {
        let id = id.to_string();
        let args = [&["--node-id", &id, "--seeds", &seed][..], extra].concat();
        all.push(Broker::start_with(1, &args));
    }
    all
}

fn client_of(nodes: &[Broker]) -> Client {
    let mut config = ClientConfig::with_bootstrap(nodes.iter().map(|n| n.addr).collect());
    config.request_timeout = Duration::from_secs(10);
    Client::new(config).expect("client")
}

fn describe_until<T>(
    client: &Client,
    what: &str,
    mut done: impl FnMut(&[PartitionDescription]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(topic) = block_on(Admin::new(client.clone()).describe_topic(TOPIC))
            && let Some(found) = done(&topic.partitions)
        {
            return found;
        }
        assert!(Instant::now() < deadline, "not within 60 s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn set(ids: &[i32]) -> BTreeSet<i32> {
    ids.iter().copied().collect()
}

/// Every replica of every partition has the high watermark, and its
/// segment files on its node hold the same bytes as the leader's.
fn assert_replicas_caught_up_and_identical(client: &Client, nodes: &[Broker], partitions: usize) {
    let described = describe_until(client, "every replica caught up", |ps| {
        ps.iter()
            .all(|p| {
                p.error.is_none()
                    && p.in_sync.len() == p.replicas.len()
                    && p.replica_log_ends.iter().all(|&e| e == p.log_end_offset)
            })
            .then(|| ps.to_vec())
    });
    assert_eq!(described.len(), partitions);
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in &described {
        loop {
            let copies: Vec<(i32, Vec<u8>)> = p
                .replicas
                .iter()
                .map(|&id| {
                    let node = &nodes[(id - 1) as usize];
                    let dir = node
                        .partition_dirs(TOPIC)
                        .into_iter()
                        .find(|d| d.ends_with(p.partition.to_string()))
                        .unwrap_or_else(|| panic!("node {id} holds {TOPIC}-{}", p.partition));
                    (id, segment_bytes(&dir))
                })
                .collect();
            assert!(!copies[0].1.is_empty());
            let differing = copies.iter().find(|c| c.1 != copies[0].1);
            let Some((id, bytes)) = differing else {
                break;
            };
            assert!(
                Instant::now() < deadline,
                "{TOPIC}-{}: node {id} holds {} bytes, node {} {}",
                p.partition,
                bytes.len(),
                copies[0].0,
                copies[0].1.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits until `node` keeps no directory of the topic's partition `p`.
fn assert_copy_deleted(node: &Broker, id: i32, p: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while node
        .partition_dirs(TOPIC)
        .iter()
        .any(|d| d.ends_with(p.to_string()))
    {
        assert!(
            Instant::now() < deadline,
            "node {id} still keeps {TOPIC}-{p} on disk"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Produces acks=all records until `stop`; returns (partition, offset,
/// value) of every acknowledged one.
fn produce_until(client: Client, stop: Arc<AtomicBool>) -> Vec<(i32, i64, String)> {
    let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
    let mut acked = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let sent: Vec<_> = (0..50)
            .map(|_| {
                i += 1;
                let value = format!("value-{i}");
                let ack = producer.send(TOPIC, Some(i % 2), None, Some(value.as_bytes()), &[]);
                (value, ack)
            })
            .collect();
        for (value, ack) in sent {
            let landed = block_on(ack).expect("no produce fails while replicas move");
            acked.push((landed.partition, landed.offset, value));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    acked
}

fn assert_all_read_back(client: &Client, acked: &[(i32, i64, String)]) {
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    block_on(consumer.assign(TOPIC, None, Seek::Earliest)).expect("assign");
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < acked.len() {
        assert!(
            Instant::now() < deadline,
            "read {} of {}",
            got.len(),
            acked.len()
        );
        for r in block_on(consumer.poll(Duration::from_millis(500))).expect("poll") {
            let value = String::from_utf8(r.value.unwrap_or_default()).expect("utf-8");
            got.insert((r.partition, r.offset, value));
        }
    }
    for record in acked {
        assert!(got.contains(record), "acknowledged {record:?} lost");
    }
}

#[test]
fn replicas_move_under_load_and_a_node_drains() {
    let nodes = start(4, &[]);
    let client = client_of(&nodes);
    block_on(Admin::new(client.clone()).create_replicated_topic(TOPIC, 2, Some(3), &[]))
        .expect("create");
    let before = describe_until(&client, "partition 0 has a leader", |ps| {
        ps.first()
            .filter(|p| p.leader > 0 && p.replicas.len() == 3)
            .cloned()
    });
    // Partition 0 moves off its leader onto the node that has no replica:
    // the leader hands over, then is removed.
    let newcomer = (1..=4)
        .find(|n| !before.replicas.contains(n))
        .expect("a 4th node");
    let mut target: Vec<i32> = before
        .replicas
        .iter()
        .copied()
        .filter(|&n| n != before.leader)
        .collect();
    target.push(newcomer);

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, stop) = (client.clone(), stop.clone());
        std::thread::spawn(move || produce_until(client, stop))
    };
    std::thread::sleep(Duration::from_millis(500));
    let replicas = target
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let addr: SocketAddr = nodes[1].addr;
    let out = common::cli(
        addr,
        &[
            "partition",
            "move",
            TOPIC,
            "0",
            "--replicas",
            &replicas,
            "--wait",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "partition move: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let acked = load.join().expect("the load ran without a produce error");
    assert!(acked.iter().any(|r| r.0 == 0), "partition 0 took records");

    let moved = describe_until(&client, "partition 0 on its target", |ps| {
        ps.first()
            .filter(|p| set(&p.replicas) == set(&target) && p.leader > 0)
            .cloned()
    });
    assert_ne!(moved.leader, before.leader, "the old leader left the group");
    assert_copy_deleted(&nodes[(before.leader - 1) as usize], before.leader, 0);
    assert_all_read_back(&client, &acked);
    assert_replicas_caught_up_and_identical(&client, &nodes, 2);

    // Drain a node that holds replicas: it ends with none, on disk too.
    let status = block_on(Admin::new(client.clone()).cluster_status()).expect("status");
    let (&drained, _) = status
        .replicas
        .iter()
        .max_by_key(|(_, count)| **count)
        .expect("replicas");
    let out = common::cli(
        addr,
        &["cluster", "drain", &drained.to_string(), "--wait"],
        "",
    );
    assert!(
        out.status.success(),
        "cluster drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = block_on(Admin::new(client.clone()).cluster_status()).expect("status");
    assert_eq!(status.replicas.get(&drained).copied().unwrap_or(0), 0);
    for p in 0..2 {
        assert_copy_deleted(&nodes[(drained - 1) as usize], drained, p);
    }
    assert_all_read_back(&client, &acked);
    assert_replicas_caught_up_and_identical(&client, &nodes, 2);
}

#[test]
fn a_replica_added_after_retention_starts_at_the_leaders_log_start() {
    let nodes = start(4, &["--retention-check-interval-ms", "100"]);
    let client = client_of(&nodes);
    let configs = [
        ("segment.bytes".to_owned(), "4096".to_owned()),
        ("retention.bytes".to_owned(), "8192".to_owned()),
    ];
    let admin = Admin::new(client.clone());
    block_on(admin.create_replicated_topic(TOPIC, 1, Some(3), &configs)).expect("create");
    let config = ProducerConfig {
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, config).expect("producer");
    for i in 0..200u32 {
        // About 1 KiB a batch: 4 KiB segments roll often and go.
        let value = [(i % 251) as u8; 1000];
        block_on(producer.send(TOPIC, Some(0), None, Some(&value), &[])).expect("produce");
    }
    let before = describe_until(&client, "retention moved the log start", |ps| {
        ps.first().filter(|p| p.log_start_offset > 100).cloned()
    });
    let newcomer = (1..=4)
        .find(|n| !before.replicas.contains(n))
        .expect("a 4th node");
    let mut target = before.replicas.clone();
    let leaving = target.pop().expect("three replicas");
    target.push(newcomer);
    block_on(admin.move_partition(TOPIC, 0, &target)).expect("move");
    let moved = describe_until(&client, "the move done, the newcomer caught up", |ps| {
        ps.first()
            .filter(|p| {
                set(&p.replicas) == set(&target)
                    && p.in_sync.len() == 3
                    && p.replica_log_ends.iter().all(|&e| e == p.log_end_offset)
            })
            .cloned()
    });
    assert!(moved.log_end_offset >= 200);
    assert_copy_deleted(&nodes[(leaving - 1) as usize], leaving, 0);
    // The newcomer's log starts where the leader's did, not at 0.
    let dir = nodes[(newcomer - 1) as usize]
        .partition_dirs(TOPIC)
        .pop()
        .expect("the newcomer holds the partition");
    let first_segment = std::fs::read_dir(&dir)
        .expect("partition dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")
                .and_then(|b| b.parse::<u64>().ok())
        })
        .min()
        .expect("a segment");
    assert!(
        first_segment >= before.log_start_offset as u64,
        "the newcomer's log starts at {first_segment}, the leader's at {}",
        before.log_start_offset
    );
    // Its copy serves: it leads after the others hand over to it.
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign(TOPIC, None, Seek::Earliest)).expect("assign");
    let polled = block_on(consumer.poll(Duration::from_secs(2))).expect("poll");
    assert!(!polled.is_empty(), "records from the log start");
    assert!(polled[0].offset >= moved.log_start_offset);
}
