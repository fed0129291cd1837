//! The shipping module's state: the `shipments` table, by order id.

use contract::order::OrderId;
use contract::shipping::Shipment;
use messaging_core::store::{StoreError, Table};
use messaging_core::Setup;

/// All shipments, one per order.
pub struct Shipments {
    table: Table<Shipment>,
}

impl Shipments {
    pub async fn open(setup: &Setup) -> Result<Self, StoreError> {
        Ok(Self {
            table: setup.table("shipments", None).await?,
        })
    }

    /// Records the shipment of its order; if that order was dispatched
    /// already, the first shipment is kept and returned.
    pub async fn dispatch(&self, shipment: Shipment) -> Result<Shipment, StoreError> {
        let key = shipment.order_id.to_string();
        self.table.create_or_get(&key, shipment).await
    }

    pub async fn get(&self, order_id: OrderId) -> Result<Option<Shipment>, StoreError> {
        Ok(self
            .table
            .get(&order_id.to_string())
            .await?
            .map(|v| v.value))
    }
}
