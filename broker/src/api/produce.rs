//! Produce: batches for many partitions in one request, each appended on
//! its partition's shard. The request buffer moves (`Arc`) to other shards;
//! batches are never copied out of it before the log's own write buffer.

use super::{Reply, code};
use crate::mesh::PartitionOp;
use crate::partition::{Acks, Produced};
use crate::shard::Shard;
use fjord_net::{ErrorCode, api, wire};
use std::ops::Range;
use std::sync::Arc;

pub(super) async fn produce(
    shard: &Shard,
    correlation_id: u32,
    request: wire::ProduceRequestT,
    frame: Vec<u8>,
    payload: Range<usize>,
) -> Option<Reply> {
    if !Acks::is_valid(request.acks) {
        return Some(Reply::error(correlation_id, ErrorCode::InvalidRequiredAcks));
    }
    let acks = Acks::of_request(request.acks, request.timeout_ms);
    // Where each partition's batches lie in the frame, checked once here.
    let mut plan = Vec::new();
    for topic in request.topics.unwrap_or_default() {
        let name = topic.name.unwrap_or_default();
        for p in topic.partitions.unwrap_or_default() {
            let range = p
                .records
                .and_then(|r| {
                    let start = payload.start.checked_add(r.offset as usize)?;
                    let end = start.checked_add(r.len as usize)?;
                    (end <= payload.end).then_some(start..end)
                })
                .ok_or(ErrorCode::CorruptMessage);
            plan.push((name.clone(), p.partition, range));
        }
    }
    let frame = Arc::new(frame);
    let outcomes = futures::future::join_all(plan.iter().map(|(topic, partition, range)| {
        let frame = &frame;
        async move { append(shard, topic, *partition, frame, range.clone()?, acks).await }
    }))
    .await;
    if acks.required == api::ACKS_NONE {
        return None;
    }
    let mut topics: Vec<wire::ProduceTopicResultT> = Vec::new();
    for ((topic, partition, _), outcome) in plan.into_iter().zip(outcomes) {
        let result = match outcome {
            Ok(produced) => wire::ProducePartitionResultT {
                partition,
                error_code: 0,
                base_offset: produced.base_offset,
                log_start_offset: produced.log_start_offset,
            },
            Err(e) => wire::ProducePartitionResultT {
                partition,
                error_code: code(Err(e)),
                base_offset: -1,
                log_start_offset: -1,
            },
        };
        match topics.last_mut() {
            Some(last) if last.name.as_deref() == Some(topic.as_str()) => {
                last.partitions.get_or_insert_default().push(result);
            }
            _ => topics.push(wire::ProduceTopicResultT {
                name: Some(topic),
                partitions: Some(vec![result]),
            }),
        }
    }
    let body = wire::ProduceResponseT {
        topics: Some(topics),
    };
    Some(Reply::body(
        correlation_id,
        wire::ResponseT::ProduceResponse(Box::new(body)),
    ))
}

/// Appends the batches at `range` of `frame` to a partition, on its shard:
/// here, or moved there with the frame (an `Arc`, not a copy). The
/// partition validates them; the native and the Kafka Produce both end here.
/// Clients may not append to an internal topic (Kafka's "cannot append to
/// internal topic"): `INVALID_TOPIC_EXCEPTION`.
pub(crate) async fn append(
    shard: &Shard,
    topic: &str,
    partition: i32,
    frame: &Arc<Vec<u8>>,
    range: Range<usize>,
    acks: Acks,
) -> Result<Produced, ErrorCode> {
    if crate::group::is_internal(topic) {
        return Err(ErrorCode::InvalidTopicException);
    }
    shard
        .on_owner(
            topic,
            partition,
            async |p| p.produce(&frame[range.clone()], acks).await,
            |reply| PartitionOp::Produce {
                frame: frame.clone(),
                range: range.clone(),
                acks,
                reply,
            },
        )
        .await
}
