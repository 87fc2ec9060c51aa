//! One partition as its shard serves it: the log, plus the fetches parked
//! until new batches are written. Errors are Kafka's codes, ready for the
//! wire.
//!
//! Produce is refused while the shard's data directory is low on space
//! (reads go on). A log that stopped for want of room (a write hit ENOSPC
//! or EMFILE) is opened again from disk by the next produce once room is
//! back — recovery keeps every whole batch — so it is never read-only for
//! good.
//!
//! Batches of idempotent producers (producer id >= 0) are checked against
//! the partition's producer state ([`ProducerTable`]) first: a duplicate
//! is answered with its first offset and not appended again; a gap or a
//! fenced epoch is refused. On a partition of its own the check, the
//! append and the table's update run under the state's turn, one
//! idempotent batch at a time (the log assigns offsets only inside its
//! own await, so the check cannot be made atomic with it otherwise); a
//! replicated partition checks and proposes in one synchronous step and
//! the table follows the Raft log (see `replica.rs`).
//!
//! Kafka's DeleteRecords moves the start clients see (the low watermark)
//! to any offset up to the high watermark: the metadata carries it to every
//! replica ([`Partition::set_log_start`]); reads below it are refused and
//! whole segments below it go at the next retention run. The log's own
//! start (a segment boundary, which Raft's log view needs) lags behind it
//! until then.

use crate::producer_state::ProducerState;
use crate::replica::{Replica, Replication};
use fjord_core::Batch;
use fjord_net::{ErrorCode, api};
use fjord_replication::control::METADATA_GROUP;
use fjord_storage::space::SpaceWatch;
use fjord_storage::{
    BatchCache, Log, LogConfig, LogRead, ProducerBatch, SequenceError, Staging, StorageError,
    Verdict, producer_snapshot,
};
use futures::channel::oneshot;
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a produce waits for its acknowledgement when its request's
/// timeout does not bound it (`acks=1`, the broker's own appends): a Kafka
/// producer's default `request.timeout.ms`.
const ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// What a produce's answer waits for: Kafka's `acks`, and until when. Past
/// the deadline the answer is `REQUEST_TIMED_OUT`, as Kafka's, and a batch
/// taken stays appended: it may yet commit.
#[derive(Debug, Clone, Copy)]
pub struct Acks {
    /// 0, 1 or -1 (all): see [`Partition::produce`].
    pub required: i16,
    /// The latest moment to answer.
    pub deadline: Instant,
}

impl Acks {
    /// A request's, from when the broker takes it up. As Kafka's, the
    /// request's `timeout_ms` bounds an `acks=all` wait for the replicas
    /// (none at all when zero or negative: answered at once unless already
    /// acknowledged); `acks=1`, which Kafka answers once its leader has the
    /// batch whatever the timeout, waits up to [`ACK_TIMEOUT_DEFAULT`].
    pub fn of_request(required: i16, timeout_ms: i32) -> Acks {
        let timeout = match required {
            api::ACKS_ALL => Duration::from_millis(timeout_ms.max(0) as u64),
            _ => ACK_TIMEOUT_DEFAULT,
        };
        Acks {
            required,
            deadline: Instant::now() + timeout,
        }
    }

    /// Whether `required` is an `acks` Kafka knows.
    pub fn is_valid(required: i16) -> bool {
        [api::ACKS_NONE, api::ACKS_LEADER, api::ACKS_ALL].contains(&required)
    }

    /// The broker's own appends: acks=all within [`ACK_TIMEOUT_DEFAULT`].
    pub fn internal() -> Acks {
        Acks {
            required: api::ACKS_ALL,
            deadline: Instant::now() + ACK_TIMEOUT_DEFAULT,
        }
    }

    /// `waiting`'s outcome, or `REQUEST_TIMED_OUT` once the deadline passes
    /// first. `waiting` must be safe to drop unfinished.
    pub async fn within<T>(
        &self,
        waiting: impl Future<Output = Result<T, ErrorCode>>,
    ) -> Result<T, ErrorCode> {
        let mut waiting = std::pin::pin!(waiting);
        // Most answers are ready at once (a staged batch): no timer for them.
        if let std::task::Poll::Ready(outcome) = futures::poll!(waiting.as_mut()) {
            return outcome;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorCode::RequestTimedOut);
        }
        let timer = std::pin::pin!(glommio::timer::sleep(left));
        match futures::future::select(waiting, timer).await {
            futures::future::Either::Left((outcome, _)) => outcome,
            futures::future::Either::Right(_) => Err(ErrorCode::RequestTimedOut),
        }
    }
}

