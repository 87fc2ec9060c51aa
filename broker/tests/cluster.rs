//! Three real `fjord serve` processes on loopback, one cluster: replicated
//! topics, `acks=all`, leaders killed with SIGKILL, stopped with SIGSTOP and
//! restarted with SIGTERM under load; after each, every acknowledged record
//! is read back in order and the replicas' segment files are identical.

mod common;

use common::freeze::{Freeze, freezable_disk, staged_batches};
use common::{Broker, Launch, segment_bytes};
use fjord_client::producer::{produce_request, produce_result};
use fjord_client::transport::Lane;
use fjord_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek,
};
use futures::executor::block_on;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const TOPIC: &str = "replicated";
const PARTITIONS: i32 = 2;

struct Cluster {
    nodes: Vec<Broker>,
    /// Each node's admin listener, by node.
    admins: Vec<String>,
}

impl Cluster {
    /// Node 1 runs the controller; 2 and 3 join through it.
    fn start() -> Cluster {
        Cluster::start_on(None)
    }

    /// As `start`, each node's data directory under `disk` when given.
    fn start_on(disk: Option<&Path>) -> Cluster {
        Cluster::start_placed(|_| disk, &[], &[])
    }

    /// As `start`, with `every` node's arguments added to its own.
    fn start_with(every: &[&str]) -> Cluster {
        Cluster::start_placed(|_| None, every, &[])
    }

