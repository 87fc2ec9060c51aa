//! The cleaner's state of a log, kept in `cleaner.checkpoint` beside its
//! segments (written whole and atomically by [`crate::checkpoint`]):
//!
//! * `offset_clean`: the end of the last cleaning. Offsets below it are
//!   clean, and only there may batches be missing (a batch left with no
//!   records is dropped), so recovery and reads accept gaps below it.
//! * `cleaned`: for each segment entirely clean, the wall-clock ms of the
//!   cleaning that made it so. Its tombstones are removed once
//!   `delete.retention.ms` has passed since: a tombstone lives at least that
//!   long after it was first cleaned, whatever a crash or a later rewrite
//!   does (the time is in the file, not in a file's mtime).
//! * `pending`: the segments of a swap under way. Written before the first
//!   rename (the swap's commit point), cleared after the last; recovery
//!   finishes the renames of a swap it finds pending.
//!
//! Body, little-endian: `version u8 = 1 | offset_clean u64 | count u32 |
//! (base u64, cleaned_ms i64)* | count u32 | base u64*`.

use crate::error::{Result, StorageError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "cleaner.checkpoint";
const VERSION: u8 = 1;

/// The cleaner checkpoint of the log in `dir`.
pub fn file_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// What the cleaner knows of a log; see the module doc.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanerState {
    /// Offsets below this are clean.
    pub offset_clean: u64,
    /// Clean segments by base offset: when they became clean (ms).
    pub cleaned: BTreeMap<u64, i64>,
    /// Bases of the segments of a swap under way.
    pub pending: Vec<u64>,
}

impl CleanerState {
    /// The file body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + 16 * self.cleaned.len() + 8 * self.pending.len());
        out.push(VERSION);
        out.extend_from_slice(&self.offset_clean.to_le_bytes());
        out.extend_from_slice(&(self.cleaned.len() as u32).to_le_bytes());
        for (base, ms) in &self.cleaned {
            out.extend_from_slice(&base.to_le_bytes());
            out.extend_from_slice(&ms.to_le_bytes());
        }
        out.extend_from_slice(&(self.pending.len() as u32).to_le_bytes());
        for base in &self.pending {
            out.extend_from_slice(&base.to_le_bytes());
        }
        out
    }

    /// Parses a file body; `Err` says why it is not one.
    pub fn decode(bytes: &[u8]) -> std::result::Result<CleanerState, &'static str> {
        let mut rest = bytes;
        let mut take = |n: usize| -> std::result::Result<&[u8], &'static str> {
            if rest.len() < n {
                return Err("truncated");
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
        if take(1)?[0] != VERSION {
            return Err("unknown version");
        }
        let offset_clean = u64_of(take(8)?);
        let count = u32_of(take(4)?) as usize;
        let mut cleaned = BTreeMap::new();
        for _ in 0..count {
            let base = u64_of(take(8)?);
            let ms = u64_of(take(8)?) as i64;
            cleaned.insert(base, ms);
        }
        let count = u32_of(take(4)?) as usize;
        let mut pending = Vec::new();
        for _ in 0..count {
            pending.push(u64_of(take(8)?));
        }
        if !rest.is_empty() {
            return Err("trailing bytes");
        }
        Ok(CleanerState {
            offset_clean,
            cleaned,
            pending,
        })
    }
}

/// Reads the state of the log in `dir`; a log never cleaned has the default.
/// A damaged file is an error: without `offset_clean` the gaps cleaning left
/// would read as corruption, and recovery would cut good data.
pub async fn read(dir: &Path) -> Result<CleanerState> {
    let path = file_path(dir);
    let Some(bytes) = crate::checkpoint::read(&path).await? else {
        return Ok(CleanerState::default());
    };
    CleanerState::decode(&bytes).map_err(|reason| StorageError::Corrupt {
        path,
        position: 0,
        reason: reason.into(),
    })
}

/// Replaces the state of the log in `dir`, durably (directory synced, so
/// renames made before are durable too).
pub async fn write(dir: &Path, state: &CleanerState) -> Result<()> {
    let path = file_path(dir);
    crate::checkpoint::write(&path, &state.encode())
        .await
        .map_err(|source| StorageError::Io {
            op: "write",
            path,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_damage_is_refused() {
        let state = CleanerState {
            offset_clean: 1234,
            cleaned: [(0, 17), (600, -1)].into_iter().collect(),
            pending: vec![0, 600],
        };
        let bytes = state.encode();
        assert_eq!(CleanerState::decode(&bytes), Ok(state));
        for len in 0..bytes.len() {
            assert!(CleanerState::decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(CleanerState::decode(&longer).is_err());
        let default = CleanerState::default();
        assert_eq!(CleanerState::decode(&default.encode()), Ok(default));
    }
}
