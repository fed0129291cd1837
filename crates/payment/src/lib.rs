//! The payment module: takes the payment for each new order.
//!
//! | subject                  | kind    | what                                   |
//! |--------------------------|---------|----------------------------------------|
//! | `events.order.created`   | listen  | take the payment (after a delay)       |
//! | `events.payment.success` | publish | the payment went through               |
//! | `events.payment.failed`  | publish | the payment was declined, with a reason |
//! | `events.order.cancelled` | listen  | refund the payment, or void it if still to come |
//! | `events.payment.refunded`| publish | a cancelled order's payment was given back |
//!
//! The payment is simulated: it takes [`PaymentConfig::delay`] (1 s by default,
//! like the seed) without blocking other payments, and is declined when the
//! order is over [`PaymentConfig::limit`] or by chance
//! ([`PaymentConfig::failure_rate`], reproducible with [`PaymentConfig::seed`]).

mod config;
mod handlers;
mod state;

use std::sync::Arc;

use messaging_core::{Bus, Module, ModuleHandle, ModuleSpec, RegisterError, Storage};

pub use config::{ConfigError, PaymentConfig};
pub use state::Payments;

/// How the module announces itself on `$SRV.INFO`.
pub const SPEC: ModuleSpec = ModuleSpec {
    name: "payment",
    version: env!("CARGO_PKG_VERSION"),
    description: "Payments: simulated card payments for new orders",
};

/// Starts serving the payment module on `client`, its state in the `payments` bucket.
pub async fn register(
    client: async_nats::Client,
    config: PaymentConfig,
) -> Result<ModuleHandle, RegisterError> {
    register_with(client, config, Storage::Durable).await
}

/// Starts serving the payment module with its state kept as `storage` says.
pub async fn register_with(
    client: async_nats::Client,
    config: PaymentConfig,
    storage: Storage,
) -> Result<ModuleHandle, RegisterError> {
    config
        .validate()
        .map_err(|err| RegisterError::Config(err.to_string()))?;
    let payments = Arc::new(Payments::open(&client, storage, config).await?);
    let mut module = Module::start(Bus::new(client), SPEC, payments, storage).await?;
    module.on_event(handlers::order_created).await?;
    module.on_event(handlers::order_cancelled).await?;
    Ok(module.running())
}
