//! The Kafka listener's handlers: one Kafka request in, at most one
//! response out, mapped onto the same shard operations as the native APIs
//! (`crate::api`): Produce and Fetch onto the partitions' shards, topic
//! administration and configs onto the controller, offsets onto the group
//! coordinator.
//! Codecs are the `kafka-protocol` crate's (headers and the API table in
//! `fjord_net::kafka`); connections, pipelining and limits are
//! `crate::conn`'s, shared with the native listener.

mod admin;
mod classic;
mod configs;
mod consumer_group;
mod fetch;
mod group_admin;
mod groups;
mod log_dirs;
mod metadata;
mod produce;
mod records;

use crate::api::Reply;
use crate::logging::Repeated;
use crate::shard::Shard;
use bytes::Bytes;
use fjord_net::kafka::kafka_protocol::messages::ApiKey;
use fjord_net::kafka::kafka_protocol::protocol::{Encodable, StrBytes};
use fjord_net::kafka::{self as codec, EncodeError, RequestError};
use std::rc::Rc;
use std::sync::Arc;

pub(crate) use metadata::{register_listener, topic_uuid};

thread_local! {
    /// Requests refused on this shard (each shard is a thread), logged once
    /// per interval with their count.
    static REFUSED: Repeated = Repeated::default();
}

/// Logs a connection closed for what it sent, once per interval per shard.
pub(crate) fn refused(shard: &Shard, why: &str) {
    if let Some(count) = REFUSED.with(|r| r.hit()) {
        tracing::warn!(
            shard = shard.id,
            refused_requests = count,
            last = why,
            "Kafka requests refused: connections closed"
        );
    }
}

/// The request frame, shared by the views the decoder cuts from it: a
/// produce moves it to other shards without copying its batches.
struct Frame(Arc<Vec<u8>>);

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Why a request gets no regular response.
enum Failure {
    Request(RequestError),
    Encode(EncodeError),
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Failure {
        Failure::Request(e)
    }
}

/// Serves one Kafka request frame (size prefix included). `None`: no
/// response is due (produce with acks 0).
pub async fn handle(shard: Rc<Shard>, buf: Vec<u8>) -> Option<Reply> {
    let frame = Arc::new(buf);
    // The frame was read whole by `read_frame`, prefix included.
    assert!(frame.len() >= 4, "a frame holds its size prefix");
    let bytes = Bytes::from_owner(Frame(frame.clone())).slice(4..);
    let outcome = match codec::decode_header(bytes) {
        Ok(request) => {
            let api = crate::admin::metrics::Api::Kafka(request.api as i16);
            let started = std::time::Instant::now();
            let outcome = serve(&shard, request, &frame).await;
            shard.metrics().record_request(api, started.elapsed());
            outcome
        }
        Err(e) => Err(Failure::Request(e)),
    };
    let head = match outcome {
        Ok(Some(reply)) => return Some(reply),
        Ok(None) => return None,
        Err(Failure::Request(RequestError::Unsupported { correlation_id, .. })) => {
            codec::unsupported_version(correlation_id)
        }
        Err(Failure::Request(e)) => {
            refused(&shard, &e.to_string());
            return Some(close());
        }
        Err(Failure::Encode(e)) => {
            // A handler built a response its version cannot carry.
            tracing::error!(shard = shard.id, error = %e, "Kafka response does not encode");
            return Some(close());
        }
    };
    Some(Reply {
        head,
        payload: Vec::new(),
        close: false,
    })
}

/// Nothing more is written: the connection closes.
fn close() -> Reply {
    Reply {
        head: Vec::new(),
        payload: Vec::new(),
        close: true,
    }
}

