//! `fjord serve`'s settings: defaults that work on a laptop, overridden by a
//! TOML file, overridden by flags. Every key of the file is also a flag.

use crate::logging::LogFormat;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The default native port: Kafka's listener keeps 9092, so the native
/// protocol takes the next one.
pub const DEFAULT_PORT: u16 = 9093;
/// Kafka's port, where the Kafka listener takes clients by default.
pub const DEFAULT_KAFKA_PORT: u16 = 9092;
/// Redpanda's admin port, where the admin listener (metrics, health,
/// console) takes requests by default.
pub const DEFAULT_ADMIN_PORT: u16 = 9644;

/// What a broker runs with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Where partition logs and cluster metadata live.
    pub data_dir: PathBuf,
    /// The node's native listener; every shard accepts on it (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// The node's Kafka listener (every shard accepts on it, SO_REUSEPORT);
    /// `None` (`"none"` or `""` in the file or the flag): no Kafka listener.
    #[serde(deserialize_with = "optional_listen")]
    pub kafka_listen: Option<SocketAddr>,
    /// The brokers Kafka clients see: one per node, or one per shard (see
    /// [`KafkaBrokers`]).
    pub kafka_brokers: KafkaBrokers,
    /// With `kafka_brokers = "shard"`: shard `i`'s Kafka port is
    /// `kafka_shard_port_base + i`. `None` or `0`: free ports picked at
    /// start (clients learn them from Metadata).
    pub kafka_shard_port_base: Option<u16>,
    /// The node's admin HTTP listener (`/metrics`, `/health`, `/v1/…`, the
    /// console), served by shard 0; `None` (`"none"` or `""`): none.
    #[serde(deserialize_with = "optional_listen")]
    pub admin_listen: Option<SocketAddr>,
    /// Whether shards count what they serve (the admin listener's figures);
    /// off, `/metrics` shows only gauges read at scrape time.
    pub metrics: bool,
    /// Partitions a node lists one by one in `/metrics` (log offsets, size,
    /// leader, replication); past it, `/metrics` holds only per-topic sums
    /// and says how many it left out, so 10,000 partitions never become
    /// 10,000 series of each family. The JSON endpoints list them all.
    pub metrics_partitions_max: usize,
    /// First shard port: shard `i` also listens on `shard_port_base + i`.
    /// `None`: the port after `listen`'s. `0`: free ports picked at start.
    pub shard_port_base: Option<u16>,
    /// Shards (pinned cores); `None`: every core.
    pub cores: Option<usize>,
    /// The core shard 0 is pinned to; shard `i` runs on core `first_cpu + i`
    /// (modulo the machine's). Nodes sharing a machine (a local cluster)
    /// each take cores of their own instead of all piling onto core 0.
    pub first_cpu: usize,
    /// Whether the controller shard (0) also hosts partitions; `None`: only
    /// when there are two cores or fewer.
    pub controller_hosts_partitions: Option<bool>,
    /// Open connections a shard accepts; more are closed at once.
    pub max_connections_per_shard: usize,
    /// Largest request frame; larger frames close the connection.
    pub max_frame_bytes: usize,
    /// Request bytes a connection may have in flight before the broker
    /// stops reading from it (backpressure).
    pub max_inflight_bytes: usize,
    /// Per-shard batch cache for tail reads.
    pub cache_bytes_per_shard: usize,
    /// How often each shard deletes segments past their topic's retention
    /// (Kafka's `log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// A producer id whose last batch in a partition is older than this is
    /// dropped from that partition's producer state (Kafka's
    /// `producer.id.expiration.ms`); checked with retention.
    pub producer_id_expiration_ms: u64,
    /// Where each shard keeps its staging file (shared memory: it outlives
    /// the process, not the machine).
    pub staging_dir: PathBuf,
    /// Bytes of acknowledged but unwritten batches a shard may stage; when
    /// full, producers wait. 0: no staging (acks wait for the write).
    pub staging_bytes_per_shard: usize,
    /// Produce is refused while the data directory's filesystem has less
    /// free space than this (or than `disk_min_free_percent`).
    pub disk_min_free_bytes: u64,
    /// Produce is refused below this percentage of the filesystem free
    /// (0: only `disk_min_free_bytes` counts).
    pub disk_min_free_percent: u8,
    /// How often each shard samples free space.
    pub disk_check_interval_ms: u64,
    /// Space the controller keeps preallocated for metadata commands, given
    /// up when the disk is low so that a topic delete always finds room.
    pub metadata_reserve_bytes: u64,
    /// Log lines as `text` or `json`.
    pub log_format: LogFormat,
    /// This node's id in a cluster (`--node-id`); `None`: a node of its
    /// own, with unreplicated partitions, as before clusters.
    pub node_id: Option<u32>,
    /// Listeners of other nodes to join the cluster through (Kafka's
    /// bootstrap servers, for nodes): any one that is up will do.
    pub seeds: Vec<SocketAddr>,
    /// The address clients and peers reach this node at; `listen`'s when
    /// unset.
    pub advertise: Option<SocketAddr>,
    /// The nodes that run the controller (Kafka's `controller.quorum.voters`):
    /// `ID` for one, `ID@HOST:PORT` (each voter's listener) for a quorum of
    /// 3 or 5 whose metadata log is Raft group 0. Empty: this node when it
    /// has no seeds, else whichever node the seeds name.
    pub controller_voters: Vec<Voter>,
    /// A partition's followers start an election after this long without
    /// hearing from the leader (each waits a random 1–1.5× of it).
    pub election_timeout_ms: u64,
    /// The Raft clock (heartbeats go 4 times per election timeout).
    pub raft_tick_ms: u64,
    /// Replicas of a new topic when the request names none; `None`: 3 on a
    /// cluster of 3 or more nodes, else 1 (Kafka's
    /// `default.replication.factor`).
    pub default_replication_factor: Option<u16>,
    /// A replica that has not caught up with the leader for this long is
    /// not in sync (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// How often a leader that is not its partition's preferred leader
    /// hands over to it, once caught up (Kafka's
    /// `leader.imbalance.check.interval.seconds`); 0: never.
    pub leader_rebalance_interval_ms: u64,
    /// How often each shard looks for compacted topics' partitions due for
    /// cleaning (Kafka's `log.cleaner.backoff.ms`).
    pub log_cleaner_backoff_ms: u64,
    /// Disk bytes a shard's cleaning reads and writes per second at most
    /// (Kafka's `log.cleaner.io.max.bytes.per.second`), so that produce and
    /// fetch on the shard keep the disk.
    pub log_cleaner_io_bytes_per_sec: u64,
    /// Partitions of `__consumer_offsets`, made on first use (Kafka's
    /// `offsets.topic.num.partitions`); fixed once the topic exists.
    pub offsets_topic_partitions: u32,
    /// Replicas of each `__consumer_offsets` partition in a cluster
    /// (Kafka's `offsets.topic.replication.factor`): the topic is made only
    /// once this many nodes are live, so that committed offsets are never
    /// kept on fewer copies than asked for because the first consumer came
    /// early.
    pub offsets_topic_replication_factor: u16,
    /// A group member not heard from for this long leaves the group, when
    /// it names no timeout of its own (Kafka's
    /// `group.consumer.session.timeout.ms`).
    pub group_session_timeout_ms: u32,
    /// Shortest session timeout a member may ask for.
    pub group_min_session_timeout_ms: u32,
    /// Longest session timeout a member may ask for.
    pub group_max_session_timeout_ms: u32,
    /// How often members heartbeat. Partitions move between members in
    /// heartbeat steps (the owner releases, then the new member takes), so
    /// a moving partition pauses for about two of these; Kafka's default is
    /// 5 s, Fjord's shorter one costs one small request a second per member.
    pub group_heartbeat_interval_ms: u32,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            data_dir: PathBuf::from("fjord-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            kafka_listen: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_KAFKA_PORT))),
            kafka_brokers: KafkaBrokers::Node,
            kafka_shard_port_base: None,
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT))),
            metrics: true,
            metrics_partitions_max: 1000,
            shard_port_base: None,
            cores: None,
            first_cpu: 0,
            controller_hosts_partitions: None,
            max_connections_per_shard: 10_000,
            max_frame_bytes: 65 << 20,
            max_inflight_bytes: 128 << 20,
            cache_bytes_per_shard: 256 << 20,
            retention_check_interval_ms: 30_000,
            producer_id_expiration_ms: 86_400_000,
            staging_dir: PathBuf::from(fjord_storage::staging::DEFAULT_DIR),
            staging_bytes_per_shard: 128 << 20,
            disk_min_free_bytes: 256 << 20,
            disk_min_free_percent: 0,
            disk_check_interval_ms: 500,
            metadata_reserve_bytes: 8 << 20,
            log_format: LogFormat::Text,
            node_id: None,
            seeds: Vec::new(),
            advertise: None,
            controller_voters: Vec::new(),
            election_timeout_ms: 1000,
            raft_tick_ms: 50,
            default_replication_factor: None,
            replica_lag_time_max_ms: 30_000,
            leader_rebalance_interval_ms: 30_000,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_io_bytes_per_sec: 32 << 20,
            offsets_topic_partitions: 50,
            offsets_topic_replication_factor: 3,
            group_session_timeout_ms: 45_000,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 300_000,
            group_heartbeat_interval_ms: 1_000,
        }
    }
}