    /// As `start`, node `id`'s data directory under `disk(id)` when given,
    /// `every` node's arguments and `extra` ones for node 3.
    fn start_placed<'a>(
        disk: impl Fn(&str) -> Option<&'a Path>,
        every: &[&str],
        extra: &[&str],
    ) -> Cluster {
        // Leadership goes back to preferred leaders within a second; a
        // small __consumer_offsets for the group test.
        let rebalance = [
            &[
                "--leader-rebalance-interval-ms",
                "1000",
                "--offsets-topic-partitions",
                "3",
            ][..],
            every,
        ]
        .concat();
        let admins: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", common::free_port()))
            .collect();
        let admin = |i: usize| ["--admin-listen", admins[i].as_str()];
        let launch = |id: &str| Launch {
            data_dir: disk(id).map(|d| d.join(format!("node-{id}"))),
            ..Launch::default()
        };
        let first = Broker::launch(
            1,
            &[&["--node-id", "1"][..], &rebalance, &admin(0)].concat(),
            launch("1"),
        );
        let seed = first.addr.to_string();
        let mut nodes = vec![first];
        for (i, id) in [(1, "2"), (2, "3")] {
            let args = [
                &["--node-id", id, "--seeds", &seed][..],
                &rebalance,
                &admin(i),
                if id == "3" { extra } else { &[] },
            ]
            .concat();
            nodes.push(Broker::launch(1, &args, launch(id)));
        }
        Cluster { nodes, admins }
    }

    /// Raft groups each node ticks every tick (`/metrics`): idle ones are
    /// quiet and not ticked.
    fn groups_ticking(&self) -> Vec<u64> {
        self.admins
            .iter()
            .map(|admin| {
                let metrics = fjord_broker::cli::top::get(admin, "/metrics").expect("/metrics");
                metrics
                    .lines()
                    .filter(|l| l.starts_with("fjord_raft_groups_ticking"))
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
                    .sum()
            })
            .collect()
    }

    /// Every node holds the controller's metadata: the same nodes, topics
    /// and replica assignments.
    fn assert_metadata_equal(&mut self) {
        let views: Vec<(SocketAddr, Vec<String>)> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.is_running().then_some(n.addr))
            .map(|addr| {
                let client = Client::new(ClientConfig::new(addr)).expect("client");
                let metadata = block_on(client.metadata(None)).expect("metadata");
                let mut view: Vec<String> = metadata
                    .brokers
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        format!(
                            "node {} {:?}:{} {:?}",
                            b.node_id, b.host, b.port, b.shard_ports
                        )
                    })
                    .collect();
                for t in metadata.topics.into_iter().flatten() {
                    for p in t.partitions.into_iter().flatten() {
                        view.push(format!("{:?}-{} {:?}", t.name, p.partition, p.replicas));
                    }
                }
                (addr, view)
            })
            .collect();
        for (addr, view) in &views[1..] {
            assert_eq!(view, &views[0].1, "metadata of {addr} and {}", views[0].0);
        }
    }

    /// Waits until every partition is led by its preferred leader (the
    /// first replica placed).
    fn assert_preferred_leaders_return(&self, client: &Client) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metadata = block_on(client.metadata(Some(vec![TOPIC.into()]))).expect("metadata");
            let back = metadata.topics.into_iter().flatten().all(|t| {
                t.partitions.into_iter().flatten().all(|p| {
                    p.replicas
                        .as_ref()
                        .and_then(|r| r.first())
                        .is_some_and(|&preferred| p.leader == preferred)
                })
            });
            if back {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "leaders did not return to the preferred replicas within 20 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Established connections node `from`'s process opened to node `to`'s
    /// shard port, as the kernel lists them.
    fn dials(&self, from: i32, to: i32) -> usize {
        let pid = self.nodes[(from - 1) as usize].pid();
        let port = self.nodes[(to - 1) as usize].shard_port_base();
        let owned: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the node's descriptors")
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter_map(|target| {
                let target = target.to_string_lossy().into_owned();
                Some(
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_owned(),
                )
            })
            .collect();
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(table).ok())
            .flat_map(|table| table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let remote_port = fields
                    .get(2)
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                fields.get(3) == Some(&"01") // ESTABLISHED
                    && remote_port == Some(port)
                    && fields.get(9).is_some_and(|inode| owned.contains(*inode))
            })
            .count()
    }

    /// Waits until nodes 2 and 3, whose shards share replicas but no
    /// controller traffic, have one connection between them (whichever
    /// dialed), as Raft traffic both ways shares one link.
    fn assert_one_link_between_followers(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (there, back) = (self.dials(2, 3), self.dials(3, 2));
            if there + back == 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connections between nodes 2 and 3: {there} opened by 2, {back} by 3"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn bootstrap(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    fn client(&self) -> Client {
        let mut config = ClientConfig::with_bootstrap(self.bootstrap());
        config.request_timeout = Duration::from_secs(10);
        Client::new(config).expect("client")
    }

    /// Node `id` (1-based).
    fn node(&mut self, id: i32) -> &mut Broker {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Waits until every partition of the topic has a leader, as the live
    /// nodes see it; returns the leaders by partition.
    fn leaders(&self, client: &Client) -> Vec<i32> {
        described_until(client, "every partition has a leader", |topic| {
            let leaders: Vec<i32> = topic.partitions.iter().map(|p| p.leader).collect();
            leaders.iter().all(|&l| l > 0).then_some(leaders)
        })
    }

    /// Waits until every replica's log reached the high watermark.
    fn caught_up(&self, client: &Client) {
        described_until(client, "every replica caught up", |topic| {
            topic
                .partitions
                .iter()
                .all(|p| {
                    p.error.is_none()
                        && p.replicas.len() == 3
                        && p.in_sync.len() == 3
                        && p.replica_log_ends.iter().all(|&e| e == p.log_end_offset)
                })
                .then_some(())
        })
    }

    /// After a scenario: every acknowledged record is read back at the
    /// offset it was acknowledged at, and every replica caught up and holds
    /// the same bytes.
    fn assert_all_kept(&self, client: &Client, acked: &BTreeMap<i32, Vec<(i64, String)>>) {
        let total: usize = acked.values().map(Vec::len).sum();
        let got = consume(client, total);
        assert_all_acknowledged_present(acked, &got);
        self.caught_up(client);
        self.assert_replicas_identical();
    }

    /// What every live node says of the cluster, for a failure's message.
    fn dump(&mut self) -> String {
        let mut out = String::new();
        for node in &mut self.nodes {
            if !node.is_running() {
                continue;
            }
            let client = node.client();
            let metadata = block_on(client.metadata(None));
            out.push_str(&format!("node at {}: {metadata:#?}\n", node.addr));
        }
        out
    }

    /// Every node's copy of each partition holds the same bytes, once the
    /// batches acknowledged from staging are written (within 10 s).
    fn assert_replicas_identical(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in 0..PARTITIONS as usize {
            loop {
                let copies: Vec<Vec<u8>> = self
                    .nodes
                    .iter()
                    .map(|n| segment_bytes(&n.partition_dirs(TOPIC)[p]))
                    .collect();
                assert!(!copies[0].is_empty(), "partition {p} holds batches");
                let differing = copies.iter().position(|c| c != &copies[0]);
                let Some(i) = differing else {
                    break;
                };
                assert!(
                    Instant::now() < deadline,
                    "partition {p}: node {} holds {} bytes that differ from node 1's {}",
                    i + 1,
                    copies[i].len(),
                    copies[0].len()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Describes the topic until `done` finds what it waits for (30 s at most).
fn described_until<T>(
    client: &Client,
    what: &str,
    done: impl Fn(&fjord_client::TopicDescription) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(topic) = block_on(Admin::new(client.clone()).describe_topic(TOPIC))
            && let Some(found) = done(&topic)
        {
            return found;
        }
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first shard of `node`, as `client`'s metadata lists it (every node
/// here runs one, on loopback).
fn shard_of(client: &Client, node: i32) -> SocketAddr {
    let metadata = block_on(client.metadata(None)).expect("metadata");
    let broker = metadata
        .brokers
        .into_iter()
        .flatten()
        .find(|b| b.node_id == node)
        .expect("the node's broker");
    let port = broker.shard_ports.and_then(|p| p.first().copied());
    SocketAddr::from(([127, 0, 0, 1], port.expect("its shard port")))
}

fn create_topic(client: &Client) {
    block_on(Admin::new(client.clone()).create_replicated_topic(TOPIC, PARTITIONS, Some(3), &[]))
        .expect("create");
}

/// Produces `values` with acks=all, one key per partition in turn; returns
/// the acknowledged ones by partition, in offset order.
fn produce(client: &Client, values: std::ops::Range<u32>) -> BTreeMap<i32, Vec<(i64, String)>> {
    try_produce(client, values).unwrap_or_else(|e| panic!("{e}"))
}

fn try_produce(
    client: &Client,
    values: std::ops::Range<u32>,
) -> Result<BTreeMap<i32, Vec<(i64, String)>>, String> {
    let producer = Producer::new(client, ProducerConfig::default()).expect("producer");
    let sent: Vec<_> = values
        .map(|i| {
            let value = format!("value-{i}");
            let partition = (i % PARTITIONS as u32) as i32;
            let ack = producer.send(TOPIC, Some(partition), None, Some(value.as_bytes()), &[]);
            (partition, value, ack)
        })
        .collect();
    let mut acked: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let started = Instant::now();
    for (partition, value, ack) in sent {
        let metadata = block_on(ack).map_err(|e| {
            format!(
                "acks=all produce of {value} failed after {:?}, retries included: {e}",
                started.elapsed()
            )
        })?;
        acked
            .entry(partition)
            .or_default()
            .push((metadata.offset, value));
    }
    for records in acked.values_mut() {
        records.sort();
    }
    Ok(acked)
}

/// Every record of the topic, by partition, in offset order.
fn consume(client: &Client, expected: usize) -> BTreeMap<i32, Vec<(i64, String)>> {
    consume_until(
        client,
        |got| got.values().map(Vec::len).sum::<usize>() >= expected,
        |got| format!("consumed {got:?} of {expected}"),
    )
}

/// Every record of the topic, by partition, in offset order, up to at least
/// the last offset `acked` holds for each partition.
fn consume_through(
    client: &Client,
    acked: &BTreeMap<i32, Vec<(i64, String)>>,
) -> BTreeMap<i32, Vec<(i64, String)>> {
    let last = |records: &BTreeMap<i32, Vec<(i64, String)>>| -> Vec<(i32, Option<i64>)> {
        records
            .iter()
            .map(|(p, r)| (*p, r.iter().map(|(o, _)| *o).max()))
            .collect()
    };
    consume_until(
        client,
        |got| {
            last(acked)
                .into_iter()
                .all(|(p, acked)| got.get(&p).and_then(|r| r.last()).map(|(o, _)| *o) >= acked)
        },
        |got| {
            format!(
                "read up to {:?}, acknowledged up to {:?}",
                last(got),
                last(acked)
            )
        },
    )
}

/// The topic read from the start, by partition, until `done` (30 s at
/// most; `describe` says how far it got).
fn consume_until(
    client: &Client,
    done: impl Fn(&BTreeMap<i32, Vec<(i64, String)>>) -> bool,
    describe: impl Fn(&BTreeMap<i32, Vec<(i64, String)>>) -> String,
) -> BTreeMap<i32, Vec<(i64, String)>> {
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    block_on(consumer.assign(TOPIC, None, Seek::Earliest)).expect("assign");
    let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&got) {
        assert!(Instant::now() < deadline, "{}", describe(&got));
        for r in block_on(consumer.poll(Duration::from_millis(500))).expect("poll") {
            let value = String::from_utf8(r.value.unwrap_or_default()).expect("utf-8");
            got.entry(r.partition).or_default().push((r.offset, value));
        }
    }
    got
}

/// Every acknowledged record is there, at the offset it was acknowledged
/// at, and offsets only rise; duplicates come only from retried sends.
fn assert_all_acknowledged_present(
    acked: &BTreeMap<i32, Vec<(i64, String)>>,
    got: &BTreeMap<i32, Vec<(i64, String)>>,
) {
    for (partition, records) in acked {
        let log = &got[partition];
        assert!(log.windows(2).all(|w| w[0].0 < w[1].0), "offsets rise");
        let by_offset: BTreeMap<i64, &String> = log.iter().map(|(o, v)| (*o, v)).collect();
        for (offset, value) in records {
            assert_eq!(
                by_offset.get(offset).copied(),
                Some(value),
                "acknowledged {value} at {partition}/{offset}"
            );
        }
    }
}

fn merge(into: &mut BTreeMap<i32, Vec<(i64, String)>>, more: BTreeMap<i32, Vec<(i64, String)>>) {
    for (p, records) in more {
        into.entry(p).or_default().extend(records);
    }
}

#[test]
fn killing_leaders_loses_no_acknowledged_record() {
    let mut cluster = Cluster::start();
    let client = cluster.client();
    create_topic(&client);
    cluster.leaders(&client);
    let mut acked = produce(&client, 0..300);
    for round in 0..3 {
        let leader = cluster.leaders(&client)[round % PARTITIONS as usize];
        let killed = Instant::now();
        cluster.node(leader).kill();
        // Produced while the leader is down: the client finds the new one.
        let values = 1000 * (round as u32 + 1)..1000 * (round as u32 + 1) + 200;
        match try_produce(&client, values) {
            Ok(more) => merge(&mut acked, more),
            Err(e) => panic!(
                "round {round}, node {leader} killed: {e}\n{}",
                cluster.dump()
            ),
        }
        let failover = killed.elapsed();
        assert!(
            failover < Duration::from_secs(10),
            "failover took {failover:?}"
        );
        cluster.node(leader).restart();
    }
    cluster.assert_all_kept(&client, &acked);
    cluster.assert_metadata_equal();
    cluster.assert_preferred_leaders_return(&client);
    cluster.assert_one_link_between_followers();
}

#[test]
fn an_idle_partition_goes_quiet_and_fails_over_when_its_leader_is_killed() {
    let mut cluster = Cluster::start();
    let client = cluster.client();
    create_topic(&client);
    cluster.leaders(&client);
    let mut acked = produce(&client, 0..100);
    // Idle, the topic's groups stop heartbeating and are no longer ticked
    // (the metadata group, on node 1, always is).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ticking = cluster.groups_ticking();
        if ticking.iter().sum::<u64>() <= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "groups still ticking: {ticking:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A quiet group's leader killed: its followers notice the node's
    // silence and elect within the election timeout (1 s, drawn up to
    // 1.5 s) after its last beat, as they would notice missed heartbeats.
    let leader = cluster.leaders(&client)[0];
    let killed = Instant::now();
    cluster.node(leader).kill();
    let new_leader = described_until(&client, "a new leader of partition 0", |t| {
        let l = t.partitions[0].leader;
        (l > 0 && l != leader).then_some(l)
    });
    let failover = killed.elapsed();
    assert!(
        failover < Duration::from_millis(3500),
        "node {new_leader} took over after {failover:?}"
    );
    merge(&mut acked, produce(&client, 100..200));
    cluster.node(leader).restart();
    cluster.assert_all_kept(&client, &acked);
    cluster.assert_metadata_equal();
}

#[test]
fn killing_random_nodes_under_load_loses_and_reorders_nothing() {
    let mut cluster = Cluster::start();
    let client = cluster.client();
    create_topic(&client);
    cluster.leaders(&client);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, stop) = (client.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut acked = BTreeMap::new();
            let mut next = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                merge(&mut acked, try_produce(&client, next..next + 50)?);
                next += 50;
            }
            Ok::<_, String>(acked)
        })
    };
    // Any node, the controller's included, four times, at moments that
    // differ from run to run.
    let nanos = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos(),
    );
    for round in 0..4u64 {
        let mix = (nanos ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(2_654_435_761);
        let victim = (mix % 3) as i32 + 1;
        std::thread::sleep(Duration::from_millis(300 + (mix >> 8) % 700));
        cluster.node(victim).kill();
        std::thread::sleep(Duration::from_millis(1500));
        cluster.node(victim).restart();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = load
        .join()
        .expect("load thread")
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.dump()));
    // Per partition the acknowledged records sit in the order they were
    // sent (one producer, one request in flight per partition).
    for (partition, records) in &acked {
        let sent: Vec<u32> = records
            .iter()
            .map(|(_, v)| v["value-".len()..].parse().expect("value-N"))
            .collect();
        assert!(
            sent.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: acknowledged records out of send order"
        );
    }
    cluster.assert_all_kept(&client, &acked);
    cluster.assert_metadata_equal();
}

