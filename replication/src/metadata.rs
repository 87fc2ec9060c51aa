//! Cluster metadata as the controller keeps it: the nodes of the cluster,
//! topics, their partitions' replicas (or, on a node of its own, shard) and
//! their configs.
//!
//! Every change is a [`Command`] applied at a log index by
//! [`ClusterMetadata::apply`], which validates and mutates deterministically:
//! replaying the same commands always yields the same state, which is what a
//! replicated (Raft) or replayed (restart) log needs. A snapshot is the state
//! in rkyv form behind a magic and a CRC-32, so a torn or foreign file is
//! refused, never half-read.

use crate::placement::{self, Load, NodeSlots, PlacementError, Replica};
use fjord_core::{TopicConfig, TopicError, topic};
use std::collections::BTreeMap;

/// Most partitions one topic may have: a bound on what one command allocates.
pub const PARTITIONS_MAX: u32 = 10_000;

/// Version 2 added nodes and replicas, version 3 replica moves, version 4
/// the nodes' Kafka listeners, version 5 partitions' log starts; an older
/// snapshot is not read (the log it shortened is replayed instead).
const SNAPSHOT_MAGIC: &[u8; 8] = b"FJMETA05";
const SNAPSHOT_HEADER_LEN: usize = 8 + 4 + 8;

/// One partition's placement.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionMeta {
    /// The shard (core) that owns the partition on a node of its own
    /// (no replicas listed).
    pub shard: u16,
    /// Leader epoch of an unreplicated partition (replicated ones keep
    /// theirs in the Raft term).
    pub leader_epoch: i32,
    /// The replicas, preferred leader first; empty on a node of its own,
    /// where the partition is a plain log on `shard`. A replica's shard
    /// counts the node's partition-hosting shards from 0.
    pub replicas: Vec<Replica>,
    /// While the replicas move: the set they move to, preferred leader
    /// first (empty otherwise). The partition's leader takes the group
    /// there one membership change at a time and reports when it is.
    pub target: Vec<Replica>,
    /// The first offset clients may read, as Kafka's DeleteRecords set it
    /// (0: never set). Kept here, not in the partition's log, so that every
    /// replica applies it, through restarts and leader changes alike.
    pub log_start: u64,
}

impl PartitionMeta {
    /// Every replica the partition has now: the current ones, and during a
    /// move those being added.
    pub fn hosts(&self) -> impl Iterator<Item = &Replica> {
        let added = self
            .target
            .iter()
            .filter(|t| !self.replicas.iter().any(|r| r.node == t.node));
        self.replicas.iter().chain(added)
    }
}

/// A member of the cluster, as it registered.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeInfo {
    /// The node's id (`--node-id`), unique in the cluster.
    pub id: u32,
    /// The address clients and peers reach it at (`--advertise`).
    pub host: String,
    /// Its native listener port.
    pub port: u16,
    /// Each shard's own port, by shard index.
    pub shard_ports: Vec<u16>,
    /// The first shard that hosts partitions (1 when the controller shard
    /// keeps to itself).
    pub first_data_shard: u16,
    /// How many shards host partitions.
    pub data_shards: u16,
    /// Whether it runs the controller.
    pub controller: bool,
}

/// Where Kafka clients reach a node: its Kafka listener, as advertised.
/// Registered apart from [`NodeInfo`], whose archived form the logged
/// `RegisterNode` commands of earlier versions keep.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KafkaListener {
    /// The node's id.
    pub node: u32,
    /// The host clients connect to.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Each shard's own Kafka port, by shard index, when the node shows
    /// Kafka clients a broker per shard; empty otherwise.
    pub shard_ports: Vec<u16>,
}

impl NodeInfo {
    /// The index of the shard that hosts a replica placed on data shard
    /// `shard` (placements are kept modulo the shards the node runs now).
    pub fn data_shard(&self, shard: u16) -> u16 {
        self.first_data_shard + shard % self.data_shards.max(1)
    }

    /// The port of the shard that hosts a replica placed on `shard`.
    pub fn replica_port(&self, shard: u16) -> Option<u16> {
        self.shard_ports
            .get(usize::from(self.data_shard(shard)))
            .copied()
    }
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TopicMeta {
    /// Unique for the cluster's lifetime: a topic re-created under the same
    /// name is a different topic.
    pub id: u64,
    /// Partitions by number.
    pub partitions: Vec<PartitionMeta>,
    /// Configs as given, validated, in key order.
    pub configs: Vec<(String, String)>,
}

impl TopicMeta {
    /// The topic's configuration with defaults filled in.
    pub fn config(&self) -> TopicConfig {
        // Validated when the topic was created; a failure here is a bug.
        TopicConfig::from_pairs(self.configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .expect("configs validated at creation")
    }
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CreateTopic {
    /// Name, by Kafka's rules.
    pub name: String,
    /// Partition count, 1 to [`PARTITIONS_MAX`].
    pub partitions: u32,
    /// `key=value` configs, Kafka's keys.
    pub configs: Vec<(String, String)>,
}

/// A replicated topic to create, with its replicas placed by the
/// controller before the command is logged (the log records the decision,
/// so replay never depends on how placement weighed the load).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CreateReplicatedTopic {
    /// Name, by Kafka's rules.
    pub name: String,
    /// Configs, as [`CreateTopic::configs`].
    pub configs: Vec<(String, String)>,
    /// Replicas of each partition, preferred leader first.
    pub replicas: Vec<Vec<Replica>>,
}

/// A change to the metadata.
///
/// Logged commands are read back from the end of their bytes, so the
/// archived enum must keep its size: variants added later carry their
/// fields boxed (a relative pointer, smaller than `CreateTopic`).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Command {
    /// Create a topic.
    CreateTopic(CreateTopic),
    /// Delete a topic, by name, and its data.
    DeleteTopic(String),
    /// Change a topic's configs (Kafka's IncrementalAlterConfigs).
    AlterTopicConfig(AlterTopicConfig),
    /// A node joins, or comes back with new addresses.
    RegisterNode(Box<NodeInfo>),
    /// Create a topic whose partitions are replicated.
    CreateReplicatedTopic(Box<CreateReplicatedTopic>),
    /// Start moving a partition's replicas to another set.
    MovePartition(Box<MovePartition>),
    /// A partition's group has reached its move's target.
    PartitionMoved(Box<PartitionMoved>),
    /// A node's Kafka listener, registered (or changed) after its node.
    RegisterKafkaListener(Box<KafkaListener>),
    /// Grow a topic's partition count (Kafka's CreatePartitions).
    CreatePartitions(Box<CreatePartitions>),
    /// Move a partition's log start up (Kafka's DeleteRecords).
    DeleteRecords(Box<DeleteRecords>),
}

/// Records below `start` of a partition are deleted: clients read from
/// `start` on. Checked against the high watermark by the partition's leader
/// before it is proposed.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DeleteRecords {
    /// The topic.
    pub topic: String,
    /// Its id: a topic re-created meanwhile keeps its records.
    pub topic_id: u64,
    /// The partition.
    pub partition: u32,
    /// The new log start; a lower one than the partition's changes nothing.
    pub start: u64,
}

