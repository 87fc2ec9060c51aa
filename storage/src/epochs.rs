//! The leader-epoch cache of a log (Kafka's `leader-epoch-checkpoint`): for
//! each leader epoch in the log, the first offset written under it. Raft
//! reads a batch's term from it without touching the disk.
//!
//! Kept in memory and in the log directory's `leader-epochs` file (a
//! [`crate::checkpoint`]). The file is written *before* the first batch of
//! a new epoch is staged, so it is never behind the data: it may be ahead
//! (an entry whose batch never made it), and opening the log drops entries
//! at or after the recovered end.

use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::segment::{self, SegmentReader, Visit};
use std::path::{Path, PathBuf};

/// The cache file in a log directory.
pub const FILE_NAME: &str = "leader-epochs";
const VERSION: u32 = 1;
const ENTRY_BYTES: usize = 12;
/// Entries the file may hold: far more epochs than a partition sees.
pub const ENTRIES_MAX: usize = (crate::checkpoint::BYTES_MAX - 8) / ENTRY_BYTES;

/// The path of the cache file of the log in `dir`.
pub fn file_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// `(epoch, first offset)` pairs, both strictly ascending.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(i32, u64)>,
}

/// What an append under `epoch` at an offset means for the cache.
#[derive(Debug, PartialEq, Eq)]
pub enum EpochCheck {
    /// The epoch of the last entry: nothing to record.
    Same,
    /// A new, higher epoch: an entry to persist before the batch is staged.
    New,
    /// Lower than the last entry's epoch (the epoch given).
    Regression(i32),
}

impl EpochCache {
    /// The entries, ascending.
    pub fn entries(&self) -> &[(i32, u64)] {
        &self.entries
    }

    /// The last entry's epoch.
    pub fn last_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// Whether a batch of `epoch` may follow the log's batches.
    pub fn check(&self, epoch: i32) -> EpochCheck {
        if epoch < 0 {
            // Kafka's "no epoch" (-1, batches from before epochs): not
            // tracked, never a regression, as Kafka's epoch cache does.
            return EpochCheck::Same;
        }
        match self.last_epoch() {
            Some(last) if epoch < last => EpochCheck::Regression(last),
            Some(last) if epoch == last => EpochCheck::Same,
            _ => EpochCheck::New,
        }
    }

    /// Records that `offset` starts `epoch`, above every entry.
    pub fn push(&mut self, epoch: i32, offset: u64) {
        if let Some(&(last_epoch, last_offset)) = self.entries.last() {
            assert!(
                epoch > last_epoch && offset >= last_offset,
                "epoch entry ({epoch}, {offset}) after ({last_epoch}, {last_offset})"
            );
            if offset == last_offset {
                // The previous epoch owns no batch: it was never written.
                self.entries.pop();
            }
        }
        self.entries.push((epoch, offset));
    }

    /// The cache with `(epoch, offset)` pushed, for writing ahead of the batch.
    pub fn with(&self, epoch: i32, offset: u64) -> EpochCache {
        let mut next = self.clone();
        next.push(epoch, offset);
        next
    }

    /// Drops entries at or after `end` (the log was cut there). True if
    /// anything changed.
    pub fn truncate_end(&mut self, end: u64) -> bool {
        let kept = self.entries.partition_point(|e| e.1 < end);
        let changed = kept < self.entries.len();
        self.entries.truncate(kept);
        changed
    }

    /// Drops entries wholly before `start` and moves the first kept one to
    /// it (retention moved the log start), Kafka-style. True if anything
    /// changed.
    pub fn truncate_start(&mut self, start: u64) -> bool {
        let before = self.entries.clone();
        let first = self.entries.partition_point(|e| e.1 <= start);
        // The entry covering `start` is the last one at or before it.
        let drop = first.saturating_sub(1);
        self.entries.drain(..drop);
        if let Some(first) = self.entries.first_mut() {
            first.1 = first.1.max(start);
        }
        before != self.entries
    }

    /// The file content: version, count, then `epoch i32 | offset u64`
    /// (little-endian).
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.entries.len() <= ENTRIES_MAX, "epoch cache overflow");
        let mut out = Vec::with_capacity(8 + self.entries.len() * ENTRY_BYTES);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (epoch, offset) in &self.entries {
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out
    }

    /// Parses [`EpochCache::encode`]'s output; refuses anything else,
    /// including entries out of order.
    pub fn decode(bytes: &[u8]) -> Result<EpochCache, String> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        let version = u32_at(0).ok_or("too short")?;
        if version != VERSION {
            return Err(format!("version {version}, this build reads {VERSION}"));
        }
        let count = u32_at(4).ok_or("too short")? as usize;
        if count > ENTRIES_MAX || bytes.len() != 8 + count * ENTRY_BYTES {
            return Err(format!("{count} entries in {} bytes", bytes.len()));
        }
        let mut cache = EpochCache::default();
        for raw in bytes[8..].chunks_exact(ENTRY_BYTES) {
            let epoch = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let mut offset = [0u8; 8];
            offset.copy_from_slice(&raw[4..]);
            let offset = u64::from_le_bytes(offset);
            if let Some(&(last_epoch, last_offset)) = cache.entries.last()
                && (epoch <= last_epoch || offset <= last_offset)
            {
                return Err(format!(
                    "entry ({epoch}, {offset}) after ({last_epoch}, {last_offset})"
                ));
            }
            cache.entries.push((epoch, offset));
        }
        Ok(cache)
    }
}

