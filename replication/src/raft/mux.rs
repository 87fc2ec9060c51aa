//! Every group a shard holds, and their traffic to peer replicas batched.
//!
//! Thousands of partitions between the same two shards must not mean
//! thousands of heartbeats per tick: a tick runs every group and gathers all
//! messages for one peer into one [`PeerBatch`], which the shard sends as a
//! single frame on its connection to that peer. An idle group contributes
//! only its heartbeat (and its answer) to that batch, and a quiet one
//! (`Config::quiesce`) nothing at all.

use crate::raft::group::Group;
use crate::raft::message::{AppendResponse, Heartbeat, Message, Output};
use crate::raft::types::NodeId;
use std::collections::{BTreeMap, BTreeSet, HashMap};

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

/// The groups of one shard. Quiet groups (see [`Group::quiet_nodes`]) are
/// not ticked at all while the nodes they rely on are heard from: ten
/// thousand idle groups would otherwise cost a pass over ten thousand
/// structs every tick, which is most of an idle node's CPU. A quiet group
/// catches up on the ticks it missed ([`Group::skip`]) before anything
/// reaches it, and is ticked again once one of its nodes goes silent.
#[derive(Debug)]
pub struct Mux {
    groups: BTreeMap<GroupId, Group>,
    /// Groups ticked every tick.
    ticking: BTreeSet<GroupId>,
    /// Quiet groups: the tick they were last ticked and the nodes they
    /// rely on.
    quiet: HashMap<GroupId, (u64, Vec<NodeId>)>,
    /// Quiet groups by a node they rely on.
    quiet_by_node: BTreeMap<NodeId, BTreeSet<GroupId>>,
    /// Ticks within which a node must have been heard for its quiet groups
    /// to stay unticked (the strictest of the groups').
    fresh_ticks: u64,
    now: u64,
    scratch: Vec<Output>,
}

impl Default for Mux {
    fn default() -> Mux {
        Mux {
            groups: BTreeMap::new(),
            ticking: BTreeSet::new(),
            quiet: HashMap::new(),
            quiet_by_node: BTreeMap::new(),
            fresh_ticks: u64::MAX,
            now: 0,
            scratch: Vec::new(),
        }
    }
}

impl Mux {
    /// An empty mux.
    pub fn new() -> Mux {
        Mux::default()
    }

    /// Adds (or replaces) a group.
    pub fn insert(&mut self, id: GroupId, group: Group) {
        self.unquiet(id);
        self.groups.insert(id, group);
        self.ticking.insert(id);
    }

    /// Removes a group.
    pub fn remove(&mut self, id: GroupId) -> Option<Group> {
        self.unquiet(id);
        self.ticking.remove(&id);
        self.groups.remove(&id)
    }

    /// A group, to read (as of its last tick, if it is quiet).
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

    /// Number of groups ticked every tick (the others are quiet).
    pub fn ticking(&self) -> usize {
        self.ticking.len()
    }

    /// Ticks every group that is not quiet; `heard(node)`: ticks since
    /// anything arrived from that node (see [`Group::tick`]).
    pub fn tick(&mut self, heard: &dyn Fn(NodeId) -> Option<u64>, outbox: &mut Outbox) {
        self.now += 1;
        let fresh = self.fresh_ticks;
        let silent: Vec<NodeId> = self
            .quiet_by_node
            .keys()
            .copied()
            .filter(|&node| heard(node).is_none_or(|ticks| ticks > fresh))
            .collect();
        for node in silent {
            for id in self.quiet_by_node.remove(&node).unwrap_or_default() {
                // Ticked below, this tick: it missed the ones before.
                self.wake(id, 1, heard);
            }
        }
        let mut quieted = Vec::new();
        for &id in &self.ticking {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            group.tick(heard, &mut self.scratch);
            outbox.route(id, &mut self.scratch);
            if let Some((nodes, fresh)) = group.quiet_nodes()
                && nodes
                    .iter()
                    .all(|&node| heard(node).is_some_and(|ticks| ticks <= fresh))
            {
                self.fresh_ticks = self.fresh_ticks.min(fresh);
                quieted.push((id, nodes));
            }
        }
        for (id, nodes) in quieted {
            self.ticking.remove(&id);
            for &node in &nodes {
                self.quiet_by_node.entry(node).or_default().insert(id);
            }
            self.quiet.insert(id, (self.now, nodes));
        }
    }

    /// Delivers a peer's batch; messages for unknown groups are dropped (the
    /// group was deleted or is not created here yet).
    pub fn receive(
        &mut self,
        from: NodeId,
        batch: PeerBatch,
        heard: &dyn Fn(NodeId) -> Option<u64>,
        outbox: &mut Outbox,
    ) {
        let heartbeats = batch
            .heartbeats
            .into_iter()
            .map(|(g, h)| (g, Message::Heartbeat(h)));
        let responses = batch
            .heartbeat_responses
            .into_iter()
            .map(|(g, r)| (g, Message::HeartbeatResponse(r)));
        for (id, message) in heartbeats.chain(responses).chain(batch.messages) {
            self.wake(id, 0, heard);
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
        heard: &dyn Fn(NodeId) -> Option<u64>,
        outbox: &mut Outbox,
        f: impl FnOnce(&mut Group, &mut Vec<Output>) -> R,
    ) -> Option<R> {
        self.wake(id, 0, heard);
        let group = self.groups.get_mut(&id)?;
        let result = f(group, &mut self.scratch);
        outbox.route(id, &mut self.scratch);
        Some(result)
    }

    /// Makes a quiet group tick again, caught up on the ticks it missed
    /// (less `pending`, the ticks it is about to get).
    fn wake(&mut self, id: GroupId, pending: u64, heard: &dyn Fn(NodeId) -> Option<u64>) {
        let Some(last) = self.unquiet(id) else {
            return;
        };
        self.ticking.insert(id);
        let missed = (self.now - last).saturating_sub(pending);
        if let Some(group) = self.groups.get_mut(&id)
            && missed > 0
        {
            group.skip(missed, heard);
        }
    }

    /// Forgets that `id` is quiet; returns the tick it was last ticked.
    fn unquiet(&mut self, id: GroupId) -> Option<u64> {
        let (last, nodes) = self.quiet.remove(&id)?;
        for node in nodes {
            if let Some(ids) = self.quiet_by_node.get_mut(&node) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.quiet_by_node.remove(&node);
                }
            }
        }
        Some(last)
    }
}
