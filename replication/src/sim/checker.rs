//! The checker: what must hold after every step of a simulated run, seen
//! from outside the nodes (it knows every log and every acknowledgement).
//!
//! - Election safety: at most one leader per term.
//! - Log matching: an entry at the same offset with the same term has the
//!   same payload, the same end and the same predecessor term on every node.
//! - Committed entries never change; no replica ever truncates one; every
//!   new leader holds all of them (leader completeness); every `acks=all`
//!   acknowledgement is of a committed entry, so it survives.
//! - A replica's high watermark never moves back (within an incarnation),
//!   and a read never returns an entry that is not committed.
//! - A deposed leader stops acknowledging within a bounded time.

use crate::raft::{Entry, NodeId, Offset, Term};
use crate::sim::disk::{Stored, Time};
use std::collections::BTreeMap;

/// A violated invariant, in words.
pub type Violation = String;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    payload: u64,
    end: Offset,
    prev_term: Term,
}

/// What the checker has seen.
#[derive(Debug, Default)]
pub struct Checker {
    leaders: BTreeMap<Term, (NodeId, Time)>,
    entries: BTreeMap<(Offset, Term), Known>,
    committed: BTreeMap<Offset, (Term, u64, Offset)>,
    committed_end: Offset,
    acked_all: BTreeMap<u64, Offset>,
    /// How long a deposed leader may go on acknowledging.
    pub deposed_ack_bound: Time,
    /// Acknowledgements seen: `(acks=1, acks=all)`.
    pub acks: (u64, u64),
}

impl Checker {
    /// A checker allowing a deposed leader `deposed_ack_bound` to notice.
    pub fn new(deposed_ack_bound: Time) -> Checker {
        Checker {
            deposed_ack_bound,
            ..Checker::default()
        }
    }

    /// Highest commit position any replica reported.
    pub fn committed_end(&self) -> Offset {
        self.committed_end
    }

    /// Every terms' leader.
    pub fn leaders(&self) -> &BTreeMap<Term, (NodeId, Time)> {
        &self.leaders
    }

    /// `node` became leader of `term` with this log.
    pub fn became_leader(
        &mut self,
        node: NodeId,
        term: Term,
        now: Time,
        log: &[Stored],
    ) -> Result<(), Violation> {
        if let Some(&(other, _)) = self.leaders.get(&term)
            && other != node
        {
            return Err(format!("two leaders in term {term}: n{other} and n{node}"));
        }
        self.leaders.insert(term, (node, now));
        for (&offset, &(t, payload, end)) in &self.committed {
            let held = find(log, offset);
            if held.is_none_or(|s| s.entry.term != t || s.payload != payload || s.entry.end != end)
            {
                return Err(format!(
                    "n{node} leads term {term} without committed entry {offset}..{end} (term {t}, payload {payload}); it has {held:?}"
                ));
            }
        }
        Ok(())
    }

    /// `node` appended `entry` (payload `payload`) after an entry of `prev_term`.
    pub fn appended(
        &mut self,
        node: NodeId,
        entry: &Entry,
        payload: u64,
        prev_term: Term,
    ) -> Result<(), Violation> {
        let known = Known {
            payload,
            end: entry.end,
            prev_term,
        };
        match self.entries.get(&(entry.offset, entry.term)) {
            Some(k) if *k != known => Err(format!(
                "log matching: n{node} has {}..{} term {} as {known:?}, another replica as {k:?}",
                entry.offset, entry.end, entry.term
            )),
            Some(_) => Ok(()),
            None => {
                self.entries.insert((entry.offset, entry.term), known);
                Ok(())
            }
        }
    }

    /// `node` truncates its log (`log`, before the cut) to `end`.
    pub fn truncating(&self, node: NodeId, log: &[Stored], end: Offset) -> Result<(), Violation> {
        for s in log.iter().filter(|s| s.entry.offset >= end) {
            if self.committed.get(&s.entry.offset) == Some(&(s.entry.term, s.payload, s.entry.end))
            {
                return Err(format!(
                    "n{node} truncates to {end}, removing committed entry {:?}",
                    s.entry
                ));
            }
        }
        Ok(())
    }

