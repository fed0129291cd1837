//! `spawn_system()`: a broker with the modules registered, and helpers to
//! drive and observe them.

use std::time::Duration;

use contract::order::{GetOrder, Order, OrderId, PlaceOrder};
use contract::product::{CreateProduct, GetProduct, Product};
use contract::user::{CreateUser, User};
use contract::values::{Name, Quantity};
use messaging_core::{shutdown_all, Bus, Connection, ModuleHandle, RequestError, Storage};
use payment::PaymentConfig;
use testkit::{spawn_broker, TestBroker};

pub const WAIT: Duration = Duration::from_secs(30);

pub struct System {
    pub broker: TestBroker,
    pub modules: Vec<ModuleHandle>,
    /// More instances of every module, each on its own connection, as
    /// other processes would be (see [`spawn_instances`]).
    pub others: Vec<(Connection, Vec<ModuleHandle>)>,
}

/// Starts a broker with user, product and order, and the payment module if
/// `payment` is given (without it, the test plays the payment module).
pub async fn spawn_system(payment: Option<PaymentConfig>) -> System {
    let broker = spawn_broker().await;
    let client = broker.bus().client();
    let modules = match payment {
        Some(config) => demo::app::register_modules(client, config, Storage::Durable)
            .await
            .unwrap(),
        None => vec![
            user::register(client.clone()).await.unwrap(),
            product::register(client.clone()).await.unwrap(),
            order::register(client.clone()).await.unwrap(),
        ],
    };
    System {
        broker,
        modules,
        others: Vec::new(),
    }
}

/// `instances` full copies of the system on one broker, each on its own
/// connection: requests are shared through the service queue groups,
/// events through the shared durable consumers, state through
/// compare-and-set.
pub async fn spawn_instances(instances: usize, payment: PaymentConfig) -> System {
    let mut system = spawn_system(Some(payment.clone())).await;
    for n in 1..instances {
        let connection = system.broker.connect(&format!("instance-{n}")).await;
        let modules =
            demo::app::register_modules(connection.client(), payment.clone(), Storage::Durable)
                .await
                .unwrap();
        system.others.push((connection, modules));
    }
    system
}

/// Instant payments that always succeed.
pub fn instant_payments() -> PaymentConfig {
    PaymentConfig {
        delay: Duration::ZERO,
        ..PaymentConfig::default()
    }
}

pub fn q(n: u32) -> Quantity {
    Quantity::new(n).unwrap()
}

impl System {
    pub fn bus(&self) -> &Bus {
        self.broker.bus()
    }

    pub fn module(&self, name: &str) -> &ModuleHandle {
        self.modules.iter().find(|m| m.name() == name).unwrap()
    }

    pub async fn user(&self) -> User {
        let name = Name::parse("John Doe").unwrap();
        self.bus().request(&CreateUser { name }).await.unwrap()
    }

    pub async fn product(&self, stock: u32) -> Product {
        let name = Name::parse("Widget").unwrap();
        self.bus()
            .request(&CreateProduct {
                name,
                stock: q(stock),
            })
            .await
            .unwrap()
    }

    pub async fn place(
        &self,
        user: &User,
        product: &Product,
        n: u32,
    ) -> Result<Order, RequestError> {
        self.bus()
            .request(&PlaceOrder {
                user_id: user.id,
                product_id: product.id,
                quantity: q(n),
            })
            .await
    }

    pub async fn get_product(&self, product: &Product) -> Product {
        self.bus()
            .request(&GetProduct { id: product.id })
            .await
            .unwrap()
    }

    pub async fn get_order(&self, id: OrderId) -> Order {
        self.bus().request(&GetOrder { id }).await.unwrap()
    }

    pub async fn shutdown(self) {
        let mut modules = self.modules;
        let mut connections = Vec::new();
        for (connection, more) in self.others {
            modules.extend(more);
            connections.push(connection);
        }
        shutdown_all(modules).await;
        for connection in connections {
            connection.drain(WAIT).await.unwrap();
        }
        self.broker.shutdown().await;
    }
}

