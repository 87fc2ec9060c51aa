//! The client handle: settings, the transport, and the cluster's routing
//! table as Metadata reports it.

use crate::error::{ClientError, Result};
use crate::transport::{self, Job, Lane, Response};
use fjord_net::wire;
use futures::channel::{mpsc, oneshot};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The default native port of a broker.
pub const DEFAULT_PORT: u16 = 9093;

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Brokers to ask for metadata (Kafka's `bootstrap.servers`): any one
    /// that answers will do, tried in turn.
    pub bootstrap: Vec<SocketAddr>,
    /// Sent with every request, for the broker's logs.
    pub client_id: String,
    /// Longest wait for an answer, past what the broker may wait before it
    /// answers (a fetch's long poll; a produce's `timeout_ms`, which the
    /// producer sets to this: the broker's `REQUEST_TIMED_OUT` then comes
    /// before the client gives up on the connection).
    pub request_timeout: Duration,
    /// Pin the transport thread to this core.
    pub pin_core: Option<usize>,
}

impl ClientConfig {
    /// Defaults for a broker at `bootstrap`.
    pub fn new(bootstrap: SocketAddr) -> ClientConfig {
        ClientConfig::with_bootstrap(vec![bootstrap])
    }

    /// Defaults for a cluster reached through any of `bootstrap`.
    pub fn with_bootstrap(bootstrap: Vec<SocketAddr>) -> ClientConfig {
        assert!(!bootstrap.is_empty(), "at least one bootstrap broker");
        ClientConfig {
            bootstrap,
            client_id: "fjord-client".into(),
            request_timeout: Duration::from_secs(30),
            pin_core: None,
        }
    }
}

/// A connection to a cluster; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Client {
    jobs: mpsc::UnboundedSender<Job>,
    config: Arc<ClientConfig>,
    /// The bootstrap broker that answered last: asked first next time.
    preferred: Arc<std::sync::atomic::AtomicUsize>,
}

/// Where a partition lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The owning shard's address.
    pub addr: SocketAddr,
}

/// A topic's partitions and their routes; `None` where the broker reported
/// an error for the partition.
#[derive(Debug, Clone, Default)]
pub struct TopicRoutes {
    /// By partition number.
    pub partitions: Vec<Option<Route>>,
}

