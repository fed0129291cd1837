//! The payment module's state: one payment per order, and the source of
//! simulated declines.

use std::collections::HashMap;
use std::sync::Mutex;

use messaging_core::contract::{Order, OrderId, Payment, PaymentId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::PaymentConfig;

/// What happened to an order's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Being processed.
    InProgress,
    Succeeded,
    Declined(String),
}

/// All payments, by order.
#[derive(Debug)]
pub struct Payments {
    config: PaymentConfig,
    // Std mutexes: never held across an await.
    by_order: Mutex<HashMap<OrderId, (Payment, Outcome)>>,
    rng: Mutex<StdRng>,
}

impl Payments {
    pub fn new(config: PaymentConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self {
            config,
            by_order: Mutex::new(HashMap::new()),
            rng: Mutex::new(rng),
        }
    }

    pub fn config(&self) -> &PaymentConfig {
        &self.config
    }

    /// Claims the payment of `order_id`; `None` if it was claimed before
    /// (a duplicated event), so each order is charged once.
    pub fn claim(&self, order_id: OrderId) -> Option<Payment> {
        let mut payments = self.by_order.lock().expect("payments lock");
        if payments.contains_key(&order_id) {
            return None;
        }
        let payment = Payment {
            id: PaymentId::new(),
            order_id,
        };
        payments.insert(order_id, (payment.clone(), Outcome::InProgress));
        Some(payment)
    }

    /// Decides the payment of `order`: `Err(reason)` if declined.
    pub fn decide(&self, order: &Order) -> Result<(), String> {
        if order.quantity.get() > self.config.limit {
            return Err(format!(
                "amount over the card limit: {} items, limit {}",
                order.quantity, self.config.limit
            ));
        }
        let draw: f64 = self.rng.lock().expect("rng lock").gen();
        if draw < self.config.failure_rate {
            return Err("card declined by the issuer".to_owned());
        }
        Ok(())
    }

    /// Records the outcome of a claimed payment.
    pub fn record(&self, order_id: OrderId, outcome: Outcome) {
        if let Some(entry) = self
            .by_order
            .lock()
            .expect("payments lock")
            .get_mut(&order_id)
        {
            entry.1 = outcome;
        }
    }

    /// The payment of an order and its outcome, if any.
    pub fn get(&self, order_id: OrderId) -> Option<(Payment, Outcome)> {
        self.by_order
            .lock()
            .expect("payments lock")
            .get(&order_id)
            .cloned()
    }
}
