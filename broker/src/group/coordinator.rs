//! The coordinator of the groups that hash to one `__consumer_offsets`
//! partition, living with that partition on its shard and serving while
//! the partition is led here. Committed offsets are records in the
//! partition (see [`super::records`]): a commit answers once its batch is
//! as durable as `acks=all` makes it, and a coordinator that starts leading
//! rebuilds the offsets by reading the partition — which compaction keeps
//! short — before it answers anything. Membership lives in memory (see
//! [`super::members`]).

use super::classic::ClassicGroup;
use super::members::{self, Group, Heartbeat, Limits};
use super::records::{self, CommitKey, Committed, Stored};
use crate::partition::{Acks, Partition};
use fjord_core::BatchBuilder;
use fjord_net::api::{
    topic_partitions_from_wire as from_wire, topic_partitions_to_wire as to_wire,
};
use fjord_net::{ErrorCode, wire};
use glommio::sync::Semaphore;

mod parked;
use parked::Parked;
pub use parked::{ClassicCall, ClassicReply};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

/// Longest a new leader waits for its log to be committed before it loads.
const LOAD_WAIT: Duration = Duration::from_secs(5);
/// Bytes read per step of a load.
const LOAD_READ_BYTES: usize = 1 << 20;

/// A group request: a native API, or a classic-protocol call of a Kafka
/// client.
#[derive(Debug)]
pub enum GroupRequest {
    /// One of the native group APIs.
    Native(wire::RequestT),
    /// JoinGroup, SyncGroup, Heartbeat or LeaveGroup of `group`.
    Classic(String, ClassicCall),
    /// Kafka's OffsetDelete: `group`'s commits of these partitions.
    DeleteOffsets(String, Vec<(String, i32)>),
}

/// The answer to a [`GroupRequest`], of its kind.
#[derive(Debug)]
pub enum GroupReply {
    /// A native API's response.
    Native(wire::ResponseT),
    /// A classic call's answer.
    Classic(ClassicReply),
    /// Each partition's code (Kafka's, 0 for none) of an OffsetDelete.
    OffsetsDeleted(Vec<((String, i32), i16)>),
}

/// A group request as the coordinator's shard gets it.
#[derive(Debug)]
pub struct Call {
    /// The request.
    pub body: GroupRequest,
    /// Partition counts of every topic, from the caller's metadata.
    pub topics: BTreeMap<String, i32>,
    /// Session timeouts accepted.
    pub limits: Limits,
    /// How often members heartbeat.
    pub heartbeat_interval_ms: i32,
    /// Now, ms since the epoch.
    pub now_ms: i64,
}

#[derive(Default)]
struct State {
    /// The leader term the state was loaded in (0 for an unreplicated
    /// partition); `None` until loaded.
    loaded: Option<u64>,
    offsets: BTreeMap<String, BTreeMap<(String, i32), Committed>>,
    groups: BTreeMap<String, Group>,
    /// Groups of Kafka's classic protocol.
    classic: BTreeMap<String, ClassicGroup>,
}

impl State {
    /// A group's member count and state name, of either protocol.
    fn summary(&self, id: &str) -> (usize, &'static str) {
        match (self.groups.get(id), self.classic.get(id)) {
            (Some(g), _) => (g.members().count(), g.state().name()),
            (None, Some(c)) => (c.describe().len(), c.state().name()),
            (None, None) => (0, members::GroupState::Empty.name()),
        }
    }

    /// Kafka's name of a group's type: "classic" for the JoinGroup protocol,
    /// "consumer" for KIP-848's (and a group known only by its offsets).
    fn group_type(&self, id: &str) -> &'static str {
        if self.classic.contains_key(id) && !self.groups.contains_key(id) {
            "classic"
        } else {
            "consumer"
        }
    }
}

