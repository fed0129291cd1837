//! The seed's flow, in one process.

use contract::order::{OrderFulfilled, OrderStatus};
use futures::StreamExt;
use messaging_core::EventMeta;

use crate::support::{instant_payments, spawn_system, WAIT};

#[tokio::test]
async fn an_order_flows_from_placement_to_fulfilment_and_stock_goes_100_to_90() {
    let system = spawn_system(Some(instant_payments())).await;
    // One subscriber for every event: it sees them in the order the broker
    // received them.
    let mut all = system.bus().client().subscribe("events.>").await.unwrap();
    let mut fulfilled = system.bus().watch::<OrderFulfilled>().await.unwrap();

    let user = system.user().await;
    let product = system.product(100).await;
    let order = system.place(&user, &product, 10).await.unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(
        system.get_product(&product).await.available,
        90,
        "reserved at once"
    );

    let done = fulfilled.next_within(WAIT).await.unwrap();
    assert_eq!(done.event.order.id, order.id);
    assert_eq!(
        system.get_order(order.id).await.status,
        OrderStatus::Fulfilled
    );
    let after = system.get_product(&product).await;
    assert_eq!((after.stock, after.available), (90, 90));

    // The order's own events, in the order of the flow, all in one flow.
    let mut flow = Vec::new();
    let mut correlation = None;
    while flow.last() != Some(&contract::order::FULFILLED.to_owned()) {
        let message = tokio::time::timeout(WAIT, all.next())
            .await
            .unwrap()
            .unwrap();
        let meta: EventMeta = serde_json::from_slice(&message.payload).unwrap();
        if message.subject.as_str() == contract::order::CREATED {
            correlation = Some(meta.correlation_id);
        }
        if correlation == Some(meta.correlation_id) {
            flow.push(message.subject.to_string());
        }
    }
    assert_eq!(
        flow,
        [
            contract::order::CREATED,
            contract::payment::SUCCEEDED,
            contract::order::PAID,
            contract::product::STOCK_UPDATED,
            contract::order::FULFILLED,
        ]
    );
    system.shutdown().await;
}

#[tokio::test]
async fn the_demo_scenario_ends_with_90_in_stock() {
    let app = demo::app::App::start(
        demo::app::Broker::Launch(Default::default()),
        instant_payments(),
        messaging_core::Storage::Durable,
    )
    .await
    .unwrap();
    let outcome = demo::scenario::run(
        app.bus(),
        std::time::Duration::ZERO,
        messaging_core::DEFAULT_DEADLINE,
    )
    .await
    .unwrap();
    assert!(outcome.paid);
    assert_eq!(outcome.order.quantity.get(), 10);
    assert_eq!(
        (outcome.final_product.stock, outcome.final_product.available),
        (90, 90)
    );
    app.shutdown().await.unwrap();
}
