//! `fjord`: the broker (`fjord serve`) and its command-line tools.

use clap::{Parser, Subcommand};
use fjord_broker::cli::{self, CliError, ConsumeArgs, ProduceArgs};
use fjord_broker::config::ServeConfig;
use fjord_broker::logging::LogFormat;
use fjord_client::{ResetTo, Seek};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

// jemalloc, keeping freed pages: see fjord_storage::alloc.
fjord_storage::global_allocator!();

const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9093";

#[derive(Parser)]
#[command(
    name = "fjord",
    version,
    about = "A streaming broker in the Kafka mould"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker node.
    Serve(Box<ServeArgs>),
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
        /// Brokers' native addresses, HOST:PORT[,HOST:PORT...].
        #[arg(long, global = true, default_value = DEFAULT_BOOTSTRAP)]
        bootstrap: String,
    },
    /// Move a partition's replicas.
    Partition {
        #[command(subcommand)]
        command: PartitionCommand,
        /// Brokers' native addresses, HOST:PORT[,HOST:PORT...].
        #[arg(long, global = true, default_value = DEFAULT_BOOTSTRAP)]
        bootstrap: String,
    },
    /// The cluster's nodes, controller and partition leaders.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        /// Brokers' native addresses, HOST:PORT[,HOST:PORT...].
        #[arg(long, global = true, default_value = DEFAULT_BOOTSTRAP)]
        bootstrap: String,
    },
    /// Produce stdin's lines as records.
    Produce {
        /// Topic.
        topic: String,
        /// Split each line into key and value at the first SEP.
        #[arg(long, value_name = "SEP")]
        key_separator: Option<String>,
        /// 0, 1 or all.
        #[arg(long, default_value = "all")]
        acks: String,
        /// Send every record to this partition.
        #[arg(long)]
        partition: Option<i32>,
        /// Brokers' native addresses, HOST:PORT[,HOST:PORT...].
        #[arg(long, default_value = DEFAULT_BOOTSTRAP)]
        bootstrap: String,
    },
    /// Print a topic's records.
    Consume {
        /// Topic.
        topic: String,
        /// Start at the first offset held (default: only new records).
        #[arg(long, conflicts_with = "offset")]
        from_beginning: bool,
        /// Start at this offset.
        #[arg(long)]
        offset: Option<i64>,
        /// Only this partition.
        #[arg(long)]
        partition: Option<i32>,
        /// Stop after this many records.
        #[arg(long)]
        max_messages: Option<usize>,
        /// Print each record's key.
        #[arg(long)]
        print_key: bool,
        /// Print each record's partition and offset.
        #[arg(long)]
        print_offset: bool,
        /// Read as a member of this consumer group: the group assigns
        /// partitions and keeps the offsets (committed every 5 s and on exit).
        #[arg(long, conflicts_with_all = ["partition", "offset"])]
        group: Option<String>,
        /// Brokers' native addresses, HOST:PORT[,HOST:PORT...].
        #[arg(long, default_value = DEFAULT_BOOTSTRAP)]
        bootstrap: String,
    },
    /// A live view of a node (throughput, latency, lag per topic) from its
    /// admin listener, redrawn like top.
    Top {
        /// The node's admin listener.
        #[arg(long, default_value = "127.0.0.1:9644")]
        admin: String,
        /// Time between redraws, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many redraws [default: never].
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// List, describe and delete consumer groups; reset their offsets.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
        /// Brokers' native addresses, HOST:PORT[,HOST:PORT...].
        #[arg(long, global = true, default_value = DEFAULT_BOOTSTRAP)]
        bootstrap: String,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Every group, its state and member count.
    List,
    /// A group's members and assignment, committed offsets and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Delete a group without members, with its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
    /// Move a group's committed offsets of a topic (a dry run unless
    /// --execute; the group must have no members).
    ResetOffsets {
        /// Group id.
        group: String,
        /// Topic.
        #[arg(long)]
        topic: String,
        /// To the log start.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// To the log end.
        #[arg(long, group = "to")]
        to_latest: bool,
        /// To this offset.
        #[arg(long, group = "to")]
        to_offset: Option<i64>,
        /// To the first record at or after this time (ISO 8601, UTC).
        #[arg(long, group = "to")]
        to_datetime: Option<String>,
        /// By this many records (negative: back).
        #[arg(long, group = "to", allow_negative_numbers = true)]
        shift_by: Option<i64>,
        /// Commit the new offsets.
        #[arg(long)]
        execute: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Nodes (alive, address, shards, replicas, leaders) and the controller.
    Status,
    /// Move every replica off a node, so that it can be removed.
    Drain {
        /// The node's id.
        node: i32,
        /// Wait until the node holds no replica.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum PartitionCommand {
    /// Move a partition's replicas to other nodes (one at a time, through
    /// Raft membership changes; the partition serves throughout).
    Move {
        /// Topic.
        topic: String,
        /// Partition number.
        partition: i32,
        /// Node ids, preferred leader first: N,N,... .
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<i32>,
        /// Wait until the move is done.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// Name.
        name: String,
        /// Partition count.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Replicas per partition [default: the cluster's].
        #[arg(long)]
        replication_factor: Option<i16>,
        /// A topic config, `key=value` (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Show a topic's configs and partitions.
    Describe {
        /// Name.
        name: String,
    },
    /// Delete a topic and its data.
    Delete {
        /// Name.
        name: String,
    },
    /// Change a topic's configs (retention.* apply at once).
    Alter {
        /// Name.
        name: String,
        /// A config to set, `key=value` (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// A config to remove, back to its default (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        deleted: Vec<String>,
        /// Grow the topic to this many partitions (Kafka's
        /// `kafka-topics --alter --partitions`); it never shrinks.
        #[arg(long)]
        partitions: Option<i32>,
    },
}

/// Every key of the config file, as a flag; flags win over the file.
#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML file of these settings (snake_case keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where data lives [default: fjord-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Native listener [default: 127.0.0.1:9093].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Kafka listener, HOST:PORT or none [default: 127.0.0.1:9092].
    #[arg(long)]
    kafka_listen: Option<String>,
    /// Kafka clients see one broker per node or per shard [default: node].
    #[arg(long, value_enum)]
    kafka_brokers: Option<fjord_broker::config::KafkaBrokers>,
    /// With --kafka-brokers shard: shard i's Kafka port is BASE+i [default:
    /// free ports].
    #[arg(long)]
    kafka_shard_port_base: Option<u16>,
    /// Admin HTTP listener (/metrics, /health, console), HOST:PORT or none
    /// [default: 127.0.0.1:9644].
    #[arg(long)]
    admin_listen: Option<String>,
    /// Count what the shards serve for /metrics [default: true].
    #[arg(long)]
    metrics: Option<bool>,
    /// Partitions listed one by one in /metrics [default: 1000].
    #[arg(long)]
    metrics_partitions_max: Option<usize>,
    /// Shard i listens on BASE+i [default: listen port + 1; 0: free ports].
    #[arg(long)]
    shard_port_base: Option<u16>,
    /// Shards (pinned cores) [default: all cores].
    #[arg(long)]
    cores: Option<usize>,
    /// Core of shard 0; shard i runs on FIRST_CPU + i [default: 0].
    #[arg(long)]
    first_cpu: Option<usize>,
    /// Whether shard 0 hosts partitions too [default: when cores <= 2].
    #[arg(long)]
    controller_hosts_partitions: Option<bool>,
    /// Connections per shard [default: 10000].
    #[arg(long)]
    max_connections_per_shard: Option<usize>,
    /// Largest request frame [default: 65 MiB].
    #[arg(long)]
    max_frame_bytes: Option<usize>,
    /// Request bytes in flight per connection [default: 128 MiB].
    #[arg(long)]
    max_inflight_bytes: Option<usize>,
    /// Batch cache per shard [default: 256 MiB].
    #[arg(long)]
    cache_bytes_per_shard: Option<usize>,
    /// How often retention runs [default: 30000 ms].
    #[arg(long)]
    retention_check_interval_ms: Option<u64>,
    /// Idle time after which a partition forgets a producer id [default: 86400000 ms].
    #[arg(long)]
    producer_id_expiration_ms: Option<u64>,
    /// Shared-memory directory for the staging files [default: /dev/shm].
    #[arg(long)]
    staging_dir: Option<PathBuf>,
    /// Staging bytes per shard, at most (less when `--staging-dir` cannot hold
    /// them for every shard); 0 turns staging off [default: 128 MiB].
    #[arg(long)]
    staging_bytes_per_shard: Option<usize>,
    /// Refuse produce below this much free disk [default: 256 MiB].
    #[arg(long)]
    disk_min_free_bytes: Option<u64>,
    /// Refuse produce below this percentage of the disk free [default: 0, off].
    #[arg(long)]
    disk_min_free_percent: Option<u8>,
    /// How often free space is sampled [default: 500 ms].
    #[arg(long)]
    disk_check_interval_ms: Option<u64>,
    /// Disk space held back for metadata commands [default: 8 MiB].
    #[arg(long)]
    metadata_reserve_bytes: Option<u64>,
    /// Log lines as text or JSON (filter with RUST_LOG) [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// This node's id in a cluster [default: none, a node of its own].
    #[arg(long)]
    node_id: Option<u32>,
    /// Other nodes' listeners to join through, HOST:PORT,... .
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<SocketAddr>>,
    /// Address clients and peers reach this node at [default: listen].
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Nodes that run the controller: ID for one, or ID@HOST:PORT,... (each
    /// voter's listener) for a quorum of 3 or 5 [default: this node without
    /// seeds, else the seeds' controller].
    #[arg(long, value_delimiter = ',')]
    controller_voters: Option<Vec<fjord_broker::config::Voter>>,
    /// Followers elect a new leader after this silence [default: 1000 ms].
    #[arg(long)]
    election_timeout_ms: Option<u64>,
    /// The Raft clock tick [default: 50 ms].
    #[arg(long)]
    raft_tick_ms: Option<u64>,
    /// Replicas of a new topic [default: 3 with 3 or more nodes, else 1].
    #[arg(long)]
    default_replication_factor: Option<u16>,
    /// A replica this far behind is out of sync [default: 30000 ms].
    #[arg(long)]
    replica_lag_time_max_ms: Option<u64>,
    /// How often leadership returns to preferred leaders [default: 30000 ms; 0: never].
    #[arg(long)]
    leader_rebalance_interval_ms: Option<u64>,
    /// How often compacted partitions are checked for cleaning [default: 15000 ms].
    #[arg(long)]
    log_cleaner_backoff_ms: Option<u64>,
    /// Disk bytes per second a shard's cleaning moves at most [default: 32 MiB].
    #[arg(long)]
    log_cleaner_io_bytes_per_sec: Option<u64>,
    /// Partitions of __consumer_offsets [default: 50].
    #[arg(long)]
    offsets_topic_partitions: Option<u32>,
    /// Replicas of each __consumer_offsets partition in a cluster; the
    /// topic waits until this many nodes are live [default: 3].
    #[arg(long)]
    offsets_topic_replication_factor: Option<u16>,
    /// A silent group member leaves after this [default: 45000 ms].
    #[arg(long)]
    group_session_timeout_ms: Option<u32>,
    /// Shortest session timeout a member may ask for [default: 6000 ms].
    #[arg(long)]
    group_min_session_timeout_ms: Option<u32>,
    /// Longest session timeout a member may ask for [default: 300000 ms].
    #[arg(long)]
    group_max_session_timeout_ms: Option<u32>,
    /// How often group members heartbeat [default: 1000 ms].
    #[arg(long)]
    group_heartbeat_interval_ms: Option<u32>,
}

impl ServeArgs {
    fn config(self) -> Result<ServeConfig, fjord_broker::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => ServeConfig::from_file(path)?,
            None => ServeConfig::default(),
        };
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.listen {
            config.listen = v;
        }
        for (flag, setting) in [
            (&self.kafka_listen, &mut config.kafka_listen),
            (&self.admin_listen, &mut config.admin_listen),
        ] {
            if let Some(v) = flag {
                *setting = fjord_broker::config::parse_optional_listen(v)
                    .map_err(fjord_broker::config::ConfigError::Invalid)?;
            }
        }
        if let Some(v) = self.metrics {
            config.metrics = v;
        }
        if let Some(v) = self.metrics_partitions_max {
            config.metrics_partitions_max = v;
        }
        if let Some(v) = self.kafka_brokers {
            config.kafka_brokers = v;
        }
        if self.kafka_shard_port_base.is_some() {
            config.kafka_shard_port_base = self.kafka_shard_port_base;
        }
        if self.shard_port_base.is_some() {
            config.shard_port_base = self.shard_port_base;
        }
        if self.cores.is_some() {
            config.cores = self.cores;
        }
        if let Some(cpu) = self.first_cpu {
            config.first_cpu = cpu;
        }
        if self.controller_hosts_partitions.is_some() {
            config.controller_hosts_partitions = self.controller_hosts_partitions;
        }
        if let Some(v) = self.max_connections_per_shard {
            config.max_connections_per_shard = v;
        }
        if let Some(v) = self.max_frame_bytes {
            config.max_frame_bytes = v;
        }
        if let Some(v) = self.max_inflight_bytes {
            config.max_inflight_bytes = v;
        }
        if let Some(v) = self.cache_bytes_per_shard {
            config.cache_bytes_per_shard = v;
        }
        if let Some(v) = self.retention_check_interval_ms {
            config.retention_check_interval_ms = v;
        }
        if let Some(v) = self.producer_id_expiration_ms {
            config.producer_id_expiration_ms = v;
        }
        if let Some(v) = self.staging_dir {
            config.staging_dir = v;
        }
        if let Some(v) = self.staging_bytes_per_shard {
            config.staging_bytes_per_shard = v;
        }
        if let Some(v) = self.disk_min_free_bytes {
            config.disk_min_free_bytes = v;
        }
        if let Some(v) = self.disk_min_free_percent {
            config.disk_min_free_percent = v;
        }
        if let Some(v) = self.disk_check_interval_ms {
            config.disk_check_interval_ms = v;
        }
        if let Some(v) = self.metadata_reserve_bytes {
            config.metadata_reserve_bytes = v;
        }
        if let Some(v) = self.log_format {
            config.log_format = v;
        }
        if self.node_id.is_some() {
            config.node_id = self.node_id;
        }
        if let Some(v) = self.seeds {
            config.seeds = v;
        }
        if self.advertise.is_some() {
            config.advertise = self.advertise;
        }
        if let Some(v) = self.controller_voters {
            config.controller_voters = v;
        }
        if let Some(v) = self.election_timeout_ms {
            config.election_timeout_ms = v;
        }
        if let Some(v) = self.raft_tick_ms {
            config.raft_tick_ms = v;
        }
        if let Some(factor) = self.offsets_topic_replication_factor {
            config.offsets_topic_replication_factor = factor;
        }
        if self.default_replication_factor.is_some() {
            config.default_replication_factor = self.default_replication_factor;
        }
        if let Some(v) = self.replica_lag_time_max_ms {
            config.replica_lag_time_max_ms = v;
        }
        if let Some(v) = self.leader_rebalance_interval_ms {
            config.leader_rebalance_interval_ms = v;
        }
        for (flag, setting) in [
            (
                self.log_cleaner_backoff_ms,
                &mut config.log_cleaner_backoff_ms,
            ),
            (
                self.log_cleaner_io_bytes_per_sec,
                &mut config.log_cleaner_io_bytes_per_sec,
            ),
        ] {
            if let Some(v) = flag {
                *setting = v;
            }
        }
        let group_settings = [
            (
                self.offsets_topic_partitions,
                &mut config.offsets_topic_partitions,
            ),
            (
                self.group_session_timeout_ms,
                &mut config.group_session_timeout_ms,
            ),
            (
                self.group_min_session_timeout_ms,
                &mut config.group_min_session_timeout_ms,
            ),
            (
                self.group_max_session_timeout_ms,
                &mut config.group_max_session_timeout_ms,
            ),
            (
                self.group_heartbeat_interval_ms,
                &mut config.group_heartbeat_interval_ms,
            ),
        ];
        for (flag, setting) in group_settings {
            if let Some(v) = flag {
                *setting = v;
            }
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => match (*args).config() {
            Ok(config) => fjord_broker::node::serve(config).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Command::Topic { command, bootstrap } => {
            run_topic(command, &bootstrap).map_err(|e| e.to_string())
        }
        Command::Cluster { command, bootstrap } => cli::connect(&bootstrap)
            .and_then(|client| match command {
                ClusterCommand::Status => cli::cluster_status(&client),
                ClusterCommand::Drain { node, wait } => cli::cluster_drain(&client, node, wait),
            })
            .map_err(|e| e.to_string()),
        Command::Partition {
            command:
                PartitionCommand::Move {
                    topic,
                    partition,
                    replicas,
                    wait,
                },
            bootstrap,
        } => cli::connect(&bootstrap)
            .and_then(|client| cli::partition_move(&client, &topic, partition, &replicas, wait))
            .map_err(|e| e.to_string()),
        Command::Produce {
            topic,
            key_separator,
            acks,
            partition,
            bootstrap,
        } => run_produce(topic, key_separator, &acks, partition, &bootstrap),
        Command::Consume {
            topic,
            from_beginning,
            offset,
            partition,
            max_messages,
            print_key,
            print_offset,
            group,
            bootstrap,
        } => {
            let seek = match (from_beginning, offset) {
                (_, Some(offset)) => Seek::Offset(offset),
                (true, None) => Seek::Earliest,
                (false, None) => Seek::Latest,
            };
            let args = ConsumeArgs {
                topic,
                seek,
                partition,
                max_messages,
                print_key,
                print_offset,
                group,
                stop: stop_on_signals(),
            };
            cli::connect(&bootstrap)
                .and_then(|client| cli::consume(&client, &args, &mut std::io::stdout().lock()))
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Command::Top {
            admin,
            interval_ms,
            iterations,
        } => cli::top::top(
            &admin,
            std::time::Duration::from_millis(interval_ms),
            iterations,
            &mut std::io::stdout().lock(),
        )
        .map_err(|e| e.to_string()),
        Command::Group { command, bootstrap } => {
            run_group(command, &bootstrap).map_err(|e| e.to_string())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fjord: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A flag SIGINT and SIGTERM set, so that a consumer can commit and leave
/// its group before it exits; a second signal ends the process at once.
fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Failing to register leaves the default (exit at once): no commit
        // on exit, which the 5 s auto-commit bounds.
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone());
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    stop
}

fn run_group(command: GroupCommand, bootstrap: &str) -> Result<(), CliError> {
    let client = cli::connect(bootstrap)?;
    match command {
        GroupCommand::List => cli::groups::list(&client),
        GroupCommand::Describe { group } => cli::groups::describe(&client, &group),
        GroupCommand::Delete { group } => cli::groups::delete(&client, &group),
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            to_datetime,
            shift_by,
            execute,
        } => {
            let to = match (to_earliest, to_latest, to_offset, to_datetime, shift_by) {
                (true, ..) => ResetTo::Earliest,
                (_, true, ..) => ResetTo::Latest,
                (_, _, Some(offset), ..) => ResetTo::Offset(offset),
                (_, _, _, Some(time), _) => ResetTo::Timestamp(cli::groups::parse_datetime(&time)?),
                (.., Some(n)) => ResetTo::ShiftBy(n),
                _ => {
                    return Err(CliError::Invalid(
                        "say where to: --to-earliest, --to-latest, --to-offset N, --to-datetime T or --shift-by N".into(),
                    ));
                }
            };
            cli::groups::reset_offsets(&client, &group, &topic, to, execute)
        }
    }
}

fn run_topic(command: TopicCommand, bootstrap: &str) -> Result<(), CliError> {
    let client = cli::connect(bootstrap)?;
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => cli::topic_create(&client, &name, partitions, replication_factor, &configs),
        TopicCommand::List => cli::topic_list(&client),
        TopicCommand::Describe { name } => cli::topic_describe(&client, &name),
        TopicCommand::Delete { name } => cli::topic_delete(&client, &name),
        TopicCommand::Alter {
            name,
            configs,
            deleted,
            partitions,
        } => cli::topic_alter(&client, &name, &configs, &deleted, partitions),
    }
}

fn run_produce(
    topic: String,
    key_separator: Option<String>,
    acks: &str,
    partition: Option<i32>,
    bootstrap: &str,
) -> Result<(), String> {
    let acks = match acks {
        "0" => fjord_net::api::ACKS_NONE,
        "1" => fjord_net::api::ACKS_LEADER,
        "all" | "-1" => fjord_net::api::ACKS_ALL,
        other => return Err(format!("invalid --acks {other:?}: expected 0, 1 or all")),
    };
    let args = ProduceArgs {
        topic,
        key_separator,
        acks,
        partition,
    };
    let client = cli::connect(bootstrap).map_err(|e| e.to_string())?;
    cli::produce(&client, &args, std::io::stdin().lock())
        .map(drop)
        .map_err(|e| e.to_string())
}
