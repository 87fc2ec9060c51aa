//! The open-loop producer. Message `j` of a producer is due at
//! `j / rate`; the generator wakes when a batch must go (when the message
//! that fills the open batch is due, by the count of the last full one, or
//! when a batch's `linger` since its first message's due time ends),
//! appends every message due by then to the open batch of the current
//! partition (sticky, as Kafka's producer for null keys), seals batches at
//! `batch_size` or at their linger, and sends them with at most
//! `max_in_flight` requests per partition. Appending a batch's messages
//! when it goes rather than one by one sends the same bytes at the same
//! moment: each carries its due time, not the time it was appended. Each
//! message's latency runs from its *due* time to its
//! acknowledgement: when the broker falls behind, messages wait (and the
//! generator stalls once two sealed batches queue per partition), and the
//! wait is counted as latency instead of lowering the rate
//! (no coordinated omission).

use crate::kafka::KafkaClient;
use crate::report::{MERGE_EVERY, Progress, histogram};
use fjord_client::Client;
use fjord_client::producer::{produce_request, produce_result};
use fjord_client::transport::Lane;
use fjord_core::BatchBuilder;
use fjord_net::api;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the generator wakes while it is stalled and while it
/// finishes: messages due within one tick go out together, so a tick
/// bounds the latency it adds itself.
const TICK: Duration = Duration::from_micros(50);
/// The longest sleep of the generator: progress and stall checks run at
/// least this often.
const WAKE_MAX: Duration = Duration::from_millis(10);
/// How far behind schedule the generator may be at the deadline and still
/// send every message due before it.
const CATCH_UP_MAX: Duration = Duration::from_millis(500);
/// Sealed batches waiting per partition before the generator stalls.
const QUEUED_MAX: usize = 2;
/// A run in which nothing was acknowledged for this long, with requests
/// outstanding, cannot make progress: it ends with an error.
pub const STALL_MAX: Duration = Duration::from_secs(10);
/// Wait before a batch that failed with a retriable error goes again.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes at the start of each value: its due time, ns since the epoch
/// (what `e2e` measures from).
pub const STAMP_LEN: usize = 8;

/// The settings of a produce run.
#[derive(Debug, Clone, Serialize)]
pub struct ProduceConfig {
    /// Messages per second, all producers together.
    pub rate: f64,
    /// Value bytes per message.
    pub message_size: usize,
    /// Topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: i32,
    /// Producers, each with its own client (connections and thread).
    pub producers: usize,
    /// 0, 1 or -1 (all).
    pub acks: i16,
    /// A batch is sealed at this many bytes.
    pub batch_size: usize,
    /// Or this long after its first message.
    pub linger_ms: f64,
    /// Requests in flight per partition per producer.
    pub max_in_flight: usize,
    /// Messages to send in all; generation also stops at `duration_sec`.
    pub messages: u64,
    /// Longest run of generation, in seconds.
    pub duration_sec: f64,
    /// Cores the producer threads are pinned to, round robin.
    pub cpus: Vec<usize>,
    /// Produce through this Kafka listener (and the brokers its Metadata
    /// names) instead of the native protocol.
    pub kafka: Option<SocketAddr>,
}

