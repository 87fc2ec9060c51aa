//! Kafka's Produce (v3+: RecordBatch v2 only): each partition's records go
//! untouched to the partition's produce path (`api::produce::append`),
//! which validates them, assigns offsets and appends. The batches stay in
//! the request frame, which moves to other shards as an `Arc`.

use super::str_bytes;
use crate::api::produce::append;
use crate::partition::Acks;
use crate::shard::Shard;
use fjord_net::kafka::kafka_protocol::messages::produce_request::ProduceRequest;
use fjord_net::kafka::kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use fjord_net::{ErrorCode, api};
use std::ops::Range;
use std::sync::Arc;

/// What a Produce is answered with.
pub(super) enum Answer {
    /// The response.
    Response(ProduceResponse),
    /// Nothing: acks 0, and every partition took its records.
    Nothing,
    /// acks 0 and a partition refused: the connection closes, as Kafka's
    /// does, so that the producer learns of it and refreshes its metadata
    /// rather than sending on to a broker that drops what it sends (a
    /// leader that moved).
    Close,
}

pub(super) async fn produce(
    shard: &Shard,
    request: ProduceRequest,
    frame: &Arc<Vec<u8>>,
) -> Answer {
    let acks = Acks::of_request(request.acks, request.timeout_ms);
    let acks_valid = Acks::is_valid(acks.required);
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in &request.topic_data {
        let name = topic.name.as_str();
        let partitions = futures::future::join_all(topic.partition_data.iter().map(|p| {
            let range = p.records.as_ref().map(|r| within(frame, r));
            async move {
                let outcome = match range {
                    _ if !acks_valid => Err(ErrorCode::InvalidRequiredAcks),
                    Some(range) if !range.is_empty() => {
                        append(shard, name, p.index, frame, range, acks).await
                    }
                    // No records, or null ones: nothing Kafka would append.
                    _ => Err(ErrorCode::CorruptMessage),
                };
                let answer = PartitionProduceResponse::default().with_index(p.index);
                match outcome {
                    Ok(produced) => answer
                        .with_base_offset(produced.base_offset)
                        .with_log_start_offset(produced.log_start_offset)
                        .with_log_append_time_ms(-1),
                    Err(e) => answer
                        .with_error_code(e.code())
                        .with_error_message(Some(str_bytes(e.to_string())))
                        .with_base_offset(-1)
                        .with_log_start_offset(-1),
                }
            }
        }))
        .await;
        topics.push(
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(partitions),
        );
    }
    if acks.required != api::ACKS_NONE {
        return Answer::Response(ProduceResponse::default().with_responses(topics));
    }
    let refused = topics
        .iter()
        .flat_map(|t| &t.partition_responses)
        .any(|p| p.error_code != 0);
    if refused {
        tracing::debug!(
            shard = shard.id,
            "acks=0 produce refused: closing the connection"
        );
        Answer::Close
    } else {
        Answer::Nothing
    }
}

/// Where `records`, a view the decoder cut from the request, lies in the
/// frame.
fn within(frame: &Arc<Vec<u8>>, records: &bytes::Bytes) -> Range<usize> {
    let start = (records.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    let end = start.wrapping_add(records.len());
    // The decoder slices the frame's own buffer (`Bytes::from_owner`), never
    // copies: a view elsewhere would append the wrong bytes.
    assert!(
        start <= end && end <= frame.len(),
        "records are a view of the request frame"
    );
    start..end
}
