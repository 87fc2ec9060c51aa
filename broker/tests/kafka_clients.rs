//! Real Kafka clients against a real `fjord serve`'s Kafka listener: kcat,
//! confluent-kafka (librdkafka) and kafka-python, installed by
//! `.ci/kafka-clients.sh` (kcat on the PATH, the Python clients in the
//! virtualenv `FJORD_KAFKA_VENV`, default `.ci/kafka-venv`). A test whose
//! client is missing says so and passes without running.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Broker, free_port};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A broker with a Kafka listener on a free loopback port.
fn kafka_broker() -> (Broker, SocketAddr) {
    kafka_broker_with(2, &[])
}

/// As `kafka_broker`, with `cores` and `extra` arguments.
fn kafka_broker_with(cores: usize, extra: &[&str]) -> (Broker, SocketAddr) {
    let kafka = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = ["--kafka-listen", &kafka.to_string()];
    let broker = Broker::start_with(cores, &[&listen[..], extra].concat());
    (broker, kafka)
}

fn kcat_installed() -> bool {
    let found = Command::new("kcat").arg("-V").output().is_ok();
    if !found {
        eprintln!("skipped: kcat is not installed (.ci/kafka-clients.sh installs it)");
    }
    found
}

/// The virtualenv's python, when the Python clients are installed.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("FJORD_KAFKA_VENV").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/kafka-venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import confluent_kafka, kafka"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "skipped: confluent-kafka / kafka-python not in {} (.ci/kafka-clients.sh installs them)",
            venv.display()
        );
    }
    ok.then_some(python)
}

