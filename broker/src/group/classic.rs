//! One group of Kafka's classic protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup), the one every existing Kafka client speaks: the members
//! join a rebalance (a barrier: everyone known rejoins, or is dropped at
//! the rebalance timeout), the coordinator names a generation, a protocol
//! and a leader, the leader computes the assignment with the client-side
//! assignor it brought (range, round-robin, cooperative-sticky …) and hands
//! it back in SyncGroup, and every member gets its part. The coordinator
//! never reads the assignment bytes.
//!
//! Sans-I/O, as [`super::members`]: time comes in as `now_ms`; answers that
//! must wait (a join until the rebalance completes, a follower's sync until
//! the leader's) come out as [`Answers`] addressed to members, for the
//! caller to deliver to the requests it parked.

use fjord_net::ErrorCode;
use std::collections::BTreeMap;

/// Kafka's name for a group's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No members.
    Empty,
    /// Waiting for the members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

impl State {
    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// A JoinGroup request, as the coordinator needs it.
#[derive(Debug, Clone, Default)]
pub struct Join {
    /// Empty on a first join.
    pub member_id: String,
    /// Static membership (`group.instance.id`).
    pub instance_id: Option<String>,
    /// The client's id and host, for `describe`.
    pub client_id: String,
    /// The client's host.
    pub client_host: String,
    /// Leave after this long without a heartbeat.
    pub session_timeout_ms: i64,
    /// Longest a rebalance waits for this member to rejoin.
    pub rebalance_timeout_ms: i64,
    /// "consumer" for consumers.
    pub protocol_type: String,
    /// Assignors it supports, in preference order, with their metadata.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// JoinGroup v4+: a first join gets MEMBER_ID_REQUIRED and an id.
    pub require_known_member_id: bool,
}

/// What a member hears when a rebalance completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Its id.
    pub member_id: String,
    /// The new generation.
    pub generation: i32,
    /// The protocol (assignor) chosen.
    pub protocol: String,
    /// The protocol type.
    pub protocol_type: String,
    /// The leader's id.
    pub leader: String,
    /// The leader only: every member, its instance id and its metadata for
    /// the chosen protocol.
    pub members: Vec<(String, Option<String>, Vec<u8>)>,
}

/// Answers to requests that were parked, by member id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// JoinGroup answers.
    pub joins: Vec<(String, Result<Joined, ErrorCode>)>,
    /// SyncGroup answers (the member's assignment).
    pub syncs: Vec<(String, Result<Vec<u8>, ErrorCode>)>,
}

impl Answers {
    /// Adds `other`'s answers.
    pub fn merge_from(&mut self, other: Answers) {
        self.merge(other);
    }

    fn merge(&mut self, other: Answers) {
        self.joins.extend(other.joins);
        self.syncs.extend(other.syncs);
    }
}

/// What a JoinGroup gets now.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Wait: the answer comes in [`Answers`] (maybe the ones returned with
    /// it: a join that completes the rebalance answers itself).
    Parked(String, Answers),
    /// Join again with this id (JoinGroup v4+).
    MemberIdRequired(String),
}

/// What a SyncGroup gets now.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The assignment.
    Assigned(Vec<u8>),
    /// Wait for the leader's sync (in [`Answers`]); these answers are due
    /// now (the leader's sync answers the others).
    Parked(Answers),
}

#[derive(Debug, Clone)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i64,
    rebalance_timeout_ms: i64,
    protocols: Vec<(String, Vec<u8>)>,
    assignment: Vec<u8>,
    /// Rejoined in the current rebalance (its JoinGroup is parked).
    joined: bool,
    /// Its SyncGroup is parked.
    syncing: bool,
    /// Given an id (JoinGroup v4+) but not joined with it yet: not part of
    /// any generation.
    pending: bool,
    deadline_ms: i64,
}

/// A member for `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// Id.
    pub member_id: String,
    /// Static id.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Its metadata for the chosen protocol.
    pub metadata: Vec<u8>,
    /// Its assignment.
    pub assignment: Vec<u8>,
}

/// One classic group.
#[derive(Debug, Clone)]
pub struct ClassicGroup {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// When the rebalance under way gives up on members not rejoined.
    rebalance_deadline_ms: i64,
}

impl Default for ClassicGroup {
    fn default() -> Self {
        ClassicGroup {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: None,
            members: BTreeMap::new(),
            rebalance_deadline_ms: 0,
        }
    }
}

