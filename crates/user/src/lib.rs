//! The user module: owns the users.
//!
//! What it serves, requests, publishes and listens to is declared in
//! [`contract::user::MODULE`]; the framework holds it to that:
//!
//! | subject               | kind    | what                          |
//! |-----------------------|---------|-------------------------------|
//! | `user.create`         | request | create a user, reply [`User`] |
//! | `user.get`            | request | look a user up by id          |
//! | `events.user.created` | publish | after a user is created       |
//!
//! Depends on `messaging-core` and `contract` only; other modules reach it
//! over the bus.
//!
//! [`User`]: contract::user::User

mod handlers;
mod state;

use std::sync::Arc;

use messaging_core::{Module, ModuleHandle, ModuleOptions, RegisterError};

pub use state::Users;

/// Starts serving the user module on `client`, its state in the `users` bucket.
pub async fn register(client: async_nats::Client) -> Result<ModuleHandle, RegisterError> {
    register_with(client, ModuleOptions::default()).await
}

/// Starts serving the user module as `options` say.
pub async fn register_with(
    client: async_nats::Client,
    options: ModuleOptions,
) -> Result<ModuleHandle, RegisterError> {
    let version = env!("CARGO_PKG_VERSION");
    let setup = Module::setup(client, &contract::user::MODULE, version, options).await?;
    let users = Arc::new(Users::open(&setup).await?);
    let mut module = setup.start(users).await?;
    module.serve(handlers::create_user).await?;
    module.serve(handlers::get_user).await?;
    Ok(module.running())
}
