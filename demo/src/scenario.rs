//! The story the demo tells, one log line per step.
//!
//! The seed's happy path (user "John Doe", product "Widget" with 100 in stock,
//! an order of 10, its payment, stock 90), then the ways an order does not
//! go through: a payment declined and compensated (its reservation released),
//! and an order refused for insufficient stock. Run with a payment timeout
//! shorter than the payment delay (`--payment-timeout 500ms`), or without
//! the payment module (`--modules user,product,order --payment-timeout 2s`),
//! and the orders are not paid in time instead: they fail at their deadline
//! (`payment_timeout`) and their reservations are released.
//!
//! Every wait is on the event that proves the step happened, with a deadline.

use std::time::Duration;

use anyhow::{bail, Context as _};
use contract::order::{Order, OrderFailed, OrderFulfilled, OrderId, PlaceOrder};
use contract::payment::{PaymentFailed, PaymentSucceeded};
use contract::product::{CreateProduct, Product, StockChange, StockUpdated};
use contract::user::{CreateUser, User};
use contract::values::{Name, Quantity};
use messaging_core::{Bus, EventStream};

/// Slack on top of the payment delay for any awaited event.
const EVENT_SLACK: Duration = Duration::from_secs(10);

/// What the scenario saw, for callers that check it.
#[derive(Debug)]
pub struct Outcome {
    pub user: User,
    pub product: Product,
    /// The first order, and whether its payment went through.
    pub order: Order,
    pub paid: bool,
    /// The product as the last stock event reported it.
    pub final_product: Product,
}

/// Watches the events the scenario waits for. Created before the first
/// request, so no event can slip by unseen.
struct Watch {
    paid: EventStream<PaymentSucceeded>,
    declined: EventStream<PaymentFailed>,
    stock: EventStream<StockUpdated>,
    fulfilled: EventStream<OrderFulfilled>,
    failed: EventStream<OrderFailed>,
    deadline: Duration,
}

/// How an order's payment ended.
enum Payment {
    Succeeded(PaymentSucceeded),
    Declined(PaymentFailed),
    /// None came before the order's deadline: the order failed.
    TimedOut(OrderFailed),
}

impl Watch {
    async fn new(
        bus: &Bus,
        payment_delay: Duration,
        payment_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            paid: bus.watch().await?,
            declined: bus.watch().await?,
            stock: bus.watch().await?,
            fulfilled: bus.watch().await?,
            failed: bus.watch().await?,
            deadline: payment_delay.min(payment_timeout) + EVENT_SLACK,
        })
    }

    async fn payment(&mut self, order: OrderId) -> anyhow::Result<Payment> {
        let deadline = self.deadline;
        // Biased: a declined payment also fails its order; the payment's
        // own event, when it is there, tells the story better.
        tokio::select! {
            biased;
            paid = self.paid.next_matching(deadline, |e| e.event.payment.order_id == order) => {
                Ok(Payment::Succeeded(paid?.event))
            }
            declined = self.declined.next_matching(deadline, |e| e.event.payment.order_id == order) => {
                Ok(Payment::Declined(declined?.event))
            }
            failed = self.failed.next_matching(deadline, |e| e.event.order.id == order) => {
                Ok(Payment::TimedOut(failed?.event))
            }
        }
    }

    async fn stock(&mut self, order: OrderId, change: StockChange) -> anyhow::Result<StockUpdated> {
        let event = self
            .stock
            .next_matching(self.deadline, |e| {
                e.event.order_id == order && e.event.change == change
            })
            .await?;
        Ok(event.event)
    }
}

