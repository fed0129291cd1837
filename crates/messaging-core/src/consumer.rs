//! Reacting to one event subject through a durable JetStream consumer.
//!
//! * One durable consumer per module and handler (`<module>_<handler>`), so
//!   every instance of a module shares it (each event goes to one of them),
//!   and two handlers of one event each get every event.
//! * Acknowledged only after the handler returned `Ok`, i.e. after its effect
//!   is stored; while a slow handler runs, "in progress" acks keep the event
//!   from being redelivered under it.
//! * A handler says what a failure is ([`EventError`]): a transient one (a
//!   peer or the store unavailable) is handed back with a growing delay
//!   (`nak` with backoff); an undecodable event or a permanent failure is
//!   terminated at once and recorded as a poisoned dead letter. An event whose last allowed delivery fails is
//!   recorded as a max-deliveries dead letter; one whose last delivery went
//!   unanswered (a crash) is recorded from the server's advisory.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{AckKind, Message};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use crate::context::Context;
use crate::dead_letter::{
    max_deliveries_subject, DeadLetter, DeadLetterKind, MaxDeliveriesAdvisory,
};
use crate::error::{EventError, RegisterError};
use crate::events::{stream_of, Delivered, SCHEDULES_PREFIX};
use crate::message::Event;
use crate::module::Shared;
use crate::stats::{Ending, HandlerStats};

/// How a module's event consumers behave.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerOptions {
    /// How long a delivered event may go without an ack (or a progress ack)
    /// before the server redelivers it.
    pub ack_wait: Duration,
    /// Deliveries before an event is given up on (and dead-lettered).
    pub max_deliver: i64,
    /// First redelivery delay after a transient failure; doubles each time.
    pub first_backoff: Duration,
    /// Longest redelivery delay.
    pub max_backoff: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(5),
            max_deliver: 10,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ConsumerOptions {
    fn backoff(&self, delivered: i64) -> Duration {
        let doublings = delivered.clamp(1, 20) as u32 - 1;
        (self.first_backoff * 2u32.saturating_pow(doublings)).min(self.max_backoff)
    }
}

/// How long one pull request waits for events, and how often the server
/// says "still here" while none come. A consumer deleted under us (with
/// its stream, when the stream is recreated at once) goes silent without
/// an error: two missed heartbeats, 6 s, are how we notice, where the
/// client's defaults (30 s, 15 s) would take half a minute.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(3);

/// Creates (or updates) the durable consumer and returns its message stream.
///
/// With setup's patience: see [`crate::supervisor::retry_setup`].
pub(crate) async fn open(
    client: &async_nats::Client,
    durable: &str,
    subject: &'static str,
    options: ConsumerOptions,
) -> Result<pull::Stream, RegisterError> {
    let failed = |err: String| RegisterError::Subscribe {
        subject,
        reason: err,
    };
    let config = pull::Config {
        durable_name: Some(durable.to_owned()),
        filter_subject: subject.to_owned(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: options.ack_wait,
        max_deliver: options.max_deliver,
        max_ack_pending: 10_000,
        ..Default::default()
    };
    let jetstream = crate::supervisor::setup_context(client);
    let create = || async {
        let stream = jetstream
            .get_stream(stream_of(subject))
            .await
            .map_err(|e| failed(e.to_string()))?;
        let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = stream
            .create_consumer(config.clone())
            .await
            .map_err(|e| failed(e.to_string()))?;
        consumer
            .stream()
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| failed(e.to_string()))
    };
    crate::supervisor::retry_setup(durable, create).await
}

/// Pulls events until the module stops, handling them concurrently.
pub(crate) async fn consume<E, S, F, Fut>(
    shared: Arc<Shared<S>>,
    durable: String,
    mut messages: pull::Stream,
    stats: Arc<HandlerStats>,
    max_in_flight: usize,
    handler: Arc<F>,
    options: ConsumerOptions,
) where
    E: Event,
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Context, E) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), EventError>> + Send + 'static,
{
    let subject = E::SUBJECT;
    // The handlers in flight run as futures of this one task, not as tasks
    // of their own: concurrent all the same (one slow handler never holds up
    // the others), without a task, a cross-thread wake-up and a reschedule
    // per event, which cost more than the handling itself.
    let mut running = FuturesUnordered::new();
    loop {
        let pulling = running.len() < max_in_flight;
        let message = tokio::select! {
            message = messages.next(), if pulling => message,
            Some(()) = running.next(), if !running.is_empty() => continue,
            () = shared.cancel.cancelled() => break,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(err)) => {
                // Missed heartbeats and the like while the broker is away
                // recover by themselves; a consumer (or stream) that was
                // deleted does not: end, and be set up again.
                if consumer_is_gone(&shared.bus, &durable, subject).await {
                    tracing::warn!(subject, consumer = %durable, %err, "event consumer is gone; recreating it");
                    break;
                }
                tracing::warn!(subject, consumer = %durable, %err, "event consumer interrupted");
                continue;
            }
            None => break,
        };
        let in_flight = stats.enter();
        let (shared, handler, durable, stats) = (&shared, &handler, &durable, &stats);
        running.push(async move {
            let delivery =
                deliver::<E, S, F, Fut>(message, shared, handler, durable, options, stats);
            // The handler's own panics are caught inside; this catches the
            // rest (decoding, acking), so one event never takes the intake
            // down: unacknowledged, it comes again after its ack wait.
            let ending = AssertUnwindSafe(delivery)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!(subject, "event delivery panicked; it will come again");
                    Ending::Failed
                });
            in_flight.finish(ending);
        });
    }
    // Stopping: the handlers in flight finish (and ack) before we return.
    while running.next().await.is_some() {}
    // Events already pulled but not handed to a handler go back at once,
    // rather than after their ack wait.
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
    tracing::debug!(subject, "event consumer stopped");
}

