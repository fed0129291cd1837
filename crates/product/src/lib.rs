//! The product module: owns the catalogue and the stock, including the
//! reservations that keep concurrent orders from overselling.
//!
//! What it serves, requests, publishes and listens to is declared in
//! [`contract::product::MODULE`]; the framework holds it to that:
//!
//! | subject                        | kind    | what                                        |
//! |--------------------------------|---------|---------------------------------------------|
//! | `product.create`               | request | add a product with its initial stock        |
//! | `product.get`                  | request | a product with `stock` and `available`      |
//! | `product.reserve`              | request | hold stock for an order, atomically (modules only) |
//! | `events.order.paid`            | listen  | `commit_paid_order`: commit the order's reservation |
//! | `events.order.failed`          | listen  | `release_failed_order`: release it          |
//! | `events.order.cancelled`       | listen  | `release_cancelled_order`: release it       |
//! | `deadlines.product.hold_due`      | schedule, listen | `expire_hold`: release a hold whose order never came or ended |
//! | `order.get`                    | asks    | whether a hold's order exists, and how it is |
//! | `events.product.created`       | publish | after a product is added                    |
//! | `events.product.stock.updated` | publish | after a reservation is committed or released |
//!
//! **Only this module decides about stock.** The order module asks it to
//! reserve; it never reads the stock and decides by itself.

mod handlers;
mod state;

use std::sync::Arc;

use messaging_core::{Module, ModuleHandle, ModuleOptions, RegisterError};

pub use state::Catalogue;

/// Starts serving the product module on `client`, its state in the `products` bucket.
pub async fn register(client: async_nats::Client) -> Result<ModuleHandle, RegisterError> {
    register_with(client, ModuleOptions::default()).await
}

/// Starts serving the product module as `options` say.
pub async fn register_with(
    client: async_nats::Client,
    options: ModuleOptions,
) -> Result<ModuleHandle, RegisterError> {
    let version = env!("CARGO_PKG_VERSION");
    let setup = Module::setup(client, &contract::product::MODULE, version, options).await?;
    let catalogue = Arc::new(Catalogue::open(&setup).await?);
    let mut module = setup.start(catalogue).await?;
    module.serve(handlers::create_product).await?;
    module.serve(handlers::get_product).await?;
    module.serve(handlers::reserve_stock).await?;
    module
        .on_event("commit_paid_order", handlers::order_paid)
        .await?;
    module
        .on_event("release_failed_order", handlers::order_failed)
        .await?;
    module
        .on_event("release_cancelled_order", handlers::order_cancelled)
        .await?;
    module.on_event("expire_hold", handlers::hold_due).await?;
    Ok(module.running())
}
