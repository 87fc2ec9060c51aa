//! `fjord serve`: one pinned glommio executor per shard, joined by a channel
//! mesh; shard 0 runs the controller. The main thread only starts the
//! shards, waits for signals and joins them.

use crate::config::{ConfigError, KafkaBrokers, ServeConfig};
use crate::conn::{self, Protocol, Stop};
use crate::controller::Controller;
use crate::listeners::{self, ListenError, Listener};
use crate::logging;
use crate::mesh::ShardMsg;
use crate::process::{DirLock, LockError};
use crate::shard::Shard;
use fjord_storage::staging::{self, StagingError, StagingFile};
use fjord_storage::{DataDir, Staging};
use futures::FutureExt;
use futures::channel::oneshot;
use glommio::Placement;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What `fjord serve` prints on stdout once every shard accepts connections.
pub const READY_LINE_PREFIX: &str = "fjord: serving";

/// Waits until a `fjord serve` child process says it serves, for scripts
/// and tests that start one: reads its stdout (on a thread of its own,
/// which keeps draining it afterwards) for [`READY_LINE_PREFIX`].
pub fn wait_until_serving(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<(), String> {
    use std::io::BufRead;
    let stdout = child
        .stdout
        .take()
        .ok_or("the broker's stdout is not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with(READY_LINE_PREFIX) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(timeout)
        .map_err(|_| format!("the broker did not come up within {timeout:?}"))
}

/// Messages queued between two shards before the sender waits.
const MESH_CHANNEL_LEN: usize = 1024;
/// How long a shutdown waits for connections to finish what they started.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory cannot be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A shard failed to start or run.
    #[error("shard {shard}: {message}")]
    Shard {
        /// Which.
        shard: usize,
        /// What failed.
        message: String,
    },
    /// Signal handling could not be set up.
    #[error("signals: {0}")]
    Signals(std::io::Error),
    /// A staging file that must not be applied (another node's, another
    /// layout's); the node does not start rather than lose or mix records.
    #[error(transparent)]
    Staging(StagingError),
    /// Another process serves the data directory.
    #[error(transparent)]
    Locked(#[from] LockError),
    /// Another process listens on one of the node's addresses.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

enum Event {
    Ready,
    Failed(usize, String),
    Signal(i32),
}

/// Runs a node until SIGINT or SIGTERM, then shuts it down cleanly.
pub fn serve(mut config: ServeConfig) -> Result<(), NodeError> {
    config.validate()?;
    logging::init(config.log_format);
    let _node = logging::node_span(config.node_id);
    // Resolved once: `available_parallelism` reads cgroup files, far too
    // slow for the routing path that asks which shard owns a partition.
    config.cores = Some(config.shard_count());
    config.controller_hosts_partitions = Some(config.hosts_partitions_on_controller());
    // Absolute: glommio's directory syncs fail (EBADF) on a relative path,
    // which broke the first metadata write of `--data-dir d`.
    if let Ok(absolute) = std::path::absolute(&config.data_dir) {
        config.data_dir = absolute;
    }
    let data = DataDir::create(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    // Held until this function returns; the kernel lets go on any exit.
    let _lock = DirLock::acquire(data.path())?;
    let count = config.shard_count();
    let budget = descriptor_budget(count);
    let files_per_shard = budget.files_per_shard;
    if budget.connections_per_shard < config.max_connections_per_shard {
        tracing::info!(
            configured = config.max_connections_per_shard,
            now = budget.connections_per_shard,
            "max_connections_per_shard lowered to what the descriptor limit holds"
        );
        config.max_connections_per_shard = budget.connections_per_shard;
    }
    let shard_ports = shard_ports(&config, count)?;
    let kafka_ports = kafka_shard_ports(&config, count, &shard_ports)?;
    let listeners = listeners(&config, &shard_ports, &kafka_ports);
    listeners::check_free(&listeners)?;
    let (staging_files, staging_note) = open_staging(&config, count)?;
    let (events, inbox) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(NodeError::Signals)?;
    let signal_events = events.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal_events.send(Event::Signal(signal)).is_err() {
                return;
            }
        }
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mesh = MeshBuilder::<ShardMsg, Full>::full(count, MESH_CHANNEL_LEN);
    let mut stops = Vec::new();
    let mut handles = Vec::new();
    // A data shard's pool holds what its logs work in, and is faulted in at
    // start; a controller shard without partitions writes only the small
    // metadata log and gets the small pool.
    let data_dma_memory = fjord_storage::shard::dma_memory_bytes(
        config.cache_bytes_per_shard,
        config
            .staging_bytes_per_shard
            .max(fjord_storage::LogConfig::default().staged_bytes_max),
    );
    let first_data_shard = config.first_data_shard();
    for (i, staging) in staging_files.into_iter().enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        stops.push(stop_tx);
        let (mesh, config, ports, data, events) = (
            mesh.clone(),
            config.clone(),
            (shard_ports.clone(), kafka_ports.clone()),
            data.clone(),
            events.clone(),
        );
        let cpu = (config.first_cpu + i) % cpus;
        let handle = fjord_storage::shard::executor(
            &format!("shard-{i}"),
            Placement::Fixed(cpu),
            if i < first_data_shard {
                fjord_storage::shard::IO_MEMORY_BYTES
            } else {
                data_dma_memory
            },
        )
        .spawn(move || async move {
            // Entered for the executor's life: every task of the shard logs
            // inside it.
            let _node = logging::node_span(config.node_id);
            let failed = events.clone();
            fjord_storage::files::set_budget(files_per_shard);
            fjord_storage::io_stats::set_enabled(config.metrics);
            let shard = run_shard(mesh, config, ports, data, staging, stop_rx.shared(), events);
            if let Err(message) = shard.await {
                let _ = failed.send(Event::Failed(i, message));
            }
        })
        .map_err(|e| NodeError::Shard {
            shard: i,
            message: format!("cannot start executor: {e}"),
        })?;
        handles.push(handle);
    }
    drop(events);
    let mut ready = 0;
    let mut outcome = Ok(());
    while let Ok(event) = inbox.recv() {
        match event {
            Event::Ready => {
                ready += 1;
                if ready == count {
                    if let Err(e) = listeners::check_unshared(&listeners) {
                        outcome = Err(e.into());
                        break;
                    }
                    let kafka = match config.kafka_listen {
                        None => "no Kafka listener".to_owned(),
                        Some(a) if kafka_ports.is_empty() => format!("Kafka on {a}"),
                        Some(a) => format!("Kafka on {a}, a broker per shard on {kafka_ports:?}"),
                    };
                    let admin = config
                        .admin_listen
                        .map_or("no admin listener".to_owned(), |a| format!("admin on {a}"));
                    println!(
                        "{READY_LINE_PREFIX} {} on {} with {count} shards (shard ports {:?}; {kafka}; {admin}; {staging_note})",
                        config.data_dir.display(),
                        config.listen,
                        shard_ports
                    );
                }
            }
            Event::Failed(shard, message) => {
                outcome = Err(NodeError::Shard { shard, message });
                break;
            }
            Event::Signal(signal) => {
                tracing::info!(signal, "shutting down");
                break;
            }
        }
    }
    for stop in stops {
        let _ = stop.send(());
    }
    for handle in handles {
        let _ = handle.join();
    }
    if outcome.is_ok() {
        tracing::info!("stopped cleanly");
    }
    outcome
}

/// Opens every shard's staging file on this (main) thread: mapping and
/// sizing shared memory are blocking calls. A budget the shared memory
/// cannot hold for every shard shrinks to fit; shared memory that is missing
/// or cannot hold even `staging::BYTES_MIN` turns staging off for the node.
/// Either is reported once. A file that belongs elsewhere stops the start.
/// Returns the files by shard and a note for the ready line.
fn open_staging(
    config: &ServeConfig,
    count: usize,
) -> Result<(Vec<Option<StagingFile>>, String), NodeError> {
    let id = staging::data_dir_id(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    staging::check_staging_dir_changed(
        &config.staging_dir,
        &config.data_dir,
        id,
        config.staging_bytes_per_shard > 0,
    )
    .map_err(NodeError::Staging)?;
    if config.staging_bytes_per_shard == 0 {
        staging::check_staging_off(&config.staging_dir, &config.data_dir, id)
            .map_err(NodeError::Staging)?;
        let files = std::iter::repeat_with(|| None).take(count).collect();
        return Ok((files, "staging off".into()));
    }
    staging::check_extra_shards(&config.staging_dir, &config.data_dir, id, count)
        .map_err(NodeError::Staging)?;
    staging::check_moved(&config.staging_dir, &config.data_dir, id).map_err(NodeError::Staging)?;
    // A shard that runs only the controller stages nothing (its logs are
    // `fsync=always`): no file, and no share of shared memory.
    let first_data_shard = config.first_data_shard();
    staging::check_without_partitions(
        &config.staging_dir,
        &config.data_dir,
        id,
        0..first_data_shard,
    )
    .map_err(NodeError::Staging)?;
    let topology = staging::topology(count, first_data_shard);
    let bytes = staging::bytes_fitting(
        &config.staging_dir,
        &config.data_dir,
        first_data_shard..count,
        config.staging_bytes_per_shard,
    );
    let mut files = Vec::with_capacity(count);
    let mut off = Vec::new();
    files.resize_with(first_data_shard, || None);
    for shard in first_data_shard..count {
        match StagingFile::open(
            &config.staging_dir,
            &config.data_dir,
            id,
            shard,
            topology,
            bytes,
        ) {
            Ok(file) => files.push(Some(file)),
            Err(e @ StagingError::Refused { .. }) => return Err(NodeError::Staging(e)),
            Err(e @ StagingError::Unavailable { .. }) => {
                // This shard runs without staging; the others still open
                // theirs (they may hold batches to replay). Said once, below.
                files.push(None);
                off.push((shard, e));
            }
        }
    }
    if off.len() == count - first_data_shard
        && let Some((_, e)) = off.first()
    {
        tracing::warn!(error = %e, "staging off: acks=1 waits for the disk write");
        return Ok((files, format!("staging off: {e}")));
    }
    let staged: usize = files.iter().flatten().map(|f| f.staged_batches()).sum();
    // Compared as the file would be sized: a budget off the page size is
    // not shrunk by rounding.
    let shrunk = if bytes < staging::file_bytes(config.staging_bytes_per_shard) {
        format!(
            " (shrunk from {}: shared memory holds no more)",
            config.staging_bytes_per_shard
        )
    } else {
        String::new()
    };
    // Said, not refused: a user may mean it (an ext4 on a RAM disk is
    // memory that statfs cannot tell from a disk), and acknowledgements
    // still survive a killed process.
    let on_disk = match fjord_storage::space::is_in_memory(&config.staging_dir) {
        Ok(false) => {
            "; not in memory (a file system on a disk): a stalled disk can stall staging too"
        }
        _ => "",
    };
    let partly_off = match off.first() {
        Some((_, e)) => {
            let shards: Vec<String> = off.iter().map(|(shard, _)| shard.to_string()).collect();
            format!("; off on shards {}: {e}", shards.join(","))
        }
        None => String::new(),
    };
    let note = format!(
        "staging {} B per shard{shrunk} in {}{on_disk}, {staged} batches to replay{partly_off}",
        bytes,
        config.staging_dir.display()
    );
    if shrunk.is_empty() && off.is_empty() && on_disk.is_empty() {
        tracing::info!("{note}");
    } else {
        tracing::warn!("{note}");
    }
    Ok((files, note))
}

/// How a shard may spend file descriptors.
struct DescriptorBudget {
    /// Segment files open at once; idle ones close past it.
    files_per_shard: usize,
    /// Client connections; more are closed on accept.
    connections_per_shard: usize,
}

/// Raises the descriptor limit to the hard limit and splits it: a few kept
/// for the process itself, then half of the rest for segment files and half
/// for connections, each shared evenly by the shards. Neither can starve
/// the other: a flood of connections never leaves a log unable to open a
/// file, and tens of thousands of partitions never leave no room to accept.
fn descriptor_budget(shards: usize) -> DescriptorBudget {
    /// Descriptors kept aside for the process itself (rings, eventfds,
    /// listeners, the blocking pool's directory reads).
    const RESERVED: u64 = 64;
    /// Fewest segment files a shard may hold: a log's active pair and a few
    /// readers.
    const PER_SHARD_MIN: usize = 16;
    let limit = match crate::process::raise_nofile_limit() {
        Ok((before, after)) => {
            tracing::info!(
                soft_before = before,
                soft_now = after,
                "file descriptor limit raised to the hard limit"
            );
            after
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the file descriptor limit");
            1024
        }
    };
    let half = usize::try_from(limit.saturating_sub(RESERVED) / 2).unwrap_or(usize::MAX);
    let per_shard = (half / shards.max(1)).max(PER_SHARD_MIN);
    tracing::info!(
        descriptor_limit = limit,
        segment_files_per_shard = per_shard,
        connections_per_shard = per_shard,
        "descriptor budget: idle segment files close past each shard's share"
    );
    DescriptorBudget {
        files_per_shard: per_shard,
        connections_per_shard: per_shard,
    }
}

fn shard_ports(config: &ServeConfig, count: usize) -> Result<Vec<u16>, NodeError> {
    let base = config
        .shard_port_base
        .unwrap_or_else(|| config.listen.port().saturating_add(1));
    let named = named_ports(config);
    ports_from(config.listen.ip(), base, count, "shard_port_base", &named)
}

/// Each shard's own Kafka port when Kafka clients see a broker per shard;
/// none otherwise. Free ones pass over `shard_ports` too.
fn kafka_shard_ports(
    config: &ServeConfig,
    count: usize,
    shard_ports: &[u16],
) -> Result<Vec<u16>, NodeError> {
    match config.kafka_listen {
        Some(listen) if config.kafka_brokers == KafkaBrokers::Shard => {
            let mut named = named_ports(config);
            named.extend_from_slice(shard_ports);
            ports_from(
                listen.ip(),
                config.kafka_shard_port_base.unwrap_or(0),
                count,
                "kafka_shard_port_base",
                &named,
            )
        }
        _ => Ok(Vec::new()),
    }
}

/// The ports the node's single-address settings name.
fn named_ports(config: &ServeConfig) -> Vec<u16> {
    [
        Some(config.listen),
        config.kafka_listen,
        config.admin_listen,
    ]
    .into_iter()
    .flatten()
    .map(|addr| addr.port())
    .filter(|&port| port != 0)
    .collect()
}

/// Every address the node listens on, with the setting that names it.
fn listeners(config: &ServeConfig, shard_ports: &[u16], kafka_ports: &[u16]) -> Vec<Listener> {
    let listener = |addr, setting: String| Listener { addr, setting };
    let shards = shard_ports.iter().enumerate().map(|(i, &port)| {
        let addr = SocketAddr::new(config.listen.ip(), port);
        listener(addr, format!("shard_port_base, shard {i}"))
    });
    let kafka = config.kafka_listen.into_iter().flat_map(|listen| {
        let shards = kafka_ports.iter().enumerate().map(move |(i, &port)| {
            let addr = SocketAddr::new(listen.ip(), port);
            listener(addr, format!("kafka_shard_port_base, shard {i}"))
        });
        std::iter::once(listener(listen, "kafka_listen".to_owned())).chain(shards)
    });
    let admin = config
        .admin_listen
        .map(|addr| listener(addr, "admin_listen".to_owned()));
    std::iter::once(listener(config.listen, "listen".to_owned()))
        .chain(shards)
        .chain(kafka)
        .chain(admin)
        .collect()
}

/// `count` ports from `base` on, or free ones on `ip` when `base` is 0,
/// none of them in `named`.
fn ports_from(
    ip: IpAddr,
    base: u16,
    count: usize,
    key: &str,
    named: &[u16],
) -> Result<Vec<u16>, NodeError> {
    if base == 0 {
        return free_ports(ip, count, named).map_err(|e| NodeError::Shard {
            shard: 0,
            message: format!("cannot find a free port for {key}: {e}"),
        });
    }
    (0..count)
        .map(|i| {
            u16::try_from(usize::from(base) + i).map_err(|_| {
                NodeError::Config(ConfigError::Invalid(format!(
                    "{key} {base} leaves no port for shard {i}"
                )))
            })
        })
        .collect()
}

/// Free ports, for tests and for nodes whose clients only ever learn ports
/// from Metadata: found by binding them and releasing them together, so
/// that no two are the same. A port another setting names is passed over:
/// that setting's port may be free now only because whoever picked it (a
/// test, `bench`'s embedded broker) released it for the node to bind, and
/// the kernel hands a released port out again as readily as any.
fn free_ports(ip: IpAddr, count: usize, named: &[u16]) -> std::io::Result<Vec<u16>> {
    pick_ports(count, named, || {
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
        let port = listener.local_addr()?.port();
        Ok((listener, port))
    })
}

/// `count` ports from `bind` (a port and what holds it), none in `named`,
/// all held until every one is found.
fn pick_ports<H>(
    count: usize,
    named: &[u16],
    mut bind: impl FnMut() -> std::io::Result<(H, u16)>,
) -> std::io::Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        // Each named port can come back at most once while all are held.
        assert!(held.len() < count + named.len());
        let (holder, port) = bind()?;
        if !named.contains(&port) {
            ports.push(port);
        }
        held.push(holder);
    }
    Ok(ports)
}

async fn run_shard(
    mesh: MeshBuilder<ShardMsg, Full>,
    config: ServeConfig,
    (shard_ports, kafka_ports): (Vec<u16>, Vec<u16>),
    data: DataDir,
    staging: Option<StagingFile>,
    stop: Stop,
    events: mpsc::Sender<Event>,
) -> Result<(), String> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|e| format!("cannot join the mesh: {e}"))?;
    data.prime().await.map_err(|e| e.to_string())?;
    let (ready_tx, ready_rx) = oneshot::channel();
    let staging = staging.map(|file| Rc::new(Staging::new(file, data.path().to_path_buf())));
    let shard = Rc::new(Shard::new(
        senders,
        config,
        shard_ports,
        kafka_ports,
        data,
        staging.clone(),
        ready_tx,
    ));
    // From the start: recovery and the first metadata write to the disk
    // too, and a start held by a stalled disk must say so.
    glommio::spawn_local(shard.clone().watch_disk()).detach();
    let clustered = shard.config.node_id.is_some();
    if clustered && shard.id == 0 {
        // Before any partition opens: their groups start from it.
        shard
            .open_hard_states()
            .await
            .map_err(|e| format!("raft hard states: {e}"))?;
    }
    shard.serve_mesh(receivers);
    shard.start_replication();
    glommio::spawn_local(crate::admin::metrics::rotate_every_second(
        shard.metrics().clone(),
    ))
    .detach();
    if shard.id == 0
        && let Some(addr) = shard.config.admin_listen
    {
        // Up before the controller: /health can say what the node waits for.
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        glommio::spawn_local(crate::admin::http::serve(
            shard.clone(),
            listener,
            stop.clone(),
        ))
        .detach();
    }
    if clustered && shard.id == 0 {
        glommio::spawn_local(crate::cluster::share_liveness(shard.clone())).detach();
    }
    if clustered && shard.id == 0 && shard.config.kafka_listen.is_some() {
        glommio::spawn_local(crate::kafka::register_listener(shard.clone())).detach();
    }
    if shard.id == 0 && !shard.config.runs_controller() {
        crate::cluster::restore_followed(&shard)
            .await
            .map_err(|e| format!("metadata of the last run: {e}"))?;
        glommio::spawn_local(crate::cluster::follow(shard.clone())).detach();
    }
    let quorum = shard.config.runs_controller() && shard.config.controller_quorum();
    if shard.id == 0 && shard.config.runs_controller() {
        let opened = if quorum {
            let voters: Vec<(u32, SocketAddr)> = shard
                .config
                .controller_voters
                .iter()
                .filter_map(|v| Some((v.id, v.addr?)))
                .collect();
            Controller::open_quorum(&shard, &voters).await
        } else {
            Controller::open(
                shard.data().path(),
                shard.data_shards(),
                shard.cache().clone(),
                shard.config.metadata_reserve_bytes,
            )
            .await
        };
        let controller = Rc::new(opened.map_err(|e| format!("controller: {e}"))?);
        controller
            .remove_stale_topics(shard.data().path())
            .await
            .map_err(|e| format!("controller: {e}"))?;
        let metadata = controller.metadata();
        shard.set_controller(controller.clone());
        let not_served = shard.push_metadata(&metadata).await;
        if !not_served.is_empty() {
            tracing::warn!(
                shard = 0,
                "at start, {}",
                crate::mesh::NotServed::summary(&not_served)
            );
        }
        let interval = Duration::from_millis(shard.config.disk_check_interval_ms);
        glommio::spawn_local(
            controller
                .clone()
                .keep_reserve(shard.space().clone(), interval),
        )
        .detach();
        if quorum {
            // Applies what the quorum commits; the voter follows whichever
            // voter leads, as any node does, to register and report.
            glommio::spawn_local(controller.run_quorum(shard.clone())).detach();
            glommio::spawn_local(crate::cluster::follow(shard.clone())).detach();
        } else if clustered {
            crate::cluster::register_self(&shard)
                .await
                .map_err(|e| format!("controller: cannot register this node: {e}"))?;
        }
    }
    if ready_rx.await.is_err() {
        return Err("no metadata from the controller".into());
    }
    let own = SocketAddr::new(shard.config.listen.ip(), shard.shard_ports[shard.id]);
    // With a Kafka broker per shard, the node's listener stays for
    // bootstrapping; each shard's own port serves its partitions.
    let kafka_own = shard
        .kafka_shard_ports
        .get(shard.id)
        .zip(shard.config.kafka_listen)
        .map(|(&port, listen)| SocketAddr::new(listen.ip(), port));
    let kafka = shard
        .config
        .kafka_listen
        .into_iter()
        .chain(kafka_own)
        .map(|addr| (addr, Protocol::Kafka));
    let native = [shard.config.listen, own].map(|addr| (addr, Protocol::Native));
    for (addr, protocol) in native.into_iter().chain(kafka) {
        // glommio binds with SO_REUSEPORT: every shard accepts on the node's
        // listeners, and the kernel spreads connections over them.
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let accepting = conn::accept(shard.clone(), listener, stop.clone(), protocol);
        glommio::spawn_local(accepting).detach();
    }
    glommio::spawn_local(shard.clone().enforce_retention()).detach();
    glommio::spawn_local(shard.clone().compact_logs()).detach();
    glommio::spawn_local(shard.clone().retry_unserved()).detach();
    glommio::spawn_local(shard.clone().watch_space()).detach();
    let _ = events.send(Event::Ready);
    let _ = stop.clone().await;
    if clustered {
        // Leaders hand over before the node goes: clients see a leader
        // change (and retry), not a timeout.
        let wait = Duration::from_millis(shard.config.election_timeout_ms);
        shard.replication().transfer_all(wait).await;
    }
    shard.begin_close();
    let deadline = Instant::now() + DRAIN_MAX;
    while shard.connections.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shard.close().await;
    shard.check_disk();
    if let Some(staging) = &staging {
        // Every log is closed, so everything staged is written: a clean
        // stop leaves no file behind in shared memory.
        if let Err(e) = staging.remove_if_empty().await {
            tracing::warn!(shard = shard.id, error = %e, "cannot remove the staging file");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pick_ports;

    #[test]
    fn free_ports_pass_over_the_ports_other_settings_name() {
        // The kernel hands out the released ports of `listen` and
        // `kafka_listen` first, as it once did in CI: a shard took the port
        // `bench` had picked for its embedded broker's `listen`.
        let mut offers = [9093, 41_000, 9092, 41_001].into_iter();
        let ports = pick_ports(2, &[9093, 9092], || {
            let port = offers.next().expect("asked past the offers");
            Ok(((), port))
        })
        .expect("two ports");
        assert_eq!(ports, [41_000, 41_001]);
    }

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = super::free_ports([127, 0, 0, 1].into(), 8, &[]).expect("ports");
        for (i, port) in ports.iter().enumerate() {
            assert!(!ports[..i].contains(port), "{port} twice in {ports:?}");
            std::net::TcpListener::bind(("127.0.0.1", *port)).expect("released");
        }
    }
}
