//! The records a coordinator keeps in its `__consumer_offsets` partition,
//! in Kafka's own layout (so Kafka's tools could read the topic): an
//! offset commit is the key `(version 1, group, topic, partition)` and the
//! value `(version 3, offset, leader epoch, metadata, commit timestamp)`; a
//! null value (tombstone) deletes the commit. Strings are an `i16` length
//! and UTF-8 bytes, integers big-endian, as everywhere in Kafka.

/// Key version of an offset commit (Kafka's `OffsetCommitKey` v1).
const KEY_OFFSET_COMMIT: i16 = 1;
/// Key version of Kafka's `GroupMetadataKey`: skipped when read back.
const KEY_GROUP_METADATA: i16 = 2;
/// Value version written (Kafka's `OffsetCommitValue` v3).
const VALUE_VERSION: i16 = 3;

/// A group's commit for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset the group reads.
    pub offset: i64,
    /// Leader epoch of the last record consumed, -1 when unknown.
    pub leader_epoch: i32,
    /// What the committer attached.
    pub metadata: String,
    /// When it was committed, ms since the epoch.
    pub timestamp: i64,
}

/// Which commit a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitKey {
    /// Group id.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

/// A record read back from the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A commit, or its deletion (`None`).
    Offset(CommitKey, Option<Committed>),
    /// A record this coordinator does not keep (Kafka's group metadata).
    Other,
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad __consumer_offsets record: {0}")]
pub struct BadRecord(&'static str);

/// The key of a commit.
pub fn encode_key(key: &CommitKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + key.group.len() + key.topic.len());
    out.extend_from_slice(&KEY_OFFSET_COMMIT.to_be_bytes());
    put_str(&mut out, &key.group);
    put_str(&mut out, &key.topic);
    out.extend_from_slice(&key.partition.to_be_bytes());
    out
}

/// The value of a commit.
pub fn encode_value(committed: &Committed) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + committed.metadata.len());
    out.extend_from_slice(&VALUE_VERSION.to_be_bytes());
    out.extend_from_slice(&committed.offset.to_be_bytes());
    out.extend_from_slice(&committed.leader_epoch.to_be_bytes());
    put_str(&mut out, &committed.metadata);
    out.extend_from_slice(&committed.timestamp.to_be_bytes());
    out
}

/// Reads a record back; values of versions 1 to 3 (Kafka's) are read.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Stored, BadRecord> {
    let mut k = Reader(key);
    match k.i16()? {
        0 | KEY_OFFSET_COMMIT => {}
        KEY_GROUP_METADATA => return Ok(Stored::Other),
        _ => return Err(BadRecord("unknown key version")),
    }
    let key = CommitKey {
        group: k.string()?,
        topic: k.string()?,
        partition: k.i32()?,
    };
    let Some(value) = value else {
        return Ok(Stored::Offset(key, None));
    };
    let mut v = Reader(value);
    let version = v.i16()?;
    if !(1..=VALUE_VERSION).contains(&version) {
        return Err(BadRecord("unknown value version"));
    }
    let offset = v.i64()?;
    let leader_epoch = if version >= 3 { v.i32()? } else { -1 };
    let metadata = v.string()?;
    let timestamp = v.i64()?;
    Ok(Stored::Offset(
        key,
        Some(Committed {
            offset,
            leader_epoch,
            metadata,
            timestamp,
        }),
    ))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Callers bound their strings (group ids, topic names, metadata) well
    // below i16::MAX; see `METADATA_LEN_MAX`.
    let len = i16::try_from(s.len()).expect("string bounded by its caller");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Longest commit metadata kept (Kafka's `offset.metadata.max.bytes`).
pub const METADATA_LEN_MAX: usize = 4096;

/// Longest group id accepted; Kafka bounds it only by its i16 string.
pub const GROUP_ID_LEN_MAX: usize = 1024;

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BadRecord> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(BadRecord("short"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn i16(&mut self) -> Result<i16, BadRecord> {
        self.take().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, BadRecord> {
        self.take().map(i32::from_be_bytes)
    }

    fn i64(&mut self) -> Result<i64, BadRecord> {
        self.take().map(i64::from_be_bytes)
    }

    fn string(&mut self) -> Result<String, BadRecord> {
        let len = usize::try_from(self.i16()?).map_err(|_| BadRecord("null string"))?;
        let bytes = self.0.get(..len).ok_or(BadRecord("string past end"))?;
        self.0 = &self.0[len..];
        String::from_utf8(bytes.to_vec()).map_err(|_| BadRecord("string not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CommitKey {
        CommitKey {
            group: "g".into(),
            topic: "orders".into(),
            partition: 7,
        }
    }

    #[test]
    fn a_commit_reads_back() {
        let committed = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            timestamp: 1_700_000_000_000,
        };
        let stored = decode(&encode_key(&key()), Some(&encode_value(&committed))).unwrap();
        assert_eq!(stored, Stored::Offset(key(), Some(committed)));
        assert_eq!(
            decode(&encode_key(&key()), None).unwrap(),
            Stored::Offset(key(), None)
        );
    }

    #[test]
    fn kafkas_layout_byte_for_byte() {
        // OffsetCommitKey v1: version, group, topic, partition.
        assert_eq!(
            encode_key(&key()),
            b"\x00\x01\x00\x01g\x00\x06orders\x00\x00\x00\x07".to_vec()
        );
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let value = encode_value(&Committed {
            offset: 1,
            leader_epoch: -1,
            metadata: String::new(),
            timestamp: 0,
        });
        let key = encode_key(&key());
        for cut in 0..key.len() {
            assert!(decode(&key[..cut], Some(&value)).is_err(), "{cut}");
        }
        for cut in 0..value.len() {
            assert!(decode(&key, Some(&value[..cut])).is_err(), "{cut}");
        }
        assert!(decode(b"\x00\x09", None).is_err());
        assert_eq!(decode(b"\x00\x02\x00\x01g", None).unwrap(), Stored::Other);
    }
}
