//! The crash test: the whole system runs as a separate process (`demo serve`
//! with a data dir) under a stream of orders, and is SIGKILLed — broker and
//! all — at random moments, then restarted on the same store. At the end no
//! accepted order is lost and no effect happened twice.
//!
//! Defaults stay small for CI; `CRASH_ORDERS=N CRASH_KILLS=K` soak longer:
//! `CRASH_ORDERS=3000 CRASH_KILLS=20 cargo test -p demo --test demo crash -- --nocapture`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use contract::order::{OrderId, OrderStatus, PlaceOrder};
use contract::product::{GetProduct, Product};
use futures::StreamExt;
use nix::sys::signal::Signal;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::binary::{assert_gone, broker_pid, start_until, Running};
use crate::durability::terminal_statuses;
use crate::support::{bucket, place_until_answered, q};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `demo serve` on the store in `data_dir`.
async fn serve(data_dir: &Path, port: Option<u16>) -> Running {
    let dir = data_dir.to_str().unwrap().to_owned();
    let port = port.map(|p| p.to_string());
    let mut args = vec![
        "serve",
        "--data-dir",
        &dir,
        "--payment-delay",
        "0",
        "--payment-failure-rate",
        "0.2",
        "--seed",
        "7",
    ];
    if let Some(port) = &port {
        args.extend(["--port", port]);
    }
    start_until(&args, "serving on").await
}

fn url_of(running: &Running) -> String {
    running
        .seen
        .lines()
        .find_map(|l| l.strip_prefix("serving on "))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn killing_the_system_at_random_moments_loses_no_order_and_doubles_no_effect() {
    let orders = env_or("CRASH_ORDERS", 300);
    let kills = env_or("CRASH_KILLS", 4);
    let seed: u64 = rand::random();
    println!("crash test: {orders} orders, {kills} kills, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let data = tempfile::tempdir().unwrap();
    let mut system = serve(data.path(), None).await;
    let url = url_of(&system);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();

    // The client reconnects by itself each time the system is back on its port.
    // As admin: the checks below read the modules' buckets.
    let client = crate::binary::connect_to(&system, "admin").await;
    let bus = client
        .bus()
        .clone()
        .with_request_timeout(Duration::from_secs(2));
    let initial = (orders * 2) as u32;
    let (user, product) = crate::support::customer_and_product(&bus, initial).await;

    // Every accepted order, by key; the killer waits on it for progress.
    let (accepted, mut progress) = watch::channel(HashMap::<String, OrderId>::new());
    let accepted = Arc::new(accepted);
    let driver = {
        let (bus, accepted) = (bus.clone(), accepted.clone());
        let request = PlaceOrder {
            user_id: user.id,
            product_id: product.id,
            quantity: q(1),
        };
        tokio::spawn(async move {
            futures::stream::iter(0..orders)
                .for_each_concurrent(16, |i| {
                    let (bus, accepted, request) = (bus.clone(), accepted.clone(), request.clone());
                    async move {
                        let key = format!("crash-order-{i}");
                        let id =
                            place_until_answered(&bus, &request, &key, Duration::from_secs(180))
                                .await;
                        accepted.send_modify(|all| {
                            all.insert(key, id);
                        });
                    }
                })
                .await;
        })
    };

    let per_run = (orders / (kills + 1)).max(2);
    for kill in 0..kills {
        // Kill mid-load: once the restarted system has taken a random number
        // of new orders (the client reconnected and orders flow again), plus
        // a random moment within the next few milliseconds.
        let before = progress.borrow().len();
        let target = (before + rng.gen_range(1..per_run)).min(orders - 1);
        tokio::time::timeout(
            Duration::from_secs(60),
            progress.wait_for(|all| all.len() >= target),
        )
        .await
        .expect("no progress after restart")
        .unwrap();
        // The random moment itself: part of the experiment, not a wait.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
        let placed = progress.borrow().len();
        println!("kill {}: SIGKILL after {placed} accepted orders", kill + 1);
        let broker = broker_pid(&system.seen);
        system.signal(Signal::SIGKILL);
        let (status, _) = system.finish().await;
        assert!(!status.success());
        // The broker dies with its parent; wait for its port to be free.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{broker}")).exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker {broker} outlived the demo"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        system = serve(data.path(), Some(port)).await;
    }

    tokio::time::timeout(Duration::from_secs(240), driver)
        .await
        .unwrap()
        .unwrap();
    let accepted = progress.borrow().clone();
    assert_eq!(accepted.len(), orders);
    let ids: Vec<OrderId> = accepted.values().copied().collect();
    let statuses = terminal_statuses(&bus, &ids, Duration::from_secs(120)).await;

    let fulfilled = statuses
        .values()
        .filter(|s| **s == OrderStatus::Fulfilled)
        .count();
    let failed = statuses
        .values()
        .filter(|s| **s == OrderStatus::Failed)
        .count();
    assert_eq!(fulfilled + failed, orders, "{statuses:?}");

    // Exactly once: one stored order per accepted order, one payment per order.
    let stored_orders = bucket(&bus, "orders").await;
    let payments = bucket(&bus, "payments").await;
    let succeeded = payments
        .iter()
        .filter(|p| p["outcome"] == "succeeded")
        .count();
    let declined = payments.len() - succeeded;
    println!(
        "crash test: {orders} orders, {kills} kills: {fulfilled} fulfilled, {failed} failed; \
         stored orders {}, payments {} ({succeeded} succeeded, {declined} declined)",
        stored_orders.len(),
        payments.len()
    );
    assert_eq!(stored_orders.len(), orders, "lost or duplicated orders");
    assert_eq!(payments.len(), orders, "one payment per order");
    assert_eq!(succeeded, fulfilled, "payments = paid orders");
    assert_eq!(declined, failed);

    let after: Product = bus.request(&GetProduct { id: product.id }).await.unwrap();
    assert_eq!(
        after.stock,
        initial - fulfilled as u32,
        "stock committed once per paid order"
    );
    assert_eq!(after.available, after.stock, "no reservation left behind");
    println!("crash test: lost = 0, duplicated = 0");

    client.drain(Duration::from_secs(10)).await.unwrap();
    let broker = broker_pid(&system.seen);
    system.signal(Signal::SIGTERM);
    let (status, output) = system.finish().await;
    assert!(status.success(), "{output}");
    assert_gone(broker);
}
