//! The admin listener of a real `fjord serve`: `/metrics` counts what was
//! produced and consumed, `/health` says why a node does not serve,
//! `/v1/overview` feeds `fjord top` and the console, and the console
//! renders in a real (headless) browser.

mod common;

use common::{Broker, free_port};
use fjord_broker::cli::top::get;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A broker with an admin listener on a free port, and that port's address.
fn with_admin(cores: usize, extra: &[&str]) -> (Broker, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut flags = vec!["--admin-listen", &admin];
    flags.extend_from_slice(extra);
    (Broker::start_with(cores, &flags), admin)
}

/// `/metrics` as `name{labels}` → value, every sample line.
fn scrape(admin: &str) -> BTreeMap<String, f64> {
    let text = get(admin, "/metrics").expect("/metrics");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn lines(n: usize) -> String {
    (0..n).map(|i| format!("record-{i}\n")).collect()
}

#[test]
fn metrics_overview_and_top_count_what_was_produced_and_consumed() {
    let (broker, admin) = with_admin(
        2,
        &[
            "--metrics-partitions-max",
            "1",
            "--offsets-topic-partitions",
            "1",
        ],
    );
    stdout(&broker.cli(&["topic", "create", "seen", "--partitions", "2"], ""));
    stdout(&broker.cli(&["produce", "seen"], &lines(100)));
    let consumed = stdout(&broker.cli(
        &[
            "consume",
            "seen",
            "--from-beginning",
            "--max-messages",
            "100",
        ],
        "",
    ));
    assert_eq!(consumed.lines().count(), 100);
    // A group that read 60 of the 100 records and committed them: 40 behind.
    let grouped = stdout(&broker.cli(
        &[
            "consume",
            "seen",
            "--group",
            "g",
            "--from-beginning",
            "--max-messages",
            "60",
        ],
        "",
    ));
    assert_eq!(grouped.lines().count(), 60);

    let m = scrape(&admin);
    let at = |series: &str| {
        m.get(series)
            .copied()
            .unwrap_or_else(|| panic!("{series} missing from /metrics"))
    };
    assert_eq!(at("fjord_ready"), 1.0);
    assert_eq!(
        at("fjord_topic_produced_records_total{topic=\"seen\"}"),
        100.0
    );
    // Both consumers read every batch of the topic (the group's stopped
    // printing at 60, not fetching).
    assert_eq!(
        at("fjord_topic_fetched_records_total{topic=\"seen\"}"),
        200.0
    );
    assert!(at("fjord_topic_produced_bytes_total{topic=\"seen\"}") > 100.0 * 8.0);
    let produce_requests =
        "fjord_request_latency_seconds_count{protocol=\"native\",api=\"Produce\"}";
    assert!(at(produce_requests) >= 1.0);
    let inf = m
        .iter()
        .find(|(k, _)| {
            k.starts_with("fjord_request_latency_seconds_bucket{")
                && k.contains("api=\"Produce\"")
                && k.contains("protocol=\"native\"")
                && k.contains("le=\"+Inf\"")
        })
        .map(|(_, v)| *v);
    assert_eq!(
        inf,
        Some(at(produce_requests)),
        "the +Inf bucket holds every request"
    );
    let writes: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("fjord_storage_write_latency_seconds_count"))
        .map(|(_, v)| v)
        .sum();
    assert!(writes >= 1.0, "group commits wrote something");
    // Two partitions of "seen" and one of __consumer_offsets, one listed:
    // the cap holds.
    assert_eq!(at("fjord_partitions"), 3.0);
    assert_eq!(at("fjord_metrics_partitions_omitted"), 2.0);
    let listed: Vec<&String> = m
        .keys()
        .filter(|k| k.starts_with("fjord_partition_log_end_offset{"))
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(at("fjord_topic_size_bytes{topic=\"seen\"}") > 0.0);
    assert!(at("fjord_disk_free_bytes") > 0.0);
    assert_eq!(
        at("fjord_consumer_group_lag_records{group=\"g\",topic=\"seen\"}"),
        40.0
    );

    let health = get(&admin, "/health").expect("/health");
    assert!(health.contains("\"status\":\"ready\""), "{health}");

    let overview: serde_json::Value =
        serde_json::from_str(&get(&admin, "/v1/overview").expect("overview")).expect("JSON");
    let seen = overview["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .find(|t| t["name"] == "seen")
        .expect("the topic in the overview");
    assert_eq!(seen["produced_records"], 100);
    assert_eq!(seen["end_offsets"], 100);
    assert_eq!(seen["group_lag"], 40);
    assert_eq!(
        overview["partitions"].as_array().expect("partitions").len(),
        3
    );

    let top = stdout(
        &Command::new(common::FJORD)
            .args([
                "top",
                "--admin",
                &admin,
                "--iterations",
                "2",
                "--interval-ms",
                "200",
            ])
            .output()
            .expect("fjord top"),
    );
    let row = top
        .lines()
        .rev()
        .find(|l| l.starts_with("seen "))
        .unwrap_or_else(|| panic!("no row for the topic in:\n{top}"));
    assert!(row.split_whitespace().any(|f| f == "100"), "{row}");

    let page = get(&admin, "/").expect("console");
    assert!(page.contains("uPlot.iife.min.js"), "{page}");
    let script = get(&admin, "/assets/uPlot.iife.min.js").expect("uPlot");
    assert!(script.len() > 10_000);
}

#[test]
fn health_says_why_a_node_does_not_serve_and_metrics_off_counts_nothing() {
    // No free space is enough: produce is refused, and /health says why.
    let (broker, admin) = with_admin(1, &["--disk-min-free-percent", "100", "--metrics", "false"]);
    stdout(&broker.cli(&["topic", "create", "full"], ""));
    let err = get(&admin, "/health").expect_err("503 is not a 200");
    assert!(err.to_string().contains("503"), "{err}");
    let m = scrape(&admin);
    assert_eq!(m.get("fjord_ready"), Some(&0.0));
    assert_eq!(m.get("fjord_disk_low"), Some(&1.0));
    assert!(
        !m.keys()
            .any(|k| k.starts_with("fjord_request_latency_seconds_count")),
        "metrics off: no request counted"
    );
}

/// The health answer's body, whatever its status: asked with a raw socket.
#[test]
fn health_body_names_the_reason() {
    let (_broker, admin) = with_admin(1, &["--disk-min-free-percent", "100"]);
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(&admin).expect("connect");
    socket
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("disk space low"), "{answer}");
}

