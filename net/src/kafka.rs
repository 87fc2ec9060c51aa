//! The Kafka protocol's framing and headers, with the codecs of the
//! `kafka-protocol` crate: which APIs and versions Fjord's Kafka listener
//! speaks, how a request's header is read (its version depends on the API
//! and the API's version), and how a response is framed.
//!
//! A Kafka frame is `i32 size | header | body`, the same prefix as the
//! native frame, so [`crate::io::FrameReader`] reads both under the same
//! limits (a negative size reads as a huge one and is refused). Input is
//! hostile: every failure is an error value, never a panic, and a request
//! whose API or version is not spoken still gets an answer
//! ([`unsupported_version`]) whenever its correlation id can be read.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

pub use kafka_protocol;

/// Kafka's UNSUPPORTED_VERSION.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// Every API the listener serves, with the versions it speaks (flexible
/// ones included). Within the crate's own ranges (a test checks); the caps
/// keep to versions that name topics (Fetch 13+ and Produce 13 address them
/// by id only) and leave out what needs features Fjord lacks yet.
pub const VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
];

/// Whether the listener speaks `version` of `api`.
pub fn supports(api: ApiKey, version: i16) -> bool {
    VERSIONS
        .iter()
        .any(|&(a, min, max)| a == api && (min..=max).contains(&version))
}

/// Bytes every request header starts with: api key, api version,
/// correlation id.
const HEADER_FIXED_LEN: usize = 8;

/// A request whose header was read.
#[derive(Debug)]
pub struct Request {
    /// The API.
    pub api: ApiKey,
    /// Its version, one the listener speaks.
    pub version: i16,
    /// The header as decoded.
    pub header: RequestHeader,
    /// The body, undecoded: a view of the frame's buffer.
    pub body: Bytes,
}

/// Why a request cannot be served as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Shorter than the fields every header starts with: nothing to answer.
    #[error("request of {0} bytes is shorter than a header")]
    Short(usize),
    /// An API or a version the listener does not speak; answered with
    /// [`unsupported_version`].
    #[error("api {api_key} version {version} is not supported")]
    Unsupported {
        /// The API key as sent.
        api_key: i16,
        /// The version as sent.
        version: i16,
        /// To answer with.
        correlation_id: i32,
    },
    /// The header or the body does not decode: the stream is not trusted on.
    #[error("malformed request (correlation id {correlation_id}): {message}")]
    Malformed {
        /// To answer with.
        correlation_id: i32,
        /// The decoder's complaint.
        message: String,
    },
}

/// Reads the header of a request (`frame` without its size prefix).
pub fn decode_header(frame: Bytes) -> Result<Request, RequestError> {
    let Some(fixed) = frame.get(..HEADER_FIXED_LEN) else {
        return Err(RequestError::Short(frame.len()));
    };
    let api_key = i16::from_be_bytes([fixed[0], fixed[1]]);
    let version = i16::from_be_bytes([fixed[2], fixed[3]]);
    let correlation_id = i32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let unsupported = RequestError::Unsupported {
        api_key,
        version,
        correlation_id,
    };
    let Ok(api) = ApiKey::try_from(api_key) else {
        return Err(unsupported);
    };
    if !supports(api, version) {
        return Err(unsupported);
    }
    let mut body = frame;
    let header =
        RequestHeader::decode(&mut body, api.request_header_version(version)).map_err(|e| {
            RequestError::Malformed {
                correlation_id,
                message: e.to_string(),
            }
        })?;
    Ok(Request {
        api,
        version,
        header,
        body,
    })
}

impl Request {
    /// Decodes the body as `T` at the request's version.
    pub fn decode<T: Decodable>(&mut self) -> Result<T, RequestError> {
        T::decode(&mut self.body, self.version).map_err(|e| RequestError::Malformed {
            correlation_id: self.header.correlation_id,
            message: e.to_string(),
        })
    }
}

/// A response that would not encode: a value out of its field's range for
/// the version (a bug of the handler, answered by closing the connection).
#[derive(Debug, thiserror::Error)]
#[error("response to api {api:?} v{version} does not encode: {message}")]
pub struct EncodeError {
    /// The API.
    pub api: ApiKey,
    /// The version.
    pub version: i16,
    /// The encoder's complaint.
    pub message: String,
}

