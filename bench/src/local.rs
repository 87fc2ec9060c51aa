//! The embedded local broker: with no `--bootstrap`, `bench` runs a real
//! `fjord serve` as a child process (this same executable, re-entered
//! through a hidden subcommand) on a temporary data directory, waits until
//! it serves, and stops it and removes the directory at the end. With
//! `--nodes N` it runs N such nodes as one cluster (node 1 runs the
//! controller, the others join through it).

use fjord_broker::config::KafkaBrokers;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The hidden subcommand that runs the broker in the child.
pub const SERVE_SUBCOMMAND: &str = "serve-local";

/// A local broker and its temporary directory.
pub struct LocalBroker {
    /// Its native address.
    pub addr: SocketAddr,
    /// Its Kafka listener (a free port: never Kafka's 9092, which a real
    /// Kafka on the machine may hold).
    pub kafka: SocketAddr,
    /// The brokers it shows Kafka clients.
    kafka_brokers: KafkaBrokers,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `--node-id` and `--seeds` in a cluster; the shards it runs.
    cluster: Option<(u32, Option<SocketAddr>, usize)>,
}

/// Local brokers forming one cluster.
pub struct LocalCluster {
    /// Node 1 first.
    pub nodes: Vec<LocalBroker>,
}

impl LocalCluster {
    /// Starts `count` nodes of `cores` shards each, node 1 first.
    pub fn start(
        count: usize,
        cores: usize,
        kafka_brokers: KafkaBrokers,
    ) -> Result<LocalCluster, String> {
        let mut nodes: Vec<LocalBroker> = Vec::with_capacity(count);
        for id in 1..=count as u32 {
            let seed = nodes.first().map(|n| n.addr);
            nodes.push(LocalBroker::start_with(
                Some((id, seed, cores)),
                kafka_brokers,
            )?);
        }
        Ok(LocalCluster { nodes })
    }

    /// Every node's address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Every node's Kafka listener.
    pub fn kafka_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.kafka).collect()
    }
}

impl LocalBroker {
    /// Starts one and waits until every shard serves.
    pub fn start(kafka_brokers: KafkaBrokers) -> Result<LocalBroker, String> {
        LocalBroker::start_with(None, kafka_brokers)
    }

    fn start_with(
        cluster: Option<(u32, Option<SocketAddr>, usize)>,
        kafka_brokers: KafkaBrokers,
    ) -> Result<LocalBroker, String> {
        let dir = tempfile::Builder::new()
            .prefix("fjord-bench-")
            .tempdir_in(std::env::temp_dir())
            .map_err(|e| format!("cannot create a temporary data dir: {e}"))?;
        let mut broker = LocalBroker {
            addr: free_port()?,
            kafka: free_port()?,
            kafka_brokers,
            dir,
            child: None,
            cluster,
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
        let mut command = Command::new(exe);
        command
            .arg(SERVE_SUBCOMMAND)
            .arg(self.dir.path())
            .arg(self.addr.to_string())
            .args(["--kafka-listen", &self.kafka.to_string()]);
        if self.kafka_brokers == KafkaBrokers::Shard {
            command.args(["--kafka-brokers", "shard"]);
        }
        if let Some((id, seed, cores)) = self.cluster {
            command.args(["--node-id", &id.to_string(), "--cores", &cores.to_string()]);
            // Node k's shards start on the core after node k-1's: pinned
            // from core 0 each, every node's shard 0 would share one core.
            let first_cpu = (id as usize - 1) * cores;
            command.args(["--first-cpu", &first_cpu.to_string()]);
            if let Some(seed) = seed {
                command.args(["--seeds", &seed.to_string()]);
            }
        }
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the local broker: {e}"))?;
        if let Err(e) = fjord_broker::node::wait_until_serving(&mut child, Duration::from_secs(30))
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("local broker: {e}"));
        }
        eprintln!(
            "bench: local broker at {} (data in {})",
            self.addr,
            self.dir.path().display()
        );
        self.child = Some(child);
        Ok(())
    }

    /// Stops it cleanly (SIGTERM) and starts it again on the same data: its
    /// caches start cold.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid touches no memory.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free port on 127.0.0.1, below the kernel's ephemeral range.
fn free_port() -> Result<SocketAddr, String> {
    fjord_broker::listeners::spare_loopback_port()
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .map_err(|e| format!("cannot find a free port: {e}"))
}
