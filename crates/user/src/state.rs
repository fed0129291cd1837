//! The user module's state: the `users` table, by id.

use messaging_core::contract::{Name, User, UserId};
use messaging_core::store::{Storage, StoreError, Table};

/// All users.
pub struct Users {
    table: Table<User>,
}

impl Users {
    pub async fn open(client: &async_nats::Client, storage: Storage) -> Result<Self, StoreError> {
        Ok(Self {
            table: Table::open(client, storage, "users", None).await?,
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
