//! Consumer groups against real brokers: members sharing a topic's
//! partitions (one SIGKILLed, one joining late), committed offsets that
//! survive a broker's SIGKILL, the `fjord group` tools.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Broker, FJORD};
use fjord_client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek};
use futures::executor::block_on;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Short group timeouts, so that a killed member is noticed in seconds.
const GROUP_FLAGS: [&str; 8] = [
    "--offsets-topic-partitions",
    "4",
    "--group-min-session-timeout-ms",
    "1000",
    "--group-session-timeout-ms",
    "3000",
    "--group-heartbeat-interval-ms",
    "200",
];
const SESSION: Duration = Duration::from_secs(3);

fn produce(broker: &Broker, topic: &str, from: usize, count: usize) {
    let client = broker.client();
    let producer = Producer::new(&client, ProducerConfig::default()).unwrap();
    let sends: Vec<_> = (from..from + count)
        .map(|i| {
            let key = format!("k{i}");
            let value = format!("v{i}");
            producer.send(
                topic,
                None,
                Some(key.as_bytes()),
                Some(value.as_bytes()),
                &[],
            )
        })
        .collect();
    for send in sends {
        block_on(send).unwrap();
    }
}

/// A `fjord consume --group` process printing `partition:offset<TAB>value`
/// lines into a file.
struct Member {
    child: Child,
    out: std::path::PathBuf,
}

impl Member {
    fn start(broker: &Broker, dir: &Path, name: &str, topic: &str, group: &str) -> Member {
        let out = dir.join(format!("{name}.out"));
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new(FJORD)
            .args([
                "consume",
                topic,
                "--group",
                group,
                "--from-beginning",
                "--print-offset",
            ])
            .args(["--bootstrap", &broker.addr.to_string()])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Member { child, out }
    }

    /// `(partition, offset)` of every record printed so far.
    fn seen(&self) -> Vec<(i32, i64)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (at, _) = line.split_once('\t')?;
                let (p, o) = at.split_once(':')?;
                Some((p.parse().ok()?, o.parse().ok()?))
            })
            .collect()
    }

    fn signal(&mut self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let _ = self.child.wait();
    }
}

/// Waits until `done` holds, or panics with `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each member's partitions once the group is stable with `members`.
fn stable_assignment(broker: &Broker, group: &str, members: usize) -> Vec<BTreeSet<(String, i32)>> {
    let admin = Admin::new(broker.client());
    let mut owned = Vec::new();
    wait_for(Duration::from_secs(30), "a stable group", || {
        let Ok(described) = block_on(admin.describe_group(group)) else {
            return false;
        };
        owned = described
            .members
            .iter()
            .map(|m| m.assignment.clone())
            .collect();
        described.state == "Stable" && described.members.len() == members
    });
    owned
}

