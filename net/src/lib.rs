//! Native protocol schema and codec, Kafka protocol mapping, connection handling.
//!
//! Empty until its issue lands; DESIGN.md §7 says what it will hold.
