//! The staging area: a shard's staged-but-unwritten batches, kept in shared
//! memory that outlives the process, so that `acks=1` can answer before the
//! O_DIRECT write and a killed process still loses nothing it acknowledged
//! (Kafka's page-cache promise, without the page cache; DESIGN §3).
//!
//! One file per shard, under `/dev/shm` by default, named after the data
//! directory's path and mapped `MAP_SHARED`: the pages belong to tmpfs, not
//! to the process, so a SIGKILL leaves them in place. Power loss clears
//! them, exactly as it clears a page cache.
//!
//! Layout (little-endian): a 4 KiB header — magic, layout version, shard,
//! the data directory's identity (a random id kept in `<data dir>/fjord.id`),
//! capacity, the node's topology (how partitions map to shards: a node
//! started with another one would open a log on another shard, which would
//! not find its entries), a CRC-32C of those, then the mutable head
//! (position and sequence of the oldest entry still needed). After it, a ring of entries,
//! each 8-byte aligned:
//!
//! ```text
//! magic u32 | crc u32 | seq u64 | kind u32 | key_len u32 | len u32 | 0 u32
//! | base_offset u64 | last_offset u64 | key | batch | padding to 8
//! ```
//!
//! The CRC-32C covers everything after itself. Sequence numbers rise by one
//! per entry, so a walk from the head stops at the first entry that is torn
//! (the process died while copying it: never acknowledged) or left over from
//! an earlier lap. An entry is released once its log has written the batch
//! (or cut it off: `Log::truncate`); its magic then changes to the released
//! one (outside the CRC: one aligned store), so a walk that meets it behind
//! an older live entry steps over it and never replays it, and the head
//! moves past every released entry at the front. On start the
//! walk hands each log the entries past its recovered end, and the log
//! appends them again before the shard serves, each keeping its entry as
//! its place until written (no copy: a kill during the replay finds the
//! same entries).
//!
//! Writes into the mapping are memory copies (batches with streaming
//! stores, `stream_copy`): the region is memory, not a file the ring drives,
//! so nothing here blocks or goes through io_uring.
//! Mapping and sizing the file (`open`) are blocking calls, made on the
//! main thread before the shards start.

use crate::commit::Staged;
use crate::error::{Result as StorageResult, StorageError};
use crate::slice::BatchSlice;
use crate::stream_copy;
use fjord_core::batch;
use futures::channel::oneshot;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering, compiler_fence};
use std::time::{Duration, Instant};

/// The layout written by this build; files of any other are refused
/// (version 1 never marked entries released: a released one behind an
/// older live one would be replayed).
pub const LAYOUT_VERSION: u32 = 2;
/// Where staging files live unless configured otherwise.
pub const DEFAULT_DIR: &str = "/dev/shm";
/// A log's key (its directory under the data directory) is at most this long.
pub const KEY_BYTES_MAX: usize = 4096;

const MAGIC: [u8; 8] = *b"FJSTAGE\0";
const HEADER_BYTES: usize = 4096;
const TOPOLOGY_AT: usize = 40;
const HEADER_CRC_AT: usize = 44;
const HEAD_POSITION_AT: usize = 48;
const HEAD_SEQ_AT: usize = 56;
/// The data directory's canonical path, for finding files whose directory
/// is gone: length u32 | CRC-32C u32 | bytes. Not in the header's CRC:
/// files written before it have zeros here (no path).
const DIR_AT: usize = 64;
const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"FJSE");
/// The magic of an entry whose batch its log no longer needs.
const ENTRY_MAGIC_RELEASED: u32 = u32::from_le_bytes(*b"FJSR");
const ENTRY_HEADER_BYTES: usize = 48;
const KIND_BATCH: u32 = 1;
/// The ring goes on at the start of the data region.
const KIND_WRAP: u32 = 2;
/// Smallest staging file worth having.
pub const BYTES_MIN: usize = 1 << 20;
const ID_FILE: &str = "fjord.id";
/// The staging directory this data directory's last run staged in: a node
/// started with another one would not find what that run acknowledged.
const STAGING_DIR_FILE: &str = "staging.dir";
/// A full staging area is reported at most this often.
const FULL_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// A full ring whose oldest entry has not been released for this long is
/// not waiting for a slow disk but held: appends stop waiting for room.
const HEAD_HELD_AFTER: Duration = Duration::from_secs(5);
/// Bytes of unclaimed entries one append may move along the ring (see
/// `Staging::move_unclaimed_head`): a few batches' copy, and far more than
/// the append itself takes, so the head outruns the tail.
const MOVE_BYTES_PER_STAGE: usize = 1 << 20;
/// Shards a node may run (the broker's own bound on `cores`).
const SHARDS_MAX: usize = 1024;

/// Why a staging file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// Shared memory is missing or too small: the node runs without staging
    /// (acks wait for the write).
    #[error("staging unavailable at {}: {reason}", path.display())]
    Unavailable {
        /// The staging file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The file belongs to another node or data directory, or to another
    /// layout, or its header is damaged. Nothing of it is applied: it may
    /// hold acknowledged records of whatever wrote it.
    #[error(
        "staging file {} refused: {reason}; it may hold acknowledged records \
         that are not in the logs yet: start the node that wrote it, or move \
         the file away to start without them",
        path.display()
    )]
    Refused {
        /// The staging file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
}

/// The identity of a data directory: a random id kept in `fjord.id`,
/// created on first use. Blocking: call before the shards start.
pub fn data_dir_id(data_dir: &Path) -> std::io::Result<u128> {
    let path = data_dir.join(ID_FILE);
    match identity(data_dir) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a data directory id", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut id = [0u8; 16];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut id)?;
            let id = u128::from_le_bytes(id);
            let tmp = data_dir.join(format!("{ID_FILE}.tmp"));
            let mut file = std::fs::File::create(&tmp)?;
            writeln!(file, "{id:032x}")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// A node's topology as the header records it: shards, and the first that
/// hosts partitions (partition `p` of a topic lives on a shard computed from
/// both).
pub fn topology(shards: usize, first_data_shard: usize) -> u32 {
    (shards as u32) << 1 | u32::from(first_data_shard > 0)
}

/// Bytes each staging file of `shards` may take, of the `wanted` budget,
/// in `staging_dir`'s file system: three quarters of its free space and of
/// what this node's files already take there (a quarter stays for whatever
/// else shares it; counting our own files keeps the size the same from one
/// start to the next), split evenly, sized as a file ([`file_bytes`]).
/// Containers give /dev/shm 64 MiB: staging shrinks to fit rather than turn
/// off. `wanted` when the space cannot be read (opening the files then says
/// why). Blocking.
pub fn bytes_fitting(
    staging_dir: &Path,
    data_dir: &Path,
    shards: std::ops::Range<usize>,
    wanted: usize,
) -> usize {
    // A directory not made yet has no file system to ask; a failure here
    // shows when the files are opened, with the path.
    let _ = std::fs::create_dir_all(staging_dir);
    let Ok(space) = crate::space::space_of(staging_dir) else {
        return file_bytes(wanted);
    };
    let count = shards.len().max(1) as u64;
    let ours: u64 = shards
        .filter_map(|shard| std::fs::metadata(file_path(staging_dir, data_dir, shard)).ok())
        .map(|m| m.len())
        .sum();
    let room = (ours + space.free_bytes) / 4 * 3;
    let each = (room / count).min(wanted as u64);
    file_bytes(each as usize)
}

/// The size a staging file asked for `bytes` gets: whole pages, at least
/// [`BYTES_MIN`].
pub fn file_bytes(bytes: usize) -> usize {
    bytes.max(BYTES_MIN) & !4095
}

/// The staging file of `shard` of the data directory at `data_dir`: named
/// after its canonical path, so a node restarted on the same directory
/// finds it.
pub fn file_path(staging_dir: &Path, data_dir: &Path, shard: usize) -> PathBuf {
    staging_dir.join(format!("{}shard{shard}.staging", file_prefix(data_dir)))
}

/// The path a staging file is named after and records: the data
/// directory's canonical path (as given when it cannot be resolved).
fn canonical(data_dir: &Path) -> PathBuf {
    std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf())
}

/// What the names of `data_dir`'s staging files start with.
fn file_prefix(data_dir: &Path) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = canonical(data_dir)
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("fjord-{hash:016x}-")
}

/// A shared, writable mapping of a whole staging file.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by one `Mapping`, which moves from the main
// thread to its shard once and is used only there afterwards.
unsafe impl Send for Mapping {}

impl Mapping {
    fn map(file: &std::fs::File, len: usize) -> std::io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of `len` bytes of an open file; the
        // kernel picks the address, and nothing else aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn bytes(&self, at: usize, len: usize) -> &[u8] {
        assert!(at + len <= self.len, "staging read out of bounds");
        // SAFETY: in bounds (asserted); the mapping lives as long as `self`,
        // and writes go through `write`, never while this slice is held
        // (one thread, no write between taking and dropping a slice).
        unsafe { std::slice::from_raw_parts(self.ptr.add(at), len) }
    }

    fn write(&self, at: usize, data: &[u8]) {
        assert!(at + data.len() <= self.len, "staging write out of bounds");
        // Streaming for batches: the ring is read back only after a crash,
        // so its lines need not pass through the cache.
        // SAFETY: in bounds (asserted); the source is a separate allocation.
        unsafe { stream_copy::copy(self.ptr.add(at), data) }
    }

    fn store_u64(&self, at: usize, value: u64) {
        assert!(
            at.is_multiple_of(8) && at + 8 <= self.len,
            "staging store misplaced"
        );
        // SAFETY: in bounds and 8-byte aligned (asserted; the mapping is
        // page-aligned); only this thread touches the mapping.
        let cell = unsafe { AtomicU64::from_ptr(self.ptr.add(at).cast()) };
        cell.store(value.to_le(), Ordering::Release);
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes(at, 4).try_into().unwrap_or([0; 4]))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.bytes(at, 8).try_into().unwrap_or([0; 8]))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no slice outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// An entry found by the walk at start.
#[derive(Debug, Clone)]
struct Found {
    seq: u64,
    position: usize,
    /// Bytes the entry takes in the ring.
    len: usize,
    batch_len: usize,
    kind: u32,
    /// Marked released: its log wrote it or cut it off.
    released: bool,
    key: String,
    base_offset: u64,
    last_offset: u64,
}

/// A staging file mapped and checked, with what it holds; made on the main
/// thread, then handed to its shard ([`Staging::new`]).
pub struct StagingFile {
    path: PathBuf,
    map: Mapping,
    found: Vec<Found>,
    next_seq: u64,
}

