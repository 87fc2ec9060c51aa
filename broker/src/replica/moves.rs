//! Moving a partition's replicas: the leader takes its group from the
//! membership it has to the target the metadata names, one single-server
//! change at a time (Raft thesis §4.1), each committed before the next:
//! add a new replica as a learner, promote it once it has caught up, then
//! remove a replica that is not in the target — handing leadership to a
//! target voter first when that replica is the leader itself. When the
//! committed membership is the target, the leader reports it, and the
//! controller ends the move (the removed replicas' nodes then delete their
//! copies, as for any replica the metadata no longer gives them).

use super::{Replication, Source};
use fjord_replication::metadata::PartitionMoved;
use fjord_replication::raft::mux::GroupId;
use fjord_replication::raft::{Group, MembershipChange, NodeId};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Ticks between steps of the moves this shard leads.
pub const STEP_TICKS: u64 = 4;
/// Pause before a move that is done is reported again (the controller may
/// have been away).
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// What a leader does next for a move.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Change(MembershipChange),
    Transfer(NodeId),
    Report(PartitionMoved),
}

impl Replication {
    /// One step of every move whose group this shard leads.
    pub(super) fn step_moves(self: &Rc<Self>) {
        let me = self.settings.node;
        let steps: Vec<(GroupId, Step)> = {
            let mux = self.mux.borrow();
            self.partitions
                .borrow()
                .iter()
                .filter_map(|(&id, p)| {
                    let replica = p.replica()?;
                    let layout = replica.layout.borrow();
                    if layout.target.is_empty() {
                        return None;
                    }
                    let g = mux.get(id)?;
                    if g.leader() != Some(me) {
                        return None;
                    }
                    let target: Vec<NodeId> = layout.target.iter().map(|r| r.node).collect();
                    next_step(g, me, &target, || layout.moved()).map(|step| (id, step))
                })
                .collect()
        };
        for (id, step) in steps {
            match step {
                Step::Change(change) => {
                    let made =
                        self.round(id, Source::None, |g, out| g.change_membership(change, out));
                    if let Some(Ok(entry)) = made {
                        tracing::info!(
                            shard = self.settings.shard,
                            group = id,
                            ?change,
                            offset = entry.offset,
                            "partition move: membership change"
                        );
                    }
                }
                Step::Transfer(to) => {
                    tracing::info!(
                        shard = self.settings.shard,
                        group = id,
                        to,
                        "partition move: the leader leaves, handing over first"
                    );
                    self.round(id, Source::None, |g, out| g.transfer_leadership(to, out));
                }
                Step::Report(moved) => {
                    let mut reported = self.reported_moves.borrow_mut();
                    let due = reported
                        .get(&id)
                        .is_none_or(|at: &Instant| at.elapsed() >= REPORT_EVERY);
                    if due {
                        reported.insert(id, Instant::now());
                        let _ = self.moved.try_send(moved);
                    }
                }
            }
        }
        // Moves that ended (or left this shard) are forgotten.
        let partitions = self.partitions.borrow();
        self.reported_moves.borrow_mut().retain(|id, _| {
            partitions
                .get(id)
                .and_then(|p| p.replica())
                .is_some_and(|r| !r.layout.borrow().target.is_empty())
        });
    }
}

/// The next step of a leader's move, computed from its group alone;
/// `moved` names the move for its report once the group is there.
fn next_step(
    g: &Group,
    me: NodeId,
    target: &[NodeId],
    moved: impl FnOnce() -> PartitionMoved,
) -> Option<Step> {
    let m = g.membership();
    let commit = g.commit();
    // One change at a time, each committed before the next.
    if g.pending_membership() {
        return None;
    }
    if let Some(&add) = target.iter().find(|&&n| !m.contains(n)) {
        return Some(Step::Change(MembershipChange::AddLearner(add)));
    }
    let matched = |node: NodeId| {
        g.followers()
            .iter()
            .find(|f| f.0 == node)
            .map(|f| f.1)
            .unwrap_or(0)
    };
    if let Some(&learner) = m.learners.iter().find(|l| target.contains(l)) {
        // Caught up: it has everything committed so far.
        return (matched(learner) >= commit)
            .then_some(Step::Change(MembershipChange::Promote(learner)));
    }
    if let Some(&extra) = m.learners.iter().find(|l| !target.contains(l)) {
        return Some(Step::Change(MembershipChange::Remove(extra)));
    }
    if let Some(&leaving) = m.voters.iter().find(|v| !target.contains(v)) {
        if leaving != me {
            return Some(Step::Change(MembershipChange::Remove(leaving)));
        }
        // The most caught-up target voter takes over; it removes this one.
        let best = target
            .iter()
            .copied()
            .filter(|&n| n != me && m.is_voter(n))
            .max_by_key(|&n| matched(n))?;
        return Some(Step::Transfer(best));
    }
    Some(Step::Report(moved()))
}
