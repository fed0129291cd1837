//! The product module's state: the `products` table. Each product record
//! holds its stock on hand and the reservations (holds) of pending orders.
//!
//! Invariants, kept by writing each record with compare-and-set (so they
//! hold across concurrent handlers and across instances of the module):
//! * the holds never exceed the stock on hand, so `available = on_hand -
//!   held` never goes negative and concurrent orders never oversell;
//! * a hold is settled once: committing removes it and takes its quantity
//!   off the stock on hand, releasing only removes it. Settling an order with
//!   no hold changes nothing, which makes duplicated events harmless.

use std::collections::BTreeMap;

use contract::order::OrderId;
use contract::product::{Product, ProductId, Reservation};
use contract::values::{Name, Quantity};
use messaging_core::store::{Change, StoreError, Table};
use messaging_core::Setup;
use serde::{Deserialize, Serialize};

/// A product as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRecord {
    pub id: ProductId,
    pub name: Name,
    pub on_hand: u32,
    /// Quantity held for each pending order.
    pub holds: BTreeMap<OrderId, u32>,
}

impl ProductRecord {
    fn held(&self) -> u32 {
        self.holds.values().sum()
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

/// All products.
pub struct Catalogue {
    table: Table<ProductRecord>,
}

impl Catalogue {
    pub async fn open(setup: &Setup) -> Result<Self, StoreError> {
        Ok(Self {
            table: setup.table("products", None).await?,
        })
    }

    /// A catalogue in memory (for unit tests).
    pub fn in_memory() -> Self {
        Self {
            table: Table::in_memory(),
        }
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
            holds: BTreeMap::new(),
        };
        let stored = self.table.create_or_get(&id.to_string(), record).await?;
        Ok(stored.view())
    }

    pub async fn get(&self, id: ProductId) -> Result<Option<Product>, StoreError> {
        Ok(self
            .table
            .get(&id.to_string())
            .await?
            .map(|r| r.value.view()))
    }

    /// Holds `quantity` of `product_id` for `order_id`, if that much is available.
    pub async fn reserve(
        &self,
        order_id: OrderId,
        product_id: ProductId,
        quantity: Quantity,
    ) -> Result<Reservation, ReserveError> {
        let wanted = quantity.get();
        self.table
            .modify(&product_id.to_string(), |record| {
                let Some(record) = record else {
                    return Err(ReserveError::UnknownProduct);
                };
                match record.holds.get(&order_id) {
                    // A retried reserve for the same order gets the same answer.
                    Some(&held) if held == wanted => return Ok(Change::Keep(())),
                    Some(&held) => return Err(ReserveError::OrderAlreadyReserved(held)),
                    None => {}
                }
                let available = record.on_hand - record.held();
                if wanted > available {
                    return Err(ReserveError::InsufficientStock { available });
                }
                let mut next = record.clone();
                next.holds.insert(order_id, wanted);
                Ok(Change::Write(next, ()))
            })
            .await?;
        Ok(Reservation {
            order_id,
            product_id,
            quantity,
        })
    }

    /// Commits or releases the hold of `order_id` on `product_id`.
    pub async fn settle(
        &self,
        order_id: OrderId,
        product_id: ProductId,
        how: Settlement,
    ) -> Result<Option<Settled>, StoreError> {
        self.table
            .modify(&product_id.to_string(), |record| {
                let Some(record) = record else {
                    return Ok(Change::Keep(None));
                };
                let mut next = record.clone();
                let Some(quantity) = next.holds.remove(&order_id) else {
                    return Ok(Change::Keep(Some(Settled::AlreadyDone(record.view()))));
                };
                if how == Settlement::Commit {
                    next.on_hand -= quantity;
                }
                let product = next.view();
                Ok(Change::Write(next, Some(Settled::Applied(product))))
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
