//! The command-line tools: `fjord topic …`, `fjord produce`, `fjord
//! consume`. They run on the main thread with the client crate's blocking
//! style (`block_on`); errors say what failed and where.

pub mod groups;
pub mod top;

use fjord_client::{
    Admin, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig,
    RecordMetadata, Seek,
};
use fjord_net::{ErrorCode, api};
use futures::StreamExt;
use futures::executor::block_on;
use futures::stream::FuturesOrdered;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Records a `produce` keeps unanswered before it waits for the oldest.
const PRODUCE_OUTSTANDING_MAX: usize = 100_000;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The bootstrap address is not usable.
    #[error("invalid broker address {0:?}")]
    Address(String),
    /// Talking to the broker failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A `key=value` argument is malformed.
    #[error("invalid config {0:?}: expected key=value")]
    Config(String),
    /// Reading stdin or writing stdout failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An argument is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A move could not be planned or did not finish.
    #[error("{0}")]
    Drain(String),
    /// A node's admin listener did not answer as expected.
    #[error("admin listener: {0}")]
    Admin(String),
    /// Some records were not acknowledged.
    #[error("{failed} of {sent} records were not acknowledged; first error: {first}")]
    NotAcknowledged {
        /// Records that failed.
        failed: usize,
        /// Records sent.
        sent: usize,
        /// The first failure.
        first: ClientError,
    },
}

/// Connects a client to a cluster through `bootstrap`
/// (`HOST:PORT[,HOST:PORT...]`, Kafka's `bootstrap.servers`).
pub fn connect(bootstrap: &str) -> Result<Client, CliError> {
    let addrs = bootstrap
        .split(',')
        .map(|one| {
            one.trim()
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| CliError::Address(one.to_owned()))
        })
        .collect::<Result<Vec<SocketAddr>, CliError>>()?;
    let mut config = ClientConfig::with_bootstrap(addrs);
    config.client_id = "fjord-cli".into();
    config.request_timeout = Duration::from_secs(15);
    Ok(Client::new(config)?)
}

/// `topic create`.
pub fn topic_create(
    client: &Client,
    name: &str,
    partitions: i32,
    replication_factor: Option<i16>,
    configs: &[String],
) -> Result<(), CliError> {
    let configs = config_pairs(configs)?;
    block_on(Admin::new(client.clone()).create_replicated_topic(
        name,
        partitions,
        replication_factor,
        &configs,
    ))?;
    println!("created topic {name} with {partitions} partitions");
    Ok(())
}

/// `cluster status`.
pub fn cluster_status(client: &Client) -> Result<(), CliError> {
    let status = block_on(Admin::new(client.clone()).cluster_status())?;
    println!("controller: node {}\n", status.controller);
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.address.clone(),
                if n.alive { "alive" } else { "away" }.to_owned(),
                n.shard_ports.len().to_string(),
                status.replicas.get(&n.id).copied().unwrap_or(0).to_string(),
                status.leaders.get(&n.id).copied().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    print_table(
        &["NODE", "ADDRESS", "STATE", "SHARDS", "REPLICAS", "LEADERS"],
        &rows,
    );
    if !status.leaderless.is_empty() {
        let listed: Vec<String> = status
            .leaderless
            .iter()
            .map(|(t, p)| format!("{t}-{p}"))
            .collect();
        println!("\nwithout a leader: {}", listed.join(", "));
    }
    Ok(())
}

/// Longest `--wait` waits for moves to finish.
const MOVE_WAIT_MAX: Duration = Duration::from_secs(600);

/// `partition move`: moves a partition's replicas to `replicas` (node ids,
/// preferred leader first); with `wait`, until the move is done.
pub fn partition_move(
    client: &Client,
    topic: &str,
    partition: i32,
    replicas: &[i32],
    wait: bool,
) -> Result<(), CliError> {
    block_on(Admin::new(client.clone()).move_partition(topic, partition, replicas))?;
    println!("moving {topic}-{partition} to replicas {replicas:?}");
    if wait {
        let mut want = replicas.to_vec();
        want.sort_unstable();
        wait_for_moves(client, |t, p, now| {
            t != topic || p != partition || sorted(now) == want
        })?;
        println!("moved {topic}-{partition}");
    }
    Ok(())
}

