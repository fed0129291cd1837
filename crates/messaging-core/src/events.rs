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

/// The JetStream stream of deadlines: scheduled events (`deadlines.>`) and
/// their schedules (`schedules.>`) until they are due.
///
/// Not the event stream: the broker refuses message schedules in a stream
/// that discards *new* messages when full, which the event stream must do
/// (see `stream_config`).
pub const DEADLINES_STREAM: &str = "DEADLINES";

/// How the subject of every scheduled event starts.
pub const DEADLINES_PREFIX: &str = "deadlines";

/// Where scheduled events wait until they are due:
/// `schedules.<event subject>.<event id>` (see [`crate::Bus::schedule_as`]).
pub const SCHEDULES_PREFIX: &str = "schedules";

/// The stream that stores the events of `subject`.
pub fn stream_of(subject: &str) -> &'static str {
    match subject.strip_prefix(DEADLINES_PREFIX) {
        Some(rest) if rest.starts_with('.') => DEADLINES_STREAM,
        _ => EVENTS_STREAM,
    }
}

/// The subject a scheduled event waits on: one per event, so that each
/// schedule is its own (the broker keeps one schedule per subject).
pub fn schedule_subject(event_subject: &str, event_id: Uuid) -> String {
    format!("{SCHEDULES_PREFIX}.{event_subject}.{event_id}")
}

/// How long the stream remembers event ids to drop duplicate publishes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long events are kept in the stream.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Creates the event and deadline streams, or brings their configuration up
/// to date: safe to call from every module at every start. With setup's patience: a 10 s
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
    for mut config in [stream_config(limits), deadlines_config(limits)] {
        let name = config.name.clone();
        let existing = crate::limits::existing_replicas(jetstream, &name, limits).await;
        config.num_replicas = limits.replicas_for(existing);
        jetstream
            .create_or_update_stream(config)
            .await
            .map_err(|err| RegisterError::Stream(format!("{name}: {err}")))?;
    }
    Ok(())
}

/// The configuration of the stream that stores the events of `subject`.
pub(crate) fn config_of(subject: &str, limits: &Limits) -> async_nats::jetstream::stream::Config {
    match stream_of(subject) {
        DEADLINES_STREAM => deadlines_config(limits),
        _ => stream_config(limits),
    }
}

/// The deadline stream's configuration under `limits`.
///
/// Deadlines are kept by the broker: message schedules (ADR-51). A full
/// stream of deadlines drops its *oldest* messages (schedules refuse the
/// other policy): in a running system those are deadlines long fired and
/// handled; its size limit is the event stream's.
pub(crate) fn deadlines_config(limits: &Limits) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream;
    stream::Config {
        name: DEADLINES_STREAM.to_owned(),
        description: Some("Deadlines of the modular monolith: scheduled events".to_owned()),
        subjects: vec![
            format!("{DEADLINES_PREFIX}.>"),
            format!("{SCHEDULES_PREFIX}.>"),
        ],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: EVENTS_MAX_AGE,
        max_bytes: limits.events_max_bytes,
        max_message_size: limits.event_max_size,
        discard: stream::DiscardPolicy::Old,
        allow_message_schedules: true,
        // A keyed schedule replaces the one before it (a rollup of its
        // subject); a cancellation is a rollup marker that expires.
        allow_rollup: true,
        allow_message_ttl: true,
        num_replicas: limits.replicas.max(1),
        ..Default::default()
    }
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
