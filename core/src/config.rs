//! Configuration vocabulary shared by the storage engine, the broker and the
//! client: values with Kafka-compatible names and Fjord's durability policy.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// When a partition's appends are made durable with `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every acknowledgement waits for the group commit's fdatasync.
    Always,
    /// fdatasync at most this often; acknowledgements wait for the write only.
    Interval(Duration),
    /// Never fdatasync on the append path: durability by replication.
    Never,
}

/// A policy string that is not `always`, `never` or `interval:<ms>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fsync policy {0:?}: expected always, never or interval:<ms>")]
pub struct FsyncPolicyError(String);

impl FromStr for FsyncPolicy {
    type Err = FsyncPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => s
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse::<u64>().ok())
                .filter(|&ms| ms > 0)
                .map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms)))
                .ok_or_else(|| FsyncPolicyError(s.to_owned())),
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_policies() {
        for text in ["always", "never", "interval:250"] {
            let policy: FsyncPolicy = text.parse().expect("valid policy");
            assert_eq!(policy.to_string(), text);
        }
        for bad in ["", "sometimes", "interval:", "interval:0", "interval:-5"] {
            assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad} accepted");
        }
    }
}
