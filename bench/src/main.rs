//! `bench`: Fjord's load generator. See the README for every flag and the
//! JSON report's fields.

use clap::{Args, Parser, Subcommand};
use fjord_bench::host::{CpuShare, CpuTimes};
use fjord_bench::local::{LocalBroker, LocalCluster, SERVE_SUBCOMMAND};
use fjord_bench::produce::{ProduceConfig, STAMP_LEN};
use fjord_bench::report::{JsonReport, Progress, Summary, write_json};
use fjord_bench::scrape::{BrokerSide, scrape};
use fjord_bench::units::{parse_duration, parse_rate};
use fjord_bench::{client, consume, e2e, ensure_topic, produce};
use fjord_broker::config::KafkaBrokers;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

// jemalloc, keeping freed pages: see fjord_storage::alloc.
fjord_storage::global_allocator!();

#[derive(Parser)]
#[command(name = "bench", version, about = "Fjord's load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce at a target rate (open loop) and report acknowledgement latency.
    Produce(ProduceArgs),
    /// Read a topic from the beginning as fast as possible.
    Consume(ConsumeArgs),
    /// Produce at a rate while consuming; latency from send to delivery.
    E2e(ProduceArgs),
    /// (internal) the embedded local broker's process.
    #[command(name = SERVE_SUBCOMMAND, hide = true)]
    ServeLocal {
        /// Data directory.
        dir: PathBuf,
        /// Listener.
        listen: SocketAddr,
        /// A cluster node's id.
        #[arg(long)]
        node_id: Option<u32>,
        /// The node to join through.
        #[arg(long)]
        seeds: Option<SocketAddr>,
        /// Shards.
        #[arg(long)]
        cores: Option<usize>,
        /// Core of shard 0.
        #[arg(long, default_value_t = 0)]
        first_cpu: usize,
        /// Kafka listener [default: none].
        #[arg(long)]
        kafka_listen: Option<SocketAddr>,
        /// The brokers Kafka clients see.
        #[arg(long, value_enum, default_value = "node")]
        kafka_brokers: KafkaBrokers,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Brokers' native addresses, HOST:PORT[,HOST:PORT...]; without it, a
    /// local broker is started.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Local nodes to start as one cluster (without --bootstrap); 1: a
    /// node of its own, as before clusters.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Shards of each local cluster node [default: 1 when --nodes > 1].
    #[arg(long)]
    node_cores: Option<usize>,
    /// Replicas per partition of a created topic [default: the cluster's].
    #[arg(long)]
    replication_factor: Option<i16>,
    /// Topic (created if missing).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Partitions of a created topic [default: one per data shard].
    #[arg(long)]
    partitions: Option<i32>,
    /// Config of a created topic, `key=value` (e.g. fsync=always); repeatable.
    #[arg(long = "topic-config", value_name = "KEY=VALUE")]
    topic_configs: Vec<String>,
    /// Value bytes per message.
    #[arg(long, default_value_t = 100)]
    message_size: usize,
    /// Cores to pin bench threads to, e.g. `1` or `0,1` (round robin).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Drive the brokers' Kafka listeners with Kafka's protocol instead of
    /// the native one (the topic is still set up natively).
    #[arg(long)]
    kafka: bool,
    /// A Kafka listener of the --bootstrap cluster, HOST:PORT (with --kafka).
    #[arg(long, requires = "bootstrap")]
    kafka_bootstrap: Option<String>,
    /// The brokers local nodes show Kafka clients: one per node or one per
    /// shard.
    #[arg(long, value_enum, default_value = "node")]
    kafka_brokers: KafkaBrokers,
    /// The broker's admin listener: its /metrics, scraped before and after
    /// the run, add the broker's figures (fdatasync p99, group-commit size)
    /// to the report.
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
}

