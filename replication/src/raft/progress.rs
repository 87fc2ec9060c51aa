//! What a leader knows about one follower: how far its log matches, what is
//! in flight to it, and whether it is probed or fed a pipeline.

use crate::raft::types::Offset;
use std::collections::VecDeque;

/// How the leader sends to a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One request in flight, read from the log by byte budget: after a
    /// rejection, after an election, and while the follower catches up on
    /// entries older than the leader's recent window.
    Probe {
        /// A probe is outstanding.
        inflight: bool,
    },
    /// Requests pipelined up to the in-flight byte budget, each covering an
    /// exact range of recent entries.
    Replicate,
}

/// A follower's replication state, kept by the leader.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Next offset to send.
    pub next: Offset,
    /// The follower's log equals the leader's below this.
    pub matched: Offset,
    /// ... and is durable by the group's policy below this (counts toward
    /// the quorum).
    pub durable: Offset,
    /// Probe or pipeline.
    pub mode: Mode,
    /// Pipelined requests not yet acknowledged: `(end, bytes)`.
    pub inflight: VecDeque<(Offset, u64)>,
    /// Sum of `inflight` bytes.
    pub inflight_bytes: u64,
    /// Tick of the last acknowledgement that moved `matched`, or of the
    /// last send into an empty pipeline.
    pub progressed_at: u64,
    /// Tick of the follower's last answer (check-quorum).
    pub heard_at: u64,
}

impl Progress {
    /// A follower about which nothing is known yet.
    pub fn new(next: Offset, now: u64) -> Progress {
        Progress {
            next,
            matched: 0,
            durable: 0,
            mode: Mode::Probe { inflight: false },
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            progressed_at: now,
            heard_at: now,
        }
    }

    /// Back to probing from `next`, forgetting the pipeline.
    pub fn probe(&mut self, next: Offset) {
        self.next = next;
        self.mode = Mode::Probe { inflight: false };
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// Records an acknowledgement of everything below `matched` (durable
    /// below `durable`); returns whether `matched` moved.
    pub fn acknowledge(&mut self, matched: Offset, durable: Offset, now: u64) -> bool {
        debug_assert!(
            durable <= matched,
            "durable {durable} past matched {matched}"
        );
        self.durable = self.durable.max(durable);
        if matched <= self.matched {
            return false;
        }
        self.matched = matched;
        self.next = self.next.max(matched);
        self.progressed_at = now;
        while let Some(&(end, bytes)) = self.inflight.front() {
            if end > matched {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        true
    }

    /// Records a pipelined request covering up to `end`.
    pub fn sent(&mut self, end: Offset, bytes: u64, now: u64) {
        assert_eq!(self.mode, Mode::Replicate, "only a pipeline tracks sends");
        assert!(end > self.next, "a request must cover something");
        if self.inflight.is_empty() {
            self.progressed_at = now;
        }
        self.inflight.push_back((end, bytes));
        self.inflight_bytes += bytes;
        self.next = end;
    }
}
