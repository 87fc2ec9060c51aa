//! Large produced batches received from the socket straight into their
//! log's write buffer (no copy in the broker), on a real broker: the log
//! writes them from there, they read back byte for byte, in order, from the
//! cache and after a SIGKILL from the disk, also when two producers share a
//! partition (a batch whose predicted place another append took is copied).

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Broker, contains, segment_bytes};
use fjord_broker::cli::top::get;
use fjord_client::{Admin, Producer, ProducerConfig};
use futures::executor::block_on;
use std::collections::BTreeMap;
use std::time::Duration;

/// Record `i` of producer `who`: 1 KiB that name their sender and place.
fn value(who: u8, i: u32) -> Vec<u8> {
    let mut v = format!("{who}-{i:08}-").into_bytes();
    v.extend((0..1000u32).map(|k| (i.wrapping_mul(31).wrapping_add(k) % 251) as u8));
    v
}

/// The sum over shards of a counter on the node's `/metrics`.
fn node_counter(admin: &str, name: &str) -> f64 {
    let metrics = get(admin, "/metrics").unwrap();
    let values: Vec<f64> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix("{shard=\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(!values.is_empty(), "no {name} in:\n{metrics}");
    values.iter().sum()
}

/// A producer whose batches are large enough to be received in place.
fn large_batches(broker: &Broker) -> Producer {
    let config = ProducerConfig {
        batch_size: 256 << 10,
        linger: Duration::from_millis(20),
        ..ProducerConfig::default()
    };
    Producer::new(&broker.client(), config).unwrap()
}

#[test]
fn large_batches_are_written_from_where_they_were_received() {
    let admin = format!("127.0.0.1:{}", common::free_port());
    let mut broker = Broker::start_with(2, &["--admin-listen", &admin]);
    block_on(Admin::new(broker.client()).create_topic("big", 2, &[])).unwrap();
    const COUNT: u32 = 3000;
    // Producer 0 alone on partition 0; producers 1 and 2 together on
    // partition 1, their batches interleaving.
    let producers: Vec<Producer> = (0..3).map(|_| large_batches(&broker)).collect();
    let mut acks = Vec::new();
    for i in 0..COUNT {
        for (who, producer) in producers.iter().enumerate() {
            let partition = i32::from(who > 0);
            let sent = producer.send(
                "big",
                Some(partition),
                None,
                Some(&value(who as u8, i)),
                &[],
            );
            acks.push(sent);
        }
    }
    for ack in acks {
        block_on(ack).unwrap();
    }
    let produced = 3.0 * f64::from(COUNT) * value(0, 0).len() as f64;
    let in_place = node_counter(&admin, "fjord_storage_received_in_place_bytes_total");
    let copied = node_counter(&admin, "fjord_storage_received_copied_bytes_total");
    assert!(
        in_place > produced / 3.0,
        "{in_place} of {produced} bytes written from where they were received ({copied} copied)"
    );
    assert!(in_place + copied <= produced * 1.1, "{in_place} + {copied}");

    // The same bytes, in each producer's order: from the cache, then from
    // the disk after a kill (staged batches replayed).
    let check = |broker: &Broker| {
        let mut sent: BTreeMap<u8, Vec<Vec<u8>>> = BTreeMap::new();
        for p in 0..2 {
            for v in broker.records("big", p).into_values() {
                sent.entry(v[0] - b'0').or_default().push(v);
            }
        }
        for who in 0..3u8 {
            let expected: Vec<Vec<u8>> = (0..COUNT).map(|i| value(who, i)).collect();
            assert!(sent[&who] == expected, "producer {who}'s records differ");
        }
    };
    check(&broker);
    broker.kill();
    broker.restart();
    check(&broker);
    let on_disk: Vec<u8> = broker
        .partition_dirs("big")
        .iter()
        .flat_map(|d| segment_bytes(d))
        .collect();
    for who in 0..3 {
        assert!(
            contains(&on_disk, &value(who, COUNT - 1)),
            "{who}'s last record on disk"
        );
    }
}
