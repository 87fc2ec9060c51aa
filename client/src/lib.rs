//! Producer, consumer and admin for applications.
//!
//! A [`Client`] starts a transport thread of its own (glommio, io_uring)
//! that holds one pipelined connection per broker shard. Every API returns
//! plain futures completed by that thread, so the same code runs under
//! tokio, under glommio, or blocking with `futures::executor::block_on`
//! (see `examples/`).

pub mod admin;
pub mod client;
pub mod consumer;
pub mod error;
pub mod group;
mod idempotence;
pub mod partitioner;
pub mod producer;
pub mod transport;

pub use admin::{
    Admin, GroupDescription, GroupListing, GroupOffset, MemberDescription, OffsetReset,
    PartitionDescription, ResetTo, TopicDescription, TopicListing,
};
pub use client::{Client, ClientConfig, DEFAULT_PORT};
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerRecord, Polled, PolledPart, RebalanceListener, Revoking, Seek,
};
pub use error::{ClientError, Result};
pub use producer::{Producer, ProducerConfig, RecordMetadata};
