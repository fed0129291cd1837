//! Least privilege on a real broker run with the generated authorization:
//! each module under its own identity runs the whole saga; the `client`
//! identity can do the public flow and nothing else; a module identity
//! cannot act as another; nobody connects without a known key.

use std::time::Duration;

use async_nats::ServerError;
use broker::{BrokerConfig, NatsServer};
use contract::order::{CancelOrder, OrderStatus, PlaceOrder};
use contract::product::GetProduct;
use demo::app::Modules;
use demo::auth::Identities;
use messaging_core::{Connection, ModuleHandle, ModuleOptions, Storage, EVENTS_STREAM};
use payment::PaymentConfig;
use tokio::sync::mpsc;

use crate::durability::terminal_statuses;
use crate::support::q;

/// A broker that knows only our identities, with every module connected
/// as itself.
struct Secured {
    identities: Identities,
    server: NatsServer,
    modules: Vec<(Connection, Vec<ModuleHandle>)>,
}

async fn spawn_secured(payment: PaymentConfig) -> Secured {
    let identities = Identities::load_or_generate(None).unwrap();
    let server = NatsServer::start_with(BrokerConfig {
        authorization: Some(identities.authorization()),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let mut modules = Vec::new();
    for module in contract::MODULES {
        let connection = Connection::connect_as(
            server.url(),
            module.name,
            &identities.credentials(module.name),
        )
        .await
        .unwrap();
        let handles = demo::app::register_some(
            connection.client(),
            &Modules::parse(module.name).unwrap(),
            payment.clone(),
            ModuleOptions::with_storage(Storage::Durable),
        )
        .await
        .unwrap_or_else(|err| panic!("{} under its own identity: {err}", module.name));
        modules.push((connection, handles));
    }
    Secured {
        identities,
        server,
        modules,
    }
}

impl Secured {
    /// A connection as `identity`, and the permission violations the
    /// server reports to it.
    async fn connect(
        &self,
        identity: &str,
    ) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let seed = std::fs::read_to_string(self.identities.seed_path(identity)).unwrap();
        let client = async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
            .custom_inbox_prefix(messaging_core::permissions::inbox_prefix(identity))
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(ServerError::Other(text)) = event {
                        let _ = tx.send(text);
                    }
                }
            })
            .connect(self.server.url())
            .await
            .unwrap();
        (client, rx)
    }

    async fn shutdown(self) {
        for (connection, handles) in self.modules {
            messaging_core::shutdown_all(handles).await;
            connection.drain(Duration::from_secs(5)).await.unwrap();
        }
        self.server.stop().await.unwrap();
    }
}

/// Waits (at most 5 s) for the server to report a permissions violation
/// naming `subject`.
async fn refused(violations: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = tokio::time::timeout_at(deadline, violations.recv())
            .await
            .unwrap_or_else(|_| panic!("no permissions violation reported for {subject}"))
            .unwrap();
        if text.to_lowercase().contains("permissions violation") && text.contains(subject) {
            return;
        }
    }
}

/// Every event the stream holds, as text.
async fn stored_payloads(client: &async_nats::Client) -> Vec<String> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    let mut consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let stored = consumer.info().await.unwrap().num_pending as usize;
    let messages: Vec<_> = consumer
        .messages()
        .await
        .unwrap()
        .take(stored)
        .collect()
        .await;
    messages
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.unwrap().payload).into_owned())
        .collect()
}

