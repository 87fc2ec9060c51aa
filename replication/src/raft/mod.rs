//! The Raft core: one [`Group`] per partition, a sans-I/O state machine
//! (messages, ticks and storage completions in; messages, storage actions
//! and events out), and [`mux`], which coalesces the heartbeats of every
//! group between two shards into one message per tick.
//!
//! The partition log *is* the Raft log: an entry is a record batch, its
//! index is its Kafka offset and its term is the batch's partition leader
//! epoch. The core sees offsets, terms and lengths; the bytes stay with the
//! caller.

mod group;
mod log;
mod message;
pub mod mux;
mod progress;
#[cfg(test)]
mod tests;
mod types;

#[cfg(feature = "sim")]
pub use group::Bugs;
pub use group::{CONTROL_BATCH_BYTES, Config, Group, ProposeError, Role};
pub use log::{LogState, LogView};
pub use message::{
    AppendRequest, AppendResponse, Event, Heartbeat, Message, Output, Replicate, ResetRequest,
    VoteRequest, VoteResponse,
};
pub use types::{
    Durability, Entry, EntryKind, HardState, Membership, MembershipChange, MembershipError, NodeId,
    Offset, Term,
};
