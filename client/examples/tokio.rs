//! The client inside a tokio runtime: its futures are runtime-agnostic
//! (the transport thread completes them), so they are simply awaited.
//!
//! `cargo run -p fjord-client --example tokio -- 127.0.0.1:9093`

use fjord_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek,
};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9093".into());
    let client = Client::new(ClientConfig::new(bootstrap.parse()?))?;
    let _ = Admin::new(client.clone())
        .create_topic("example-tokio", 1, &[])
        .await;

    let producer = Producer::new(&client, ProducerConfig::default())?;
    // Many sends in flight at once; they batch by linger and batch size.
    let sends: Vec<_> = (0..100)
        .map(|i| {
            producer.send(
                "example-tokio",
                None,
                None,
                Some(format!("event {i}").as_bytes()),
                &[],
            )
        })
        .collect();
    let landed = futures::future::try_join_all(sends).await?;
    println!("produced 100 records, last at offset {}", landed[99].offset);

    let mut consumer = Consumer::new(&client, ConsumerConfig::default());
    consumer
        .assign("example-tokio", None, Seek::Earliest)
        .await?;
    let records = consumer.poll(Duration::from_secs(5)).await?;
    println!("consumed {} records", records.len());
    Ok(())
}
