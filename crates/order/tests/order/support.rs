//! The test's world: a broker, the order module under test, and a fake
//! module playing its peers (`user.get` and `product.reserve`) from a small
//! in-test state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::order::{CancelOrder, GetOrder, Order, OrderId, PlaceOrder};
use contract::product::{ProductId, Reservation, ReserveStock};
use contract::user::{GetUser, User, UserId};
use contract::values::{Name, Quantity};
use messaging_core::{
    Bus, Context, Declaration, Endpoint, Module, ModuleHandle, ModuleOptions, RequestError,
    ServiceError, Storage,
};
use testkit::{spawn_broker, TestBroker};
use uuid::Uuid;

/// How long any awaited event or reply may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// For negative checks only, once the handler stats (or a reply) prove that
/// everything that could have produced the event has been handled.
pub const QUIET: Duration = Duration::from_millis(300);

/// Plays the user and product modules for the order tests.
const PEERS: Declaration = Declaration {
    name: "fake-peers",
    description: "plays the user and product modules for the order tests",
    serves: &[
        Endpoint::public(contract::user::GET),
        Endpoint::internal(contract::product::RESERVE),
    ],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &[],
    listens: &[],
};

/// What the fake peers know.
#[derive(Debug, Default)]
pub struct Peers {
    state: Mutex<PeerState>,
}

#[derive(Debug, Default)]
struct PeerState {
    users: HashSet<UserId>,
    /// Items available per product; a reservation takes them.
    available: HashMap<ProductId, u32>,
    reservations: HashMap<OrderId, Reservation>,
}

impl Peers {
    fn lock(&self) -> std::sync::MutexGuard<'_, PeerState> {
        self.state.lock().expect("peers lock")
    }

    /// Items still available for `product`.
    pub fn available(&self, product: ProductId) -> u32 {
        self.lock().available[&product]
    }

    /// The reservation held for `order`, if any.
    pub fn reservation(&self, order: OrderId) -> Option<Reservation> {
        self.lock().reservations.get(&order).cloned()
    }
}

/// `user.get`: known users only.
async fn get_user(peers: Arc<Peers>, _: Context, request: GetUser) -> Result<User, ServiceError> {
    if peers.lock().users.contains(&request.id) {
        Ok(User {
            id: request.id,
            name: Name::parse("Ada").unwrap(),
        })
    } else {
        Err(ServiceError::not_found(
            "not_found",
            format!("user {} does not exist", request.id),
        ))
    }
}

/// `product.reserve`: takes the items from what is available, once per order.
async fn reserve_stock(
    peers: Arc<Peers>,
    _: Context,
    request: ReserveStock,
) -> Result<Reservation, ServiceError> {
    let mut state = peers.lock();
    if let Some(existing) = state.reservations.get(&request.order_id) {
        return Ok(existing.clone());
    }
    let available = state
        .available
        .get_mut(&request.product_id)
        .ok_or_else(|| {
            ServiceError::not_found(
                "not_found",
                format!("product {} does not exist", request.product_id),
            )
        })?;
    if *available < request.quantity.get() {
        return Err(ServiceError::conflict(
            "insufficient_stock",
            format!("{} asked, {} available", request.quantity, available),
        ));
    }
    *available -= request.quantity.get();
    let reservation = Reservation {
        order_id: request.order_id,
        product_id: request.product_id,
        quantity: request.quantity,
    };
    state
        .reservations
        .insert(request.order_id, reservation.clone());
    Ok(reservation)
}

/// Which of the order module's peers are running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Neither `user.get` nor `product.reserve`.
    Nothing,
    /// `user.get` only.
    UsersOnly,
    /// Both.
    Everything,
}

pub struct App {
    broker: TestBroker,
    /// The order module under test.
    pub module: ModuleHandle,
    /// The fake user and product modules, unless absent.
    pub peers: Option<ModuleHandle>,
    pub state: Arc<Peers>,
}

/// A broker, the order module and both fake peers.
pub async fn spawn_app() -> App {
    spawn_app_with(Serving::Everything).await
}

pub async fn spawn_app_with(serving: Serving) -> App {
    let broker = spawn_broker().await;
    let state = Arc::new(Peers::default());
    let peers = if serving == Serving::Nothing {
        None
    } else {
        let options = ModuleOptions::with_storage(Storage::Memory);
        let client = broker.bus().client().clone();
        let mut peers = Module::setup(client, &PEERS, "0.0.1", options)
            .await
            .expect("set up the fake peers")
            .start(state.clone())
            .await
            .expect("start the fake peers");
        peers.serve(get_user).await.unwrap();
        if serving == Serving::Everything {
            peers.serve(reserve_stock).await.unwrap();
        }
        Some(peers.running())
    };
    // Everything shares the test's connection: what the test sends after
    // this point reaches the server after every subscription made here.
    let module = order::register(broker.bus().client().clone())
        .await
        .expect("register the order module");
    App {
        broker,
        module,
        peers,
        state,
    }
}

impl App {
    pub fn bus(&self) -> &Bus {
        self.broker.bus()
    }

    pub fn broker(&self) -> &TestBroker {
        &self.broker
    }

    /// A user the fake user module knows.
    pub fn user(&self) -> UserId {
        let id = UserId::new();
        self.state.lock().users.insert(id);
        id
    }

    /// A product the fake product module knows, with `available` items.
    pub fn product(&self, available: u32) -> ProductId {
        let id = ProductId::new();
        self.state.lock().available.insert(id, available);
        id
    }

    pub async fn place(
        &self,
        user_id: UserId,
        product_id: ProductId,
        quantity: u32,
    ) -> Result<Order, RequestError> {
        self.bus()
            .request(&PlaceOrder {
                user_id,
                product_id,
                quantity: q(quantity),
            })
            .await
    }

    /// A pending order of 1 item, for a fresh user and product.
    pub async fn pending_order(&self) -> Order {
        let (user, product) = (self.user(), self.product(10));
        self.place(user, product, 1)
            .await
            .expect("a valid order is placed")
    }

    pub async fn get(&self, id: OrderId) -> Order {
        self.bus()
            .request(&GetOrder { id })
            .await
            .expect("order.get")
    }

    pub async fn cancel(&self, id: OrderId) -> Result<Order, RequestError> {
        self.bus().request(&CancelOrder { id }).await
    }

    /// The fake peers' handler stats for `subject` (`user.get`, `product.reserve`).
    pub fn peer_calls(&self, subject: &str) -> u64 {
        self.peers
            .as_ref()
            .and_then(|peers| peers.stats(subject))
            .map_or(0, |stats| stats.completed)
    }

    /// Waits until the order module has handled `count` events of `subject`.
    /// A handler completes only after the stream acknowledged what it
    /// published, so those events are stored by then, ready for watchers.
    pub async fn handled(&self, subject: &str, count: u64) {
        let stats = self
            .module
            .handled(subject, count, WAIT)
            .await
            .unwrap_or_else(|| panic!("{subject}: {count} events not handled within {WAIT:?}"));
        assert_eq!(
            stats.completed, count,
            "{subject}: more events than expected"
        );
        self.bus().client().flush().await.expect("flush");
    }

    /// Stops the order module, then its peers, then the broker.
    pub async fn shutdown(self) {
        self.module.shutdown().await;
        if let Some(peers) = self.peers {
            peers.shutdown().await;
        }
        self.broker.shutdown().await;
    }
}

pub fn q(n: u32) -> Quantity {
    Quantity::new(n).unwrap()
}

pub fn flow() -> Uuid {
    Uuid::new_v4()
}
