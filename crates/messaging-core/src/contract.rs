//! The message contract: every subject and every payload, in one place.
//!
//! This file *is* the public API of the system. Clients in any language write
//! against the JSON defined here, so the rules are pinned:
//!
//! * JSON objects with `snake_case` fields, ids as UUID strings;
//! * missing fields and wrong types are bad input (a `name` of `42` is rejected,
//!   never coerced);
//! * unknown fields are ignored, so that a contract can grow without breaking
//!   older peers.
//!
//! Values are parsed into newtypes ([`Name`], [`Quantity`], the ids) while
//! decoding, so a handler that receives a [`CreateProduct`] knows its name is
//! not blank and its stock is positive: nothing is validated twice.
//!
//! # The message flow
//!
//! ```text
//! request/reply (answered by the owning module)
//!   user.create      CreateUser    -> User           user
//!   user.get         GetUser       -> User           user
//!   product.create   CreateProduct -> Product        product
//!   product.get      GetProduct    -> Product        product
//!   product.reserve  ReserveStock  -> Reservation    product (atomic: never oversells)
//!   order.create     PlaceOrder    -> Order          order (asks user.get, product.reserve)
//!   order.get        GetOrder      -> Order          order
//!   order.cancel     CancelOrder   -> Order          order (pending orders only)
//!
//! events (publisher -> listeners)
//!   events.user.created           UserCreated       user    -> (observers)
//!   events.product.created        ProductCreated    product -> (observers)
//!   events.order.created          OrderCreated      order   -> payment
//!   events.payment.success        PaymentSucceeded  payment -> order   (pending -> paid)
//!   events.payment.failed         PaymentFailed     payment -> order   (pending -> failed)
//!   events.order.paid             OrderPaid         order   -> product (commit reservation)
//!   events.order.failed           OrderFailed       order   -> product (release reservation)
//!   events.order.cancelled        OrderCancelled    order   -> product (release reservation),
//!                                                           payment (refund, or void a payment still to come)
//!   events.payment.refunded       PaymentRefunded   payment -> (observers)
//!   events.product.stock.updated  StockUpdated      product -> order   (paid -> fulfilled on commit)
//!   events.order.fulfilled        OrderFulfilled    order   -> (observers)
//! ```
//!
//! The order lifecycle: `pending -> paid -> fulfilled`, or `pending -> failed`
//! (payment declined) or `pending -> cancelled` (`order.cancel`). A failed or
//! cancelled order's reservation is released, so its stock is available again.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A request/reply message: its subject and the type of its successful reply.
///
/// Implemented by the request payloads below; [`crate::Bus::request`] and
/// [`crate::Module::serve`] use it to pair a subject with its types.
pub trait Rpc: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The subject the owning module answers on.
    const SUBJECT: &'static str;
    /// The payload of a successful reply.
    type Reply: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// A domain event: a fact that happened, published on its subject.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The subject the event is published on.
    const SUBJECT: &'static str;
}

/// All subjects, for readers and for tools that want the strings.
pub mod subjects {
    pub const USER_CREATE: &str = "user.create";
    pub const USER_GET: &str = "user.get";
    pub const PRODUCT_CREATE: &str = "product.create";
    pub const PRODUCT_GET: &str = "product.get";
    pub const PRODUCT_RESERVE: &str = "product.reserve";
    pub const ORDER_CREATE: &str = "order.create";
    pub const ORDER_GET: &str = "order.get";
    pub const ORDER_CANCEL: &str = "order.cancel";

    pub const USER_CREATED: &str = "events.user.created";
    pub const PRODUCT_CREATED: &str = "events.product.created";
    pub const STOCK_UPDATED: &str = "events.product.stock.updated";
    pub const ORDER_CREATED: &str = "events.order.created";
    pub const PAYMENT_SUCCEEDED: &str = "events.payment.success";
    pub const PAYMENT_FAILED: &str = "events.payment.failed";
    pub const PAYMENT_REFUNDED: &str = "events.payment.refunded";
    pub const ORDER_PAID: &str = "events.order.paid";
    pub const ORDER_FAILED: &str = "events.order.failed";
    pub const ORDER_CANCELLED: &str = "events.order.cancelled";
    pub const ORDER_FULFILLED: &str = "events.order.fulfilled";

