//! The shipping module: dispatches each fulfilled order.
//!
//! What it serves, publishes and listens to is declared in
//! [`contract::shipping::MODULE`]; the framework holds it to that:
//!
//! | subject                      | kind    | what                                        |
//! |------------------------------|---------|---------------------------------------------|
//! | `events.order.fulfilled`     | listen  | `dispatch_fulfilled_order`: ship it, once   |
//! | `shipping.get`               | request | the shipment of an order                    |
//! | `events.shipping.dispatched` | publish | after an order is dispatched                |
//!
//! The worked example of adding a module (README, "Adding a module"): this
//! crate, its part of the contract, one line where the demo registers
//! modules, and the regenerated docs. Nothing else changes.

mod handlers;
mod state;

use std::sync::Arc;

use messaging_core::{Module, ModuleHandle, ModuleOptions, RegisterError};

pub use state::Shipments;

/// Starts serving the shipping module on `client`, its state in the `shipments` bucket.
pub async fn register(client: async_nats::Client) -> Result<ModuleHandle, RegisterError> {
    register_with(client, ModuleOptions::default()).await
}

/// Starts serving the shipping module as `options` say.
pub async fn register_with(
    client: async_nats::Client,
    options: ModuleOptions,
) -> Result<ModuleHandle, RegisterError> {
    let version = env!("CARGO_PKG_VERSION");
    let setup = Module::setup(client, &contract::shipping::MODULE, version, options).await?;
    let shipments = Arc::new(Shipments::open(&setup).await?);
    let mut module = setup.start(shipments).await?;
    module.serve(handlers::get_shipment).await?;
    module
        .on_event("dispatch_fulfilled_order", handlers::order_fulfilled)
        .await?;
    Ok(module.running())
}