#[derive(Args, Clone)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    /// Messages per second: 500k, 1M, 2.5M, …
    #[arg(long, value_parser = parse_rate, default_value = "1M")]
    rate: f64,
    /// Producers, each with its own connections and thread.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// 0, 1 or all.
    #[arg(long, default_value = "1")]
    acks: String,
    /// Seal a batch at this many bytes.
    #[arg(long, default_value_t = 16 << 10)]
    batch_size: usize,
    /// Or this long after its first message.
    #[arg(long, value_parser = parse_duration, default_value = "1ms")]
    linger: Duration,
    /// Requests in flight per partition per producer.
    #[arg(long, default_value_t = 5)]
    max_in_flight: usize,
    /// How long to produce.
    #[arg(long, value_parser = parse_duration, default_value = "30s", conflicts_with = "count")]
    duration: Duration,
    /// Or how many messages.
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Args, Clone)]
struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// First produce this many messages (as fast as possible).
    #[arg(long)]
    fill: Option<u64>,
    /// Restart the local broker between fill and read, so reads come from
    /// disk, not from its batch cache.
    #[arg(long)]
    cold: bool,
    /// Read as members of this consumer group (committed offsets, assigned
    /// partitions); reports each partition's longest pause.
    #[arg(long)]
    group: Option<String>,
    /// Members of the group, each with its own client and thread.
    #[arg(long, default_value_t = 3, requires = "group")]
    consumers: usize,
    /// The k-th member joins this long after the first, so that the run
    /// goes through rebalances.
    #[arg(long, value_parser = parse_duration, default_value = "1s", requires = "group")]
    join_every: Duration,
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Produce(args) => run_produce(args, false),
        Command::E2e(args) => run_produce(args, true),
        Command::Consume(args) => run_consume(args),
        Command::ServeLocal {
            dir,
            listen,
            node_id,
            seeds,
            cores,
            first_cpu,
            kafka_listen,
            kafka_brokers,
        } => {
            let config = fjord_broker::config::ServeConfig {
                data_dir: dir.clone(),
                listen,
                kafka_listen,
                kafka_brokers,
                shard_port_base: Some(0),
                node_id,
                seeds: seeds.into_iter().collect(),
                cores,
                first_cpu,
                // Each node of a local cluster stages in its own directory.
                staging_dir: match node_id {
                    Some(_) => dir.join("staging"),
                    None => fjord_broker::config::ServeConfig::default().staging_dir,
                },
                // Runs of bench side by side must not fight over the
                // admin port.
                admin_listen: None,
                ..Default::default()
            };
            fjord_broker::node::serve(config)
                .map(|()| true)
                .map_err(|e| e.to_string())
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The brokers to use: those given, or local ones, kept running by the
/// returned guards (none, one, or a cluster's nodes).
fn broker(common: &Common) -> Result<(Vec<SocketAddr>, Vec<LocalBroker>), String> {
    if common.bootstrap.is_none() && common.nodes > 1 {
        let cluster = LocalCluster::start(
            common.nodes,
            common.node_cores.unwrap_or(1),
            common.kafka_brokers,
        )?;
        return Ok((cluster.addrs(), cluster.nodes));
    }
    match &common.bootstrap {
        Some(list) => {
            let addrs = list
                .split(',')
                .map(resolve)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((addrs, Vec::new()))
        }
        None => {
            let local = LocalBroker::start(common.kafka_brokers)?;
            Ok((vec![local.addr], vec![local]))
        }
    }
}

fn resolve(one: &str) -> Result<SocketAddr, String> {
    one.trim()
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("invalid broker address {one:?}"))
}

fn topic_configs(common: &Common) -> Result<Vec<(String, String)>, String> {
    common
        .topic_configs
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("invalid --topic-config {c:?}: expected key=value"))
        })
        .collect()
}

fn produce_config(
    args: &ProduceArgs,
    partitions: usize,
    kafka: Option<SocketAddr>,
) -> Result<ProduceConfig, String> {
    let acks = match args.acks.as_str() {
        "0" => fjord_net::api::ACKS_NONE,
        "1" => fjord_net::api::ACKS_LEADER,
        "all" | "-1" => fjord_net::api::ACKS_ALL,
        other => return Err(format!("invalid --acks {other:?}: 0, 1 or all")),
    };
    if args.producers == 0 || args.max_in_flight == 0 {
        return Err("--producers and --max-in-flight must be at least 1".into());
    }
    let (messages, duration_sec) = match args.count {
        Some(count) => (count, f64::INFINITY),
        None => (
            (args.rate * args.duration.as_secs_f64()).ceil() as u64,
            args.duration.as_secs_f64(),
        ),
    };
    Ok(ProduceConfig {
        rate: args.rate,
        message_size: args.common.message_size.max(STAMP_LEN),
        topic: args.common.topic.clone(),
        partitions: partitions as i32,
        producers: args.producers,
        acks,
        batch_size: args.batch_size,
        linger_ms: args.linger.as_secs_f64() * 1e3,
        max_in_flight: args.max_in_flight,
        messages,
        duration_sec,
        cpus: args.common.cpus.clone(),
        kafka,
    })
}

fn clients(
    addr: &[SocketAddr],
    n: usize,
    cpus: &[usize],
) -> Result<Vec<fjord_client::Client>, String> {
    (0..n)
        .map(|k| client(addr, (!cpus.is_empty()).then(|| cpus[k % cpus.len()])))
        .collect()
}

/// The broker (kept alive by the guard), an admin client, and the topic's
/// partition routes, the topic created if missing.
struct Setup {
    addr: Vec<SocketAddr>,
    local: Vec<LocalBroker>,
    admin: fjord_client::Client,
    routes: Vec<SocketAddr>,
    /// The Kafka listener to bootstrap from, with `--kafka`.
    kafka: Option<SocketAddr>,
}

fn setup(common: &Common) -> Result<Setup, String> {
    let (addr, local) = broker(common)?;
    let admin = client(&addr, None)?;
    let routes = ensure_topic(
        &admin,
        &common.topic,
        common.partitions,
        common.replication_factor,
        &topic_configs(common)?,
    )?;
    let kafka = match (common.kafka, &common.kafka_bootstrap, local.first()) {
        (false, _, _) => None,
        (true, Some(given), _) => Some(resolve(given)?),
        (true, None, Some(local)) => Some(local.kafka),
        (true, None, None) => return Err("--kafka with --bootstrap needs --kafka-bootstrap".into()),
    };
    Ok(Setup {
        kafka,
        addr,
        local,
        admin,
        routes,
    })
}

