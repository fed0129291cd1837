//! The order module's contract: orders and their lifecycle
//! (`pending -> paid -> fulfilled`, or `failed` / `cancelled`).

use std::fmt;

use messaging_core::{Declaration, Endpoint, ErrorCode, Event, Listener, Rpc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::payment;
use crate::product::{self, ProductId, INSUFFICIENT_STOCK};
use crate::user::{self, UserId};
use crate::values::{id_type, Quantity};
use crate::NOT_FOUND;

pub const CREATE: &str = "order.create";
pub const GET: &str = "order.get";
pub const CANCEL: &str = "order.cancel";
pub const CREATED: &str = "events.order.created";
pub const PAID: &str = "events.order.paid";
pub const FULFILLED: &str = "events.order.fulfilled";
pub const FAILED: &str = "events.order.failed";
pub const CANCELLED: &str = "events.order.cancelled";
/// The order's payment deadline: scheduled when the order is placed,
/// published by the broker when due (never by a module).
pub const PAYMENT_DUE: &str = "deadlines.order.payment_due";

/// How the reason of an order failed for want of payment starts.
pub const PAYMENT_TIMEOUT: &str = "payment_timeout";

/// `404`: the order's user does not exist.
pub const USER_NOT_FOUND: ErrorCode = ErrorCode::new(404, "user_not_found");
/// `404`: the order's product does not exist.
pub const PRODUCT_NOT_FOUND: ErrorCode = ErrorCode::new(404, "product_not_found");
/// `409`: the order's status does not allow this change.
pub const INVALID_TRANSITION: ErrorCode = ErrorCode::new(409, "invalid_transition");

/// What the order module does on the bus.
pub const MODULE: Declaration = Declaration {
    name: "order",
    description: "Orders: placement and lifecycle",
    serves: &[
        Endpoint::public(CREATE),
        Endpoint::public(GET),
        Endpoint::public(CANCEL),
    ],
    requests: &[user::GET, product::RESERVE],
    publishes: &[CREATED, PAID, FULFILLED, FAILED, CANCELLED],
    schedules: &[PAYMENT_DUE],
    buckets: &["orders", "orders_open"],
    listens: &[
        Listener::new("mark_paid", payment::SUCCEEDED),
        Listener::new("mark_failed", payment::FAILED),
        Listener::new("mark_fulfilled", product::STOCK_UPDATED),
        Listener::new("expire_unpaid_order", PAYMENT_DUE),
    ],
};

id_type!(
    /// Identifies an order.
    OrderId
);

/// Where an order is in its life (the rules of which change is allowed
/// belong to the order module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Order {
    pub id: OrderId,
    pub user_id: UserId,
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub status: OrderStatus,
}

/// `order.create {"user_id","product_id","quantity"}` -> [`Order`] (`pending`).
///
/// Refused with `404 user_not_found`, `404 product_not_found` or
/// `409 insufficient_stock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlaceOrder {
    pub user_id: UserId,
    pub product_id: ProductId,
    pub quantity: Quantity,
}
impl Rpc for PlaceOrder {
    const SUBJECT: &'static str = CREATE;
    const ERRORS: &'static [ErrorCode] = &[USER_NOT_FOUND, PRODUCT_NOT_FOUND, INSUFFICIENT_STOCK];
    type Reply = Order;
}

/// `order.get {"id"}` -> [`Order`], or `404 not_found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GetOrder {
    pub id: OrderId,
}
impl Rpc for GetOrder {
    const SUBJECT: &'static str = GET;
    const ERRORS: &'static [ErrorCode] = &[NOT_FOUND];
    type Reply = Order;
}

/// `order.cancel {"id"}` -> [`Order`] (`cancelled`); only a pending order can
/// be cancelled (`409 invalid_transition` otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelOrder {
    pub id: OrderId,
}
impl Rpc for CancelOrder {
    const SUBJECT: &'static str = CANCEL;
    const ERRORS: &'static [ErrorCode] = &[NOT_FOUND, INVALID_TRANSITION];
    type Reply = Order;
}

/// `events.order.created`: an order was placed and awaits payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    pub order: Order,
}
impl Event for OrderCreated {
    const SUBJECT: &'static str = CREATED;
}

/// `events.order.paid`: an order moved `pending -> paid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPaid {
    pub order: Order,
}
impl Event for OrderPaid {
    const SUBJECT: &'static str = PAID;
}

/// `events.order.fulfilled`: an order moved `paid -> fulfilled` (stock committed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderFulfilled {
    pub order: Order,
}
impl Event for OrderFulfilled {
    const SUBJECT: &'static str = FULFILLED;
}

/// `events.order.failed`: an order moved `pending -> failed`: its payment
/// was declined, or did not come in time (a `reason` starting with
/// [`PAYMENT_TIMEOUT`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderFailed {
    pub order: Order,
    pub reason: String,
}
impl Event for OrderFailed {
    const SUBJECT: &'static str = FAILED;
}

/// `events.order.cancelled`: an order moved `pending -> cancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub order: Order,
}
impl Event for OrderCancelled {
    const SUBJECT: &'static str = CANCELLED;
}

/// `deadlines.order.payment_due`: payment deadlines came. Every pending
/// order placed at least a payment timeout ago then fails
/// (`payment_timeout`); any other is left as is.
///
/// One such event covers every order placed in a slot of time (a second),
/// not one order: the broker holds
/// a handful of schedules however many orders are waiting for payment, and
/// no event comes for an order paid in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDue {
    /// The end of the slot (milliseconds since the Unix epoch): orders
    /// placed up to then are due now. (Orders placed later are looked at
    /// too, and left until they are due.)
    #[serde(default)]
    pub placed_by: u64,
    /// The order of a deadline of one order, as an earlier version
    /// scheduled them; handled like any other (every due order is looked at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<OrderId>,
    /// This is the second and last look at the slot, a timeout after the
    /// first (an order stored late, after a broker freeze, still gets its
    /// deadline).
    #[serde(default)]
    pub second_look: bool,
}
impl Event for PaymentDue {
    const SUBJECT: &'static str = PAYMENT_DUE;
}
