//! ListOffsets: the earliest, the latest, or the first offset at or after a
//! timestamp, per partition.

use super::{Reply, code};
use crate::mesh::PartitionOp;
use crate::shard::Shard;
use fjord_net::wire;

pub(super) async fn list_offsets(
    shard: &Shard,
    correlation_id: u32,
    request: wire::ListOffsetsRequestT,
) -> Reply {
    let mut topics = Vec::new();
    for topic in request.topics.unwrap_or_default() {
        let name = topic.name.unwrap_or_default();
        let mut partitions = Vec::new();
        for p in topic.partitions.unwrap_or_default() {
            let found = offset_for(shard, &name, p.partition, p.timestamp).await;
            let (offset, timestamp) = *found.as_ref().unwrap_or(&(-1, -1));
            partitions.push(wire::ListOffsetsPartitionResultT {
                partition: p.partition,
                error_code: code(found.map(|_| ())),
                offset,
                timestamp,
            });
        }
        topics.push(wire::ListOffsetsTopicResultT {
            name: Some(name),
            partitions: Some(partitions),
        });
    }
    let body = wire::ListOffsetsResponseT {
        topics: Some(topics),
    };
    Reply::body(
        correlation_id,
        wire::ResponseT::ListOffsetsResponse(Box::new(body)),
    )
}

/// A partition's offset for `timestamp` ([`fjord_net::api::EARLIEST`],
/// [`fjord_net::api::LATEST`] or a time in ms), with the timestamp of the
/// record found (-1 for the first two), asked of its shard.
pub(crate) async fn offset_for(
    shard: &Shard,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<(i64, i64), fjord_net::ErrorCode> {
    shard
        .on_owner(
            topic,
            partition,
            async |p| p.offset_for(timestamp).await,
            |reply| PartitionOp::OffsetFor { timestamp, reply },
        )
        .await
}