impl StagingFile {
    /// Opens (creating or resizing when it holds nothing) the staging file
    /// of `shard` of the data directory `data_dir` with identity `id`, on a
    /// node of `topology` (an opaque value: partition-to-shard mapping),
    /// with room for `bytes`, and walks what it holds. Blocking.
    pub fn open(
        staging_dir: &Path,
        data_dir: &Path,
        id: u128,
        shard: usize,
        topology: u32,
        bytes: usize,
    ) -> Result<StagingFile, StagingError> {
        let path = file_path(staging_dir, data_dir, shard);
        let unavailable = |reason: String| StagingError::Unavailable {
            path: path.clone(),
            reason,
        };
        let bytes = file_bytes(bytes);
        std::fs::create_dir_all(staging_dir).map_err(|e| unavailable(e.to_string()))?;
        let file = open_locked(&path)?;
        if let Some(existing) = inspect(&path, &file, data_dir, id, shard)? {
            let staged = existing.staged_batches();
            let written_by = existing.map.u32_at(TOPOLOGY_AT);
            if staged > 0 && written_by != topology {
                return Err(StagingError::Refused {
                    path,
                    reason: format!(
                        "{staged} batches staged by a node of another shape (topology \
                         {written_by:#x}, this one {topology:#x}): start it with the same \
                         cores and controller_hosts_partitions to replay them"
                    ),
                });
            }
            if staged > 0 || existing.map.len == bytes && written_by == topology {
                return Ok(existing);
            }
            // Nothing staged, and another size or shape: start afresh.
        }
        file.set_len(0).map_err(|e| unavailable(e.to_string()))?;
        // Reserve tmpfs pages now: a sparse file would raise SIGBUS on the
        // first write that finds /dev/shm full.
        // SAFETY: plain syscall on an open descriptor.
        let err = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
        if err != 0 {
            let _ = std::fs::remove_file(&path);
            return Err(unavailable(format!(
                "cannot reserve {bytes} bytes: {}",
                std::io::Error::from_raw_os_error(err)
            )));
        }
        let map = Mapping::map(&file, bytes).map_err(|e| unavailable(e.to_string()))?;
        let mut header = [0u8; HEAD_POSITION_AT + 16];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(shard as u32).to_le_bytes());
        header[16..32].copy_from_slice(&id.to_le_bytes());
        header[32..40].copy_from_slice(&(bytes as u64).to_le_bytes());
        header[TOPOLOGY_AT..TOPOLOGY_AT + 4].copy_from_slice(&topology.to_le_bytes());
        let crc = crc32c::crc32c(&header[..HEADER_CRC_AT]);
        header[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        header[HEAD_POSITION_AT..HEAD_POSITION_AT + 8]
            .copy_from_slice(&(HEADER_BYTES as u64).to_le_bytes());
        header[HEAD_SEQ_AT..HEAD_SEQ_AT + 8].copy_from_slice(&1u64.to_le_bytes());
        let dir = canonical(data_dir);
        let dir = dir.as_os_str().as_encoded_bytes();
        if DIR_AT + 8 + dir.len() <= HEADER_BYTES {
            map.write(DIR_AT, &(dir.len() as u32).to_le_bytes());
            map.write(DIR_AT + 4, &crc32c::crc32c(dir).to_le_bytes());
            map.write(DIR_AT + 8, dir);
        }
        // The magic last: a file whose making a kill cut short has none,
        // and is made again at the next start (it never held an entry).
        map.write(8, &header[8..]);
        compiler_fence(Ordering::Release);
        map.write(0, &header[..8]);
        Ok(StagingFile {
            path,
            map,
            found: Vec::new(),
            next_seq: 1,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the file holds, header included.
    pub fn capacity(&self) -> usize {
        self.map.len
    }

    /// Batches found staged (not yet known to be written).
    pub fn staged_batches(&self) -> usize {
        staged_in(&self.found)
    }
}

/// Batches among `found` not yet known to be written.
fn staged_in(found: &[Found]) -> usize {
    found
        .iter()
        .filter(|f| f.kind == KIND_BATCH && !f.released)
        .count()
}

/// Opens (creating) the staging file at `path` and locks it: the flock
/// marks it as a running node's, which `check_moved` leaves alone. An flock
/// belongs to the open file, which a mapping keeps after the descriptor is
/// closed: held until the shard unmaps it or the process dies, however it
/// dies. Another node's `check_moved` may remove an empty file between our
/// open and our lock; then the name leads elsewhere (or nowhere) and the
/// open is made again.
fn open_locked(path: &Path) -> Result<std::fs::File, StagingError> {
    use std::os::unix::fs::MetadataExt;
    let unavailable = |reason: String| StagingError::Unavailable {
        path: path.to_path_buf(),
        reason,
    };
    for _ in 0..3 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| match std::fs::metadata(path) {
                // It may hold acknowledged batches (a read-only /dev/shm, a
                // restart as another user): not a reason to run without them.
                Ok(m) if m.len() > 0 => StagingError::Refused {
                    path: path.to_path_buf(),
                    reason: format!("it exists but cannot be opened for writing: {e}"),
                },
                _ => unavailable(e.to_string()),
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StagingError::Refused {
                    path: path.to_path_buf(),
                    reason: "another running process holds it".into(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(unavailable(e.to_string())),
        }
        let ours = file.metadata().map_err(|e| unavailable(e.to_string()))?;
        let named = std::fs::metadata(path).ok();
        if named.is_some_and(|n| (n.dev(), n.ino()) == (ours.dev(), ours.ino())) {
            return Ok(file);
        }
    }
    Err(unavailable(
        "removed under this node three times while it opened it".into(),
    ))
}

/// Maps and checks an existing staging file and walks it; `None` when the
/// file is new (empty).
fn inspect(
    path: &Path,
    file: &std::fs::File,
    data_dir: &Path,
    id: u128,
    shard: usize,
) -> Result<Option<StagingFile>, StagingError> {
    let refused = |reason: String| StagingError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    let len = file
        .metadata()
        .map_err(|e| StagingError::Unavailable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .len() as usize;
    if len == 0 {
        return Ok(None);
    }
    if len < HEADER_BYTES {
        return Err(refused(format!("{len} bytes: too short for a header")));
    }
    // It may hold acknowledged batches: not being able to read it stops the
    // start, it does not turn staging off.
    let map = Mapping::map(file, len).map_err(|e| refused(format!("cannot map it: {e}")))?;
    if map.bytes(0, MAGIC.len()) == [0; MAGIC.len()] {
        // Its making was cut short (the magic is written last, before any
        // entry): it holds nothing — unless a walk finds batches, and then
        // it is a damaged header.
        if staged_in(&walk(&map).0) == 0 {
            return Ok(None);
        }
        return Err(refused("no magic, yet it holds staged batches".into()));
    }
    check_layout(&map).map_err(&refused)?;
    if map.u64_at(32) != len as u64 {
        // Cut short or grown after it was made: what it held cannot be
        // trusted, and the batches it may have held are the user's to
        // look at, not this start's to throw away.
        return Err(refused(format!(
            "header says {} bytes, the file has {len}",
            map.u64_at(32)
        )));
    }
    let (found, next_seq) = walk(&map);
    if let Err(reason) = check_owner(&map, id, shard) {
        // Made for a directory at this very path with another identity: the
        // data directory was removed and made anew after a kill. Holding
        // nothing to replay, it is nobody's loss: made afresh. A file made
        // for another path (copied here), or holding batches, is refused.
        let made_here =
            recorded_dir(map.bytes(0, HEADER_BYTES)).is_some_and(|d| d == canonical(data_dir));
        if made_here && staged_in(&found) == 0 {
            return Ok(None);
        }
        return Err(refused(reason));
    }
    Ok(Some(StagingFile {
        path: path.to_path_buf(),
        map,
        found,
        next_seq,
    }))
}

/// Checks the staging files of shards `shards..` of this data directory,
/// left by a node that ran more shards: one holding staged batches stops
/// the start (no shard of this node would replay them); empty ones are
/// removed. Blocking.
pub fn check_extra_shards(
    staging_dir: &Path,
    data_dir: &Path,
    id: u128,
    shards: usize,
) -> Result<(), StagingError> {
    check_unopened(
        staging_dir,
        data_dir,
        id,
        shards..SHARDS_MAX,
        |shard, staged| {
            format!(
                "shard {shard} staged {staged} batches, and this node runs {shards} \
             shards: start it with at least {} cores to replay them",
                shard + 1
            )
        },
    )
}

/// Checks the staging files of this data directory on a node that runs
/// with staging off: one holding staged batches (left by a run with it on)
/// stops the start; empty ones are removed. Blocking.
pub fn check_staging_off(
    staging_dir: &Path,
    data_dir: &Path,
    id: u128,
) -> Result<(), StagingError> {
    check_unopened(staging_dir, data_dir, id, 0..SHARDS_MAX, |shard, staged| {
        format!(
            "shard {shard} staged {staged} batches, and this node runs with staging off: \
             start it with staging on (and the same staging_dir) to replay them"
        )
    })
}

/// Checks the staging file of each shard in `shards` that hosts no
/// partitions on this node (shard 0 when it runs only the controller): one
/// holding batches, from a run that gave it partitions, stops the start;
/// an empty one is removed. Blocking.
pub fn check_without_partitions(
    staging_dir: &Path,
    data_dir: &Path,
    id: u128,
    shards: std::ops::Range<usize>,
) -> Result<(), StagingError> {
    check_unopened(staging_dir, data_dir, id, shards, |shard, staged| {
        format!(
            "shard {shard} staged {staged} batches, and on this node it hosts no partitions: \
             start it with controller_hosts_partitions = true to replay them"
        )
    })
}

/// The files of `shards` of this data directory, which no shard of this
/// node opens: see [`remove_unless_staged`].
fn check_unopened(
    staging_dir: &Path,
    data_dir: &Path,
    id: u128,
    shards: std::ops::Range<usize>,
    why: impl Fn(usize, usize) -> String,
) -> Result<(), StagingError> {
    for shard in shards {
        let path = file_path(staging_dir, data_dir, shard);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // It may hold acknowledged batches that no shard would replay:
            // as `StagingFile::open`, not being able to look stops the start.
            Err(e) => {
                return Err(StagingError::Refused {
                    path,
                    reason: format!("cannot open it to see whether it holds staged batches: {e}"),
                });
            }
        };
        remove_unless_staged(path, &file, data_dir, id, shard, |staged| {
            why(shard, staged)
        })?;
    }
    Ok(())
}

/// Removes a staging file of this data directory that no shard of this
/// node opens, if it holds no staged batches; refuses the start, saying
/// `why` (given their count), if it does. Blocking.
fn remove_unless_staged(
    path: PathBuf,
    file: &std::fs::File,
    data_dir: &Path,
    id: u128,
    shard: usize,
    why: impl FnOnce(usize) -> String,
) -> Result<(), StagingError> {
    let staged = inspect(&path, file, data_dir, id, shard)?.map_or(0, |f| f.staged_batches());
    if staged > 0 {
        return Err(StagingError::Refused {
            reason: why(staged),
            path,
        });
    }
    std::fs::remove_file(&path).map_err(|e| StagingError::Unavailable {
        path: path.clone(),
        reason: e.to_string(),
    })
}

/// Checks the staging directory this data directory's last run staged in,
/// when it is not `staging_dir`: its files of this data directory that hold
/// staged batches stop the start (they would be passed over); empty ones
/// are removed. Then records `staging_dir` as the one staged in, when
/// `staging_on`. Blocking.
pub fn check_staging_dir_changed(
    staging_dir: &Path,
    data_dir: &Path,
    id: u128,
    staging_on: bool,
) -> Result<(), StagingError> {
    let marker = data_dir.join(STAGING_DIR_FILE);
    if staging_on {
        // Made now, so that the path recorded is the one it resolves to at
        // every later start. A failure shows when the files are opened.
        let _ = std::fs::create_dir_all(staging_dir);
    }
    let now = std::fs::canonicalize(staging_dir).ok();
    // Not being able to keep the record stops the start, as not being able
    // to keep the data directory's identity does: the directory is not
    // writable, and the node could not serve from it anyway.
    let unwritable = |e: std::io::Error| StagingError::Unavailable {
        path: marker.clone(),
        reason: e.to_string(),
    };
    match std::fs::read(&marker) {
        Ok(bytes) => {
            let before = Path::new(std::ffi::OsStr::from_bytes(&bytes));
            // An empty or relative record (a power loss cut its write short,
            // or it was edited by hand) names no directory to look in.
            if before.is_absolute() && !same_dir(before, now.as_deref()) {
                check_unopened(before, data_dir, id, 0..SHARDS_MAX, |shard, staged| {
                    format!(
                        "shard {shard} staged {staged} batches in {} (the staging_dir of this \
                         data directory's last run, recorded in {}), and this node stages in \
                         {}: start it with staging_dir = {} to replay them",
                        before.display(),
                        marker.display(),
                        staging_dir.display(),
                        before.display()
                    )
                })?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(unwritable(e)),
    }
    if staging_on && let Some(now) = now {
        // Replaced whole (a kill mid-write leaves the old one), not synced:
        // what it guards, the staging area, does not outlive a power loss.
        let tmp = data_dir.join(format!("{STAGING_DIR_FILE}.tmp"));
        std::fs::write(&tmp, now.as_os_str().as_bytes()).map_err(unwritable)?;
        std::fs::rename(&tmp, &marker).map_err(unwritable)?;
    }
    Ok(())
}

/// Whether `before` is the directory `now` (by device and inode: a tmpfs
/// mounted twice, or bound elsewhere, has two canonical paths).
fn same_dir(before: &Path, now: Option<&Path>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(now) = now else {
        return false;
    };
    if before == now {
        return true;
    }
    match (std::fs::metadata(before), std::fs::metadata(now)) {
        (Ok(b), Ok(n)) => (b.dev(), b.ino()) == (n.dev(), n.ino()),
        _ => false,
    }
}

/// Checks the staging files of this data directory left under another
/// name. A file is named after the directory's path, so a directory moved
/// (or mounted elsewhere) after a crash would not find its file, and the
/// batches it acknowledged from there would be left out without a word.
/// One holding staged batches stops the start, naming the file and the
/// name to give it; empty ones are removed. Files a running node holds
/// (locked, see `StagingFile::open`) and files of other data directories
/// are not touched. Blocking.
pub fn check_moved(staging_dir: &Path, data_dir: &Path, id: u128) -> Result<(), StagingError> {
    let Ok(entries) = std::fs::read_dir(staging_dir) else {
        return Ok(());
    };
    let ours = file_prefix(data_dir);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("fjord-") || !name.ends_with(".staging") || name.starts_with(&ours) {
            continue;
        }
        let path = entry.path();
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            // Another user's node's: not ours to look at.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => continue,
            Err(e) => {
                // Not this start's to stop for, but a file left by this
                // directory under its old name would be passed over, so
                // say so.
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot open a staging file to see whether it is this data directory's \
                     under an old name"
                );
                continue;
            }
        };
        // The header first, without a lock: another data directory's file
        // is never locked by this node, so its own start never finds it
        // held.
        let mut header = vec![0u8; HEADER_BYTES];
        if file.read_exact(&mut header).is_err() {
            continue;
        }
        let Some((owner, shard)) = owner(&header) else {
            continue;
        };
        if owner != id {
            if recorded_dir(&header).is_some_and(|dir| left_behind(&dir, owner))
                && file.try_lock().is_ok()
            {
                // No node can ever replay it, and tmpfs is memory: every
                // killed node whose directory was removed would keep its
                // files' worth otherwise.
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(
                        path = %path.display(),
                        "removed the staging file of a data directory that is gone"
                    ),
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "cannot remove the staging file of a data directory that is gone"
                    ),
                }
            }
            continue;
        }
        if file.try_lock().is_err() {
            // A running node's: a copy of this directory, with batches of
            // its own.
            continue;
        }
        let wanted = file_path(staging_dir, data_dir, shard);
        remove_unless_staged(path, &file, data_dir, id, shard, |staged| {
            format!(
                "it holds {staged} batches staged for this data directory when it was at \
                 another path. If the directory was moved, rename the file to {} to \
                 replay them; if this directory is a copy of another, these are the \
                 other's batches: start that one",
                wanted.display()
            )
        })?;
    }
    Ok(())
}

/// The data directory a staging file was made for, as its header records
/// it (files of builds before the record have none).
fn recorded_dir(header: &[u8]) -> Option<PathBuf> {
    let len = u32::from_le_bytes(header.get(DIR_AT..DIR_AT + 4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header.get(DIR_AT + 4..DIR_AT + 8)?.try_into().ok()?);
    let dir = header.get(DIR_AT + 8..(DIR_AT + 8).checked_add(len)?)?;
    (len > 0 && crc32c::crc32c(dir) == crc).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(dir)))
}

