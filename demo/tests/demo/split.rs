//! Modules as separate processes: each `demo serve --modules X` against one
//! broker, three payment processes sharing the payments, one of them
//! SIGKILLed mid-load. Every order still ends once, paid at most once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use contract::order::{OrderStatus, PlaceOrder};
use contract::payment::PaymentSucceeded;
use contract::product::{CreateProduct, GetProduct};
use contract::user::CreateUser;
use contract::values::Name;
use futures::StreamExt;
use nix::sys::signal::Signal;

use crate::binary::{start_until, Running};
use crate::durability::terminal_statuses;
use crate::support::{bucket, place_until_answered, q};

const ORDERS: usize = 300;

async fn serve(url: &str, modules: &str) -> Running {
    let args = [
        "serve",
        "--nats-url",
        url,
        "--modules",
        modules,
        "--payment-delay",
        "5ms",
        "--payment-failure-rate",
        "0.2",
        "--seed",
        "11",
    ];
    start_until(&args, "serving on").await
}

/// How many events the handler `handler` of this process handled, from the
/// counts it logs when it stops.
fn handled(output: &str, handler: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.contains(" handled ") && l.contains(handler))
        .unwrap_or_else(|| panic!("no count for {handler}:\n{output}"));
    let count = line.split("handled=").nth(1).expect("a handled= field");
    count.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn modules_in_separate_processes_share_the_work_and_survive_a_kill() {
    let broker = testkit::spawn_broker().await;
    let url = broker.url().to_owned();
    let mut processes = Vec::new();
    for modules in ["user", "product", "order", "shipping"] {
        processes.push(serve(&url, modules).await);
    }
    let payments = [
        serve(&url, "payment").await,
        serve(&url, "payment").await,
        serve(&url, "payment").await,
    ];
    let [first, second, doomed] = payments;

    let bus = broker.bus().clone();
    let user = bus
        .request(&CreateUser {
            name: Name::parse("Ada").unwrap(),
        })
        .await
        .unwrap();
    let product = bus
        .request(&CreateProduct {
            name: Name::parse("Widget").unwrap(),
            stock: q(10_000),
        })
        .await
        .unwrap();

    // Keyed orders from 16 clients; one payment process dies half-way.
    let placed = Arc::new(tokio::sync::Semaphore::new(0));
    let clients = (0..16).map(|c| {
        let (bus, placed) = (bus.clone(), placed.clone());
        let request = PlaceOrder {
            user_id: user.id,
            product_id: product.id,
            quantity: q(1),
        };
        async move {
            let mut ids = Vec::new();
            for n in (c..ORDERS).step_by(16) {
                let key = format!("split-{n}");
                ids.push(place_until_answered(&bus, &request, &key, Duration::from_secs(60)).await);
                placed.add_permits(1);
            }
            ids
        }
    });
    let placing = tokio::spawn(futures::future::join_all(clients));
    let _half = placed.acquire_many(ORDERS as u32 / 2).await.unwrap();
    doomed.signal(Signal::SIGKILL);
    let ids: Vec<_> = placing.await.unwrap().into_iter().flatten().collect();
    assert_eq!(ids.len(), ORDERS);

    // Every order ends (the killed process's unacknowledged payments are
    // redelivered to the others after their ack wait).
    let statuses = terminal_statuses(&bus, &ids, Duration::from_secs(120)).await;
    let fulfilled = statuses
        .values()
        .filter(|s| **s == OrderStatus::Fulfilled)
        .count();
    let failed = statuses
        .values()
        .filter(|s| **s == OrderStatus::Failed)
        .count();
    assert_eq!(fulfilled + failed, ORDERS, "{statuses:?}");
    println!("split: {ORDERS} orders, {fulfilled} fulfilled, {failed} failed");

    // One payment per order, none taken twice.
    assert_eq!(bucket(&bus, "payments").await.len(), ORDERS);
    let stream = bus
        .jetstream()
        .get_stream(messaging_core::EVENTS_STREAM)
        .await
        .unwrap();
    let mut consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: contract::payment::SUCCEEDED.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let stored = consumer.info().await.unwrap().num_pending as usize;
    let mut successes = consumer.messages().await.unwrap().take(stored);
    let mut paid: HashMap<_, u32> = HashMap::new();
    while let Some(message) = successes.next().await {
        let event: messaging_core::Delivered<PaymentSucceeded> =
            messaging_core::Delivered::decode(&message.unwrap().payload).unwrap();
        *paid.entry(event.event.payment.order_id).or_default() += 1;
    }
    assert_eq!(paid.len(), fulfilled);
    assert!(paid.values().all(|n| *n == 1), "an order was paid twice");
    let after = bus.request(&GetProduct { id: product.id }).await.unwrap();
    assert_eq!(after.stock, 10_000 - fulfilled as u32);
    assert_eq!(after.available, after.stock, "nothing held at rest");

    // The two surviving payment processes both took a share.
    let mut shares = Vec::new();
    for payment in [first, second] {
        payment.signal(Signal::SIGTERM);
        let (status, output) = payment.finish().await;
        assert!(status.success(), "{output}");
        shares.push(handled(&output, "take_payment"));
    }
    println!("split: payment shares {shares:?} (plus the killed one's)");
    assert!(shares.iter().all(|n| *n > 0), "{shares:?}");
    for process in processes {
        process.signal(Signal::SIGTERM);
        let (status, output) = process.finish().await;
        assert!(status.success(), "{output}");
    }
    broker.shutdown().await;
}
