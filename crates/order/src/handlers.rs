//! The order module's handlers: requests first, then the events that move an
//! order along its lifecycle, then the recovery sweep run at start.

use std::sync::Arc;

use contract::order::{
    CancelOrder, GetOrder, Order, OrderCancelled, OrderCreated, OrderFailed, OrderFulfilled,
    OrderId, OrderPaid, OrderStatus, PaymentDue, PlaceOrder, PAYMENT_TIMEOUT,
};
use contract::order::{INVALID_TRANSITION, PRODUCT_NOT_FOUND, USER_NOT_FOUND};
use contract::payment::{PaymentFailed, PaymentSucceeded};
use contract::product::INSUFFICIENT_STOCK;
use contract::product::{ReserveStock, StockChange, StockUpdated};
use contract::user::GetUser;
use contract::NOT_FOUND;
use messaging_core::{Announced, Bus, Context, Event, EventError, RequestError, ServiceError};

use crate::state::{OrderRecord, Orders, Transition, TransitionError};

/// `order.create`: the user must exist and the product module must reserve
/// the stock; only then is the order kept, as `pending`.
///
/// With an `Idempotency-Key` the order id is derived from the key, so a retry
/// (even one that takes over from an attempt that died halfway) finds or
/// completes the same order instead of placing a second one.
pub async fn place_order(
    orders: Arc<Orders>,
    ctx: Context,
    request: PlaceOrder,
) -> Result<Order, ServiceError> {
    let id = OrderId(ctx.derive_id("order"));
    // Only a retried request (same key, same derived id) can find its order
    // already there; a fresh random id cannot, so skip the read.
    if ctx.idempotency_key().is_some() {
        if let Some(existing) = orders.get(id).await? {
            // Announced again only while pending: an order that went on
            // (paid, cancelled) must not be "created" once more.
            if existing.order.status == OrderStatus::Pending {
                announce_placed(&orders, &ctx, &existing).await?;
            }
            return Ok(existing.order);
        }
    }

    // Users are never deleted, so one that existed still does: ask the
    // user module only about users this module has not seen yet.
    if !orders.known_user(request.user_id) {
        ctx.request(&GetUser {
            id: request.user_id,
        })
        .await
        .map_err(|err| match err.remote() {
            Some(remote) if NOT_FOUND.is(remote) => {
                USER_NOT_FOUND.error(format!("user {} does not exist", request.user_id))
            }
            _ => ServiceError::from(err),
        })?;
        orders.remember_user(request.user_id);
    }

    let order = Order {
        id,
        user_id: request.user_id,
        product_id: request.product_id,
        quantity: request.quantity,
        status: OrderStatus::Pending,
    };
    // The hold gets its deadline when it is made: see below.
    let reserving = tokio::time::Instant::now();
    ctx.request(&ReserveStock {
        order_id: order.id,
        product_id: order.product_id,
        quantity: order.quantity,
    })
    .await
    .map_err(|err| match err {
        RequestError::Remote { error, .. } if NOT_FOUND.is(&error) => {
            PRODUCT_NOT_FOUND.error(format!("product {} does not exist", request.product_id))
        }
        // The owner of the stock said no: pass it on as is.
        RequestError::Remote { error, .. } if INSUFFICIENT_STOCK.is(&error) => error,
        other => ServiceError::from(other),
    })?;

    // The deadline goes to the broker before the order is stored: an order
    // that exists always has a payment sweep coming (a sweep finds nothing
    // to do for an order never stored; its hold has a deadline of its own).
    // So does its marker in the open-order index, which the sweep reads; the
    // two are independent, and are written side by side.
    let (scheduled, marked) = tokio::join!(
        ensure_payment_sweep(&orders, &ctx),
        orders.mark_open(order.id)
    );
    scheduled?;
    marked?;
    // A hold whose order is not stored by its deadline is released. So an
    // order is stored only well before that deadline, or not at all (the
    // client gets a 503, nothing was placed, and the hold goes at its
    // deadline): never an order whose stock was given back.
    if reserving.elapsed() > orders.payment_timeout() / 2 {
        return Err(ServiceError::unavailable(format!(
            "placing order {} took too long; nothing was placed",
            order.id
        )));
    }
    let record = orders.store_new(order, ctx.correlation_id()).await?;
    announce_placed(&orders, &ctx, &record).await?;
    Ok(record.order)
}

/// Announces a placed order. The order is placed once stored, whatever
/// happens to its event: the client is told so (never a `503` for an order
/// that then goes through), and the event goes out as soon as the stream
/// takes it, or at the next start from the recovery sweep.
async fn announce_placed(
    orders: &Orders,
    ctx: &Context,
    record: &OrderRecord,
) -> Result<(), ServiceError> {
    announce(
        orders,
        ctx,
        record,
        OrderStatus::Pending,
        Delivery::Eventually,
    )
    .await
}