/// Whether the data directory `dir`, which staged as `owner`, is gone: it
/// was made anew (it holds another identity), or it no longer exists
/// though its parent does (not a volume left unmounted) and no directory
/// beside it holds its identity (not renamed: its node, started there,
/// finds the file and says where it belongs). Then nothing can replay what
/// its files hold.
fn left_behind(dir: &Path, owner: u128) -> bool {
    match identity(dir) {
        Ok(id) => id != Some(owner),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(parent) = dir.parent().filter(|p| p.is_dir()) else {
                return false;
            };
            !dir.exists() && !renamed_within(parent, owner)
        }
        Err(_) => false,
    }
}

/// The identity kept in `dir` (`None`: unreadable as one).
fn identity(dir: &Path) -> std::io::Result<Option<u128>> {
    let text = std::fs::read_to_string(dir.join(ID_FILE))?;
    Ok(u128::from_str_radix(text.trim(), 16).ok())
}

/// Whether a directory in `parent` holds the identity `owner`. Looks at a
/// bounded number of entries: a parent like /tmp may hold many.
fn renamed_within(parent: &Path, owner: u128) -> bool {
    const ENTRIES_MAX: usize = 10_000;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return true;
    };
    for (seen, entry) in entries.flatten().enumerate() {
        // Past the bound, not all looked at: it may be there.
        if seen == ENTRIES_MAX || identity(&entry.path()).is_ok_and(|id| id == Some(owner)) {
            return true;
        }
    }
    false
}

/// The data directory and shard a staging file's header names, if it is
/// whole.
fn owner(header: &[u8]) -> Option<(u128, usize)> {
    let field = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let whole =
        header[..8] == MAGIC && crc32c::crc32c(&header[..HEADER_CRC_AT]) == field(HEADER_CRC_AT);
    let id = u128::from_le_bytes(header[16..32].try_into().ok()?);
    whole.then_some((id, field(12) as usize))
}

/// Whether the file is a staging file of a layout this build reads, with
/// a whole header: only then is what a walk finds in it meaningful.
fn check_layout(map: &Mapping) -> Result<(), String> {
    if map.bytes(0, 8) != MAGIC {
        return Err("not a Fjord staging file".into());
    }
    let version = map.u32_at(8);
    if version != LAYOUT_VERSION {
        return Err(format!(
            "layout version {version}, this build reads {LAYOUT_VERSION}"
        ));
    }
    if crc32c::crc32c(map.bytes(0, HEADER_CRC_AT)) != map.u32_at(HEADER_CRC_AT) {
        return Err("header CRC mismatch".into());
    }
    Ok(())
}

/// Whether a file of a readable layout is this shard's of this directory.
fn check_owner(map: &Mapping, id: u128, shard: usize) -> Result<(), String> {
    let owner = u128::from_le_bytes(map.bytes(16, 16).try_into().unwrap_or([0; 16]));
    if owner != id {
        return Err(format!(
            "written for data directory {owner:032x}, this one is {id:032x}"
        ));
    }
    let owner_shard = map.u32_at(12) as usize;
    if owner_shard != shard {
        return Err(format!("written by shard {owner_shard}, not {shard}"));
    }
    Ok(())
}

/// Bytes an entry of `key_len` + `len` takes in the ring.
fn entry_bytes(key_len: usize, len: usize) -> usize {
    (ENTRY_HEADER_BYTES + key_len + len).next_multiple_of(8)
}

