//! Classic-protocol requests on the coordinator: the calls, and the joins
//! and syncs parked until the rebalance completes or the leader syncs. A
//! ticker task per coordinator moves classic groups on in time (rebalance
//! deadlines, sessions) while any exists.

use super::{Coordinator, Rc};
use crate::group::classic::{Answers, Join, JoinOutcome, Joined, SyncOutcome};
use fjord_net::ErrorCode;
use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use std::collections::HashMap;
use std::time::Duration;

/// How often classic groups are moved on in time.
const TICK: Duration = Duration::from_millis(250);
/// Longest a follower's SyncGroup waits for the leader's (Kafka bounds it
/// by the rebalance; the leader's session ends it sooner).
const SYNC_WAIT_MAX: Duration = Duration::from_secs(300);
/// Beyond its rebalance timeout, how long a JoinGroup may wait.
const JOIN_GRACE: Duration = Duration::from_secs(5);

/// A classic-protocol call of a Kafka client.
#[derive(Debug)]
pub enum ClassicCall {
    /// JoinGroup.
    Join(Join),
    /// SyncGroup; the leader's carries every member's assignment.
    Sync {
        /// The member.
        member_id: String,
        /// Its generation.
        generation: i32,
        /// The leader's assignments, by member.
        assignments: Vec<(String, Vec<u8>)>,
        /// A static member's instance id.
        instance_id: Option<String>,
        /// The protocol type and name the member was given (SyncGroup v5+).
        protocol: (Option<String>, Option<String>),
    },
    /// Heartbeat.
    Heartbeat {
        /// The member.
        member_id: String,
        /// Its generation.
        generation: i32,
        /// A static member's instance id.
        instance_id: Option<String>,
    },
    /// LeaveGroup of one member.
    Leave {
        /// The member (empty: the static member `instance_id`).
        member_id: String,
        /// A static member's instance id (LeaveGroup v3+).
        instance_id: Option<String>,
    },
    /// DescribeGroups of a classic group: its members' metadata and
    /// assignments, which only the classic protocol carries.
    Describe,
}

/// The answer to a [`ClassicCall`].
#[derive(Debug)]
pub enum ClassicReply {
    /// The rebalance completed.
    Joined(Joined),
    /// JoinGroup v4+: join again with this id.
    MemberIdRequired(String),
    /// The member's assignment.
    Synced(Vec<u8>),
    /// Heartbeat or leave accepted.
    Done,
    /// A classic group as DescribeGroups shows it.
    Described {
        /// Its state's name.
        state: &'static str,
        /// Protocol type ("consumer").
        protocol_type: String,
        /// The assignor chosen.
        protocol: String,
        /// Members with their metadata and assignment.
        members: Vec<crate::group::classic::Described>,
    },
}

type Waiting<T> = oneshot::Sender<Result<T, ErrorCode>>;

/// Requests waiting, by (group, member).
#[derive(Default)]
pub(crate) struct Parked {
    joins: HashMap<(String, String), Waiting<Joined>>,
    syncs: HashMap<(String, String), Waiting<Vec<u8>>>,
}