/// A whole response frame: size prefix, response header (the version the
/// API's version calls for; ApiVersions' is always v0), body.
pub fn encode_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Vec<u8>, EncodeError> {
    let fail = |message: String| EncodeError {
        api,
        version,
        message,
    };
    let header_version = api.response_header_version(version);
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; 4]);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, header_version)
        .map_err(|e| fail(e.to_string()))?;
    body.encode(&mut out, version)
        .map_err(|e| fail(e.to_string()))?;
    let size = i32::try_from(out.len() - 4).map_err(|e| fail(e.to_string()))?;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(out)
}

/// ApiVersions' body listing [`VERSIONS`], with `error_code`.
pub fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            VERSIONS
                .iter()
                .map(|&(api, min, max)| {
                    ApiVersion::default()
                        .with_api_key(api as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
}

/// The answer to an API or version not spoken: UNSUPPORTED_VERSION in
/// ApiVersions' v0 body, as Kafka answers an ApiVersions request it cannot
/// read, so that a client can pick a version from the list.
pub fn unsupported_version(correlation_id: i32) -> Vec<u8> {
    let body = api_versions(UNSUPPORTED_VERSION);
    // v0 of a body this small always encodes: its fields are all in range.
    match encode_response(ApiKey::ApiVersions, 0, correlation_id, &body) {
        Ok(frame) => frame,
        Err(e) => unreachable!("ApiVersions v0 encodes: {e}"),
    }
}

/// The partitions of a classic consumer-group member's assignment:
/// Kafka's `ConsumerProtocolAssignment` (an `i16` version, then the body),
/// as the consumers' assignors write it. `None` for bytes that are not one
/// (another protocol type, or damaged): they are the client's, never trusted.
pub fn consumer_assignment(bytes: &[u8]) -> Option<Vec<(String, i32)>> {
    use bytes::Buf;
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16();
    if !(0..=3).contains(&version) {
        return None;
    }
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version).ok()?;
    Some(
        assignment
            .assigned_partitions
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|&p| (t.topic.as_str().to_owned(), p))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_consumer_assignment_decodes_and_garbage_does_not() {
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
        use kafka_protocol::messages::{ConsumerProtocolAssignment, TopicName};
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(TopicName(
                    kafka_protocol::protocol::StrBytes::from_static_str("t"),
                ))
                .with_partitions(vec![0, 2]),
        ]);
        let mut bytes = bytes::BytesMut::new();
        bytes.extend_from_slice(&1i16.to_be_bytes());
        assignment.encode(&mut bytes, 1).unwrap();
        assert_eq!(
            consumer_assignment(&bytes),
            Some(vec![("t".to_owned(), 0), ("t".to_owned(), 2)])
        );
        assert_eq!(consumer_assignment(b""), None);
        assert_eq!(consumer_assignment(b"\x00\x09garbage"), None);
        assert_eq!(consumer_assignment(b"\x00\x00\x7f\xff\xff\xff"), None);
    }

    use super::*;
    use kafka_protocol::messages::MetadataRequest;

    fn request(api: i16, version: i16, correlation_id: i32, rest: &[u8]) -> Bytes {
        let mut b = Vec::new();
        b.extend_from_slice(&api.to_be_bytes());
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(&correlation_id.to_be_bytes());
        b.extend_from_slice(rest);
        Bytes::from(b)
    }

    #[test]
    fn versions_lie_within_the_codecs() {
        for &(api, min, max) in VERSIONS {
            let valid = api.valid_versions();
            assert!(
                valid.min <= min && min <= max && max <= valid.max,
                "{api:?}"
            );
        }
    }

    #[test]
    fn unknown_apis_and_versions_are_answered() {
        let e = decode_header(request(999, 0, 7, b"")).unwrap_err();
        assert!(matches!(
            e,
            RequestError::Unsupported {
                correlation_id: 7,
                ..
            }
        ));
        let e = decode_header(request(ApiKey::Fetch as i16, 3, 8, b"")).unwrap_err();
        assert!(matches!(
            e,
            RequestError::Unsupported {
                correlation_id: 8,
                ..
            }
        ));
        let frame = unsupported_version(9);
        assert_eq!(&frame[4..8], &9i32.to_be_bytes());
        assert_eq!(&frame[8..10], &UNSUPPORTED_VERSION.to_be_bytes());
        assert_eq!(
            frame.len() - 4,
            i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize
        );
    }

    #[test]
    fn short_and_malformed_headers_are_errors() {
        for len in 0..HEADER_FIXED_LEN {
            assert_eq!(
                decode_header(Bytes::from(vec![0u8; len])).unwrap_err(),
                RequestError::Short(len)
            );
        }
        // Metadata v9 (flexible header): a client id whose length runs past
        // the end.
        let e = decode_header(request(3, 9, 1, &[0x7f, 0xff])).unwrap_err();
        assert!(matches!(
            e,
            RequestError::Malformed {
                correlation_id: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_huge_array_count_is_an_error_not_an_allocation() {
        // Metadata v0 claiming 54 million topics in 5 bytes: the decoder
        // must refuse it, not reserve gigabytes (the vendored patch).
        let mut req = decode_header(request(3, 1, 1, &[0, 0, 3, 0x3c, 0x0c, 0, 0xb6])).unwrap();
        assert!(req.decode::<MetadataRequest>().is_err());
        let mut req = decode_header(request(3, 1, 1, &[0, 0, 0x7f, 0xff, 0xff, 0xff])).unwrap();
        assert!(req.decode::<MetadataRequest>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Ok(mut req) = decode_header(Bytes::from(bytes)) {
                let _ = req.decode::<MetadataRequest>();
            }
        }

        #[test]
        fn hostile_bodies_never_panic(
            api in proptest::sample::select(VERSIONS.to_vec()),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            use kafka_protocol::messages::*;
            let (api, _, max) = api;
            let mut req = match decode_header(request(api as i16, max, 1, &body)) {
                Ok(req) => req,
                Err(_) => return Ok(()),
            };
            match api {
                ApiKey::Produce => drop(req.decode::<ProduceRequest>()),
                ApiKey::Fetch => drop(req.decode::<FetchRequest>()),
                ApiKey::ListOffsets => drop(req.decode::<ListOffsetsRequest>()),
                ApiKey::Metadata => drop(req.decode::<MetadataRequest>()),
                ApiKey::OffsetCommit => drop(req.decode::<OffsetCommitRequest>()),
                ApiKey::OffsetFetch => drop(req.decode::<OffsetFetchRequest>()),
                ApiKey::FindCoordinator => drop(req.decode::<FindCoordinatorRequest>()),
                ApiKey::ApiVersions => drop(req.decode::<ApiVersionsRequest>()),
                ApiKey::CreateTopics => drop(req.decode::<CreateTopicsRequest>()),
                ApiKey::DeleteTopics => drop(req.decode::<DeleteTopicsRequest>()),
                ApiKey::InitProducerId => drop(req.decode::<InitProducerIdRequest>()),
                ApiKey::ListGroups => drop(req.decode::<ListGroupsRequest>()),
                ApiKey::DescribeGroups => drop(req.decode::<DescribeGroupsRequest>()),
                ApiKey::DeleteGroups => drop(req.decode::<DeleteGroupsRequest>()),
                ApiKey::OffsetDelete => drop(req.decode::<OffsetDeleteRequest>()),
                ApiKey::JoinGroup => drop(req.decode::<JoinGroupRequest>()),
                ApiKey::SyncGroup => drop(req.decode::<SyncGroupRequest>()),
                ApiKey::Heartbeat => drop(req.decode::<HeartbeatRequest>()),
                ApiKey::LeaveGroup => drop(req.decode::<LeaveGroupRequest>()),
                ApiKey::DescribeConfigs => drop(req.decode::<DescribeConfigsRequest>()),
                ApiKey::AlterConfigs => drop(req.decode::<AlterConfigsRequest>()),
                ApiKey::IncrementalAlterConfigs => drop(req.decode::<IncrementalAlterConfigsRequest>()),
                ApiKey::DescribeCluster => drop(req.decode::<DescribeClusterRequest>()),
                _ => {}
            }
        }
    }
}