/// Walks the ring from the head: the entry there, then every entry with
/// the next sequence number and a good CRC, up to the first that has not.
/// Returns them and the next sequence number.
fn walk(map: &Mapping) -> (Vec<Found>, u64) {
    let end = map.len;
    let mut position = map.u64_at(HEAD_POSITION_AT) as usize;
    // A hint only (see `advance_head`): it keeps sequence numbers rising
    // across runs when nothing is found.
    let seq_hint = map.u64_at(HEAD_SEQ_AT).max(1);
    let mut found: Vec<Found> = Vec::new();
    if position < HEADER_BYTES || position >= end || !position.is_multiple_of(8) {
        return (found, seq_hint);
    }
    loop {
        if end - position < ENTRY_HEADER_BYTES {
            position = HEADER_BYTES;
        }
        let seq = found.last().map(|f| f.seq + 1);
        let Some(entry) = read_entry(map, position, seq) else {
            break;
        };
        position = if entry.kind == KIND_WRAP {
            HEADER_BYTES
        } else {
            position + entry.len
        };
        found.push(entry);
        // Sequence numbers rise, so no walk goes round the ring twice; this
        // bounds one over a damaged file all the same.
        if found.len() > end / ENTRY_HEADER_BYTES {
            found.clear();
            break;
        }
    }
    let next_seq = found.last().map_or(seq_hint, |f| f.seq + 1);
    (found, next_seq)
}

/// The entry at `position`, if whole and, when given, numbered `seq`.
fn read_entry(map: &Mapping, position: usize, seq: Option<u64>) -> Option<Found> {
    let end = map.len;
    // Room for a header first: a file too short for one (damaged, or cut
    // by hand) holds none, and the walk's wrap may land here in one.
    if end.checked_sub(position)? < ENTRY_HEADER_BYTES {
        return None;
    }
    let found_seq = map.u64_at(position + 8);
    let magic = map.u32_at(position);
    if magic != ENTRY_MAGIC && magic != ENTRY_MAGIC_RELEASED || seq.is_some_and(|s| s != found_seq)
    {
        return None;
    }
    let kind = map.u32_at(position + 16);
    let key_len = map.u32_at(position + 20) as usize;
    let len = map.u32_at(position + 24) as usize;
    let total = entry_bytes(key_len, len);
    if key_len > KEY_BYTES_MAX || total > end - position {
        return None;
    }
    let crc = crc32c::crc32c(map.bytes(position + 8, total - 8));
    if crc != map.u32_at(position + 4) {
        return None;
    }
    let key_at = position + ENTRY_HEADER_BYTES;
    let key = std::str::from_utf8(map.bytes(key_at, key_len))
        .ok()?
        .to_owned();
    match kind {
        KIND_WRAP | KIND_BATCH => Some(Found {
            seq: found_seq,
            position,
            len: total,
            batch_len: len,
            kind,
            released: magic == ENTRY_MAGIC_RELEASED,
            key,
            base_offset: map.u64_at(position + 32),
            last_offset: map.u64_at(position + 40),
        }),
        _ => None,
    }
}

/// A batch to stage, in two pieces that follow one another: its first
/// [`batch::OFFSET_ATTRIBUTES`] bytes (base offset, length, leader epoch,
/// magic and CRC), and the rest, which its CRC covers. The log stages the
/// first from its write buffer, where it assigned the offsets, and the rest
/// from the request, still in the cache (its write buffer's copy is written
/// around the cache: `stream_copy`).
#[derive(Clone, Copy)]
pub struct Pieces<'a> {
    head: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Pieces<'a> {
    /// A batch in one piece.
    pub fn whole(batch: &'a [u8]) -> Pieces<'a> {
        let (head, rest) = batch.split_at(batch.len().min(batch::OFFSET_ATTRIBUTES));
        Pieces { head, rest }
    }

    /// A batch whose first bytes are `head` and the rest `rest`.
    pub fn split(head: &'a [u8], rest: &'a [u8]) -> Pieces<'a> {
        assert_eq!(
            head.len(),
            batch::OFFSET_ATTRIBUTES,
            "a batch's first bytes"
        );
        Pieces { head, rest }
    }

    /// Bytes of the batch.
    fn len(&self) -> usize {
        self.head.len() + self.rest.len()
    }
}

/// A staged batch's place in the ring; give it back with
/// [`Staging::release`] once the batch is written.
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket(u64);

/// A batch found staged at start, for its log to append again.
#[derive(Debug)]
pub struct Replay {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// The batch, as staged (base offset and leader epoch patched).
    pub batch: Vec<u8>,
    /// Its place. Found at start, the log appending it again takes it over
    /// (and releases it once the batch is written); carried from a failed
    /// log, a second handle on the failed log's place, never released.
    pub ticket: Ticket,
}

struct Slot {
    position: usize,
    /// Where its batch lies and how long it is: kept here, not read back
    /// from the shared file, which another process could have changed.
    batch_at: usize,
    batch_len: usize,
    released: bool,
    /// Its batch waits in `Ring::replay` for a log to take it.
    unclaimed: bool,
}

struct Ring {
    /// From the head, one per sequence number from `head_seq`.
    slots: VecDeque<Slot>,
    head_seq: u64,
    /// Where the next entry goes.
    tail: usize,
    /// Found at start (or handed back by a log that failed) and not yet
    /// taken by their log, by key; each in offset order.
    replay: HashMap<String, Vec<Found>>,
    /// Ring bytes the entries in `replay` take.
    unclaimed_bytes: usize,
    /// Appends waiting for room.
    waiting: Vec<oneshot::Sender<()>>,
    /// Flushers letting staged bytes gather (write-behind), told to write
    /// now when an append finds no room: their bytes are what holds it.
    lingering: Vec<oneshot::Sender<()>>,
    /// Appends that found the area full since the last report.
    full_waits: u64,
    full_reported_at: Option<Instant>,
    /// Since when the oldest entry has been the oldest.
    head_moved_at: Instant,
}

impl Ring {
    /// Puts `entries` of log `key` (live in the ring) in `replay`.
    fn hold_unclaimed(&mut self, key: &str, mut entries: Vec<Found>) {
        if entries.is_empty() {
            return; // No empty lists: `holds_unclaimed` asks for any.
        }
        for f in &entries {
            let index = self.index_of(&Ticket(f.seq));
            self.slots[index].unclaimed = true;
            self.unclaimed_bytes += f.len;
        }
        let replay = self.replay.entry(key.to_owned()).or_default();
        replay.append(&mut entries);
        sort_for_replay(replay);
    }

    /// Takes log `key`'s entries out of `replay`.
    fn claim(&mut self, key: &str) -> Vec<Found> {
        let entries = self.replay.remove(key).unwrap_or_default();
        for f in &entries {
            let index = self.index_of(&Ticket(f.seq));
            self.slots[index].unclaimed = false;
            self.unclaimed_bytes -= f.len;
        }
        entries
    }

    /// Where the place of a ticket still held is among the slots: a ticket
    /// is live until its one release, so it is in the ring and not
    /// released (anything else is a bug in its holder).
    fn index_of(&self, ticket: &Ticket) -> usize {
        let index = ticket.0.checked_sub(self.head_seq).map(|i| i as usize);
        let index = index
            .filter(|&i| i < self.slots.len())
            .unwrap_or_else(|| panic!("ticket {} not in the ring", ticket.0));
        assert!(
            !self.slots[index].released,
            "ticket {} already released",
            ticket.0
        );
        index
    }
}

/// A shard's staging area; see the module doc.
pub struct Staging {
    path: PathBuf,
    root: PathBuf,
    map: Mapping,
    ring: RefCell<Ring>,
}

