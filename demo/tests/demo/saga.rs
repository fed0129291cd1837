//! The saga's guarantees: no overselling under concurrency, compensation of
//! declined payments and cancellations, idempotent handling of duplicates,
//! and the stock invariants over random interleavings.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use contract::order::{
    CancelOrder, Order, OrderCancelled, OrderFailed, OrderFulfilled, OrderId, OrderPaid,
    OrderStatus,
};
use contract::payment::{Payment, PaymentId, PaymentSucceeded};
use contract::product::{StockChange, StockUpdated};
use messaging_core::{EventMeta, Published};
use payment::PaymentConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::expect_refusal;
use uuid::Uuid;

use crate::support::{instant_payments, spawn_instances, spawn_system, WAIT};

#[tokio::test]
async fn five_hundred_concurrent_orders_never_oversell_a_stock_of_one_hundred() {
    five_hundred_orders_on_a_stock_of_one_hundred(1).await;
}

/// Several instances of every module decide on shared state: none may
/// decide on a stale copy of it (a false `insufficient_stock`, an order
/// left `paid`).
#[tokio::test]
async fn two_and_three_instances_never_oversell_nor_refuse_free_stock() {
    five_hundred_orders_on_a_stock_of_one_hundred(2).await;
    five_hundred_orders_on_a_stock_of_one_hundred(3).await;
}

async fn five_hundred_orders_on_a_stock_of_one_hundred(instances: usize) {
    let system = spawn_instances(instances, instant_payments()).await;
    let user = system.user().await;
    let product = system.product(100).await;
    let mut updates = system.bus().watch::<StockUpdated>().await.unwrap();
    let mut fulfilled = system.bus().watch::<OrderFulfilled>().await.unwrap();

    let attempts = (0..500).map(|_| system.place(&user, &product, 1));
    let results = futures::future::join_all(attempts).await;
    let accepted: Vec<&Order> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(accepted.len(), 100);
    assert_eq!(refused.len(), 400);
    for err in refused {
        let remote = err
            .remote()
            .unwrap_or_else(|| panic!("not a structured error: {err}"));
        assert_eq!(
            (remote.status, remote.code.as_str()),
            (409, "insufficient_stock"),
            "{remote}"
        );
    }

    // Every stock state anybody could observe stays within bounds.
    let mut last_stock = 100;
    for _ in 0..100 {
        let update = updates.next_within(WAIT).await.unwrap().event;
        assert_eq!(update.change, StockChange::Committed);
        assert!(update.product.stock <= 100);
        assert!(update.product.available <= update.product.stock);
        last_stock = last_stock.min(update.product.stock);
    }
    assert_eq!(last_stock, 0);
    let mut done = HashSet::new();
    while done.len() < 100 {
        done.insert(fulfilled.next_within(WAIT).await.unwrap().event.order.id);
    }
    assert!(accepted.iter().all(|o| done.contains(&o.id)));
    let after = system.get_product(&product).await;
    assert_eq!((after.stock, after.available), (0, 0));
    assert_no_dead_letters(&system).await;
    system.shutdown().await;
}

async fn assert_no_dead_letters(system: &crate::support::System) {
    let letters = messaging_core::dead_letter::DeadLetters::open(
        system.bus().client(),
        messaging_core::Storage::Durable,
    )
    .await
    .unwrap()
    .list()
    .await
    .unwrap();
    assert!(letters.is_empty(), "{letters:?}");
}

