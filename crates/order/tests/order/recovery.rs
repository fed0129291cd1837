//! The recovery sweep at start: every order of the open-order index is
//! announced again, in its own flow; what is finished (its event now
//! stored), or was never stored, leaves the index. The state is written as a crashed run
//! left it: orders and markers in the buckets, their events never published.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use contract::order::{Order, OrderCreated, OrderFulfilled, OrderId, OrderPaid, OrderStatus};
use contract::product::ProductId;
use contract::user::UserId;
use messaging_core::store::Table;
use messaging_core::{Limits, Storage, EVENTS_STREAM};
use serde_json::json;
use testkit::spawn_broker;
use uuid::Uuid;

use crate::support::{q, WAIT};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn order(status: OrderStatus) -> Order {
    Order {
        id: OrderId::new(),
        user_id: UserId::new(),
        product_id: ProductId::new(),
        quantity: q(1),
        status,
    }
}

/// Counts what the order module logs as resumed at start (the only place
/// the sweep's count shows).
#[derive(Clone, Default)]
struct ResumedLog(Arc<Mutex<Vec<u64>>>);

impl tracing::Subscriber for ResumedLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Resumed(Option<u64>);
        impl tracing::field::Visit for Resumed {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "resumed" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut resumed = Resumed(None);
        event.record(&mut resumed);
        if let Some(count) = resumed.0 {
            self.0.lock().unwrap().push(count);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn the_sweep_at_start_resumes_what_was_stored_but_not_announced() {
    // A current-thread runtime: the module starts on this thread, under
    // this subscriber.
    let log = ResumedLog::default();
    let _logging = tracing::subscriber::set_default(log.clone());

    let broker = spawn_broker().await;
    let client = broker.bus().client();
    let limits = Limits::default();
    let orders: Table<serde_json::Value> =
        Table::open(client, Storage::Durable, "orders", None, &limits)
            .await
            .unwrap();
    let open: Table<u64> = Table::open(client, Storage::Durable, "orders_open", None, &limits)
        .await
        .unwrap();

    // What a crashed run left: a pending and a paid order, stored, their
    // events never out; a fulfilled one whose event may not be out either
    // (its marker is still there); a marker being written right now (its
    // order not stored yet), and one so old that its order never will be.
    let now = now_ms();
    let (pending, paid, fulfilled) = (
        order(OrderStatus::Pending),
        order(OrderStatus::Paid),
        order(OrderStatus::Fulfilled),
    );
    let flows = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    for (order, flow) in [&pending, &paid, &fulfilled].into_iter().zip(flows) {
        let record = json!({ "order": order, "reason": null, "correlation_id": flow });
        orders.create(&order.id.to_string(), &record).await.unwrap();
        open.put(&order.id.to_string(), &now).await.unwrap();
    }
    let (young, abandoned) = (OrderId::new(), OrderId::new());
    open.put(&young.to_string(), &now).await.unwrap();
    let ten_minutes_ago = now - 600_000;
    open.put(&abandoned.to_string(), &ten_minutes_ago)
        .await
        .unwrap();

    let mut created = broker.bus().watch::<OrderCreated>().await.unwrap();
    let mut paid_events = broker.bus().watch::<OrderPaid>().await.unwrap();
    let mut fulfilled_events = broker.bus().watch::<OrderFulfilled>().await.unwrap();
    // The sweep runs before the module serves: done when this returns.
    let module = order::register(client.clone()).await.unwrap();

    let event = created.next_within(WAIT).await.unwrap();
    assert_eq!(event.event.order, pending);
    assert_eq!(event.meta.correlation_id, flows[0], "in the order's flow");
    let event = paid_events.next_within(WAIT).await.unwrap();
    assert_eq!(event.event.order, paid);
    assert_eq!(event.meta.correlation_id, flows[1]);
    let event = fulfilled_events.next_within(WAIT).await.unwrap();
    assert_eq!(event.event.order, fulfilled);
    assert_eq!(event.meta.correlation_id, flows[2]);
    // And nothing else: one event per order of the index.
    let stream = broker.bus().jetstream().get_stream(EVENTS_STREAM).await;
    let stored = stream.unwrap().get_info().await.unwrap().state.messages;
    assert_eq!(stored, 3, "one event per order of the index");
    assert_eq!(*log.0.lock().unwrap(), [3], "logged: three orders resumed");

    // The unfinished orders keep their markers (they are not done yet), as
    // does the marker of an order perhaps being stored; the finished order's
    // (its event now stored) and the abandoned one's are gone.
    let mut left = open.keys().await.unwrap();
    left.sort();
    let mut expected: Vec<String> = [pending.id, paid.id, young]
        .iter()
        .map(|id| id.to_string())
        .collect();
    expected.sort();
    assert_eq!(left, expected);

    module.shutdown().await;
    broker.shutdown().await;
}
