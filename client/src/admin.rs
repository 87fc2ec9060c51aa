//! Topic administration: create, delete, describe, list.

mod groups;
pub use groups::{
    GroupDescription, GroupListing, GroupOffset, MemberDescription, OffsetReset, ResetTo,
};

use crate::client::Client;
use crate::error::{ClientError, Result, check, error_code};
use crate::transport::Lane;
use fjord_net::{ErrorCode, wire};

/// Administers a cluster's topics.
#[derive(Clone)]
pub struct Admin {
    client: Client,
}

/// A topic's settings and partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Every config with its effective value.
    pub configs: Vec<(String, String)>,
    /// Partitions in order.
    pub partitions: Vec<PartitionDescription>,
}

/// One partition's offsets and size, and its replicas when replicated
/// (as its leader sees them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// Number.
    pub partition: i32,
    /// First offset held.
    pub log_start_offset: i64,
    /// The end consumers read to (the high watermark when replicated).
    pub log_end_offset: i64,
    /// Bytes on disk.
    pub size_bytes: i64,
    /// Set when the partition could not be described.
    pub error: Option<ErrorCode>,
    /// The leader's node id; -1 when unknown or not replicated.
    pub leader: i32,
    /// The leader epoch (Raft term); -1 when not replicated.
    pub leader_epoch: i32,
    /// Node ids of the replicas; empty when not replicated.
    pub replicas: Vec<i32>,
    /// Replicas caught up to the high watermark.
    pub in_sync: Vec<i32>,
    /// Each replica's log end, in `replicas` order (-1: unknown).
    pub replica_log_ends: Vec<i64>,
}

/// A node of the cluster, as Metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its id.
    pub id: i32,
    /// Where it listens.
    pub address: String,
    /// Its shards' own ports.
    pub shard_ports: Vec<u16>,
    /// Heard from by the controller lately.
    pub alive: bool,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Every registered node.
    pub nodes: Vec<NodeStatus>,
    /// The node that runs the controller (-1: unknown).
    pub controller: i32,
    /// Partitions each node leads.
    pub leaders: std::collections::BTreeMap<i32, usize>,
    /// Replicas each node holds.
    pub replicas: std::collections::BTreeMap<i32, usize>,
    /// `(topic, partition)` without a known leader.
    pub leaderless: Vec<(String, i32)>,
}

/// A topic in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: usize,
}

fn unexpected() -> ClientError {
    ClientError::Protocol("unexpected response type".into())
}

impl Admin {
    /// An admin over `client`.
    pub fn new(client: Client) -> Admin {
        Admin { client }
    }

    async fn ask(&self, body: wire::RequestT) -> Result<wire::ResponseT> {
        let response = self.client.ask_any(body).await?;
        Ok(response.unpack()?.0)
    }

