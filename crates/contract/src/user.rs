//! The user module's contract: users, created and looked up.

use messaging_core::{Declaration, Endpoint, ErrorCode, Event, Rpc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{id_type, Name};
use crate::NOT_FOUND;

pub const CREATE: &str = "user.create";
pub const GET: &str = "user.get";
pub const CREATED: &str = "events.user.created";

/// What the user module does on the bus.
pub const MODULE: Declaration = Declaration {
    name: "user",
    description: "Users: create and look up",
    serves: &[Endpoint::public(CREATE), Endpoint::public(GET)],
    requests: &[],
    publishes: &[CREATED],
    schedules: &[],
    buckets: &["users"],
    listens: &[],
};

id_type!(
    /// Identifies a user.
    UserId
);

/// A user, as replied by `user.create` / `user.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct User {
    pub id: UserId,
    pub name: Name,
}

/// `user.create {"name"}` -> [`User`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreateUser {
    pub name: Name,
}
impl Rpc for CreateUser {
    const SUBJECT: &'static str = CREATE;
    type Reply = User;
}

/// `user.get {"id"}` -> [`User`], or `404 not_found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GetUser {
    pub id: UserId,
}
impl Rpc for GetUser {
    const SUBJECT: &'static str = GET;
    const ERRORS: &'static [ErrorCode] = &[NOT_FOUND];
    type Reply = User;
}

/// `events.user.created`: a user was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserCreated {
    pub user: User,
}
impl Event for UserCreated {
    const SUBJECT: &'static str = CREATED;
}
