//! The product module's state: the `products` table. It holds two kinds of
//! entries: each product (its stock on hand and how much of it is held),
//! and each hold (one key per order and product, `<product>.<order>`), so
//! a product with 100,000 pending holds is still one small record.
//!
//! Invariants, kept by writing the product and its hold **together**, in
//! one atomic batch with a compare-and-set on each ([`Table::modify_keys`]),
//! so that they hold across concurrent handlers, across instances of the
//! module, and whatever dies when:
//! * `held` is the sum of the holds that are still `held`, and never
//!   exceeds the stock on hand: `available = on_hand - held` never goes
//!   negative and concurrent orders never oversell;
//! * a hold is settled once: committing takes its quantity off the stock on
//!   hand, releasing gives it back; either way the hold stays, settled, so
//!   a duplicated event finds it settled and changes nothing.

use std::collections::BTreeMap;

use contract::order::OrderId;
use contract::product::{Product, ProductId, Reservation};
use contract::values::{Name, Quantity};
use messaging_core::store::{Changes, StoreError, Table};
use messaging_core::Setup;
use serde::{Deserialize, Serialize};

/// A product as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRecord {
    pub id: ProductId,
    pub name: Name,
    pub on_hand: u32,
    /// The quantity of its holds still `held`.
    #[serde(default)]
    pub held: u32,
    /// Holds as earlier versions kept them, inside the record: still
    /// counted and settled, never added to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holds: BTreeMap<OrderId, u32>,
}

impl ProductRecord {
    fn held(&self) -> u32 {
        self.held + self.holds.values().sum::<u32>()
    }

    /// The product as the contract shows it.
    pub fn view(&self) -> Product {
        Product {
            id: self.id,
            name: self.name.clone(),
            stock: self.on_hand,
            available: self.on_hand - self.held(),
        }
    }
}

/// Where a hold is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// Counted in the product's `held`.
    Held,
    /// Its order was paid: the quantity left the stock on hand.
    Committed,
    /// Its order will not be paid (or never existed): available again.
    Released,
}

/// One order's hold on one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub quantity: u32,
    pub state: HoldState,
}

/// An entry of the `products` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Entry {
    Product(ProductRecord),
    Hold(HoldRecord),
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error("unknown product")]
    UnknownProduct,
    #[error("{available} available")]
    InsufficientStock { available: u32 },
    /// The order already holds a different quantity.
    #[error("the order already holds {0}")]
    OrderAlreadyReserved(u32),
    /// The order's hold was committed or released already.
    #[error("the order's hold is already {0:?}")]
    AlreadySettled(HoldState),
    #[error(transparent)]
    Store(#[from] StoreErrorText),
}

/// A store failure, kept as text so that errors stay comparable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreErrorText(pub String);

impl From<StoreError> for ReserveError {
    fn from(err: StoreError) -> Self {
        ReserveError::Store(StoreErrorText(err.to_string()))
    }
}

/// How a reservation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The order was paid: its held items leave the stock on hand.
    Commit,
    /// The order will not be paid: its held items are available again.
    Release,
}

/// The outcome of settling an order's reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The stock changed; the product as it is now.
    Applied(Product),
    /// The order held nothing (already settled): nothing changed.
    AlreadyDone(Product),
}

/// All products and their holds.
pub struct Catalogue {
    table: Table<Entry>,
    /// How long a hold may wait for its order to be stored.
    hold_timeout: std::time::Duration,
}

/// The key of the hold of `order` on `product`.
fn hold_key(product: ProductId, order: OrderId) -> String {
    format!("{product}.{order}")
}

/// The entries read for `product` and one of its holds, as typed.
fn product_and_hold<'a>(
    entries: &[Option<&'a Entry>],
) -> Result<(Option<&'a ProductRecord>, Option<&'a HoldRecord>), StoreError> {
    let product = match entries[0] {
        None => None,
        Some(Entry::Product(product)) => Some(product),
        Some(Entry::Hold(_)) => return Err(misplaced("a hold where a product belongs")),
    };
    let hold = match entries[1] {
        None => None,
        Some(Entry::Hold(hold)) => Some(hold),
        Some(Entry::Product(_)) => return Err(misplaced("a product where a hold belongs")),
    };
    Ok((product, hold))
}

