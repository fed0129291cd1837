//! What a handler knows about the message it handles, and how it talks back
//! to the bus within the same flow.

use uuid::Uuid;

use crate::bus::{Announced, Bus, Published};
use crate::error::{PublishError, RequestError};
use crate::events::EventMeta;
use crate::message::{Event, Rpc};

/// Namespace of the deterministic (v5) ids derived by [`Context`].
pub(crate) const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6d0b_6f1e_5a84_4c59_9a3e_1f7e_c0de_5eed);

/// The context of one request or event being handled.
#[derive(Clone, Debug)]
pub struct Context {
    pub(crate) bus: Bus,
    pub(crate) subject: &'static str,
    pub(crate) correlation_id: Uuid,
    pub(crate) event: Option<EventMeta>,
    /// When the stream stored the event being handled.
    pub(crate) published: Option<std::time::SystemTime>,
    pub(crate) idempotency_key: Option<String>,
}

impl Context {
    /// A context that starts a new flow; for code outside handlers (recovery
    /// sweeps, tools).
    pub fn new_flow(bus: Bus) -> Self {
        Self {
            bus,
            subject: "",
            correlation_id: Uuid::new_v4(),
            event: None,
            published: None,
            idempotency_key: None,
        }
    }

    /// A context continuing the flow `correlation_id` (e.g. to re-publish an
    /// event of that flow after a restart).
    pub fn in_flow(bus: Bus, correlation_id: Uuid) -> Self {
        Self {
            correlation_id,
            ..Self::new_flow(bus)
        }
    }

    /// The id shared by every message of this flow.
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }

    /// The event being handled, if the handler reacts to an event.
    pub fn event(&self) -> Option<&EventMeta> {
        self.event.as_ref()
    }

    /// How long ago the event being handled was stored (by the broker's
    /// clock, read on ours): how late it is handled, after a redelivery or a
    /// module that was down. `None` outside event handlers.
    pub fn event_age(&self) -> Option<std::time::Duration> {
        let published = self.published?;
        Some(
            std::time::SystemTime::now()
                .duration_since(published)
                .unwrap_or_default(),
        )
    }

    /// The request's `Idempotency-Key`, if the caller sent one.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// An id for something this message creates (`purpose` names what).
    ///
    /// Deterministic when the message can come again: derived from the
    /// idempotency key of a request, or from the id of the event being
    /// handled, so that a retry or a redelivery creates the *same* thing
    /// instead of a second one. Random otherwise.
    pub fn derive_id(&self, purpose: &str) -> Uuid {
        let seed = match (&self.idempotency_key, &self.event) {
            (Some(key), _) => format!("request\n{}\n{key}\n{purpose}", self.subject),
            (None, Some(event)) => format!("event\n{}\n{purpose}", event.event_id),
            (None, None) => return Uuid::new_v4(),
        };
        Uuid::new_v5(&ID_NAMESPACE, seed.as_bytes())
    }

    /// Asks another module, within this flow.
    pub async fn request<R: Rpc>(&self, request: &R) -> Result<R::Reply, RequestError> {
        self.bus.request_in_flow(request, self.correlation_id).await
    }

    /// Publishes the event of a fact like [`Context::publish_fact`], but
    /// for a change already stored and answered as done: if the stream
    /// cannot take the event now, it is published in the background (see
    /// [`Bus::publish_eventually`]) rather than reported as a failure.
    pub async fn announce_fact<E: Event>(
        &self,
        event: &E,
        fact: &str,
    ) -> Result<Announced, PublishError> {
        self.bus
            .publish_eventually(event, self.fact_meta(fact))
            .await
    }

    fn fact_meta(&self, fact: &str) -> EventMeta {
        EventMeta {
            event_id: Uuid::new_v5(&ID_NAMESPACE, fact.as_bytes()),
            correlation_id: self.correlation_id,
        }
    }

    /// Publishes the event of a fact identified by `fact` (such as
    /// `order/<id>/paid`), within this flow.
    ///
    /// The event id is derived from `fact`, so publishing the same fact again
    /// (after a crash, on a redelivery) is the same event: the stream drops it
    /// as a duplicate within its window, and idempotent handlers absorb it
    /// after that. This is what closes the gap between storing a change and
    /// publishing its event.
    pub async fn publish_fact<E: Event>(
        &self,
        event: &E,
        fact: &str,
    ) -> Result<Published, PublishError> {
        self.bus.publish_as(event, self.fact_meta(fact)).await
    }

    /// Schedules `event` like [`Context::schedule_fact`], as the deadline of
    /// `key`: it replaces whatever was scheduled for `key` before, and
    /// [`Context::cancel_schedule`] takes it back (see
    /// [`Bus::schedule_keyed_as`]).
    pub async fn schedule_keyed<E: Event>(
        &self,
        event: &E,
        fact: &str,
        key: &str,
        after: std::time::Duration,
    ) -> Result<Published, PublishError> {
        let at = std::time::SystemTime::now() + after;
        self.bus
            .schedule_keyed_as(event, self.fact_meta(fact), key, at)
            .await
    }

    /// Takes back the deadline of `key`, if it has not fired yet.
    pub async fn cancel_schedule<E: Event>(&self, key: &str) -> Result<(), PublishError> {
        self.bus.cancel_schedule::<E>(key).await
    }

    /// Schedules the event of a fact for `after` from now (see
    /// [`Bus::schedule_as`]): a deadline kept by the broker. The event id is
    /// derived from `fact`, so scheduling the same fact again (a redelivery)
    /// is the same schedule, not a second deadline (see `schedule_as` on
    /// what "again" means after a while).
    pub async fn schedule_fact<E: Event>(
        &self,
        event: &E,
        fact: &str,
        after: std::time::Duration,
    ) -> Result<Published, PublishError> {
        let at = std::time::SystemTime::now() + after;
        self.bus.schedule_as(event, self.fact_meta(fact), at).await
    }
}
