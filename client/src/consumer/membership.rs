//! A consumer's membership of a group (KIP-848's consumer side): it
//! heartbeats its subscription and what it owns; the coordinator answers
//! with what it should own. Partitions taken away are released first — the
//! listener hears of them and their positions are committed — and the
//! release is confirmed by the next heartbeat, sent at once; partitions
//! given start at the group's committed offset (else `offset_reset`).
//! Everything runs inside `poll`, on the application's task, so a listener
//! can commit with the consumer's own state.

use super::{Consumer, Seek};
use crate::error::{ClientError, Result};
use crate::group::{Coordinator, TopicPartition};
use fjord_net::{ErrorCode, wire};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Member epoch of a join, a leave, and a static member's leave.
const JOIN: i32 = 0;
const LEAVE: i32 = -1;
const LEAVE_STATIC: i32 = -2;

/// Heartbeat interval until the coordinator names one.
const FIRST_INTERVAL: Duration = Duration::from_millis(500);

/// What an application hears of its partitions moving.
pub trait RebalanceListener: Send {
    /// `partitions` are about to be released: commit what was processed of
    /// them (`revoking.commit`). With auto-commit on, the positions of all
    /// of them are committed after this returns anyway.
    fn on_revoked(&mut self, revoking: &mut Revoking<'_>) {
        let _ = revoking;
    }

    /// `partitions` were given to this consumer.
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }

    /// `partitions` were lost without a release (the membership was
    /// fenced or expired): another member may own them already, so
    /// committing is pointless.
    fn on_lost(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }
}

/// Partitions being released, and the offsets to commit before they are.
pub struct Revoking<'a> {
    /// The partitions and their positions (the offsets after what `poll`
    /// returned).
    pub partitions: &'a [(TopicPartition, i64)],
    commits: &'a mut BTreeMap<TopicPartition, i64>,
}

impl Revoking<'_> {
    /// Commits `offset` (the next record to read) for a partition before it
    /// is released.
    pub fn commit(&mut self, topic: &str, partition: i32, offset: i64) {
        self.commits.insert((topic.to_owned(), partition), offset);
    }
}

/// The group side of a subscribed consumer.
pub(super) struct Membership {
    pub(super) coordinator: Coordinator,
    pub(super) member_id: String,
    pub(super) epoch: i32,
    topics: Vec<String>,
    regex: String,
    pub(super) owned: BTreeSet<TopicPartition>,
    interval: Duration,
    next_heartbeat: Instant,
    next_commit: Option<Instant>,
}

impl Membership {
    pub(super) fn new(coordinator: Coordinator, topics: Vec<String>, regex: String) -> Membership {
        Membership {
            coordinator,
            member_id: String::new(),
            epoch: JOIN,
            topics,
            regex,
            owned: BTreeSet::new(),
            interval: FIRST_INTERVAL,
            next_heartbeat: Instant::now(),
            next_commit: None,
        }
    }

    /// A new subscription, sent with the next heartbeat, at once.
    pub(super) fn resubscribe(&mut self, topics: Vec<String>, regex: String) {
        self.topics = topics;
        self.regex = regex;
        self.next_heartbeat = Instant::now();
    }

    /// Until the next heartbeat is due.
    pub(super) fn until_heartbeat(&self) -> Duration {
        self.next_heartbeat
            .saturating_duration_since(Instant::now())
    }
}

