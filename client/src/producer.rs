//! The producer. `send` hands a record to the transport thread and returns
//! a future of its (partition, offset). There, records collect per
//! partition into a RecordBatch until it holds `batch_size` bytes or
//! `linger` has passed since its first record; then it is sealed and sent.
//!
//! Ordering: each partition has at most one produce request in flight, and
//! a batch that fails with a retriable error is sent again before any
//! later batch of that partition, so retries never reorder records (Kafka
//! gets the same guarantee from `max.in.flight.requests.per.connection=1`
//! without idempotence).

use crate::client::{Client, Route};
use crate::error::{ClientError, Result, check};
use crate::partitioner::{Sticky, partition_for_key};
use crate::transport::Lane;
use crate::transport::Response;
use fjord_core::{BatchBuilder, RecordHeader};
use fjord_net::{ErrorCode, api, wire};
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a producer batches and acknowledges.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Longest a record waits for its batch to fill (Kafka's `linger.ms`).
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes (`batch.size`).
    pub batch_size: usize,
    /// 0: no answer; 1: the leader has it; -1 (`all`): a quorum has it.
    pub acks: i16,
    /// How often a batch is sent again after a retriable error (Kafka's
    /// `retries`: no limit but `delivery_timeout` by default).
    pub retries: u32,
    /// Longest a batch is retried for (Kafka's `delivery.timeout.ms`); a
    /// leader election or a node's restart is waited out well within it.
    pub delivery_timeout: Duration,
    /// Wait before a retry.
    pub retry_backoff: Duration,
    /// After a batch fails for good, fail every later record of that
    /// partition too, so that what was acknowledged is always a prefix of
    /// what was sent (the CLI's promise).
    pub stop_on_error: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_size: 16 << 10,
            acks: api::ACKS_ALL,
            retries: u32::MAX,
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(100),
            stop_on_error: false,
        }
    }
}

/// Where a record landed; offset -1 with acks 0 (nobody answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Partition.
    pub partition: i32,
    /// Offset, or -1 when not acknowledged (acks 0).
    pub offset: i64,
}

type Reply = oneshot::Sender<Result<RecordMetadata>>;

struct Record {
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: i64,
    reply: Reply,
}

enum Msg {
    Send(Record),
    Flush(oneshot::Sender<()>),
}

/// Sends records; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Producer {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Producer {
    /// A producer over `client`.
    pub fn new(client: &Client, config: ProducerConfig) -> Result<Producer> {
        let (tx, rx) = mpsc::unbounded();
        let task_client = client.clone();
        client.run_on_transport(move || {
            let core = Rc::new(Core {
                client: task_client,
                config,
                topics: RefCell::new(HashMap::new()),
                outstanding: Cell::new(0),
                flushes: RefCell::new(Vec::new()),
            });
            glommio::spawn_local(core.run(rx)).detach();
        })?;
        Ok(Producer { tx })
    }

    /// Queues a record. Records of one partition are written in the order
    /// `send` was called; the future resolves once the record is
    /// acknowledged (or failed). `partition`: `None` to pick by key
    /// (murmur2, as Kafka) or stickily for null keys.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> impl Future<Output = Result<RecordMetadata>> + Send + use<> {
        let (reply, rx) = oneshot::channel();
        let record = Record {
            topic: topic.to_owned(),
            partition,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
            timestamp: now_ms(),
            reply,
        };
        let sent = self.tx.unbounded_send(Msg::Send(record));
        async move {
            sent.map_err(|_| ClientError::Closed)?;
            rx.await.map_err(|_| ClientError::Closed)?
        }
    }

    /// Sends everything queued now and waits until every record sent so far
    /// is acknowledged or failed.
    pub async fn flush(&self) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.tx
            .unbounded_send(Msg::Flush(done))
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Flushes, then stops taking records.
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        self.tx.close_channel();
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The producer's state on the transport thread.
struct Core {
    client: Client,
    config: ProducerConfig,
    topics: RefCell<HashMap<String, Rc<Topic>>>,
    /// Records accepted and not yet answered.
    outstanding: Cell<usize>,
    flushes: RefCell<Vec<oneshot::Sender<()>>>,
}

