//! A replicated partition's membership as its log and its directory keep it.
//!
//! - In the log, a membership entry is a control batch of one record (the
//!   role KRaft's VotersRecord plays; Kafka clients skip control batches):
//!   key = version 0 and type [`MEMBERSHIP_TYPE`], value = the voters and
//!   the learners, each a u16 count and u32 ids (big-endian).
//! - Beside the log, `raft-configs` lists every membership entry the log
//!   holds, `(offset, membership)`, written (atomically, synced) *before*
//!   such an entry is appended and before a truncation removes one, so that
//!   a restarted replica starts from the membership its log ends with
//!   without reading the log: it keeps those entries below the log's end.

use fjord_core::BatchBuilder;
use fjord_core::batch::Batch;
use fjord_replication::raft::{EntryKind, Membership, NodeId, Offset};
use fjord_storage::{StorageError, checkpoint};
use std::path::{Path, PathBuf};

/// Kafka's control record type for a new leader (KIP-595's LEADER_CHANGE):
/// the batch a new leader appends so that earlier terms commit.
const LEADER_CHANGE_TYPE: i16 = 2;
/// The control record type of a membership entry (KRaft's voters record).
const MEMBERSHIP_TYPE: i16 = 6;
/// Most replicas a membership lists: a bound on what a damaged record makes
/// a decoder allocate.
const MEMBERS_MAX: usize = 1024;

/// The membership entries of one replica's log.
pub type Configs = Vec<(Offset, Membership)>;

/// The control batch a new leader appends (Kafka clients skip it).
pub fn leader_change_batch() -> Vec<u8> {
    control_batch(LEADER_CHANGE_TYPE, &[])
}

/// The control batch of a membership entry.
pub fn membership_batch(membership: &Membership) -> Vec<u8> {
    let mut value = Vec::new();
    for ids in [&membership.voters, &membership.learners] {
        value.extend_from_slice(&(ids.len() as u16).to_be_bytes());
        for id in ids {
            value.extend_from_slice(&id.to_be_bytes());
        }
    }
    control_batch(MEMBERSHIP_TYPE, &value)
}

fn control_batch(kind: i16, value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut builder = BatchBuilder::new().control(true);
    builder.push(fjord_storage::log::now_ms(), Some(&key), Some(value), &[]);
    builder.build()
}

/// What a batch read from a log is to Raft: data, a new leader's mark, or
/// a membership entry. A control batch that does not read as a membership
/// is a mark (it carries nothing Raft acts on).
pub fn entry_kind(batch: &Batch<'_>) -> EntryKind {
    if !batch.is_control() {
        return EntryKind::Data;
    }
    let record = batch
        .records()
        .ok()
        .and_then(|mut records| records.next())
        .and_then(Result::ok);
    let Some(record) = record else {
        return EntryKind::LeaderMark;
    };
    let kind = record
        .key
        .and_then(|k| k.get(2..4))
        .map(|t| i16::from_be_bytes([t[0], t[1]]));
    match (kind, record.value.map(decode)) {
        (Some(MEMBERSHIP_TYPE), Some(Some(membership))) => EntryKind::Config(membership),
        _ => EntryKind::LeaderMark,
    }
}

/// A membership from a record value; `None` if it is not one.
fn decode(mut bytes: &[u8]) -> Option<Membership> {
    let mut list = || -> Option<Vec<NodeId>> {
        let count = usize::from(u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?));
        if count > MEMBERS_MAX {
            return None;
        }
        bytes = &bytes[2..];
        let ids = bytes.get(..count * 4)?;
        bytes = &bytes[count * 4..];
        let mut ids: Vec<NodeId> = ids
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Some(ids)
    };
    let voters = list()?;
    let learners = list()?;
    let disjoint = learners.iter().all(|l| voters.binary_search(l).is_err());
    (bytes.is_empty() && !voters.is_empty() && disjoint).then_some(Membership { voters, learners })
}

