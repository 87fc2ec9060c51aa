//! Consumer groups for tools: list, describe (members, assignment,
//! committed offsets and lag), delete, and offsets reset — Kafka's
//! `kafka-consumer-groups.sh`.

use super::Admin;
use crate::error::{ClientError, Result};
use crate::group::{Coordinator, TopicPartition, call_node};
use fjord_net::api::topic_partitions_from_wire as from_wire;
use fjord_net::wire;
use std::collections::{BTreeMap, BTreeSet};

/// A group as `list_groups` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// Group id.
    pub group_id: String,
    /// `Empty`, `Reconciling` or `Stable`.
    pub state: String,
    /// Members now.
    pub members: usize,
    /// "consumer" (Fjord's clients, KIP-848's protocol) or "classic" (Kafka
    /// clients' JoinGroup protocol).
    pub group_type: String,
}

/// A member of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// The client's id.
    pub client_id: String,
    /// Its epoch.
    pub member_epoch: i32,
    /// What it owns now.
    pub assignment: BTreeSet<TopicPartition>,
    /// What it is moving to.
    pub target: BTreeSet<TopicPartition>,
}

/// A partition the group has committed an offset for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset.
    pub committed: i64,
    /// The partition's end (high watermark); -1 when unknown.
    pub log_end: i64,
    /// `log_end - committed`; -1 when unknown.
    pub lag: i64,
    /// The member that owns it now, if any.
    pub owner: Option<String>,
}

/// A group as `describe_group` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// `Empty`, `Reconciling` or `Stable`.
    pub state: String,
    /// The group epoch.
    pub epoch: i32,
    /// Members.
    pub members: Vec<MemberDescription>,
    /// Committed offsets, with log end and lag.
    pub offsets: Vec<GroupOffset>,
}

/// Where `reset_offsets` moves a topic's committed offsets (Kafka's
/// `--to-earliest`, `--to-latest`, `--to-offset`, `--to-datetime`,
/// `--shift-by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The log start.
    Earliest,
    /// The log end.
    Latest,
    /// This offset (clamped to the log).
    Offset(i64),
    /// The first record at or after this time (ms since the epoch), else
    /// the end.
    Timestamp(i64),
    /// The committed offset moved by this much (clamped to the log).
    ShiftBy(i64),
}

/// One partition of a reset: where it was and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetReset {
    /// Partition.
    pub partition: i32,
    /// Committed before; `None` when nothing was.
    pub before: Option<i64>,
    /// Committed after.
    pub after: i64,
}

