//! The shipping module's contract: a fulfilled order is dispatched.
//!
//! The worked example of extending the system (README, "Adding a module"):
//! this file, the `shipping` crate, one line where the demo registers
//! modules, and the generated docs.

use messaging_core::{Declaration, Endpoint, ErrorCode, Event, Listener, Rpc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::order::{self, OrderId};
use crate::product::ProductId;
use crate::values::{id_type, Quantity};
use crate::NOT_FOUND;

pub const GET: &str = "shipping.get";
pub const DISPATCHED: &str = "events.shipping.dispatched";

/// What the shipping module does on the bus.
pub const MODULE: Declaration = Declaration {
    name: "shipping",
    description: "Shipping: dispatches fulfilled orders",
    serves: &[Endpoint::public(GET)],
    requests: &[],
    publishes: &[DISPATCHED],
    schedules: &[],
    buckets: &["shipments"],
    listens: &[Listener::new("dispatch_fulfilled_order", order::FULFILLED)],
};

id_type!(
    /// Identifies a shipment.
    ShipmentId
);

/// The shipment of one fulfilled order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Shipment {
    pub id: ShipmentId,
    pub order_id: OrderId,
    pub product_id: ProductId,
    pub quantity: Quantity,
}

/// `shipping.get {"order_id"}` -> [`Shipment`], or `404 not_found` while the
/// order is not dispatched (or does not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GetShipment {
    pub order_id: OrderId,
}
impl Rpc for GetShipment {
    const SUBJECT: &'static str = GET;
    const ERRORS: &'static [ErrorCode] = &[NOT_FOUND];
    type Reply = Shipment;
}

/// `events.shipping.dispatched`: a fulfilled order left the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentDispatched {
    pub shipment: Shipment,
}
impl Event for ShipmentDispatched {
    const SUBJECT: &'static str = DISPATCHED;
}
