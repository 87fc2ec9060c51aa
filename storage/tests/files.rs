//! The descriptor budget: many logs on one shard with room for only a few
//! open files still append, roll, read back and reopen correctly, and the
//! shard never holds more files than the budget (plus the busy ones).

mod common;

use common::*;
use fjord_core::FsyncPolicy;
use fjord_storage::files::{self, budget_stats};
use fjord_storage::{BatchCache, LogConfig};

#[test]
fn many_logs_share_a_small_descriptor_budget() {
    run_fresh(|dir| async move {
        const LOGS: usize = 40;
        const BUDGET: usize = 6;
        files::set_budget(BUDGET);
        let cache = BatchCache::new(0); // every read goes to disk
        let config = LogConfig {
            fsync: FsyncPolicy::Always,
            segment_bytes: 8 << 10, // rolls: sealed segments are read later
            ..LogConfig::default()
        };
        let mut logs = Vec::new();
        for i in 0..LOGS {
            logs.push(open(&dir, &format!("p{i}"), config.clone(), &cache).await);
            assert!(budget_stats().open <= BUDGET + 2, "{:?}", budget_stats());
        }
        let mut expected = vec![Vec::new(); LOGS];
        for round in 0..6u64 {
            for (i, log) in logs.iter().enumerate() {
                let bytes = batch(round * 100 + i as u64, 8, 200, 1_000);
                let appended = log.append(&bytes).await.expect("append");
                appended.durable.await.expect("durable");
                expected[i].push(appended.base_offset);
                assert!(budget_stats().open <= BUDGET + 2, "{:?}", budget_stats());
            }
        }
        for (i, log) in logs.iter().enumerate() {
            let read = read_all(log, 0).await;
            let bases: Vec<u64> = read
                .iter()
                .map(|b| fjord_core::Batch::validate(b).expect("valid").base_offset() as u64)
                .collect();
            assert_eq!(bases, expected[i], "log p{i}");
        }
        let stats = budget_stats();
        assert!(stats.evicted > 0, "the budget closed idle files: {stats:?}");
        for log in logs.drain(..) {
            log.close().await.expect("close");
        }
        assert_eq!(budget_stats().open, 0, "closed logs hold no files");
        // Reopened (recovery, also under the budget), every batch is there.
        for (i, bases) in expected.iter().enumerate() {
            let log = open(&dir, &format!("p{i}"), config.clone(), &cache).await;
            assert_eq!(read_all(&log, 0).await.len(), bases.len(), "log p{i}");
            log.close().await.expect("close");
        }
    });
}
