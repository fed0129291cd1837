//! The product module: owns the catalogue and the stock, including the
//! reservations that keep concurrent orders from overselling.
//!
//! | subject                        | kind    | what                                        |
//! |--------------------------------|---------|---------------------------------------------|
//! | `product.create`               | request | add a product with its initial stock        |
//! | `product.get`                  | request | a product with `stock` and `available`      |
//! | `product.reserve`              | request | hold stock for an order, atomically         |
//! | `events.order.paid`            | listen  | commit the order's reservation              |
//! | `events.order.failed`          | listen  | release the order's reservation             |
//! | `events.order.cancelled`       | listen  | release the order's reservation             |
//! | `events.product.created`       | publish | after a product is added                    |
//! | `events.product.stock.updated` | publish | after a reservation is committed or released |
//!
//! **Only this module decides about stock.** The order module asks it to
//! reserve; it never reads the stock and decides by itself.

mod handlers;
mod state;

use std::sync::Arc;

use messaging_core::{Bus, Module, ModuleHandle, ModuleSpec, RegisterError, Storage};

pub use state::Catalogue;

/// How the module announces itself on `$SRV.INFO`.
pub const SPEC: ModuleSpec = ModuleSpec {
    name: "product",
    version: env!("CARGO_PKG_VERSION"),
    description: "Products: catalogue, stock and reservations",
};

/// Starts serving the product module on `client`, its state in the `products` bucket.
pub async fn register(client: async_nats::Client) -> Result<ModuleHandle, RegisterError> {
    register_with(client, Storage::Durable).await
}

/// Starts serving the product module with its state kept as `storage` says.
pub async fn register_with(
    client: async_nats::Client,
    storage: Storage,
) -> Result<ModuleHandle, RegisterError> {
    let catalogue = Arc::new(Catalogue::open(&client, storage).await?);
    let mut module = Module::start(Bus::new(client), SPEC, catalogue, storage).await?;
    module.serve(handlers::create_product).await?;
    module.serve(handlers::get_product).await?;
    module.serve(handlers::reserve_stock).await?;
    module.on_event(handlers::order_paid).await?;
    module.on_event(handlers::order_failed).await?;
    module.on_event(handlers::order_cancelled).await?;
    Ok(module.running())
}
