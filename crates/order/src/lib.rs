//! The order module: owns the orders and drives each one through its
//! lifecycle (`pending -> paid -> fulfilled`, or `failed` / `cancelled`).
//!
//! | subject                        | kind    | what                                              |
//! |--------------------------------|---------|---------------------------------------------------|
//! | `order.create`                 | request | check the user, reserve stock, keep a pending order |
//! | `order.get`                    | request | an order with its status                          |
//! | `order.cancel`                 | request | cancel a pending order                            |
//! | `events.payment.success`       | listen  | `pending -> paid`                                 |
//! | `events.payment.failed`        | listen  | `pending -> failed`                               |
//! | `events.product.stock.updated` | listen  | `paid -> fulfilled` once the stock is committed   |
//! | `events.order.*`               | publish | `created`, `paid`, `fulfilled`, `failed`, `cancelled` |
//!
//! It asks the user module whether the user exists and the product module to
//! reserve the stock; **it never reads stock and decides by itself**.

mod handlers;
mod state;

use std::sync::Arc;

use messaging_core::{Bus, Module, ModuleHandle, ModuleSpec, RegisterError, Storage};

pub use state::Orders;

/// How the module announces itself on `$SRV.INFO`.
pub const SPEC: ModuleSpec = ModuleSpec {
    name: "order",
    version: env!("CARGO_PKG_VERSION"),
    description: "Orders: placement and lifecycle",
};

/// Starts serving the order module on `client`, its state in the `orders` bucket.
pub async fn register(client: async_nats::Client) -> Result<ModuleHandle, RegisterError> {
    register_with(client, Storage::Durable).await
}

/// Starts serving the order module with its state kept as `storage` says.
///
/// Before serving, re-announces the orders that are not finished, so a
/// restart resumes where the last run stopped.
pub async fn register_with(
    client: async_nats::Client,
    storage: Storage,
) -> Result<ModuleHandle, RegisterError> {
    let orders = Arc::new(Orders::open(&client, storage).await?);
    let mut module = Module::start(Bus::new(client), SPEC, orders.clone(), storage).await?;
    let resumed = handlers::recover(&orders, module.bus())
        .await
        .map_err(|err| RegisterError::Stream(format!("resuming orders: {err}")))?;
    if resumed > 0 {
        tracing::info!(resumed, "unfinished orders resumed");
    }
    module.serve(handlers::place_order).await?;
    module.serve(handlers::get_order).await?;
    module.serve(handlers::cancel_order).await?;
    module.on_event(handlers::payment_succeeded).await?;
    module.on_event(handlers::payment_failed).await?;
    module.on_event(handlers::stock_updated).await?;
    Ok(module.running())
}
