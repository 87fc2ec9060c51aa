//! Every replica's Raft hard state (term and vote) on this node, in one log
//! kept by shard 0 (`raft/hard-state`, an ordinary Fjord log with
//! `fsync=always`, a record per change: key = group id, value = term and
//! vote).
//!
//! One file per replica, replaced and synced on every change, cost a
//! create, a write, an fdatasync, a rename and a directory sync per vote:
//! ten thousand partitions electing at once kept the disk busy for minutes
//! and the elections never settled. Here the log's group commit turns every
//! change of a round into one write and one fdatasync. Other shards send
//! theirs over the mesh (elections are rare; a hop there costs nothing that
//! matters), and a node restarted with another number of cores still finds
//! every group's state.
//!
//! At open the log is replayed into a map, the last record of a group
//! winning. A log that ran out of room (a full disk; an fdatasync there can
//! fail for want of room too) is opened again at the next change, as a
//! partition's is: without it no replica on the node could take part in a
//! new term until a restart, however much room was freed. It only grows by a record per election and vote; rewriting it
//! without superseded records is left for when it matters.

use fjord_core::BatchBuilder;
use fjord_core::FsyncPolicy;
use fjord_core::batch;
use fjord_replication::raft::HardState;
use fjord_replication::raft::mux::GroupId;
use fjord_storage::{BatchCache, Log, LogConfig, StorageError};
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

/// Bytes read per replay step.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// A record's value: term, a vote flag, the vote.
const VALUE_LEN: usize = 13;

/// The node's hard states.
pub struct HardStates {
    log: RefCell<Rc<Log>>,
    /// One reopening at a time.
    reopen_turn: Semaphore,
    states: RefCell<HashMap<GroupId, HardState>>,
}

impl HardStates {
    /// Opens (or creates) the log under `data/raft` and replays it.
    pub async fn open(data: &Path, cache: Rc<BatchCache>) -> Result<HardStates, StorageError> {
        let config = LogConfig {
            fsync: FsyncPolicy::Always,
            // Records are small: grow the file in small steps.
            preallocate_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let log = Log::open(data.join("raft").join("hard-state"), config, cache).await?;
        let mut states = HashMap::new();
        let mut offset = log.offset_start();
        while offset < log.offset_written() {
            let read = log.read(offset, REPLAY_READ_BYTES).await?;
            for slice in &read.slices {
                for batch in batch::batches(slice) {
                    for record in batch.records().map_err(StorageError::from)? {
                        let record = record.map_err(StorageError::from)?;
                        let (group, state) = decode(record.key, record.value).ok_or_else(|| {
                            StorageError::Failed(format!(
                                "hard-state record at offset {} is malformed",
                                record.offset
                            ))
                        })?;
                        states.insert(group, state);
                    }
                }
            }
            assert!(read.offset_next > offset, "replay makes progress");
            offset = read.offset_next;
        }
        tracing::info!(
            shard = 0,
            groups = states.len(),
            "raft hard states restored"
        );
        Ok(HardStates {
            log: RefCell::new(Rc::new(log)),
            reopen_turn: Semaphore::new(1),
            states: RefCell::new(states),
        })
    }

    /// A group's hard state (the default, term 0 and no vote, if none).
    pub fn get(&self, group: GroupId) -> HardState {
        self.states
            .borrow()
            .get(&group)
            .copied()
            .unwrap_or_default()
    }

    /// Records a group's hard state durably (synced) before returning.
    pub async fn persist(&self, group: GroupId, state: HardState) -> Result<(), StorageError> {
        let mut builder = BatchBuilder::new();
        let (key, value) = encode(group, state);
        builder.push(fjord_storage::log::now_ms(), Some(&key), Some(&value), &[]);
        let log = self.writable_log().await?;
        log.append(&builder.build()).await?.durable.await?;
        self.states.borrow_mut().insert(group, state);
        Ok(())
    }

    /// The log, opened again first if it ran out of room.
    async fn writable_log(&self) -> Result<Rc<Log>, StorageError> {
        let log = self.log.borrow().clone();
        if !log.is_out_of_room() {
            return Ok(log);
        }
        let _turn = self
            .reopen_turn
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        let current = self.log.borrow().clone();
        if !Rc::ptr_eq(&current, &log) {
            return Ok(current); // Another change reopened it meanwhile.
        }
        let reopened = Rc::new(log.reopen().await?);
        tracing::info!(
            shard = 0,
            offset_next = reopened.offset_next(),
            "raft hard-state log reopened after running out of room"
        );
        *self.log.borrow_mut() = reopened.clone();
        Ok(reopened)
    }

    /// Closes the log.
    pub async fn close(&self) -> Result<(), StorageError> {
        let log = self.log.borrow().clone();
        log.close().await
    }
}

fn encode(group: GroupId, state: HardState) -> ([u8; 8], [u8; VALUE_LEN]) {
    let mut value = [0u8; VALUE_LEN];
    value[..8].copy_from_slice(&state.term.to_be_bytes());
    if let Some(vote) = state.vote {
        value[8] = 1;
        value[9..].copy_from_slice(&vote.to_be_bytes());
    }
    (group.to_be_bytes(), value)
}

fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Option<(GroupId, HardState)> {
    let group = GroupId::from_be_bytes(key?.try_into().ok()?);
    let value: [u8; VALUE_LEN] = value?.try_into().ok()?;
    let term = u64::from_be_bytes(value[..8].try_into().ok()?);
    let vote = u32::from_be_bytes(value[9..].try_into().ok()?);
    let vote = match value[8] {
        0 => None,
        1 => Some(vote),
        _ => return None,
    };
    Some((group, HardState { term, vote }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        for state in [
            HardState::default(),
            HardState {
                term: 7,
                vote: Some(3),
            },
        ] {
            let (key, value) = encode(42, state);
            assert_eq!(decode(Some(&key), Some(&value)), Some((42, state)));
        }
        let (key, mut value) = encode(1, HardState::default());
        value[8] = 2;
        assert_eq!(decode(Some(&key), Some(&value)), None);
        assert_eq!(decode(Some(&key[..7]), Some(&value)), None);
        assert_eq!(decode(None, Some(&value)), None);
    }
}
