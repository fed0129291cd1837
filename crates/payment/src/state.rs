//! The payment module's state: the `payments` table, one payment per order,
//! and the source of simulated declines.

use std::sync::Mutex;

use messaging_core::contract::{Order, OrderId, Payment};
use messaging_core::store::{Storage, StoreError, Table};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::PaymentConfig;

/// How an order's payment ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Declined { reason: String },
}

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub payment: Payment,
    pub outcome: Outcome,
}

/// All payments, by order.
pub struct Payments {
    config: PaymentConfig,
    table: Table<PaymentRecord>,
    // A std mutex: never held across an await.
    rng: Mutex<StdRng>,
}

impl Payments {
    pub async fn open(
        client: &async_nats::Client,
        storage: Storage,
        config: PaymentConfig,
    ) -> Result<Self, StoreError> {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Ok(Self {
            config,
            table: Table::open(client, storage, "payments", None).await?,
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
        let key = record.payment.order_id.to_string();
        match self.table.create(&key, &record).await {
            Ok(_) => Ok(record),
            Err(StoreError::Exists(_)) => Ok(self
                .table
                .get(&key)
                .await?
                .map(|v| v.value)
                .unwrap_or(record)),
            Err(err) => Err(err),
        }
    }
}
