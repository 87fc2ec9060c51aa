//! Metadata and topic administration: Metadata, CreateTopics, DeleteTopics,
//! CreatePartitions, DescribeTopics, AlterConfigs, MovePartitions.

use super::{Reply, code};
use crate::controller::CommandError;
use crate::mesh::NotServed;
use crate::shard::Shard;
use fjord_core::TopicError;
use fjord_net::{ErrorCode, wire};
use fjord_replication::control::Proposal;
use fjord_replication::metadata::{
    AlterTopicConfig, Command, CreatePartitions, CreateTopic, MetadataError, MovePartition,
    SHARD_ANY, TopicMeta,
};
use fjord_replication::placement::Replica;

/// The node's id on a node of its own.
pub const NODE_ID: i32 = 0;

pub(super) fn metadata(
    shard: &Shard,
    correlation_id: u32,
    request: wire::MetadataRequestT,
) -> Reply {
    let metadata = shard.metadata();
    let names: Vec<String> = match request.topics {
        Some(names) => names,
        None => metadata.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|name| match metadata.topics.get(&name) {
            Some(topic) => wire::TopicInfoT {
                name: Some(name.clone()),
                error_code: 0,
                partitions: Some(
                    topic
                        .partitions
                        .iter()
                        .enumerate()
                        .map(|(p, meta)| partition_info(shard, &metadata, topic.id, p, meta))
                        .collect(),
                ),
            },
            None => wire::TopicInfoT {
                name: Some(name),
                error_code: ErrorCode::UnknownTopicOrPartition.code(),
                partitions: None,
            },
        })
        .collect();
    let (brokers, controller) = if metadata.nodes.is_empty() {
        let broker = wire::BrokerInfoT {
            node_id: NODE_ID,
            host: Some(shard.config.advertised_host()),
            port: shard.config.advertised().port(),
            shard_ports: Some(shard.shard_ports.clone()),
            alive: true,
        };
        (vec![broker], NODE_ID)
    } else {
        let live = shard.live_nodes();
        let brokers = metadata
            .nodes
            .values()
            .map(|n| wire::BrokerInfoT {
                node_id: n.id as i32,
                host: Some(n.host.clone()),
                port: n.port,
                shard_ports: Some(n.shard_ports.clone()),
                alive: live.contains(&n.id),
            })
            .collect();
        let controller = shard.controller_node().map_or(-1, |n| n as i32);
        (brokers, controller)
    };
    let body = wire::MetadataResponseT {
        brokers: Some(brokers),
        topics: Some(topics),
        controller,
    };
    Reply::body(
        correlation_id,
        wire::ResponseT::MetadataResponse(Box::new(body)),
    )
}

/// A partition's leader and where it is served: on a node of its own, the
/// owning shard; replicated, the leader as last heard, on the shard that
/// holds its replica (`LEADER_NOT_AVAILABLE` while none is known).
pub(crate) fn partition_info(
    shard: &Shard,
    metadata: &fjord_replication::metadata::ClusterMetadata,
    topic_id: u64,
    p: usize,
    meta: &fjord_replication::metadata::PartitionMeta,
) -> wire::PartitionInfoT {
    if meta.replicas.is_empty() {
        return wire::PartitionInfoT {
            partition: p as i32,
            error_code: 0,
            leader: NODE_ID,
            shard: shard.owner(meta.shard) as u16,
            leader_epoch: meta.leader_epoch,
            replicas: None,
        };
    }
    // During a move, the replicas being added too (as Kafka lists them).
    let replicas = Some(meta.hosts().map(|r| r.node as i32).collect());
    let group = fjord_replication::control::group_id(topic_id, p as u32);
    let known = shard.leader_of(group).and_then(|report| {
        let leader = report.leader?;
        let replica = meta.hosts().find(|r| r.node == leader)?;
        let index = metadata.nodes.get(&leader)?.data_shard(replica.shard);
        Some((leader, index, report.term))
    });
    match known {
        Some((leader, index, term)) => wire::PartitionInfoT {
            partition: p as i32,
            error_code: 0,
            leader: leader as i32,
            shard: index,
            leader_epoch: i32::try_from(term).unwrap_or(i32::MAX),
            replicas,
        },
        None => wire::PartitionInfoT {
            partition: p as i32,
            error_code: ErrorCode::LeaderNotAvailable.code(),
            leader: -1,
            shard: 0,
            leader_epoch: -1,
            replicas,
        },
    }
}

