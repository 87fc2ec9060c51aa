//! One consumer group's membership, KIP-848's way: members heartbeat their
//! subscription and what they own; the coordinator keeps a target
//! assignment (see [`super::assign`]) and moves each member towards it
//! incrementally. A partition leaves its owner first — the owner is told to
//! drop it and confirms in a later heartbeat — and only then goes to its new
//! member, so no partition is ever owned by two members, and members whose
//! partitions do not move never stop.
//!
//! Sans-I/O: time comes in as `now_ms`, the topics as a map of partition
//! counts; the coordinator persists nothing of this (committed offsets are
//! what is durable). A coordinator that takes over adopts members that
//! heartbeat with an epoch it never gave (see [`Group::heartbeat`]).

use super::assign::{self, MemberSpec, TopicPartition};
use fjord_net::ErrorCode;
use std::collections::{BTreeMap, BTreeSet};

/// Member epoch of a join.
pub const JOIN: i32 = 0;
/// Member epoch of a leave.
pub const LEAVE: i32 = -1;
/// Member epoch of a static member's leave: its place (and partitions)
/// wait for it for its session timeout.
pub const LEAVE_STATIC: i32 = -2;

/// One heartbeat, as the member sent it.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// Empty on a join without an id of the member's own.
    pub member_id: String,
    /// See [`JOIN`], [`LEAVE`], [`LEAVE_STATIC`]; else the member's epoch.
    pub member_epoch: i32,
    /// Static membership (`group.instance.id`).
    pub instance_id: Option<String>,
    /// The client's id, for `describe`.
    pub client_id: String,
    /// Session timeout the member asks for (bounded by the coordinator).
    pub session_timeout_ms: i64,
    /// Topic names subscribed to; `None`: unchanged.
    pub topics: Option<Vec<String>>,
    /// A regex subscription; `None`: unchanged (empty string: none).
    pub regex: Option<String>,
    /// Partitions the member owns now; `None`: unchanged.
    pub owned: Option<BTreeSet<TopicPartition>>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The member's id (chosen here on a join).
    pub member_id: String,
    /// Its epoch now.
    pub member_epoch: i32,
    /// What it is to own now, when that changed since the last answer.
    pub assignment: Option<BTreeSet<TopicPartition>>,
}

/// A member as the coordinator sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Member id.
    pub id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// The client's id.
    pub client_id: String,
    /// Current epoch; bumps with every new assignment it is sent.
    pub epoch: i32,
    /// The epoch before, still accepted: the answer carrying the new one may
    /// have been lost.
    previous_epoch: i32,
    /// Topic names subscribed to.
    pub topics: Vec<String>,
    /// Regex subscribed to ("" for none).
    pub regex: String,
    /// Topics the subscription resolves to.
    resolved: BTreeSet<String>,
    session_timeout_ms: i64,
    /// Removed at this time unless heard from.
    deadline_ms: i64,
    /// A static member that left, holding its place until `deadline_ms`.
    pub left: bool,
    /// What it may own: sent to it and not yet confirmed released. Disjoint
    /// from every other member's.
    pub assigned: BTreeSet<TopicPartition>,
    /// The last assignment sent.
    sent: Option<BTreeSet<TopicPartition>>,
}

impl Member {
    /// Whether its subscription covers `topic` now.
    pub fn reads(&self, topic: &str) -> bool {
        self.resolved.contains(topic)
    }

    /// A member as its heartbeat names it, at `epoch`, owning nothing; its
    /// subscription and deadline are the heartbeat's to set.
    fn new(hb: &Heartbeat, epoch: i32, session_timeout_ms: i64) -> Member {
        Member {
            id: hb.member_id.clone(),
            instance_id: hb.instance_id.clone(),
            client_id: hb.client_id.clone(),
            epoch,
            previous_epoch: epoch,
            topics: Vec::new(),
            regex: String::new(),
            resolved: BTreeSet::new(),
            session_timeout_ms,
            deadline_ms: 0,
            left: false,
            assigned: BTreeSet::new(),
            sent: None,
        }
    }
}

/// A group's state for `describe` and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Members are moving towards the target.
    Reconciling,
    /// Every member owns its target.
    Stable,
}