/// The groups of one `__consumer_offsets` partition.
pub struct Coordinator {
    state: RefCell<State>,
    /// Classic requests waiting for a rebalance or the leader's sync.
    parked: RefCell<Parked>,
    /// Whether the classic groups' ticker runs.
    ticking: std::cell::Cell<bool>,
    /// Loads and commits take turns: a commit applied during a load would
    /// be overwritten by the older records the load reads after it.
    turn: Semaphore,
}

impl Default for Coordinator {
    fn default() -> Self {
        Coordinator {
            state: RefCell::new(State::default()),
            parked: RefCell::new(Parked::default()),
            ticking: std::cell::Cell::new(false),
            turn: Semaphore::new(1),
        }
    }
}

impl Coordinator {
    /// Every group's committed next offset per partition, `(group, topic,
    /// partition, offset)`, once loaded (for the admin listener's lag).
    pub fn committed(&self) -> Vec<(String, String, i32, i64)> {
        let state = self.state.borrow();
        if state.loaded.is_none() {
            return Vec::new();
        }
        state
            .offsets
            .iter()
            .flat_map(|(group, offsets)| {
                offsets.iter().map(|((topic, partition), committed)| {
                    (group.clone(), topic.clone(), *partition, committed.offset)
                })
            })
            .collect()
    }

    /// Serves one group request for a group of this partition.
    pub async fn serve(
        self: Rc<Self>,
        partition: &Partition,
        mut call: Call,
    ) -> Result<GroupReply, ErrorCode> {
        let term = leading_term(partition)?;
        let turn = self
            .turn
            .acquire_permit(1)
            .await
            .map_err(|_| ErrorCode::CoordinatorNotAvailable)?;
        if self.state.borrow().loaded != Some(term) {
            self.load(partition, term).await?;
        }
        let body = std::mem::replace(&mut call.body, GroupRequest::Native(wire::RequestT::NONE));
        let body = match body {
            GroupRequest::Native(body) => body,
            GroupRequest::Classic(group, classic) => {
                let pending = self.classic(&group, classic, call.now_ms);
                // The turn is not held while a join or sync waits.
                drop(turn);
                return pending?.await.map(GroupReply::Classic);
            }
            GroupRequest::DeleteOffsets(group, partitions) => {
                return self
                    .delete_offsets(partition, &group, partitions, call.now_ms)
                    .await
                    .map(GroupReply::OffsetsDeleted);
            }
        };
        self.native(partition, body, &call)
            .await
            .map(GroupReply::Native)
    }

    async fn native(
        &self,
        partition: &Partition,
        body: wire::RequestT,
        call: &Call,
    ) -> Result<wire::ResponseT, ErrorCode> {
        use wire::RequestT as R;
        use wire::ResponseT as S;
        Ok(match body {
            R::ConsumerGroupHeartbeatRequest(request) => {
                S::ConsumerGroupHeartbeatResponse(Box::new(self.heartbeat(
                    *request,
                    &call.topics,
                    &call.limits,
                    call.heartbeat_interval_ms,
                    call.now_ms,
                )))
            }
            R::OffsetCommitRequest(request) => S::OffsetCommitResponse(Box::new(
                self.commit(partition, *request, &call.topics, call.now_ms)
                    .await,
            )),
            R::OffsetFetchRequest(request) => {
                S::OffsetFetchResponse(Box::new(self.fetch(*request)))
            }
            R::ListGroupsRequest(_) => S::ListGroupsResponse(Box::new(self.list(call.now_ms))),
            R::DescribeGroupsRequest(request) => {
                S::DescribeGroupsResponse(Box::new(self.describe(*request, call.now_ms)))
            }
            R::DeleteGroupsRequest(request) => S::DeleteGroupsResponse(Box::new(
                self.delete(partition, *request, call.now_ms).await,
            )),
            _ => return Err(ErrorCode::InvalidRequest),
        })
    }

