//! Scenario tests of the core with a hand-driven cluster: instant delivery,
//! storage that completes when told. The simulator covers the faults; these
//! pin down single behaviours.

use crate::raft::mux::{Mux, Outbox};
use crate::raft::{
    Config, Durability, Entry, Event, Group, HardState, LogState, Membership, MembershipChange,
    Message, NodeId, Output, ProposeError, Role, VoteResponse,
};

struct Cluster {
    groups: Vec<Group>,
    /// Storage actions not yet completed, per node.
    pending: Vec<Vec<Output>>,
    /// Each node's log as it sees it.
    logs: Vec<Vec<Entry>>,
    events: Vec<(NodeId, Event)>,
    /// Nodes told to reset their logs, in order.
    resets: Vec<usize>,
}

impl Cluster {
    fn new(count: u32, durability: Durability) -> Cluster {
        let voters: Vec<NodeId> = (0..count).collect();
        let membership = Membership::of_voters(&voters);
        let groups = voters
            .iter()
            .map(|&id| {
                let cfg = Config::new(id, durability, 7);
                Group::new(
                    cfg,
                    HardState::default(),
                    LogState::default(),
                    membership.clone(),
                    0,
                )
            })
            .collect();
        let count = count as usize;
        Cluster {
            groups,
            pending: vec![Vec::new(); count],
            logs: vec![Vec::new(); count],
            events: Vec::new(),
            resets: Vec::new(),
        }
    }

    /// Carries out outputs: messages delivered at once, storage queued.
    fn route(&mut self, from: usize, outputs: Vec<Output>) {
        let mut queue = vec![(from, outputs)];
        while let Some((n, outputs)) = queue.pop() {
            for output in outputs {
                match output {
                    Output::Send { to, message } => {
                        let mut out = Vec::new();
                        self.groups[to as usize].receive(n as NodeId, message, &mut out);
                        queue.push((to as usize, out));
                    }
                    Output::Replicate(read) => {
                        // Entries travel as metadata only here: the leader's
                        // log view is the source of truth for the test.
                        let to = read.to;
                        let request = read.request(self.entries_of(n, read.from));
                        let mut out = Vec::new();
                        self.groups[to as usize].receive(
                            n as NodeId,
                            Message::Append(request),
                            &mut out,
                        );
                        queue.push((to as usize, out));
                    }
                    Output::Event(e) => self.events.push((n as NodeId, e)),
                    Output::Append { ref entries, .. } => {
                        self.logs[n].extend(entries.iter().cloned());
                        self.pending[n].push(output);
                    }
                    Output::Truncate { end, .. } => self.logs[n].retain(|e| e.offset < end),
                    Output::Reset { .. } => {
                        self.logs[n].clear();
                        self.resets.push(n);
                    }
                    storage => self.pending[n].push(storage),
                }
            }
        }
    }

    fn entries_of(&self, n: usize, from: u64) -> Vec<Entry> {
        self.logs[n]
            .iter()
            .filter(|e| e.offset >= from)
            .cloned()
            .collect()
    }

    /// Completes every storage action of node `n`.
    fn flush(&mut self, n: usize) {
        while !self.pending[n].is_empty() {
            let actions = std::mem::take(&mut self.pending[n]);
            let mut out = Vec::new();
            for action in actions {
                match action {
                    Output::Append {
                        entries,
                        generation,
                    } => {
                        let end = entries.last().map_or(0, |e| e.end);
                        self.groups[n].log_written(end, generation, &mut out);
                    }
                    Output::Sync { end, generation } => {
                        self.groups[n].log_synced(end, generation, &mut out)
                    }
                    Output::PersistHardState { version, .. } => {
                        self.groups[n].hard_state_persisted(version, &mut out)
                    }
                    _ => {}
                }
            }
            self.route(n, out);
        }
    }

    fn flush_all(&mut self) {
        for _ in 0..4 {
            for n in 0..self.groups.len() {
                self.flush(n);
            }
        }
    }