    /// Every event subject starts with this prefix (`events.>` captures them all).
    pub const EVENTS_PREFIX: &str = "events.";
}

// ---------------------------------------------------------------------------
// Value types: parsed once, at the edge.
// ---------------------------------------------------------------------------

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random (v4) id.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// Identifies a user.
    UserId
);
id_type!(
    /// Identifies a product.
    ProductId
);
id_type!(
    /// Identifies an order.
    OrderId
);
id_type!(
    /// Identifies a payment.
    PaymentId
);

impl PaymentId {
    /// The payment id of an order: the same for every attempt at paying it.
    pub fn for_order(order: OrderId) -> Self {
        const NAMESPACE: Uuid = Uuid::from_u128(0x9a7e_0b1d_3c55_4f0e_8d2a_6b4c_1e9f_0a11);
        Self(Uuid::new_v5(&NAMESPACE, order.0.as_bytes()))
    }
}

/// A display name: trimmed, not blank, at most [`Name::MAX_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Longest accepted name, in characters.
    pub const MAX_LEN: usize = 200;

    /// Parses a name; the error says what is wrong with it.
    pub fn parse(raw: impl Into<String>) -> Result<Self, String> {
        let raw = raw.into();
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("name must not be empty".to_owned());
        }
        if trimmed.chars().count() > Self::MAX_LEN {
            return Err(format!("name must be at most {} characters", Self::MAX_LEN));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> Self {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A strictly positive number of items (order quantity, initial stock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    /// Parses a quantity; zero is refused.
    pub fn new(value: u32) -> Result<Self, String> {
        if value == 0 {
            Err("quantity must be greater than zero".to_owned())
        } else {
            Ok(Self(value))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Quantity {
    type Error = String;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> Self {
        q.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// ---------------------------------------------------------------------------
// Entities: what replies and events carry.
// ---------------------------------------------------------------------------

/// A user, as replied by `user.create` / `user.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: Name,
}

/// A product, as replied by `product.create` / `product.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: ProductId,
    pub name: Name,
    /// Items on hand.
    pub stock: u32,
    /// Items on hand minus those held for pending orders.
    pub available: u32,
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Stock reserved, waiting for the payment.
    Pending,
    /// Paid, stock not yet committed.
    Paid,
    /// Paid and its stock committed: done.
    Fulfilled,
    /// Payment declined; the reservation was released.
    Failed,
    /// Cancelled while pending; the reservation was released.
    Cancelled,
}

impl OrderStatus {
    /// Whether the lifecycle allows going from `self` to `next`.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Pending, Paid) | (Pending, Failed) | (Pending, Cancelled) | (Paid, Fulfilled)
        )
    }

    /// No transition leaves a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Fulfilled | OrderStatus::Failed | OrderStatus::Cancelled
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Fulfilled => "fulfilled",
            OrderStatus::Failed => "failed",
            OrderStatus::Cancelled => "cancelled",
        };
        f.write_str(text)
    }
}

/// An order, as replied by `order.create` / `order.get` / `order.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub user_id: UserId,
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub status: OrderStatus,
}

/// Stock held for one order until it is paid (committed) or not (released).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub order_id: OrderId,
    pub product_id: ProductId,
    pub quantity: Quantity,
}

/// A payment attempt for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: PaymentId,
    pub order_id: OrderId,
}

// ---------------------------------------------------------------------------
// Requests.
// ---------------------------------------------------------------------------

/// `user.create {"name"}` -> [`User`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateUser {
    pub name: Name,
}
impl Rpc for CreateUser {
    const SUBJECT: &'static str = subjects::USER_CREATE;
    type Reply = User;
}

