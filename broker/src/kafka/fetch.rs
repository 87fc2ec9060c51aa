//! Kafka's Fetch and ListOffsets. Fetch long-polls through the native
//! path (`api::fetch::long_poll`) and returns the stored batches as they
//! are; the last stable offset is the high watermark (no transactions).
//! Fetch sessions (KIP-227) are refused cleanly: a full fetch gets session
//! id 0 (none created), so clients go on with full fetches; an incremental
//! one gets FETCH_SESSION_ID_NOT_FOUND and starts over with a full fetch.

use crate::api::Piece;
use crate::api::fetch::{Got, Wanted, long_poll};
use crate::api::offsets::offset_for;
use crate::shard::Shard;
use bytes::Bytes;
use fjord_net::ErrorCode;
use fjord_net::kafka::kafka_protocol::messages::fetch_request::FetchRequest;
use fjord_net::kafka::kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use fjord_net::kafka::kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use fjord_net::kafka::kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};

/// Kafka's isolation level READ_COMMITTED.
const READ_COMMITTED: i8 = 1;

pub(super) async fn fetch(shard: &Shard, request: FetchRequest) -> FetchResponse {
    if request.session_id != 0 {
        // A session this broker never created.
        return FetchResponse::default()
            .with_error_code(ErrorCode::FetchSessionIdNotFound.code())
            .with_session_id(0);
    }
    let mut wanted = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            wanted.push(Wanted {
                topic: topic.topic.as_str().to_owned(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0),
            });
        }
    }
    let got = long_poll(
        shard,
        &wanted,
        request.max_wait_ms,
        request.min_bytes,
        request.max_bytes,
    )
    .await;
    let aborted = (request.isolation_level == READ_COMMITTED).then(Vec::new);
    let mut got = got.into_iter();
    let responses = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .zip(got.by_ref())
                .map(|(p, g)| partition_data(p.partition, g, aborted.clone()))
                .collect();
            FetchableTopicResponse::default()
                .with_topic(topic.topic)
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    FetchResponse::default()
        .with_session_id(0)
        .with_responses(responses)
}

fn partition_data(
    partition: i32,
    got: Got,
    aborted: Option<
        Vec<fjord_net::kafka::kafka_protocol::messages::fetch_response::AbortedTransaction>,
    >,
) -> PartitionData {
    let answer = PartitionData::default()
        .with_partition_index(partition)
        .with_high_watermark(got.high_watermark)
        .with_last_stable_offset(got.high_watermark)
        .with_log_start_offset(got.log_start_offset)
        .with_aborted_transactions(aborted);
    if let Some(e) = got.error {
        return answer.with_error_code(e.code());
    }
    answer.with_records(Some(records(got.pieces, got.len)))
}

/// The batches as one buffer: another shard's arrive as one already (no
/// copy); this shard's are copied once out of the cache or read buffers.
fn records(mut pieces: Vec<Piece>, len: usize) -> Bytes {
    if pieces.len() == 1
        && let Some(Piece::Bytes(_)) = pieces.first()
        && let Some(Piece::Bytes(bytes)) = pieces.pop()
    {
        return Bytes::from(bytes);
    }
    let mut out = Vec::with_capacity(len);
    for piece in &pieces {
        out.extend_from_slice(piece.as_ref());
    }
    debug_assert_eq!(out.len(), len, "a read's length is its pieces'");
    Bytes::from(out)
}

pub(super) async fn list_offsets(
    shard: &Shard,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let found = offset_for(shard, &topic.name, p.partition_index, p.timestamp).await;
            let answer = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_leader_epoch(-1);
            partitions.push(match found {
                Ok((offset, timestamp)) => answer.with_offset(offset).with_timestamp(timestamp),
                Err(e) => answer
                    .with_error_code(e.code())
                    .with_offset(-1)
                    .with_timestamp(-1),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