    /// Rebuilds the offsets from the partition, to [`loadable_end`].
    async fn load(&self, partition: &Partition, term: u64) -> Result<(), ErrorCode> {
        let end = loadable_end(partition).await?;
        let mut offsets: BTreeMap<String, BTreeMap<(String, i32), Committed>> = BTreeMap::new();
        let mut offset = partition.log_start() as i64;
        let mut bad = 0u64;
        while (offset as u64) < end {
            // Not a consumer's read: uncounted.
            let read = partition.read_batches(offset, LOAD_READ_BYTES).await?;
            if read.offset_next as i64 <= offset {
                // Short of the end: never taken for the whole state.
                return Err(ErrorCode::CoordinatorLoadInProgress);
            }
            for slice in &read.slices {
                for batch in fjord_core::batch::batches(slice).filter(|b| !b.is_control()) {
                    let Ok(batch_records) = batch.records() else {
                        bad += 1;
                        continue;
                    };
                    for record in batch_records {
                        match record.map_err(|_| ()).and_then(|r| {
                            records::decode(r.key.unwrap_or_default(), r.value).map_err(|_| ())
                        }) {
                            Ok(Stored::Offset(key, Some(committed))) => {
                                offsets
                                    .entry(key.group)
                                    .or_default()
                                    .insert((key.topic, key.partition), committed);
                            }
                            Ok(Stored::Offset(key, None)) => {
                                if let Some(group) = offsets.get_mut(&key.group) {
                                    group.remove(&(key.topic, key.partition));
                                    if group.is_empty() {
                                        offsets.remove(&key.group);
                                    }
                                }
                            }
                            Ok(Stored::Other) => {}
                            Err(()) => bad += 1,
                        }
                    }
                }
            }
            offset = read.offset_next as i64;
        }
        if bad > 0 {
            tracing::warn!(
                records = bad,
                "unreadable __consumer_offsets records skipped"
            );
        }
        tracing::info!(
            groups = offsets.len(),
            end,
            term,
            "group coordinator loaded"
        );
        *self.state.borrow_mut() = State {
            loaded: Some(term),
            offsets,
            groups: BTreeMap::new(),
            classic: BTreeMap::new(),
        };
        // Requests parked under an earlier term hear that it ended.
        *self.parked.borrow_mut() = Parked::default();
        Ok(())
    }

    fn heartbeat(
        &self,
        request: wire::ConsumerGroupHeartbeatRequestT,
        topics: &BTreeMap<String, i32>,
        limits: &Limits,
        interval_ms: i32,
        now_ms: i64,
    ) -> wire::ConsumerGroupHeartbeatResponseT {
        let fail = |code: ErrorCode, message: &str| wire::ConsumerGroupHeartbeatResponseT {
            error_code: code.code(),
            error_message: Some(message.to_owned()),
            ..Default::default()
        };
        let Some(group_id) = request.group_id.filter(|g| valid_group(g)) else {
            return fail(ErrorCode::InvalidGroupId, "group id empty or too long");
        };
        let heartbeat = Heartbeat {
            member_id: request.member_id.unwrap_or_default(),
            member_epoch: request.member_epoch,
            instance_id: request.instance_id.filter(|i| !i.is_empty()),
            client_id: request.client_id.unwrap_or_default(),
            session_timeout_ms: i64::from(request.session_timeout_ms),
            topics: request.subscribed_topic_names,
            regex: request.subscribed_topic_regex,
            owned: request.owned.map(|owned| from_wire(&owned)),
        };
        let mut state = self.state.borrow_mut();
        let joining = heartbeat.member_epoch == members::JOIN;
        let group = match state.groups.get_mut(&group_id) {
            Some(group) => group,
            None if joining || heartbeat.member_epoch > 0 => {
                state.groups.entry(group_id.clone()).or_default()
            }
            None => return fail(ErrorCode::UnknownMemberId, "no such member"),
        };
        match group.heartbeat(heartbeat, topics, limits, now_ms) {
            Ok(answer) => {
                if joining {
                    tracing::info!(group = %group_id, member = %answer.member_id, epoch = group.epoch, "member joined");
                }
                wire::ConsumerGroupHeartbeatResponseT {
                    error_code: 0,
                    error_message: None,
                    member_id: Some(answer.member_id),
                    member_epoch: answer.member_epoch,
                    heartbeat_interval_ms: interval_ms,
                    assignment: answer.assignment.map(|a| to_wire(&a)),
                }
            }
            Err(code) => fail(code, "heartbeat refused"),
        }
    }

