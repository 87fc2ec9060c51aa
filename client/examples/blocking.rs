//! The client without any async runtime: every call is a future, and
//! `block_on` waits for it on the calling thread.
//!
//! `cargo run -p fjord-client --example blocking -- 127.0.0.1:9093`

use fjord_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek,
};
use futures::executor::block_on;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9093".into());
    let client = Client::new(ClientConfig::new(bootstrap.parse()?))?;
    let admin = Admin::new(client.clone());
    // Already there from an earlier run is fine.
    let _ = block_on(admin.create_topic("example-blocking", 3, &[]));

    let producer = Producer::new(&client, ProducerConfig::default())?;
    let sent = producer.send(
        "example-blocking",
        None,
        Some(b"user-1"),
        Some(b"hello"),
        &[("source", Some(b"blocking"))],
    );
    let landed = block_on(sent)?;
    println!(
        "produced to partition {} at offset {}",
        landed.partition, landed.offset
    );

    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    block_on(consumer.assign(
        "example-blocking",
        Some(&[landed.partition]),
        Seek::Offset(landed.offset),
    ))?;
    for record in block_on(consumer.poll(Duration::from_secs(5)))? {
        println!(
            "consumed offset {}: {:?}",
            record.offset,
            record.value.map(String::from_utf8)
        );
    }
    Ok(())
}
