//! The idempotent producer end to end, against real `fjord serve`
//! processes: lost produce answers (a proxy swallows them) and a broker
//! killed mid-stream are retried through, and the log holds every record
//! exactly once, in order; and the broker's own checks on raw batches
//! (duplicates, gaps, fenced epochs), also after a restart.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Broker, Launch, free_port};
use fjord_client::producer::{produce_request, produce_result};
use fjord_client::transport::Lane;
use fjord_client::{
    Admin, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig,
    Seek,
};
use fjord_core::BatchBuilder;
use fjord_net::{ErrorCode, api, frame, wire};
use futures::executor::block_on;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const TOPIC: &str = "idem";

/// What the fault proxy did.
#[derive(Default)]
struct Faults {
    produce_answers: AtomicUsize,
    swallowed: AtomicUsize,
    /// Told of each swallowed answer.
    notify: Option<std::sync::Mutex<std::sync::mpsc::Sender<()>>>,
}

/// Forwards `listen` to `upstream` on threads of its own. Every `every`-th
/// produce answer (at most `max` of them) is swallowed with everything
/// after it on that connection, so the client times out and retries over
/// a new one, while the broker did write the batch.
fn proxy(listen: SocketAddr, upstream: SocketAddr, every: usize, max: usize, faults: Arc<Faults>) {
    let listener = TcpListener::bind(listen).unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(broker) = TcpStream::connect(upstream) else {
                continue;
            };
            let (mut c_in, mut b_out) = (client.try_clone().unwrap(), broker.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut b_out);
                let _ = b_out.shutdown(Shutdown::Write);
            });
            let faults = faults.clone();
            std::thread::spawn(move || answers(broker, client, every, max, &faults));
        }
    });
}

/// Copies answers frame by frame, swallowing as [`proxy`] says.
fn answers(
    mut broker: TcpStream,
    mut client: TcpStream,
    every: usize,
    max: usize,
    faults: &Faults,
) {
    let limits = frame::Limits {
        frame_bytes_max: usize::MAX >> 1,
        ..frame::Limits::default()
    };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut swallowing = false;
    let mut passing = false;
    loop {
        let n = match broker.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if swallowing {
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        if passing {
            if client.write_all(&buf).is_err() {
                return;
            }
            buf.clear();
            continue;
        }
        loop {
            let (frame, used) = match frame::decode(&buf, &limits) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                // Not the client protocol (a peer link between nodes):
                // passed through untouched.
                Err(_) => {
                    passing = true;
                    if client.write_all(&buf).is_err() {
                        return;
                    }
                    buf.clear();
                    break;
                }
            };
            let produce = frame
                .response_header()
                .is_ok_and(|h| h.body_type() == wire::Response::ProduceResponse);
            if produce {
                let count = faults.produce_answers.fetch_add(1, Ordering::SeqCst) + 1;
                if count.is_multiple_of(every) && faults.swallowed.load(Ordering::SeqCst) < max {
                    faults.swallowed.fetch_add(1, Ordering::SeqCst);
                    if let Some(notify) = &faults.notify {
                        let _ = notify.lock().unwrap().send(());
                    }
                    swallowing = true;
                    break;
                }
            }
            if client.write_all(&buf[..used]).is_err() {
                return;
            }
            buf.drain(..used);
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}

fn value(i: usize) -> Vec<u8> {
    format!("r{i:06}").into_bytes()
}

/// Sends `count` records to partition 0, pausing now and then so that
/// the stream lasts; checks that their offsets grow, and with `contiguous`
/// that record i landed at offset i (a replicated log also holds its
/// leaders' control batches).
fn produce_in_order(producer: &Producer, count: usize, pause_every: usize, contiguous: bool) {
    let sends: Vec<_> = (0..count)
        .map(|i| {
            if i % pause_every == pause_every - 1 {
                std::thread::sleep(Duration::from_millis(10));
            }
            producer.send(TOPIC, Some(0), None, Some(&value(i)), &[])
        })
        .collect();
    block_on(producer.flush()).unwrap();
    let mut last = -1;
    for (i, sent) in sends.into_iter().enumerate() {
        let meta = block_on(sent).unwrap_or_else(|e| panic!("record {i}: {e}"));
        assert!(
            meta.offset > last,
            "record {i} at {} after {last}",
            meta.offset
        );
        if contiguous {
            assert_eq!(meta.offset, i as i64, "record {i} written once, in order");
        }
        last = meta.offset;
    }
}

/// Reads the whole partition and checks it holds each record once, in
/// order, and nothing else.
fn assert_exactly_once(client: &Client, count: usize) {
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    block_on(consumer.assign(TOPIC, Some(&[0]), Seek::Earliest)).unwrap();
    let mut values = Vec::new();
    loop {
        let polled = block_on(consumer.poll(Duration::from_secs(2))).unwrap();
        if polled.is_empty() {
            break;
        }
        values.extend(polled.into_iter().map(|r| (r.offset, r.value.unwrap())));
    }
    assert_eq!(values.len(), count, "records in the log");
    for (i, (offset, v)) in values.iter().enumerate() {
        assert_eq!(
            v.as_slice(),
            value(i).as_slice(),
            "record {i} at offset {offset}"
        );
    }
}

const UPSTREAM_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A node on 127.0.0.2 that advertises 127.0.0.1, where proxies for its
/// listener and shard ports stand, so that clients' produce traffic (and
/// peers' links) cross them; its proxied address.
fn proxied_node(
    cores: usize,
    extra: &[&str],
    every: usize,
    max: usize,
    faults: &Arc<Faults>,
) -> (Broker, SocketAddr) {
    let port = free_port();
    let proxied = SocketAddr::from(([127, 0, 0, 1], port));
    let advertise = proxied.to_string();
    let broker = Broker::launch(
        cores,
        &[&["--advertise", &advertise][..], extra].concat(),
        Launch {
            listen: Some(SocketAddr::new(UPSTREAM_IP, port)),
            ..Launch::default()
        },
    );
    let shard_ports = (0..cores as u16).map(|i| broker.shard_port_base() + i);
    for p in std::iter::once(port).chain(shard_ports) {
        let listen = SocketAddr::from(([127, 0, 0, 1], p));
        proxy(
            listen,
            SocketAddr::new(UPSTREAM_IP, p),
            every,
            max,
            faults.clone(),
        );
    }
    (broker, proxied)
}

/// A client of `bootstrap` that gives up on an answer after `timeout`.
fn client_of(bootstrap: Vec<SocketAddr>, timeout: Duration) -> Client {
    let mut config = ClientConfig::with_bootstrap(bootstrap);
    config.request_timeout = timeout;
    Client::new(config).unwrap()
}

/// [`proxied_node`] on its own, and a client of it.
fn proxied_broker(cores: usize, every: usize, max: usize, faults: Arc<Faults>) -> (Broker, Client) {
    let (broker, proxied) = proxied_node(cores, &[], every, max, &faults);
    (broker, client_of(vec![proxied], Duration::from_millis(700)))
}

fn small_batches() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(1),
        batch_size: 256,
        retry_backoff: Duration::from_millis(20),
        ..ProducerConfig::default()
    }
}

