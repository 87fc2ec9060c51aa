//! Criterion benchmarks of the Raft core's CPU cost: one leader shard with
//! 10,000 idle groups ticking (heartbeats coalesced per peer, answers
//! handled), and one group replicating 16 KiB batches to two followers.
//!
//! Run: `cargo bench -p fjord-perf --bench raft`.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use fjord_replication::raft::mux::{GroupId, Mux, Outbox, PeerBatch};
use fjord_replication::raft::{
    AppendResponse, Config, Durability, Group, HardState, LogState, Membership, Message, Output,
    Role, VoteResponse,
};
use std::hint::black_box;

/// A group that leads term 1 over replicas 0 (itself), 1 and 2.
fn leader(seed: u64) -> Group {
    let membership = Membership::of_voters(&[0, 1, 2]);
    let cfg = Config::new(0, Durability::Written, seed);
    let mut g = Group::new(
        cfg,
        HardState::default(),
        LogState::default(),
        membership,
        0,
    );
    let mut out = Vec::new();
    while g.role() == Role::Follower {
        g.tick(&|_| None, &mut out);
    }
    g.receive(
        1,
        Message::PreVoteResponse(VoteResponse {
            term: 1,
            granted: true,
        }),
        &mut out,
    );
    g.hard_state_persisted(1, &mut out);
    g.receive(
        1,
        Message::VoteResponse(VoteResponse {
            term: 1,
            granted: true,
        }),
        &mut out,
    );
    assert_eq!(g.role(), Role::Leader);
    g
}

/// What a caught-up follower answers to a heartbeat.
fn answer(end: u64) -> AppendResponse {
    AppendResponse {
        term: 1,
        rejected: None,
        end,
        last_term: 1,
        term_start: 0,
        matched: end,
        durable: end,
    }
}

fn idle_groups(c: &mut Criterion) {
    const GROUPS: u64 = 10_000;
    let mut mux = Mux::new();
    for id in 0..GROUPS {
        mux.insert(id, leader(id));
    }
    // Everyone caught up on the leader mark (offset 0..1).
    let answers: Vec<(GroupId, AppendResponse)> = (0..GROUPS).map(|id| (id, answer(1))).collect();
    let mut group = c.benchmark_group("raft_idle_10k_groups");
    group.bench_function("tick", |b| {
        let mut outbox = Outbox::default();
        b.iter(|| {
            mux.tick(&|_| None, &mut outbox);
            black_box(outbox.batches.len());
            outbox.batches.clear();
            outbox.local.clear();
        })
    });
    group.bench_function("tick_and_answers_from_two_peers", |b| {
        let mut outbox = Outbox::default();
        b.iter(|| {
            mux.tick(&|_| None, &mut outbox);
            outbox.batches.clear();
            for peer in [1, 2] {
                let batch = PeerBatch {
                    heartbeat_responses: answers.clone(),
                    ..PeerBatch::default()
                };
                mux.receive(peer, batch, &|_| None, &mut outbox);
            }
            black_box(outbox.local.len());
            outbox.local.clear();
        })
    });
    group.finish();
}

fn replicate_batches(c: &mut Criterion) {
    let mut g = leader(7);
    let mut out = Vec::new();
    g.log_written(1, 0, &mut out);
    c.bench_function("raft_replicate_16k_batch", |b| {
        b.iter(|| {
            out.clear();
            let entry = g.propose(160, 16 << 10, &mut out).expect("leads");
            g.log_written(entry.end, 0, &mut out);
            for peer in [1, 2] {
                g.receive(peer, Message::AppendResponse(answer(entry.end)), &mut out);
            }
            assert!(matches!(out.first(), Some(Output::Append { .. })));
            black_box(g.commit())
        })
    });
}

criterion_group!(benches, idle_groups, replicate_batches);
criterion_main!(benches);
