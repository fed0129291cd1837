//! The order module's state: the `orders` table, each order with its status.
//!
//! Status changes go through [`Orders::transition`], which enforces the
//! lifecycle of [`crate::lifecycle::can_become`] with compare-and-set, so two
//! concurrent events (in one process or in several) can never both move the
//! same order, and none is silently overwritten.
//!
//! Beside the orders, the `orders_open` table indexes the unfinished ones,
//! so that a restart resumes them without reading the whole history: a
//! marker is written *before* its order is stored and removed only *after*
//! the event of its terminal status is stored, so every order with work
//! left has one (a stale marker only costs the sweep a read and an
//! announcement of the same fact).

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
    /// Markers of the orders not yet terminal, with when they were set
    /// (milliseconds since the Unix epoch).
    open: Table<u64>,
    /// Users known to exist (bounded: the least recently seen are forgotten,
    /// and only cost one more `user.get`).
    known_users: std::sync::Mutex<lru::LruCache<UserId, ()>>,
    /// How long a placed order may wait for its payment.
    payment_timeout: std::time::Duration,
    /// The end of the last slot of time (ms since the Unix epoch) whose
    /// payment sweep this process got the broker to take (0: none yet).
    swept_slot: std::sync::atomic::AtomicU64,
}

/// The slot of time one payment sweep covers: deadlines come at most this
/// late. Not shorter for short timeouts: each sweep reads the open-order
/// index through a consumer the broker keeps for 30 s after (and it allows
/// 1,000), so sweeps stay at about two a second whatever the timeout.
const SLOT: std::time::Duration = std::time::Duration::from_secs(1);

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
            open: setup.index("orders_open").await?,
            known_users: known_users(),
            payment_timeout: setup.options().deadline,
            swept_slot: Default::default(),
        })
    }

    /// How long a placed order may wait for its payment before it fails.
    pub fn payment_timeout(&self) -> std::time::Duration {
        self.payment_timeout
    }

    /// The end of the slot of time `at_ms` (ms since the Unix epoch) falls in.
    pub fn slot_end(&self, at_ms: u64) -> u64 {
        let length = SLOT.as_millis() as u64;
        at_ms.div_ceil(length).saturating_mul(length)
    }

    /// The end of the slot of time this very moment falls in.
    pub fn current_slot(&self) -> u64 {
        self.slot_end(now_millis())
    }

    /// The end of the slot of time an order marked open `age` ago was
    /// placed in.
    pub fn slot_of_age(&self, age: std::time::Duration) -> u64 {
        self.slot_end(now_millis().saturating_sub(age.as_millis() as u64))
    }

    /// Whether this process already got the sweep of slot `end` scheduled.
    pub fn slot_swept(&self, end: u64) -> bool {
        self.swept_slot.load(std::sync::atomic::Ordering::SeqCst) == end
    }

    /// Notes that the broker took the sweep of slot `end`.
    pub fn note_slot_swept(&self, end: u64) {
        self.swept_slot
            .fetch_max(end, std::sync::atomic::Ordering::SeqCst);
    }

    /// Orders in memory (for unit tests).
    pub fn in_memory() -> Self {
        Self {
            table: Table::in_memory(),
            open: Table::in_memory(),
            known_users: known_users(),
            payment_timeout: messaging_core::DEFAULT_DEADLINE,
            swept_slot: Default::default(),
        }
    }

    /// The order's marker in the open-order index, written before the order
    /// is stored (so an order stored is always findable at restart), and
    /// harmless if the order is then never stored: a sweep drops it once
    /// it is old.
    pub async fn mark_open(&self, id: OrderId) -> Result<(), StoreError> {
        self.open
            .put(&id.to_string(), &now_millis())
            .await
            .map(drop)
    }

    /// Stores a new order, once it is marked open; if its id exists (a
    /// retried request), returns the stored one.
    pub async fn store_new(
        &self,
        order: Order,
        correlation_id: uuid::Uuid,
    ) -> Result<OrderRecord, StoreError> {
        let record = OrderRecord {
            order,
            reason: None,
            correlation_id: Some(correlation_id),
        };
        let key = record.order.id.to_string();
        self.table.create_or_get(&key, record).await
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

    /// The orders that may not be finished, each with the age of its
    /// marker (for the recovery sweep at start): read from the index, not
    /// from the whole history.
    pub async fn open_orders(&self) -> Result<Vec<(OrderId, std::time::Duration)>, StoreError> {
        let now = now_millis();
        Ok(self
            .open
            .values()
            .await?
            .into_iter()
            .filter_map(|(key, since)| {
                let age = std::time::Duration::from_millis(now.saturating_sub(since));
                key.parse().ok().map(|id| (OrderId(id), age))
            })
            .collect())
    }

    /// Drops the marker of an order found finished (or never stored).
    pub async fn close(&self, id: OrderId) -> Result<(), StoreError> {
        // Erased, not marked deleted: the index must not grow with history
        // (its purge marker expires by itself).
        self.open.remove(&id.to_string()).await
    }

    /// Moves order `id` to `to` if the lifecycle allows it.
    pub async fn transition(
        &self,
        id: OrderId,
        to: OrderStatus,
        reason: Option<&str>,
    ) -> Result<Transition, TransitionError> {
        let transition = self
            .table
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
            .await?;
        Ok(transition)
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

    /// An order stored as placement does it: marked open, then stored.
    async fn insert(
        orders: &Orders,
        order: Order,
        correlation_id: uuid::Uuid,
    ) -> Result<OrderRecord, StoreError> {
        orders.mark_open(order.id).await?;
        orders.store_new(order, correlation_id).await
    }

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
        insert(&orders, order.clone(), uuid::Uuid::new_v4())
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

    fn pending() -> Order {
        Order {
            id: OrderId::new(),
            user_id: UserId::new(),
            product_id: ProductId::new(),
            quantity: Quantity::new(1).unwrap(),
            status: OrderStatus::Pending,
        }
    }

    /// Milliseconds since the Unix epoch, read here rather than through
    /// the code under test.
    fn wall_clock_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    async fn open_ids(orders: &Orders) -> Vec<OrderId> {
        let mut ids: Vec<OrderId> = orders
            .open_orders()
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort_by_key(|id| id.to_string());
        ids
    }

    #[tokio::test]
    async fn an_order_is_in_the_open_index_from_its_insert_until_closed() {
        use OrderStatus::*;
        let orders = Orders::in_memory();
        let before = wall_clock_ms();
        let order = pending();
        let stored = insert(&orders, order.clone(), uuid::Uuid::new_v4())
            .await
            .unwrap();
        let after = wall_clock_ms();
        assert_eq!(stored.order, order);
        assert_eq!(orders.get(order.id).await.unwrap(), Some(stored.clone()));

        // The marker holds when it was set.
        let marker = orders.open.get(&order.id.to_string()).await.unwrap();
        let set_at = marker.expect("a marker for the inserted order").value;
        assert!((before..=after).contains(&set_at), "{set_at}");
        assert_eq!(open_ids(&orders).await, [order.id]);

        // A retried insert keeps the first order (and its marker).
        let again = insert(&orders, order.clone(), uuid::Uuid::new_v4()).await;
        assert_eq!(again.unwrap(), stored);
        assert_eq!(open_ids(&orders).await, [order.id]);

        // Moving the order leaves the index alone: the marker goes once the
        // terminal event is stored (the handlers close it).
        orders.transition(order.id, Paid, None).await.unwrap();
        orders.transition(order.id, Fulfilled, None).await.unwrap();
        assert_eq!(open_ids(&orders).await, [order.id]);
        orders.close(order.id).await.unwrap();
        assert_eq!(open_ids(&orders).await, []);
        assert_eq!(
            orders.get(order.id).await.unwrap().map(|r| r.order.status),
            Some(Fulfilled),
            "closing drops the marker, not the order"
        );
    }

    #[tokio::test]
    async fn an_open_order_comes_with_the_age_of_its_marker() {
        let orders = Orders::in_memory();
        let (old, new) = (OrderId::new(), OrderId::new());
        let now = wall_clock_ms();
        orders
            .open
            .put(&old.to_string(), &(now - 120_000))
            .await
            .unwrap();
        orders.open.put(&new.to_string(), &now).await.unwrap();
        // Not an order id: skipped, not an error.
        orders.open.put("not-an-id", &now).await.unwrap();

        let open: std::collections::HashMap<_, _> =
            orders.open_orders().await.unwrap().into_iter().collect();
        assert_eq!(open.len(), 2, "{open:?}");
        // Measured from the marker, give or take how long this test runs.
        let secs = std::time::Duration::from_secs;
        let old_age = open[&old];
        assert!(old_age >= secs(120) && old_age < secs(180), "{old_age:?}");
        assert!(open[&new] < secs(60), "{:?}", open[&new]);

        orders.close(old).await.unwrap();
        assert_eq!(open_ids(&orders).await, [new]);
    }

    #[test]
    fn time_is_cut_in_one_second_slots_each_ending_on_its_second() {
        let orders = Orders::in_memory();
        // A slot ends on the next whole second (a moment on one is its end).
        assert_eq!(orders.slot_end(0), 0);
        assert_eq!(orders.slot_end(1), 1_000);
        assert_eq!(orders.slot_end(999), 1_000);
        assert_eq!(orders.slot_end(1_000), 1_000);
        assert_eq!(orders.slot_end(1_001), 2_000);
        let before = wall_clock_ms();
        let now = orders.current_slot();
        assert_eq!(now % 1_000, 0, "{now}");
        assert!(
            now >= before && now <= wall_clock_ms() + 1_000,
            "{before} {now}"
        );
        // Marked open a minute ago: the slot a minute back.
        let before = wall_clock_ms() - 60_000;
        let placed = orders.slot_of_age(std::time::Duration::from_secs(60));
        let after = wall_clock_ms() - 60_000;
        assert!(
            (orders.slot_end(before)..=orders.slot_end(after)).contains(&placed),
            "{before} {placed} {after}"
        );
    }

    #[test]
    fn a_slot_is_swept_once_noted_and_a_late_note_never_goes_back() {
        let orders = Orders::in_memory();
        assert!(!orders.slot_swept(2_000), "nothing noted yet");
        orders.note_slot_swept(2_000);
        assert!(orders.slot_swept(2_000));
        assert!(!orders.slot_swept(1_000));
        assert!(!orders.slot_swept(3_000));
        // A placement that scheduled an older slot's sweep finishes last:
        // the newer slot stays noted.
        orders.note_slot_swept(1_000);
        assert!(orders.slot_swept(2_000));
        orders.note_slot_swept(3_000);
        assert!(orders.slot_swept(3_000));
        assert!(!orders.slot_swept(2_000));
    }

    #[test]
    fn users_are_known_once_remembered() {
        let orders = Orders::in_memory();
        let (ada, bob) = (UserId::new(), UserId::new());
        assert!(!orders.known_user(ada));
        orders.remember_user(ada);
        assert!(orders.known_user(ada));
        assert!(!orders.known_user(bob));
    }
}
