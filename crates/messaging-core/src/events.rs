//! The event envelope and a typed stream of events for observers.
//!
//! On the wire an event is one flat JSON object: the event's own fields plus
//! `event_id` (unique per event, also sent as the `Nats-Msg-Id` header) and
//! `correlation_id` (the same along one flow, e.g. one order's life).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contract::Event;

/// The identity of one published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// Unique per event: the key for deduplication and idempotency.
    pub event_id: Uuid,
    /// Shared by every message caused by the same original request.
    pub correlation_id: Uuid,
}

/// What is serialized when publishing: meta and event side by side.
#[derive(Serialize)]
pub(crate) struct Outgoing<'a, E> {
    #[serde(flatten)]
    pub meta: EventMeta,
    #[serde(flatten)]
    pub event: &'a E,
}

/// An event as received: its identity and its payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Delivered<E> {
    #[serde(flatten)]
    pub meta: EventMeta,
    #[serde(flatten)]
    pub event: E,
}

impl<E: Event> Delivered<E> {
    /// Decodes an event payload; the error names what is wrong.
    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// Why an [`EventStream`] did not yield an event.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("no {subject} event within {timeout:?}")]
    Timeout {
        subject: &'static str,
        timeout: Duration,
    },
    #[error("the subscription to {subject} ended")]
    Ended { subject: &'static str },
    #[error("undecodable {subject} event: {source}")]
    Decode {
        subject: &'static str,
        source: serde_json::Error,
    },
}

/// Typed events from a plain subscription (see [`crate::Bus::watch`]).
pub struct EventStream<E> {
    subscriber: async_nats::Subscriber,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<E: Event> EventStream<E> {
    pub(crate) fn new(subscriber: async_nats::Subscriber) -> Self {
        Self {
            subscriber,
            _event: std::marker::PhantomData,
        }
    }

    /// The next event, waiting at most `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Delivered<E>, WatchError> {
        use futures::StreamExt;
        let subject = E::SUBJECT;
        let message = tokio::time::timeout(timeout, self.subscriber.next())
            .await
            .map_err(|_| WatchError::Timeout { subject, timeout })?
            .ok_or(WatchError::Ended { subject })?;
        Delivered::decode(&message.payload).map_err(|source| WatchError::Decode { subject, source })
    }

    /// The first event that satisfies `wanted`, waiting at most `timeout` in all.
    pub async fn next_matching(
        &mut self,
        timeout: Duration,
        mut wanted: impl FnMut(&Delivered<E>) -> bool,
    ) -> Result<Delivered<E>, WatchError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_within(left).await.map_err(|err| match err {
                WatchError::Timeout { subject, .. } => WatchError::Timeout { subject, timeout },
                other => other,
            })?;
            if wanted(&event) {
                return Ok(event);
            }
        }
    }
}
