//! Live counters of each endpoint and event handler, and a way to wait for
//! them: how tests (and operators) observe concurrency and progress.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct HandlerStats {
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    restarts: AtomicU64,
    /// Woken after every change, for [`crate::ModuleHandle::wait_until`].
    pub(crate) changed: Notify,
    /// How many are waiting: waking nobody costs a lock per message otherwise.
    pub(crate) waiters: AtomicUsize,
}

/// A point-in-time copy of one handler's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerSnapshot {
    pub subject: &'static str,
    /// The handler's name: its subject for an endpoint, its declared
    /// handler name (and consumer suffix) for an event handler.
    pub handler: &'static str,
    /// Handlers running now.
    pub in_flight: usize,
    /// Most handlers ever seen running at the same time.
    pub peak_in_flight: usize,
    /// Messages handled (successfully or not).
    pub completed: u64,
    /// Messages whose handler returned an error (or panicked).
    pub failed: u64,
    /// Events handed back for a later redelivery (transient failures).
    pub retried: u64,
    /// Events given up on and recorded as dead letters.
    pub dead_lettered: u64,
    /// Times the intake task of this handler died and was started again
    /// (zero in a healthy module).
    pub restarts: u64,
}

impl HandlerStats {
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        self.notify();
        InFlight(self.clone())
    }

    pub(crate) fn snapshot(&self, subject: &'static str, handler: &'static str) -> HandlerSnapshot {
        HandlerSnapshot {
            subject,
            handler,
            in_flight: self.in_flight.load(Ordering::SeqCst),
            peak_in_flight: self.peak_in_flight.load(Ordering::SeqCst),
            completed: self.completed.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            retried: self.retried.load(Ordering::SeqCst),
            dead_lettered: self.dead_lettered.load(Ordering::SeqCst),
            restarts: self.restarts.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::SeqCst);
        self.notify();
    }

    pub(crate) fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::SeqCst);
        self.notify();
    }

    fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

/// Counts one running handler; decrements on drop, even on panic.
pub(crate) struct InFlight(Arc<HandlerStats>);

/// How a handled message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Ok,
    Failed,
    /// Failed, and handed back for redelivery.
    Retried,
}

impl InFlight {
    pub(crate) fn finish(&self, ending: Ending) {
        match ending {
            Ending::Ok => {}
            Ending::Failed => {
                self.0.failed.fetch_add(1, Ordering::SeqCst);
            }
            Ending::Retried => {
                self.0.failed.fetch_add(1, Ordering::SeqCst);
                self.0.retried.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.0.completed.fetch_add(1, Ordering::SeqCst);
        self.0.notify();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.notify();
    }
}
