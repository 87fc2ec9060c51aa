//! Hostile input over raw sockets: garbage, truncated frames, absurd
//! lengths, bad CRCs, unknown APIs, wrong versions. Each connection gets an
//! error or is closed; the broker and every other connection carry on, and
//! nothing acknowledged is lost. Then many connections, the connection
//! limit, and a stalled reader that must not stall anyone else.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::Broker;
use fjord_client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek};
use fjord_net::{ErrorCode, api, frame, wire};
use futures::executor::block_on;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn connect(broker: &Broker) -> TcpStream {
    let stream = TcpStream::connect(broker.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn request(correlation_id: u32, version: u16, body: wire::RequestT, payload: &[u8]) -> Vec<u8> {
    let header = wire::RequestHeaderT {
        version,
        correlation_id,
        client_id: Some("hostile".into()),
        body,
    };
    let mut bytes = api::request_head(&header, payload.len());
    bytes.extend_from_slice(payload);
    bytes
}

fn api_versions(correlation_id: u32) -> Vec<u8> {
    request(
        correlation_id,
        0,
        wire::RequestT::ApiVersionsRequest(Box::default()),
        &[],
    )
}

/// Reads one response frame; `None` when the broker closed the stream.
fn read_response(stream: &mut TcpStream) -> Option<(u32, i16, Vec<u8>)> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    let mut buf = prefix.to_vec();
    buf.resize(4 + len, 0);
    stream.read_exact(&mut buf[4..]).ok()?;
    let (frame, _) = frame::decode(&buf, &frame::Limits::default())
        .unwrap()
        .unwrap();
    let header = frame.response_header().unwrap();
    Some((header.correlation_id(), header.error_code(), buf.clone()))
}

fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    // Either EOF (Ok) or a reset; what matters is that it ends.
    let _ = stream.read_to_end(&mut rest);
    assert!(read_response(stream).is_none());
}

fn assert_serves(stream: &mut TcpStream, correlation_id: u32) {
    stream.write_all(&api_versions(correlation_id)).unwrap();
    let (id, code, _) = read_response(stream).expect("a response");
    assert_eq!((id, code), (correlation_id, 0));
}

fn batch(value: &[u8]) -> Vec<u8> {
    let mut builder = fjord_core::BatchBuilder::new();
    builder.push(1, None, Some(value), &[]);
    builder.build()
}

fn produce_request(correlation_id: u32, topic: &str, batch: &[u8]) -> Vec<u8> {
    let timeout = Duration::from_secs(30);
    let body = fjord_client::producer::produce_request(topic, 0, 1, timeout, batch.len());
    request(correlation_id, 0, body, batch)
}

fn produce_error(response: &[u8]) -> i16 {
    let (frame, _) = frame::decode(response, &frame::Limits::default())
        .unwrap()
        .unwrap();
    let header = frame.response_header().unwrap();
    let body = header.body_as_produce_response().unwrap();
    body.topics()
        .unwrap()
        .get(0)
        .partitions()
        .unwrap()
        .get(0)
        .error_code()
}

