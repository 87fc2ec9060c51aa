//! The client crate from tokio, from glommio and blocking, against a real
//! broker: the same round trip completes under each.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::Broker;
use fjord_client::{Admin, Client, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek};
use std::time::Duration;

/// Creates `topic`, produces keyed records with headers, reads them back.
async fn round_trip(client: Client, topic: &'static str) {
    Admin::new(client.clone())
        .create_topic(topic, 2, &[])
        .await
        .unwrap();
    let producer = Producer::new(&client, ProducerConfig::default()).unwrap();
    let sends: Vec<_> = (0..50)
        .map(|i| {
            let value = format!("{topic} {i}");
            producer.send(
                topic,
                Some(i % 2),
                Some(b"k"),
                Some(value.as_bytes()),
                &[("h", Some(b"v"))],
            )
        })
        .collect();
    let landed = futures::future::try_join_all(sends).await.unwrap();
    assert!(landed.iter().all(|l| l.offset >= 0));
    producer.close().await.unwrap();

    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    consumer.assign(topic, None, Seek::Earliest).await.unwrap();
    let mut records = Vec::new();
    while records.len() < 50 {
        let polled = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert!(!polled.is_empty());
        records.extend(polled);
    }
    for r in &records {
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.headers, [(b"h".to_vec(), Some(b"v".to_vec()))]);
        let i: i32 = String::from_utf8_lossy(r.value.as_ref().unwrap())
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(i % 2, r.partition);
        assert!(r.timestamp > 0);
    }
    // Seek by timestamp: everything is at or after a time before the sends.
    consumer.seek(topic, 0, Seek::Timestamp(1)).await.unwrap();
    assert_eq!(consumer.position(topic, 0), Some(0));
    consumer.seek(topic, 0, Seek::Latest).await.unwrap();
    assert_eq!(consumer.position(topic, 0), Some(25));
}

#[test]
fn blocking() {
    let broker = Broker::start(2);
    futures::executor::block_on(round_trip(broker.client(), "blocking"));
}

#[test]
fn tokio() {
    let broker = Broker::start(2);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(round_trip(broker.client(), "tokio"));
}

#[test]
fn glommio() {
    let broker = Broker::start(2);
    let client = broker.client();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .spawn(move || round_trip(client, "glommio"))
        .unwrap()
        .join()
        .unwrap();
}
