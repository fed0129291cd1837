//! The product module against a real broker: catalogue requests, atomic
//! reservations, and settling reservations from order events, once each.

use messaging_core::Event;
use std::time::Duration;

use contract::order::{Order, OrderCancelled, OrderFailed, OrderId, OrderPaid, OrderStatus};
use contract::product::{
    CreateProduct, GetProduct, Product, ProductCreated, ProductId, ReserveStock, StockChange,
    StockUpdated,
};
use contract::user::UserId;
use contract::values::{Name, Quantity};
use messaging_core::EventMeta;
use testkit::{expect_refusal, spawn_module, TestModule};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

/// The product module on its own broker, with helpers to drive it.
struct App {
    inner: TestModule,
}

async fn spawn_app() -> App {
    App {
        inner: spawn_module(product::register).await,
    }
}

impl std::ops::Deref for App {
    type Target = TestModule;
    fn deref(&self) -> &TestModule {
        &self.inner
    }
}

impl App {
    async fn product(&self, stock: u32) -> Product {
        self.bus()
            .request(&CreateProduct {
                name: Name::parse("Widget").unwrap(),
                stock: q(stock),
            })
            .await
            .unwrap()
    }

    async fn reserve(&self, product: ProductId, quantity: u32) -> OrderId {
        let order_id = OrderId::new();
        self.bus()
            .request(&ReserveStock {
                order_id,
                product_id: product,
                quantity: q(quantity),
            })
            .await
            .unwrap();
        order_id
    }

    async fn get(&self, id: ProductId) -> Product {
        self.bus().request(&GetProduct { id }).await.unwrap()
    }

    async fn shutdown(self) {
        self.inner.shutdown().await;
    }
}

fn q(n: u32) -> Quantity {
    Quantity::new(n).unwrap()
}

fn order(id: OrderId, product_id: ProductId, quantity: u32, status: OrderStatus) -> Order {
    Order {
        id,
        user_id: UserId::new(),
        product_id,
        quantity: q(quantity),
        status,
    }
}

