//! Serving a module: request endpoints and event handlers, run concurrently,
//! stopped gracefully.
//!
//! Every module registers the same way:
//!
//! ```ignore
//! let mut module = Module::start(bus, SPEC, state).await?;
//! module.serve(create_user).await?;          // answers user.create
//! module.on_event(payment_succeeded).await?; // reacts to events.payment.success
//! Ok(module.running())                       // -> ModuleHandle
//! ```
//!
//! A module is a NATS service (the "micro" protocol), so it answers
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`. What this file adds on top of
//! async-nats, once for every module:
//!
//! * decoding the request and replying a `400 bad_request` naming the problem;
//! * **every request gets a reply**: the value, the handler's structured
//!   error, or `500 internal` if the handler panicked;
//! * handlers run concurrently (each request and each event in its own task,
//!   bounded by a semaphore), so one slow handler never stalls a subject;
//! * shutdown: stop intake, let the delivered messages and in-flight handlers
//!   finish, flush what they published.
//!
//! One window remains, and it belongs to core NATS: a request or event that
//! the server routes to us at the very moment it processes our unsubscribe
//! is dropped by the client (async-nats removes a subscription without
//! waiting for the server to confirm). A requester then sees a timeout, the
//! one case where it does; events in that window are lost (at-most-once).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_nats::service::{Service, ServiceExt};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bus::{Bus, CORRELATION_ID};
use crate::contract::{Event, Rpc};
use crate::error::{PublishError, RegisterError, RequestError, ServiceError};
use crate::events::{Delivered, EventMeta};

/// How many handlers of one endpoint or event subscription may run at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;

/// The identity a module announces on `$SRV.INFO`.
#[derive(Debug, Clone, Copy)]
pub struct ModuleSpec {
    /// Service name (`[A-Za-z0-9_-]+`); also the queue group of its event handlers.
    pub name: &'static str,
    /// Semantic version.
    pub version: &'static str,
    pub description: &'static str,
}

/// What a handler knows about the message it is handling, and how it talks
/// back to the bus within the same flow.
#[derive(Clone, Debug)]
pub struct Context {
    bus: Bus,
    correlation_id: Uuid,
    event: Option<EventMeta>,
}

impl Context {
    /// A context that starts a new flow; for code outside handlers.
    pub fn new_flow(bus: Bus) -> Self {
        Self {
            bus,
            correlation_id: Uuid::new_v4(),
            event: None,
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

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Asks another module, within this flow.
    pub async fn request<R: Rpc>(&self, request: &R) -> Result<R::Reply, RequestError> {
        self.bus.request_in_flow(request, self.correlation_id).await
    }

    /// Publishes an event, within this flow.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<EventMeta, PublishError> {
        self.bus.publish(event, self.correlation_id).await
    }
}

/// Live counters of one endpoint or event handler.
#[derive(Debug, Default)]
struct HandlerStats {
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    /// Woken after every completed message, for [`ModuleHandle::handled`].
    changed: Notify,
}

impl HandlerStats {
    fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn snapshot(&self, subject: &'static str) -> HandlerSnapshot {
        HandlerSnapshot {
            subject,
            in_flight: self.in_flight.load(Ordering::SeqCst),
            peak_in_flight: self.peak_in_flight.load(Ordering::SeqCst),
            completed: self.completed.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
        }
    }
}

/// Counts one running handler; decrements on drop, even on panic.
struct InFlight(Arc<HandlerStats>);

impl InFlight {
    fn finish(&self, ok: bool) {
        if !ok {
            self.0.failed.fetch_add(1, Ordering::SeqCst);
        }
        self.0.completed.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A point-in-time copy of one handler's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerSnapshot {
    pub subject: &'static str,
    /// Handlers running now.
    pub in_flight: usize,
    /// Most handlers ever seen running at the same time.
    pub peak_in_flight: usize,
    /// Messages handled (successfully or not).
    pub completed: u64,
    /// Messages whose handler returned an error (or panicked).
    pub failed: u64,
}

/// A module being set up: add endpoints and event handlers, then call
/// [`Module::running`].
pub struct Module<S> {
    spec: ModuleSpec,
    bus: Bus,
    state: Arc<S>,
    service: Service,
    tracker: TaskTracker,
    cancel: CancellationToken,
    handlers: Vec<(&'static str, Arc<HandlerStats>)>,
    max_in_flight: usize,
}

impl<S: Send + Sync + 'static> Module<S> {
    /// Starts the module's NATS service (discovery answers from now on).
    pub async fn start(bus: Bus, spec: ModuleSpec, state: Arc<S>) -> Result<Self, RegisterError> {
        let service = bus
            .client()
            .service_builder()
            .description(spec.description)
            .start(spec.name, spec.version)
            .await
            .map_err(|source| RegisterError::Service {
                name: spec.name.to_owned(),
                source,
            })?;
        Ok(Self {
            spec,
            bus,
            state,
            service,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            handlers: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        })
    }

    /// Bounds the concurrent handlers of each endpoint or event handler added after this call.
    pub fn max_in_flight(&mut self, limit: usize) -> &mut Self {
        self.max_in_flight = limit.max(1);
        self
    }

    /// Answers `R::SUBJECT` with `handler`, one task per request.
    pub async fn serve<R, F, Fut>(&mut self, handler: F) -> Result<(), RegisterError>
    where
        R: Rpc,
        F: Fn(Arc<S>, Context, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Reply, ServiceError>> + Send + 'static,
    {
        let subject = R::SUBJECT;
        let mut endpoint = self
            .service
            .endpoint(subject)
            .await
            .map_err(|source| RegisterError::Endpoint { subject, source })?;
        let stats = self.track(subject);
        let handler = Arc::new(handler);
        let limit = Arc::new(Semaphore::new(self.max_in_flight));
        let (tracker, cancel, state, bus) = self.parts();

        self.tracker.spawn(async move {
            let mut stopping = false;
            loop {
                let request = if stopping {
                    endpoint.next().await
                } else {
                    tokio::select! {
                        request = endpoint.next() => request,
                        () = cancel.cancelled() => {
                            // Stop intake; requests already delivered to us
                            // are still read below and answered.
                            stopping = true;
                            if let Err(err) = endpoint.stop().await {
                                tracing::warn!(subject, %err, "failed to unsubscribe endpoint");
                                break;
                            }
                            continue;
                        }
                    }
                };
                let Some(request) = request else { break };
                let permit = limit
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                let in_flight = stats.enter();
                let (state, bus, handler) = (state.clone(), bus.clone(), handler.clone());
                tracker.spawn(async move {
                    let _permit = permit;
                    let ok = answer::<R, S, F, Fut>(request, state, bus, &handler).await;
                    in_flight.finish(ok);
                });
            }
            tracing::debug!(subject, "endpoint stopped");
        });
        Ok(())
    }

    /// Reacts to every `E` event with `handler`, one task per event.
    ///
    /// Subscribes in the queue group named after the module, so several
    /// instances of one module share the events instead of each handling all.
    pub async fn on_event<E, F, Fut>(&mut self, handler: F) -> Result<(), RegisterError>
    where
        E: Event,
        F: Fn(Arc<S>, Context, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        let subject = E::SUBJECT;
        let mut subscriber = self
            .bus
            .client()
            .queue_subscribe(subject, self.spec.name.to_owned())
            .await
            .map_err(|source| RegisterError::Subscribe { subject, source })?;
        let stats = self.track(subject);
        let handler = Arc::new(handler);
        let limit = Arc::new(Semaphore::new(self.max_in_flight));
        let (tracker, cancel, state, bus) = self.parts();
        let module = self.spec.name;

        self.tracker.spawn(async move {
            let mut stopping = false;
            loop {
                let message = if stopping {
                    subscriber.next().await
                } else {
                    tokio::select! {
                        message = subscriber.next() => message,
                        () = cancel.cancelled() => {
                            // Drain: unsubscribe, then still receive what the
                            // server sent before it saw the unsubscribe.
                            stopping = true;
                            if let Err(err) = subscriber.drain().await {
                                tracing::warn!(subject, %err, "failed to drain subscription");
                                break;
                            }
                            continue;
                        }
                    }
                };
                let Some(message) = message else { break };
                let delivered = match Delivered::<E>::decode(&message.payload) {
                    Ok(delivered) => delivered,
                    Err(err) => {
                        tracing::warn!(module, subject, %err, "dropping undecodable event");
                        continue;
                    }
                };
                let permit = limit
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                let in_flight = stats.enter();
                let (state, bus, handler) = (state.clone(), bus.clone(), handler.clone());
                tracker.spawn(async move {
                    let _permit = permit;
                    let ctx = Context {
                        bus,
                        correlation_id: delivered.meta.correlation_id,
                        event: Some(delivered.meta),
                    };
                    let outcome = AssertUnwindSafe(handler(state, ctx, delivered.event))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Err(ServiceError::internal("event handler panicked")));
                    if let Err(err) = &outcome {
                        let event_id = delivered.meta.event_id;
                        tracing::warn!(module, subject, %event_id, %err, "event handler failed");
                    }
                    in_flight.finish(outcome.is_ok());
                });
            }
            tracing::debug!(subject, "event handler stopped");
        });
        Ok(())
    }

    /// Hands the running module over to its handle.
    pub fn running(self) -> ModuleHandle {
        ModuleHandle {
            name: self.spec.name,
            bus: self.bus,
            service: Some(self.service),
            tracker: self.tracker,
            cancel: self.cancel,
            handlers: self.handlers,
        }
    }

    fn track(&mut self, subject: &'static str) -> Arc<HandlerStats> {
        let stats = Arc::new(HandlerStats::default());
        self.handlers.push((subject, stats.clone()));
        stats
    }

    fn parts(&self) -> (TaskTracker, CancellationToken, Arc<S>, Bus) {
        (
            self.tracker.clone(),
            self.cancel.clone(),
            self.state.clone(),
            self.bus.clone(),
        )
    }
}

/// Decodes one request, runs the handler and replies; returns whether it succeeded.
async fn answer<R, S, F, Fut>(
    request: async_nats::service::Request,
    state: Arc<S>,
    bus: Bus,
    handler: &F,
) -> bool
where
    R: Rpc,
    F: Fn(Arc<S>, Context, R) -> Fut,
    Fut: Future<Output = Result<R::Reply, ServiceError>>,
{
    let correlation_id = request
        .message
        .headers
        .as_ref()
        .and_then(|h| h.get(CORRELATION_ID))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or_else(Uuid::new_v4);
    let ctx = Context {
        bus,
        correlation_id,
        event: None,
    };

    let result = match decode::<R>(&request.message.payload) {
        Err(err) => Err(err),
        Ok(payload) => AssertUnwindSafe(handler(state, ctx, payload))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(ServiceError::internal("request handler panicked"))),
    };
    let reply = result.and_then(|value| {
        serde_json::to_vec(&value)
            .map(Bytes::from)
            .map_err(|err| ServiceError::internal(format!("reply could not be encoded: {err}")))
    });

    let ok = reply.is_ok();
    if let Err(err) = &reply {
        if err.status >= 500 {
            tracing::warn!(subject = R::SUBJECT, %err, "request failed");
        } else {
            tracing::debug!(subject = R::SUBJECT, %err, "request refused");
        }
    }
    if let Err(err) = request.respond(reply.map_err(Into::into)).await {
        // Only possible without a reply subject (a publish, not a request) or
        // with the connection gone; there is nobody left to tell.
        tracing::debug!(subject = R::SUBJECT, %err, "could not send reply");
    }
    ok
}

fn decode<R: Rpc>(payload: &[u8]) -> Result<R, ServiceError> {
    if payload.is_empty() {
        return Err(ServiceError::bad_request(format!(
            "empty payload: {} expects a JSON object",
            R::SUBJECT
        )));
    }
    // serde would also accept a struct written as an array (`["Ada"]`); the
    // contract is JSON objects with named fields, nothing positional.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ServiceError::bad_request(format!(
            "invalid {} request: expected a JSON object",
            R::SUBJECT
        )));
    }
    serde_json::from_slice(payload)
        .map_err(|err| ServiceError::bad_request(format!("invalid {} request: {err}", R::SUBJECT)))
}

/// A running module. Dropping it stops intake; [`ModuleHandle::shutdown`]
/// also waits for the work in flight.
pub struct ModuleHandle {
    name: &'static str,
    bus: Bus,
    service: Option<Service>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    handlers: Vec<(&'static str, Arc<HandlerStats>)>,
}

impl ModuleHandle {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The counters of the handler for `subject`, if this module has one.
    pub fn stats(&self, subject: &str) -> Option<HandlerSnapshot> {
        self.handlers
            .iter()
            .find(|(s, _)| *s == subject)
            .map(|(s, stats)| stats.snapshot(s))
    }

    /// Waits until the handler for `subject` has completed at least `count`
    /// messages (successfully or not), at most `timeout`.
    ///
    /// Lets a caller know that a message was *handled*, including a duplicate
    /// that, by design, has no visible effect.
    pub async fn handled(
        &self,
        subject: &str,
        count: u64,
        timeout: std::time::Duration,
    ) -> Option<HandlerSnapshot> {
        let (subject, stats) = self.handlers.iter().find(|(s, _)| *s == subject)?;
        let wait = async {
            loop {
                let changed = stats.changed.notified();
                tokio::pin!(changed);
                // Register before checking, so no completion slips between.
                changed.as_mut().enable();
                if stats.completed.load(Ordering::SeqCst) >= count {
                    return stats.snapshot(subject);
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    /// The counters of every handler of this module.
    pub fn all_stats(&self) -> Vec<HandlerSnapshot> {
        self.handlers
            .iter()
            .map(|(s, stats)| stats.snapshot(s))
            .collect()
    }

    /// Stops taking new requests and events; work in flight goes on.
    pub fn stop_intake(&self) {
        self.cancel.cancel();
    }

    /// Stops intake, waits for every delivered message to be handled, then
    /// flushes what the handlers published.
    pub async fn shutdown(mut self) {
        self.stop_intake();
        self.tracker.close();
        self.tracker.wait().await;
        if let Some(service) = self.service.take() {
            // Only stops the discovery responder now: endpoints are already gone.
            let _ = service.stop().await;
        }
        if let Err(err) = self.bus.client().flush().await {
            tracing::warn!(module = self.name, %err, "flush after shutdown failed");
        }
        tracing::debug!(module = self.name, "module stopped");
    }
}

impl Drop for ModuleHandle {
    fn drop(&mut self) {
        // Without this, a forgotten handle would leave its tasks serving forever.
        self.cancel.cancel();
    }
}

/// Shuts several modules down together: intake stops everywhere first, so no
/// module keeps accepting work that its peers can no longer serve; then each
/// one finishes its work in flight.
pub async fn shutdown_all(modules: Vec<ModuleHandle>) {
    for module in &modules {
        module.stop_intake();
    }
    futures::future::join_all(modules.into_iter().map(ModuleHandle::shutdown)).await;
}
