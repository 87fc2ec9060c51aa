//! What every shard does before it touches a log: build its executor within
//! the machine's locked-memory limit, and prime its disk access.

use crate::error::{Result, StorageError};
use glommio::{LocalExecutorBuilder, Placement};
use std::path::{Path, PathBuf};

/// glommio registers this much memory with each ring for DMA buffers; it is
/// locked memory, and `ulimit -l` is often only 8 MiB. Buffers beyond it come
/// from the heap, so a small pool costs little.
pub const IO_MEMORY_BYTES: usize = 1 << 20;

const MARKER_FILE: &str = "fjord.data";
const MARKER_CONTENT: &[u8] = b"fjord data directory v1\n";

/// An executor builder with Fjord's ring settings.
pub fn executor(name: &str, placement: Placement) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(IO_MEMORY_BYTES)
}

/// A data directory: the root under which partition logs live.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// Creates the directory and its marker file if missing. Blocking: call
    /// it before the shards start, never on an executor thread.
    pub fn create(path: impl Into<PathBuf>) -> std::io::Result<DataDir> {
        let path = path.into();
        std::fs::create_dir_all(&path)?;
        let marker = path.join(MARKER_FILE);
        if std::fs::metadata(&marker).map(|m| m.len()).unwrap_or(0) == 0 {
            std::fs::write(&marker, MARKER_CONTENT)?;
        }
        Ok(DataDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens and reads the non-empty marker file through this shard's ring.
    /// Must be the first file a shard opens: glommio 0.9 probes a disk's
    /// iopoll support with the first file's first block, and an empty file
    /// makes the probe succeed wrongly, after which reads fail with EOPNOTSUPP.
    pub async fn prime(&self) -> Result<()> {
        let marker = self.path.join(MARKER_FILE);
        let file = glommio::io::DmaFile::open(&marker)
            .await
            .map_err(StorageError::io("open", &marker))?;
        let read = file
            .read_at(0, MARKER_CONTENT.len())
            .await
            .map_err(StorageError::io("read", &marker))?;
        file.close()
            .await
            .map_err(StorageError::io("close", &marker))?;
        if &read[..] != MARKER_CONTENT {
            return Err(StorageError::Corrupt {
                path: marker,
                position: 0,
                reason: "not a Fjord data directory marker".into(),
            });
        }
        Ok(())
    }
}