impl Coordinator {
    /// Runs a classic call; the future resolves when its answer is due.
    pub(super) fn classic(
        self: &Rc<Self>,
        group: &str,
        call: ClassicCall,
        now_ms: i64,
    ) -> Result<LocalBoxFuture<'static, Result<ClassicReply, ErrorCode>>, ErrorCode> {
        let mut state = self.state.borrow_mut();
        if state.groups.get(group).is_some_and(|g| !g.is_empty()) {
            // A group of the other protocol with members.
            return Err(ErrorCode::InconsistentGroupProtocol);
        }
        let joining = matches!(call, ClassicCall::Join(_));
        if !joining && !state.classic.contains_key(group) {
            return Err(match call {
                ClassicCall::Describe => ErrorCode::GroupIdNotFound,
                _ => ErrorCode::UnknownMemberId,
            });
        }
        let g = state.classic.entry(group.to_owned()).or_default();
        let mut answers = g.tick(now_ms);
        let outcome = match call {
            ClassicCall::Join(join) => {
                let wait =
                    Duration::from_millis(join.rebalance_timeout_ms.max(0) as u64) + JOIN_GRACE;
                match g.join(join, now_ms) {
                    Ok(JoinOutcome::MemberIdRequired(id)) => {
                        Ok(ready(ClassicReply::MemberIdRequired(id)))
                    }
                    Ok(JoinOutcome::Parked(id, more)) => {
                        answers.merge_from(more);
                        let (tx, rx) = oneshot::channel();
                        self.parked
                            .borrow_mut()
                            .joins
                            .insert((group.to_owned(), id), tx);
                        Ok(waiting(rx, wait, ClassicReply::Joined))
                    }
                    Err(e) => Err(e),
                }
            }
            ClassicCall::Sync {
                member_id,
                generation,
                assignments,
                instance_id,
                protocol: (protocol_type, protocol),
            } => match g
                .check_instance(&member_id, instance_id.as_deref())
                .and_then(|()| g.check_protocol(protocol_type.as_deref(), protocol.as_deref()))
                .and_then(|()| g.sync(&member_id, generation, assignments, now_ms))
            {
                Ok(SyncOutcome::Assigned(bytes)) => Ok(ready(ClassicReply::Synced(bytes))),
                Ok(SyncOutcome::Parked(more)) => {
                    answers.merge_from(more);
                    let (tx, rx) = oneshot::channel();
                    self.parked
                        .borrow_mut()
                        .syncs
                        .insert((group.to_owned(), member_id), tx);
                    Ok(waiting(rx, SYNC_WAIT_MAX, ClassicReply::Synced))
                }
                Err(e) => Err(e),
            },
            ClassicCall::Heartbeat {
                member_id,
                generation,
                instance_id,
            } => g
                .check_instance(&member_id, instance_id.as_deref())
                .and_then(|()| g.heartbeat(&member_id, generation, now_ms))
                .map(|()| ready(ClassicReply::Done)),
            ClassicCall::Leave {
                member_id,
                instance_id,
            } => g
                .leave(&member_id, instance_id.as_deref(), now_ms)
                .map(|more| {
                    answers.merge_from(more);
                    ready(ClassicReply::Done)
                }),
            ClassicCall::Describe => {
                let (protocol_type, protocol) = g.protocol();
                Ok(ready(ClassicReply::Described {
                    state: g.state().name(),
                    protocol_type: protocol_type.to_owned(),
                    protocol: protocol.to_owned(),
                    members: g.describe(),
                }))
            }
        };
        drop(state);
        self.deliver(group, answers);
        if joining {
            self.start_ticker();
        }
        outcome
    }

    /// Moves every group on in time: expired members leave, rebalances
    /// past their deadline complete; parked requests get their answers.
    pub(super) fn tick_all(&self, now_ms: i64) {
        let mut due = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            for group in state.groups.values_mut() {
                group.expire(now_ms);
            }
            for (id, group) in state.classic.iter_mut() {
                due.push((id.clone(), group.tick(now_ms)));
            }
        }
        for (id, answers) in due {
            self.deliver(&id, answers);
        }
    }

    fn deliver(&self, group: &str, answers: Answers) {
        let mut parked = self.parked.borrow_mut();
        for (member, answer) in answers.joins {
            if let Some(tx) = parked.joins.remove(&(group.to_owned(), member)) {
                // The client may have gone: nobody to answer.
                let _ = tx.send(answer);
            }
        }
        for (member, answer) in answers.syncs {
            if let Some(tx) = parked.syncs.remove(&(group.to_owned(), member)) {
                let _ = tx.send(answer);
            }
        }
    }

    /// Starts the ticker unless it runs; it stops when no classic group is
    /// left, or the coordinator is gone (its partition closed).
    fn start_ticker(self: &Rc<Self>) {
        if self.ticking.replace(true) {
            return;
        }
        let weak = Rc::downgrade(self);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(TICK).await;
                let Some(coordinator) = weak.upgrade() else {
                    return;
                };
                if coordinator.state.borrow().classic.is_empty() {
                    coordinator.ticking.set(false);
                    return;
                }
                coordinator.tick_all(fjord_storage::log::now_ms());
                coordinator
                    .state
                    .borrow_mut()
                    .classic
                    .retain(|_, g| !g.is_empty() || g.generation() == 0);
            }
        })
        .detach();
    }
}