    /// Creates a topic with `partitions` partitions and `key=value` configs,
    /// replicated as the cluster's default says.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> Result<()> {
        self.create_replicated_topic(name, partitions, None, configs)
            .await
    }

    /// Creates a topic of `replication_factor` replicas per partition
    /// (Kafka's `replication.factor`; `None`: the cluster's default).
    pub async fn create_replicated_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: Option<i16>,
        configs: &[(String, String)],
    ) -> Result<()> {
        let topic = wire::NewTopicT {
            name: Some(name.to_owned()),
            partitions,
            replication_factor: replication_factor.unwrap_or(-1),
            configs: Some(
                configs
                    .iter()
                    .map(|(k, v)| wire::TopicConfigT {
                        key: Some(k.clone()),
                        value: Some(v.clone()),
                    })
                    .collect(),
            ),
        };
        let body = wire::RequestT::CreateTopicsRequest(Box::new(wire::CreateTopicsRequestT {
            topics: Some(vec![topic]),
            timeout_ms: 30_000,
        }));
        let wire::ResponseT::CreateTopicsResponse(response) = self.ask(body).await? else {
            return Err(unexpected());
        };
        topic_result(response.results, name)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let body = wire::RequestT::DeleteTopicsRequest(Box::new(wire::DeleteTopicsRequestT {
            names: Some(vec![name.to_owned()]),
            timeout_ms: 30_000,
        }));
        let wire::ResponseT::DeleteTopicsResponse(response) = self.ask(body).await? else {
            return Err(unexpected());
        };
        topic_result(response.results, name)
    }

    /// Changes a topic's configs: `(key, value)` sets, an empty value
    /// removes the key (back to the default). All or nothing.
    pub async fn alter_topic_config(&self, name: &str, configs: &[(String, String)]) -> Result<()> {
        let configs = configs
            .iter()
            .map(|(key, value)| wire::TopicConfigT {
                key: Some(key.clone()),
                value: Some(value.clone()),
            })
            .collect();
        let body = wire::RequestT::AlterConfigsRequest(Box::new(wire::AlterConfigsRequestT {
            topics: Some(vec![wire::AlterTopicConfigsT {
                name: Some(name.to_owned()),
                configs: Some(configs),
            }]),
        }));
        let wire::ResponseT::AlterConfigsResponse(response) = self.ask(body).await? else {
            return Err(unexpected());
        };
        topic_result(response.results, name)
    }

    /// Grows a topic to `count` partitions (Kafka's CreatePartitions),
    /// placed and replicated as the topic's first ones; a count not above
    /// the current one fails with `INVALID_PARTITIONS`. Returns once every
    /// new partition is served.
    pub async fn create_partitions(&self, name: &str, count: i32) -> Result<()> {
        let body =
            wire::RequestT::CreatePartitionsRequest(Box::new(wire::CreatePartitionsRequestT {
                topics: Some(vec![wire::NewPartitionsT {
                    name: Some(name.to_owned()),
                    count,
                }]),
                validate_only: false,
            }));
        let wire::ResponseT::CreatePartitionsResponse(response) = self.ask(body).await? else {
            return Err(unexpected());
        };
        topic_result(response.results, name)
    }

    /// Moves a partition's replicas to `replicas` (node ids, preferred
    /// leader first; Kafka's AlterPartitionReassignments). Returns once the
    /// move is recorded; the partition's leader carries it out, one replica
    /// at a time — `describe_topic` shows the replicas until it is done.
    pub async fn move_partition(
        &self,
        topic: &str,
        partition: i32,
        replicas: &[i32],
    ) -> Result<()> {
        let body = wire::RequestT::MovePartitionsRequest(Box::new(wire::MovePartitionsRequestT {
            moves: Some(vec![wire::PartitionMoveT {
                topic: Some(topic.to_owned()),
                partition,
                replicas: Some(replicas.to_vec()),
            }]),
        }));
        let wire::ResponseT::MovePartitionsResponse(response) = self.ask(body).await? else {
            return Err(unexpected());
        };
        let result = response
            .results
            .into_iter()
            .flatten()
            .find(|r| r.topic.as_deref() == Some(topic) && r.partition == partition)
            .ok_or_else(|| ClientError::Protocol(format!("no result for {topic}-{partition}")))?;
        check(result.error_code, || {
            result
                .error_message
                .clone()
                .unwrap_or_else(|| format!("{topic}-{partition}"))
        })
    }

    /// A topic's configs and its partitions' offsets and sizes.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let body = wire::RequestT::DescribeTopicsRequest(Box::new(wire::DescribeTopicsRequestT {
            names: Some(vec![name.to_owned()]),
        }));
        let wire::ResponseT::DescribeTopicsResponse(response) = self.ask(body.clone()).await?
        else {
            return Err(unexpected());
        };
        let mut described = description(*response, name)?;
        // In a cluster each node describes the replicas it holds; the
        // leader's view of a partition is the whole one.
        let metadata = self.client.metadata(Some(vec![name.to_owned()])).await?;
        let brokers = metadata.brokers.unwrap_or_default();
        let mut settled = vec![brokers.len() <= 1; described.partitions.len()];
        for broker in brokers {
            if settled.iter().all(|&s| s) {
                break;
            }
            let Some(addr) = broker
                .host
                .as_deref()
                .and_then(|h| h.parse::<std::net::IpAddr>().ok())
                .map(|ip| std::net::SocketAddr::new(ip, broker.port))
            else {
                continue;
            };
            let Ok(response) = self
                .client
                .request(addr, Lane::Prompt, body.clone(), Vec::new())
                .await
            else {
                continue; // That node is away; its partitions stay as seen.
            };
            let Ok((wire::ResponseT::DescribeTopicsResponse(response), _)) = response.unpack()
            else {
                continue;
            };
            let Ok(theirs) = description(*response, name) else {
                continue;
            };
            for ((mine, theirs), settled) in described
                .partitions
                .iter_mut()
                .zip(theirs.partitions)
                .zip(settled.iter_mut())
            {
                if theirs.leader_is(broker.node_id) {
                    *mine = theirs;
                    *settled = true;
                }
            }
        }
        Ok(described)
    }

    /// The nodes, the controller, and how partitions spread over the nodes.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let metadata = self.client.metadata(None).await?;
        let nodes = metadata
            .brokers
            .into_iter()
            .flatten()
            .map(|b| NodeStatus {
                id: b.node_id,
                address: format!("{}:{}", b.host.unwrap_or_default(), b.port),
                shard_ports: b.shard_ports.unwrap_or_default(),
                alive: b.alive,
            })
            .collect();
        let mut status = ClusterStatus {
            nodes,
            controller: metadata.controller,
            leaders: Default::default(),
            replicas: Default::default(),
            leaderless: Vec::new(),
        };
        for topic in metadata.topics.into_iter().flatten() {
            let name = topic.name.unwrap_or_default();
            for p in topic.partitions.into_iter().flatten() {
                for r in p.replicas.iter().flatten() {
                    *status.replicas.entry(*r).or_default() += 1;
                }
                if p.leader >= 0 && p.error_code == 0 {
                    *status.leaders.entry(p.leader).or_default() += 1;
                } else {
                    status.leaderless.push((name.clone(), p.partition));
                }
            }
        }
        Ok(status)
    }

    /// Every topic, by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>> {
        let metadata = self.client.metadata(None).await?;
        let mut topics: Vec<TopicListing> = metadata
            .topics
            .into_iter()
            .flatten()
            .map(|t| TopicListing {
                name: t.name.unwrap_or_default(),
                partitions: t.partitions.map_or(0, |p| p.len()),
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }
}

