//! The deferred publisher: events whose state change is already stored,
//! but which the stream could not take when they were published (the broker
//! slow or away, the stream full), kept trying in the background.
//!
//! This is what lets a handler tell its client the truth: the order *is*
//! placed, its `events.order.created` goes out as soon as the stream takes
//! it. It lives in memory. A graceful stop finishes it *after* the handlers
//! (which may still defer events) and gives what is queued a last bounded
//! chance; what even that leaves unpublished is logged, and is the owner's
//! to announce again at its next start (the order module's recovery sweep
//! re-announces every unfinished order; a user's or product's
//! `created` event is then lost, which the README's limits say).

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

/// How long a stopping module keeps trying what is still queued.
const LAST_CHANCE: Duration = Duration::from_secs(5);

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
            Err(mpsc::error::TrySendError::Full(_)) => Err(PublishError::Stream {
                subject,
                reason: format!("{err} (and {CAPACITY} events already wait to be published)"),
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PublishError::Stream {
                subject,
                reason: format!("{err} (and the module has stopped publishing)"),
            }),
        }
    }
}

/// Publishes the deferred events, in order, each until the stream takes it.
/// When `finish` fires (a graceful stop, once the handlers are done), what
/// is still queued gets [`LAST_CHANCE`], then the rest is counted as lost.
pub(crate) async fn publish_deferred(
    bus: Bus,
    mut waiting: mpsc::Receiver<OutgoingEvent>,
    finish: CancellationToken,
) {
    let mut pending = None;
    while pending.is_none() {
        let event = tokio::select! {
            biased;
            event = waiting.recv() => event,
            () = finish.cancelled() => break,
        };
        let Some(event) = event else { return };
        let mut delay = FIRST_RETRY;
        let stored = loop {
            if bus.send_event(&event).await.is_ok() {
                break true;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = finish.cancelled() => break false,
            }
            delay = (delay * 2).min(MAX_RETRY);
        };
        if stored {
            tracing::info!(subject = event.subject, "deferred event stored");
        } else {
            pending = Some(event);
        }
    }
    // Stopping: nothing new can come (the handlers are done); give what is
    // queued one bounded last chance.
    waiting.close();
    let deadline = tokio::time::Instant::now() + LAST_CHANCE;
    let mut lost = 0;
    let mut next = pending.or_else(|| waiting.try_recv().ok());
    while let Some(event) = next {
        let mut delay = FIRST_RETRY;
        loop {
            if bus.send_event(&event).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() + delay > deadline {
                lost += 1;
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY);
        }
        next = waiting.try_recv().ok();
    }
    if lost > 0 {
        tracing::warn!(
            count = lost,
            "stopping with events not yet stored; their owners announce them again at the next start"
        );
    }
}
