//! Serving a module: request endpoints and event handlers, run concurrently,
//! stopped gracefully.
//!
//! Every module registers the same way:
//!
//! ```ignore
//! let setup = Module::setup(client, &contract::order::MODULE, VERSION, options).await?;
//! let orders = Arc::new(Orders::open(&setup).await?);  // state tables, via the setup
//! let mut module = setup.start(orders).await?;
//! module.serve(place_order).await?;                    // answers order.create
//! module.on_event("mark_paid", payment_succeeded).await?; // events.payment.success
//! Ok(module.running())                                 // -> ModuleHandle
//! ```
//!
//! One way in: the bus, the options (storage, concurrency, consumer policy)
//! and the [`Declaration`] are given once, to [`Module::setup`]; everything
//! else is derived from them. Serving, listening, requesting or publishing
//! outside the declaration is refused.
//!
//! A module is a NATS service (the "micro" protocol), so it answers
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`. What this file and its helpers
//! (`endpoint.rs`, `consumer.rs`) add on top of async-nats, once for every
//! module:
//!
//! * decoding the request and replying a `400 bad_request` naming the problem;
//! * **every request gets a reply**: the value, the handler's structured
//!   error, or `500 internal` if the handler panicked;
//! * `Idempotency-Key` on requests (see `idempotency.rs`);
//! * events consumed through durable JetStream consumers, acknowledged after
//!   the handler's effect is stored, retried with backoff, dead-lettered when
//!   hopeless (see `consumer.rs`);
//! * handlers run concurrently (each request and each event a future of its
//!   subject's intake task, bounded per subject), so one slow handler never
//!   stalls a subject;
//! * shutdown: stop intake, let in-flight handlers finish, flush.
//!
//! One window remains on the request side, and it belongs to core NATS: a
//! request that the server routes to us at the very moment it processes our
//! unsubscribe is dropped by the client (async-nats removes a subscription
//! without waiting for the server to confirm). Its requester sees a timeout,
//! and may retry with the same `Idempotency-Key`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{Service, ServiceExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::consumer::{self, ConsumerOptions};
use crate::context::Context;
use crate::dead_letter::DeadLetters;
use crate::declaration::Declaration;
use crate::endpoint;
use crate::error::{EventError, RegisterError, ServiceError};
use crate::events::ensure_stream;
use crate::idempotency::IdempotencyKeys;
use crate::limits::Limits;
use crate::message::{Event, Rpc};
use crate::stats::{HandlerSnapshot, HandlerStats};
use crate::store::{Storage, StoreError, Table};
use crate::supervisor::supervise;

/// How many handlers of one endpoint or event handler may run at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;

/// The default of [`ModuleOptions::deadline`].
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// How long a handler waits for another module's reply: shorter than a
/// client's own timeout, so that the client gets our `503` rather than
/// timing out at the same moment.
pub const PEER_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a shutdown waits for buffered messages to reach the broker.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// How a module runs, for all its handlers alike.
#[derive(Debug, Clone, Copy)]
pub struct ModuleOptions {
    /// Where its state (and idempotency keys, dead letters) live.
    pub storage: Storage,
    /// How many handlers of one endpoint or event handler may run at once.
    pub max_in_flight: usize,
    /// How its event consumers deliver, retry and give up.
    pub consumer: ConsumerOptions,
    /// Size limits of what it stores.
    pub limits: Limits,
    /// How long the module waits on work it handed to others before it
    /// gives up on it (what that means is the module's: an order not paid
    /// in time fails, a hold nobody follows up is released). Kept by the
    /// broker, with [`Context::schedule_fact`].
    pub deadline: Duration,
}

impl Default for ModuleOptions {
    fn default() -> Self {
        Self {
            storage: Storage::Durable,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            consumer: ConsumerOptions::default(),
            limits: Limits::default(),
            deadline: DEFAULT_DEADLINE,
        }
    }
}

impl ModuleOptions {
    /// The defaults, with state kept as `storage` says.
    pub fn with_storage(storage: Storage) -> Self {
        Self {
            storage,
            ..Self::default()
        }
    }
}

/// A module about to start: its bus, options and declaration are set; open
/// its state here ([`Setup::table`]), then [`Setup::start`] it.
pub struct Setup {
    declaration: &'static Declaration,
    version: &'static str,
    /// What the bus could not publish at once, for the background publisher.
    deferred: tokio::sync::mpsc::Receiver<crate::bus::OutgoingEvent>,
    /// Holds the module to its declaration; requests time out after
    /// [`PEER_REQUEST_TIMEOUT`].
    bus: Bus,
    options: ModuleOptions,
}

impl Setup {
    /// Opens (creating it if needed) one of the module's state tables.
    pub async fn table<V>(
        &self,
        bucket: &str,
        max_age: Option<Duration>,
    ) -> Result<Table<V>, StoreError>
    where
        V: serde::Serialize + serde::de::DeserializeOwned + Clone,
    {
        self.owns(bucket)?;
        let storage = self.options.storage;
        Table::open(
            self.bus.client(),
            storage,
            bucket,
            max_age,
            &self.options.limits,
        )
        .await
    }

    /// Opens (creating it if needed) one of the module's tables as an index
    /// of work in progress: its removed keys leave nothing behind (see
    /// [`Table::open_index`]).
    pub async fn index<V>(&self, bucket: &str) -> Result<Table<V>, StoreError>
    where
        V: serde::Serialize + serde::de::DeserializeOwned + Clone,
    {
        self.owns(bucket)?;
        Table::open_index(
            self.bus.client(),
            self.options.storage,
            bucket,
            &self.options.limits,
        )
        .await
    }

    /// Whether the module declares `bucket` among its own.
    fn owns(&self, bucket: &str) -> Result<(), StoreError> {
        if self.declaration.owns_bucket(bucket) {
            return Ok(());
        }
        Err(StoreError::Undeclared {
            module: self.declaration.name,
            bucket: bucket.to_owned(),
        })
    }

    /// The module's bus, for work before serving (such as a recovery sweep).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    pub fn options(&self) -> &ModuleOptions {
        &self.options
    }

    /// Starts the module's NATS service (discovery answers from now on).
    pub async fn start<S: Send + Sync + 'static>(
        self,
        state: Arc<S>,
    ) -> Result<Module<S>, RegisterError> {
        let Setup {
            declaration,
            version,
            deferred,
            bus,
            options,
        } = self;
        let limits = &options.limits;
        let idempotency = IdempotencyKeys::open(bus.client(), options.storage, limits).await?;
        let dead_letters = DeadLetters::open_with(bus.client(), options.storage, limits).await?;
        let service = bus
            .client()
            .service_builder()
            .description(declaration.description)
            .start(declaration.name, version)
            .await
            .map_err(|source| RegisterError::Service {
                name: declaration.name.to_owned(),
                source,
            })?;
        let shared = Shared {
            state,
            bus,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            idempotency,
            dead_letters,
            finish_publishing: CancellationToken::new(),
        };
        // Outlives the handlers (which may defer events until they end):
        // not in the tracker, but stopped and awaited by the shutdown.
        let publisher = tokio::spawn(crate::deferred::publish_deferred(
            shared.bus.clone(),
            deferred,
            shared.finish_publishing.clone(),
        ));
        Ok(Module {
            declaration,
            shared: Arc::new(shared),
            service: Arc::new(service),
            handlers: Vec::new(),
            options,
            publisher: Some(publisher),
        })
    }
}

/// What every task of a module shares.
pub(crate) struct Shared<S> {
    pub state: Arc<S>,
    /// The bus handlers use: requests time out after [`PEER_REQUEST_TIMEOUT`].
    pub bus: Bus,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
    pub idempotency: IdempotencyKeys,
    pub dead_letters: DeadLetters,
    /// Fired at a graceful stop once the handlers are done: the deferred
    /// publisher then empties its queue (see `deferred.rs`).
    pub finish_publishing: CancellationToken,
}

/// A module being set up: add endpoints and event handlers, then call
/// [`Module::running`].
pub struct Module<S> {
    declaration: &'static Declaration,
    shared: Arc<Shared<S>>,
    service: Arc<Service>,
    handlers: Vec<Tracked>,
    options: ModuleOptions,
    /// The deferred publisher; `None` once handed to the [`ModuleHandle`].
    publisher: Option<tokio::task::JoinHandle<()>>,
}

impl<S> Drop for Module<S> {
    /// A module dropped before [`Module::running`] (a registration that
    /// failed half-way) stops what it already started, rather than serve
    /// for ever with no handle to stop it.
    fn drop(&mut self) {
        if let Some(publisher) = self.publisher.take() {
            self.shared.cancel.cancel();
            publisher.abort();
        }
    }
}

impl Module<()> {
    /// Sets a module up on `client`: checks its declaration, makes sure the
    /// event stream exists, and builds the one bus all its handlers share.
    pub async fn setup(
        client: async_nats::Client,
        declaration: &'static Declaration,
        version: &'static str,
        options: ModuleOptions,
    ) -> Result<Setup, RegisterError> {
        declaration.check().map_err(RegisterError::Config)?;
        let (deferring, deferred) = crate::deferred::Deferred::new();
        let bus = Bus::new(client)
            .with_request_timeout(PEER_REQUEST_TIMEOUT)
            .bound_to(declaration, options.limits)
            .deferring_to(deferring);
        ensure_stream(bus.client(), &options.limits).await?;
        let options = ModuleOptions {
            max_in_flight: options.max_in_flight.max(1),
            ..options
        };
        Ok(Setup {
            declaration,
            version,
            deferred,
            bus,
            options,
        })
    }
}

impl<S: Send + Sync + 'static> Module<S> {
    /// The module's state.
    pub fn state(&self) -> &Arc<S> {
        &self.shared.state
    }

    /// The bus the module's handlers use, for work outside handlers such as
    /// a recovery sweep at start.
    pub fn bus(&self) -> &Bus {
        &self.shared.bus
    }

    /// Answers `R::SUBJECT` with `handler`, requests handled concurrently.
    pub async fn serve<R, F, Fut>(&mut self, handler: F) -> Result<(), RegisterError>
    where
        R: Rpc,
        F: Fn(Arc<S>, Context, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Reply, ServiceError>> + Send + 'static,
    {
        let subject = R::SUBJECT;
        if !self.declaration.serves(subject) {
            return Err(self.undeclared(format!("serve {subject}")));
        }
        let endpoint = self
            .service
            .endpoint(subject)
            .await
            .map_err(|source| RegisterError::Endpoint { subject, source })?;
        // Serving once this returns: a round trip on the module's own
        // connection, which the server handles after the subscription
        // (a flush only reaches the socket), so a request sent right after
        // registration by anyone finds the endpoint, not `NoResponders`.
        self.shared
            .bus
            .jetstream()
            .query_account()
            .await
            .map_err(|err| RegisterError::Endpoint {
                subject,
                source: Box::new(err),
            })?;
        let stats = self.track(subject, subject);
        let (shared, service) = (self.shared.clone(), self.service.clone());
        let (handler, max_in_flight) = (Arc::new(handler), self.options.max_in_flight);
        let mut first = Some(endpoint);
        self.shared.tracker.spawn(async move {
            let cancel = shared.cancel.clone();
            supervise(subject, cancel, &stats.clone(), || {
                let (shared, service, stats, handler) = (
                    shared.clone(),
                    service.clone(),
                    stats.clone(),
                    handler.clone(),
                );
                let first = first.take();
                async move {
                    // The first run uses the endpoint made at registration
                    // (so that its errors reach the caller); a restart
                    // subscribes again.
                    let endpoint = match first {
                        Some(endpoint) => endpoint,
                        None => service.endpoint(subject).await?,
                    };
                    Ok::<_, async_nats::Error>(endpoint::serve::<R, S, F, Fut>(
                        shared,
                        endpoint,
                        stats,
                        max_in_flight,
                        handler,
                    ))
                }
            })
            .await;
        });
        Ok(())
    }

    /// Reacts to every `E` event with the handler called `name`, events
    /// handled concurrently, through its durable consumer
    /// `<module>_<name>` (see [`crate::Listener`] on why the name, not the
    /// subject, is the identity).
    pub async fn on_event<E, F, Fut>(
        &mut self,
        name: &'static str,
        handler: F,
    ) -> Result<(), RegisterError>
    where
        E: Event,
        F: Fn(Arc<S>, Context, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), EventError>> + Send + 'static,
    {
        let subject = E::SUBJECT;
        if !self.declaration.listens(name, subject) {
            return Err(self.undeclared(format!("listen to {subject} with handler {name:?}")));
        }
        let durable = self.declaration.consumer_name(name);
        let advisories =
            consumer::watch_max_deliveries(self.shared.bus.client(), &durable, subject).await?;
        let messages = consumer::open(
            self.shared.bus.client(),
            &durable,
            subject,
            self.options.consumer,
        )
        .await?;
        let stats = self.track(subject, name);
        self.shared.tracker.spawn(consumer::record_max_deliveries(
            self.shared.clone(),
            durable.clone(),
            subject,
            advisories,
            stats.clone(),
        ));
        let shared = self.shared.clone();
        let (handler, max_in_flight, options, limits) = (
            Arc::new(handler),
            self.options.max_in_flight,
            self.options.consumer,
            self.options.limits,
        );
        let mut first = Some(messages);
        self.shared.tracker.spawn(async move {
            let cancel = shared.cancel.clone();
            supervise(subject, cancel, &stats.clone(), || {
                let (shared, stats, handler, durable) = (
                    shared.clone(),
                    stats.clone(),
                    handler.clone(),
                    durable.clone(),
                );
                let first = first.take();
                async move {
                    let messages = match first {
                        Some(messages) => messages,
                        None => {
                            // The stream may be what went missing.
                            let client = shared.bus.client();
                            ensure_stream(client, &limits).await?;
                            consumer::open(client, &durable, subject, options).await?
                        }
                    };
                    Ok::<_, RegisterError>(consumer::consume::<E, S, F, Fut>(
                        shared,
                        durable,
                        messages,
                        stats,
                        max_in_flight,
                        handler,
                        options,
                    ))
                }
            })
            .await;
        });
        Ok(())
    }

    fn undeclared(&self, what: String) -> RegisterError {
        RegisterError::Undeclared {
            module: self.declaration.name,
            what,
        }
    }

    /// Hands the running module over to its handle.
    pub fn running(mut self) -> ModuleHandle {
        ModuleHandle {
            name: self.declaration.name,
            bus: self.shared.bus.clone(),
            service: Some(self.service.clone()),
            tracker: self.shared.tracker.clone(),
            cancel: self.shared.cancel.clone(),
            finish_publishing: self.shared.finish_publishing.clone(),
            publisher: self.publisher.take(),
            handlers: std::mem::take(&mut self.handlers),
        }
    }

    fn track(&mut self, subject: &'static str, handler: &'static str) -> Arc<HandlerStats> {
        let stats = Arc::new(HandlerStats::default());
        self.handlers.push(Tracked {
            subject,
            handler,
            stats: stats.clone(),
        });
        stats
    }
}

/// One endpoint or event handler and its counters.
struct Tracked {
    subject: &'static str,
    handler: &'static str,
    stats: Arc<HandlerStats>,
}

impl Tracked {
    fn snapshot(&self) -> HandlerSnapshot {
        self.stats.snapshot(self.subject, self.handler)
    }
}

/// A running module. Dropping it stops intake; [`ModuleHandle::shutdown`]
/// also waits for the work in flight.
pub struct ModuleHandle {
    name: &'static str,
    bus: Bus,
    service: Option<Arc<Service>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    finish_publishing: CancellationToken,
    publisher: Option<tokio::task::JoinHandle<()>>,
    handlers: Vec<Tracked>,
}

impl ModuleHandle {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The counters of the handler called `key` (an event handler's name),
    /// or else of the first handler of subject `key`.
    pub fn stats(&self, key: &str) -> Option<HandlerSnapshot> {
        self.find(key).map(Tracked::snapshot)
    }

    /// The counters of every handler of this module.
    pub fn all_stats(&self) -> Vec<HandlerSnapshot> {
        self.handlers.iter().map(Tracked::snapshot).collect()
    }

    fn find(&self, key: &str) -> Option<&Tracked> {
        self.handlers
            .iter()
            .find(|t| t.handler == key)
            .or_else(|| self.handlers.iter().find(|t| t.subject == key))
    }

    /// Waits until the counters of the handler `key` (as in
    /// [`ModuleHandle::stats`]) satisfy `condition`, at most `timeout`;
    /// `None` on timeout or unknown handler.
    ///
    /// Lets a caller know that messages were *handled*, including duplicates
    /// that, by design, have no visible effect.
    pub async fn wait_until(
        &self,
        key: &str,
        timeout: Duration,
        condition: impl Fn(&HandlerSnapshot) -> bool,
    ) -> Option<HandlerSnapshot> {
        let tracked = self.find(key)?;
        let stats = &tracked.stats;
        stats
            .waiters
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Counted as a waiter for as long as this call lives, even if dropped.
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _waiting = Waiting(&stats.waiters);
        let wait = async {
            loop {
                let changed = stats.changed.notified();
                tokio::pin!(changed);
                // Register before checking, so no change slips in between.
                changed.as_mut().enable();
                let snapshot = tracked.snapshot();
                if condition(&snapshot) {
                    return snapshot;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    /// Waits until the handler for `subject` has completed at least `count`
    /// messages (successfully or not), at most `timeout`.
    pub async fn handled(
        &self,
        subject: &str,
        count: u64,
        timeout: Duration,
    ) -> Option<HandlerSnapshot> {
        self.wait_until(subject, timeout, |s| s.completed >= count)
            .await
    }

    /// Stops taking new requests and events; work in flight goes on.
    pub fn stop_intake(&self) {
        self.cancel.cancel();
    }

    /// Stops intake, waits for the handlers in flight, then flushes what they
    /// published.
    pub async fn shutdown(mut self) {
        self.stop_intake();
        self.tracker.close();
        self.tracker.wait().await;
        // The handlers are done: what they deferred gets a last chance.
        self.finish_publishing.cancel();
        if let Some(publisher) = self.publisher.take() {
            let _ = publisher.await;
        }
        // The intake tasks are over, so this is the last reference.
        if let Some(Ok(service)) = self.service.take().map(Arc::try_unwrap) {
            // Only stops the discovery responder now: endpoints are already gone.
            let _ = service.stop().await;
        }
        // Bounded: with the broker gone a flush would wait for a reconnect forever.
        match tokio::time::timeout(FLUSH_TIMEOUT, self.bus.client().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(module = self.name, %err, "flush after shutdown failed"),
            Err(_) => tracing::warn!(module = self.name, "flush after shutdown timed out"),
        }
        tracing::debug!(module = self.name, "module stopped");
    }
}

impl Drop for ModuleHandle {
    fn drop(&mut self) {
        // Without this, a forgotten handle would leave its tasks serving forever.
        self.cancel.cancel();
        if let Some(publisher) = self.publisher.take() {
            publisher.abort();
        }
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
