//! Raft core (sans-I/O), peer transport, controller state machine, simulator.
//!
//! Empty until its issue lands; DESIGN.md §7 says what it will hold.