#[test]
fn killing_every_node_while_their_disks_are_frozen_loses_no_acknowledged_record() {
    // `fsfreeze` holds every write: an acks=all answer can then only mean
    // the batch sits in a quorum's staging areas (`fsync=never`, the
    // default). SIGKILL of every node at once must lose none of it.
    let Some(disk) = freezable_disk("killing_every_node_while_their_disks_are_frozen…") else {
        return;
    };
    let mut cluster = Cluster::start_on(Some(&disk.mount));
    let client = cluster.client();
    create_topic(&client);
    cluster.leaders(&client);
    let mut acked = produce(&client, 0..100);
    cluster.caught_up(&client);

    let freeze = Freeze::start(&disk.mount, Duration::from_secs(30));
    // In turns, so that each partition stages several batches.
    for first in [100, 200, 300] {
        merge(&mut acked, produce(&client, first..first + 100));
    }
    assert!(
        !freeze.timed_out(),
        "acks=all answers waited for the frozen disks"
    );
    for node in &cluster.nodes {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(node.pid() as i32, libc::SIGKILL) }, 0);
    }
    // The processes go once the writes they left in the kernel are let
    // through: thaw, then reap.
    freeze.thaw();
    for node in &mut cluster.nodes {
        node.kill();
    }
    let staged: Vec<usize> = cluster.nodes.iter().map(|n| staged_batches(n, 1)).collect();
    assert!(
        staged.iter().filter(|&&n| n > 0).count() >= 2,
        "a quorum left acknowledged batches staged: {staged:?}"
    );

    for node in &mut cluster.nodes {
        node.restart();
    }
    cluster.leaders(&client);
    let got = consume_through(&client, &acked);
    assert_all_acknowledged_present(&acked, &got);
    cluster.caught_up(&client);
    cluster.assert_replicas_identical();
}

/// Resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[test]
fn a_follower_whose_disk_stops_holds_no_more_than_its_leaders_budget() {
    // Node 3's data directory alone is on a disk that stops, its staging
    // area small: once that is full, its log takes nothing. The other two
    // commit on; node 3's queue for its log must stay within what its
    // leaders send ahead of its durable reports (4 MiB a partition), not
    // grow by all they take (200 MB here), and it catches up once thawed.
    let Some(disk) = freezable_disk("a_follower_whose_disk_stops_holds…") else {
        return;
    };
    let staging = 16 << 20;
    let mut cluster = Cluster::start_placed(
        |id| (id == "3").then_some(disk.mount.as_path()),
        &[],
        &["--staging-bytes-per-shard", &staging.to_string()],
    );
    let client = cluster.client();
    create_topic(&client);
    cluster.assert_preferred_leaders_return(&client);
    let leaders = cluster.leaders(&client);
    assert!(!leaders.contains(&3), "node 3 leads nothing: {leaders:?}");
    produce(&client, 0..100);
    cluster.caught_up(&client);
    let before = resident_bytes(cluster.node(3).pid());

    let freeze = Freeze::start(&disk.mount, Duration::from_secs(60));
    let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
    let value = vec![b'v'; 16 << 10];
    let sent: Vec<_> = (0..12_800)
        .map(|i| producer.send(TOPIC, Some(i % PARTITIONS), None, Some(&value), &[]))
        .collect();
    let mut big = BTreeMap::<i32, usize>::new();
    for ack in sent {
        let metadata = block_on(ack).expect("acks=all from nodes 1 and 2");
        *big.entry(metadata.partition).or_default() += 1;
    }
    let held = resident_bytes(cluster.node(3).pid()).saturating_sub(before);
    assert!(
        !freeze.timed_out(),
        "acks=all waited for node 3's frozen disk"
    );
    freeze.thaw();
    assert!(
        held < 100 << 20,
        "node 3 grew by {held} bytes while its disk stopped (staging {staging})"
    );
    assert_eq!(big.values().sum::<usize>(), 12_800);
    cluster.caught_up(&client);
    cluster.assert_replicas_identical();
}