impl GroupState {
    /// Kafka's name for it.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::Reconciling => "Reconciling",
            GroupState::Stable => "Stable",
        }
    }
}

/// Session timeouts accepted (Kafka's `group.consumer.min/max.session.timeout.ms`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Shortest.
    pub session_timeout_min_ms: i64,
    /// Longest.
    pub session_timeout_max_ms: i64,
    /// Used when the member names none.
    pub session_timeout_default_ms: i64,
}

/// One group's membership.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// Bumps on every change of members, subscriptions or their topics.
    pub epoch: i32,
    members: BTreeMap<String, Member>,
    /// The target, computed at `target_epoch`.
    target: BTreeMap<String, BTreeSet<TopicPartition>>,
    target_epoch: i32,
    /// Partition counts of the subscribed topics when last seen.
    topics_seen: BTreeMap<String, i32>,
}

impl Group {
    /// Its members.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// A member's target.
    pub fn target_of(&self, member: &str) -> Option<&BTreeSet<TopicPartition>> {
        self.target.get(member)
    }

    /// Whether no member is left (static members waiting count).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Its state.
    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self
            .members
            .values()
            .all(|m| self.target.get(&m.id).is_some_and(|t| *t == m.assigned))
        {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    /// Whether `member` at `epoch` may commit offsets: a known member at
    /// its current or previous epoch.
    pub fn check_commit(&self, member: &str, epoch: i32) -> Result<(), ErrorCode> {
        let m = self.members.get(member).ok_or(ErrorCode::UnknownMemberId)?;
        if epoch > m.epoch {
            return Err(ErrorCode::FencedMemberEpoch);
        }
        if epoch != m.epoch && epoch != m.previous_epoch {
            return Err(ErrorCode::StaleMemberEpoch);
        }
        Ok(())
    }

    /// Removes members not heard from within their session timeout; their
    /// partitions are free at once.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.deadline_ms < now_ms)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
        }
        if !expired.is_empty() {
            self.epoch += 1;
        }
        expired
    }

    /// Takes one heartbeat: joins, leaves, subscription and ownership
    /// changes; answers with the member's next assignment.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        topics: &BTreeMap<String, i32>,
        limits: &Limits,
        now_ms: i64,
    ) -> Result<Answer, ErrorCode> {
        self.expire(now_ms);
        let timeout = match hb.session_timeout_ms {
            t if t <= 0 => limits.session_timeout_default_ms,
            t if t < limits.session_timeout_min_ms || t > limits.session_timeout_max_ms => {
                return Err(ErrorCode::InvalidSessionTimeout);
            }
            t => t,
        };
        let id = match hb.member_epoch {
            LEAVE => return Ok(self.leave(&hb.member_id)),
            LEAVE_STATIC => return Ok(self.leave_static(&hb.member_id, now_ms)),
            JOIN => self.join(&hb, timeout),
            epoch if epoch > 0 => self.known(&hb, timeout)?,
            _ => return Err(ErrorCode::InvalidRequest),
        };
        let member = self.members.get_mut(&id).expect("joined or known");
        member.deadline_ms = now_ms.saturating_add(member.session_timeout_ms);
        let mut changed = false;
        if let Some(names) = hb.topics.filter(|t| *t != member.topics) {
            member.topics = names;
            changed = true;
        }
        if let Some(regex) = hb.regex.filter(|r| *r != member.regex) {
            member.regex = regex;
            changed = true;
        }
        let resolved = resolve(&member.topics, &member.regex, topics)?;
        if resolved != member.resolved {
            member.resolved = resolved;
            changed = true;
        }
        let owned = hb.owned;
        if changed {
            self.epoch += 1;
        }
        self.follow_topics(topics);
        if self.target_epoch != self.epoch {
            self.retarget(topics);
        }
        Ok(self.reconcile(&id, owned.as_ref()))
    }

    fn join(&mut self, hb: &Heartbeat, timeout: i64) -> String {
        // A static member coming back takes its old place and partitions;
        // the place's old id is fenced.
        let old = hb.instance_id.as_ref().and_then(|instance| {
            self.members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance))
                .map(|m| m.id.clone())
        });
        let id = if hb.member_id.is_empty() {
            super::new_member_id(&hb.client_id)
        } else {
            hb.member_id.clone()
        };
        let mut member = match old.and_then(|old| self.members.remove(&old)) {
            Some(mut place) => {
                place.left = false;
                place.sent = None;
                place
            }
            None => {
                self.epoch += 1;
                Member::new(hb, 0, timeout)
            }
        };
        // Its target follows it to its new id.
        if let Some(target) = self.target.remove(&member.id) {
            self.target.insert(id.clone(), target);
        }
        member.id = id.clone();
        member.client_id = hb.client_id.clone();
        member.session_timeout_ms = timeout;
        member.previous_epoch = member.epoch;
        member.epoch += 1;
        self.members.insert(id.clone(), member);
        id
    }

    /// A heartbeat of a member already in the group. One this coordinator
    /// does not know (it took over from another) is adopted with what it
    /// owns, where nobody else owns it; otherwise it must rejoin.
    fn known(&mut self, hb: &Heartbeat, timeout: i64) -> Result<String, ErrorCode> {
        if let Some(m) = self.members.get(&hb.member_id) {
            if hb.member_epoch != m.epoch && hb.member_epoch != m.previous_epoch {
                return Err(ErrorCode::FencedMemberEpoch);
            }
            return Ok(hb.member_id.clone());
        }
        let owned = hb.owned.clone().ok_or(ErrorCode::UnknownMemberId)?;
        let held: BTreeSet<&TopicPartition> =
            self.members.values().flat_map(|m| &m.assigned).collect();
        if owned.iter().any(|tp| held.contains(tp)) || hb.topics.is_none() {
            return Err(ErrorCode::UnknownMemberId);
        }
        self.epoch += 1;
        let mut member = Member::new(hb, hb.member_epoch, timeout);
        member.sent = Some(owned.clone());
        member.assigned = owned;
        self.members.insert(hb.member_id.clone(), member);
        Ok(hb.member_id.clone())
    }

    fn leave(&mut self, id: &str) -> Answer {
        if self.members.remove(id).is_some() {
            self.epoch += 1;
        }
        Answer {
            member_id: id.to_owned(),
            member_epoch: LEAVE,
            assignment: None,
        }
    }

    fn leave_static(&mut self, id: &str, now_ms: i64) -> Answer {
        match self.members.get_mut(id) {
            Some(m) if m.instance_id.is_some() => {
                m.left = true;
                m.deadline_ms = now_ms.saturating_add(m.session_timeout_ms);
            }
            _ => return self.leave(id),
        }
        Answer {
            member_id: id.to_owned(),
            member_epoch: LEAVE_STATIC,
            assignment: None,
        }
    }

    /// Bumps the epoch when a subscribed topic's partition count changed
    /// (created, deleted, partitions added).
    fn follow_topics(&mut self, topics: &BTreeMap<String, i32>) {
        let subscribed: BTreeSet<&String> =
            self.members.values().flat_map(|m| &m.resolved).collect();
        let seen: BTreeMap<String, i32> = subscribed
            .into_iter()
            .map(|t| (t.clone(), topics.get(t).copied().unwrap_or(0)))
            .collect();
        if seen != self.topics_seen {
            self.topics_seen = seen;
            self.epoch += 1;
        }
    }

    fn retarget(&mut self, topics: &BTreeMap<String, i32>) {
        let none = BTreeSet::new();
        let specs: Vec<MemberSpec<'_>> = self
            .members
            .values()
            .map(|m| MemberSpec {
                id: &m.id,
                topics: &m.resolved,
                previous: self.target.get(&m.id).unwrap_or(&none),
            })
            .collect();
        self.target = assign::assign(&specs, topics);
        self.target_epoch = self.epoch;
    }

    /// Moves `id` towards its target: partitions it must give up are
    /// withheld from its assignment and stay its own until it confirms they
    /// are released; partitions it gains are given once nobody owns them.
    fn reconcile(&mut self, id: &str, owned: Option<&BTreeSet<TopicPartition>>) -> Answer {
        let target = self.target.get(id).cloned().unwrap_or_default();
        let held_elsewhere: BTreeSet<TopicPartition> = self
            .members
            .values()
            .filter(|m| m.id != id)
            .flat_map(|m| m.assigned.iter().cloned())
            .collect();
        let member = self.members.get_mut(id).expect("reconciled member exists");
        let revoking: BTreeSet<TopicPartition> =
            member.assigned.difference(&target).cloned().collect();
        if let Some(owned) = owned
            && owned.is_disjoint(&revoking)
        {
            for tp in &revoking {
                member.assigned.remove(tp);
            }
        }
        for tp in target.difference(&held_elsewhere) {
            member.assigned.insert(tp.clone());
        }
        let desired: BTreeSet<TopicPartition> =
            member.assigned.difference(&revoking).cloned().collect();
        let assignment = if member.sent.as_ref() != Some(&desired) {
            member.previous_epoch = member.epoch;
            member.epoch += 1;
            member.sent = Some(desired.clone());
            Some(desired)
        } else {
            None
        };
        debug_assert!(self.exclusive(), "a partition owned by two members");
        let member = &self.members[id];
        Answer {
            member_id: id.to_owned(),
            member_epoch: member.epoch,
            assignment,
        }
    }

    fn exclusive(&self) -> bool {
        let mut seen = BTreeSet::new();
        self.members
            .values()
            .flat_map(|m| &m.assigned)
            .all(|tp| seen.insert(tp))
    }
}