pub(super) async fn create_topics(
    shard: &Shard,
    correlation_id: u32,
    request: wire::CreateTopicsRequestT,
) -> Reply {
    let mut results = Vec::new();
    for topic in request.topics.unwrap_or_default() {
        let name = topic.name.unwrap_or_default();
        let configs = config_pairs(topic.configs);
        let (error_code, error_message) = create_topic(
            shard,
            &name,
            i64::from(topic.partitions),
            i32::from(topic.replication_factor),
            configs,
        )
        .await;
        results.push(wire::TopicResultT {
            name: Some(name),
            error_code,
            error_message,
        });
    }
    let body = wire::CreateTopicsResponseT {
        results: Some(results),
    };
    Reply::body(
        correlation_id,
        wire::ResponseT::CreateTopicsResponse(Box::new(body)),
    )
}

pub(super) async fn delete_topics(
    shard: &Shard,
    correlation_id: u32,
    request: wire::DeleteTopicsRequestT,
) -> Reply {
    let mut results = Vec::new();
    for name in request.names.unwrap_or_default() {
        let (error_code, error_message) = delete_topic(shard, &name).await;
        results.push(wire::TopicResultT {
            name: Some(name),
            error_code,
            error_message,
        });
    }
    let body = wire::DeleteTopicsResponseT {
        results: Some(results),
    };
    Reply::body(
        correlation_id,
        wire::ResponseT::DeleteTopicsResponse(Box::new(body)),
    )
}

pub(super) async fn create_partitions(
    shard: &Shard,
    correlation_id: u32,
    request: wire::CreatePartitionsRequestT,
) -> Reply {
    let mut results = Vec::new();
    for topic in request.topics.unwrap_or_default() {
        let name = topic.name.unwrap_or_default();
        let (error_code, error_message) =
            grow_topic(shard, &name, i64::from(topic.count), request.validate_only).await;
        results.push(wire::TopicResultT {
            name: Some(name),
            error_code,
            error_message,
        });
    }
    let body = wire::CreatePartitionsResponseT {
        results: Some(results),
    };
    Reply::body(
        correlation_id,
        wire::ResponseT::CreatePartitionsResponse(Box::new(body)),
    )
}

pub(super) async fn alter_configs(
    shard: &Shard,
    correlation_id: u32,
    request: wire::AlterConfigsRequestT,
) -> Reply {
    let mut results = Vec::new();
    for topic in request.topics.unwrap_or_default() {
        let name = topic.name.unwrap_or_default();
        let configs = config_pairs(topic.configs);
        let (error_code, error_message) = alter_topic_config(shard, &name, configs, false).await;
        results.push(wire::TopicResultT {
            name: Some(name),
            error_code,
            error_message,
        });
    }
    let body = wire::AlterConfigsResponseT {
        results: Some(results),
    };
    Reply::body(
        correlation_id,
        wire::ResponseT::AlterConfigsResponse(Box::new(body)),
    )
}

/// Starts replica moves; each answered once recorded by the controller.
pub(super) async fn move_partitions(
    shard: &Shard,
    correlation_id: u32,
    request: wire::MovePartitionsRequestT,
) -> Reply {
    let mut results = Vec::new();
    for the in request.moves.unwrap_or_default() {
        let topic = the.topic.unwrap_or_default();
        let replicas: Option<Vec<Replica>> = the
            .replicas
            .unwrap_or_default()
            .into_iter()
            .map(|node| {
                let node = u32::try_from(node).ok()?;
                Some(Replica {
                    node,
                    shard: SHARD_ANY,
                })
            })
            .collect();
        let outcome = match (replicas, u32::try_from(the.partition)) {
            (Some(replicas), Ok(partition)) => {
                let command = Command::MovePartition(Box::new(MovePartition {
                    topic: topic.clone(),
                    partition,
                    replicas,
                }));
                shard.command(Proposal::of(command)).await.map(|_| ())
            }
            _ => Err(CommandError::Refused(MetadataError::InvalidReplicas(
                "negative partition or node id".into(),
            ))),
        };
        let (error_code, error_message) = match outcome {
            Ok(()) => (0, None),
            Err(e) => (command_error_code(&e).code(), Some(e.to_string())),
        };
        results.push(wire::PartitionMoveResultT {
            topic: Some(topic),
            partition: the.partition,
            error_code,
            error_message,
        });
    }
    let body = wire::MovePartitionsResponseT {
        results: Some(results),
    };
    Reply::body(
        correlation_id,
        wire::ResponseT::MovePartitionsResponse(Box::new(body)),
    )
}