/// Where a produce landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Offset of the first record.
    pub base_offset: i64,
    /// The log start at the time.
    pub log_start_offset: i64,
}

/// A partition's offsets and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// First offset held.
    pub log_start_offset: i64,
    /// Next offset to be readable (the high watermark on one node).
    pub log_end_offset: i64,
    /// Next offset this replica's own log assigns: past the high watermark
    /// on a leader with uncommitted batches, below it on a follower behind.
    pub log_end_local: i64,
    /// Bytes on disk.
    pub size_bytes: i64,
    /// Produce is refused now (disk low, or the log waits for room).
    pub read_only: bool,
    /// A replicated partition's state, as this replica sees it.
    pub replication: Option<crate::replica::Status>,
}

/// Where a partition lives and what its log needs to be (re)opened.
pub struct PartitionSetup {
    /// Owning shard, for log lines.
    pub shard: usize,
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// The topic's id.
    pub topic_id: u64,
    /// The log's directory.
    pub dir: std::path::PathBuf,
    /// The log's settings.
    pub config: LogConfig,
    /// The shard's batch cache.
    pub cache: Rc<BatchCache>,
    /// The shard's free-space watch.
    pub space: Rc<SpaceWatch>,
    /// The shard's staging area, if it has one.
    pub staging: Option<Rc<Staging>>,
    /// The shard's counters.
    pub metrics: Rc<crate::admin::metrics::ShardMetrics>,
    /// A replicated partition's replica, and the shard's replication.
    pub replica: Option<(Replica, Rc<Replication>)>,
}

/// A partition on its owning shard.
pub struct Partition {
    /// The topic's id: a partition of a re-created topic is a new partition.
    pub topic_id: u64,
    setup: PartitionSetup,
    log: RefCell<Rc<Log>>,
    /// One reopen at a time.
    reopen_turn: Semaphore,
    parked: RefCell<Vec<oneshot::Sender<()>>>,
    /// The groups it coordinates (partitions of `__consumer_offsets`).
    coordinator: std::cell::OnceCell<Rc<crate::group::Coordinator>>,
    /// Idempotent producers' state, following the log (the Raft log when
    /// replicated).
    producers: ProducerState,
    /// The log start DeleteRecords set (0: none), as the metadata has it.
    deleted_below: Cell<u64>,
}

/// Kafka's code for a refused sequence.
pub fn sequence_error_code(error: &SequenceError) -> ErrorCode {
    match error {
        SequenceError::OutOfOrder { .. } => ErrorCode::OutOfOrderSequenceNumber,
        SequenceError::StaleEpoch { .. } => ErrorCode::InvalidProducerEpoch,
    }
}

/// Kafka's code for a storage failure.
pub fn error_code(error: &StorageError) -> ErrorCode {
    match error {
        StorageError::InvalidBatch(_) => ErrorCode::CorruptMessage,
        StorageError::BatchTooLarge { .. } => ErrorCode::MessageTooLarge,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        // Replication's appends and cuts: the replica stops on these.
        StorageError::OffsetMismatch { .. }
        | StorageError::EpochRegression { .. }
        | StorageError::NotBatchBoundary { .. }
        | StorageError::Truncated { .. } => ErrorCode::NotLeaderOrFollower,
        StorageError::Io { .. }
        | StorageError::Corrupt { .. }
        | StorageError::Failed(_)
        | StorageError::OutOfRoom(_)
        | StorageError::Closed => ErrorCode::KafkaStorageError,
    }
}

impl Partition {
    /// The replica, if the partition is replicated.
    pub fn replica(&self) -> Option<&Replica> {
        self.setup.replica.as_ref().map(|(r, _)| r)
    }

    /// Its topic's name.
    pub fn topic(&self) -> &str {
        &self.setup.topic
    }

