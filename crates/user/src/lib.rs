//! The user module: owns the users.
//!
//! | subject               | kind    | what                          |
//! |-----------------------|---------|-------------------------------|
//! | `user.create`         | request | create a user, reply [`User`] |
//! | `user.get`            | request | look a user up by id          |
//! | `events.user.created` | publish | after a user is created       |
//!
//! Depends on `messaging-core` only; other modules reach it over the bus.
//!
//! [`User`]: messaging_core::contract::User

mod handlers;
mod state;

use std::sync::Arc;

use messaging_core::{Bus, Module, ModuleHandle, ModuleSpec, RegisterError, Storage};

pub use state::Users;

/// How the module announces itself on `$SRV.INFO`.
pub const SPEC: ModuleSpec = ModuleSpec {
    name: "user",
    version: env!("CARGO_PKG_VERSION"),
    description: "Users: create and look up",
};

/// Starts serving the user module on `client`, its state in the `users` bucket.
pub async fn register(client: async_nats::Client) -> Result<ModuleHandle, RegisterError> {
    register_with(client, Storage::Durable).await
}

/// Starts serving the user module with its state kept as `storage` says.
pub async fn register_with(
    client: async_nats::Client,
    storage: Storage,
) -> Result<ModuleHandle, RegisterError> {
    let users = Arc::new(Users::open(&client, storage).await?);
    let mut module = Module::start(Bus::new(client), SPEC, users, storage).await?;
    module.serve(handlers::create_user).await?;
    module.serve(handlers::get_user).await?;
    Ok(module.running())
}
