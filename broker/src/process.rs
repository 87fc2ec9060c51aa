//! What `fjord serve` claims from the operating system before any shard
//! starts: every file descriptor the hard limit allows, and its data
//! directory, exclusively (one process per directory).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file in a data directory; it holds the owner's pid.
pub const LOCK_FILE: &str = "fjord.lock";

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns
/// `(before, after)`. Blocking-free: two syscalls, before shards start.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// Why the data directory could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("data directory {} is in use by pid {pid}", dir.display())]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder, as its lock file says (`?` if unreadable).
        pid: String,
    },
    /// The lock file could not be opened or written.
    #[error("data directory {}: lock file: {source}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// An exclusive `flock` on the data directory's lock file, held until the
/// process exits (the kernel drops it even on SIGKILL, so no stale lock
/// ever needs cleaning up).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Claims `dir` (which must exist) for this process, or says who has it.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(error));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = match holder.trim() {
                "" => "?".to_owned(),
                pid => pid.to_owned(),
            };
            return Err(LockError::InUse {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file })
    }
}
