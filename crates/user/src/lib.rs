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

use messaging_core::{Bus, Module, ModuleHandle, ModuleSpec, RegisterError};

pub use state::Users;

/// How the module announces itself on `$SRV.INFO`.
pub const SPEC: ModuleSpec = ModuleSpec {
    name: "user",
    version: env!("CARGO_PKG_VERSION"),
    description: "Users: create and look up",
};

/// Starts serving the user module on `client`.
pub async fn register(client: async_nats::Client) -> Result<ModuleHandle, RegisterError> {
    let mut module = Module::start(Bus::new(client), SPEC, Arc::new(Users::default())).await?;
    module.serve(handlers::create_user).await?;
    module.serve(handlers::get_user).await?;
    Ok(module.running())
}
