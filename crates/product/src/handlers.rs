//! The product module's handlers: requests first, then the events it reacts to.

use std::sync::Arc;

use contract::order::{
    GetOrder, Order, OrderCancelled, OrderFailed, OrderId, OrderPaid, OrderStatus,
};
use contract::product::{
    CreateProduct, GetProduct, HoldDue, Product, ProductCreated, ProductId, Reservation,
    ReserveStock, StockChange, StockUpdated,
};
use contract::product::{INSUFFICIENT_STOCK, RESERVATION_MISMATCH};
use contract::NOT_FOUND;
use messaging_core::{Context, EventError, ServiceError};

use crate::state::{Catalogue, HoldState, ReserveError, Settled, Settlement};

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
///
/// Every hold has a deadline: scheduled on the broker before the hold is
/// counted (see [`hold_due`]).
pub async fn reserve_stock(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    request: ReserveStock,
) -> Result<Reservation, ServiceError> {
    let (order_id, product_id) = (request.order_id, request.product_id);
    let deadline = || async {
        let due = HoldDue {
            order_id,
            product_id,
            second_look: false,
        };
        // One deadline per attempt (the same fact again would be dropped as
        // a duplicate within two minutes), each the hold's: it replaces the
        // one before, and goes when the hold is settled.
        let fact = format!("hold/{product_id}/{order_id}/due/{}", uuid::Uuid::new_v4());
        let key = deadline_key(order_id, product_id);
        ctx.schedule_keyed(&due, &fact, &key, catalogue.hold_timeout())
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    };
    catalogue
        .reserve(order_id, product_id, request.quantity, deadline)
        .await
        .map_err(|err| match err {
            ReserveError::UnknownProduct => {
                NOT_FOUND.error(format!("product {product_id} does not exist"))
            }
            ReserveError::InsufficientStock { available } => INSUFFICIENT_STOCK.error(format!(
                "product {product_id} has {available} available, {} requested",
                request.quantity
            )),
            ReserveError::OrderAlreadyReserved(held) => {
                RESERVATION_MISMATCH.error(format!("order {order_id} already holds {held}"))
            }
            ReserveError::AlreadySettled(state) => RESERVATION_MISMATCH.error(format!(
                "order {order_id}'s hold on product {product_id} is already {}",
                match state {
                    HoldState::Committed => "committed",
                    _ => "released",
                }
            )),
            ReserveError::NoDeadline(reason) => ServiceError::unavailable(reason),
            ReserveError::NeedsDeadline => ServiceError::internal("a hold without its deadline"),
            ReserveError::Store(err) => ServiceError::unavailable(err.0),
        })
}

/// `deadlines.product.hold_due`: a hold's deadline came. The order module
/// decides about an order's stock, so it is asked: a hold whose order was
/// never stored, or has failed or been cancelled, is released; one whose
/// order is paid waits for its commit; one whose order is still pending
/// waits another deadline (the order's own deadline fails it meanwhile).
/// If the order module cannot answer now, the hold waits another deadline
/// too: a module that is down must not turn holds into dead letters.
pub async fn hold_due(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    event: HoldDue,
) -> Result<(), EventError> {
    let (order_id, product_id) = (event.order_id, event.product_id);
    // Whatever a crash left half done on this hold is finished first.
    match catalogue.repair(order_id, product_id).await? {
        Some(hold) if hold.state == HoldState::Held => {}
        // Settled meanwhile.
        Some(_) => return Ok(()),
        // Not counted: the reserve was refused, or is counted late (its
        // write held up in a frozen broker, which fires the deadline as
        // soon as it runs again). One more look, a deadline later.
        None if !event.second_look => {
            let again = HoldDue {
                second_look: true,
                ..event
            };
            let fact = format!("hold/{product_id}/{order_id}/due/second_look");
            let key = deadline_key(order_id, product_id);
            ctx.schedule_keyed(&again, &fact, &key, catalogue.hold_timeout())
                .await?;
            return Ok(());
        }
        None => return Ok(()),
    }
    let release = match ctx.request(&GetOrder { id: order_id }).await {
        Ok(order) => match order.status {
            OrderStatus::Failed | OrderStatus::Cancelled => true,
            OrderStatus::Paid | OrderStatus::Fulfilled => false,
            OrderStatus::Pending => {
                wait_again(&catalogue, &ctx, order_id, product_id).await?;
                false
            }
        },
        Err(err) if err.remote().is_some_and(|remote| NOT_FOUND.is(remote)) => true,
        Err(err) => {
            tracing::warn!(%order_id, %product_id, %err, "hold deadline: the order module cannot say; waiting again");
            wait_again(&catalogue, &ctx, order_id, product_id).await?;
            false
        }
    };
    if release {
        tracing::info!(%order_id, %product_id, "hold expired: released");
        settle(&catalogue, &ctx, order_id, product_id, Settlement::Release).await?;
    }
    Ok(())
}

