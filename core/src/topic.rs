//! Topics as Kafka users name and configure them: name validation with
//! Kafka's rules, and topic configs under Kafka's keys plus Fjord's `fsync`.
//! The log-compaction configs (`cleanup.policy` and the cleaner's knobs)
//! follow Kafka's keys, ranges and defaults.

use crate::config::FsyncPolicy;
use std::time::Duration;

/// Longest topic name Kafka accepts.
pub const TOPIC_NAME_LEN_MAX: usize = 249;

/// Why a topic name or config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Name empty, `.` or `..`, too long, or with characters outside
    /// `[a-zA-Z0-9._-]`.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A config key Fjord does not know.
    #[error("unknown topic config {0:?}")]
    UnknownConfig(String),
    /// A known key with a value out of range or unparsable.
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidConfig {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What is accepted.
        reason: &'static str,
    },
}

/// Checks a topic name the way Kafka does.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    let invalid = |reason| {
        Err(TopicError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are reserved");
    }
    if name.len() > TOPIC_NAME_LEN_MAX {
        return invalid("longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// A topic's configuration. Every field has Kafka's default, except `fsync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// `retention.ms`; `None` is Kafka's -1, keep forever.
    pub retention: Option<Duration>,
    /// `retention.bytes` per partition; `None` is -1, no size limit.
    pub retention_bytes: Option<u64>,
    /// `segment.bytes`.
    pub segment_bytes: u64,
    /// `segment.ms`.
    pub segment_age: Duration,
    /// `max.message.bytes`: the largest record batch accepted.
    pub max_message_bytes: u32,
    /// `fsync`: `always`, `interval:<ms>` or `never`.
    pub fsync: FsyncPolicy,
    /// `cleanup.policy`: delete old segments, compact by key, or both.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long a tombstone outlives the cleaning
    /// that first made its segment clean.
    pub delete_retention: Duration,
    /// `min.cleanable.dirty.ratio`: dirty bytes over cleanable bytes at
    /// which the cleaner runs.
    pub min_cleanable_dirty_ratio: DirtyRatio,
    /// `min.compaction.lag.ms`: records younger than this stay uncompacted.
    pub min_compaction_lag: Duration,
    /// `max.compaction.lag.ms`: a dirty record older than this makes the
    /// log due for cleaning whatever its dirty ratio.
    pub max_compaction_lag: Duration,
}

/// Keys `TopicConfig::set` accepts.
pub const CONFIG_KEYS: [&str; 11] = [
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "fsync",
    "cleanup.policy",
    "delete.retention.ms",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
];

/// `cleanup.policy`: `delete` (Kafka's default), `compact`, or both
/// (`compact,delete` in either order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// Retention by time and size deletes old segments.
    pub delete: bool,
    /// The cleaner keeps only the newest record of each key.
    pub compact: bool,
}

impl CleanupPolicy {
    /// Kafka's default: retention only.
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
    /// Compaction only: retention deletes nothing.
    pub const COMPACT: CleanupPolicy = CleanupPolicy {
        delete: false,
        compact: true,
    };
}

impl Default for CleanupPolicy {
    fn default() -> Self {
        CleanupPolicy::DELETE
    }
}

impl std::str::FromStr for CleanupPolicy {
    type Err = &'static str;

    /// A comma-separated list of `delete` and `compact`, as Kafka's list
    /// configs are written (spaces around items allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for item in s.split(',').map(str::trim) {
            match item {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                _ => return Err("delete, compact or compact,delete"),
            }
        }
        Ok(policy)
    }
}

impl std::fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match (self.compact, self.delete) {
            (true, true) => "compact,delete",
            (true, false) => "compact",
            // Parsing never yields neither.
            (false, _) => "delete",
        };
        f.write_str(text)
    }
}

/// `min.cleanable.dirty.ratio`: a ratio in `0..=1`, never NaN (so equality
/// is total and `Eq` holds).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct DirtyRatio(f64);

impl Eq for DirtyRatio {}

impl DirtyRatio {
    /// Kafka's default, 0.5.
    pub const DEFAULT: DirtyRatio = DirtyRatio(0.5);

    /// The ratio, if within `0..=1`.
    pub fn new(ratio: f64) -> Option<DirtyRatio> {
        (0.0..=1.0).contains(&ratio).then_some(DirtyRatio(ratio))
    }

    /// The ratio as a number.
    pub fn get(self) -> f64 {
        self.0
    }
}

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention: Some(WEEK),
            retention_bytes: None,
            segment_bytes: 1 << 30,
            segment_age: WEEK,
            max_message_bytes: 1024 * 1024 + 12,
            // Kafka's default too: durability by replication, not fsync.
            fsync: FsyncPolicy::Never,
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention: Duration::from_millis(86_400_000),
            min_cleanable_dirty_ratio: DirtyRatio::DEFAULT,
            min_compaction_lag: Duration::ZERO,
            max_compaction_lag: Duration::from_millis(i64::MAX as u64),
        }
    }
}

