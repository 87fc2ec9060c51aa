//! The consumer: assigned partitions, a position in each, and `poll`, which
//! long-polls every partition's shard and returns the records after the
//! positions. While the application handles one poll's records, the next
//! fetch is already in flight (pipelined), unless a seek invalidates it.
//!
//! Partitions are assigned by hand (`assign`) or by a group (`subscribe`,
//! see [`membership`]): then `poll` also heartbeats, moves partitions as the
//! coordinator says, and commits what earlier polls returned — every
//! `auto_commit_interval`, before a partition is released, and on `close`.
//! Records returned by a poll count as processed once the next poll (or
//! `commit`) runs: at least once, with only the uncommitted tail read again
//! after a member fails.

mod membership;
pub use membership::{RebalanceListener, Revoking};

use crate::client::{Client, Route};
use crate::error::{ClientError, Result, error_code};
use crate::transport::{Lane, Response};
use fjord_core::batch;
use fjord_net::{ErrorCode, api, wire};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// This offset.
    Offset(i64),
    /// The first offset held.
    Earliest,
    /// The end: only records produced from now on.
    Latest,
    /// The first record at or after this timestamp (ms since the epoch);
    /// the end when none is that recent.
    Timestamp(i64),
}

/// How a consumer fetches.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Bytes per partition per fetch.
    pub partition_bytes_max: i32,
    /// Bytes per fetch response.
    pub fetch_bytes_max: i32,
    /// Where a partition's position moves when it falls outside the log
    /// (below the start after retention, or past the end): Kafka's
    /// `auto.offset.reset`. `None`: the poll fails with OFFSET_OUT_OF_RANGE.
    /// Also where a group's partition without a committed offset starts.
    pub offset_reset: Option<Seek>,
    /// A subscribed consumer commits the positions of what `poll` returned
    /// this often (Kafka's `enable.auto.commit` with
    /// `auto.commit.interval.ms`, 5 s); `None`: only `commit` does.
    pub auto_commit_interval: Option<Duration>,
    /// Leave the group after this long without a heartbeat (Kafka's
    /// `session.timeout.ms`); `None`: the broker's default (45 s).
    pub session_timeout: Option<Duration>,
    /// Static membership (Kafka's `group.instance.id`): a member that
    /// comes back under the same id within its session timeout keeps its
    /// partitions.
    pub instance_id: Option<String>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            partition_bytes_max: 1 << 20,
            fetch_bytes_max: 50 << 20,
            offset_reset: Some(Seek::Latest),
            auto_commit_interval: Some(Duration::from_secs(5)),
            session_timeout: None,
            instance_id: None,
        }
    }
}

/// A record as consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp, ms since the epoch.
    pub timestamp: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

struct Assigned {
    topic: String,
    partition: i32,
    route: Route,
    position: i64,
    /// As the last fetch saw it; -1 before one.
    high_watermark: i64,
}

impl Assigned {
    fn key(&self) -> (String, i32) {
        (self.topic.clone(), self.partition)
    }
}

/// A fetch in flight to one shard address: the partitions it asked for
/// (topic, partition) and its answer.
type Fetch = BoxFuture<'static, (Vec<(String, i32)>, Result<Response>)>;

/// The fetches in flight. Each assigned partition is in at most one; a
/// poll hands out what the first to answer carries (and any others done
/// by then) and leaves the rest in flight, as Kafka's consumer does: a
/// batch on one shard never waits for another shard's long poll.
#[derive(Default)]
struct Fetching {
    calls: FuturesUnordered<Fetch>,
    asked: HashSet<(String, i32)>,
}

/// Pause before fetching again from partitions whose leader moved.
const REROUTE_BACKOFF: Duration = Duration::from_millis(100);

/// Reads assigned partitions.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    assigned: Vec<Assigned>,
    /// The fetches sent ahead.
    fetching: Fetching,
    /// The group, once subscribed.
    membership: Option<membership::Membership>,
    listener: Option<Box<dyn RebalanceListener>>,
}