/// A topic whose partitions are known (or being looked up).
struct Topic {
    name: String,
    /// Records waiting for the topic's metadata.
    waiting: RefCell<Option<Vec<Record>>>,
    partitions: RefCell<Vec<Rc<PartitionQueue>>>,
    sticky: RefCell<Sticky>,
}

/// Batches of one partition: one open, the sealed ones in order.
struct PartitionQueue {
    partition: i32,
    route: Cell<Option<Route>>,
    open: RefCell<Option<OpenBatch>>,
    sealed: RefCell<VecDeque<Sealed>>,
    sending: Cell<bool>,
    /// Bumped on every seal, so a linger timer knows whether its batch is
    /// still the open one.
    generation: Cell<u64>,
    /// Set by a failure under `stop_on_error`: every later record fails.
    failed: RefCell<Option<ClientError>>,
}

struct OpenBatch {
    builder: BatchBuilder,
    replies: Vec<Reply>,
    sticky: bool,
}

struct Sealed {
    bytes: Vec<u8>,
    replies: Vec<Reply>,
}

impl Core {
    async fn run(self: Rc<Self>, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.next().await {
            match msg {
                Msg::Send(record) => {
                    self.outstanding.set(self.outstanding.get() + 1);
                    self.accept(record);
                }
                Msg::Flush(done) => {
                    self.flushes.borrow_mut().push(done);
                    self.seal_all();
                    self.maybe_flushed();
                }
            }
        }
        // Closed: send what is open; the tasks finish on their own.
        self.seal_all();
    }

    fn accept(self: &Rc<Self>, record: Record) {
        let topic = self.topics.borrow().get(&record.topic).cloned();
        let topic = match topic {
            Some(topic) => topic,
            None => {
                let topic = Rc::new(Topic {
                    name: record.topic.clone(),
                    waiting: RefCell::new(Some(Vec::new())),
                    partitions: RefCell::new(Vec::new()),
                    sticky: RefCell::new(Sticky::default()),
                });
                self.topics
                    .borrow_mut()
                    .insert(record.topic.clone(), topic.clone());
                glommio::spawn_local(self.clone().resolve(topic.clone())).detach();
                topic
            }
        };
        if let Some(waiting) = topic.waiting.borrow_mut().as_mut() {
            waiting.push(record);
            return;
        }
        self.append(&topic, record);
    }