/// `order.get`: `404 not_found` for an unknown id.
pub async fn get_order(
    orders: Arc<Orders>,
    _ctx: Context,
    request: GetOrder,
) -> Result<Order, ServiceError> {
    match orders.get(request.id).await? {
        Some(record) => Ok(record.order),
        None => Err(not_found(request.id)),
    }
}

/// `order.cancel`: only a pending order; its reservation is then released by
/// the product module, on `events.order.cancelled`.
pub async fn cancel_order(
    orders: Arc<Orders>,
    ctx: Context,
    request: CancelOrder,
) -> Result<Order, ServiceError> {
    advance(&orders, &ctx, request.id, OrderStatus::Cancelled, None).await
}

/// `events.payment.success`: `pending -> paid`.
pub async fn payment_succeeded(
    orders: Arc<Orders>,
    ctx: Context,
    event: PaymentSucceeded,
) -> Result<(), EventError> {
    let order_id = event.payment.order_id;
    advance(&orders, &ctx, order_id, OrderStatus::Paid, None).await?;
    Ok(())
}

/// `events.payment.failed`: `pending -> failed`; the product module releases
/// the reservation on `events.order.failed` (the compensation).
pub async fn payment_failed(
    orders: Arc<Orders>,
    ctx: Context,
    event: PaymentFailed,
) -> Result<(), EventError> {
    let order_id = event.payment.order_id;
    advance(
        &orders,
        &ctx,
        order_id,
        OrderStatus::Failed,
        Some(&event.reason),
    )
    .await?;
    Ok(())
}

/// `deadlines.order.payment_due`: the payment sweep of a slot of time. Every
/// order still `pending` a payment timeout after it was placed fails with
/// `payment_timeout`; the product module then releases its hold and the
/// payment module voids or refunds whatever payment comes for it (both on
/// `events.order.failed`). An order that went on (paid, cancelled) is left
/// as it is; one not due yet is left to a sweep when it is.
///
/// The orders are found in the open-order index (only unfinished orders are
/// there), whatever slot they were placed in: a sweep late or repeated
/// changes nothing, and one missing is made up for by the next.
pub async fn payment_due(
    orders: Arc<Orders>,
    ctx: Context,
    event: PaymentDue,
) -> Result<(), EventError> {
    use futures::StreamExt;
    let timeout = orders.payment_timeout();
    let mut due = Vec::new();
    let mut earliest_waiting: Option<std::time::Duration> = None;
    for (id, age) in orders.open_orders().await? {
        if age >= timeout {
            due.push((id, age));
        } else {
            earliest_waiting = earliest_waiting.max(Some(age));
        }
    }
    // Several at a time: after an outage of the payment module, a sweep
    // fails many orders.
    let expired = futures::stream::iter(due)
        .map(|(id, age)| expire_if_unpaid(&orders, &ctx, id, age))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for result in expired {
        result?;
    }
    // The oldest order not due yet gets a sweep when it is: its own slot's
    // may be missing (its placement scheduled it, then the broker froze and
    // fired it before the order's marker was written).
    if let Some(age) = earliest_waiting {
        schedule_payment_sweep(&orders, &ctx, orders.slot_of_age(age), false).await?;
    }
    // A second and last look at this slot, a timeout later: an order stored
    // late (its writes held up in a frozen broker, which fires this sweep
    // as soon as it runs again) is seen then.
    if !event.second_look {
        schedule_payment_sweep(&orders, &ctx, event.placed_by, true).await?;
    }
    Ok(())
}