impl Admin {
    /// Every group of the cluster: each node lists the groups it
    /// coordinates.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let body = wire::RequestT::ListGroupsRequest(Box::default());
        let mut groups = BTreeMap::new();
        for addr in self.node_addresses().await? {
            let list = match call_node(&self.client, addr, body.clone()).await {
                Ok(wire::ResponseT::ListGroupsResponse(list)) => list,
                Ok(_) => {
                    return Err(ClientError::Protocol(
                        "expected a ListGroups response".into(),
                    ));
                }
                // That node is away (a connection refused or timed out).
                Err(e) if e.is_retriable() && !matches!(e, ClientError::Broker { .. }) => continue,
                Err(e) => return Err(e),
            };
            for g in list.groups.into_iter().flatten() {
                let id = g.group_id.unwrap_or_default();
                groups.insert(
                    id.clone(),
                    GroupListing {
                        group_id: id,
                        state: g.state.unwrap_or_default(),
                        members: usize::try_from(g.members).unwrap_or(0),
                        group_type: g.group_type.unwrap_or_default(),
                    },
                );
            }
        }
        Ok(groups.into_values().collect())
    }

    /// A group's members, assignment, committed offsets and lag.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let mut coordinator = Coordinator::new(&self.client, group);
        let body = wire::RequestT::DescribeGroupsRequest(Box::new(wire::DescribeGroupsRequestT {
            group_ids: Some(vec![group.to_owned()]),
        }));
        let wire::ResponseT::DescribeGroupsResponse(described) = coordinator.call(body).await?
        else {
            return Err(ClientError::Protocol(
                "expected a DescribeGroups response".into(),
            ));
        };
        let described = described
            .groups
            .into_iter()
            .flatten()
            .next()
            .ok_or_else(|| ClientError::Protocol(format!("no description of group {group}")))?;
        let members: Vec<MemberDescription> = described
            .members
            .into_iter()
            .flatten()
            .map(|m| MemberDescription {
                member_id: m.member_id.unwrap_or_default(),
                instance_id: m.instance_id,
                client_id: m.client_id.unwrap_or_default(),
                member_epoch: m.member_epoch,
                assignment: from_wire(m.assignment.as_deref().unwrap_or_default()),
                target: from_wire(m.target.as_deref().unwrap_or_default()),
            })
            .collect();
        let committed = coordinator.committed(None).await?;
        let mut ends: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (topic, _) in committed.keys() {
            if !ends.contains_key(topic) {
                let offsets = self
                    .list_offsets(topic, fjord_net::api::LATEST)
                    .await
                    .unwrap_or_default();
                ends.insert(topic.clone(), offsets);
            }
        }
        let offsets = committed
            .iter()
            .map(|((topic, partition), c)| {
                let log_end = ends
                    .get(topic)
                    .and_then(|e| e.get(usize::try_from(*partition).ok()?).copied())
                    .unwrap_or(-1);
                let owner = members
                    .iter()
                    .find(|m| m.assignment.contains(&(topic.clone(), *partition)))
                    .map(|m| m.member_id.clone());
                GroupOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    committed: c.offset,
                    log_end,
                    lag: if log_end >= 0 {
                        (log_end - c.offset).max(0)
                    } else {
                        -1
                    },
                    owner,
                }
            })
            .collect();
        Ok(GroupDescription {
            group_id: group.to_owned(),
            state: described.state.unwrap_or_default(),
            epoch: described.group_epoch,
            members,
            offsets,
        })
    }

    /// Deletes a group without members, with its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let mut coordinator = Coordinator::new(&self.client, group);
        let body = wire::RequestT::DeleteGroupsRequest(Box::new(wire::DeleteGroupsRequestT {
            group_ids: Some(vec![group.to_owned()]),
        }));
        coordinator.call(body).await.map(|_| ())
    }

    /// Where `to` moves the group's committed offsets of `topic`'s
    /// partitions, committed when `execute` (the group must have no
    /// members, as Kafka's tool requires); a dry run otherwise.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
        execute: bool,
    ) -> Result<Vec<OffsetReset>> {
        let mut coordinator = Coordinator::new(&self.client, group);
        let committed = coordinator.committed(None).await?;
        let starts = self.list_offsets(topic, fjord_net::api::EARLIEST).await?;
        let ends = self.list_offsets(topic, fjord_net::api::LATEST).await?;
        let at = match to {
            ResetTo::Timestamp(t) => Some(self.list_offsets(topic, t).await?),
            _ => None,
        };
        let mut plan = Vec::new();
        for (p, (&start, &end)) in starts.iter().zip(&ends).enumerate() {
            let partition = p as i32;
            let before = committed
                .get(&(topic.to_owned(), partition))
                .map(|c| c.offset);
            let after = match to {
                ResetTo::Earliest => start,
                ResetTo::Latest => end,
                ResetTo::Offset(o) => o,
                ResetTo::ShiftBy(n) => before.unwrap_or(end).saturating_add(n),
                ResetTo::Timestamp(_) => match at.as_ref().and_then(|a| a.get(p)) {
                    Some(&o) if o >= 0 => o,
                    _ => end,
                },
            };
            plan.push(OffsetReset {
                partition,
                before,
                after: after.clamp(start, end),
            });
        }
        if execute {
            let offsets = plan
                .iter()
                .map(|r| ((topic.to_owned(), r.partition), r.after))
                .collect();
            coordinator.commit("", -1, &offsets).await?;
        }
        Ok(plan)
    }

    /// Every partition's offset for `timestamp` (EARLIEST, LATEST, or a
    /// time: -1 where no record is that recent), by partition.
    pub async fn list_offsets(&self, topic: &str, timestamp: i64) -> Result<Vec<i64>> {
        let routes = self.client.routes(topic).await?;
        let mut out = Vec::with_capacity(routes.partitions.len());
        for (p, route) in routes.partitions.iter().enumerate() {
            let route = route.ok_or_else(|| {
                ClientError::broker(
                    fjord_net::ErrorCode::LeaderNotAvailable,
                    format!("{topic}-{p}"),
                )
            })?;
            let (offset, _) = self
                .client
                .list_offset(route.addr, topic, p as i32, timestamp)
                .await?;
            out.push(offset);
        }
        Ok(out)
    }

    /// Every node's listener, from the metadata.
    async fn node_addresses(&self) -> Result<Vec<std::net::SocketAddr>> {
        let metadata = self.client.metadata(None).await?;
        Ok(metadata
            .brokers
            .into_iter()
            .flatten()
            .filter_map(|b| {
                let ip: std::net::IpAddr = b.host.as_deref()?.parse().ok()?;
                Some(std::net::SocketAddr::new(ip, b.port))
            })
            .collect())
    }
}
