//! Replication and the controller.
//!
//! - [`raft`]: the Raft core, one sans-I/O state machine per partition, and
//!   the mux that batches a shard's groups' traffic per peer.
//! - [`sim`] (feature `sim`, on by default): the deterministic simulator that
//!   runs the real core under network, disk and process faults, with the
//!   checker that proves what it promises. `cargo run -p fjord-replication
//!   --bin sim -- --seeds 100000`.
//! - [`wire`]: the peer wire format carrying a shard's batch of messages
//!   (and the record batches they replicate) to a peer replica.
//! - [`placement`]: where a new partition's replicas go ((node, shard)
//!   pairs, replicas and preferred leaders balanced).
//! - [`metadata`]: the controller's metadata state machine, a deterministic
//!   `apply` over commands: Raft group 0's state machine.
//! - [`control`]: what nodes ask the controller (follow the metadata,
//!   commit a command) over their peer connections.

pub mod control;
pub mod metadata;
pub mod placement;
pub mod raft;
#[cfg(feature = "sim")]
pub mod sim;
pub mod wire;
