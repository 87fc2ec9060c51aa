//! Producer ids for idempotent producers (Kafka's InitProducerId), handed
//! out by any shard of any node with no round trip per id.
//!
//! An id is `node << 48 | shard << 38 | counter`: the node id (below
//! 2^15) and shard index (below 2^10, the most cores a node runs) make ids of different nodes and
//! shards distinct without asking anyone (Kafka asks its controller for
//! blocks, KIP-730; a node id is already unique in a cluster, so the
//! prefix does that job here). The counter survives restarts: a shard
//! reserves blocks of [`BLOCK`] ids by writing the block's end durably to
//! `<data_dir>/producer-ids-<shard>` (a [`checkpoint`] file, replaced
//! atomically) before it hands out the first id of the block, so a
//! restart starts past every id ever given (skipping at most a block).
//!
//! The promise rests on node ids never being reused with a fresh data
//! directory, as Kafka's broker ids are not.

use fjord_storage::{StorageError, checkpoint};
use glommio::sync::Semaphore;
use std::cell::Cell;
use std::path::PathBuf;

/// Ids reserved per durable write.
pub const BLOCK: u64 = 1000;
const COUNTER_BITS: u32 = 38;
const SHARD_BITS: u32 = 10;
/// Node ids this layout holds: the id stays a positive i64.
pub const NODE_ID_MAX: u32 = (1 << (63 - COUNTER_BITS - SHARD_BITS)) - 1;

/// One shard's producer-id allocator.
pub struct ProducerIds {
    prefix: i64,
    path: PathBuf,
    /// Next counter to hand out; `None` until the file is read.
    next: Cell<Option<u64>>,
    /// Counters below this are reserved on disk.
    reserved: Cell<u64>,
    /// One reservation at a time.
    turn: Semaphore,
}

impl ProducerIds {
    /// The allocator of `shard` on `node`, reserving in `data_dir`.
    pub fn new(data_dir: &std::path::Path, node: u32, shard: usize) -> ProducerIds {
        // Both are validated with the node's settings (`--node-id`, cores).
        assert!(
            node <= NODE_ID_MAX,
            "node id {node} beyond the producer-id layout"
        );
        assert!(
            shard < 1 << SHARD_BITS,
            "shard {shard} beyond the producer-id layout"
        );
        ProducerIds {
            prefix: (i64::from(node) << (COUNTER_BITS + SHARD_BITS))
                | ((shard as i64) << COUNTER_BITS),
            path: data_dir.join(format!("producer-ids-{shard}")),
            next: Cell::new(None),
            reserved: Cell::new(0),
            turn: Semaphore::new(1),
        }
    }

    /// A producer id never handed out before by any shard of any node.
    pub async fn next_id(&self) -> Result<i64, StorageError> {
        let _turn = self
            .turn
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        let next = match self.next.get() {
            Some(next) => next,
            None => {
                let stored = match checkpoint::read(&self.path).await? {
                    Some(bytes) => {
                        u64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| {
                            StorageError::Failed(format!("{}: not a counter", self.path.display()))
                        })?)
                    }
                    None => 0,
                };
                self.reserved.set(stored);
                stored
            }
        };
        if next >= 1 << COUNTER_BITS {
            return Err(StorageError::Failed(
                "producer ids of this shard used up".into(),
            ));
        }
        if next >= self.reserved.get() {
            let reserved = next + BLOCK;
            checkpoint::write(&self.path, &reserved.to_le_bytes())
                .await
                .map_err(|source| StorageError::Io {
                    op: "write",
                    path: self.path.clone(),
                    source,
                })?;
            self.reserved.set(reserved);
        }
        self.next.set(Some(next + 1));
        // Below the reservation: a restart never hands it out again.
        assert!(next < self.reserved.get());
        Ok(self.prefix | next as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_across_shards_nodes_and_restarts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        fjord_storage::shard::executor(
            "ids",
            glommio::Placement::Unbound,
            fjord_storage::shard::IO_MEMORY_BYTES,
        )
        .spawn(move || async move {
            let first = ProducerIds::new(&path, 3, 1);
            let a = first.next_id().await.expect("id");
            let b = first.next_id().await.expect("id");
            assert_eq!(b, a + 1);
            // A restart starts past the reserved block.
            let again = ProducerIds::new(&path, 3, 1);
            let c = again.next_id().await.expect("id");
            assert_eq!(c, a + BLOCK as i64);
            // Other shards and nodes never meet these.
            let shard = ProducerIds::new(&path, 3, 2).next_id().await.expect("id");
            let node = ProducerIds::new(&path, 4, 1).next_id().await.expect("id");
            for other in [shard, node] {
                assert!(other > 0 && ![a, b, c].contains(&other));
            }
            let top = ProducerIds::new(&path, NODE_ID_MAX, 1023);
            assert!(top.next_id().await.expect("id") > 0, "ids stay positive");
        })
        .expect("executor")
        .join()
        .expect("join");
    }
}