fn run(mut command: Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn kcat(kafka: SocketAddr, args: &[&str], stdin: &str) -> Vec<u8> {
    let mut command = Command::new("timeout");
    command
        .args(["60", "kcat", "-b", &kafka.to_string()])
        .args(args);
    run(command, stdin).stdout
}

/// Runs a Python client `script` against `kafka` and `topic` (at most
/// `secs` seconds) and reads the JSON it prints.
fn python_json<T: serde::de::DeserializeOwned>(
    python: &std::path::Path,
    script: &str,
    kafka: SocketAddr,
    topic: &str,
    secs: u32,
) -> T {
    let mut command = Command::new("timeout");
    command
        .arg(secs.to_string())
        .arg(python)
        .args(["-c", script, &kafka.to_string(), topic]);
    let out = String::from_utf8(run(command, "").stdout).unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

/// Runs a Python client `script` against a new broker's Kafka listener
/// and a new topic of `partitions`; `None` (the test skips) without the
/// Python clients. The broker (and its Kafka address) is returned to live
/// as long as the test.
fn script_on_new_topic<T: serde::de::DeserializeOwned>(
    script: &str,
    topic: &str,
    partitions: u32,
    secs: u32,
) -> Option<(T, Broker, SocketAddr)> {
    let python = python()?;
    let (broker, kafka) = kafka_broker();
    create_topic(&broker, topic, partitions);
    Some((
        python_json(&python, script, kafka, topic, secs),
        broker,
        kafka,
    ))
}

fn create_topic(broker: &Broker, topic: &str, partitions: u32) {
    let out = broker.cli(
        &[
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lines(n: usize) -> String {
    (0..n)
        .map(|i| format!("key{}:value {i} {}\n", i % 5, "x".repeat(i % 40)))
        .collect()
}

#[test]
fn kcat_produces_and_consumes_byte_identical() {
    if !kcat_installed() {
        return;
    }
    let (broker, kafka) = kafka_broker();
    let listed = String::from_utf8(kcat(kafka, &["-L"], "")).unwrap();
    assert!(listed.contains(&format!("broker 0 at {kafka}")), "{listed}");
    create_topic(&broker, "k1", 1);
    let input = lines(500);
    kcat(kafka, &["-P", "-t", "k1", "-K:", "-X", "acks=all"], &input);
    let out = kcat(
        kafka,
        &["-C", "-t", "k1", "-o", "beginning", "-e", "-f", "%k:%s\n"],
        "",
    );
    assert_eq!(String::from_utf8(out).unwrap(), input);
    // From an offset, and the offsets themselves.
    let out = kcat(
        kafka,
        &[
            "-C", "-t", "k1", "-p", "0", "-o", "498", "-e", "-f", "%o %k\n",
        ],
        "",
    );
    assert_eq!(String::from_utf8(out).unwrap(), "498 key3\n499 key4\n");
    // acks=0: no answer to wait for, yet every record lands, in order,
    // after the ones before.
    let more = lines(200);
    kcat(kafka, &["-P", "-t", "k1", "-K:", "-X", "acks=0"], &more);
    let out = kcat(
        kafka,
        &["-C", "-t", "k1", "-o", "500", "-c", "200", "-f", "%k:%s\n"],
        "",
    );
    assert_eq!(String::from_utf8(out).unwrap(), more);
}

#[test]
fn native_and_kafka_clients_read_each_other() {
    if !kcat_installed() {
        return;
    }
    let (broker, kafka) = kafka_broker();
    create_topic(&broker, "native", 1);
    let input = lines(200);
    let produced = broker.cli(&["produce", "native", "--key-separator", ":"], &input);
    assert!(produced.status.success());
    let out = kcat(
        kafka,
        &[
            "-C",
            "-t",
            "native",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k:%s\n",
        ],
        "",
    );
    assert_eq!(String::from_utf8(out).unwrap(), input);

    create_topic(&broker, "kafka", 1);
    kcat(kafka, &["-P", "-t", "kafka", "-K:"], &input);
    let consumed = broker.cli(
        &[
            "consume",
            "kafka",
            "--from-beginning",
            "--max-messages",
            "200",
            "--print-key",
        ],
        "",
    );
    assert!(consumed.status.success());
    let got: String = String::from_utf8(consumed.stdout)
        .unwrap()
        .lines()
        .map(|l| l.replacen('\t', ":", 1) + "\n")
        .collect();
    assert_eq!(got, input);
}

/// confluent-kafka: acks=all with keys and headers; a consumer with a
/// group id that assigns itself a partition from the beginning, commits
/// by hand and reads the commit back.
const CONFLUENT: &str = r#"
import sys, json
from confluent_kafka import Producer, Consumer, TopicPartition, OFFSET_BEGINNING
boot, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": boot, "acks": "all", "linger.ms": 5})
errors = []
def done(err, msg):
    if err: errors.append(str(err))
for i in range(300):
    p.produce(topic, key=b"k%d" % (i % 7), value=b"v%d" % i, partition=i % 2,
              headers=[("h", b"%d" % i)], on_delivery=done)
assert p.flush(30) == 0 and not errors, errors
c = Consumer({"bootstrap.servers": boot, "group.id": "g-confluent",
              "enable.auto.commit": False})
c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING), TopicPartition(topic, 1, OFFSET_BEGINNING)])
got = []
while len(got) < 300:
    m = c.poll(10)
    assert m is not None, "timed out after %d" % len(got)
    assert m.error() is None, m.error()
    got.append((m.partition(), m.offset(), m.key().decode(), m.value().decode(), m.headers()[0][1].decode()))
c.commit(offsets=[TopicPartition(topic, 0, 150), TopicPartition(topic, 1, 149)], asynchronous=False)
committed = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
c.close()
print(json.dumps({"got": got, "committed": [t.offset for t in committed]}))
"#;

#[test]
fn confluent_kafka_produces_consumes_and_commits() {
    let Some((v, _broker, _)) = script_on_new_topic::<serde_json::Value>(CONFLUENT, "conf", 2, 120)
    else {
        return;
    };
    let got = v["got"].as_array().unwrap();
    assert_eq!(got.len(), 300);
    for m in got {
        let (partition, offset) = (m[0].as_i64().unwrap(), m[1].as_i64().unwrap());
        let i: i64 = m[3].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(partition, i % 2, "{m}");
        assert_eq!(offset, i / 2, "{m}");
        assert_eq!(m[2].as_str().unwrap(), format!("k{}", i % 7));
        assert_eq!(m[4].as_str().unwrap(), i.to_string());
    }
    assert_eq!(v["committed"], serde_json::json!([150, 149]));
}

/// kafka-python: a producer (acks all, keys) and a consumer that assigns
/// itself the partition and reads from the beginning.
const KAFKA_PYTHON: &str = r#"
import sys, json
from kafka import KafkaProducer, KafkaConsumer, TopicPartition
boot, topic = sys.argv[1], sys.argv[2]
# Idempotent: InitProducerId, then sequences the broker checks.
p = KafkaProducer(bootstrap_servers=boot, acks="all", enable_idempotence=True)
for i in range(100):
    p.send(topic, key=b"k%d" % i, value=b"v%d" % i, partition=0)
p.flush(30)
p.close()
c = KafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False, consumer_timeout_ms=10000)
tp = TopicPartition(topic, 0)
c.assign([tp])
c.seek_to_beginning(tp)
got = []
for m in c:
    got.append((m.offset, m.key.decode(), m.value.decode()))
    if len(got) == 100:
        break
c.close()
print(json.dumps(got))
"#;

#[test]
fn kafka_python_produces_and_consumes() {
    let Some((got, _broker, _)) =
        script_on_new_topic::<Vec<(i64, String, String)>>(KAFKA_PYTHON, "kp", 1, 120)
    else {
        return;
    };
    let want: Vec<(i64, String, String)> = (0..100)
        .map(|i| (i, format!("k{i}"), format!("v{i}")))
        .collect();
    assert_eq!(got, want);
}

/// Sends `bytes` on a fresh connection and returns what comes back before
/// the broker closes it or `wait` passes.
fn exchange(kafka: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(kafka).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

fn request(api: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&api.to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    frame.extend_from_slice(body);
    let mut out = (frame.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

#[test]
fn hostile_bytes_on_the_kafka_port_leave_the_broker_serving() {
    let (mut broker, kafka) = kafka_broker();
    let quick = Duration::from_secs(2);
    // Random bytes, a 2 GiB size, a negative size, a truncated request.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    exchange(kafka, &random, quick);
    assert!(exchange(kafka, &0x8000_0000u32.to_be_bytes(), quick).is_empty());
    assert!(exchange(kafka, &(-5i32).to_be_bytes(), quick).is_empty());
    let mut truncated = request(3, 1, 1, &[0, 0, 0, 1]);
    truncated.truncate(truncated.len() - 2);
    exchange(kafka, &truncated, quick);
    // A Metadata request of a few bytes claiming 2^31 topics.
    assert!(exchange(kafka, &request(3, 1, 2, &[0x7f, 0xff, 0xff, 0xff]), quick).is_empty());

    // An unknown API and an unsupported version are answered, in order,
    // on a connection that stays open.
    let mut both = request(1000, 0, 41, &[]);
    both.extend(request(1, 3, 42, &[]));
    both.extend(request(18, 0, 43, &[]));
    let out = exchange(kafka, &both, quick);
    let mut at = 0;
    for correlation_id in [41i32, 42, 43] {
        let size = i32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        let frame = &out[at + 4..at + 4 + size];
        assert_eq!(frame[..4], correlation_id.to_be_bytes());
        let error = i16::from_be_bytes([frame[4], frame[5]]);
        assert_eq!(error, if correlation_id == 43 { 0 } else { 35 });
        at += 4 + size;
    }
    assert_eq!(at, out.len());

    assert!(broker.is_running(), "the broker survived");
    if kcat_installed() {
        create_topic(&broker, "after", 1);
        kcat(kafka, &["-P", "-t", "after", "-K:"], "a:1\n");
        let out = kcat(
            kafka,
            &[
                "-C",
                "-t",
                "after",
                "-o",
                "beginning",
                "-e",
                "-f",
                "%k:%s\n",
            ],
            "",
        );
        assert_eq!(out, b"a:1\n");
    }
}

/// A Produce v3 body: one partition of `topic` with `records`.
fn produce_body(acks: i16, topic: &str, records: &[u8]) -> Vec<u8> {
    let mut body = (-1i16).to_be_bytes().to_vec(); // no transactional id
    body.extend_from_slice(&acks.to_be_bytes());
    body.extend_from_slice(&5_000i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&(records.len() as i32).to_be_bytes());
    body.extend_from_slice(records);
    body
}

/// An acks=0 Produce gets no answer; when a partition refuses it the
/// connection closes, as Kafka's does, so that the producer notices (a
/// leader that moved) instead of sending on into the void.
#[test]
fn a_refused_acks_0_produce_closes_the_connection() {
    let (broker, kafka) = kafka_broker();
    create_topic(&broker, "zero", 1);
    let mut builder = fjord_core::BatchBuilder::new();
    builder.push(0, None, Some(b"v"), &[]);
    let records = builder.build();
    let then_versions = |produce: Vec<u8>| {
        let mut bytes = produce;
        bytes.extend(request(18, 0, 7, &[]));
        exchange(kafka, &bytes, Duration::from_secs(2))
    };
    let taken = then_versions(request(0, 3, 6, &produce_body(0, "zero", &records)));
    assert_eq!(
        taken[4..8],
        7i32.to_be_bytes(),
        "only ApiVersions is answered"
    );
    let refused = then_versions(request(0, 3, 6, &produce_body(0, "nowhere", &records)));
    assert!(
        refused.is_empty(),
        "answered after a refused acks=0 produce"
    );
}

/// confluent-kafka consumers in one group (Kafka's classic protocol: the
/// clients' own range assignor, JoinGroup/SyncGroup through Fjord's
/// coordinator): three share six partitions, one leaves, the other two
/// take its partitions over and resume from the committed offsets.
const CONFLUENT_GROUP: &str = r#"
import sys, json, time
from confluent_kafka import Producer, Consumer
boot, topic = sys.argv[1], sys.argv[2]
def produce(lo, hi):
    p = Producer({"bootstrap.servers": boot, "acks": "all", "enable.idempotence": True})
    for i in range(lo, hi):
        p.produce(topic, key=b"k%d" % i, value=b"%d" % i, partition=i % 6)
    assert p.flush(30) == 0
produce(0, 600)
conf = {"bootstrap.servers": boot, "group.id": "cg", "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
members = [Consumer(dict(conf)) for _ in range(3)]
for c in members:
    c.subscribe([topic])
seen = []
failed_commits = 0
def drain(consumers, want, deadline_s):
    global failed_commits
    end = time.time() + deadline_s
    while len(set(seen)) < want and time.time() < end:
        for c in consumers:
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                seen.append((m.partition(), m.offset()))
                try:
                    c.commit(message=m, asynchronous=False)
                except Exception:
                    # A rebalance under way (REBALANCE_IN_PROGRESS), as on
                    # Kafka: the record may be read again by its next owner.
                    failed_commits += 1
drain(members, 600, 60)
sizes = sorted(len(c.assignment()) for c in members)
members[0].close()
produce(600, 900)
drain(members[1:], 900, 60)
after = sorted(len(c.assignment()) for c in members[1:])
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": boot})
listed = [g.group_id for g in admin.list_consumer_groups().result(timeout=20).valid]
described = admin.describe_consumer_groups(["cg"])["cg"].result(timeout=20)
owned = sorted(tp.partition for m in described.members for tp in m.assignment.topic_partitions)
for c in members[1:]:
    c.close()
deleted = admin.delete_consumer_groups(["cg"])["cg"].result(timeout=20) is None
print(json.dumps({"seen": seen, "sizes": sizes, "after": after, "failed_commits": failed_commits,
                  "listed": listed, "described": [len(described.members), str(described.state), owned],
                  "deleted": deleted}))
"#;

#[test]
fn confluent_kafka_consumers_share_a_topic_in_a_group() {
    let Some((v, _broker, _)) =
        script_on_new_topic::<serde_json::Value>(CONFLUENT_GROUP, "grp", 6, 180)
    else {
        return;
    };
    assert_eq!(
        v["sizes"],
        serde_json::json!([2, 2, 2]),
        "range over three members"
    );
    assert_eq!(
        v["after"],
        serde_json::json!([3, 3]),
        "the leaver's partitions moved"
    );
    // The admin tools see the group: listed, described with the members'
    // assignments (decoded by the client from the classic protocol's
    // bytes), deleted once empty.
    assert!(
        v["listed"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("cg")),
        "{}",
        v["listed"]
    );
    assert_eq!(v["described"][0], 2);
    assert!(
        v["described"][1].as_str().unwrap().contains("STABLE"),
        "{}",
        v["described"]
    );
    assert_eq!(v["described"][2], serde_json::json!([0, 1, 2, 3, 4, 5]));
    assert_eq!(v["deleted"], true);
    let seen: Vec<(i64, i64)> = serde_json::from_value(v["seen"].clone()).unwrap();
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 900, "every record consumed");
    // Read twice only where a commit failed in a rebalance.
    let failed = v["failed_commits"].as_u64().unwrap() as usize;
    assert!(
        seen.len() <= 900 + failed * 600,
        "{} reads, {failed} failed commits",
        seen.len()
    );
}

/// KIP-345 with librdkafka: two static members share a topic; one's
/// process stops (a static member sends no LeaveGroup) and a new one of the
/// same `group.instance.id` takes its place within the session.
const CONFLUENT_STATIC: &str = r#"
import sys, json, time
from confluent_kafka import Consumer
boot, topic = sys.argv[1], sys.argv[2]
events = []
def member(instance, name):
    c = Consumer({"bootstrap.servers": boot, "group.id": "sg", "group.instance.id": instance,
                  "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
                  "heartbeat.interval.ms": 500})
    c.subscribe([topic],
                on_assign=lambda c, ps: events.append([name, "assign", sorted(p.partition for p in ps)]),
                on_revoke=lambda c, ps: events.append([name, "revoke", sorted(p.partition for p in ps)]))
    return c
def owned(c):
    return sorted(p.partition for p in c.assignment())
def poll_until(cs, done, secs):
    end = time.time() + secs
    while not done() and time.time() < end:
        for c in cs:
            c.poll(0.1)
a, b = member("a", "a"), member("b", "b")
poll_until([a, b], lambda: owned(a) and owned(b) and len(owned(a)) + len(owned(b)) == 4, 60)
poll_until([a, b], lambda: False, 2)
before = [owned(a), owned(b)]
mark = len(events)
b.close()
b = member("b", "b2")
poll_until([a, b], lambda: owned(b), 30)
poll_until([a, b], lambda: False, 3)
after = [owned(a), owned(b)]
later = events[mark:]
a.close()
b.close()
print(json.dumps({"before": before, "after": after, "events": later}))
"#;

/// A static member's new process takes its place with no rebalance: the
/// other member is not touched, and each holds the partitions it held.
#[test]
fn a_static_confluent_kafka_member_restarts_without_a_rebalance() {
    let Some((v, _broker, _)) =
        script_on_new_topic::<serde_json::Value>(CONFLUENT_STATIC, "static", 4, 120)
    else {
        return;
    };
    assert_eq!(v["after"], v["before"], "each holds what it held: {v}");
    let events = v["events"].as_array().unwrap();
    assert!(
        events.iter().all(|e| e[0] != "a"),
        "the other member was rebalanced: {v}"
    );
    assert!(
        events.iter().any(|e| e[0] == "b2" && e[1] == "assign"),
        "{v}"
    );
}

/// kafka-python's admin client: commits a group's offsets, lists them,
/// deletes one partition's (OffsetDelete) and lists again.
const KAFKA_PYTHON_OFFSETS: &str = r#"
import sys, json
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.structs import OffsetAndMetadata
boot, topic = sys.argv[1], sys.argv[2]
admin = KafkaAdminClient(bootstrap_servers=boot)
t0, t1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
admin.alter_group_offsets("og", {t0: OffsetAndMetadata(7, "", -1), t1: OffsetAndMetadata(9, "", -1)})
def listed():
    got = admin.list_group_offsets("og")["og"]
    return sorted([tp.partition, o.offset] for tp, o in got.items())
before = listed()
deleted = admin.delete_group_offsets("og", [t0])
after = listed()
admin.close()
print(json.dumps({"before": before, "after": after}))
"#;

#[test]
fn kafka_python_commits_lists_and_deletes_group_offsets() {
    let Some((v, _broker, _)) =
        script_on_new_topic::<serde_json::Value>(KAFKA_PYTHON_OFFSETS, "og", 2, 120)
    else {
        return;
    };
    assert_eq!(v["before"], serde_json::json!([[0, 7], [1, 9]]));
    assert_eq!(
        v["after"],
        serde_json::json!([[1, 9]]),
        "partition 0's commit deleted"
    );
}

/// confluent-kafka: each codec's batches stored as the client compressed
/// them and read back; in each, the first record at a timestamp found
/// exactly (inside the compressed batch), and a consumer starting there.
const CONFLUENT_CODECS: &str = r#"
import sys, json, time
from confluent_kafka import Producer, Consumer, TopicPartition
boot, topic = sys.argv[1], sys.argv[2]
codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
for p, codec in enumerate(codecs):
    pr = Producer({"bootstrap.servers": boot, "compression.type": codec, "linger.ms": 50})
    for i in range(200):
        pr.produce(topic, value=(codec + "-%d-" % i) * 20, partition=p, timestamp=1_000_000 + i)
    assert pr.flush(30) == 0
c = Consumer({"bootstrap.servers": boot, "group.id": "codecs", "enable.auto.commit": False})
got = {}
for p, codec in enumerate(codecs):
    c.assign([TopicPartition(topic, p, 0)])
    values = []
    end = time.time() + 30
    while len(values) < 200 and time.time() < end:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            values.append(m.value().decode())
    got[codec] = values == [(codec + "-%d-" % i) * 20 for i in range(200)]
# The first record at or after a timestamp, in every codec's partition
# (the 200 records of each went out in one or a few batches).
asked = [TopicPartition(topic, p, 1_000_150) for p in range(len(codecs))]
found = c.offsets_for_times(asked, timeout=10)
at_time = {codecs[tp.partition]: tp.offset for tp in found}
# A consumer starting there reads record 150 first.
c.assign([TopicPartition(topic, 4, at_time["zstd"])])
m = None
while m is None or m.error() is not None:
    m = c.poll(1)
# A compacted topic refuses a keyless record in a compressed batch too.
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({"bootstrap.servers": boot})
a.create_topics([NewTopic("zc", 1, config={"cleanup.policy": "compact"})])["zc"].result(30)
errors = []
pr = Producer({"bootstrap.servers": boot, "compression.type": "lz4", "retries": 0})
for key in (b"k", None):
    pr.produce("zc", key=key, value=b"v" * 4000, on_delivery=lambda e, m: errors.append(e and e.name()))
    pr.flush(30)
first = m.value().decode()
c.close()
print(json.dumps({"got": got, "at_time": at_time, "first": first, "compacted": errors}))
"#;

#[test]
fn compressed_batches_round_trip_and_a_timestamp_finds_its_offset() {
    let Some((v, _broker, _)) =
        script_on_new_topic::<serde_json::Value>(CONFLUENT_CODECS, "z", 5, 120)
    else {
        return;
    };
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        assert_eq!(v["got"][codec], true, "{codec}: {v}");
        assert_eq!(v["at_time"][codec], 150, "{codec}: {v}");
    }
    assert_eq!(v["first"], "zstd-150-".repeat(20));
    assert_eq!(
        v["compacted"],
        serde_json::json!([null, "INVALID_RECORD"]),
        "a compacted topic and lz4 batches"
    );
}

/// confluent-kafka overwriting 20 keys 19 times in each codec's partition
/// of a compacted topic, a batch a round, and a 20th time the even ones
/// only (so the 19th round's batch is cleaned in part: rewritten), then
/// fillers of keys of their own, which roll the overwrites out of the active
/// segment; then reading each partition from the start until every key is
/// there once: how many records and keys it read, and whether each key's
/// value is its newest.
const CONFLUENT_COMPACTED_CODECS: &str = r#"
import sys, json, time, random
from confluent_kafka import Producer, Consumer, TopicPartition
boot, topic = sys.argv[1], sys.argv[2]
codecs = ["gzip", "snappy", "lz4", "zstd"]
def value(codec, r, k):
    # Hex of random bytes: compressed to about half, so that the rounds
    # fill segments in every codec.
    return "%s-r%d-k%d-" % (codec, r, k) + random.Random(r * 100 + k).randbytes(100).hex()
for p, codec in enumerate(codecs):
    pr = Producer({"bootstrap.servers": boot, "compression.type": codec, "linger.ms": 20})
    for r in range(20):
        for k in range(0, 20, 2 if r == 19 else 1):
            pr.produce(topic, key=b"k%d" % k, value=value(codec, r, k), partition=p)
        assert pr.flush(30) == 0
    for f in range(100):
        pr.produce(topic, key=b"f%d" % f, value=value(codec, 99, f), partition=p)
    assert pr.flush(30) == 0
c = Consumer({"bootstrap.servers": boot, "group.id": "cc", "enable.auto.commit": False})
def read(p):
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
    c.assign([TopicPartition(topic, p, lo)])
    out, end = [], time.time() + 20
    while (not out or out[-1][0] < hi - 1) and time.time() < end:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            out.append((m.offset(), m.key().decode(), m.value().decode()))
    return out
result, deadline = {}, time.time() + 90
for p, codec in enumerate(codecs):
    while True:
        got = read(p)
        keys = set(k for _, k, _ in got)
        if len(got) == len(keys) or time.time() > deadline:
            break
        time.sleep(0.5)
    last = dict((k, v) for _, k, v in got)
    newest = all(last.get("k%d" % k) == value(codec, 19 - k % 2, k) for k in range(20))
    result[codec] = {"records": len(got), "keys": len(keys), "newest": newest}
c.close()
print(json.dumps(result))
"#;

/// The batches of the segment files under `dir`, each as (codec bits,
/// record count, offsets spanned), walked by their lengths to the
/// preallocated zeros.
fn segment_batches(dir: &std::path::Path) -> Vec<(i16, i32, i32)> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let mut batches = Vec::new();
    for log in logs {
        let bytes = std::fs::read(&log).unwrap();
        let mut rest = &bytes[..];
        while let Ok(len) = fjord_core::Batch::peek_len(rest) {
            let Ok(batch) = fjord_core::Batch::validate(&rest[..len.min(rest.len())]) else {
                break;
            };
            let span = batch.last_offset_delta() + 1;
            batches.push((batch.attributes() & 7, batch.record_count(), span));
            rest = &rest[len..];
        }
    }
    batches
}

/// Kafka's cleaner cleans compressed batches too, and writes what they keep
/// compressed again: confluent-kafka's gzip, snappy, lz4 and zstd batches on
/// a compacted topic are cleaned to the newest value of each key, which
/// librdkafka reads back, also from a batch the cleaner rewrote (it holds
/// fewer records than offsets), and every batch on disk that holds records
/// is still in its partition's codec.
#[test]
fn compressed_batches_of_a_compacted_topic_are_cleaned_and_stay_compressed() {
    let Some(python) = python() else {
        return;
    };
    let (broker, kafka) = kafka_broker_with(1, &["--log-cleaner-backoff-ms", "200"]);
    let configs = [
        "cleanup.policy=compact",
        "segment.bytes=4096",
        "min.cleanable.dirty.ratio=0.01",
    ];
    let mut args = vec!["topic", "create", "cc", "--partitions", "4"];
    for config in &configs {
        args.extend(["--config", config]);
    }
    let out = broker.cli(&args, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = python_json(&python, CONFLUENT_COMPACTED_CODECS, kafka, "cc", 240);
    let dirs = broker.partition_dirs("cc");
    for (p, codec) in ["gzip", "snappy", "lz4", "zstd"].into_iter().enumerate() {
        assert_eq!(v[codec]["keys"], 120, "{codec}: {v}");
        assert_eq!(v[codec]["records"], 120, "{codec}: cleaned? {v}");
        assert_eq!(v[codec]["newest"], true, "{codec}: {v}");
        let batches = segment_batches(&dirs[p]);
        let wrong: Vec<_> = batches
            .iter()
            .filter(|&&(bits, records, _)| records > 0 && bits != p as i16 + 1)
            .collect();
        assert!(wrong.is_empty(), "{codec}: {wrong:?} of {batches:?}");
        assert!(
            batches
                .iter()
                .any(|&(_, records, span)| records > 0 && records < span),
            "{codec}: no batch rewritten: {batches:?}"
        );
    }
}

/// A confluent-kafka group member that prints its assignment's size on
/// every change and commits what it reads, until killed.
const CONFLUENT_MEMBER: &str = r#"
import sys
from confluent_kafka import Consumer
boot, topic = sys.argv[1], sys.argv[2]
c = Consumer({"bootstrap.servers": boot, "group.id": "kg", "auto.offset.reset": "earliest",
              "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "enable.auto.commit": False})
def assigned(consumer, partitions):
    print("assigned", len(consumer.assignment()) + len(partitions), flush=True)
def revoked(consumer, partitions):
    print("assigned 0", flush=True)
c.subscribe([topic], on_assign=assigned, on_revoke=revoked)
while True:
    m = c.poll(0.2)
    if m is not None and m.error() is None:
        c.commit(message=m, asynchronous=False)
"#;

#[test]
fn a_killed_kafka_member_is_replaced_and_commits_survive_a_broker_kill() {
    let Some(python) = python() else {
        return;
    };
    let (mut broker, kafka) = kafka_broker();
    create_topic(&broker, "kg", 4);
    let dir = tempfile::tempdir().unwrap();
    let member = |name: &str| {
        let out = dir.path().join(name);
        let child = Command::new(&python)
            .args(["-c", CONFLUENT_MEMBER, &kafka.to_string(), "kg"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (child, out)
    };
    // The size of the member's last assignment, as it printed it.
    let last_assigned = |out: &PathBuf| -> Option<usize> {
        std::fs::read_to_string(out)
            .ok()?
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("assigned ")?.parse().ok())
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (mut a, a_out) = member("a");
    let (mut b, b_out) = member("b");
    wait("two members with two partitions each", &|| {
        last_assigned(&a_out) == Some(2) && last_assigned(&b_out) == Some(2)
    });
    // `fjord group describe` reads the classic members' assignments.
    let described =
        futures::executor::block_on(fjord_client::Admin::new(broker.client()).describe_group("kg"))
            .unwrap();
    let owned: std::collections::BTreeSet<_> = described
        .members
        .iter()
        .flat_map(|m| m.assignment.iter().cloned())
        .collect();
    assert_eq!(owned.len(), 4, "{described:?}");
    a.kill().unwrap();
    a.wait().unwrap();
    wait("the survivor owns all four", &|| {
        last_assigned(&b_out) == Some(4)
    });
    // Records produced now are read and committed by the survivor.
    let lines: String = (0..40).map(|i| format!("{i}\n")).collect();
    let produced = broker.cli(&["produce", "kg"], &lines);
    assert!(produced.status.success());
    let admin = fjord_client::Admin::new(broker.client());
    let committed = || -> i64 {
        futures::executor::block_on(admin.describe_group("kg"))
            .map(|g| g.offsets.iter().map(|o| o.committed).sum())
            .unwrap_or(0)
    };
    wait("the survivor committed all 40", &|| committed() == 40);
    b.kill().unwrap();
    b.wait().unwrap();
    broker.kill();
    broker.restart();
    let admin = fjord_client::Admin::new(broker.client());
    let after: i64 = futures::executor::block_on(admin.describe_group("kg"))
        .unwrap()
        .offsets
        .iter()
        .map(|o| o.committed)
        .sum();
    assert_eq!(after, 40, "commits survive the broker's SIGKILL");
}

/// confluent-kafka's AdminClient: describe a topic's configs, change them
/// incrementally (a good value, a list append, a bad value, an APPEND on a
/// scalar, a DELETE), replace them with the legacy AlterConfigs, describe a
/// broker and the cluster.
const CONFLUENT_CONFIGS: &str = r#"
import sys, json, warnings
from confluent_kafka import KafkaException
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                   ConfigResource, ConfigSource, ResourceType)
warnings.simplefilter("ignore")  # alter_configs is deprecated, still served
boot, topic = sys.argv[1], sys.argv[2]
a = AdminClient({"bootstrap.servers": boot})

def outcome(futures):
    [(_, f)] = futures.items()
    try:
        return f.result(30)
    except KafkaException as e:
        return e.args[0].name()

def describe(kind=ResourceType.TOPIC, name=topic):
    got = outcome(a.describe_configs([ConfigResource(kind, name)]))
    if isinstance(got, str):
        return got
    return {k: [e.value, e.is_default, ConfigSource(e.source).name] for k, e in got.items()}

def alter(key, value, op=AlterConfigOpType.SET, name=topic):
    entry = ConfigEntry(key, value, incremental_operation=op)
    res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[entry])
    return outcome(a.incremental_alter_configs([res])) or "ok"

out = {"before": describe()}
out["set"] = alter("retention.ms", "3600000")
out["append"] = alter("cleanup.policy", "compact", AlterConfigOpType.APPEND)
out["after"] = describe()
out["bad"] = alter("retention.ms", "soon")
out["not_list"] = alter("retention.ms", "1", AlterConfigOpType.APPEND)
out["unknown_topic_alter"] = alter("retention.ms", "1", name="nope")
out["delete"] = alter("cleanup.policy", None, AlterConfigOpType.DELETE)
out["deleted"] = describe()
out["unknown_topic"] = describe(name="nope")
out["broker"] = describe(ResourceType.BROKER, "0")
legacy = ConfigResource(ResourceType.TOPIC, topic, set_config={"fsync": "always"})
out["replace"] = outcome(a.alter_configs([legacy])) or "ok"
out["replaced"] = {k: v[0] for k, v in describe().items() if not v[1]}
broker = ConfigResource(ResourceType.BROKER, "0", set_config={"log.retention.ms": "1"})
out["broker_alter"] = outcome(a.alter_configs([broker]))
c = a.describe_cluster().result(30)
out["cluster"] = {"id": c.cluster_id, "controller": c.controller.id,
                  "nodes": [[n.id, n.host, n.port] for n in c.nodes]}
print(json.dumps(out))
"#;

#[test]
fn confluent_kafka_describes_and_alters_configs() {
    let Some((v, broker, kafka)) =
        script_on_new_topic::<serde_json::Value>(CONFLUENT_CONFIGS, "cfg", 1, 120)
    else {
        return;
    };
    let before = v["before"].as_object().unwrap();
    let keys: Vec<&str> = before.keys().map(String::as_str).collect();
    for key in fjord_core::topic::CONFIG_KEYS {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let default = |value: &str| serde_json::json!([value, true, "DEFAULT_CONFIG"]);
    let topic = |value: &str| serde_json::json!([value, false, "DYNAMIC_TOPIC_CONFIG"]);
    assert_eq!(before["retention.ms"], default("604800000"));
    assert_eq!((&v["set"], &v["append"]), (&"ok".into(), &"ok".into()));
    assert_eq!(v["after"]["retention.ms"], topic("3600000"));
    assert_eq!(v["after"]["cleanup.policy"], topic("compact,delete"));
    assert_eq!(v["bad"], "INVALID_CONFIG");
    assert_eq!(v["not_list"], "INVALID_REQUEST");
    assert_eq!(v["unknown_topic_alter"], "UNKNOWN_TOPIC_OR_PART");
    assert_eq!(v["delete"], "ok");
    assert_eq!(v["deleted"]["cleanup.policy"], default("delete"));
    assert_eq!(
        v["deleted"]["retention.ms"],
        topic("3600000"),
        "a refused change leaves the topic as it was"
    );
    assert_eq!(v["unknown_topic"], "UNKNOWN_TOPIC_OR_PART");
    assert_eq!(v["broker"], serde_json::json!({}));
    // The legacy AlterConfigs replaces the whole set: retention.ms is back
    // to its default.
    assert_eq!(v["replace"], "ok");
    assert_eq!(v["replaced"], serde_json::json!({"fsync": "always"}));
    assert_eq!(v["broker_alter"], "INVALID_REQUEST");
    let port = i64::from(kafka.port());
    assert_eq!(
        v["cluster"],
        serde_json::json!({"id": "fjord", "controller": 0, "nodes": [[0, "127.0.0.1", port]]})
    );
    // The native describe reads the same metadata.
    let out = broker.cli(&["topic", "describe", "cfg"], "");
    let described = String::from_utf8(out.stdout).unwrap();
    assert!(
        described
            .lines()
            .any(|l| l.split_whitespace().eq(["fsync", "always"])),
        "{described}"
    );
}

/// kafka-python's KafkaAdminClient: describe every config, then an
/// IncrementalAlterConfigs that only validates, then one that applies.
const KAFKA_PYTHON_CONFIGS: &str = r#"
import sys, json
from kafka.admin import KafkaAdminClient, ConfigResource, ConfigResourceType
boot, topic = sys.argv[1], sys.argv[2]
a = KafkaAdminClient(bootstrap_servers=boot)
res = lambda configs=None: ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)
def describe():
    got = a.describe_configs([res()], config_filter="all")["topic"][topic]
    return {k: [c["value"], c["config_source"]] for k, c in got.items()}
out = {"before": describe()}
out["validated"] = a.alter_configs([res({"segment.ms": "60000"})], validate_only=True)["topic"][topic]
out["unchanged"] = describe()["segment.ms"]
out["altered"] = a.alter_configs([res({"segment.ms": "60000"})])["topic"][topic]
out["after"] = describe()["segment.ms"]
print(json.dumps(out))
"#;

#[test]
fn kafka_python_describes_and_alters_configs() {
    let Some((v, _broker, _)) =
        script_on_new_topic::<serde_json::Value>(KAFKA_PYTHON_CONFIGS, "kcfg", 1, 120)
    else {
        return;
    };
    assert_eq!(
        v["before"].as_object().unwrap().len(),
        fjord_core::topic::CONFIG_KEYS.len()
    );
    assert_eq!(
        v["before"]["fsync"],
        serde_json::json!(["never", "DEFAULT_CONFIG"])
    );
    assert_eq!(
        (&v["validated"], &v["altered"]),
        (&"OK".into(), &"OK".into())
    );
    assert_eq!(
        v["unchanged"],
        serde_json::json!(["604800000", "DEFAULT_CONFIG"])
    );
    assert_eq!(
        v["after"],
        serde_json::json!(["60000", "DYNAMIC_TOPIC_CONFIG"])
    );
}

/// confluent-kafka's AdminClient.create_partitions: validate-only, a grow
/// from 1 to 3 partitions that producers and consumers see at once, and the
/// refusals (same count, fewer, unknown topic, manual assignment).
const CONFLUENT_CREATE_PARTITIONS: &str = r#"
import sys, json
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions
boot, topic = sys.argv[1], sys.argv[2]
a = AdminClient({"bootstrap.servers": boot})

def grow(count, name=topic, validate=False, assignments=None):
    new = NewPartitions(name, count, assignments) if assignments else NewPartitions(name, count)
    [(_, f)] = a.create_partitions([new], validate_only=validate).items()
    try:
        f.result(30)
        return "ok"
    except KafkaException as e:
        return e.args[0].name()

def count():
    return len(a.list_topics(topic, timeout=10).topics[topic].partitions)

out = {"validated": grow(3, validate=True), "unchanged": count()}
out["grown"] = grow(3)
out["count"] = count()
p = Producer({"bootstrap.servers": boot})
for partition in range(3):
    p.produce(topic, value=b"to %d" % partition, partition=partition)
out["unsent"] = p.flush(30)
c = Consumer({"bootstrap.servers": boot, "group.id": "g", "enable.auto.commit": False})
c.assign([TopicPartition(topic, 2, 0)])
m = c.poll(20)
out["read"] = [m.partition(), m.value().decode()] if m and not m.error() else repr(m and m.error())
c.close()
out["same"] = grow(3)
out["fewer"] = grow(2)
out["unknown"] = grow(4, name="nope")
out["assigned"] = grow(4, assignments=[[0]])
out["offsets_topic"] = grow(99, name="__consumer_offsets")
print(json.dumps(out))
"#;

#[test]
fn confluent_kafka_creates_partitions() {
    let Some((v, broker, _)) =
        script_on_new_topic::<serde_json::Value>(CONFLUENT_CREATE_PARTITIONS, "grown", 1, 60)
    else {
        return;
    };
    assert_eq!(
        (&v["validated"], &v["unchanged"]),
        (&"ok".into(), &1.into())
    );
    assert_eq!((&v["grown"], &v["count"]), (&"ok".into(), &3.into()));
    assert_eq!(v["unsent"], 0);
    assert_eq!(v["read"], serde_json::json!([2, "to 2"]));
    assert_eq!(v["same"], "INVALID_PARTITIONS");
    assert_eq!(v["fewer"], "INVALID_PARTITIONS");
    assert_eq!(v["unknown"], "UNKNOWN_TOPIC_OR_PART");
    assert_eq!(v["assigned"], "INVALID_REQUEST");
    // The group's coordinator created __consumer_offsets; its count holds.
    assert_eq!(v["offsets_topic"], "INVALID_REQUEST");
    // The native describe sees the three, each with its record.
    let out = broker.cli(&["topic", "describe", "grown"], "");
    let described = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        described
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("1"))
            .count(),
        3,
        "{described}"
    );
}

/// kafka-python's describe_log_dirs: the node's data directory with the
/// partitions it holds, their sizes and lags, and the filesystem's bytes.
const KAFKA_PYTHON_LOG_DIRS: &str = r#"
import sys, json, time
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
boot, topic = sys.argv[1], sys.argv[2]
p = KafkaProducer(bootstrap_servers=boot)
for i in range(20):
    p.send(topic, value=b"x" * 100, partition=0)
p.flush(30)
a = KafkaAdminClient(bootstrap_servers=boot)
def sizes(answer):
    [broker] = answer
    [d] = broker["log_dirs"]
    return d, {(t["name"], q["partition_index"]): [q["partition_size"], q["offset_lag"], q["is_future_key"]]
               for t in d["topics"] for q in t["partitions"]}
deadline = time.time() + 15
while True:
    d, got = sizes(a.describe_log_dirs())
    # Acknowledged from staging first: written to the segment soon after.
    if got.get((topic, 0), [0])[0] > 0 or time.time() > deadline:
        break
    time.sleep(0.2)
_, one = sizes(a.describe_log_dirs({topic: [1]}))
print(json.dumps({"dir": d["log_dir"], "error": d["error_code"], "total": d["total_bytes"],
                  "usable": d["usable_bytes"],
                  "all": {"%s-%d" % k: v for k, v in got.items()},
                  "one": {"%s-%d" % k: v for k, v in one.items()}}))
"#;

#[test]
fn kafka_python_describes_log_dirs() {
    let Some((v, broker, _)) =
        script_on_new_topic::<serde_json::Value>(KAFKA_PYTHON_LOG_DIRS, "dirs", 2, 60)
    else {
        return;
    };
    assert_eq!(
        v["dir"].as_str().map(std::path::PathBuf::from),
        Some(broker.data_dir().to_path_buf())
    );
    assert_eq!(v["error"], 0);
    let (total, usable) = (v["total"].as_i64().unwrap(), v["usable"].as_i64().unwrap());
    assert!(total > 0 && (0..=total).contains(&usable), "{v}");
    let size = v["all"]["dirs-0"][0].as_i64().unwrap();
    assert!(size > 2000, "20 records of 100 bytes: {v}");
    assert_eq!(
        (&v["all"]["dirs-0"][1], &v["all"]["dirs-0"][2]),
        (&0.into(), &false.into()),
        "no lag, no future replica"
    );
    assert!(v["all"]["dirs-1"].is_array(), "{v}");
    assert_eq!(v["one"].as_object().unwrap().len(), 1, "{v}");
    assert!(v["one"]["dirs-1"].is_array(), "{v}");
}

/// kafkajs's node_modules, when `.ci/kafka-clients.sh` installed it.
fn kafkajs() -> Option<PathBuf> {
    let dir = std::env::var_os("FJORD_KAFKAJS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/kafkajs"),
        PathBuf::from,
    );
    let modules = dir.join("node_modules");
    let ok = modules.join("kafkajs/package.json").is_file()
        && Command::new("node").arg("--version").output().is_ok();
    if !ok {
        eprintln!(
            "skipped: kafkajs not in {} or node missing (.ci/kafka-clients.sh installs it)",
            modules.display()
        );
    }
    ok.then_some(modules)
}

/// kafkajs: the admin creates a topic, grows it and reads its metadata; two
/// consumers of one group split its partitions; a producer sends keyed,
/// gzip-compressed records with headers and binary values, which the group
/// reads back byte for byte, each exactly once.
const KAFKAJS: &str = r#"
const { Kafka, CompressionTypes, logLevel } = require("kafkajs");
const [boot, topic] = process.argv.slice(1);
const kafka = new Kafka({ clientId: "fjord-test", brokers: [boot], logLevel: logLevel.ERROR });
const hex = (b) => (b ? Buffer.from(b).toString("hex") : null);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, done, ms = 20000) {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) throw new Error("timed out: " + what);
    await sleep(50);
  }
}
(async () => {
  const out = {};
  const admin = kafka.admin();
  await admin.connect();
  out.created = await admin.createTopics({ topics: [{ topic, numPartitions: 2 }], waitForLeaders: true });
  await admin.createPartitions({ topicPartitions: [{ topic, count: 3 }] });
  const meta = await admin.fetchTopicMetadata({ topics: [topic] });
  out.partitions = meta.topics[0].partitions.map((p) => p.partitionId).sort();
  const assigned = {};
  const got = [];
  const consumers = [0, 1].map(() => kafka.consumer({ groupId: "js-group", heartbeatInterval: 500 }));
  for (const [i, c] of consumers.entries()) {
    c.on(c.events.GROUP_JOIN, (e) => { assigned[i] = (e.payload.memberAssignment[topic] || []).slice().sort(); });
    await c.connect();
    await c.subscribe({ topic, fromBeginning: true });
    await c.run({ eachMessage: async ({ partition, message }) => {
      const headers = Object.entries(message.headers || {}).map(([k, v]) => [k, hex(v)]);
      got.push({ member: i, partition, key: hex(message.key), value: hex(message.value), headers });
    } });
  }
  // Both members hold a share of the three partitions before anything is sent.
  await until("two members split the partitions", () =>
    Object.keys(assigned).length === 2 && assigned[0].length > 0 && assigned[1].length > 0
    && assigned[0].concat(assigned[1]).sort().join() === "0,1,2");
  out.assigned = assigned;
  const producer = kafka.producer();
  await producer.connect();
  const sent = [];
  for (let i = 0; i < 30; i++) {
    const value = Buffer.from([...Array(64 + i).keys()].map((b) => (b * 7 + i) % 256));
    const m = { key: Buffer.from("key-" + (i % 5)), value, headers: { n: String(i), bin: Buffer.from([0, 255, i]) } };
    sent.push({ key: hex(m.key), value: hex(value), headers: [["n", hex(Buffer.from(String(i)))], ["bin", hex(m.headers.bin)]] });
    await producer.send({ topic, compression: CompressionTypes.GZIP, messages: [m] });
  }
  await until("30 records read", () => got.length >= 30);
  await sleep(500); // a duplicate would arrive now
  out.sent = sent;
  out.got = got;
  await producer.disconnect();
  for (const c of consumers) await c.disconnect();
  await admin.disconnect();
  console.log(JSON.stringify(out));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[test]
fn kafkajs_produces_consumes_in_a_group_and_administers() {
    let Some(modules) = kafkajs() else {
        return;
    };
    let (_broker, kafka) = kafka_broker();
    let mut command = Command::new("timeout");
    command
        .args(["60", "node", "-e", KAFKAJS, &kafka.to_string(), "js"])
        .env("NODE_PATH", &modules)
        .env("KAFKAJS_NO_PARTITIONER_WARNING", "1");
    let out = String::from_utf8(run(command, "").stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["created"], true);
    assert_eq!(v["partitions"], serde_json::json!([0, 1, 2]));
    let got = v["got"].as_array().unwrap();
    let sent = v["sent"].as_array().unwrap();
    assert_eq!(got.len(), 30, "each record read once: {got:?}");
    let strip = |r: &serde_json::Value| serde_json::json!({"key": r["key"], "value": r["value"], "headers": r["headers"]});
    let mut got_records: Vec<String> = got.iter().map(|r| strip(r).to_string()).collect();
    let mut sent_records: Vec<String> = sent.iter().map(|r| strip(r).to_string()).collect();
    got_records.sort();
    sent_records.sort();
    assert_eq!(
        got_records, sent_records,
        "byte-identical keys, values, headers"
    );
    // Each member read exactly the partitions it was assigned.
    for r in got {
        let member = r["member"].as_u64().unwrap().to_string();
        let mine = v["assigned"][&member].as_array().unwrap();
        assert!(mine.contains(&r["partition"]), "{r} read outside {mine:?}");
    }
}

/// confluent-kafka's AdminClient.delete_records: a log start moved up to an
/// offset and to the high watermark (-1), what ListOffsets earliest and a
/// consumer then see, and the refusals.
const CONFLUENT_DELETE_RECORDS: &str = r#"
import sys, json, time
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
boot, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": boot})
for i in range(100):
    for partition in (0, 1):
        p.produce(topic, value=b"v%d" % i, partition=partition)
p.flush(30)
a = AdminClient({"bootstrap.servers": boot})

def delete(partition, offset, name=topic):
    [(_, f)] = a.delete_records([TopicPartition(name, partition, offset)]).items()
    try:
        return f.result(30).low_watermark
    except KafkaException as e:
        return e.args[0].name()

c = Consumer({"bootstrap.servers": boot, "group.id": "dr", "auto.offset.reset": "earliest",
              "enable.auto.commit": False})
marks = lambda partition: list(c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10))
out = {"deleted": delete(0, 30), "marks0": marks(0)}
c.assign([TopicPartition(topic, 0, 10)])
m = c.poll(20)
out["first"] = [m.offset(), m.value().decode()] if m and not m.error() else repr(m and m.error())
# The oldest record by time is the first one left, not one deleted.
out["by_time"] = c.offsets_for_times([TopicPartition(topic, 0, 0)], timeout=10)[0].offset
out["all"] = delete(1, -1)
out["marks1"] = marks(1)
out["below"] = delete(0, 20)
out["past_end"] = delete(0, 101)
out["unknown"] = delete(0, 1, name="nope")
# ListOffsets v7's max timestamp: a record stamped an hour ahead.
from confluent_kafka.admin import OffsetSpec
p.produce(topic, value=b"late", partition=0, timestamp=int(time.time() * 1000) + 3600000)
p.flush(30)
tp = TopicPartition(topic, 0)
out["max_ts"] = a.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(10).offset
c.close()
print(json.dumps(out))
"#;

#[test]
fn confluent_kafka_deletes_records() {
    let Some((v, mut broker, _)) =
        script_on_new_topic::<serde_json::Value>(CONFLUENT_DELETE_RECORDS, "dr", 2, 60)
    else {
        return;
    };
    assert_eq!(v["deleted"], 30);
    assert_eq!(v["marks0"], serde_json::json!([30, 100]));
    // Asked from 10, below the start: reset to it (auto.offset.reset).
    assert_eq!(v["first"], serde_json::json!([30, "v30"]));
    assert_eq!(
        v["by_time"], 30,
        "a timestamp lookup answered a deleted record"
    );
    assert_eq!(v["all"], 100);
    assert_eq!(v["marks1"], serde_json::json!([100, 100]));
    assert_eq!(v["below"], 30, "a lower offset changes nothing");
    assert_eq!(v["past_end"], "OFFSET_OUT_OF_RANGE");
    // librdkafka looks for the partition's leader first and asks nobody.
    assert_eq!(v["unknown"], "_NOENT");
    assert_eq!(v["max_ts"], 100, "the record stamped latest");
    // The starts are the metadata's: they hold across a restart.
    broker.kill();
    broker.restart();
    let out = broker.cli(&["topic", "describe", "dr"], "");
    let described = String::from_utf8(out.stdout).unwrap();
    let starts: Vec<(&str, &str)> = described
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() >= 5 && fields[0].parse::<u32>().is_ok()).then(|| (fields[1], fields[2]))
        })
        .collect();
    assert_eq!(starts, [("30", "101"), ("100", "100")], "{described}");
}

