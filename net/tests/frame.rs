//! The native frame codec: round trips with batches carried untouched in the
//! payload, and hostile bytes that must end in errors, never panics.

use fjord_core::BatchBuilder;
use fjord_net::frame::{self, FrameError, Limits};
use fjord_net::wire;
use proptest::prelude::*;

/// A produce request for `topic` with one partition per batch.
fn produce_frame(topic: &str, batches: &[Vec<u8>]) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let mut offset = 0u32;
    let partitions: Vec<_> = batches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let range = wire::PayloadRange::new(offset, b.len() as u32);
            offset += b.len() as u32;
            wire::ProducePartition::create(
                &mut fbb,
                &wire::ProducePartitionArgs {
                    partition: i as i32,
                    records: Some(&range),
                },
            )
        })
        .collect();
    let partitions = fbb.create_vector(&partitions);
    let name = fbb.create_string(topic);
    let topic = wire::ProduceTopic::create(
        &mut fbb,
        &wire::ProduceTopicArgs {
            name: Some(name),
            partitions: Some(partitions),
        },
    );
    let topics = fbb.create_vector(&[topic]);
    let body = wire::ProduceRequest::create(
        &mut fbb,
        &wire::ProduceRequestArgs {
            acks: 1,
            timeout_ms: 30_000,
            topics: Some(topics),
        },
    );
    let client = fbb.create_string("test");
    let header = wire::RequestHeader::create(
        &mut fbb,
        &wire::RequestHeaderArgs {
            version: 0,
            correlation_id: 42,
            client_id: Some(client),
            body_type: wire::Request::ProduceRequest,
            body: Some(body.as_union_value()),
        },
    );
    fbb.finish(header, None);
    let payload: Vec<u8> = batches.concat();
    let mut out = Vec::new();
    frame::encode_head(fbb.finished_data(), payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

fn batch(values: &[&[u8]]) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for v in values {
        builder.push(1, None, Some(v), &[]);
    }
    builder.build()
}

#[test]
fn produce_round_trip_carries_batches_byte_for_byte() {
    let batches = vec![batch(&[b"a", b"bb"]), batch(&[b"ccc"])];
    let mut bytes = produce_frame("events", &batches);
    bytes.extend_from_slice(b"next frame starts here");
    let (frame, used) = frame::decode(&bytes, &Limits::default())
        .expect("valid")
        .expect("complete");
    assert_eq!(used, bytes.len() - 22);
    let header = frame.request_header().expect("header verifies");
    assert_eq!(header.correlation_id(), 42);
    let produce = header.body_as_produce_request().expect("a produce request");
    assert_eq!(produce.acks(), 1);
    let topic = produce.topics().expect("topics").get(0);
    assert_eq!(topic.name(), Some("events"));
    for (i, partition) in topic.partitions().expect("partitions").iter().enumerate() {
        let range = partition.records().expect("records");
        let records = frame.payload_range(range).expect("in payload");
        assert_eq!(records, &batches[i][..]);
        fjord_core::Batch::validate(records).expect("batch intact");
    }
}

#[test]
fn incomplete_frames_wait_for_more_bytes() {
    let bytes = produce_frame("t", &[batch(&[b"x"])]);
    for cut in 0..bytes.len() {
        assert_eq!(
            frame::decode(&bytes[..cut], &Limits::default()),
            Ok(None),
            "cut at {cut}"
        );
    }
}

#[test]
fn absurd_lengths_are_refused_before_any_allocation() {
    let limits = Limits {
        frame_bytes_max: 1 << 20,
        header_bytes_max: 4096,
    };
    let huge = [0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        frame::decode(&huge, &limits),
        Err(FrameError::TooLarge { .. })
    ));
    // A header longer than its frame, and one above the header limit.
    let mut past = Vec::new();
    past.extend_from_slice(&8u32.to_be_bytes());
    past.extend_from_slice(&100u32.to_be_bytes());
    past.extend_from_slice(&[0; 4]);
    assert!(matches!(
        frame::decode(&past, &limits),
        Err(FrameError::HeaderPastFrame { .. })
    ));
    let mut big = Vec::new();
    big.extend_from_slice(&10_000u32.to_be_bytes());
    big.extend_from_slice(&5_000u32.to_be_bytes());
    big.resize(10_004, 0);
    assert!(matches!(
        frame::decode(&big, &limits),
        Err(FrameError::HeaderTooLarge { .. })
    ));
    // A frame too short to hold its header length.
    let tiny = [0, 0, 0, 2, 0, 0];
    assert!(matches!(
        frame::decode(&tiny, &limits),
        Err(FrameError::HeaderPastFrame { .. })
    ));
}

#[test]
fn payload_ranges_outside_the_payload_are_errors() {
    let bytes = produce_frame("t", &[batch(&[b"x"])]);
    let (frame, _) = frame::decode(&bytes, &Limits::default())
        .expect("valid")
        .expect("complete");
    for (offset, len) in [
        (0, u32::MAX),
        (u32::MAX, 1),
        (frame.payload.len() as u32, 1),
    ] {
        let range = wire::PayloadRange::new(offset, len);
        assert!(matches!(
            frame.payload_range(&range),
            Err(FrameError::BadPayloadRange { .. })
        ));
    }
}

#[test]
fn garbage_headers_fail_verification() {
    let mut bytes = Vec::new();
    frame::encode_head(
        &[0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04],
        0,
        &mut bytes,
    );
    let (frame, _) = frame::decode(&bytes, &Limits::default())
        .expect("framing ok")
        .expect("complete");
    assert!(matches!(
        frame.request_header(),
        Err(FrameError::BadHeader(_))
    ));
}

/// Decodes `bytes` and touches every field a broker would read; any
/// failure must be an error value.
fn walk(bytes: &[u8]) {
    let Ok(Some((frame, used))) = frame::decode(bytes, &Limits::default()) else {
        return;
    };
    assert!(used <= bytes.len());
    let Ok(header) = frame.request_header() else {
        return;
    };
    let _ = header.client_id();
    let Some(produce) = header.body_as_produce_request() else {
        return;
    };
    for topic in produce.topics().into_iter().flatten() {
        let _ = topic.name();
        for range in topic
            .partitions()
            .into_iter()
            .flatten()
            .filter_map(|p| p.records())
        {
            let _ = frame.payload_range(range);
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        walk(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut bytes = produce_frame("topic", &[batch(&[b"value"]), batch(&[b"v2", b"v3"])]);
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        walk(&bytes);
    }
}