/// Writes `cache` to the log directory `dir`'s file, atomically.
pub async fn persist(dir: &Path, cache: &EpochCache) -> Result<()> {
    let path = file_path(dir);
    checkpoint::write(&path, &cache.encode())
        .await
        .map_err(|source| StorageError::Io {
            op: "write",
            path,
            source,
        })
}

/// The cache of the log in `dir`, whose segments are `segments` (oldest
/// first) holding `[offset_start, offset_next)`: from the file, with the
/// entries the data does not reach dropped, or rebuilt from the batches when
/// the file is missing or damaged. Writes the file when that changed it.
pub async fn load(
    dir: &Path,
    segments: &[SegmentReader],
    offset_start: u64,
    offset_next: u64,
) -> Result<EpochCache> {
    let path = file_path(dir);
    // `Err(reason)`: rebuild, and why.
    let loaded: Result<EpochCache, String> = match checkpoint::read(&path).await {
        Ok(Some(bytes)) => EpochCache::decode(&bytes),
        Ok(None) => Err("no file".into()),
        Err(StorageError::Corrupt { reason, .. }) => Err(reason),
        Err(e) => return Err(e),
    };
    let (mut cache, mut changed) = match loaded {
        Ok(cache) => (cache, false),
        Err(reason) => {
            let cache = rebuild(segments).await?;
            if offset_next > offset_start {
                tracing::info!(
                    dir = %dir.display(),
                    epochs = cache.entries.len(),
                    "leader-epoch cache rebuilt from the log: {reason}"
                );
            }
            // A log with no batches and no file needs no file.
            let was_file = reason != "no file";
            (cache.clone(), was_file || !cache.entries.is_empty())
        }
    };
    changed |= cache.truncate_end(offset_next);
    changed |= cache.truncate_start(offset_start);
    if changed {
        persist(dir, &cache).await?;
    }
    Ok(cache)
}

/// The cache as the batches of the log say. Reads the whole log once: a
/// cost paid only by logs made before the cache existed or whose file was
/// damaged; a partition's log is read at disk speed, once per such start.
async fn rebuild(segments: &[SegmentReader]) -> Result<EpochCache> {
    let mut cache = EpochCache::default();
    let mut regressions = 0u64;
    for reader in segments {
        segment::walk(reader, 0, 1 << 20, |_, batch, _, _| {
            let epoch = batch.partition_leader_epoch();
            match cache.check(epoch) {
                EpochCheck::New => cache.push(epoch, batch.base_offset() as u64),
                EpochCheck::Same => {}
                // Batches written before epochs were checked: the higher
                // epoch stands.
                EpochCheck::Regression(_) => regressions += 1,
            }
            Visit::Next
        })
        .await?
        .valid(reader)?;
    }
    if regressions > 0 {
        tracing::warn!(
            regressions,
            "batches with a leader epoch below an earlier one's: kept under the higher"
        );
    }
    Ok(cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_rise_cut_and_collapse() {
        let mut cache = EpochCache::default();
        assert_eq!(cache.check(0), EpochCheck::New);
        cache.push(1, 0);
        assert_eq!(cache.check(1), EpochCheck::Same);
        assert_eq!(cache.check(0), EpochCheck::Regression(1));
        assert_eq!(cache.check(-1), EpochCheck::Same, "no epoch: not tracked");
        cache.push(3, 10);
        cache.push(4, 20);
        // An epoch that never got a batch is replaced.
        cache.push(6, 20);
        assert_eq!(cache.entries(), [(1, 0), (3, 10), (6, 20)]);
        assert_eq!(EpochCache::decode(&cache.encode()), Ok(cache.clone()));

        let mut cut = cache.clone();
        assert!(cut.truncate_end(20));
        assert_eq!(cut.entries(), [(1, 0), (3, 10)]);
        assert!(!cut.truncate_end(25));

        let mut trimmed = cache.clone();
        assert!(trimmed.truncate_start(12));
        assert_eq!(trimmed.entries(), [(3, 12), (6, 20)]);
        assert!(trimmed.truncate_start(20));
        assert_eq!(trimmed.entries(), [(6, 20)]);
        assert!(!trimmed.truncate_start(20));
    }

    #[test]
    fn decode_refuses_disorder_and_bad_lengths() {
        let mut bytes = EpochCache {
            entries: vec![(1, 0), (2, 5)],
        }
        .encode();
        assert!(EpochCache::decode(&bytes[..bytes.len() - 1]).is_err());
        bytes[8 + ENTRY_BYTES..8 + ENTRY_BYTES + 4].copy_from_slice(&1i32.to_le_bytes());
        assert!(EpochCache::decode(&bytes).is_err());
    }
}
