//! One simulated run: N nodes of the real [`Group`] code, a network, disks,
//! clients and a fault schedule, all drawn from one seeded PRNG, stepped as
//! a discrete-event simulation.
//!
//! A run has three phases. Faults: crashes and restarts, pauses longer than
//! the election timeout, partitions (symmetric and one-way), slow disks,
//! lossy and duplicating links, leadership transfers — while clients
//! produce with `acks=1` and `acks=all` and read up to the high watermark.
//! Heal: every node up, the network whole; a leader must commit a new entry
//! within a bounded time (liveness). Converge: clients stop; every replica
//! must then hold every committed entry and every `acks=all` acknowledgement.

use crate::raft::{
    Bugs, Config, Durability, Entry, Event, Group, HardState, Membership, MembershipChange,
    Message, NodeId, Offset, Output, Role, Term,
};
use crate::sim::checker::{Checker, Violation};
use crate::sim::disk::{Completed, Disk, Stored, Time};
use crate::sim::network::Network;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// Adds a line to the trace; formats nothing when no trace is kept.
macro_rules! note {
    ($world:expr, $($arg:tt)*) => {
        if $world.trace.is_some() {
            let line = format!($($arg)*);
            $world.push_trace(line);
        }
    };
}

const ELECTION_TICKS: u32 = 10;
const HEARTBEAT_TICKS: u32 = 2;
const TICK: Time = 10;
const FAULT_PHASE: Time = 2500;
const LIVENESS_BOUND: Time = 2500;
const CONVERGE: Time = 800;
/// A client's batch is smaller than this.
const BATCH_BYTES_MAX: u32 = 20_000;

/// What a run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Events processed.
    pub events: u64,
    /// Terms that had a leader.
    pub elections: u64,
    /// `acks=1` acknowledgements.
    pub acks_one: u64,
    /// `acks=all` acknowledgements.
    pub acks_all: u64,
    /// The final high watermark.
    pub committed: Offset,
    /// Faults injected.
    pub faults: u64,
    /// Time from healing to the first `acks=all` acknowledgement.
    pub recovery: Time,
}

#[derive(Debug)]
enum Ev {
    Tick(usize, u64),
    /// Node-level liveness: something from `from` reached `to` (a peer
    /// connection's traffic of other groups, in a real cluster).
    Beat {
        from: usize,
        to: usize,
    },
    Deliver {
        from: usize,
        to: usize,
        message: Message,
        payloads: Vec<u64>,
    },
    LogDone(usize, u64),
    HardDone(usize, u64, HardState, u64),
    Restart(usize),
    Resume(usize),
    Client,
    Read,
    Fault,
    Heal,
    StopClients,
    Crash(usize, u64),
}

#[derive(Debug)]
struct Waiting {
    offset: Offset,
    end: Offset,
    payload: u64,
    all: bool,
    term: Term,
}

struct Node {
    group: Option<Group>,
    disk: Disk,
    incarnation: u64,
    paused_until: Option<Time>,
    missed_ticks: u32,
    tick_every: Time,
    waiting: Vec<Waiting>,
    commit: Offset,
    /// When a beat from each node last arrived (this incarnation).
    heard: BTreeMap<usize, Time>,
}

/// One run's world.
pub struct World {
    seed: u64,
    rng: StdRng,
    now: Time,
    seq: u64,
    queue: BTreeMap<(Time, u64), Ev>,
    nodes: Vec<Node>,
    membership: Membership,
    durability: Durability,
    net: Network,
    checker: Checker,
    bugs: Bugs,
    trace: Option<Vec<String>>,
    /// Print trace lines as they happen (a replay that may abort).
    pub print_trace: bool,
    payload_next: u64,
    outcome: Outcome,
    healed_at: Option<Time>,
    clients_on: bool,
    max_append_bytes: u64,
    fault_gap_max: Time,
    client_gap_max: Time,
    crash_weight: u32,
    buggify: bool,
    /// Groups go quiet when idle (`Config::quiesce`), liveness from beats.
    quiesce: bool,
}

