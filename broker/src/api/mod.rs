//! The native APIs: one request frame in, at most one response out. The
//! frame arrives whole, in a buffer of its own; produce moves that buffer to
//! the partitions' shards instead of copying batches out of it.

pub(crate) mod admin;
pub use admin::command_error_code;
pub(crate) mod fetch;
pub(crate) mod groups;
pub(crate) mod offsets;
pub(crate) mod produce;
pub(crate) mod producer_id;

use crate::shard::Shard;
use fjord_net::{ErrorCode, api, frame, wire};
use fjord_storage::BatchSlice;
use std::rc::Rc;

/// A piece of a response payload: batches still in the shard's buffers, or
/// bytes copied from another shard.
pub enum Piece {
    /// Batches from this shard's cache or disk reads.
    Slice(BatchSlice),
    /// Batches read on another shard.
    Bytes(Vec<u8>),
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        match self {
            Piece::Slice(slice) => slice,
            Piece::Bytes(bytes) => bytes,
        }
    }
}

/// A response frame, ready to write.
pub struct Reply {
    /// Prefix, lengths and header.
    pub head: Vec<u8>,
    /// The payload, in order.
    pub payload: Vec<Piece>,
    /// Close the connection after writing: the stream cannot be trusted.
    pub close: bool,
}

impl fjord_net::gather::Frame for Reply {
    fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.head.as_slice()).chain(self.payload.iter().map(AsRef::as_ref))
    }
}

impl Reply {
    fn new(correlation_id: u32, body: wire::ResponseT, payload: Vec<Piece>) -> Reply {
        let len = payload.iter().map(|p| p.as_ref().len()).sum();
        let header = wire::ResponseHeaderT {
            correlation_id,
            error_code: 0,
            body,
        };
        Reply {
            head: api::response_head(&header, len),
            payload,
            close: false,
        }
    }

    /// A response with no payload.
    fn body(correlation_id: u32, body: wire::ResponseT) -> Reply {
        Reply::new(correlation_id, body, Vec::new())
    }

    /// An error for the request as a whole.
    pub fn error(correlation_id: u32, code: ErrorCode) -> Reply {
        Reply {
            head: api::error_head(correlation_id, code),
            payload: Vec::new(),
            close: false,
        }
    }

    /// An error after which the connection closes.
    pub fn fatal(correlation_id: u32, code: ErrorCode) -> Reply {
        Reply {
            close: true,
            ..Reply::error(correlation_id, code)
        }
    }
}

/// Serves one request frame (prefix included). `None`: no response is due
/// (produce with acks 0).
pub async fn handle(shard: Rc<Shard>, buf: Vec<u8>) -> Option<Reply> {
    let limits = frame::Limits {
        frame_bytes_max: shard.config.max_frame_bytes,
        ..frame::Limits::default()
    };
    // The frame was read whole under the same limits; only the header can
    // still be wrong, and a stream with a wrong header is not trusted on.
    let Ok(Some((frame, _))) = frame::decode(&buf, &limits) else {
        return Some(Reply::fatal(0, ErrorCode::InvalidRequest));
    };
    let Ok(header) = frame.request_header() else {
        return Some(Reply::fatal(0, ErrorCode::InvalidRequest));
    };
    let correlation_id = header.correlation_id();
    match api::supports(header.body_type(), header.version()) {
        None => return Some(Reply::error(correlation_id, ErrorCode::InvalidRequest)),
        Some(false) => return Some(Reply::error(correlation_id, ErrorCode::UnsupportedVersion)),
        Some(true) => {}
    }
    let payload = (buf.len() - frame.payload.len())..buf.len();
    let api = crate::admin::metrics::Api::Native(header.body_type().0);
    let request = header.unpack().body;
    let started = std::time::Instant::now();
    let reply = serve(&shard, correlation_id, request, buf, payload).await;
    shard.metrics().record_request(api, started.elapsed());
    reply
}

