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