    async fn commit(
        &self,
        partition: &Partition,
        request: wire::OffsetCommitRequestT,
        topics: &BTreeMap<String, i32>,
        now_ms: i64,
    ) -> wire::OffsetCommitResponseT {
        let fail = |code: ErrorCode| wire::OffsetCommitResponseT {
            error_code: code.code(),
            topics: None,
        };
        let Some(group_id) = request.group_id.filter(|g| valid_group(g)) else {
            return fail(ErrorCode::InvalidGroupId);
        };
        let member = request.member_id.unwrap_or_default();
        let allowed = {
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            if let Some(classic) = state.classic.get_mut(&group_id) {
                // A classic member commits at its generation.
                classic.check_commit(&member, request.member_epoch, now_ms)
            } else {
                match state.groups.get(&group_id).filter(|g| !g.is_empty()) {
                    Some(group) => group.check_commit(&member, request.member_epoch),
                    // A group without members takes commits from tools, as
                    // Kafka's does (a member id then means nothing).
                    None => Ok(()),
                }
            }
        };
        if let Err(code) = allowed {
            return fail(code);
        }
        let mut results = Vec::new();
        let mut batch = BatchBuilder::new();
        let mut written = Vec::new();
        for topic in request.topics.unwrap_or_default() {
            let name = topic.name.unwrap_or_default();
            let mut partitions = Vec::new();
            for p in topic.partitions.unwrap_or_default() {
                let metadata = p.metadata.unwrap_or_default();
                // As Kafka: a commit for a partition that does not exist
                // is refused, not kept for a topic that may never come.
                let known = topics
                    .get(&name)
                    .is_some_and(|&n| (0..n).contains(&p.partition));
                let code = if metadata.len() > records::METADATA_LEN_MAX {
                    ErrorCode::OffsetMetadataTooLarge.code()
                } else if !known {
                    ErrorCode::UnknownTopicOrPartition.code()
                } else {
                    let key = CommitKey {
                        group: group_id.clone(),
                        topic: name.clone(),
                        partition: p.partition,
                    };
                    let committed = Committed {
                        offset: p.offset,
                        leader_epoch: p.leader_epoch,
                        metadata,
                        timestamp: now_ms,
                    };
                    batch.push(
                        now_ms,
                        Some(&records::encode_key(&key)),
                        Some(&records::encode_value(&committed)),
                        &[],
                    );
                    written.push((key, committed));
                    0
                };
                partitions.push(wire::OffsetCommitPartitionResultT {
                    partition: p.partition,
                    error_code: code,
                });
            }
            results.push(wire::OffsetCommitTopicResultT {
                name: Some(name),
                partitions: Some(partitions),
            });
        }
        if !written.is_empty() {
            if let Err(code) = partition.produce(&batch.build(), Acks::internal()).await {
                let code = coordinator_error(code).code();
                for p in results
                    .iter_mut()
                    .flat_map(|t| t.partitions.iter_mut().flatten())
                {
                    if p.error_code == 0 {
                        p.error_code = code;
                    }
                }
                return wire::OffsetCommitResponseT {
                    error_code: 0,
                    topics: Some(results),
                };
            }
            let mut state = self.state.borrow_mut();
            let offsets = state.offsets.entry(group_id).or_default();
            for (key, committed) in written {
                offsets.insert((key.topic, key.partition), committed);
            }
        }
        wire::OffsetCommitResponseT {
            error_code: 0,
            topics: Some(results),
        }
    }

