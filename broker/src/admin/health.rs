//! `/health`: whether the node serves, and if not, why. Ready means every
//! shard has its metadata and answers, every partition it should hold is
//! open, the disk takes produce and (in a cluster) a controller is known.
//! Degraded-but-serving conditions (under-replicated partitions, a disk
//! that has stopped answering) are warnings, not reasons: a load balancer
//! should keep sending traffic.

use super::snapshot::NodeSnapshot;

/// The verdict, with its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the node serves.
    pub ready: bool,
    /// Why not, one sentence each.
    pub reasons: Vec<String>,
    /// What degrades service without stopping it.
    pub warnings: Vec<String>,
}

/// Judges a snapshot.
pub fn check(snapshot: &NodeSnapshot) -> Health {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    let answered = snapshot.shards.len();
    let expected = snapshot.shard_count;
    if answered < expected {
        reasons.push(format!(
            "{} of {expected} shards did not answer",
            expected - answered
        ));
    }
    let waiting: Vec<String> = snapshot
        .shards
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.shard.to_string())
        .collect();
    if !waiting.is_empty() {
        reasons.push(format!(
            "shard(s) {} wait for their first metadata",
            waiting.join(", ")
        ));
    }
    let not_served: usize = snapshot.shards.iter().map(|s| s.not_served).sum();
    if not_served > 0 {
        reasons.push(format!(
            "{not_served} partition(s) could not be opened (retried)"
        ));
    }
    if snapshot.shards.iter().any(|s| s.disk_low) {
        reasons.push("disk space low: produce refused".into());
    }
    if snapshot.clustered && snapshot.controller.is_none() {
        reasons.push("no controller known".into());
    }
    let under = snapshot
        .partitions()
        .iter()
        .filter(|p| p.leading && p.in_sync < p.replicas)
        .count();
    if under > 0 {
        warnings.push(format!("{under} partition(s) under-replicated"));
    }
    if let Some(why) = &snapshot.metadata_unkept {
        warnings.push(format!(
            "the newest metadata is not served: {why} (tried again each round)"
        ));
    }
    for s in &snapshot.shards {
        if let Some(ms) = s.stalled_ms() {
            warnings.push(format!(
                "disk stalled: shard {}'s oldest of {} storage operation(s) has waited {ms} ms",
                s.shard, s.io_in_flight
            ));
        }
    }
    Health {
        ready: reasons.is_empty(),
        reasons,
        warnings,
    }
}