#[test]
fn swallowed_answers_are_retried_and_each_record_is_written_once_in_order() {
    let faults = Arc::new(Faults::default());
    let (_broker, client) = proxied_broker(1, 7, 8, faults.clone());
    block_on(Admin::new(client.clone()).create_topic(TOPIC, 1, &[])).unwrap();
    let producer = Producer::new(&client, small_batches()).unwrap();
    let count = 3000;
    produce_in_order(&producer, count, 100, true);
    let swallowed = faults.swallowed.load(Ordering::SeqCst);
    assert!(swallowed >= 5, "the proxy swallowed {swallowed} answers");
    assert_exactly_once(&client, count);
}

#[test]
fn a_broker_killed_mid_stream_rebuilds_producer_state_and_writes_each_record_once() {
    // Each kill follows a swallowed answer: the broker wrote the batch,
    // the producer does not know it, and only the producer state rebuilt
    // from the log at restart keeps its retry from being written twice.
    let (tx, swallowed) = std::sync::mpsc::channel();
    let faults = Arc::new(Faults {
        notify: Some(std::sync::Mutex::new(tx)),
        ..Faults::default()
    });
    let kills = 3;
    let (mut broker, client) = proxied_broker(2, 11, kills, faults);
    block_on(Admin::new(client.clone()).create_topic(TOPIC, 1, &[])).unwrap();
    let producer = Producer::new(&client, small_batches()).unwrap();
    let count = 4000;
    let sending = {
        let producer = producer.clone();
        std::thread::spawn(move || produce_in_order(&producer, count, 50, true))
    };
    for _ in 0..kills {
        swallowed.recv_timeout(Duration::from_secs(60)).unwrap();
        broker.kill();
        broker.restart();
    }
    sending.join().unwrap();
    assert_exactly_once(&client, count);
}