fn misplaced(what: &str) -> StoreError {
    StoreError::Unavailable(format!("the products table holds {what}"))
}

impl Catalogue {
    pub async fn open(setup: &Setup) -> Result<Self, StoreError> {
        Ok(Self {
            table: setup.table("products", None).await?,
            hold_timeout: setup.options().deadline,
        })
    }

    /// A catalogue in memory (for unit tests).
    pub fn in_memory() -> Self {
        Self {
            table: Table::in_memory(),
            hold_timeout: messaging_core::DEFAULT_DEADLINE,
        }
    }

    /// How long a hold may wait for its order before it is looked at.
    pub fn hold_timeout(&self) -> std::time::Duration {
        self.hold_timeout
    }

    /// Stores a new product; if `id` exists (a retried request), returns it.
    pub async fn create(
        &self,
        id: ProductId,
        name: Name,
        stock: Quantity,
    ) -> Result<Product, StoreError> {
        let record = ProductRecord {
            id,
            name,
            on_hand: stock.get(),
            held: 0,
            holds: BTreeMap::new(),
        };
        match self
            .table
            .create_or_get(&id.to_string(), Entry::Product(record))
            .await?
        {
            Entry::Product(stored) => Ok(stored.view()),
            Entry::Hold(_) => Err(misplaced("a hold where a product belongs")),
        }
    }

    pub async fn get(&self, id: ProductId) -> Result<Option<Product>, StoreError> {
        match self.table.get(&id.to_string()).await?.map(|v| v.value) {
            None => Ok(None),
            Some(Entry::Product(record)) => Ok(Some(record.view())),
            Some(Entry::Hold(_)) => Err(misplaced("a hold where a product belongs")),
        }
    }

    /// The hold of `order_id` on `product_id`, if there is one.
    pub async fn hold(
        &self,
        order_id: OrderId,
        product_id: ProductId,
    ) -> Result<Option<HoldRecord>, StoreError> {
        match self.table.get(&hold_key(product_id, order_id)).await? {
            None => Ok(None),
            Some(versioned) => match versioned.value {
                Entry::Hold(hold) => Ok(Some(hold)),
                Entry::Product(_) => Err(misplaced("a product where a hold belongs")),
            },
        }
    }

    /// Holds `quantity` of `product_id` for `order_id`, if that much is
    /// available: the product's `held` and the new hold, in one write.
    pub async fn reserve(
        &self,
        order_id: OrderId,
        product_id: ProductId,
        quantity: Quantity,
    ) -> Result<Reservation, ReserveError> {
        let wanted = quantity.get();
        let keys = [product_id.to_string(), hold_key(product_id, order_id)];
        let keys = [keys[0].as_str(), keys[1].as_str()];
        self.table
            .modify_keys(&keys, |entries| {
                let (Some(record), hold) = product_and_hold(entries)? else {
                    return Err(ReserveError::UnknownProduct);
                };
                let legacy = record.holds.get(&order_id).copied();
                match (hold, legacy) {
                    // A retried reserve for the same order gets the same answer.
                    (
                        Some(HoldRecord {
                            quantity,
                            state: HoldState::Held,
                        }),
                        _,
                    ) if *quantity == wanted => return Ok(Changes::Keep(())),
                    (None, Some(held)) if held == wanted => return Ok(Changes::Keep(())),
                    (
                        Some(HoldRecord {
                            quantity,
                            state: HoldState::Held,
                        }),
                        _,
                    ) => return Err(ReserveError::OrderAlreadyReserved(*quantity)),
                    (Some(hold), _) => return Err(ReserveError::AlreadySettled(hold.state)),
                    (None, Some(held)) => return Err(ReserveError::OrderAlreadyReserved(held)),
                    (None, None) => {}
                }
                let available = record.on_hand - record.held();
                if wanted > available {
                    return Err(ReserveError::InsufficientStock { available });
                }
                let mut next = record.clone();
                next.held += wanted;
                let hold = HoldRecord {
                    quantity: wanted,
                    state: HoldState::Held,
                };
                Ok(Changes::Write(
                    vec![(0, Entry::Product(next)), (1, Entry::Hold(hold))],
                    (),
                ))
            })
            .await?;
        Ok(Reservation {
            order_id,
            product_id,
            quantity,
        })
    }