/// `user.get {"id"}` -> [`User`], or `404 not_found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetUser {
    pub id: UserId,
}
impl Rpc for GetUser {
    const SUBJECT: &'static str = subjects::USER_GET;
    type Reply = User;
}

/// `product.create {"name","stock"}` -> [`Product`]; stock must be positive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateProduct {
    pub name: Name,
    pub stock: Quantity,
}
impl Rpc for CreateProduct {
    const SUBJECT: &'static str = subjects::PRODUCT_CREATE;
    type Reply = Product;
}

/// `product.get {"id"}` -> [`Product`], or `404 not_found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetProduct {
    pub id: ProductId,
}
impl Rpc for GetProduct {
    const SUBJECT: &'static str = subjects::PRODUCT_GET;
    type Reply = Product;
}

/// `product.reserve {"order_id","product_id","quantity"}` -> [`Reservation`].
///
/// Holds `quantity` items for the order, atomically: concurrent reservations
/// never hold more than is on hand. Refused with `404 not_found` or
/// `409 insufficient_stock`. Idempotent per order: reserving again for the
/// same order returns the existing reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveStock {
    pub order_id: OrderId,
    pub product_id: ProductId,
    pub quantity: Quantity,
}
impl Rpc for ReserveStock {
    const SUBJECT: &'static str = subjects::PRODUCT_RESERVE;
    type Reply = Reservation;
}

/// `order.create {"user_id","product_id","quantity"}` -> [`Order`] (`pending`).
///
/// Refused with `404 user_not_found`, `404 product_not_found` or
/// `409 insufficient_stock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub user_id: UserId,
    pub product_id: ProductId,
    pub quantity: Quantity,
}
impl Rpc for PlaceOrder {
    const SUBJECT: &'static str = subjects::ORDER_CREATE;
    type Reply = Order;
}

/// `order.get {"id"}` -> [`Order`], or `404 not_found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetOrder {
    pub id: OrderId,
}
impl Rpc for GetOrder {
    const SUBJECT: &'static str = subjects::ORDER_GET;
    type Reply = Order;
}

/// `order.cancel {"id"}` -> [`Order`] (`cancelled`); only a pending order can
/// be cancelled (`409 invalid_transition` otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrder {
    pub id: OrderId,
}
impl Rpc for CancelOrder {
    const SUBJECT: &'static str = subjects::ORDER_CANCEL;
    type Reply = Order;
}

// ---------------------------------------------------------------------------
// Events. On the wire each one also carries `event_id` and `correlation_id`
// (see [`crate::EventMeta`]), next to the fields below.
// ---------------------------------------------------------------------------

/// `events.user.created`: a user was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    pub user: User,
}
impl Event for UserCreated {
    const SUBJECT: &'static str = subjects::USER_CREATED;
}

/// `events.product.created`: a product was added to the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductCreated {
    pub product: Product,
}
impl Event for ProductCreated {
    const SUBJECT: &'static str = subjects::PRODUCT_CREATED;
}

/// Why a product's stock changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockChange {
    /// A paid order's reservation was taken out of the stock on hand.
    Committed,
    /// A failed or cancelled order's reservation was given back.
    Released,
}

/// `events.product.stock.updated`: a product's stock changed because of an
/// order; carries the product's new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockUpdated {
    pub product: Product,
    pub order_id: OrderId,
    pub change: StockChange,
}
impl Event for StockUpdated {
    const SUBJECT: &'static str = subjects::STOCK_UPDATED;
}

/// `events.order.created`: an order was placed and awaits payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order: Order,
}
impl Event for OrderCreated {
    const SUBJECT: &'static str = subjects::ORDER_CREATED;
}

/// `events.payment.success`: the payment for an order went through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    pub payment: Payment,
}
impl Event for PaymentSucceeded {
    const SUBJECT: &'static str = subjects::PAYMENT_SUCCEEDED;
}

/// `events.payment.failed`: the payment for an order was declined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub payment: Payment,
    pub reason: String,
}
impl Event for PaymentFailed {
    const SUBJECT: &'static str = subjects::PAYMENT_FAILED;
}

