//! The addresses a node listens on, and the checks that they are its own.
//!
//! glommio binds every listener with `SO_REUSEPORT`: each shard accepts on
//! the node's ports and the kernel spreads connections over them. The same
//! option lets a second process of the same user bind those ports without
//! an error and take a share of their connections — a second node started
//! on a used port would serve half of another node's clients. Kafka and
//! Redpanda refuse to start on a port in use; so does a node, twice, from
//! the kernel's table of listening sockets (`/proc/net/tcp`,
//! `/proc/net/tcp6`):
//! - before its shards start, nothing may listen on its addresses (and the
//!   settings may not name one twice);
//! - once every shard listens, every socket listening there must be its
//!   own: another process that bound one in between (a node started at the
//!   same moment) makes it stop instead of share.
//!
//! Not a trial bind without `SO_REUSEPORT`: it also fails on the sockets of
//! a previous run's connections (`TIME_WAIT`, `FIN_WAIT`), which inherited
//! the option, so a node restarted after a kill would not start.
//!
//! Both run on the main thread: they read `/proc` (and wait, see
//! [`SETTLE`]), and no shard waits on them.
//!
//! `/proc` is read by hand here: the `procfs` crate does the same
//! (`net::tcp`, `net::tcp6`, `process::all_processes` and their `fd`
//! links) and is where this goes if it grows; for two tables and the fd
//! links it was not worth a dependency tree the node otherwise lacks.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// One address a node listens on, named after the setting that gave it.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Where.
    pub addr: SocketAddr,
    /// The setting it comes from, for the error.
    pub setting: String,
}

/// Why a node cannot have one of its addresses to itself.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Something listens there already.
    #[error("cannot listen on {addr} ({setting}): another process listens there")]
    InUse {
        /// The address.
        addr: SocketAddr,
        /// Its setting.
        setting: String,
    },
    /// Two settings name the same address.
    #[error("cannot listen on {addr} ({setting}): {other} names it too")]
    Twice {
        /// The address.
        addr: SocketAddr,
        /// The second setting naming it.
        setting: String,
        /// The first.
        other: String,
    },
    /// Another process bound the address while this node started.
    #[error(
        "{addr} ({setting}) is also listened on by another process, which \
         would take a share of this node's connections; stopping"
    )]
    Shared {
        /// The address.
        addr: SocketAddr,
        /// Its setting.
        setting: String,
    },
    /// The kernel's socket tables could not be read.
    #[error("cannot read {path}: {source}")]
    Table {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// How long a foreign listener may take to go before it counts (a process
/// stopping closes its descriptors).
///
/// A listener that no process holds a descriptor of never counts: a dead
/// process's listening sockets outlive it while its io_uring rings, which
/// hold them for their pending accepts, are torn down after it is reaped —
/// seconds on a loaded machine, longer than any settle worth waiting. A
/// node restarted at once after a stop or a kill must not mistake its
/// predecessor's sockets for another process's.
const SETTLE: Duration = Duration::from_secs(3);
const SETTLE_STEP: Duration = Duration::from_millis(50);

/// A loopback port nobody listens on (bound, then released), for a node
/// that a process starts for itself and must name a port for (`bench`'s
/// embedded broker, tests). Taken below the kernel's ephemeral range: a
/// port from that range, once released, may become the local port of any
/// connection before the node binds it. Never the same port twice in a
/// process, since a node's ports are all picked before it binds any.
pub fn spare_loopback_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    static SEED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    const LOWEST: u32 = 10_000;
    // A prime: coprime with the span unless it divides it, and then the
    // span is made one shorter. A coprime stride visits every port of the
    // span before one comes round again.
    const STRIDE: u32 = 7_919;
    // Processes start at different places, so that two picking at once
    // rarely try the same ports.
    let seed = *SEED.get_or_init(|| {
        std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
    });
    // Where the ephemeral range starts below LOWEST + 1,000, the ports
    // picked are in it, and the guarantee above is lost.
    let span = ephemeral_start()
        .clamp(LOWEST + 1_000, u32::from(u16::MAX))
        .saturating_sub(LOWEST);
    let span = if span % STRIDE == 0 { span - 1 } else { span };
    for _ in 0..span {
        let n = TAKEN.fetch_add(1, Ordering::Relaxed);
        // In u64: seed + n × stride must not wrap, which would shift the
        // walk and could repeat a port.
        let offset = (u64::from(seed) + u64::from(n) * u64::from(STRIDE)) % u64::from(span);
        let port = u16::try_from(u64::from(LOWEST) + offset).unwrap_or(u16::MAX);
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free loopback port below the ephemeral range",
    ))
}