/// InitProducerId with `(id, epoch)`.
fn init(client: &Client, addr: SocketAddr, id: i64, epoch: i16) -> (i64, i16) {
    let body = wire::RequestT::InitProducerIdRequest(Box::new(wire::InitProducerIdRequestT {
        producer_id: id,
        producer_epoch: epoch,
    }));
    let response = block_on(client.request(addr, Lane::Prompt, body, Vec::new())).unwrap();
    let wire::ResponseT::InitProducerIdResponse(r) = response.unpack().unwrap().0 else {
        panic!("not an InitProducerId answer");
    };
    assert_eq!(r.error_code, 0);
    (r.producer_id, r.producer_epoch)
}

/// Produces one batch of `records` records as producer `(id, epoch)` at
/// sequence `seq`; its base offset or the broker's error.
fn raw_produce(
    client: &Client,
    addr: SocketAddr,
    (id, epoch): (i64, i16),
    seq: i32,
    records: usize,
) -> Result<i64, ErrorCode> {
    let mut builder = BatchBuilder::new().producer(id, epoch, seq);
    // Expiry goes by the batches' timestamps: these are of now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for _ in 0..records {
        builder.push(now, None, Some(b"raw"), &[]);
    }
    let batch = builder.build();
    let body = produce_request(
        TOPIC,
        0,
        api::ACKS_ALL,
        client.config().request_timeout,
        batch.len(),
    );
    let response = block_on(client.request(addr, Lane::Prompt, body, batch)).unwrap();
    produce_result(&response, TOPIC, 0).map_err(|e| match e {
        ClientError::Broker { code, .. } => code,
        other => panic!("{other}"),
    })
}

fn log_end(client: &Client) -> i64 {
    let topic = block_on(Admin::new(client.clone()).describe_topic(TOPIC)).unwrap();
    topic.partitions[0].log_end_offset
}

#[test]
fn the_broker_dedups_refuses_gaps_and_fences_old_epochs_across_restarts() {
    let mut broker = Broker::start(1);
    let client = broker.client();
    let addr = broker.addr;
    block_on(Admin::new(client.clone()).create_topic(TOPIC, 1, &[])).unwrap();
    let first = init(&client, addr, -1, -1);
    assert!(first.0 >= 0 && first.1 == 0, "{first:?}");
    let other = init(&client, addr, -1, -1);
    assert_ne!(other.0, first.0, "ids are unique");

    assert_eq!(raw_produce(&client, addr, first, 0, 3), Ok(0));
    assert_eq!(raw_produce(&client, addr, first, 3, 2), Ok(3));
    // A duplicate answers its first offset and writes nothing.
    assert_eq!(raw_produce(&client, addr, first, 0, 3), Ok(0));
    assert_eq!(raw_produce(&client, addr, first, 3, 2), Ok(3));
    assert_eq!(log_end(&client), 5);
    // A gap.
    assert_eq!(
        raw_produce(&client, addr, first, 9, 1),
        Err(ErrorCode::OutOfOrderSequenceNumber)
    );
    // Batches without a producer id are never deduplicated.
    assert_eq!(raw_produce(&client, addr, (-1, -1), -1, 1), Ok(5));
    assert_eq!(raw_produce(&client, addr, (-1, -1), -1, 1), Ok(6));

    // KIP-360: the same id, the next epoch; it starts at sequence 0 and
    // fences the old epoch.
    let bumped = init(&client, addr, first.0, first.1);
    assert_eq!(bumped, (first.0, first.1 + 1));
    assert_eq!(
        raw_produce(&client, addr, bumped, 4, 1),
        Err(ErrorCode::OutOfOrderSequenceNumber)
    );
    assert_eq!(raw_produce(&client, addr, bumped, 0, 2), Ok(7));
    assert_eq!(
        raw_produce(&client, addr, first, 5, 1),
        Err(ErrorCode::InvalidProducerEpoch)
    );
    assert_eq!(
        init(&client, addr, 5, i16::MAX - 1).1,
        0,
        "a new id past the last epoch"
    );

    // After a kill: the state comes back from the log.
    broker.kill();
    broker.restart();
    let client = broker.client();
    assert_eq!(raw_produce(&client, addr, bumped, 0, 2), Ok(7));
    assert_eq!(
        raw_produce(&client, addr, first, 5, 1),
        Err(ErrorCode::InvalidProducerEpoch)
    );
    assert_eq!(raw_produce(&client, addr, bumped, 2, 1), Ok(9));
    assert_eq!(log_end(&client), 10);
    let after = init(&client, addr, -1, -1);
    assert!(
        after.0 != first.0 && after.0 != other.0,
        "ids unique across restarts"
    );

    // After a clean stop (a snapshot at close) as well.
    broker.terminate();
    let snapshots = std::fs::read_dir(&broker.partition_dirs(TOPIC)[0])
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".snapshot")
        })
        .count();
    assert_eq!(snapshots, 1, "a producer snapshot written at close");
    broker.restart();
    let client = broker.client();
    assert_eq!(raw_produce(&client, addr, bumped, 2, 1), Ok(9));
    assert_eq!(raw_produce(&client, addr, bumped, 3, 1), Ok(10));
}

