//! The producer. `send` hands a record to the transport thread and returns
//! a future of its (partition, offset). There, records collect per
//! partition into a RecordBatch until it holds `batch_size` bytes or
//! `linger` has passed since its first record; then it is sealed and sent.
//!
//! **Idempotence** (on by default, as Kafka 3's `enable.idempotence=true`,
//! which needs `acks=all`): the producer asks for a producer id
//! (InitProducerId) before its first batch, and stamps each batch with the
//! id, the epoch and the partition's next sequence when it sends it first.
//! Up to `max_in_flight` (5) produce requests per partition are in flight
//! at once, in sequence order; the broker writes each batch once, whatever
//! the retries:
//! - a retriable failure of batch n (a timeout, a lost connection, a
//!   leader change) waits for the answers of the batches sent after it,
//!   then sends n and every later one not yet acknowledged again, in
//!   sequence order; a batch the broker already holds is answered as a
//!   duplicate, with the offset it was first written at;
//! - `OUT_OF_ORDER_SEQUENCE_NUMBER` for a batch after a failed one is the
//!   same case (its predecessor was not written) and resent in order; for
//!   the first unacknowledged batch it means a real gap (the broker lost
//!   the producer's state): the epoch is bumped and the batch resent;
//! - a batch that fails for good (a refusal, or `delivery_timeout`)
//!   bumps the producer's epoch (InitProducerId with its current id and
//!   epoch, KIP-360), and the partition's sequences start again at 0 with
//!   the batches after it; other partitions move to the new epoch once
//!   their in-flight batches are settled. Batches whose fate cannot be
//!   known (the failure was a timeout) fail with it rather than risk a
//!   second copy.
//!
//! Without idempotence each partition has one produce request in flight,
//! and a batch that fails with a retriable error is sent again before any
//! later batch of that partition, so retries never reorder records (Kafka
//! gets the same guarantee from `max.in.flight.requests.per.connection=1`)
//! but a retry after a lost answer may write a batch twice.

use crate::client::{Client, Route};
use crate::error::{ClientError, Result, check};
use crate::idempotence::{Identity, Stamp};
use crate::partitioner::{Sticky, partition_for_key};
use crate::transport::Lane;
use crate::transport::Response;
use fjord_core::{BatchBuilder, RecordHeader};
use fjord_net::{ErrorCode, api, wire};
use futures::channel::{mpsc, oneshot};
use futures::future::LocalBoxFuture;
use futures::{FutureExt, StreamExt};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Kafka's ceiling on in-flight requests per partition with idempotence:
/// the broker remembers the last five batches of each producer.
pub const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

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
    /// Each batch written once, in order, whatever the retries (Kafka's
    /// `enable.idempotence`); needs `acks` all.
    pub idempotence: bool,
    /// Produce requests in flight per partition with idempotence, 1 to 5
    /// (`max.in.flight.requests.per.connection`); 1 without it.
    pub max_in_flight: usize,
    /// A topic's partitions are looked up again when the producer's view
    /// is this old, so partitions added to it get records (Kafka's
    /// `metadata.max.age.ms`).
    pub metadata_max_age: Duration,
}

