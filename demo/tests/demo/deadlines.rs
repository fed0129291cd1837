//! Saga deadlines, kept by the broker (message schedules): an order not paid
//! in time fails and gives its stock back, a payment that comes too late is
//! never kept, a hold nobody follows up is released, and a deadline fires
//! once even when nothing of ours runs at that moment.

use std::collections::HashMap;
use std::time::Duration;

use contract::order::{
    GetOrder, OrderFailed, OrderFulfilled, OrderId, OrderStatus, PaymentDue, PAYMENT_TIMEOUT,
};
use contract::product::{ReserveStock, StockChange, StockUpdated};
use futures::future::join_all;
use messaging_core::dead_letter::DeadLetters;
use messaging_core::{
    shutdown_all, Event, ModuleHandle, ModuleOptions, Storage, DEADLINES_STREAM, EVENTS_STREAM,
};
use payment::PaymentConfig;
use testkit::{expect_refusal, spawn_broker};

use crate::support::{instant_payments, q, System, WAIT};

/// Short enough for a test, long enough that a healthy placement is far
/// from it.
const DEADLINE: Duration = Duration::from_secs(1);

fn options(deadline: Duration) -> ModuleOptions {
    ModuleOptions {
        deadline,
        ..ModuleOptions::with_storage(Storage::Durable)
    }
}

/// User, product and order, with `deadline`: no payment module.
async fn register_unpaid(client: &async_nats::Client, deadline: Duration) -> Vec<ModuleHandle> {
    let modules = demo::app::Modules::parse("user,product,order").unwrap();
    demo::app::register_some(
        client,
        &modules,
        PaymentConfig::default(),
        options(deadline),
    )
    .await
    .unwrap()
}

async fn without_payments(deadline: Duration) -> System {
    let broker = spawn_broker().await;
    let modules = register_unpaid(broker.bus().client(), deadline).await;
    System {
        broker,
        modules,
        others: Vec::new(),
    }
}

/// The outcome the payment module stored for `order`, as its wire name
/// (`succeeded`, `voided`, `refunded`, `declined`); `None` if none.
async fn payment_outcome(system: &System, order: OrderId) -> Option<String> {
    let kv = system
        .bus()
        .jetstream()
        .get_key_value("payments")
        .await
        .unwrap();
    let entry = kv.get(order.to_string()).await.unwrap()?;
    let record: serde_json::Value = serde_json::from_slice(&entry).unwrap();
    Some(match &record["outcome"] {
        serde_json::Value::String(unit) => unit.clone(),
        serde_json::Value::Object(tagged) => tagged.keys().next().unwrap().clone(),
        other => panic!("unexpected outcome {other}"),
    })
}

async fn assert_no_dead_letters(system: &System) {
    let letters = DeadLetters::open(system.bus().client(), Storage::Durable)
        .await
        .unwrap();
    assert_eq!(letters.list().await.unwrap(), Vec::new());
}

/// How many messages `stream` holds on `subject`.
async fn stored_on(system: &System, stream: &str, subject: &str) -> u64 {
    let stream = system.bus().jetstream().get_stream(stream).await.unwrap();
    let info = stream.info_with_subjects(subject).await.unwrap();
    use futures::TryStreamExt;
    let subjects: HashMap<String, usize> = info.try_collect().await.unwrap();
    subjects.values().sum::<usize>() as u64
}

#[tokio::test]
async fn an_unpaid_order_fails_at_its_deadline_and_a_late_payment_module_charges_nothing() {
    let mut system = without_payments(DEADLINE).await;
    let mut failed = system.bus().watch::<OrderFailed>().await.unwrap();
    let mut updates = system.bus().watch::<StockUpdated>().await.unwrap();
    let user = system.user().await;
    let product = system.product(10).await;
    let order = system.place(&user, &product, 3).await.unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(system.get_product(&product).await.available, 7);

    // Nobody pays: at its deadline the order fails, and says why.
    let event = failed
        .next_matching(WAIT, |e| e.event.order.id == order.id)
        .await
        .unwrap();
    assert!(
        event.event.reason.starts_with(PAYMENT_TIMEOUT),
        "{}",
        event.event.reason
    );
    assert_eq!(event.event.order.status, OrderStatus::Failed);
    // The compensation: its hold is released.
    updates
        .next_matching(WAIT, |e| {
            e.event.order_id == order.id && e.event.change == StockChange::Released
        })
        .await
        .unwrap();
    let after = system.get_product(&product).await;
    assert_eq!((after.stock, after.available), (10, 10));
    assert_eq!(system.get_order(order.id).await.status, OrderStatus::Failed);

    // The payment module starts late: it finds the order placed, then
    // failed, and takes nothing for it.
    let payments = payment::register_with(
        system.bus().client().clone(),
        instant_payments(),
        options(DEADLINE),
    )
    .await
    .unwrap();
    payments.handled("take_payment", 1, WAIT).await.unwrap();
    payments
        .handled("refund_failed_order", 1, WAIT)
        .await
        .unwrap();
    system.modules.push(payments);
    assert_eq!(
        payment_outcome(&system, order.id).await.as_deref(),
        Some("voided")
    );
    assert_eq!(system.get_order(order.id).await.status, OrderStatus::Failed);
    let after = system.get_product(&product).await;
    assert_eq!((after.stock, after.available), (10, 10));
    assert_no_dead_letters(&system).await;
    system.shutdown().await;
}