#[test]
fn an_idle_producer_expires_and_is_then_taken_at_any_sequence() {
    let broker = Broker::start_with(
        1,
        &[
            "--producer-id-expiration-ms",
            "2000",
            "--retention-check-interval-ms",
            "100",
        ],
    );
    let client = broker.client();
    let addr = broker.addr;
    block_on(Admin::new(client.clone()).create_topic(TOPIC, 1, &[])).unwrap();
    let producer = init(&client, addr, -1, -1);
    assert_eq!(raw_produce(&client, addr, producer, 0, 1), Ok(0));
    assert_eq!(
        raw_produce(&client, addr, producer, 5, 1),
        Err(ErrorCode::OutOfOrderSequenceNumber)
    );
    std::thread::sleep(Duration::from_secs(3));
    // Forgotten: Kafka ≥ 2.5 takes an unknown producer at any sequence.
    assert_eq!(raw_produce(&client, addr, producer, 5, 1), Ok(1));
}

#[test]
fn idempotence_with_acks_one_is_a_configuration_error() {
    let broker = Broker::start(1);
    let config = ProducerConfig {
        acks: api::ACKS_LEADER,
        ..ProducerConfig::default()
    };
    assert!(matches!(
        Producer::new(&broker.client(), config),
        Err(ClientError::Config(_))
    ));
}

#[test]
fn a_killed_leader_hands_over_the_producer_state_of_its_log() {
    // Each kill follows a swallowed answer: the batch is committed (the
    // answer is acks=all), the producer does not know it, and only the new
    // leader's producer state — kept as a follower, from the Raft log —
    // keeps the retry from a second copy.
    let (tx, swallowed) = std::sync::mpsc::channel();
    let faults = Arc::new(Faults {
        notify: Some(std::sync::Mutex::new(tx)),
        ..Faults::default()
    });
    let kills = 2;
    let (first, seed) = proxied_node(1, &["--node-id", "1"], 13, kills, &faults);
    let mut nodes = vec![first];
    let mut bootstrap = vec![seed];
    for id in ["2", "3"] {
        let args = ["--node-id", id, "--seeds", &seed.to_string()];
        let (node, addr) = proxied_node(1, &args, 13, kills, &faults);
        nodes.push(node);
        bootstrap.push(addr);
    }
    let client = client_of(bootstrap, Duration::from_secs(2));
    let admin = Admin::new(client.clone());
    block_on(admin.create_replicated_topic(TOPIC, 1, Some(3), &[])).unwrap();
    let producer = Producer::new(&client, small_batches()).unwrap();
    let count = 3000;
    let sending = {
        let producer = producer.clone();
        std::thread::spawn(move || produce_in_order(&producer, count, 50, false))
    };
    for _ in 0..kills {
        swallowed.recv_timeout(Duration::from_secs(60)).unwrap();
        let leader = block_on(admin.describe_topic(TOPIC)).unwrap().partitions[0].leader;
        let node = &mut nodes[usize::try_from(leader - 1).unwrap()];
        node.kill();
        node.restart();
    }
    sending.join().unwrap();
    assert_exactly_once(&client, count);
}

#[test]
fn after_a_batch_fails_for_good_the_next_epoch_starts_over_and_nothing_is_lost() {
    let broker = Broker::start(1);
    let client = broker.client();
    let configs = [("max.message.bytes".to_owned(), "1024".to_owned())];
    block_on(Admin::new(client.clone()).create_topic(TOPIC, 1, &configs)).unwrap();
    let producer = Producer::new(&client, small_batches()).unwrap();
    let send = |i: usize| producer.send(TOPIC, Some(0), None, Some(&value(i)), &[]);
    let first: Vec<_> = (0..10).map(send).collect();
    block_on(producer.flush()).unwrap();
    // Refused for good: the producer bumps its epoch, sequences restart.
    let big = producer.send(TOPIC, Some(0), None, Some(&[0u8; 4096]), &[]);
    block_on(producer.flush()).unwrap();
    assert!(matches!(
        block_on(big),
        Err(ClientError::Broker {
            code: ErrorCode::MessageTooLarge,
            ..
        })
    ));
    let second: Vec<_> = (10..20).map(send).collect();
    block_on(producer.flush()).unwrap();
    for (i, sent) in first.into_iter().chain(second).enumerate() {
        assert_eq!(block_on(sent).unwrap().offset, i as i64);
    }
    assert_exactly_once(&client, 20);
}