impl TopicConfig {
    /// Defaults overridden by `key=value` pairs, as given to
    /// `topic create --config`.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, TopicError> {
        let mut config = TopicConfig::default();
        for (key, value) in pairs {
            config.set(key, value)?;
        }
        // Kafka checks the pair together, whichever was given.
        if config.min_compaction_lag > config.max_compaction_lag {
            return Err(TopicError::InvalidConfig {
                key: "min.compaction.lag.ms".to_owned(),
                value: config.min_compaction_lag.as_millis().to_string(),
                reason: "not greater than max.compaction.lag.ms",
            });
        }
        Ok(config)
    }

    /// Sets one config by its Kafka key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), TopicError> {
        let invalid = |reason| TopicError::InvalidConfig {
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let number = || {
            value
                .trim()
                .parse::<i64>()
                .map_err(|_| invalid("an integer"))
        };
        match key {
            "retention.ms" => {
                self.retention = unlimited_or_positive(number()?)
                    .map_err(invalid)?
                    .map(Duration::from_millis)
            }
            "retention.bytes" => {
                self.retention_bytes = unlimited_or_positive(number()?).map_err(invalid)?
            }
            "segment.bytes" => {
                // Kafka's range: 14 bytes (a header) up to 2^31 - 1.
                self.segment_bytes = u64::try_from(number()?)
                    .ok()
                    .filter(|b| (14..=i32::MAX as u64).contains(b))
                    .ok_or(invalid("from 14 to 2147483647"))?;
            }
            "segment.ms" => {
                let ms = u64::try_from(number()?)
                    .ok()
                    .filter(|&ms| ms >= 1)
                    .ok_or(invalid("at least 1"))?;
                self.segment_age = Duration::from_millis(ms);
            }
            "max.message.bytes" => {
                self.max_message_bytes = u32::try_from(number()?)
                    .ok()
                    .filter(|&b| b >= 61 && b <= i32::MAX as u32)
                    .ok_or(invalid("from 61 to 2147483647"))?;
            }
            "fsync" => {
                self.fsync = value
                    .parse()
                    .map_err(|_| invalid("always, never or interval:<ms>"))?
            }
            "cleanup.policy" => self.cleanup_policy = value.parse().map_err(invalid)?,
            "delete.retention.ms" => {
                self.delete_retention = non_negative_ms(number()?).ok_or(invalid("at least 0"))?
            }
            "min.cleanable.dirty.ratio" => {
                self.min_cleanable_dirty_ratio = value
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(DirtyRatio::new)
                    .ok_or(invalid("a number from 0 to 1"))?
            }
            "min.compaction.lag.ms" => {
                self.min_compaction_lag = non_negative_ms(number()?).ok_or(invalid("at least 0"))?
            }
            "max.compaction.lag.ms" => {
                self.max_compaction_lag = non_negative_ms(number()?)
                    .filter(|lag| !lag.is_zero())
                    .ok_or(invalid("at least 1"))?
            }
            _ => return Err(TopicError::UnknownConfig(key.to_owned())),
        }
        Ok(())
    }

    /// Every config as `(key, value)` in Kafka's notation, for describe.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let limit = |v: Option<u64>| v.map_or("-1".to_owned(), |v| v.to_string());
        vec![
            (
                "retention.ms",
                limit(self.retention.map(|d| d.as_millis() as u64)),
            ),
            ("retention.bytes", limit(self.retention_bytes)),
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.ms", self.segment_age.as_millis().to_string()),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("fsync", self.fsync.to_string()),
            ("cleanup.policy", self.cleanup_policy.to_string()),
            (
                "delete.retention.ms",
                self.delete_retention.as_millis().to_string(),
            ),
            (
                "min.cleanable.dirty.ratio",
                self.min_cleanable_dirty_ratio.get().to_string(),
            ),
            (
                "min.compaction.lag.ms",
                self.min_compaction_lag.as_millis().to_string(),
            ),
            (
                "max.compaction.lag.ms",
                self.max_compaction_lag.as_millis().to_string(),
            ),
        ]
    }
}

/// A duration in ms from a config value that must be 0 or more.
fn non_negative_ms(value: i64) -> Option<Duration> {
    u64::try_from(value).ok().map(Duration::from_millis)
}

