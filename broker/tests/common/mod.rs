//! A real `fjord serve` process on a loopback port, for integration tests.

#![allow(dead_code)]

pub mod freeze;

use fjord_client::{Admin, Client, ClientConfig, Consumer, ConsumerConfig, Seek};
use futures::executor::block_on;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

/// The `fjord` binary under test.
pub const FJORD: &str = env!("CARGO_BIN_EXE_fjord");

/// A running broker and its data directory.
pub struct Broker {
    dir: tempfile::TempDir,
    /// The node's native address.
    pub addr: SocketAddr,
    /// First shard port, kept across restarts as a real node's are.
    shard_port_base: u16,
    cores: usize,
    extra: Vec<String>,
    launch: Launch,
    child: Option<Child>,
}

/// How a test's broker process is set up beyond its flags.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// RLIMIT_NOFILE (soft and hard) of the process.
    pub nofile: Option<u64>,
    /// Where its stderr goes (appended); inherited when `None`.
    pub stderr: Option<PathBuf>,
    /// Serve this directory instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Listen here instead of a free loopback port.
    pub listen: Option<SocketAddr>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

/// What each thread of process `pid` is doing, from /proc: name, state
/// (R running, S sleeping, D in the kernel) and where it sleeps. For a node
/// that did not come up: waiting (`io_uring_enter`), spinning or blocked.
fn threads_of(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(no /proc/{pid}/task)");
    };
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    tasks
        .flatten()
        .map(|task| {
            let dir = task.path();
            let stat = read(dir.join("stat"));
            // The state follows the command name's closing parenthesis.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.get(..1))
                .unwrap_or("?");
            format!(
                "  {} {state} wchan={} syscall={}",
                read(dir.join("comm")).trim(),
                read(dir.join("wchan")).trim(),
                read(dir.join("syscall"))
                    .split_whitespace()
                    .next()
                    .unwrap_or("?"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A loopback port nobody listens on, below the kernel's ephemeral range
/// and never the same twice in this process.
pub fn free_port() -> u16 {
    fjord_broker::listeners::spare_loopback_port().expect("a free loopback port")
}

/// The first of `count` consecutive ports nobody listens on at `ip` (each
/// bound, then released). With `ip` in a network namespace of the test's
/// own (not reachable from here), any base will do: 0 lets the node pick.
fn free_ports(ip: std::net::IpAddr, count: usize) -> u16 {
    if !ip.is_loopback() {
        return 0;
    }
    for _ in 0..100 {
        let base = free_port();
        // Free on 127.0.0.1 too: a test may proxy a node on another
        // loopback address through the same port numbers there.
        let local = std::net::IpAddr::from([127, 0, 0, 1]);
        let all_free = (0..count).all(|i| {
            u16::try_from(usize::from(base) + i)
                .ok()
                .is_some_and(|port| {
                    [ip, local]
                        .iter()
                        .all(|&at| std::net::TcpListener::bind((at, port)).is_ok())
                })
        });
        if all_free {
            return base;
        }
    }
    panic!("no {count} consecutive free ports");
}

impl Broker {
    /// Starts a broker with `cores` shards in a fresh directory.
    pub fn start(cores: usize) -> Broker {
        Broker::start_with(cores, &[])
    }

    /// Starts a broker with extra `serve` flags.
    pub fn start_with(cores: usize, extra: &[&str]) -> Broker {
        Broker::launch(cores, extra, Launch::default())
    }

    /// Starts a broker with extra `serve` flags and process settings.
    pub fn launch(cores: usize, extra: &[&str], launch: Launch) -> Broker {
        let addr = launch
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut broker = Broker {
            dir: tempfile::tempdir().expect("temp dir"),
            shard_port_base: free_ports(addr.ip(), cores),
            addr,
            cores,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            launch,
            child: None,
        };
        broker.spawn();
        broker
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.launch.data_dir.as_deref().unwrap_or(self.dir.path())
    }

    /// Serves `dir` from the next start on (a data directory moved while
    /// the broker was down).
    pub fn set_data_dir(&mut self, dir: PathBuf) {
        assert!(self.child.is_none(), "moved under a running broker");
        self.launch.data_dir = Some(dir);
    }

    /// The first shard's port (shard i listens on this + i).
    pub fn shard_port_base(&self) -> u16 {
        self.shard_port_base
    }

    /// The broker's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Where the staging files go: inside the test's directory, so a
    /// killed broker leaves nothing in /dev/shm.
    pub fn staging_dir(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    /// The `serve` arguments of this broker.
    pub fn serve_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["serve".into(), "--data-dir".into()];
        args.push(self.data_dir().display().to_string());
        args.extend(["--listen".into(), self.addr.to_string()]);
        args.extend(["--shard-port-base".into(), self.shard_port_base.to_string()]);
        args.extend(["--cores".into(), self.cores.to_string()]);
        if !self.extra.iter().any(|a| a == "--staging-dir") {
            args.push("--staging-dir".into());
            args.push(self.staging_dir().display().to_string());
        }
        if !self.extra.iter().any(|a| a == "--kafka-listen") {
            // Tests run many brokers at once: none takes Kafka's port
            // unless it asks for a listener.
            args.extend(["--kafka-listen".into(), "none".into()]);
        }
        if !self.extra.iter().any(|a| a == "--admin-listen") {
            // Nor the admin port.
            args.extend(["--admin-listen".into(), "none".into()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        assert!(self.child.is_none(), "already running");
        let mut command = match &self.launch.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, FJORD]);
                command
            }
            None => Command::new(FJORD),
        };
        command.args(self.serve_args()).stdout(Stdio::piped());
        if let Some(path) = &self.launch.stderr {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("stderr file");
            command.stderr(file);
        }
        if let Some(nofile) = self.launch.nofile {
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child's own limits, between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("spawn fjord serve");
        if let Err(e) = fjord_broker::node::wait_until_serving(&mut child, Duration::from_secs(30))
        {
            let threads = threads_of(child.id());
            let _ = child.kill();
            panic!("fjord serve: {e}: {:?}\n{threads}", child.wait());
        }
        self.child = Some(child);
    }

    /// Sends `signal` and waits for the exit.
    pub fn stop(&mut self, signal: i32) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let sent = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(sent, 0, "kill failed");
        self.wait()
    }

    /// Waits for the exit of a process already told to go.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        child.wait().expect("wait for fjord")
    }

    /// SIGTERM, then checks the clean exit.
    pub fn terminate(&mut self) {
        let status = self.stop(libc::SIGTERM);
        assert!(status.success(), "clean shutdown exits 0, got {status}");
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        self.stop(libc::SIGKILL);
    }

    /// Starts again on the same directory and port.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// A client of this broker.
    pub fn client(&self) -> Client {
        let mut config = ClientConfig::new(self.addr);
        config.request_timeout = Duration::from_secs(10);
        Client::new(config).expect("client")
    }

    /// Every record of `topic`'s partition `p` (its value), by offset,
    /// read with the native consumer up to the partition's end.
    pub fn records(&self, topic: &str, p: i32) -> BTreeMap<i64, Vec<u8>> {
        let client = self.client();
        let end = block_on(Admin::new(client.clone()).describe_topic(topic))
            .expect("describe")
            .partitions[p as usize]
            .log_end_offset;
        let mut consumer = Consumer::new(&client, ConsumerConfig::default());
        block_on(consumer.assign(topic, Some(&[p]), Seek::Earliest)).expect("assign");
        let mut records = BTreeMap::new();
        while (records.len() as i64) < end {
            let polled = block_on(consumer.poll(Duration::from_secs(5))).expect("poll");
            assert!(
                !polled.is_empty(),
                "partition {p} ends early: {} of {end}",
                records.len()
            );
            for r in polled {
                let value = r.value.expect("a value");
                assert!(records.insert(r.offset, value).is_none());
            }
        }
        records
    }

    /// Runs `fjord ARGS --bootstrap ADDR` with `stdin`.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        cli(self.addr, args, stdin)
    }

    /// The directory of a topic's partition (`topics/<name>.<id>/<p>`).
    pub fn partition_dirs(&self, topic: &str) -> Vec<PathBuf> {
        let topics = self.data_dir().join("topics");
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(&topics).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.rsplit_once('.').map(|(t, _)| t) == Some(topic) {
                for p in std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    dirs.push(p.path());
                }
            }
        }
        dirs.sort();
        dirs
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the CLI against `addr`.
pub fn cli(addr: SocketAddr, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(FJORD)
        .args(args)
        .arg("--bootstrap")
        .arg(addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fjord");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let output = child.wait_with_output().expect("fjord output");
    let _ = writer.join();
    output
}

/// What the segment files under `dir` hold, concatenated, each without
/// its preallocated (zero) tail.
pub fn segment_bytes(dir: &Path) -> Vec<u8> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("partition dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| {
            let mut bytes = std::fs::read(p).expect("segment");
            let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            bytes.truncate(end);
            bytes
        })
        .collect()
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A small ext4 filesystem on a loop device, unmounted on drop.
pub struct SmallDisk {
    _dir: tempfile::TempDir,
    /// Where it is mounted.
    pub mount: PathBuf,
}

impl SmallDisk {
    /// `Err` (with the reason) when this machine does not let the test make one.
    pub fn make(mib: u64) -> Result<SmallDisk, String> {
        // SAFETY: geteuid has no memory effects.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot mount a loop filesystem".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("mnt");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(|e| e.to_string())?;
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        let run = |program: &str, args: &[&Path]| -> Result<(), String> {
            let out = Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{program}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(
            "mkfs.ext4",
            &[
                Path::new("-q"),
                Path::new("-F"),
                Path::new("-m"),
                Path::new("0"),
                &image,
            ],
        )?;
        run(
            "mount",
            &[Path::new("-o"), Path::new("loop"), &image, &mount],
        )?;
        Ok(SmallDisk { _dir: dir, mount })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Produces one record to partition 0 of `topic` at `addr` with `acks`
/// and a request `timeout_ms` of `timeout`, and asserts the broker's answer
/// is `REQUEST_TIMED_OUT`, given once the timeout passed and well before
/// its own 30 s would have.
pub fn assert_produce_times_out(
    client: &Client,
    addr: SocketAddr,
    topic: &str,
    acks: i16,
    timeout: Duration,
) {
    let mut builder = fjord_core::BatchBuilder::new();
    builder.push(0, None, Some(b"late"), &[]);
    let batch = builder.build();
    let body = fjord_client::producer::produce_request(topic, 0, acks, timeout, batch.len());
    let started = std::time::Instant::now();
    let lane = fjord_client::transport::Lane::Prompt;
    let answer = block_on(client.request(addr, lane, body, batch))
        .and_then(|response| fjord_client::producer::produce_result(&response, topic, 0));
    let waited = started.elapsed();
    assert!(
        matches!(
            answer,
            Err(fjord_client::ClientError::Broker {
                code: fjord_net::ErrorCode::RequestTimedOut,
                ..
            })
        ),
        "{answer:?}"
    );
    assert!(
        waited >= timeout && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
}
