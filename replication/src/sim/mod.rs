//! The deterministic simulator: the real Raft core under one seeded PRNG.
//!
//! [`run`] plays one seed (see [`world`] for what a run does and
//! [`checker`] for what it proves). Everything random — the cluster's size
//! and durability, delays, losses, crashes, torn writes, clock drift — is
//! drawn from the seed, so a failing seed replays exactly:
//! `cargo run --release -p fjord-replication --bin sim -- --seed N --trace`.
//! A panic in the core (one of its assertions) is a failure like any other.

pub mod checker;
pub mod disk;
pub mod network;
pub mod world;

use crate::raft::Bugs;
use std::cell::Cell;
pub use world::Outcome;

thread_local! {
    static PLAYING: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The seed this thread is playing, for a panic hook to name when panics
/// abort the process (release builds) instead of unwinding into [`run`].
pub fn playing() -> Option<u64> {
    PLAYING.with(Cell::get)
}

/// A seed that broke an invariant.
#[derive(Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// What broke.
    pub violation: String,
    /// The replay's trace, one line per event of note.
    pub trace: Vec<String>,
}

impl Failure {
    /// The command that replays this failure.
    pub fn replay_command(&self, bugs: &Bugs) -> String {
        let mut command = format!(
            "cargo run --release -p fjord-replication --bin sim -- --seed {} --trace",
            self.seed
        );
        for name in bug_names(bugs) {
            command.push_str(" --bug ");
            command.push_str(name);
        }
        command
    }
}

/// The planted bugs by name, as `--bug` takes them.
pub const BUG_NAMES: [&str; 4] = [
    "commit-old-term-by-count",
    "skip-hard-state-persistence",
    "follower-reads-unflushed-tail",
    "skip-check-quorum",
];

/// Turns on the bug called `name`.
pub fn plant(bugs: &mut Bugs, name: &str) -> bool {
    match name {
        "commit-old-term-by-count" => bugs.commit_old_term_by_count = true,
        "skip-hard-state-persistence" => bugs.skip_hard_state_persistence = true,
        "follower-reads-unflushed-tail" => bugs.follower_reads_unflushed_tail = true,
        "skip-check-quorum" => bugs.skip_check_quorum = true,
        _ => return false,
    }
    true
}

fn bug_names(bugs: &Bugs) -> Vec<&'static str> {
    let on = [
        bugs.commit_old_term_by_count,
        bugs.skip_hard_state_persistence,
        bugs.follower_reads_unflushed_tail,
        bugs.skip_check_quorum,
    ];
    BUG_NAMES
        .iter()
        .zip(on)
        .filter(|&(_, on)| on)
        .map(|(&name, _)| name)
        .collect()
}

/// Plays `seed`. On a violation (or a panic in the core) the seed is played
/// again with the trace on, and the failure carries that trace.
pub fn run(seed: u64, bugs: Bugs) -> Result<Outcome, Failure> {
    match play(seed, bugs, false) {
        Ok(outcome) => Ok(outcome),
        Err((violation, _)) => {
            let (_, trace) = play(seed, bugs, true).err().unwrap_or_default();
            Err(Failure {
                seed,
                violation,
                trace,
            })
        }
    }
}

fn play(seed: u64, bugs: Bugs, trace: bool) -> Result<Outcome, (String, Vec<String>)> {
    let mut world = world::World::new(seed, bugs, trace);
    PLAYING.with(|p| p.set(Some(seed)));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run()));
    PLAYING.with(|p| p.set(None));
    let violation = match result {
        Ok(Ok(outcome)) => return Ok(outcome),
        Ok(Err(violation)) => violation,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            format!("panic in the core: {message}")
        }
    };
    Err((violation, world.trace()))
}
