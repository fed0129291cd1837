//! The deferred publisher: events whose state change is already stored,
//! but which the stream could not take when they were published (the broker
//! slow or away, the stream full), kept trying in the background.
//!
//! This is what lets a handler tell its client the truth: the order *is*
//! placed, its `events.order.created` goes out as soon as the stream takes
//! it. It lives in memory: what a stop leaves unpublished is logged, and is
//! the owner's to announce again at its next start (the order module's
//! recovery sweep re-announces every unfinished order).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, OutgoingEvent};
use crate::error::PublishError;

/// Events waiting at most; beyond, publishing fails as it would without a
/// deferred publisher (memory is bounded, whatever the outage).
const CAPACITY: usize = 10_000;

/// First wait before trying a deferred event again; doubles up to the max.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The sending side, held by a module's bus.
#[derive(Debug, Clone)]
pub(crate) struct Deferred {
    queue: mpsc::Sender<OutgoingEvent>,
}

impl Deferred {
    pub fn new() -> (Self, mpsc::Receiver<OutgoingEvent>) {
        let (queue, waiting) = mpsc::channel(CAPACITY);
        (Self { queue }, waiting)
    }

    /// Queues `event`, which failed with `err`; gives `err` back if the
    /// queue is full.
    pub fn defer(&self, event: OutgoingEvent, err: &PublishError) -> Result<(), PublishError> {
        let subject = event.subject;
        match self.queue.try_send(event) {
            Ok(()) => {
                tracing::warn!(subject, %err, "event not stored yet; publishing it in the background");
                Ok(())
            }
            Err(_) => Err(PublishError::Stream {
                subject,
                reason: format!("{err} (and {CAPACITY} events already wait to be published)"),
            }),
        }
    }
}

/// Publishes the deferred events, in order, each until the stream takes it,
/// until `cancel` fires.
pub(crate) async fn publish_deferred(
    bus: Bus,
    mut waiting: mpsc::Receiver<OutgoingEvent>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = waiting.recv() => event,
            () = cancel.cancelled() => break,
        };
        let Some(event) = event else { break };
        let mut delay = FIRST_RETRY;
        loop {
            match bus.send_event(&event).await {
                Ok(_) => {
                    tracing::info!(subject = event.subject, "deferred event stored");
                    break;
                }
                Err(err) => {
                    tracing::debug!(subject = event.subject, %err, ?delay, "deferred event still not stored")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => {
                    lost(1 + waiting.len());
                    return;
                }
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    }
    lost(waiting.len());
}

fn lost(count: usize) {
    if count > 0 {
        tracing::warn!(
            count,
            "stopping with events not yet stored; their owners announce them again at the next start"
        );
    }
}