impl Staging {
    /// Takes over a staging file on its shard. `root` is the data
    /// directory: keys are log directories relative to it.
    pub fn new(file: StagingFile, root: PathBuf) -> Staging {
        let StagingFile {
            path,
            map,
            found,
            next_seq,
        } = file;
        let head_seq = found.first().map_or(next_seq, |f| f.seq);
        let mut slots = VecDeque::new();
        let mut unclaimed: HashMap<String, Vec<Found>> = HashMap::new();
        let mut tail = map.u64_at(HEAD_POSITION_AT) as usize;
        for f in found {
            tail = if f.kind == KIND_WRAP {
                HEADER_BYTES
            } else {
                let after = f.position + f.len;
                if map.len - after < ENTRY_HEADER_BYTES {
                    HEADER_BYTES
                } else {
                    after
                }
            };
            slots.push_back(Slot {
                position: f.position,
                batch_at: f.position + ENTRY_HEADER_BYTES + f.key.len(),
                batch_len: f.batch_len,
                released: f.kind == KIND_WRAP || f.released,
                unclaimed: false,
            });
            if f.kind == KIND_BATCH && !f.released {
                unclaimed.entry(f.key.clone()).or_default().push(f);
            }
        }
        if slots.is_empty() || !(HEADER_BYTES..map.len).contains(&tail) {
            slots.clear();
            tail = HEADER_BYTES;
        }
        let staging = Staging {
            path,
            root,
            map,
            ring: RefCell::new(Ring {
                slots,
                head_seq,
                tail,
                replay: HashMap::new(),
                unclaimed_bytes: 0,
                waiting: Vec::new(),
                lingering: Vec::new(),
                full_waits: 0,
                full_reported_at: None,
                head_moved_at: Instant::now(),
            }),
        };
        // The head in the file may lag (released entries) or point where
        // nothing was found: set it to what this run will write after.
        {
            let mut ring = staging.ring.borrow_mut();
            for (key, entries) in unclaimed {
                ring.hold_unclaimed(&key, entries);
            }
            staging.record_head(&mut ring);
            staging.advance_head(&mut ring);
        }
        staging
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key of the log in `dir`: its path under the data directory.
    pub fn key(&self, dir: &Path) -> String {
        dir.strip_prefix(&self.root)
            .unwrap_or(dir)
            .to_string_lossy()
            .into_owned()
    }

    /// Whether a batch of `len` bytes can ever be staged: at most half the
    /// ring, so one stalled batch cannot hold all of it.
    pub fn fits(&self, key: &str, len: usize) -> bool {
        key.len() <= KEY_BYTES_MAX
            && entry_bytes(key.len(), len) <= (self.map.len - HEADER_BYTES) / 2
    }

    /// Where an entry of `n` bytes would go now: its position and whether
    /// the ring wraps first. `None` when there is no room.
    fn place(&self, ring: &Ring, n: usize) -> Option<(usize, bool)> {
        let end = self.map.len;
        let Some(head) = ring.slots.front().map(|s| s.position) else {
            return (HEADER_BYTES + n <= end).then_some((HEADER_BYTES, false));
        };
        let tail = ring.tail;
        if tail > head {
            if tail + n <= end {
                Some((tail, false))
            } else {
                (HEADER_BYTES + n <= head).then_some((HEADER_BYTES, true))
            }
        } else {
            (tail + n <= head).then_some((tail, false))
        }
    }

    /// Waits until an entry for `len` bytes of batch would fit
    /// (backpressure while a stall holds the ring full), or until the ring's
    /// oldest entry has gone unreleased for [`HEAD_HELD_AFTER`]: the ring is
    /// first in, first out, so one entry a log cannot write (a log that
    /// failed keeps its unwritten batches here for its next opening or the
    /// next start) would otherwise stop every append of the shard, whatever
    /// its disk does. An append that finds no room then waits for its write.
    pub async fn wait_room(&self, key: &str, len: usize) {
        let n = entry_bytes(key.len(), len);
        let mut waited = false;
        loop {
            let (rx, held_in) = {
                let mut ring = self.ring.borrow_mut();
                self.move_unclaimed_head(&mut ring);
                if self.place(&ring, n).is_some() {
                    return;
                }
                let held_for = ring.head_moved_at.elapsed();
                for flusher in ring.lingering.drain(..) {
                    let _ = flusher.send(());
                }
                // Once an append, however often it is woken to look again.
                if !waited {
                    waited = true;
                    ring.full_waits += 1;
                    crate::io_stats::record_staging_full_wait();
                }
                let due = ring
                    .full_reported_at
                    .is_none_or(|at| at.elapsed() >= FULL_REPORT_INTERVAL);
                if due {
                    // A stall longer than the area holds: service degrades
                    // to the disk's pace. Said once per interval, counted.
                    tracing::warn!(
                        path = %self.path.display(),
                        appends_waited = ring.full_waits,
                        oldest_entry_held_ms = held_for.as_millis() as u64,
                        "staging area full: acknowledgements wait for the disk"
                    );
                    ring.full_waits = 0;
                    ring.full_reported_at = Some(Instant::now());
                }
                let Some(held_in) = HEAD_HELD_AFTER.checked_sub(held_for) else {
                    return;
                };
                let (tx, rx) = oneshot::channel();
                ring.waiting.push(tx);
                (rx, held_in)
            };
            // Woken on every release; a dropped sender only means retry.
            let held = std::pin::pin!(glommio::timer::sleep(held_in));
            let _ = futures::future::select(rx, held).await;
        }
    }

    /// Copies `batch` (offsets `base_offset..=last_offset` of the log
    /// `key`) into the ring. `None` when there is no room now: the caller
    /// then waits for the write instead.
    ///
    /// `batch_crc`: the CRC-32C `batch` carries, when it was validated (it
    /// is then exact over its bytes from [`batch::OFFSET_ATTRIBUTES`] on).
    /// The entry's CRC is then combined from it instead of reading the batch
    /// a second time: the copy is all the batch costs here. A wrong one
    /// makes the entry look torn, never a wrong batch replayed.
    pub fn stage(
        &self,
        key: &str,
        base_offset: u64,
        last_offset: u64,
        batch: Pieces<'_>,
        batch_crc: Option<u32>,
    ) -> Option<Ticket> {
        debug_assert!(self.fits(key, batch.len()));
        let mut ring = self.ring.borrow_mut();
        self.move_unclaimed_head(&mut ring);
        self.put(&mut ring, key, base_offset, last_offset, batch, batch_crc)
    }

    /// Moves the entries at the ring's head that no log holds (found at
    /// start, or handed back by a log that failed, waiting for their log to
    /// open again) to its tail, once the free room falls to what they take
    /// plus a quarter of the ring. The ring is first in, first out: such an
    /// entry would hold its head until its log opens, maybe never in this
    /// run, and once the tail came round to it every append of the shard
    /// would wait for its write (after [`HEAD_HELD_AFTER`]). Early enough
    /// that the room to copy into is there (what the head holds is freed
    /// only when it moves), late enough that they are copied about once for
    /// each three quarters of a ring appended at most. A copy
    /// first, then the original released: a kill between leaves both, and
    /// the replay appends the first and skips the other (its offsets are
    /// then below the log's end). At most [`MOVE_BYTES_PER_STAGE`] a call,
    /// so that an append pays a bounded copy; more than a quarter of the
    /// ring held unclaimed is left where it is (moving it would not free
    /// the ring).
    fn move_unclaimed_head(&self, ring: &mut Ring) {
        let capacity = self.map.len - HEADER_BYTES;
        if !ring.slots.front().is_some_and(|s| s.unclaimed)
            || self.free(ring) >= capacity / 4 + ring.unclaimed_bytes
            || ring.unclaimed_bytes > capacity / 4
        {
            return;
        }
        // Copies go behind everything there now: they come round again
        // only after those.
        let end_seq = ring.head_seq + ring.slots.len() as u64;
        let mut moved = 0;
        while moved < MOVE_BYTES_PER_STAGE
            && ring.head_seq < end_seq
            && ring.slots.front().is_some_and(|s| s.unclaimed)
        {
            let (seq, position) = (ring.head_seq, ring.slots[0].position);
            // Read again, checked: the memory is shared with whoever can
            // open the file. One changed under this node stays where it is
            // (`put_back` says so when its log comes for it).
            let Some(f) = read_entry(&self.map, position, Some(seq)) else {
                return;
            };
            let (base_offset, last_offset) = (f.base_offset, f.last_offset);
            let Some(Ok(i)) = ring.replay.get(&f.key).map(|entries| {
                entries.binary_search_by_key(&(base_offset, seq), |e| (e.base_offset, e.seq))
            }) else {
                return;
            };
            let n = entry_bytes(f.key.len(), f.batch_len);
            if self.place(ring, n).is_none() {
                return;
            }
            // Out of the mapping first: `put` writes into it.
            let at = position + ENTRY_HEADER_BYTES + f.key.len();
            let batch = self.map.bytes(at, f.batch_len).to_vec();
            let key = f.key;
            let batch = Pieces::whole(&batch);
            let Some(copy) = self.put(ring, &key, base_offset, last_offset, batch, None) else {
                return;
            };
            let copy_index = ring.index_of(&copy);
            let copy_position = ring.slots[copy_index].position;
            ring.slots[copy_index].unclaimed = true;
            let entries = ring.replay.get_mut(&key).expect("looked up above");
            (entries[i].seq, entries[i].position) = (copy.0, copy_position);
            // Still in (offset, seq) order: past any others of its offset.
            let mut i = i;
            while entries
                .get(i + 1)
                .is_some_and(|next| next.base_offset == base_offset)
            {
                entries.swap(i, i + 1);
                i += 1;
            }
            moved += n;
            ring.slots[0].unclaimed = false;
            self.mark_released(ring, &Ticket(seq));
            self.advance_head(ring);
        }
    }

    /// Bytes between the tail and the head: room for entries (less the
    /// slack a wrap leaves at the end).
    fn free(&self, ring: &Ring) -> usize {
        let Some(head) = ring.slots.front().map(|s| s.position) else {
            return self.map.len - HEADER_BYTES;
        };
        if ring.tail > head {
            (self.map.len - ring.tail) + (head - HEADER_BYTES)
        } else {
            head - ring.tail
        }
    }

    /// Copies an entry into the ring at its tail; `None` when there is no
    /// room.
    fn put(
        &self,
        ring: &mut Ring,
        key: &str,
        base_offset: u64,
        last_offset: u64,
        batch: Pieces<'_>,
        batch_crc: Option<u32>,
    ) -> Option<Ticket> {
        let n = entry_bytes(key.len(), batch.len());
        let (mut position, wrap) = self.place(ring, n)?;
        if ring.slots.is_empty() {
            // This entry is the oldest from now: held from now.
            ring.head_moved_at = Instant::now();
        }
        if wrap {
            let tail = ring.tail;
            let len = self.map.len - tail;
            // A tail closer to the end than a header was moved to the start.
            assert!(
                len >= ENTRY_HEADER_BYTES,
                "wrap without room for its marker"
            );
            let seq = ring.head_seq + ring.slots.len() as u64;
            self.write_entry(tail, seq, KIND_WRAP, "", 0, 0, Pieces::whole(&[]), None);
            ring.slots.push_back(Slot {
                position: tail,
                batch_at: tail + ENTRY_HEADER_BYTES,
                batch_len: 0,
                released: true,
                unclaimed: false,
            });
            position = HEADER_BYTES;
        }
        let seq = ring.head_seq + ring.slots.len() as u64;
        self.write_entry(
            position,
            seq,
            KIND_BATCH,
            key,
            base_offset,
            last_offset,
            batch,
            batch_crc,
        );
        let mut len = n;
        if self.map.len - (position + n) < ENTRY_HEADER_BYTES {
            len = self.map.len - position;
        }
        ring.slots.push_back(Slot {
            position,
            batch_at: position + ENTRY_HEADER_BYTES + key.len(),
            batch_len: batch.len(),
            released: false,
            unclaimed: false,
        });
        ring.tail = if position + len >= self.map.len {
            HEADER_BYTES
        } else {
            position + len
        };
        Some(Ticket(seq))
    }

    #[allow(clippy::too_many_arguments)]
    fn write_entry(
        &self,
        position: usize,
        seq: u64,
        kind: u32,
        key: &str,
        base_offset: u64,
        last_offset: u64,
        batch: Pieces<'_>,
        batch_crc: Option<u32>,
    ) {
        let total = entry_bytes(key.len(), batch.len());
        let mut header = [0u8; ENTRY_HEADER_BYTES];
        header[..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
        header[8..16].copy_from_slice(&seq.to_le_bytes());
        header[16..20].copy_from_slice(&kind.to_le_bytes());
        header[20..24].copy_from_slice(&(key.len() as u32).to_le_bytes());
        header[24..28].copy_from_slice(&(batch.len() as u32).to_le_bytes());
        header[32..40].copy_from_slice(&base_offset.to_le_bytes());
        header[40..48].copy_from_slice(&last_offset.to_le_bytes());
        let padding = [0u8; 8];
        let pad = total - ENTRY_HEADER_BYTES - key.len() - batch.len();
        let mut crc = crc32c::crc32c(&header[8..]);
        crc = crc32c::crc32c_append(crc, key.as_bytes());
        crc = crc32c::crc32c_append(crc, batch.head);
        crc = match batch_crc.filter(|_| !batch.rest.is_empty()) {
            Some(covered) => {
                debug_assert_eq!(covered, crc32c::crc32c(batch.rest), "the batch's own CRC");
                fjord_core::crc::crc32c_combine(crc, covered, batch.rest.len())
            }
            None => crc32c::crc32c_append(crc, batch.rest),
        };
        crc = crc32c::crc32c_append(crc, &padding[..pad]);
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        let body = position + ENTRY_HEADER_BYTES;
        self.map.write(body, key.as_bytes());
        self.map.write(body + key.len(), batch.head);
        self.map
            .write(body + key.len() + batch.head.len(), batch.rest);
        self.map
            .write(body + key.len() + batch.len(), &padding[..pad]);
        // The header last: a walk that finds a whole header with the next
        // sequence number and a matching CRC finds the whole entry. Only
        // the process dies, not the machine, so what orders the stores for
        // the next process is program order; the fence keeps the compiler
        // from moving the header's stores ahead of the body's (nothing in
        // this process reads them, so it otherwise could).
        compiler_fence(Ordering::Release);
        self.map.write(position, &header);
    }

    /// Gives back a staged batch's place: its log has written it.
    pub fn release(&self, ticket: Ticket) {
        let mut ring = self.ring.borrow_mut();
        self.mark_released(&mut ring, &ticket);
        self.advance_head(&mut ring);
    }

    fn mark_released(&self, ring: &mut Ring, ticket: &Ticket) {
        let index = ring.index_of(ticket);
        let slot = &mut ring.slots[index];
        slot.released = true;
        // Marked in the file too: found behind an older live entry after a
        // kill, it must not come back (its log may have cut these offsets
        // off and written others there).
        self.map
            .write(slot.position, &ENTRY_MAGIC_RELEASED.to_le_bytes());
    }

    /// Drops released entries from the front, records the new head in the
    /// file and wakes appends waiting for room.
    fn advance_head(&self, ring: &mut Ring) {
        let mut moved = false;
        while ring.slots.front().is_some_and(|s| s.released) {
            ring.slots.pop_front();
            ring.head_seq += 1;
            moved = true;
        }
        if moved {
            ring.head_moved_at = Instant::now();
            self.record_head(ring);
            for waiter in ring.waiting.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Writes the head into the file's header.
    fn record_head(&self, ring: &mut Ring) {
        if ring.slots.is_empty() {
            // An empty ring starts again at the front (as `place` assumes).
            ring.tail = HEADER_BYTES;
        }
        let position = ring.slots.front().map_or(HEADER_BYTES, |s| s.position);
        // The walk at start trusts only the position, one aligned 8-byte
        // atomic store that a kill cannot tear, and reads the sequence
        // number from the entry there; the stored sequence is a hint that
        // keeps numbers rising across runs.
        self.map
            .store_u64(HEAD_SEQ_AT, ring.head_seq + ring.slots.len() as u64);
        self.map.store_u64(HEAD_POSITION_AT, position as u64);
    }

    /// The batches found staged at start for the log in `dir`, in offset
    /// order; each is handed out once.
    pub fn take_replay(&self, dir: &Path) -> Vec<Replay> {
        let key = self.key(dir);
        let found = self.ring.borrow_mut().claim(&key);
        found
            .into_iter()
            .map(|f| {
                let at = f.position + ENTRY_HEADER_BYTES + f.key.len();
                Replay {
                    base_offset: f.base_offset,
                    last_offset: f.last_offset,
                    batch: self.map.bytes(at, f.batch_len).to_vec(),
                    ticket: Ticket(f.seq),
                }
            })
            .collect()
    }

    /// Releases the batches the area holds for the log in `dir` (found at
    /// start, or handed back by a log that failed): its data was dropped
    /// (deleted, or reset to start elsewhere). Returns how many.
    pub fn forget(&self, dir: &Path) -> usize {
        let key = self.key(dir);
        let released = self.release_unclaimed(|other| other != key);
        released.iter().map(|(_, batches)| batches).sum()
    }

    /// Whether batches wait for a log to take them (found at start, or
    /// handed back by a log that failed).
    pub fn holds_unclaimed(&self) -> bool {
        !self.ring.borrow().replay.is_empty()
    }

    /// Releases what no log took and `listed` does not name (logs the
    /// metadata no longer lists); returns the keys and batch counts. A
    /// listed log that failed to open keeps its entries for a later open.
    pub fn release_unclaimed(&self, listed: impl Fn(&str) -> bool) -> Vec<(String, usize)> {
        let unclaimed: Vec<(String, Vec<Found>)> = {
            let mut ring = self.ring.borrow_mut();
            let keys: Vec<String> = ring.replay.keys().filter(|k| !listed(k)).cloned().collect();
            keys.into_iter()
                .map(|k| {
                    let found = ring.claim(&k);
                    (k, found)
                })
                .collect()
        };
        let mut report = Vec::new();
        for (key, found) in unclaimed {
            report.push((key, found.len()));
            for f in found {
                self.release(Ticket(f.seq));
            }
        }
        report
    }

    /// The staged batches of `staged` from the one holding `offset`, copied
    /// out (at least one, then up to `max_bytes`), and the offset after
    /// them: reads of acknowledged batches whose write is still to come.
    /// `None` when the one holding `offset` has no place here: a log that
    /// failed gave its places up (below its `offset_visible` every batch
    /// is staged otherwise).
    pub(crate) fn read(
        &self,
        staged: &[Staged],
        offset: u64,
        max_bytes: usize,
    ) -> Option<(BatchSlice, u64)> {
        let first = staged.partition_point(|b| b.last_offset < offset);
        // The batches that fit, counted first so that the copy allocates once.
        let mut len = 0;
        let taken = staged[first..]
            .iter()
            .take_while(|b| {
                let fits = b.ticket.is_some() && (len == 0 || len + b.len <= max_bytes);
                len += if fits { b.len } else { 0 };
                fits
            })
            .count();
        let mut bytes = Vec::with_capacity(len);
        let mut offset_next = offset;
        for b in &staged[first..first + taken] {
            if let Some(ticket) = &b.ticket {
                bytes.extend_from_slice(self.batch(ticket));
                offset_next = b.last_offset + 1;
            }
        }
        (!bytes.is_empty()).then(|| (BatchSlice::from_copy(bytes), offset_next))
    }

    /// A staged batch as a [`Replay`] (its bytes copied out) for a log
    /// opened again after a failure: the failed log keeps the place until
    /// the new one has written its copy.
    pub(crate) fn replay_of(&self, ticket: &Ticket, base_offset: u64, last_offset: u64) -> Replay {
        Replay {
            base_offset,
            last_offset,
            batch: self.batch(ticket).to_vec(),
            ticket: Ticket(ticket.0),
        }
    }

    /// Hands staged batches of the log `key` back to the area, as if found
    /// at start: the next opening of that log appends them again (or the
    /// next start finds them). For a log that failed, before it served or
    /// while it did: its batches stay where they are, and no other copy of
    /// them is made.
    pub(crate) fn put_back(&self, key: &str, tickets: Vec<Ticket>) {
        if tickets.is_empty() {
            return;
        }
        let mut ring = self.ring.borrow_mut();
        let mut entries: Vec<Found> = Vec::with_capacity(tickets.len());
        let mut lost = Vec::new();
        for ticket in tickets {
            let position = ring.slots[ring.index_of(&ticket)].position;
            // Written by this process and live, it reads back whole unless
            // something else wrote into the shared memory: then it is as if
            // torn, and the next start drops it as well.
            match read_entry(&self.map, position, Some(ticket.0)) {
                Some(entry) if entry.key == key => entries.push(entry),
                _ => {
                    tracing::error!(
                        path = %self.path.display(),
                        log = key,
                        seq = ticket.0,
                        "a staged entry changed under this node: its batch cannot be replayed"
                    );
                    lost.push(ticket);
                }
            }
        }
        ring.hold_unclaimed(key, entries);
        drop(ring);
        for ticket in lost {
            self.release(ticket);
        }
    }

    /// A staged batch's bytes, in the ring.
    fn batch(&self, ticket: &Ticket) -> &[u8] {
        let ring = self.ring.borrow();
        let slot = &ring.slots[ring.index_of(ticket)];
        self.map.bytes(slot.batch_at, slot.batch_len)
    }

    /// Bytes of the area in use: from the oldest entry not yet released
    /// to where the next one goes (entries, their headers, and the slack a
    /// wrap leaves at the end).
    pub fn staged_bytes(&self) -> usize {
        let ring = self.ring.borrow();
        let Some(head) = ring.slots.front().map(|s| s.position) else {
            return 0;
        };
        if ring.tail > head {
            ring.tail - head
        } else {
            self.map.len - head + ring.tail - HEADER_BYTES
        }
    }

    /// Bytes the area has for entries (its file less the file's header).
    pub fn capacity_bytes(&self) -> usize {
        self.map.len - HEADER_BYTES
    }

    /// Whether a log may let its staged bytes gather rather than write them
    /// (write-behind): not once the area is three quarters full or an
    /// append waits for room, since what is staged holds that room.
    pub(crate) fn has_room_to_linger(&self) -> bool {
        let ring = self.ring.borrow();
        ring.waiting.is_empty() && self.free(&ring) >= self.capacity_bytes() / 4
    }

    /// Resolves when an append finds the area full: a flusher letting its
    /// staged bytes gather waits on it too, and writes at once then.
    pub(crate) fn room_wanted(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let lingering = &mut self.ring.borrow_mut().lingering;
        if lingering.len() == lingering.capacity() {
            // Those whose flusher stopped waiting go when the list is full,
            // and room is made for as many again: O(1) a call, amortized,
            // however many logs the shard has.
            lingering.retain(|tx| !tx.is_canceled());
            lingering.reserve(lingering.len().max(8));
        }
        lingering.push(tx);
        rx
    }

    /// Batches staged and not yet released.
    pub fn staged_batches(&self) -> usize {
        self.ring
            .borrow()
            .slots
            .iter()
            .filter(|s| !s.released)
            .count()
    }

    /// Removes the file when nothing is staged (a clean stop): the next
    /// start makes a fresh one. Called once every log is closed.
    pub async fn remove_if_empty(&self) -> StorageResult<bool> {
        if self.staged_batches() > 0 {
            return Ok(false);
        }
        crate::recovery::remove(&self.path).await?;
        Ok(true)
    }
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging").field("path", &self.path).finish()
    }
}

/// A staged entry's base offset is not where its log ends: replaying it
/// would leave a gap.
pub(crate) fn gap(
    path: &Path,
    base_offset: u64,
    last_offset: u64,
    offset_next: u64,
) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        position: base_offset,
        reason: format!(
            "staged batch at offsets {base_offset}..={last_offset} but the log ends at {offset_next}"
        ),
    }
}

/// A log's entries in the order its replay appends them: by offset. This
/// build keeps a log's entries in offset order in the ring (a replay
/// appends them again where they lie, a truncation releases what it cuts),
/// but an area written by an older one, which copied each replayed batch to
/// the ring's tail, can hold them out of order after a kill during a
/// replay, and the same batch twice: those come out in sequence order, and
/// the replay skips the second.
fn sort_for_replay(entries: &mut [Found]) {
    entries.sort_by_key(|f| (f.base_offset, f.seq));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(dir: &Path, id: u128, bytes: usize) -> Result<StagingFile, StagingError> {
        StagingFile::open(dir, dir, id, 0, 2, bytes)
    }

    #[test]
    fn files_left_under_another_name_are_found_unless_a_live_node_holds_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (before, after) = (tmp.path().join("before"), tmp.path().join("after"));
        std::fs::create_dir(&before).unwrap();
        std::fs::create_dir(&after).unwrap();
        let open = || StagingFile::open(tmp.path(), &before, 7, 0, 2, BYTES_MIN).unwrap();
        let staging = Staging::new(open(), before.clone());
        staging
            .stage("t/0", 0, 0, Pieces::whole(&[1; 64]), None)
            .unwrap();
        let left = staging.path().to_path_buf();
        // Mapped by a running node (a copy of the directory, same id): its
        // lock keeps the file out of the search.
        check_moved(tmp.path(), &after, 7).unwrap();
        drop(staging);
        // Another directory's file is not ours to judge.
        check_moved(tmp.path(), &after, 8).unwrap();
        let err = check_moved(tmp.path(), &after, 7).unwrap_err();
        let wanted = file_path(tmp.path(), &after, 0);
        assert!(
            err.to_string().contains(&wanted.display().to_string()),
            "{err}"
        );
        assert!(left.exists(), "refused, and kept for its batches");
        // Once nothing is staged in it, it is a leftover: removed.
        let staging = Staging::new(open(), before.clone());
        assert_eq!(staging.release_unclaimed(|_| false), [("t/0".into(), 1)]);
        drop(staging);
        check_moved(tmp.path(), &after, 7).unwrap();
        assert!(!left.exists());
    }

