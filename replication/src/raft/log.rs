//! The core's view of the log: positions and terms, never payloads.
//!
//! Instead of a record per entry it keeps Kafka's leader-epoch cache — the
//! first offset of every term present — which answers "which term wrote the
//! entry ending here" for any position in the log in a few bytes per term.
//! Membership entries are kept too (few, and needed to know the membership
//! in effect after a truncation).

use crate::raft::types::{Entry, EntryKind, Membership, Offset, Term};

/// What the caller found in the log at start (or a new, empty log).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogState {
    /// First offset present (retention removes older segments).
    pub start: Offset,
    /// Term of the entry ending at `start` (0 when `start` is 0).
    pub start_term: Term,
    /// Log end offset.
    pub end: Offset,
    /// `(term, first offset)` of every term in `[start, end)`, ascending.
    pub epochs: Vec<(Term, Offset)>,
    /// `(offset, membership)` of every membership entry in the log, ascending.
    pub configs: Vec<(Offset, Membership)>,
}

/// The log's positions and terms.
#[derive(Debug, Clone)]
pub struct LogView {
    state: LogState,
}

impl LogView {
    /// The view of a log with this state.
    pub fn new(state: LogState) -> LogView {
        assert!(
            state.start <= state.end,
            "log start {} past end {}",
            state.start,
            state.end
        );
        assert!(
            state
                .epochs
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "epochs must ascend: {:?}",
            state.epochs
        );
        assert!(
            state
                .epochs
                .iter()
                .all(|&(_, o)| o >= state.start && o < state.end),
            "epochs outside the log: {:?}",
            state.epochs
        );
        LogView { state }
    }

    /// First offset present.
    pub fn start(&self) -> Offset {
        self.state.start
    }

    /// Log end offset.
    pub fn end(&self) -> Offset {
        self.state.end
    }

    /// Term of the last entry (the start term when empty).
    pub fn last_term(&self) -> Term {
        self.state
            .epochs
            .last()
            .map_or(self.state.start_term, |&(t, _)| t)
    }

    /// Term of the entry ending at `end`, i.e. holding offset `end - 1`;
    /// `None` when that is outside the log.
    pub fn term_at_end(&self, end: Offset) -> Option<Term> {
        if end == self.state.start {
            return Some(self.state.start_term);
        }
        if end < self.state.start || end > self.state.end {
            return None;
        }
        let at = self.state.epochs.partition_point(|&(_, o)| o < end);
        debug_assert!(at > 0, "a non-empty log has an epoch at its start");
        Some(self.state.epochs[at - 1].0)
    }

    /// The first offset and the end of `term`'s entries, if any are present.
    pub fn epoch_range(&self, term: Term) -> Option<(Offset, Offset)> {
        let at = self
            .state
            .epochs
            .binary_search_by_key(&term, |&(t, _)| t)
            .ok()?;
        let end = self
            .state
            .epochs
            .get(at + 1)
            .map_or(self.state.end, |&(_, o)| o);
        Some((self.state.epochs[at].1, end))
    }

    /// The end of the largest term `<= term` present (Kafka's
    /// OffsetsForLeaderEpoch): where a follower whose log holds `term` must
    /// cut at the latest. The start when no such term is present.
    pub fn end_of_epoch_at_most(&self, term: Term) -> (Term, Offset) {
        let at = self.state.epochs.partition_point(|&(t, _)| t <= term);
        if at == 0 {
            return (self.state.start_term, self.state.start);
        }
        let end = self
            .state
            .epochs
            .get(at)
            .map_or(self.state.end, |&(_, o)| o);
        (self.state.epochs[at - 1].0, end)
    }

    /// The first offset of the term holding `offset` (the log start below
    /// the first term): a position that is an entry boundary for certain.
    pub fn epoch_start_at_or_below(&self, offset: Offset) -> Offset {
        let at = self.state.epochs.partition_point(|&(_, o)| o <= offset);
        if at == 0 {
            self.state.start
        } else {
            self.state.epochs[at - 1].1
        }
    }

