//! The event envelope and a typed stream of events for observers.
//!
//! On the wire an event is one flat JSON object: the event's own fields plus
//! `event_id` (unique per event, also sent as the `Nats-Msg-Id` header) and
//! `correlation_id` (the same along one flow, e.g. one order's life).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::RegisterError;
use crate::limits::Limits;
use crate::message::Event;

/// The JetStream stream that stores every domain event (`events.>`).
pub const EVENTS_STREAM: &str = "EVENTS";

/// How long the stream remembers event ids to drop duplicate publishes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long events are kept in the stream.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Creates the event stream, or brings its configuration up to date: safe to
/// call from every module at every start. With setup's patience: a 10 s
/// timeout, and up to 4 attempts (a busy cluster, a leader election).
pub async fn ensure_stream(
    client: &async_nats::Client,
    limits: &Limits,
) -> Result<(), RegisterError> {
    let jetstream = crate::supervisor::setup_context(client);
    crate::supervisor::retry_setup(EVENTS_STREAM, || create_stream(&jetstream, limits)).await
}

/// One attempt at what [`ensure_stream`] does, on `jetstream`'s timeout.
pub(crate) async fn create_stream(
    jetstream: &async_nats::jetstream::Context,
    limits: &Limits,
) -> Result<(), RegisterError> {
    let existing = crate::limits::existing_replicas(jetstream, EVENTS_STREAM, limits).await;
    let mut config = stream_config(limits);
    config.num_replicas = limits.replicas_for(existing);
    jetstream
        .create_or_update_stream(config)
        .await
        .map_err(|err| RegisterError::Stream(format!("{EVENTS_STREAM}: {err}")))?;
    Ok(())
}

/// The event stream's configuration under `limits`.
pub(crate) fn stream_config(limits: &Limits) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream;
    stream::Config {
        name: EVENTS_STREAM.to_owned(),
        description: Some("Domain events of the modular monolith".to_owned()),
        subjects: vec!["events.>".to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: EVENTS_MAX_AGE,
        max_bytes: limits.events_max_bytes,
        max_message_size: limits.event_max_size,
        // Full means "refuse the new event" (its publisher gets an error and
        // its client a 503), never "drop an old one nobody handled yet".
        discard: stream::DiscardPolicy::New,
        num_replicas: limits.replicas.max(1),
        ..Default::default()
    }
}

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
    ///
    /// Two direct passes over the bytes (the identity, then the event, each
    /// ignoring the other's fields) rather than serde's `flatten`, which
    /// buffers the whole object first and costs several times more.
    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(Self {
            meta: serde_json::from_slice(payload)?,
            event: serde_json::from_slice(payload)?,
        })
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
    #[error("reading {subject} events failed: {reason}")]
    Interrupted {
        subject: &'static str,
        reason: String,
    },
    #[error("undecodable {subject} event: {source}")]
    Decode {
        subject: &'static str,
        source: serde_json::Error,
    },
}

/// Typed events read from the event stream (see [`crate::Bus::watch`]).
///
/// Reads what the stream *stored*, so a duplicate publish (same event id
/// within the duplicate window) is seen once, as every consumer sees it.
pub struct EventStream<E> {
    messages: futures::stream::BoxStream<'static, Result<bytes::Bytes, String>>,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<E: Event> EventStream<E> {
    pub(crate) fn new(
        messages: futures::stream::BoxStream<'static, Result<bytes::Bytes, String>>,
    ) -> Self {
        Self {
            messages,
            _event: std::marker::PhantomData,
        }
    }

    /// The next event, waiting at most `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Delivered<E>, WatchError> {
        use futures::StreamExt;
        let subject = E::SUBJECT;
        let payload = tokio::time::timeout(timeout, self.messages.next())
            .await
            .map_err(|_| WatchError::Timeout { subject, timeout })?
            .ok_or(WatchError::Ended { subject })?
            .map_err(|reason| WatchError::Interrupted { subject, reason })?;
        Delivered::decode(&payload).map_err(|source| WatchError::Decode { subject, source })
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
