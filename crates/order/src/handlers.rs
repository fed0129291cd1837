//! The order module's handlers: requests first, then the events that move an
//! order along its lifecycle.

use std::sync::Arc;

use messaging_core::contract::{
    CancelOrder, Event, GetOrder, GetUser, Order, OrderCancelled, OrderCreated, OrderFailed,
    OrderFulfilled, OrderId, OrderPaid, OrderStatus, PaymentFailed, PaymentSucceeded, PlaceOrder,
    ReserveStock, StockChange, StockUpdated,
};
use messaging_core::{Context, RequestError, ServiceError};

use crate::state::{Orders, Transition, TransitionError};

/// `order.create`: the user must exist and the product module must reserve
/// the stock; only then is the order kept, as `pending`.
pub async fn place_order(
    orders: Arc<Orders>,
    ctx: Context,
    request: PlaceOrder,
) -> Result<Order, ServiceError> {
    ctx.request(&GetUser {
        id: request.user_id,
    })
    .await
    .map_err(|err| match err.remote() {
        Some(remote) if remote.status == 404 => ServiceError::not_found(
            "user_not_found",
            format!("user {} does not exist", request.user_id),
        ),
        _ => ServiceError::from(err),
    })?;

    let order = Order {
        id: OrderId::new(),
        user_id: request.user_id,
        product_id: request.product_id,
        quantity: request.quantity,
        status: OrderStatus::Pending,
    };
    ctx.request(&ReserveStock {
        order_id: order.id,
        product_id: order.product_id,
        quantity: order.quantity,
    })
    .await
    .map_err(|err| match err {
        RequestError::Remote { error, .. } if error.status == 404 => ServiceError::not_found(
            "product_not_found",
            format!("product {} does not exist", request.product_id),
        ),
        // The owner of the stock said no (409 insufficient_stock): pass it on as is.
        RequestError::Remote { error, .. } if error.status < 500 => error,
        other => ServiceError::from(other),
    })?;

    orders.insert(order.clone());
    ctx.publish(&OrderCreated {
        order: order.clone(),
    })
    .await?;
    Ok(order)
}

/// `order.get`: `404 not_found` for an unknown id.
pub async fn get_order(
    orders: Arc<Orders>,
    _ctx: Context,
    request: GetOrder,
) -> Result<Order, ServiceError> {
    orders.get(request.id).ok_or_else(|| not_found(request.id))
}

/// `order.cancel`: only a pending order; its reservation is then released by
/// the product module, on `events.order.cancelled`.
pub async fn cancel_order(
    orders: Arc<Orders>,
    ctx: Context,
    request: CancelOrder,
) -> Result<Order, ServiceError> {
    advance(&orders, &ctx, request.id, OrderStatus::Cancelled, |order| {
        OrderCancelled { order }
    })
    .await
}

/// `events.payment.success`: `pending -> paid`.
pub async fn payment_succeeded(
    orders: Arc<Orders>,
    ctx: Context,
    event: PaymentSucceeded,
) -> Result<(), ServiceError> {
    let order_id = event.payment.order_id;
    advance(&orders, &ctx, order_id, OrderStatus::Paid, |order| {
        OrderPaid { order }
    })
    .await?;
    Ok(())
}

/// `events.payment.failed`: `pending -> failed`; the product module releases
/// the reservation on `events.order.failed` (the compensation).
pub async fn payment_failed(
    orders: Arc<Orders>,
    ctx: Context,
    event: PaymentFailed,
) -> Result<(), ServiceError> {
    let order_id = event.payment.order_id;
    let reason = event.reason;
    advance(&orders, &ctx, order_id, OrderStatus::Failed, |order| {
        OrderFailed { order, reason }
    })
    .await?;
    Ok(())
}

/// `events.product.stock.updated`: a committed reservation fulfils a paid order.
pub async fn stock_updated(
    orders: Arc<Orders>,
    ctx: Context,
    event: StockUpdated,
) -> Result<(), ServiceError> {
    if event.change != StockChange::Committed {
        return Ok(());
    }
    advance(
        &orders,
        &ctx,
        event.order_id,
        OrderStatus::Fulfilled,
        |order| OrderFulfilled { order },
    )
    .await?;
    Ok(())
}

/// Moves an order to `to` and publishes the event of that transition.
///
/// A transition that already happened is a no-op (duplicates have one
/// effect); an illegal one is a `409 invalid_transition`, never an overwrite.
async fn advance<E: Event>(
    orders: &Orders,
    ctx: &Context,
    id: OrderId,
    to: OrderStatus,
    event: impl FnOnce(Order) -> E,
) -> Result<Order, ServiceError> {
    match orders.transition(id, to) {
        Ok(Transition::Applied(order)) => {
            ctx.publish(&event(order.clone())).await?;
            Ok(order)
        }
        Ok(Transition::AlreadyDone(order)) => {
            tracing::debug!(order_id = %id, %to, "transition already applied");
            Ok(order)
        }
        Err(TransitionError::UnknownOrder) => Err(not_found(id)),
        Err(TransitionError::Illegal { from }) => Err(ServiceError::conflict(
            "invalid_transition",
            format!("order {id} is {from} and cannot become {to}"),
        )),
    }
}

fn not_found(id: OrderId) -> ServiceError {
    ServiceError::not_found("not_found", format!("order {id} does not exist"))
}