    fn fetch(&self, request: wire::OffsetFetchRequestT) -> wire::OffsetFetchResponseT {
        let state = self.state.borrow();
        let empty = BTreeMap::new();
        let group = request
            .group_id
            .as_ref()
            .and_then(|g| state.offsets.get(g))
            .unwrap_or(&empty);
        let result =
            |partition: i32, committed: Option<&Committed>| wire::OffsetFetchPartitionResultT {
                partition,
                error_code: 0,
                offset: committed.map_or(-1, |c| c.offset),
                leader_epoch: committed.map_or(-1, |c| c.leader_epoch),
                metadata: committed.map(|c| c.metadata.clone()),
            };
        let topics = match request.topics {
            Some(topics) => topics
                .into_iter()
                .map(|t| {
                    let name = t.name.unwrap_or_default();
                    let partitions = t
                        .partitions
                        .unwrap_or_default()
                        .into_iter()
                        .map(|p| result(p, group.get(&(name.clone(), p))))
                        .collect();
                    wire::OffsetFetchTopicResultT {
                        name: Some(name),
                        partitions: Some(partitions),
                    }
                })
                .collect(),
            None => {
                let mut topics: Vec<wire::OffsetFetchTopicResultT> = Vec::new();
                for ((topic, p), committed) in group {
                    if topics.last().and_then(|t| t.name.as_ref()) != Some(topic) {
                        topics.push(wire::OffsetFetchTopicResultT {
                            name: Some(topic.clone()),
                            partitions: Some(Vec::new()),
                        });
                    }
                    if let Some(last) = topics.last_mut() {
                        last.partitions
                            .get_or_insert_default()
                            .push(result(*p, Some(committed)));
                    }
                }
                topics
            }
        };
        wire::OffsetFetchResponseT {
            error_code: 0,
            topics: Some(topics),
        }
    }

    /// Every group known here: with members, or with committed offsets.
    fn list(&self, now_ms: i64) -> wire::ListGroupsResponseT {
        self.tick_all(now_ms);
        let state = &*self.state.borrow();
        let names: BTreeSet<&String> = state
            .groups
            .keys()
            .chain(state.classic.keys())
            .chain(state.offsets.keys())
            .collect();
        let groups = names
            .into_iter()
            .filter_map(|name| {
                let (members, group_state) = state.summary(name);
                if members == 0 && !state.offsets.contains_key(name) {
                    return None;
                }
                Some(wire::GroupListingT {
                    group_id: Some(name.clone()),
                    state: Some(group_state.to_owned()),
                    members: members as i32,
                    group_type: Some(state.group_type(name).to_owned()),
                })
            })
            .collect();
        wire::ListGroupsResponseT {
            error_code: 0,
            groups: Some(groups),
        }
    }

