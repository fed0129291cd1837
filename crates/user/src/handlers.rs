//! The user module's request handlers.

use std::sync::Arc;

use contract::user::{CreateUser, GetUser, User, UserCreated, UserId};
use contract::NOT_FOUND;
use messaging_core::{Context, ServiceError};

use crate::state::Users;

/// `user.create`: the name was parsed (non-blank) while decoding.
///
/// With an `Idempotency-Key`, the id is derived from the key: a retry finds
/// the user it created before and announces it again (same event id).
pub async fn create_user(
    users: Arc<Users>,
    ctx: Context,
    request: CreateUser,
) -> Result<User, ServiceError> {
    let id = UserId(ctx.derive_id("user"));
    let user = users.insert(id, request.name).await?;
    let fact = format!("user/{}/created", user.id);
    // The user exists from here on: say so, and publish when the stream can.
    ctx.announce_fact(&UserCreated { user: user.clone() }, &fact)
        .await?;
    Ok(user)
}

/// `user.get`: `404 not_found` for an unknown id.
pub async fn get_user(
    users: Arc<Users>,
    _ctx: Context,
    request: GetUser,
) -> Result<User, ServiceError> {
    users
        .get(request.id)
        .await?
        .ok_or_else(|| NOT_FOUND.error(format!("user {} does not exist", request.id)))
}