/// `cluster drain`: moves every replica off `node` (each to the live node
/// holding the fewest replicas among those without one of that partition),
/// so that the node can be removed; with `wait`, until it holds none.
pub fn cluster_drain(client: &Client, node: i32, wait: bool) -> Result<(), CliError> {
    let admin = Admin::new(client.clone());
    let status = block_on(admin.cluster_status())?;
    let mut load = status.replicas.clone();
    let candidates: Vec<i32> = status
        .nodes
        .iter()
        .filter(|n| n.alive && n.id != node)
        .map(|n| n.id)
        .collect();
    let metadata = block_on(client.metadata(None))?;
    let mut moved = 0;
    for topic in metadata.topics.into_iter().flatten() {
        let name = topic.name.unwrap_or_default();
        for p in topic.partitions.into_iter().flatten() {
            let replicas = p.replicas.unwrap_or_default();
            if !replicas.contains(&node) {
                continue;
            }
            let Some(&to) = candidates
                .iter()
                .filter(|c| !replicas.contains(c))
                .min_by_key(|c| load.get(c).copied().unwrap_or(0))
            else {
                return Err(CliError::Drain(format!(
                    "{name}-{}: no live node without a replica of it to move to",
                    p.partition
                )));
            };
            *load.entry(to).or_default() += 1;
            let target: Vec<i32> = replicas
                .iter()
                .map(|&r| if r == node { to } else { r })
                .collect();
            block_on(admin.move_partition(&name, p.partition, &target))?;
            println!("moving {name}-{} to replicas {target:?}", p.partition);
            moved += 1;
        }
    }
    println!("{moved} partition(s) moving off node {node}");
    if wait && moved > 0 {
        wait_for_moves(client, |_, _, now| !now.contains(&node))?;
        println!("node {node} holds no replica");
    }
    Ok(())
}