    fn describe(
        &self,
        request: wire::DescribeGroupsRequestT,
        now_ms: i64,
    ) -> wire::DescribeGroupsResponseT {
        self.tick_all(now_ms);
        let state = &*self.state.borrow();
        let groups = request
            .group_ids
            .unwrap_or_default()
            .into_iter()
            .map(|id| {
                let (count, group_state) = state.summary(&id);
                if count == 0 && !state.offsets.contains_key(&id) {
                    return wire::DescribedGroupT {
                        group_id: Some(id),
                        error_code: ErrorCode::GroupIdNotFound.code(),
                        state: Some("Dead".into()),
                        ..Default::default()
                    };
                }
                let (members, epoch) = match (state.groups.get(&id), state.classic.get(&id)) {
                    (Some(g), _) => (
                        g.members()
                            .map(|m| wire::GroupMemberT {
                                member_id: Some(m.id.clone()),
                                instance_id: m.instance_id.clone(),
                                client_id: Some(m.client_id.clone()),
                                member_epoch: m.epoch,
                                subscribed_topic_names: Some(m.topics.clone()),
                                subscribed_topic_regex: Some(m.regex.clone()),
                                assignment: Some(to_wire(&m.assigned)),
                                target: g.target_of(&m.id).map(to_wire),
                            })
                            .collect(),
                        g.epoch,
                    ),
                    // A classic member's assignment is its assignor's bytes:
                    // shown when they are Kafka's consumer protocol.
                    (None, Some(c)) => (
                        c.describe()
                            .into_iter()
                            .map(|m| wire::GroupMemberT {
                                assignment: fjord_net::kafka::consumer_assignment(&m.assignment)
                                    .map(|tps| to_wire(&tps.into_iter().collect())),
                                member_id: Some(m.member_id),
                                instance_id: m.instance_id,
                                client_id: Some(m.client_id),
                                member_epoch: c.generation(),
                                ..Default::default()
                            })
                            .collect(),
                        c.generation(),
                    ),
                    (None, None) => (Vec::new(), 0),
                };
                wire::DescribedGroupT {
                    group_id: Some(id),
                    error_code: 0,
                    state: Some(group_state.to_owned()),
                    group_epoch: epoch,
                    members: Some(members),
                }
            })
            .collect();
        wire::DescribeGroupsResponseT {
            groups: Some(groups),
        }
    }

    async fn delete(
        &self,
        partition: &Partition,
        request: wire::DeleteGroupsRequestT,
        now_ms: i64,
    ) -> wire::DeleteGroupsResponseT {
        let mut results = Vec::new();
        for id in request.group_ids.unwrap_or_default() {
            let code = self
                .delete_one(partition, &id, now_ms)
                .await
                .err()
                .map_or(0, |e| e.code());
            results.push(wire::GroupResultT {
                group_id: Some(id),
                error_code: code,
            });
        }
        wire::DeleteGroupsResponseT {
            results: Some(results),
        }
    }

    /// Deletes a group without members: tombstones for its offsets.
    async fn delete_one(
        &self,
        partition: &Partition,
        id: &str,
        now_ms: i64,
    ) -> Result<(), ErrorCode> {
        let keys: Vec<(String, i32)> = {
            self.tick_all(now_ms);
            let state = self.state.borrow();
            if state.summary(id).0 > 0 {
                return Err(ErrorCode::NonEmptyGroup);
            }
            let has_members = state.groups.contains_key(id) || state.classic.contains_key(id);
            match state.offsets.get(id) {
                Some(offsets) => offsets.keys().cloned().collect(),
                None if has_members => Vec::new(),
                None => return Err(ErrorCode::GroupIdNotFound),
            }
        };
        write_tombstones(partition, id, &keys, now_ms).await?;
        let mut state = self.state.borrow_mut();
        state.offsets.remove(id);
        state.groups.remove(id);
        state.classic.remove(id);
        tracing::info!(group = %id, offsets = keys.len(), "group deleted");
        Ok(())
    }
}

impl Coordinator {
    /// Kafka's OffsetDelete: the commits of `partitions` go, except for
    /// topics the group's members read now (`GROUP_SUBSCRIBED_TO_TOPIC`; a
    /// classic group's subscriptions are in its members' opaque metadata,
    /// so a classic group with members keeps every commit).
    async fn delete_offsets(
        &self,
        partition: &Partition,
        id: &str,
        partitions: Vec<(String, i32)>,
        now_ms: i64,
    ) -> Result<Vec<((String, i32), i16)>, ErrorCode> {
        self.tick_all(now_ms);
        let (deleted, codes) = {
            let state = self.state.borrow();
            let offsets = state.offsets.get(id);
            if offsets.is_none() && state.summary(id).0 == 0 {
                return Err(ErrorCode::GroupIdNotFound);
            }
            let classic_members = state.classic.get(id).is_some_and(|c| !c.is_empty());
            let subscribed = |topic: &str| {
                classic_members
                    || state
                        .groups
                        .get(id)
                        .is_some_and(|g| g.members().any(|m| m.reads(topic)))
            };
            let mut deleted = Vec::new();
            let mut codes = Vec::new();
            for tp in partitions {
                if subscribed(&tp.0) {
                    codes.push((tp, ErrorCode::GroupSubscribedToTopic.code()));
                    continue;
                }
                if offsets.is_some_and(|o| o.contains_key(&tp)) {
                    deleted.push(tp.clone());
                }
                codes.push((tp, 0));
            }
            (deleted, codes)
        };
        write_tombstones(partition, id, &deleted, now_ms).await?;
        if let Some(offsets) = self.state.borrow_mut().offsets.get_mut(id) {
            for tp in &deleted {
                offsets.remove(tp);
            }
        }
        Ok(codes)
    }
}

