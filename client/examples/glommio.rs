//! The client from a glommio executor (for example inside a thread-per-core
//! application): the same futures, awaited on a LocalExecutor.
//!
//! `cargo run -p fjord-client --example glommio -- 127.0.0.1:9093`

use fjord_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek,
};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9093".into());
    let client = Client::new(ClientConfig::new(bootstrap.parse()?))?;
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .make()?;
    executor.run(async move {
        let _ = Admin::new(client.clone())
            .create_topic("example-glommio", 2, &[])
            .await;
        let producer = Producer::new(&client, ProducerConfig::default())?;
        let landed = producer
            .send("example-glommio", Some(1), None, Some(b"from glommio"), &[])
            .await?;
        println!("produced at offset {}", landed.offset);
        let mut consumer = Consumer::new(&client, ConsumerConfig::default());
        consumer
            .assign("example-glommio", Some(&[1]), Seek::Offset(landed.offset))
            .await?;
        let records = consumer.poll(Duration::from_secs(5)).await?;
        println!(
            "consumed {:?}",
            records
                .first()
                .and_then(|r| r.value.clone())
                .map(String::from_utf8)
        );
        Ok(())
    })
}