#[tokio::test]
async fn a_declined_payment_fails_the_order_and_gives_the_stock_back() {
    let system = spawn_system(Some(PaymentConfig {
        failure_rate: 1.0,
        ..instant_payments()
    }))
    .await;
    let user = system.user().await;
    let product = system.product(100).await;
    let mut failed = system.bus().watch::<OrderFailed>().await.unwrap();
    let mut updates = system.bus().watch::<StockUpdated>().await.unwrap();

    let order = system.place(&user, &product, 10).await.unwrap();
    let event = failed.next_within(WAIT).await.unwrap().event;
    assert_eq!(event.order.id, order.id);
    assert!(event.reason.contains("declined"), "{}", event.reason);
    let update = updates.next_within(WAIT).await.unwrap().event;
    assert_eq!(
        (update.order_id, update.change),
        (order.id, StockChange::Released)
    );

    assert_eq!(system.get_order(order.id).await.status, OrderStatus::Failed);
    let after = system.get_product(&product).await;
    assert_eq!((after.stock, after.available), (100, 100));
    system.shutdown().await;
}

#[tokio::test]
async fn cancelling_releases_a_pending_order_and_is_refused_for_a_paid_one() {
    // No payment module: orders stay pending until the test pays them.
    let system = spawn_system(None).await;
    let user = system.user().await;
    let product = system.product(100).await;
    let mut updates = system.bus().watch::<StockUpdated>().await.unwrap();
    let mut cancelled = system.bus().watch::<OrderCancelled>().await.unwrap();
    let mut paid = system.bus().watch::<OrderPaid>().await.unwrap();

    let pending = system.place(&user, &product, 30).await.unwrap();
    assert_eq!(system.get_product(&product).await.available, 70);
    let reply = system
        .bus()
        .request(&CancelOrder { id: pending.id })
        .await
        .unwrap();
    assert_eq!(reply.status, OrderStatus::Cancelled);
    assert_eq!(
        cancelled.next_within(WAIT).await.unwrap().event.order.id,
        pending.id
    );
    let update = updates.next_within(WAIT).await.unwrap().event;
    assert_eq!(
        (update.order_id, update.change),
        (pending.id, StockChange::Released)
    );
    assert_eq!((update.product.stock, update.product.available), (100, 100));

    let order = system.place(&user, &product, 10).await.unwrap();
    pay(
        &system,
        order.id,
        EventMeta {
            event_id: Uuid::new_v4(),
            correlation_id: Uuid::new_v4(),
        },
    )
    .await;
    assert_eq!(
        paid.next_within(WAIT).await.unwrap().event.order.id,
        order.id
    );
    let err = expect_refusal(system.bus().request(&CancelOrder { id: order.id }).await);
    assert_eq!((err.status, err.code.as_str()), (409, "invalid_transition"));
    assert!(
        err.message.contains("cannot become cancelled"),
        "{}",
        err.message
    );
    let status = system.get_order(order.id).await.status;
    assert!(
        matches!(status, OrderStatus::Paid | OrderStatus::Fulfilled),
        "{status}"
    );
    system.shutdown().await;
}

#[tokio::test]
async fn a_duplicated_payment_success_decrements_stock_once() {
    let system = spawn_system(None).await;
    let user = system.user().await;
    let product = system.product(100).await;
    let mut fulfilled = system.bus().watch::<OrderFulfilled>().await.unwrap();

    let order = system.place(&user, &product, 10).await.unwrap();
    let meta = EventMeta {
        event_id: Uuid::new_v4(),
        correlation_id: Uuid::new_v4(),
    };
    // Published twice with the same event id: the stream stores it once.
    assert!(!pay(&system, order.id, meta).await.duplicate);
    assert!(
        pay(&system, order.id, meta).await.duplicate,
        "the stream flags the repeat"
    );
    // Delivered twice (a redelivery, or a re-publish after the duplicate
    // window): the handlers absorb it.
    let again = EventMeta {
        event_id: Uuid::new_v4(),
        ..meta
    };
    assert!(!pay(&system, order.id, again).await.duplicate);

    assert_eq!(
        fulfilled.next_within(WAIT).await.unwrap().event.order.id,
        order.id
    );
    let orders = system.module("order");
    let handled = orders
        .handled(contract::payment::SUCCEEDED, 2, WAIT)
        .await
        .unwrap();
    assert_eq!(
        (handled.completed, handled.failed),
        (2, 0),
        "the duplicate is absorbed, not an error"
    );
    let products = system.module("product");
    let commits = products
        .handled(contract::order::PAID, 1, WAIT)
        .await
        .unwrap();
    assert_eq!(commits.failed, 0);

    let after = system.get_product(&product).await;
    assert_eq!((after.stock, after.available), (90, 90));
    system.shutdown().await;
}

