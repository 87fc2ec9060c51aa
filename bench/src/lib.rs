//! The bench load generator: produce, consume, e2e.
//!
//! Empty until its issue lands; DESIGN.md §7 says what it will hold.