async fn deliver<E, S, F, Fut>(
    message: Message,
    shared: &Shared<S>,
    handler: &F,
    durable: &str,
    options: ConsumerOptions,
    stats: &HandlerStats,
) -> Ending
where
    E: Event,
    F: Fn(Arc<S>, Context, E) -> Fut,
    Fut: Future<Output = Result<(), EventError>>,
{
    let subject = E::SUBJECT;
    let (sequence, delivered, published) = match message.info() {
        Ok(info) => (
            info.stream_sequence,
            info.delivered,
            Some(std::time::SystemTime::from(info.published)),
        ),
        Err(_) => (0, 1, None),
    };
    let letter = |kind: DeadLetterKind, reason: String| {
        DeadLetter::new(kind, durable, subject, sequence, delivered, reason)
    };

    // An event published by a message schedule names its schedule. The
    // broker checks who may publish a *schedule*, not its target: a module
    // allowed to schedule its own deadlines could aim one at another
    // module's event. Only a schedule of this very subject may publish it.
    if let Some(scheduler) = scheduled_by(&message) {
        if !scheduler.starts_with(&format!("{SCHEDULES_PREFIX}.{subject}.")) {
            let reason = format!("published by the schedule {scheduler}, not one of {subject}");
            terminate(
                &message,
                shared,
                stats,
                letter(DeadLetterKind::Poisoned, reason),
            )
            .await;
            return Ending::Failed;
        }
    }
    let delivered_event = match Delivered::<E>::decode(&message.payload) {
        Ok(event) => event,
        Err(err) => {
            terminate(
                &message,
                shared,
                stats,
                letter(DeadLetterKind::Poisoned, format!("undecodable: {err}")),
            )
            .await;
            return Ending::Failed;
        }
    };
    let ctx = Context {
        bus: shared.bus.clone(),
        subject,
        correlation_id: delivered_event.meta.correlation_id,
        event: Some(delivered_event.meta),
        published,
        idempotency_key: None,
    };
    let work = AssertUnwindSafe(handler(shared.state.clone(), ctx, delivered_event.event))
        .catch_unwind()
        .map(|outcome| {
            // A bug: a fix and a redelivery may cure it.
            outcome.unwrap_or_else(|_| Err(EventError::transient("event handler panicked")))
        });
    let outcome = with_progress(&message, options.ack_wait, work).await;

    let event_id = delivered_event.meta.event_id;
    match outcome {
        Ok(()) => {
            if let Err(err) = message.ack().await {
                // Not fatal: the event comes again and the handler is idempotent.
                tracing::warn!(subject, %event_id, %err, "ack failed");
            }
            Ending::Ok
        }
        // The last allowed delivery failed: give up now, with the reason,
        // rather than wait for the server's advisory (which says no why).
        Err(EventError::Transient(reason)) if delivered >= options.max_deliver => {
            let dead = letter(DeadLetterKind::MaxDeliveries, reason);
            terminate(&message, shared, stats, dead).await;
            Ending::Failed
        }
        Err(EventError::Transient(reason)) => {
            let delay = options.backoff(delivered);
            tracing::debug!(subject, %event_id, delivered, ?delay, %reason, "event handler failed; will retry");
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            Ending::Retried
        }
        Err(EventError::Permanent(reason)) => {
            let dead = letter(DeadLetterKind::Poisoned, reason);
            terminate(&message, shared, stats, dead).await;
            Ending::Failed
        }
    }
}

/// Whether the durable consumer (or its stream) no longer exists: asked of
/// the server, since from the message stream a deleted consumer and a broker
/// that is away look alike.
async fn consumer_is_gone(bus: &crate::Bus, durable: &str, subject: &str) -> bool {
    use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
    use async_nats::jetstream::ErrorCode;
    let stream = match bus.jetstream().get_stream(stream_of(subject)).await {
        Ok(stream) => stream,
        Err(err) => {
            return matches!(err.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND);
        }
    };
    match stream.consumer_info(durable).await {
        Ok(_) => false,
        Err(err) => matches!(
            err.kind(),
            ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
        ),
    }
}