/// Creates a topic through the controller; the error code and message to
/// answer with (0 and none once every partition is served). A replication
/// factor of 0 or below takes the default. Native and Kafka CreateTopics.
pub(crate) async fn create_topic(
    shard: &Shard,
    name: &str,
    partitions: i64,
    replication_factor: i32,
    configs: Vec<(String, String)>,
) -> (i16, Option<String>) {
    let outcome = match u32::try_from(partitions) {
        Ok(partitions) => {
            let command = Command::CreateTopic(CreateTopic {
                name: name.to_owned(),
                partitions,
                configs,
            });
            let proposal = Proposal {
                command,
                replication_factor: u16::try_from(replication_factor).ok().filter(|&f| f > 0),
            };
            // Partitions of other topics still failing their retry are not
            // this create's news.
            shard
                .command(proposal)
                .await
                .map(|not_served| not_served.into_iter().filter(|n| n.topic == name).collect())
        }
        Err(_) => Err(MetadataError::InvalidPartitions(0).into()),
    };
    topic_outcome(outcome)
}

/// Deletes a topic through the controller; the error code and message to
/// answer with. Native and Kafka DeleteTopics.
pub(crate) async fn delete_topic(shard: &Shard, name: &str) -> (i16, Option<String>) {
    let outcome = shard
        .command(Proposal::of(Command::DeleteTopic(name.to_owned())))
        .await
        .map(|_| Vec::new());
    topic_outcome(outcome)
}

/// Grows a topic to `count` partitions through the controller (placed as at
/// creation, with the topic's replication factor); with `validate_only`,
/// checks against this shard's metadata and changes nothing. The error code
/// and message to answer with (0 and none once every new partition is
/// served). Native and Kafka CreatePartitions.
pub(crate) async fn grow_topic(
    shard: &Shard,
    name: &str,
    count: i64,
    validate_only: bool,
) -> (i16, Option<String>) {
    if name == crate::group::OFFSETS_TOPIC {
        // Groups land on its partitions by hash modulo their count: more
        // partitions would move every group's coordinator and offsets.
        return (
            ErrorCode::InvalidRequest.code(),
            Some(format!("the partition count of {name} does not change")),
        );
    }
    let Ok(count) = u32::try_from(count) else {
        return topic_outcome(Err(MetadataError::InvalidPartitions(0).into()));
    };
    let outcome = if validate_only {
        shard
            .metadata()
            .partitions_to_grow(name, count)
            .map(|_| Vec::new())
            .map_err(CommandError::Refused)
    } else {
        let command = Command::CreatePartitions(Box::new(CreatePartitions {
            topic: name.to_owned(),
            count,
            replicas: Vec::new(),
        }));
        shard
            .command(Proposal::of(command))
            .await
            .map(|not_served| not_served.into_iter().filter(|n| n.topic == name).collect())
    };
    topic_outcome(outcome)
}

/// Changes a topic's configs through the controller, all of them or none
/// (`key=value` sets, an empty value goes back to the default); with
/// `validate_only`, checks them against this shard's metadata and changes
/// nothing. The error code and message to answer with. Native AlterConfigs,
/// Kafka's AlterConfigs and IncrementalAlterConfigs.
pub(crate) async fn alter_topic_config(
    shard: &Shard,
    name: &str,
    configs: Vec<(String, String)>,
    validate_only: bool,
) -> (i16, Option<String>) {
    let alter = AlterTopicConfig {
        name: name.to_owned(),
        configs,
    };
    let outcome = if validate_only {
        shard
            .metadata()
            .altered_configs(&alter)
            .map(|_| Vec::new())
            .map_err(CommandError::Refused)
    } else {
        shard
            .command(Proposal::of(Command::AlterTopicConfig(alter)))
            .await
            .map(|_| Vec::new())
    };
    topic_outcome(outcome)
}

/// One config of a topic as describe shows it.
pub(crate) struct TopicConfigEntry {
    /// Kafka's key (one of `fjord_core::topic::CONFIG_KEYS`).
    pub key: &'static str,
    /// The effective value, in Kafka's notation.
    pub value: String,
    /// Set on the topic, rather than the default.
    pub overridden: bool,
}

/// Every config of a topic with its effective value and whether the topic
/// sets it. Native DescribeTopics and Kafka's DescribeConfigs.
pub(crate) fn topic_configs(topic: &TopicMeta) -> Vec<TopicConfigEntry> {
    topic
        .config()
        .pairs()
        .into_iter()
        .map(|(key, value)| TopicConfigEntry {
            key,
            value,
            overridden: topic.configs.iter().any(|(k, _)| k == key),
        })
        .collect()
}

/// Configs from the wire as `(key, value)` pairs.
fn config_pairs(configs: Option<Vec<wire::TopicConfigT>>) -> Vec<(String, String)> {
    configs
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.key.unwrap_or_default(), c.value.unwrap_or_default()))
        .collect()
}