impl Consumer {
    /// A consumer with nothing assigned.
    pub fn new(client: &Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client: client.clone(),
            config,
            assigned: Vec::new(),
            fetching: Fetching::default(),
            membership: None,
            listener: None,
        }
    }

    /// Joins `group`, subscribed to `topics`: the group's coordinator
    /// assigns partitions, which `poll` starts reading from the group's
    /// committed offsets. Replaces any earlier subscription's topics.
    pub async fn subscribe(&mut self, topics: &[&str], group: &str) -> Result<()> {
        let topics = topics.iter().map(|t| (*t).to_owned()).collect();
        self.subscribe_to(group, topics, String::new()).await
    }

    /// Like [`Consumer::subscribe`], to every topic whose whole name
    /// matches `regex` (RE2 syntax, as KIP-848), now and later.
    pub async fn subscribe_pattern(&mut self, regex: &str, group: &str) -> Result<()> {
        self.subscribe_to(group, Vec::new(), regex.to_owned()).await
    }

    async fn subscribe_to(
        &mut self,
        group: &str,
        topics: Vec<String>,
        regex: String,
    ) -> Result<()> {
        if self
            .membership
            .as_ref()
            .is_some_and(|m| m.coordinator.group() != group)
        {
            self.leave().await?;
        }
        match self.membership.as_mut() {
            Some(m) => m.resubscribe(topics, regex),
            None => {
                let coordinator = crate::group::Coordinator::new(&self.client, group);
                self.membership = Some(membership::Membership::new(coordinator, topics, regex));
            }
        }
        self.maintain().await
    }

    /// Called as partitions move between the group's members.
    pub fn set_rebalance_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(listener);
    }

    /// The partitions assigned now.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.assigned
            .iter()
            .map(|a| (a.topic.clone(), a.partition))
            .collect()
    }

    /// Commits the positions of every assigned partition (what `poll`
    /// returned so far) and waits for the coordinator's answer.
    pub async fn commit(&mut self) -> Result<()> {
        let offsets = self.positions();
        self.commit_offsets(&offsets).await
    }

    /// Like [`Consumer::commit`] without waiting: the answer, and a failure,
    /// are not reported (Kafka's `commitAsync` without a callback).
    pub fn commit_async(&mut self) {
        let offsets = self.positions();
        let Some(m) = self.membership.as_ref() else {
            return;
        };
        if offsets.is_empty() || m.member_id.is_empty() {
            return;
        }
        let body =
            crate::group::commit_request(m.coordinator.group(), &m.member_id, m.epoch, &offsets);
        if let Some(at) = m.coordinator.address() {
            // The request is sent now; its future only carries the answer.
            drop(self.client.call(at, Lane::Prompt, body, Vec::new(), true));
        }
    }

    /// Commits `offsets` (the next offset to read, per partition) for the
    /// subscribed group.
    pub async fn commit_offsets(
        &mut self,
        offsets: &std::collections::BTreeMap<(String, i32), i64>,
    ) -> Result<()> {
        let m = self
            .membership
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("commit needs a group: subscribe first".into()))?;
        if offsets.is_empty() {
            return Ok(());
        }
        let (member, epoch) = (m.member_id.clone(), m.epoch);
        m.coordinator.commit(&member, epoch, offsets).await
    }

    /// The group's committed offset of a partition; `None` when nothing is
    /// committed.
    pub async fn committed(&mut self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let m = self.membership.as_mut().ok_or_else(|| {
            ClientError::Protocol("committed offsets need a group: subscribe first".into())
        })?;
        let tp = (topic.to_owned(), partition);
        let committed = m
            .coordinator
            .committed(Some(std::slice::from_ref(&tp)))
            .await?;
        Ok(committed.get(&tp).map(|c| c.offset))
    }

    /// Records between the position and the high watermark of a partition,
    /// as the last fetch saw it; `None` before one.
    pub fn lag(&self, topic: &str, partition: i32) -> Option<i64> {
        self.assigned
            .iter()
            .find(|a| a.topic == topic && a.partition == partition && a.high_watermark >= 0)
            .map(|a| (a.high_watermark - a.position).max(0))
    }

    /// Leaves the group (after a final commit with auto-commit on), so that
    /// its partitions move to the other members at once rather than after
    /// the session timeout. Without a group, does nothing.
    pub async fn close(&mut self) -> Result<()> {
        self.leave().await
    }

    fn positions(&self) -> std::collections::BTreeMap<(String, i32), i64> {
        self.assigned
            .iter()
            .map(|a| ((a.topic.clone(), a.partition), a.position))
            .collect()
    }

    /// Stops reading `partitions`.
    fn unassign(&mut self, partitions: &[(String, i32)]) {
        self.fetching = Fetching::default();
        self.assigned.retain(|a| {
            !partitions
                .iter()
                .any(|(t, p)| *t == a.topic && *p == a.partition)
        });
    }

    /// Assigns partitions of `topic` (all when `partitions` is `None`),
    /// each starting at `seek`.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: Option<&[i32]>,
        seek: Seek,
    ) -> Result<()> {
        // A leader being elected (a node killed or restarting) is waited
        // out, as Kafka's consumer does; an unknown topic is not.
        let deadline = std::time::Instant::now() + LEADER_WAIT;
        loop {
            match self.assign_once(topic, partitions, seek).await {
                Err(e) if leaderless(&e) && std::time::Instant::now() < deadline => {
                    self.client.sleep(LEADER_RETRY_PAUSE).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn assign_once(
        &mut self,
        topic: &str,
        partitions: Option<&[i32]>,
        seek: Seek,
    ) -> Result<()> {
        let routes = self.client.routes(topic).await?;
        let all: Vec<i32> = (0..routes.partitions.len() as i32).collect();
        for &p in partitions.unwrap_or(&all) {
            let route = match usize::try_from(p)
                .ok()
                .and_then(|i| routes.partitions.get(i))
            {
                Some(Some(route)) => *route,
                Some(None) => {
                    return Err(ClientError::broker(
                        ErrorCode::LeaderNotAvailable,
                        format!("{topic}-{p} has no leader yet"),
                    ));
                }
                None => {
                    return Err(ClientError::broker(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("{topic}-{p}"),
                    ));
                }
            };
            self.assigned
                .retain(|a| !(a.topic == topic && a.partition == p));
            self.assigned.push(Assigned {
                topic: topic.to_owned(),
                partition: p,
                route,
                position: 0,
                high_watermark: -1,
            });
            self.seek(topic, p, seek).await?;
        }
        Ok(())
    }

    /// The next offset to be read from a partition.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.assigned
            .iter()
            .find(|a| a.topic == topic && a.partition == partition)
            .map(|a| a.position)
    }

    /// Moves a partition's position.
    pub async fn seek(&mut self, topic: &str, partition: i32, seek: Seek) -> Result<()> {
        self.fetching = Fetching::default();
        let index = self
            .assigned
            .iter()
            .position(|a| a.topic == topic && a.partition == partition)
            .ok_or_else(|| ClientError::Protocol(format!("{topic}-{partition} is not assigned")))?;
        let timestamp = match seek {
            Seek::Offset(offset) => {
                self.assigned[index].position = offset;
                return Ok(());
            }
            Seek::Earliest => api::EARLIEST,
            Seek::Latest => api::LATEST,
            Seek::Timestamp(t) => t,
        };
        let (offset, _) = self.list_offset(index, timestamp).await?;
        self.assigned[index].position = if offset < 0 {
            self.list_offset(index, api::LATEST).await?.0
        } else {
            offset
        };
        Ok(())
    }

    async fn list_offset(&self, index: usize, timestamp: i64) -> Result<(i64, i64)> {
        let a = &self.assigned[index];
        self.client
            .list_offset(a.route.addr, &a.topic, a.partition, timestamp)
            .await
    }

    /// Records after the positions, waiting up to `timeout` for the first;
    /// empty when none came. Advances the positions past what it returns.
    /// A subscribed consumer heartbeats meanwhile.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let records = self.poll_once(left).await?;
            if !records.is_empty() || left.is_zero() {
                return Ok(records);
            }
        }
    }

    async fn poll_once(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let polled = self.poll_batches(timeout).await?;
        let mut records = Vec::new();
        for part in polled.parts() {
            for batch in part.batches() {
                let batch_records = batch.records().map_err(|e| part.bad(e))?;
                for record in batch_records {
                    let record = record.map_err(|e| part.bad(e))?;
                    // A batch starts before the position when the position
                    // is inside it: skip what was read.
                    if record.offset < part.position {
                        continue;
                    }
                    records.push(ConsumerRecord {
                        topic: part.topic.to_owned(),
                        partition: part.partition,
                        offset: record.offset,
                        timestamp: record.timestamp,
                        key: record.key.map(<[u8]>::to_vec),
                        value: record.value.map(<[u8]>::to_vec),
                        headers: record
                            .headers
                            .iter()
                            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                            .collect(),
                    });
                }
            }
        }
        Ok(records)
    }

    /// Like [`Consumer::poll`], but hands out the batches where they arrived
    /// (in the fetch responses) instead of copying each record out: for
    /// consumers that count, forward or decode lazily. Batch CRCs were not
    /// checked; [`fjord_core::Batch::validate`] does it when wanted.
    pub async fn poll_batches(&mut self, timeout: Duration) -> Result<Polled> {
        self.maintain().await?;
        // A subscribed consumer's long poll ends in time for its heartbeat.
        let timeout = match &self.membership {
            Some(m) => timeout.min(m.until_heartbeat()),
            None => timeout,
        };
        if self.assigned.is_empty() {
            if self.membership.is_some() {
                self.client.sleep(timeout).await;
            }
            return Ok(Polled::default());
        }
        self.fetch(timeout);
        let mut answered = Vec::new();
        if let Some(first) = self.fetching.calls.next().await {
            answered.push(first);
            while let Some(Some(done)) = self.fetching.calls.next().now_or_never() {
                answered.push(done);
            }
        }
        let mut responses = Vec::new();
        let mut moved: Vec<usize> = Vec::new();
        for (asked, _) in &answered {
            for key in asked {
                self.fetching.asked.remove(key);
            }
        }
        for (asked, response) in answered {
            match response {
                Ok(response) => responses.push(response),
                // The node is away: its partitions' leaders move elsewhere.
                Err(e) if e.is_retriable() => moved.extend(
                    (0..self.assigned.len()).filter(|&i| asked.contains(&self.assigned[i].key())),
                ),
                Err(e) => return Err(e),
            }
        }
        let (polled, out_of_range, not_led) = self.take_batches(responses)?;
        moved.extend(not_led);
        if !moved.is_empty() {
            self.reroute(&moved).await;
        }
        for index in out_of_range {
            let (topic, partition) = (
                self.assigned[index].topic.clone(),
                self.assigned[index].partition,
            );
            match self.config.offset_reset {
                Some(reset) => self.seek(&topic, partition, reset).await?,
                None => {
                    return Err(ClientError::broker(
                        ErrorCode::OffsetOutOfRange,
                        format!("{topic}-{partition}"),
                    ));
                }
            }
        }
        // Pipelining: the next fetch travels while the caller works.
        self.fetch(timeout);
        Ok(polled)
    }

    /// Asks again where partitions are led (a leader moved or went away),
    /// after a pause so that an election can finish.
    async fn reroute(&mut self, moved: &[usize]) {
        self.client.sleep(REROUTE_BACKOFF).await;
        let mut topics: Vec<String> = moved
            .iter()
            .map(|&i| self.assigned[i].topic.clone())
            .collect();
        topics.sort();
        topics.dedup();
        for topic in topics {
            // Not known yet: the old route is kept and tried again.
            let Ok(routes) = self.client.routes(&topic).await else {
                continue;
            };
            for &i in moved {
                let a = &mut self.assigned[i];
                if a.topic != topic {
                    continue;
                }
                if let Some(route) = usize::try_from(a.partition)
                    .ok()
                    .and_then(|p| routes.partitions.get(p).copied().flatten())
                {
                    a.route = route;
                }
            }
        }
    }

    /// One fetch request per shard address for the assigned partitions no
    /// fetch in flight asks for, sent now.
    fn fetch(&mut self, wait: Duration) {
        let mut by_addr: HashMap<SocketAddr, Vec<&Assigned>> = HashMap::new();
        for a in &self.assigned {
            if !self.fetching.asked.contains(&a.key()) {
                by_addr.entry(a.route.addr).or_default().push(a);
            }
        }
        let calls: Vec<Fetch> = by_addr
            .into_iter()
            .map(|(addr, assigned)| {
                let asked: Vec<(String, i32)> = assigned.iter().map(|a| a.key()).collect();
                let mut topics: Vec<wire::FetchTopicT> = Vec::new();
                for a in assigned {
                    let partition = wire::FetchPartitionT {
                        partition: a.partition,
                        fetch_offset: a.position,
                        max_bytes: self.config.partition_bytes_max,
                    };
                    match topics
                        .iter_mut()
                        .find(|t| t.name.as_deref() == Some(a.topic.as_str()))
                    {
                        Some(t) => t.partitions.get_or_insert_default().push(partition),
                        None => topics.push(wire::FetchTopicT {
                            name: Some(a.topic.clone()),
                            partitions: Some(vec![partition]),
                        }),
                    }
                }
                let body = wire::RequestT::FetchRequest(Box::new(wire::FetchRequestT {
                    max_wait_ms: wait.as_millis().min(i32::MAX as u128) as i32,
                    min_bytes: 1,
                    max_bytes: self.config.fetch_bytes_max,
                    topics: Some(topics),
                }));
                let call = self.client.request(addr, Lane::LongPoll, body, Vec::new());
                async move { (asked, call.await) }.boxed()
            })
            .collect();
        for call in calls {
            self.fetching.calls.push(call);
        }
        let asked = self.assigned.iter().map(Assigned::key);
        self.fetching.asked.extend(asked);
    }

    /// The batches of `responses`, the partitions whose position fell
    /// outside their log, and those whose node no longer leads them.
    fn take_batches(
        &mut self,
        responses: Vec<Response>,
    ) -> Result<(Polled, Vec<usize>, Vec<usize>)> {
        let mut parts = Vec::new();
        let mut out_of_range = Vec::new();
        let mut not_led = Vec::new();
        for (r, response) in responses.iter().enumerate() {
            let (body, payload) = response.unpack()?;
            let wire::ResponseT::FetchResponse(body) = body else {
                return Err(ClientError::Protocol("expected a Fetch response".into()));
            };
            for topic in body.topics.into_iter().flatten() {
                let name = topic.name.unwrap_or_default();
                for p in topic.partitions.into_iter().flatten() {
                    let Some(index) = self
                        .assigned
                        .iter()
                        .position(|a| a.topic == name && a.partition == p.partition)
                    else {
                        continue;
                    };
                    match error_code(p.error_code) {
                        None => {}
                        Some(
                            ErrorCode::NotLeaderOrFollower
                            | ErrorCode::LeaderNotAvailable
                            | ErrorCode::FencedLeaderEpoch
                            | ErrorCode::KafkaStorageError,
                        ) => {
                            not_led.push(index);
                            continue;
                        }
                        Some(ErrorCode::OffsetOutOfRange) => {
                            out_of_range.push(index);
                            continue;
                        }
                        Some(code) => {
                            return Err(ClientError::broker(
                                code,
                                format!("{name}-{}", p.partition),
                            ));
                        }
                    }
                    let bytes = Response::range(payload, p.records.as_ref())?;
                    let start = bytes.as_ptr() as usize - payload.as_ptr() as usize;
                    // A position moves only when its partition's fetch is
                    // answered (a seek drops every fetch): this is the
                    // offset the fetch asked for.
                    let position = self.assigned[index].position;
                    let next = batch::batches(bytes)
                        .last()
                        .map_or(position, |b| position.max(b.last_offset() + 1));
                    self.assigned[index].position = next;
                    self.assigned[index].high_watermark = p.high_watermark;
                    parts.push(PartRef {
                        response: r,
                        topic: index,
                        partition: p.partition,
                        range: start..start + bytes.len(),
                        position,
                    });
                }
            }
        }
        let topics = self.assigned.iter().map(|a| a.topic.clone()).collect();
        let polled = Polled {
            responses,
            topics,
            parts,
        };
        Ok((polled, out_of_range, not_led))
    }
}

