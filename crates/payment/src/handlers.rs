//! The payment module's event handler.

use std::sync::Arc;

use messaging_core::contract::{OrderCreated, Payment, PaymentFailed, PaymentId, PaymentSucceeded};
use messaging_core::{Context, ServiceError};

use crate::state::{Outcome, PaymentRecord, Payments};

/// `events.order.created`: takes the payment and announces the outcome.
///
/// Each event runs in its own task (see `messaging_core::Module::on_event`),
/// so the delay of one payment does not hold up the others. An order whose
/// payment was already taken is not charged again: its outcome is announced
/// again instead (the same fact, so the same event id), which is what a
/// redelivery after a crash needs.
pub async fn order_created(
    payments: Arc<Payments>,
    ctx: Context,
    event: OrderCreated,
) -> Result<(), ServiceError> {
    let order = event.order;
    // No read first: the payment is simulated, then recorded with
    // create-if-absent. A duplicate delivery finds the first record there
    // and announces *that* outcome again: each order is charged once.
    tokio::time::sleep(payments.config().delay).await;
    // One payment id per order, whichever delivery takes it: a real payment
    // gateway, given this id as its idempotency key, charges once even if
    // two deliveries race here.
    let payment = Payment {
        id: PaymentId::for_order(order.id),
        order_id: order.id,
    };
    let outcome = payments.decide(&order);
    let record = payments.record(PaymentRecord { payment, outcome }).await?;
    let fact = format!("payment/{}", order.id);
    let payment = record.payment;
    match record.outcome {
        Outcome::Succeeded => {
            ctx.publish_fact(&PaymentSucceeded { payment }, &fact)
                .await?
        }
        Outcome::Declined { reason } => {
            ctx.publish_fact(&PaymentFailed { payment, reason }, &fact)
                .await?
        }
    };
    Ok(())
}
