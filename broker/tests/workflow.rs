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