impl ClassicGroup {
    /// Its state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Its generation.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The chosen protocol and its type.
    pub fn protocol(&self) -> (&str, &str) {
        (&self.protocol_type, &self.protocol)
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Its members.
    pub fn describe(&self) -> Vec<Described> {
        self.members
            .iter()
            .filter(|(_, m)| !m.pending)
            .map(|(id, m)| Described {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: m.metadata(&self.protocol).to_vec(),
                assignment: m.assignment.clone(),
            })
            .collect()
    }

    /// When the rebalance under way gives up on members not rejoined, if one
    /// is under way: the caller calls [`ClassicGroup::tick`] then.
    pub fn rebalance_deadline(&self) -> Option<i64> {
        (self.state == State::PreparingRebalance).then_some(self.rebalance_deadline_ms)
    }

    /// A JoinGroup.
    pub fn join(&mut self, join: Join, now_ms: i64) -> Result<JoinOutcome, ErrorCode> {
        let mut answers = self.tick(now_ms);
        if join.protocols.is_empty() || join.protocol_type.is_empty() {
            return Err(ErrorCode::InconsistentGroupProtocol);
        }
        if !self.members.is_empty()
            && (join.protocol_type != self.protocol_type || !self.supports_any(&join.protocols))
        {
            return Err(ErrorCode::InconsistentGroupProtocol);
        }
        if self.members.is_empty() {
            self.protocol_type = join.protocol_type.clone();
        }
        let static_place = join.instance_id.as_ref().and_then(|i| {
            self.members
                .iter()
                .find(|(_, m)| m.instance_id.as_ref() == Some(i))
                .map(|(id, _)| id.clone())
        });
        // The static member whose place a new process of its instance took.
        let mut replaced = None;
        let id = match (join.member_id.is_empty(), static_place) {
            // As Kafka: a member id its instance no longer holds is an
            // older process of that instance, fenced.
            (false, Some(old)) if old != join.member_id => {
                return Err(ErrorCode::FencedInstanceId);
            }
            // A static member coming back (with no id) takes its place
            // under a new id; the old id is fenced.
            (true, Some(old)) => {
                let mut member = self
                    .members
                    .remove(&old)
                    .ok_or(ErrorCode::UnknownServerError)?;
                let id = super::new_member_id(&join.client_id);
                if self.leader.as_deref() == Some(old.as_str()) {
                    self.leader = Some(id.clone());
                }
                if member.joined {
                    answers
                        .joins
                        .push((old.clone(), Err(ErrorCode::FencedInstanceId)));
                    member.joined = false;
                }
                self.members.insert(id.clone(), member);
                replaced = Some(old);
                id
            }
            (true, _) => {
                let id = super::new_member_id(&join.client_id);
                if join.require_known_member_id {
                    // Known from now on; it joins again with the id. Until
                    // then it is pending: no rebalance waits for it.
                    let mut pending = Member::new(&join, now_ms);
                    pending.pending = true;
                    self.members.insert(id.clone(), pending);
                    return Ok(JoinOutcome::MemberIdRequired(id));
                }
                id
            }
            (false, _) if !self.members.contains_key(&join.member_id) => {
                return Err(ErrorCode::UnknownMemberId);
            }
            (false, _) => join.member_id.clone(),
        };
        if self.members.is_empty() {
            self.protocol_type = join.protocol_type.clone();
        }
        let known = self.members.get(&id).is_some_and(|m| !m.pending);
        let member = self
            .members
            .entry(id.clone())
            .or_insert_with(|| Member::new(&join, now_ms));
        let unchanged =
            known && member.protocols == join.protocols && member.instance_id == join.instance_id;
        member.protocols = join.protocols;
        member.session_timeout_ms = join.session_timeout_ms;
        member.rebalance_timeout_ms = join.rebalance_timeout_ms;
        member.client_id = join.client_id;
        member.client_host = join.client_host;
        member.instance_id = join.instance_id;
        member.deadline_ms = now_ms.saturating_add(member.session_timeout_ms);
        member.pending = false;
        // As Kafka: a member joining again with what it had is answered
        // with the current generation, the others untouched; only a change
        // the leader must assign for rebalances.
        // - Stable: a static member's new process (KIP-345), or a member
        //   other than the leader, syncs for the assignment it had. A new
        //   process of the leader is shown its old id as the leader's, so
        //   that it syncs as a follower: a stable group would not pass on
        //   an assignment it made.
        // - Waiting for the leader's assignment: a member that lost its
        //   join's answer gets it again (the leader with every member).
        let leading = self.leader.as_deref() == Some(id.as_str());
        let answer_again = match self.state {
            State::Stable => replaced.is_some() || !leading,
            State::CompletingRebalance => replaced.is_none(),
            _ => false,
        };
        if unchanged && answer_again {
            let (leader, members) = match replaced {
                Some(old) if leading => (old, Vec::new()),
                _ if leading && self.state == State::CompletingRebalance => {
                    (id.clone(), self.everyone())
                }
                _ => (self.leader.clone().unwrap_or_default(), Vec::new()),
            };
            let joined = self.joined(&id, leader, members);
            answers.joins.push((id.clone(), Ok(joined)));
            return Ok(JoinOutcome::Parked(id, answers));
        }
        member.joined = true;
        if self.state != State::PreparingRebalance {
            self.prepare(now_ms, &mut answers);
        }
        answers.merge(self.complete_if_all_joined(now_ms));
        Ok(JoinOutcome::Parked(id, answers))
    }

    /// A SyncGroup; the leader's carries every member's assignment.
    pub fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
        now_ms: i64,
    ) -> Result<SyncOutcome, ErrorCode> {
        self.check_member(member_id, generation, now_ms)?;
        match self.state {
            State::PreparingRebalance => Err(ErrorCode::RebalanceInProgress),
            State::Stable => Ok(SyncOutcome::Assigned(
                self.members[member_id].assignment.clone(),
            )),
            State::Empty => Err(ErrorCode::UnknownMemberId),
            State::CompletingRebalance if self.leader.as_deref() == Some(member_id) => {
                for m in self.members.values_mut() {
                    m.assignment.clear();
                }
                for (id, bytes) in assignments {
                    if let Some(m) = self.members.get_mut(&id) {
                        m.assignment = bytes;
                    }
                }
                self.state = State::Stable;
                let mut answers = Answers::default();
                for (id, m) in self.members.iter_mut() {
                    if std::mem::take(&mut m.syncing) {
                        m.deadline_ms = now_ms.saturating_add(m.session_timeout_ms);
                        answers.syncs.push((id.clone(), Ok(m.assignment.clone())));
                    }
                }
                let mine = self.members[member_id].assignment.clone();
                answers.syncs.push((member_id.to_owned(), Ok(mine)));
                Ok(SyncOutcome::Parked(answers))
            }
            State::CompletingRebalance => {
                if let Some(m) = self.members.get_mut(member_id) {
                    m.syncing = true;
                }
                Ok(SyncOutcome::Parked(Answers::default()))
            }
        }
    }