    /// Records an appended entry.
    pub fn append(&mut self, entry: &Entry) {
        assert_eq!(
            entry.offset, self.state.end,
            "append must continue the log: {entry:?}"
        );
        assert!(entry.is_well_formed(), "malformed entry {entry:?}");
        let last = self.last_term();
        assert!(
            entry.term >= last,
            "term went back: {entry:?} after term {last}"
        );
        if entry.term > last || self.state.epochs.is_empty() {
            self.state.epochs.push((entry.term, entry.offset));
        }
        if let EntryKind::Config(m) = &entry.kind {
            self.state.configs.push((entry.offset, m.clone()));
        }
        self.state.end = entry.end;
    }

    /// Forgets every entry at or after `end`.
    pub fn truncate(&mut self, end: Offset) {
        assert!(
            end >= self.state.start && end <= self.state.end,
            "truncate to {end} outside the log"
        );
        self.state.epochs.retain(|&(_, o)| o < end);
        self.state.configs.retain(|&(o, _)| o < end);
        self.state.end = end;
    }

    /// The latest membership entry in the log, if any.
    pub fn last_config(&self) -> Option<&(Offset, Membership)> {
        self.state.configs.last()
    }

    /// Forgets membership entries older than the newest one at or below
    /// `commit`: they can never be in effect again. Returns the newest one
    /// forgotten, in effect before every entry kept.
    pub fn compact_configs(&mut self, commit: Offset) -> Option<Membership> {
        let keep_from = self.state.configs.iter().rposition(|&(o, _)| o < commit)?;
        self.state
            .configs
            .drain(..keep_from)
            .next_back()
            .map(|(_, m)| m)
    }

    /// The newest membership entry below `offset`.
    pub fn config_before(&self, offset: Offset) -> Option<&Membership> {
        self.state
            .configs
            .iter()
            .rev()
            .find(|&&(o, _)| o < offset)
            .map(|(_, m)| m)
    }

    /// The log's first entries are gone (retention): it starts at `start`
    /// now, which must be an entry boundary inside it.
    pub fn advance_start(&mut self, start: Offset) {
        assert!(
            start >= self.state.start && start <= self.state.end,
            "log start {start} outside the log"
        );
        let Some(term) = self.term_at_end(start) else {
            unreachable!("checked inside the log")
        };
        self.state.start_term = term;
        self.state.start = start;
        // A term that began below the start now begins at it.
        let at = self.state.epochs.partition_point(|&(_, o)| o <= start);
        if at > 0 {
            self.state.epochs.drain(..at - 1);
            self.state.epochs[0].1 = start;
        }
        if self.state.end == start {
            self.state.epochs.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: Offset, end: Offset, term: Term) -> Entry {
        Entry {
            offset,
            end,
            term,
            bytes: 100,
            kind: EntryKind::Data,
        }
    }

    #[test]
    fn terms_at_positions() {
        let mut log = LogView::new(LogState::default());
        assert_eq!(log.term_at_end(0), Some(0));
        assert_eq!(log.term_at_end(1), None);
        log.append(&entry(0, 5, 1));
        log.append(&entry(5, 7, 1));
        log.append(&entry(7, 10, 3));
        assert_eq!(log.term_at_end(5), Some(1));
        assert_eq!(log.term_at_end(7), Some(1));
        assert_eq!(log.term_at_end(8), Some(3));
        assert_eq!(log.term_at_end(10), Some(3));
        assert_eq!(log.epoch_range(1), Some((0, 7)));
        assert_eq!(log.epoch_range(2), None);
        assert_eq!(log.end_of_epoch_at_most(2), (1, 7));
        assert_eq!(log.end_of_epoch_at_most(9), (3, 10));
        assert_eq!(log.end_of_epoch_at_most(0), (0, 0));
        log.truncate(7);
        assert_eq!(log.last_term(), 1);
        assert_eq!(log.end(), 7);
    }
}