/// Publishes a payment success as the payment module would.
async fn pay(system: &crate::support::System, order_id: OrderId, meta: EventMeta) -> Published {
    let event = PaymentSucceeded {
        payment: Payment {
            id: PaymentId(meta.event_id),
            order_id,
        },
    };
    system.bus().publish_as(&event, meta).await.unwrap()
}

/// Random interleavings of placing, cancelling, and payments succeeding or
/// failing; at rest the stock must match the orders exactly.
#[tokio::test]
async fn random_interleavings_keep_the_stock_invariants() {
    let seed: u64 = std::env::var("SAGA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("SAGA_SEED={seed}");
    for round in 0..3 {
        run_round(seed.wrapping_add(round), 1).await;
    }
}

/// The same on two and three full instances of the system.
#[tokio::test]
async fn random_interleavings_on_several_instances_keep_the_stock_invariants() {
    let seed: u64 = std::env::var("SAGA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("SAGA_SEED={seed}");
    run_round(seed, 2).await;
    run_round(seed.wrapping_add(1), 3).await;
}

async fn run_round(seed: u64, instances: usize) {
    const INITIAL: u32 = 100;
    const ORDERS: usize = 80;
    let mut rng = StdRng::seed_from_u64(seed);
    let system = Arc::new(
        spawn_instances(
            instances,
            PaymentConfig {
                delay: Duration::from_millis(rng.gen_range(0..5)),
                failure_rate: 0.3,
                seed: Some(seed),
                limit: 4,
            },
        )
        .await,
    );
    let user = system.user().await;
    let product = system.product(INITIAL).await;
    let mut fulfilled = system.bus().watch::<OrderFulfilled>().await.unwrap();
    let mut failed = system.bus().watch::<OrderFailed>().await.unwrap();
    let mut cancelled = system.bus().watch::<OrderCancelled>().await.unwrap();
    let mut updates = system.bus().watch::<StockUpdated>().await.unwrap();

    // Each client places an order of 1..=5 (5 is over the card limit: always
    // declined), and some try to cancel it after a random pause.
    let clients = (0..ORDERS).map(|_| {
        let quantity = rng.gen_range(1..=5);
        let cancel_after = rng
            .gen_bool(0.4)
            .then(|| Duration::from_micros(rng.gen_range(0..4000)));
        let (system, user, product) = (system.clone(), user.clone(), product.clone());
        async move {
            let order = system.place(&user, &product, quantity).await.ok()?;
            if let Some(pause) = cancel_after {
                tokio::time::sleep(pause).await;
                let _ = system.bus().request(&CancelOrder { id: order.id }).await;
            }
            Some(order)
        }
    });
    let accepted: Vec<Order> = futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(!accepted.is_empty());

    // Wait until every accepted order reached a terminal state and its
    // reservation was settled (committed or released).
    let mut terminal: HashMap<OrderId, OrderStatus> = HashMap::new();
    let mut settled: HashSet<OrderId> = HashSet::new();
    while terminal.len() < accepted.len() || settled.len() < accepted.len() {
        tokio::select! {
            e = fulfilled.next_within(WAIT) => { terminal.insert(e.unwrap().event.order.id, OrderStatus::Fulfilled); }
            e = failed.next_within(WAIT) => { terminal.insert(e.unwrap().event.order.id, OrderStatus::Failed); }
            e = cancelled.next_within(WAIT) => { terminal.insert(e.unwrap().event.order.id, OrderStatus::Cancelled); }
            e = updates.next_within(WAIT) => {
                let update = e.unwrap().event;
                assert!(update.product.available <= update.product.stock);
                assert!(update.product.stock <= INITIAL);
                assert!(settled.insert(update.order_id), "order {} settled twice", update.order_id);
            }
        }
    }

    let count = |s: OrderStatus| terminal.values().filter(|t| **t == s).count();
    println!(
        "seed {seed}: {} placed, {} accepted: {} fulfilled, {} failed, {} cancelled",
        ORDERS,
        accepted.len(),
        count(OrderStatus::Fulfilled),
        count(OrderStatus::Failed),
        count(OrderStatus::Cancelled)
    );
    let mut fulfilled_quantity = 0;
    for order in &accepted {
        let status = system.get_order(order.id).await.status;
        assert_eq!(
            Some(&status),
            terminal.get(&order.id),
            "seed {seed}: order {}",
            order.id
        );
        if status == OrderStatus::Fulfilled {
            fulfilled_quantity += order.quantity.get();
        }
    }
    assert_no_dead_letters(&system).await;
    let pending_quantity = 0; // every order is terminal now
    let after = system.get_product(&product).await;
    assert_eq!(
        after.stock,
        INITIAL - fulfilled_quantity,
        "seed {seed}: on hand"
    );
    assert_eq!(
        after.available,
        after.stock - pending_quantity,
        "seed {seed}: available"
    );

    Arc::into_inner(system)
        .expect("clients are done")
        .shutdown()
        .await;
}

#[tokio::test]
async fn cancelling_while_the_payment_is_taken_refunds_or_voids_it() {
    use contract::payment::PaymentRefunded;
    use messaging_core::dead_letter::DeadLetters;
    let system = spawn_system(Some(PaymentConfig {
        delay: Duration::from_millis(300),
        ..instant_payments()
    }))
    .await;
    let user = system.user().await;
    let product = system.product(100).await;
    let mut updates = system.bus().watch::<StockUpdated>().await.unwrap();
    let mut refunds = system.bus().watch::<PaymentRefunded>().await.unwrap();

    // Cancelled while its payment (300 ms) is in flight.
    let order = system.place(&user, &product, 10).await.unwrap();
    let cancelled = system
        .bus()
        .request(&CancelOrder { id: order.id })
        .await
        .unwrap();
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    let update = updates.next_within(WAIT).await.unwrap().event;
    assert_eq!(
        (update.order_id, update.change),
        (order.id, StockChange::Released)
    );

    // The payment lands on a cancelled order: absorbed, then given back.
    let orders = system.module("order");
    let payments = system.module("payment");
    payments
        .handled(contract::order::CREATED, 1, WAIT)
        .await
        .unwrap();
    payments
        .handled(contract::order::CANCELLED, 1, WAIT)
        .await
        .unwrap();
    // Both handlers finished, and a handler finishes only after what it
    // published is stored: a refund, if any, is in the stream now.
    let refund = refunds.next_within(Duration::from_secs(2)).await;
    match refund {
        // Charged first, refunded on the cancellation...
        Ok(refund) => assert_eq!(refund.event.payment.order_id, order.id),
        // ...or voided before it was charged, and never announced.
        Err(_) => assert_eq!(
            orders
                .stats(contract::payment::SUCCEEDED)
                .unwrap()
                .completed,
            0
        ),
    }
    let failed = orders.stats(contract::payment::SUCCEEDED).unwrap().failed;
    assert_eq!(failed, 0, "a payment on a cancelled order is not an error");
    let letters = DeadLetters::open(system.bus().client(), messaging_core::Storage::Durable)
        .await
        .unwrap();
    assert!(letters.list().await.unwrap().is_empty());
    assert_eq!(
        system.get_order(order.id).await.status,
        OrderStatus::Cancelled
    );
    let after = system.get_product(&product).await;
    assert_eq!((after.stock, after.available), (100, 100));
    system.shutdown().await;
}
