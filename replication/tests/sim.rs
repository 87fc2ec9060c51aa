//! The deterministic simulator in `cargo test`: thousands of seeds of the
//! real Raft core under network, disk and process faults must pass, and the
//! checker must catch each planted bug within a bounded number of seeds.

use fjord_replication::raft::Bugs;
use fjord_replication::sim::{self, Failure};
use std::ops::Range;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Panics inside a played seed are the seed's failure and are reported by
/// `sim::run`; every other panic (a failed assertion here) is printed.
fn quiet_panics_while_playing() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if sim::playing().is_none() {
                default(info);
            }
        }));
    });
}

/// Plays `seeds` on every core; returns how many passed and the failure
/// with the lowest seed, stopping early after a failure.
fn play(seeds: Range<u64>, bugs: Bugs) -> (u64, Option<Failure>) {
    quiet_panics_while_playing();
    let next = AtomicU64::new(seeds.start);
    let passed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let failures: Vec<Failure> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut found = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        if seed >= seeds.end {
                            break;
                        }
                        match sim::run(seed, bugs) {
                            Ok(_) => {
                                passed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(failure) => {
                                stop.store(true, Ordering::Relaxed);
                                found.push(failure);
                            }
                        }
                    }
                    found
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let first = failures.into_iter().min_by_key(|f| f.seed);
    (passed.load(Ordering::Relaxed), first)
}

fn describe(failure: &Failure, bugs: &Bugs) -> String {
    let tail = failure.trace.len().saturating_sub(60);
    format!(
        "seed {} failed: {}\nreplay: {}\n{}",
        failure.seed,
        failure.violation,
        failure.replay_command(bugs),
        failure.trace[tail..].join("\n")
    )
}

#[test]
fn two_thousand_seeds_keep_every_promise() {
    let count = std::env::var("FJORD_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let (passed, failure) = play(0..count, Bugs::default());
    if let Some(failure) = failure {
        panic!("{}", describe(&failure, &Bugs::default()));
    }
    assert_eq!(passed, count);
}

/// Searches seeds until the checker objects; returns the failure.
fn caught(bugs: Bugs, bound: u64) -> Failure {
    let (_, failure) = play(0..bound, bugs);
    match failure {
        Some(f) => {
            println!("{bugs:?} caught at seed {}: {}", f.seed, f.violation);
            f
        }
        None => panic!("the checker missed {bugs:?} in {bound} seeds"),
    }
}

#[test]
fn checker_catches_a_follower_serving_its_unflushed_tail() {
    let bugs = Bugs {
        follower_reads_unflushed_tail: true,
        ..Bugs::default()
    };
    let failure = caught(bugs, 50);
    assert!(
        failure.violation.contains("not committed"),
        "{}",
        describe(&failure, &bugs)
    );
}

#[test]
fn checker_catches_skipped_check_quorum() {
    let bugs = Bugs {
        skip_check_quorum: true,
        ..Bugs::default()
    };
    let failure = caught(bugs, 1000);
    assert!(
        failure.violation.contains("deposed"),
        "{}",
        describe(&failure, &bugs)
    );
}

#[test]
fn checker_catches_skipped_vote_persistence() {
    let bugs = Bugs {
        skip_hard_state_persistence: true,
        ..Bugs::default()
    };
    caught(bugs, 1000);
}

#[test]
fn checker_catches_commit_of_an_old_term_by_counting() {
    let bugs = Bugs {
        commit_old_term_by_count: true,
        ..Bugs::default()
    };
    caught(bugs, 40_000);
}

#[test]
fn a_failing_seed_replays_exactly() {
    let bugs = Bugs {
        skip_check_quorum: true,
        ..Bugs::default()
    };
    let first = caught(bugs, 1000);
    let again = sim::run(first.seed, bugs).expect_err("the same seed fails again");
    assert_eq!(first.violation, again.violation);
    assert_eq!(first.trace, again.trace);
    assert!(!first.trace.is_empty(), "a failure carries its trace");
    assert!(
        first
            .replay_command(&bugs)
            .contains(&format!("--seed {}", first.seed))
    );
}
