//! The native APIs: their numbers, the versions this build speaks, and the
//! encoding of whole headers into frame heads.
//!
//! An API's number is its tag in the `Request`/`Response` unions of the
//! schema, so a request names its API by the body it carries.

use crate::frame;
use crate::wire;

/// Every API's version range (min, max) as this build speaks it.
pub const VERSIONS: &[(wire::Request, u16, u16)] = &[
    (wire::Request::ApiVersionsRequest, 0, 0),
    (wire::Request::MetadataRequest, 0, 0),
    (wire::Request::CreateTopicsRequest, 0, 0),
    (wire::Request::DeleteTopicsRequest, 0, 0),
    (wire::Request::DescribeTopicsRequest, 0, 0),
    (wire::Request::ProduceRequest, 0, 0),
    (wire::Request::FetchRequest, 0, 0),
    (wire::Request::ListOffsetsRequest, 0, 0),
    (wire::Request::AlterConfigsRequest, 0, 0),
    (wire::Request::MovePartitionsRequest, 0, 0),
    (wire::Request::InitProducerIdRequest, 0, 0),
    (wire::Request::FindCoordinatorRequest, 0, 0),
    (wire::Request::ConsumerGroupHeartbeatRequest, 0, 0),
    (wire::Request::OffsetCommitRequest, 0, 0),
    (wire::Request::OffsetFetchRequest, 0, 0),
    (wire::Request::ListGroupsRequest, 0, 0),
    (wire::Request::DescribeGroupsRequest, 0, 0),
    (wire::Request::DeleteGroupsRequest, 0, 0),
    (wire::Request::CreatePartitionsRequest, 0, 0),
];

/// Whether `version` of `api` is spoken; `None` when the API is unknown.
pub fn supports(api: wire::Request, version: u16) -> Option<bool> {
    VERSIONS
        .iter()
        .find(|(a, _, _)| *a == api)
        .map(|(_, min, max)| (*min..=*max).contains(&version))
}

/// `ListOffsets` timestamp asking for the log start.
pub const EARLIEST: i64 = -2;
/// `ListOffsets` timestamp asking for the log end.
pub const LATEST: i64 = -1;
/// `ListOffsets` timestamp asking for the record with the largest
/// timestamp (Kafka's v7, KIP-734).
pub const MAX_TIMESTAMP: i64 = -3;

/// Produce `acks`: no response at all.
pub const ACKS_NONE: i16 = 0;
/// Produce `acks`: answer once the leader has the batch.
pub const ACKS_LEADER: i16 = 1;
/// Produce `acks`: answer once a quorum has it (the leader alone until
/// replication lands).
pub const ACKS_ALL: i16 = -1;

/// Partitions grouped by topic, in order, as the group APIs carry them.
pub fn topic_partitions_to_wire(
    partitions: &std::collections::BTreeSet<(String, i32)>,
) -> Vec<wire::TopicPartitionsT> {
    let mut out: Vec<wire::TopicPartitionsT> = Vec::new();
    for (topic, p) in partitions {
        match out.last_mut() {
            Some(last) if last.name.as_deref() == Some(topic.as_str()) => {
                last.partitions.get_or_insert_default().push(*p);
            }
            _ => out.push(wire::TopicPartitionsT {
                name: Some(topic.clone()),
                partitions: Some(vec![*p]),
            }),
        }
    }
    out
}

/// The partitions of a group API message.
pub fn topic_partitions_from_wire(
    topics: &[wire::TopicPartitionsT],
) -> std::collections::BTreeSet<(String, i32)> {
    topics
        .iter()
        .flat_map(|t| {
            let name = t.name.clone().unwrap_or_default();
            t.partitions
                .iter()
                .flatten()
                .map(move |&p| (name.clone(), p))
        })
        .collect()
}

/// The head (prefix, length and header) of a request frame whose payload
/// of `payload_len` bytes is sent after it.
pub fn request_head(header: &wire::RequestHeaderT, payload_len: usize) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::with_capacity(256);
    let root = header.pack(&mut fbb);
    fbb.finish(root, None);
    head(fbb.finished_data(), payload_len)
}

/// The head of a response frame; see [`request_head`].
pub fn response_head(header: &wire::ResponseHeaderT, payload_len: usize) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::with_capacity(256);
    let root = header.pack(&mut fbb);
    fbb.finish(root, None);
    head(fbb.finished_data(), payload_len)
}

fn head(header: &[u8], payload_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame::PREFIX_LEN + 4 + header.len());
    frame::encode_head(header, payload_len, &mut out);
    out
}

/// A response header carrying only an error: the request could not be
/// understood, so there is no body.
pub fn error_head(correlation_id: u32, code: crate::ErrorCode) -> Vec<u8> {
    response_head(
        &wire::ResponseHeaderT {
            correlation_id,
            error_code: code.code(),
            body: wire::ResponseT::NONE,
        },
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_cover_every_request() {
        for api in wire::Request::ENUM_VALUES {
            if *api == wire::Request::NONE {
                assert_eq!(supports(*api, 0), None);
            } else {
                assert_eq!(supports(*api, 0), Some(true), "{api:?}");
                assert_eq!(supports(*api, 1), Some(false), "{api:?}");
            }
        }
    }

    #[test]
    fn a_metadata_answer_for_ten_thousand_partitions_verifies() {
        let partitions = (0..10_000)
            .map(|p| wire::PartitionInfoT {
                partition: p,
                ..Default::default()
            })
            .collect();
        let header = wire::ResponseHeaderT {
            correlation_id: 1,
            error_code: 0,
            body: wire::ResponseT::MetadataResponse(Box::new(wire::MetadataResponseT {
                topics: Some(vec![wire::TopicInfoT {
                    name: Some("wide".into()),
                    error_code: 0,
                    partitions: Some(partitions),
                }]),
                ..Default::default()
            })),
        };
        let bytes = response_head(&header, 0);
        let (frame, _) = frame::decode(&bytes, &frame::Limits::default())
            .unwrap()
            .unwrap();
        let verified = frame.response_header().unwrap();
        let topics = verified
            .body_as_metadata_response()
            .unwrap()
            .topics()
            .unwrap();
        assert_eq!(topics.get(0).partitions().unwrap().len(), 10_000);
    }

    #[test]
    fn heads_decode_back() {
        let head = request_head(
            &wire::RequestHeaderT {
                version: 0,
                correlation_id: 7,
                client_id: Some("t".into()),
                body: wire::RequestT::MetadataRequest(Box::default()),
            },
            3,
        );
        let mut bytes = head.clone();
        bytes.extend_from_slice(b"abc");
        let limits = frame::Limits::default();
        let (frame, used) = frame::decode(&bytes, &limits).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.payload, b"abc");
        let header = frame.request_header().unwrap();
        assert_eq!(header.correlation_id(), 7);
        assert_eq!(header.body_type(), wire::Request::MetadataRequest);
    }
}
