//! Delivery latency of a durable pull consumer, by configuration.
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = broker::NatsServer::start().await?;
    let client = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    messaging_core::ensure_stream(&client, &messaging_core::Limits::default()).await?;
    let stream = js.get_stream("EVENTS").await?;
    for (name, ack, batch) in [
        ("explicit", AckPolicy::Explicit, None),
        ("none", AckPolicy::None, None),
        ("explicit-b1", AckPolicy::Explicit, Some(1)),
        ("explicit-b10", AckPolicy::Explicit, Some(10)),
    ] {
        let subject = format!("events.pull.{name}");
        let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.replace('-', "_")),
                filter_subject: subject.clone(),
                ack_policy: ack,
                ack_wait: Duration::from_secs(5),
                max_deliver: 10,
                max_ack_pending: 10_000,
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        let mut messages = if let Some(n) = batch {
            consumer
                .stream()
                .heartbeat(Duration::from_secs(5))
                .max_messages_per_batch(n)
                .messages()
                .await?
        } else {
            consumer.messages().await?
        };
        let mut total = Duration::ZERO;
        for _ in 0..20 {
            let t0 = Instant::now();
            js.publish(subject.clone(), "x".into()).await?.await?;
            let m = messages.next().await.unwrap()?;
            total += t0.elapsed();
            if ack == AckPolicy::Explicit {
                m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        println!("{name}: publish->receive avg {:?}", total / 20);
    }
    server.stop().await?;
    Ok(())
}