#[test]
fn a_killed_members_partitions_move_and_every_record_is_processed_at_least_once() {
    let broker = Broker::start_with(2, &GROUP_FLAGS);
    let dir = tempfile::tempdir().unwrap();
    block_on(Admin::new(broker.client()).create_topic("work", 6, &[])).unwrap();
    let mut members: Vec<Member> = ["a", "b", "c"]
        .iter()
        .map(|name| Member::start(&broker, dir.path(), name, "work", "g"))
        .collect();
    let owned = stable_assignment(&broker, "g", 3);
    assert!(owned.iter().all(|o| o.len() == 2), "uniform: {owned:?}");
    let all: BTreeSet<_> = owned.iter().flatten().collect();
    assert_eq!(all.len(), 6, "every partition owned once: {owned:?}");

    produce(&broker, "work", 0, 600);
    let union = |members: &[Member]| -> BTreeSet<(i32, i64)> {
        members.iter().flat_map(|m| m.seen()).collect()
    };
    wait_for(Duration::from_secs(30), "the first 600 records", || {
        union(&members).len() == 600
    });

    // SIGKILL one member: no leave, no final commit.
    let mut killed = members.remove(0);
    let killed_seen = killed.seen();
    let killed_partitions: BTreeSet<i32> = killed_seen.iter().map(|(p, _)| *p).collect();
    killed.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    produce(&broker, "work", 600, 600);
    let mut all_seen: BTreeSet<(i32, i64)> = killed_seen.iter().copied().collect();
    wait_for(
        SESSION + Duration::from_secs(30),
        "all 1200 records",
        || {
            let now: BTreeSet<_> = union(&members);
            now.union(&all_seen).count() == 1200
        },
    );
    let moved_after = killed_at.elapsed();
    assert!(
        moved_after < SESSION + Duration::from_secs(10),
        "the killed member's partitions moved after {moved_after:?}"
    );
    owned_by_two_never(&broker);
    all_seen.extend(union(&members));
    assert_eq!(all_seen.len(), 1200, "every record processed at least once");

    // Read twice: only the killed member's uncommitted tail.
    let mut counts: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for record in killed_seen
        .iter()
        .copied()
        .chain(members.iter().flat_map(|m| m.seen()))
    {
        *counts.entry(record).or_default() += 1;
    }
    for ((p, o), n) in &counts {
        assert!(
            *n == 1 || killed_partitions.contains(p),
            "{p}:{o} read {n} times, not a partition of the killed member"
        );
    }
    for mut member in members {
        member.signal(libc::SIGTERM);
    }
    // The survivors committed at exit: nothing is left to read.
    let described = block_on(Admin::new(broker.client()).describe_group("g")).unwrap();
    let committed: i64 = described.offsets.iter().map(|o| o.committed).sum();
    assert_eq!(committed, 1200, "{:?}", described.offsets);
}

/// The group's members never hold one partition twice (checked once more
/// after the moves).
fn owned_by_two_never(broker: &Broker) {
    let described = block_on(Admin::new(broker.client()).describe_group("g")).unwrap();
    let mut seen = BTreeSet::new();
    for m in &described.members {
        for tp in &m.assignment {
            assert!(seen.insert(tp.clone()), "{tp:?} owned twice");
        }
    }
}

#[test]
fn a_member_joining_late_takes_partitions_while_the_others_keep_reading() {
    let broker = Broker::start_with(2, &GROUP_FLAGS);
    block_on(Admin::new(broker.client()).create_topic("steady", 4, &[])).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A producer writing each partition every 10 ms.
    let producing = {
        let (client, stop) = (broker.client(), stop.clone());
        std::thread::spawn(move || {
            let producer = Producer::new(&client, ProducerConfig::default()).unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for p in 0..4 {
                    drop(producer.send("steady", Some(p), None, Some(&i.to_be_bytes()), &[]));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            block_on(producer.flush()).unwrap();
        })
    };
    // Each member records when it got something of each partition.
    let member = |join_after: Duration| {
        let (client, stop) = (broker.client(), stop.clone());
        std::thread::spawn(move || {
            std::thread::sleep(join_after);
            let config = ConsumerConfig {
                offset_reset: Some(Seek::Latest),
                ..ConsumerConfig::default()
            };
            let mut consumer = Consumer::new(&client, config);
            block_on(consumer.subscribe(&["steady"], "late")).unwrap();
            let mut times: BTreeMap<i32, Vec<Instant>> = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for record in block_on(consumer.poll(Duration::from_millis(100))).unwrap() {
                    times
                        .entry(record.partition)
                        .or_default()
                        .push(Instant::now());
                }
            }
            block_on(consumer.close()).unwrap();
            times
        })
    };
    let first = member(Duration::ZERO);
    let second = member(Duration::ZERO);
    std::thread::sleep(Duration::from_secs(4));
    let joined_at = Instant::now();
    let third = member(Duration::ZERO);
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let times: Vec<BTreeMap<i32, Vec<Instant>>> = [first, second, third]
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    producing.join().unwrap();
    assert!(!times[2].is_empty(), "the late member got partitions");
    // Partitions that stayed with their member never paused; a moved one
    // paused while it went from one member to the other.
    let mut longest_stayed = Duration::ZERO;
    let mut longest_moved = Duration::ZERO;
    for p in 0..4 {
        let holders: Vec<usize> = (0..3).filter(|&m| times[m].contains_key(&p)).collect();
        let mut all: Vec<Instant> = holders.iter().flat_map(|&m| times[m][&p].clone()).collect();
        all.sort();
        let gap = all
            .windows(2)
            .filter(|w| w[1] > joined_at)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        if holders.len() == 1 {
            longest_stayed = longest_stayed.max(gap);
        } else {
            longest_moved = longest_moved.max(gap);
        }
    }
    println!("longest gap after the join: stayed {longest_stayed:?}, moved {longest_moved:?}");
    assert!(
        longest_stayed < Duration::from_secs(1),
        "a partition that stayed paused {longest_stayed:?}"
    );
    assert!(
        longest_moved < Duration::from_secs(3),
        "a moved partition paused {longest_moved:?}"
    );
}

