//! The idempotent producer's identity: its producer id and epoch, asked
//! for with InitProducerId on the first send and bumped (KIP-360) when a
//! partition's sequence has to start over. One per producer, on the
//! transport thread; partitions share it.

use crate::client::Client;
use crate::error::{ClientError, Result, check};
use fjord_net::wire;
use glommio::sync::Semaphore;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// A producer id and epoch.
pub type Stamp = (i64, i16);

/// The producer's id and epoch, once known.
pub(crate) struct Identity {
    current: Cell<Option<Stamp>>,
    /// One InitProducerId at a time.
    turn: Semaphore,
}

impl Identity {
    pub(crate) fn new() -> Identity {
        Identity {
            current: Cell::new(None),
            turn: Semaphore::new(1),
        }
    }

    /// The id and epoch, asked for if not known yet; retriable failures
    /// are retried every `backoff`, at most `retries` times and until
    /// `deadline`.
    pub(crate) async fn get(
        &self,
        client: &Client,
        backoff: Duration,
        retries: u32,
        deadline: Instant,
    ) -> Result<Stamp> {
        let _turn = self
            .turn
            .acquire_permit(1)
            .await
            .map_err(|_| ClientError::Closed)?;
        if let Some(stamp) = self.current.get() {
            return Ok(stamp);
        }
        let stamp = retry(backoff, retries, deadline, || init(client, (-1, -1))).await?;
        tracing::debug!(producer_id = stamp.0, epoch = stamp.1, "producer id");
        self.current.set(Some(stamp));
        Ok(stamp)
    }

    /// Moves past `seen` to the next epoch (or a new id after the last
    /// epoch), unless another partition did already. On failure the
    /// identity is forgotten: the next [`Identity::get`] asks for a new id,
    /// which restarts sequences just as well.
    pub(crate) async fn bump(&self, client: &Client, seen: Stamp) {
        let Ok(_turn) = self.turn.acquire_permit(1).await else {
            return;
        };
        if self.current.get() != Some(seen) {
            return;
        }
        let bumped = init(client, seen).await;
        tracing::info!(
            producer_id = seen.0,
            epoch = seen.1,
            bumped = ?bumped.as_ref().ok(),
            "producer epoch bumped: sequences start again at 0"
        );
        self.current.set(bumped.ok());
    }
}

async fn retry<T>(
    backoff: Duration,
    retries: u32,
    deadline: Instant,
    mut f: impl AsyncFnMut() -> Result<T>,
) -> Result<T> {
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if e.is_retriable() && attempt < retries && Instant::now() < deadline => {
                attempt += 1;
                glommio::timer::sleep(backoff).await;
            }
            other => return other,
        }
    }
}

/// InitProducerId with the id and epoch held (-1, -1 for none).
async fn init(client: &Client, (producer_id, producer_epoch): Stamp) -> Result<Stamp> {
    let body = wire::RequestT::InitProducerIdRequest(Box::new(wire::InitProducerIdRequestT {
        producer_id,
        producer_epoch,
    }));
    let response = client.ask_any(body).await?;
    let wire::ResponseT::InitProducerIdResponse(body) = response.unpack()?.0 else {
        return Err(ClientError::Protocol(
            "expected an InitProducerId response".into(),
        ));
    };
    check(body.error_code, || "InitProducerId".into())?;
    if body.producer_id < 0 || body.producer_epoch < 0 {
        return Err(ClientError::Protocol(format!(
            "InitProducerId answered id {} epoch {}",
            body.producer_id, body.producer_epoch
        )));
    }
    Ok((body.producer_id, body.producer_epoch))
}
