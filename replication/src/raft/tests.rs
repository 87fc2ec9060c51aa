//! Scenario tests of the core with a hand-driven cluster: instant delivery,
//! storage that completes when told. The simulator covers the faults; these
//! pin down single behaviours.

use crate::raft::mux::{Mux, Outbox};
use crate::raft::{
    Config, Durability, Entry, Event, Group, HardState, LogState, Membership, MembershipChange,
    Message, NodeId, Output, ProposeError, Replicate, Role, VoteResponse,
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
        Cluster::with(count, durability, false)
    }

    /// A cluster whose groups go quiet when idle (`Config::quiesce`).
    fn quiet(count: u32) -> Cluster {
        Cluster::with(count, Durability::Written, true)
    }

    fn with(count: u32, durability: Durability, quiesce: bool) -> Cluster {
        let voters: Vec<NodeId> = (0..count).collect();
        let membership = Membership::of_voters(&voters);
        let groups = voters
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id, durability, 7);
                cfg.quiesce = quiesce;
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
                        let request = read.request(self.entries_of(n, &read));
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

    /// What node `n`'s log gives `read`: whole entries from its start, up
    /// to its end and byte budget (at least one).
    fn entries_of(&self, n: usize, read: &Replicate) -> Vec<Entry> {
        let mut bytes = 0;
        self.logs[n]
            .iter()
            .filter(|e| e.offset >= read.from && e.offset < read.end)
            .take_while(|e| {
                let first = bytes == 0;
                bytes += u64::from(e.bytes);
                first || bytes <= read.max_bytes
            })
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
            self.tick_hearing(n, &|_| None);
        }
    }

    /// One tick of node `n`, which hears from nodes as `heard` says; returns
    /// how many messages the tick itself sent.
    fn tick_hearing(&mut self, n: usize, heard: &dyn Fn(NodeId) -> Option<u64>) -> usize {
        let mut out = Vec::new();
        self.groups[n].tick(heard, &mut out);
        let sent = out
            .iter()
            .filter(|o| matches!(o, Output::Send { .. } | Output::Replicate(_)))
            .count();
        self.route(n, out);
        self.flush_all();
        sent
    }

    /// `ticks` rounds of every node ticking once, every node hearing every
    /// other; returns the messages those ticks sent.
    fn tick_all_hearing(&mut self, ticks: u32) -> usize {
        let mut sent = 0;
        for _ in 0..ticks {
            for n in 0..self.groups.len() {
                sent += self.tick_hearing(n, &|_| Some(0));
            }
        }
        sent
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
        c.groups[0].tick(&|_| None, &mut out);
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
            g.tick(&|_| None, &mut out);
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
    mux.tick(&|_| None, &mut outbox);
    mux.tick(&|_| None, &mut outbox);
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

#[test]
fn an_idle_group_goes_quiet_while_its_nodes_hear_each_other() {
    let mut c = Cluster::quiet(3);
    elect(&mut c, 0);
    c.tick_all_hearing(10);
    let term = c.groups[0].term();
    assert_eq!(
        c.tick_all_hearing(100),
        0,
        "an idle group sends nothing, ten election timeouts long"
    );
    assert_eq!(c.groups[0].role(), Role::Leader);
    assert!(
        c.groups
            .iter()
            .all(|g| g.term() == term && g.leader() == Some(0))
    );
    // News wakes it: a proposal replicates and commits everywhere at once...
    let mut out = Vec::new();
    let entry = c.groups[0].propose(1, 100, &mut out).expect("leader");
    c.route(0, out);
    c.flush_all();
    assert_eq!(c.groups[0].commit(), entry.end);
    // ...the followers learn the commit with the next heartbeats, and the
    // group goes quiet again.
    assert!(c.tick_all_hearing(10) > 0);
    assert!(c.groups.iter().all(|g| g.commit() == entry.end));
    assert_eq!(c.tick_all_hearing(100), 0);
}

#[test]
fn a_quiet_groups_followers_elect_when_the_leaders_node_goes_silent() {
    let mut c = Cluster::quiet(3);
    elect(&mut c, 0);
    c.tick_all_hearing(10);
    assert_eq!(c.tick_all_hearing(20), 0);
    // Node 0 stops: the others hear only each other, from the next tick.
    let mut elected = None;
    for tick in 1..=40u64 {
        for n in 1..3 {
            c.tick_hearing(n, &|id| if id == 0 { Some(tick) } else { Some(0) });
        }
        if let Some(n) = (1..3).find(|&n| c.groups[n].role() == Role::Leader) {
            elected = Some((n, tick));
            break;
        }
    }
    let (_, tick) = elected.expect("a follower took over");
    // Within Raft's bound: an election timeout (at most twice the shortest)
    // after the last word from the leader's node, plus a round of votes.
    assert!(tick <= 21, "took {tick} ticks");
}

#[test]
fn a_quiet_group_elects_again_when_its_leader_stops_leading_on_a_node_still_heard() {
    let mut c = Cluster::quiet(3);
    elect(&mut c, 0);
    c.tick_all_hearing(10);
    let term = c.groups[0].term();
    // The leader alone hears nobody (a one-way cut) and steps down, while
    // its followers still hear its node.
    for _ in 0..20 {
        c.tick_hearing(0, &|_| None);
    }
    assert_ne!(c.groups[0].role(), Role::Leader);
    // The node's other traffic keeps arriving: the followers must still see
    // that the group has no leader, and elect one.
    c.tick_all_hearing(60);
    let leaders: Vec<usize> = (0..3)
        .filter(|&n| c.groups[n].role() == Role::Leader)
        .collect();
    assert_eq!(leaders.len(), 1, "one leader again");
    assert!(c.groups[leaders[0]].term() > term);
}

#[test]
fn a_follower_that_missed_the_quiet_heartbeat_wakes_the_leader() {
    let mut c = Cluster::quiet(3);
    elect(&mut c, 0);
    // Tick until the leader sends its quiet heartbeat, and lose node 2's.
    let mut quiet_sent = false;
    for _ in 0..10 {
        let mut out = Vec::new();
        c.groups[0].tick(&|_| Some(0), &mut out);
        quiet_sent |= out
            .iter()
            .any(|o| matches!(o, Output::Send { message: Message::Heartbeat(h), .. } if h.quiesce));
        out.retain(
            |o| !matches!(o, Output::Send { to: 2, message: Message::Heartbeat(h) } if h.quiesce),
        );
        c.route(0, out);
        c.flush_all();
        if quiet_sent {
            break;
        }
    }
    assert!(quiet_sent);
    let term = c.groups[0].term();
    // Node 2 times out and asks for votes; the leader wakes and keeps it.
    c.tick_all_hearing(60);
    assert_eq!(c.groups[0].role(), Role::Leader);
    assert_eq!(c.groups[0].term(), term, "no election was needed");
    assert_eq!(c.groups[2].leader(), Some(0));
    assert_eq!(c.tick_all_hearing(100), 0, "and all three are quiet again");
}

/// A leader of `{0, 1, 2}` (as replica 0) whose leader mark is written,
/// quiescing when idle.
fn quiet_leader(seed: u64) -> Group {
    let mut cfg = Config::new(0, Durability::Written, seed);
    cfg.quiesce = true;
    let mut g = Group::new(
        cfg,
        HardState::default(),
        LogState::default(),
        Membership::of_voters(&[0, 1, 2]),
        0,
    );
    let mut out = Vec::new();
    while g.role() == Role::Follower {
        g.tick(&|_| None, &mut out);
    }
    let granted = VoteResponse {
        term: 1,
        granted: true,
    };
    g.receive(1, Message::PreVoteResponse(granted), &mut out);
    g.hard_state_persisted(1, &mut out);
    g.receive(1, Message::VoteResponse(granted), &mut out);
    assert_eq!(g.role(), Role::Leader);
    let generation = out
        .iter()
        .find_map(|o| match o {
            Output::Append { generation, .. } => Some(*generation),
            _ => None,
        })
        .expect("the leader mark");
    g.log_written(g.log_end(), generation, &mut out);
    g
}

#[test]
fn the_mux_stops_ticking_quiet_groups_until_a_node_they_rely_on_goes_silent() {
    const GROUPS: u64 = 100;
    let mut mux = Mux::new();
    for id in 0..GROUPS {
        mux.insert(id, quiet_leader(id));
    }
    let all_heard = |_: NodeId| Some(0);
    // Both followers have the leader mark.
    let caught_up = crate::raft::AppendResponse {
        term: 1,
        rejected: None,
        end: 1,
        last_term: 1,
        term_start: 0,
        matched: 1,
        durable: 1,
    };
    let mut outbox = Outbox::default();
    for peer in [1, 2] {
        let batch = crate::raft::mux::PeerBatch {
            messages: (0..GROUPS)
                .map(|id| (id, Message::AppendResponse(caught_up)))
                .collect(),
            ..Default::default()
        };
        mux.receive(peer, batch, &all_heard, &mut outbox);
    }
    assert!((0..GROUPS).all(|id| mux.get(id).is_some_and(|g| g.commit() == 1)));
    for _ in 0..10 {
        mux.tick(&all_heard, &mut Outbox::default());
    }
    assert_eq!(mux.ticking(), 0, "every idle group is quiet");
    // A thousand ticks later nothing was sent, and nobody stepped down.
    let mut outbox = Outbox::default();
    for _ in 0..1000 {
        mux.tick(&all_heard, &mut outbox);
    }
    assert!(outbox.batches.is_empty() && outbox.local.is_empty());
    // A message for one group wakes it alone, caught up on its clock.
    let batch = crate::raft::mux::PeerBatch {
        heartbeat_responses: vec![(7, caught_up)],
        ..Default::default()
    };
    mux.receive(1, batch, &all_heard, &mut outbox);
    assert_eq!(mux.ticking(), 1);
    mux.tick(&all_heard, &mut outbox);
    assert_eq!(mux.get(7).map(Group::role), Some(Role::Leader));
    assert_eq!(mux.ticking(), 0, "and it goes quiet again");
    // Node 1 goes silent: every group wakes and heartbeats again.
    let one_silent = |node: NodeId| Some(if node == 1 { 100 } else { 0 });
    let mut outbox = Outbox::default();
    mux.tick(&one_silent, &mut outbox);
    assert_eq!(mux.ticking(), GROUPS as usize);
    for _ in 0..5 {
        mux.tick(&one_silent, &mut outbox);
    }
    let heartbeats = |node| outbox.batches.get(&node).map_or(0, |b| b.heartbeats.len());
    assert!(
        heartbeats(1) >= GROUPS as usize && heartbeats(2) >= GROUPS as usize,
        "each group heartbeats its followers again"
    );
    assert!((0..GROUPS).all(|id| mux.get(id).is_some_and(|g| g.role() == Role::Leader)));
}

/// Bytes of appends node `n` was given and has not written yet.
fn unwritten_bytes(c: &Cluster, n: usize) -> u64 {
    c.pending[n]
        .iter()
        .filter_map(|o| match o {
            Output::Append { entries, .. } => {
                Some(entries.iter().map(|e| u64::from(e.bytes)).sum::<u64>())
            }
            _ => None,
        })
        .sum()
}

#[test]
fn a_follower_whose_disk_stalls_is_sent_no_more_than_the_budget_then_catches_up() {
    let mut c = Cluster::new(3, Durability::Written);
    elect(&mut c, 0);
    let budget = Config::new(0, Durability::Written, 7).max_inflight_bytes;
    let batch = 100_000;
    let mut held_most = 0;
    // Node 2's disk takes nothing for 40 MB of appends; the quorum of the
    // other two goes on, ticking as time passes.
    for i in 0..400 {
        let mut out = Vec::new();
        let entry = c.groups[0].propose(1, batch, &mut out).expect("leader");
        c.route(0, out);
        c.flush(0);
        c.flush(1);
        if i % 10 == 0 {
            for n in 0..3 {
                let mut out = Vec::new();
                c.groups[n].tick(&|_| Some(0), &mut out);
                c.route(n, out);
            }
            c.flush(0);
            c.flush(1);
        }
        assert_eq!(c.groups[0].commit(), entry.end, "the quorum commits");
        held_most = held_most.max(unwritten_bytes(&c, 2));
    }
    assert!(
        held_most <= budget + u64::from(batch),
        "a stalled follower was given {held_most} bytes to hold, past the {budget} budget"
    );
    // Its disk comes back: it catches up.
    let end = c.groups[0].log_end();
    for _ in 0..200 {
        c.tick_all_hearing(1);
        if c.groups[2].durable_end() == end {
            break;
        }
    }
    assert_eq!(c.groups[2].durable_end(), end, "the follower caught up");
    assert_eq!(c.groups[2].commit(), end);
}
