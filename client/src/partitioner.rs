//! Which partition a record goes to, exactly as Kafka's default partitioner
//! decides it, so that Fjord and Kafka clients agree on where a key lives.

use rand::Rng;

/// Kafka's key partitioning: `toPositive(murmur2(key)) % partitions`, with
/// murmur2 seeded as Kafka seeds it.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED);
    // Kafka's `toPositive`: clear the sign bit rather than take `abs`.
    (hash & 0x7fff_ffff) % partitions
}

/// Sticky partitioning for records without a key (Kafka's KIP-480): every
/// such record goes to one partition until the batch there is sent, then the
/// partitioner moves to another, so null-key records fill few, large
/// batches instead of many small ones.
#[derive(Debug, Default)]
pub struct Sticky {
    current: Option<u32>,
}

impl Sticky {
    /// The partition for the next record without a key.
    pub fn partition(&mut self, partitions: u32) -> u32 {
        assert!(partitions > 0, "a topic has at least one partition");
        match self.current {
            Some(p) if p < partitions => p,
            _ => self.switch(partitions),
        }
    }

    /// The batch of the current partition was sent: move to another one.
    pub fn batch_sent(&mut self, partitions: u32) -> u32 {
        self.switch(partitions)
    }

    fn switch(&mut self, partitions: u32) -> u32 {
        let next = match (self.current, partitions) {
            (_, 1) | (None, _) => rand::thread_rng().gen_range(0..partitions),
            // Any partition but the one just used.
            (Some(previous), _) => {
                (previous + rand::thread_rng().gen_range(1..partitions)) % partitions
            }
        };
        self.current = Some(next);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's UtilsTest.testMurmur2 vectors.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2::murmur2(key, murmur2::KAFKA_SEED) as i32,
                expected,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn keys_map_to_stable_partitions_in_range() {
        for partitions in [1, 3, 12, 1000] {
            for i in 0..500 {
                let key = format!("key-{i}");
                let p = partition_for_key(key.as_bytes(), partitions);
                assert!(p < partitions);
                assert_eq!(p, partition_for_key(key.as_bytes(), partitions));
            }
        }
        // A hash with the sign bit set is masked, not negated: Kafka's toPositive.
        assert_eq!(
            partition_for_key(b"21", 1 << 31),
            (-973932308i32 as u32) & 0x7fff_ffff
        );
    }

    #[test]
    fn sticky_stays_until_the_batch_is_sent_then_moves() {
        let mut sticky = Sticky::default();
        let first = sticky.partition(6);
        assert!((0..100).all(|_| sticky.partition(6) == first));
        for _ in 0..100 {
            let before = sticky.partition(6);
            let after = sticky.batch_sent(6);
            assert!(after < 6 && after != before, "stayed on {before}");
        }
        assert_eq!(sticky.batch_sent(1), 0);
        // The topic shrank below the sticky partition: pick a valid one.
        let mut sticky = Sticky { current: Some(9) };
        assert!(sticky.partition(3) < 3);
    }
}
