//! The user module's state: an in-memory table, safe to share between handlers.

use std::collections::HashMap;
use std::sync::RwLock;

use messaging_core::contract::{Name, User, UserId};

/// All users, by id.
#[derive(Debug, Default)]
pub struct Users {
    // A std lock: it is never held across an await.
    by_id: RwLock<HashMap<UserId, User>>,
}

impl Users {
    /// Creates a user with a fresh id.
    pub fn insert(&self, name: Name) -> User {
        let user = User {
            id: UserId::new(),
            name,
        };
        self.by_id
            .write()
            .expect("users lock")
            .insert(user.id, user.clone());
        user
    }

    pub fn get(&self, id: UserId) -> Option<User> {
        self.by_id.read().expect("users lock").get(&id).cloned()
    }
}