/// The topics a subscription names or matches; internal topics (`__…`)
/// only by name.
fn resolve(
    names: &[String],
    regex: &str,
    topics: &BTreeMap<String, i32>,
) -> Result<BTreeSet<String>, ErrorCode> {
    let mut resolved: BTreeSet<String> = names.iter().cloned().collect();
    if !regex.is_empty() {
        let re = regex::Regex::new(&format!("^(?:{regex})$"))
            .map_err(|_| ErrorCode::InvalidRegularExpression)?;
        resolved.extend(
            topics
                .keys()
                .filter(|t| !t.starts_with("__") && re.is_match(t))
                .cloned(),
        );
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        session_timeout_min_ms: 1000,
        session_timeout_max_ms: 60_000,
        session_timeout_default_ms: 10_000,
    };

    fn topics() -> BTreeMap<String, i32> {
        BTreeMap::from([("t".to_string(), 4), ("u".to_string(), 2)])
    }

    fn join(g: &mut Group, client: &str, now: i64) -> Answer {
        g.heartbeat(
            Heartbeat {
                member_epoch: JOIN,
                client_id: client.into(),
                topics: Some(vec!["t".into()]),
                ..Default::default()
            },
            &topics(),
            &LIMITS,
            now,
        )
        .unwrap()
    }

    fn beat(g: &mut Group, a: &Answer, owned: &BTreeSet<TopicPartition>, now: i64) -> Answer {
        g.heartbeat(
            Heartbeat {
                member_id: a.member_id.clone(),
                member_epoch: a.member_epoch,
                owned: Some(owned.clone()),
                ..Default::default()
            },
            &topics(),
            &LIMITS,
            now,
        )
        .unwrap()
    }

    #[test]
    fn a_joining_member_gets_partitions_only_after_the_owner_released_them() {
        let mut g = Group::default();
        let a = join(&mut g, "a", 0);
        let a_owned = a.assignment.clone().unwrap();
        assert_eq!(a_owned.len(), 4);
        let b = join(&mut g, "b", 10);
        // Everything is still a's: b gets nothing yet.
        assert_eq!(b.assignment.clone().unwrap().len(), 0);
        // a is told to keep two.
        let a2 = beat(&mut g, &a, &a_owned, 20);
        let a_kept = a2.assignment.clone().unwrap();
        assert_eq!(a_kept.len(), 2);
        // b still waits: a has not confirmed.
        let b2 = beat(&mut g, &b, &BTreeSet::new(), 30);
        assert_eq!(b2.assignment, None);
        assert_eq!(g.state(), GroupState::Reconciling);
        // a confirms; b gets the other two.
        let a3 = beat(&mut g, &a2, &a_kept, 40);
        assert_eq!(a3.assignment, None);
        let b3 = beat(&mut g, &b2, &BTreeSet::new(), 50);
        let b_owned = b3.assignment.clone().unwrap();
        assert_eq!(b_owned.len(), 2);
        assert!(b_owned.is_disjoint(&a_kept));
        assert_eq!(g.state(), GroupState::Stable);
        // Commits: current epoch fine, older fenced as stale, newer fenced.
        assert!(g.check_commit(&b3.member_id, b3.member_epoch).is_ok());
        assert_eq!(
            g.check_commit(&b3.member_id, b3.member_epoch + 1),
            Err(ErrorCode::FencedMemberEpoch)
        );
    }

    #[test]
    fn a_member_that_stops_heartbeating_loses_its_partitions_after_its_session() {
        let mut g = Group::default();
        let a = join(&mut g, "a", 0);
        let b = join(&mut g, "b", 0);
        let a_owned = beat(&mut g, &a, &a.assignment.clone().unwrap(), 1)
            .assignment
            .unwrap();
        let _ = beat(&mut g, &a, &a_owned, 2);
        // b vanishes; a heartbeats on, past b's session, and gets everything.
        let half = LIMITS.session_timeout_default_ms / 2;
        let _ = beat(&mut g, &a, &a_owned, half);
        let late = LIMITS.session_timeout_default_ms + 1;
        let a_again = g
            .heartbeat(
                Heartbeat {
                    member_id: a.member_id.clone(),
                    member_epoch: g.members[&a.member_id].epoch,
                    owned: Some(a_owned),
                    ..Default::default()
                },
                &topics(),
                &LIMITS,
                late,
            )
            .unwrap();
        assert_eq!(a_again.assignment.unwrap().len(), 4);
        assert!(!g.members.contains_key(&b.member_id));
    }

    #[test]
    fn a_static_member_coming_back_keeps_its_partitions() {
        let mut g = Group::default();
        let hb = |epoch, id: &str| Heartbeat {
            member_id: id.into(),
            member_epoch: epoch,
            instance_id: Some("i1".into()),
            topics: Some(vec!["t".into()]),
            ..Default::default()
        };
        let a = g.heartbeat(hb(JOIN, ""), &topics(), &LIMITS, 0).unwrap();
        let owned = a.assignment.clone().unwrap();
        g.heartbeat(hb(LEAVE_STATIC, &a.member_id), &topics(), &LIMITS, 5)
            .unwrap();
        let back = g.heartbeat(hb(JOIN, ""), &topics(), &LIMITS, 100).unwrap();
        assert_eq!(back.assignment.unwrap(), owned);
        assert_eq!(g.members().count(), 1);
    }

    #[test]
    fn regex_and_new_partitions_are_followed() {
        let mut g = Group::default();
        let a = g
            .heartbeat(
                Heartbeat {
                    member_epoch: JOIN,
                    regex: Some("t|u".into()),
                    ..Default::default()
                },
                &topics(),
                &LIMITS,
                0,
            )
            .unwrap();
        assert_eq!(a.assignment.clone().unwrap().len(), 6);
        let mut more = topics();
        more.insert("t".into(), 5);
        let a2 = g
            .heartbeat(
                Heartbeat {
                    member_id: a.member_id.clone(),
                    member_epoch: a.member_epoch,
                    ..Default::default()
                },
                &more,
                &LIMITS,
                1,
            )
            .unwrap();
        assert_eq!(a2.assignment.unwrap().len(), 7);
    }

    #[test]
    fn an_unknown_member_is_adopted_with_what_it_owns() {
        let mut g = Group::default();
        let owned: BTreeSet<TopicPartition> = [("t".to_string(), 1)].into();
        let a = g
            .heartbeat(
                Heartbeat {
                    member_id: "m".into(),
                    member_epoch: 7,
                    topics: Some(vec!["t".into()]),
                    owned: Some(owned.clone()),
                    ..Default::default()
                },
                &topics(),
                &LIMITS,
                0,
            )
            .unwrap();
        assert!(a.assignment.unwrap().is_superset(&owned));
        assert!(a.member_epoch > 7);
    }
}