/// New partitions for a topic. Proposed with no replicas; the controller
/// places those of a replicated topic before logging, as for a create.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CreatePartitions {
    /// The topic.
    pub topic: String,
    /// Its partition count after the command, above the current one.
    pub count: u32,
    /// Replicas of each new partition, preferred leader first (a replicated
    /// topic's); empty for a topic on a node of its own.
    pub replicas: Vec<Vec<Replica>>,
}

/// Where a partition's replicas go (Kafka's AlterPartitionReassignments).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MovePartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The replicas it moves to, preferred leader first. A node that holds
    /// a replica already keeps its shard; [`SHARD_ANY`] lets the controller
    /// pick one on a new node.
    pub replicas: Vec<Replica>,
}

/// A move that is complete: the group's committed membership is the target.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionMoved {
    /// The topic.
    pub topic: String,
    /// Its id: a move of a topic deleted meanwhile does not touch a new one.
    pub topic_id: u64,
    /// The partition.
    pub partition: u32,
    /// The target reached (a later move may have replaced it).
    pub replicas: Vec<Replica>,
}

/// A shard not yet picked: the controller places the replica on the new
/// node's least loaded shard.
pub const SHARD_ANY: u16 = u16::MAX;

/// Configs to change on a topic.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AlterTopicConfig {
    /// The topic.
    pub name: String,
    /// `key=value` sets a config; an empty value removes it (back to the
    /// default). Kept this small on purpose: the archived `Command` must not
    /// outgrow `CreateTopic`, or logs written before would not read back.
    pub configs: Vec<(String, String)>,
}

impl Command {
    /// The command as a metadata-log record value (rkyv). The log's batch
    /// CRC guards it; [`Command::decode`] validates it again on replay.
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("commands always serialize")
            .into_vec()
    }

    /// A command from a metadata-log record value.
    pub fn decode(bytes: &[u8]) -> Result<Command, SnapshotError> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<Command, rkyv::rancor::Error>(&aligned)
            .map_err(|e| SnapshotError::Invalid(e.to_string()))
    }
}

/// Why a command was refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// Bad name or config.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The name is taken (Kafka: TOPIC_ALREADY_EXISTS).
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// No such topic (Kafka: UNKNOWN_TOPIC_OR_PARTITION).
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// Partition count out of range (Kafka: INVALID_PARTITIONS).
    #[error("invalid partition count {0}: must be 1 to {PARTITIONS_MAX}")]
    InvalidPartitions(u32),
    /// A topic's partition count only grows (Kafka: INVALID_PARTITIONS).
    #[error(
        "topic {topic:?} has {current} partitions: the count can only grow, not become {asked}"
    )]
    PartitionsNotIncreased {
        /// The topic.
        topic: String,
        /// Its partitions now.
        current: u32,
        /// The count asked for.
        asked: u32,
    },
    /// Replicas cannot be placed (Kafka: INVALID_REPLICATION_FACTOR).
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// A replica on a node that never registered, two replicas of one
    /// partition on one node, or no replica at all.
    #[error("invalid replicas: {0}")]
    InvalidReplicas(String),
    /// Commands must be applied in log order.
    #[error("command at index {index} applied after index {applied}")]
    OutOfOrder {
        /// The command's index.
        index: u64,
        /// The last index applied.
        applied: u64,
    },
}

/// Why a snapshot (or a logged command) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Too short, wrong magic or wrong length: not a complete snapshot.
    #[error("not a complete metadata snapshot")]
    Truncated,
    /// The CRC does not match: damaged.
    #[error("metadata snapshot CRC mismatch")]
    Corrupt,
    /// rkyv's validation refused the body (of a snapshot or a command).
    #[error("invalid metadata: {0}")]
    Invalid(String),
}

/// The controller's state.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ClusterMetadata {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Registered nodes by id (none on a node of its own).
    pub nodes: BTreeMap<u32, NodeInfo>,
    /// Shards that host partitions on each node.
    pub data_shards: u16,
    /// Each node's Kafka listener, by node id (those that have one).
    pub kafka_listeners: BTreeMap<u32, KafkaListener>,
    /// Last log index applied.
    pub applied_index: u64,
    next_topic_id: u64,
}