/// Waits until `done(topic, partition, replicas)` holds for every
/// partition, as Metadata lists replicas (during a move, old and new).
fn wait_for_moves(
    client: &Client,
    done: impl Fn(&str, i32, &[i32]) -> bool,
) -> Result<(), CliError> {
    let started = std::time::Instant::now();
    loop {
        let metadata = block_on(client.metadata(None))?;
        let all_done = metadata.topics.into_iter().flatten().all(|t| {
            let name = t.name.unwrap_or_default();
            t.partitions
                .into_iter()
                .flatten()
                .all(|p| done(&name, p.partition, &p.replicas.unwrap_or_default()))
        });
        if all_done {
            return Ok(());
        }
        if started.elapsed() > MOVE_WAIT_MAX {
            return Err(CliError::Drain(format!(
                "moves not done after {MOVE_WAIT_MAX:?} (`topic describe` shows where they are)"
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn sorted(ids: &[i32]) -> Vec<i32> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// `key=value` arguments as pairs.
fn config_pairs(configs: &[String]) -> Result<Vec<(String, String)>, CliError> {
    configs
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| CliError::Config(c.clone()))
        })
        .collect()
}

/// `topic alter`: `--config key=value` sets, `--delete-config key` removes,
/// `--partitions N` grows the topic (after the configs, as Kafka's tool).
pub fn topic_alter(
    client: &Client,
    name: &str,
    configs: &[String],
    deleted: &[String],
    partitions: Option<i32>,
) -> Result<(), CliError> {
    let mut pairs = config_pairs(configs)?;
    pairs.extend(
        deleted
            .iter()
            .map(|key| (key.trim().to_owned(), String::new())),
    );
    let admin = Admin::new(client.clone());
    if !pairs.is_empty() || partitions.is_none() {
        block_on(admin.alter_topic_config(name, &pairs))?;
    }
    if let Some(count) = partitions {
        block_on(admin.create_partitions(name, count))?;
    }
    println!("altered topic {name}");
    Ok(())
}

/// `topic delete`.
pub fn topic_delete(client: &Client, name: &str) -> Result<(), CliError> {
    block_on(Admin::new(client.clone()).delete_topic(name))?;
    println!("deleted topic {name}");
    Ok(())
}

/// `topic list`.
pub fn topic_list(client: &Client) -> Result<(), CliError> {
    let topics = block_on(Admin::new(client.clone()).list_topics())?;
    let rows: Vec<Vec<String>> = topics
        .into_iter()
        .map(|t| vec![t.name, t.partitions.to_string()])
        .collect();
    print_table(&["TOPIC", "PARTITIONS"], &rows);
    Ok(())
}

/// `topic describe`.
pub fn topic_describe(client: &Client, name: &str) -> Result<(), CliError> {
    let topic = block_on(Admin::new(client.clone()).describe_topic(name))?;
    println!(
        "topic {} ({} partitions)\n",
        topic.name,
        topic.partitions.len()
    );
    let configs: Vec<Vec<String>> = topic.configs.into_iter().map(|(k, v)| vec![k, v]).collect();
    print_table(&["CONFIG", "VALUE"], &configs);
    println!();
    let replicated = topic.partitions.iter().any(|p| !p.replicas.is_empty());
    let ids = |ids: &[i32]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let partitions: Vec<Vec<String>> = topic
        .partitions
        .iter()
        .map(|p| {
            let mut row = vec![
                p.partition.to_string(),
                p.log_start_offset.to_string(),
                p.log_end_offset.to_string(),
                p.size_bytes.to_string(),
            ];
            if replicated {
                let ends: Vec<String> = p.replica_log_ends.iter().map(|e| e.to_string()).collect();
                row.extend([
                    if p.leader >= 0 {
                        p.leader.to_string()
                    } else {
                        "none".into()
                    },
                    p.leader_epoch.to_string(),
                    ids(&p.replicas),
                    ids(&p.in_sync),
                    ends.join(","),
                ]);
            }
            let mut state = partition_state(p.error, p.log_end_offset);
            if replicated && p.error.is_none() && p.in_sync.len() < p.replicas.len() {
                state = "under-replicated".into();
            }
            row.push(state);
            row
        })
        .collect();
    let mut header = vec!["PARTITION", "START", "HIGH-WATERMARK", "BYTES"];
    if replicated {
        header.extend(["LEADER", "EPOCH", "REPLICAS", "IN-SYNC", "LOG-ENDS"]);
    } else {
        header[2] = "END";
    }
    header.push("STATE");
    print_table(&header, &partitions);
    Ok(())
}

/// A partition's state as `describe` shows it. The broker says "storage
/// error" both for a partition it could not open (no offsets) and for one
/// that refuses produce for want of room (offsets known).
fn partition_state(error: Option<ErrorCode>, log_end_offset: i64) -> String {
    match error {
        None => "ok".into(),
        Some(ErrorCode::KafkaStorageError) if log_end_offset >= 0 => {
            "read-only: disk low, produce refused".into()
        }
        Some(ErrorCode::KafkaStorageError) => "not served: cannot open, retrying".into(),
        Some(e) => format!("{e:?}"),
    }
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Options of `produce`.
pub struct ProduceArgs {
    /// Topic.
    pub topic: String,
    /// Splits a line into key and value at its first occurrence.
    pub key_separator: Option<String>,
    /// 0, 1 or -1 (all).
    pub acks: i16,
    /// Send every record to this partition.
    pub partition: Option<i32>,
}

/// `produce`: stdin lines as records. Returns how many were acknowledged.
pub fn produce(
    client: &Client,
    args: &ProduceArgs,
    input: impl BufRead,
) -> Result<usize, CliError> {
    let config = ProducerConfig {
        acks: args.acks,
        stop_on_error: true,
        // As Kafka's producer: on unless acks says otherwise.
        idempotence: args.acks == fjord_net::api::ACKS_ALL,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config)?;
    let mut pending = FuturesOrdered::new();
    let (mut sent, mut acked) = (0usize, 0usize);
    let mut first_error: Option<ClientError> = None;
    let mut settle = |outcome: Result<RecordMetadata, ClientError>| match outcome {
        Ok(_) => acked += 1,
        Err(e) => {
            first_error.get_or_insert(e);
        }
    };
    for line in input.lines() {
        let line = line?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.as_bytes()), v.as_bytes()),
                None => (None, line.as_bytes()),
            },
            None => (None, line.as_bytes()),
        };
        pending.push_back(producer.send(&args.topic, args.partition, key, Some(value), &[]));
        sent += 1;
        while pending.len() >= PRODUCE_OUTSTANDING_MAX {
            if let Some(outcome) = block_on(pending.next()) {
                settle(outcome);
            }
        }
    }
    block_on(producer.flush())?;
    while let Some(outcome) = block_on(pending.next()) {
        settle(outcome);
    }
    if args.acks == api::ACKS_NONE {
        eprintln!("sent {sent} records (acks=0: the broker does not acknowledge)");
        return Ok(0);
    }
    eprintln!("{acked} of {sent} records acknowledged");
    match first_error {
        Some(first) => Err(CliError::NotAcknowledged {
            failed: sent - acked,
            sent,
            first,
        }),
        None => Ok(acked),
    }
}