fn ready(reply: ClassicReply) -> LocalBoxFuture<'static, Result<ClassicReply, ErrorCode>> {
    futures::future::ready(Ok(reply)).boxed_local()
}

/// Waits for a parked answer, at most `wait`.
fn waiting<T: 'static>(
    rx: oneshot::Receiver<Result<T, ErrorCode>>,
    wait: Duration,
    reply: fn(T) -> ClassicReply,
) -> LocalBoxFuture<'static, Result<ClassicReply, ErrorCode>> {
    async move {
        let timeout = std::pin::pin!(glommio::timer::sleep(wait));
        match futures::future::select(rx, timeout).await {
            futures::future::Either::Left((Ok(answer), _)) => answer.map(reply),
            // Dropped: the coordinator reloaded (a new term) or went away.
            futures::future::Either::Left((Err(_), _)) => Err(ErrorCode::NotCoordinator),
            futures::future::Either::Right(_) => Err(ErrorCode::RebalanceInProgress),
        }
    }
    .boxed_local()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(member_id: &str) -> ClassicCall {
        ClassicCall::Join(Join {
            member_id: member_id.into(),
            client_id: "c".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 2_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), b"meta".to_vec())],
            ..Join::default()
        })
    }

    fn joined(reply: Result<ClassicReply, ErrorCode>) -> Joined {
        match reply {
            Ok(ClassicReply::Joined(joined)) => joined,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parked_joins_and_syncs_are_answered_when_the_group_moves_on() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let c = Rc::new(Coordinator::default());
                let now = fjord_storage::log::now_ms();
                // Alone: the join completes at once.
                let a = joined(c.classic("g", join(""), now).unwrap().await);
                assert_eq!(a.generation, 1);
                // b's join waits until a rejoins.
                let b = c.classic("g", join(""), now).unwrap();
                let a2 = c.classic("g", join(&a.member_id), now).unwrap();
                let (a2, b) = futures::join!(a2, b);
                let (a2, b) = (joined(a2), joined(b));
                assert_eq!((a2.generation, b.generation), (2, 2));
                assert_eq!(a2.leader, a.member_id);
                assert_eq!(a2.members.len(), 2);
                // b's sync waits for the leader's, which answers both.
                let b_sync = c
                    .classic(
                        "g",
                        ClassicCall::Sync {
                            member_id: b.member_id.clone(),
                            generation: 2,
                            assignments: Vec::new(),
                            instance_id: None,
                            protocol: (None, None),
                        },
                        now,
                    )
                    .unwrap();
                let a_sync = c
                    .classic(
                        "g",
                        ClassicCall::Sync {
                            member_id: a.member_id.clone(),
                            generation: 2,
                            assignments: vec![(b.member_id.clone(), b"for b".to_vec())],
                            instance_id: None,
                            protocol: (None, None),
                        },
                        now,
                    )
                    .unwrap();
                let (b_sync, _) = futures::join!(b_sync, a_sync);
                assert!(matches!(b_sync, Ok(ClassicReply::Synced(bytes)) if bytes == b"for b"));
                // A silent b is dropped once its session passes: a's next
                // heartbeat hears of the rebalance.
                c.tick_all(now + 10_001);
                let beat = c
                    .classic(
                        "g",
                        ClassicCall::Heartbeat {
                            member_id: a.member_id.clone(),
                            generation: 2,
                            instance_id: None,
                        },
                        now + 10_001,
                    )
                    .err();
                assert!(
                    matches!(
                        beat,
                        Some(ErrorCode::UnknownMemberId | ErrorCode::RebalanceInProgress)
                    ),
                    "{beat:?}"
                );
            })
            .expect("executor")
            .join()
            .expect("test");
    }
}
