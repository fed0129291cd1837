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
    /// How long an order waits for its payment (the order module's
    /// deadline): a payment handled later than that is never taken.
    payment_timeout: std::time::Duration,
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
            payment_timeout: setup.options().deadline,
        })
    }

    /// How long an order waits for its payment before it fails.
    pub fn payment_timeout(&self) -> std::time::Duration {
        self.payment_timeout
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use contract::order::OrderStatus;
    use contract::product::ProductId;
    use contract::user::UserId;
    use contract::values::Quantity;

    use super::*;

    /// Payments kept in memory, declines drawn from `config.seed` (or 0).
    fn payments(config: PaymentConfig) -> Payments {
        let rng = StdRng::seed_from_u64(config.seed.unwrap_or(0));
        Payments {
            config,
            table: Table::in_memory(),
            rng: Mutex::new(rng),
            payment_timeout: messaging_core::DEFAULT_DEADLINE,
        }
    }

    fn never_declines() -> PaymentConfig {
        PaymentConfig {
            delay: Duration::ZERO,
            failure_rate: 0.0,
            seed: Some(7),
            limit: 5,
        }
    }

    fn order(quantity: u32) -> Order {
        Order {
            id: OrderId::new(),
            user_id: UserId::new(),
            product_id: ProductId::new(),
            quantity: Quantity::new(quantity).unwrap(),
            status: OrderStatus::Pending,
        }
    }

    fn payment_of(order: &Order) -> Payment {
        Payment {
            id: payment_id(order.id),
            order_id: order.id,
        }
    }

    async fn stored(payments: &Payments, order: &Order) -> Option<Outcome> {
        payments.get(order.id).await.unwrap().map(|r| r.outcome)
    }

    #[tokio::test]
    async fn a_cancel_after_the_payment_refunds_it_exactly_once() {
        let payments = payments(never_declines());
        let order = order(1);
        let taken = payments
            .record(PaymentRecord {
                payment: payment_of(&order),
                outcome: Outcome::Succeeded,
            })
            .await
            .unwrap();
        assert_eq!(taken.outcome, Outcome::Succeeded);

        let refunded = PaymentRecord {
            payment: payment_of(&order),
            outcome: Outcome::Refunded,
        };
        assert_eq!(
            payments.cancel(payment_of(&order)).await.unwrap(),
            Some(refunded.clone()),
            "a payment taken is given back"
        );
        assert_eq!(stored(&payments, &order).await, Some(Outcome::Refunded));

        // The cancellation delivered again: the same refund is announced
        // again (same fact, so the stream keeps one), nothing new is given.
        assert_eq!(
            payments.cancel(payment_of(&order)).await.unwrap(),
            Some(refunded.clone())
        );
        assert_eq!(stored(&payments, &order).await, Some(Outcome::Refunded));

        // The payment's own event delivered again: not charged a second time.
        let late = payments
            .record(PaymentRecord {
                payment: payment_of(&order),
                outcome: Outcome::Succeeded,
            })
            .await
            .unwrap();
        assert_eq!(late, refunded);
    }

    #[tokio::test]
    async fn a_cancel_before_the_payment_voids_it() {
        let payments = payments(never_declines());
        let order = order(1);
        assert_eq!(
            payments.cancel(payment_of(&order)).await.unwrap(),
            None,
            "nothing was taken, nothing to refund"
        );
        assert_eq!(stored(&payments, &order).await, Some(Outcome::Voided));

        // The payment arriving after the cancellation is never taken...
        let late = payments
            .record(PaymentRecord {
                payment: payment_of(&order),
                outcome: Outcome::Succeeded,
            })
            .await
            .unwrap();
        assert_eq!(late.outcome, Outcome::Voided);
        // ...and a repeated cancellation refunds nothing.
        assert_eq!(payments.cancel(payment_of(&order)).await.unwrap(), None);
        assert_eq!(stored(&payments, &order).await, Some(Outcome::Voided));
    }

    #[tokio::test]
    async fn a_cancel_after_a_decline_refunds_nothing() {
        let payments = payments(never_declines());
        let order = order(1);
        let declined = Outcome::Declined {
            reason: "no".to_owned(),
        };
        payments
            .record(PaymentRecord {
                payment: payment_of(&order),
                outcome: declined.clone(),
            })
            .await
            .unwrap();
        assert_eq!(payments.cancel(payment_of(&order)).await.unwrap(), None);
        assert_eq!(stored(&payments, &order).await, Some(declined));
    }

    #[tokio::test]
    async fn the_card_limit_itself_is_allowed_one_more_is_declined() {
        let payments = payments(never_declines());
        assert_eq!(payments.decide(&order(5)), Outcome::Succeeded);
        assert_eq!(payments.decide(&order(1)), Outcome::Succeeded);
        match payments.decide(&order(6)) {
            Outcome::Declined { reason } => {
                assert!(reason.contains("6 items, limit 5"), "{reason}")
            }
            other => panic!("6 items over a limit of 5: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_draw_equal_to_the_failure_rate_goes_through() {
        // Declined when the draw is below the rate: with the rate set to
        // exactly the draw the seed gives, the payment goes through; with
        // the next larger rate, it is declined.
        let seed = 11;
        let draw: f64 = StdRng::seed_from_u64(seed).gen();
        let with_rate = |failure_rate| {
            payments(PaymentConfig {
                failure_rate,
                seed: Some(seed),
                ..never_declines()
            })
        };
        assert_eq!(with_rate(draw).decide(&order(1)), Outcome::Succeeded);
        let just_above = f64::from_bits(draw.to_bits() + 1);
        assert!(matches!(
            with_rate(just_above).decide(&order(1)),
            Outcome::Declined { .. }
        ));
    }

    #[test]
    fn an_order_has_one_payment_id_whoever_takes_it() {
        let (a, b) = (OrderId::new(), OrderId::new());
        assert_eq!(payment_id(a), payment_id(a));
        assert_ne!(payment_id(a), payment_id(b));
        assert_ne!(payment_id(a).0, uuid::Uuid::nil());
    }

    #[tokio::test]
    async fn a_payment_is_read_back_as_recorded() {
        let config = PaymentConfig {
            delay: Duration::from_millis(3),
            ..never_declines()
        };
        let payments = payments(config.clone());
        assert_eq!(payments.config(), &config);
        let order = order(1);
        assert_eq!(payments.get(order.id).await.unwrap(), None);
        let record = PaymentRecord {
            payment: payment_of(&order),
            outcome: Outcome::Succeeded,
        };
        payments.record(record.clone()).await.unwrap();
        assert_eq!(payments.get(order.id).await.unwrap(), Some(record));
        assert_eq!(payments.get(OrderId::new()).await.unwrap(), None);
    }
}
