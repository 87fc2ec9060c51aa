//! Kafka's DeleteRecords: a partition's log start (its low watermark) moves
//! up to an offset at most its high watermark (`-1`: the high watermark).
//!
//! The partition's leader checks the offset, then the controller records the
//! new start in the metadata (`Command::DeleteRecords`), which carries it to
//! every replica of the partition: each refuses reads below it and deletes
//! the whole segments under it (`Partition::set_log_start`). The metadata
//! log, not the partition's, is what makes it hold on followers, after a
//! restart and after a leader change: a new leader applies the start from
//! the metadata it already has. A node whose metadata lags (it has not yet
//! had the controller's push) serves the older start until it does — the
//! answer goes back once the controller committed and this node applied it.

use crate::api::admin::command_error_code;
use crate::shard::Shard;
use fjord_net::ErrorCode;
use fjord_net::kafka::kafka_protocol::messages::delete_records_request::DeleteRecordsRequest;
use fjord_net::kafka::kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult,
};
use fjord_replication::control::Proposal;
use fjord_replication::metadata::{Command, DeleteRecords};

/// The request's offset that means the high watermark.
const HIGH_WATERMARK: i64 = -1;

pub(super) async fn delete_records(
    shard: &Shard,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let outcome = delete_below(shard, topic.name.as_str(), p.partition_index, p.offset);
            let (low_watermark, error_code) = match outcome.await {
                Ok(start) => (start, 0),
                Err(code) => (-1, code.code()),
            };
            partitions.push(
                DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(low_watermark)
                    .with_error_code(error_code),
            );
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// Moves the start of one partition (led here) up to `offset`; the new low
/// watermark. An offset at or below the start changes nothing.
async fn delete_below(
    shard: &Shard,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<i64, ErrorCode> {
    // As Kafka: a group's commits below the new start would be lost.
    if crate::group::is_internal(topic) {
        return Err(ErrorCode::InvalidTopicException);
    }
    let described = shard.describe_partition(topic, partition).await?;
    if let Some(replication) = &described.replication
        && replication.leader != Some(shard.node_id())
    {
        return Err(ErrorCode::NotLeaderOrFollower);
    }
    // The end readers may read to: the high watermark when replicated.
    let high_watermark = described.log_end_offset;
    let offset = match offset {
        HIGH_WATERMARK => high_watermark,
        o if (0..=high_watermark).contains(&o) => o,
        _ => return Err(ErrorCode::OffsetOutOfRange),
    };
    if offset <= described.log_start_offset {
        return Ok(described.log_start_offset);
    }
    let topic_id = shard
        .metadata()
        .topics
        .get(topic)
        .map(|t| t.id)
        .ok_or(ErrorCode::UnknownTopicOrPartition)?;
    let command = Command::DeleteRecords(Box::new(DeleteRecords {
        topic: topic.to_owned(),
        topic_id,
        // Checked by `on_owner`: a partition of the topic.
        partition: u32::try_from(partition).map_err(|_| ErrorCode::UnknownTopicOrPartition)?,
        start: u64::try_from(offset).map_err(|_| ErrorCode::OffsetOutOfRange)?,
    }));
    shard
        .command(Proposal::of(command))
        .await
        .map_err(|e| command_error_code(&e))?;
    tracing::info!(
        shard = shard.id,
        topic,
        partition,
        log_start = offset,
        "DeleteRecords"
    );
    Ok(offset)
}
