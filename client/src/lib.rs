//! Producer, consumer and admin for applications. Today: the partitioner
//! (Kafka-compatible key hashing and sticky partitioning for null keys); the
//! transport and the APIs come with the broker.

pub mod partitioner;