    /// Its number in the topic.
    pub fn number(&self) -> i32 {
        self.setup.partition
    }

    /// Opens the partition's log.
    pub async fn open(mut setup: PartitionSetup) -> Result<Partition, StorageError> {
        setup.config.compaction.keep_empty_batches = setup.replica.is_some();
        let log = Log::open_staged(
            &setup.dir,
            setup.config.clone(),
            setup.cache.clone(),
            setup.staging.clone(),
        )
        .await?;
        let (producers, snapshot_offset) =
            match producer_snapshot::load(&log, setup.replica.is_some()).await {
                Ok(loaded) => loaded,
                Err(e) => {
                    // Closed, not dropped: what it replayed and could not write
                    // yet goes back to the staging area for the retry.
                    let _ = log.close().await;
                    return Err(e);
                }
            };
        if !producers.is_empty() {
            tracing::info!(
                shard = setup.shard,
                topic = %setup.topic,
                partition = setup.partition,
                producers = producers.len(),
                "producer state rebuilt"
            );
        }
        let producers = ProducerState::new(producers, &log, snapshot_offset);
        Ok(Partition {
            topic_id: setup.topic_id,
            setup,
            log: RefCell::new(Rc::new(log)),
            reopen_turn: Semaphore::new(1),
            parked: RefCell::new(Vec::new()),
            coordinator: std::cell::OnceCell::new(),
            producers,
            deleted_below: Cell::new(0),
        })
    }

    /// The first offset clients may read: the log's own start or, above
    /// it, the one DeleteRecords set — never past the end they may read to
    /// (a follower may not have reached it yet).
    pub fn log_start(&self) -> u64 {
        let floor = self.deleted_below.get().min(self.readable_end());
        self.log().offset_start().max(floor)
    }

    /// Takes the log start the metadata gives the partition (Kafka's
    /// DeleteRecords); when it rose, frees the segments below it now.
    pub async fn set_log_start(&self, start: u64) {
        if start <= self.deleted_below.get() {
            return;
        }
        self.deleted_below.set(start);
        let s = &self.setup;
        tracing::info!(shard = s.shard, topic = %s.topic, partition = s.partition, log_start = start, "records deleted below");
        if let Err(e) = self.enforce_retention(fjord_storage::log::now_ms()).await {
            tracing::warn!(shard = s.shard, topic = %s.topic, partition = s.partition, error = %e, "retention");
        }
    }

    /// The coordinator of the groups this partition of `__consumer_offsets`
    /// holds, made on first use.
    pub fn coordinator(&self) -> Rc<crate::group::Coordinator> {
        self.coordinator.get_or_init(Rc::default).clone()
    }

    /// Checks an idempotent producer's batch against the producer state;
    /// changes nothing.
    pub fn check_producer(&self, batch: &ProducerBatch) -> Result<Verdict, ErrorCode> {
        self.producers.check(batch).map_err(|e| {
            let s = &self.setup;
            tracing::debug!(shard = s.shard, topic = %s.topic, partition = s.partition, error = %e, "batch refused");
            sequence_error_code(&e)
        })
    }

    /// Records a producer's batch the log (or the Raft log) took at
    /// `base..=last`, in log order. Raft may cut a replica's log back to
    /// its high watermark, and the state keeps what such a cut needs.
    pub fn apply_producer(&self, batch: &ProducerBatch, base: u64, last: u64) {
        let committed = self.replica().map_or(u64::MAX, |r| r.high_watermark());
        self.producers.apply(batch, base, last, committed);
    }

    /// The Raft log was cut at `end`: its producers' state is cut with it.
    pub fn truncate_producers(&self, end: u64) {
        self.producers.truncate(end);
    }

    /// The log starts again empty (a replica behind its leader's start):
    /// what it knew of producers goes with it.
    pub fn clear_producers(&self) {
        self.producers.replace(fjord_storage::ProducerTable::new());
    }

    /// Drops producers idle for longer than `max_age_ms`.
    pub fn expire_producers(&self, now_ms: i64, max_age_ms: u64) {
        let max_age = i64::try_from(max_age_ms).unwrap_or(i64::MAX);
        let expired = self.producers.expire(now_ms, max_age);
        if expired > 0 {
            let s = &self.setup;
            tracing::debug!(shard = s.shard, topic = %s.topic, partition = s.partition, expired, "producer ids expired");
        }
    }