    /// As Kafka: a SyncGroup naming a protocol type or name (v5+) other
    /// than the group's is refused (`INCONSISTENT_GROUP_PROTOCOL`).
    pub fn check_protocol(
        &self,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
    ) -> Result<(), ErrorCode> {
        let differs = protocol_type.is_some_and(|t| t != self.protocol_type)
            || protocol.is_some_and(|p| p != self.protocol);
        if differs {
            return Err(ErrorCode::InconsistentGroupProtocol);
        }
        Ok(())
    }

    /// A static member's call under an id its instance no longer holds:
    /// another process took the instance's place, and this one is fenced
    /// (Kafka's `FENCED_INSTANCE_ID`, which its client takes as fatal).
    pub fn check_instance(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ErrorCode> {
        let Some(instance) = instance_id else {
            return Ok(());
        };
        match self
            .members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
        {
            Some((holder, _)) if holder != member_id => Err(ErrorCode::FencedInstanceId),
            _ => Ok(()),
        }
    }

    /// A Heartbeat.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), ErrorCode> {
        self.check_member(member_id, generation, now_ms)?;
        match self.state {
            State::PreparingRebalance => Err(ErrorCode::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Whether `member_id` at `generation` may commit offsets (a group
    /// without members takes them from anyone, as Kafka's "simple"
    /// consumers with generation -1).
    pub fn check_commit(
        &mut self,
        member_id: &str,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), ErrorCode> {
        if self.members.is_empty() && generation < 0 {
            return Ok(());
        }
        self.check_member(member_id, generation, now_ms)?;
        // As Kafka: a commit of the generation still current is taken
        // while members rejoin — the commit consumers make as their
        // partitions are revoked — and refused only between the new
        // generation and its assignment.
        match self.state {
            State::CompletingRebalance => Err(ErrorCode::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// LeaveGroup of `member_id`, or of the static member `instance_id`
    /// (v3+; an admin removing it names no member id); the others
    /// rebalance. A member id that is not the instance's is fenced.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Answers, ErrorCode> {
        let id = match instance_id {
            Some(instance) => {
                let holder = self
                    .members
                    .iter()
                    .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
                    .map(|(id, _)| id.clone())
                    .ok_or(ErrorCode::UnknownMemberId)?;
                if !member_id.is_empty() && member_id != holder {
                    return Err(ErrorCode::FencedInstanceId);
                }
                holder
            }
            None => member_id.to_owned(),
        };
        if self.members.remove(&id).is_none() {
            return Err(ErrorCode::UnknownMemberId);
        }
        let mut answers = Answers::default();
        self.after_removal(now_ms, &mut answers);
        Ok(answers)
    }

    /// Drops members past their session (or, in a rebalance past its
    /// deadline, those that did not rejoin) and moves the group on.
    pub fn tick(&mut self, now_ms: i64) -> Answers {
        let mut answers = Answers::default();
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.deadline_ms < now_ms && !m.joined && !m.syncing)
            .map(|(id, _)| id.clone())
            .collect();
        let late = self.state == State::PreparingRebalance && now_ms >= self.rebalance_deadline_ms;
        let dropped: Vec<String> = if late {
            self.members
                .iter()
                .filter(|(_, m)| !m.joined)
                .map(|(id, _)| id.clone())
                .collect()
        } else {
            expired
        };
        // A pending member (given an id, never back with it) was no part
        // of any generation: its going changes nothing the others hold.
        let mut members_left = false;
        for id in &dropped {
            members_left |= self.members.remove(id).is_some_and(|m| !m.pending);
        }
        if members_left {
            self.after_removal(now_ms, &mut answers);
        }
        answers
    }

    fn after_removal(&mut self, now_ms: i64, answers: &mut Answers) {
        if self
            .leader
            .as_ref()
            .is_some_and(|l| !self.members.contains_key(l))
        {
            self.leader = None;
        }
        if self.members.is_empty() {
            self.state = State::Empty;
            self.generation += 1;
            return;
        }
        if self.state != State::PreparingRebalance {
            self.prepare(now_ms, answers);
        }
        answers.merge(self.complete_if_all_joined(now_ms));
    }

    /// Starts a rebalance: members must rejoin; parked syncs learn of it.
    fn prepare(&mut self, now_ms: i64, answers: &mut Answers) {
        for (id, m) in self.members.iter_mut() {
            if std::mem::take(&mut m.syncing) {
                answers
                    .syncs
                    .push((id.clone(), Err(ErrorCode::RebalanceInProgress)));
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        self.rebalance_deadline_ms = now_ms.saturating_add(timeout);
        self.state = State::PreparingRebalance;
    }

    /// Completes the rebalance once every member rejoined: a new
    /// generation, the protocol every member supports (by the members'
    /// preferences), a leader; every parked join is answered.
    fn complete_if_all_joined(&mut self, now_ms: i64) -> Answers {
        let mut answers = Answers::default();
        let mut generation = self.members.iter().filter(|(_, m)| !m.pending);
        if self.state != State::PreparingRebalance
            || generation.clone().next().is_none()
            || !generation.all(|(_, m)| m.joined)
        {
            return answers;
        }
        self.generation += 1;
        self.protocol = self.choose_protocol();
        let leader = match &self.leader {
            Some(l) if self.members.get(l).is_some_and(|m| !m.pending) => l.clone(),
            _ => self
                .members
                .iter()
                .find(|(_, m)| !m.pending)
                .map(|(id, _)| id.clone())
                .unwrap_or_default(),
        };
        self.leader = Some(leader.clone());
        self.state = State::CompletingRebalance;
        let everyone = self.everyone();
        let joined: Vec<String> = self
            .members
            .iter_mut()
            .filter(|(_, m)| !m.pending)
            .map(|(id, m)| {
                m.joined = false;
                // Its session runs from the answer, as Kafka's: a member
                // that joined early must not expire while slower ones
                // rejoin.
                m.deadline_ms = now_ms.saturating_add(m.session_timeout_ms);
                id.clone()
            })
            .collect();
        for id in joined {
            let members = if id == leader {
                everyone.clone()
            } else {
                Vec::new()
            };
            let answer = self.joined(&id, leader.clone(), members);
            answers.joins.push((id, Ok(answer)));
        }
        answers
    }

    /// A join's answer in the current generation.
    fn joined(
        &self,
        id: &str,
        leader: String,
        members: Vec<(String, Option<String>, Vec<u8>)>,
    ) -> Joined {
        Joined {
            member_id: id.to_owned(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            protocol_type: self.protocol_type.clone(),
            leader,
            members,
        }
    }

    /// Every member of the generation, with its instance id and metadata
    /// for the chosen protocol: what the leader assigns from.
    fn everyone(&self) -> Vec<(String, Option<String>, Vec<u8>)> {
        self.members
            .iter()
            .filter(|(_, m)| !m.pending)
            .map(|(id, m)| {
                (
                    id.clone(),
                    m.instance_id.clone(),
                    m.metadata(&self.protocol).to_vec(),
                )
            })
            .collect()
    }

    /// The protocol every member supports that most members prefer (each
    /// votes for its first supported choice), as Kafka's `selectProtocol`.
    fn choose_protocol(&self) -> String {
        let supported_by_all = |name: &str| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        };
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| supported_by_all(n)) {
                *votes.entry(name).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, v)| *v)
            .map(|(name, _)| name.to_owned())
            .unwrap_or_default()
    }

    fn supports_any(&self, protocols: &[(String, Vec<u8>)]) -> bool {
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn check_member(
        &mut self,
        member_id: &str,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), ErrorCode> {
        // As Kafka: a pending member is known only to its next join.
        let m = self
            .members
            .get_mut(member_id)
            .filter(|m| !m.pending)
            .ok_or(ErrorCode::UnknownMemberId)?;
        m.deadline_ms = now_ms.saturating_add(m.session_timeout_ms);
        if generation != self.generation {
            return Err(ErrorCode::IllegalGeneration);
        }
        Ok(())
    }
}

impl Member {
    fn new(join: &Join, now_ms: i64) -> Member {
        Member {
            instance_id: join.instance_id.clone(),
            client_id: join.client_id.clone(),
            client_host: join.client_host.clone(),
            session_timeout_ms: join.session_timeout_ms,
            rebalance_timeout_ms: join.rebalance_timeout_ms,
            protocols: join.protocols.clone(),
            assignment: Vec::new(),
            joined: false,
            syncing: false,
            pending: false,
            deadline_ms: now_ms.saturating_add(join.session_timeout_ms),
        }
    }

    fn metadata(&self, protocol: &str) -> &[u8] {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map_or(&[][..], |(_, m)| m.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(id: &str, protocols: &[&str]) -> Join {
        Join {
            member_id: id.into(),
            client_id: "c".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), p.as_bytes().to_vec()))
                .collect(),
            ..Join::default()
        }
    }

    /// `join` of the static member `instance`.
    fn static_join(id: &str, protocols: &[&str], instance: &str) -> Join {
        Join {
            instance_id: Some(instance.into()),
            ..join(id, protocols)
        }
    }

    fn parked(outcome: Result<JoinOutcome, ErrorCode>) -> (String, Answers) {
        match outcome.unwrap() {
            JoinOutcome::Parked(id, answers) => (id, answers),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_members_join_sync_and_rebalance_when_one_leaves() {
        let mut g = ClassicGroup::default();
        // A first join completes a rebalance of one at once.
        let (a, answers) = parked(g.join(join("", &["range", "roundrobin"]), 0));
        assert_eq!(answers.joins.len(), 1);
        let joined = answers.joins[0].1.clone().unwrap();
        assert_eq!((joined.generation, joined.leader.as_str()), (1, a.as_str()));
        assert_eq!(joined.members.len(), 1, "the leader hears of every member");
        // b joins: a rebalance waits for a to rejoin.
        let (b, answers) = parked(g.join(join("", &["roundrobin", "range"]), 10));
        assert!(answers.joins.is_empty());
        assert_eq!(g.heartbeat(&a, 1, 20), Err(ErrorCode::RebalanceInProgress));
        let (_, answers) = parked(g.join(join(&a, &["range", "roundrobin"]), 30));
        assert_eq!(answers.joins.len(), 2);
        assert_eq!(g.generation(), 2);
        assert_eq!(g.state(), State::CompletingRebalance);
        // A follower's sync waits for the leader's.
        assert_eq!(
            g.sync(&b, 2, vec![], 40).unwrap(),
            SyncOutcome::Parked(Answers::default())
        );
        let leader_sync = g
            .sync(
                &a,
                2,
                vec![(a.clone(), b"A".to_vec()), (b.clone(), b"B".to_vec())],
                50,
            )
            .unwrap();
        let SyncOutcome::Parked(answers) = leader_sync else {
            panic!()
        };
        assert!(answers.syncs.contains(&(b.clone(), Ok(b"B".to_vec()))));
        assert!(answers.syncs.contains(&(a.clone(), Ok(b"A".to_vec()))));
        assert_eq!(g.state(), State::Stable);
        assert!(g.check_commit(&b, 2, 60).is_ok());
        assert_eq!(g.check_commit(&b, 1, 60), Err(ErrorCode::IllegalGeneration));
        // b leaves: a rebalances alone.
        g.leave(&b, None, 70).unwrap();
        assert_eq!(g.state(), State::PreparingRebalance);
        let (_, answers) = parked(g.join(join(&a, &["range"]), 80));
        assert_eq!(answers.joins.len(), 1);
        assert_eq!(g.generation(), 3);
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_deadline() {
        let mut g = ClassicGroup::default();
        let (a, _) = parked(g.join(join("", &["range"]), 0));
        g.sync(&a, 1, vec![(a.clone(), vec![1])], 1).unwrap();
        let (b, answers) = parked(g.join(join("", &["range"]), 10));
        assert!(answers.joins.is_empty());
        assert_eq!(g.rebalance_deadline(), Some(10 + 5_000));
        let answers = g.tick(10 + 5_000);
        assert_eq!(answers.joins.len(), 1, "b's join is answered");
        assert_eq!(answers.joins[0].0, b);
        assert_eq!(g.describe().len(), 1);
    }

    #[test]
    fn joins_need_a_shared_protocol_and_v4_joins_get_an_id_first() {
        let mut g = ClassicGroup::default();
        let mut first = join("", &["range"]);
        first.require_known_member_id = true;
        let Ok(JoinOutcome::MemberIdRequired(id)) = g.join(first, 0) else {
            panic!()
        };
        let (a, _) = parked(g.join(join(&id, &["range"]), 1));
        assert_eq!(a, id);
        assert_eq!(
            g.join(join("", &["sticky"]), 2).unwrap_err(),
            ErrorCode::InconsistentGroupProtocol
        );
        assert_eq!(
            g.join(join("nobody", &["range"]), 3).unwrap_err(),
            ErrorCode::UnknownMemberId
        );
    }

    /// Two members, a and b, stable in generation 1 with `a`'s session.
    fn stable_pair(a_session_ms: i64) -> (ClassicGroup, String, String) {
        let mut g = ClassicGroup::default();
        let mut first = join("", &["range"]);
        first.session_timeout_ms = a_session_ms;
        let (a, _) = parked(g.join(first, 0));
        let (b, _) = parked(g.join(join("", &["range"]), 1));
        let mut again = join(&a, &["range"]);
        again.session_timeout_ms = a_session_ms;
        parked(g.join(again, 2));
        assert_eq!(g.state(), State::CompletingRebalance);
        g.sync(&b, 2, vec![], 3).unwrap();
        g.sync(&a, 2, vec![], 3).unwrap();
        assert_eq!((g.state(), g.generation()), (State::Stable, 2));
        (g, a, b)
    }

    /// As Kafka: consumers commit as their partitions are revoked, while
    /// the group rebalances; that generation's commits are taken until the
    /// next one is formed.
    #[test]
    fn commits_of_the_current_generation_are_taken_while_members_rejoin() {
        let (mut g, a, b) = stable_pair(10_000);
        parked(g.join(join(&b, &["range", "roundrobin"]), 10));
        assert_eq!(g.state(), State::PreparingRebalance);
        assert_eq!(g.check_commit(&a, 2, 11), Ok(()));
        parked(g.join(join(&a, &["range"]), 12));
        assert_eq!(g.state(), State::CompletingRebalance);
        assert_eq!(
            g.check_commit(&a, 3, 13),
            Err(ErrorCode::RebalanceInProgress)
        );
    }

    /// A member's session runs from the answer to its join: one that
    /// rejoined early is not expired while a slower one takes its time.
    #[test]
    fn a_member_that_rejoined_early_outlives_a_slow_rebalance() {
        let (mut g, a, b) = stable_pair(1_000);
        let mut early = join(&a, &["range"]);
        early.session_timeout_ms = 1_000;
        parked(g.join(early, 100));
        // b takes 4 s, within the rebalance timeout, past a's session.
        parked(g.join(join(&b, &["range"]), 4_100));
        assert_eq!(g.state(), State::CompletingRebalance);
        g.tick(4_500);
        assert_eq!(g.describe().len(), 2, "a expired before its sync");
        assert!(g.sync(&a, 3, vec![], 4_600).is_ok());
    }

    /// A static member's place taken by a new process of the instance:
    /// the old process is fenced on every call (FENCED_INSTANCE_ID), and
    /// an admin removes the member by its instance id alone.
    #[test]
    fn a_static_members_old_process_is_fenced_and_an_admin_removes_it() {
        let mut g = ClassicGroup::default();
        let first = static_join("", &["range"], "i1");
        let (old, _) = parked(g.join(first.clone(), 0));
        g.sync(&old, 1, vec![(old.clone(), vec![1])], 1).unwrap();
        let (new, _) = parked(g.join(first, 2));
        assert_ne!(new, old);
        assert_eq!(
            g.check_instance(&old, Some("i1")),
            Err(ErrorCode::FencedInstanceId)
        );
        assert_eq!(g.check_instance(&new, Some("i1")), Ok(()));
        let zombie = static_join(&old, &["range"], "i1");
        assert_eq!(g.join(zombie, 3).unwrap_err(), ErrorCode::FencedInstanceId);
        assert_eq!(
            g.leave(&old, Some("i1"), 4).unwrap_err(),
            ErrorCode::FencedInstanceId
        );
        g.leave("", Some("i1"), 5).unwrap();
        assert!(g.is_empty());
    }

    /// As Kafka (KIP-345): a static member's new process, or a member
    /// joining again with what it had, takes its place in a stable group
    /// with no rebalance, and syncs for the assignment it had; a change of
    /// its protocols rebalances.
    #[test]
    fn a_member_joining_again_unchanged_keeps_its_place_without_a_rebalance() {
        let mut g = ClassicGroup::default();
        let (a, _) = parked(g.join(join("", &["range"]), 0));
        let first = static_join("", &["range"], "i1");
        let (old, _) = parked(g.join(first.clone(), 1));
        parked(g.join(join(&a, &["range"]), 2));
        g.sync(&old, 2, vec![], 3).unwrap();
        let assigned = vec![(a.clone(), b"A".to_vec()), (old.clone(), b"I".to_vec())];
        g.sync(&a, 2, assigned, 3).unwrap();
        assert_eq!((g.state(), g.generation()), (State::Stable, 2));

        let (new, answers) = parked(g.join(first, 10));
        assert_ne!(new, old);
        let joined = answers.joins.iter().find(|(id, _)| *id == new);
        let joined = joined.and_then(|(_, j)| j.clone().ok()).expect("answered");
        assert_eq!((joined.generation, joined.leader.as_str()), (2, a.as_str()));
        assert_eq!((g.state(), g.generation()), (State::Stable, 2));
        assert_eq!(g.heartbeat(&a, 2, 11), Ok(()), "the leader goes on");
        assert_eq!(
            g.sync(&new, 2, vec![], 12),
            Ok(SyncOutcome::Assigned(b"I".to_vec()))
        );
        let again = static_join(&new, &["range"], "i1");
        let (_, answers) = parked(g.join(again, 13));
        assert_eq!(answers.joins.len(), 1, "a known member, unchanged");
        assert_eq!(g.state(), State::Stable);

        let changed = static_join(&new, &["range", "roundrobin"], "i1");
        parked(g.join(changed, 14));
        assert_eq!(g.state(), State::PreparingRebalance);
    }

    #[test]
    fn a_sync_naming_another_protocol_is_refused() {
        let (g, _a, _b) = stable_pair(10_000);
        assert_eq!(g.check_protocol(Some("consumer"), Some("range")), Ok(()));
        assert_eq!(g.check_protocol(None, None), Ok(()));
        assert_eq!(
            g.check_protocol(Some("consumer"), Some("roundrobin")),
            Err(ErrorCode::InconsistentGroupProtocol)
        );
        assert_eq!(
            g.check_protocol(Some("connect"), None),
            Err(ErrorCode::InconsistentGroupProtocol)
        );
    }

    /// A member given an id (MEMBER_ID_REQUIRED) that never joins with it
    /// is no member: not described, not heard, and its expiry does not
    /// rebalance a stable group.
    #[test]
    fn a_pending_member_that_never_returns_changes_nothing() {
        let (mut g, a, b) = stable_pair(10_000);
        let mut first = join("", &["range"]);
        first.require_known_member_id = true;
        let Ok(JoinOutcome::MemberIdRequired(pending)) = g.join(first, 10) else {
            panic!()
        };
        assert_eq!(g.describe().len(), 2);
        assert_eq!(
            g.heartbeat(&pending, 2, 11),
            Err(ErrorCode::UnknownMemberId)
        );
        assert_eq!(g.heartbeat(&a, 2, 9_000), Ok(()));
        assert_eq!(g.heartbeat(&b, 2, 9_000), Ok(()));
        g.tick(10_020);
        assert_eq!((g.state(), g.generation()), (State::Stable, 2));
        assert_eq!(g.heartbeat(&a, 2, 10_030), Ok(()));
    }

    /// A member that lost its join's answer while the group waits for the
    /// leader's assignment gets it again, the leader with every member;
    /// the rebalance is not started over.
    #[test]
    fn a_join_answer_lost_is_given_again_while_the_leader_assigns() {
        let (mut g, a, b) = stable_pair(10_000);
        parked(g.join(join(&b, &["range", "roundrobin"]), 10));
        parked(g.join(join(&a, &["range"]), 11));
        assert_eq!((g.state(), g.generation()), (State::CompletingRebalance, 3));
        let (_, answers) = parked(g.join(join(&b, &["range", "roundrobin"]), 12));
        let again = answers.joins[0].1.clone().unwrap();
        assert_eq!((again.generation, again.leader.as_str()), (3, a.as_str()));
        let (_, answers) = parked(g.join(join(&a, &["range"]), 13));
        assert_eq!(answers.joins[0].1.clone().unwrap().members.len(), 2);
        assert_eq!((g.state(), g.generation()), (State::CompletingRebalance, 3));
    }

    /// A known member that joins again under another instance id (or none)
    /// is not answered as unchanged: its place is not silently renamed.
    #[test]
    fn a_member_changing_its_instance_id_rebalances() {
        let (mut g, _a, b) = stable_pair(10_000);
        let renamed = static_join(&b, &["range"], "other");
        parked(g.join(renamed, 10));
        assert_eq!(g.state(), State::PreparingRebalance);
    }

    /// The leader's new process, static, takes its place too, told the
    /// old id leads so that it syncs as a follower (as Kafka).
    #[test]
    fn a_static_leaders_new_process_keeps_its_place_as_a_follower_would() {
        let mut g = ClassicGroup::default();
        let first = static_join("", &["range"], "lead");
        let (old, _) = parked(g.join(first.clone(), 0));
        g.sync(&old, 1, vec![(old.clone(), b"L".to_vec())], 1)
            .unwrap();
        let (new, answers) = parked(g.join(first, 2));
        let joined = answers.joins[0].1.clone().unwrap();
        assert_eq!((joined.generation, joined.leader), (1, old));
        assert!(joined.members.is_empty());
        assert_eq!((g.state(), g.generation()), (State::Stable, 1));
        assert_eq!(
            g.sync(&new, 1, vec![], 3),
            Ok(SyncOutcome::Assigned(b"L".to_vec()))
        );
    }

    /// The group is rebuilt empty when dropped or when its coordinator
    /// moves; a member fenced before must not pass for the new one.
    #[test]
    fn a_fenced_member_is_unknown_to_the_group_rebuilt_after_it() {
        let mut old = ClassicGroup::default();
        let (zombie, _) = parked(old.join(join("", &["range"]), 0));
        let mut rebuilt = ClassicGroup::default();
        let (fresh, _) = parked(rebuilt.join(join("", &["range"]), 0));
        rebuilt
            .sync(&fresh, 1, vec![(fresh.clone(), vec![1])], 1)
            .unwrap();
        assert_eq!(rebuilt.generation(), 1);
        assert_eq!(
            rebuilt.heartbeat(&zombie, 1, 2),
            Err(ErrorCode::UnknownMemberId)
        );
        assert_eq!(
            rebuilt.check_commit(&zombie, 1, 2),
            Err(ErrorCode::UnknownMemberId)
        );
        assert!(fresh.starts_with("c-"), "named after its client: {fresh}");
    }

    #[test]
    fn a_silent_member_expires_after_its_session() {
        let mut g = ClassicGroup::default();
        let (a, _) = parked(g.join(join("", &["range"]), 0));
        g.sync(&a, 1, vec![], 1).unwrap();
        g.tick(10_000);
        assert_eq!(g.describe().len(), 1, "within its session");
        g.tick(10_002);
        assert!(g.is_empty());
        assert_eq!(g.state(), State::Empty);
    }
}
