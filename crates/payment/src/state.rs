//! The payment module's state: the `payments` table, one payment per order,
//! and the source of simulated declines.

use std::sync::Mutex;

use contract::order::{Order, OrderId};
use contract::payment::{Payment, PaymentId};
use messaging_core::store::{Change, StoreError, Table};
use messaging_core::Setup;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::PaymentConfig;

/// How an order's payment ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Declined {
        reason: String,
    },
    /// The order was cancelled before its payment was taken: never charge it.
    Voided,
    /// The order was cancelled after its payment was taken: given back.
    Refunded,
}

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub payment: Payment,
    pub outcome: Outcome,
}

/// The payment id of an order: the same for every attempt at paying it, so
/// a real gateway given it as its idempotency key charges once.
pub fn payment_id(order: OrderId) -> PaymentId {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x9a7e_0b1d_3c55_4f0e_8d2a_6b4c_1e9f_0a11);
    PaymentId(uuid::Uuid::new_v5(&NAMESPACE, order.0.as_bytes()))
}

/// All payments, by order.
pub struct Payments {
    config: PaymentConfig,
    table: Table<PaymentRecord>,
    // A std mutex: never held across an await.
    rng: Mutex<StdRng>,
}

impl Payments {
    pub async fn open(setup: &Setup, config: PaymentConfig) -> Result<Self, StoreError> {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Ok(Self {
            config,
            table: setup.table("payments", None).await?,
            rng: Mutex::new(rng),
        })
    }

    pub fn config(&self) -> &PaymentConfig {
        &self.config
    }

    /// The payment of an order, if it was taken.
    pub async fn get(&self, order_id: OrderId) -> Result<Option<PaymentRecord>, StoreError> {
        Ok(self
            .table
            .get(&order_id.to_string())
            .await?
            .map(|v| v.value))
    }

    /// Decides the payment of `order`: declined if over the card limit, or
    /// by chance.
    pub fn decide(&self, order: &Order) -> Outcome {
        if order.quantity.get() > self.config.limit {
            return Outcome::Declined {
                reason: format!(
                    "amount over the card limit: {} items, limit {}",
                    order.quantity, self.config.limit
                ),
            };
        }
        let draw: f64 = self.rng.lock().expect("rng lock").gen();
        if draw < self.config.failure_rate {
            return Outcome::Declined {
                reason: "card declined by the issuer".to_owned(),
            };
        }
        Outcome::Succeeded
    }

    /// Records the payment of an order; the first record wins, so an order is
    /// charged once however many times its event arrives. Returns the record
    /// that is stored.
    pub async fn record(&self, record: PaymentRecord) -> Result<PaymentRecord, StoreError> {
        self.table
            .create_or_get(&record.payment.order_id.to_string(), record)
            .await
    }

    /// The order was cancelled: a payment already taken is refunded (the
    /// refunded record is returned), one still to come is voided (`None`).
    pub async fn cancel(&self, payment: Payment) -> Result<Option<PaymentRecord>, StoreError> {
        let key = payment.order_id.to_string();
        self.table
            .modify(&key, |current| {
                Ok::<_, StoreError>(match current {
                    None => Change::Write(
                        PaymentRecord {
                            payment: payment.clone(),
                            outcome: Outcome::Voided,
                        },
                        None,
                    ),
                    Some(record) if record.outcome == Outcome::Succeeded => {
                        let refunded = PaymentRecord {
                            outcome: Outcome::Refunded,
                            ..record.clone()
                        };
                        Change::Write(refunded.clone(), Some(refunded))
                    }
                    // Refunded before: announce it again (same fact).
                    Some(record) if record.outcome == Outcome::Refunded => {
                        Change::Keep(Some(record.clone()))
                    }
                    // Declined or voided: nothing was taken.
                    Some(_) => Change::Keep(None),
                })
            })
            .await
    }
}
