//! The payment module's event handler.

use std::sync::Arc;

use messaging_core::contract::{OrderCreated, PaymentFailed, PaymentSucceeded};
use messaging_core::{Context, ServiceError};

use crate::state::{Outcome, Payments};

/// `events.order.created`: takes the payment and announces the outcome.
///
/// Each event runs in its own task (see `messaging_core::Module::on_event`),
/// so the delay of one payment does not hold up the others.
pub async fn order_created(
    payments: Arc<Payments>,
    ctx: Context,
    event: OrderCreated,
) -> Result<(), ServiceError> {
    let order = event.order;
    let Some(payment) = payments.claim(order.id) else {
        tracing::debug!(order_id = %order.id, "duplicate order.created ignored");
        return Ok(());
    };
    tokio::time::sleep(payments.config().delay).await;
    match payments.decide(&order) {
        Ok(()) => {
            payments.record(order.id, Outcome::Succeeded);
            ctx.publish(&PaymentSucceeded { payment }).await?;
        }
        Err(reason) => {
            payments.record(order.id, Outcome::Declined(reason.clone()));
            ctx.publish(&PaymentFailed { payment, reason }).await?;
        }
    }
    Ok(())
}