/// The first port of the kernel's ephemeral range (Linux's default when
/// the setting cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Before the node listens: no two of `listeners` are the same address,
/// and nothing listens on any of them. Port 0 is left to the kernel and
/// never conflicts.
pub fn check_free(listeners: &[Listener]) -> Result<(), ListenError> {
    let bound: Vec<&Listener> = listeners.iter().filter(|l| l.addr.port() != 0).collect();
    for (i, listener) in bound.iter().enumerate() {
        if let Some(other) = bound[..i].iter().find(|o| o.addr == listener.addr) {
            return Err(ListenError::Twice {
                addr: listener.addr,
                setting: listener.setting.clone(),
                other: other.setting.clone(),
            });
        }
    }
    match settled(&bound, &HashSet::new())? {
        Some(listener) => Err(ListenError::InUse {
            addr: listener.addr,
            setting: listener.setting.clone(),
        }),
        None => Ok(()),
    }
}

/// Once the node listens: every socket listening on one of `listeners`'
/// addresses is one of this process's descriptors.
pub fn check_unshared(listeners: &[Listener]) -> Result<(), ListenError> {
    let listeners: Vec<&Listener> = listeners.iter().collect();
    match settled(&listeners, &own_socket_inodes()?)? {
        Some(listener) => Err(ListenError::Shared {
            addr: listener.addr,
            setting: listener.setting.clone(),
        }),
        None => Ok(()),
    }
}

/// The first of `listeners` on whose address a socket not in `own`, held
/// by a live process, still listens after [`SETTLE`], if any.
fn settled<'a>(
    listeners: &[&'a Listener],
    own: &HashSet<u64>,
) -> Result<Option<&'a Listener>, ListenError> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let sockets = listening_sockets()?;
        let foreign: Vec<&(SocketAddr, u64)> = sockets
            .iter()
            .filter(|(addr, inode)| {
                !own.contains(inode) && listeners.iter().any(|l| overlaps(*addr, l.addr))
            })
            .collect();
        // The walk of every process's descriptors only when it can matter.
        let held = if foreign.is_empty() {
            HashSet::new()
        } else {
            held_socket_inodes()
        };
        let taken = listeners.iter().find(|listener| {
            foreign
                .iter()
                .any(|(addr, inode)| overlaps(*addr, listener.addr) && held.contains(inode))
        });
        match taken {
            Some(_) if Instant::now() < deadline => std::thread::sleep(SETTLE_STEP),
            taken => return Ok(taken.copied()),
        }
    }
}

/// Whether a connection to `theirs`' port could reach `ours`' listener's
/// clients: the same port, and the same address or a wildcard on a side.
fn overlaps(theirs: SocketAddr, ours: SocketAddr) -> bool {
    theirs.port() == ours.port()
        && (theirs.ip() == ours.ip() || theirs.ip().is_unspecified() || ours.ip().is_unspecified())
}

/// Inodes of the sockets this process holds.
fn own_socket_inodes() -> Result<HashSet<u64>, ListenError> {
    let mut inodes = HashSet::new();
    socket_inodes_of("/proc/self/fd", &mut inodes).map_err(|source| ListenError::Table {
        path: "/proc/self/fd".to_owned(),
        source,
    })?;
    Ok(inodes)
}

/// Inodes of the sockets any live process holds (that this one may look
/// at: another user's could not bind our ports anyway). A process that
/// exits during the walk is skipped.
fn held_socket_inodes() -> HashSet<u64> {
    let mut inodes = HashSet::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return inodes;
    };
    for process in processes.flatten() {
        let name = process.file_name();
        if name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            let _ = socket_inodes_of(process.path().join("fd"), &mut inodes);
        }
    }
    inodes
}

/// Adds the inodes of the sockets in a `/proc/<pid>/fd` directory (links
/// read `socket:[inode]`) to `inodes`.
fn socket_inodes_of(
    fds: impl AsRef<std::path::Path>,
    inodes: &mut HashSet<u64>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(fds)? {
        // A descriptor closed between the listing and the read is not a
        // listener: skip it.
        let Ok(link) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inode| inode.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(())
}

/// TCP state code of a listening socket in the kernel's tables.
const STATE_LISTEN: &str = "0A";

/// The kernel's listening TCP sockets: address and inode.
fn listening_sockets() -> Result<Vec<(SocketAddr, u64)>, ListenError> {
    let mut sockets = table("/proc/net/tcp", false)?;
    sockets.extend(table("/proc/net/tcp6", true)?);
    Ok(sockets)
}

/// The listening sockets of one of the kernel's tables. A missing table (no
/// IPv6 in this kernel) holds none.
fn table(path: &str, v6: bool) -> Result<Vec<(SocketAddr, u64)>, ListenError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ListenError::Table {
                path: path.to_owned(),
                source,
            });
        }
    };
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| parse_line(line, v6))
        .collect())
}

