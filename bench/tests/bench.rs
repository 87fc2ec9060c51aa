//! `bench` end to end: each command against its embedded local broker (a
//! real `fjord serve` child process), checking the reports it writes.

// In a test a failed unwrap is a failed test, with its line.
#![allow(clippy::unwrap_used)]

use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

/// Runs `bench ARGS --json FILE`, checks it succeeded, returns the report.
fn run(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let output = Command::new(BENCH)
        .args(args)
        .arg("--json")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("achieved"));
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

/// A port nothing listens on now, as `127.0.0.1:PORT`.
fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// A `fjord serve` (bench's own, re-entered) on `dir`, once it serves.
fn serve_local(dir: &std::path::Path, addr: &str) -> std::process::Child {
    let mut broker = Command::new(BENCH)
        .arg("serve-local")
        .arg(dir)
        .arg(addr)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let timeout = std::time::Duration::from_secs(30);
    fjord_broker::node::wait_until_serving(&mut broker, timeout).unwrap();
    broker
}

#[test]
fn produce_reports_what_was_acknowledged() {
    let r = run(&[
        "produce",
        "--rate",
        "10k",
        "--count",
        "10000",
        "--message-size",
        "64",
    ]);
    assert_eq!(r["command"], "produce");
    assert_eq!(r["messages"], 10000);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["config"]["message_size"], 64);
    assert_eq!(r["sustained"], true);
    let (p50, p99, max) = (
        r["p50_us"].as_u64().unwrap(),
        r["p99_us"].as_u64().unwrap(),
        r["max_us"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{r}");
    assert!(
        (r["mb_per_sec"].as_f64().unwrap()
            - r["achieved_msgs_per_sec"].as_f64().unwrap() * 64.0 / 1e6)
            .abs()
            < 0.01
    );
}

#[test]
fn an_unreachable_rate_is_reported_and_fails() {
    let output = Command::new(BENCH)
        .args([
            "produce",
            "--rate",
            "100M",
            "--duration",
            "1s",
            "--max-in-flight",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(stdout.contains("NOT SUSTAINED"), "{stdout}");
}

#[test]
fn consume_reads_everything_filled() {
    let r = run(&["consume", "--fill", "30000", "--cold"]);
    assert_eq!(r["command"], "consume");
    assert_eq!(r["messages"], 30000);
    assert_eq!(r["config"]["cold"], true);
}

#[test]
fn e2e_measures_delivery() {
    let r = run(&["e2e", "--rate", "5k", "--count", "10000"]);
    assert_eq!(r["command"], "e2e");
    assert_eq!(r["messages"], 10000, "every produced record delivered: {r}");
    assert!(r["p50_us"].as_u64().unwrap() > 0);
}

#[test]
fn a_run_that_cannot_make_progress_ends_at_once_with_the_error() {
    // Every batch is larger than the topic accepts: every partition fails.
    let started = std::time::Instant::now();
    let output = Command::new(BENCH)
        .args(["produce", "--rate", "1k", "--duration", "60s"])
        .args([
            "--message-size",
            "200",
            "--topic-config",
            "max.message.bytes=100",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot make progress") && stderr.contains("every partition failed"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "ended long before its 60 s: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_run_whose_broker_stops_answering_ends_with_the_error() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut broker = serve_local(dir.path(), &addr);
    let bench = Command::new(BENCH)
        .args([
            "produce",
            "--rate",
            "1k",
            "--duration",
            "120s",
            "--bootstrap",
            &addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // The broker freezes: nothing is refused, nothing is answered.
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(broker.id() as i32, libc::SIGSTOP) };
    let frozen = Instant::now();
    let output = bench.wait_with_output().unwrap();
    let waited = frozen.elapsed();
    // SAFETY: as above. SIGTERM, not SIGKILL: a clean stop removes the
    // broker's staging files from /dev/shm.
    unsafe {
        libc::kill(broker.id() as i32, libc::SIGCONT);
        libc::kill(broker.id() as i32, libc::SIGTERM);
    }
    let _ = broker.wait();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot make progress"), "{stderr}");
    assert!(
        waited < Duration::from_secs(30),
        "ended {waited:?} after the broker froze, not at the end of its 120 s"
    );
}

#[test]
fn a_run_whose_broker_restarts_sends_the_failed_batches_again() {
    use std::process::Stdio;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut broker = serve_local(dir.path(), &addr);
    let report = dir.path().join("report.json");
    let bench = Command::new(BENCH)
        .args(["produce", "--rate", "1k", "--count", "8000", "--bootstrap"])
        .arg(&addr)
        .arg("--json")
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Requests in flight fail with the connection, and the broker comes
    // back with other shard ports (ephemeral ones): the batches must go
    // again, to the partitions' new addresses.
    broker.kill().unwrap();
    broker.wait().unwrap();
    let mut broker = serve_local(dir.path(), &addr);
    let output = bench.wait_with_output().unwrap();
    // SAFETY: a signal to our own child process; SIGTERM, so that a clean
    // stop removes its staging files.
    unsafe { libc::kill(broker.id() as i32, libc::SIGTERM) };
    let _ = broker.wait();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sending again"), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["errors"], 0, "{r}\n{stderr}");
    assert_eq!(r["messages"], 8000, "{r}\n{stderr}");
}