fn topic_outcome(outcome: Result<Vec<NotServed>, CommandError>) -> (i16, Option<String>) {
    match outcome {
        Ok(not_served) if not_served.is_empty() => (0, None),
        // The partitions exist (the command is committed) but are not
        // served whole: never "created". Retriable: the shards retry the
        // opens.
        Ok(not_served) => (
            ErrorCode::KafkaStorageError.code(),
            Some(format!(
                "partitions created, but {}",
                NotServed::summary(&not_served)
            )),
        ),
        Err(e) => (command_error_code(&e).code(), Some(e.to_string())),
    }
}

/// Kafka's code for a command that did not commit.
pub fn command_error_code(error: &CommandError) -> ErrorCode {
    match error {
        CommandError::Refused(refused) => match refused {
            MetadataError::Topic(TopicError::InvalidName { .. }) => {
                ErrorCode::InvalidTopicException
            }
            MetadataError::Topic(_) => ErrorCode::InvalidConfig,
            MetadataError::TopicExists(_) => ErrorCode::TopicAlreadyExists,
            MetadataError::UnknownTopic(_) => ErrorCode::UnknownTopicOrPartition,
            MetadataError::InvalidPartitions(_) | MetadataError::PartitionsNotIncreased { .. } => {
                ErrorCode::InvalidPartitions
            }
            MetadataError::OutOfOrder { .. } => ErrorCode::UnknownServerError,
            MetadataError::Placement(_) => ErrorCode::InvalidReplicationFactor,
            MetadataError::InvalidReplicas(_) => ErrorCode::InvalidReplicaAssignment,
        },
        CommandError::Remote(code, _) => *code,
        CommandError::Unavailable => ErrorCode::BrokerNotAvailable,
        CommandError::Storage(_) | CommandError::OutOfRoom(_) => ErrorCode::KafkaStorageError,
    }
}

pub(super) async fn describe_topics(
    shard: &Shard,
    correlation_id: u32,
    request: wire::DescribeTopicsRequestT,
) -> Reply {
    let metadata = shard.metadata();
    let names: Vec<String> = match request.names {
        Some(names) => names,
        None => metadata.topics.keys().cloned().collect(),
    };
    let mut topics = Vec::new();
    for name in names {
        let Some(topic) = metadata.topics.get(&name) else {
            topics.push(wire::TopicDescriptionT {
                name: Some(name),
                error_code: ErrorCode::UnknownTopicOrPartition.code(),
                ..Default::default()
            });
            continue;
        };
        let configs = topic_configs(topic)
            .into_iter()
            .map(|entry| wire::TopicConfigT {
                key: Some(entry.key.to_owned()),
                value: Some(entry.value),
            })
            .collect();
        let mut partitions = Vec::new();
        for p in 0..topic.partitions.len() as i32 {
            let described = shard.describe_partition(&name, p).await;
            partitions.push(match described {
                // Read-only partitions (disk low, or a log waiting for room)
                // say so with the code produce would get; offsets are real.
                Ok(d) => wire::PartitionDescriptionT {
                    partition: p,
                    error_code: if d.read_only {
                        ErrorCode::KafkaStorageError.code()
                    } else {
                        0
                    },
                    log_start_offset: d.log_start_offset,
                    log_end_offset: d.log_end_offset,
                    size_bytes: d.size_bytes,
                    leader: d
                        .replication
                        .as_ref()
                        .map_or(-1, |r| r.leader.map_or(-1, |l| l as i32)),
                    leader_epoch: d.replication.as_ref().map_or(-1, |r| r.term as i32),
                    high_watermark: d
                        .replication
                        .as_ref()
                        .map_or(-1, |r| r.high_watermark as i64),
                    replicas: d
                        .replication
                        .as_ref()
                        .map(|r| r.replicas.iter().map(|&(n, _)| n as i32).collect()),
                    in_sync: d
                        .replication
                        .as_ref()
                        .map(|r| r.in_sync.iter().map(|&n| n as i32).collect()),
                    replica_log_ends: d.replication.as_ref().map(|r| {
                        r.replicas
                            .iter()
                            .map(|&(_, end)| end.map_or(-1, |e| e as i64))
                            .collect()
                    }),
                },
                Err(e) => wire::PartitionDescriptionT {
                    partition: p,
                    error_code: code(Err(e)),
                    log_start_offset: -1,
                    log_end_offset: -1,
                    size_bytes: -1,
                    ..Default::default()
                },
            });
        }
        topics.push(wire::TopicDescriptionT {
            name: Some(name),
            error_code: 0,
            configs: Some(configs),
            partitions: Some(partitions),
        });
    }
    let body = wire::DescribeTopicsResponseT {
        topics: Some(topics),
    };
    Reply::body(
        correlation_id,
        wire::ResponseT::DescribeTopicsResponse(Box::new(body)),
    )
}
