//! Fetch with long polling: answer once `min_bytes` are there or
//! `max_wait_ms` has passed. Batches of this shard's partitions go to the
//! socket from the buffers they sit in; those of other shards are copied
//! once, out of the owner's buffers (which cannot leave its thread).

use super::{Piece, Reply};
use crate::mesh::{Fetched, PartitionOp};
use crate::shard::Shard;
use fjord_net::{ErrorCode, wire};
use std::time::{Duration, Instant};

/// Longest long poll a request may ask for.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// Most bytes one fetch response carries (Kafka's `fetch.max.bytes`).
const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// A partition a fetch asks for.
pub(crate) struct Wanted {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The first offset wanted.
    pub offset: i64,
    /// Most bytes of this partition's batches.
    pub max_bytes: usize,
}

/// What a fetch got of one partition.
pub(crate) struct Got {
    /// Why nothing was read.
    pub error: Option<ErrorCode>,
    /// The high watermark (-1 on error).
    pub high_watermark: i64,
    /// The log start (-1 on error).
    pub log_start_offset: i64,
    /// Whole batches, as stored.
    pub pieces: Vec<Piece>,
    /// Their bytes.
    pub len: usize,
}

pub(super) async fn fetch(
    shard: &Shard,
    correlation_id: u32,
    request: wire::FetchRequestT,
) -> Reply {
    let mut wanted = Vec::new();
    for topic in request.topics.unwrap_or_default() {
        let name = topic.name.unwrap_or_default();
        for p in topic.partitions.unwrap_or_default() {
            wanted.push(Wanted {
                topic: name.clone(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: usize::try_from(p.max_bytes).unwrap_or(0),
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
    respond(correlation_id, &wanted, got)
}

/// Reads every wanted partition, again each time one of them grows, until
/// `min_bytes` are there, `max_wait_ms` has passed (at most [`WAIT_MAX`]),
/// a partition fails or the node stops; at most `max_bytes` in all
/// ([`RESPONSE_BYTES_MAX`] when 0 or above). The native and the Kafka Fetch
/// both serve through it.
pub(crate) async fn long_poll(
    shard: &Shard,
    wanted: &[Wanted],
    max_wait_ms: i32,
    min_bytes: i32,
    max_bytes: i32,
) -> Vec<Got> {
    let wait = Duration::from_millis(max_wait_ms.max(0) as u64).min(WAIT_MAX);
    let deadline = Instant::now() + wait;
    let response_max = usize::try_from(max_bytes)
        .ok()
        .filter(|&b| b > 0)
        .map_or(RESPONSE_BYTES_MAX, |b| b.min(RESPONSE_BYTES_MAX));
    let min_bytes = min_bytes.max(0) as usize;
    loop {
        let mut budget = response_max;
        let mut got = Vec::with_capacity(wanted.len());
        for w in wanted {
            let g = read(shard, w, w.max_bytes.min(budget)).await;
            budget = budget.saturating_sub(g.len);
            got.push(g);
        }
        let total: usize = got.iter().map(|g| g.len).sum();
        let now = Instant::now();
        // 0 answers at once, with or without records (Kafka's
        // `fetch.min.bytes` 0).
        if total >= min_bytes
            || now >= deadline
            || got.iter().any(|g| g.error.is_some())
            || shard.closing.get()
            || wanted.is_empty()
        {
            return got;
        }
        let left = deadline - now;
        let waits = wanted
            .iter()
            .map(|w| Box::pin(shard.wait_past(&w.topic, w.partition, w.offset, left)));
        futures::future::select_all(waits).await;
    }
}

async fn read(shard: &Shard, wanted: &Wanted, max_bytes: usize) -> Got {
    let local = shard.owner_of(&wanted.topic, wanted.partition) == Ok(shard.id);
    if local
        && max_bytes > 0
        && let Some(partition) = shard.partition(&wanted.topic, wanted.partition)
    {
        {
            return match partition.read(wanted.offset, max_bytes).await {
                Ok(read) => Got {
                    error: None,
                    high_watermark: read.offset_written as i64,
                    log_start_offset: read.offset_start as i64,
                    len: read.len_bytes(),
                    pieces: read.slices.into_iter().map(Piece::Slice).collect(),
                },
                Err(e) => failed(e),
            };
        }
    }
    if max_bytes == 0 {
        // Out of budget: only the offsets are wanted.
        let described = shard
            .describe_partition(&wanted.topic, wanted.partition)
            .await;
        return match described {
            // Offsets from the leader only, as the records.
            Ok(d)
                if d.replication
                    .as_ref()
                    .is_some_and(|r| r.leader != Some(shard.node_id())) =>
            {
                failed(ErrorCode::NotLeaderOrFollower)
            }
            Ok(d) => Got {
                error: None,
                high_watermark: d.log_end_offset,
                log_start_offset: d.log_start_offset,
                pieces: Vec::new(),
                len: 0,
            },
            Err(e) => failed(e),
        };
    }
    // Another shard's partition: its batches are copied out once.
    let offset = wanted.offset;
    let fetched = shard
        .on_owner(
            &wanted.topic,
            wanted.partition,
            async |p| p.read(offset, max_bytes).await.map(|r| Fetched::copied(&r)),
            |reply| PartitionOp::Fetch {
                offset,
                max_bytes,
                reply,
            },
        )
        .await;
    match fetched {
        Ok(f) => Got {
            error: None,
            high_watermark: f.high_watermark,
            log_start_offset: f.log_start_offset,
            len: f.records.len(),
            pieces: vec![Piece::Bytes(f.records)],
        },
        Err(e) => failed(e),
    }
}

fn failed(error: ErrorCode) -> Got {
    Got {
        error: Some(error),
        high_watermark: -1,
        log_start_offset: -1,
        pieces: Vec::new(),
        len: 0,
    }
}

fn respond(correlation_id: u32, wanted: &[Wanted], got: Vec<Got>) -> Reply {
    let mut topics: Vec<wire::FetchTopicResultT> = Vec::new();
    let mut payload = Vec::new();
    let mut position = 0usize;
    for (w, g) in wanted.iter().zip(got) {
        let result = wire::FetchPartitionResultT {
            partition: w.partition,
            error_code: g.error.map_or(0, |e| e.code()),
            high_watermark: g.high_watermark,
            log_start_offset: g.log_start_offset,
            records: Some(wire::PayloadRangeT {
                offset: position as u32,
                len: g.len as u32,
            }),
        };
        position += g.len;
        payload.extend(g.pieces);
        match topics.last_mut() {
            Some(last) if last.name.as_deref() == Some(w.topic.as_str()) => {
                last.partitions.get_or_insert_default().push(result);
            }
            _ => topics.push(wire::FetchTopicResultT {
                name: Some(w.topic.clone()),
                partitions: Some(vec![result]),
            }),
        }
    }
    let body = wire::FetchResponseT {
        error_code: 0,
        topics: Some(topics),
    };
    Reply::new(
        correlation_id,
        wire::ResponseT::FetchResponse(Box::new(body)),
        payload,
    )
}
