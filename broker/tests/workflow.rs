//! The seeds' workflow with the CLI against a real broker: create a topic
//! with partitions, produce keyed lines, consume them from the beginning.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Broker, cli, free_port};
use std::net::SocketAddr;

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "fjord failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn create_produce_consume_describe() {
    let broker = Broker::start(2);
    let out = stdout(&broker.cli(&["topic", "create", "orders", "--partitions", "3"], ""));
    assert!(out.contains("created topic orders"), "{out}");

    let lines: Vec<String> = (0..300)
        .map(|i| format!("user{}:order {i}", i % 7))
        .collect();
    let produced = broker.cli(
        &["produce", "orders", "--key-separator", ":"],
        &lines.join("\n"),
    );
    let stderr = String::from_utf8_lossy(&produced.stderr);
    assert!(produced.status.success(), "{stderr}");
    assert!(
        stderr.contains("300 of 300 records acknowledged"),
        "{stderr}"
    );

    let consumed = stdout(&broker.cli(
        &[
            "consume",
            "orders",
            "--from-beginning",
            "--max-messages",
            "300",
            "--print-key",
            "--print-offset",
        ],
        "",
    ));
    let mut got: Vec<String> = consumed
        .lines()
        .map(|l| {
            let mut fields = l.splitn(3, '\t');
            let (_, key, value) = (
                fields.next(),
                fields.next().unwrap(),
                fields.next().unwrap(),
            );
            format!("{key}:{value}")
        })
        .collect();
    got.sort();
    let mut want = lines.clone();
    want.sort();
    assert_eq!(got, want);

    let listed = stdout(&broker.cli(&["topic", "list"], ""));
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().eq(["orders", "3"])),
        "{listed}"
    );
    let described = stdout(&broker.cli(&["topic", "describe", "orders"], ""));
    let ends: i64 = described
        .lines()
        .skip_while(|l| !l.starts_with("PARTITION"))
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(ends, 300, "{described}");
    assert!(described.contains("retention.ms"), "{described}");
}

#[test]
fn one_partition_keeps_line_order_and_offsets() {
    let broker = Broker::start(1);
    stdout(&broker.cli(&["topic", "create", "log", "--config", "fsync=always"], ""));
    let lines: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
    let produced = broker.cli(&["produce", "log", "--acks", "1"], &lines.join("\n"));
    assert!(produced.status.success());
    let consumed = stdout(&broker.cli(
        &[
            "consume",
            "log",
            "--offset",
            "10",
            "--max-messages",
            "990",
            "--print-offset",
        ],
        "",
    ));
    let want: Vec<String> = (10..1000).map(|i| format!("0:{i}\tline {i}")).collect();
    assert_eq!(consumed.lines().collect::<Vec<_>>(), want);
}

#[test]
fn errors_say_what_failed_and_where() {
    let nowhere = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let output = cli(nowhere, &["topic", "list"], "");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot reach broker at {nowhere}")),
        "{stderr}"
    );

    let broker = Broker::start(1);
    let output = broker.cli(&["produce", "missing"], "a\nb\n");
    assert!(
        !output.status.success(),
        "records to a missing topic are not acknowledged"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("0 of 2 records acknowledged"), "{stderr}");
    assert!(stderr.contains("UnknownTopicOrPartition"), "{stderr}");

    let output = broker.cli(&["topic", "create", "bad/name"], "");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("InvalidTopicException"));
}

#[test]
fn consume_follows_new_records_and_acks_zero_sends() {
    let broker = Broker::start(2);
    stdout(&broker.cli(&["topic", "create", "live", "--partitions", "2"], ""));
    // A consumer started before anything is produced: its long polls must
    // pick the records up as they arrive. (`--offset 0`, not the default
    // "latest": a consumer still starting when the records land would
    // rightly skip them.)
    let mut follower = std::process::Command::new(common::FJORD)
        .args([
            "consume",
            "live",
            "--offset",
            "0",
            "--max-messages",
            "3",
            "--bootstrap",
        ])
        .arg(broker.addr.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let produced = broker.cli(&["produce", "live", "--acks", "0"], "one\ntwo\nthree\n");
    assert!(produced.status.success());
    assert!(String::from_utf8_lossy(&produced.stderr).contains("sent 3 records"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while follower.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = follower.kill();
            panic!("the consumer did not get the records");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = follower.wait_with_output().unwrap();
    assert!(output.status.success());
    let mut got: Vec<&str> = std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .collect();
    got.sort();
    assert_eq!(got, ["one", "three", "two"]);
}

#[test]
fn serve_reads_a_config_file_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let config = dir.path().join("fjord.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nshard_port_base = 0\ncores = 2\nmax_connections_per_shard = 7\nadmin_listen = \"none\"\nstaging_dir = {:?}\n",
            data.display().to_string(),
            dir.path().join("staging").display().to_string()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::FJORD)
        .args(["serve", "--cores", "1", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains(&format!("127.0.0.1:{port} with 1 shards")),
        "{line}"
    );
    assert!(data.join("cluster").exists(), "data_dir from the file");
    assert!(
        dir.path().join("staging").exists(),
        "staging_dir from the file"
    );

    std::fs::write(&config, "no_such_key = 1\n").unwrap();
    let output = std::process::Command::new(common::FJORD)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_key"));
}

#[test]
fn a_topic_grows_its_partitions_and_never_shrinks() {
    let broker = Broker::start(2);
    stdout(&broker.cli(&["topic", "create", "grow", "--partitions", "2"], ""));
    let out = stdout(&broker.cli(&["topic", "alter", "grow", "--partitions", "5"], ""));
    assert!(out.contains("altered topic grow"), "{out}");
    for (count, topic) in [("5", "grow"), ("3", "grow"), ("2", "missing")] {
        let refused = broker.cli(&["topic", "alter", topic, "--partitions", count], "");
        assert!(!refused.status.success(), "{topic} to {count}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        let code = if topic == "missing" {
            "UnknownTopicOrPartition"
        } else {
            "InvalidPartitions"
        };
        assert!(stderr.contains(code), "{topic} to {count}: {stderr}");
    }
    // A record lands on each new partition, which is read back from it.
    for p in 2..5 {
        let produced = broker.cli(
            &["produce", "grow", "--partition", &p.to_string()],
            &format!("to {p}\n"),
        );
        assert!(
            produced.status.success(),
            "{}",
            String::from_utf8_lossy(&produced.stderr)
        );
        let consumed = stdout(&broker.cli(
            &[
                "consume",
                "grow",
                "--partition",
                &p.to_string(),
                "--from-beginning",
                "--max-messages",
                "1",
            ],
            "",
        ));
        assert_eq!(consumed, format!("to {p}\n"));
    }
    let described = stdout(&broker.cli(&["topic", "describe", "grow"], ""));
    assert!(described.contains("(5 partitions)"), "{described}");
}

/// The cores shard 0's thread (named `shard-0-…`) of process `pid` may run
/// on: `Cpus_allowed_list` in its status.
fn shard_zero_cpus(pid: u32) -> Option<String> {
    let task = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("shard-0"))
        })?;
    std::fs::read_to_string(task.path().join("status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(|cpus| cpus.trim().to_owned())
}

#[test]
fn first_cpu_pins_a_nodes_shards_to_cores_of_its_own() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: one core, nothing to spread over");
        return;
    }
    let by_default = Broker::start(1);
    let moved = Broker::start_with(1, &["--first-cpu", "1"]);
    assert_eq!(shard_zero_cpus(by_default.pid()).as_deref(), Some("0"));
    assert_eq!(shard_zero_cpus(moved.pid()).as_deref(), Some("1"));
}