/// Schedules another deadline for a hold whose deadline came too early to
/// decide. Derived from the deadline being handled, so a redelivery of it
/// schedules the same one.
async fn wait_again(
    catalogue: &Catalogue,
    ctx: &Context,
    order_id: OrderId,
    product_id: ProductId,
) -> Result<(), EventError> {
    let after = ctx.derive_id("hold_due_again");
    ctx.schedule_keyed(
        &HoldDue {
            order_id,
            product_id,
            second_look: false,
        },
        &format!("hold/{product_id}/{order_id}/due/{after}"),
        &deadline_key(order_id, product_id),
        catalogue.hold_timeout(),
    )
    .await?;
    Ok(())
}

/// `events.order.paid`: the held stock leaves the shelf.
pub async fn order_paid(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    event: OrderPaid,
) -> Result<(), EventError> {
    settle_order(&catalogue, &ctx, &event.order, Settlement::Commit).await
}

/// `events.order.failed`: the held stock is available again.
pub async fn order_failed(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    event: OrderFailed,
) -> Result<(), EventError> {
    settle_order(&catalogue, &ctx, &event.order, Settlement::Release).await
}

/// `events.order.cancelled`: the held stock is available again.
pub async fn order_cancelled(
    catalogue: Arc<Catalogue>,
    ctx: Context,
    event: OrderCancelled,
) -> Result<(), EventError> {
    settle_order(&catalogue, &ctx, &event.order, Settlement::Release).await
}

/// Settles the hold of `order` (see [`settle`]).
async fn settle_order(
    catalogue: &Catalogue,
    ctx: &Context,
    order: &Order,
    how: Settlement,
) -> Result<(), EventError> {
    settle(catalogue, ctx, order.id, order.product_id, how).await
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
    order_id: OrderId,
    product_id: ProductId,
    how: Settlement,
) -> Result<(), EventError> {
    let change = match how {
        Settlement::Commit => StockChange::Committed,
        Settlement::Release => StockChange::Released,
    };
    let product = match catalogue.settle(order_id, product_id, how).await? {
        Some(Settled::Applied(product)) => product,
        Some(Settled::Contradicts(state)) => {
            return Err(EventError::permanent(format!(
                "order {order_id} asks to {change:?} its hold on product {product_id}, \
                 which is {state:?} already (its deadline found no live order): the \
                 stock was not taken; an operator must settle this order"
            )))
        }
        Some(Settled::AlreadyDone(product)) => {
            tracing::debug!(%order_id, ?change, "settlement already applied");
            product
        }
        // Products are never deleted: an order for an unknown product is
        // nonsense no retry can fix.
        None => {
            return Err(EventError::permanent(format!(
                "product {product_id} of order {order_id} does not exist"
            )))
        }
    };
    let fact = format!("stock/{order_id}/{change:?}");
    let event = StockUpdated {
        product,
        order_id,
        change,
    };
    // The hold is settled for good: its deadline has nothing left to do.
    // Taken back rather than left to fire, side by side with the event.
    let key = deadline_key(order_id, product_id);
    let (published, cancelled) = tokio::join!(
        ctx.publish_fact(&event, &fact),
        ctx.cancel_schedule::<HoldDue>(&key)
    );
    published?;
    if let Err(err) = cancelled {
        // Harmless: the deadline fires, and finds the hold settled.
        tracing::debug!(%order_id, %product_id, %err, "hold deadline not taken back");
    }
    Ok(())
}

/// The key of a hold's deadline: one live deadline per hold.
fn deadline_key(order_id: OrderId, product_id: ProductId) -> String {
    format!("hold/{product_id}/{order_id}")
}
