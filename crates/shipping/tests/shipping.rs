//! The shipping module against a real broker: a fulfilled order is
//! dispatched once, whatever the redeliveries, and can be looked up.

use std::time::Duration;

use contract::order::{Order, OrderFulfilled, OrderId, OrderStatus};
use contract::product::ProductId;
use contract::shipping::{GetShipment, ShipmentDispatched};
use contract::user::UserId;
use contract::values::Quantity;
use testkit::{expect_refusal, spawn_module, TestModule};

const WAIT: Duration = Duration::from_secs(10);

async fn spawn_app() -> TestModule {
    spawn_module(shipping::register).await
}

fn fulfilled_order() -> Order {
    Order {
        id: OrderId::new(),
        user_id: UserId::new(),
        product_id: ProductId::new(),
        quantity: Quantity::new(3).unwrap(),
        status: OrderStatus::Fulfilled,
    }
}

#[tokio::test]
async fn a_fulfilled_order_is_dispatched_once_and_can_be_looked_up() {
    let app = spawn_app().await;
    let bus = app.bus();
    let mut dispatched = bus.watch::<ShipmentDispatched>().await.unwrap();
    let order = fulfilled_order();

    // Not fulfilled yet: nothing to look up.
    let err = expect_refusal(bus.request(&GetShipment { order_id: order.id }).await);
    assert_eq!((err.status, err.code.as_str()), (404, "not_found"));

    // The order module's event, twice (two publishes: two event ids, as
    // after a crash beyond the duplicate window).
    let flow = uuid::Uuid::new_v4();
    let event = OrderFulfilled {
        order: order.clone(),
    };
    bus.publish(&event, flow).await.unwrap();
    bus.publish(&event, flow).await.unwrap();
    app.module
        .handled(contract::order::FULFILLED, 2, WAIT)
        .await
        .expect("both deliveries handled");

    let first = dispatched.next_within(WAIT).await.unwrap();
    assert_eq!(first.meta.correlation_id, flow);
    let shipment = first.event.shipment;
    assert_eq!(
        (shipment.order_id, shipment.product_id, shipment.quantity),
        (order.id, order.product_id, order.quantity)
    );
    // The second delivery announced the same shipment as the same fact, and
    // the stream dropped it: the next dispatch stored is a marker the test
    // publishes now (the stream keeps order, so a repeat would come first).
    let marker = ShipmentDispatched {
        shipment: contract::shipping::Shipment {
            order_id: OrderId::new(),
            ..shipment.clone()
        },
    };
    bus.publish(&marker, flow).await.unwrap();
    let next = dispatched.next_within(WAIT).await.unwrap();
    assert_eq!(next.event, marker, "dispatched twice");

    let looked_up = bus
        .request(&GetShipment { order_id: order.id })
        .await
        .unwrap();
    assert_eq!(looked_up, shipment);
    assert_eq!(
        app.module.stats(contract::order::FULFILLED).unwrap().failed,
        0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_reason() {
    let app = spawn_app().await;
    for (payload, reason) in [
        (r#"{}"#, "missing field `order_id`"),
        (r#"{"order_id":"nope"}"#, "invalid"),
        (r#"["x"]"#, "expected a JSON object"),
    ] {
        let err = app
            .broker
            .request_raw("shipping.get", payload)
            .await
            .unwrap_err();
        assert_eq!(err.status, 400, "{payload}: {err}");
        assert!(err.message.contains(reason), "{payload}: {}", err.message);
    }
    app.shutdown().await;
}