impl ProducerConfig {
    /// Refuses settings that contradict each other, as Kafka's producer
    /// does.
    pub fn validate(&self) -> Result<()> {
        if self.idempotence && self.acks != api::ACKS_ALL {
            return Err(ClientError::Config(format!(
                "idempotence needs acks=all (-1), not {}; set idempotence to false",
                self.acks
            )));
        }
        if self.idempotence && !(1..=MAX_IN_FLIGHT_IDEMPOTENT).contains(&self.max_in_flight) {
            return Err(ClientError::Config(format!(
                "max_in_flight must be 1 to {MAX_IN_FLIGHT_IDEMPOTENT} with idempotence, not {}",
                self.max_in_flight
            )));
        }
        Ok(())
    }
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
            idempotence: true,
            max_in_flight: MAX_IN_FLIGHT_IDEMPOTENT,
            metadata_max_age: Duration::from_secs(300),
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
    /// A producer over `client`; contradictory settings are an error.
    pub fn new(client: &Client, config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let (tx, rx) = mpsc::unbounded();
        let task_client = client.clone();
        client.run_on_transport(move || {
            let core = Rc::new(Core {
                client: task_client,
                config,
                topics: RefCell::new(HashMap::new()),
                outstanding: Cell::new(0),
                flushes: RefCell::new(Vec::new()),
                identity: Identity::new(),
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
    /// The producer id and epoch, with idempotence.
    identity: Identity,
}

/// A topic whose partitions are known (or being looked up).
struct Topic {
    name: String,
    /// Records waiting for the topic's metadata.
    waiting: RefCell<Option<Vec<Record>>>,
    partitions: RefCell<Vec<Rc<PartitionQueue>>>,
    sticky: RefCell<Sticky>,
    /// When its partitions were last looked up, and whether a lookup is
    /// under way.
    looked_up: Cell<Instant>,
    looking_up: Cell<bool>,
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
    /// The id and epoch this partition's sequences run under.
    stamp: Cell<Option<Stamp>>,
    /// The next batch's base sequence.
    sequence: Cell<i32>,
}

impl PartitionQueue {
    /// An empty queue for partition `p`, sent to `route`.
    fn new(p: usize, route: Option<Route>) -> Rc<PartitionQueue> {
        Rc::new(PartitionQueue {
            partition: p as i32,
            route: Cell::new(route),
            open: RefCell::new(None),
            sealed: RefCell::new(VecDeque::new()),
            sending: Cell::new(false),
            generation: Cell::new(0),
            failed: RefCell::new(None),
            stamp: Cell::new(None),
            sequence: Cell::new(0),
        })
    }
}

struct OpenBatch {
    builder: BatchBuilder,
    replies: Vec<Reply>,
    sticky: bool,
}

struct Sealed {
    bytes: Vec<u8>,
    replies: Vec<Reply>,
    /// Records (and sequence numbers) in the batch.
    records: i32,
    /// Set when first sent: retries stop here (`delivery_timeout`).
    deadline: Option<Instant>,
}

/// A sealed batch sent and not yet answered for good.
struct InFlight {
    batch: Sealed,
    attempt: Attempt,
    retries: u32,
}

/// The latest send of a batch.
enum Attempt {
    Pending(LocalBoxFuture<'static, Result<i64>>),
    Done(Result<i64>),
}

impl InFlight {
    /// The latest send's outcome, waited for once.
    async fn settle(&mut self) -> Result<i64> {
        if let Attempt::Pending(future) = &mut self.attempt {
            self.attempt = Attempt::Done(future.await);
        }
        match &self.attempt {
            Attempt::Done(outcome) => outcome.clone(),
            Attempt::Pending(_) => unreachable!("settled above"),
        }
    }

    fn written(&self) -> bool {
        matches!(self.attempt, Attempt::Done(Ok(_)))
    }
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
                    looked_up: Cell::new(Instant::now()),
                    looking_up: Cell::new(true),
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
        // A partition beyond those known may have been added since: the
        // record waits for a new lookup (with those after it, in order).
        let beyond = record
            .partition
            .and_then(|p| usize::try_from(p).ok())
            .is_some_and(|p| p >= topic.partitions.borrow().len());
        let stale = topic.looked_up.get().elapsed() >= self.config.metadata_max_age;
        if (beyond || stale) && !topic.looking_up.get() {
            topic.looking_up.set(true);
            glommio::spawn_local(self.clone().grow(topic.clone())).detach();
        }
        if beyond {
            topic
                .waiting
                .borrow_mut()
                .get_or_insert_default()
                .push(record);
            return;
        }
        self.append(&topic, record);
    }

    /// Looks a known topic up again, adds queues for partitions added since
    /// (a topic never loses partitions), then lets the records that waited
    /// for it in. A stale lookup holds up no record: those sent meanwhile
    /// keep the count they were partitioned by.
    async fn grow(self: Rc<Self>, topic: Rc<Topic>) {
        if let Ok(routes) = self.client.routes(&topic.name).await {
            let mut partitions = topic.partitions.borrow_mut();
            let known = partitions.len();
            partitions.extend(
                routes
                    .partitions
                    .iter()
                    .enumerate()
                    .skip(known)
                    .map(|(p, route)| PartitionQueue::new(p, *route)),
            );
        }
        topic.looked_up.set(Instant::now());
        topic.looking_up.set(false);
        let waiting = topic.waiting.borrow_mut().take().unwrap_or_default();
        for record in waiting {
            self.append(&topic, record);
        }
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
                    .map(|(p, route)| PartitionQueue::new(p, *route))
                    .collect();
                topic.looked_up.set(Instant::now());
                topic.looking_up.set(false);
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
        let records = open.builder.len() as i32;
        queue.sealed.borrow_mut().push_back(Sealed {
            bytes: open.builder.build(),
            replies: open.replies,
            records,
            deadline: None,
        });
        if !queue.sending.get() {
            queue.sending.set(true);
            glommio::spawn_local(self.clone().drain(topic.clone(), queue.clone())).detach();
        }
    }

    /// Produce requests a partition may have in flight.
    fn window_max(&self) -> usize {
        if self.config.idempotence {
            self.config.max_in_flight
        } else {
            1
        }
    }

    /// Sends the partition's sealed batches in order, up to
    /// [`Core::window_max`] at a time, until none is left.
    async fn drain(self: Rc<Self>, topic: Rc<Topic>, queue: Rc<PartitionQueue>) {
        let mut window: VecDeque<InFlight> = VecDeque::new();
        loop {
            self.fill(&topic, &queue, &mut window).await;
            let Some(head) = window.front_mut() else {
                break;
            };
            match head.settle().await {
                Ok(base) => {
                    if let Some(done) = window.pop_front() {
                        self.answer_batch(&queue, done.batch, Ok(base));
                    }
                }
                Err(error) => self.failed(&topic, &queue, &mut window, error).await,
            }
        }
        queue.sending.set(false);
    }

    /// Sends sealed batches until the window is full, stamping each with
    /// the producer's id, epoch and the partition's next sequence.
    async fn fill(&self, topic: &Topic, queue: &PartitionQueue, window: &mut VecDeque<InFlight>) {
        while window.len() < self.window_max() {
            let Some(mut batch) = queue.sealed.borrow_mut().pop_front() else {
                return;
            };
            if let Some(error) = queue.failed.borrow().clone() {
                self.answer_batch(queue, batch, Err(error));
                continue;
            }
            let deadline = *batch
                .deadline
                .get_or_insert_with(|| Instant::now() + self.config.delivery_timeout);
            if self.config.idempotence {
                let stamp = match self
                    .identity
                    .get(
                        &self.client,
                        self.config.retry_backoff,
                        self.config.retries,
                        deadline,
                    )
                    .await
                {
                    Ok(stamp) => stamp,
                    Err(error) => {
                        self.answer_batch(queue, batch, Err(error));
                        continue;
                    }
                };
                if queue.stamp.get() != Some(stamp) {
                    // A new epoch starts at sequence 0, once the batches
                    // of the old one are settled: else a retry of theirs
                    // would meet a partition fenced by the new epoch.
                    if !window.is_empty() {
                        queue.sealed.borrow_mut().push_front(batch);
                        return;
                    }
                    queue.stamp.set(Some(stamp));
                    queue.sequence.set(0);
                }
                let sequence = queue.sequence.get();
                fjord_core::batch::set_producer(&mut batch.bytes, stamp.0, stamp.1, sequence);
                queue.sequence.set(next_sequence(sequence, batch.records));
            }
            let attempt = Attempt::Pending(self.send(topic, queue, &batch.bytes));
            window.push_back(InFlight {
                batch,
                attempt,
                retries: 0,
            });
        }
    }

    /// The first batch of the window failed: resend, restart sequences, or
    /// give up on it, as the module doc says.
    async fn failed(
        &self,
        topic: &Topic,
        queue: &PartitionQueue,
        window: &mut VecDeque<InFlight>,
        error: ClientError,
    ) {
        // The later batches' answers decide what is sent again.
        for later in window.iter_mut().skip(1) {
            let _ = later.settle().await;
        }
        let Some(head) = window.front_mut() else {
            return;
        };
        let in_time = head.batch.deadline.is_none_or(|d| Instant::now() < d)
            && head.retries < self.config.retries;
        let gap = self.config.idempotence
            && matches!(
                error,
                ClientError::Broker {
                    code: ErrorCode::OutOfOrderSequenceNumber,
                    ..
                }
            );
        if in_time && gap {
            // Nothing before it is missing on our side: the broker lost
            // the producer's state. A new epoch restarts the sequence.
            head.retries += 1;
            self.restart_sequences(queue, window, None).await;
            return;
        }
        if in_time && error.is_retriable() {
            head.retries += 1;
            glommio::timer::sleep(self.config.retry_backoff).await;
            self.refresh_route(topic, queue).await;
            for batch in window.iter_mut().filter(|b| !b.written()) {
                batch.attempt = Attempt::Pending(self.send(topic, queue, &batch.batch.bytes));
            }
            return;
        }
        let Some(head) = window.pop_front() else {
            return;
        };
        tracing::warn!(
            topic = %topic.name,
            partition = queue.partition,
            records = head.batch.records,
            error = %error,
            "batch failed"
        );
        self.answer_batch(queue, head.batch, Err(error.clone()));
        if self.config.stop_on_error {
            *queue.failed.borrow_mut() = Some(error.clone());
            // The open batch was accepted before the failure was known:
            // it fails with it.
            if let Some(open) = queue.open.borrow_mut().take() {
                for reply in open.replies {
                    self.answer(reply, Err(error.clone()));
                }
            }
        }
        if self.config.idempotence {
            // What came after a batch surely not written was not written
            // either (the broker takes sequences in order): it goes again
            // under the new epoch. After a timeout nobody knows.
            let unknown = (!refused(&error) || self.config.stop_on_error).then_some(error);
            self.restart_sequences(queue, window, unknown).await;
        }
        assert!(
            self.config.idempotence || window.is_empty(),
            "one batch in flight without idempotence"
        );
    }

    /// KIP-360: bumps the producer's epoch and starts the partition's
    /// sequences again at 0. Batches of the window that were written are
    /// answered; the others go back to the front of the queue, to be
    /// stamped afresh — or fail with `fail_with`.
    async fn restart_sequences(
        &self,
        queue: &PartitionQueue,
        window: &mut VecDeque<InFlight>,
        fail_with: Option<ClientError>,
    ) {
        let mut again = Vec::new();
        for mut batch in window.drain(..) {
            match (batch.settle().await, &fail_with) {
                (Ok(base), _) => self.answer_batch(queue, batch.batch, Ok(base)),
                (Err(_), Some(error)) => self.answer_batch(queue, batch.batch, Err(error.clone())),
                (Err(_), None) => again.push(batch.batch),
            }
        }
        {
            let mut sealed = queue.sealed.borrow_mut();
            for batch in again.into_iter().rev() {
                sealed.push_front(batch);
            }
        }
        if let Some(stamp) = queue.stamp.take() {
            self.identity.bump(&self.client, stamp).await;
        }
    }

    /// Asks where the partition is again: it may have moved.
    async fn refresh_route(&self, topic: &Topic, queue: &PartitionQueue) {
        if let Ok(routes) = self.client.routes(&topic.name).await {
            let route = routes
                .partitions
                .get(queue.partition as usize)
                .copied()
                .flatten();
            queue.route.set(route);
        }
    }

    /// Sends one batch now (the request is queued on its connection before
    /// this returns, so sends go out in call order); resolves to the base
    /// offset, or -1 under acks 0.
    fn send(
        &self,
        topic: &Topic,
        queue: &PartitionQueue,
        batch: &[u8],
    ) -> LocalBoxFuture<'static, Result<i64>> {
        let Some(route) = queue.route.get() else {
            let error = ClientError::broker(
                ErrorCode::UnknownTopicOrPartition,
                format!("{}-{} has no route", topic.name, queue.partition),
            );
            return futures::future::ready(Err(error)).boxed_local();
        };
        let body = produce_request(
            &topic.name,
            queue.partition,
            self.config.acks,
            self.client.config().request_timeout,
            batch.len(),
        );
        let expect = self.config.acks != api::ACKS_NONE;
        let call = self
            .client
            .call(route.addr, Lane::Prompt, body, batch.to_vec(), expect);
        let (name, partition) = (topic.name.clone(), queue.partition);
        async move {
            match call.await? {
                Some(response) => produce_result(&response, &name, partition),
                None => Ok(-1),
            }
        }
        .boxed_local()
    }

    /// Answers every record of a batch.
    fn answer_batch(&self, queue: &PartitionQueue, batch: Sealed, outcome: Result<i64>) {
        for (i, reply) in batch.replies.into_iter().enumerate() {
            let answer = outcome.clone().map(|base| RecordMetadata {
                partition: queue.partition,
                offset: if base < 0 { -1 } else { base + i as i64 },
            });
            self.answer(reply, answer);
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
/// of `len` bytes, answered within `timeout` (as Kafka's producer, the
/// client's request timeout: `REQUEST_TIMED_OUT` from the broker, and the
/// batch may yet be written).
pub fn produce_request(
    topic: &str,
    partition: i32,
    acks: i16,
    timeout: Duration,
    len: usize,
) -> wire::RequestT {
    wire::RequestT::ProduceRequest(Box::new(wire::ProduceRequestT {
        acks,
        timeout_ms: i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX),
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

/// The sequence after a batch of `records` at `sequence`: sequences wrap
/// from `i32::MAX` to 0, as Kafka's do.
fn next_sequence(sequence: i32, records: i32) -> i32 {
    debug_assert!(sequence >= 0 && records > 0);
    ((i64::from(sequence) + i64::from(records)) % (i64::from(i32::MAX) + 1)) as i32
}

/// Whether the broker surely did not write a batch it answered with
/// `error` (a refusal before the append), rather than may have (a
/// timeout, a lost connection, a leader gone while replicating it).
fn refused(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Broker {
            code: ErrorCode::OutOfOrderSequenceNumber
                | ErrorCode::InvalidProducerEpoch
                | ErrorCode::MessageTooLarge
                | ErrorCode::CorruptMessage
                | ErrorCode::InvalidRecord
                | ErrorCode::InvalidRequest
                | ErrorCode::InvalidRequiredAcks,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(next_sequence(0, 5), 5);
        assert_eq!(next_sequence(i32::MAX, 1), 0);
        assert_eq!(next_sequence(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn idempotence_needs_acks_all_and_at_most_five_in_flight() {
        assert!(ProducerConfig::default().validate().is_ok());
        let acks_one = ProducerConfig {
            acks: api::ACKS_LEADER,
            ..ProducerConfig::default()
        };
        assert!(matches!(acks_one.validate(), Err(ClientError::Config(_))));
        let without = ProducerConfig {
            idempotence: false,
            ..acks_one
        };
        assert!(without.validate().is_ok());
        let six = ProducerConfig {
            max_in_flight: 6,
            ..ProducerConfig::default()
        };
        assert!(six.validate().is_err());
    }
}