/// Runs the producers to the end; returns the wall time from start to the
/// last acknowledgement.
pub fn run(
    config: &ProduceConfig,
    clients: Vec<Client>,
    routes: Vec<SocketAddr>,
    progress: &Arc<Progress>,
    delivered: Option<&Progress>,
) -> Result<Duration, String> {
    assert_eq!(clients.len(), config.producers);
    let start = Instant::now();
    let finished = Arc::new(AtomicUsize::new(0));
    let stuck = Arc::new(OnceLock::new());
    for (k, client) in clients.into_iter().enumerate() {
        let config_kafka = config.kafka;
        let client_for_transport = client.clone();
        let (config, routes, progress, finished, stuck) = (
            config.clone(),
            routes.clone(),
            progress.clone(),
            finished.clone(),
            stuck.clone(),
        );
        let cpu = (!config.cpus.is_empty()).then(|| config.cpus[k % config.cpus.len()]);
        let generate = move || async move {
            let generated = async {
                let (sink, routes) = Sink::open(&config, client, routes).await?;
                let engine = Rc::new(Engine::new(k, config, sink, routes, progress, start));
                engine.generate().await
            };
            if let Err(why) = generated.await {
                let _ = stuck.set(why);
            }
            finished.fetch_add(1, Ordering::Relaxed);
        };
        match config_kafka {
            // The generator runs on the client's transport thread: its
            // requests and their answers never cross threads.
            None => {
                let transport = client_for_transport.clone();
                transport
                    .run_on_transport(move || {
                        glommio::spawn_local(generate()).detach();
                    })
                    .map_err(|e| format!("cannot start producer {k}: {e}"))?;
            }
            // Kafka's connections are the generator's own: a thread of its
            // own runs them.
            Some(_) => {
                let placement = cpu.map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
                glommio::LocalExecutorBuilder::new(placement)
                    .name("bench-kafka")
                    .io_memory(crate::kafka::IO_MEMORY)
                    .spawn(generate)
                    .map_err(|e| format!("cannot start producer {k}: {e}"))?;
            }
        }
    }
    let producers = config.producers;
    crate::watch(progress, delivered, start, || {
        finished.load(Ordering::Relaxed) == producers || stuck.get().is_some()
    });
    match stuck.get() {
        Some(why) => Err(format!("the run cannot make progress: {why}")),
        None => Ok(start.elapsed()),
    }
}

/// Where the batches go: the native protocol through the client, or
/// Kafka's through the Kafka listeners.
enum Sink {
    Native(Client),
    /// The client and the listener it bootstraps (and looks leaders up) from.
    Kafka(KafkaClient, SocketAddr),
}

impl Sink {
    /// The sink of a producer, and each partition's address for it.
    async fn open(
        config: &ProduceConfig,
        client: Client,
        routes: Vec<SocketAddr>,
    ) -> Result<(Sink, Vec<SocketAddr>), String> {
        match config.kafka {
            None => Ok((Sink::Native(client), routes)),
            Some(bootstrap) => {
                let kafka = KafkaClient::default();
                let routes = kafka.leaders(bootstrap, &config.topic).await?;
                Ok((Sink::Kafka(kafka, bootstrap), routes))
            }
        }
    }

    /// Sends one batch; `Ok` once acknowledged as `acks` asks.
    async fn produce(
        &self,
        addr: SocketAddr,
        topic: &str,
        partition: i32,
        acks: i16,
        batch: Vec<u8>,
    ) -> Result<(), Failed> {
        match self {
            Sink::Native(client) => {
                let timeout = client.config().request_timeout;
                let request = produce_request(topic, partition, acks, timeout, batch.len());
                let answered = acks != api::ACKS_NONE;
                let answer = client
                    .call(addr, Lane::Prompt, request, batch, answered)
                    .await;
                match answer {
                    Ok(Some(response)) => produce_result(&response, topic, partition).map(|_| ()),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                }
                .map_err(|e| Failed {
                    why: e.to_string(),
                    retriable: e.is_retriable(),
                })
            }
            Sink::Kafka(kafka, _) => kafka.produce(addr, topic, partition, acks, batch).await,
        }
    }

    /// Where a partition's leader is now, if one is known.
    async fn leader(&self, topic: &str, partition: i32) -> Option<SocketAddr> {
        let index = usize::try_from(partition).ok()?;
        match self {
            Sink::Native(client) => {
                let routes = client.routes(topic).await.ok()?;
                routes.partitions.get(index)?.as_ref().map(|r| r.addr)
            }
            Sink::Kafka(kafka, bootstrap) => {
                let leaders = kafka.leaders(*bootstrap, topic).await.ok()?;
                leaders.get(index).copied()
            }
        }
    }
}

/// Why a batch was not acknowledged, and whether sending it again may
/// succeed (a leader moved, a connection dropped, a request timed out).
pub struct Failed {
    /// What went wrong.
    pub why: String,
    /// Whether sending the batch again may succeed.
    pub retriable: bool,
}

struct Part {
    /// Where the partition's leader was last found.
    addr: Cell<SocketAddr>,
    partition: i32,
    open: RefCell<Option<Open>>,
    queued: RefCell<VecDeque<Sealed>>,
    in_flight: Cell<usize>,
    /// Its last answer was an error that sending again cannot mend.
    failing: Cell<bool>,
}