/// How a node shows itself to Kafka clients, which know nothing of shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KafkaBrokers {
    /// One broker per node, its id the node's, at `kafka_listen`: a
    /// connection lands on any shard, which hands each partition's request
    /// to the partition's shard over the mesh (a cross-core hop).
    #[default]
    Node,
    /// One broker per data shard, id `node × 1000 + shard`, each at a port
    /// of its own: clients send each partition's requests straight to the
    /// core that owns it, at the cost of a connection per shard.
    Shard,
}

/// Kafka broker ids per node in `shard` mode: shard `s` of node `n` is
/// broker `n × SHARD_BROKERS_PER_NODE + s`.
pub const SHARD_BROKERS_PER_NODE: i32 = 1000;

/// A node that runs the controller: its id, and for a quorum the address of
/// its listener (`ID@HOST:PORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "VoterSpec")]
pub struct Voter {
    /// The node's id.
    pub id: u32,
    /// Its listener; `None` when the controller is one node.
    pub addr: Option<SocketAddr>,
}

/// A voter as a file writes it: `3` or `"3@10.0.0.3:9093"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum VoterSpec {
    Id(u32),
    Text(String),
}

impl TryFrom<VoterSpec> for Voter {
    type Error = String;

    fn try_from(spec: VoterSpec) -> Result<Voter, String> {
        match spec {
            VoterSpec::Id(id) => Ok(Voter { id, addr: None }),
            VoterSpec::Text(text) => text.parse(),
        }
    }
}