/// Produces to each partition of a replicated topic, deletes its records
/// below 20 and prints each partition's leader (node id) and watermarks.
const CONFLUENT_DELETE_REPLICATED: &str = r#"
import sys, json, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
boot, topic = sys.argv[1], sys.argv[2]
a = AdminClient({"bootstrap.servers": boot})
leaders = lambda: [p.leader for _, p in sorted(a.list_topics(topic, timeout=10).topics[topic].partitions.items())]
deadline = time.time() + 20
# Leadership goes back to the preferred leaders, one partition per node.
while sorted(leaders()) != [1, 2, 3]:
    if time.time() > deadline:
        raise SystemExit("leaders not spread: %r" % leaders())
    time.sleep(0.1)
p = Producer({"bootstrap.servers": boot, "acks": "all"})
for i in range(50):
    for partition in range(3):
        p.produce(topic, value=b"v%d" % i, partition=partition)
p.flush(30)
lows = [f.result(30).low_watermark for f in
        a.delete_records([TopicPartition(topic, q, 20) for q in range(3)]).values()]
c = Consumer({"bootstrap.servers": boot, "group.id": "x"})
marks = [list(c.get_watermark_offsets(TopicPartition(topic, q), timeout=10)) for q in range(3)]
print(json.dumps({"lows": lows, "leaders": leaders(), "marks": marks}))
"#;

