//! Keeping a module's intake tasks alive.
//!
//! Every request and event is handled behind `catch_unwind`, so a panic in a
//! handler (or in the reply path) costs one `500` or one redelivery, never
//! the subject. This is the net under that net: if an intake task itself
//! dies, or ends while the module is not stopping (its consumer or the
//! event stream was deleted, its subscription closed), it is set up again
//! and started; the restart is logged and counted in the handler's
//! [`crate::HandlerSnapshot::restarts`], so a module never looks healthy
//! (`$SRV.PING` answers) while one of its subjects is deaf.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::stats::HandlerStats;

/// Pause before starting a task again after it died, or after a failed
/// attempt to set it up again: a task that dies at once is not a busy loop.
/// Doubles while setting up keeps failing (the broker away), up to the max,
/// so an outage is a few log lines, not five a second.
const RESTART_DELAY: Duration = Duration::from_millis(200);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);

/// Runs the task that `start` sets up until it ends normally or `cancel`
/// fires; a task that panics is set up and run again.
///
/// `start` is called once per run: it (re)creates what the task reads from
/// (an endpoint subscription, a consumer) and may fail, in which case it is
/// tried again after a pause.
pub(crate) async fn supervise<Start, Setup, Task, E>(
    subject: &'static str,
    cancel: CancellationToken,
    stats: &HandlerStats,
    mut start: Start,
) where
    Start: FnMut() -> Setup,
    Setup: Future<Output = Result<Task, E>>,
    Task: Future<Output = ()>,
    E: std::fmt::Display,
{
    let mut delay = RESTART_DELAY;
    loop {
        let task = match start().await {
            Ok(task) => task,
            Err(err) => {
                tracing::error!(subject, %err, ?delay, "intake could not be set up again; retrying");
                if pause(&cancel, delay).await {
                    return;
                }
                delay = (delay * 2).min(MAX_RESTART_DELAY);
                continue;
            }
        };
        delay = RESTART_DELAY;
        let ended = AssertUnwindSafe(task).catch_unwind().await;
        if cancel.is_cancelled() {
            return;
        }
        stats.restarted();
        match ended {
            Ok(()) => tracing::warn!(subject, "intake ended while serving; setting it up again"),
            Err(_) => tracing::error!(subject, "intake task died; restarting it"),
        }
        if pause(&cancel, delay).await {
            return;
        }
    }
}

/// Waits `delay`; `true` if the module stops meanwhile.
async fn pause(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// How long one JetStream call may take while a module sets up (the event
/// stream, its buckets, its consumers). Longer than a handler's 2 s: on a
/// cluster each of these creates a replicated group, which takes seconds
/// on a busy machine or during a leader election.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts of one setup step before registering fails.
const SETUP_ATTEMPTS: u32 = 4;

/// A JetStream context for setup work, with [`SETUP_TIMEOUT`].
pub(crate) fn setup_context(client: &async_nats::Client) -> async_nats::jetstream::Context {
    let mut jetstream = async_nats::jetstream::new(client.clone());
    jetstream.set_timeout(SETUP_TIMEOUT);
    jetstream
}

/// Runs a setup step, trying again (up to [`SETUP_ATTEMPTS`] in all, with a
/// short growing pause) when it fails: a leader election or a busy cluster
/// makes setup calls time out or find no responder for a few seconds. A
/// mistake (a bad configuration) fails the same way each time and is
/// reported after the last attempt, a second or two later.
pub(crate) async fn retry_setup<T, E, F, Fut>(what: &str, mut step: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut delay = RESTART_DELAY;
    for attempt in 1.. {
        match step().await {
            Ok(done) => return Ok(done),
            Err(err) if attempt < SETUP_ATTEMPTS => {
                tracing::warn!(what, %err, attempt, ?delay, "setup step failed; trying again");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(err) => return Err(err),
        }
    }
    unreachable!("the loop returns by its last attempt")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_setup_step_is_tried_again_until_it_succeeds_or_attempts_run_out() {
        let calls = AtomicUsize::new(0);
        let flaky = || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("timed out"),
                n => Ok(n),
            }
        };
        assert_eq!(retry_setup("flaky", flaky).await, Ok(2));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicUsize::new(0);
        let broken = || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(format!("attempt {n} failed"))
        };
        let started = tokio::time::Instant::now();
        let err = retry_setup("broken", broken).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), SETUP_ATTEMPTS as usize);
        assert_eq!(err, format!("attempt {} failed", SETUP_ATTEMPTS - 1));
        // Pauses of 200, 400 and 800 ms between the four attempts.
        assert_eq!(started.elapsed(), Duration::from_millis(1400));
    }

    #[tokio::test]
    async fn a_task_that_dies_or_ends_early_is_restarted_and_counted() {
        let runs = Arc::new(AtomicUsize::new(0));
        let stats = HandlerStats::default();
        let cancel = CancellationToken::new();
        let (counter, stop) = (runs.clone(), cancel.clone());
        supervise("probe", cancel, &stats, move || {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            let stop = stop.clone();
            async move {
                Ok::<_, String>(async move {
                    match run {
                        0 => panic!("intake bug"),
                        1 => {}             // its consumer vanished: ends early
                        _ => stop.cancel(), // the module stops: ends for good
                    }
                })
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(stats.snapshot("probe", "probe").restarts, 2);
    }

    #[tokio::test]
    async fn failed_setups_are_retried_until_cancelled() {
        let cancel = CancellationToken::new();
        let stats = HandlerStats::default();
        let attempts = Arc::new(AtomicUsize::new(0));
        let (counter, stop) = (attempts.clone(), cancel.clone());
        supervise("probe", cancel, &stats, move || {
            if counter.fetch_add(1, Ordering::SeqCst) == 1 {
                stop.cancel();
            }
            async { Err::<std::future::Ready<()>, _>("no endpoint") }
        })
        .await;
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert_eq!(stats.snapshot("probe", "probe").restarts, 0);
    }
}