impl Client {
    /// Starts the transport. Nothing is connected until the first request.
    pub fn new(config: ClientConfig) -> Result<Client> {
        let jobs = transport::start(config.request_timeout, config.pin_core).map_err(|e| {
            ClientError::Connection {
                addr: config.bootstrap[0],
                message: format!("cannot start the transport: {e}"),
            }
        })?;
        Ok(Client {
            jobs,
            config: Arc::new(config),
            preferred: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends a request; resolves to the response (`None` when `expect` is
    /// false and the request is written).
    pub fn call(
        &self,
        addr: SocketAddr,
        lane: Lane,
        body: wire::RequestT,
        payload: Vec<u8>,
        expect: bool,
    ) -> impl Future<Output = Result<Option<Response>>> + Send + use<> {
        let (reply, rx) = oneshot::channel();
        let header = wire::RequestHeaderT {
            version: 0,
            correlation_id: 0,
            client_id: Some(self.config.client_id.clone()),
            body,
        };
        // What the broker may wait before it answers, on top of the
        // request timeout: a fetch's long poll, a produce's acknowledgement
        // (answered `REQUEST_TIMED_OUT` once its own timeout passes).
        let wait = match &header.body {
            wire::RequestT::FetchRequest(fetch) => {
                Duration::from_millis(fetch.max_wait_ms.max(0) as u64)
            }
            wire::RequestT::ProduceRequest(produce) => {
                Duration::from_millis(produce.timeout_ms.max(0) as u64)
            }
            _ => Duration::ZERO,
        };
        let sent = self.jobs.unbounded_send(Job::Call {
            addr,
            lane,
            wait,
            header,
            payload,
            expect,
            reply,
        });
        async move {
            sent.map_err(|_| ClientError::Closed)?;
            rx.await.map_err(|_| ClientError::Closed)?
        }
    }

    /// Sends a request and waits for its response.
    pub fn request(
        &self,
        addr: SocketAddr,
        lane: Lane,
        body: wire::RequestT,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<Response>> + Send + use<> {
        let call = self.call(addr, lane, body, payload, true);
        async move {
            call.await?
                .ok_or_else(|| ClientError::Protocol("no response".into()))
        }
    }

    /// Runs `f` on the transport thread, where it may spawn glommio tasks
    /// (`glommio::spawn_local`). Requests such tasks make are answered on
    /// the same thread, with no cross-thread wake-up: for load generators
    /// and other code that wants the transport's core to itself.
    pub fn run_on_transport(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        self.jobs
            .unbounded_send(Job::Spawn(Box::new(f)))
            .map_err(|_| ClientError::Closed)
    }

    /// Sends `body` to the bootstrap brokers in turn, from the one that
    /// answered last, until one answers; the last failure if none does.
    pub async fn ask_any(&self, body: wire::RequestT) -> Result<Response> {
        use std::sync::atomic::Ordering;
        let count = self.config.bootstrap.len();
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut failure = None;
        for i in 0..count {
            let at = (first + i) % count;
            let addr = self.config.bootstrap[at];
            match self
                .request(addr, Lane::Prompt, body.clone(), Vec::new())
                .await
            {
                Ok(response) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(e) if e.is_retriable() => failure = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(failure.unwrap_or(ClientError::Closed))
    }

    /// Resolves after `duration`, timed on the transport thread: a pause any
    /// runtime can await (retry backoff).
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + use<> {
        let (tx, rx) = oneshot::channel::<()>();
        let spawned = self.run_on_transport(move || {
            glommio::spawn_local(async move {
                glommio::timer::sleep(duration).await;
                let _ = tx.send(());
            })
            .detach();
        });
        async move {
            if spawned.is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// `ListOffsets` of one partition at the shard `addr`: the offset (and
    /// its record's timestamp) for `timestamp` — EARLIEST, LATEST, or a time
    /// (offset -1 when no record is that recent).
    pub async fn list_offset(
        &self,
        addr: SocketAddr,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<(i64, i64)> {
        let body = wire::RequestT::ListOffsetsRequest(Box::new(wire::ListOffsetsRequestT {
            topics: Some(vec![wire::ListOffsetsTopicT {
                name: Some(topic.to_owned()),
                partitions: Some(vec![wire::ListOffsetsPartitionT {
                    partition,
                    timestamp,
                }]),
            }]),
        }));
        let response = self.request(addr, Lane::Prompt, body, Vec::new()).await?;
        let wire::ResponseT::ListOffsetsResponse(body) = response.unpack()?.0 else {
            return Err(ClientError::Protocol(
                "expected a ListOffsets response".into(),
            ));
        };
        let result = body
            .topics
            .into_iter()
            .flatten()
            .flat_map(|t| t.partitions.into_iter().flatten())
            .next()
            .ok_or_else(|| ClientError::Protocol("empty ListOffsets response".into()))?;
        crate::error::check(result.error_code, || format!("{topic}-{partition}"))?;
        Ok((result.offset, result.timestamp))
    }

    /// Metadata for `topics` (all when `None`), from a bootstrap broker.
    pub async fn metadata(&self, topics: Option<Vec<String>>) -> Result<wire::MetadataResponseT> {
        let body = wire::RequestT::MetadataRequest(Box::new(wire::MetadataRequestT { topics }));
        let response = self.ask_any(body).await?;
        match response.unpack()?.0 {
            wire::ResponseT::MetadataResponse(m) => Ok(*m),
            _ => Err(ClientError::Protocol("expected a Metadata response".into())),
        }
    }

    /// The routes of `topic`'s partitions; an unknown topic is an error.
    pub async fn routes(&self, topic: &str) -> Result<TopicRoutes> {
        let metadata = self.metadata(Some(vec![topic.to_owned()])).await?;
        let brokers: HashMap<i32, &wire::BrokerInfoT> = metadata
            .brokers
            .iter()
            .flatten()
            .map(|b| (b.node_id, b))
            .collect();
        let info = metadata
            .topics
            .iter()
            .flatten()
            .find(|t| t.name.as_deref() == Some(topic))
            .ok_or_else(|| ClientError::Protocol(format!("no metadata for {topic}")))?;
        crate::error::check(info.error_code, || format!("topic {topic}"))?;
        let listed = info.partitions.as_deref().unwrap_or_default();
        let mut partitions = vec![None; listed.len()];
        for p in listed {
            let route = (|| {
                if p.error_code != 0 {
                    return None;
                }
                let broker = brokers.get(&p.leader)?;
                let ip: IpAddr = broker.host.as_deref()?.parse().ok()?;
                let port = broker
                    .shard_ports
                    .as_ref()
                    .and_then(|ports| ports.get(usize::from(p.shard)).copied())
                    .unwrap_or(broker.port);
                Some(Route {
                    addr: SocketAddr::new(ip, port),
                })
            })();
            let slot = usize::try_from(p.partition)
                .ok()
                .and_then(|i| partitions.get_mut(i))
                .ok_or_else(|| {
                    ClientError::Protocol(format!("partition {} out of range", p.partition))
                })?;
            *slot = route;
        }
        if partitions.iter().any(Option::is_none) {
            // That broker knows no leader for some partition (an election,
            // or a node that cannot hear its peers): the next lookup asks
            // another, as Kafka clients spread metadata requests.
            self.preferred
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(TopicRoutes { partitions })
    }
}
