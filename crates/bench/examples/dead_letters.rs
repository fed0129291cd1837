//! How long listing dead letters takes when there are many of them.
//!
//! `cargo run --release -p bench --example dead_letters -- [COUNT]` (default 40000)

use std::time::{Duration, Instant};

use messaging_core::dead_letter::{DeadLetter, DeadLetterKind, DeadLetters};
use messaging_core::Storage;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(40_000);
    let server = broker::NatsServer::start().await?;
    let conn = messaging_core::Connection::connect(server.url(), "dead-letters").await?;
    let letters = DeadLetters::open(conn.client(), Storage::Durable).await?;
    let started = Instant::now();
    // 64 writers at a time, as a flood of poison events would record them.
    let writers = (0..64u64).map(|w| {
        let letters = letters.clone();
        async move {
            let mut sequence = w;
            while sequence < count {
                let letter = DeadLetter::new(
                    DeadLetterKind::Poisoned,
                    "payment_take_payment",
                    "events.order.created",
                    sequence + 1,
                    1,
                    "undecodable: expected value at line 1 column 1".to_owned(),
                );
                letters.record(&letter).await?;
                sequence += 64;
            }
            anyhow::Ok(())
        }
    });
    for result in futures::future::join_all(writers).await {
        result?;
    }
    println!(
        "recorded {count} dead letters in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let listed = letters.list().await?;
    println!(
        "dead_letters_list_seconds {:.3} ({} letters)",
        started.elapsed().as_secs_f64(),
        listed.len()
    );
    conn.drain(Duration::from_secs(5)).await?;
    server.stop().await?;
    Ok(())
}
