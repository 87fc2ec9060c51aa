//! A simulated disk: one log file and one hard-state file per node.
//!
//! The log's operations complete in the order they were issued, each after
//! a random latency (longer while the disk is "slow"); the hard-state file
//! completes on its own schedule, so the two finish out of order. Three
//! images of the log are kept: what the process sees, what survives a killed
//! process (completed writes), and what survives power loss (synced). A
//! crash keeps the surviving image plus a random prefix of the writes in
//! flight, the last of them possibly torn (recovery drops a torn batch).

use crate::raft::{Entry, HardState, LogState, Offset};
use rand::Rng;
use rand::rngs::StdRng;
use std::collections::VecDeque;

/// Simulated time.
pub type Time = u64;

/// An entry on the simulated disk: the metadata and the payload's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The entry.
    pub entry: Entry,
    /// Identity of its bytes (0 for control batches).
    pub payload: u64,
}

#[derive(Debug, Clone)]
enum LogOp {
    Append(Vec<Stored>),
    Truncate(Offset),
    Sync,
}

#[derive(Debug)]
struct InFlight {
    op: LogOp,
    generation: u64,
    end: Offset,
}

/// What a completed log operation means to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// Written below `end`.
    Written(Offset, u64),
    /// Synced below `end`.
    Synced(Offset, u64),
    /// A truncation (nothing to report).
    Truncated,
}

/// One node's disk.
#[derive(Debug, Default)]
pub struct Disk {
    view: Vec<Stored>,
    written: Vec<Stored>,
    synced: Vec<Stored>,
    unsynced: Vec<LogOp>,
    inflight: VecDeque<InFlight>,
    last_done_at: Time,
    hard: HardState,
    hard_inflight: Option<(HardState, u64)>,
    /// Until when operations take long.
    pub slow_until: Time,
}

fn apply(image: &mut Vec<Stored>, op: &LogOp) {
    match op {
        LogOp::Append(entries) => {
            let Some(first) = entries.first() else { return };
            image.retain(|s| s.entry.offset < first.entry.offset);
            debug_assert!(
                image
                    .last()
                    .is_none_or(|s| s.entry.end == first.entry.offset),
                "an append continues the image"
            );
            image.extend(entries.iter().cloned());
        }
        LogOp::Truncate(end) => image.retain(|s| s.entry.offset < *end),
        LogOp::Sync => {}
    }
}

impl Disk {
    /// The log as the process sees it.
    pub fn view(&self) -> &[Stored] {
        &self.view
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard
    }

    fn latency(&self, now: Time, rng: &mut StdRng) -> Time {
        if now < self.slow_until {
            rng.gen_range(30..150)
        } else {
            rng.gen_range(1..7)
        }
    }

    fn issue(&mut self, op: LogOp, generation: u64, now: Time, rng: &mut StdRng) -> Time {
        apply(&mut self.view, &op);
        let end = self.view.last().map_or(0, |s| s.entry.end);
        let done_at = self.last_done_at.max(now + self.latency(now, rng));
        self.last_done_at = done_at;
        self.inflight.push_back(InFlight {
            op,
            generation,
            end,
        });
        done_at
    }

    /// Appends; returns when the write completes.
    pub fn append(
        &mut self,
        entries: Vec<Stored>,
        generation: u64,
        now: Time,
        rng: &mut StdRng,
    ) -> Time {
        self.issue(LogOp::Append(entries), generation, now, rng)
    }

    /// Truncates; returns when it completes.
    pub fn truncate(&mut self, end: Offset, generation: u64, now: Time, rng: &mut StdRng) -> Time {
        self.issue(LogOp::Truncate(end), generation, now, rng)
    }

    /// Syncs; returns when it completes.
    pub fn sync(&mut self, generation: u64, now: Time, rng: &mut StdRng) -> Time {
        self.issue(LogOp::Sync, generation, now, rng)
    }

    /// Completes the oldest log operation.
    pub fn complete_log_op(&mut self) -> Completed {
        let Some(done) = self.inflight.pop_front() else {
            unreachable!("a completion is scheduled per operation")
        };
        apply(&mut self.written, &done.op);
        match done.op {
            LogOp::Sync => {
                self.synced = self.written.clone();
                self.unsynced.clear();
                Completed::Synced(done.end, done.generation)
            }
            LogOp::Append(_) => {
                self.unsynced.push(done.op);
                Completed::Written(done.end, done.generation)
            }
            LogOp::Truncate(_) => {
                self.unsynced.push(done.op);
                Completed::Truncated
            }
        }
    }

    /// Starts writing the hard state; returns when it completes. A write
    /// plus fdatasync of its own: slower than a log write.
    pub fn persist_hard_state(
        &mut self,
        state: HardState,
        version: u64,
        now: Time,
        rng: &mut StdRng,
    ) -> Time {
        self.hard_inflight = Some((state, version));
        now + 4 * self.latency(now, rng) + rng.gen_range(5..30)
    }

    /// The hard-state write of `version` completed (a newer one may be in
    /// flight: the file then keeps the newer contents when that completes).
    pub fn complete_hard_state(&mut self, state: HardState) {
        if self.hard_inflight.is_some_and(|(s, _)| s == state) {
            self.hard_inflight = None;
        }
        if (state.term, state.vote.is_some()) >= (self.hard.term, self.hard.vote.is_some()) {
            self.hard = state;
        }
    }

    /// A crash: `power` loses what was not synced, otherwise what was not
    /// written; writes in flight may have reached the disk, in order, the
    /// last one possibly torn.
    pub fn crash(&mut self, power: bool, rng: &mut StdRng) {
        let mut image = if power {
            self.synced.clone()
        } else {
            self.written.clone()
        };
        let mut maybe: Vec<LogOp> = if power {
            std::mem::take(&mut self.unsynced)
        } else {
            Vec::new()
        };
        maybe.extend(self.inflight.drain(..).map(|f| f.op));
        let landed = rng.gen_range(0..=maybe.len());
        for (i, op) in maybe.into_iter().take(landed).enumerate() {
            match op {
                LogOp::Append(mut entries) if i + 1 == landed => {
                    // The last write may be torn: recovery keeps whole batches.
                    entries.truncate(rng.gen_range(0..=entries.len()));
                    apply(&mut image, &LogOp::Append(entries));
                }
                op => apply(&mut image, &op),
            }
        }
        if let Some((state, _)) = self.hard_inflight.take()
            && rng.gen_bool(0.5)
        {
            self.complete_hard_state(state);
        }
        self.view = image.clone();
        self.written = image.clone();
        self.synced = image;
        self.unsynced.clear();
        self.last_done_at = 0;
    }

    /// The log's shape as a restarting node's recovery finds it.
    pub fn log_state(&self) -> LogState {
        let mut state = LogState::default();
        for s in &self.view {
            if state.epochs.last().is_none_or(|&(t, _)| t < s.entry.term) {
                state.epochs.push((s.entry.term, s.entry.offset));
            }
            if let crate::raft::EntryKind::Config(m) = &s.entry.kind {
                state.configs.push((s.entry.offset, m.clone()));
            }
            state.end = s.entry.end;
        }
        state
    }
}