/// Runs `work`, telling the server "still working" every third of the ack
/// wait, so a slow handler is not redelivered while it runs.
async fn with_progress<T>(
    message: &Message,
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    // A plain sleep, re-armed after each tick: no allocation, and no
    // "immediate first tick", which would go through the timer wheel and
    // cost up to a millisecond on every event.
    let period = ack_wait / 3;
    let tick = tokio::time::sleep(period);
    tokio::pin!(tick);
    loop {
        tokio::select! {
            // Work first: a handler done at its first poll never arms the timer.
            biased;
            result = &mut work => return result,
            () = &mut tick => {
                let _ = message.ack_with(AckKind::Progress).await;
                tick.as_mut().reset(tokio::time::Instant::now() + period);
            }
        }
    }
}

async fn terminate<S>(
    message: &Message,
    shared: &Shared<S>,
    stats: &HandlerStats,
    letter: DeadLetter,
) {
    // Record first: if recording fails, the event is redelivered rather than lost.
    match shared.dead_letters.record(&letter).await {
        Ok(()) => {
            let _ = message.ack_with(AckKind::Term).await;
            stats.dead_lettered();
        }
        Err(err) => {
            tracing::warn!(id = %letter.id, %err, "dead letter not recorded; event will come again");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

/// Subscribes to the server's max-deliveries advisories for `durable`.
pub(crate) async fn watch_max_deliveries(
    client: &async_nats::Client,
    durable: &str,
    subject: &'static str,
) -> Result<async_nats::Subscriber, RegisterError> {
    client
        .subscribe(max_deliveries_subject(durable, subject))
        .await
        .map_err(|err| RegisterError::Subscribe {
            subject,
            reason: format!("max-deliveries advisories: {err}"),
        })
}

/// Records the events the server gave up on, from its advisories: those
/// whose last delivery was never answered (the process died, or the ack wait
/// ran out). Failures we saw are recorded by `deliver` itself, with their
/// reason; this only fills the gaps. The consumer filters on `subject`, so
/// every event it gives up on is one of those.
pub(crate) async fn record_max_deliveries<S>(
    shared: Arc<Shared<S>>,
    durable: String,
    subject: &'static str,
    mut advisories: async_nats::Subscriber,
    stats: Arc<HandlerStats>,
) {
    loop {
        let advisory = tokio::select! {
            advisory = advisories.next() => advisory,
            () = shared.cancel.cancelled() => break,
        };
        let Some(advisory) = advisory else { break };
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveriesAdvisory>(&advisory.payload)
        else {
            continue;
        };
        // Any client can publish on an advisory subject: believe only what
        // the stream confirms (our consumer, our stream, an event of our
        // subject at that sequence), or an attacker could fill the dead
        // letters with made-up ids and old real events.
        if !is_genuine(&shared.bus, &advisory, &durable, subject).await {
            tracing::debug!(consumer = %durable, "max-deliveries advisory ignored: not about our events");
            continue;
        }
        let letter = DeadLetter::new(
            DeadLetterKind::MaxDeliveries,
            &advisory.consumer,
            subject,
            advisory.stream_seq,
            advisory.deliveries,
            "delivery limit reached without an answer (ack wait expired)".to_owned(),
        );
        match shared.dead_letters.record_new(&letter).await {
            Ok(true) => stats.dead_lettered(),
            Ok(false) => {}
            Err(err) => tracing::warn!(id = %letter.id, %err, "dead letter not recorded"),
        }
    }
    let _ = advisories.unsubscribe().await;
}

/// Whether a max-deliveries advisory is about an event of ours.
async fn is_genuine(
    bus: &crate::Bus,
    advisory: &MaxDeliveriesAdvisory,
    durable: &str,
    subject: &str,
) -> bool {
    if advisory.consumer != durable || advisory.stream != stream_of(subject) {
        return false;
    }
    let Ok(stream) = bus.jetstream().get_stream(stream_of(subject)).await else {
        return false;
    };
    match stream.get_raw_message(advisory.stream_seq).await {
        Ok(message) => message.subject.as_str() == subject,
        Err(_) => false,
    }
}

/// The schedule that published `message`, if a schedule did.
fn scheduled_by(message: &Message) -> Option<&str> {
    message
        .headers
        .as_ref()?
        .get(async_nats::header::NATS_SCHEDULER)
        .map(|value| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_from_the_first_delay_up_to_the_longest() {
        let options = ConsumerOptions {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
            ..ConsumerOptions::default()
        };
        let ms = |delivered| options.backoff(delivered).as_millis();
        // After the first delivery failed, the first delay; then doubled.
        assert_eq!([ms(1), ms(2), ms(3), ms(4)], [100, 200, 400, 800]);
        assert_eq!([ms(5), ms(6), ms(60)], [1_000, 1_000, 1_000], "capped");
        assert_eq!(ms(0), 100, "an unknown count is a first delivery");
        assert_eq!(ms(i64::MAX), 1_000);
    }
}
