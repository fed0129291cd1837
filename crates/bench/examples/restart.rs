//! How long the order module takes to serve again after a restart, with a
//! history of finished orders behind it (the open-order index keeps this
//! independent of the history).
//!
//! `cargo run --release -p bench --example restart -- [ORDERS]` (default 30000)

use std::sync::Arc;
use std::time::{Duration, Instant};

use contract::order::PlaceOrder;
use contract::product::CreateProduct;
use contract::user::CreateUser;
use contract::values::{Name, Quantity};
use messaging_core::{shutdown_all, ModuleOptions, Storage};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(30_000);
    let server = broker::NatsServer::start().await?;
    let conn = messaging_core::Connection::connect(server.url(), "restart").await?;
    let bus = conn.bus().clone();
    let payment = payment::PaymentConfig {
        delay: Duration::ZERO,
        ..Default::default()
    };
    let modules = demo::app::register_modules(conn.client(), payment, Storage::Durable).await?;
    let user = bus
        .request(&CreateUser {
            name: Name::parse("Ada").unwrap(),
        })
        .await?;
    let product = bus
        .request(&CreateProduct {
            name: Name::parse("Widget").unwrap(),
            stock: Quantity::new(u32::MAX).unwrap(),
        })
        .await?;
    let order = PlaceOrder {
        user_id: user.id,
        product_id: product.id,
        quantity: Quantity::new(1).unwrap(),
    };
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..64).map(|_| {
        let (bus, order, next) = (bus.clone(), order.clone(), next.clone());
        async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                while bus.request(&order).await.is_err() {}
            }
        }
    });
    futures::future::join_all(workers).await;
    let orders = &modules[2];
    orders
        .wait_until("mark_fulfilled", Duration::from_secs(600), |s| {
            s.completed >= total as u64
        })
        .await
        .ok_or_else(|| anyhow::anyhow!("orders did not finish"))?;
    println!(
        "placed and fulfilled {total} orders in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    shutdown_all(modules).await;

    let started = Instant::now();
    let order_module = order::register_with(
        conn.client().clone(),
        ModuleOptions::with_storage(Storage::Durable),
    )
    .await?;
    println!(
        "restart_to_serving {:.3} s (order module, {total} finished orders)",
        started.elapsed().as_secs_f64()
    );
    order_module.shutdown().await;
    conn.drain(Duration::from_secs(5)).await?;
    server.stop().await?;
    Ok(())
}