#[test]
fn committed_offsets_survive_a_sigkill_and_the_tools_move_them() {
    let mut broker = Broker::start_with(2, &GROUP_FLAGS);
    block_on(Admin::new(broker.client()).create_topic("t", 2, &[])).unwrap();
    produce(&broker, "t", 0, 100);
    let read = |broker: &Broker, max: &str| {
        let out = broker.cli(
            &[
                "consume",
                "t",
                "--group",
                "tools",
                "--from-beginning",
                "--max-messages",
                max,
            ],
            "",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(read(&broker, "60"), 60);
    let committed = |broker: &Broker| -> i64 {
        let described = block_on(Admin::new(broker.client()).describe_group("tools")).unwrap();
        described.offsets.iter().map(|o| o.committed).sum()
    };
    assert_eq!(committed(&broker), 60, "only what was printed is committed");
    // Clients may not write the offsets topic: the coordinator would take a
    // record there for a commit at its next load.
    let producer = Producer::new(&broker.client(), ProducerConfig::default()).unwrap();
    let refused = block_on(producer.send("__consumer_offsets", Some(0), None, Some(b"v"), &[]));
    let refused = format!("{:?}", refused.unwrap_err());
    assert!(refused.contains("InvalidTopic"), "{refused}");
    // A commit for a partition that does not exist is refused, as Kafka's.
    let commit = |topic: &str, partition: i32| {
        use fjord_net::wire;
        let request = wire::RequestT::OffsetCommitRequest(Box::new(wire::OffsetCommitRequestT {
            group_id: Some("tools".into()),
            topics: Some(vec![wire::OffsetCommitTopicT {
                name: Some(topic.into()),
                partitions: Some(vec![wire::OffsetCommitPartitionT {
                    partition,
                    offset: 1,
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }));
        let response = block_on(broker.client().ask_any(request)).unwrap();
        let wire::ResponseT::OffsetCommitResponse(r) = response.unpack().unwrap().0 else {
            panic!("expected an OffsetCommit response");
        };
        let p = &r.topics.unwrap()[0].partitions.clone().unwrap()[0];
        p.error_code
    };
    let unknown = fjord_net::ErrorCode::UnknownTopicOrPartition.code();
    assert_eq!(commit("nope", 0), unknown);
    assert_eq!(commit("t", 2), unknown, "t has partitions 0 and 1");

    broker.kill();
    broker.restart();
    assert_eq!(committed(&broker), 60, "commits survive SIGKILL");
    assert_eq!(read(&broker, "40"), 40, "the rest, and only the rest");
    assert_eq!(committed(&broker), 100);

    let listed = String::from_utf8_lossy(&broker.cli(&["group", "list"], "").stdout).into_owned();
    assert!(listed.contains("tools"), "{listed}");
    let described =
        String::from_utf8_lossy(&broker.cli(&["group", "describe", "tools"], "").stdout)
            .into_owned();
    assert!(described.contains("LAG"), "{described}");

    // A dry run changes nothing; --execute does.
    let dry = broker.cli(
        &[
            "group",
            "reset-offsets",
            "tools",
            "--topic",
            "t",
            "--to-earliest",
        ],
        "",
    );
    assert!(String::from_utf8_lossy(&dry.stdout).contains("dry run"));
    assert_eq!(committed(&broker), 100);
    let shift = broker.cli(
        &[
            "group",
            "reset-offsets",
            "tools",
            "--topic",
            "t",
            "--shift-by",
            "-10",
            "--execute",
        ],
        "",
    );
    assert!(
        shift.status.success(),
        "{}",
        String::from_utf8_lossy(&shift.stderr)
    );
    assert_eq!(committed(&broker), 80);
    let earliest = broker.cli(
        &[
            "group",
            "reset-offsets",
            "tools",
            "--topic",
            "t",
            "--to-earliest",
            "--execute",
        ],
        "",
    );
    assert!(earliest.status.success());
    assert_eq!(committed(&broker), 0);
    assert_eq!(read(&broker, "100"), 100, "read again from the start");

    // A group with a member is not deleted; an empty one is, offsets too.
    let mut consumer = Consumer::new(&broker.client(), ConsumerConfig::default());
    block_on(consumer.subscribe(&["t"], "tools")).unwrap();
    let refused = broker.cli(&["group", "delete", "tools"], "");
    assert!(!refused.status.success(), "deleted a group with a member");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("NonEmptyGroup"));
    block_on(consumer.close()).unwrap();
    let deleted = broker.cli(&["group", "delete", "tools"], "");
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let listed = String::from_utf8_lossy(&broker.cli(&["group", "list"], "").stdout).into_owned();
    assert!(!listed.contains("tools"), "{listed}");
}

#[test]
fn a_static_member_restarting_within_its_session_keeps_its_partitions() {
    let broker = Broker::start_with(2, &GROUP_FLAGS);
    block_on(Admin::new(broker.client()).create_topic("s", 4, &[])).unwrap();
    let member = |instance: &str| {
        let config = ConsumerConfig {
            instance_id: Some(instance.into()),
            session_timeout: Some(Duration::from_secs(5)),
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(&broker.client(), config);
        block_on(consumer.subscribe(&["s"], "static")).unwrap();
        consumer
    };
    let owned = |consumer: &mut Consumer, count: usize| {
        wait_for(Duration::from_secs(20), "the assignment", || {
            block_on(consumer.poll(Duration::from_millis(100))).unwrap();
            consumer.assignment().len() == count
        });
        consumer.assignment().into_iter().collect::<BTreeSet<_>>()
    };
    let mut a = member("a");
    let mut b = member("b");
    let (mut a_owned, b_owned) = (owned(&mut a, 2), owned(&mut b, 2));
    // Wait until both see their final two (a may have held all four first).
    wait_for(Duration::from_secs(20), "a stable split", || {
        block_on(a.poll(Duration::from_millis(100))).unwrap();
        a_owned = a.assignment().into_iter().collect();
        a_owned.len() == 2 && a_owned.is_disjoint(&b_owned)
    });
    // a leaves as a static member and comes back within its session.
    block_on(a.close()).unwrap();
    for _ in 0..5 {
        block_on(b.poll(Duration::from_millis(100))).unwrap();
    }
    assert_eq!(b.assignment().len(), 2, "b did not take a's partitions");
    let mut back = member("a");
    assert_eq!(owned(&mut back, 2), a_owned, "a got its partitions back");
    block_on(back.close()).unwrap();
    block_on(b.close()).unwrap();
}