impl std::str::FromStr for Voter {
    type Err = String;

    fn from_str(text: &str) -> Result<Voter, String> {
        let (id, addr) = match text.split_once('@') {
            Some((id, addr)) => (id, Some(addr)),
            None => (text, None),
        };
        let id = id
            .trim()
            .parse()
            .map_err(|_| format!("voter {text:?}: the id is not a number"))?;
        let addr = addr
            .map(|a| a.trim().parse())
            .transpose()
            .map_err(|_| format!("voter {text:?}: the address is not HOST:PORT"))?;
        Ok(Voter { id, addr })
    }
}

/// A listener that may be off (`kafka_listen`, `admin_listen`) as written:
/// `HOST:PORT`, or `none` / empty for no listener.
pub fn parse_optional_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "" | "none" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|_| format!("listener {text:?}: not HOST:PORT or none")),
    }
}

fn optional_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    parse_optional_listen(&text).map_err(serde::de::Error::custom)
}

/// Why settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML of these keys.
    #[error("invalid config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl ServeConfig {
    /// Reads a TOML file of these keys (snake_case, as the flags).
    pub fn from_file(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }

    /// Shards to run: the setting, or one per core.
    pub fn shard_count(&self) -> usize {
        self.cores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The free-space threshold.
    pub fn disk_threshold(&self) -> fjord_storage::space::Threshold {
        fjord_storage::space::Threshold {
            min_free_bytes: self.disk_min_free_bytes,
            min_free_percent: self.disk_min_free_percent,
        }
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let shards = self.shard_count();
        if shards == 0 || shards > 1024 {
            return Err(ConfigError::Invalid(format!(
                "cores = {shards}: must be 1 to 1024"
            )));
        }
        if self.retention_check_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "retention_check_interval_ms must be above 0".into(),
            ));
        }
        if self.producer_id_expiration_ms == 0 || self.producer_id_expiration_ms > i64::MAX as u64 {
            return Err(ConfigError::Invalid(
                "producer_id_expiration_ms must be above 0".into(),
            ));
        }
        if self.staging_bytes_per_shard != 0
            && self.staging_bytes_per_shard < fjord_storage::staging::BYTES_MIN
        {
            return Err(ConfigError::Invalid(format!(
                "staging_bytes_per_shard must be 0 (off) or at least {}",
                fjord_storage::staging::BYTES_MIN
            )));
        }
        if self.disk_check_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "disk_check_interval_ms must be above 0".into(),
            ));
        }
        if self.disk_min_free_percent > 100 {
            return Err(ConfigError::Invalid(
                "disk_min_free_percent must be 0 to 100".into(),
            ));
        }
        if self.metadata_reserve_bytes == 0 {
            return Err(ConfigError::Invalid(
                "metadata_reserve_bytes must be above 0".into(),
            ));
        }
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid("max_frame_bytes below 1024".into()));
        }
        if self.max_inflight_bytes < self.max_frame_bytes {
            return Err(ConfigError::Invalid(
                "max_inflight_bytes must hold at least one max_frame_bytes frame".into(),
            ));
        }
        if self.node_id.is_none() && (!self.seeds.is_empty() || !self.controller_voters.is_empty())
        {
            return Err(ConfigError::Invalid(
                "seeds and controller_voters need a node_id".into(),
            ));
        }
        if self.node_id == Some(0) {
            return Err(ConfigError::Invalid("node_id must be above 0".into()));
        }
        if self.node_id > Some(crate::producer_ids::NODE_ID_MAX) {
            return Err(ConfigError::Invalid(format!(
                "node_id must be at most {} (producer ids embed it)",
                crate::producer_ids::NODE_ID_MAX
            )));
        }
        if self.node_id.is_some() && !self.runs_controller() && self.contact_points().is_empty() {
            return Err(ConfigError::Invalid(
                "a node that does not run the controller needs seeds to find it".into(),
            ));
        }
        if self.node_id.is_some() && self.advertised().ip().is_unspecified() {
            return Err(ConfigError::Invalid(
                "listening on an unspecified address: set advertise to the address peers and clients reach this node at".into(),
            ));
        }
        if ![0, 1, 3, 5].contains(&self.controller_voters.len()) {
            // An even quorum tolerates no more failures than the odd one
            // below it, and needs more votes for each decision.
            return Err(ConfigError::Invalid(format!(
                "controller_voters: 1, 3 or 5 voters, not {}",
                self.controller_voters.len()
            )));
        }
        if self.controller_voters.len() > 1 {
            // A quorum's voters reach each other before any metadata says
            // where they are: each needs its address.
            if let Some(v) = self.controller_voters.iter().find(|v| v.addr.is_none()) {
                return Err(ConfigError::Invalid(format!(
                    "controller_voters: a quorum needs ID@HOST:PORT for every voter ({} has no address)",
                    v.id
                )));
            }
            let mut ids: Vec<u32> = self.controller_voters.iter().map(|v| v.id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != self.controller_voters.len() || ids.contains(&0) {
                return Err(ConfigError::Invalid(
                    "controller_voters: ids must be distinct and above 0".into(),
                ));
            }
        }
        if self.raft_tick_ms == 0 || self.election_timeout_ms < 4 * self.raft_tick_ms {
            return Err(ConfigError::Invalid(
                "election_timeout_ms must be at least 4 raft ticks (raft_tick_ms above 0)".into(),
            ));
        }
        if self.log_cleaner_backoff_ms == 0 || self.log_cleaner_io_bytes_per_sec == 0 {
            return Err(ConfigError::Invalid(
                "log_cleaner_backoff_ms and log_cleaner_io_bytes_per_sec must be above 0".into(),
            ));
        }
        if self.offsets_topic_partitions == 0 || self.offsets_topic_replication_factor == 0 {
            return Err(ConfigError::Invalid(
                "offsets_topic_partitions and offsets_topic_replication_factor must be above 0"
                    .into(),
            ));
        }
        let session = self.group_session_timeout_ms;
        if !(self.group_min_session_timeout_ms..=self.group_max_session_timeout_ms)
            .contains(&session)
            || self.group_heartbeat_interval_ms == 0
            || self.group_heartbeat_interval_ms >= self.group_min_session_timeout_ms
        {
            return Err(ConfigError::Invalid(
                "group session timeouts must satisfy min <= default <= max, with a heartbeat interval above 0 and below the minimum".into(),
            ));
        }
        if self.default_replication_factor == Some(0) {
            return Err(ConfigError::Invalid(
                "default_replication_factor must be above 0".into(),
            ));
        }
        if !self.hosts_partitions_on_controller() && shards < 2 {
            return Err(ConfigError::Invalid(
                "controller_hosts_partitions = false needs at least two cores".into(),
            ));
        }
        Ok(())
    }

    /// The session timeouts groups accept.
    pub fn group_limits(&self) -> crate::group::members::Limits {
        crate::group::members::Limits {
            session_timeout_min_ms: i64::from(self.group_min_session_timeout_ms),
            session_timeout_max_ms: i64::from(self.group_max_session_timeout_ms),
            session_timeout_default_ms: i64::from(self.group_session_timeout_ms),
        }
    }

    /// Whether this node runs the controller: a node of its own always; in a
    /// cluster, a listed voter, or any node without seeds when none is
    /// listed.
    pub fn runs_controller(&self) -> bool {
        match self.node_id {
            None => true,
            Some(_) if self.controller_voters.is_empty() => self.seeds.is_empty(),
            Some(id) => self.controller_voters.iter().any(|v| v.id == id),
        }
    }

    /// Where a node asks for the controller: its seeds, then the voters'
    /// listeners (a quorum names them); never this node.
    pub fn contact_points(&self) -> Vec<SocketAddr> {
        let own = [self.listen, self.advertised()];
        let mut points = Vec::new();
        let voters = self.controller_voters.iter().filter_map(|v| v.addr);
        for addr in self.seeds.iter().copied().chain(voters) {
            if !points.contains(&addr) && !own.contains(&addr) {
                points.push(addr);
            }
        }
        points
    }

    /// Whether the controller is a quorum (its metadata log a Raft group).
    pub fn controller_quorum(&self) -> bool {
        self.controller_voters.len() > 1
    }

    /// The address this node gives clients and peers.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }

    /// Where Kafka clients reach this node's Kafka listener, as Kafka's
    /// Metadata gives it: the advertised host (the listener's own address
    /// when it names one and nothing is advertised), the listener's port.
    pub fn kafka_advertised(&self) -> Option<(String, u16)> {
        let listen = self.kafka_listen?;
        let host = if self.advertise.is_none() && !listen.ip().is_unspecified() {
            listen.ip().to_string()
        } else {
            self.advertised_host()
        };
        Some((host, listen.port()))
    }

    /// The advertised address's host, as Metadata gives it: loopback for a
    /// node listening on every address of a machine of its own (a cluster
    /// node must advertise a reachable one: `validate` says so).
    pub fn advertised_host(&self) -> String {
        let ip = self.advertised().ip();
        if ip.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            ip.to_string()
        }
    }

    /// Whether shard 0 hosts partitions as well as the controller.
    pub fn hosts_partitions_on_controller(&self) -> bool {
        self.controller_hosts_partitions
            .unwrap_or_else(|| self.shard_count() <= 2)
    }

    /// The first shard that hosts partitions: 0, or 1 when shard 0 is the
    /// controller alone.
    pub fn first_data_shard(&self) -> usize {
        usize::from(!self.hosts_partitions_on_controller())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_voters_read_as_ids_or_id_at_address() {
        let one: ServeConfig =
            toml::from_str("node_id = 1\ncontroller_voters = [1]").expect("toml");
        assert_eq!(one.controller_voters, [Voter { id: 1, addr: None }]);
        assert!(one.runs_controller() && !one.controller_quorum());
        let text = "node_id = 2\nlisten = \"10.0.0.2:9093\"\ncontroller_voters = [\"1@10.0.0.1:9093\", \"2@10.0.0.2:9093\", \"3@10.0.0.3:9093\"]";
        let quorum: ServeConfig = toml::from_str(text).expect("toml");
        assert_eq!(
            quorum.controller_voters[1],
            Voter {
                id: 2,
                addr: Some("10.0.0.2:9093".parse().expect("addr"))
            }
        );
        assert!(quorum.runs_controller() && quorum.controller_quorum());
        assert_eq!(
            quorum.contact_points().len(),
            2,
            "its own listener is not one"
        );
        let mut two = quorum.clone();
        two.controller_voters.pop();
        assert!(two.validate().is_err(), "1, 3 or 5 voters");
        let mut no_addr = quorum.clone();
        no_addr.controller_voters[0].addr = None;
        assert!(no_addr.validate().is_err(), "a quorum needs every address");
        assert!("x@1.2.3.4:5".parse::<Voter>().is_err());
        assert!("1@nowhere".parse::<Voter>().is_err());
    }

    #[test]
    fn kafka_listen_reads_an_address_or_none() {
        let on: ServeConfig = toml::from_str("kafka_listen = \"0.0.0.0:19092\"").expect("toml");
        assert_eq!(
            on.kafka_listen,
            Some("0.0.0.0:19092".parse().expect("addr"))
        );
        assert_eq!(on.kafka_advertised(), Some(("127.0.0.1".into(), 19092)));
        for off in ["none", ""] {
            let text = format!("kafka_listen = \"{off}\"");
            let config: ServeConfig = toml::from_str(&text).expect("toml");
            assert_eq!(config.kafka_listen, None);
        }
        assert!(toml::from_str::<ServeConfig>("kafka_listen = \"nowhere\"").is_err());
        assert_eq!(
            ServeConfig::default().kafka_listen.map(|a| a.port()),
            Some(9092)
        );
    }

    #[test]
    fn admin_listen_reads_an_address_or_none() {
        let on: ServeConfig = toml::from_str("admin_listen = \"0.0.0.0:19644\"").expect("toml");
        assert_eq!(
            on.admin_listen,
            Some("0.0.0.0:19644".parse().expect("addr"))
        );
        let off: ServeConfig = toml::from_str("admin_listen = \"none\"").expect("toml");
        assert_eq!(off.admin_listen, None);
        assert!(toml::from_str::<ServeConfig>("admin_listen = \"9644\"").is_err());
        assert_eq!(
            ServeConfig::default().admin_listen.map(|a| a.port()),
            Some(9644)
        );
    }
}
