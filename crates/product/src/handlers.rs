//! The product module's handlers: requests first, then the events it reacts to.

use std::sync::Arc;

use contract::order::{Order, OrderCancelled, OrderFailed, OrderPaid};
use contract::product::{
    CreateProduct, GetProduct, Product, ProductCreated, ProductId, Reservation, ReserveStock,
    StockChange, StockUpdated,
};
use contract::product::{INSUFFICIENT_STOCK, RESERVATION_MISMATCH};
use contract::NOT_FOUND;
use messaging_core::{Context, EventError, ServiceError};

use crate::state::{Catalogue, ReserveError, Settled, Settlement};

/// `product.create`: name and positive stock were parsed while decoding.
pub async fn create_product(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    request: CreateProduct,
) -> Result<Product, ServiceError> {
    let id = ProductId(ctx.derive_id("product"));
    let product = catalogue.create(id, request.name, request.stock).await?;
    let fact = format!("product/{}/created", product.id);
    let event = ProductCreated {
        product: product.clone(),
    };
    // The product exists from here on: say so, and publish when the stream can.
    ctx.announce_fact(&event, &fact).await?;
    Ok(product)
}

/// `product.get`: `404 not_found` for an unknown id.
pub async fn get_product(
    catalogue: Arc<Catalogue>,
    _ctx: Context,
    request: GetProduct,
) -> Result<Product, ServiceError> {
    catalogue
        .get(request.id)
        .await?
        .ok_or_else(|| NOT_FOUND.error(format!("product {} does not exist", request.id)))
}

/// `product.reserve`: holds stock for an order, or refuses with a 404 or 409.
pub async fn reserve_stock(
    catalogue: Arc<Catalogue>,
    _ctx: Context,
    request: ReserveStock,
) -> Result<Reservation, ServiceError> {
    catalogue
        .reserve(request.order_id, request.product_id, request.quantity)
        .await
        .map_err(|err| match err {
            ReserveError::UnknownProduct => {
                NOT_FOUND.error(format!("product {} does not exist", request.product_id))
            }
            ReserveError::InsufficientStock { available } => INSUFFICIENT_STOCK.error(format!(
                "product {} has {available} available, {} requested",
                request.product_id, request.quantity
            )),
            ReserveError::OrderAlreadyReserved(held) => RESERVATION_MISMATCH
                .error(format!("order {} already holds {held}", request.order_id)),
            ReserveError::Store(err) => ServiceError::unavailable(err.0),
        })
}

/// `events.order.paid`: the held stock leaves the shelf.
pub async fn order_paid(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    event: OrderPaid,
) -> Result<(), EventError> {
    settle(&catalogue, &ctx, &event.order, Settlement::Commit).await
}

/// `events.order.failed`: the held stock is available again.
pub async fn order_failed(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    event: OrderFailed,
) -> Result<(), EventError> {
    settle(&catalogue, &ctx, &event.order, Settlement::Release).await
}

/// `events.order.cancelled`: the held stock is available again.
pub async fn order_cancelled(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    event: OrderCancelled,
) -> Result<(), EventError> {
    settle(&catalogue, &ctx, &event.order, Settlement::Release).await
}

/// Settles the order's hold and announces the stock change.
///
/// The announcement is published even when the hold was settled before (a
/// redelivered event): if the process died between storing the change and
/// publishing it, this is where the event goes out. It is the same fact, so
/// the same event id: the stream drops the repeat.
async fn settle(
    catalogue: &Catalogue,
    ctx: &Context,
    order: &Order,
    how: Settlement,
) -> Result<(), EventError> {
    let change = match how {
        Settlement::Commit => StockChange::Committed,
        Settlement::Release => StockChange::Released,
    };
    let product = match catalogue.settle(order.id, order.product_id, how).await? {
        Some(Settled::Applied(product)) => product,
        Some(Settled::AlreadyDone(product)) => {
            tracing::debug!(order_id = %order.id, ?change, "settlement already applied");
            product
        }
        // Products are never deleted: an order for an unknown product is
        // nonsense no retry can fix.
        None => {
            return Err(EventError::permanent(format!(
                "product {} of order {} does not exist",
                order.product_id, order.id
            )))
        }
    };
    let fact = format!("stock/{}/{change:?}", order.id);
    let event = StockUpdated {
        product,
        order_id: order.id,
        change,
    };
    ctx.publish_fact(&event, &fact).await?;
    Ok(())
}
