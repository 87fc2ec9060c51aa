//! Talking to a group's coordinator: finding it (FindCoordinator, which
//! also creates `__consumer_offsets` on first use), and sending it requests
//! again wherever it moved while it moves (a leader election of its
//! partition) — the retries Kafka's clients make on NOT_COORDINATOR,
//! COORDINATOR_NOT_AVAILABLE and COORDINATOR_LOAD_IN_PROGRESS. Plus the
//! offset commits and fetches both the consumer and the admin use.

use crate::client::Client;
use crate::error::{ClientError, Result, check};
use crate::transport::Lane;
use fjord_net::{ErrorCode, wire};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Longest a request waits for a coordinator to be found or elected.
const COORDINATOR_WAIT: Duration = Duration::from_secs(30);
/// Pause before asking again where the coordinator is.
const COORDINATOR_BACKOFF: Duration = Duration::from_millis(100);

/// A topic partition.
pub type TopicPartition = (String, i32);

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group reads.
    pub offset: i64,
    /// Leader epoch of the last record consumed, -1 when unknown.
    pub leader_epoch: i32,
    /// What the committer attached.
    pub metadata: String,
}

/// One group's coordinator, found on first use and again after it moved.
#[derive(Clone)]
pub struct Coordinator {
    client: Client,
    group: String,
    at: Option<SocketAddr>,
}

impl Coordinator {
    /// The coordinator of `group`, not looked up yet.
    pub fn new(client: &Client, group: &str) -> Coordinator {
        Coordinator {
            client: client.clone(),
            group: group.to_owned(),
            at: None,
        }
    }

    /// Where the coordinator was last found.
    pub fn address(&self) -> Option<SocketAddr> {
        self.at
    }

    /// The group's id.
    pub fn group(&self) -> &str {
        &self.group
    }

