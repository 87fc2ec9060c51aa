//! Producer-state snapshots and the rebuild of a partition's
//! [`ProducerTable`] from its log (Kafka's `<offset>.snapshot` files).
//!
//! A snapshot `<offset>.snapshot` beside the segments holds the state of
//! every batch below `offset`. Opening a partition loads the newest
//! snapshot at or below the log's end and applies the batches from there
//! (or from the log start) to the end. Snapshots past the end (a tail
//! lost to a power cut) are deleted. Because retention only deletes
//! segments after the owner wrote a snapshot at or past them, producers
//! whose batches are gone from the log keep their state.
//!
//! A file is written whole to `<offset>.snapshot.tmp` with DMA (O_DIRECT)
//! writes, fdatasynced, renamed over its name and the directory synced:
//! a reader finds a whole snapshot or none. Its frame:
//!
//! ```text
//! magic "FJPS" | offset u64 | len u32 | crc32 u32 (over offset, len, bytes) | bytes | zero padding
//! ```
//!
//! (little-endian, padded to the file's DMA alignment). A frame that does
//! not check is logged and skipped: the next older snapshot, or the log
//! itself, rebuilds the state.

use crate::error::{Result, StorageError};
use crate::log::Log;
use crate::producers::{ProducerBatch, ProducerTable};
use crate::recovery;
use fjord_core::batch;
use glommio::io::DmaFile;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 4] = *b"FJPS";
const HEADER_BYTES: usize = 20;
/// Snapshots kept per partition: the newest, and one older in case the
/// newest is found damaged.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Largest snapshot read back: a hostile or damaged length never drives an
/// allocation past it (a million producers fit).
const BYTES_MAX: usize = 256 << 20;
/// Bytes read per step when the log is scanned.
const SCAN_BYTES: usize = 1 << 20;

/// The snapshot file of `offset` in `dir`.
pub fn path_of(dir: &Path, offset: u64) -> PathBuf {
    dir.join(format!("{offset:020}.snapshot"))
}

fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".snapshot")?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

fn crc_of(offset: u64, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(&(bytes.len() as u32).to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

/// The snapshot files in `dir`, by offset, ascending.
async fn list(dir: &Path) -> Result<Vec<u64>> {
    let mut offsets: Vec<u64> = recovery::list_dir(dir)
        .await?
        .iter()
        .filter_map(|n| parse_name(n))
        .collect();
    offsets.sort_unstable();
    Ok(offsets)
}

/// Writes the state of everything below `offset` as a snapshot, then
/// deletes all but the newest [`SNAPSHOTS_KEPT`].
pub async fn write(dir: &Path, offset: u64, table: &ProducerTable) -> Result<()> {
    let bytes = table.encode();
    assert!(
        bytes.len() <= BYTES_MAX,
        "producer state of {} bytes",
        bytes.len()
    );
    let path = path_of(dir, offset);
    let tmp = path.with_extension("snapshot.tmp");
    let _pending = crate::io_stats::pending("snapshot", std::rc::Rc::from(&*path));
    let file = DmaFile::create(&tmp)
        .await
        .map_err(StorageError::io("create", &tmp))?;
    let len = HEADER_BYTES + bytes.len();
    let padded = file.align_up(len as u64) as usize;
    let mut buf = file.alloc_dma_buffer(padded);
    let out = buf.as_bytes_mut();
    out.fill(0);
    out[..4].copy_from_slice(&MAGIC);
    out[4..12].copy_from_slice(&offset.to_le_bytes());
    out[12..16].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    out[16..20].copy_from_slice(&crc_of(offset, &bytes).to_le_bytes());
    out[HEADER_BYTES..len].copy_from_slice(&bytes);
    let written = file.write_at(buf, 0).await;
    let synced = match written {
        Ok(n) if n == padded => file
            .fdatasync()
            .await
            .map_err(StorageError::io("sync", &tmp)),
        Ok(n) => Err(StorageError::Failed(format!(
            "short snapshot write to {}: {n} of {padded}",
            tmp.display()
        ))),
        Err(e) => Err(StorageError::io("write", &tmp)(e)),
    };
    let closed = file.close().await.map_err(StorageError::io("close", &tmp));
    synced?;
    closed?;
    glommio::io::rename(&tmp, &path)
        .await
        .map_err(StorageError::io("rename", &path))?;
    crate::checkpoint::sync_dir(dir).await?;
    let offsets = list(dir).await?;
    let old = offsets.len().saturating_sub(SNAPSHOTS_KEPT);
    for &stale in &offsets[..old] {
        remove(&path_of(dir, stale)).await?;
    }
    Ok(())
}

async fn remove(path: &Path) -> Result<()> {
    match glommio::io::remove(path).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = StorageError::io("remove", path)(e);
            match &e {
                StorageError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(())
                }
                _ => Err(e),
            }
        }
    }
}

