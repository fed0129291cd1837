//! The payment module's contract: simulated card payments for new orders,
//! refunded or voided when their order is cancelled or fails first.

use messaging_core::{Declaration, Event, Listener};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::order::{self, OrderId};
use crate::values::id_type;

pub const SUCCEEDED: &str = "events.payment.success";
pub const FAILED: &str = "events.payment.failed";
pub const REFUNDED: &str = "events.payment.refunded";

/// What the payment module does on the bus.
pub const MODULE: Declaration = Declaration {
    name: "payment",
    description: "Payments: simulated card payments for new orders",
    serves: &[],
    requests: &[],
    publishes: &[SUCCEEDED, FAILED, REFUNDED],
    schedules: &[],
    buckets: &["payments"],
    listens: &[
        Listener::new("take_payment", order::CREATED),
        Listener::new("refund_cancelled_order", order::CANCELLED),
        // An order that failed while its payment was on the way (its
        // payment deadline passed): that payment is not kept either.
        Listener::new("refund_failed_order", order::FAILED),
    ],
};

id_type!(
    /// Identifies a payment.
    PaymentId
);

/// A payment attempt for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Payment {
    pub id: PaymentId,
    pub order_id: OrderId,
}

/// `events.payment.success`: the payment for an order went through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentSucceeded {
    pub payment: Payment,
}
impl Event for PaymentSucceeded {
    const SUBJECT: &'static str = SUCCEEDED;
}

/// `events.payment.failed`: the payment for an order was declined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentFailed {
    pub payment: Payment,
    pub reason: String,
}
impl Event for PaymentFailed {
    const SUBJECT: &'static str = FAILED;
}

/// `events.payment.refunded`: a payment was given back, because its order
/// was cancelled while the payment was being taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    pub payment: Payment,
    pub reason: String,
}
impl Event for PaymentRefunded {
    const SUBJECT: &'static str = REFUNDED;
}
