//! The user module's state: the `users` table, by id.

use contract::user::{User, UserId};
use contract::values::Name;
use messaging_core::store::{StoreError, Table};
use messaging_core::Setup;

/// All users.
pub struct Users {
    table: Table<User>,
}

impl Users {
    pub async fn open(setup: &Setup) -> Result<Self, StoreError> {
        Ok(Self {
            table: setup.table("users", None).await?,
        })
    }

    /// Stores a new user; if `id` exists already (a retried request), the
    /// stored user is returned instead.
    pub async fn insert(&self, id: UserId, name: Name) -> Result<User, StoreError> {
        self.table
            .create_or_get(&id.to_string(), User { id, name })
            .await
    }

    pub async fn get(&self, id: UserId) -> Result<Option<User>, StoreError> {
        Ok(self.table.get(&id.to_string()).await?.map(|v| v.value))
    }
}