    /// Writes a producer snapshot if one is due (see
    /// [`crate::producer_state`]); `closing`: the partition closes.
    pub async fn snapshot_producers(&self, closing: bool) -> Result<(), StorageError> {
        let high_watermark = self.replica().map(|r| r.high_watermark());
        self.producers
            .write_snapshot(&self.log(), high_watermark, closing)
            .await
    }

    /// The log.
    pub fn log(&self) -> Rc<Log> {
        self.log.borrow().clone()
    }

    /// Takes a topic's altered `retention.*` and `cleanup.policy` (with the
    /// cleaner's settings) at once, and runs retention right away when it
    /// changed, so that lowering it frees space now.
    pub async fn apply_retention(&self, config: &fjord_core::TopicConfig) {
        let log = self.log();
        let mut compaction = fjord_storage::Compaction::for_topic(config);
        compaction.keep_empty_batches = self.setup.config.compaction.keep_empty_batches;
        log.set_cleanup(config.cleanup_policy, compaction);
        let wanted = (config.retention_bytes, config.retention);
        if log.retention() == wanted {
            return;
        }
        log.set_retention(wanted.0, wanted.1);
        let s = &self.setup;
        tracing::info!(
            shard = s.shard,
            topic = %s.topic,
            partition = s.partition,
            retention_bytes = ?wanted.0,
            retention_ms = ?wanted.1.map(|d| d.as_millis()),
            "retention changed"
        );
        // Retention never deletes a segment still being written; the flush
        // finishes those the log rolled out of, so they count now too.
        let applied = match log.flush().await {
            Ok(()) => self.enforce_retention(fjord_storage::log::now_ms()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            tracing::warn!(shard = s.shard, topic = %s.topic, partition = s.partition, error = %e, "retention");
        }
    }

    /// Deletes segments past the topic's retention; a replicated partition
    /// keeps what its followers (and consumers below the high watermark)
    /// still need.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        let keep_from = match &self.setup.replica {
            Some((replica, replication)) => replication.retention_floor(replica.group),
            None => u64::MAX,
        };
        // The state of producers whose batches go must outlive them.
        self.snapshot_producers(false).await?;
        let log = self.log();
        let deleted = log
            .enforce_retention_below(now_ms, keep_from, self.deleted_below.get())
            .await?;
        // Told on every run, not only after a deletion: the group takes a
        // new start only once it has committed up to it, and a start it
        // refused once would otherwise never reach it (a follower added
        // later would then be sent entries the log no longer holds).
        if let Some((replica, replication)) = &self.setup.replica {
            replication.log_start_advanced(replica.group, log.offset_start());
        }
        Ok(deleted)
    }

    /// Cleans the log when due (its topic compacts and enough of it is
    /// dirty), below the high watermark of a replicated partition.
    pub async fn compact(&self, now_ms: i64, io_bytes_per_sec: u64) -> Result<(), StorageError> {
        let limit = self.replica().map_or(u64::MAX, |r| r.high_watermark());
        let log = self.log();
        if log.needs_compaction_below(now_ms, limit) {
            log.compact_below(now_ms, io_bytes_per_sec, limit).await?;
        }
        Ok(())
    }

    /// Drops the whole log and starts it again, empty, at `start`: a
    /// replica whose leader's log starts past this one's end.
    pub async fn reset_log(&self, start: u64) -> Result<(), StorageError> {
        let _turn = self
            .reopen_turn
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        let old = self.log();
        let (bytes, age) = old.retention();
        let (policy, compaction) = old.cleanup();
        // Whatever it held is dropped: a failed close changes nothing.
        let _ = old.close().await;
        self.forget_staged();
        let s = &self.setup;
        fjord_storage::recovery::reset(&s.dir, start).await?;
        let log =
            Log::open_staged(&s.dir, s.config.clone(), s.cache.clone(), s.staging.clone()).await?;
        // The topic's settings as altered since the open.
        log.set_retention(bytes, age);
        log.set_cleanup(policy, compaction);
        *self.log.borrow_mut() = Rc::new(log);
        Ok(())
    }

    /// The log's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.setup.dir
    }

    /// The largest batch the log takes, as its topic was configured when
    /// it opened.
    pub fn max_batch_bytes(&self) -> usize {
        self.setup.config.max_batch_bytes
    }

    /// Whether produce is refused now: the disk is low, or the log stopped
    /// for want of room.
    pub fn is_read_only(&self) -> bool {
        self.setup.space.is_low() || self.log.borrow().is_out_of_room()
    }

    /// The log, opened again from disk if it stopped for want of room and
    /// the disk has room again; the refusal if not.
    async fn writable_log(&self) -> Result<Rc<Log>, ErrorCode> {
        if self.setup.space.is_low() {
            return Err(ErrorCode::KafkaStorageError);
        }
        let log = self.log();
        if !log.is_out_of_room() {
            return Ok(log);
        }
        let _turn = self
            .reopen_turn
            .acquire_permit(1)
            .await
            .map_err(|_| ErrorCode::KafkaStorageError)?;
        let current = self.log();
        if !Rc::ptr_eq(&current, &log) {
            return Ok(current); // Another produce reopened it meanwhile.
        }
        let s = &self.setup;
        // Its batches acknowledged from the staging area but never written
        // are appended again: they were promised.
        match log.reopen().await {
            Ok(reopened) => {
                tracing::info!(
                    shard = s.shard,
                    topic = %s.topic,
                    partition = s.partition,
                    offset_next = reopened.offset_next(),
                    "log reopened after running out of room: appends resume"
                );
                // What the failed log took but never wrote is gone: the
                // producer state must not answer for it as a duplicate.
                let replicated = self.replica().is_some();
                let (producers, _) = producer_snapshot::load(&reopened, replicated).await.map_err(|e| {
                    tracing::warn!(shard = s.shard, topic = %s.topic, partition = s.partition, error = %e, "producer state");
                    error_code(&e)
                })?;
                let reopened = Rc::new(reopened);
                {
                    let _turn = self
                        .producers
                        .turn()
                        .await
                        .map_err(|_| ErrorCode::KafkaStorageError)?;
                    self.producers.replace(producers);
                    *self.log.borrow_mut() = reopened.clone();
                }
                Ok(reopened)
            }
            Err(e) => {
                tracing::warn!(
                    shard = s.shard,
                    topic = %s.topic,
                    partition = s.partition,
                    error = %e,
                    "cannot reopen the log yet"
                );
                Err(error_code(&e))
            }
        }
    }

    /// Appends every batch in `records` (whole batches laid end to end) and
    /// waits as `acks` says: not at all (0); until they are as durable as
    /// the topic's fsync policy promises on the leader (1); until a quorum
    /// of the replicas has them so (-1, all; the leader alone when the
    /// partition is not replicated); never past its deadline. Either every
    /// batch is accepted or the first refusal is the answer; batches before
    /// it stay appended, as in Kafka.
    pub async fn produce(&self, records: &[u8], acks: Acks) -> Result<Produced, ErrorCode> {
        let started = std::time::Instant::now();
        let produced = self.append_batches(records, acks).await;
        let metrics = &self.setup.metrics;
        match produced {
            Ok(_) => {
                metrics.record_append(started.elapsed());
                metrics.record_produced(&self.setup.topic, records);
            }
            Err(ErrorCode::RequestTimedOut) => metrics.record_produce_timeout(&self.setup.topic),
            Err(_) => {}
        }
        produced
    }

    /// [`Partition::produce`], uncounted.
    async fn append_batches(&self, records: &[u8], acks: Acks) -> Result<Produced, ErrorCode> {
        if records.is_empty() {
            return Err(ErrorCode::InvalidRequest);
        }
        if self.log().cleanup().0.compact {
            check_keyed(records)?;
        }
        if let Some((replica, replication)) = &self.setup.replica {
            // Metadata must change on a low disk: deleting a topic is how
            // an operator makes room. The controller quorum's log writes
            // into the room its released reserve left.
            if self.setup.space.is_low() && replica.group != METADATA_GROUP {
                return Err(ErrorCode::KafkaStorageError);
            }
            let max = self.setup.config.max_batch_bytes;
            let base_offset = replication.produce(self, records, acks, max).await?;
            return Ok(Produced {
                base_offset: base_offset as i64,
                log_start_offset: self.log_start() as i64,
            });
        }
        let log = self.writable_log().await?;
        let mut rest = records;
        let mut base_offset = None;
        let mut durable = Vec::new();
        // A duplicate's answer waits for its first copy to be readable.
        let mut duplicates_end = 0;
        while !rest.is_empty() {
            let len = match Batch::peek_len(rest) {
                Ok(len) if len <= rest.len() => len,
                _ => return Err(ErrorCode::CorruptMessage),
            };
            let batch = &rest[..len];
            rest = &rest[len..];
            let producer = ProducerBatch::peek(batch);
            let base = match producer {
                None => {
                    let appended = log.append(batch).await.map_err(|e| error_code(&e))?;
                    durable.push(appended.durable);
                    appended.base_offset
                }
                Some(producer) => match self.append_idempotent(&log, batch, &producer).await? {
                    Ok(appended) => {
                        durable.push(appended.durable);
                        appended.base_offset
                    }
                    Err((base, end)) => {
                        duplicates_end = duplicates_end.max(end);
                        base
                    }
                },
            };
            base_offset.get_or_insert(base);
        }
        // Parked readers wait on the log's visible mark, not on this answer.
        // The appends themselves are not cut short by the deadline: a log's
        // append stopped half-way would leave its state half-changed.
        if acks.required != api::ACKS_NONE {
            acks.within(async {
                futures::future::try_join_all(durable)
                    .await
                    .map_err(|e| error_code(&e))?;
                if duplicates_end > 0 {
                    log.wait_visible(duplicates_end).await;
                }
                Ok(())
            })
            .await?;
        }
        Ok(Produced {
            base_offset: base_offset.unwrap_or(0) as i64,
            log_start_offset: self.log_start() as i64,
        })
    }

    /// Appends an idempotent producer's batch unless it is a duplicate:
    /// check, append and the table's update under the producer turn.
    /// `Err((base, end))`: a duplicate, first written at `base..end`.
    async fn append_idempotent(
        &self,
        log: &Log,
        batch: &[u8],
        producer: &ProducerBatch,
    ) -> Result<Result<fjord_storage::Appended, (u64, u64)>, ErrorCode> {
        let _turn = self
            .producers
            .turn()
            .await
            .map_err(|_| ErrorCode::KafkaStorageError)?;
        match self.check_producer(producer)? {
            Verdict::Duplicate {
                base_offset,
                last_offset,
            } => Ok(Err((base_offset, last_offset + 1))),
            Verdict::Append => {
                let appended = log.append(batch).await.map_err(|e| error_code(&e))?;
                self.apply_producer(producer, appended.base_offset, appended.last_offset);
                Ok(Ok(appended))
            }
        }
    }

    /// Whole batches from `offset`, at most `max_bytes` (but at least one).
    /// Reading at the end returns nothing.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<LogRead, ErrorCode> {
        let read = self.read_batches(offset, max_bytes).await;
        if let Ok(read) = &read {
            let slices = read.slices.iter().map(|s| &s[..]);
            self.setup.metrics.record_fetched(&self.setup.topic, slices);
        }
        read
    }

    /// [`Partition::read`], uncounted: for the broker's own reads.
    pub(crate) async fn read_batches(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<LogRead, ErrorCode> {
        let offset = u64::try_from(offset).map_err(|_| ErrorCode::OffsetOutOfRange)?;
        // Consumers read from the leader, up to the high watermark.
        if self.replica().is_some_and(|r| !r.is_leader()) {
            return Err(ErrorCode::NotLeaderOrFollower);
        }
        let start = self.log_start();
        if offset < start {
            return Err(ErrorCode::OffsetOutOfRange);
        }
        let Some((replica, replication)) = &self.setup.replica else {
            let mut read = self
                .log()
                .read(offset, max_bytes)
                .await
                .map_err(|e| error_code(&e))?;
            read.offset_start = start;
            return Ok(read);
        };
        let log = self.log();
        let high_watermark = replica.high_watermark();
        // Past the Raft log's end is out of range (Kafka's log end offset).
        // Below it, what the partition log does not hold yet — its writes
        // trail the Raft log, most of all on a follower just elected — is
        // an empty answer the client asks again for, not out of range.
        let raft_end = replication.log_end(replica.group).unwrap_or(0);
        let end = raft_end.max(log.offset_next());
        if offset > end.max(high_watermark) {
            return Err(ErrorCode::OffsetOutOfRange);
        }
        if offset >= high_watermark.min(log.offset_visible()) {
            return Ok(LogRead {
                slices: Vec::new(),
                offset_next: offset,
                offset_start: start,
                offset_written: high_watermark,
            });
        }
        let mut read = log
            .read(offset, max_bytes)
            .await
            .map_err(|e| error_code(&e))?;
        cut_at(&mut read, high_watermark);
        read.offset_start = start;
        Ok(read)
    }

    /// Resolves when batches past `offset` are readable, or after `wait`, or
    /// at shutdown.
    pub async fn wait_past(&self, offset: i64, wait: Duration) {
        if let Some(replica) = self.replica() {
            // Committed past it, and then in the partition log, which may
            // trail the Raft log.
            let offset = offset.max(0) as u64;
            let log = self.log();
            let readable = async {
                replica.wait_past(offset, wait).await;
                if replica.high_watermark() > offset {
                    // A log that stopped makes nothing readable: the rest
                    // of the wait is slept out, not spun through.
                    match log.is_writable() {
                        true => log.wait_visible(offset + 1).await,
                        false => futures::future::pending().await,
                    }
                }
            };
            let timeout = std::pin::pin!(glommio::timer::sleep(wait));
            futures::future::select(std::pin::pin!(readable), timeout).await;
            return;
        }
        if self.log().offset_visible() as i64 > offset {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.parked.borrow_mut().push(tx);
        let visible = std::pin::pin!(self.log().wait_visible(offset.max(0) as u64 + 1));
        let timeout = std::pin::pin!(glommio::timer::sleep(wait));
        let _ = futures::future::select(futures::future::select(rx, visible), timeout).await;
    }

    /// Releases every parked reader (shutdown).
    pub fn wake_parked(&self) {
        for tx in self.parked.borrow_mut().drain(..) {
            let _ = tx.send(());
        }
        if let Some(replica) = self.replica() {
            replica.wake_readers();
        }
    }

    /// The end readers may read to: the high watermark of a replicated
    /// partition, the visible end of a log of its own.
    fn readable_end(&self) -> u64 {
        match self.replica() {
            Some(replica) => replica.high_watermark(),
            None => self.log().offset_visible(),
        }
    }

    /// Offsets and size.
    pub fn describe(&self) -> Described {
        let log = self.log();
        Described {
            log_start_offset: self.log_start() as i64,
            log_end_offset: self.readable_end() as i64,
            log_end_local: log.offset_next() as i64,
            size_bytes: log.size_bytes() as i64,
            read_only: self.is_read_only(),
            replication: self
                .setup
                .replica
                .as_ref()
                .and_then(|(replica, replication)| replication.status(replica.group)),
        }
    }

    /// `ListOffsets`: the log start (`EARLIEST`), the end (`LATEST`), the
    /// record with the largest timestamp (`MAX_TIMESTAMP`), or the first
    /// record at or after a timestamp; `(offset, timestamp)`, with
    /// offset -1 when no record is that recent (as Kafka answers).
    pub async fn offset_for(&self, timestamp: i64) -> Result<(i64, i64), ErrorCode> {
        // Clients ask the leader, as they fetch from it: a follower's
        // offsets lag, and its tail may not be committed.
        if let Some(replica) = self.replica() {
            if !replica.is_leader() {
                return Err(ErrorCode::NotLeaderOrFollower);
            }
            // A new leader's high watermark may still be behind what the
            // last one committed: an offset from it could go backwards.
            if !replica.high_watermark_settled() {
                return Err(ErrorCode::OffsetNotAvailable);
            }
        }
        let start = self.log_start();
        let found = match timestamp {
            fjord_net::api::EARLIEST => return Ok((start as i64, -1)),
            fjord_net::api::LATEST => return Ok((self.readable_end() as i64, -1)),
            fjord_net::api::MAX_TIMESTAMP => self.log().max_timestamp_offset(start).await,
            t if t < 0 => return Err(ErrorCode::InvalidRequest),
            t => self.log().offset_for_timestamp(t, start).await,
        };
        // As Kafka: from the start clients may read, below the end they may
        // read to (a record past it may yet be cut).
        match found {
            Ok(Some((offset, timestamp))) if offset < self.readable_end() => {
                Ok((offset as i64, timestamp))
            }
            Ok(_) => Ok((-1, -1)),
            Err(e) => Err(error_code(&e)),
        }
    }

    /// Wakes parked readers (they find nothing new and answer) and closes
    /// the log.
    pub async fn close(&self) -> Result<(), StorageError> {
        // After a reopen in flight (`writable_log`): the log it installs is
        // the one to snapshot and close, and the failed one's staged
        // batches must not go back to the area while its successor holds
        // copies of them. None starts after: a produce still holding the
        // partition gets a storage error instead of a log no one closes.
        let _turn = self.reopen_turn.acquire_permit(1).await;
        self.reopen_turn.close();
        if let Err(e) = self.snapshot_producers(true).await {
            let s = &self.setup;
            tracing::warn!(shard = s.shard, topic = %s.topic, partition = s.partition, error = %e, "producer snapshot at close");
        }
        if let Some((replica, replication)) = &self.setup.replica {
            replication.remove(replica.group);
        }
        self.wake_parked();
        self.log().close().await
    }

    /// Releases what the staging area holds for this partition's log once
    /// its data is reset: batches a log that failed left there for its next
    /// opening would otherwise hold the area until the next start. (A
    /// deleted partition's go when the shard installs the metadata without
    /// it: `Shard::converge`.)
    fn forget_staged(&self) {
        let s = &self.setup;
        let released = s.staging.as_ref().map_or(0, |area| area.forget(&s.dir));
        if released > 0 {
            tracing::info!(
                shard = s.shard,
                topic = %s.topic,
                partition = s.partition,
                released,
                "staged batches of a reset log released"
            );
        }
    }
}

/// Kafka refuses records without a key on a compacted topic: compaction
/// could never tell which to keep.
fn check_keyed(records: &[u8]) -> Result<(), ErrorCode> {
    let mut rest = records;
    while !rest.is_empty() {
        let batch = Batch::parse(rest).map_err(|_| ErrorCode::CorruptMessage)?;
        rest = &rest[batch.len()..];
        if batch.is_control() || batch.compression() == fjord_core::Compression::None {
            batch.check_keyed().map_err(|_| ErrorCode::InvalidRecord)?;
            continue;
        }
        // As Kafka: a compressed batch is decompressed to check its keys
        // (compacted topics only), bounded as the log's lookups are.
        use fjord_core::compression::{DecompressError, decompressed_records};
        let max = fjord_storage::log::DECOMPRESSED_MAX;
        let decompressed = decompressed_records(&batch, max).map_err(|e| match e {
            DecompressError::TooLarge(_) => ErrorCode::MessageTooLarge,
            DecompressError::Corrupt { .. } => ErrorCode::CorruptMessage,
        })?;
        for record in fjord_core::Records::over(batch, &decompressed) {
            let record = record.map_err(|_| ErrorCode::CorruptMessage)?;
            if record.key.is_none() {
                return Err(ErrorCode::InvalidRecord);
            }
        }
    }
    Ok(())
}

/// Cuts a read at `end`: batches at or past it are not returned.
fn cut_at(read: &mut LogRead, end: u64) {
    let mut kept = Vec::with_capacity(read.slices.len());
    for slice in read.slices.drain(..) {
        let mut len = 0;
        let mut whole = true;
        for batch in fjord_core::batch::batches(&slice) {
            if batch.base_offset() as u64 >= end {
                whole = false;
                break;
            }
            len += batch.len();
        }
        if len > 0 {
            kept.push(if whole { slice } else { slice.prefix(len) });
        }
        if !whole {
            break;
        }
    }
    read.slices = kept;
    read.offset_next = read.offset_next.min(end);
    read.offset_written = end;
}
