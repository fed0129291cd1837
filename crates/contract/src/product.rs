//! The product module's contract: the catalogue, its stock, and the
//! reservations that keep concurrent orders from overselling.

use messaging_core::{Declaration, Endpoint, ErrorCode, Event, Listener, Rpc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::order::{self, OrderId};
use crate::values::{id_type, Name, Quantity};
use crate::NOT_FOUND;

pub const CREATE: &str = "product.create";
pub const GET: &str = "product.get";
pub const RESERVE: &str = "product.reserve";
pub const CREATED: &str = "events.product.created";
pub const STOCK_UPDATED: &str = "events.product.stock.updated";
/// A hold's deadline: scheduled with the hold, published by the broker.
pub const HOLD_DUE: &str = "deadlines.product.hold_due";

/// `409`: not enough stock available for a reservation.
pub const INSUFFICIENT_STOCK: ErrorCode = ErrorCode::new(409, "insufficient_stock");
/// `409`: the order already holds another quantity of this product.
pub const RESERVATION_MISMATCH: ErrorCode = ErrorCode::new(409, "reservation_mismatch");

/// What the product module does on the bus.
pub const MODULE: Declaration = Declaration {
    name: "product",
    description: "Products: catalogue, stock and reservations",
    serves: &[
        Endpoint::public(CREATE),
        Endpoint::public(GET),
        // Only the order module reserves: a client holding stock directly
        // would bypass the order.
        Endpoint::internal(RESERVE),
    ],
    // Whether a hold whose deadline came belongs to a live order.
    requests: &[order::GET],
    publishes: &[CREATED, STOCK_UPDATED],
    schedules: &[HOLD_DUE],
    buckets: &["products"],
    listens: &[
        Listener::new("commit_paid_order", order::PAID),
        Listener::new("release_failed_order", order::FAILED),
        Listener::new("release_cancelled_order", order::CANCELLED),
        Listener::new("expire_hold", HOLD_DUE),
    ],
};

id_type!(
    /// Identifies a product.
    ProductId
);

/// A product, as replied by `product.create` / `product.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Product {
    pub id: ProductId,
    pub name: Name,
    /// Items on hand.
    pub stock: u32,
    /// Items on hand minus those held for pending orders.
    pub available: u32,
}

/// Stock held for one order until it is paid (committed) or not (released).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Reservation {
    pub order_id: OrderId,
    pub product_id: ProductId,
    pub quantity: Quantity,
}

/// `product.create {"name","stock"}` -> [`Product`]; stock must be positive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreateProduct {
    pub name: Name,
    pub stock: Quantity,
}
impl Rpc for CreateProduct {
    const SUBJECT: &'static str = CREATE;
    type Reply = Product;
}

/// `product.get {"id"}` -> [`Product`], or `404 not_found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GetProduct {
    pub id: ProductId,
}
impl Rpc for GetProduct {
    const SUBJECT: &'static str = GET;
    const ERRORS: &'static [ErrorCode] = &[NOT_FOUND];
    type Reply = Product;
}

/// `product.reserve {"order_id","product_id","quantity"}` -> [`Reservation`].
///
/// Holds `quantity` items for the order, atomically: concurrent reservations
/// never hold more than is on hand. Refused with `404 not_found` or
/// `409 insufficient_stock`. Idempotent per order: reserving again for the
/// same order and quantity returns the existing reservation; another
/// quantity is `409 reservation_mismatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReserveStock {
    pub order_id: OrderId,
    pub product_id: ProductId,
    pub quantity: Quantity,
}
impl Rpc for ReserveStock {
    const SUBJECT: &'static str = RESERVE;
    const ERRORS: &'static [ErrorCode] = &[NOT_FOUND, INSUFFICIENT_STOCK, RESERVATION_MISMATCH];
    type Reply = Reservation;
}

/// `events.product.created`: a product was added to the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductCreated {
    pub product: Product,
}
impl Event for ProductCreated {
    const SUBJECT: &'static str = CREATED;
}

/// Why a product's stock changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StockChange {
    /// A paid order's reservation was taken out of the stock on hand.
    Committed,
    /// A failed or cancelled order's reservation was given back.
    Released,
}

/// `events.product.stock.updated`: a product's stock changed because of an
/// order; carries the product's new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockUpdated {
    pub product: Product,
    pub order_id: OrderId,
    pub change: StockChange,
}
impl Event for StockUpdated {
    const SUBJECT: &'static str = STOCK_UPDATED;
}

/// `deadlines.product.hold_due`: the deadline of the hold of `order_id` on
/// `product_id` came. A hold whose order does not exist, or has failed or
/// been cancelled, is released; one whose order is still pending waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HoldDue {
    pub order_id: OrderId,
    pub product_id: ProductId,
    /// This deadline found no hold once already: it looks a second and
    /// last time (a hold counted late, after a broker freeze, still gets
    /// its deadline).
    #[serde(default)]
    pub second_look: bool,
}
impl Event for HoldDue {
    const SUBJECT: &'static str = HOLD_DUE;
}