#[test]
fn a_stopped_leader_is_replaced_and_acknowledges_nothing() {
    let mut cluster = Cluster::start();
    let client = cluster.client();
    create_topic(&client);
    let mut acked = produce(&client, 0..100);
    let leader = cluster.leaders(&client)[0];
    let old = cluster.node(leader);
    let old_addr = old.addr;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(old.pid() as i32, libc::SIGSTOP) }, 0);
    std::thread::sleep(Duration::from_millis(2500));
    // The others elected a new leader and go on without the stopped one.
    merge(&mut acked, produce(&client, 100..200));
    let new_leader = cluster.leaders(&client)[0];
    assert_ne!(new_leader, leader, "a new leader took over");
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::kill(cluster.node(leader).pid() as i32, libc::SIGCONT) },
        0
    );
    // The deposed leader, asked directly at once, acknowledges nothing:
    // not even acks=1, which a leader in good standing answers alone.
    let direct = Client::new(ClientConfig::new(old_addr)).expect("client");
    let shard = shard_of(&direct, leader);
    let mut builder = fjord_core::BatchBuilder::new();
    builder.push(0, None, Some(b"from the past"), &[]);
    let batch = builder.build();
    let body = produce_request(
        TOPIC,
        0,
        fjord_net::api::ACKS_LEADER,
        direct.config().request_timeout,
        batch.len(),
    );
    let answer = block_on(direct.request(shard, Lane::Prompt, body, batch))
        .and_then(|response| produce_result(&response, TOPIC, 0));
    assert!(
        answer.is_err(),
        "a deposed leader acknowledged a produce: {answer:?}"
    );
    cluster.assert_all_kept(&client, &acked);
}

/// A produce waits for its acknowledgement no longer than its request's
/// `timeout_ms` says (Kafka's): with both followers stopped, an `acks=all`
/// produce to the leader is answered `REQUEST_TIMED_OUT` once its 300 ms
/// have passed, not after the broker's own 30 s; the partition serves again
/// once they are back. Elections wait 4 s here, so that the leader, which
/// steps down at 3/4 of that without a quorum, is still leading when the
/// produce times out, however slow the machine.
#[test]
fn an_acks_all_produce_that_cannot_commit_times_out_when_its_request_says() {
    let mut cluster = Cluster::start_with(&["--election-timeout-ms", "4000"]);
    let client = cluster.client();
    create_topic(&client);
    let mut acked = produce(&client, 0..100);
    let leader = cluster.leaders(&client)[0];
    let shard = shard_of(&client, leader);
    let followers: Vec<u32> = (1..=3)
        .filter(|&id| id != leader)
        .map(|id| cluster.node(id).pid())
        .collect();
    for &pid in &followers {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    }
    let acks = fjord_net::api::ACKS_ALL;
    common::assert_produce_times_out(&client, shard, TOPIC, acks, Duration::from_millis(300));
    for &pid in &followers {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGCONT) }, 0);
    }
    merge(&mut acked, produce(&client, 100..200));
    cluster.assert_all_kept(&client, &acked);
}