/// One row: `sl local_address rem_address st … uid timeout inode …`, the
/// address as the kernel's in-memory words in hex (`0100007F:2385` is
/// 127.0.0.1:9093 on a little-endian machine). Rows that do not parse are
/// not listeners of anyone's we could tell apart: skipped.
fn parse_line(line: &str, v6: bool) -> Option<(SocketAddr, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(3) != Some(&STATE_LISTEN) {
        return None;
    }
    let (ip, port) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if v6 {
        if ip.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, word) in bytes.chunks_exact_mut(4).enumerate() {
            let hex = ip.get(i * 8..i * 8 + 8)?;
            word.copy_from_slice(&u32::from_str_radix(hex, 16).ok()?.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        let word = u32::from_str_radix(ip, 16).ok()?;
        IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
    };
    let inode = fields.get(9)?.parse().ok()?;
    Some((SocketAddr::new(ip, port), inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: SocketAddr) -> Listener {
        Listener {
            addr,
            setting: "listen".to_owned(),
        }
    }

    #[test]
    fn reads_listeners_from_the_kernel_table() {
        // The word is the address's bytes in memory order, printed as a
        // number: build it the way the kernel does on this machine.
        let word = u32::from_ne_bytes([127, 0, 0, 1]);
        let line = format!(
            "   3: {word:08X}:2385 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 48213 1 0000000000000000 100 0 0 10 0"
        );
        assert_eq!(
            parse_line(&line, false),
            Some(("127.0.0.1:9093".parse().unwrap(), 48213))
        );
        let established = line.replace(" 0A ", " 01 ");
        assert_eq!(parse_line(&established, false), None);
        let v6 = "   0: 00000000000000000000000000000000:2384 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_line(v6, true),
            Some(("[::]:9092".parse().unwrap(), 777))
        );
        assert_eq!(parse_line("garbage", false), None);
    }

    #[test]
    fn an_address_in_use_or_named_twice_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = check_free(&[listener(addr)]).unwrap_err();
        assert!(matches!(error, ListenError::InUse { .. }), "{error}");
        // A connection left from the listener's time is not a listener.
        let _connected = std::net::TcpStream::connect(addr).unwrap();
        let _accepted = taken.accept().unwrap();
        drop(taken);
        check_free(&[listener(addr)]).unwrap();
        let error = check_free(&[listener(addr), listener(addr)]).unwrap_err();
        assert!(matches!(error, ListenError::Twice { .. }), "{error}");
    }

    #[test]
    fn a_listener_no_process_holds_does_not_count() {
        // A socket that only an io_uring accept holds, its descriptor
        // closed: what a stopped node's rings leave listening while the
        // kernel tears them down.
        use std::os::fd::AsRawFd;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let mut ring = io_uring::IoUring::new(2).unwrap();
        let fd = io_uring::types::Fd(taken.as_raw_fd());
        let accept = io_uring::opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: the entry points at no memory of ours (no address out).
        unsafe { ring.submission().push(&accept.build()).unwrap() };
        ring.submit().unwrap();
        drop(taken);
        let listening = listening_sockets().unwrap();
        assert!(
            listening.iter().any(|(a, _)| *a == addr),
            "the ring holds it"
        );
        let started = Instant::now();
        check_free(&[listener(addr)]).unwrap();
        assert!(started.elapsed() < SETTLE, "{:?}", started.elapsed());
        drop(ring);
    }

    #[test]
    fn only_another_process_listening_counts_as_shared() {
        // Our own listener is no conflict; one this process does not hold
        // (a child's) is.
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = own.local_addr().unwrap();
        check_unshared(&[listener(addr)]).unwrap();
        let wildcard = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
        check_unshared(&[listener(wildcard)]).unwrap();
        drop(own);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Another process: this test binary again, running only
        // `a_child_that_listens`.
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "listeners::tests::a_child_that_listens",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_PORT, port.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let up = std::io::BufRead::lines(stdout)
            .map_while(Result::ok)
            .any(|line| line.contains(CHILD_UP));
        assert!(up, "the child never listened");
        let theirs = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let result = check_unshared(&[listener(theirs)]);
        let _ = child.kill();
        let _ = child.wait();
        let error = result.unwrap_err();
        assert!(matches!(error, ListenError::Shared { .. }), "{error}");
    }

    const CHILD_PORT: &str = "FJORD_TEST_CHILD_PORT";
    const CHILD_UP: &str = "child listening";

    /// Run by `only_another_process_listening_counts_as_shared` in a child
    /// process: listens on the port it is given until killed.
    #[test]
    #[ignore = "run as a child process by another test"]
    fn a_child_that_listens() {
        let Some(port) = std::env::var(CHILD_PORT).ok() else {
            return;
        };
        let _listener = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
        println!("{CHILD_UP}");
        std::thread::sleep(std::time::Duration::from_secs(30));
    }
}