/// A partition's leader and watermarks once it has a leader again.
const CONFLUENT_MARKS_AFTER_FAILOVER: &str = r#"
import sys, json, time
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
boot, topic, partition, old = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
a = AdminClient({"bootstrap.servers": boot})
c = Consumer({"bootstrap.servers": boot, "group.id": "x"})
deadline = time.time() + 30
while True:
    try:
        leader = a.list_topics(topic, timeout=10).topics[topic].partitions[partition].leader
        if leader > 0 and leader != old:
            marks = list(c.get_watermark_offsets(TopicPartition(topic, partition), timeout=5))
            break
    except KafkaException:
        pass
    if time.time() > deadline:
        raise SystemExit("no new leader within 30 s")
    time.sleep(0.2)
print(json.dumps({"leader": leader, "marks": marks}))
"#;

#[test]
fn deleted_records_stay_deleted_after_a_leader_change() {
    let Some(python) = python() else {
        return;
    };
    // Three nodes, each with a Kafka listener; node 1 runs the controller.
    let kafka: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut nodes: Vec<Broker> = Vec::new();
    for (i, listener) in kafka.iter().enumerate() {
        let id = (i + 1).to_string();
        let listen = listener.to_string();
        let mut args = vec![
            "--node-id",
            &id,
            "--kafka-listen",
            &listen,
            "--leader-rebalance-interval-ms",
            "500",
        ];
        let seed = nodes.first().map(|n| n.addr.to_string());
        if let Some(seed) = &seed {
            args.extend(["--seeds", seed]);
        }
        nodes.push(Broker::start_with(1, &args));
    }
    let out = nodes[0].cli(
        &[
            "topic",
            "create",
            "drr",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = kafka
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new("timeout");
    command
        .args(["60"])
        .arg(&python)
        .args(["-c", CONFLUENT_DELETE_REPLICATED, &all, "drr"]);
    let v: serde_json::Value = serde_json::from_slice(&run(command, "").stdout).unwrap();
    assert_eq!(v["lows"], serde_json::json!([20, 20, 20]));
    // A leader's mark (a control batch) comes first in its log.
    let marks = |m: &serde_json::Value| (m[0].as_i64(), m[1].as_i64());
    for m in v["marks"].as_array().unwrap() {
        assert_eq!(marks(m).0, Some(20), "{v}");
        assert!(marks(m).1 >= Some(50), "{v}");
    }
    // A partition led by a node other than the controller's (node 1, whose
    // loss would leave the cluster without one): its leader goes.
    let leaders: Vec<u64> = serde_json::from_value(v["leaders"].clone()).unwrap();
    let (partition, &leader) = leaders
        .iter()
        .enumerate()
        .find(|&(_, &l)| l > 1)
        .unwrap_or_else(|| panic!("leaders spread over the nodes: {v}"));
    nodes[leader as usize - 1].kill();
    let survivors = kafka
        .iter()
        .enumerate()
        .filter(|&(i, _)| i as u64 + 1 != leader)
        .map(|(_, a)| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new("timeout");
    command.args(["60"]).arg(&python).args([
        "-c",
        CONFLUENT_MARKS_AFTER_FAILOVER,
        &survivors,
        "drr",
        &partition.to_string(),
        &leader.to_string(),
    ]);
    let after: serde_json::Value = serde_json::from_slice(&run(command, "").stdout).unwrap();
    let (low, high) = marks(&after["marks"]);
    assert_eq!(
        low,
        Some(20),
        "the new leader keeps the deleted records deleted: {after}"
    );
    assert!(high >= Some(50), "{after}");
}

/// librdkafka's KIP-848 consumer (`group.protocol=consumer`): two members
/// of one group on ConsumerGroupHeartbeat, with the server's assignment,
/// split a topic's partitions and read every record once.
const CONFLUENT_KIP848: &str = r#"
import sys, json, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
boot, topic = sys.argv[1], sys.argv[2]
conf = {"bootstrap.servers": boot, "group.id": "next-gen", "group.protocol": "consumer",
        "auto.offset.reset": "earliest"}
members = [Consumer(conf), Consumer(conf)]
for c in members:
    c.subscribe([topic])
deadline = time.time() + 30
while not all(c.assignment() for c in members):
    if time.time() > deadline:
        raise SystemExit("no assignment for both: %r" % [c.assignment() for c in members])
    for c in members:
        c.poll(0.1)
assigned = [sorted(tp.partition for tp in c.assignment()) for c in members]
p = Producer({"bootstrap.servers": boot})
for i in range(200):
    p.produce(topic, key=b"k%d" % i, value=b"v%d" % i)
p.flush(30)
seen = []
while len(set(s[1:] for s in seen)) < 200 and time.time() < deadline + 30:
    for i, c in enumerate(members):
        m = c.poll(0.1)
        if m is not None and not m.error():
            seen.append((i, m.partition(), m.offset()))
a = AdminClient({"bootstrap.servers": boot})
types = sorted([g.group_id, g.type.name] for g in a.list_consumer_groups().result(10).valid)
# DescribeConsumerGroups: librdkafka asks ConsumerGroupDescribe for them.
d = a.describe_consumer_groups(["next-gen"])["next-gen"].result(10)
described = {"type": d.type.name, "state": d.state.name,
             "partitions": sorted(tp.partition for m in d.members
                                  for tp in m.assignment.topic_partitions)}
# Commits at the members' epochs (OffsetCommit on the same coordinator).
for c in members:
    c.commit(asynchronous=False)
committed = sum(tp.offset for tp in
                members[0].committed([TopicPartition(topic, q) for q in range(4)], timeout=10))
for c in members:
    c.close()
print(json.dumps({"assigned": assigned, "seen": seen, "types": types, "committed": committed,
                  "described": described}))
"#;

#[test]
fn confluent_kafka_kip848_consumers_share_a_topic() {
    let Some((v, _broker, _)) =
        script_on_new_topic::<serde_json::Value>(CONFLUENT_KIP848, "kip848", 4, 90)
    else {
        return;
    };
    // A KIP-848 group on the native coordinator, not a classic one.
    assert_eq!(v["types"], serde_json::json!([["next-gen", "CONSUMER"]]));
    let assigned: Vec<Vec<i64>> = serde_json::from_value(v["assigned"].clone()).unwrap();
    let mut all: Vec<i64> = assigned.concat();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3], "the partitions split, each once: {v}");
    assert!(assigned.iter().all(|a| !a.is_empty()), "{v}");
    let seen: Vec<(usize, i64, i64)> = serde_json::from_value(v["seen"].clone()).unwrap();
    let unique: std::collections::BTreeSet<(i64, i64)> =
        seen.iter().map(|&(_, p, o)| (p, o)).collect();
    assert_eq!(unique.len(), 200, "every record read: {v}");
    assert_eq!(seen.len(), 200, "none read twice");
    for (member, p, _) in seen {
        assert!(assigned[member].contains(&p), "member {member} read {p}");
    }
    assert_eq!(v["committed"], 200, "each partition committed at its end");
    assert_eq!(
        v["described"],
        serde_json::json!({"type": "CONSUMER", "state": "STABLE", "partitions": [0, 1, 2, 3]}),
        "{}",
        v["described"]
    );
}

/// confluent-kafka against brokers that show a Kafka broker per shard:
/// the metadata lists each shard at its own port, every partition's leader
/// is the shard that owns it, and records produced through the shards'
/// ports read back byte for byte. Prints the brokers, the leaders, and
/// what was read.
const PER_SHARD: &str = r#"
import sys, json
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
boot, topic = sys.argv[1], sys.argv[2]
md = AdminClient({"bootstrap.servers": boot}).list_topics(topic, timeout=20)
brokers = sorted([b.id, b.port] for b in md.brokers.values())
leaders = sorted([p.id, p.leader] for p in md.topics[topic].partitions.values())
p = Producer({"bootstrap.servers": boot, "acks": "all", "linger.ms": 5})
n = 400
for i in range(n):
    p.produce(topic, key=b"k%d" % i, value=b"v%d-" % i + bytes(range(i % 256)), partition=i % 4)
assert p.flush(30) == 0
c = Consumer({"bootstrap.servers": boot, "group.id": "g", "enable.auto.commit": False})
c.assign([TopicPartition(topic, q, 0) for q in range(4)])
got = {}
while len(got) < n:
    m = c.poll(10)
    assert m is not None and m.error() is None, m and m.error()
    got[m.key().decode()] = m.value().hex()
c.close()
print(json.dumps({"brokers": brokers, "leaders": leaders, "got": got}))
"#;

/// What [`PER_SHARD`] must read: every record as it was produced.
fn assert_per_shard_read_back(v: &serde_json::Value) {
    let got = v["got"].as_object().unwrap();
    assert_eq!(got.len(), 400);
    for i in 0..400usize {
        let mut value = format!("v{i}-").into_bytes();
        value.extend((0..i % 256).map(|b| b as u8));
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got[&format!("k{i}")], serde_json::json!(hex), "record {i}");
    }
}