#[tokio::test]
async fn create_then_get_and_the_event_carries_the_product() {
    let app = spawn_app().await;
    let mut created = app.bus().watch::<ProductCreated>().await.unwrap();
    let product = app.product(100).await;
    assert_eq!((product.stock, product.available), (100, 100));
    assert_eq!(product.name.as_str(), "Widget");
    assert_eq!(
        created.next_within(WAIT).await.unwrap().event.product,
        product
    );
    assert_eq!(app.get(product.id).await, product);

    let err = expect_refusal(
        app.bus()
            .request(&GetProduct {
                id: ProductId::new(),
            })
            .await,
    );
    assert_eq!((err.status, err.code.as_str()), (404, "not_found"));
    app.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_reason() {
    let app = spawn_app().await;
    let cases = [
        (
            r#"{"name":"W","stock":0}"#,
            "quantity must be greater than zero",
        ),
        (r#"{"name":"W","stock":-5}"#, "invalid value: integer `-5`"),
        (r#"{"name":"W","stock":"5"}"#, "invalid type: string"),
        (
            r#"{"name":"W","stock":1.5}"#,
            "invalid type: floating point",
        ),
        (r#"{"name":"","stock":5}"#, "name must not be empty"),
        (r#"{"stock":5}"#, "missing field `name`"),
        (r#"{"name":"W"}"#, "missing field `stock`"),
        (r#"["W", 5]"#, "expected a JSON object"),
    ];
    for (payload, reason) in cases {
        let err = app
            .broker
            .request_raw("product.create", payload)
            .await
            .unwrap_err();
        assert_eq!(
            (err.status, err.code.as_str()),
            (400, "bad_request"),
            "{payload}"
        );
        assert!(err.message.contains(reason), "{payload}: {}", err.message);
    }
    let stats = app.module.stats("product.create").unwrap();
    assert_eq!((stats.completed, stats.failed), (8, 8));
    app.shutdown().await;
}

#[tokio::test]
async fn reservations_hold_stock_and_refuse_what_is_not_available() {
    let app = spawn_app().await;
    let product = app.product(10).await;
    let first = app.reserve(product.id, 7).await;
    let after = app.get(product.id).await;
    assert_eq!((after.stock, after.available), (10, 3));

    let err = expect_refusal(
        app.bus()
            .request(&ReserveStock {
                order_id: OrderId::new(),
                product_id: product.id,
                quantity: q(4),
            })
            .await,
    );
    assert_eq!((err.status, err.code.as_str()), (409, "insufficient_stock"));
    assert!(err.message.contains("3 available"), "{}", err.message);

    // A retried reservation for the same order holds nothing more.
    app.bus()
        .request(&ReserveStock {
            order_id: first,
            product_id: product.id,
            quantity: q(7),
        })
        .await
        .unwrap();
    assert_eq!(app.get(product.id).await.available, 3);

    let err = expect_refusal(
        app.bus()
            .request(&ReserveStock {
                order_id: OrderId::new(),
                product_id: ProductId::new(),
                quantity: q(1),
            })
            .await,
    );
    assert_eq!((err.status, err.code.as_str()), (404, "not_found"));
    app.shutdown().await;
}

#[tokio::test]
async fn concurrent_reservations_never_oversell() {
    let app = spawn_app().await;
    let product = app.product(25).await;
    let requests: Vec<ReserveStock> = (0..100)
        .map(|_| ReserveStock {
            order_id: OrderId::new(),
            product_id: product.id,
            quantity: q(1),
        })
        .collect();
    let attempts = requests.iter().map(|request| app.bus().request(request));
    let results = futures::future::join_all(attempts).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(
            |r| matches!(r, Err(e) if e.remote().is_some_and(|e| e.code == "insufficient_stock")),
        )
        .count();
    assert_eq!((accepted, refused), (25, 75));
    let after = app.get(product.id).await;
    assert_eq!((after.stock, after.available), (25, 0));
    app.shutdown().await;
}

#[tokio::test]
async fn paid_orders_commit_and_failed_or_cancelled_ones_release() {
    let app = spawn_app().await;
    let product = app.product(100).await;
    let (paid, failed, cancelled) = (
        app.reserve(product.id, 10).await,
        app.reserve(product.id, 20).await,
        app.reserve(product.id, 30).await,
    );
    assert_eq!(app.get(product.id).await.available, 40);
    let mut updates = app.bus().watch::<StockUpdated>().await.unwrap();
    let flow = Uuid::new_v4();

    app.bus()
        .publish(
            &OrderPaid {
                order: order(paid, product.id, 10, OrderStatus::Paid),
            },
            flow,
        )
        .await
        .unwrap();
    let update = updates.next_within(WAIT).await.unwrap();
    assert_eq!(
        (update.event.order_id, update.event.change),
        (paid, StockChange::Committed)
    );
    assert_eq!(
        (update.event.product.stock, update.event.product.available),
        (90, 40)
    );
    assert_eq!(
        update.meta.correlation_id, flow,
        "the flow's correlation id is kept"
    );

    let reason = "card declined".to_owned();
    app.bus()
        .publish(
            &OrderFailed {
                order: order(failed, product.id, 20, OrderStatus::Failed),
                reason,
            },
            flow,
        )
        .await
        .unwrap();
    let update = updates.next_within(WAIT).await.unwrap();
    assert_eq!(
        (update.event.order_id, update.event.change),
        (failed, StockChange::Released)
    );
    assert_eq!(
        (update.event.product.stock, update.event.product.available),
        (90, 60)
    );

    app.bus()
        .publish(
            &OrderCancelled {
                order: order(cancelled, product.id, 30, OrderStatus::Cancelled),
            },
            flow,
        )
        .await
        .unwrap();
    let update = updates.next_within(WAIT).await.unwrap();
    assert_eq!(
        (update.event.order_id, update.event.change),
        (cancelled, StockChange::Released)
    );
    assert_eq!(
        (update.event.product.stock, update.event.product.available),
        (90, 90)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_duplicated_paid_event_commits_once() {
    let app = spawn_app().await;
    let product = app.product(100).await;
    let order_id = app.reserve(product.id, 10).await;
    let paid = OrderPaid {
        order: order(order_id, product.id, 10, OrderStatus::Paid),
    };
    let mut updates = app.bus().watch::<StockUpdated>().await.unwrap();
    // The same event published twice with one id (stored once), then once
    // more with another id (delivered again, as after the duplicate window).
    let meta = EventMeta {
        event_id: Uuid::new_v4(),
        correlation_id: Uuid::new_v4(),
    };
    assert!(!app.bus().publish_as(&paid, meta).await.unwrap().duplicate);
    assert!(app.bus().publish_as(&paid, meta).await.unwrap().duplicate);
    let later = EventMeta {
        event_id: Uuid::new_v4(),
        ..meta
    };
    app.bus().publish_as(&paid, later).await.unwrap();

    let handled = app.module.handled(OrderPaid::SUBJECT, 2, WAIT).await;
    assert_eq!(handled.map(|s| (s.completed, s.failed)), Some((2, 0)));
    let update = updates.next_within(WAIT).await.unwrap();
    assert_eq!(update.event.product.stock, 90);
    let after = app.get(product.id).await;
    assert_eq!(
        (after.stock, after.available),
        (90, 90),
        "one effect for two deliveries"
    );
    app.shutdown().await;
}

/// The bytes stored for the product `id` itself (not its holds).
async fn stored_record_len(app: &App, id: ProductId) -> usize {
    let kv = app
        .bus()
        .jetstream()
        .get_key_value("products")
        .await
        .unwrap();
    kv.get(id.to_string()).await.unwrap().unwrap().len()
}

#[tokio::test]
async fn many_holds_leave_the_product_record_as_small_as_one() {
    const HOLDS: u32 = 1_000;
    let app = spawn_app().await;
    let product = app.product(1_000_000).await;
    app.reserve(product.id, 1).await;
    let with_one = stored_record_len(&app, product.id).await;

    // Each hold is a key of its own next to the product: reserving more
    // rewrites a record that does not grow with them. It notes only the
    // holds in flight (counted, not yet known written), dropped at the next
    // change: after a hundred at once, one more leaves one, as at first.
    for wave in 0..(HOLDS - 2) / 100 + 1 {
        let n = (HOLDS - 2 - wave * 100).min(100);
        futures::future::join_all((0..n).map(|_| app.reserve(product.id, 1))).await;
    }
    app.reserve(product.id, 1).await;
    let with_many = stored_record_len(&app, product.id).await;
    assert!(
        with_many <= with_one + 3,
        "the product record grew from {with_one} to {with_many} bytes with {HOLDS} holds"
    );
    let now = app.get(product.id).await;
    assert_eq!((now.stock, now.available), (1_000_000, 1_000_000 - HOLDS));

    let kv = app
        .bus()
        .jetstream()
        .get_key_value("products")
        .await
        .unwrap();
    use futures::TryStreamExt;
    let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
    let prefix = format!("{}.", product.id);
    let holds = keys.iter().filter(|k| k.starts_with(&prefix)).count();
    assert_eq!(holds, HOLDS as usize, "one key per hold");
    app.shutdown().await;
}