    /// Commits or releases the hold of `order_id` on `product_id`: the
    /// product's counts and the hold's state, in one write.
    pub async fn settle(
        &self,
        order_id: OrderId,
        product_id: ProductId,
        how: Settlement,
    ) -> Result<Option<Settled>, StoreError> {
        let keys = [product_id.to_string(), hold_key(product_id, order_id)];
        let keys = [keys[0].as_str(), keys[1].as_str()];
        self.table
            .modify_keys(&keys, |entries| {
                let (Some(record), hold) = product_and_hold(entries)? else {
                    return Ok(Changes::Keep(None));
                };
                let mut next = record.clone();
                let mut writes = Vec::new();
                match hold {
                    Some(hold) if hold.state == HoldState::Held => {
                        next.held -= hold.quantity;
                        if how == Settlement::Commit {
                            next.on_hand -= hold.quantity;
                        }
                        let state = match how {
                            Settlement::Commit => HoldState::Committed,
                            Settlement::Release => HoldState::Released,
                        };
                        let settled = HoldRecord {
                            quantity: hold.quantity,
                            state,
                        };
                        writes.push((1, Entry::Hold(settled)));
                    }
                    Some(_) => return Ok(Changes::Keep(Some(Settled::AlreadyDone(record.view())))),
                    None => match next.holds.remove(&order_id) {
                        Some(quantity) if how == Settlement::Commit => next.on_hand -= quantity,
                        Some(_) => {}
                        None => {
                            return Ok(Changes::Keep(Some(Settled::AlreadyDone(record.view()))))
                        }
                    },
                }
                let product = next.view();
                writes.insert(0, (0, Entry::Product(next)));
                Ok(Changes::Write(writes, Some(Settled::Applied(product))))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: u32) -> Quantity {
        Quantity::new(n).unwrap()
    }

    #[tokio::test]
    async fn reservations_never_exceed_stock_and_settle_once() {
        let catalogue = Catalogue::in_memory();
        let product = catalogue
            .create(ProductId::new(), Name::parse("Widget").unwrap(), q(5))
            .await
            .unwrap();
        let (a, b) = (OrderId::new(), OrderId::new());
        catalogue.reserve(a, product.id, q(3)).await.unwrap();
        assert_eq!(
            catalogue.reserve(b, product.id, q(3)).await,
            Err(ReserveError::InsufficientStock { available: 2 })
        );
        catalogue.reserve(b, product.id, q(2)).await.unwrap();
        catalogue.reserve(b, product.id, q(2)).await.unwrap();
        assert_eq!(
            catalogue.get(product.id).await.unwrap().unwrap().available,
            0
        );

        let commit = catalogue
            .settle(a, product.id, Settlement::Commit)
            .await
            .unwrap();
        assert!(matches!(commit, Some(Settled::Applied(p)) if p.stock == 2 && p.available == 0));
        let again = catalogue
            .settle(a, product.id, Settlement::Commit)
            .await
            .unwrap();
        assert!(matches!(again, Some(Settled::AlreadyDone(p)) if p.stock == 2));
        let release = catalogue
            .settle(b, product.id, Settlement::Release)
            .await
            .unwrap();
        assert!(matches!(release, Some(Settled::Applied(p)) if p.stock == 2 && p.available == 2));
        assert_eq!(
            catalogue
                .settle(a, ProductId::new(), Settlement::Release)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_reserve_for_the_same_order_with_another_quantity_is_refused() {
        let catalogue = Catalogue::in_memory();
        let product = catalogue
            .create(ProductId::new(), Name::parse("Widget").unwrap(), q(10))
            .await
            .unwrap();
        let order = OrderId::new();
        catalogue.reserve(order, product.id, q(3)).await.unwrap();

        // More and fewer than held: both refused, naming what is held, and
        // the hold stays as it was.
        for other in [4, 2] {
            assert_eq!(
                catalogue.reserve(order, product.id, q(other)).await,
                Err(ReserveError::OrderAlreadyReserved(3)),
                "a reserve of {other} for an order holding 3"
            );
        }
        // The same quantity again is the retry: the same answer, held once.
        let again = catalogue.reserve(order, product.id, q(3)).await.unwrap();
        assert_eq!(again.quantity, q(3));
        let now = catalogue.get(product.id).await.unwrap().unwrap();
        assert_eq!((now.stock, now.available), (10, 7));
    }
}
