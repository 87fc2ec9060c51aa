//! Seeing what a node does: per-shard counters ([`metrics`]), copies of
//! them gathered over the mesh ([`snapshot`]), and the admin HTTP listener
//! ([`http`]) that serves them as Prometheus text ([`exposition`]), a
//! readiness verdict ([`health`]), JSON ([`overview`]) and a web console
//! ([`console`]).

pub mod console;
pub mod exposition;
pub mod health;
pub mod http;
pub mod metrics;
pub mod overview;
pub mod snapshot;
