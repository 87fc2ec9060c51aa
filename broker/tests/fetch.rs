//! Fetch against a real broker: long polls that answer when data arrives or
//! when the wait is over, the response byte budget, and fetches served by
//! another shard than the partition's.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::Broker;
use fjord_client::transport::{Lane, Response};
use fjord_client::{Admin, Client, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek};
use fjord_net::wire;
use futures::executor::block_on;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn fetch(
    client: &Client,
    addr: SocketAddr,
    wait_ms: i32,
    max_bytes: i32,
    partitions: &[i32],
) -> Response {
    let body = wire::RequestT::FetchRequest(Box::new(wire::FetchRequestT {
        max_wait_ms: wait_ms,
        min_bytes: 1,
        max_bytes,
        topics: Some(vec![wire::FetchTopicT {
            name: Some("t".into()),
            partitions: Some(
                partitions
                    .iter()
                    .map(|&partition| wire::FetchPartitionT {
                        partition,
                        fetch_offset: 0,
                        max_bytes: 1 << 20,
                    })
                    .collect(),
            ),
        }]),
    }));
    block_on(client.request(addr, Lane::LongPoll, body, Vec::new())).unwrap()
}

/// Per partition: (error code, high watermark, batch bytes).
fn results(response: &Response) -> Vec<(i16, i64, Vec<u8>)> {
    let (body, payload) = response.unpack().unwrap();
    let wire::ResponseT::FetchResponse(body) = body else {
        panic!("not a fetch response")
    };
    body.topics.unwrap()[0]
        .partitions
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| {
            let bytes = Response::range(payload, p.records.as_ref())
                .unwrap()
                .to_vec();
            (p.error_code, p.high_watermark, bytes)
        })
        .collect()
}

fn setup() -> (Broker, Client, Producer) {
    let broker = Broker::start(2);
    let client = broker.client();
    block_on(Admin::new(client.clone()).create_topic("t", 2, &[])).unwrap();
    let producer = Producer::new(&client, ProducerConfig::default()).unwrap();
    (broker, client, producer)
}

#[test]
fn long_poll_answers_when_data_arrives_or_the_wait_ends() {
    let (broker, client, producer) = setup();
    // Nothing there: the answer comes after the wait, empty.
    let start = Instant::now();
    let response = fetch(&client, broker.addr, 300, 1 << 20, &[0]);
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(results(&response), [(0, 0, Vec::new())]);

    // Data produced during a long wait ends it.
    let late = producer.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        block_on(late.send("t", Some(0), None, Some(b"late"), &[])).unwrap();
    });
    let start = Instant::now();
    let response = fetch(&client, broker.addr, 20_000, 1 << 20, &[0]);
    writer.join().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "answered by the data, not the wait"
    );
    let got = results(&response);
    assert_eq!((got[0].0, got[0].1), (0, 1));
    let batch = fjord_core::Batch::validate(&got[0].2).unwrap();
    assert_eq!(
        batch.records().unwrap().next().unwrap().unwrap().value,
        Some(&b"late"[..])
    );
}

#[test]
fn the_response_budget_and_other_shards_partitions() {
    let (broker, client, producer) = setup();
    for p in [0, 1] {
        for i in 0..3 {
            block_on(producer.send("t", Some(p), None, Some(format!("{p}-{i}").as_bytes()), &[]))
                .unwrap();
        }
    }
    // A 1-byte budget: the first partition still gets a batch (as Kafka),
    // the second only its offsets.
    let got = results(&fetch(&client, broker.addr, 0, 1, &[0, 1]));
    assert!(!got[0].2.is_empty());
    assert_eq!((got[1].0, got[1].1, got[1].2.len()), (0, 3, 0));

    // Both partitions through each shard's own port: one of the two is the
    // other shard's and is copied across; the bytes are the same.
    let metadata = block_on(client.metadata(None)).unwrap();
    let ports = metadata.brokers.unwrap()[0].shard_ports.clone().unwrap();
    let mut answers = Vec::new();
    for port in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        answers.push(results(&fetch(&client, addr, 0, 1 << 20, &[0, 1])));
    }
    assert_eq!(answers[0], answers[1]);
    for (p, (code, high_watermark, bytes)) in answers[0].iter().enumerate() {
        assert_eq!((*code, *high_watermark), (0, 3));
        let values: Vec<Vec<u8>> = fjord_core::batch::batches(bytes)
            .flat_map(|b| {
                b.records()
                    .unwrap()
                    .map(|r| r.unwrap().value.unwrap().to_vec())
                    .collect::<Vec<_>>()
            })
            .collect();
        let want: Vec<Vec<u8>> = (0..3).map(|i| format!("{p}-{i}").into_bytes()).collect();
        assert_eq!(values, want);
    }
}

