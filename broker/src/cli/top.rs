//! `fjord top`: a live terminal view of a node, like `top`: throughput,
//! latency and lag per topic, redrawn every interval from the admin
//! listener's `/v1/overview` (the console's source too). Rates are the
//! broker's own, of the last whole second.

use super::CliError;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

/// Longest wait for the admin listener's answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET http://ADMIN/PATH` of a node's admin listener: the body of a 200.
pub fn get(admin: &str, path: &str) -> Result<String, CliError> {
    let failed = |e: ureq::Error| CliError::Admin(format!("{admin}{path}: {e}"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    agent
        .get(format!("http://{admin}{path}"))
        .call()
        .map_err(failed)?
        .body_mut()
        .read_to_string()
        .map_err(failed)
}

/// Draws the view every `interval`, `iterations` times (for ever: `None`).
pub fn top(
    admin: &str,
    interval: Duration,
    iterations: Option<u64>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut drawn = 0;
    while iterations.is_none_or(|n| drawn < n) {
        if drawn > 0 {
            std::thread::sleep(interval);
        }
        let body = get(admin, "/v1/overview")?;
        let overview: Value = serde_json::from_str(&body)
            .map_err(|e| CliError::Admin(format!("{admin}: not an overview: {e}")))?;
        // Home and clear, then the screen: redrawn in place, as top does.
        write!(out, "\x1b[H\x1b[2J{}", render(&overview))?;
        out.flush()?;
        drawn += 1;
    }
    Ok(())
}

fn int(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or(0)
}

fn float(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

fn megabytes(bytes: f64) -> String {
    format!("{:.2}", bytes / 1e6)
}

/// One screen.
fn render(now: &Value) -> String {
    let mut s = String::new();
    // `/health`'s sentences under `key`, joined.
    let sentences = |key: &str| {
        let all: Vec<&str> = now[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        all.join("; ")
    };
    let health = if now["ready"].as_bool().unwrap_or(false) {
        match sentences("warnings") {
            warnings if warnings.is_empty() => "ready".to_owned(),
            warnings => format!("ready, but: {warnings}"),
        }
    } else {
        format!("NOT READY: {}", sentences("reasons"))
    };
    let disk = &now["disk"];
    s += &format!(
        "fjord node {}  {} shard(s)  {health}  disk {} MB free of {}  {} connection(s)\n",
        int(now, "node"),
        int(now, "shards"),
        megabytes(float(disk, "free_bytes")),
        megabytes(float(disk, "total_bytes")),
        int(now, "connections"),
    );
    let latency = &now["latency_ms"];
    s += &format!(
        "p99 (last second): produce {:.2} ms  fetch {:.2} ms  append {:.2} ms   fdatasync p99 {:.2} ms  group commit {:.1} batches\n\n",
        float(latency, "produce_p99"),
        float(latency, "fetch_p99"),
        float(latency, "append_p99"),
        float(latency, "fdatasync_p99"),
        float(now, "group_commit_batches_mean"),
    );
    s += &format!(
        "{:<24} {:>5} {:>12} {:>9} {:>12} {:>9} {:>14} {:>10} {:>10}\n",
        "TOPIC",
        "PARTS",
        "IN rec/s",
        "IN MB/s",
        "OUT rec/s",
        "OUT MB/s",
        "RECORDS IN",
        "SIZE MB",
        "LAG"
    );
    for topic in now["topics"].as_array().into_iter().flatten() {
        let rate = &topic["per_second"];
        s += &format!(
            "{:<24} {:>5} {:>12} {:>9} {:>12} {:>9} {:>14} {:>10} {:>10}\n",
            topic["name"].as_str().unwrap_or_default(),
            int(topic, "partitions"),
            int(rate, "produced_records"),
            megabytes(float(rate, "produced_bytes")),
            int(rate, "fetched_records"),
            megabytes(float(rate, "fetched_bytes")),
            int(topic, "produced_records"),
            megabytes(float(topic, "size_bytes")),
            int(topic, "group_lag"),
        );
    }
    s
}
