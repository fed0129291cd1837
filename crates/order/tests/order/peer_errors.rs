//! `order.create` when a peer answers with an error it did not expect: only
//! a `404` from `user.get` means the user does not exist, and only
//! `insufficient_stock` from `product.reserve` is passed on as is; anything
//! else is ours to answer (`503` worth retrying, `500` otherwise).

use std::sync::{Arc, Mutex};

use contract::order::PlaceOrder;
use contract::product::RESERVATION_MISMATCH;
use contract::product::{ProductId, Reservation, ReserveStock, INSUFFICIENT_STOCK};
use contract::user::{GetUser, User, UserId};
use contract::values::Name;
use contract::NOT_FOUND;
use messaging_core::{
    Context, Declaration, Endpoint, Module, ModuleOptions, ServiceError, Storage,
};
use testkit::{expect_refusal, spawn_broker};

use crate::support::q;

const PEERS: Declaration = Declaration {
    name: "failing-peers",
    description: "plays the user and product modules, answering as told",
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

/// What the fake peers answer next: `None` is the value.
#[derive(Default)]
struct Answers {
    user: Mutex<Option<ServiceError>>,
    reserve: Mutex<Option<ServiceError>>,
}

async fn get_user(answers: Arc<Answers>, _: Context, req: GetUser) -> Result<User, ServiceError> {
    match answers.user.lock().unwrap().clone() {
        Some(error) => Err(error),
        None => Ok(User {
            id: req.id,
            name: Name::parse("Ada").unwrap(),
        }),
    }
}

async fn reserve(
    answers: Arc<Answers>,
    _: Context,
    req: ReserveStock,
) -> Result<Reservation, ServiceError> {
    match answers.reserve.lock().unwrap().clone() {
        Some(error) => Err(error),
        None => Ok(Reservation {
            order_id: req.order_id,
            product_id: req.product_id,
            quantity: req.quantity,
        }),
    }
}

#[tokio::test]
async fn only_the_refusals_order_create_expects_are_passed_on() {
    let broker = spawn_broker().await;
    let client = broker.bus().client().clone();
    let answers = Arc::new(Answers::default());
    let options = ModuleOptions::with_storage(Storage::Memory);
    let mut peers = Module::setup(client.clone(), &PEERS, "0.0.1", options)
        .await
        .unwrap()
        .start(answers.clone())
        .await
        .unwrap();
    peers.serve(get_user).await.unwrap();
    peers.serve(reserve).await.unwrap();
    let peers = peers.running();
    let orders = order::register(client).await.unwrap();
    let bus = broker.bus();
    let refusal = |user_id| async move {
        let request = PlaceOrder {
            user_id,
            product_id: ProductId::new(),
            quantity: q(1),
        };
        expect_refusal(bus.request(&request).await)
    };

    // The user module is busy: worth retrying, not "no such user".
    *answers.user.lock().unwrap() = Some(ServiceError::unavailable("saturated"));
    let err = refusal(UserId::new()).await;
    assert_eq!(
        (err.status, err.code.as_str()),
        (503, "unavailable"),
        "{err:?}"
    );
    *answers.user.lock().unwrap() = Some(NOT_FOUND.error("no such user"));
    let err = refusal(UserId::new()).await;
    assert_eq!((err.status, err.code.as_str()), (404, "user_not_found"));
    *answers.user.lock().unwrap() = None;

    // The product module refuses for want of stock: the client is told so.
    // Any other refusal is an inconsistency between the modules: ours.
    let user = UserId::new();
    *answers.reserve.lock().unwrap() = Some(INSUFFICIENT_STOCK.error("none left"));
    let err = refusal(user).await;
    assert_eq!((err.status, err.code.as_str()), (409, "insufficient_stock"));
    *answers.reserve.lock().unwrap() = Some(RESERVATION_MISMATCH.error("holds 2"));
    let err = refusal(user).await;
    assert_eq!(
        (err.status, err.code.as_str()),
        (500, "internal"),
        "{err:?}"
    );

    orders.shutdown().await;
    peers.shutdown().await;
    broker.shutdown().await;
}