impl World {
    /// A world for `seed`: cluster size, durability, link quality and clock
    /// drift are drawn from it.
    pub fn new(seed: u64, bugs: Bugs, trace: bool) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = if rng.gen_bool(0.5) { 3 } else { 5 };
        let durability = if rng.gen_bool(0.5) {
            Durability::Written
        } else {
            Durability::Synced
        };
        // Swarm testing: each seed draws its own fault mix, so some runs are
        // calm and some are storms, and rare interleavings get their turn.
        let net = Network::new(
            [0.0, 0.05, 0.3][rng.gen_range(0..3)] * rng.gen_range(0.0..1.0),
            rng.gen_range(0.0..0.05),
            rng.gen_range(2..12),
            rng.gen_range(0.0..0.05),
        );
        let fault_gap_max = [60, 300][rng.gen_range(0..2)];
        let client_gap_max = [30, 300][rng.gen_range(0..2)];
        let crash_weight = rng.gen_range(0..4);
        let buggify = rng.gen_bool(0.5);
        // One batch per message makes replication slow and fine-grained:
        // more interleavings of old-term entries and new leaders' marks.
        let max_append_bytes = [1, 16 << 10, 64 << 10][rng.gen_range(0..3)];
        let quiesce = rng.gen_bool(0.5);
        // Some five-node runs start with three voters, and replicas move in
        // and out of the group (membership changes) as a fault.
        let voters = if count == 5 && rng.gen_bool(0.5) {
            3
        } else {
            count
        };
        let ids: Vec<NodeId> = (0..voters).collect();
        let membership = Membership::of_voters(&ids);
        let nodes = (0..count)
            .map(|_| Node {
                group: None,
                disk: Disk::default(),
                incarnation: 0,
                paused_until: None,
                missed_ticks: 0,
                tick_every: rng.gen_range(TICK - TICK / 10..=TICK + TICK / 10),
                waiting: Vec::new(),
                commit: 0,
                heard: BTreeMap::new(),
            })
            .collect();
        let bound = 3 * Time::from(ELECTION_TICKS) * (TICK + TICK / 10);
        let mut world = World {
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            membership,
            durability,
            net,
            checker: Checker::new(bound),
            bugs,
            trace: trace.then(Vec::new),
            print_trace: false,
            payload_next: 1,
            outcome: Outcome::default(),
            healed_at: None,
            clients_on: true,
            max_append_bytes,
            fault_gap_max,
            client_gap_max,
            crash_weight,
            buggify,
            quiesce,
        };
        note!(
            world,
            "seed {seed}: {count} nodes, {durability:?}, net {:?}",
            world.net
        );
        note!(
            world,
            "faults every {} at most, crash weight {}, produce every {} at most, buggify {}, quiesce {}",
            world.fault_gap_max,
            world.crash_weight,
            world.client_gap_max,
            world.buggify,
            world.quiesce
        );
        for n in 0..world.nodes.len() {
            world.start(n);
        }
        world.schedule(5, Ev::Client);
        world.schedule(7, Ev::Read);
        world.schedule(100, Ev::Fault);
        world.schedule(FAULT_PHASE, Ev::Heal);
        world
    }

    /// The trace, if kept.
    pub fn trace(&mut self) -> Vec<String> {
        self.trace.take().unwrap_or_default()
    }

    /// Runs to the end or to the first violation.
    pub fn run(&mut self) -> Result<Outcome, Violation> {
        let end = FAULT_PHASE + LIVENESS_BOUND + CONVERGE;
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            if at > end {
                break;
            }
            self.now = at;
            self.outcome.events += 1;
            self.step(ev)?;
            if let Some(healed) = self.healed_at
                && self.outcome.recovery == 0
                && self.now > healed + LIVENESS_BOUND
            {
                return Err(format!(
                    "liveness: no acks=all acknowledgement within {LIVENESS_BOUND} of healing at {healed}"
                ));
            }
        }
        self.finish()
    }

    fn finish(&mut self) -> Result<Outcome, Violation> {
        // Replicas of the group as its final leader sees it must hold
        // everything; a replica moved out keeps what it had.
        let members = self
            .nodes
            .iter()
            .filter_map(|node| node.group.as_ref())
            .find(|g| g.role() == Role::Leader)
            .map(|g| g.membership().clone())
            .ok_or_else(|| "no leader at the end".to_string())?;
        for (n, node) in self.nodes.iter().enumerate() {
            if !members.contains(n as NodeId) {
                continue;
            }
            self.checker
                .final_log(n as NodeId, node.disk.view())
                .map_err(|v| {
                    let states: Vec<String> = self
                        .nodes
                        .iter()
                        .enumerate()
                        .filter_map(|(i, node)| {
                            let g = node.group.as_ref()?;
                            Some(format!(
                                "n{i}: {:?} term {} commit {} end {} durable {} followers {:?}",
                                g.role(),
                                g.term(),
                                g.commit(),
                                g.log_end(),
                                g.durable_end(),
                                g.followers()
                            ))
                        })
                        .collect();
                    format!("{v}; at the end: {}", states.join("; "))
                })?;
        }
        self.outcome.elections = self.checker.leaders().len() as u64;
        self.outcome.acks_one = self.checker.acks.0;
        self.outcome.acks_all = self.checker.acks.1;
        self.outcome.committed = self.checker.committed_end();
        Ok(self.outcome)
    }

    fn push_trace(&mut self, line: String) {
        let line = format!("t={:>5} {line}", self.now);
        if self.print_trace {
            println!("  {line}");
        } else if let Some(trace) = &mut self.trace {
            trace.push(line);
        }
    }

    fn schedule(&mut self, after: Time, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    fn config(&self, n: usize) -> Config {
        let mut cfg = Config::new(n as NodeId, self.durability, self.seed);
        cfg.election_ticks = ELECTION_TICKS;
        cfg.heartbeat_ticks = HEARTBEAT_TICKS;
        cfg.max_append_bytes = self.max_append_bytes;
        // Room for four of the largest batches, as a broker's budget holds
        // four appends: the budget spans a follower's write as well as the
        // round trip, and a pipeline a batch or two deep falls behind the
        // clients.
        cfg.max_inflight_bytes = 4 * self.max_append_bytes.max(u64::from(BATCH_BYTES_MAX));
        cfg.seed = self.seed
            ^ self.nodes[n]
                .incarnation
                .wrapping_mul(0x5851_F42D_4C95_7F2D);
        cfg.bugs = self.bugs;
        cfg.quiesce = self.quiesce;
        cfg
    }

    /// Starts (or restarts) node `n` from what its disk kept.
    fn start(&mut self, n: usize) {
        let cfg = self.config(n);
        let node = &mut self.nodes[n];
        let hard = node.disk.hard_state();
        let log = node.disk.log_state();
        let end = log.end;
        node.group = Some(Group::new(cfg, hard, log, self.membership.clone(), 0));
        node.commit = 0;
        node.heard.clear();
        node.paused_until = None;
        node.missed_ticks = 0;
        let (every, inc) = (node.tick_every, node.incarnation);
        note!(
            self,
            "n{n} starts: term {} vote {:?} log end {end}",
            hard.term,
            hard.vote
        );
        self.schedule(every, Ev::Tick(n, inc));
    }

    fn step(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Tick(n, inc) => {
                if self.nodes[n].incarnation != inc || self.nodes[n].group.is_none() {
                    return Ok(());
                }
                let every = self.nodes[n].tick_every;
                self.schedule(every, Ev::Tick(n, inc));
                if self.nodes[n].paused_until.is_some() {
                    self.nodes[n].missed_ticks += 1;
                    return Ok(());
                }
                if self.quiesce {
                    for to in (0..self.nodes.len()).filter(|&to| to != n) {
                        for at in
                            self.net
                                .arrivals(n as NodeId, to as NodeId, self.now, &mut self.rng)
                        {
                            self.queue_at(at, Ev::Beat { from: n, to });
                        }
                    }
                }
                self.tick(n)
            }
            Ev::Beat { from, to } => {
                if self.nodes[to].group.is_none() {
                    return Ok(());
                }
                if let Some(until) = self.nodes[to].paused_until {
                    let later = until - self.now + 1;
                    self.schedule(later, Ev::Beat { from, to });
                    return Ok(());
                }
                self.nodes[to].heard.insert(from, self.now);
                Ok(())
            }
            Ev::Deliver {
                from,
                to,
                message,
                payloads,
            } => {
                if self.nodes[to].group.is_none() {
                    return Ok(());
                }
                if let Some(until) = self.nodes[to].paused_until {
                    let later = until - self.now + 1;
                    self.schedule(
                        later,
                        Ev::Deliver {
                            from,
                            to,
                            message,
                            payloads,
                        },
                    );
                    return Ok(());
                }
                note!(self, "n{from} -> n{to} {}", describe(&message));
                let carried: Vec<(Offset, u64)> = match &message {
                    Message::Append(r) => r
                        .entries
                        .iter()
                        .map(|e| e.offset)
                        .zip(payloads.iter().copied())
                        .collect(),
                    _ => Vec::new(),
                };
                self.drive(to, &carried, |g, out| {
                    g.receive(from as NodeId, message, out)
                })
            }
            Ev::LogDone(n, inc) => {
                if self.nodes[n].incarnation != inc {
                    return Ok(());
                }
                if let Some(until) = self.nodes[n].paused_until {
                    // The disk finished; the process hears of it on waking.
                    let later = until - self.now + 1;
                    self.schedule(later, Ev::LogDone(n, inc));
                    return Ok(());
                }
                match self.nodes[n].disk.complete_log_op() {
                    Completed::Written(end, generation) => {
                        self.drive(n, &[], |g, out| g.log_written(end, generation, out))
                    }
                    Completed::Synced(end, generation) => {
                        self.drive(n, &[], |g, out| g.log_synced(end, generation, out))
                    }
                    Completed::Truncated => Ok(()),
                }
            }
            Ev::HardDone(n, inc, state, version) => {
                if self.nodes[n].incarnation != inc {
                    return Ok(());
                }
                if let Some(until) = self.nodes[n].paused_until {
                    let later = until - self.now + 1;
                    self.schedule(later, Ev::HardDone(n, inc, state, version));
                    return Ok(());
                }
                self.nodes[n].disk.complete_hard_state(state);
                self.drive(n, &[], |g, out| g.hard_state_persisted(version, out))
            }
            Ev::Restart(n) => {
                if self.nodes[n].group.is_none() {
                    self.start(n);
                }
                Ok(())
            }
            Ev::Resume(n) => self.resume(n),
            Ev::Client => self.client(),
            Ev::Read => self.read(),
            Ev::Fault => self.fault(),
            Ev::Crash(n, inc) => {
                if self.nodes[n].incarnation == inc {
                    self.crash(n);
                }
                Ok(())
            }
            Ev::Heal => self.heal(),
            Ev::StopClients => {
                self.clients_on = false;
                Ok(())
            }
        }
    }

    fn resume(&mut self, n: usize) -> Result<(), Violation> {
        if self.nodes[n].paused_until.take().is_none() || self.nodes[n].group.is_none() {
            return Ok(());
        }
        // The process's clock moved on while it was stopped: it catches up
        // on the ticks before it handles anything that queued meanwhile.
        let missed = std::mem::take(&mut self.nodes[n].missed_ticks);
        note!(self, "n{n} resumes, {missed} ticks behind");
        for _ in 0..missed {
            self.tick(n)?;
        }
        Ok(())
    }

    /// One tick of node `n`: ticks since each beat, in its own clock's ticks.
    fn tick(&mut self, n: usize) -> Result<(), Violation> {
        let node = &self.nodes[n];
        let (now, every) = (self.now, node.tick_every);
        let heard: BTreeMap<NodeId, u64> = node
            .heard
            .iter()
            .map(|(&from, &at)| (from as NodeId, (now - at) / every))
            .collect();
        self.drive(n, &[], |g, out| g.tick(&|id| heard.get(&id).copied(), out))
    }

    /// Runs `f` on node `n`'s group and carries out what it asks.
    fn drive(
        &mut self,
        n: usize,
        payloads: &[(Offset, u64)],
        f: impl FnOnce(&mut Group, &mut Vec<Output>),
    ) -> Result<(), Violation> {
        let mut out = Vec::new();
        let Some(group) = self.nodes[n].group.as_mut() else {
            return Ok(());
        };
        f(group, &mut out);
        self.carry_out(n, payloads, out)
    }

    fn carry_out(
        &mut self,
        n: usize,
        payloads: &[(Offset, u64)],
        out: Vec<Output>,
    ) -> Result<(), Violation> {
        let inc = self.nodes[n].incarnation;
        for output in out {
            match output {
                Output::Send { to, message } => self.send(n, to as usize, message, Vec::new()),
                Output::Replicate(read) => {
                    let group = self.nodes[n].group.as_ref();
                    assert!(
                        group.is_some_and(|g| g.is_leader_in(read.term)),
                        "replicate read by a non-leader"
                    );
                    let view = self.nodes[n].disk.view();
                    let skip = view.partition_point(|s| s.entry.offset < read.from);
                    let mut entries = Vec::new();
                    let mut carried = Vec::new();
                    let mut bytes = 0;
                    for s in view[skip..]
                        .iter()
                        .take_while(|s| s.entry.offset < read.end)
                    {
                        if !entries.is_empty() && bytes + u64::from(s.entry.bytes) > read.max_bytes
                        {
                            break;
                        }
                        bytes += u64::from(s.entry.bytes);
                        entries.push(s.entry.clone());
                        carried.push(s.payload);
                    }
                    assert!(
                        entries.first().is_none_or(|e| e.offset == read.from),
                        "n{n} asked to replicate from {}, which is not an entry start",
                        read.from
                    );
                    let request = read.request(entries);
                    self.send(n, read.to as usize, Message::Append(request), carried);
                }
                Output::Append {
                    entries,
                    generation,
                } => {
                    let mut stored = Vec::with_capacity(entries.len());
                    for entry in entries {
                        let payload = payloads
                            .iter()
                            .find(|&&(o, _)| o == entry.offset)
                            .map_or(0, |&(_, p)| p);
                        let view = self.nodes[n].disk.view();
                        let prev_term = stored
                            .last()
                            .or(view.last())
                            .map_or(0, |s: &Stored| s.entry.term);
                        self.checker
                            .appended(n as NodeId, &entry, payload, prev_term)?;
                        stored.push(Stored { entry, payload });
                    }
                    let done =
                        self.nodes[n]
                            .disk
                            .append(stored, generation, self.now, &mut self.rng);
                    self.queue_at(done, Ev::LogDone(n, inc));
                }
                Output::Truncate { end, generation } => {
                    self.checker
                        .truncating(n as NodeId, self.nodes[n].disk.view(), end)?;
                    note!(self, "n{n} truncates to {end}");
                    let done =
                        self.nodes[n]
                            .disk
                            .truncate(end, generation, self.now, &mut self.rng);
                    self.queue_at(done, Ev::LogDone(n, inc));
                }
                Output::Sync { generation, .. } => {
                    let done = self.nodes[n].disk.sync(generation, self.now, &mut self.rng);
                    self.queue_at(done, Ev::LogDone(n, inc));
                }
                Output::PersistHardState { state, version } => {
                    let done = self.nodes[n].disk.persist_hard_state(
                        state,
                        version,
                        self.now,
                        &mut self.rng,
                    );
                    self.queue_at(done, Ev::HardDone(n, inc, state, version));
                }
                Output::Event(event) => self.on_event(n, event)?,
                // Simulated logs keep every entry (no retention): no leader's
                // log starts past a follower's end, so a reset is a fault.
                Output::Reset { start, .. } => {
                    return Err(format!(
                        "n{n} told to reset its log to {start} though no log lost its start"
                    ));
                }
            }
        }
        Ok(())
    }

    fn queue_at(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn send(&mut self, from: usize, to: usize, message: Message, payloads: Vec<u64>) {
        let arrivals = self
            .net
            .arrivals(from as NodeId, to as NodeId, self.now, &mut self.rng);
        for at in arrivals {
            let ev = Ev::Deliver {
                from,
                to,
                message: message.clone(),
                payloads: payloads.clone(),
            };
            self.queue_at(at, ev);
        }
    }

    fn on_event(&mut self, n: usize, event: Event) -> Result<(), Violation> {
        match event {
            Event::BecameLeader { term } => {
                self.buggify(n, 30);
                let view = self.nodes[n].disk.view();
                let end = view.last().map_or(0, |s| s.entry.end);
                note!(self, "n{n} leads term {term}, log end {end}");
                self.checker.became_leader(
                    n as NodeId,
                    term,
                    self.now,
                    self.nodes[n].disk.view(),
                )?;
            }
            Event::SteppedDown { term } => {
                note!(self, "n{n} steps down from term {term}");
                self.nodes[n].waiting.clear();
            }
            Event::LeaderChanged { .. } => {}
            Event::Committed { commit } => {
                let before = self.nodes[n].commit;
                self.checker
                    .committed(n as NodeId, self.nodes[n].disk.view(), before, commit)?;
                self.nodes[n].commit = commit;
                self.acknowledge(n, commit, true)?;
                if self.nodes[n]
                    .group
                    .as_ref()
                    .is_some_and(|g| g.role() == Role::Leader)
                {
                    self.buggify(n, 3);
                }
            }
            Event::LeaderDurable { end } => self.acknowledge(n, end, false)?,
        }
        Ok(())
    }

    /// Crashes a node soon after a moment of interest (a new leader, a
    /// leader's commit), in the seeds that draw it: such moments are rare
    /// in time but are where the protocol's hardest cases start
    /// (FoundationDB calls this buggify).
    fn buggify(&mut self, n: usize, within: Time) {
        if self.buggify && self.healed_at.is_none() && self.rng.gen_bool(0.3) {
            let after = self.rng.gen_range(0..within);
            let inc = self.nodes[n].incarnation;
            self.schedule(after, Ev::Crash(n, inc));
        }
    }

    fn acknowledge(&mut self, n: usize, below: Offset, all: bool) -> Result<(), Violation> {
        let waiting = std::mem::take(&mut self.nodes[n].waiting);
        let (done, rest): (Vec<Waiting>, Vec<Waiting>) = waiting
            .into_iter()
            .partition(|w| w.all == all && w.end <= below);
        self.nodes[n].waiting = rest;
        for w in done {
            self.checker
                .acknowledged(n as NodeId, w.term, all, w.offset, w.payload, self.now)?;
            if all && self.healed_at.is_some() && self.outcome.recovery == 0 {
                self.outcome.recovery = self.now - self.healed_at.unwrap_or(self.now);
                note!(
                    self,
                    "first acks=all after healing: {}",
                    self.outcome.recovery
                );
            }
        }
        Ok(())
    }

    fn client(&mut self) -> Result<(), Violation> {
        if !self.clients_on {
            return Ok(());
        }
        let gap = self.rng.gen_range(3..self.client_gap_max);
        self.schedule(gap, Ev::Client);
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| {
                self.nodes[n].paused_until.is_none()
                    && self.nodes[n]
                        .group
                        .as_ref()
                        .is_some_and(|g| g.role() == Role::Leader)
            })
            .collect();
        if leaders.is_empty() {
            return Ok(());
        }
        let n = leaders[self.rng.gen_range(0..leaders.len())];
        let payload = self.payload_next;
        self.payload_next += 1;
        let all = self.healed_at.is_some() || self.rng.gen_bool(0.5);
        let bytes = self.rng.gen_range(100..BATCH_BYTES_MAX);
        let records = self.rng.gen_range(1..5);
        let mut out = Vec::new();
        let Some(group) = self.nodes[n].group.as_mut() else {
            return Ok(());
        };
        let term = group.term();
        let Ok(entry) = group.propose(records, bytes, &mut out) else {
            return Ok(());
        };
        let Entry { offset, end, .. } = entry;
        self.nodes[n].waiting.push(Waiting {
            offset,
            end,
            payload,
            all,
            term,
        });
        self.buggify(n, 8);
        self.carry_out(n, &[(offset, payload)], out)
    }

    fn read(&mut self) -> Result<(), Violation> {
        let gap = self.rng.gen_range(5..40);
        self.schedule(gap, Ev::Read);
        let n = self.rng.gen_range(0..self.nodes.len());
        let node = &self.nodes[n];
        let Some(group) = node.group.as_ref() else {
            return Ok(());
        };
        let limit = group.read_limit();
        if limit == 0 || node.paused_until.is_some() {
            return Ok(());
        }
        let view = node.disk.view();
        // The newest readable entry, and one older one.
        let newest = view.partition_point(|s| s.entry.end <= limit);
        let older = self.rng.gen_range(0..newest.max(1));
        for at in [newest.saturating_sub(1), older] {
            if let Some(s) = view.get(at).filter(|s| s.entry.end <= limit) {
                self.checker.read(n as NodeId, s)?;
            }
        }
        Ok(())
    }

    fn fault(&mut self) -> Result<(), Violation> {
        if self.healed_at.is_some() {
            return Ok(());
        }
        let gap = self.rng.gen_range(10..self.fault_gap_max);
        self.schedule(gap, Ev::Fault);
        self.outcome.faults += 1;
        let count = self.nodes.len();
        // Half the faults aim at a leader: that is where the protocol is
        // most exposed (a deposed leader, an uncommitted tail, a new term).
        let leader = (0..count).find(|&l| {
            self.nodes[l]
                .group
                .as_ref()
                .is_some_and(|g| g.role() == Role::Leader)
        });
        let n = match leader {
            Some(l) if self.rng.gen_bool(0.5) => l,
            _ => self.rng.gen_range(0..count),
        };
        let election = Time::from(ELECTION_TICKS) * TICK;
        let kind = self.rng.gen_range(0..7 + self.crash_weight);
        match kind {
            0 | 7.. => self.crash(n),
            1 => {
                if self.nodes[n].paused_until.is_some() || self.nodes[n].group.is_none() {
                    return Ok(());
                }
                let pause = self.rng.gen_range(election * 3 / 2..election * 4);
                note!(self, "n{n} pauses for {pause}");
                self.nodes[n].paused_until = Some(self.now + pause);
                self.schedule(pause, Ev::Resume(n));
            }
            2 => {
                self.net.heal();
                let one_way = self.rng.gen_bool(0.3);
                let mut side: Vec<usize> = (0..count).filter(|_| self.rng.gen_bool(0.4)).collect();
                if !side.contains(&n) {
                    side.push(n);
                }
                for &a in &side {
                    for b in (0..count).filter(|b| !side.contains(b)) {
                        self.net.cut(a as NodeId, b as NodeId);
                        if !one_way {
                            self.net.cut(b as NodeId, a as NodeId);
                        }
                    }
                }
                note!(
                    self,
                    "partition {side:?} from the rest (one way: {one_way})"
                );
            }
            3 => {
                note!(self, "partitions heal");
                self.net.heal();
            }
            4 => {
                let until = self.now + self.rng.gen_range(100..600);
                note!(self, "n{n}'s disk is slow until {until}");
                self.nodes[n].disk.slow_until = until;
            }
            5 => {
                if let Some(l) = leader {
                    note!(self, "n{l} hands leadership to n{n}");
                    self.drive(l, &[], |g, out| {
                        g.transfer_leadership(n as NodeId, out);
                    })?;
                }
            }
            _ => {
                if let Some(l) = leader {
                    self.change_membership(l)?;
                }
            }
        }
        Ok(())
    }

    /// One step of moving replicas: add a learner, promote it, or remove a
    /// voter while there are more than three.
    fn change_membership(&mut self, l: usize) -> Result<(), Violation> {
        let Some(group) = self.nodes[l].group.as_ref() else {
            return Ok(());
        };
        let m = group.membership().clone();
        let outside: Vec<NodeId> = (0..self.nodes.len() as NodeId)
            .filter(|&id| !m.contains(id))
            .collect();
        let mut options: Vec<MembershipChange> = outside
            .iter()
            .map(|&id| MembershipChange::AddLearner(id))
            .collect();
        options.extend(m.learners.iter().map(|&id| MembershipChange::Promote(id)));
        if m.voters.len() > 3 {
            options.extend(m.voters.iter().map(|&id| MembershipChange::Remove(id)));
        }
        if options.is_empty() {
            return Ok(());
        }
        let change = options[self.rng.gen_range(0..options.len())];
        note!(self, "n{l} proposes {change:?} to {m:?}");
        self.drive(l, &[], |g, out| {
            let _ = g.change_membership(change, out);
        })
    }

    fn crash(&mut self, n: usize) {
        if self.nodes[n].group.is_none() || self.healed_at.is_some() {
            return;
        }
        let power = self.durability == Durability::Synced;
        note!(self, "n{n} crashes (power loss: {power})");
        let node = &mut self.nodes[n];
        node.group = None;
        node.incarnation += 1;
        node.waiting.clear();
        node.disk.crash(power, &mut self.rng);
        // What the process had queued but the kernel had not sent dies too.
        let unsent: Vec<(Time, u64)> = self
            .queue
            .iter()
            .filter(|(_, ev)| {
                matches!(ev, Ev::Deliver { from, .. } | Ev::Beat { from, .. } if *from == n)
            })
            .map(|(&key, _)| key)
            .collect();
        for key in unsent {
            if self.rng.gen_bool(0.5) {
                self.queue.remove(&key);
            }
        }
        let after = if self.rng.gen_bool(0.5) {
            self.rng.gen_range(5..40)
        } else {
            self.rng.gen_range(40..600)
        };
        self.schedule(after, Ev::Restart(n));
    }

    fn heal(&mut self) -> Result<(), Violation> {
        note!(self, "heal: every node up, the network whole");
        self.healed_at = Some(self.now);
        self.net.heal();
        self.net.drop = 0.0;
        self.net.duplicate = 0.0;
        for n in 0..self.nodes.len() {
            self.nodes[n].disk.slow_until = 0;
            if self.nodes[n].group.is_none() {
                self.start(n);
            } else if self.nodes[n].paused_until.is_some() {
                self.resume(n)?;
            }
        }
        self.schedule(LIVENESS_BOUND, Ev::StopClients);
        Ok(())
    }
}

/// One line for a message in the trace.
fn describe(message: &Message) -> String {
    match message {
        Message::Append(r) => format!(
            "append t{} prev {}/t{} entries {} to {} commit {}",
            r.term,
            r.prev_end,
            r.prev_term,
            r.entries.len(),
            r.end(),
            r.commit
        ),
        Message::AppendResponse(r) | Message::HeartbeatResponse(r) => format!(
            "{} t{} rejected {:?} end {}/t{} (t from {}) matched {} durable {}",
            if matches!(message, Message::AppendResponse(_)) {
                "append-ok"
            } else {
                "beat-ok"
            },
            r.term,
            r.rejected,
            r.end,
            r.last_term,
            r.term_start,
            r.matched,
            r.durable
        ),
        other => format!("{other:?}"),
    }
}