#[tokio::test]
async fn a_hold_whose_order_never_comes_is_released_at_its_deadline() {
    let system = without_payments(DEADLINE).await;
    let mut updates = system.bus().watch::<StockUpdated>().await.unwrap();
    let product = system.product(5).await;

    // A reserve by a caller that never follows up with an order.
    let ghost = OrderId::new();
    let reserve = ReserveStock {
        order_id: ghost,
        product_id: product.id,
        quantity: q(4),
    };
    system.bus().request(&reserve).await.unwrap();
    assert_eq!(system.get_product(&product).await.available, 1);

    updates
        .next_matching(WAIT, |e| {
            e.event.order_id == ghost && e.event.change == StockChange::Released
        })
        .await
        .unwrap();
    let after = system.get_product(&product).await;
    assert_eq!((after.stock, after.available), (5, 5));

    // Settled once: the same reserve again cannot bring the hold back.
    let err = expect_refusal(system.bus().request(&reserve).await);
    assert_eq!(
        (err.status, err.code.as_str()),
        (409, "reservation_mismatch")
    );
    assert_eq!(system.get_product(&product).await.available, 5);
    assert_no_dead_letters(&system).await;
    system.shutdown().await;
}

#[tokio::test]
async fn a_payment_racing_the_deadline_is_kept_or_given_back_never_both() {
    const ORDERS: usize = 12;
    let mut system = without_payments(DEADLINE).await;
    let mut fulfilled = system.bus().watch::<OrderFulfilled>().await.unwrap();
    let mut failed = system.bus().watch::<OrderFailed>().await.unwrap();
    let user = system.user().await;
    let product = system.product(100).await;
    let mut ended: HashMap<OrderId, OrderStatus> = HashMap::new();
    let (mut fulfilments, mut failures) = (0u64, 0u64);

    // Rounds of payments that take as long as the order's deadline, and a
    // little more (the broker fires a schedule up to about 100 ms after its
    // time, measured): payment and deadline land within milliseconds of
    // each other. The payment module is not told
    // the deadline (so it does not void late payments itself): every race
    // is decided by the order module, and whatever it decides against a
    // payment taken, the payment module must undo.
    for delay_ms in [1_000, 1_100, 1_150, 1_400] {
        let payments = PaymentConfig {
            delay: Duration::from_millis(delay_ms),
            ..instant_payments()
        };
        let unaware = options(Duration::from_secs(3600));
        let client = system.bus().client().clone();
        let payment = payment::register_with(client, payments, unaware)
            .await
            .unwrap();
        let placed = join_all((0..ORDERS).map(|_| system.place(&user, &product, 1))).await;
        let placed: Vec<OrderId> = placed.into_iter().map(|o| o.unwrap().id).collect();

        // Every order ends, one way or the other, once.
        let mut round = (0u64, 0u64);
        while placed.iter().any(|id| !ended.contains_key(id)) {
            let (id, status) = tokio::select! {
                done = fulfilled.next_within(WAIT) => (done.unwrap().event.order.id, OrderStatus::Fulfilled),
                done = failed.next_within(WAIT) => (done.unwrap().event.order.id, OrderStatus::Failed),
            };
            assert!(placed.contains(&id), "{id} was not placed in this round");
            assert_eq!(ended.insert(id, status), None, "{id} ended twice");
            match status {
                OrderStatus::Fulfilled => round.0 += 1,
                _ => round.1 += 1,
            }
        }
        // ...and the other modules have settled it: every payment decided,
        // every failed order's payment undone, every hold settled.
        payment
            .handled("take_payment", ORDERS as u64, WAIT)
            .await
            .unwrap();
        payment
            .handled("refund_failed_order", round.1, WAIT)
            .await
            .unwrap();
        fulfilments += round.0;
        failures += round.1;
        let products = system.module("product");
        products
            .handled("commit_paid_order", fulfilments, WAIT)
            .await
            .unwrap();
        products
            .handled("release_failed_order", failures, WAIT)
            .await
            .unwrap();
        println!(
            "deadline race, payments of {delay_ms} ms against a deadline of {DEADLINE:?}: {} fulfilled, {} failed",
            round.0, round.1
        );
        payment.shutdown().await;
    }

    for (id, status) in &ended {
        assert_eq!(system.get_order(*id).await.status, *status, "order {id}");
        let outcome = payment_outcome(&system, *id).await;
        match status {
            OrderStatus::Fulfilled => assert_eq!(outcome.as_deref(), Some("succeeded"), "{id}"),
            _ => assert!(
                matches!(outcome.as_deref(), Some("voided" | "refunded")),
                "failed order {id} kept its payment: {outcome:?}"
            ),
        }
    }
    let after = system.get_product(&product).await;
    assert_eq!(after.stock, 100 - fulfilments as u32);
    assert_eq!(after.available, after.stock, "no hold is left");
    assert_no_dead_letters(&system).await;
    system.modules.retain(|m| m.name() != "payment");
    system.shutdown().await;
}

