//! The order lifecycle, driven by publishing the events the payment and
//! product modules would: `pending -> paid -> fulfilled`, `pending -> failed`,
//! `pending -> cancelled` (`order.cancel`), and duplicates or late events
//! that must change nothing.

use contract::order::{
    CancelOrder, OrderCancelled, OrderFailed, OrderFulfilled, OrderId, OrderPaid, OrderStatus,
};
use contract::payment::{Payment, PaymentFailed, PaymentId, PaymentSucceeded};
use contract::product::{Product, ProductId, StockChange, StockUpdated};
use contract::values::Name;
use messaging_core::{Event, Rpc};
use testkit::expect_refusal;
use uuid::Uuid;

use crate::support::{flow, spawn_app, App, QUIET, WAIT};

fn succeeded(order_id: OrderId) -> PaymentSucceeded {
    PaymentSucceeded {
        payment: Payment {
            id: PaymentId::new(),
            order_id,
        },
    }
}

fn stock_updated(order_id: OrderId, product_id: ProductId, change: StockChange) -> StockUpdated {
    StockUpdated {
        product: Product {
            id: product_id,
            name: Name::parse("Widget").unwrap(),
            stock: 9,
            available: 9,
        },
        order_id,
        change,
    }
}

/// Publishes `PaymentSucceeded` for `order_id` and returns its flow.
async fn pay(app: &App, order_id: OrderId) -> Uuid {
    let correlation = flow();
    app.bus()
        .publish(&succeeded(order_id), correlation)
        .await
        .unwrap();
    correlation
}

#[tokio::test]
async fn payment_then_committed_stock_fulfils_the_order() {
    let app = spawn_app().await;
    let order = app.pending_order().await;
    let mut paid = app.bus().watch::<OrderPaid>().await.unwrap();
    let mut fulfilled = app.bus().watch::<OrderFulfilled>().await.unwrap();

    let correlation = pay(&app, order.id).await;
    let event = paid.next_within(WAIT).await.unwrap();
    assert_eq!(event.event.order.id, order.id);
    assert_eq!(event.event.order.status, OrderStatus::Paid);
    assert_eq!(
        event.meta.correlation_id, correlation,
        "the flow carries on"
    );
    assert_eq!(app.get(order.id).await.status, OrderStatus::Paid);

    // A released reservation never fulfils an order.
    let released = stock_updated(order.id, order.product_id, StockChange::Released);
    app.bus().publish(&released, correlation).await.unwrap();
    app.handled(StockUpdated::SUBJECT, 1).await;
    assert_eq!(app.get(order.id).await.status, OrderStatus::Paid);

    let committed = stock_updated(order.id, order.product_id, StockChange::Committed);
    app.bus().publish(&committed, correlation).await.unwrap();
    let event = fulfilled.next_within(WAIT).await.unwrap();
    assert_eq!(event.event.order.id, order.id);
    assert_eq!(event.event.order.status, OrderStatus::Fulfilled);
    assert_eq!(event.meta.correlation_id, correlation);
    let after = app.get(order.id).await;
    assert_eq!(after.status, OrderStatus::Fulfilled);
    assert_eq!(
        (after.user_id, after.product_id, after.quantity),
        (order.user_id, order.product_id, order.quantity)
    );

    // A late duplicate of the payment changes nothing: the order stays fulfilled.
    pay(&app, order.id).await;
    app.handled(PaymentSucceeded::SUBJECT, 2).await;
    assert_eq!(app.get(order.id).await.status, OrderStatus::Fulfilled);
    let stats = app.module.stats(PaymentSucceeded::SUBJECT).unwrap();
    assert_eq!(stats.failed, 0, "a duplicate is absorbed, not an error");
    app.shutdown().await;
}

