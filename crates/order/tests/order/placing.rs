//! `order.create` and `order.get`: a placed order is pending, announced and
//! kept; refusals (unknown user or product, not enough stock, peers absent or
//! hung, malformed input) are structured errors and keep nothing.

use contract::order::{GetOrder, Order, OrderCreated, OrderId, OrderStatus, PlaceOrder};
use contract::product::ProductId;
use contract::user::{GetUser, UserId};
use messaging_core::Rpc;
use messaging_core::DEFAULT_REQUEST_TIMEOUT;
use testkit::expect_refusal;

use crate::support::{flow, q, spawn_app, spawn_app_with, Serving, QUIET, WAIT};

#[tokio::test]
async fn placed_order_is_pending_announced_and_kept() {
    let app = spawn_app().await;
    let (user, product) = (app.user(), app.product(10));
    let mut created = app.bus().watch::<OrderCreated>().await.unwrap();

    let correlation = flow();
    let order = app
        .bus()
        .request_in_flow(
            &PlaceOrder {
                user_id: user,
                product_id: product,
                quantity: q(3),
            },
            correlation,
        )
        .await
        .expect("order placed");
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(
        (order.user_id, order.product_id, order.quantity),
        (user, product, q(3))
    );

    let event = created.next_within(WAIT).await.unwrap();
    assert_eq!(event.event.order, order);
    assert_eq!(
        event.meta.correlation_id, correlation,
        "the event stays in the request's flow"
    );

    assert_eq!(app.get(order.id).await, order);
    // The stock was reserved for this very order, by the product module.
    let reservation = app.state.reservation(order.id).expect("stock reserved");
    assert_eq!(
        (reservation.product_id, reservation.quantity),
        (product, q(3))
    );
    assert_eq!(app.state.available(product), 7);

    let stats = app.module.stats(PlaceOrder::SUBJECT).unwrap();
    assert_eq!((stats.completed, stats.failed), (1, 0));
    app.shutdown().await;
}