#[test]
fn one_produce_request_for_partitions_on_both_shards() {
    let (broker, client, _producer) = setup();
    let batches: Vec<Vec<u8>> = (0..2)
        .map(|p| {
            let mut builder = fjord_core::BatchBuilder::new();
            builder.push(1, None, Some(format!("to {p}").as_bytes()), &[]);
            builder.build()
        })
        .collect();
    let payload = [batches[0].clone(), batches[1].clone()].concat();
    let body = wire::RequestT::ProduceRequest(Box::new(wire::ProduceRequestT {
        acks: 1,
        timeout_ms: 1000,
        topics: Some(vec![wire::ProduceTopicT {
            name: Some("t".into()),
            partitions: Some(
                (0..2)
                    .map(|p| wire::ProducePartitionT {
                        partition: p,
                        records: Some(wire::PayloadRangeT {
                            offset: (p as usize * batches[0].len()) as u32,
                            len: batches[p as usize].len() as u32,
                        }),
                    })
                    .collect(),
            ),
        }]),
    }));
    // On the node port: whichever shard takes it, one partition is the
    // other shard's.
    let response = block_on(client.request(broker.addr, Lane::Prompt, body, payload)).unwrap();
    let wire::ResponseT::ProduceResponse(body) = response.unpack().unwrap().0 else {
        panic!("not a produce response")
    };
    let produced = body.topics.unwrap()[0].partitions.clone().unwrap();
    assert_eq!(produced.len(), 2);
    for (p, result) in produced.iter().enumerate() {
        assert_eq!(
            (result.partition, result.error_code, result.base_offset),
            (p as i32, 0, 0)
        );
    }
    let got = results(&fetch(&client, broker.addr, 0, 1 << 20, &[0, 1]));
    for (p, (_, high_watermark, bytes)) in got.iter().enumerate() {
        assert_eq!(*high_watermark, 1);
        let batch = fjord_core::Batch::validate(bytes).unwrap();
        let value = batch
            .records()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .value
            .unwrap()
            .to_vec();
        assert_eq!(value, format!("to {p}").into_bytes());
    }
}

#[test]
fn a_position_outside_the_log_resets_or_fails_as_configured() {
    let (_broker, client, producer) = setup();
    for i in 0..5 {
        block_on(producer.send("t", Some(0), None, Some(format!("r{i}").as_bytes()), &[])).unwrap();
    }
    let consumer_at_100 = |reset| {
        let config = ConsumerConfig {
            offset_reset: reset,
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(&client, config);
        block_on(consumer.assign("t", Some(&[0]), Seek::Offset(100))).unwrap();
        consumer
    };
    // Kafka's auto.offset.reset=earliest: the poll that finds the position
    // outside the log moves it to the start; the records follow.
    let mut consumer = consumer_at_100(Some(Seek::Earliest));
    let mut offsets = Vec::new();
    for _ in 0..3 {
        if offsets.len() == 5 {
            break;
        }
        offsets.extend(
            block_on(consumer.poll(Duration::from_secs(2)))
                .unwrap()
                .into_iter()
                .map(|r| r.offset),
        );
    }
    assert_eq!(offsets, [0, 1, 2, 3, 4]);
    // None: the poll fails with OFFSET_OUT_OF_RANGE.
    let error = block_on(consumer_at_100(None).poll(Duration::from_secs(2))).unwrap_err();
    assert!(
        matches!(
            error,
            fjord_client::ClientError::Broker {
                code: fjord_net::ErrorCode::OffsetOutOfRange,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_consumer_hands_out_one_shards_records_without_waiting_for_the_others_poll() {
    // Partitions 0 and 1 live on different shards; each has a long poll in
    // flight. A record on one must come out of `poll` at once, not when
    // the other shard's long poll ends.
    let (_broker, client, producer) = setup();
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign("t", None, Seek::Latest)).unwrap();
    let wait = Duration::from_secs(8);
    for (partition, value) in [(0, &b"first"[..]), (1, &b"second"[..])] {
        let late = producer.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            block_on(late.send("t", Some(partition), None, Some(value), &[])).unwrap();
        });
        let start = Instant::now();
        let records = block_on(consumer.poll(wait)).unwrap();
        writer.join().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "partition {partition}: {:?} (the other shard's poll waits {wait:?})",
            start.elapsed()
        );
        let got: Vec<(i32, i64, Option<Vec<u8>>)> = records
            .into_iter()
            .map(|r| (r.partition, r.offset, r.value))
            .collect();
        assert_eq!(got, [(partition, 0, Some(value.to_vec()))]);
    }
}
