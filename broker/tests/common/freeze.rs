//! A disk that stops on purpose (`fsfreeze` of a small loop-mounted
//! filesystem), and what a node left in its staging area.

use super::{Broker, SmallDisk};
use fjord_storage::staging::{self, StagingFile};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The broker's default staging size, so that opening a file to look at it
/// leaves it as it is.
pub const STAGING_BYTES: usize = 128 << 20;

/// Batches found in the broker's staging files (not yet known written).
pub fn staged_batches(broker: &Broker, shards: usize) -> usize {
    let id = staging::data_dir_id(broker.data_dir()).expect("the data directory's id");
    (0..shards)
        .map(|shard| {
            StagingFile::open(
                &broker.staging_dir(),
                broker.data_dir(),
                id,
                shard,
                staging::topology(shards, 0),
                STAGING_BYTES,
            )
            .map_or(0, |f| f.staged_batches())
        })
        .sum()
}

/// `fsfreeze` on a mount point: the kernel holds every write to that
/// filesystem until the thaw — a disk that stops, at the block layer's
/// door rather than inside the device.
pub fn fsfreeze(mount: &Path, freeze: bool) {
    let flag = if freeze { "-f" } else { "-u" };
    let status = Command::new("fsfreeze")
        .arg(flag)
        .arg(mount)
        .status()
        .expect("fsfreeze runs");
    assert!(status.success(), "fsfreeze {flag} failed");
}

/// A small filesystem that can be frozen, or why not (not root, no
/// `fsfreeze`, no loop device): the test then skips, saying so.
pub fn freezable_disk(test: &str) -> Option<SmallDisk> {
    let made = Command::new("fsfreeze")
        .arg("-V")
        .output()
        .map_err(|e| format!("fsfreeze: {e}"))
        .and_then(|_| SmallDisk::make(1024));
    match made {
        Ok(disk) => Some(disk),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// A frozen filesystem that thaws after `at_most` whatever happens, so
/// that a broker waiting for its writes fails the test instead of hanging
/// it.
pub struct Freeze {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    timed_out: Arc<AtomicBool>,
}

impl Freeze {
    pub fn start(mount: &Path, at_most: Duration) -> Freeze {
        fsfreeze(mount, true);
        let timed_out = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = {
            let (mount, timed_out) = (mount.to_path_buf(), timed_out.clone());
            std::thread::spawn(move || {
                // Disconnected: `thaw` dropped the sender.
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(at_most)
                {
                    timed_out.store(true, Ordering::SeqCst);
                }
                fsfreeze(&mount, false);
            })
        };
        Freeze {
            stop,
            thread,
            timed_out,
        }
    }

    /// Whether it thawed on its own, the time being up.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::SeqCst)
    }

    pub fn thaw(self) {
        drop(self.stop);
        self.thread.join().expect("the thaw thread");
    }
}