    /// `node` reports its high watermark moved from `before` to `commit`,
    /// over this log.
    pub fn committed(
        &mut self,
        node: NodeId,
        log: &[Stored],
        before: Offset,
        commit: Offset,
    ) -> Result<(), Violation> {
        if commit < before {
            return Err(format!(
                "n{node}'s high watermark moved back from {before} to {commit}"
            ));
        }
        let mut at = before;
        for s in log.iter().skip_while(|s| s.entry.end <= before) {
            if s.entry.offset >= commit {
                break;
            }
            if s.entry.offset != at || s.entry.end > commit {
                return Err(format!(
                    "n{node} commit {commit} is not at an entry boundary ({:?})",
                    s.entry
                ));
            }
            at = s.entry.end;
            let mine = (s.entry.term, s.payload, s.entry.end);
            match self.committed.get(&s.entry.offset) {
                Some(c) if *c != mine => {
                    return Err(format!(
                        "n{node} committed {:?} payload {} where {c:?} was committed",
                        s.entry, s.payload
                    ));
                }
                Some(_) => {}
                None => {
                    self.committed.insert(s.entry.offset, mine);
                }
            }
        }
        if at != commit {
            return Err(format!(
                "n{node} commits to {commit} but its log ends at {at}"
            ));
        }
        self.committed_end = self.committed_end.max(commit);
        Ok(())
    }

    /// A read at `node` returned this entry.
    pub fn read(&self, node: NodeId, s: &Stored) -> Result<(), Violation> {
        match self.committed.get(&s.entry.offset) {
            Some(&(t, p, e)) if (t, p, e) == (s.entry.term, s.payload, s.entry.end) => Ok(()),
            other => Err(format!(
                "n{node} served {:?} payload {}, which is not committed (committed there: {other:?})",
                s.entry, s.payload
            )),
        }
    }

    /// `node`, leading `term`, acknowledged `payload` at `offset`.
    pub fn acknowledged(
        &mut self,
        node: NodeId,
        term: Term,
        all: bool,
        offset: Offset,
        payload: u64,
        now: Time,
    ) -> Result<(), Violation> {
        if let Some((&later, &(leader, at))) = self.leaders.range(term + 1..).next()
            && now > at + self.deposed_ack_bound
        {
            return Err(format!(
                "n{node} deposed from term {term} still acknowledges at {now}: n{leader} leads term {later} since {at}"
            ));
        }
        if all {
            self.acks.1 += 1;
            match self.committed.get(&offset) {
                Some(&(_, p, _)) if p == payload => {}
                other => {
                    return Err(format!(
                        "n{node} acknowledged acks=all payload {payload} at {offset}, not committed ({other:?})"
                    ));
                }
            }
            self.acked_all.insert(payload, offset);
        } else {
            self.acks.0 += 1;
        }
        Ok(())
    }

    /// At the end: every `acks=all` acknowledgement is in `log` (a replica
    /// that caught up) where it was acknowledged, and `log` holds every
    /// committed entry.
    pub fn final_log(&self, node: NodeId, log: &[Stored]) -> Result<(), Violation> {
        for (&payload, &offset) in &self.acked_all {
            if find(log, offset).is_none_or(|s| s.payload != payload) {
                return Err(format!(
                    "acks=all payload {payload} at {offset} is missing on n{node}"
                ));
            }
        }
        for (&offset, &(t, p, e)) in &self.committed {
            if find(log, offset).is_none_or(|s| (s.entry.term, s.payload, s.entry.end) != (t, p, e))
            {
                return Err(format!("committed entry at {offset} differs on n{node}"));
            }
        }
        Ok(())
    }
}

/// The stored entry starting at `offset`.
pub fn find(log: &[Stored], offset: Offset) -> Option<&Stored> {
    let at = log.partition_point(|s| s.entry.offset < offset);
    log.get(at).filter(|s| s.entry.offset == offset)
}
