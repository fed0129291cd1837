//! Nothing lost, nothing twice, at the level of the whole system: poison
//! events, retried requests, modules and brokers that stop and come back.

use std::collections::HashMap;
use std::time::Duration;

use broker::{BrokerConfig, NatsServer};
use contract::order::{GetOrder, OrderFulfilled, OrderId, OrderStatus, PlaceOrder};
use contract::product::Product;
use messaging_core::dead_letter::{DeadLetterKind, DeadLetters};
use messaging_core::{shutdown_all, Bus, Connection, ModuleHandle, Storage};

use crate::support::{bucket, instant_payments, place_until_answered, q, spawn_system, WAIT};

#[tokio::test]
async fn a_malformed_order_created_event_is_poisoned_and_valid_orders_go_on() {
    let system = spawn_system(Some(instant_payments())).await;
    let user = system.user().await;
    let product = system.product(100).await;
    let mut fulfilled = system.bus().watch::<OrderFulfilled>().await.unwrap();

    system
        .bus()
        .jetstream()
        .publish(contract::order::CREATED, r#"{"order": "garbage"}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let order = system.place(&user, &product, 10).await.unwrap();
    assert_eq!(
        fulfilled.next_within(WAIT).await.unwrap().event.order.id,
        order.id
    );

    let payment = system.module("payment");
    payment
        .wait_until(contract::order::CREATED, WAIT, |s| s.dead_lettered == 1)
        .await
        .expect("the malformed event is dead-lettered");
    let letters = DeadLetters::open(system.bus().client(), Storage::Durable)
        .await
        .unwrap()
        .list()
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].kind, DeadLetterKind::Poisoned);
    assert_eq!(letters[0].subject, contract::order::CREATED);
    assert_eq!(letters[0].consumer, "payment_take_payment");
    assert!(
        letters[0].reason.contains("undecodable"),
        "{}",
        letters[0].reason
    );
    system.shutdown().await;
}

#[tokio::test]
async fn a_retried_order_create_with_the_same_key_places_one_order() {
    let system = spawn_system(None).await;
    let user = system.user().await;
    let product = system.product(100).await;
    let request = PlaceOrder {
        user_id: user.id,
        product_id: product.id,
        quantity: q(10),
    };
    let first = system
        .bus()
        .request_with_key(&request, "checkout-42")
        .await
        .unwrap();
    let again = system
        .bus()
        .request_with_key(&request, "checkout-42")
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        system.get_product(&product).await.available,
        90,
        "reserved once"
    );
    let other = system
        .bus()
        .request_with_key(&request, "checkout-43")
        .await
        .unwrap();
    assert_ne!(other.id, first.id);
    assert_eq!(system.get_product(&product).await.available, 80);
    system.shutdown().await;
}

#[tokio::test]
async fn pending_orders_and_unprocessed_events_resume_after_a_restart() {
    // First run: no payment module, so orders stay pending.
    let system = spawn_system(None).await;
    let user = system.user().await;
    let product = system.product(100).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(system.place(&user, &product, 2).await.unwrap().id);
    }
    // Each unfinished order is in the open-order index the restart reads.
    assert_eq!(bucket(system.bus(), "orders_open").await.len(), 5);
    let crate::support::System {
        broker, modules, ..
    } = system;
    shutdown_all(modules).await;

    // Second run on the same broker and store: everything comes back.
    let mut fulfilled = broker.bus().watch::<OrderFulfilled>().await.unwrap();
    let modules = register_all(broker.bus(), Storage::Durable).await;
    let mut done = Vec::new();
    for _ in 0..5 {
        done.push(fulfilled.next_within(WAIT).await.unwrap().event.order.id);
    }
    done.sort();
    ids.sort();
    assert_eq!(done, ids);
    let after: Product = broker
        .bus()
        .request(&contract::product::GetProduct { id: product.id })
        .await
        .unwrap();
    assert_eq!((after.stock, after.available), (90, 90));
    // Finished orders leave the index (erased before the fulfilment is
    // acknowledged, by a marker that expires a second later): the next
    // restart reads nothing, and the index does not grow with history.
    modules[2]
        .wait_until("mark_fulfilled", WAIT, |s| s.completed >= 5)
        .await
        .expect("five fulfilments handled");
    let index = broker
        .bus()
        .jetstream()
        .get_stream("KV_orders_open")
        .await
        .unwrap();
    assert!(
        bucket(broker.bus(), "orders_open").await.is_empty(),
        "the index lists no finished order"
    );
    let emptied = async {
        while index.get_info().await.unwrap().state.messages > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), emptied)
        .await
        .expect("the index keeps only open orders: its markers expired");
    shutdown_all(modules).await;
    broker.shutdown().await;
}

async fn register_all(bus: &Bus, storage: Storage) -> Vec<ModuleHandle> {
    demo::app::register_modules(bus.client(), instant_payments(), storage)
        .await
        .unwrap()
}