#[test]
fn console_in_a_headless_browser_shows_the_topic_and_throughput() {
    let chromium = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(chromium) = chromium else {
        eprintln!("SKIPPED: no chromium on PATH (.ci/console-browser.sh installs it)");
        return;
    };
    let (broker, admin) = with_admin(1, &[]);
    stdout(&broker.cli(&["topic", "create", "charted"], ""));
    // Records keep arriving while the page samples, so that its rates,
    // differences of two samples, are above zero.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let producing = producing.clone();
        let addr = broker.addr;
        std::thread::spawn(move || {
            while producing.load(Ordering::Relaxed) {
                let _ = common::cli(addr, &["produce", "charted"], &lines(200));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // The node reports the last whole second: open the page once one with
    // records in it has passed (a fast machine runs the page's virtual six
    // seconds in well under one real second).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let overview: serde_json::Value =
            serde_json::from_str(&get(&admin, "/v1/overview").expect("overview")).expect("JSON");
        if overview["per_second"]["produced_records"].as_f64() > Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node reported no produce rate in 20 s: {overview}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dom = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=6000",
            "--dump-dom",
        ])
        .arg(format!("http://{admin}/"))
        .output()
        .expect("run chromium");
    producing.store(false, Ordering::Relaxed);
    let _ = producer.join();
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.contains("class=\"uplot"),
        "uPlot drew its charts:\n{dom}"
    );
    assert!(
        dom.contains("<td class=\"name\">charted</td>"),
        "the topics table lists the topic:\n{dom}"
    );
    let rate = dom
        .split("id=\"produce-rate\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no produce rate in:\n{dom}"));
    let rate: f64 = rate.replace(',', "").parse().expect("a number");
    assert!(rate > 0.0, "produce throughput shown: {rate}");
}
