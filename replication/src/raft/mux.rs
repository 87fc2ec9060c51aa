//! Every group a shard holds, and their traffic to peer replicas batched.
//!
//! Thousands of partitions between the same two shards must not mean
//! thousands of heartbeats per tick: a tick runs every group and gathers all
//! messages for one peer into one [`PeerBatch`], which the shard sends as a
//! single frame on its connection to that peer. An idle group contributes
//! only its heartbeat (and its answer) to that batch.

use crate::raft::group::Group;
use crate::raft::message::{AppendResponse, Heartbeat, Message, Output};
use crate::raft::types::NodeId;
use std::collections::BTreeMap;

/// A group's id on the shard (and across the cluster): Fjord uses the
/// partition's global id.
pub type GroupId = u64;

/// Everything one shard sends one peer replica in one go.
#[derive(
    Debug, Default, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct PeerBatch {
    /// Heartbeats, by group.
    pub heartbeats: Vec<(GroupId, Heartbeat)>,
    /// Answers to heartbeats, by group.
    pub heartbeat_responses: Vec<(GroupId, AppendResponse)>,
    /// Every other message, by group, in the order produced.
    pub messages: Vec<(GroupId, Message)>,
}

impl PeerBatch {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.heartbeats.is_empty()
            && self.heartbeat_responses.is_empty()
            && self.messages.is_empty()
    }

    fn push(&mut self, group: GroupId, message: Message) {
        match message {
            Message::Heartbeat(h) => self.heartbeats.push((group, h)),
            Message::HeartbeatResponse(r) => self.heartbeat_responses.push((group, r)),
            other => self.messages.push((group, other)),
        }
    }
}

/// What a round of the mux produced: batches per peer, and every other
/// output for the shard to carry out.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Messages, per destination replica.
    pub batches: BTreeMap<NodeId, PeerBatch>,
    /// Storage actions, replication reads and events, per group, in order.
    pub local: Vec<(GroupId, Output)>,
}

impl Outbox {
    fn route(&mut self, group: GroupId, outputs: &mut Vec<Output>) {
        for output in outputs.drain(..) {
            match output {
                Output::Send { to, message } => {
                    self.batches.entry(to).or_default().push(group, message)
                }
                other => self.local.push((group, other)),
            }
        }
    }
}

/// The groups of one shard.
#[derive(Debug, Default)]
pub struct Mux {
    groups: BTreeMap<GroupId, Group>,
    scratch: Vec<Output>,
}

impl Mux {
    /// An empty mux.
    pub fn new() -> Mux {
        Mux::default()
    }

    /// Adds (or replaces) a group.
    pub fn insert(&mut self, id: GroupId, group: Group) {
        self.groups.insert(id, group);
    }

    /// Removes a group.
    pub fn remove(&mut self, id: GroupId) -> Option<Group> {
        self.groups.remove(&id)
    }

    /// A group, to read.
    pub fn get(&self, id: GroupId) -> Option<&Group> {
        self.groups.get(&id)
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Ticks every group.
    pub fn tick(&mut self, outbox: &mut Outbox) {
        for (&id, group) in &mut self.groups {
            group.tick(&mut self.scratch);
            outbox.route(id, &mut self.scratch);
        }
    }

    /// Delivers a peer's batch; messages for unknown groups are dropped (the
    /// group was deleted or is not created here yet).
    pub fn receive(&mut self, from: NodeId, batch: PeerBatch, outbox: &mut Outbox) {
        let heartbeats = batch
            .heartbeats
            .into_iter()
            .map(|(g, h)| (g, Message::Heartbeat(h)));
        let responses = batch
            .heartbeat_responses
            .into_iter()
            .map(|(g, r)| (g, Message::HeartbeatResponse(r)));
        for (id, message) in heartbeats.chain(responses).chain(batch.messages) {
            if let Some(group) = self.groups.get_mut(&id) {
                group.receive(from, message, &mut self.scratch);
                outbox.route(id, &mut self.scratch);
            }
        }
    }

    /// Runs `f` on one group, routing what it outputs.
    pub fn with<R>(
        &mut self,
        id: GroupId,
        outbox: &mut Outbox,
        f: impl FnOnce(&mut Group, &mut Vec<Output>) -> R,
    ) -> Option<R> {
        let group = self.groups.get_mut(&id)?;
        let result = f(group, &mut self.scratch);
        outbox.route(id, &mut self.scratch);
        Some(result)
    }
}