impl PartitionDescription {
    /// Whether this is the leader's own description of the partition.
    fn leader_is(&self, node: i32) -> bool {
        self.error.is_none() && self.leader >= 0 && self.leader == node
    }
}

/// A topic's description from one node's answer.
fn description(response: wire::DescribeTopicsResponseT, name: &str) -> Result<TopicDescription> {
    let topic = response
        .topics
        .into_iter()
        .flatten()
        .find(|t| t.name.as_deref() == Some(name))
        .ok_or_else(|| ClientError::Protocol(format!("no description of {name}")))?;
    check(topic.error_code, || format!("topic {name}"))?;
    Ok(TopicDescription {
        name: name.to_owned(),
        configs: topic
            .configs
            .into_iter()
            .flatten()
            .map(|c| (c.key.unwrap_or_default(), c.value.unwrap_or_default()))
            .collect(),
        partitions: topic
            .partitions
            .into_iter()
            .flatten()
            .map(|p| PartitionDescription {
                partition: p.partition,
                log_start_offset: p.log_start_offset,
                log_end_offset: p.log_end_offset,
                size_bytes: p.size_bytes,
                error: error_code(p.error_code),
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                replicas: p.replicas.unwrap_or_default(),
                in_sync: p.in_sync.unwrap_or_default(),
                replica_log_ends: p.replica_log_ends.unwrap_or_default(),
            })
            .collect(),
    })
}

fn topic_result(results: Option<Vec<wire::TopicResultT>>, name: &str) -> Result<()> {
    let result = results
        .into_iter()
        .flatten()
        .find(|r| r.name.as_deref() == Some(name))
        .ok_or_else(|| ClientError::Protocol(format!("no result for {name}")))?;
    check(result.error_code, || {
        result
            .error_message
            .clone()
            .unwrap_or_else(|| format!("topic {name}"))
    })
}