/// Where a replica keeps its membership entries.
pub fn configs_path(dir: &Path) -> PathBuf {
    dir.join("raft-configs")
}

/// Replaces the replica's list of membership entries, durably.
pub async fn write_configs(dir: &Path, configs: &Configs) -> Result<(), StorageError> {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(configs)
        .map_err(|e| StorageError::Failed(format!("membership entries: {e}")))?;
    checkpoint::write(&configs_path(dir), &bytes)
        .await
        .map_err(|e| StorageError::Failed(format!("{}: {e}", configs_path(dir).display())))
}

/// The replica's membership entries below `end` (none if it never had one).
/// Entries listed at or past `end` (ahead of an append that never reached
/// the log, or behind a truncation a kill cut short) are dropped from the
/// file too, before the group starts: left there, they would be read back
/// as membership once other entries fill those offsets.
pub async fn read_configs(dir: &Path, end: Offset) -> Result<Configs, StorageError> {
    let Some(bytes) = checkpoint::read(&configs_path(dir)).await? else {
        return Ok(Vec::new());
    };
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(&bytes);
    let mut configs = rkyv::from_bytes::<Configs, rkyv::rancor::Error>(&aligned)
        .map_err(|e| StorageError::Failed(format!("{}: {e}", configs_path(dir).display())))?;
    let listed = configs.len();
    configs.retain(|&(offset, _)| offset < end);
    if configs.len() != listed {
        write_configs(dir, &configs).await?;
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_batches_read_back_and_other_control_batches_are_marks() {
        let membership = Membership {
            voters: vec![1, 2, 4],
            learners: vec![3],
        };
        let bytes = membership_batch(&membership);
        let batch = Batch::validate(&bytes).expect("valid batch");
        assert_eq!(entry_kind(&batch), EntryKind::Config(membership));
        let mark = leader_change_batch();
        assert_eq!(
            entry_kind(&Batch::validate(&mark).expect("valid batch")),
            EntryKind::LeaderMark
        );
    }

    /// An entry listed past the log's end (its append never landed, or a
    /// kill cut a truncation short) leaves the file at the next opening:
    /// kept, it would be read back as membership once a data batch fills
    /// its offset and the log grows past it.
    #[test]
    fn entries_listed_past_the_end_leave_the_file_at_opening() {
        let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir");
        let data = fjord_storage::DataDir::create(tmp.path().join("data")).expect("data dir");
        fjord_storage::shard::executor(
            "configs-test",
            glommio::Placement::Unbound,
            fjord_storage::shard::IO_MEMORY_BYTES,
        )
        .spawn(move || async move {
            data.prime().await.expect("prime");
            let dir = data.path().to_path_buf();
            let first = (5, Membership::of_voters(&[1, 2, 3]));
            let ahead = (100, Membership::of_voters(&[1, 2, 3, 4]));
            write_configs(&dir, &vec![first.clone(), ahead])
                .await
                .expect("write");
            let opened = read_configs(&dir, 100).await.expect("read");
            assert_eq!(opened, vec![first.clone()]);
            // The log has grown past 100 since, with data there.
            let later = read_configs(&dir, 110).await.expect("read again");
            assert_eq!(later, vec![first], "an entry past the end came back");
        })
        .expect("spawn")
        .join()
        .expect("join");
    }

    #[test]
    fn damaged_memberships_are_refused() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0, 0, 0, 0]), None, "no voters");
        assert_eq!(decode(&[0, 1, 0, 0, 0, 1]), None, "no learner list");
        assert_eq!(decode(&[0, 9, 0, 0, 0, 1, 0, 0]), None, "short");
        assert_eq!(
            decode(&[0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1]),
            None,
            "a voter that learns"
        );
        assert_eq!(
            decode(&[0, 1, 0, 0, 0, 1, 0, 0]),
            Some(Membership::of_voters(&[1]))
        );
    }
}