    /// Looks the topic up, then lets its waiting records in.
    async fn resolve(self: Rc<Self>, topic: Rc<Topic>) {
        let routes = self.client.routes(&topic.name).await;
        let waiting = topic.waiting.borrow_mut().take().unwrap_or_default();
        match routes {
            Ok(routes) if !routes.partitions.is_empty() => {
                *topic.partitions.borrow_mut() = routes
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(p, route)| {
                        Rc::new(PartitionQueue {
                            partition: p as i32,
                            route: Cell::new(*route),
                            open: RefCell::new(None),
                            sealed: RefCell::new(VecDeque::new()),
                            sending: Cell::new(false),
                            generation: Cell::new(0),
                            failed: RefCell::new(None),
                        })
                    })
                    .collect();
                for record in waiting {
                    self.append(&topic, record);
                }
            }
            outcome => {
                let error = outcome.err().unwrap_or_else(|| {
                    ClientError::broker(ErrorCode::UnknownTopicOrPartition, topic.name.clone())
                });
                // Forget the topic: a later send looks it up again.
                self.topics.borrow_mut().remove(&topic.name);
                for record in waiting {
                    self.answer(record.reply, Err(error.clone()));
                }
            }
        }
    }

    fn append(self: &Rc<Self>, topic: &Rc<Topic>, record: Record) {
        let count = topic.partitions.borrow().len() as u32;
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count) as i32,
            (None, None) => topic.sticky.borrow_mut().partition(count) as i32,
        };
        let Some(queue) = usize::try_from(partition)
            .ok()
            .and_then(|p| topic.partitions.borrow().get(p).cloned())
        else {
            let error = ClientError::broker(
                ErrorCode::UnknownTopicOrPartition,
                format!("{}-{partition}", topic.name),
            );
            self.answer(record.reply, Err(error));
            return;
        };
        if let Some(error) = queue.failed.borrow().clone() {
            self.answer(record.reply, Err(error));
            return;
        }
        let headers: Vec<RecordHeader<'_>> = record
            .headers
            .iter()
            .map(|(k, v)| RecordHeader {
                key: k.as_bytes(),
                value: v.as_deref(),
            })
            .collect();
        let (key, value) = (record.key.as_deref(), record.value.as_deref());
        // A record that would overflow the open batch starts the next one.
        let fits = queue.open.borrow().as_ref().is_none_or(|open| {
            open.builder.encoded_len()
                + open
                    .builder
                    .record_len(record.timestamp, key, value, &headers)
                <= self.config.batch_size
        });
        if !fits {
            self.seal(topic, &queue);
        }
        let opened = {
            let mut open = queue.open.borrow_mut();
            let opened = open.is_none();
            let batch = open.get_or_insert_with(|| OpenBatch {
                builder: BatchBuilder::with_capacity(self.config.batch_size),
                replies: Vec::new(),
                sticky: false,
            });
            batch.builder.push(record.timestamp, key, value, &headers);
            batch.replies.push(record.reply);
            batch.sticky |= record.partition.is_none() && key.is_none();
            opened
        };
        let full = queue
            .open
            .borrow()
            .as_ref()
            .is_some_and(|o| o.builder.encoded_len() >= self.config.batch_size);
        if full {
            self.seal(topic, &queue);
        } else if opened {
            let (core, topic, queue) = (self.clone(), topic.clone(), queue.clone());
            let generation = queue.generation.get();
            glommio::spawn_local(async move {
                glommio::timer::sleep(core.config.linger).await;
                if queue.generation.get() == generation {
                    core.seal(&topic, &queue);
                }
            })
            .detach();
        }
    }

    fn seal_all(self: &Rc<Self>) {
        let topics: Vec<Rc<Topic>> = self.topics.borrow().values().cloned().collect();
        for topic in topics {
            let queues: Vec<Rc<PartitionQueue>> = topic.partitions.borrow().clone();
            for queue in queues {
                self.seal(&topic, &queue);
            }
        }
    }

    /// Closes the open batch of `queue` and starts sending if idle.
    fn seal(self: &Rc<Self>, topic: &Rc<Topic>, queue: &Rc<PartitionQueue>) {
        let Some(open) = queue.open.borrow_mut().take() else {
            return;
        };
        queue.generation.set(queue.generation.get() + 1);
        if open.sticky {
            let count = topic.partitions.borrow().len() as u32;
            topic.sticky.borrow_mut().batch_sent(count);
        }
        queue.sealed.borrow_mut().push_back(Sealed {
            bytes: open.builder.build(),
            replies: open.replies,
        });
        if !queue.sending.get() {
            queue.sending.set(true);
            glommio::spawn_local(self.clone().drain(topic.clone(), queue.clone())).detach();
        }
    }

    /// Sends the partition's sealed batches one at a time, in order.
    async fn drain(self: Rc<Self>, topic: Rc<Topic>, queue: Rc<PartitionQueue>) {
        loop {
            let next = queue.sealed.borrow_mut().pop_front();
            let Some(batch) = next else { break };
            let failed = queue.failed.borrow().clone();
            let outcome = match failed {
                Some(error) => Err(error),
                None => self.send_batch(&topic, &queue, &batch.bytes).await,
            };
            if let Err(error) = &outcome
                && self.config.stop_on_error
            {
                *queue.failed.borrow_mut() = Some(error.clone());
                // The open batch was accepted before the failure was
                // known: it fails with it.
                if let Some(open) = queue.open.borrow_mut().take() {
                    for reply in open.replies {
                        self.answer(reply, Err(error.clone()));
                    }
                }
            }
            for (i, reply) in batch.replies.into_iter().enumerate() {
                let answer = outcome.clone().map(|base| RecordMetadata {
                    partition: queue.partition,
                    offset: if base < 0 { -1 } else { base + i as i64 },
                });
                self.answer(reply, answer);
            }
        }
        queue.sending.set(false);
    }

    /// Produces one batch, retrying retriable errors; the base offset, or
    /// -1 under acks 0.
    async fn send_batch(&self, topic: &Topic, queue: &PartitionQueue, batch: &[u8]) -> Result<i64> {
        let mut attempt = 0;
        let deadline = std::time::Instant::now() + self.config.delivery_timeout;
        loop {
            let outcome = self.produce_once(topic, queue, batch).await;
            match outcome {
                Err(e)
                    if e.is_retriable()
                        && attempt < self.config.retries
                        && std::time::Instant::now() < deadline =>
                {
                    attempt += 1;
                    glommio::timer::sleep(self.config.retry_backoff).await;
                    // The partition may have moved: ask again where it is.
                    if let Ok(routes) = self.client.routes(&topic.name).await {
                        let route = routes
                            .partitions
                            .get(queue.partition as usize)
                            .copied()
                            .flatten();
                        queue.route.set(route);
                    }
                }
                other => return other,
            }
        }
    }

    async fn produce_once(
        &self,
        topic: &Topic,
        queue: &PartitionQueue,
        batch: &[u8],
    ) -> Result<i64> {
        let route = queue.route.get().ok_or_else(|| {
            ClientError::broker(
                ErrorCode::UnknownTopicOrPartition,
                format!("{}-{} has no route", topic.name, queue.partition),
            )
        })?;
        let body = produce_request(&topic.name, queue.partition, self.config.acks, batch.len());
        let expect = self.config.acks != api::ACKS_NONE;
        let response = self
            .client
            .call(route.addr, Lane::Prompt, body, batch.to_vec(), expect)
            .await?;
        match response {
            Some(response) => produce_result(&response, &topic.name, queue.partition),
            None => Ok(-1),
        }
    }

    fn answer(&self, reply: Reply, answer: Result<RecordMetadata>) {
        let _ = reply.send(answer);
        self.outstanding.set(self.outstanding.get() - 1);
        self.maybe_flushed();
    }

    fn maybe_flushed(&self) {
        if self.outstanding.get() == 0 {
            for done in self.flushes.borrow_mut().drain(..) {
                let _ = done.send(());
            }
        }
    }
}

