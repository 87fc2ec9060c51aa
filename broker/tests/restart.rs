//! Restarts: after SIGTERM every topic and record is back; after SIGKILL
//! every acknowledged record of an `fsync=always` topic is back, and its
//! bytes are in the segment files.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Broker, contains, segment_bytes};
use fjord_client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek};
use futures::executor::block_on;
use std::time::Duration;

fn consume(broker: &Broker, topic: &str, expected: usize) -> Vec<Vec<u8>> {
    let client = broker.client();
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign(topic, None, Seek::Earliest)).unwrap();
    let mut values = Vec::new();
    while values.len() < expected {
        let polled = block_on(consumer.poll(Duration::from_secs(3))).unwrap();
        if polled.is_empty() {
            break;
        }
        values.extend(polled.into_iter().map(|r| r.value.unwrap()));
    }
    values
}

#[test]
fn sigterm_restart_keeps_topics_configs_and_records() {
    let mut broker = Broker::start(2);
    let admin = Admin::new(broker.client());
    block_on(admin.create_topic("a", 3, &[("retention.ms".into(), "3600000".into())])).unwrap();
    block_on(admin.create_topic("b", 1, &[])).unwrap();
    block_on(admin.create_topic("gone", 1, &[])).unwrap();
    block_on(admin.delete_topic("gone")).unwrap();
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    for i in 0..500 {
        drop(producer.send("a", None, None, Some(format!("a{i}").as_bytes()), &[]));
    }
    block_on(producer.flush()).unwrap();
    broker.terminate();
    broker.restart();

    let admin = Admin::new(broker.client());
    let names: Vec<String> = block_on(admin.list_topics())
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    let a = block_on(admin.describe_topic("a")).unwrap();
    assert!(
        a.configs
            .contains(&("retention.ms".into(), "3600000".into()))
    );
    assert_eq!(
        a.partitions.iter().map(|p| p.log_end_offset).sum::<i64>(),
        500
    );
    let mut values = consume(&broker, "a", 500);
    values.sort();
    let mut want: Vec<Vec<u8>> = (0..500).map(|i| format!("a{i}").into_bytes()).collect();
    want.sort();
    assert_eq!(values, want);
}

