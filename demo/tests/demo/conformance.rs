//! The running system keeps to its contract: what each module serves on
//! `$SRV.INFO` is exactly what its declaration says, and every event stored
//! during a full run of the saga was published by a module that declares it.

use std::collections::BTreeSet;

use contract::order::{CancelOrder, OrderStatus};
use contract::shipping::GetShipment;
use futures::StreamExt;
use messaging_core::PUBLISHED_BY;

use crate::support::{instant_payments, spawn_system, WAIT};

#[tokio::test]
async fn each_module_serves_exactly_its_declared_endpoints() {
    let system = spawn_system(Some(instant_payments())).await;
    let client = system.bus().client();
    for module in contract::MODULES {
        let reply = client
            .request(format!("$SRV.INFO.{}", module.name), "".into())
            .await
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        let served: BTreeSet<&str> = info["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["subject"].as_str().unwrap())
            .collect();
        let declared: BTreeSet<&str> = module.serves.iter().map(|e| e.subject).collect();
        assert_eq!(served, declared, "module {}", module.name);
        assert_eq!(info["description"], module.description);
    }
    system.shutdown().await;
}

#[tokio::test]
async fn every_stored_event_is_declared_by_the_module_that_published_it() {
    // Payments take a while, so that the cancellation below comes first.
    let system = spawn_system(Some(payment::PaymentConfig {
        delay: std::time::Duration::from_millis(300),
        ..instant_payments()
    }))
    .await;
    let payment = system.module("payment");
    let user = system.user().await;
    let product = system.product(100).await;
    // Paid and shipped, declined (over the card limit), cancelled.
    let paid = system.place(&user, &product, 2).await.unwrap();
    let declined = system.place(&user, &product, 60).await.unwrap();
    let cancelled = system.place(&user, &product, 1).await.unwrap();
    let cancel = system
        .bus()
        .request(&CancelOrder { id: cancelled.id })
        .await;
    assert_eq!(cancel.unwrap().status, OrderStatus::Cancelled);
    // Every order's payment is decided, and the paid one ships.
    payment
        .handled(contract::order::CREATED, 3, WAIT)
        .await
        .expect("three payments");
    system
        .module("shipping")
        .handled(contract::order::FULFILLED, 1, WAIT)
        .await
        .expect("shipping sees the fulfilment");
    let shipment = system
        .bus()
        .request(&GetShipment { order_id: paid.id })
        .await;
    assert_eq!(shipment.unwrap().order_id, paid.id);
    system
        .module("order")
        .handled(contract::payment::FAILED, 1, WAIT)
        .await
        .expect("the order module sees the declined payment");
    assert_eq!(
        system.get_order(declined.id).await.status,
        OrderStatus::Failed
    );

    // Read back everything the stream stored.
    let stream = system
        .bus()
        .jetstream()
        .get_stream(messaging_core::EVENTS_STREAM)
        .await
        .unwrap();
    let stored = stream.get_info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(stored as usize);
    let mut seen = BTreeSet::new();
    while let Some(message) = tokio::time::timeout(WAIT, messages.next()).await.unwrap() {
        let message = message.unwrap();
        let subject = message.subject.to_string();
        let publisher = message
            .headers
            .as_ref()
            .and_then(|h| h.get(PUBLISHED_BY))
            .unwrap_or_else(|| panic!("{subject}: no {PUBLISHED_BY} header"))
            .to_string();
        let module = contract::module(&publisher).unwrap_or_else(|| panic!("{publisher}?"));
        assert!(
            module.publishes(&subject),
            "{publisher} published {subject}, which it does not declare"
        );
        seen.insert(subject);
    }
    // The run did exercise the saga's branches.
    for subject in [
        contract::user::CREATED,
        contract::order::CREATED,
        contract::payment::SUCCEEDED,
        contract::payment::FAILED,
        contract::order::FAILED,
        contract::order::CANCELLED,
        contract::product::STOCK_UPDATED,
        contract::order::FULFILLED,
        contract::shipping::DISPATCHED,
    ] {
        assert!(
            seen.contains(subject),
            "{subject} never published: {seen:?}"
        );
    }
    system.shutdown().await;
}
