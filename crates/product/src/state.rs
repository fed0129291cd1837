//! The product module's state: stock on hand, and the reservations held
//! against it.
//!
//! Invariants, kept under one lock so that every check-and-change is atomic:
//! * `reserved <= on_hand` for every product, so `available = on_hand - reserved`
//!   never goes negative and concurrent orders never oversell;
//! * a reservation is settled once: `held -> committed` (on_hand and reserved
//!   both drop) or `held -> released` (reserved drops); settling it again is a
//!   no-op, which makes duplicated events harmless.

use std::collections::HashMap;
use std::sync::Mutex;

use messaging_core::contract::{Name, OrderId, Product, ProductId, Quantity, Reservation};

#[derive(Debug)]
struct Stock {
    name: Name,
    on_hand: u32,
    reserved: u32,
}

/// What became of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    Held,
    Committed,
    Released,
}

#[derive(Debug)]
struct Held {
    product_id: ProductId,
    quantity: Quantity,
    state: ReservationState,
}

#[derive(Debug, Default)]
struct Inner {
    products: HashMap<ProductId, Stock>,
    reservations: HashMap<OrderId, Held>,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveError {
    UnknownProduct,
    InsufficientStock {
        available: u32,
    },
    /// The order already reserved something else (another product or quantity).
    OrderAlreadyReserved,
}

/// Why a reservation could not be committed or released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleError {
    NoReservation,
    /// Committing a released reservation, or releasing a committed one.
    AlreadySettled(ReservationState),
}

/// The outcome of settling a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The stock changed; the product's new state.
    Applied(Product),
    /// It had already been settled the same way: nothing changed.
    AlreadyDone,
}

/// All products and reservations.
#[derive(Debug, Default)]
pub struct Catalogue {
    // A std mutex: never held across an await, and each operation is short.
    inner: Mutex<Inner>,
}

impl Catalogue {
    pub fn create(&self, name: Name, stock: Quantity) -> Product {
        let id = ProductId::new();
        let stock = Stock {
            name,
            on_hand: stock.get(),
            reserved: 0,
        };
        let product = view(id, &stock);
        self.lock().products.insert(id, stock);
        product
    }

    pub fn get(&self, id: ProductId) -> Option<Product> {
        self.lock().products.get(&id).map(|stock| view(id, stock))
    }

    /// Holds `quantity` of `product_id` for `order_id`, if that much is available.
    pub fn reserve(
        &self,
        order_id: OrderId,
        product_id: ProductId,
        quantity: Quantity,
    ) -> Result<Reservation, ReserveError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let reservation = Reservation {
            order_id,
            product_id,
            quantity,
        };
        if let Some(existing) = inner.reservations.get(&order_id) {
            // A retried reserve for the same order gets the same answer.
            return if existing.product_id == product_id && existing.quantity == quantity {
                Ok(reservation)
            } else {
                Err(ReserveError::OrderAlreadyReserved)
            };
        }
        let stock = inner
            .products
            .get_mut(&product_id)
            .ok_or(ReserveError::UnknownProduct)?;
        let available = stock.on_hand - stock.reserved;
        if quantity.get() > available {
            return Err(ReserveError::InsufficientStock { available });
        }
        stock.reserved += quantity.get();
        inner.reservations.insert(
            order_id,
            Held {
                product_id,
                quantity,
                state: ReservationState::Held,
            },
        );
        Ok(reservation)
    }

    /// The order was paid: its reserved items leave the stock on hand.
    pub fn commit(&self, order_id: OrderId) -> Result<Settled, SettleError> {
        self.settle(order_id, ReservationState::Committed)
    }

    /// The order will not be paid: its reserved items are available again.
    pub fn release(&self, order_id: OrderId) -> Result<Settled, SettleError> {
        self.settle(order_id, ReservationState::Released)
    }

    fn settle(&self, order_id: OrderId, to: ReservationState) -> Result<Settled, SettleError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let held = inner
            .reservations
            .get_mut(&order_id)
            .ok_or(SettleError::NoReservation)?;
        match held.state {
            ReservationState::Held => {}
            state if state == to => return Ok(Settled::AlreadyDone),
            state => return Err(SettleError::AlreadySettled(state)),
        }
        let stock = inner
            .products
            .get_mut(&held.product_id)
            .expect("a reservation always refers to an existing product");
        let quantity = held.quantity.get();
        stock.reserved -= quantity;
        if to == ReservationState::Committed {
            stock.on_hand -= quantity;
        }
        held.state = to;
        Ok(Settled::Applied(view(held.product_id, stock)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("catalogue lock")
    }
}

fn view(id: ProductId, stock: &Stock) -> Product {
    Product {
        id,
        name: stock.name.clone(),
        stock: stock.on_hand,
        available: stock.on_hand - stock.reserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: u32) -> Quantity {
        Quantity::new(n).unwrap()
    }

    #[test]
    fn reservations_never_exceed_stock_and_settle_once() {
        let catalogue = Catalogue::default();
        let product = catalogue.create(Name::parse("Widget").unwrap(), q(5));
        let (a, b) = (OrderId::new(), OrderId::new());
        catalogue.reserve(a, product.id, q(3)).unwrap();
        assert_eq!(
            catalogue.reserve(b, product.id, q(3)),
            Err(ReserveError::InsufficientStock { available: 2 })
        );
        catalogue.reserve(b, product.id, q(2)).unwrap();
        assert_eq!(catalogue.get(product.id).unwrap().available, 0);

        assert!(
            matches!(catalogue.commit(a), Ok(Settled::Applied(p)) if p.stock == 2 && p.available == 0)
        );
        assert_eq!(catalogue.commit(a), Ok(Settled::AlreadyDone));
        assert_eq!(
            catalogue.release(a),
            Err(SettleError::AlreadySettled(ReservationState::Committed))
        );
        assert!(
            matches!(catalogue.release(b), Ok(Settled::Applied(p)) if p.stock == 2 && p.available == 2)
        );
        assert_eq!(
            catalogue.release(OrderId::new()),
            Err(SettleError::NoReservation)
        );
    }
}