struct Open {
    builder: BatchBuilder,
    first: u64,
    opened_ns: u64,
}

struct Sealed {
    bytes: Vec<u8>,
    first: u64,
    count: u64,
}

struct Engine {
    config: ProduceConfig,
    sink: Sink,
    parts: Vec<Rc<Part>>,
    progress: Arc<Progress>,
    latencies: RefCell<Histogram<u64>>,
    /// When this producer began: due times count from here.
    start: Instant,
    /// The same moment by the wall clock, in ns since the epoch: each
    /// value starts with its due time by it (e2e's delivery latency).
    wall_start_ns: u64,
    /// When the run began (all producers): rates count from here.
    run_start: Instant,
    ns_per_msg: f64,
    /// Messages this producer sends.
    total: u64,
    first_partition: usize,
    /// When a request last succeeded (or the run began).
    acked_at: Cell<Instant>,
    /// The last error a request got.
    last_error: RefCell<Option<String>>,
}

impl Engine {
    fn new(
        k: usize,
        config: ProduceConfig,
        sink: Sink,
        routes: Vec<SocketAddr>,
        progress: Arc<Progress>,
        run_start: Instant,
    ) -> Engine {
        let producers = config.producers as u64;
        let total =
            config.messages / producers + u64::from((k as u64) < config.messages % producers);
        let parts = routes
            .iter()
            .enumerate()
            .map(|(p, addr)| {
                Rc::new(Part {
                    addr: Cell::new(*addr),
                    partition: p as i32,
                    open: RefCell::new(None),
                    queued: RefCell::new(VecDeque::new()),
                    in_flight: Cell::new(0),
                    failing: Cell::new(false),
                })
            })
            .collect();
        Engine {
            ns_per_msg: 1e9 * config.producers as f64 / config.rate,
            config,
            sink,
            parts,
            progress,
            latencies: RefCell::new(histogram()),
            start: Instant::now(),
            wall_start_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            run_start,
            total,
            first_partition: k,
            acked_at: Cell::new(Instant::now()),
            last_error: RefCell::new(None),
        }
    }