/// Serves one decoded request; `buf` is its frame, `payload` where the
/// payload lies in it.
async fn serve(
    shard: &Rc<Shard>,
    correlation_id: u32,
    request: wire::RequestT,
    buf: Vec<u8>,
    payload: std::ops::Range<usize>,
) -> Option<Reply> {
    use wire::RequestT as R;
    let reply = match request {
        R::ApiVersionsRequest(_) => Reply::body(correlation_id, api_versions()),
        R::MetadataRequest(request) => admin::metadata(shard, correlation_id, *request),
        R::CreateTopicsRequest(request) => {
            admin::create_topics(shard, correlation_id, *request).await
        }
        R::DeleteTopicsRequest(request) => {
            admin::delete_topics(shard, correlation_id, *request).await
        }
        R::AlterConfigsRequest(request) => {
            admin::alter_configs(shard, correlation_id, *request).await
        }
        R::CreatePartitionsRequest(request) => {
            admin::create_partitions(shard, correlation_id, *request).await
        }
        R::MovePartitionsRequest(request) => {
            admin::move_partitions(shard, correlation_id, *request).await
        }
        R::DescribeTopicsRequest(request) => {
            admin::describe_topics(shard, correlation_id, *request).await
        }
        R::ListOffsetsRequest(request) => {
            offsets::list_offsets(shard, correlation_id, *request).await
        }
        R::FetchRequest(request) => fetch::fetch(shard, correlation_id, *request).await,
        R::ProduceRequest(request) => {
            return produce::produce(shard, correlation_id, *request, buf, payload).await;
        }
        R::InitProducerIdRequest(request) => {
            producer_id::init_producer_id(shard, correlation_id, *request).await
        }
        R::FindCoordinatorRequest(request) => {
            groups::find_coordinator(shard, correlation_id, *request).await
        }
        R::ConsumerGroupHeartbeatRequest(request) => {
            let group = request.group_id.clone().unwrap_or_default();
            let body = R::ConsumerGroupHeartbeatRequest(request);
            groups::for_group(shard, correlation_id, &group, body).await
        }
        R::OffsetCommitRequest(request) => {
            let group = request.group_id.clone().unwrap_or_default();
            let body = R::OffsetCommitRequest(request);
            groups::for_group(shard, correlation_id, &group, body).await
        }
        R::OffsetFetchRequest(request) => {
            let group = request.group_id.clone().unwrap_or_default();
            let body = R::OffsetFetchRequest(request);
            groups::for_group(shard, correlation_id, &group, body).await
        }
        R::ListGroupsRequest(_) => groups::list_groups(shard, correlation_id).await,
        R::DescribeGroupsRequest(request) => {
            let ids = request.group_ids.unwrap_or_default();
            groups::each_group(shard, correlation_id, ids, |id| {
                R::DescribeGroupsRequest(Box::new(wire::DescribeGroupsRequestT {
                    group_ids: Some(vec![id]),
                }))
            })
            .await
        }
        R::DeleteGroupsRequest(request) => {
            let ids = request.group_ids.unwrap_or_default();
            groups::each_group(shard, correlation_id, ids, |id| {
                R::DeleteGroupsRequest(Box::new(wire::DeleteGroupsRequestT {
                    group_ids: Some(vec![id]),
                }))
            })
            .await
        }
        R::NONE => Reply::error(correlation_id, ErrorCode::InvalidRequest),
    };
    Some(reply)
}

fn api_versions() -> wire::ResponseT {
    let versions = api::VERSIONS
        .iter()
        .map(|(api, min, max)| wire::ApiVersionT {
            api: api.0,
            min_version: *min,
            max_version: *max,
        })
        .collect();
    wire::ResponseT::ApiVersionsResponse(Box::new(wire::ApiVersionsResponseT {
        error_code: 0,
        versions: Some(versions),
    }))
}

/// Kafka's numeric code of an error, 0 for none.
fn code(result: Result<(), ErrorCode>) -> i16 {
    result.err().map_or(0, |e| e.code())
}
