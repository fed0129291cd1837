//! The order module's state: every order and its status.
//!
//! Status changes go through [`Orders::transition`], which enforces the
//! lifecycle of [`OrderStatus::can_become`] under the lock, so two concurrent
//! events can never both move the same order.

use std::collections::HashMap;
use std::sync::Mutex;

use messaging_core::contract::{Order, OrderId, OrderStatus};

/// All orders, by id.
#[derive(Debug, Default)]
pub struct Orders {
    // A std mutex: never held across an await.
    by_id: Mutex<HashMap<OrderId, Order>>,
}

/// The result of a legal transition request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The status changed; the order as it is now.
    Applied(Order),
    /// The order had already reached that status (or gone past it): nothing changed.
    AlreadyDone(Order),
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionError {
    UnknownOrder,
    Illegal { from: OrderStatus },
}

impl Orders {
    pub fn insert(&self, order: Order) {
        self.lock().insert(order.id, order);
    }

    pub fn get(&self, id: OrderId) -> Option<Order> {
        self.lock().get(&id).cloned()
    }

    /// Moves order `id` to `to` if the lifecycle allows it.
    pub fn transition(&self, id: OrderId, to: OrderStatus) -> Result<Transition, TransitionError> {
        let mut orders = self.lock();
        let order = orders.get_mut(&id).ok_or(TransitionError::UnknownOrder)?;
        let from = order.status;
        if already_reached(from, to) {
            return Ok(Transition::AlreadyDone(order.clone()));
        }
        if !from.can_become(to) {
            return Err(TransitionError::Illegal { from });
        }
        order.status = to;
        Ok(Transition::Applied(order.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrderId, Order>> {
        self.by_id.lock().expect("orders lock")
    }
}

/// Whether an order in `current` has already been through `target`.
fn already_reached(current: OrderStatus, target: OrderStatus) -> bool {
    current == target || (target == OrderStatus::Paid && current == OrderStatus::Fulfilled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use messaging_core::contract::{ProductId, Quantity, UserId};

    #[test]
    fn transitions_follow_the_lifecycle_and_repeat_harmlessly() {
        let orders = Orders::default();
        let order = Order {
            id: OrderId::new(),
            user_id: UserId::new(),
            product_id: ProductId::new(),
            quantity: Quantity::new(1).unwrap(),
            status: OrderStatus::Pending,
        };
        orders.insert(order.clone());
        assert!(
            matches!(orders.transition(order.id, OrderStatus::Paid), Ok(Transition::Applied(o)) if o.status == OrderStatus::Paid)
        );
        assert!(matches!(
            orders.transition(order.id, OrderStatus::Paid),
            Ok(Transition::AlreadyDone(_))
        ));
        assert_eq!(
            orders.transition(order.id, OrderStatus::Cancelled),
            Err(TransitionError::Illegal {
                from: OrderStatus::Paid
            })
        );
        assert!(matches!(
            orders.transition(order.id, OrderStatus::Fulfilled),
            Ok(Transition::Applied(_))
        ));
        assert!(matches!(
            orders.transition(order.id, OrderStatus::Paid),
            Ok(Transition::AlreadyDone(_))
        ));
        assert_eq!(
            orders.transition(OrderId::new(), OrderStatus::Paid),
            Err(TransitionError::UnknownOrder)
        );
    }
}