    fn tick(&mut self, n: usize, ticks: u32) {
        for _ in 0..ticks {
            let mut out = Vec::new();
            self.groups[n].tick(&mut out);
            self.route(n, out);
            self.flush_all();
        }
    }
}

fn elect(cluster: &mut Cluster, n: usize) {
    // Node n's timeout is at most twice the election ticks.
    cluster.tick(n, 20);
    assert_eq!(
        cluster.groups[n].role(),
        Role::Leader,
        "node {n} should lead"
    );
}

#[test]
fn a_lone_replica_elects_itself_and_commits_once_written() {
    let mut c = Cluster::new(1, Durability::Written);
    elect(&mut c, 0);
    let mut out = Vec::new();
    let entry = c.groups[0].propose(3, 1000, &mut out).expect("leader");
    c.route(0, out);
    assert!(
        c.groups[0].commit() < entry.end,
        "not committed before the write completes"
    );
    c.flush(0);
    assert_eq!(c.groups[0].commit(), entry.end);
    assert!(
        c.events
            .contains(&(0, Event::LeaderDurable { end: entry.end }))
    );
}

#[test]
fn acks_all_waits_for_a_quorum_synced_under_fsync_always() {
    let mut c = Cluster::new(3, Durability::Synced);
    elect(&mut c, 0);
    let mut out = Vec::new();
    let entry = c.groups[0].propose(1, 100, &mut out).expect("leader");
    c.route(0, out);
    c.flush(0);
    assert!(
        c.groups[0].commit() < entry.end,
        "the leader alone is no quorum"
    );
    c.flush(1);
    assert_eq!(
        c.groups[0].commit(),
        entry.end,
        "leader and one follower synced: committed"
    );
    // The follower learns the commit with the next message.
    c.tick(0, 2);
    assert_eq!(c.groups[1].commit(), entry.end);
    assert!(c.groups[2].commit() <= entry.end);
}

#[test]
fn followers_refuse_proposals_and_name_the_leader() {
    let mut c = Cluster::new(3, Durability::Written);
    elect(&mut c, 0);
    let mut out = Vec::new();
    assert_eq!(
        c.groups[1].propose(1, 10, &mut out),
        Err(ProposeError::NotLeader(Some(0)))
    );
}

#[test]
fn leadership_transfer_hands_over_to_a_caught_up_voter() {
    let mut c = Cluster::new(3, Durability::Written);
    elect(&mut c, 0);
    let mut out = Vec::new();
    assert!(c.groups[0].transfer_leadership(2, &mut out));
    c.route(0, out);
    c.flush_all();
    assert_eq!(c.groups[2].role(), Role::Leader);
    assert_eq!(c.groups[0].role(), Role::Follower);
    assert_eq!(c.groups[0].leader(), Some(2));
}

#[test]
fn one_membership_change_at_a_time() {
    let mut c = Cluster::new(3, Durability::Written);
    elect(&mut c, 0);
    let mut out = Vec::new();
    c.groups[0]
        .change_membership(MembershipChange::AddLearner(3), &mut out)
        .expect("first change");
    assert_eq!(
        c.groups[0].change_membership(MembershipChange::Promote(3), &mut out),
        Err(ProposeError::ChangePending),
        "the learner is not committed yet"
    );
    assert_eq!(
        c.groups[0].membership().learners,
        vec![3],
        "in effect once appended"
    );
}

#[test]
fn a_leader_cut_off_from_its_quorum_steps_down() {
    let mut c = Cluster::new(3, Durability::Written);
    elect(&mut c, 0);
    // Tick the leader alone, dropping everything it sends.
    let mut stepped_down = false;
    for _ in 0..40 {
        let mut out = Vec::new();
        c.groups[0].tick(&mut out);
        stepped_down |= out
            .iter()
            .any(|o| matches!(o, Output::Event(Event::SteppedDown { .. })));
    }
    assert!(
        stepped_down,
        "check-quorum must depose a leader that hears nobody"
    );
    assert_ne!(c.groups[0].role(), Role::Leader);
}