/// Waits until every order is in a terminal state; returns the statuses.
pub async fn terminal_statuses(
    bus: &Bus,
    ids: &[OrderId],
    timeout: Duration,
) -> HashMap<OrderId, OrderStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut statuses = HashMap::new();
    loop {
        for id in ids {
            if statuses
                .get(id)
                .is_some_and(|s: &OrderStatus| is_terminal(*s))
            {
                continue;
            }
            if let Ok(order) = bus.request(&GetOrder { id: *id }).await {
                statuses.insert(*id, order.status);
            }
        }
        if statuses.len() == ids.len() && statuses.values().all(|s| is_terminal(*s)) {
            return statuses;
        }
        let waiting = ids.len() - statuses.values().filter(|s| is_terminal(**s)).count();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{waiting} orders never finished"
        );
        // Polling the state the test is about, with a deadline: each round
        // is a real query, not a guess about timing.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_broker_restarting_mid_load_loses_nothing() {
    let store = tempfile::tempdir().unwrap();
    let (authorization, admin) = testkit::admin_only();
    let config = BrokerConfig {
        store_dir: Some(store.path().to_owned()),
        authorization: Some(authorization),
        ..BrokerConfig::default()
    };
    let server = NatsServer::start_with(config.clone()).await.unwrap();
    let port: u16 = server.url().rsplit(':').next().unwrap().parse().unwrap();
    let url = server.url().to_owned();
    let modules_conn = Connection::connect_as(&url, "modules", &admin)
        .await
        .unwrap();
    let client_conn = Connection::connect_as(&url, "client", &admin)
        .await
        .unwrap();
    let modules = register_all(modules_conn.bus(), Storage::Durable).await;
    let bus = client_conn.bus().clone();
    let (user, product) = crate::support::customer_and_product(&bus, 1000).await;

    // Orders keep coming while the broker goes away and comes back.
    let placing = {
        let (bus, user, product) = (bus.clone(), user.clone(), product.clone());
        tokio::spawn(async move {
            let request = PlaceOrder {
                user_id: user.id,
                product_id: product.id,
                quantity: q(1),
            };
            let mut ids = Vec::new();
            for i in 0..60 {
                let key = format!("restart-{i}");
                ids.push(place_until_answered(&bus, &request, &key, WAIT).await);
            }
            ids
        })
    };
    let mut created = bus.watch::<contract::order::OrderCreated>().await.unwrap();
    for _ in 0..20 {
        created.next_within(WAIT).await.unwrap();
    }
    server.stop().await.unwrap();
    let server = NatsServer::start_with(BrokerConfig {
        port: Some(port),
        ..config
    })
    .await
    .unwrap();

    let ids = tokio::time::timeout(Duration::from_secs(120), placing)
        .await
        .unwrap()
        .unwrap();
    let statuses = terminal_statuses(&bus, &ids, Duration::from_secs(120)).await;
    assert!(
        statuses.values().all(|s| *s == OrderStatus::Fulfilled),
        "{statuses:?}"
    );
    let after: Product = bus
        .request(&contract::product::GetProduct { id: product.id })
        .await
        .unwrap();
    assert_eq!((after.stock, after.available), (1000 - 60, 1000 - 60));

    shutdown_all(modules).await;
    modules_conn.drain(WAIT).await.unwrap();
    client_conn.drain(WAIT).await.unwrap();
    server.stop().await.unwrap();
}

/// No order leaves these statuses (the order module's rule, restated here:
/// the test reads orders from outside, as a client would).
fn is_terminal(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Fulfilled | OrderStatus::Failed | OrderStatus::Cancelled
    )
}

/// Two operators retry the same dead letter at the same moment: the event is
/// published again once, and exactly one of them is told it was.
#[tokio::test]
async fn a_dead_letter_retried_twice_at_once_is_published_once() {
    let system = spawn_system(None).await;
    let bus = system.bus();
    // A system with a payment module that gives up on a malformed event.
    let payment = payment::register(bus.client().clone(), instant_payments())
        .await
        .unwrap();
    bus.jetstream()
        .publish(contract::order::CREATED, "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    payment
        .wait_until("take_payment", WAIT, |s| s.dead_lettered == 1)
        .await
        .expect("dead-lettered");
    let letters = DeadLetters::open(bus.client(), Storage::Durable)
        .await
        .unwrap();
    let id = letters.list().await.unwrap()[0].id.clone();
    let stream = bus
        .jetstream()
        .get_stream(messaging_core::EVENTS_STREAM)
        .await
        .unwrap();
    let before = stream.get_info().await.unwrap().state.messages;

    let (a, b) = tokio::join!(letters.retry(&id), letters.retry(&id));
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{a:?} {b:?}"
    );
    let after = stream.get_info().await.unwrap().state.messages;
    assert_eq!(after, before + 1, "published once");
    // Redelivered, the same junk is dead-lettered again, once.
    payment
        .wait_until("take_payment", WAIT, |s| s.dead_lettered == 2)
        .await
        .expect("dead-lettered again");
    payment.shutdown().await;
    system.shutdown().await;
}