    async fn find(&self) -> Result<SocketAddr> {
        let body =
            wire::RequestT::FindCoordinatorRequest(Box::new(wire::FindCoordinatorRequestT {
                group_id: Some(self.group.clone()),
            }));
        let response = self.client.ask_any(body).await?;
        let wire::ResponseT::FindCoordinatorResponse(found) = response.unpack()?.0 else {
            return Err(ClientError::Protocol(
                "expected a FindCoordinator response".into(),
            ));
        };
        check(found.error_code, || {
            found
                .error_message
                .clone()
                .unwrap_or_else(|| format!("group {}", self.group))
        })?;
        let ip: IpAddr = found
            .host
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|_| ClientError::Protocol(format!("bad coordinator host {:?}", found.host)))?;
        Ok(SocketAddr::new(ip, found.port))
    }

    /// Sends `body` to the coordinator and returns its answer, following
    /// the coordinator while it moves, for up to 30 s.
    pub async fn call(&mut self, body: wire::RequestT) -> Result<wire::ResponseT> {
        let deadline = Instant::now() + COORDINATOR_WAIT;
        loop {
            let outcome = self.call_once(body.clone()).await;
            match outcome {
                Err(e) if moved(&e) && Instant::now() < deadline => {
                    self.at = None;
                    self.client.sleep(COORDINATOR_BACKOFF).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn call_once(&mut self, body: wire::RequestT) -> Result<wire::ResponseT> {
        let at = match self.at {
            Some(at) => at,
            None => {
                let at = self.find().await?;
                self.at = Some(at);
                at
            }
        };
        ask(&self.client, at, body, || format!("group {}", self.group)).await
    }

    /// Commits `offsets` for the group: by a member at its epoch, or (member
    /// id empty, epoch -1) by a tool on a group without members.
    pub async fn commit(
        &mut self,
        member_id: &str,
        member_epoch: i32,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        let response = self
            .call(commit_request(
                &self.group,
                member_id,
                member_epoch,
                offsets,
            ))
            .await?;
        let wire::ResponseT::OffsetCommitResponse(response) = response else {
            return Err(ClientError::Protocol(
                "expected an OffsetCommit response".into(),
            ));
        };
        for topic in response.topics.into_iter().flatten() {
            let name = topic.name.unwrap_or_default();
            for p in topic.partitions.into_iter().flatten() {
                check(p.error_code, || format!("commit of {name}-{}", p.partition))?;
            }
        }
        Ok(())
    }

    /// The group's committed offsets: of `partitions`, or all when `None`.
    pub async fn committed(
        &mut self,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<BTreeMap<TopicPartition, CommittedOffset>> {
        let topics = partitions.map(|partitions| {
            let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for (t, p) in partitions {
                by_topic.entry(t).or_default().push(*p);
            }
            by_topic
                .into_iter()
                .map(|(name, partitions)| wire::OffsetFetchTopicT {
                    name: Some(name.to_owned()),
                    partitions: Some(partitions),
                })
                .collect()
        });
        let body = wire::RequestT::OffsetFetchRequest(Box::new(wire::OffsetFetchRequestT {
            group_id: Some(self.group.clone()),
            topics,
        }));
        let wire::ResponseT::OffsetFetchResponse(response) = self.call(body).await? else {
            return Err(ClientError::Protocol(
                "expected an OffsetFetch response".into(),
            ));
        };
        let mut out = BTreeMap::new();
        for topic in response.topics.into_iter().flatten() {
            let name = topic.name.unwrap_or_default();
            for p in topic.partitions.into_iter().flatten() {
                check(p.error_code, || format!("{name}-{}", p.partition))?;
                if p.offset >= 0 {
                    out.insert(
                        (name.clone(), p.partition),
                        CommittedOffset {
                            offset: p.offset,
                            leader_epoch: p.leader_epoch,
                            metadata: p.metadata.unwrap_or_default(),
                        },
                    );
                }
            }
        }
        Ok(out)
    }
}

/// An OffsetCommit request for `offsets`.
pub fn commit_request(
    group: &str,
    member_id: &str,
    member_epoch: i32,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> wire::RequestT {
    let mut topics: Vec<wire::OffsetCommitTopicT> = Vec::new();
    for ((topic, p), offset) in offsets {
        let partition = wire::OffsetCommitPartitionT {
            partition: *p,
            offset: *offset,
            leader_epoch: -1,
            metadata: None,
        };
        match topics.last_mut() {
            Some(last) if last.name.as_deref() == Some(topic.as_str()) => {
                last.partitions.get_or_insert_default().push(partition);
            }
            _ => topics.push(wire::OffsetCommitTopicT {
                name: Some(topic.clone()),
                partitions: Some(vec![partition]),
            }),
        }
    }
    wire::RequestT::OffsetCommitRequest(Box::new(wire::OffsetCommitRequestT {
        group_id: Some(group.to_owned()),
        member_id: Some(member_id.to_owned()),
        member_epoch,
        topics: Some(topics),
    }))
}

/// Sends `body` to the node at `addr`, for the groups it coordinates
/// itself (ListGroups), and again while one of them is loading or not
/// available, for up to 30 s: Kafka's admin client retries those.
pub(crate) async fn call_node(
    client: &Client,
    addr: SocketAddr,
    body: wire::RequestT,
) -> Result<wire::ResponseT> {
    let deadline = Instant::now() + COORDINATOR_WAIT;
    loop {
        match ask(client, addr, body.clone(), || format!("node {addr}")).await {
            Err(e) if not_ready(&e) && Instant::now() < deadline => {
                client.sleep(COORDINATOR_BACKOFF).await;
            }
            outcome => return outcome,
        }
    }
}

/// Sends `body` to `addr` once; the answer, or its error as a whole
/// (`what` names whose) as an error.
async fn ask(
    client: &Client,
    addr: SocketAddr,
    body: wire::RequestT,
    what: impl FnOnce() -> String,
) -> Result<wire::ResponseT> {
    let response = client.request(addr, Lane::Prompt, body, Vec::new()).await?;
    let answer = response.unpack()?.0;
    check(top_error(&answer), what)?;
    Ok(answer)
}

/// Whether a coordinator is there but not ready yet.
fn not_ready(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Broker {
            code: ErrorCode::CoordinatorNotAvailable | ErrorCode::CoordinatorLoadInProgress,
            ..
        }
    )
}

/// Whether the coordinator moved or is not ready: ask where it is again.
fn moved(e: &ClientError) -> bool {
    if not_ready(e) {
        return true;
    }
    match e {
        ClientError::Broker { code, .. } => *code == ErrorCode::NotCoordinator,
        ClientError::Connect { .. } | ClientError::Connection { .. } | ClientError::Timeout(_) => {
            true
        }
        ClientError::Protocol(_) | ClientError::Config(_) | ClientError::Closed => false,
    }
}

/// The error of a group response as a whole.
fn top_error(body: &wire::ResponseT) -> i16 {
    use wire::ResponseT as S;
    match body {
        S::ConsumerGroupHeartbeatResponse(r) => r.error_code,
        S::OffsetCommitResponse(r) => r.error_code,
        S::OffsetFetchResponse(r) => r.error_code,
        S::ListGroupsResponse(r) => r.error_code,
        // One group per request: its error is the request's.
        S::DescribeGroupsResponse(r) => r
            .groups
            .iter()
            .flatten()
            .map(|g| g.error_code)
            .find(|&c| c != 0)
            .unwrap_or(0),
        S::DeleteGroupsResponse(r) => r
            .results
            .iter()
            .flatten()
            .map(|g| g.error_code)
            .find(|&c| c != 0)
            .unwrap_or(0),
        _ => 0,
    }
}