/// A produce request for one partition whose batches are the whole payload
/// of `len` bytes.
pub fn produce_request(topic: &str, partition: i32, acks: i16, len: usize) -> wire::RequestT {
    wire::RequestT::ProduceRequest(Box::new(wire::ProduceRequestT {
        acks,
        timeout_ms: 30_000,
        topics: Some(vec![wire::ProduceTopicT {
            name: Some(topic.to_owned()),
            partitions: Some(vec![wire::ProducePartitionT {
                partition,
                records: Some(wire::PayloadRangeT {
                    offset: 0,
                    len: len as u32,
                }),
            }]),
        }]),
    }))
}

/// The base offset a produce response gives `partition`, or its error.
pub fn produce_result(response: &Response, topic: &str, partition: i32) -> Result<i64> {
    let wire::ResponseT::ProduceResponse(body) = response.unpack()?.0 else {
        return Err(ClientError::Protocol("expected a Produce response".into()));
    };
    let result = body
        .topics
        .into_iter()
        .flatten()
        .flat_map(|t| t.partitions.into_iter().flatten())
        .find(|p| p.partition == partition)
        .ok_or_else(|| ClientError::Protocol("no result for the partition".into()))?;
    check(result.error_code, || format!("{topic}-{partition}"))?;
    Ok(result.base_offset)
}
