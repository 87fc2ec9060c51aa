//! Replication and the controller. Today: the controller's metadata state
//! machine ([`metadata`]), written as a deterministic `apply` over commands so
//! that it can become Raft group 0's state machine without a rewrite. The
//! Raft core, peer transport and simulator come with their issues.

pub mod metadata;