#[tokio::test]
async fn every_identity_does_what_the_contract_says_and_nothing_else() {
    let payment = PaymentConfig {
        delay: Duration::from_millis(300),
        ..PaymentConfig::default()
    };
    let system = spawn_secured(payment).await;
    let client = Connection::connect_as(
        system.server.url(),
        "shopper",
        &system.identities.credentials("client"),
    )
    .await
    .unwrap();
    let bus = client.bus();

    // The public flow works: a paid order, a declined one (over the card
    // limit), a cancelled one.
    let (user, product) = crate::support::customer_and_product(bus, 100).await;
    let place = |n| PlaceOrder {
        user_id: user.id,
        product_id: product.id,
        quantity: q(n),
    };
    let paid = bus.request(&place(2)).await.unwrap();
    let declined = bus.request(&place(60)).await.unwrap();
    let cancelled = bus.request(&place(1)).await.unwrap();
    let pending = bus
        .request(&CancelOrder { id: cancelled.id })
        .await
        .unwrap();
    assert_eq!(pending.status, OrderStatus::Cancelled);
    let statuses = terminal_statuses(
        bus,
        &[paid.id, declined.id, cancelled.id],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(statuses[&paid.id], OrderStatus::Fulfilled);
    assert_eq!(statuses[&declined.id], OrderStatus::Failed);
    assert_eq!(statuses[&cancelled.id], OrderStatus::Cancelled);
    let after = bus.request(&GetProduct { id: product.id }).await.unwrap();
    assert_eq!((after.stock, after.available), (98, 98));

    // An order the forgeries try to pay, fail or re-create; the operator
    // (admin) checks what was stored.
    let target = bus.request(&place(1)).await.unwrap();
    let operator = Connection::connect_as(
        system.server.url(),
        "operator",
        &system.identities.credentials("admin"),
    )
    .await
    .unwrap();

    // The client identity: no event, no internal request, no JetStream.
    let (forger, mut violations) = system.connect("client").await;
    let forged_id = uuid::Uuid::new_v4();
    let forged = serde_json::json!({
        "event_id": forged_id,
        "correlation_id": uuid::Uuid::new_v4(),
        "payment": {"id": uuid::Uuid::new_v4(), "order_id": target.id, "amount": 1},
    });
    for subject in [
        "events.payment.success",
        "events.order.paid",
        "events.anything",
    ] {
        forger
            .publish(subject, forged.to_string().into())
            .await
            .unwrap();
        refused(&mut violations, subject).await;
    }
    // Through the framework, the refusal is an error naming the subject, at
    // once (not at the 5 s request timeout).
    let asked = tokio::time::Instant::now();
    let reserve = bus
        .request(&contract::product::ReserveStock {
            order_id: target.id,
            product_id: product.id,
            quantity: q(90),
        })
        .await;
    assert!(
        matches!(
            reserve,
            Err(messaging_core::RequestError::Forbidden {
                subject: "product.reserve"
            })
        ),
        "{reserve:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let inbox = forger.new_inbox();
    forger
        .publish_with_reply("product.reserve", inbox.clone(), "{}".into())
        .await
        .unwrap();
    refused(&mut violations, "product.reserve").await;
    let _ = forger.subscribe("$KV.orders.>").await.unwrap();
    refused(&mut violations, "$KV.orders.>").await;
    forger
        .publish_with_reply("$JS.API.STREAM.INFO.EVENTS", inbox, "".into())
        .await
        .unwrap();
    refused(&mut violations, "$JS.API.STREAM.INFO.EVENTS").await;

    // The payment module's identity cannot act as another module.
    let (payment, mut violations) = system.connect("payment").await;
    payment
        .publish("events.order.created", forged.to_string().into())
        .await
        .unwrap();
    refused(&mut violations, "events.order.created").await;
    let _ = payment
        .queue_subscribe("user.get", "q".into())
        .await
        .unwrap();
    refused(&mut violations, "user.get").await;
    let key = format!("$KV.orders.{}", target.id);
    payment.publish(key.clone(), "{}".into()).await.unwrap();
    refused(&mut violations, &key).await;

    // No forgery was stored; the target ends by its real payment only.
    let stored = stored_payloads(operator.client()).await;
    assert!(!stored.is_empty());
    assert!(
        !stored.iter().any(|p| p.contains(&forged_id.to_string())),
        "a forged event was stored"
    );
    let statuses = terminal_statuses(bus, &[target.id], Duration::from_secs(30)).await;
    assert_eq!(statuses[&target.id], OrderStatus::Fulfilled);
    let paid = crate::support::payments_per_order(operator.bus()).await;
    assert_eq!(
        paid.get(&target.id),
        Some(&1),
        "paid once, by the payment module"
    );
    // The refused reservation of 90 holds nothing: 100 - 2 - 1 sold.
    let after = bus.request(&GetProduct { id: product.id }).await.unwrap();
    assert_eq!((after.stock, after.available), (97, 97), "no forged hold");
    operator.drain(Duration::from_secs(5)).await.unwrap();
    client.drain(Duration::from_secs(5)).await.unwrap();
    system.shutdown().await;
}

#[tokio::test]
async fn nobody_connects_without_a_known_key() {
    let identities = Identities::load_or_generate(None).unwrap();
    let server = NatsServer::start_with(BrokerConfig {
        authorization: Some(identities.authorization()),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let anonymous = async_nats::ConnectOptions::new()
        .max_reconnects(1)
        .connect(server.url())
        .await;
    assert!(anonymous.is_err(), "connected without credentials");
    let stranger = broker::auth::Identity::generate("stranger").unwrap();
    let unknown = async_nats::ConnectOptions::with_nkey(stranger.seed)
        .max_reconnects(1)
        .connect(server.url())
        .await;
    assert!(unknown.is_err(), "connected with an unknown key");
    // A known identity does connect.
    Connection::connect_as(server.url(), "ok", &identities.credentials("client"))
        .await
        .unwrap()
        .drain(Duration::from_secs(5))
        .await
        .unwrap();
    server.stop().await.unwrap();
}
