//! Topics as Kafka users name and configure them: name validation with
//! Kafka's rules, and topic configs under Kafka's keys plus Fjord's `fsync`.

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
}

/// Keys `TopicConfig::set` accepts.
pub const CONFIG_KEYS: [&str; 6] = [
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "fsync",
];

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
        ]
    }
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
            TopicConfig::from_pairs([("cleanup.policy", "compact")]),
            Err(TopicError::UnknownConfig("cleanup.policy".into()))
        );
    }
}