/// Appends tombstones for `group`'s commits of `keys` (acks=all).
async fn write_tombstones(
    partition: &Partition,
    group: &str,
    keys: &[(String, i32)],
    now_ms: i64,
) -> Result<(), ErrorCode> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut batch = BatchBuilder::new();
    for (topic, p) in keys {
        let key = CommitKey {
            group: group.to_owned(),
            topic: topic.clone(),
            partition: *p,
        };
        batch.push(now_ms, Some(&records::encode_key(&key)), None, &[]);
    }
    partition
        .produce(&batch.build(), Acks::internal())
        .await
        .map(drop)
        .map_err(coordinator_error)
}

/// Where a load reads to: a log of its own, to its visible end; a
/// replica, to its high watermark once that counts an entry of this
/// leader's term (so every earlier term's record is below it, and nothing
/// below it can be cut), and once its own log holds that much — its writes
/// may trail the Raft log it won the election with. Waits up to
/// [`LOAD_WAIT`], then answers that the load is in progress.
async fn loadable_end(partition: &Partition) -> Result<u64, ErrorCode> {
    let Some(replica) = partition.replica() else {
        return Ok(partition.log().offset_visible());
    };
    let deadline = std::time::Instant::now() + LOAD_WAIT;
    loop {
        let end = replica.high_watermark();
        let settled = replica.high_watermark_settled();
        let log = partition.log();
        if settled && log.offset_visible() >= end {
            return Ok(end);
        }
        let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
            return Err(ErrorCode::CoordinatorLoadInProgress);
        };
        if settled {
            if !log.is_writable() {
                // Stopped: it will not catch up before it is reopened.
                return Err(ErrorCode::CoordinatorLoadInProgress);
            }
            let visible = std::pin::pin!(log.wait_visible(end));
            let timeout = std::pin::pin!(glommio::timer::sleep(left));
            futures::future::select(visible, timeout).await;
        } else {
            replica.wait_past(end, left).await;
        }
        leading_term(partition)?;
    }
}

/// The term this replica leads in (0 for an unreplicated partition).
fn leading_term(partition: &Partition) -> Result<u64, ErrorCode> {
    match partition.replica() {
        Some(replica) => replica.leading_term().ok_or(ErrorCode::NotCoordinator),
        None => Ok(0),
    }
}

/// What a group client is told when the partition refused: somebody else
/// coordinates now.
pub fn coordinator_error(code: ErrorCode) -> ErrorCode {
    match code {
        ErrorCode::NotLeaderOrFollower
        | ErrorCode::LeaderNotAvailable
        | ErrorCode::UnknownTopicOrPartition
        | ErrorCode::FencedLeaderEpoch => ErrorCode::NotCoordinator,
        ErrorCode::KafkaStorageError
        | ErrorCode::RequestTimedOut
        | ErrorCode::BrokerNotAvailable => ErrorCode::CoordinatorNotAvailable,
        other => other,
    }
}

fn valid_group(id: &str) -> bool {
    !id.is_empty() && id.len() <= records::GROUP_ID_LEN_MAX
}
