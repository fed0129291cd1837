//! The shipping module's handlers: the event that dispatches, then the
//! request that looks a shipment up.

use std::sync::Arc;

use contract::order::OrderFulfilled;
use contract::shipping::{GetShipment, Shipment, ShipmentDispatched, ShipmentId};
use contract::NOT_FOUND;
use messaging_core::{Context, EventError, ServiceError};

use crate::state::Shipments;

/// `events.order.fulfilled`: dispatches the order, once.
///
/// The shipment id is derived from the event, and the record is written
/// create-if-absent: a redelivery finds the first shipment and announces it
/// again (the same fact, so the same event id), never a second parcel.
pub async fn order_fulfilled(
    shipments: Arc<Shipments>,
    ctx: Context,
    event: OrderFulfilled,
) -> Result<(), EventError> {
    let order = event.order;
    let shipment = Shipment {
        id: ShipmentId(ctx.derive_id("shipment")),
        order_id: order.id,
        product_id: order.product_id,
        quantity: order.quantity,
    };
    let shipment = shipments.dispatch(shipment).await?;
    tracing::debug!(order_id = %shipment.order_id, "order dispatched");
    let fact = format!("shipment/{}/dispatched", shipment.order_id);
    ctx.publish_fact(&ShipmentDispatched { shipment }, &fact)
        .await?;
    Ok(())
}

/// `shipping.get`: `404 not_found` until the order is dispatched.
pub async fn get_shipment(
    shipments: Arc<Shipments>,
    _ctx: Context,
    request: GetShipment,
) -> Result<Shipment, ServiceError> {
    shipments.get(request.order_id).await?.ok_or_else(|| {
        NOT_FOUND.error(format!(
            "order {} has no shipment (not fulfilled yet, or unknown)",
            request.order_id
        ))
    })
}