#[tokio::test]
async fn refused_orders_are_explained_and_not_kept() {
    let app = spawn_app().await;
    let (user, product) = (app.user(), app.product(5));
    let mut created = app.bus().watch::<OrderCreated>().await.unwrap();

    let err = expect_refusal(app.place(UserId::new(), product, 1).await);
    assert_eq!((err.status, err.code.as_str()), (404, "user_not_found"));
    assert_eq!(
        app.peer_calls("product.reserve"),
        0,
        "no stock is reserved for an unknown user"
    );

    let unknown_product = ProductId::new();
    let err = expect_refusal(app.place(user, unknown_product, 1).await);
    assert_eq!((err.status, err.code.as_str()), (404, "product_not_found"));
    assert!(
        err.message.contains(&unknown_product.to_string()),
        "{}",
        err.message
    );

    let err = expect_refusal(app.place(user, product, 6).await);
    assert_eq!((err.status, err.code.as_str()), (409, "insufficient_stock"));
    assert!(
        err.message.contains("5 available"),
        "the product module's reason is passed on: {}",
        err.message
    );
    assert_eq!(app.state.available(product), 5);

    // Each refusal was replied after anything it published, on this same
    // connection: had a refused order been announced, its OrderCreated would
    // come before this one.
    let valid = app.place(user, product, 5).await.expect("a valid order");
    let first = created.next_within(WAIT).await.unwrap().event.order;
    assert_eq!(first, valid, "the first order announced is the valid one");
    assert_eq!(app.state.available(product), 0);

    let stats = app.module.stats(PlaceOrder::SUBJECT).unwrap();
    assert_eq!((stats.completed, stats.failed), (4, 3));
    // The unknown user is asked about once; the known one once, then remembered.
    assert_eq!(app.peer_calls("user.get"), 2);
    assert_eq!(app.peer_calls("product.reserve"), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn absent_user_module_is_unavailable_not_a_timeout() {
    let app = spawn_app_with(Serving::Nothing).await;
    let err = expect_refusal(app.place(UserId::new(), ProductId::new(), 1).await);
    assert_eq!((err.status, err.code.as_str()), (503, "unavailable"));
    assert!(
        err.message.contains("user.get"),
        "names who is missing: {}",
        err.message
    );
    app.shutdown().await;
}

#[tokio::test]
async fn absent_product_module_is_unavailable_not_a_timeout() {
    let app = spawn_app_with(Serving::UsersOnly).await;
    let user = app.user();
    let mut created = app.bus().watch::<OrderCreated>().await.unwrap();

    let err = expect_refusal(app.place(user, ProductId::new(), 1).await);
    assert_eq!((err.status, err.code.as_str()), (503, "unavailable"));
    assert!(
        err.message.contains("product.reserve"),
        "names who is missing: {}",
        err.message
    );
    assert_eq!(app.peer_calls("user.get"), 1);

    // The refusal was replied after anything it published: nothing was announced.
    app.bus().client().flush().await.unwrap();
    assert!(
        created.next_within(QUIET).await.is_err(),
        "no order was announced"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn hung_user_module_is_unavailable_once_the_order_module_gives_up() {
    let app = spawn_app_with(Serving::Nothing).await;
    // Somebody takes user.get requests and never answers them.
    let _hung = app
        .bus()
        .client()
        .subscribe(GetUser::SUBJECT)
        .await
        .unwrap();
    app.bus().client().flush().await.unwrap();

    // A caller more patient than the order module's own request timeout gets
    // a structured 503, not silence.
    let patient = app
        .bus()
        .clone()
        .with_request_timeout(DEFAULT_REQUEST_TIMEOUT * 2);
    let request = PlaceOrder {
        user_id: UserId::new(),
        product_id: ProductId::new(),
        quantity: q(1),
    };
    let err = expect_refusal(patient.request(&request).await);
    assert_eq!((err.status, err.code.as_str()), (503, "unavailable"));
    assert!(err.message.contains("timed out"), "{}", err.message);
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_orders_are_bad_requests_naming_the_problem() {
    let app = spawn_app().await;
    let (user, product) = (app.user(), app.product(10));
    let cases = [
        (
            format!(r#"{{"user_id":"{user}","product_id":"{product}","quantity":0}}"#),
            "quantity must be greater than zero",
        ),
        (
            format!(r#"{{"user_id":"{user}","product_id":"{product}","quantity":-1}}"#),
            "invalid value: integer `-1`",
        ),
        (
            format!(r#"{{"user_id":"{user}","product_id":"{product}","quantity":"3"}}"#),
            "invalid type: string \"3\"",
        ),
        (
            format!(r#"{{"user_id":"{user}","product_id":"{product}","quantity":1.5}}"#),
            "invalid type: floating point",
        ),
        (
            format!(r#"{{"user_id":"{user}","quantity":3}}"#),
            "missing field `product_id`",
        ),
        (
            format!(r#"{{"user_id":"ada","product_id":"{product}","quantity":3}}"#),
            "UUID",
        ),
        ("not json".to_owned(), "expected a JSON object"),
        ("{not json".to_owned(), "key must be a string"),
        (
            format!(r#"["{user}","{product}",3]"#),
            "expected a JSON object",
        ),
        (String::new(), "empty payload"),
    ];
    for (payload, problem) in &cases {
        let err = app
            .broker()
            .request_raw(PlaceOrder::SUBJECT, payload)
            .await
            .expect_err("malformed input is refused");
        assert_eq!(
            (err.status, err.code.as_str()),
            (400, "bad_request"),
            "{payload}"
        );
        assert!(err.message.contains(problem), "{payload}: {}", err.message);
    }
    assert_eq!(
        app.peer_calls("user.get"),
        0,
        "bad input never reaches the peers"
    );
    assert_eq!(app.state.available(product), 10);

    // Unknown fields are ignored: the contract can grow.
    let reply = app
        .broker()
        .request_raw(
            PlaceOrder::SUBJECT,
            &format!(
                r#"{{"user_id":"{user}","product_id":"{product}","quantity":2,"coupon":"X"}}"#
            ),
        )
        .await
        .expect("extra fields are accepted");
    let order: Order = serde_json::from_slice(&reply).unwrap();
    assert_eq!((order.quantity, order.status), (q(2), OrderStatus::Pending));

    let stats = app.module.stats(PlaceOrder::SUBJECT).unwrap();
    let malformed = cases.len() as u64;
    assert_eq!((stats.completed, stats.failed), (malformed + 1, malformed));
    app.shutdown().await;
}

#[tokio::test]
async fn getting_an_unknown_or_malformed_order_is_refused() {
    let app = spawn_app().await;
    let unknown = OrderId::new();
    let err = expect_refusal(app.bus().request(&GetOrder { id: unknown }).await);
    assert_eq!((err.status, err.code.as_str()), (404, "not_found"));
    assert!(
        err.message.contains(&unknown.to_string()),
        "{}",
        err.message
    );

    for payload in [r#"{"id":"nope"}"#, r#"{}"#, r#"{"id":42}"#] {
        let err = app
            .broker()
            .request_raw(GetOrder::SUBJECT, payload)
            .await
            .expect_err("malformed input is refused");
        assert_eq!(
            (err.status, err.code.as_str()),
            (400, "bad_request"),
            "{payload}"
        );
    }
    app.shutdown().await;
}