    #[test]
    fn an_empty_file_of_another_identity_is_made_anew_only_if_made_for_this_path() {
        let tmp = tempfile::tempdir().unwrap();
        let shm = tmp.path().join("shm");
        let (here, there) = (tmp.path().join("here"), tmp.path().join("there"));
        std::fs::create_dir(&here).unwrap();
        std::fs::create_dir(&there).unwrap();
        let open = |dir: &Path, id: u128| StagingFile::open(&shm, dir, id, 0, 2, BYTES_MIN);
        // Made for this path by an earlier directory (id 1), nothing staged.
        drop(open(&here, 1).unwrap());
        assert_eq!(open(&here, 2).unwrap().staged_batches(), 0, "made anew");
        // Made for another path and copied under this one's name: refused,
        // empty as it is.
        drop(open(&there, 3).unwrap());
        std::fs::copy(file_path(&shm, &there, 0), file_path(&shm, &here, 0)).unwrap();
        let err = open(&here, 2).err().unwrap();
        assert!(matches!(err, StagingError::Refused { .. }), "{err}");
    }

    #[test]
    fn a_file_whose_making_a_kill_cut_short_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let path = file_path(tmp.path(), tmp.path(), 0);
        // Sized, not yet headed: what a kill between the two leaves.
        std::fs::write(&path, vec![0u8; BYTES_MIN]).unwrap();
        let made = file(tmp.path(), 7, BYTES_MIN).unwrap();
        assert_eq!(made.staged_batches(), 0);
        let staging = Staging::new(made, tmp.path().into());
        staging
            .stage("t/0", 0, 0, Pieces::whole(&[1; 64]), None)
            .unwrap();
        drop(staging);
        assert_eq!(file(tmp.path(), 7, BYTES_MIN).unwrap().staged_batches(), 1);
        // A magic lost from a file that holds batches is damage, refused.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..8].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let err = file(tmp.path(), 7, BYTES_MIN).err().unwrap();
        assert!(matches!(err, StagingError::Refused { .. }), "{err}");
    }

    #[test]
    fn files_of_a_data_directory_that_is_gone_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let shm = tmp.path().join("shm");
        let dir = |name: &str| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        };
        let staged = |dir: &Path| {
            let file = StagingFile::open(&shm, dir, data_dir_id(dir).unwrap(), 0, 2, BYTES_MIN);
            let staging = Staging::new(file.unwrap(), dir.to_path_buf());
            staging
                .stage("t/0", 0, 0, Pieces::whole(&[1; 64]), None)
                .unwrap();
            staging
        };
        let [gone, anew, alive, running, moved, ours] =
            ["gone", "anew", "alive", "running", "moved", "ours"].map(dir);
        for d in [&gone, &anew, &alive, &moved] {
            drop(staged(d));
        }
        let held = staged(&running);
        for d in [&gone, &anew, &running] {
            std::fs::remove_dir_all(d).unwrap();
        }
        std::fs::rename(&moved, tmp.path().join("moved-here")).unwrap();
        dir("anew");
        data_dir_id(&anew).unwrap();
        check_moved(&shm, &ours, data_dir_id(&ours).unwrap()).unwrap();
        let exists = |d: &Path| file_path(&shm, d, 0).exists();
        assert!(!exists(&gone), "a removed directory's file stays");
        assert!(!exists(&anew), "a directory made anew: its old file stays");
        assert!(exists(&alive), "a directory that is there lost its file");
        assert!(exists(&running), "a running node's file was removed");
        assert!(exists(&moved), "a renamed directory's file was removed");
        drop(held);
    }

    /// Entries no log takes (their log failed, or is not opened in this
    /// run) move along as the ring comes round to them: appends go on
    /// through laps of the ring, and the entries are still found, whole and
    /// in offset order, by the next start, as often as the ring is reopened.
    #[test]
    fn entries_no_log_takes_move_along_the_ring_and_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let open = || Staging::new(file(tmp.path(), 7, BYTES_MIN).unwrap(), tmp.path().into());
        let batch = |i: u64| -> Vec<u8> { (0..500 + i * 7).map(|k| (k * 31 + i) as u8).collect() };
        let staging = open();
        for i in 0..40 {
            staging
                .stage(
                    "failed/0",
                    10 * i,
                    10 * i + 9,
                    Pieces::whole(&batch(i)),
                    None,
                )
                .unwrap();
            if i % 13 == 0 {
                staging
                    .stage("gone/1", i, i, Pieces::whole(&batch(i + 100)), None)
                    .unwrap();
            }
        }
        drop(staging);
        for round in 0..3 {
            let staging = open();
            assert_eq!(staging.staged_batches(), 44, "round {round}");
            // Three laps of appends of varying sizes, each written
            // (released) a few behind.
            let mut live = VecDeque::new();
            let mut staged = 0;
            let mut n = 0usize;
            while staged < 3 * BYTES_MIN {
                let len = 1000 + (n * 7919) % 20_000;
                let ticket =
                    staging.stage("t/0", 0, 0, Pieces::whole(&vec![round as u8; len]), None);
                live.push_back(ticket.expect("room: the held entries moved along"));
                staged += len;
                n += 1;
                if live.len() > 8 {
                    staging.release(live.pop_front().unwrap());
                }
            }
            for ticket in live {
                staging.release(ticket);
            }
            assert_eq!(staging.staged_batches(), 44);
        }
        let staging = open();
        let failed = staging.take_replay(&tmp.path().join("failed/0"));
        let offsets: Vec<u64> = failed.iter().map(|r| r.base_offset).collect();
        assert_eq!(offsets, (0..40).map(|i| 10 * i).collect::<Vec<_>>());
        assert!(failed.iter().all(|r| r.batch == batch(r.base_offset / 10)));
        let gone = staging.take_replay(&tmp.path().join("gone/1"));
        assert_eq!(gone.len(), 4);
        assert!(gone.iter().all(|r| r.batch == batch(r.base_offset + 100)));
    }

    #[test]
    fn entries_survive_reopen_and_released_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::new(file(tmp.path(), 7, BYTES_MIN).unwrap(), tmp.path().into());
        let a = staging
            .stage("t/0", 0, 4, Pieces::whole(&[1; 100]), None)
            .unwrap();
        let _b = staging
            .stage("t/0", 5, 9, Pieces::whole(&[2; 200]), None)
            .unwrap();
        let _c = staging
            .stage("u/1", 0, 0, Pieces::whole(&[3; 50]), None)
            .unwrap();
        staging.release(a);
        drop(staging);
        let reopened = Staging::new(file(tmp.path(), 7, BYTES_MIN).unwrap(), tmp.path().into());
        let t = reopened.take_replay(&tmp.path().join("t/0"));
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].base_offset, t[0].last_offset), (5, 9));
        assert_eq!(t[0].batch, vec![2; 200]);
        assert_eq!(
            reopened.release_unclaimed(|_| false),
            vec![("u/1".into(), 1)]
        );
        for r in t {
            reopened.release(r.ticket);
        }
        assert_eq!(reopened.staged_batches(), 0);
    }

    /// A read runs over the staged batches from the one holding the offset,
    /// at least one whatever its size; from a batch whose place a failed
    /// log gave up it finds nothing (an error for the reader, not a panic).
    #[test]
    fn a_read_copies_staged_batches_and_finds_none_where_a_place_was_given_up() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::new(file(tmp.path(), 7, BYTES_MIN).unwrap(), tmp.path().into());
        let staged = |base: u64, last: u64, bytes: &[u8], ticket| crate::commit::Staged {
            segment: 0,
            base_offset: base,
            last_offset: last,
            position: 0,
            len: bytes.len(),
            ticket,
        };
        let (one, two) = ([1u8; 100], [2u8; 200]);
        let a = staging
            .stage("t/0", 0, 4, Pieces::whole(&one), None)
            .unwrap();
        let b = staging
            .stage("t/0", 5, 9, Pieces::whole(&two), None)
            .unwrap();
        let log = [staged(0, 4, &one, Some(a)), staged(5, 9, &two, Some(b))];
        let (bytes, next) = staging.read(&log, 3, 1).expect("one batch at least");
        assert_eq!((&bytes[..], next), (&one[..], 5));
        let (bytes, next) = staging.read(&log, 0, 300).expect("both");
        assert_eq!((bytes.len(), next), (300, 10));
        let [_, b] = log;
        let given_up = [staged(0, 4, &one, None), b];
        assert!(staging.read(&given_up, 2, 300).is_none());
    }

    /// An entry's CRC combined from the batch's own is the one a walk reads
    /// over the whole entry; also for a batch staged in two pieces, its
    /// first bytes patched elsewhere (as the log stages them: offsets from
    /// its buffer, the rest from the request).
    #[test]
    fn a_validated_batch_is_staged_without_reading_it_again() {
        let mut builder = fjord_core::BatchBuilder::new();
        for i in 0..3 {
            builder.push(i, Some(b"key"), Some(&[i as u8; 300]), &[]);
        }
        let bytes = builder.build();
        let crc = fjord_core::Batch::validate(&bytes).unwrap().crc();
        let mut patched = bytes.clone();
        batch::set_base_offset(&mut patched, 3);
        batch::set_partition_leader_epoch(&mut patched, 5);
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::new(file(tmp.path(), 7, BYTES_MIN).unwrap(), tmp.path().into());
        staging
            .stage("t/0", 0, 2, Pieces::whole(&bytes), Some(crc))
            .unwrap();
        let (head, rest) = (
            &patched[..batch::OFFSET_ATTRIBUTES],
            &bytes[batch::OFFSET_ATTRIBUTES..],
        );
        staging
            .stage("t/0", 3, 5, Pieces::split(head, rest), Some(crc))
            .unwrap();
        drop(staging);
        let reopened = Staging::new(file(tmp.path(), 7, BYTES_MIN).unwrap(), tmp.path().into());
        let found = reopened.take_replay(&tmp.path().join("t/0"));
        assert_eq!(found.len(), 2, "both entries whole");
        assert_eq!(found[0].batch, bytes);
        assert_eq!(found[1].batch, patched);
    }

    /// Random stages, out-of-order releases and reopens (a killed process)
    /// against a model: after every reopen exactly the unreleased batches
    /// are found, each log's in order, byte-identical.
    #[test]
    fn random_stages_releases_and_reopens_match_a_model() {
        for seed in [0x2545_f491_4f6c_dd1du64, 0x9e37_79b9_7f4a_7c15, 42] {
            let tmp = tempfile::tempdir().unwrap();
            let open = || Staging::new(file(tmp.path(), 9, BYTES_MIN).unwrap(), tmp.path().into());
            let mut x = seed;
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let keys = ["a/0", "bb/1", "ccc/2"];
            let mut staging = open();
            // Per key: next offset, and the live batches (ticket, offset, bytes).
            let mut offsets = [0u64; 3];
            let mut live: Vec<Vec<(Ticket, u64, Vec<u8>)>> =
                vec![Vec::new(), Vec::new(), Vec::new()];
            for step in 0..20_000u64 {
                match next(100) {
                    0..60 => {
                        let k = next(3) as usize;
                        let big = next(10) == 0;
                        let len = 1 + next(if big { 200_000 } else { 3000 }) as usize;
                        let bytes: Vec<u8> = (0..len).map(|i| (i as u64 ^ step) as u8).collect();
                        if let Some(ticket) = staging.stage(
                            keys[k],
                            offsets[k],
                            offsets[k],
                            Pieces::whole(&bytes),
                            None,
                        ) {
                            live[k].push((ticket, offsets[k], bytes));
                            offsets[k] += 1;
                        }
                    }
                    // Logs write in order: each releases its oldest.
                    60..98 => {
                        let k = next(3) as usize;
                        if !live[k].is_empty() {
                            staging.release(live[k].remove(0).0);
                        }
                    }
                    _ => {
                        drop(staging);
                        staging = open();
                        for (k, key) in keys.iter().enumerate() {
                            // Released entries are marked so: never found again,
                            // even behind an older live one that held the head.
                            let end = live[k].first().map_or(offsets[k], |(_, o, _)| *o);
                            let (stale, found): (Vec<Replay>, Vec<Replay>) = staging
                                .take_replay(&tmp.path().join(key))
                                .into_iter()
                                .partition(|r| r.base_offset < end);
                            assert!(stale.is_empty(), "step {step}: released entries found");
                            let got: Vec<(u64, &Vec<u8>)> =
                                found.iter().map(|r| (r.base_offset, &r.batch)).collect();
                            let want: Vec<(u64, &Vec<u8>)> =
                                live[k].iter().map(|(_, o, b)| (*o, b)).collect();
                            assert!(
                                got == want,
                                "step {step}: {key} found {} of {}",
                                got.len(),
                                want.len()
                            );
                            // The found entries are the live ones now.
                            for ((old, _, _), replay) in live[k].iter_mut().zip(found) {
                                *old = replay.ticket;
                            }
                        }
                        assert!(staging.release_unclaimed(|_| false).is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn the_ring_wraps_and_waits_for_room() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::new(file(tmp.path(), 1, BYTES_MIN).unwrap(), tmp.path().into());
        let batch = vec![9u8; 100_000];
        let mut live = VecDeque::new();
        let mut staged = 0u64;
        for round in 0..50u64 {
            while let Some(ticket) = staging.stage("k", round, round, Pieces::whole(&batch), None) {
                live.push_back((ticket, round));
                staged += 1;
            }
            // Full: release the oldest two, as the log's writes would.
            for _ in 0..2 {
                staging.release(live.pop_front().unwrap().0);
            }
        }
        assert!(staged > 100);
        let expected: Vec<u64> = live.iter().map(|(_, r)| *r).collect();
        drop(staging);
        let reopened = Staging::new(file(tmp.path(), 1, BYTES_MIN).unwrap(), tmp.path().into());
        let found: Vec<u64> = reopened
            .take_replay(&tmp.path().join("k"))
            .into_iter()
            .map(|r| {
                assert_eq!(r.batch, batch);
                r.base_offset
            })
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn a_torn_entry_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::new(file(tmp.path(), 3, BYTES_MIN).unwrap(), tmp.path().into());
        staging
            .stage("k", 0, 0, Pieces::whole(&[1; 64]), None)
            .unwrap();
        staging
            .stage("k", 1, 1, Pieces::whole(&[2; 64]), None)
            .unwrap();
        let path = staging.path().to_path_buf();
        drop(staging);
        // The process died while copying the second batch: its tail is old.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = HEADER_BYTES + entry_bytes(1, 64);
        bytes[second + ENTRY_HEADER_BYTES + 1 + 10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let reopened = Staging::new(file(tmp.path(), 3, BYTES_MIN).unwrap(), tmp.path().into());
        let found = reopened.take_replay(&tmp.path().join("k"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].batch, vec![1; 64]);
        // The ring goes on after the good entry.
        assert!(
            reopened
                .stage("k", 1, 1, Pieces::whole(&[5; 64]), None)
                .is_some()
        );
    }

    #[test]
    fn a_foreign_or_older_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::new(file(tmp.path(), 3, BYTES_MIN).unwrap(), tmp.path().into());
        staging
            .stage("k", 0, 0, Pieces::whole(&[1; 64]), None)
            .unwrap();
        let path = staging.path().to_path_buf();
        drop(staging);
        let err = file(tmp.path(), 4, BYTES_MIN).err().unwrap();
        assert!(matches!(err, StagingError::Refused { .. }), "{err}");
        assert!(
            err.to_string().contains("written for data directory"),
            "{err}"
        );
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = file(tmp.path(), 3, BYTES_MIN).err().unwrap();
        assert!(err.to_string().contains("layout version 0"), "{err}");
        // Refusing changed nothing: the entry is still there for its owner.
        bytes[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(file(tmp.path(), 3, BYTES_MIN).unwrap().staged_batches(), 1);
    }

    #[test]
    fn a_node_staging_elsewhere_than_its_last_run_replays_or_refuses() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, a, b) = (
            tmp.path().join("data"),
            tmp.path().join("a"),
            tmp.path().join("b"),
        );
        std::fs::create_dir(&data).unwrap();
        let open = |dir: &Path| {
            check_staging_dir_changed(dir, &data, 7, true)?;
            StagingFile::open(dir, &data, 7, 0, 2, BYTES_MIN)
        };
        let staging = Staging::new(open(&a).unwrap(), data.clone());
        let ticket = staging
            .stage("t/0", 0, 0, Pieces::whole(&[1; 64]), None)
            .unwrap();
        // Killed with a batch staged in `a`, started with `b`: refused,
        // naming the directory to go back to, and `a`'s file is kept.
        let err = check_staging_dir_changed(&b, &data, 7, true).err().unwrap();
        assert!(matches!(err, StagingError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("staging_dir = "), "{err}");
        let err = check_staging_dir_changed(&b, &data, 7, false)
            .err()
            .unwrap();
        assert!(matches!(err, StagingError::Refused { .. }), "{err}");
        assert!(file_path(&a, &data, 0).exists());
        // Once its batch is written (released), the move goes ahead and
        // the old file goes.
        staging.release(ticket);
        drop(staging);
        let moved = open(&b).unwrap();
        assert_eq!(moved.staged_batches(), 0);
        assert!(!file_path(&a, &data, 0).exists());
        // And `b` is now the one recorded: back to `a` finds `b`'s file.
        drop(moved);
        check_staging_dir_changed(&a, &data, 7, true).unwrap();
        assert!(!file_path(&b, &data, 0).exists());
    }

    #[test]
    fn a_file_no_shard_opens_that_cannot_be_looked_at_stops_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where shard 1's file would be: opening it read-write
        // fails (EISDIR) even for root, as a file of another owner would.
        std::fs::create_dir(file_path(tmp.path(), tmp.path(), 1)).unwrap();
        let err = check_staging_off(tmp.path(), tmp.path(), 3).err().unwrap();
        assert!(matches!(err, StagingError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("cannot open it"), "{err}");
    }

    #[test]
    fn a_file_cut_short_after_its_header_is_refused_without_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::new(file(tmp.path(), 3, BYTES_MIN).unwrap(), tmp.path().into());
        staging
            .stage("k", 0, 0, Pieces::whole(&[1; 64]), None)
            .unwrap();
        let path = staging.path().to_path_buf();
        drop(staging);
        // Every length from the header to past the first entry's header:
        // the walk stays inside the file, and the size the header records
        // no longer matches, so the file is refused, never half-read.
        let mut bytes = std::fs::read(&path).unwrap();
        for len in [
            HEADER_BYTES + 1,
            HEADER_BYTES + 8,
            HEADER_BYTES + 47,
            HEADER_BYTES + 56,
        ] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            let err = file(tmp.path(), 3, BYTES_MIN).err().unwrap();
            assert!(err.to_string().contains("the file has"), "{len}: {err}");
        }
        // Without its magic (its making cut short), the walk alone decides:
        // it must stay inside the file, find nothing, and let it be made
        // again.
        bytes[..8].fill(0);
        for len in [HEADER_BYTES + 8, HEADER_BYTES + 47] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            assert_eq!(file(tmp.path(), 3, BYTES_MIN).unwrap().staged_batches(), 0);
        }
    }
}