#[tokio::test]
async fn a_deadline_that_comes_while_the_system_is_down_fires_once_when_it_is_back() {
    let deadline = Duration::from_secs(2);
    let mut system = without_payments(deadline).await;
    let mut due = system.bus().watch::<PaymentDue>().await.unwrap();
    let user = system.user().await;
    let product = system.product(10).await;
    let order = system.place(&user, &product, 2).await.unwrap();

    // Everything stops before the deadline...
    shutdown_all(std::mem::take(&mut system.modules)).await;
    // ...and the broker fires its slot's sweep with nothing of ours running.
    due.next_matching(WAIT, |e| !e.event.second_look)
        .await
        .unwrap();
    let asked = system.bus().request(&GetOrder { id: order.id }).await;
    assert!(asked.is_err(), "nothing serves orders now: {asked:?}");

    // Back up: the deadline waiting in the stream is handled.
    let mut failed = system.bus().watch::<OrderFailed>().await.unwrap();
    system.modules = register_unpaid(system.bus().client(), deadline).await;
    let event = failed
        .next_matching(WAIT, |e| e.event.order.id == order.id)
        .await
        .unwrap();
    assert!(event.event.reason.starts_with(PAYMENT_TIMEOUT));
    system
        .module("product")
        .handled("release_failed_order", 1, WAIT)
        .await
        .unwrap();
    let after = system.get_product(&product).await;
    assert_eq!((after.stock, after.available), (10, 10));

    // Once: one failure stored (the sweep fired once, and looks a second
    // time a timeout later, which changes nothing).
    let fired = stored_on(&system, DEADLINES_STREAM, PaymentDue::SUBJECT).await;
    assert!((1..=2).contains(&fired), "{fired} sweeps");
    let failures = stored_on(&system, EVENTS_STREAM, OrderFailed::SUBJECT).await;
    assert_eq!(failures, 1);
    assert_no_dead_letters(&system).await;
    system.shutdown().await;
}

#[tokio::test]
async fn a_hold_settled_takes_its_deadline_back_and_the_broker_keeps_no_schedule_for_it() {
    // The default timeout (30 s): nothing fires during the test.
    let system = crate::support::spawn_system(Some(instant_payments())).await;
    let mut fulfilled = system.bus().watch::<OrderFulfilled>().await.unwrap();
    let mut released = system.bus().watch::<StockUpdated>().await.unwrap();
    let user = system.user().await;
    let product = system.product(10).await;
    let paid = system.place(&user, &product, 2).await.unwrap();
    fulfilled
        .next_matching(WAIT, |e| e.event.order.id == paid.id)
        .await
        .unwrap();
    let cancelled = system.place(&user, &product, 1).await.unwrap();
    system
        .bus()
        .request(&contract::order::CancelOrder { id: cancelled.id })
        .await
        .unwrap();
    released
        .next_matching(WAIT, |e| {
            e.event.order_id == cancelled.id && e.event.change == StockChange::Released
        })
        .await
        .unwrap();
    // Both holds were settled: neither schedule stays with the broker until
    // its timeout (what is left of a cancellation expires in a second).
    let hold_schedules = format!("schedules.{}.>", contract::product::HoldDue::SUBJECT);
    let taken_back = async {
        while stored_on(&system, DEADLINES_STREAM, &hold_schedules).await > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Well before the 30 s at which they would fire (and go) by themselves.
    tokio::time::timeout(Duration::from_secs(10), taken_back)
        .await
        .expect("no hold deadline left pending");
    let after = system.get_product(&product).await;
    assert_eq!((after.stock, after.available), (8, 8));
    system.shutdown().await;
}

#[tokio::test]
async fn a_payment_sweep_drops_the_marker_of_an_order_never_stored_once_it_is_old() {
    let system = without_payments(DEADLINE).await;
    let mut failed = system.bus().watch::<OrderFailed>().await.unwrap();
    // Two markers without their order, as an attempt that died (or was
    // answered 503) after marking leaves them: one two minutes old, one
    // five seconds old (past the deadline, but maybe being stored now).
    let index = system
        .bus()
        .jetstream()
        .get_key_value("orders_open")
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (old, young) = (OrderId::new(), OrderId::new());
    for (id, since) in [(old, now - 120_000), (young, now - 5_000)] {
        index
            .put(id.to_string(), since.to_string().into())
            .await
            .unwrap();
    }
    // An order that nobody pays: its sweep comes, fails it, and looks at
    // every due marker.
    let user = system.user().await;
    let product = system.product(10).await;
    let order = system.place(&user, &product, 1).await.unwrap();
    failed
        .next_matching(WAIT, |e| e.event.order.id == order.id)
        .await
        .unwrap();
    let dropped = async {
        while index.get(old.to_string()).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, dropped)
        .await
        .expect("the old marker dropped");
    assert!(
        index.get(young.to_string()).await.unwrap().is_some(),
        "a marker young enough to be an order being stored stays"
    );
    system.shutdown().await;
}
