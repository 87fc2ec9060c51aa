//! The free-space watch of a data directory, and the reserve that keeps
//! metadata writable on a full disk.
//!
//! A [`SpaceWatch`] samples `statvfs` of the data directory on a timer (one
//! cheap syscall per interval, never per request) and says whether free
//! space is below the node's threshold; below it the broker refuses produce
//! and keeps serving reads, metadata and deletes. Space freed by a delete or
//! by retention shows at the next sample, and the node returns to normal.
//!
//! A [`Reserve`] is a preallocated file the controller owns: released (deleted)
//! when the disk is low so that metadata commands — a topic delete above all,
//! the operator's way out — find room, and taken again once space is back.

use crate::error::{Result, StorageError};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// Free and total bytes of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Space {
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
}

/// `statvfs` of the filesystem holding `path`. A single syscall that does
/// no I/O (the kernel answers from its superblock counters).
pub fn space_of(path: &Path) -> std::io::Result<Space> {
    let c_path = c_path(path)?;
    // SAFETY: `statvfs` is plain old data; zeroed is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a valid
    // out-pointer for the duration of the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = stat.f_frsize as u64;
    Ok(Space {
        free_bytes: (stat.f_bavail as u64).saturating_mul(block),
        total_bytes: (stat.f_blocks as u64).saturating_mul(block),
    })
}

/// Whether `dir` is on a file system held in memory (tmpfs, ramfs), as
/// the staging area must be: a mapped file on a disk is written back by
/// the kernel, and a stalled disk then stalls the shard that writes into
/// the mapping — the very wait staging exists to hide.
/// Blocking (one `statfs`).
pub fn is_in_memory(dir: &Path) -> std::io::Result<bool> {
    // Linux's magic numbers (linux/magic.h); the libc crate does not
    // export them for every target. (hugetlbfs is memory too, but cannot
    // map a file of 4 KiB pages: opening the area there fails anyway.)
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    let c_dir = c_path(dir)?;
    // SAFETY: `statfs` is plain old data; zeroed is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and out-pointer for the call.
    if unsafe { libc::statfs(c_dir.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // `f_type`'s width and sign differ by target; the magic is 32 bits.
    let kind = stat.f_type as u32;
    Ok(matches!(kind, TMPFS_MAGIC | RAMFS_MAGIC))
}

/// `path` as the C string a syscall takes.
fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// When free space counts as low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    /// Low below this many free bytes.
    pub min_free_bytes: u64,
    /// Low below this percentage of the filesystem free (0: off).
    pub min_free_percent: u8,
}

impl Threshold {
    /// The free bytes below which `space` is low.
    pub fn floor(&self, space: Space) -> u64 {
        let percent = space.total_bytes / 100 * u64::from(self.min_free_percent);
        self.min_free_bytes.max(percent)
    }

    /// Whether `space` is below the threshold.
    pub fn is_low(&self, space: Space) -> bool {
        space.free_bytes < self.floor(space)
    }
}

/// A shard's view of its data directory's free space, refreshed on a timer.
pub struct SpaceWatch {
    dir: PathBuf,
    threshold: Threshold,
    last: Cell<Space>,
    low: Cell<bool>,
}

impl SpaceWatch {
    /// A watch of `dir`, sampled once now (blocking only for the syscall).
    pub fn new(dir: &Path, threshold: Threshold) -> Rc<SpaceWatch> {
        let watch = Rc::new(SpaceWatch {
            dir: dir.to_path_buf(),
            threshold,
            last: Cell::new(Space::default()),
            low: Cell::new(false),
        });
        watch.sample();
        watch
    }

    /// Samples free space now; returns whether it is low. A failed
    /// `statvfs` keeps the last answer.
    pub fn sample(&self) -> bool {
        if let Ok(space) = space_of(&self.dir) {
            self.last.set(space);
            self.low.set(self.threshold.is_low(space));
        }
        self.low.get()
    }

    /// Whether free space was below the threshold at the last sample.
    pub fn is_low(&self) -> bool {
        self.low.get()
    }

    /// The last sample.
    pub fn space(&self) -> Space {
        self.last.get()
    }

    /// The threshold.
    pub fn threshold(&self) -> Threshold {
        self.threshold
    }

    /// Samples every `interval`, forever; `changed` runs when the state
    /// flips (`true`: now low).
    pub async fn run(self: Rc<Self>, interval: Duration, changed: impl Fn(bool, Space)) {
        loop {
            glommio::timer::sleep(interval).await;
            let was = self.low.get();
            if self.sample() != was {
                changed(!was, self.last.get());
            }
        }
    }
}

/// A preallocated file held back for metadata writes on a full disk.
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    held: Cell<bool>,
}

impl Reserve {
    /// A reserve of `bytes` at `path`; nothing is allocated until
    /// [`Reserve::take`].
    pub fn new(path: PathBuf, bytes: u64) -> Reserve {
        assert!(bytes > 0, "an empty reserve frees nothing");
        Reserve {
            path,
            bytes,
            held: Cell::new(false),
        }
    }

    /// The reserve's size.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the reserve's space is held now.
    pub fn is_held(&self) -> bool {
        self.held.get()
    }

    /// Allocates the reserve's file (kept if it already has the size).
    pub async fn take(&self) -> Result<()> {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(&self.path)
            .await
            .map_err(StorageError::io("open", &self.path))?;
        let allocated = file.pre_allocate(self.bytes, false).await;
        let _ = file.close().await;
        if let Err(e) = allocated {
            // Half a reserve is worse than none: it would be counted on.
            let _ = glommio::io::remove(&self.path).await;
            return Err(StorageError::io("fallocate", &self.path)(e));
        }
        self.held.set(true);
        Ok(())
    }

    /// Deletes the reserve's file, giving its space to whoever needs it.
    pub async fn release(&self) -> Result<()> {
        crate::recovery::remove(&self.path).await?;
        self.held.set(false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_is_told_from_a_disk() {
        // procfs is memory, but not a place for files: not shared memory.
        assert!(!is_in_memory(Path::new("/proc")).unwrap());
        if Path::new("/dev/shm").is_dir() {
            assert!(is_in_memory(Path::new("/dev/shm")).unwrap());
        }
    }

    #[test]
    fn the_threshold_is_the_larger_of_bytes_and_percentage() {
        let space = |free_bytes| Space {
            free_bytes,
            total_bytes: 1000 << 20,
        };
        let bytes_only = Threshold {
            min_free_bytes: 100 << 20,
            min_free_percent: 0,
        };
        assert_eq!(bytes_only.floor(space(0)), 100 << 20);
        assert!(bytes_only.is_low(space((100 << 20) - 1)));
        assert!(!bytes_only.is_low(space(100 << 20)));
        let percent = Threshold {
            min_free_bytes: 1 << 20,
            min_free_percent: 20,
        };
        assert_eq!(percent.floor(space(0)), 200 << 20);
        assert!(percent.is_low(space(150 << 20)));
        let off = Threshold {
            min_free_bytes: 0,
            min_free_percent: 0,
        };
        assert!(
            !off.is_low(space(0)),
            "no threshold: only ENOSPC stops writes"
        );
    }

    #[test]
    fn statvfs_of_a_real_directory() {
        let space = space_of(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("statvfs");
        assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes);
        assert!(space_of(Path::new("/no/such/dir")).is_err());
    }
}