#[test]
fn a_rolling_restart_under_load_shows_no_error() {
    let mut cluster = Cluster::start();
    let client = cluster.client();
    create_topic(&client);
    cluster.leaders(&client);
    let producing_client = client.clone();
    let load = std::thread::spawn(move || {
        let mut acked = BTreeMap::new();
        for round in 0..30u32 {
            merge(
                &mut acked,
                produce(&producing_client, round * 100..round * 100 + 50),
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        acked
    });
    for id in 1..=3 {
        std::thread::sleep(Duration::from_millis(500));
        cluster.node(id).terminate();
        cluster.node(id).restart();
    }
    let acked = load
        .join()
        .expect("no produce failed during the rolling restart");
    let total: usize = acked.values().map(Vec::len).sum();
    assert_eq!(total, 30 * 50);
    cluster.assert_all_kept(&client, &acked);
    cluster.assert_metadata_equal();
}

#[test]
fn a_node_restarts_and_serves_while_the_controller_is_down() {
    let mut cluster = Cluster::start();
    let client = cluster.client();
    create_topic(&client);
    let mut acked = produce(&client, 0..100);
    // Node 1 runs the controller.
    cluster.node(1).kill();
    // Node 2 comes back with the metadata it kept, without the controller.
    cluster.node(2).terminate();
    cluster.node(2).restart();
    merge(&mut acked, produce(&client, 100..200));
    let total: usize = acked.values().map(Vec::len).sum();
    let got = consume(&client, total);
    assert_all_acknowledged_present(&acked, &got);
    cluster.node(1).restart();
    cluster.caught_up(&client);
    cluster.assert_replicas_identical();
    cluster.assert_metadata_equal();
}

/// A follower installs the controller's metadata only once it has kept
/// it (`cluster/followed`): killed after serving metadata it had not kept,
/// it would start again on older metadata and drop what it staged for the
/// partitions it gained since. While it cannot keep it, it serves what it
/// had; once it can, it catches up.
#[test]
fn a_follower_serves_no_metadata_it_could_not_keep() {
    let mut cluster = Cluster::start();
    let client = cluster.client();
    create_topic(&client);
    let lists_later = |addr: SocketAddr| {
        let client = Client::new(ClientConfig::new(addr)).expect("client");
        block_on(client.metadata(None)).is_ok_and(|m| {
            m.topics
                .into_iter()
                .flatten()
                .any(|t| t.name.as_deref() == Some("later"))
        })
    };
    let wait_until_listed = |addr: SocketAddr| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !lists_later(addr) {
            assert!(Instant::now() < deadline, "{addr} never lists the topic");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Node 3 cannot keep a copy: its temporary file's name is a directory.
    let blocked = cluster.node(3).data_dir().join("cluster/followed.tmp");
    // Its own followed.tmp may be there for a moment, between its write
    // and its rename.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = std::fs::create_dir(&blocked) {
        assert!(
            Instant::now() < deadline,
            "mkdir {}: {e}",
            blocked.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Through node 1, the controller's: a node answers a command once it
    // has applied it itself, which node 3 does not.
    let controller = cluster.node(1).client();
    block_on(Admin::new(controller).create_topic("later", 3, &[])).expect("create");
    wait_until_listed(cluster.node(1).addr);
    wait_until_listed(cluster.node(2).addr);
    // Node 2 installed it; node 3 has had the same rounds meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !lists_later(cluster.node(3).addr),
        "node 3 serves metadata it could not keep"
    );
    // And says so, a warning: it goes on serving what it had.
    let admin = cluster.admins[2].clone();
    let health = || fjord_broker::cli::top::get(&admin, "/health").expect("/health");
    assert!(
        health().contains("the newest metadata is not served: cannot keep"),
        "{}",
        health()
    );
    std::fs::remove_dir(&blocked).expect("rmdir");
    wait_until_listed(cluster.node(3).addr);
    assert!(!health().contains("newest metadata"), "{}", health());
    // Kept: after a kill, it starts on it, the controller down.
    cluster.node(1).kill();
    cluster.node(3).kill();
    cluster.node(3).restart();
    assert!(lists_later(cluster.node(3).addr), "not kept");
}

/// Three network namespaces joined by a bridge: each node behind a veth
/// whose bridge side can be set down (isolated) and up (healed).
struct Netns {
    bridge: String,
    prefix: String,
    spaces: Vec<String>,
}

impl Netns {
    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sets up namespaces `fj<pid>-1..3` on 10.<a>.<b>.1..3, the test's own
    /// side of the bridge at .254.
    fn create() -> Netns {
        let id = std::process::id();
        let prefix = format!("10.{}.{}", 100 + (id >> 8) % 100, id % 256);
        let bridge = format!("fjbr{}", id % 100_000);
        Self::ip(&["link", "add", &bridge, "type", "bridge"]);
        Self::ip(&["addr", "add", &format!("{prefix}.254/24"), "dev", &bridge]);
        Self::ip(&["link", "set", &bridge, "up"]);
        let mut spaces = Vec::new();
        for n in 1..=3 {
            let ns = format!("fj{id}-{n}");
            let veth = format!("fjv{}{n}", id % 100_000);
            Self::ip(&["netns", "add", &ns]);
            Self::ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            Self::ip(&["link", "set", &veth, "master", &bridge, "up"]);
            Self::ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{prefix}.{n}/24"),
                "dev",
                "eth0",
            ]);
            Self::ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            Self::ip(&["-n", &ns, "link", "set", "lo", "up"]);
            spaces.push(ns);
        }
        Netns {
            bridge,
            prefix,
            spaces,
        }
    }

    fn addr(&self, node: i32) -> SocketAddr {
        format!("{}.{node}:9093", self.prefix)
            .parse()
            .expect("address")
    }

    /// Cuts node `node` off from every other node and from the test.
    fn isolate(&self, node: i32, cut: bool) {
        let veth = format!("fjv{}{node}", std::process::id() % 100_000);
        Self::ip(&["link", "set", &veth, if cut { "down" } else { "up" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.spaces {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .output();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

#[test]
fn an_isolated_leader_stops_acknowledging_and_the_cluster_heals() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output();
    if !netns.is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: `ip netns` (iproute2) is not available");
        return;
    }
    let net = Netns::create();
    let mut nodes = Vec::new();
    for n in 1..=3 {
        let id = n.to_string();
        let seed = net.addr(1).to_string();
        let mut args = vec!["--node-id", &id];
        if n > 1 {
            args.extend(["--seeds", &seed]);
        }
        let launch = common::Launch {
            listen: Some(net.addr(n)),
            netns: Some(net.spaces[n as usize - 1].clone()),
            ..common::Launch::default()
        };
        nodes.push(Broker::launch(1, &args, launch));
    }
    // No admin listeners: nothing here reads them.
    let mut cluster = Cluster {
        nodes,
        admins: Vec::new(),
    };
    let client = cluster.client();
    create_topic(&client);
    let mut acked = produce(&client, 0..100);
    let leader = cluster.leaders(&client)[0];
    net.isolate(leader, true);
    let isolated = Instant::now();
    // On the minority side, the old leader acknowledges nothing: a client
    // next to it (in its namespace) gets no answer but errors.
    let ns = &net.spaces[leader as usize - 1];
    let minority = std::process::Command::new("timeout")
        .args([
            "8",
            "ip",
            "netns",
            "exec",
            ns,
            common::FJORD,
            "produce",
            TOPIC,
        ])
        .args([
            "--partition",
            "0",
            "--bootstrap",
            &net.addr(leader).to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"from-the-minority\n")?;
            child.wait_with_output()
        })
        .expect("the minority's producer");
    assert!(
        !minority.status.success(),
        "the isolated leader acknowledged: {}",
        String::from_utf8_lossy(&minority.stdout)
    );
    // The majority elected a leader and goes on.
    merge(&mut acked, produce(&client, 100..200));
    assert!(isolated.elapsed() < Duration::from_secs(30));
    net.isolate(leader, false);
    let total: usize = acked.values().map(Vec::len).sum();
    let got = consume(&client, total);
    assert_all_acknowledged_present(&acked, &got);
    assert!(
        got.values()
            .flatten()
            .all(|(_, v)| v != "from-the-minority"),
        "a record only the minority took was committed"
    );
    cluster.caught_up(&client);
    cluster.assert_replicas_identical();
    cluster.assert_metadata_equal();
}

/// A group's coordinator node is SIGKILLed: the committed offsets are on
/// the new leader of its `__consumer_offsets` partition, and the member,
/// adopted by the new coordinator, reads on without reading anything twice.
/// A member of `group` reading the topic from its start, committing only
/// when told.
fn group_member(client: &Client, group: &str) -> Consumer {
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            offset_reset: Some(Seek::Earliest),
            auto_commit_interval: None,
            ..ConsumerConfig::default()
        },
    );
    block_on(consumer.subscribe(&[TOPIC], group)).expect("subscribe");
    consumer
}

#[test]
fn a_group_survives_its_coordinators_node() {
    let mut cluster = Cluster::start();
    let client = cluster.client();
    create_topic(&client);
    cluster.leaders(&client);
    produce(&client, 0..300);
    let mut consumer = group_member(&client, "billing");
    let mut seen: Vec<(i32, i64)> = Vec::new();
    let read_until = |consumer: &mut Consumer, seen: &mut Vec<(i32, i64)>, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < count {
            assert!(Instant::now() < deadline, "read {} of {count}", seen.len());
            for r in block_on(consumer.poll(Duration::from_millis(200))).expect("poll") {
                seen.push((r.partition, r.offset));
            }
        }
    };
    read_until(&mut consumer, &mut seen, 300);
    block_on(consumer.commit()).expect("commit");

    // The coordinator: the leader of the group's offsets partition.
    let coordinator = find_coordinator(&client, "billing").expect("a coordinator");
    assert!(coordinator > 0);
    cluster.node(coordinator).kill();
    let survivors = Client::new(ClientConfig::with_bootstrap(
        cluster
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as i32 + 1 != coordinator)
            .map(|(_, n)| n.addr)
            .collect(),
    ))
    .expect("client");
    produce(&survivors, 300..600);
    read_until(&mut consumer, &mut seen, 600);
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "nothing read twice");
    block_on(consumer.commit()).expect("commit on the new coordinator");
    let described = block_on(Admin::new(survivors.clone()).describe_group("billing"))
        .expect("describe on the new coordinator");
    for o in &described.offsets {
        let last = seen
            .iter()
            .filter(|(p, _)| *p == o.partition)
            .map(|(_, off)| *off)
            .max();
        assert!(
            last.is_some_and(|last| o.committed > last),
            "partition {} committed {} after reading to {last:?}",
            o.partition,
            o.committed
        );
    }
    // The member's next heartbeat reaches the new coordinator, which adopts
    // it with the partitions it owns.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            block_on(consumer.poll(Duration::from_millis(200)))
                .expect("poll")
                .is_empty()
        );
        let described = block_on(Admin::new(survivors.clone()).describe_group("billing"))
            .expect("describe on the new coordinator");
        if described.members.len() == 1 {
            assert_eq!(described.members[0].assignment.len(), PARTITIONS as usize);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the member was not adopted: {described:?}"
        );
    }
    block_on(consumer.close()).expect("close");
    cluster.node(coordinator).restart();
}