/// `events.payment.refunded`: a payment was given back, because its order
/// was cancelled while the payment was being taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment: Payment,
    pub reason: String,
}
impl Event for PaymentRefunded {
    const SUBJECT: &'static str = subjects::PAYMENT_REFUNDED;
}

/// `events.order.paid`: an order moved `pending -> paid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaid {
    pub order: Order,
}
impl Event for OrderPaid {
    const SUBJECT: &'static str = subjects::ORDER_PAID;
}

/// `events.order.fulfilled`: an order moved `paid -> fulfilled` (stock committed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFulfilled {
    pub order: Order,
}
impl Event for OrderFulfilled {
    const SUBJECT: &'static str = subjects::ORDER_FULFILLED;
}

/// `events.order.failed`: an order moved `pending -> failed` (payment declined).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFailed {
    pub order: Order,
    pub reason: String,
}
impl Event for OrderFailed {
    const SUBJECT: &'static str = subjects::ORDER_FAILED;
}

/// `events.order.cancelled`: an order moved `pending -> cancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order: Order,
}
impl Event for OrderCancelled {
    const SUBJECT: &'static str = subjects::ORDER_CANCELLED;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_snake_case_with_uuid_strings() {
        let order = Order {
            id: OrderId::new(),
            user_id: UserId::new(),
            product_id: ProductId::new(),
            quantity: Quantity::new(3).unwrap(),
            status: OrderStatus::Pending,
        };
        let json = serde_json::to_value(&order).unwrap();
        assert_eq!(json["id"], order.id.0.to_string());
        assert_eq!(json["user_id"], order.user_id.0.to_string());
        assert_eq!(json["product_id"], order.product_id.0.to_string());
        assert_eq!(json["quantity"], 3);
        assert_eq!(json["status"], "pending");
    }

    #[test]
    fn wrong_types_are_refused_not_coerced() {
        let err = serde_json::from_str::<CreateUser>(r#"{"name": 42}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let err = serde_json::from_str::<CreateProduct>(r#"{"name":"W","stock":"5"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn values_are_parsed_at_the_edge() {
        let err = serde_json::from_str::<CreateUser>(r#"{"name": "   "}"#).unwrap_err();
        assert!(err.to_string().contains("name must not be empty"), "{err}");
        let err = serde_json::from_str::<CreateProduct>(r#"{"name":"W","stock":0}"#).unwrap_err();
        assert!(err.to_string().contains("greater than zero"), "{err}");
        let err = serde_json::from_str::<CreateProduct>(r#"{"name":"W","stock":-1}"#).unwrap_err();
        assert!(err.to_string().contains("invalid value"), "{err}");
        let user: CreateUser = serde_json::from_str(r#"{"name": "  Ada  "}"#).unwrap();
        assert_eq!(user.name.as_str(), "Ada");
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_named() {
        let req: GetUser = serde_json::from_str(
            r#"{"id":"5f0c6a4e-8a39-4a57-9bd6-0c0a1c1d1e1f","future_field":true}"#,
        )
        .unwrap();
        assert_eq!(req.id.0.to_string(), "5f0c6a4e-8a39-4a57-9bd6-0c0a1c1d1e1f");
        let err = serde_json::from_str::<PlaceOrder>(
            r#"{"user_id":"5f0c6a4e-8a39-4a57-9bd6-0c0a1c1d1e1f"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("missing field `product_id`"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod lifecycle_tests {
    use super::OrderStatus::*;

    #[test]
    fn only_the_lifecycle_transitions_are_allowed() {
        let all = [Pending, Paid, Fulfilled, Failed, Cancelled];
        let allowed = [
            (Pending, Paid),
            (Pending, Failed),
            (Pending, Cancelled),
            (Paid, Fulfilled),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        assert!(!Pending.is_terminal() && !Paid.is_terminal());
        assert!(Fulfilled.is_terminal() && Failed.is_terminal() && Cancelled.is_terminal());
    }
}
