//! Kafka's Fetch and ListOffsets. Fetch long-polls through the native
//! path (`api::fetch::long_poll`) and returns the stored batches as they
//! are; the last stable offset is the high watermark (no transactions).
//! Fetch sessions (KIP-227) are refused cleanly: a full fetch gets session
//! id 0 (none created), so clients go on with full fetches; an incremental
//! one gets FETCH_SESSION_ID_NOT_FOUND and starts over with a full fetch.
//!
//! The batches are not copied into the response: the codec encodes it with
//! a random marker in each partition's records, and [`splice`] cuts the
//! encoding at the markers and puts the batches (cache or read buffers, as
//! `long_poll` returned them) in their place, to be written with the
//! envelope's pieces in one vectored write.

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

/// A fetch's answer before encoding: the response, its records markers in
/// place, and the batches each marker stands for, in the order encoded.
pub(super) struct Fetched {
    pub response: FetchResponse,
    pub marker: Marker,
    pub records: Records,
}

/// Stands for a partition's records in the encoded response: random per
/// response, so no echoed topic name or other field can forge one.
pub(super) type Marker = [u8; 16];

/// Each marked partition's batches, with their length, in encoding order.
pub(super) type Records = Vec<(Vec<Piece>, usize)>;

pub(super) async fn fetch(shard: &Shard, request: FetchRequest) -> Fetched {
    let marker: Marker = rand::random();
    if request.session_id != 0 {
        // A session this broker never created.
        let response = FetchResponse::default()
            .with_error_code(ErrorCode::FetchSessionIdNotFound.code())
            .with_session_id(0);
        return Fetched {
            response,
            marker,
            records: Vec::new(),
        };
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
    let mut records = Vec::new();
    let responses = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .zip(got.by_ref())
                .map(|(p, g)| {
                    partition_data(p.partition, g, aborted.clone(), &marker, &mut records)
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(topic.topic)
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    let response = FetchResponse::default()
        .with_session_id(0)
        .with_responses(responses);
    Fetched {
        response,
        marker,
        records,
    }
}

fn partition_data(
    partition: i32,
    got: Got,
    aborted: Option<
        Vec<fjord_net::kafka::kafka_protocol::messages::fetch_response::AbortedTransaction>,
    >,
    marker: &Marker,
    records: &mut Records,
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
    if got.len == 0 {
        return answer.with_records(Some(Bytes::new()));
    }
    records.push((got.pieces, got.len));
    answer.with_records(Some(Bytes::copy_from_slice(marker)))
}

/// The encoded response `frame` (size prefix first) with each marker of
/// `fetched` replaced by its batches: the envelope's bytes become the head
/// and owned pieces between the batches' pieces. `compact`: the version's
/// records carry a varint length (flexible versions), else an int32.
/// The records back if a marker is not where the encoding puts it (the
/// caller copies them instead).
pub(super) fn splice(
    frame: &[u8],
    marker: &Marker,
    records: Records,
    compact: bool,
) -> Result<(Vec<u8>, Vec<Piece>), Records> {
    let Some(cuts) = marker_cuts(frame, marker, records.len(), compact) else {
        return Err(records);
    };
    let mut head: Option<Vec<u8>> = None;
    let mut payload = Vec::with_capacity(records.len() * 2 + 1);
    let mut from = 0;
    for ((prefix_at, after), (pieces, len)) in cuts.into_iter().zip(records) {
        let mut envelope = frame[from..prefix_at].to_vec();
        envelope.extend_from_slice(&length_prefix(len, compact));
        match head {
            None => head = Some(envelope),
            Some(_) => payload.push(Piece::Bytes(envelope)),
        }
        debug_assert_eq!(pieces.iter().map(|p| p.as_ref().len()).sum::<usize>(), len);
        payload.extend(pieces);
        from = after;
    }
    let mut head = head.unwrap_or_default();
    let tail = &frame[from..];
    if !tail.is_empty() {
        payload.push(Piece::Bytes(tail.to_vec()));
    }
    let total = head.len() + payload.iter().map(|p| p.as_ref().len()).sum::<usize>();
    // At least one marker was cut, after the 4-byte size prefix; a frame
    // past i32 is refused by the codec before this.
    let size = i32::try_from(total - 4).unwrap_or(i32::MAX);
    head[..4].copy_from_slice(&size.to_be_bytes());
    Ok((head, payload))
}

/// Where each of `count` markers lies in `frame`, in order: its length
/// prefix's start and the end of the marker. `None` unless every one is
/// there, with the prefix the encoding gives a marker's length.
fn marker_cuts(
    frame: &[u8],
    marker: &Marker,
    count: usize,
    compact: bool,
) -> Option<Vec<(usize, usize)>> {
    let prefix = length_prefix(marker.len(), compact);
    let mut cuts = Vec::with_capacity(count);
    let mut from = 4;
    for _ in 0..count {
        let at = from
            + frame
                .get(from..)?
                .windows(marker.len())
                .position(|w| w == marker)?;
        let prefix_at = at.checked_sub(prefix.len()).filter(|&p| p >= from)?;
        if frame[prefix_at..at] != prefix[..] {
            return None;
        }
        from = at + marker.len();
        cuts.push((prefix_at, from));
    }
    Some(cuts)
}

/// How Kafka prefixes `len` bytes of records: an int32, or in flexible
/// versions an unsigned varint of `len + 1` (0 is null).
fn length_prefix(len: usize, compact: bool) -> Vec<u8> {
    if !compact {
        return i32::try_from(len)
            .unwrap_or(i32::MAX)
            .to_be_bytes()
            .to_vec();
    }
    let mut n = len as u64 + 1;
    let mut out = Vec::with_capacity(5);
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

/// Puts each partition's batches in place of its marker, copied (when
/// splicing fails).
pub(super) fn unspliced(response: &mut FetchResponse, marker: &Marker, records: Records) {
    let mut records = records.into_iter();
    let marked = response
        .responses
        .iter_mut()
        .flat_map(|t| t.partitions.iter_mut())
        .filter(|p| p.records.as_deref() == Some(&marker[..]));
    for (partition, (pieces, len)) in marked.zip(records.by_ref()) {
        partition.records = Some(joined(pieces, len));
    }
    debug_assert!(
        records.next().is_none(),
        "a marker for every partition read"
    );
}

/// The batches as one buffer (when splicing fails): another shard's arrive
/// as one already (no copy); this shard's are copied once.
pub(super) fn joined(mut pieces: Vec<Piece>, len: usize) -> Bytes {
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

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_net::kafka::kafka_protocol::messages::ApiKey;
    use fjord_net::kafka::kafka_protocol::messages::TopicName;
    use fjord_net::kafka::kafka_protocol::messages::fetch_response::FetchableTopicResponse;
    use fjord_net::kafka::kafka_protocol::protocol::StrBytes;

    fn response(records: &[Bytes]) -> FetchResponse {
        let partitions = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_high_watermark(7)
                    .with_records(Some(r.clone()))
            })
            .collect();
        FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(partitions),
        ])
    }

    /// A spliced response is byte for byte the response encoded with its
    /// records, in every version's length encoding (int32 and varint, the
    /// varint longer than the marker's).
    #[test]
    fn a_spliced_fetch_is_the_encoded_fetch() {
        let batches = [vec![1u8; 300], Vec::new(), vec![2u8; 5], vec![3u8; 70_000]];
        for version in [4, 11, 12] {
            let marker: Marker = rand::random();
            let whole: Vec<Bytes> = batches.iter().map(|b| Bytes::from(b.clone())).collect();
            let expected =
                fjord_net::kafka::encode_response(ApiKey::Fetch, version, 9, &response(&whole))
                    .unwrap();
            let marked: Vec<Bytes> = batches
                .iter()
                .map(|b| {
                    if b.is_empty() {
                        Bytes::new()
                    } else {
                        Bytes::copy_from_slice(&marker)
                    }
                })
                .collect();
            let frame =
                fjord_net::kafka::encode_response(ApiKey::Fetch, version, 9, &response(&marked))
                    .unwrap();
            // One batch in two pieces, to check pieces stay in order.
            let records = batches
                .iter()
                .filter(|b| !b.is_empty())
                .map(|b| {
                    let (a, z) = b.split_at(b.len() / 2);
                    (
                        vec![Piece::Bytes(a.to_vec()), Piece::Bytes(z.to_vec())],
                        b.len(),
                    )
                })
                .collect();
            let compact = ApiKey::Fetch.request_header_version(version) >= 2;
            let Ok((head, payload)) = splice(&frame, &marker, records, compact) else {
                panic!("v{version}: markers not found");
            };
            let mut spliced = head;
            for piece in &payload {
                spliced.extend_from_slice(piece.as_ref());
            }
            assert_eq!(spliced, expected, "v{version}");
        }
    }

    #[test]
    fn a_missing_marker_gives_the_records_back() {
        let marker: Marker = rand::random();
        let frame = fjord_net::kafka::encode_response(
            ApiKey::Fetch,
            12,
            9,
            &response(&[Bytes::from_static(b"x")]),
        )
        .unwrap();
        let records = vec![(vec![Piece::Bytes(b"abc".to_vec())], 3)];
        let back = splice(&frame, &marker, records, true).err().unwrap();
        assert_eq!(back.len(), 1);
    }
}
