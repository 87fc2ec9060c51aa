//! Kafka's Metadata: the brokers (the cluster's nodes at their Kafka
//! listeners), the topics with their Kafka ids, and each partition's
//! leader, leader epoch, replicas and in-sync replicas; and DescribeCluster,
//! the same brokers and controller.

use super::{str_bytes, text};
use crate::api::admin::{NODE_ID, partition_info};
use crate::config::{KafkaBrokers, SHARD_BROKERS_PER_NODE};
use crate::group::OFFSETS_TOPIC;
use crate::shard::Shard;
use fjord_net::ErrorCode;
use fjord_net::kafka::kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use fjord_net::kafka::kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use fjord_net::kafka::kafka_protocol::messages::metadata_request::MetadataRequest;
use fjord_net::kafka::kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use fjord_net::kafka::kafka_protocol::messages::{BrokerId, TopicName};
use fjord_replication::metadata::{ClusterMetadata, TopicMeta};
use uuid::Uuid;

/// The high half of every topic's Kafka id ("fjord" and a format number):
/// the low half is Fjord's topic id, unique for the cluster's lifetime, so
/// the id is stable across restarts and differs for a re-created topic.
const TOPIC_UUID_HIGH: u64 = u64::from_be_bytes(*b"fjord\0\0\x01");

/// A topic's Kafka id, derived from Fjord's.
pub(crate) fn topic_uuid(topic_id: u64) -> Uuid {
    Uuid::from_u64_pair(TOPIC_UUID_HIGH, topic_id)
}

/// Kafka's cluster id as Metadata and DescribeCluster give it. The same on
/// every node (a data directory's `fjord.id` names one node, not the
/// cluster), and stable across restarts.
const CLUSTER_ID: &str = "fjord";

pub(super) fn metadata(shard: &Shard, request: MetadataRequest, version: i16) -> MetadataResponse {
    let metadata = shard.metadata();
    let wanted: Vec<(Option<String>, Uuid)> = match request.topics {
        // v0 asks for every topic with an empty list, later versions with
        // none.
        None => all(&metadata),
        Some(topics) if topics.is_empty() && version == 0 => all(&metadata),
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.name.map(|n| text(&n)), t.topic_id))
            .collect(),
    };
    let topics = wanted
        .into_iter()
        .map(|(name, id)| {
            // v10+ may name a topic by id alone.
            let name = name.or_else(|| {
                metadata
                    .topics
                    .iter()
                    .find(|(_, t)| topic_uuid(t.id) == id)
                    .map(|(n, _)| n.clone())
            });
            let found = name
                .as_ref()
                .and_then(|n| metadata.topics.get(n).map(|t| (n, t)));
            match found {
                Some((name, topic)) => describe(shard, &metadata, name, topic),
                None => MetadataResponseTopic::default()
                    .with_error_code(ErrorCode::UnknownTopicOrPartition.code())
                    .with_name(name.map(|n| TopicName(str_bytes(n))))
                    .with_topic_id(id),
            }
        })
        .collect();
    let brokers = brokers(shard, &metadata)
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(str_bytes(host))
                .with_port(i32::from(port))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(CLUSTER_ID)))
        .with_controller_id(BrokerId(controller(shard, &metadata)))
        .with_topics(topics)
}

/// DescribeCluster's endpoint type for brokers (2 asks for controllers,
/// which a broker does not list: Kafka's UNSUPPORTED_ENDPOINT_TYPE).
const ENDPOINT_BROKERS: i8 = 1;

/// Kafka's DescribeCluster: the brokers and the controller as Metadata
/// gives them.
pub(super) fn describe_cluster(
    shard: &Shard,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let response = DescribeClusterResponse::default()
        .with_endpoint_type(request.endpoint_type)
        .with_cluster_id(str_bytes(CLUSTER_ID));
    if request.endpoint_type != ENDPOINT_BROKERS {
        return response
            .with_error_code(ErrorCode::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes("Fjord's brokers list brokers only")));
    }
    let metadata = shard.metadata();
    let brokers = brokers(shard, &metadata)
        .into_iter()
        .map(|(id, host, port)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id))
                .with_host(str_bytes(host))
                .with_port(i32::from(port))
        })
        .collect();
    response
        .with_controller_id(BrokerId(controller(shard, &metadata)))
        .with_brokers(brokers)
}

/// The controller's node id as Kafka clients see it (-1: none known).
fn controller(shard: &Shard, metadata: &ClusterMetadata) -> i32 {
    if metadata.nodes.is_empty() {
        NODE_ID
    } else {
        shard.controller_node().map_or(-1, |n| n as i32)
    }
}

fn all(metadata: &ClusterMetadata) -> Vec<(Option<String>, Uuid)> {
    metadata
        .topics
        .iter()
        .map(|(name, t)| (Some(name.clone()), topic_uuid(t.id)))
        .collect()
}

