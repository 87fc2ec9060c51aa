//! What every shard does before it touches a log: build its executor within
//! the machine's locked-memory limit, and prime its disk access.

use crate::error::{Result, StorageError};
use glommio::{LocalExecutorBuilder, Placement};
use std::path::{Path, PathBuf};

/// DMA memory of an executor that writes little (helpers, tests): a pool
/// this small glommio registers with its rings, as locked memory, within
/// an 8 MiB `ulimit -l`. Buffers beyond the pool come from the heap.
pub const IO_MEMORY_BYTES: usize = 1 << 20;

/// Reads, index and snapshot writes beside the logs' write buffers.
const DMA_MEMORY_SLACK: usize = 32 << 20;

/// The DMA memory a shard's logs work in: the written buffers its batch
/// cache keeps (`cache_bytes`), the buffers being filled and written
/// (`staged_bytes`), and room for reads. glommio (vendored) maps a pool
/// this large on huge pages, faulted in as it is used: a direct-I/O write
/// from it spans a few physically contiguous pieces instead of one per
/// 4 KiB page, which the disk here takes 30–40 % faster (BENCHMARKS.md,
/// "Huge pages under the log's buffers"). Buffers beyond the pool come
/// from the heap, on small pages.
pub fn dma_memory_bytes(cache_bytes: usize, staged_bytes: usize) -> usize {
    cache_bytes + staged_bytes + DMA_MEMORY_SLACK
}

const MARKER_FILE: &str = "fjord.data";
const MARKER_CONTENT: &[u8] = b"fjord data directory v1\n";

/// An executor builder with Fjord's ring settings and `dma_memory` bytes
/// of DMA memory ([`IO_MEMORY_BYTES`], or [`dma_memory_bytes`] for a shard
/// that serves logs).
pub fn executor(name: &str, placement: Placement, dma_memory: usize) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(dma_memory)
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

/// Runs `test` on an executor of its own, over a data directory primed for
/// it (this crate's unit tests; the integration tests have their own).
#[cfg(test)]
pub(crate) fn run_test<F, Fut>(dir: &DataDir, test: F)
where
    F: FnOnce(DataDir) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let dir = dir.clone();
    executor("test", Placement::Unbound, IO_MEMORY_BYTES)
        .spawn(move || async move {
            dir.prime().await.expect("prime");
            test(dir).await;
        })
        .expect("spawn")
        .join()
        .expect("test panicked");
}
