//! Producer, consumer and admin for applications.
//!
//! Empty until its issue lands; DESIGN.md §7 says what it will hold.