/// The batches of one poll, still in the fetch responses that carried them.
#[derive(Debug, Default)]
pub struct Polled {
    responses: Vec<Response>,
    topics: Vec<String>,
    parts: Vec<PartRef>,
}

#[derive(Debug)]
struct PartRef {
    response: usize,
    topic: usize,
    partition: i32,
    range: std::ops::Range<usize>,
    position: i64,
}

/// One partition's batches in a [`Polled`].
#[derive(Debug, Clone, Copy)]
pub struct PolledPart<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// The position the fetch started at: records before it (in the first
    /// batch) were returned by an earlier poll.
    pub position: i64,
    /// The batches, laid end to end.
    pub bytes: &'a [u8],
}

impl<'a> PolledPart<'a> {
    /// The whole data batches. Control batches (a new leader's mark,
    /// transaction markers) are skipped, as Kafka's consumers skip them;
    /// their offsets are still consumed.
    pub fn batches(&self) -> impl Iterator<Item = batch::Batch<'a>> + use<'a> {
        batch::batches(self.bytes).filter(|b| !b.is_control())
    }

    fn bad(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol(format!(
            "bad batch from {}-{}: {e}",
            self.topic, self.partition
        ))
    }
}

impl Polled {
    /// Each partition's batches.
    pub fn parts(&self) -> impl Iterator<Item = PolledPart<'_>> {
        self.parts.iter().map(|part| PolledPart {
            topic: &self.topics[part.topic],
            partition: part.partition,
            position: part.position,
            bytes: &self.responses[part.response].payload()[part.range.clone()],
        })
    }

    /// Records in the batches from each part's position on.
    pub fn record_count(&self) -> u64 {
        self.parts()
            .flat_map(|part| {
                part.batches().map(move |b| {
                    let skipped =
                        (part.position - b.base_offset()).clamp(0, i64::from(b.record_count()));
                    u64::try_from(i64::from(b.record_count()) - skipped).unwrap_or(0)
                })
            })
            .sum()
    }

    /// Bytes of batches.
    pub fn len_bytes(&self) -> usize {
        self.parts().map(|p| p.bytes.len()).sum()
    }
}
/// Longest `assign` waits for a partition's leader to be elected.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Pause between `assign`'s attempts.
const LEADER_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether `assign` failed only because a leader is moving.
fn leaderless(e: &ClientError) -> bool {
    match e {
        ClientError::Broker { code, .. } => matches!(
            code,
            ErrorCode::LeaderNotAvailable
                | ErrorCode::NotLeaderOrFollower
                | ErrorCode::OffsetNotAvailable
        ),
        ClientError::Connect { .. } | ClientError::Connection { .. } | ClientError::Timeout(_) => {
            true
        }
        ClientError::Protocol(_) | ClientError::Config(_) | ClientError::Closed => false,
    }
}