    fn due_ns(&self, j: u64) -> u64 {
        (j as f64 * self.ns_per_msg) as u64
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Why the run cannot go on, if it cannot: every partition's last answer
    /// was an error, or nothing was acknowledged for [`STALL_MAX`] while
    /// requests were outstanding.
    fn stuck(&self) -> Option<String> {
        let last_error = || {
            self.last_error
                .borrow()
                .clone()
                .unwrap_or_else(|| "no answer".into())
        };
        if self.parts.iter().all(|p| p.failing.get()) {
            return Some(format!(
                "every partition failed; last error: {}",
                last_error()
            ));
        }
        let waiting = self
            .parts
            .iter()
            .any(|p| p.in_flight.get() > 0 || !p.queued.borrow().is_empty());
        let stalled = self.acked_at.get().elapsed();
        (waiting && stalled >= STALL_MAX).then(|| {
            format!(
                "nothing acknowledged for {} s; last error: {}",
                stalled.as_secs(),
                last_error()
            )
        })
    }

    async fn generate(self: &Rc<Self>) -> Result<(), String> {
        let stop_ns = (self.config.duration_sec * 1e9) as u64;
        let linger_ns = (self.config.linger_ms * 1e6) as u64;
        let mut value = vec![b'x'; self.config.message_size];
        let mut p = self.first_partition % self.parts.len();
        let mut j = 0u64;
        let mut last_merge = Instant::now();
        // Messages owed once the deadline passes: those due before it, if
        // the generator is only a little behind (a run ending inside a
        // stall still sends what it scheduled); none if it is hopelessly
        // behind (a rate far above capacity stops at the deadline).
        let mut owed: Option<u64> = None;
        // Messages in the last batch sealed at `batch_size`: when the open
        // one will fill.
        let mut full_count: Option<u64> = None;
        loop {
            let now_ns = self.now_ns();
            let generating = now_ns < stop_ns;
            let due = if generating {
                ((now_ns as f64 / self.ns_per_msg) as u64 + 1).min(self.total)
            } else {
                *owed.get_or_insert_with(|| {
                    let scheduled =
                        ((stop_ns as f64 / self.ns_per_msg).ceil() as u64).min(self.total);
                    let lag_ns = self.due_ns(scheduled.saturating_sub(j));
                    if lag_ns <= CATCH_UP_MAX.as_nanos() as u64 {
                        scheduled
                    } else {
                        j
                    }
                })
            };
            while j < due {
                let part = &self.parts[p];
                if part.queued.borrow().len() >= QUEUED_MAX {
                    break;
                }
                let full = {
                    let mut open = part.open.borrow_mut();
                    let open = open.get_or_insert_with(|| Open {
                        builder: self.builder(),
                        first: j,
                        // Linger counts from the first message's due time,
                        // as a producer's from the first send into a batch.
                        opened_ns: self.due_ns(j),
                    });
                    self.push(&mut open.builder, &mut value, j);
                    (open.builder.encoded_len() >= self.config.batch_size)
                        .then(|| open.builder.len() as u64)
                };
                j += 1;
                if let Some(count) = full {
                    full_count = Some(count);
                    self.seal(part);
                    p = (p + 1) % self.parts.len();
                }
            }
            let finishing = j >= self.total || owed.is_some_and(|owed| j >= owed);
            for (i, part) in self.parts.iter().enumerate() {
                let expired = part
                    .open
                    .borrow()
                    .as_ref()
                    .is_some_and(|o| finishing || now_ns >= o.opened_ns + linger_ns);
                if expired {
                    self.seal(part);
                    if i == p {
                        p = (p + 1) % self.parts.len();
                    }
                }
            }
            if last_merge.elapsed() >= MERGE_EVERY {
                self.progress.merge(&mut self.latencies.borrow_mut());
                last_merge = Instant::now();
            }
            let idle = self
                .parts
                .iter()
                .all(|p| p.in_flight.get() == 0 && p.queued.borrow().is_empty());
            if finishing && idle {
                break;
            }
            if let Some(why) = self.stuck() {
                self.progress.merge(&mut self.latencies.borrow_mut());
                return Err(why);
            }
            let stalled = self
                .parts
                .iter()
                .any(|p| p.queued.borrow().len() >= QUEUED_MAX);
            let wake_ns = if generating && !finishing && !stalled {
                self.next_wake_ns(now_ns, j, p, full_count, linger_ns, stop_ns)
            } else {
                now_ns + TICK.as_nanos() as u64
            };
            glommio::timer::sleep(Duration::from_nanos(wake_ns.saturating_sub(self.now_ns())))
                .await;
        }
        self.progress.merge(&mut self.latencies.borrow_mut());
        Ok(())
    }

    /// When a batch must next go out, `j` being the next message and `p`
    /// the partition it goes to: when the message that fills `p`'s batch
    /// (or the last message) is due, when an open batch's linger ends, or
    /// when the run ends. A batch holds `full_count` messages, by the last
    /// full one; before one filled, as many as the open batch's bytes per
    /// message so far allow (its header's share among them: an estimate
    /// that wakes early, never late).
    fn next_wake_ns(
        &self,
        now_ns: u64,
        j: u64,
        p: usize,
        full_count: Option<u64>,
        linger_ns: u64,
        stop_ns: u64,
    ) -> u64 {
        let filling = match (self.parts[p].open.borrow().as_ref(), full_count) {
            (Some(open), count) => {
                let count = count.unwrap_or_else(|| {
                    let per_message = open.builder.encoded_len() / open.builder.len().max(1);
                    (self.config.batch_size / per_message.max(1)) as u64
                });
                // A batch that holds more than that without being full
                // takes the messages one by one.
                (open.first + count.max(1) - 1).max(j)
            }
            (None, Some(count)) => j + count.max(1) - 1,
            (None, None) => j,
        }
        // The last message seals what is open when it is due.
        .min(self.total.saturating_sub(1));
        let lingering = self
            .parts
            .iter()
            .filter_map(|part| part.open.borrow().as_ref().map(|o| o.opened_ns + linger_ns))
            .min()
            .unwrap_or(u64::MAX);
        self.due_ns(filling)
            .min(lingering)
            .min(stop_ns)
            .min(now_ns + WAKE_MAX.as_nanos() as u64)
    }

    fn builder(&self) -> BatchBuilder {
        // Room for a full batch and the record that fills it.
        BatchBuilder::with_capacity(self.config.batch_size + self.config.message_size + 64)
    }

    /// Adds message `j` to `builder`: `value` stamped with its due time.
    fn push(&self, builder: &mut BatchBuilder, value: &mut [u8], j: u64) {
        if let Some(stamp) = value.get_mut(..STAMP_LEN) {
            stamp.copy_from_slice(&(self.wall_start_ns + self.due_ns(j)).to_be_bytes());
        }
        builder.push(
            (self.wall_start_ns / 1_000_000) as i64,
            None,
            Some(value),
            &[],
        );
    }

    /// The batch of messages `first..first + count` again, byte for byte
    /// as `generate` built it: a batch is a function of its messages.
    fn rebuild(&self, first: u64, count: u64) -> Vec<u8> {
        let mut builder = self.builder();
        let mut value = vec![b'x'; self.config.message_size];
        for j in first..first + count {
            self.push(&mut builder, &mut value, j);
        }
        builder.build()
    }

    fn seal(self: &Rc<Self>, part: &Rc<Part>) {
        let Some(open) = part.open.borrow_mut().take() else {
            return;
        };
        let count = open.builder.len() as u64;
        part.queued.borrow_mut().push_back(Sealed {
            bytes: open.builder.build(),
            first: open.first,
            count,
        });
        self.pump(part);
    }

    /// Sends queued batches while the partition has room in flight.
    fn pump(self: &Rc<Self>, part: &Rc<Part>) {
        while part.in_flight.get() < self.config.max_in_flight {
            let Some(sealed) = part.queued.borrow_mut().pop_front() else {
                return;
            };
            part.in_flight.set(part.in_flight.get() + 1);
            let sent_ns = self.run_start.elapsed().as_nanos() as u64;
            self.progress
                .sent_until_ns
                .fetch_max(sent_ns, Ordering::Relaxed);
            let engine = self.clone();
            let part = part.clone();
            glommio::spawn_local(async move {
                let Sealed {
                    bytes,
                    first,
                    count,
                } = sealed;
                let outcome = engine
                    .sink
                    .produce(
                        part.addr.get(),
                        &engine.config.topic,
                        part.partition,
                        engine.config.acks,
                        bytes,
                    )
                    .await
                    .err();
                let done_ns = engine.now_ns();
                part.failing
                    .set(outcome.as_ref().is_some_and(|failed| !failed.retriable));
                match outcome {
                    None => {
                        engine.acked_at.set(Instant::now());
                        let mut latencies = engine.latencies.borrow_mut();
                        for j in first..first + count {
                            let us = done_ns.saturating_sub(engine.due_ns(j)) / 1000;
                            let _ = latencies.record(us.max(1));
                        }
                        engine.progress.messages.fetch_add(count, Ordering::Relaxed);
                        engine.progress.bytes.fetch_add(
                            count * engine.config.message_size as u64,
                            Ordering::Relaxed,
                        );
                    }
                    // A leader moved or a connection dropped: as Kafka's
                    // producer, find the leader again and send the batch
                    // again; the wait counts in its messages' latency. A
                    // partition that never recovers stops the run after
                    // STALL_MAX without acknowledgements.
                    Some(failed) if failed.retriable => {
                        if engine.last_error.borrow().is_none() {
                            eprintln!("bench: produce failed, sending again: {}", failed.why);
                        }
                        *engine.last_error.borrow_mut() = Some(failed.why);
                        glommio::timer::sleep(RETRY_BACKOFF).await;
                        if let Some(addr) = engine
                            .sink
                            .leader(&engine.config.topic, part.partition)
                            .await
                        {
                            part.addr.set(addr);
                        }
                        part.queued.borrow_mut().push_front(Sealed {
                            bytes: engine.rebuild(first, count),
                            first,
                            count,
                        });
                    }
                    Some(failed) => {
                        if engine.progress.errors.fetch_add(count, Ordering::Relaxed) == 0 {
                            eprintln!("bench: produce failed: {}", failed.why);
                        }
                        *engine.last_error.borrow_mut() = Some(failed.why);
                    }
                }
                part.in_flight.set(part.in_flight.get() - 1);
                engine.pump(&part);
            })
            .detach();
        }
    }
}