/// Options of `consume`.
pub struct ConsumeArgs {
    /// Topic.
    pub topic: String,
    /// Where to start.
    pub seek: Seek,
    /// Only this partition.
    pub partition: Option<i32>,
    /// Stop after this many records.
    pub max_messages: Option<usize>,
    /// Print `key<TAB>` before each value.
    pub print_key: bool,
    /// Print `partition:offset<TAB>` first.
    pub print_offset: bool,
    /// Read as a member of this group (partitions assigned by it; offsets
    /// committed every 5 s and on exit).
    pub group: Option<String>,
    /// Set by SIGINT/SIGTERM: commit, leave the group, stop.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// `consume`: prints records until `max_messages` or until stopped. In a
/// group, the offsets after what was printed are committed every 5 s, and
/// at the end before it leaves the group (Kafka's console consumer).
pub fn consume(
    client: &Client,
    args: &ConsumeArgs,
    out: &mut impl Write,
) -> Result<usize, CliError> {
    let mut config = ConsumerConfig::default();
    if args.seek == Seek::Earliest {
        // `--from-beginning` in a group: where nothing is committed.
        config.offset_reset = Some(Seek::Earliest);
    }
    let mut consumer = Consumer::new(client, config);
    match &args.group {
        Some(group) => block_on(consumer.subscribe(&[args.topic.as_str()], group))?,
        None => {
            let partitions = args.partition.map(|p| vec![p]);
            block_on(consumer.assign(&args.topic, partitions.as_deref(), args.seek))?;
        }
    }
    let stopped = || args.stop.load(std::sync::atomic::Ordering::Relaxed);
    let mut printed = 0;
    // Where printing stopped in the last poll, per partition: the first
    // record not printed (records fetched but not printed are not
    // committed).
    let mut unprinted = std::collections::BTreeMap::new();
    'poll: while !stopped() {
        let records = block_on(consumer.poll(Duration::from_millis(500)))?;
        for record in &records {
            unprinted
                .entry((record.topic.clone(), record.partition))
                .or_insert(record.offset);
        }
        for record in records {
            if args.print_offset {
                write!(out, "{}:{}\t", record.partition, record.offset)?;
            }
            if args.print_key {
                let key = record.key.as_deref().map(String::from_utf8_lossy);
                write!(out, "{}\t", key.as_deref().unwrap_or("null"))?;
            }
            let value = record.value.as_deref().map(String::from_utf8_lossy);
            writeln!(out, "{}", value.as_deref().unwrap_or("null"))?;
            printed += 1;
            unprinted.insert((record.topic, record.partition), record.offset + 1);
            if args.max_messages.is_some_and(|max| printed >= max) {
                break 'poll;
            }
        }
        unprinted.clear();
        out.flush()?;
    }
    out.flush()?;
    for ((topic, partition), offset) in unprinted {
        block_on(consumer.seek(&topic, partition, Seek::Offset(offset)))?;
    }
    block_on(consumer.close())?;
    Ok(printed)
}