#[test]
fn hostile_input_is_refused_and_nothing_is_lost() {
    let broker = Broker::start(2);
    let client = broker.client();
    block_on(Admin::new(client.clone()).create_topic("safe", 1, &[])).unwrap();
    let producer = Producer::new(&client, ProducerConfig::default()).unwrap();
    let acked: Vec<_> = (0..50)
        .map(|i| producer.send("safe", None, None, Some(format!("v{i}").as_bytes()), &[]))
        .collect();
    for sent in acked {
        block_on(sent).unwrap();
    }
    // A bystander connection that must keep working throughout.
    let mut bystander = connect(&broker);
    assert_serves(&mut bystander, 1);

    // Garbage: an absurd length prefix gets MESSAGE_TOO_LARGE, then close.
    let mut s = connect(&broker);
    s.write_all(&[0xff; 64]).unwrap();
    let (_, code, _) = read_response(&mut s).expect("an error before closing");
    assert_eq!(code, ErrorCode::MessageTooLarge.code());
    assert_closed(&mut s);

    // A plausible length with junk for a header: INVALID_REQUEST, close.
    let mut s = connect(&broker);
    let mut junk = Vec::new();
    frame::encode_head(&[0xab; 40], 0, &mut junk);
    s.write_all(&junk).unwrap();
    let (_, code, _) = read_response(&mut s).expect("an error before closing");
    assert_eq!(code, ErrorCode::InvalidRequest.code());
    assert_closed(&mut s);

    // Header length past the frame.
    let mut s = connect(&broker);
    let mut bad = 8u32.to_be_bytes().to_vec();
    bad.extend_from_slice(&1000u32.to_be_bytes());
    bad.extend_from_slice(&[0; 4]);
    s.write_all(&bad).unwrap();
    let (_, code, _) = read_response(&mut s).expect("an error before closing");
    assert_eq!(code, ErrorCode::InvalidRequest.code());
    assert_closed(&mut s);

    // Truncated frame, then the client goes quiet and half-closes.
    let mut s = connect(&broker);
    let whole = api_versions(5);
    s.write_all(&whole[..whole.len() - 3]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_closed(&mut s);

    // Wrong version: UNSUPPORTED_VERSION for that request; the connection
    // stays usable.
    let mut s = connect(&broker);
    s.write_all(&request(
        7,
        9,
        wire::RequestT::ApiVersionsRequest(Box::default()),
        &[],
    ))
    .unwrap();
    let (id, code, _) = read_response(&mut s).unwrap();
    assert_eq!((id, code), (7, ErrorCode::UnsupportedVersion.code()));
    assert_serves(&mut s, 8);

    // Unknown API (a union tag this build does not have).
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let body = wire::ApiVersionsRequest::create(&mut fbb, &wire::ApiVersionsRequestArgs {});
    let root = wire::RequestHeader::create(
        &mut fbb,
        &wire::RequestHeaderArgs {
            version: 0,
            correlation_id: 11,
            client_id: None,
            body_type: wire::Request(99),
            body: Some(body.as_union_value()),
        },
    );
    fbb.finish(root, None);
    let mut unknown = Vec::new();
    frame::encode_head(fbb.finished_data(), 0, &mut unknown);
    let mut s = connect(&broker);
    s.write_all(&unknown).unwrap();
    let (id, code, _) = read_response(&mut s).expect("an answer");
    assert_eq!((id, code), (11, ErrorCode::InvalidRequest.code()));
    assert_serves(&mut s, 12);

    // Bad CRC: CORRUPT_MESSAGE for the partition; nothing is appended and
    // the connection goes on.
    let mut s = connect(&broker);
    let mut corrupt = batch(b"corrupt");
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    s.write_all(&produce_request(20, "safe", &corrupt)).unwrap();
    let (id, code, response) = read_response(&mut s).unwrap();
    assert_eq!((id, code), (20, 0));
    assert_eq!(produce_error(&response), ErrorCode::CorruptMessage.code());
    // A payload range past the payload.
    let mut lying = produce_request(21, "safe", &batch(b"x"));
    lying.truncate(lying.len() - 5);
    let len = (lying.len() - 4) as u32;
    lying[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&lying).unwrap();
    let (id, _, response) = read_response(&mut s).unwrap();
    assert_eq!(id, 21);
    assert_eq!(produce_error(&response), ErrorCode::CorruptMessage.code());
    // Unknown topic.
    s.write_all(&produce_request(22, "nope", &batch(b"x")))
        .unwrap();
    let (_, _, response) = read_response(&mut s).unwrap();
    assert_eq!(
        produce_error(&response),
        ErrorCode::UnknownTopicOrPartition.code()
    );
    assert_serves(&mut s, 23);

    // The broker is fine, the bystander is fine, and the data is intact.
    assert_serves(&mut bystander, 2);
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign("safe", None, Seek::Earliest)).unwrap();
    let records = block_on(consumer.poll(Duration::from_secs(5))).unwrap();
    let values: Vec<Vec<u8>> = records.into_iter().map(|r| r.value.unwrap()).collect();
    let want: Vec<Vec<u8>> = (0..50).map(|i| format!("v{i}").into_bytes()).collect();
    assert_eq!(
        values, want,
        "exactly the acknowledged records, nothing corrupt"
    );
}