#[test]
fn a_kafka_broker_per_shard_serves_each_partition_from_its_core() {
    let Some(python) = python() else {
        return;
    };
    let (broker, kafka) = kafka_broker_with(2, &["--kafka-brokers", "shard"]);
    create_topic(&broker, "sharded", 4);
    let v: serde_json::Value = python_json(&python, PER_SHARD, kafka, "sharded", 120);
    // Shards 0 and 1 of the node (id 0), each at a port of its own.
    let brokers = v["brokers"].as_array().unwrap();
    let ids: Vec<i64> = brokers.iter().map(|b| b[0].as_i64().unwrap()).collect();
    assert_eq!(ids, [0, 1], "{}", v["brokers"]);
    let ports: Vec<i64> = brokers.iter().map(|b| b[1].as_i64().unwrap()).collect();
    assert!(
        ports[0] != ports[1] && !ports.contains(&i64::from(kafka.port())),
        "{}",
        v["brokers"]
    );
    // Partitions are spread over the shards, each led by the shard that
    // owns it: two each.
    let mut led_by: Vec<i64> = v["leaders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[1].as_i64().unwrap())
        .collect();
    led_by.sort_unstable();
    assert_eq!(led_by, [0, 0, 1, 1], "{}", v["leaders"]);
    assert_per_shard_read_back(&v);
}

#[test]
fn a_kafka_broker_per_shard_spans_a_cluster() {
    let Some(python) = python() else {
        return;
    };
    let kafka: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let shard_mode = |k: &SocketAddr| {
        vec![
            "--kafka-listen".to_owned(),
            k.to_string(),
            "--kafka-brokers".to_owned(),
            "shard".to_owned(),
        ]
    };
    let first_args = [
        vec!["--node-id".to_owned(), "1".to_owned()],
        shard_mode(&kafka[0]),
    ]
    .concat();
    let first = Broker::start_with(
        2,
        &first_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let seed = first.addr.to_string();
    let second_args = [
        vec![
            "--node-id".to_owned(),
            "2".to_owned(),
            "--seeds".to_owned(),
            seed,
        ],
        shard_mode(&kafka[1]),
    ]
    .concat();
    let second = Broker::start_with(
        2,
        &second_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let out = first.cli(
        &[
            "topic",
            "create",
            "spread",
            "--partitions",
            "4",
            "--replication-factor",
            "2",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bootstrapping from node 2 lists both nodes' shards (node 1's as it
    // registered them) once each has registered its Kafka listener, and the
    // partitions' leaders once node 2 has heard of them (until then -1,
    // LEADER_NOT_AVAILABLE, which a Kafka client waits out too).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let v: serde_json::Value = loop {
        let v: serde_json::Value = python_json(&python, PER_SHARD, kafka[1], "spread", 120);
        let listed = v["brokers"].as_array().unwrap().len() == 4;
        let led = v["leaders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l[1].as_i64() != Some(-1));
        if (listed && led) || std::time::Instant::now() > deadline {
            break v;
        }
    };
    let ids: Vec<i64> = v["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[0].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1000, 1001, 2000, 2001], "{}", v["brokers"]);
    for leader in v["leaders"].as_array().unwrap() {
        assert!(
            ids.contains(&leader[1].as_i64().unwrap()),
            "{}",
            v["leaders"]
        );
    }
    assert_per_shard_read_back(&v);
    drop(second);
}

/// confluent-kafka producing `acks=1` as fast as it can to two partitions
/// until the broker goes: every delivery report that succeeded, as
/// `[partition, offset, i]` (record `i`'s value is `value(i)` below), and
/// how many failed.
const CONFLUENT_UNTIL_KILLED: &str = r#"
import sys, json, time
from confluent_kafka import Producer
boot, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": boot, "acks": 1, "linger.ms": 2,
              "enable.idempotence": False, "retries": 0,
              "message.timeout.ms": 5000, "socket.timeout.ms": 2000})
delivered, failed = [], [0]
def report(err, msg):
    if err is None:
        delivered.append([msg.partition(), msg.offset(), int(msg.key())])
    else:
        failed[0] += 1
def value(i):
    return b"%09d-" % i + bytes((i * 31 + k) % 251 for k in range(100))
i, started = 0, time.time()
while failed[0] == 0 and time.time() - started < 30:
    try:
        p.produce(topic, key=str(i), value=value(i), partition=i % 2, on_delivery=report)
        i += 1
    except BufferError:
        p.poll(0.01)
    p.poll(0)
p.flush(15)
print(json.dumps({"delivered": delivered, "failed": failed[0], "sent": i}))
"#;

/// The staging area's promise to an unmodified Kafka client: records
/// confluent-kafka saw acknowledged (`acks=1`, default `fsync=never`) are
/// all there after a SIGKILL at a random moment of a full-speed run, at
/// the offsets the client was told, byte-identical and in send order.
#[test]
fn confluent_kafka_acks_1_survive_a_sigkill_under_load() {
    let Some(python) = python() else {
        return;
    };
    let (mut broker, kafka) = kafka_broker();
    create_topic(&broker, "killed", 2);
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut producer = Command::new("timeout")
        .arg("60")
        .arg(&python)
        .args(["-c", CONFLUENT_UNTIL_KILLED, &kafka.to_string(), "killed"])
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Under way first (the interpreter and librdkafka take a while to
    // start on a loaded machine), then a random moment.
    let admin = fjord_client::Admin::new(broker.client());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let topic = futures::executor::block_on(admin.describe_topic("killed")).unwrap();
        if topic
            .partitions
            .iter()
            .map(|p| p.log_end_offset)
            .sum::<i64>()
            > 5_000
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the producer never got going"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_millis(200 + u64::from(nanos % 1500)));
    broker.kill();
    assert!(producer.wait().unwrap().success());
    #[derive(serde::Deserialize)]
    struct Run {
        delivered: Vec<(i32, i64, u64)>,
        failed: u64,
        sent: u64,
    }
    let run: Run = serde_json::from_str(&std::fs::read_to_string(out.path()).unwrap()).unwrap();
    eprintln!(
        "{} of {} delivered, {} failed at the kill",
        run.delivered.len(),
        run.sent,
        run.failed
    );
    assert!(run.delivered.len() > 1000, "too few to mean anything");
    assert!(run.failed > 0, "the kill came after the run?");
    broker.restart();
    let value = |i: u64| {
        let mut v = format!("{i:09}-").into_bytes();
        v.extend((0..100u64).map(|k| ((i * 31 + k) % 251) as u8));
        v
    };
    for p in 0..2 {
        let got = broker.records("killed", p);
        let mut delivered: Vec<(i64, u64)> = run
            .delivered
            .iter()
            .filter(|d| d.0 == p)
            .map(|&(_, offset, i)| (offset, i))
            .collect();
        delivered.sort_unstable();
        for &(offset, i) in &delivered {
            assert_eq!(
                got.get(&offset),
                Some(&value(i)),
                "record {i}, acknowledged at offset {offset} of partition {p}"
            );
        }
        // In send order: by offset, the records' numbers rise.
        assert!(
            delivered.windows(2).all(|w| w[0].1 < w[1].1),
            "partition {p} out of send order"
        );
    }
}
