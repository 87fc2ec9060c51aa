//! InitProducerId: a new producer id, or the epoch after the one a
//! producer had (KIP-360: a producer that lost track of a batch bumps its
//! epoch, which fences its older incarnation in every partition that sees
//! the new one). Any shard answers; see [`crate::producer_ids`].

use super::Reply;
use crate::shard::Shard;
use fjord_net::{ErrorCode, wire};

pub(super) async fn init_producer_id(
    shard: &Shard,
    correlation_id: u32,
    request: wire::InitProducerIdRequestT,
) -> Reply {
    let answer = producer_id_for(shard, request.producer_id, request.producer_epoch).await;
    let body = match answer {
        Ok((producer_id, producer_epoch)) => wire::InitProducerIdResponseT {
            error_code: 0,
            producer_id,
            producer_epoch,
        },
        Err(code) => wire::InitProducerIdResponseT {
            error_code: code.code(),
            ..Default::default()
        },
    };
    Reply::body(
        correlation_id,
        wire::ResponseT::InitProducerIdResponse(Box::new(body)),
    )
}

/// The id and epoch a producer that had `(id, epoch)` (-1, -1 for none)
/// goes on with: a new id, or its id at the next epoch. The native and
/// the Kafka listener's InitProducerId both answer with it.
pub(crate) async fn producer_id_for(
    shard: &Shard,
    id: i64,
    epoch: i16,
) -> Result<(i64, i16), ErrorCode> {
    match (id, epoch) {
        (-1, -1) => new_id(shard).await,
        // The last epoch is left unused, as Kafka's producer does: past it
        // the producer starts over with a new id.
        (id, epoch) if id >= 0 && (0..i16::MAX - 1).contains(&epoch) => Ok((id, epoch + 1)),
        (id, epoch) if id >= 0 && epoch >= 0 => new_id(shard).await,
        _ => Err(ErrorCode::InvalidRequest),
    }
}

async fn new_id(shard: &Shard) -> Result<(i64, i16), ErrorCode> {
    match shard.producer_ids.next_id().await {
        Ok(id) => {
            tracing::debug!(shard = shard.id, producer_id = id, "producer id issued");
            Ok((id, 0))
        }
        Err(e) => {
            tracing::warn!(shard = shard.id, error = %e, "cannot reserve producer ids");
            Err(ErrorCode::KafkaStorageError)
        }
    }
}
