//! The payment module: takes the payment for each new order.
//!
//! What it publishes and listens to is declared in
//! [`contract::payment::MODULE`]; the framework holds it to that:
//!
//! | subject                  | kind    | what                                   |
//! |--------------------------|---------|----------------------------------------|
//! | `events.order.created`   | listen  | `take_payment` (after a delay)         |
//! | `events.payment.success` | publish | the payment went through               |
//! | `events.payment.failed`  | publish | the payment was declined, with a reason |
//! | `events.order.cancelled` | listen  | `refund_cancelled_order`, or void it if still to come |
//! | `events.order.failed`    | listen  | `refund_failed_order`: the same for an order that failed first (payment deadline) |
//! | `events.payment.refunded`| publish | a cancelled or failed order's payment was given back |
//!
//! The payment is simulated: it takes [`PaymentConfig::delay`] (1 s by default,
//! like the seed) without blocking other payments, and is declined when the
//! order is over [`PaymentConfig::limit`] or by chance
//! ([`PaymentConfig::failure_rate`], reproducible with [`PaymentConfig::seed`]).

mod config;
mod handlers;
mod state;

use std::sync::Arc;

use messaging_core::{Module, ModuleHandle, ModuleOptions, RegisterError};

pub use config::{ConfigError, PaymentConfig};
pub use state::{payment_id, Payments};

/// Starts serving the payment module on `client`, its state in the `payments` bucket.
pub async fn register(
    client: async_nats::Client,
    config: PaymentConfig,
) -> Result<ModuleHandle, RegisterError> {
    register_with(client, config, ModuleOptions::default()).await
}

/// Starts serving the payment module as `options` say.
pub async fn register_with(
    client: async_nats::Client,
    config: PaymentConfig,
    options: ModuleOptions,
) -> Result<ModuleHandle, RegisterError> {
    config
        .validate()
        .map_err(|err| RegisterError::Config(err.to_string()))?;
    let version = env!("CARGO_PKG_VERSION");
    let setup = Module::setup(client, &contract::payment::MODULE, version, options).await?;
    let payments = Arc::new(Payments::open(&setup, config).await?);
    let mut module = setup.start(payments).await?;
    module
        .on_event("take_payment", handlers::order_created)
        .await?;
    module
        .on_event("refund_cancelled_order", handlers::order_cancelled)
        .await?;
    module
        .on_event("refund_failed_order", handlers::order_failed)
        .await?;
    Ok(module.running())
}