#[tokio::test]
async fn declined_payment_fails_the_order_with_the_reason() {
    let app = spawn_app().await;
    let order = app.pending_order().await;
    let mut failed = app.bus().watch::<OrderFailed>().await.unwrap();

    let correlation = flow();
    let declined = PaymentFailed {
        payment: Payment {
            id: PaymentId::new(),
            order_id: order.id,
        },
        reason: "card declined by the issuer".to_owned(),
    };
    app.bus().publish(&declined, correlation).await.unwrap();
    let event = failed.next_within(WAIT).await.unwrap();
    assert_eq!(event.event.order.id, order.id);
    assert_eq!(event.event.order.status, OrderStatus::Failed);
    assert_eq!(event.event.reason, "card declined by the issuer");
    assert_eq!(event.meta.correlation_id, correlation);
    assert_eq!(app.get(order.id).await.status, OrderStatus::Failed);

    // A failed order is final: it can be neither cancelled nor paid. A
    // payment that lands on it anyway (it was on the way when the order's
    // payment deadline failed it) is a race of the saga, not an error: the
    // order stays failed and the payment module refunds it.
    let err = expect_refusal(app.cancel(order.id).await);
    assert_eq!((err.status, err.code.as_str()), (409, "invalid_transition"));
    pay(&app, order.id).await;
    app.handled(PaymentSucceeded::SUBJECT, 1).await;
    assert_eq!(
        app.module.stats(PaymentSucceeded::SUBJECT).unwrap().failed,
        0
    );
    assert_eq!(app.get(order.id).await.status, OrderStatus::Failed);
    app.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_pending_order_is_announced_once() {
    let app = spawn_app().await;
    let (order, other) = (app.pending_order().await, app.pending_order().await);
    let mut cancelled = app.bus().watch::<OrderCancelled>().await.unwrap();

    let reply = app
        .cancel(order.id)
        .await
        .expect("a pending order can be cancelled");
    assert_eq!((reply.id, reply.status), (order.id, OrderStatus::Cancelled));
    let event = cancelled.next_within(WAIT).await.unwrap();
    assert_eq!(event.event.order, reply);
    assert_eq!(app.get(order.id).await.status, OrderStatus::Cancelled);

    // Cancelling again is a success that changes nothing.
    let again = app
        .cancel(order.id)
        .await
        .expect("cancelling twice is not an error");
    assert_eq!(again, reply);

    // The second cancel was replied after anything it published, on this
    // connection: a second OrderCancelled would come before the other order's.
    app.cancel(other.id).await.unwrap();
    let next = cancelled.next_within(WAIT).await.unwrap();
    assert_eq!(
        next.event.order.id, other.id,
        "one OrderCancelled per order"
    );

    let stats = app.module.stats(CancelOrder::SUBJECT).unwrap();
    assert_eq!((stats.completed, stats.failed), (3, 0));
    app.shutdown().await;
}

#[tokio::test]
async fn only_pending_orders_can_be_cancelled() {
    let app = spawn_app().await;
    let order = app.pending_order().await;
    let mut paid = app.bus().watch::<OrderPaid>().await.unwrap();
    pay(&app, order.id).await;
    paid.next_within(WAIT).await.unwrap();

    let err = expect_refusal(app.cancel(order.id).await);
    assert_eq!((err.status, err.code.as_str()), (409, "invalid_transition"));
    assert!(err.message.contains("paid"), "{}", err.message);
    assert_eq!(app.get(order.id).await.status, OrderStatus::Paid);

    let unknown = OrderId::new();
    let err = expect_refusal(app.cancel(unknown).await);
    assert_eq!((err.status, err.code.as_str()), (404, "not_found"));
    app.shutdown().await;
}

#[tokio::test]
async fn late_payment_does_not_revive_a_cancelled_order() {
    let app = spawn_app().await;
    let order = app.pending_order().await;
    let mut paid = app.bus().watch::<OrderPaid>().await.unwrap();
    app.cancel(order.id).await.unwrap();

    pay(&app, order.id).await;
    app.handled(PaymentSucceeded::SUBJECT, 1).await;
    let stats = app.module.stats(PaymentSucceeded::SUBJECT).unwrap();
    assert_eq!(
        (stats.completed, stats.failed, stats.dead_lettered),
        (1, 0, 0),
        "a normal race of the saga (the payment module refunds), not a dead letter"
    );
    assert_eq!(app.get(order.id).await.status, OrderStatus::Cancelled);
    assert!(
        paid.next_within(QUIET).await.is_err(),
        "a cancelled order is never paid"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn duplicate_payment_pays_the_order_once() {
    let app = spawn_app().await;
    let (first, second) = (app.pending_order().await, app.pending_order().await);
    let mut paid = app.bus().watch::<OrderPaid>().await.unwrap();

    // The same payment three times: published, re-published with the same
    // event id (the stream stores it once), and retried by its publisher
    // (same payload, new event id: delivered again).
    let payment = succeeded(first.id);
    let correlation = flow();
    let meta = app.bus().publish(&payment, correlation).await.unwrap();
    let repeat = app.bus().publish_as(&payment, meta).await.unwrap();
    assert!(repeat.duplicate, "the stream drops a repeated event id");
    app.bus().publish(&payment, correlation).await.unwrap();
    pay(&app, second.id).await;

    // All three deliveries handled (and what they published flushed to our
    // watcher): only then is the absence of a third OrderPaid meaningful.
    app.handled(PaymentSucceeded::SUBJECT, 3).await;
    let mut orders = Vec::new();
    for _ in 0..2 {
        orders.push(paid.next_within(WAIT).await.unwrap().event.order);
    }
    let mut ids: Vec<OrderId> = orders.iter().map(|o| o.id).collect();
    ids.sort_unstable();
    let mut expected = vec![first.id, second.id];
    expected.sort_unstable();
    assert_eq!(ids, expected, "one OrderPaid per order");
    assert!(orders.iter().all(|o| o.status == OrderStatus::Paid));
    assert!(paid.next_within(QUIET).await.is_err(), "no third OrderPaid");

    let stats = app.module.stats(PaymentSucceeded::SUBJECT).unwrap();
    assert_eq!(
        (stats.completed, stats.failed),
        (3, 0),
        "duplicates are absorbed, not errors"
    );
    assert_eq!(app.get(first.id).await.status, OrderStatus::Paid);
    assert_eq!(app.get(second.id).await.status, OrderStatus::Paid);
    app.shutdown().await;
}
