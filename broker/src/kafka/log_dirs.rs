//! Kafka's DescribeLogDirs: the node's one log directory (the data
//! directory) with the partitions it holds a replica of, each with its bytes
//! on disk and its offset lag, and (v4) the filesystem's total and usable
//! bytes as the free-space watch last sampled them. Fjord has no second
//! directory and no "future" replicas (moves between directories), so
//! `is_future_key` is always false.

use super::str_bytes;
use crate::shard::Shard;
use fjord_net::kafka::kafka_protocol::messages::describe_log_dirs_request::DescribeLogDirsRequest;
use fjord_net::kafka::kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResponse, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use std::collections::BTreeMap;

pub(super) async fn describe_log_dirs(
    shard: &Shard,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let metadata = shard.metadata();
    // `None` asks for every partition; a topic listed without partitions,
    // as Kafka reads it, for none of its own.
    let asked: Vec<(String, Vec<i32>)> = match request.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.topic.as_str().to_owned(), t.partitions))
            .collect(),
        None => metadata
            .topics
            .iter()
            .map(|(name, t)| (name.clone(), (0..t.partitions.len() as i32).collect()))
            .collect(),
    };
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for (name, partitions) in asked {
        for p in partitions {
            // Partitions without a replica here, unknown, or not open are
            // left out: the answer lists what this directory holds.
            if shard.owner_of(&name, p).is_err() {
                continue;
            }
            let described = shard.describe_partition(&name, p).await;
            let Ok(d) = described else {
                continue;
            };
            // Kafka's lag of a current replica: how far its log end is
            // behind the high watermark (a follower catching up).
            let high_watermark = d
                .replication
                .as_ref()
                .map_or(d.log_end_local, |r| r.high_watermark as i64);
            topics.entry(name.clone()).or_default().push(
                DescribeLogDirsPartition::default()
                    .with_partition_index(p)
                    .with_partition_size(d.size_bytes)
                    .with_offset_lag((high_watermark - d.log_end_local).max(0))
                    .with_is_future_key(false),
            );
        }
    }
    let space = shard.space().space();
    let result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(shard.data().path().display().to_string()))
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    DescribeLogDirsTopic::default()
                        .with_name(str_bytes(name).into())
                        .with_partitions(partitions)
                })
                .collect(),
        )
        .with_total_bytes(i64::try_from(space.total_bytes).unwrap_or(i64::MAX))
        .with_usable_bytes(i64::try_from(space.free_bytes).unwrap_or(i64::MAX));
    DescribeLogDirsResponse::default().with_results(vec![result])
}