impl ClusterMetadata {
    /// The id the next topic created gets: every topic with a lower one was
    /// created by the commands these metadata have applied.
    pub fn next_topic_id(&self) -> u64 {
        self.next_topic_id
    }

    /// Empty metadata for nodes with `data_shards` partition-hosting shards.
    pub fn new(data_shards: u16) -> ClusterMetadata {
        assert!(data_shards > 0, "at least one shard hosts partitions");
        ClusterMetadata {
            topics: BTreeMap::new(),
            nodes: BTreeMap::new(),
            data_shards,
            kafka_listeners: BTreeMap::new(),
            applied_index: 0,
            next_topic_id: 1,
        }
    }

    /// Applies `command`, the log entry at `index`. On error nothing changes
    /// but the applied index: a refused command is still consumed.
    pub fn apply(&mut self, index: u64, command: &Command) -> Result<(), MetadataError> {
        if index <= self.applied_index {
            return Err(MetadataError::OutOfOrder {
                index,
                applied: self.applied_index,
            });
        }
        self.applied_index = index;
        match command {
            Command::CreateTopic(topic) => {
                self.create_topic(&topic.name, topic.partitions, &topic.configs)
            }
            Command::DeleteTopic(name) => self
                .topics
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| MetadataError::UnknownTopic(name.clone())),
            Command::AlterTopicConfig(alter) => self.alter_topic_config(alter),
            Command::RegisterNode(node) => {
                self.nodes.insert(node.id, (**node).clone());
                Ok(())
            }
            Command::CreateReplicatedTopic(topic) => self.create_replicated_topic(topic),
            Command::MovePartition(the) => self.move_partition(the),
            Command::PartitionMoved(the) => self.partition_moved(the),
            Command::RegisterKafkaListener(listener) => {
                self.kafka_listeners
                    .insert(listener.node, (**listener).clone());
                Ok(())
            }
            Command::CreatePartitions(add) => self.create_partitions(add),
            Command::DeleteRecords(delete) => {
                let meta = self
                    .topics
                    .get_mut(&delete.topic)
                    .filter(|t| t.id == delete.topic_id)
                    .and_then(|t| t.partitions.get_mut(delete.partition as usize))
                    .ok_or_else(|| MetadataError::UnknownTopic(delete.topic.clone()))?;
                meta.log_start = meta.log_start.max(delete.start);
                Ok(())
            }
        }
    }

    /// The partition count of `topic` now, when growing it to `count` is
    /// allowed: the check of [`Command::CreatePartitions`], of placing it,
    /// and of a validate-only request.
    pub fn partitions_to_grow(&self, topic: &str, count: u32) -> Result<u32, MetadataError> {
        let meta = self
            .topics
            .get(topic)
            .ok_or_else(|| MetadataError::UnknownTopic(topic.to_owned()))?;
        let current = u32::try_from(meta.partitions.len()).unwrap_or(u32::MAX);
        if count > PARTITIONS_MAX {
            return Err(MetadataError::InvalidPartitions(count));
        }
        if count <= current {
            return Err(MetadataError::PartitionsNotIncreased {
                topic: topic.to_owned(),
                current,
                asked: count,
            });
        }
        Ok(current)
    }

    /// Places the new partitions of a replicated topic over the registered
    /// nodes in `live` (all when `None`) with the topic's replication
    /// factor, balanced with what is placed already; the command to log.
    /// A topic on a node of its own needs no placement: `add` as it is.
    pub fn place_partitions(
        &self,
        mut add: CreatePartitions,
        live: Option<&[u32]>,
    ) -> Result<Command, MetadataError> {
        let current = self.partitions_to_grow(&add.topic, add.count)?;
        let factor = self.topics[&add.topic]
            .partitions
            .first()
            .map_or(0, |p| p.replicas.len());
        add.replicas = if factor == 0 {
            Vec::new()
        } else {
            placement::place(
                &self.live_slots(live),
                factor,
                add.count - current,
                &mut self.load(),
            )?
        };
        Ok(Command::CreatePartitions(Box::new(add)))
    }

    fn create_partitions(&mut self, add: &CreatePartitions) -> Result<(), MetadataError> {
        let current = self.partitions_to_grow(&add.topic, add.count)?;
        let topic = &self.topics[&add.topic];
        let replicated = topic.partitions.iter().any(|p| !p.replicas.is_empty());
        let new = (add.count - current) as usize;
        if replicated && add.replicas.len() != new || !replicated && !add.replicas.is_empty() {
            return Err(MetadataError::InvalidReplicas(format!(
                "{}: {} partitions to add, {} placed",
                add.topic,
                new,
                add.replicas.len()
            )));
        }
        for (i, replicas) in add.replicas.iter().enumerate() {
            self.check_replicas(current as usize + i, replicas)?;
        }
        let shards = u64::from(self.data_shards);
        let topic = self.topics.get_mut(&add.topic).expect("checked above");
        let id = topic.id;
        for p in current..add.count {
            let replicas = add
                .replicas
                .get((p - current) as usize)
                .cloned()
                .unwrap_or_default();
            topic.partitions.push(PartitionMeta {
                shard: replicas
                    .first()
                    .map_or(spread_shard(id, p, shards), |r| r.shard),
                leader_epoch: 0,
                replicas,
                target: Vec::new(),
                log_start: 0,
            });
        }
        Ok(())
    }

    /// Refuses a placement with no replica, two on one node, or one on a
    /// node that never registered.
    fn check_replicas(&self, p: usize, replicas: &[Replica]) -> Result<(), MetadataError> {
        let mut nodes: Vec<u32> = replicas.iter().map(|r| r.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if replicas.is_empty() || nodes.len() != replicas.len() {
            return Err(MetadataError::InvalidReplicas(format!(
                "partition {p}: {replicas:?}"
            )));
        }
        if let Some(r) = replicas.iter().find(|r| !self.nodes.contains_key(&r.node)) {
            return Err(MetadataError::InvalidReplicas(format!(
                "partition {p}: node {} is not registered",
                r.node
            )));
        }
        Ok(())
    }

    /// The registered nodes in `live` (all when `None`) as placement sees
    /// them.
    fn live_slots(&self, live: Option<&[u32]>) -> Vec<NodeSlots> {
        self.nodes
            .values()
            .filter(|n| live.is_none_or(|live| live.contains(&n.id)))
            .map(|n| NodeSlots {
                node: n.id,
                first_shard: 0,
                data_shards: n.data_shards.max(1),
            })
            .collect()
    }

    /// Every replica placed now, counted for placement.
    fn load(&self) -> Load {
        let mut load = Load::default();
        for topic in self.topics.values() {
            for p in &topic.partitions {
                load.add(&p.replicas);
            }
        }
        load
    }

    /// Starts a move: checks the target and records it. A move to where
    /// the replicas are is a no-op; a move while another is under way
    /// replaces its target (the leader goes on from the membership it has).
    fn move_partition(&mut self, the: &MovePartition) -> Result<(), MetadataError> {
        let invalid = |why: String| {
            Err(MetadataError::InvalidReplicas(format!(
                "{}-{}: {why}",
                the.topic, the.partition
            )))
        };
        let mut nodes: Vec<u32> = the.replicas.iter().map(|r| r.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if the.replicas.is_empty() || nodes.len() != the.replicas.len() {
            return invalid(format!("{:?} is not a set of distinct nodes", nodes));
        }
        if let Some(r) = the
            .replicas
            .iter()
            .find(|r| !self.nodes.contains_key(&r.node))
        {
            return invalid(format!("node {} is not registered", r.node));
        }
        if let Some(r) = the.replicas.iter().find(|r| r.shard == SHARD_ANY) {
            return invalid(format!("no shard picked on node {}", r.node));
        }
        let topic = self
            .topics
            .get_mut(&the.topic)
            .ok_or_else(|| MetadataError::UnknownTopic(the.topic.clone()))?;
        let Some(meta) = topic.partitions.get_mut(the.partition as usize) else {
            return invalid("no such partition".into());
        };
        if meta.replicas.is_empty() {
            return invalid("the topic is not replicated".into());
        }
        if let Some(r) = the
            .replicas
            .iter()
            .find(|t| meta.hosts().any(|h| h.node == t.node && h.shard != t.shard))
        {
            return invalid(format!("node {} keeps its replica's shard", r.node));
        }
        let same_nodes = {
            let mut current: Vec<u32> = meta.replicas.iter().map(|r| r.node).collect();
            current.sort_unstable();
            current == nodes
        };
        if same_nodes {
            // Only the order (the preferred leader) changes.
            meta.replicas = the.replicas.clone();
            meta.target.clear();
        } else {
            meta.target = the.replicas.clone();
        }
        Ok(())
    }

    /// Ends a move whose target the group reached.
    fn partition_moved(&mut self, the: &PartitionMoved) -> Result<(), MetadataError> {
        let topic = self
            .topics
            .get_mut(&the.topic)
            .filter(|t| t.id == the.topic_id)
            .ok_or_else(|| MetadataError::UnknownTopic(the.topic.clone()))?;
        let meta = topic
            .partitions
            .get_mut(the.partition as usize)
            .ok_or_else(|| MetadataError::UnknownTopic(the.topic.clone()))?;
        if meta.target != the.replicas {
            return Err(MetadataError::InvalidReplicas(format!(
                "{}-{}: the move to {:?} was replaced",
                the.topic, the.partition, the.replicas
            )));
        }
        meta.replicas = std::mem::take(&mut meta.target);
        Ok(())
    }

    /// Picks a shard for each replica of a move whose shard is
    /// [`SHARD_ANY`]: the shard the node already hosts the partition on, or
    /// its shard holding the fewest replicas. Only the controller calls it.
    pub fn place_move(&self, mut the: MovePartition) -> MovePartition {
        let hosts: Vec<Replica> = self
            .topics
            .get(&the.topic)
            .and_then(|t| t.partitions.get(the.partition as usize))
            .map(|m| m.hosts().copied().collect())
            .unwrap_or_default();
        let load = self.load();
        for r in the.replicas.iter_mut().filter(|r| r.shard == SHARD_ANY) {
            if let Some(h) = hosts.iter().find(|h| h.node == r.node) {
                r.shard = h.shard;
                continue;
            }
            let shards = self.nodes.get(&r.node).map_or(1, |n| n.data_shards.max(1));
            r.shard = (0..shards)
                .min_by_key(|&shard| load.replicas_on(r.node, shard))
                .unwrap_or(0);
        }
        the
    }

    /// The node that runs the controller, as registered.
    pub fn controller(&self) -> Option<&NodeInfo> {
        self.nodes.values().find(|n| n.controller)
    }

    /// Places the replicas of a new topic of `partitions` partitions over
    /// the registered nodes in `live` (all when `None`), balancing replicas
    /// and preferred leaders with what is placed already; the command to
    /// log. Deterministic, but only the controller calls it: the log keeps
    /// its answer.
    pub fn place_topic(
        &self,
        create: &CreateTopic,
        factor: usize,
        live: Option<&[u32]>,
    ) -> Result<Command, MetadataError> {
        if !(1..=PARTITIONS_MAX).contains(&create.partitions) {
            return Err(MetadataError::InvalidPartitions(create.partitions));
        }
        let replicas = placement::place(
            &self.live_slots(live),
            factor,
            create.partitions,
            &mut self.load(),
        )?;
        Ok(Command::CreateReplicatedTopic(Box::new(
            CreateReplicatedTopic {
                name: create.name.clone(),
                configs: create.configs.clone(),
                replicas,
            },
        )))
    }

    fn create_replicated_topic(
        &mut self,
        create: &CreateReplicatedTopic,
    ) -> Result<(), MetadataError> {
        for (p, replicas) in create.replicas.iter().enumerate() {
            self.check_replicas(p, replicas)?;
        }
        let partitions = u32::try_from(create.replicas.len()).unwrap_or(u32::MAX);
        self.create_topic(&create.name, partitions, &create.configs)?;
        let topic = self
            .topics
            .get_mut(&create.name)
            .expect("created just above");
        for (meta, replicas) in topic.partitions.iter_mut().zip(&create.replicas) {
            meta.shard = replicas[0].shard;
            meta.replicas = replicas.clone();
        }
        Ok(())
    }

    fn alter_topic_config(&mut self, alter: &AlterTopicConfig) -> Result<(), MetadataError> {
        let configs = self.altered_configs(alter)?;
        if let Some(topic) = self.topics.get_mut(&alter.name) {
            topic.configs = configs;
        }
        Ok(())
    }

    /// The configs a topic would have after `alter`, validated as a whole
    /// (as at creation), without changing anything: the check of applying
    /// [`Command::AlterTopicConfig`], and of a validate-only request.
    pub fn altered_configs(
        &self,
        alter: &AlterTopicConfig,
    ) -> Result<Vec<(String, String)>, MetadataError> {
        let topic = self
            .topics
            .get(&alter.name)
            .ok_or_else(|| MetadataError::UnknownTopic(alter.name.clone()))?;
        let mut configs: BTreeMap<String, String> = topic.configs.iter().cloned().collect();
        for (key, value) in &alter.configs {
            if value.is_empty() {
                configs.remove(key);
            } else {
                configs.insert(key.clone(), value.clone());
            }
        }
        TopicConfig::from_pairs(configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        Ok(configs.into_iter().collect())
    }

    fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        configs: &[(String, String)],
    ) -> Result<(), MetadataError> {
        topic::validate_name(name)?;
        if self.topics.contains_key(name) {
            return Err(MetadataError::TopicExists(name.to_owned()));
        }
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(MetadataError::InvalidPartitions(partitions));
        }
        TopicConfig::from_pairs(configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let mut configs = configs.to_vec();
        configs.sort();
        configs.dedup_by(|later, earlier| later.0 == earlier.0);
        let id = self.next_topic_id;
        self.next_topic_id += 1;
        let shards = u64::from(self.data_shards);
        let partitions = (0..partitions)
            .map(|p| PartitionMeta {
                shard: spread_shard(id, p, shards),
                leader_epoch: 0,
                replicas: Vec::new(),
                target: Vec::new(),
                log_start: 0,
            })
            .collect();
        self.topics.insert(
            name.to_owned(),
            TopicMeta {
                id,
                partitions,
                configs,
            },
        );
        Ok(())
    }

    /// The state as a snapshot: magic, CRC-32 of the body, body length, and
    /// the body in rkyv form.
    pub fn snapshot(&self) -> Vec<u8> {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(self).expect("metadata always serializes");
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + body.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads a snapshot written by [`ClusterMetadata::snapshot`].
    pub fn restore(bytes: &[u8]) -> Result<ClusterMetadata, SnapshotError> {
        let header = bytes
            .get(..SNAPSHOT_HEADER_LEN)
            .ok_or(SnapshotError::Truncated)?;
        if &header[..8] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::Truncated);
        }
        let crc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[12..20]);
        let body = &bytes[SNAPSHOT_HEADER_LEN..];
        if u64::from_be_bytes(len) != body.len() as u64 {
            return Err(SnapshotError::Truncated);
        }
        if crc32fast::hash(body) != crc {
            return Err(SnapshotError::Corrupt);
        }
        // rkyv reads in place and needs its alignment; a copy into an
        // aligned buffer costs nothing next to reading the file.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        rkyv::from_bytes::<ClusterMetadata, rkyv::rancor::Error>(&aligned)
            .map_err(|e| SnapshotError::Invalid(e.to_string()))
    }
}