/// The table in snapshot `path`, or why it cannot be trusted.
async fn read(path: &Path, offset: u64) -> Result<Result<ProducerTable, String>> {
    let file = DmaFile::open(path)
        .await
        .map_err(StorageError::io("open", path))?;
    let size = file
        .file_size()
        .await
        .map_err(StorageError::io("stat", path));
    let content = match size {
        Ok(size) if size as usize > BYTES_MAX + HEADER_BYTES + 4096 => {
            Ok(Err(format!("{size} bytes")))
        }
        Ok(size) => file
            .read_at_aligned(0, size as usize)
            .await
            .map_err(StorageError::io("read", path))
            .map(|read| decode(&read, offset)),
        Err(e) => Err(e),
    };
    let _ = file.close().await;
    content
}

/// The table a snapshot frame holds, checked against the offset its name
/// gives.
fn decode(file: &[u8], offset: u64) -> Result<ProducerTable, String> {
    let header = file.get(..HEADER_BYTES).ok_or("shorter than a header")?;
    if header[..4] != MAGIC {
        return Err("bad magic".into());
    }
    let stored = u64::from_le_bytes(header[4..12].try_into().map_err(|_| "header")?);
    let len = u32::from_le_bytes(header[12..16].try_into().map_err(|_| "header")?) as usize;
    let crc = u32::from_le_bytes(header[16..20].try_into().map_err(|_| "header")?);
    if stored != offset {
        return Err(format!("holds offset {stored}"));
    }
    let bytes = file
        .get(HEADER_BYTES..HEADER_BYTES + len)
        .ok_or("truncated")?;
    if crc_of(stored, bytes) != crc {
        return Err("CRC mismatch".into());
    }
    ProducerTable::decode(bytes)
}

/// The producer state of `log`: its newest usable snapshot, then every
/// batch from there to the log's end; and that snapshot's offset (0 for
/// none). Snapshots past the end are deleted. A `replicated` log may be
/// cut back as far as what its snapshot covers (that was committed), so
/// the table keeps every batch past it.
pub async fn load(log: &Log, replicated: bool) -> Result<(ProducerTable, u64)> {
    let dir = log.dir();
    let end = log.offset_next();
    let mut from_snapshot = None;
    for offset in list(dir).await?.into_iter().rev() {
        let path = path_of(dir, offset);
        if offset > end {
            remove(&path).await?;
            continue;
        }
        match read(&path, offset).await? {
            Ok(table) => {
                from_snapshot = Some((offset, table));
                break;
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), reason, "producer snapshot skipped");
                remove(&path).await?;
            }
        }
    }
    let (from, mut table) = from_snapshot.unwrap_or_default();
    let committed = if replicated { from } else { u64::MAX };
    scan(
        log,
        from.max(log.offset_start()),
        end,
        &mut table,
        committed,
    )
    .await?;
    Ok((table, from))
}

/// Applies the producer batches of `log` in `[from, end)` to `table`; no
/// cut will come below `committed` ([`ProducerTable::apply`]).
pub async fn scan(
    log: &Log,
    from: u64,
    end: u64,
    table: &mut ProducerTable,
    committed: u64,
) -> Result<()> {
    let mut offset = from;
    while offset < end {
        let read = log.read(offset, SCAN_BYTES).await?;
        let mut next = offset;
        for slice in &read.slices {
            for b in batch::batches(slice) {
                let (base, last) = (b.base_offset() as u64, b.last_offset() as u64);
                if last < offset || base >= end {
                    continue;
                }
                if let Some(p) = ProducerBatch::of(&b) {
                    table.apply(&p, base, last, committed);
                }
                next = next.max(last + 1);
            }
        }
        if next == offset {
            break; // Nothing readable past here (a log being written).
        }
        offset = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        let path = path_of(Path::new("/d"), 42);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_name(name), Some(42));
        assert_eq!(parse_name("00000000000000000042.snapshot.tmp"), None);
        assert_eq!(parse_name("42.snapshot"), None);
    }

    #[test]
    fn a_damaged_frame_is_refused() {
        let table = ProducerTable::new();
        let bytes = table.encode();
        let mut file = Vec::new();
        file.extend_from_slice(&MAGIC);
        file.extend_from_slice(&7u64.to_le_bytes());
        file.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc_of(7, &bytes).to_le_bytes());
        file.extend_from_slice(&bytes);
        file.resize(4096, 0);
        assert_eq!(decode(&file, 7), Ok(table));
        assert!(decode(&file, 8).is_err());
        file[HEADER_BYTES] ^= 1;
        assert!(decode(&file, 7).is_err());
    }
}
