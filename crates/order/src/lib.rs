//! The order module: owns the orders and drives each one through its
//! lifecycle (`pending -> paid -> fulfilled`, or `failed` / `cancelled`).
//!
//! What it serves, requests, publishes and listens to is declared in
//! [`contract::order::MODULE`]; the framework holds it to that:
//!
//! | subject                        | kind    | what                                              |
//! |--------------------------------|---------|---------------------------------------------------|
//! | `order.create`                 | request | check the user, reserve stock, keep a pending order |
//! | `order.get`                    | request | an order with its status                          |
//! | `order.cancel`                 | request | cancel a pending order                            |
//! | `user.get`, `product.reserve`  | asks    | whether the user exists; to hold the stock        |
//! | `events.payment.success`       | listen  | `mark_paid`: `pending -> paid`                    |
//! | `events.payment.failed`        | listen  | `mark_failed`: `pending -> failed`                |
//! | `events.product.stock.updated` | listen  | `mark_fulfilled`: `paid -> fulfilled` once the stock is committed |
//! | `deadlines.order.payment_due`  | schedule, listen | `expire_unpaid_order`: `pending -> failed` (`payment_timeout`) |
//! | `events.order.*`               | publish | `created`, `paid`, `fulfilled`, `failed`, `cancelled` |
//!
//! It asks the user module whether the user exists and the product module to
//! reserve the stock; **it never reads stock and decides by itself**.

mod handlers;
mod lifecycle;
mod state;

use std::sync::Arc;

use messaging_core::{Module, ModuleHandle, ModuleOptions, RegisterError};

pub use lifecycle::{can_become, is_terminal};
pub use state::Orders;

/// Starts serving the order module on `client`, its state in the `orders` bucket.
pub async fn register(client: async_nats::Client) -> Result<ModuleHandle, RegisterError> {
    register_with(client, ModuleOptions::default()).await
}

/// Starts serving the order module as `options` say.
///
/// Before serving, re-announces the orders that are not finished, so a
/// restart resumes where the last run stopped.
pub async fn register_with(
    client: async_nats::Client,
    options: ModuleOptions,
) -> Result<ModuleHandle, RegisterError> {
    let version = env!("CARGO_PKG_VERSION");
    let setup = Module::setup(client, &contract::order::MODULE, version, options).await?;
    let orders = Arc::new(Orders::open(&setup).await?);
    let resumed = handlers::recover(&orders, setup.bus())
        .await
        .map_err(|err| RegisterError::Stream(format!("resuming orders: {err}")))?;
    if resumed > 0 {
        tracing::info!(resumed, "unfinished orders resumed");
    }
    let mut module = setup.start(orders).await?;
    module.serve(handlers::place_order).await?;
    module.serve(handlers::get_order).await?;
    module.serve(handlers::cancel_order).await?;
    module
        .on_event("mark_paid", handlers::payment_succeeded)
        .await?;
    module
        .on_event("mark_failed", handlers::payment_failed)
        .await?;
    module
        .on_event("mark_fulfilled", handlers::stock_updated)
        .await?;
    module
        .on_event("expire_unpaid_order", handlers::payment_due)
        .await?;
    Ok(module.running())
}