fn describe(
    shard: &Shard,
    metadata: &ClusterMetadata,
    name: &str,
    topic: &TopicMeta,
) -> MetadataResponseTopic {
    let live = shard.live_nodes();
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(p, meta)| {
            let info = partition_info(shard, metadata, topic.id, p, meta);
            // Each replica as (node, shard index on it).
            let replicas: Vec<(i32, u16)> = if meta.replicas.is_empty() {
                vec![(NODE_ID, info.shard)]
            } else {
                meta.hosts()
                    .map(|r| (r.node as i32, data_shard(metadata, r.node, r.shard)))
                    .collect()
            };
            // In sync, as far as this node knows: the replicas it hears
            // from (the leader alone knows each one's lag).
            let in_sync: Vec<i32> = replicas
                .iter()
                .filter(|&&(node, _)| meta.replicas.is_empty() || live.contains(&(node as u32)))
                .map(|&(node, index)| broker_id(shard, node, index))
                .collect();
            let leader = match info.leader {
                -1 => -1,
                node => broker_id(shard, node, info.shard),
            };
            MetadataResponsePartition::default()
                .with_error_code(info.error_code)
                .with_partition_index(info.partition)
                .with_leader_id(BrokerId(leader))
                .with_leader_epoch(info.leader_epoch)
                .with_replica_nodes(
                    replicas
                        .iter()
                        .map(|&(node, index)| BrokerId(broker_id(shard, node, index)))
                        .collect(),
                )
                .with_isr_nodes(in_sync.into_iter().map(BrokerId).collect())
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(name))))
        .with_topic_id(topic_uuid(topic.id))
        .with_is_internal(name == OFFSETS_TOPIC)
        .with_partitions(partitions)
}

/// The shard index on `node` that hosts a replica placed on its data shard
/// `assigned` (kept modulo the node's data shards, as the node does).
fn data_shard(metadata: &ClusterMetadata, node: u32, assigned: u16) -> u16 {
    metadata
        .nodes
        .get(&node)
        .map_or(assigned, |n| n.data_shard(assigned))
}

/// The Kafka broker id of shard `index` of `node`: the node's own id when
/// Kafka clients see a broker per node.
pub(super) fn broker_id(shard: &Shard, node: i32, index: u16) -> i32 {
    match shard.config.kafka_brokers {
        KafkaBrokers::Node => node,
        KafkaBrokers::Shard => node * SHARD_BROKERS_PER_NODE + i32::from(index),
    }
}

/// Every broker Kafka clients may use, as `(id, host, port)`: each node
/// with a Kafka listener, or each data shard of each node.
pub(super) fn brokers(shard: &Shard, metadata: &ClusterMetadata) -> Vec<(i32, String, u16)> {
    // (node id, its first data shard, its data shards)
    let nodes: Vec<(u32, u16, u16)> = if metadata.nodes.is_empty() {
        let first = u16::try_from(shard.owner(0)).unwrap_or(0);
        vec![(NODE_ID as u32, first, shard.data_shards())]
    } else {
        metadata
            .nodes
            .values()
            .map(|n| (n.id, n.first_data_shard, n.data_shards))
            .collect()
    };
    let mut brokers = Vec::new();
    for (node, first, count) in nodes {
        let shards = match shard.config.kafka_brokers {
            KafkaBrokers::Node => first..first + 1,
            KafkaBrokers::Shard => first..first + count,
        };
        for index in shards {
            if let Some((host, port)) = kafka_address(shard, metadata, node, index) {
                brokers.push((broker_id(shard, node as i32, index), host, port));
            }
        }
    }
    brokers
}

/// Where Kafka clients reach shard `index` of node `id` (with a broker per
/// node, any shard of it): this node's from its settings, another's as it
/// registered it. A node that registered no shard ports is reached at its
/// listener, whose shards forward.
pub(super) fn kafka_address(
    shard: &Shard,
    metadata: &ClusterMetadata,
    id: u32,
    index: u16,
) -> Option<(String, u16)> {
    let (host, port, shard_ports) = if metadata.nodes.is_empty() || id == shard.node_id() {
        let (host, port) = shard.config.kafka_advertised()?;
        (host, port, shard.kafka_shard_ports.as_slice())
    } else {
        let l = metadata.kafka_listeners.get(&id)?;
        (l.host.clone(), l.port, l.shard_ports.as_slice())
    };
    let port = match shard.config.kafka_brokers {
        KafkaBrokers::Node => port,
        KafkaBrokers::Shard => shard_ports.get(usize::from(index)).copied().unwrap_or(port),
    };
    Some((host, port))
}

/// How often shard 0 of a cluster node checks that the metadata has its
/// Kafka listener.
const REGISTER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps this node's Kafka listener registered in the cluster metadata
/// (shard 0 of a cluster node with a Kafka listener): once the node is
/// registered, and whenever its entry is missing or stale, it proposes the
/// listener through the controller.
pub(crate) async fn register_listener(shard: std::rc::Rc<Shard>) {
    use fjord_replication::control::Proposal;
    use fjord_replication::metadata::{Command, KafkaListener};
    let Some((host, port)) = shard.config.kafka_advertised() else {
        return;
    };
    let me = KafkaListener {
        node: shard.node_id(),
        host,
        port,
        shard_ports: shard.kafka_shard_ports.clone(),
    };
    let failures = crate::logging::Repeated::default();
    while !shard.closing.get() {
        let metadata = shard.metadata();
        let due = metadata.nodes.contains_key(&me.node)
            && metadata.kafka_listeners.get(&me.node) != Some(&me);
        if due {
            let command = Command::RegisterKafkaListener(Box::new(me.clone()));
            match shard.command(Proposal::of(command)).await {
                Ok(_) => {
                    tracing::info!(shard = shard.id, host = %me.host, port = me.port, "Kafka listener registered")
                }
                Err(e) => {
                    if let Some(count) = failures.hit() {
                        tracing::warn!(shard = shard.id, error = %e, failures = count, "cannot register the Kafka listener yet");
                    }
                }
            }
        }
        glommio::timer::sleep(REGISTER_EVERY).await;
    }
}
