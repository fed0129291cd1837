//! The order module's state: the `orders` table, each order with its status.
//!
//! Status changes go through [`Orders::transition`], which enforces the
//! lifecycle of [`crate::lifecycle::can_become`] with compare-and-set, so two
//! concurrent events (in one process or in several) can never both move the
//! same order, and none is silently overwritten.

use contract::order::{Order, OrderId, OrderStatus};
use contract::user::UserId;
use messaging_core::store::{Change, StoreError, Table};
use messaging_core::Setup;
use serde::{Deserialize, Serialize};

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub order: Order,
    /// Why the order failed, once it has.
    #[serde(default)]
    pub reason: Option<String>,
    /// The flow the order belongs to, to resume it in the same flow.
    #[serde(default)]
    pub correlation_id: Option<uuid::Uuid>,
}

/// The result of a legal transition request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The status changed; the order as it is now.
    Applied(OrderRecord),
    /// The order had already reached that status (or gone past it): nothing changed.
    AlreadyDone(OrderRecord),
}

/// Why a transition was refused.
#[derive(Debug)]
pub enum TransitionError {
    UnknownOrder,
    /// The order as it is, whose status cannot become the one asked for.
    Illegal(Box<OrderRecord>),
    Store(StoreError),
}

impl From<StoreError> for TransitionError {
    fn from(err: StoreError) -> Self {
        TransitionError::Store(err)
    }
}

/// All orders.
pub struct Orders {
    table: Table<OrderRecord>,
    /// Users known to exist (bounded: the least recently seen are forgotten,
    /// and only cost one more `user.get`).
    known_users: std::sync::Mutex<lru::LruCache<UserId, ()>>,
}

/// How many known users are remembered.
const KNOWN_USERS: usize = 4_096;

fn known_users() -> std::sync::Mutex<lru::LruCache<UserId, ()>> {
    let capacity = std::num::NonZeroUsize::new(KNOWN_USERS).expect("non-zero");
    std::sync::Mutex::new(lru::LruCache::new(capacity))
}

impl Orders {
    pub async fn open(setup: &Setup) -> Result<Self, StoreError> {
        Ok(Self {
            table: setup.table("orders", None).await?,
            known_users: known_users(),
        })
    }

    /// Orders in memory (for unit tests).
    pub fn in_memory() -> Self {
        Self {
            table: Table::in_memory(),
            known_users: known_users(),
        }
    }

    /// Stores a new order; if its id exists (a retried request), returns the
    /// stored one.
    pub async fn insert(
        &self,
        order: Order,
        correlation_id: uuid::Uuid,
    ) -> Result<OrderRecord, StoreError> {
        let record = OrderRecord {
            order,
            reason: None,
            correlation_id: Some(correlation_id),
        };
        self.table
            .create_or_get(&record.order.id.to_string(), record)
            .await
    }

    /// Whether `user` is known to exist.
    pub fn known_user(&self, user: UserId) -> bool {
        self.known_users
            .lock()
            .expect("users lock")
            .get(&user)
            .is_some()
    }

    /// Remembers that `user` exists.
    pub fn remember_user(&self, user: UserId) {
        self.known_users.lock().expect("users lock").put(user, ());
    }

    pub async fn get(&self, id: OrderId) -> Result<Option<OrderRecord>, StoreError> {
        Ok(self.table.get(&id.to_string()).await?.map(|v| v.value))
    }

    /// Every order id (for the recovery sweep at start).
    pub async fn ids(&self) -> Result<Vec<OrderId>, StoreError> {
        Ok(self
            .table
            .keys()
            .await?
            .iter()
            .filter_map(|k| k.parse().ok().map(OrderId))
            .collect())
    }

    /// Moves order `id` to `to` if the lifecycle allows it.
    pub async fn transition(
        &self,
        id: OrderId,
        to: OrderStatus,
        reason: Option<&str>,
    ) -> Result<Transition, TransitionError> {
        self.table
            .modify(&id.to_string(), |record| {
                let record = record.ok_or(TransitionError::UnknownOrder)?;
                let from = record.order.status;
                if already_reached(from, to) {
                    return Ok(Change::Keep(Transition::AlreadyDone(record.clone())));
                }
                if !crate::lifecycle::can_become(from, to) {
                    return Err(TransitionError::Illegal(Box::new(record.clone())));
                }
                let mut next = record.clone();
                next.order.status = to;
                if let Some(reason) = reason {
                    next.reason = Some(reason.to_owned());
                }
                Ok(Change::Write(next.clone(), Transition::Applied(next)))
            })
            .await
    }
}

/// Whether an order in `current` has already been through `target`.
fn already_reached(current: OrderStatus, target: OrderStatus) -> bool {
    current == target || (target == OrderStatus::Paid && current == OrderStatus::Fulfilled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::product::ProductId;
    use contract::values::Quantity;

    fn status(
        t: Result<Transition, TransitionError>,
    ) -> Result<(&'static str, OrderStatus), String> {
        match t {
            Ok(Transition::Applied(r)) => Ok(("applied", r.order.status)),
            Ok(Transition::AlreadyDone(r)) => Ok(("already", r.order.status)),
            Err(TransitionError::Illegal(record)) => {
                Err(format!("illegal from {}", record.order.status))
            }
            Err(TransitionError::UnknownOrder) => Err("unknown".into()),
            Err(TransitionError::Store(e)) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn transitions_follow_the_lifecycle_and_repeat_harmlessly() {
        use OrderStatus::*;
        let orders = Orders::in_memory();
        let order = Order {
            id: OrderId::new(),
            user_id: UserId::new(),
            product_id: ProductId::new(),
            quantity: Quantity::new(1).unwrap(),
            status: Pending,
        };
        orders
            .insert(order.clone(), uuid::Uuid::new_v4())
            .await
            .unwrap();
        let id = order.id;
        assert_eq!(
            status(orders.transition(id, Paid, None).await),
            Ok(("applied", Paid))
        );
        assert_eq!(
            status(orders.transition(id, Paid, None).await),
            Ok(("already", Paid))
        );
        assert_eq!(
            status(orders.transition(id, Cancelled, None).await),
            Err("illegal from paid".into())
        );
        assert_eq!(
            status(orders.transition(id, Fulfilled, None).await),
            Ok(("applied", Fulfilled))
        );
        assert_eq!(
            status(orders.transition(id, Paid, None).await),
            Ok(("already", Fulfilled))
        );
        assert_eq!(
            status(orders.transition(OrderId::new(), Paid, None).await),
            Err("unknown".into())
        );
    }
}
