//! `sim`: plays seeds of the deterministic Raft simulator.
//!
//! `sim --seeds 100000` plays seeds 0..100000 on every core, printing
//! progress and a summary; the first failure prints its seed, the violated
//! invariant, the replay command and the trace, and exits 1.
//! `sim --seed N --trace` replays one seed and prints its trace.

use clap::Parser;
use fjord_replication::raft::Bugs;
use fjord_replication::sim::{self, Failure, Outcome};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Plays seeds of Fjord's deterministic Raft simulator")]
struct Args {
    /// How many seeds to play.
    #[arg(long, default_value_t = 10_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Play this one seed only.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the run's trace (with --seed).
    #[arg(long)]
    trace: bool,
    /// Plant a bug (repeatable): commit-old-term-by-count,
    /// skip-hard-state-persistence, follower-reads-unflushed-tail,
    /// skip-check-quorum.
    #[arg(long = "bug")]
    bugs: Vec<String>,
    /// Go on after a failure, counting failing seeds (for measuring how
    /// quickly the checker finds a planted bug).
    #[arg(long)]
    keep_going: bool,
    /// Threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    events: u64,
    elections: u64,
    acks_one: u64,
    acks_all: u64,
    faults: u64,
    recovery_sum: u64,
    recovery_max: u64,
    failures: u64,
}

impl Totals {
    fn add(&mut self, o: &Outcome) {
        self.merge(&Totals {
            seeds: 1,
            events: o.events,
            elections: o.elections,
            acks_one: o.acks_one,
            acks_all: o.acks_all,
            faults: o.faults,
            recovery_sum: o.recovery,
            recovery_max: o.recovery,
            failures: 0,
        });
    }

    fn merge(&mut self, from: &Totals) {
        self.seeds += from.seeds;
        self.events += from.events;
        self.elections += from.elections;
        self.acks_one += from.acks_one;
        self.acks_all += from.acks_all;
        self.faults += from.faults;
        self.recovery_sum += from.recovery_sum;
        self.recovery_max = self.recovery_max.max(from.recovery_max);
        self.failures += from.failures;
    }
}

fn report(failure: &Failure, bugs: &Bugs) {
    println!("FAILED seed {}: {}", failure.seed, failure.violation);
    println!("replay: {}", failure.replay_command(bugs));
    let from = failure.trace.len().saturating_sub(200);
    if from > 0 {
        println!("... {from} earlier trace lines (replay for all)");
    }
    for line in &failure.trace[from..] {
        println!("  {line}");
    }
}

fn main() {
    let args = Args::parse();
    let mut bugs = Bugs::default();
    for name in &args.bugs {
        if !sim::plant(&mut bugs, name) {
            eprintln!(
                "sim: unknown bug {name:?}; known: {}",
                sim::BUG_NAMES.join(", ")
            );
            std::process::exit(2);
        }
    }
    // A core assertion is the seed's failure. Where panics unwind, `run`
    // reports it with the trace; where they abort (release builds), this
    // hook names the seed and the replay before the process ends.
    let replay_bugs = bugs;
    std::panic::set_hook(Box::new(move |info| {
        if let Some(seed) = sim::playing() {
            let failure = Failure {
                seed,
                violation: format!("panic in the core: {info}"),
                trace: Vec::new(),
            };
            if cfg!(panic = "abort") {
                report(&failure, &replay_bugs);
            }
        }
    }));
    if let Some(seed) = args.seed {
        if args.trace {
            // Printed as it happens, so that an aborting panic keeps it.
            let mut world = sim::world::World::new(seed, bugs, true);
            world.print_trace = true;
            if let Err(violation) = world.run() {
                println!("FAILED seed {seed}: {violation}");
                std::process::exit(1);
            }
            println!("seed {seed} passed");
            return;
        }
        match sim::run(seed, bugs) {
            Ok(outcome) => println!("seed {seed} passed: {outcome:?}"),
            Err(failure) => {
                report(&failure, &bugs);
                std::process::exit(1);
            }
        }
        return;
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = Arc::new(AtomicU64::new(args.start));
    let end = args.start + args.seeds;
    let stop = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Mutex::new(Totals::default()));
    let failure: Arc<Mutex<Option<Failure>>> = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let keep_going = args.keep_going;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, stop, totals, failure) =
                (next.clone(), stop.clone(), totals.clone(), failure.clone());
            std::thread::spawn(move || {
                let mut local = Totals::default();
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    match sim::run(seed, bugs) {
                        Ok(outcome) => local.add(&outcome),
                        Err(f) => {
                            local.failures += 1;
                            stop.store(!keep_going, Ordering::Relaxed);
                            let mut slot = failure.lock().unwrap_or_else(|e| e.into_inner());
                            if slot.as_ref().is_none_or(|g| g.seed > f.seed) {
                                *slot = Some(f);
                            }
                        }
                    }
                    if local.seeds + local.failures == 1000 {
                        let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                        t.merge(&local);
                        println!(
                            "{} seeds, {:.0} s, {:.0} seeds/s",
                            t.seeds,
                            started.elapsed().as_secs_f64(),
                            t.seeds as f64 / started.elapsed().as_secs_f64()
                        );
                        local = Totals::default();
                    }
                }
                let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                t.merge(&local);
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    let t = totals.lock().unwrap_or_else(|e| e.into_inner());
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} seeds passed in {elapsed:.1} s ({:.0} seeds/s): {} events, {} elections, {} faults, \
         {} acks=1 and {} acks=all acknowledgements; recovery after healing mean {:.0} max {} (time units, tick = 10)",
        t.seeds,
        t.seeds as f64 / elapsed,
        t.events,
        t.elections,
        t.faults,
        t.acks_one,
        t.acks_all,
        t.recovery_sum as f64 / t.seeds.max(1) as f64,
        t.recovery_max,
    );
    if t.failures > 0 {
        println!("{} of {} seeds failed", t.failures, t.seeds + t.failures);
    }
    if let Some(f) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        report(&f, &bugs);
        std::process::exit(1);
    }
}