#[test]
fn added_partitions_are_replicated_produced_to_and_assigned_to_the_group() {
    let mut cluster = Cluster::start();
    let client = cluster.client();
    create_topic(&client);
    cluster.leaders(&client);
    let mut consumer = group_member(&client, "growing");
    // A producer that knew the topic with two partitions sends to the new
    // ones too: it looks the topic up again for them.
    let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
    block_on(producer.send(TOPIC, Some(0), None, Some(b"before"), &[])).expect("produce");
    // Through a node that is not the controller: forwarded to it.
    let out = cluster
        .node(2)
        .cli(&["topic", "alter", TOPIC, "--partitions", "4"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = cluster
        .node(3)
        .cli(&["topic", "alter", TOPIC, "--partitions", "3"], "");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("InvalidPartitions"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let leaders = described_until(&client, "four partitions led, three replicas each", |t| {
        (t.partitions.len() == 4
            && t.partitions
                .iter()
                .all(|p| p.leader > 0 && p.replicas.len() == 3))
        .then(|| t.partitions.iter().map(|p| p.leader).collect::<Vec<_>>())
    });
    assert_eq!(leaders.len(), 4);
    let acks: Vec<_> = (0..40)
        .map(|i| {
            let value = format!("grown-{i}");
            producer.send(TOPIC, Some(i % 4), None, Some(value.as_bytes()), &[])
        })
        .collect();
    for ack in acks {
        block_on(ack).expect("acks=all produce to old and new partitions");
    }
    // The group's assignment follows the partition count: the member gets
    // the new partitions and reads their records.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 41 {
        assert!(Instant::now() < deadline, "read {seen:?} of 41");
        for r in block_on(consumer.poll(Duration::from_millis(200))).expect("poll") {
            seen.insert((r.partition, r.offset));
        }
    }
    for (p, count) in [(0, 11), (1, 10), (2, 10), (3, 10)] {
        assert_eq!(
            seen.iter().filter(|(q, _)| *q == p).count(),
            count,
            "{seen:?}"
        );
    }
    // Ten records past each leader's mark, on every replica.
    described_until(&client, "every replica caught up", |topic| {
        topic
            .partitions
            .iter()
            .all(|p| {
                p.in_sync.len() == 3
                    && p.log_end_offset > 10
                    && p.replica_log_ends.iter().all(|&e| e == p.log_end_offset)
            })
            .then_some(())
    });
    cluster.assert_metadata_equal();
}

/// A clustered node's log lines name it, its shards' and its main
/// thread's alike: the merged logs of a cluster still read.
#[test]
fn a_clustered_nodes_log_lines_name_it() {
    let log = tempfile::NamedTempFile::new().expect("stderr file");
    let mut node = Broker::launch(
        2,
        &["--node-id", "7"],
        common::Launch {
            stderr: Some(log.path().to_path_buf()),
            ..common::Launch::default()
        },
    );
    node.terminate();
    let text = std::fs::read_to_string(log.path()).expect("stderr");
    // Events start with their time; anything else is not tracing's.
    let events: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    for thread in [" main ", " shard-0"] {
        assert!(
            events.iter().any(|line| line.contains(thread)),
            "no event of {thread:?} in:\n{text}"
        );
    }
    for line in &events {
        assert!(
            line.contains("node{id=7}"),
            "an event without the node: {line}"
        );
    }
}

/// The coordinator `FindCoordinator` names for `group`: its node, or the
/// error code.
fn find_coordinator(client: &Client, group: &str) -> Result<i32, i16> {
    let found = block_on(
        client.ask_any(fjord_net::wire::RequestT::FindCoordinatorRequest(Box::new(
            fjord_net::wire::FindCoordinatorRequestT {
                group_id: Some(group.into()),
            },
        ))),
    )
    .expect("find coordinator");
    let fjord_net::wire::ResponseT::FindCoordinatorResponse(found) =
        found.unpack().expect("unpack").0
    else {
        panic!("expected a FindCoordinator response");
    };
    match found.error_code {
        0 => Ok(found.node_id),
        code => Err(code),
    }
}

/// `__consumer_offsets` is made only once as many nodes as its replication
/// factor are live: a consumer coming to a cluster whose other nodes have
/// not joined yet is told to retry, and the offsets are never kept on one
/// copy for good.
#[test]
fn the_offsets_topic_waits_for_its_replicas() {
    let partitions = ["--offsets-topic-partitions", "2"];
    let first = Broker::launch(
        1,
        &[&["--node-id", "1"][..], &partitions].concat(),
        Launch::default(),
    );
    let alone = Client::new(ClientConfig::new(first.addr)).expect("client");
    assert_eq!(
        find_coordinator(&alone, "early"),
        Err(fjord_net::ErrorCode::CoordinatorNotAvailable.code())
    );
    let metadata = block_on(alone.metadata(None)).expect("metadata");
    assert!(
        metadata
            .topics
            .into_iter()
            .flatten()
            .all(|t| t.name.as_deref() != Some("__consumer_offsets")),
        "made with fewer replicas than asked for"
    );
    let seed = first.addr.to_string();
    let mut nodes = vec![first];
    for id in ["2", "3"] {
        let args = [&["--node-id", id, "--seeds", &seed][..], &partitions].concat();
        nodes.push(Broker::launch(1, &args, Launch::default()));
    }
    let client = Client::new(ClientConfig::with_bootstrap(
        nodes.iter().map(|n| n.addr).collect(),
    ))
    .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while find_coordinator(&client, "early").is_err() {
        assert!(
            Instant::now() < deadline,
            "no coordinator with three nodes live"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let offsets = block_on(Admin::new(client.clone()).describe_topic("__consumer_offsets"))
        .expect("describe");
    assert_eq!(offsets.partitions.len(), 2);
    for p in &offsets.partitions {
        assert_eq!(p.replicas.len(), 3, "partition {}", p.partition);
    }
}

/// A follower refuses ListOffsets, as it refuses fetches: its end lags the
/// leader's and its tail may not be committed. The leader answers.
#[test]
fn list_offsets_is_answered_by_the_leader_only() {
    let cluster = Cluster::start();
    let client = cluster.client();
    create_topic(&client);
    produce(&client, 0..100);
    let leader = cluster.leaders(&client)[0];
    let follower = if leader == 1 { 2 } else { 1 };
    let latest = fjord_net::api::LATEST;
    let refused = block_on(client.list_offset(shard_of(&client, follower), TOPIC, 0, latest));
    let refused = format!(
        "{:?}",
        refused.expect_err("a follower answered ListOffsets")
    );
    assert!(refused.contains("NotLeader"), "{refused}");
    let (end, _) = block_on(client.list_offset(shard_of(&client, leader), TOPIC, 0, latest))
        .expect("the leader answers");
    // Partition 0's 50 records, and the leaders' empty marks of their terms.
    assert!((50..60).contains(&end), "end {end}");
}
