//! The user module's request handlers.

use std::sync::Arc;

use messaging_core::contract::{CreateUser, GetUser, User, UserCreated};
use messaging_core::{Context, ServiceError};

use crate::state::Users;

/// `user.create`: the name was parsed (non-blank) while decoding.
pub async fn create_user(
    users: Arc<Users>,
    ctx: Context,
    request: CreateUser,
) -> Result<User, ServiceError> {
    let user = users.insert(request.name);
    ctx.publish(&UserCreated { user: user.clone() }).await?;
    Ok(user)
}

/// `user.get`: `404 not_found` for an unknown id.
pub async fn get_user(
    users: Arc<Users>,
    _ctx: Context,
    request: GetUser,
) -> Result<User, ServiceError> {
    users.get(request.id).ok_or_else(|| {
        ServiceError::not_found("not_found", format!("user {} does not exist", request.id))
    })
}
