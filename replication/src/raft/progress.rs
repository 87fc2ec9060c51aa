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
    /// Requests whose entries the follower may hold only in memory, queued
    /// for its disk: `(end, bytes)`, released as it reports them durable.
    /// Their sum is the budget that bounds what a follower holds: released
    /// on a match instead, a follower whose disk stalls would take the
    /// leader's sends without end, as fast as it answers them.
    pub unwritten: VecDeque<(Offset, u64)>,
    /// Sum of `unwritten` bytes.
    pub unwritten_bytes: u64,
    /// Tick of the last acknowledgement that moved `matched` or `durable`,
    /// or of the last send with every earlier one answered.
    pub progressed_at: u64,
    /// Tick of the follower's last answer (check-quorum).
    pub heard_at: u64,
    /// Tick the last probe went out.
    pub probe_sent_at: u64,
    /// The last probe carried no entries: its answer shows no more than
    /// where it looked.
    pub probe_empty: bool,
    /// A rewind asks that the follower be checked: with the budget spent,
    /// by one probe that carries nothing.
    pub recheck: bool,
}

impl Progress {
    /// A follower about which nothing is known yet.
    pub fn new(next: Offset, now: u64) -> Progress {
        Progress {
            next,
            matched: 0,
            durable: 0,
            mode: Mode::Probe { inflight: false },
            unwritten: VecDeque::new(),
            unwritten_bytes: 0,
            progressed_at: now,
            heard_at: now,
            probe_sent_at: now,
            probe_empty: false,
            recheck: false,
        }
    }

    /// Back to probing from `next`, after a rejection, forgetting the
    /// budget: what the follower holds is not known, so neither is what it
    /// has left to write.
    pub fn probe(&mut self, next: Offset) {
        self.next = next;
        self.mode = Mode::Probe { inflight: false };
        self.unwritten.clear();
        self.unwritten_bytes = 0;
    }

    /// Back to probing from `matched`, keeping the budget, after a request
    /// went unanswered, the follower wrote nothing for a while, or it fell
    /// out of the leader's recent window. What was sent past `matched` may
    /// be lost and stops counting (should it arrive after all, the
    /// follower holds that much past the budget); what matched still
    /// counts until it is durable.
    pub fn rewind(&mut self) {
        while let Some(&(end, bytes)) = self.unwritten.back() {
            if end <= self.matched {
                break;
            }
            self.unwritten.pop_back();
            self.unwritten_bytes -= bytes;
        }
        self.next = self.matched;
        self.mode = Mode::Probe { inflight: false };
        self.recheck = true;
    }

    /// Records an acknowledgement of everything below `matched` (durable
    /// below `durable`); returns whether `matched` moved.
    pub fn acknowledge(&mut self, matched: Offset, durable: Offset, now: u64) -> bool {
        debug_assert!(
            durable <= matched,
            "durable {durable} past matched {matched}"
        );
        if durable > self.durable {
            self.durable = durable;
            self.progressed_at = now;
            while let Some(&(end, bytes)) = self.unwritten.front() {
                if end > durable {
                    break;
                }
                self.unwritten.pop_front();
                self.unwritten_bytes -= bytes;
            }
        }
        if matched <= self.matched {
            return false;
        }
        self.matched = matched;
        self.next = self.next.max(matched);
        self.progressed_at = now;
        true
    }

    /// Records that the follower took up to `end` new entries of at most
    /// `bytes` (an accepted probe's), held until durable.
    pub fn took(&mut self, end: Offset, bytes: u64) {
        if end > self.durable {
            self.unwritten.push_back((end, bytes));
            self.unwritten_bytes += bytes;
        }
    }

    /// Records a pipelined request covering up to `end`.
    pub fn sent(&mut self, end: Offset, bytes: u64, now: u64) {
        assert_eq!(self.mode, Mode::Replicate, "only a pipeline tracks sends");
        assert!(end > self.next, "a request must cover something");
        if self.next == self.matched {
            self.progressed_at = now;
        }
        self.unwritten.push_back((end, bytes));
        self.unwritten_bytes += bytes;
        self.next = end;
    }
}
