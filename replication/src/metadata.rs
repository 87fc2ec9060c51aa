//! Cluster metadata as the controller keeps it: topics, their partitions'
//! shard assignment and leader epochs, and their configs.
//!
//! Every change is a [`Command`] applied at a log index by
//! [`ClusterMetadata::apply`], which validates and mutates deterministically:
//! replaying the same commands always yields the same state, which is what a
//! replicated (Raft) or replayed (restart) log needs. A snapshot is the state
//! in rkyv form behind a magic and a CRC-32, so a torn or foreign file is
//! refused, never half-read.

use fjord_core::{TopicConfig, TopicError, topic};
use std::collections::BTreeMap;

/// Most partitions one topic may have: a bound on what one command allocates.
pub const PARTITIONS_MAX: u32 = 10_000;

const SNAPSHOT_MAGIC: &[u8; 8] = b"FJMETA01";
const SNAPSHOT_HEADER_LEN: usize = 8 + 4 + 8;

/// One partition's placement.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionMeta {
    /// The shard (core) that owns the partition on every node.
    pub shard: u16,
    /// Leader epoch; becomes the Raft term with replication.
    pub leader_epoch: i32,
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

/// A change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Command {
    /// Create a topic.
    CreateTopic(CreateTopic),
    /// Delete a topic, by name, and its data.
    DeleteTopic(String),
    /// Change a topic's configs (Kafka's IncrementalAlterConfigs).
    AlterTopicConfig(AlterTopicConfig),
}

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
    /// Shards that host partitions on each node.
    pub data_shards: u16,
    /// Last log index applied.
    pub applied_index: u64,
    next_topic_id: u64,
}

impl ClusterMetadata {
    /// Empty metadata for nodes with `data_shards` partition-hosting shards.
    pub fn new(data_shards: u16) -> ClusterMetadata {
        assert!(data_shards > 0, "at least one shard hosts partitions");
        ClusterMetadata {
            topics: BTreeMap::new(),
            data_shards,
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
        }
    }

    fn alter_topic_config(&mut self, alter: &AlterTopicConfig) -> Result<(), MetadataError> {
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
        // Validated as a whole, as at creation: an invalid result changes nothing.
        TopicConfig::from_pairs(configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        if let Some(topic) = self.topics.get_mut(&alter.name) {
            topic.configs = configs.into_iter().collect();
        }
        Ok(())
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
        // Spread partitions over the shards, each topic starting one shard
        // further on, so many small topics do not all land on shard 0.
        let shards = u64::from(self.data_shards);
        let partitions = (0..u64::from(partitions))
            .map(|p| PartitionMeta {
                shard: ((id + p) % shards) as u16,
                leader_epoch: 0,
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