/// Every value of a key-value bucket, as JSON (to check module state directly).
pub async fn bucket(bus: &Bus, name: &str) -> Vec<serde_json::Value> {
    use futures::StreamExt;
    let store = bus.jetstream().get_key_value(name).await.unwrap();
    let keys: Vec<String> = store
        .keys()
        .await
        .unwrap()
        .map(|k| k.unwrap())
        .collect()
        .await;
    let mut values = Vec::new();
    for key in keys {
        let bytes = store.get(&key).await.unwrap().unwrap();
        values.push(serde_json::from_slice(&bytes).unwrap());
    }
    values
}

/// Places an order with an idempotency key, retrying with the same key
/// through outages and crashes until the system answers (at most `patience`):
/// what a careful client does.
pub async fn place_until_answered(
    bus: &Bus,
    request: &PlaceOrder,
    key: &str,
    patience: Duration,
) -> OrderId {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match bus.request_with_key(request, key).await {
            Ok(order) => return order.id,
            Err(RequestError::Remote { error, .. })
                if error.status < 500 && error.code != "request_in_progress" =>
            {
                panic!("order {key} refused: {error}")
            }
            Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "order {key} never went through"
                );
                // The system is down or busy: try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How many `payment.succeeded` events the stream holds for each order
/// (more than one would be a customer charged twice).
pub async fn payments_per_order(bus: &Bus) -> std::collections::HashMap<OrderId, u32> {
    use contract::payment::PaymentSucceeded;
    use futures::StreamExt;
    let stream = bus
        .jetstream()
        .get_stream(messaging_core::EVENTS_STREAM)
        .await
        .unwrap();
    let mut consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: contract::payment::SUCCEEDED.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let stored = consumer.info().await.unwrap().num_pending as usize;
    let mut successes = consumer.messages().await.unwrap().take(stored);
    let mut paid = std::collections::HashMap::new();
    while let Some(message) = successes.next().await {
        let event: messaging_core::Delivered<PaymentSucceeded> =
            messaging_core::Delivered::decode(&message.unwrap().payload).unwrap();
        *paid.entry(event.event.payment.order_id).or_default() += 1;
    }
    paid
}

/// Keyed orders of one unit each, placed by 16 concurrent careful clients
/// (see [`place_until_answered`]) in the background.
pub struct Load {
    placed: std::sync::Arc<tokio::sync::Semaphore>,
    /// When each order was answered.
    answered: std::sync::Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
    clients: tokio::task::JoinHandle<Vec<Vec<OrderId>>>,
}

impl Load {
    /// Starts placing `orders` orders keyed `<prefix>-<n>`.
    pub fn place(
        bus: &Bus,
        user_id: contract::user::UserId,
        product_id: contract::product::ProductId,
        orders: usize,
        prefix: &str,
    ) -> Load {
        const CLIENTS: usize = 16;
        let placed = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let answered: std::sync::Arc<std::sync::Mutex<Vec<tokio::time::Instant>>> =
            Default::default();
        let clients = (0..CLIENTS).map(|c| {
            let (bus, placed, prefix) = (bus.clone(), placed.clone(), prefix.to_owned());
            let answered = std::sync::Arc::clone(&answered);
            let request = PlaceOrder {
                user_id,
                product_id,
                quantity: q(1),
            };
            async move {
                let mut ids = Vec::new();
                for n in (c..orders).step_by(CLIENTS) {
                    let key = format!("{prefix}-{n}");
                    ids.push(place_until_answered(&bus, &request, &key, LOAD_PATIENCE).await);
                    answered.lock().unwrap().push(tokio::time::Instant::now());
                    placed.add_permits(1);
                }
                ids
            }
        });
        let clients = tokio::spawn(futures::future::join_all(clients.collect::<Vec<_>>()));
        Load {
            placed,
            answered,
            clients,
        }
    }

    /// Waits until `n` orders have been placed (answered) in all.
    pub async fn until(&self, n: usize) {
        let permits = self.placed.acquire_many(n as u32).await.unwrap();
        // Given back: counts are cumulative, `until(2 * n)` after `until(n)`.
        drop(permits);
    }

    /// Waits for every order to be placed: their ids, and the longest
    /// time no order at all was answered (the pause an outage caused).
    pub async fn finish(self) -> (Vec<OrderId>, Duration) {
        let ids = self.clients.await.unwrap().into_iter().flatten().collect();
        let mut answered = self.answered.lock().unwrap().clone();
        answered.sort();
        let pause = answered
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        (ids, pause)
    }
}

/// How long a careful client keeps retrying one order through an outage.
const LOAD_PATIENCE: Duration = Duration::from_secs(90);

/// How a load of orders ended.
#[derive(Debug)]
pub struct Outcome {
    pub fulfilled: usize,
    pub failed: usize,
}

/// Waits until every order in `ids` is terminal and checks what must hold
/// at rest: each ended once (fulfilled or failed), no order paid twice, a
/// payment for each fulfilled one, stock down by exactly the fulfilled
/// units (of one each), nothing held.
pub async fn settle(
    bus: &Bus,
    ids: &[OrderId],
    product_id: contract::product::ProductId,
    initial_stock: u32,
) -> Outcome {
    use contract::order::OrderStatus;
    let statuses = crate::durability::terminal_statuses(bus, ids, Duration::from_secs(120)).await;
    let count = |wanted| statuses.values().filter(|s| **s == wanted).count();
    let outcome = Outcome {
        fulfilled: count(OrderStatus::Fulfilled),
        failed: count(OrderStatus::Failed),
    };
    assert_eq!(
        outcome.fulfilled + outcome.failed,
        ids.len(),
        "{statuses:?}"
    );
    let paid = payments_per_order(bus).await;
    assert!(paid.values().all(|n| *n == 1), "an order was paid twice");
    assert_eq!(
        paid.len(),
        outcome.fulfilled,
        "a payment per fulfilled order"
    );
    // A fulfilled order's stock is committed before it is fulfilled, but a
    // failed order's hold is released after it failed (the product module
    // reacts to `events.order.failed`): wait for the product to say so,
    // within a bound.
    let get = || async {
        bus.request(&contract::product::GetProduct { id: product_id })
            .await
            .unwrap()
    };
    let at_rest = tokio::time::Instant::now() + WAIT;
    let mut product = get().await;
    while product.available != product.stock && tokio::time::Instant::now() < at_rest {
        tokio::time::sleep(Duration::from_millis(50)).await;
        product = get().await;
    }
    let waited = WAIT - at_rest.saturating_duration_since(tokio::time::Instant::now());
    println!(
        "at rest: {} fulfilled, {} failed; holds released {waited:?} after the last order ended",
        outcome.fulfilled, outcome.failed
    );
    if product.available != product.stock {
        let kv = bus.jetstream().get_key_value("products").await.unwrap();
        let record = kv.get(product_id.to_string()).await.unwrap();
        let mut keys = kv.keys().await.unwrap();
        let mut held = Vec::new();
        while let Some(key) = futures::StreamExt::next(&mut keys).await {
            let key = key.unwrap();
            if let Some(order) = key.strip_prefix(&format!("{product_id}.")) {
                let value = kv.get(&key).await.unwrap().unwrap();
                let text = String::from_utf8_lossy(&value).into_owned();
                if text.contains("\"held\"") {
                    let id: OrderId = OrderId(order.parse().unwrap());
                    held.push((id, text, statuses.get(&id).copied()));
                }
            }
        }
        panic!(
            "held at rest: {held:?}; record {:?}",
            record.map(|b| String::from_utf8_lossy(&b).into_owned())
        );
    }
    assert_eq!(product.stock, initial_stock - outcome.fulfilled as u32);
    assert_eq!(product.available, product.stock, "nothing held at rest");
    outcome
}

/// How many orders a load test places: `default`, or `SOAK_ORDERS` for a
/// longer run (`SOAK_ORDERS=5000 cargo test -p demo cluster`).
pub fn orders(default: usize) -> usize {
    std::env::var("SOAK_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// A user and a product of `stock` units.
pub async fn customer_and_product(
    bus: &Bus,
    stock: u32,
) -> (contract::user::User, contract::product::Product) {
    let user = bus
        .request(&contract::user::CreateUser {
            name: contract::values::Name::parse("Ada").unwrap(),
        })
        .await
        .unwrap();
    let product = bus
        .request(&contract::product::CreateProduct {
            name: contract::values::Name::parse("Widget").unwrap(),
            stock: q(stock),
        })
        .await
        .unwrap();
    (user, product)
}