#[test]
fn many_connections_and_the_connection_limit() {
    let broker = Broker::start_with(1, &["--max-connections-per-shard", "300"]);
    let mut streams: Vec<TcpStream> = (0..300).map(|_| connect(&broker)).collect();
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(&api_versions(i as u32)).unwrap();
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let (id, code, _) = read_response(s).unwrap();
        assert_eq!((id, code), (i as u32, 0));
    }
    // The 301st is closed at once.
    let mut over = connect(&broker);
    let _ = over.write_all(&api_versions(0));
    assert_closed(&mut over);
    // One leaves, and a new one is served.
    drop(streams.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = connect(&broker);
    assert_serves(&mut again, 1);
}

#[test]
fn a_stalled_reader_stalls_nobody_else() {
    let broker = Broker::start(1);
    let client = broker.client();
    block_on(Admin::new(client.clone()).create_topic("big", 1, &[])).unwrap();
    let producer = Producer::new(&client, ProducerConfig::default()).unwrap();
    let value = vec![b'x'; 100_000];
    for _ in 0..80 {
        drop(producer.send("big", None, None, Some(&value), &[]));
    }
    block_on(producer.flush()).unwrap();

    // Pipeline fetches of ~8 MB each and never read an answer.
    let mut stalled = connect(&broker);
    let fetch = wire::RequestT::FetchRequest(Box::new(wire::FetchRequestT {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 16 << 20,
        topics: Some(vec![wire::FetchTopicT {
            name: Some("big".into()),
            partitions: Some(vec![wire::FetchPartitionT {
                partition: 0,
                fetch_offset: 0,
                max_bytes: 16 << 20,
            }]),
        }]),
    }));
    let one = request(1, 0, fetch, &[]);
    stalled
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for _ in 0..100 {
        if stalled.write_all(&one).is_err() {
            break; // the broker stopped reading: backpressure
        }
    }

    // Everyone else is served.
    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign("big", None, Seek::Earliest)).unwrap();
    let records = block_on(consumer.poll(Duration::from_secs(5))).unwrap();
    assert!(!records.is_empty());
    let sent = block_on(producer.send("big", None, None, Some(b"after"), &[])).unwrap();
    assert_eq!(sent.offset, 80);
    let mut other = connect(&broker);
    assert_serves(&mut other, 3);
    drop(stalled);
}

#[test]
fn a_frame_of_the_largest_size_is_served_and_one_byte_more_is_refused() {
    let broker = Broker::start_with(
        1,
        &["--max-frame-bytes", "2048", "--max-inflight-bytes", "2048"],
    );
    // ApiVersions padded with payload to a frame_len of exactly the limit:
    // with its 4-byte prefix it is larger than the in-flight budget.
    let head_len = api_versions(1).len();
    let fill = vec![0u8; 2048 + 4 - head_len];
    let largest = request(
        1,
        0,
        wire::RequestT::ApiVersionsRequest(Box::default()),
        &fill,
    );
    assert_eq!(largest.len(), 2048 + 4);
    let mut s = connect(&broker);
    s.write_all(&largest).unwrap();
    let (id, code, _) = read_response(&mut s).expect("served");
    assert_eq!((id, code), (1, 0));
    assert_serves(&mut s, 2);

    let too_large = request(
        3,
        0,
        wire::RequestT::ApiVersionsRequest(Box::default()),
        &[fill, vec![0]].concat(),
    );
    s.write_all(&too_large).unwrap();
    let (_, code, _) = read_response(&mut s).expect("an error before closing");
    assert_eq!(code, ErrorCode::MessageTooLarge.code());
    assert_closed(&mut s);
}