/// Fails order `id` (marked open `age` ago) with `payment_timeout` if it
/// is still pending.
async fn expire_if_unpaid(
    orders: &Orders,
    ctx: &Context,
    id: OrderId,
    age: std::time::Duration,
) -> Result<(), EventError> {
    match orders.get(id).await? {
        Some(record) if record.order.status == OrderStatus::Pending => {}
        Some(record) => {
            tracing::debug!(order_id = %id, status = %record.order.status, "payment deadline of an order that went on");
            return Ok(());
        }
        // A marker whose order is not stored: an attempt that died or was
        // refused after marking it (a 503), or one storing it right now.
        // Dropped once old enough to be the former (as the recovery sweep
        // does at start), so no sweep reads it again and again.
        None => {
            if abandoned(age) {
                orders.close(id).await?;
            }
            return Ok(());
        }
    }
    let reason = format!(
        "{PAYMENT_TIMEOUT}: not paid within {}",
        humantime::format_duration(orders.payment_timeout())
    );
    // The order is in this sweep's flow: one flow per order would need its
    // correlation id, kept in its record.
    match advance(orders, ctx, id, OrderStatus::Failed, Some(&reason)).await {
        Ok(_) => Ok(()),
        // Paid or cancelled between the read and the write: the race is
        // decided, and not by the deadline.
        Err(err) if INVALID_TRANSITION.is(&err) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Makes sure the payment sweep of the slot of time we are in is with the
/// broker: one schedule per slot and process (the broker drops the others'
/// as duplicates), not one per order.
async fn ensure_payment_sweep(orders: &Orders, ctx: &Context) -> Result<(), ServiceError> {
    let slot = orders.current_slot();
    if orders.slot_swept(slot) {
        return Ok(());
    }
    schedule_payment_sweep(orders, ctx, slot, false).await?;
    orders.note_slot_swept(slot);
    Ok(())
}

/// Schedules the sweep of the orders placed by `placed_by` (the end of a
/// slot, ms since the Unix epoch) for a payment timeout after it (the
/// second look: a timeout after that). The fact names the slot, so the
/// same sweep scheduled again within two minutes (by another instance, or
/// a sweep asking for it) is dropped as a duplicate.
async fn schedule_payment_sweep(
    orders: &Orders,
    ctx: &Context,
    placed_by: u64,
    second_look: bool,
) -> Result<(), messaging_core::PublishError> {
    let timeout = orders.payment_timeout();
    let looks = if second_look { 2 } else { 1 };
    let due = std::time::UNIX_EPOCH + std::time::Duration::from_millis(placed_by) + timeout * looks;
    let after = due
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    let sweep = PaymentDue {
        placed_by,
        order_id: None,
        second_look,
    };
    let fact = format!("orders/payment_due/{placed_by}/{looks}");
    ctx.schedule_fact(&sweep, &fact, after).await.map(drop)
}

/// `events.product.stock.updated`: a committed reservation fulfils a paid order.
pub async fn stock_updated(
    orders: Arc<Orders>,
    ctx: Context,
    event: StockUpdated,
) -> Result<(), EventError> {
    if event.change != StockChange::Committed {
        return Ok(());
    }
    advance(&orders, &ctx, event.order_id, OrderStatus::Fulfilled, None).await?;
    Ok(())
}

/// Moves an order to `to` and publishes the event of that transition.
///
/// A transition that already happened changes nothing but is announced
/// again: if the process died between storing it and publishing its event,
/// this redelivery is what gets the event out (same fact, same event id, so
/// the stream drops a repeat). An illegal transition is a
/// `409 invalid_transition`, never an overwrite.
async fn advance(
    orders: &Orders,
    ctx: &Context,
    id: OrderId,
    to: OrderStatus,
    reason: Option<&str>,
) -> Result<Order, ServiceError> {
    let record = match orders.transition(id, to, reason).await {
        Ok(Transition::Applied(record)) => record,
        Ok(Transition::AlreadyDone(record)) => {
            tracing::debug!(order_id = %id, %to, "transition already applied");
            record
        }
        Err(TransitionError::UnknownOrder) => return Err(not_found(id)),
        // A payment outcome for an order cancelled meanwhile is a normal
        // race of the saga, not an error: the payment module refunds (or
        // voids) that payment when it sees the cancellation.
        // Likewise for an order that failed first (its payment deadline
        // passed): the payment module voids or refunds on its failure.
        Err(TransitionError::Illegal(record))
            if matches!(
                record.order.status,
                OrderStatus::Cancelled | OrderStatus::Failed
            ) && matches!(to, OrderStatus::Paid | OrderStatus::Failed) =>
        {
            let status = record.order.status;
            tracing::debug!(order_id = %id, %to, %status, "payment outcome for an order that ended first");
            return Ok(record.order);
        }
        Err(TransitionError::Illegal(record)) => {
            let from = record.order.status;
            return Err(
                INVALID_TRANSITION.error(format!("order {id} is {from} and cannot become {to}"))
            );
        }
        Err(TransitionError::Store(err)) => return Err(err.into()),
    };
    // A cancellation is a request answered as done: its event may follow.
    let delivery = if to == OrderStatus::Cancelled {
        Delivery::Eventually
    } else {
        Delivery::Now
    };
    announce(orders, ctx, &record, to, delivery).await?;
    Ok(record.order)
}

/// How an announcement may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Stored now, or fail (an event handler: its event comes again).
    Now,
    /// Stored now or in the background (a request whose change is stored
    /// and answered as done, a recovery sweep that must not stop a start).
    Eventually,
}

/// Publishes the event of `record` having reached `status`; once a
/// terminal status's event is stored, the order leaves the open-order
/// index. Until then its marker stays, so that a restart announces it again
/// (the same fact: nothing happens twice).
async fn announce(
    orders: &Orders,
    ctx: &Context,
    record: &OrderRecord,
    status: OrderStatus,
    delivery: Delivery,
) -> Result<(), ServiceError> {
    let order = record.order.clone();
    let fact = fact(order.id, status);
    let stored = match status {
        OrderStatus::Pending => publish(ctx, &OrderCreated { order }, &fact, delivery).await,
        OrderStatus::Paid => publish(ctx, &OrderPaid { order }, &fact, delivery).await,
        OrderStatus::Fulfilled => publish(ctx, &OrderFulfilled { order }, &fact, delivery).await,
        OrderStatus::Cancelled => publish(ctx, &OrderCancelled { order }, &fact, delivery).await,
        OrderStatus::Failed => {
            let reason = record.reason.clone().unwrap_or_default();
            publish(ctx, &OrderFailed { order, reason }, &fact, delivery).await
        }
    }?;
    if stored && crate::lifecycle::is_terminal(status) {
        if let Err(err) = orders.close(record.order.id).await {
            // Harmless: the next start announces it again, then closes it.
            tracing::debug!(order_id = %record.order.id, %err, "open-order marker not dropped");
        }
    }
    Ok(())
}

/// Publishes `event`; `true` once the stream stored it, `false` if it is
/// left to the deferred publisher.
async fn publish<E: Event>(
    ctx: &Context,
    event: &E,
    fact: &str,
    delivery: Delivery,
) -> Result<bool, ServiceError> {
    match delivery {
        Delivery::Now => ctx.publish_fact(event, fact).await.map(|_| true),
        Delivery::Eventually => ctx
            .announce_fact(event, fact)
            .await
            .map(|announced| matches!(announced, Announced::Stored(_))),
    }
    .map_err(Into::into)
}

/// The fact "order `id` reached `what`" (a status, or its payment
/// deadline): one event id per fact.
fn fact(id: OrderId, what: impl std::fmt::Display) -> String {
    format!("order/{id}/{what}")
}

/// Re-announces, at start, every order of the open-order index: those still
/// in flight (`pending`, `paid`), and those whose terminal event was not
/// known to be stored (a cancellation answered as done, then a crash).
/// Whatever the process did not get out before it stopped goes out now, in
/// the order's own flow; each announcement is the same fact as before, so
/// nothing happens twice.
///
/// Only the orders of the index are read, so a restart takes as long as
/// there is unfinished work, not as long as the history. An order that
/// cannot be announced now is left to the deferred publisher (and to the
/// next start): a full stream must not keep the module from starting.
pub async fn recover(orders: &Orders, bus: &Bus) -> Result<usize, ServiceError> {
    let mut announced = 0;
    for (id, age) in orders.open_orders().await? {
        let record = match orders.get(id).await {
            Ok(Some(record)) => record,
            // Never stored (a crash between the marker and the order), or
            // being stored right now by another instance: only an old marker
            // is known to be the former.
            Ok(None) => {
                if abandoned(age) {
                    orders.close(id).await?;
                }
                continue;
            }
            Err(err) => {
                tracing::warn!(order_id = %id, %err, "order not resumed now; at the next start");
                continue;
            }
        };
        let flow = record.correlation_id.unwrap_or_else(uuid::Uuid::new_v4);
        let ctx = Context::in_flow(bus.clone(), flow);
        let status = record.order.status;
        match announce(orders, &ctx, &record, status, Delivery::Eventually).await {
            Ok(()) => announced += 1,
            Err(err) => {
                tracing::warn!(order_id = %id, %err, "order not resumed now; at the next start")
            }
        }
    }
    Ok(announced)
}

/// A marker without its order for longer than this belongs to an attempt
/// that died (younger, the order may be being stored by another instance).
const ABANDONED_MARKER: std::time::Duration = std::time::Duration::from_secs(60);

fn abandoned(marker_age: std::time::Duration) -> bool {
    marker_age > ABANDONED_MARKER
}

fn not_found(id: OrderId) -> ServiceError {
    NOT_FOUND.error(format!("order {id} does not exist"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{abandoned, ABANDONED_MARKER};

    #[test]
    fn only_a_marker_older_than_the_limit_is_abandoned() {
        assert!(!abandoned(Duration::ZERO));
        assert!(!abandoned(ABANDONED_MARKER));
        assert!(abandoned(ABANDONED_MARKER + Duration::from_millis(1)));
    }
}
