//! The product module's handlers: requests first, then the events it reacts to.

use std::sync::Arc;

use messaging_core::contract::{
    CreateProduct, GetProduct, OrderCancelled, OrderFailed, OrderId, OrderPaid, Product,
    ProductCreated, Reservation, ReserveStock, StockChange, StockUpdated,
};
use messaging_core::{Context, ServiceError};

use crate::state::{Catalogue, ReserveError, SettleError, Settled};

/// `product.create`: name and positive stock were parsed while decoding.
pub async fn create_product(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    request: CreateProduct,
) -> Result<Product, ServiceError> {
    let product = catalogue.create(request.name, request.stock);
    ctx.publish(&ProductCreated {
        product: product.clone(),
    })
    .await?;
    Ok(product)
}

/// `product.get`: `404 not_found` for an unknown id.
pub async fn get_product(
    catalogue: Arc<Catalogue>,
    _ctx: Context,
    request: GetProduct,
) -> Result<Product, ServiceError> {
    catalogue.get(request.id).ok_or_else(|| {
        ServiceError::not_found(
            "not_found",
            format!("product {} does not exist", request.id),
        )
    })
}

/// `product.reserve`: holds stock for an order, or refuses with a 404 or 409.
pub async fn reserve_stock(
    catalogue: Arc<Catalogue>,
    _ctx: Context,
    request: ReserveStock,
) -> Result<Reservation, ServiceError> {
    catalogue
        .reserve(request.order_id, request.product_id, request.quantity)
        .map_err(|err| match err {
            ReserveError::UnknownProduct => ServiceError::not_found(
                "not_found",
                format!("product {} does not exist", request.product_id),
            ),
            ReserveError::InsufficientStock { available } => ServiceError::conflict(
                "insufficient_stock",
                format!(
                    "product {} has {available} available, {} requested",
                    request.product_id, request.quantity
                ),
            ),
            ReserveError::OrderAlreadyReserved => ServiceError::conflict(
                "reservation_mismatch",
                format!(
                    "order {} already holds a different reservation",
                    request.order_id
                ),
            ),
        })
}

/// `events.order.paid`: the held stock leaves the shelf.
pub async fn order_paid(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    event: OrderPaid,
) -> Result<(), ServiceError> {
    let settled = catalogue.commit(event.order.id);
    announce(&ctx, event.order.id, StockChange::Committed, settled).await
}

/// `events.order.failed`: the held stock is available again.
pub async fn order_failed(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    event: OrderFailed,
) -> Result<(), ServiceError> {
    let settled = catalogue.release(event.order.id);
    announce(&ctx, event.order.id, StockChange::Released, settled).await
}

/// `events.order.cancelled`: the held stock is available again.
pub async fn order_cancelled(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    event: OrderCancelled,
) -> Result<(), ServiceError> {
    let settled = catalogue.release(event.order.id);
    announce(&ctx, event.order.id, StockChange::Released, settled).await
}

/// Publishes the stock change, unless the event was a duplicate.
async fn announce(
    ctx: &Context,
    order_id: OrderId,
    change: StockChange,
    settled: Result<Settled, SettleError>,
) -> Result<(), ServiceError> {
    match settled {
        Ok(Settled::Applied(product)) => {
            ctx.publish(&StockUpdated {
                product,
                order_id,
                change,
            })
            .await?;
            Ok(())
        }
        // The same event delivered twice has one effect.
        Ok(Settled::AlreadyDone) => {
            tracing::debug!(%order_id, ?change, "duplicate settlement ignored");
            Ok(())
        }
        Err(SettleError::NoReservation) => Err(ServiceError::not_found(
            "no_reservation",
            format!("order {order_id} holds no reservation"),
        )),
        Err(SettleError::AlreadySettled(previous)) => Err(ServiceError::conflict(
            "already_settled",
            format!(
                "reservation of order {order_id} was already {previous:?}, cannot be {change:?}"
            ),
        )),
    }
}
