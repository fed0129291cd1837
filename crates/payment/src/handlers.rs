//! The payment module's event handlers.

use std::sync::Arc;

use contract::order::{OrderCancelled, OrderCreated, OrderFailed, OrderId};
use contract::payment::{Payment, PaymentFailed, PaymentRefunded, PaymentSucceeded};
use messaging_core::{Context, EventError};

use crate::state::{payment_id, Outcome, PaymentRecord, Payments};

/// `events.order.created`: takes the payment and announces the outcome.
///
/// Events are handled concurrently (see `messaging_core::Module::on_event`),
/// so the delay of one payment does not hold up the others. An order whose
/// payment was already taken is not charged again: its outcome is announced
/// again instead (the same fact, so the same event id), which is what a
/// redelivery after a crash needs.
pub async fn order_created(
    payments: Arc<Payments>,
    ctx: Context,
    event: OrderCreated,
) -> Result<(), EventError> {
    let order = event.order;
    // One payment id per order, whichever delivery takes it: a real payment
    // gateway, given this id as its idempotency key, charges once even if
    // two deliveries race here.
    let payment = Payment {
        id: payment_id(order.id),
        order_id: order.id,
    };
    // No read first: the payment is simulated, then recorded with
    // create-if-absent. A duplicate delivery finds the first record there
    // and announces *that* outcome again: each order is charged once.
    let outcome = if too_late(&payments, &ctx) {
        late(&order)
    } else {
        tokio::time::sleep(payments.config().delay).await;
        // Checked again after the (simulated) gateway: the deadline may
        // have passed meanwhile.
        if too_late(&payments, &ctx) {
            late(&order)
        } else {
            payments.decide(&order)
        }
    };
    let record = payments.record(PaymentRecord { payment, outcome }).await?;
    let fact = format!("payment/{}", order.id);
    let payment = record.payment;
    match record.outcome {
        Outcome::Succeeded => {
            ctx.publish_fact(&PaymentSucceeded { payment }, &fact)
                .await?;
        }
        Outcome::Declined { reason } => {
            ctx.publish_fact(&PaymentFailed { payment, reason }, &fact)
                .await?;
        }
        // Cancelled first: nothing was charged, nothing to announce.
        Outcome::Voided => {}
        // Charged, then refunded on cancellation: already announced.
        Outcome::Refunded => {}
    }
    Ok(())
}

/// Whether the order's payment deadline has passed: it was placed (its
/// `created` event stored) longer ago than the payment timeout, because this
/// module was down or behind. Its order fails, or has failed already: a
/// payment taken now would only have to be refunded.
fn too_late(payments: &Payments, ctx: &Context) -> bool {
    ctx.event_age()
        .is_some_and(|age| age >= payments.payment_timeout())
}

/// The outcome of a payment that came too late: never taken.
fn late(order: &contract::order::Order) -> Outcome {
    tracing::info!(order_id = %order.id, "payment deadline passed before the payment: voided");
    Outcome::Voided
}

/// `events.order.cancelled`: give the money back if it was taken, or make
/// sure it never is. The order module ignores a payment that lands on a
/// cancelled order; this is where that payment is undone.
pub async fn order_cancelled(
    payments: Arc<Payments>,
    ctx: Context,
    event: OrderCancelled,
) -> Result<(), EventError> {
    undo(&payments, &ctx, event.order.id, "order cancelled").await
}

/// `events.order.failed`: the same for an order that failed while its
/// payment was on the way (its payment deadline passed first): no customer
/// pays for an order that failed. An order that failed because its payment
/// was declined has nothing to undo.
pub async fn order_failed(
    payments: Arc<Payments>,
    ctx: Context,
    event: OrderFailed,
) -> Result<(), EventError> {
    let reason = format!("order failed: {}", event.reason);
    undo(&payments, &ctx, event.order.id, &reason).await
}

/// Refunds the payment of an order that ended without it, or voids it if it
/// is still to come; announces a refund.
async fn undo(
    payments: &Payments,
    ctx: &Context,
    order_id: OrderId,
    reason: &str,
) -> Result<(), EventError> {
    let payment = Payment {
        id: payment_id(order_id),
        order_id,
    };
    if let Some(record) = payments.cancel(payment).await? {
        let refund = PaymentRefunded {
            payment: record.payment,
            reason: reason.to_owned(),
        };
        ctx.publish_fact(&refund, &format!("payment/{order_id}/refunded"))
            .await?;
    }
    Ok(())
}