#[test]
fn sigkill_loses_no_acknowledged_record_under_fsync_always() {
    let mut broker = Broker::start(2);
    block_on(Admin::new(broker.client()).create_topic(
        "durable",
        2,
        &[("fsync".into(), "always".into())],
    ))
    .unwrap();
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    let acked: Vec<Vec<u8>> = (0..400)
        .map(|i| {
            let value = format!("durable-{i:04}");
            let sent = producer.send("durable", Some(i % 2), None, Some(value.as_bytes()), &[]);
            (value, sent)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .filter_map(|(value, sent)| block_on(sent).ok().map(|_| value.into_bytes()))
        .collect();
    assert_eq!(acked.len(), 400);
    // Produce more without waiting, then kill in the middle of it. These
    // sends are not retried and a failure fails every later record of its
    // partition; they are all settled before the restart, so no batch left
    // over in this producer reaches the restarted broker after a gap.
    let tail = Producer::new(
        &broker.client(),
        ProducerConfig {
            retries: 0,
            stop_on_error: true,
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let pending: Vec<_> = (400..2000)
        .map(|i| {
            tail.send(
                "durable",
                Some(i % 2),
                None,
                Some(format!("durable-{i:04}").as_bytes()),
                &[],
            )
        })
        .collect();
    broker.kill();
    for sent in pending {
        let _ = block_on(sent);
    }
    drop(tail);

    let on_disk: Vec<u8> = broker
        .partition_dirs("durable")
        .iter()
        .flat_map(|d| segment_bytes(d))
        .collect();
    for value in &acked {
        assert!(
            contains(&on_disk, value),
            "{} not on disk",
            String::from_utf8_lossy(value)
        );
    }

    broker.restart();
    let values = consume(&broker, "durable", 2000);
    for value in &acked {
        assert!(
            values.contains(value),
            "acked {} lost",
            String::from_utf8_lossy(value)
        );
    }
    // Per partition, what survived is a prefix of what was sent.
    for p in 0..2 {
        let mine: Vec<&Vec<u8>> = values
            .iter()
            .filter(|v| {
                let i: i32 = String::from_utf8_lossy(&v[8..]).parse().unwrap();
                i % 2 == p
            })
            .collect();
        for (n, v) in mine.iter().enumerate() {
            assert_eq!(**v, format!("durable-{:04}", n as i32 * 2 + p).into_bytes());
        }
    }
}

#[test]
fn delete_removes_the_data_and_a_new_topic_starts_empty() {
    let broker = Broker::start(2);
    let admin = Admin::new(broker.client());
    block_on(admin.create_topic("t", 2, &[])).unwrap();
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    for i in 0..100 {
        drop(producer.send("t", None, None, Some(format!("old {i}").as_bytes()), &[]));
    }
    block_on(producer.flush()).unwrap();
    let dirs = broker.partition_dirs("t");
    assert_eq!(dirs.len(), 2);
    block_on(admin.delete_topic("t")).unwrap();
    for dir in &dirs {
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(!dir.parent().unwrap().exists());
    }
    assert!(block_on(admin.describe_topic("t")).is_err());
    block_on(admin.create_topic("t", 1, &[])).unwrap();
    let t = block_on(admin.describe_topic("t")).unwrap();
    assert_eq!(t.partitions.len(), 1);
    assert_eq!(t.partitions[0].log_end_offset, 0);
    assert_eq!(t.partitions[0].size_bytes, 0);
}

#[test]
fn retention_deletes_old_segments_on_the_broker() {
    let broker = Broker::start_with(1, &["--retention-check-interval-ms", "100"]);
    let admin = Admin::new(broker.client());
    let configs = [
        ("segment.bytes".to_owned(), "4096".to_owned()),
        ("retention.bytes".to_owned(), "8192".to_owned()),
    ];
    block_on(admin.create_topic("short", 1, &configs)).unwrap();
    let config = ProducerConfig {
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&broker.client(), config).unwrap();
    for i in 0..200 {
        // One batch each: about 1 KiB, so segments of 4 KiB roll often.
        block_on(producer.send("short", None, None, Some(&[i as u8; 1000]), &[])).unwrap();
    }
    // Retention deletes in the background: wait until the log start has
    // moved and then held still across several checks.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = block_on(admin.describe_topic("short")).unwrap().partitions[0].clone();
    let mut still = 0;
    while still < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = block_on(admin.describe_topic("short")).unwrap().partitions[0].clone();
        still = if now == last && now.log_start_offset > 0 {
            still + 1
        } else {
            0
        };
        last = now;
    }
    let p = last;
    assert_eq!(p.log_end_offset, 200);
    assert!(
        p.log_start_offset >= 150,
        "old segments deleted: start {}",
        p.log_start_offset
    );
    // retention.bytes counts whole segments besides the active one.
    assert!(p.size_bytes <= 32 << 10, "{} bytes kept", p.size_bytes);
    // A consumer from the earliest offset starts at the new log start.
    let kept = (200 - p.log_start_offset) as usize;
    let values = consume(&broker, "short", kept);
    assert_eq!(values.len(), kept);
    assert_eq!(values[0], vec![p.log_start_offset as u8; 1000]);
}

#[test]
fn lowering_retention_frees_space_at_once_without_a_restart() {
    // The retention timer is far away: only the alter itself can free space.
    let broker = Broker::start_with(1, &["--retention-check-interval-ms", "3600000"]);
    let admin = Admin::new(broker.client());
    let configs = [("segment.bytes".to_owned(), "4096".to_owned())];
    block_on(admin.create_topic("grow", 1, &configs)).unwrap();
    let config = ProducerConfig {
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&broker.client(), config).unwrap();
    for i in 0..100 {
        block_on(producer.send("grow", None, None, Some(&[i as u8; 1000]), &[])).unwrap();
    }
    let before = block_on(admin.describe_topic("grow")).unwrap().partitions[0].clone();
    assert_eq!(before.log_start_offset, 0);
    assert!(before.size_bytes >= 100_000, "{} bytes", before.size_bytes);

    // The CLI, as an operator would; an invalid value changes nothing.
    let fjord = |args: &[&str]| broker.cli(args, "");
    let refused = fjord(&["topic", "alter", "grow", "--config", "retention.bytes=lots"]);
    assert!(!refused.status.success());
    let altered = fjord(&["topic", "alter", "grow", "--config", "retention.bytes=8192"]);
    assert!(
        altered.status.success(),
        "{}",
        String::from_utf8_lossy(&altered.stderr)
    );

    let after = block_on(admin.describe_topic("grow")).unwrap();
    let p = &after.partitions[0];
    assert!(
        p.log_start_offset >= 80,
        "old segments deleted at once: start {}",
        p.log_start_offset
    );
    assert!(p.size_bytes <= 32 << 10, "{} bytes kept", p.size_bytes);
    assert!(
        after
            .configs
            .contains(&("retention.bytes".into(), "8192".into()))
    );
    // Back to the default (no size limit) with --delete-config.
    let reverted = fjord(&[
        "topic",
        "alter",
        "grow",
        "--delete-config",
        "retention.bytes",
    ]);
    assert!(reverted.status.success());
    let configs = block_on(admin.describe_topic("grow")).unwrap().configs;
    assert!(
        configs.contains(&("retention.bytes".into(), "-1".into())),
        "{configs:?}"
    );
}