impl Consumer {
    /// Heartbeats when due and applies what the coordinator answers;
    /// auto-commits when due.
    pub(super) async fn maintain(&mut self) -> Result<()> {
        let Some(m) = self.membership.as_ref() else {
            return Ok(());
        };
        let now = Instant::now();
        if let (Some(interval), Some(due)) = (self.config.auto_commit_interval, m.next_commit)
            && now >= due
        {
            self.commit_async();
            if let Some(m) = self.membership.as_mut() {
                m.next_commit = Some(now + interval);
            }
        }
        let due = self
            .membership
            .as_ref()
            .is_some_and(|m| now >= m.next_heartbeat);
        if due {
            self.heartbeat().await?;
        }
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<()> {
        let Some(m) = self.membership.as_mut() else {
            return Ok(());
        };
        let joining = m.epoch == JOIN;
        let body = wire::RequestT::ConsumerGroupHeartbeatRequest(Box::new(
            wire::ConsumerGroupHeartbeatRequestT {
                group_id: Some(m.coordinator.group().to_owned()),
                member_id: Some(m.member_id.clone()),
                member_epoch: m.epoch,
                instance_id: self.config.instance_id.clone(),
                client_id: Some(self.client.config().client_id.clone()),
                session_timeout_ms: self
                    .config
                    .session_timeout
                    .map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32),
                // Always sent: a coordinator that took over learns them.
                subscribed_topic_names: Some(m.topics.clone()),
                subscribed_topic_regex: Some(m.regex.clone()),
                owned: Some(fjord_net::api::topic_partitions_to_wire(&m.owned)),
            },
        ));
        let outcome = m.coordinator.call(body).await;
        let answer = match outcome {
            Ok(wire::ResponseT::ConsumerGroupHeartbeatResponse(answer)) => answer,
            Ok(_) => {
                return Err(ClientError::Protocol(
                    "expected a heartbeat response".into(),
                ));
            }
            Err(ClientError::Broker {
                code: ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch,
                ..
            }) if !joining => {
                self.lose_all();
                return Ok(());
            }
            Err(e) if e.is_retriable() => {
                if let Some(m) = self.membership.as_mut() {
                    m.next_heartbeat = Instant::now() + m.interval;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let m = self.membership.as_mut().expect("checked above");
        m.member_id = answer.member_id.unwrap_or_default();
        m.epoch = answer.member_epoch;
        if answer.heartbeat_interval_ms > 0 {
            m.interval = Duration::from_millis(answer.heartbeat_interval_ms as u64);
        }
        m.next_heartbeat = Instant::now() + m.interval;
        if joining && let Some(interval) = self.config.auto_commit_interval {
            m.next_commit = Some(Instant::now() + interval);
        }
        if let Some(assignment) = answer.assignment {
            self.reconcile(fjord_net::api::topic_partitions_from_wire(&assignment))
                .await?;
        }
        Ok(())
    }

    /// Moves to owning `wanted`: releases first, then takes on.
    async fn reconcile(&mut self, wanted: BTreeSet<TopicPartition>) -> Result<()> {
        let owned = self
            .membership
            .as_ref()
            .map(|m| m.owned.clone())
            .unwrap_or_default();
        let revoked: Vec<TopicPartition> = owned.difference(&wanted).cloned().collect();
        let added: Vec<TopicPartition> = wanted.difference(&owned).cloned().collect();
        if !revoked.is_empty() {
            self.release(&revoked).await;
            if let Some(m) = self.membership.as_mut() {
                // Confirm the release at once: the new owner waits for it.
                m.next_heartbeat = Instant::now();
            }
        }
        if !added.is_empty() {
            self.take_on(&added).await?;
        }
        Ok(())
    }

    /// Commits and drops `revoked`.
    async fn release(&mut self, revoked: &[TopicPartition]) {
        let positions: Vec<(TopicPartition, i64)> = revoked
            .iter()
            .filter_map(|tp| self.position(&tp.0, tp.1).map(|p| (tp.clone(), p)))
            .collect();
        let mut commits = BTreeMap::new();
        if self.config.auto_commit_interval.is_some() {
            commits.extend(positions.iter().cloned());
        }
        if let Some(listener) = self.listener.as_mut() {
            listener.on_revoked(&mut Revoking {
                partitions: &positions,
                commits: &mut commits,
            });
        }
        if !commits.is_empty()
            && let Err(e) = self.commit_offsets(&commits).await
        {
            // The partitions go all the same: the next owner starts from
            // the last commit that made it, and reads some records again.
            tracing::warn!(error = %e, "commit before releasing partitions failed");
        }
        self.unassign(revoked);
        if let Some(m) = self.membership.as_mut() {
            for tp in revoked {
                m.owned.remove(tp);
            }
        }
    }

    /// Starts reading `added` from the group's committed offsets.
    async fn take_on(&mut self, added: &[TopicPartition]) -> Result<()> {
        let Some(m) = self.membership.as_mut() else {
            return Ok(());
        };
        let committed = m.coordinator.committed(Some(added)).await?;
        let reset = self.config.offset_reset.unwrap_or(Seek::Latest);
        for tp in added {
            let seek = committed.get(tp).map_or(reset, |c| Seek::Offset(c.offset));
            self.assign(&tp.0, Some(&[tp.1]), seek).await?;
            if let Some(m) = self.membership.as_mut() {
                m.owned.insert(tp.clone());
            }
        }
        if let Some(listener) = self.listener.as_mut() {
            listener.on_assigned(added);
        }
        Ok(())
    }

    /// The membership was forgotten or fenced: everything owned is lost
    /// (no commit: another member may own it now) and the consumer joins
    /// again at once.
    fn lose_all(&mut self) {
        let Some(m) = self.membership.as_mut() else {
            return;
        };
        let lost: Vec<TopicPartition> = std::mem::take(&mut m.owned).into_iter().collect();
        m.epoch = JOIN;
        m.next_heartbeat = Instant::now();
        tracing::warn!(group = %m.coordinator.group(), partitions = lost.len(), "membership fenced; rejoining");
        self.unassign(&lost);
        if let Some(listener) = self.listener.as_mut() {
            listener.on_lost(&lost);
        }
    }

    /// Leaves the group: commits (with auto-commit on) and tells the
    /// coordinator, which moves the partitions to the others at once — or,
    /// for a static member, holds them for its session timeout.
    pub(super) async fn leave(&mut self) -> Result<()> {
        if self.membership.is_none() {
            return Ok(());
        }
        if self.config.auto_commit_interval.is_some() {
            self.commit().await?;
        }
        let owned: Vec<TopicPartition> = self
            .membership
            .as_ref()
            .map(|m| m.owned.iter().cloned().collect())
            .unwrap_or_default();
        if let Some(listener) = self.listener.as_mut() {
            let positions: Vec<(TopicPartition, i64)> = owned
                .iter()
                .filter_map(|tp| {
                    self.assigned
                        .iter()
                        .find(|a| a.topic == tp.0 && a.partition == tp.1)
                        .map(|a| (tp.clone(), a.position))
                })
                .collect();
            let mut commits = BTreeMap::new();
            listener.on_revoked(&mut Revoking {
                partitions: &positions,
                commits: &mut commits,
            });
            if !commits.is_empty() {
                self.commit_offsets(&commits).await?;
            }
        }
        let Some(mut m) = self.membership.take() else {
            return Ok(());
        };
        self.unassign(&owned);
        if m.member_id.is_empty() {
            return Ok(());
        }
        let epoch = if self.config.instance_id.is_some() {
            LEAVE_STATIC
        } else {
            LEAVE
        };
        let body = wire::RequestT::ConsumerGroupHeartbeatRequest(Box::new(
            wire::ConsumerGroupHeartbeatRequestT {
                group_id: Some(m.coordinator.group().to_owned()),
                member_id: Some(m.member_id.clone()),
                member_epoch: epoch,
                instance_id: self.config.instance_id.clone(),
                ..Default::default()
            },
        ));
        m.coordinator.call(body).await.map(|_| ())
    }
}