/// The shard of partition `p` of topic `id` on a node of its own: partitions
/// spread over the shards, each topic starting one shard further on, so many
/// small topics do not all land on shard 0.
fn spread_shard(id: u64, p: u32, shards: u64) -> u16 {
    ((id + u64::from(p)) % shards) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: u32, configs: &[(&str, &str)]) -> Command {
        Command::CreateTopic(CreateTopic {
            name: name.into(),
            partitions,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        for command in [
            create("orders", 3, &[("fsync", "always")]),
            Command::DeleteTopic("orders".into()),
        ] {
            assert_eq!(Command::decode(&command.encode()).unwrap(), command);
        }
        assert!(Command::decode(b"not a command at all").is_err());
        assert!(Command::decode(&[]).is_err());
    }

    #[test]
    fn topics_are_created_spread_over_shards_and_deleted() {
        let mut meta = ClusterMetadata::new(2);
        meta.apply(
            1,
            &create(
                "orders",
                4,
                &[("retention.ms", "1000"), ("fsync", "always")],
            ),
        )
        .expect("create");
        meta.apply(2, &create("events", 1, &[])).expect("create");
        let orders = meta.topics["orders"].clone();
        assert_eq!(
            orders
                .partitions
                .iter()
                .map(|p| p.shard)
                .collect::<Vec<_>>(),
            [1, 0, 1, 0]
        );
        assert_eq!(
            meta.topics["events"].partitions[0].shard, 0,
            "the next topic starts on the next shard"
        );
        assert_eq!(orders.config().fsync, fjord_core::FsyncPolicy::Always);
        meta.apply(3, &Command::DeleteTopic("orders".into()))
            .expect("delete");
        assert!(!meta.topics.contains_key("orders"));
        meta.apply(4, &create("orders", 2, &[])).expect("re-create");
        assert_ne!(
            meta.topics["orders"].id, orders.id,
            "a re-created topic is a new topic"
        );
    }

    #[test]
    fn configs_are_altered_whole_or_not_at_all() {
        let mut meta = ClusterMetadata::new(2);
        meta.apply(
            1,
            &create("t", 1, &[("retention.ms", "60000"), ("fsync", "always")]),
        )
        .expect("create");
        let alter = |configs: &[(&str, &str)]| {
            Command::AlterTopicConfig(AlterTopicConfig {
                name: "t".into(),
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
        };
        meta.apply(2, &alter(&[("retention.bytes", "1048576"), ("fsync", "")]))
            .expect("alter");
        let config = meta.topics["t"].config();
        assert_eq!(config.retention_bytes, Some(1 << 20));
        assert_eq!(config.retention, Some(std::time::Duration::from_secs(60)));
        assert_eq!(
            config.fsync,
            TopicConfig::default().fsync,
            "removed: back to the default"
        );
        let before = meta.topics.clone();
        assert!(meta.apply(3, &alter(&[("segment.bytes", "1")])).is_err());
        assert_eq!(meta.topics, before, "an invalid change changes nothing");
        let unknown = Command::AlterTopicConfig(AlterTopicConfig {
            name: "u".into(),
            configs: vec![],
        });
        assert_eq!(
            meta.apply(4, &unknown),
            Err(MetadataError::UnknownTopic("u".into()))
        );
        assert_eq!(
            Command::decode(&alter(&[("a", "b")]).encode()),
            Ok(alter(&[("a", "b")]))
        );
    }

    #[test]
    fn the_archived_command_keeps_its_size() {
        // Logged commands are read back at the end of their bytes: a new
        // variant larger than CreateTopic would make old logs unreadable.
        assert_eq!(
            std::mem::size_of::<ArchivedCommand>(),
            std::mem::size_of::<ArchivedCreateTopic>() + 4
        );
    }

    fn node(id: u32) -> Command {
        Command::RegisterNode(Box::new(NodeInfo {
            id,
            host: "127.0.0.1".into(),
            port: 9000 + id as u16,
            shard_ports: vec![9100 + id as u16, 9200 + id as u16],
            first_data_shard: 0,
            data_shards: 2,
            controller: id == 1,
        }))
    }

    #[test]
    fn replicated_topics_are_placed_over_registered_nodes() {
        let mut meta = ClusterMetadata::new(2);
        for id in 1..=3 {
            meta.apply(u64::from(id), &node(id)).expect("register");
        }
        let Command::CreateTopic(request) = create("r", 6, &[]) else {
            unreachable!()
        };
        let placed = meta.place_topic(&request, 3, None).expect("placed");
        assert_eq!(Command::decode(&placed.encode()), Ok(placed.clone()));
        meta.apply(4, &placed).expect("create");
        let topic = &meta.topics["r"];
        assert_eq!(topic.partitions.len(), 6);
        for p in &topic.partitions {
            assert_eq!(p.replicas.len(), 3);
            assert_eq!(p.shard, p.replicas[0].shard);
        }
        let leaders: std::collections::BTreeSet<u32> = topic
            .partitions
            .iter()
            .map(|p| p.replicas[0].node)
            .collect();
        assert_eq!(leaders.len(), 3, "preferred leaders spread over the nodes");
        assert!(matches!(
            meta.place_topic(&request, 4, None),
            Err(MetadataError::Placement(_))
        ));
        assert!(matches!(
            meta.place_topic(&request, 2, Some(&[1])),
            Err(MetadataError::Placement(_))
        ));
        // A replica on an unknown node is refused, and nothing changes.
        let Command::CreateReplicatedTopic(mut bad) = placed else {
            unreachable!()
        };
        bad.name = "s".into();
        bad.replicas[0][0].node = 9;
        let before = meta.topics.clone();
        assert!(matches!(
            meta.apply(5, &Command::CreateReplicatedTopic(bad)),
            Err(MetadataError::InvalidReplicas(_))
        ));
        assert_eq!(meta.topics, before);
        assert_eq!(ClusterMetadata::restore(&meta.snapshot()), Ok(meta.clone()));
    }

    #[test]
    fn a_move_records_its_target_until_the_group_reaches_it() {
        let mut meta = ClusterMetadata::new(2);
        for id in 1..=4 {
            meta.apply(u64::from(id), &node(id)).expect("register");
        }
        let Command::CreateTopic(request) = create("m", 1, &[]) else {
            unreachable!()
        };
        let placed = meta
            .place_topic(&request, 3, Some(&[1, 2, 3]))
            .expect("placed");
        meta.apply(5, &placed).expect("create");
        let before = meta.topics["m"].partitions[0].clone();
        let mut target: Vec<Replica> = before.replicas[..2].to_vec();
        target.push(Replica {
            node: 4,
            shard: SHARD_ANY,
        });
        let the = MovePartition {
            topic: "m".into(),
            partition: 0,
            replicas: target,
        };
        // The controller picks the new node's shard; unpicked is refused.
        let unpicked = Command::MovePartition(Box::new(the.clone()));
        assert!(matches!(
            meta.apply(6, &unpicked),
            Err(MetadataError::InvalidReplicas(_))
        ));
        let the = meta.place_move(the);
        assert!(the.replicas.iter().all(|r| r.shard != SHARD_ANY));
        let command = Command::MovePartition(Box::new(the.clone()));
        assert_eq!(Command::decode(&command.encode()), Ok(command.clone()));
        meta.apply(7, &command).expect("move");
        let moving = &meta.topics["m"].partitions[0];
        assert_eq!(moving.replicas, before.replicas);
        assert_eq!(moving.target, the.replicas);
        let hosts: Vec<u32> = moving.hosts().map(|r| r.node).collect();
        assert_eq!(
            hosts.len(),
            4,
            "the old replicas and the new one: {hosts:?}"
        );
        assert_eq!(ClusterMetadata::restore(&meta.snapshot()), Ok(meta.clone()));
        // A report for another target (or topic) is refused.
        let id = meta.topics["m"].id;
        let stale = Command::PartitionMoved(Box::new(PartitionMoved {
            topic: "m".into(),
            topic_id: id,
            partition: 0,
            replicas: before.replicas.clone(),
        }));
        assert!(meta.apply(8, &stale).is_err());
        let done = Command::PartitionMoved(Box::new(PartitionMoved {
            topic: "m".into(),
            topic_id: id,
            partition: 0,
            replicas: the.replicas.clone(),
        }));
        meta.apply(9, &done).expect("moved");
        let moved = &meta.topics["m"].partitions[0];
        assert_eq!(moved.replicas, the.replicas);
        assert!(moved.target.is_empty());
        // Two replicas on one node, or an unknown node, are refused.
        let mut twice = the.clone();
        twice.replicas[1].node = twice.replicas[0].node;
        assert!(
            meta.apply(10, &Command::MovePartition(Box::new(twice)))
                .is_err()
        );
        let mut unknown = the;
        unknown.replicas[0].node = 9;
        assert!(
            meta.apply(11, &Command::MovePartition(Box::new(unknown)))
                .is_err()
        );
    }

    fn grow(topic: &str, count: u32) -> CreatePartitions {
        CreatePartitions {
            topic: topic.into(),
            count,
            replicas: Vec::new(),
        }
    }

    #[test]
    fn partitions_are_added_and_never_removed() {
        let mut meta = ClusterMetadata::new(2);
        meta.apply(1, &create("t", 2, &[])).expect("create");
        let before = meta.topics["t"].clone();
        let placed = meta.place_partitions(grow("t", 5), None).expect("placed");
        assert_eq!(placed, Command::CreatePartitions(Box::new(grow("t", 5))));
        assert_eq!(Command::decode(&placed.encode()), Ok(placed.clone()));
        meta.apply(2, &placed).expect("grow");
        let topic = &meta.topics["t"];
        assert_eq!(topic.partitions.len(), 5);
        assert_eq!(topic.partitions[..2], before.partitions[..]);
        assert_eq!(
            topic.partitions.iter().map(|p| p.shard).collect::<Vec<_>>(),
            [1, 0, 1, 0, 1],
            "spread as at creation"
        );
        let refused = [
            (
                grow("t", 5),
                MetadataError::PartitionsNotIncreased {
                    topic: "t".into(),
                    current: 5,
                    asked: 5,
                },
            ),
            (
                grow("t", 3),
                MetadataError::PartitionsNotIncreased {
                    topic: "t".into(),
                    current: 5,
                    asked: 3,
                },
            ),
            (
                grow("t", PARTITIONS_MAX + 1),
                MetadataError::InvalidPartitions(PARTITIONS_MAX + 1),
            ),
            (grow("u", 9), MetadataError::UnknownTopic("u".into())),
        ];
        let before = meta.topics.clone();
        for (i, (add, expected)) in refused.into_iter().enumerate() {
            assert_eq!(
                meta.apply(3 + i as u64, &Command::CreatePartitions(Box::new(add))),
                Err(expected)
            );
            assert_eq!(meta.topics, before);
        }
    }

    #[test]
    fn new_partitions_of_a_replicated_topic_keep_its_factor() {
        let mut meta = ClusterMetadata::new(2);
        for id in 1..=3 {
            meta.apply(u64::from(id), &node(id)).expect("register");
        }
        let Command::CreateTopic(request) = create("r", 1, &[]) else {
            unreachable!()
        };
        let placed = meta.place_topic(&request, 2, None).expect("placed");
        meta.apply(4, &placed).expect("create");
        let placed = meta.place_partitions(grow("r", 4), None).expect("placed");
        let Command::CreatePartitions(add) = &placed else {
            unreachable!()
        };
        assert_eq!(add.replicas.len(), 3);
        // Unplaced, or placed short, a replicated topic's partitions are
        // refused.
        let unplaced = Command::CreatePartitions(Box::new(grow("r", 4)));
        assert!(matches!(
            meta.apply(5, &unplaced),
            Err(MetadataError::InvalidReplicas(_))
        ));
        let mut short = add.clone();
        short.replicas.pop();
        assert!(matches!(
            meta.apply(6, &Command::CreatePartitions(short)),
            Err(MetadataError::InvalidReplicas(_))
        ));
        meta.apply(7, &placed).expect("grow");
        let topic = &meta.topics["r"];
        assert_eq!(topic.partitions.len(), 4);
        for p in &topic.partitions {
            assert_eq!(p.replicas.len(), 2, "{p:?}");
            assert_eq!(p.shard, p.replicas[0].shard);
        }
        assert!(matches!(
            meta.place_partitions(grow("r", 5), Some(&[1])),
            Err(MetadataError::Placement(_))
        ));
        assert_eq!(ClusterMetadata::restore(&meta.snapshot()), Ok(meta.clone()));
    }

    #[test]
    fn a_log_start_only_rises_and_stays_with_its_topic() {
        let mut meta = ClusterMetadata::new(2);
        meta.apply(1, &create("t", 2, &[])).expect("create");
        let id = meta.topics["t"].id;
        let delete = |partition, start, topic_id| {
            Command::DeleteRecords(Box::new(DeleteRecords {
                topic: "t".into(),
                topic_id,
                partition,
                start,
            }))
        };
        meta.apply(2, &delete(1, 40, id)).expect("delete");
        meta.apply(3, &delete(1, 30, id)).expect("a lower start");
        let starts = |meta: &ClusterMetadata| -> Vec<u64> {
            meta.topics["t"]
                .partitions
                .iter()
                .map(|p| p.log_start)
                .collect()
        };
        assert_eq!(starts(&meta), [0, 40]);
        assert_eq!(
            Command::decode(&delete(1, 40, id).encode()),
            Ok(delete(1, 40, id))
        );
        for (i, refused) in [delete(2, 1, id), delete(0, 1, id + 1)].iter().enumerate() {
            assert_eq!(
                meta.apply(4 + i as u64, refused),
                Err(MetadataError::UnknownTopic("t".into()))
            );
        }
        assert_eq!(ClusterMetadata::restore(&meta.snapshot()), Ok(meta.clone()));
        meta.apply(6, &Command::DeleteTopic("t".into()))
            .expect("delete topic");
        meta.apply(7, &create("t", 2, &[])).expect("re-create");
        assert_eq!(starts(&meta), [0, 0], "a new topic starts at 0");
    }

    #[test]
    fn refused_commands_change_nothing_but_the_index() {
        let mut meta = ClusterMetadata::new(2);
        meta.apply(1, &create("t", 1, &[])).expect("create");
        let before = meta.clone();
        let refused = [
            (create("t", 1, &[]), MetadataError::TopicExists("t".into())),
            (
                create("bad name", 1, &[]),
                MetadataError::Topic(topic::validate_name("bad name").expect_err("invalid name")),
            ),
            (create("u", 0, &[]), MetadataError::InvalidPartitions(0)),
            (
                create("u", PARTITIONS_MAX + 1, &[]),
                MetadataError::InvalidPartitions(PARTITIONS_MAX + 1),
            ),
            (
                create("u", 1, &[("segment.bytes", "1")]),
                MetadataError::Topic(
                    TopicConfig::from_pairs([("segment.bytes", "1")]).expect_err("invalid config"),
                ),
            ),
            (
                Command::DeleteTopic("nope".into()),
                MetadataError::UnknownTopic("nope".into()),
            ),
        ];
        for (i, (command, expected)) in refused.into_iter().enumerate() {
            assert_eq!(meta.apply(2 + i as u64, &command), Err(expected));
            assert_eq!(meta.topics, before.topics);
        }
        assert_eq!(
            meta.apply(3, &create("late", 1, &[])),
            Err(MetadataError::OutOfOrder {
                index: 3,
                applied: 7
            })
        );
    }

    #[test]
    fn replaying_the_same_commands_gives_the_same_state() {
        let commands = [
            create("a", 3, &[]),
            create("b", 5, &[("fsync", "never")]),
            Command::DeleteTopic("a".into()),
            create("c", 2, &[]),
        ];
        let replay = || {
            let mut meta = ClusterMetadata::new(3);
            for (i, c) in commands.iter().enumerate() {
                meta.apply(i as u64 + 1, c).expect("apply");
            }
            meta
        };
        assert_eq!(replay(), replay());
    }

    #[test]
    fn snapshots_round_trip_and_refuse_damage() {
        let mut meta = ClusterMetadata::new(2);
        meta.apply(1, &create("orders", 12, &[("retention.bytes", "1048576")]))
            .expect("create");
        meta.apply(2, &create("logs", 3, &[])).expect("create");
        let snapshot = meta.snapshot();
        assert_eq!(ClusterMetadata::restore(&snapshot), Ok(meta.clone()));
        assert_eq!(
            ClusterMetadata::restore(&snapshot[..snapshot.len() - 1]),
            Err(SnapshotError::Truncated)
        );
        assert_eq!(
            ClusterMetadata::restore(&snapshot[..10]),
            Err(SnapshotError::Truncated)
        );
        let mut flipped = snapshot.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        assert_eq!(
            ClusterMetadata::restore(&flipped),
            Err(SnapshotError::Corrupt)
        );
    }

    #[test]
    fn commands_round_trip_through_rkyv() {
        for command in [
            create("orders", 3, &[("fsync", "always")]),
            Command::DeleteTopic("orders".into()),
        ] {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&command).expect("serialize");
            let back =
                rkyv::from_bytes::<Command, rkyv::rancor::Error>(&bytes).expect("deserialize");
            assert_eq!(back, command);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_snapshot_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = ClusterMetadata::restore(&bytes);
            // With a valid frame around garbage, rkyv's validation must refuse it.
            let mut framed = SNAPSHOT_MAGIC.to_vec();
            framed.extend_from_slice(&crc32fast::hash(&bytes).to_be_bytes());
            framed.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            framed.extend_from_slice(&bytes);
            let _ = ClusterMetadata::restore(&framed);
        }
    }
}