#[test]
fn the_mux_sends_one_batch_per_peer_per_tick() {
    let membership = Membership::of_voters(&[0, 1, 2]);
    let mut mux = Mux::new();
    for id in 0..1000 {
        let cfg = Config::new(0, Durability::Written, id);
        let mut g = Group::new(
            cfg,
            HardState::default(),
            LogState::default(),
            membership.clone(),
            0,
        );
        // Make each group a leader: time out, then grant it the votes.
        let mut out = Vec::new();
        for _ in 0..20 {
            g.tick(&mut out);
        }
        g.receive(
            1,
            Message::PreVoteResponse(VoteResponse {
                term: 1,
                granted: true,
            }),
            &mut out,
        );
        g.hard_state_persisted(1, &mut out);
        g.receive(
            1,
            Message::VoteResponse(VoteResponse {
                term: 1,
                granted: true,
            }),
            &mut out,
        );
        assert_eq!(g.role(), Role::Leader);
        mux.insert(id, g);
    }
    let mut outbox = Outbox::default();
    mux.tick(&mut outbox);
    mux.tick(&mut outbox);
    assert_eq!(outbox.batches.len(), 2, "one batch per peer");
    for batch in outbox.batches.values() {
        assert_eq!(
            batch.heartbeats.len(),
            1000,
            "every group's heartbeat in the one batch"
        );
    }
}

#[test]
fn an_idle_group_is_small() {
    // 10,000 partitions x RF 3 on 3 nodes means 10,000 groups per node: the
    // struct plus a few small vectors, far under the 64 KiB a partition may
    // cost in all.
    let size = std::mem::size_of::<Group>();
    assert!(size < 1024, "Group is {size} bytes");
}

#[test]
fn a_replica_added_behind_the_leaders_log_start_starts_there() {
    replica_added_behind_the_log_start(false);
}

#[test]
fn a_replica_added_behind_the_log_start_catches_up_when_a_heartbeat_reaches_it_first() {
    // Its node opened the partition after the leader's first probe went:
    // the first it hears is a heartbeat, whose answer proves nothing about
    // where its log matches the leader's.
    replica_added_behind_the_log_start(true);
}

fn replica_added_behind_the_log_start(first_probe_lost: bool) {
    let mut c = Cluster::new(3, Durability::Written);
    elect(&mut c, 0);
    for _ in 0..4 {
        let mut out = Vec::new();
        c.groups[0].propose(2, 100, &mut out).expect("leader");
        c.route(0, out);
        c.flush_all();
    }
    assert_eq!(c.groups[0].commit(), c.groups[0].log_end());
    // Retention removes the leader's first entries.
    let start = c.logs[0][2].offset;
    c.groups[0].log_start_advanced(start);
    c.logs[0].retain(|e| e.offset >= start);
    // A new replica (a move's learner) with an empty log joins.
    let voters: Vec<NodeId> = (0..3).collect();
    c.groups.push(Group::new(
        Config::new(3, Durability::Written, 7),
        HardState::default(),
        LogState::default(),
        Membership::of_voters(&voters),
        0,
    ));
    c.pending.push(Vec::new());
    c.logs.push(Vec::new());
    let mut out = Vec::new();
    c.groups[0]
        .change_membership(MembershipChange::AddLearner(3), &mut out)
        .expect("change");
    if first_probe_lost {
        out.retain(|o| match o {
            Output::Replicate(read) => read.to != 3,
            Output::Send { to, .. } => *to != 3,
            _ => true,
        });
    }
    c.route(0, out);
    c.tick(0, 12);
    assert_eq!(
        c.resets,
        vec![3],
        "the new replica alone starts its log again"
    );
    assert_eq!(
        c.groups[3].log_end(),
        c.groups[0].log_end(),
        "and catches up"
    );
    assert_eq!(c.logs[3].first().map(|e| e.offset), Some(start));
    assert_eq!(c.groups[3].commit(), c.groups[0].commit());
    assert!(c.groups[3].membership().learners.contains(&3));
    // The others held the leader's log at its start: nothing dropped.
    assert_eq!(c.logs[1].first().map(|e| e.offset), Some(0));
}