async fn serve(
    shard: &Shard,
    mut request: codec::Request,
    frame: &Arc<Vec<u8>>,
) -> Result<Option<Reply>, Failure> {
    let version = request.version;
    use fjord_net::kafka::kafka_protocol::messages as m;
    match request.api {
        ApiKey::ApiVersions => {
            let _: m::ApiVersionsRequest = request.decode()?;
            respond(&request, &codec::api_versions(0))
        }
        ApiKey::Metadata => {
            let body = metadata::metadata(shard, request.decode()?, version);
            respond(&request, &body)
        }
        ApiKey::Produce => match produce::produce(shard, request.decode()?, frame).await {
            produce::Answer::Response(body) => respond(&request, &body),
            produce::Answer::Nothing => Ok(None),
            produce::Answer::Close => Ok(Some(close())),
        },
        ApiKey::Fetch => {
            let fetched = fetch::fetch(shard, request.decode()?).await;
            respond_spliced(&request, fetched)
        }
        ApiKey::ListOffsets => {
            let body = fetch::list_offsets(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::CreateTopics => {
            let body = admin::create_topics(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::DeleteTopics => {
            let body = admin::delete_topics(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::CreatePartitions => {
            let body = admin::create_partitions(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::DeleteRecords => {
            let body = records::delete_records(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::DescribeLogDirs => {
            let body = log_dirs::describe_log_dirs(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::DescribeConfigs => {
            let body = configs::describe_configs(shard, request.decode()?);
            respond(&request, &body)
        }
        ApiKey::AlterConfigs => {
            let body = configs::alter_configs(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::IncrementalAlterConfigs => {
            let body = configs::incremental_alter_configs(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::DescribeCluster => {
            let body = metadata::describe_cluster(shard, request.decode()?);
            respond(&request, &body)
        }
        ApiKey::FindCoordinator => {
            let body = groups::find_coordinator(shard, request.decode()?, version).await;
            respond(&request, &body)
        }
        ApiKey::OffsetCommit => {
            let body = groups::offset_commit(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::OffsetFetch => {
            let body = groups::offset_fetch(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::ListGroups => {
            let body = group_admin::list_groups(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::DescribeGroups => {
            let body = group_admin::describe_groups(shard, request.decode()?, version).await;
            respond(&request, &body)
        }
        ApiKey::OffsetDelete => {
            let body = group_admin::offset_delete(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::DeleteGroups => {
            let body = group_admin::delete_groups(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::InitProducerId => {
            let body = groups::init_producer_id(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::ConsumerGroupDescribe => {
            let body = consumer_group::consumer_group_describe(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::ConsumerGroupHeartbeat => {
            let client_id = request.header.client_id.as_ref().map(text);
            let body =
                consumer_group::consumer_group_heartbeat(shard, request.decode()?, client_id).await;
            respond(&request, &body)
        }
        ApiKey::JoinGroup => {
            let client_id = request.header.client_id.as_ref().map(text);
            let body = classic::join_group(shard, request.decode()?, version, client_id).await;
            respond(&request, &body)
        }
        ApiKey::SyncGroup => {
            let body = classic::sync_group(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::Heartbeat => {
            let body = classic::heartbeat(shard, request.decode()?).await;
            respond(&request, &body)
        }
        ApiKey::LeaveGroup => {
            let body = classic::leave_group(shard, request.decode()?).await;
            respond(&request, &body)
        }
        // `decode_header` lets through only the APIs of the table.
        api => {
            debug_assert!(!codec::supports(api, version), "{api:?} is in the table");
            Err(Failure::Request(RequestError::Unsupported {
                api_key: api as i16,
                version,
                correlation_id: request.header.correlation_id,
            }))
        }
    }
}

fn respond<T: Encodable>(request: &codec::Request, body: &T) -> Result<Option<Reply>, Failure> {
    encode(request, body).map(|head| {
        Some(Reply {
            head,
            payload: Vec::new(),
            close: false,
        })
    })
}

fn encode<T: Encodable>(request: &codec::Request, body: &T) -> Result<Vec<u8>, Failure> {
    codec::encode_response(
        request.api,
        request.version,
        request.header.correlation_id,
        body,
    )
    .map_err(Failure::Encode)
}

/// A fetch's response with its batches spliced in, uncopied.
fn respond_spliced(
    request: &codec::Request,
    fetched: fetch::Fetched,
) -> Result<Option<Reply>, Failure> {
    let fetch::Fetched {
        mut response,
        marker,
        records,
    } = fetched;
    if records.is_empty() {
        return respond(request, &response);
    }
    let frame = encode(request, &response)?;
    // Flexible versions (a v2 request header) carry compact records.
    let compact = request.api.request_header_version(request.version) >= 2;
    match fetch::splice(&frame, &marker, records, compact) {
        Ok((head, payload)) => Ok(Some(Reply {
            head,
            payload,
            close: false,
        })),
        Err(records) => {
            debug_assert!(false, "every marker is where the encoding puts it");
            fetch::unspliced(&mut response, &marker, records);
            respond(request, &response)
        }
    }
}

/// Text of the crate's string type.
fn text(s: &StrBytes) -> String {
    s.as_str().to_owned()
}

/// The crate's string type from text.
fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
