//! The `fjord` binary's library: the node (`fjord serve`) and the command
//! line tools that talk to one.

pub mod admin;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod controller;
pub mod disk_stall;
pub mod group;
pub mod hardstate;
pub mod kafka;
pub mod listeners;
pub mod logging;
pub mod mesh;
pub mod node;
pub mod partition;
pub mod peer;
pub mod process;
pub mod producer_ids;
pub mod producer_state;
pub mod replica;
pub mod shard;