fn run_produce(args: ProduceArgs, e2e: bool) -> Result<bool, String> {
    let Setup {
        addr,
        local: _local,
        admin,
        routes,
        kafka,
    } = setup(&args.common)?;
    let config = produce_config(&args, routes.len(), kafka)?;
    let producers = clients(&addr, config.producers, &config.cpus)?;
    let admin_addr = args.common.admin.as_deref();
    let before = admin_addr.map(scrape).transpose()?;
    let acked = Arc::new(Progress::default());
    let cpu = CpuTimes::now();
    let (what, summary) = if e2e {
        let delivered = Arc::new(Progress::default());
        let elapsed = e2e::run(&config, producers, &admin, routes, &acked, &delivered)?;
        let produced = Summary::new(&acked, elapsed, config.rate);
        produced.print("produce");
        (
            "e2e",
            Summary {
                sustained: produced.sustained,
                ..Summary::new(&delivered, elapsed, config.rate)
            },
        )
    } else {
        let elapsed = produce::run(&config, producers, routes, &acked, None)?;
        ("produce", Summary::new(&acked, elapsed, config.rate))
    };
    summary.print(what);
    let machine = machine_since(cpu);
    let broker_side = match (admin_addr, &before) {
        (Some(admin), Some(before)) => Some(BrokerSide::between(before, &scrape(admin)?)),
        _ => None,
    };
    if let Some(side) = &broker_side {
        side.print();
    }
    if let Some(path) = &args.common.json {
        write_json(
            path,
            &JsonReport {
                command: what,
                config: &config,
                summary: &summary,
                broker: broker_side.as_ref(),
                machine: machine.as_ref(),
            },
        )?;
    }
    Ok(summary.sustained && summary.errors == 0)
}

/// The machine's CPU shares since `before`, printed as the report's last
/// line.
fn machine_since(before: Option<CpuTimes>) -> Option<CpuShare> {
    let share = CpuShare::between(before?, CpuTimes::now()?)?;
    share.print();
    Some(share)
}

fn run_consume(args: ConsumeArgs) -> Result<bool, String> {
    let Setup {
        addr,
        mut local,
        admin: _,
        routes,
        kafka,
    } = setup(&args.common)?;
    if let Some(fill) = args.fill {
        let fill_args = ProduceArgs {
            common: args.common.clone(),
            rate: 1e9,
            producers: 1,
            acks: "1".into(),
            batch_size: 256 << 10,
            linger: Duration::from_millis(1),
            max_in_flight: 5,
            duration: Duration::from_secs(3600),
            count: Some(fill),
        };
        // Filling is setup, not measured: the native protocol.
        let config = produce_config(&fill_args, routes.len(), None)?;
        let filled = Arc::new(Progress::default());
        let elapsed = produce::run(
            &config,
            clients(&addr, 1, &config.cpus)?,
            routes,
            &filled,
            None,
        )?;
        Summary::new(&filled, elapsed, 0.0).print("fill");
    }
    if args.cold {
        match local.as_mut_slice() {
            [local] => local.restart()?,
            _ => {
                return Err(
                    "--cold restarts the local broker: it needs no --bootstrap or --nodes".into(),
                );
            }
        }
    }
    let progress = Arc::new(Progress::default());
    let cpu = CpuTimes::now();
    let elapsed = match (&args.group, kafka) {
        (Some(_), Some(_)) => {
            return Err("--group reads through the native protocol only, not with --kafka".into());
        }
        (None, Some(kafka)) => {
            let admin = client(&addr, None)?;
            let cpu = args.common.cpus.first().copied();
            consume::run_kafka(&admin, kafka, &args.common.topic, cpu, &progress)?
        }
        (Some(group), None) => {
            let members = clients(&addr, args.consumers, &args.common.cpus)?;
            let (elapsed, pauses) = consume::run_group(
                members,
                &args.common.topic,
                group,
                args.join_every,
                &progress,
            )?;
            if let Some((partition, pause)) = pauses.worst() {
                println!(
                    "rebalance pauses: longest {:.1} ms (partition {partition}); per partition: {}",
                    pause.as_secs_f64() * 1e3,
                    pauses
                        .longest
                        .iter()
                        .map(|(p, d)| format!("{p}={:.0}ms", d.as_secs_f64() * 1e3))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            elapsed
        }
        (None, None) => {
            let reader = client(&addr, args.common.cpus.first().copied())?;
            consume::run(&reader, &args.common.topic, &progress)?
        }
    };
    let summary = Summary::new(&progress, elapsed, 0.0);
    summary.print("consume");
    let machine = machine_since(cpu);
    if let Some(path) = &args.common.json {
        let config = serde_json::json!({ "topic": args.common.topic, "fill": args.fill, "cold": args.cold, "group": args.group });
        write_json(
            path,
            &JsonReport {
                command: "consume",
                config: &config,
                summary: &summary,
                broker: None,
                machine: machine.as_ref(),
            },
        )?;
    }
    Ok(summary.errors == 0)
}