/// Runs the whole story against the modules on `bus`.
pub async fn run(
    bus: &Bus,
    payment_delay: Duration,
    payment_timeout: Duration,
) -> anyhow::Result<Outcome> {
    let mut watch = Watch::new(bus, payment_delay, payment_timeout).await?;

    let user = bus
        .request(&CreateUser {
            name: Name::parse("John Doe").expect("valid name"),
        })
        .await
        .context("user.create")?;
    tracing::info!(id = %user.id, name = %user.name, "user created");

    let product = bus
        .request(&CreateProduct {
            name: Name::parse("Widget").expect("valid name"),
            stock: quantity(100),
        })
        .await
        .context("product.create")?;
    tracing::info!(id = %product.id, name = %product.name, stock = product.stock, "product added");

    // The seed's order: 10 widgets.
    let order = place(bus, &user, &product, 10).await?;
    let (paid, final_product) = match watch.payment(order.id).await? {
        Payment::Succeeded(event) => {
            tracing::info!(id = %event.payment.id, order_id = %order.id, "payment successful");
            let stock = watch.stock(order.id, StockChange::Committed).await?;
            tracing::info!(
                id = %stock.product.id, name = %stock.product.name,
                stock = stock.product.stock, available = stock.product.available,
                "product stock updated"
            );
            let done = watch
                .fulfilled
                .next_matching(watch.deadline, |e| e.event.order.id == order.id)
                .await?;
            tracing::info!(id = %done.event.order.id, status = %done.event.order.status, "order fulfilled");
            (true, stock.product)
        }
        Payment::Declined(event) => {
            let product = compensated(&mut watch, order.id, &event).await?;
            (false, product)
        }
        Payment::TimedOut(failed) => (false, timed_out(&mut watch, &failed).await?),
    };

    // A payment over the card limit is declined; the saga compensates.
    let big = place(bus, &user, &product, 60.min(final_product.available.max(1))).await;
    let final_product = match big {
        Ok(order) => match watch.payment(order.id).await? {
            Payment::Declined(event) => compensated(&mut watch, order.id, &event).await?,
            Payment::Succeeded(event) => {
                tracing::info!(id = %event.payment.id, order_id = %order.id, "payment successful");
                watch.stock(order.id, StockChange::Committed).await?.product
            }
            Payment::TimedOut(failed) => timed_out(&mut watch, &failed).await?,
        },
        Err(err) => {
            tracing::info!(%err, "order refused");
            final_product
        }
    };

    // More than there is: refused by the owner of the stock, nothing kept.
    match place(bus, &user, &product, 1_000).await {
        Ok(order) => bail!("order {} for 1000 widgets was accepted", order.id),
        Err(err) => tracing::info!(%err, "order refused"),
    }

    Ok(Outcome {
        user,
        product,
        order,
        paid,
        final_product,
    })
}

async fn place(bus: &Bus, user: &User, product: &Product, count: u32) -> anyhow::Result<Order> {
    let order = bus
        .request(&PlaceOrder {
            user_id: user.id,
            product_id: product.id,
            quantity: quantity(count),
        })
        .await?;
    tracing::info!(
        id = %order.id, user_id = %order.user_id, product_id = %order.product_id,
        quantity = %order.quantity, status = %order.status,
        "order placed"
    );
    Ok(order)
}

/// Logs an order that failed without a payment event (its payment did not
/// come in time), and waits for its compensation.
async fn timed_out(watch: &mut Watch, failed: &OrderFailed) -> anyhow::Result<Product> {
    let order = failed.order.id;
    tracing::info!(id = %order, status = %failed.order.status, reason = %failed.reason, "order failed");
    released(watch, order).await
}

/// Waits for the release of `order`'s reservation, and logs it.
async fn released(watch: &mut Watch, order: OrderId) -> anyhow::Result<Product> {
    let released = watch.stock(order, StockChange::Released).await?;
    tracing::info!(
        id = %released.product.id, stock = released.product.stock,
        available = released.product.available,
        "reservation released"
    );
    Ok(released.product)
}

/// Logs a declined payment and waits for its compensation.
async fn compensated(
    watch: &mut Watch,
    order: OrderId,
    declined: &PaymentFailed,
) -> anyhow::Result<Product> {
    tracing::info!(id = %declined.payment.id, order_id = %order, reason = %declined.reason, "payment declined");
    let failed = watch
        .failed
        .next_matching(watch.deadline, |e| e.event.order.id == order)
        .await?;
    tracing::info!(id = %failed.event.order.id, status = %failed.event.order.status, "order failed");
    released(watch, order).await
}

fn quantity(n: u32) -> Quantity {
    Quantity::new(n).expect("positive quantity")
}