/// Kafka's convention for limits: -1 is none, otherwise non-negative.
fn unlimited_or_positive(value: i64) -> Result<Option<u64>, &'static str> {
    match value {
        -1 => Ok(None),
        v => u64::try_from(v)
            .map(Some)
            .map_err(|_| "-1 (no limit) or a non-negative integer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        for good in ["orders", "a", "A.b_c-9", &"x".repeat(249)] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/name",
            "ünï",
            &"x".repeat(250),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn configs_parse_with_kafka_names_and_print_back() {
        let config = TopicConfig::from_pairs([
            ("retention.ms", "-1"),
            ("retention.bytes", "1048576"),
            ("segment.bytes", "65536"),
            ("segment.ms", "60000"),
            ("max.message.bytes", "2000000"),
            ("fsync", "interval:50"),
        ])
        .expect("valid configs");
        assert_eq!(config.retention, None);
        assert_eq!(config.retention_bytes, Some(1 << 20));
        assert_eq!(config.segment_bytes, 65536);
        assert_eq!(
            config.fsync,
            FsyncPolicy::Interval(Duration::from_millis(50))
        );
        let printed = TopicConfig::from_pairs(config.pairs().iter().map(|(k, v)| (*k, v.as_str())))
            .expect("round trip");
        assert_eq!(printed, config);
        assert_eq!(config.pairs().len(), CONFIG_KEYS.len());
    }

    #[test]
    fn bad_configs_say_what_is_accepted() {
        let cases = [
            ("retention.ms", "-2"),
            ("retention.bytes", "lots"),
            ("segment.bytes", "10"),
            ("segment.bytes", "4294967296"),
            ("segment.ms", "0"),
            ("max.message.bytes", "-5"),
            ("fsync", "sometimes"),
        ];
        for (key, value) in cases {
            let err = TopicConfig::from_pairs([(key, value)]).expect_err("refused");
            assert!(
                matches!(err, TopicError::InvalidConfig { .. }),
                "{key}={value}: {err}"
            );
        }
        assert_eq!(
            TopicConfig::from_pairs([("log.cleaner.enable", "true")]),
            Err(TopicError::UnknownConfig("log.cleaner.enable".into()))
        );
    }

    #[test]
    fn compaction_configs_have_kafka_defaults() {
        let config = TopicConfig::default();
        assert_eq!(config.cleanup_policy, CleanupPolicy::DELETE);
        assert_eq!(config.delete_retention, Duration::from_millis(86_400_000));
        assert_eq!(config.min_cleanable_dirty_ratio.get(), 0.5);
        assert_eq!(config.min_compaction_lag, Duration::ZERO);
        assert_eq!(
            config.max_compaction_lag.as_millis(),
            i64::MAX as u128,
            "Long.MAX_VALUE, as Kafka"
        );
    }

    #[test]
    fn cleanup_policy_takes_either_order_and_prints_one() {
        let both = CleanupPolicy {
            delete: true,
            compact: true,
        };
        for (text, policy) in [
            ("delete", CleanupPolicy::DELETE),
            ("compact", CleanupPolicy::COMPACT),
            ("compact,delete", both),
            ("delete,compact", both),
            (" delete , compact ", both),
        ] {
            let config = TopicConfig::from_pairs([("cleanup.policy", text)]).expect(text);
            assert_eq!(config.cleanup_policy, policy, "{text}");
        }
        assert_eq!(both.to_string(), "compact,delete");
        assert_eq!(CleanupPolicy::COMPACT.to_string(), "compact");
    }

    #[test]
    fn compaction_configs_parse_round_trip_and_refuse_out_of_range() {
        let config = TopicConfig::from_pairs([
            ("cleanup.policy", "compact"),
            ("delete.retention.ms", "1000"),
            ("min.cleanable.dirty.ratio", "0.25"),
            ("min.compaction.lag.ms", "500"),
            ("max.compaction.lag.ms", "60000"),
        ])
        .expect("valid");
        assert_eq!(config.delete_retention, Duration::from_millis(1000));
        assert_eq!(config.min_cleanable_dirty_ratio.get(), 0.25);
        assert_eq!(config.min_compaction_lag, Duration::from_millis(500));
        assert_eq!(config.max_compaction_lag, Duration::from_millis(60000));
        let printed = TopicConfig::from_pairs(config.pairs().iter().map(|(k, v)| (*k, v.as_str())))
            .expect("round trip");
        assert_eq!(printed, config);
        let defaults = TopicConfig::default();
        let printed =
            TopicConfig::from_pairs(defaults.pairs().iter().map(|(k, v)| (*k, v.as_str())))
                .expect("defaults round trip");
        assert_eq!(printed, defaults);

        for (key, value) in [
            ("cleanup.policy", ""),
            ("cleanup.policy", "compact,shred"),
            ("cleanup.policy", "compact;delete"),
            ("delete.retention.ms", "-1"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("min.cleanable.dirty.ratio", "-0.1"),
            ("min.cleanable.dirty.ratio", "NaN"),
            ("min.compaction.lag.ms", "-1"),
            ("max.compaction.lag.ms", "0"),
        ] {
            let err = TopicConfig::from_pairs([(key, value)]).expect_err("refused");
            assert!(
                matches!(err, TopicError::InvalidConfig { .. }),
                "{key}={value}: {err}"
            );
        }
        for ratio in ["0", "1", "0.0", "1.0"] {
            TopicConfig::from_pairs([("min.cleanable.dirty.ratio", ratio)]).expect(ratio);
        }
        let err = TopicConfig::from_pairs([
            ("min.compaction.lag.ms", "2000"),
            ("max.compaction.lag.ms", "1000"),
        ])
        .expect_err("min above max");
        assert!(matches!(err, TopicError::InvalidConfig { .. }), "{err}");
    }
}
