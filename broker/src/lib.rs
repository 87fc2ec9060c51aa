//! The fjord binary: shards, routing, controller shard, admin CLI.
//!
//! Empty until its issue lands; DESIGN.md §7 says what it will hold.
