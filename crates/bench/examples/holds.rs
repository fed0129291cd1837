//! Reservations on a product that already has many pending holds: the
//! latency of one `product.reserve` at a time before and after `HOLDS`
//! holds were made (each hold is a key of its own, so the product record
//! does not grow), and the rate at which the holds were made.
//!
//! `cargo run --release -p bench --example holds -- [HOLDS]` (default 100000)

use std::time::{Duration, Instant};

use contract::order::OrderId;
use contract::product::{CreateProduct, ProductId, ReserveStock};
use contract::values::{Name, Quantity};
use futures::StreamExt;
use messaging_core::{Bus, ModuleOptions};

/// Reserves one unit for a new order.
async fn reserve(bus: &Bus, product: ProductId) -> anyhow::Result<()> {
    bus.request(&ReserveStock {
        order_id: OrderId::new(),
        product_id: product,
        quantity: Quantity::new(1).expect("positive"),
    })
    .await?;
    Ok(())
}

/// p50 and p99 of `samples` sequential reservations, in milliseconds.
async fn latency(bus: &Bus, product: ProductId, samples: usize) -> anyhow::Result<(f64, f64)> {
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        reserve(bus, product).await?;
        took.push(start.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((ms(took[samples / 2]), ms(took[samples * 99 / 100])))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let holds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(100_000);
    let server = broker::NatsServer::start().await?;
    let conn = messaging_core::Connection::connect(server.url(), "holds").await?;
    // Holds far from their deadline: none expires during the run.
    let options = ModuleOptions {
        deadline: Duration::from_secs(3600),
        ..ModuleOptions::default()
    };
    let products = product::register_with(conn.client().clone(), options).await?;
    let bus = Bus::new(conn.client().clone());
    let product = bus
        .request(&CreateProduct {
            name: Name::parse("Widget").expect("a name"),
            stock: Quantity::new(u32::MAX).expect("positive"),
        })
        .await?;

    let before = latency(&bus, product.id, 200).await?;
    let started = Instant::now();
    let made = futures::stream::iter(0..holds)
        .map(|_| reserve(&bus, product.id))
        .buffer_unordered(64)
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await;
    let took = started.elapsed();
    let after = latency(&bus, product.id, 200).await?;

    println!("holds_made {made} of {holds}");
    println!("holds_seconds {:.1}", took.as_secs_f64());
    println!("holds_per_second {:.0}", made as f64 / took.as_secs_f64());
    println!("reserve_p50_ms_at_0_holds {:.2}", before.0);
    println!("reserve_p99_ms_at_0_holds {:.2}", before.1);
    println!("reserve_p50_ms_at_{made}_holds {:.2}", after.0);
    println!("reserve_p99_ms_at_{made}_holds {:.2}", after.1);
    products.shutdown().await;
    conn.drain(Duration::from_secs(5)).await?;
    server.stop().await?;
    Ok(())
}
