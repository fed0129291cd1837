//! The typed face of a NATS connection: [`Bus`] sends typed requests and
//! publishes typed events; [`Connection`] owns the connection's lifecycle and
//! knows when a drain has really finished.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use tokio::sync::watch;
use uuid::Uuid;

use crate::declaration::Declaration;
use crate::deferred::Deferred;
use crate::error::{ConnectError, DrainError, PublishError, RequestError, ServiceError};
use crate::events::{EventMeta, EventStream, Outgoing};
use crate::limits::Limits;
use crate::message::{Event, Rpc};
use async_nats::jetstream::context::PublishErrorKind;

/// Header carrying the id that ties together every message of one flow.
pub const CORRELATION_ID: &str = "Correlation-Id";

/// Header naming the module that published an event (events published by a
/// module's bus carry it): for operators and tests reading the stream. Any
/// client can set it, so it is information, not authentication.
pub const PUBLISHED_BY: &str = "Published-By";

/// How long a request waits for its reply unless told otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A cheap, cloneable handle for typed messaging over one NATS client.
///
/// Cloning is one reference count: every handler's context holds one.
#[derive(Clone, Debug)]
pub struct Bus {
    inner: std::sync::Arc<BusInner>,
}

#[derive(Debug, Clone)]
struct BusInner {
    client: Client,
    jetstream: jetstream::Context,
    request_timeout: Duration,
    /// A module's bus sends only what its declaration says it sends.
    declaration: Option<&'static Declaration>,
    /// A module's bus recreates the event stream, with these limits, if it
    /// finds it deleted.
    limits: Option<Limits>,
    /// A module's bus hands events the stream cannot take now to its
    /// deferred publisher.
    deferred: Option<Deferred>,
}

/// An event ready to be stored: its subject, headers and encoded payload.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingEvent {
    pub subject: &'static str,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// For a scheduled event, the subject it waits on until it is due
    /// (`schedules.<subject>.<event id>`); `None` for an event stored now.
    pub schedule: Option<String>,
}

/// What became of an event published with [`Bus::publish_eventually`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// The stream stored it (or had it already).
    Stored(Published),
    /// The stream could not take it now; the module keeps trying.
    Deferred,
}

/// What the event stream said about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The event's sequence number in the stream.
    pub sequence: u64,
    /// The stream already had an event with this id (within its duplicate
    /// window) and did not store it again.
    pub duplicate: bool,
}

/// How long to wait before asking again about an event that is being
/// stored by another publisher (doubling each time, up to the last).
const DUPLICATE_IN_PROCESS_FIRST_WAIT: Duration = Duration::from_millis(5);
const DUPLICATE_IN_PROCESS_LAST_WAIT: Duration = Duration::from_millis(640);

/// Whether the stream refused a publish because a message with the same id
/// is being stored at that moment (`10158`, from a replicated stream).
fn duplicate_in_process(err: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|err| {
            err.error_code() == jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
        })
}

/// The id a deadline key's schedule is stored under.
fn key_id(key: &str) -> Uuid {
    Uuid::new_v5(
        &crate::context::ID_NAMESPACE,
        format!("deadline\n{key}").as_bytes(),
    )
}

impl Bus {
    pub fn new(client: Client) -> Self {
        Self {
            inner: std::sync::Arc::new(BusInner {
                jetstream: jetstream::new(client.clone()),
                client,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                declaration: None,
                limits: None,
                deferred: None,
            }),
        }
    }

    /// The JetStream context over the same client.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.jetstream
    }

    /// How long requests wait for their reply.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The same bus with another request timeout, which also bounds how
    /// long a publish waits for the stream's acknowledgement.
    pub fn with_request_timeout(self, timeout: Duration) -> Self {
        self.changed(|inner| {
            inner.jetstream.set_timeout(timeout);
            inner.request_timeout = timeout;
        })
    }

    /// The same bus, held to `declaration`: a request or an event it does
    /// not declare is refused before anything is sent; and if the event
    /// stream is found deleted, it is created again with `limits`. Every
    /// module's handlers use such a bus.
    pub fn bound_to(self, declaration: &'static Declaration, limits: Limits) -> Self {
        self.changed(|inner| {
            inner.declaration = Some(declaration);
            inner.limits = Some(limits);
        })
    }

    /// The same bus, handing what [`Bus::publish_eventually`] cannot store
    /// now to `deferred`.
    pub(crate) fn deferring_to(self, deferred: Deferred) -> Self {
        self.changed(|inner| inner.deferred = Some(deferred))
    }

    /// A bus like this one with `change` applied (its clones keep theirs).
    fn changed(self, change: impl FnOnce(&mut BusInner)) -> Self {
        let mut inner = BusInner::clone(&self.inner);
        change(&mut inner);
        Self {
            inner: std::sync::Arc::new(inner),
        }
    }

    /// The underlying async-nats client, for anything this type does not cover.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Sends a typed request and decodes the reply, starting a new flow.
    pub async fn request<R: Rpc>(&self, request: &R) -> Result<R::Reply, RequestError> {
        // No header: the serving module starts the flow (and saves us
        // formatting and sending one on every call).
        self.send(request, None, None).await
    }

    /// Sends a typed request that belongs to the flow `correlation_id`.
    pub async fn request_in_flow<R: Rpc>(
        &self,
        request: &R,
        correlation_id: Uuid,
    ) -> Result<R::Reply, RequestError> {
        self.send(request, Some(correlation_id), None).await
    }

    /// Sends a typed request with an `Idempotency-Key`: sending it again
    /// with the same key (after a timeout, a lost connection, a crash of
    /// either side) gets the first reply instead of a second effect.
    pub async fn request_with_key<R: Rpc>(
        &self,
        request: &R,
        idempotency_key: &str,
    ) -> Result<R::Reply, RequestError> {
        let key = idempotency_key.trim();
        // Checked here, not left to async-nats, which panics on a header
        // value with CR or LF.
        if key.is_empty()
            || key.len() > crate::idempotency::MAX_KEY_LEN
            || key.contains(char::is_control)
        {
            return Err(RequestError::InvalidKey {
                subject: R::SUBJECT,
                reason: format!(
                    "an {} is 1 to {} bytes without control characters",
                    crate::idempotency::IDEMPOTENCY_KEY,
                    crate::idempotency::MAX_KEY_LEN
                ),
            });
        }
        self.send(request, None, Some(key)).await
    }

    async fn send<R: Rpc>(
        &self,
        request: &R,
        correlation_id: Option<Uuid>,
        idempotency_key: Option<&str>,
    ) -> Result<R::Reply, RequestError> {
        let subject = R::SUBJECT;
        if let Some(module) = self.inner.declaration {
            if !module.requests(subject) {
                let module = module.name;
                return Err(RequestError::Undeclared { subject, module });
            }
        }
        let payload = serde_json::to_vec(request)
            .map_err(|source| RequestError::Encode { subject, source })?;
        let mut outgoing = async_nats::Request::new()
            .payload(Bytes::from(payload))
            .timeout(Some(self.inner.request_timeout));
        if correlation_id.is_some() || idempotency_key.is_some() {
            let mut headers = HeaderMap::new();
            if let Some(correlation_id) = correlation_id {
                headers.insert(CORRELATION_ID, correlation_id.to_string().as_str());
            }
            if let Some(key) = idempotency_key {
                headers.insert(crate::idempotency::IDEMPOTENCY_KEY, key);
            }
            outgoing = outgoing.headers(headers);
        }
        // A request the broker refuses goes nowhere: fail when it says so.
        let refusal = crate::refusals::watch();
        let sent = self.inner.client.send_request(subject, outgoing);
        let reply = tokio::select! {
            reply = sent => reply,
            () = refusal.refused(subject) => return Err(RequestError::Forbidden { subject }),
        }
        .map_err(|source| match source.kind() {
            async_nats::RequestErrorKind::NoResponders => RequestError::NoResponders { subject },
            async_nats::RequestErrorKind::TimedOut => RequestError::Timeout { subject },
            _ => RequestError::Transport { subject, source },
        })?;
        // Service errors travel as headers with an empty body (ADR-32).
        if let Some(error) = reply.headers.as_ref().and_then(ServiceError::from_headers) {
            return Err(RequestError::Remote { subject, error });
        }
        serde_json::from_slice(&reply.payload).map_err(|source| RequestError::Decode {
            subject,
            expected: std::any::type_name::<R::Reply>(),
            source,
        })
    }

    /// Publishes an event in the flow `correlation_id`, with a fresh event id,
    /// and waits until the event stream has stored it.
    pub async fn publish<E: Event>(
        &self,
        event: &E,
        correlation_id: Uuid,
    ) -> Result<EventMeta, PublishError> {
        let meta = EventMeta {
            event_id: Uuid::new_v4(),
            correlation_id,
        };
        self.publish_as(event, meta).await?;
        Ok(meta)
    }

    /// Publishes an event under a given identity and waits for the stream's
    /// acknowledgement.
    ///
    /// The event id goes out as `Nats-Msg-Id`: publishing the same event
    /// again (a retry, a re-publish after a crash) within the stream's
    /// duplicate window is stored once, and reported as a duplicate.
    pub async fn publish_as<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
    ) -> Result<Published, PublishError> {
        let outgoing = self.envelope(event, meta)?;
        self.send_event(&outgoing).await
    }

    /// Schedules `event` to be published on its subject at `at`, by the
    /// broker (a message schedule, ADR-51), and waits until the stream has
    /// stored the schedule.
    ///
    /// From then on the deadline needs no process of ours: it is in the
    /// stream (replicated like the events), fires once when due, and the
    /// event it publishes waits for the module's durable consumer like any
    /// other, so a module that was down when it fired handles it when it
    /// comes back. A time in the past fires at once. The same event (same
    /// id) scheduled again within the stream's duplicate window (2 min) is
    /// dropped as a duplicate; later, it replaces its schedule if that has
    /// not fired yet, or is scheduled anew.
    ///
    /// The module must declare the subject in its `schedules`; it need not
    /// (and should not) be allowed to publish it directly.
    pub async fn schedule_as<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
        at: std::time::SystemTime,
    ) -> Result<Published, PublishError> {
        self.schedule(event, meta, at, None).await
    }

    /// Schedules `event` like [`Bus::schedule_as`], as *the* deadline of
    /// `key` (a hold, say): one schedule per key, which the next one for the
    /// same key replaces (whatever its event id), and which
    /// [`Bus::cancel_schedule`] takes back.
    pub async fn schedule_keyed_as<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
        key: &str,
        at: std::time::SystemTime,
    ) -> Result<Published, PublishError> {
        self.schedule(event, meta, at, Some(key)).await
    }

    /// Stores the schedule of `event` at `at`: on a subject of its own
    /// event id, or of `key` (replacing what the key had: a rollup).
    async fn schedule<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
        at: std::time::SystemTime,
        key: Option<&str>,
    ) -> Result<Published, PublishError> {
        let subject = E::SUBJECT;
        self.may_schedule(subject)?;
        let mut outgoing = self.encode(event, meta)?;
        let when = format!("@at {}", humantime::format_rfc3339_millis(at));
        let headers = &mut outgoing.headers;
        headers.insert(async_nats::header::NATS_SCHEDULE, when.as_str());
        headers.insert(async_nats::header::NATS_SCHEDULE_TARGET, subject);
        let id = match key {
            Some(key) => {
                headers.insert(async_nats::header::NATS_ROLLUP, "sub");
                key_id(key)
            }
            None => meta.event_id,
        };
        outgoing.schedule = Some(crate::events::schedule_subject(subject, id));
        self.send_event(&outgoing).await
    }

    /// Whether this bus's module declares `subject` among its `schedules`.
    fn may_schedule(&self, subject: &'static str) -> Result<(), PublishError> {
        match self.inner.declaration {
            Some(module) if !module.schedules(subject) => Err(PublishError::Undeclared {
                subject,
                module: module.name,
            }),
            _ => Ok(()),
        }
    }

    /// Takes back the deadline of `key` scheduled with
    /// [`Bus::schedule_keyed_as`], if it has not fired yet: what stays in
    /// its place is a marker that expires a second later. Cancelling a
    /// deadline that fired, or was never scheduled, changes nothing.
    ///
    /// One write, where letting the deadline fire costs a write, a delivery
    /// and the handler's reads; and the broker keeps a schedule in memory
    /// until it fires: a deadline per order, never cancelled, is as many
    /// schedules as orders in the timeout (measured: the durable saga's rate
    /// fell to 0.63x over 200,000 orders, 0.93x without them).
    pub async fn cancel_schedule<E: Event>(&self, key: &str) -> Result<(), PublishError> {
        let subject = E::SUBJECT;
        self.may_schedule(subject)?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_ROLLUP, "sub");
        headers.insert(async_nats::header::NATS_MESSAGE_TTL, "1");
        // Stored like any schedule: refused at once if the broker's
        // permissions say no, the stream set up again if it is gone.
        let marker = OutgoingEvent {
            subject,
            headers,
            payload: Bytes::new(),
            schedule: Some(crate::events::schedule_subject(subject, key_id(key))),
        };
        self.send_event(&marker).await.map(drop)
    }

    /// Publishes like [`Bus::publish_as`]; if the stream cannot take the
    /// event now (the broker slow or away, the stream full), hands it to
    /// the module's deferred publisher, which keeps trying in the background
    /// until it is stored or the module stops, and returns
    /// [`Announced::Deferred`].
    ///
    /// For events whose state change is already stored and must not be
    /// reported as a failure to the client (`order.create` stored the order:
    /// answering `503` would be a lie). What a stop leaves unpublished is the
    /// owner's to announce again at its next start (as the order module's
    /// recovery sweep does).
    pub async fn publish_eventually<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
    ) -> Result<Announced, PublishError> {
        let outgoing = self.envelope(event, meta)?;
        match self.send_event(&outgoing).await {
            Ok(published) => Ok(Announced::Stored(published)),
            Err(err @ PublishError::Stream { .. }) => match &self.inner.deferred {
                Some(deferred) => {
                    deferred.defer(outgoing, &err)?;
                    Ok(Announced::Deferred)
                }
                None => Err(err),
            },
            Err(err) => Err(err),
        }
    }

    /// The event as it goes on the wire, if this bus may publish it.
    fn envelope<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
    ) -> Result<OutgoingEvent, PublishError> {
        let subject = E::SUBJECT;
        if let Some(module) = self.inner.declaration {
            if !module.publishes(subject) {
                let module = module.name;
                return Err(PublishError::Undeclared { subject, module });
            }
        }
        self.encode(event, meta)
    }

    /// The event as it goes on the wire, whoever may send it.
    fn encode<E: Event>(&self, event: &E, meta: EventMeta) -> Result<OutgoingEvent, PublishError> {
        let subject = E::SUBJECT;
        let payload = serde_json::to_vec(&Outgoing { meta, event })
            .map_err(|source| PublishError::Encode { subject, source })?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", meta.event_id.to_string().as_str());
        headers.insert(CORRELATION_ID, meta.correlation_id.to_string().as_str());
        if let Some(module) = self.inner.declaration {
            headers.insert(PUBLISHED_BY, module.name);
        }
        Ok(OutgoingEvent {
            subject,
            headers,
            payload: payload.into(),
            schedule: None,
        })
    }

    /// Stores an event in the stream and waits for the acknowledgement.
    pub(crate) async fn send_event(
        &self,
        event: &OutgoingEvent,
    ) -> Result<Published, PublishError> {
        let subject = event.subject;
        let failed = |reason: String| PublishError::Stream { subject, reason };
        // An event the broker refuses is never acknowledged: fail when it
        // says so rather than at the ack timeout.
        let refusal = crate::refusals::watch();
        let wire = event.schedule.as_deref().unwrap_or(subject);
        let stored = tokio::select! {
            stored = self.store(event) => stored,
            () = refusal.refused(wire) => return Err(PublishError::Forbidden { subject }),
        };
        let ack = match stored {
            // The stream was deleted (an operator, a lost store): a module
            // knows how it should look, so it sets it up again and retries
            // once, rather than answer 503 until somebody restarts it.
            Err(err) if err.kind() == PublishErrorKind::StreamNotFound => {
                let Some(limits) = self.inner.limits else {
                    return Err(failed(err.to_string()));
                };
                tracing::warn!(subject, "the event stream is gone; creating it again");
                // One attempt on the bus's own timeout: a publisher waits.
                crate::events::create_stream(&self.inner.jetstream, &limits)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                self.store(event).await
            }
            other => other,
        }
        .map_err(|err| failed(err.to_string()))?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Publishes to the stream and waits for its acknowledgement.
    async fn store(
        &self,
        event: &OutgoingEvent,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        let subject = match &event.schedule {
            Some(schedule) => schedule.clone(),
            None => event.subject.to_owned(),
        };
        let mut wait = DUPLICATE_IN_PROCESS_FIRST_WAIT;
        loop {
            let stored = self
                .inner
                .jetstream
                .publish_with_headers(
                    subject.clone(),
                    event.headers.clone(),
                    event.payload.clone(),
                )
                .await?
                .await;
            match stored {
                // The same event is being stored right now, by another
                // publisher (a replicated stream says so instead of waiting):
                // ask again shortly, to learn whether it was stored (then
                // this one is a duplicate) or failed (then this one stores it).
                Err(err)
                    if duplicate_in_process(&err) && wait <= DUPLICATE_IN_PROCESS_LAST_WAIT =>
                {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                other => return other,
            }
        }
    }

    /// Watches the events of one subject stored from now on (every watcher
    /// gets every event; nothing is acknowledged or consumed).
    ///
    /// For observers such as the demo and tests; modules react to events with
    /// [`crate::Module::on_event`] instead. Reads the event stream through an
    /// ordered consumer, so it sees what the stream stored: duplicates once.
    pub async fn watch<E: Event>(&self) -> Result<EventStream<E>, WatchSetupError> {
        use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
        use futures::StreamExt;
        let setup = |err: String| WatchSetupError {
            subject: E::SUBJECT,
            reason: err,
        };
        // Created with the default limits if nobody made it yet; never
        // updated from here, so a watcher cannot undo a module's limits.
        let config = crate::events::config_of(E::SUBJECT, &crate::Limits::default());
        let stream = self
            .inner
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| setup(e.to_string()))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: E::SUBJECT.to_owned(),
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| setup(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| setup(e.to_string()))?;
        let payloads = messages.map(|m| m.map(|m| m.payload.clone()).map_err(|e| e.to_string()));
        Ok(EventStream::new(payloads.boxed()))
    }
}

/// Why [`Bus::watch`] could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {subject}: {reason}")]
pub struct WatchSetupError {
    pub subject: &'static str,
    pub reason: String,
}

/// How a connection proves who it is, and how it keeps its replies to
/// itself. All optional: the default is an anonymous connection (a
/// user/password in the URL still works).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// An nkey seed (`SU...`), for a server that knows the user's public key.
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT and seed), for a server run with accounts.
    pub creds_file: Option<std::path::PathBuf>,
    /// Where this connection's replies arrive (`_INBOX_<identity>`; NATS's
    /// default `_INBOX` when `None`), so that the broker can let each
    /// identity read its own replies only.
    pub inbox_prefix: Option<String>,
    /// TLS: the CA that signed the server's certificate (TLS required).
    pub tls_ca: Option<std::path::PathBuf>,
    /// TLS: this client's certificate and key, for servers that verify clients.
    pub tls_client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Credentials {
    /// The credentials of an nkey identity called `identity`.
    pub fn nkey(identity: &str, seed: String) -> Self {
        Self {
            nkey_seed: Some(seed),
            inbox_prefix: Some(crate::permissions::inbox_prefix(identity)),
            ..Self::default()
        }
    }

    async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> std::io::Result<async_nats::ConnectOptions> {
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.clone());
        }
        if let Some(path) = &self.creds_file {
            options = options.credentials_file(path).await?;
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// The servers of a comma-separated URL list (`nats://a:4222,nats://b:4222`).
fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
    let invalid = |source| ConnectError::Url {
        url: url.to_owned(),
        source,
    };
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|one| !one.is_empty())
        .map(|one| one.parse::<async_nats::ServerAddr>().map_err(invalid))
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        let empty = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no server URL");
        return Err(invalid(empty));
    }
    Ok(servers)
}

/// A NATS connection whose end can be awaited.
///
/// `async_nats::Client::drain` only *starts* a drain; the connection is gone
/// when it reports [`async_nats::Event::Closed`]. [`Connection::drain`] waits
/// for that, so the broker is never stopped under a client still flushing.
#[derive(Debug)]
pub struct Connection {
    bus: Bus,
    closed: watch::Receiver<bool>,
}

impl Connection {
    /// Connects to `url`; fails at once (no retry loop) if nothing listens there.
    ///
    /// `url` may list several servers, comma-separated (a cluster's nodes):
    /// the client connects to one of them and moves to another by itself
    /// when that one is lost (it also learns the others from the server).
    pub async fn connect(url: &str, name: &str) -> Result<Self, ConnectError> {
        Self::connect_as(url, name, &Credentials::default()).await
    }

    /// Connects as an identity (see [`Credentials`]); otherwise as
    /// [`Connection::connect`].
    pub async fn connect_as(
        url: &str,
        name: &str,
        credentials: &Credentials,
    ) -> Result<Self, ConnectError> {
        let servers = server_addrs(url)?;
        let (closed_tx, closed) = watch::channel(false);
        let options = credentials
            .apply(async_nats::ConnectOptions::new())
            .await
            .map_err(|source| ConnectError::Credentials {
                url: url.to_owned(),
                source,
            })?;
        let client = options
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let closed_tx = closed_tx.clone();
                async move { log_event(event, &closed_tx) }
            })
            .connect(servers)
            .await
            .map_err(|source| ConnectError::Connect {
                url: url.to_owned(),
                source,
            })?;
        Ok(Self {
            bus: Bus::new(client),
            closed,
        })
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    pub fn client(&self) -> &Client {
        self.bus.client()
    }

    /// Flushes, drains every subscription and waits until the connection is
    /// closed, at most `timeout`.
    pub async fn drain(mut self, timeout: Duration) -> Result<(), DrainError> {
        // All of it under the deadline: with the broker gone, even the flush
        // would wait for a reconnect forever.
        let drained = async {
            // A flush failure means the connection is already gone; the drain
            // below reports that more precisely.
            let _ = self.bus.inner.client.flush().await;
            self.bus.inner.client.drain().await?;
            // The sender lives in the connection's event callback; if it is
            // gone, so is the connection.
            let _ = self.closed.wait_for(|closed| *closed).await;
            Ok::<(), DrainError>(())
        };
        tokio::time::timeout(timeout, drained)
            .await
            .map_err(|_| DrainError::Timeout(timeout))?
    }
}

/// One slow-consumer line a second, for the whole process.
static SLOW_CONSUMER_LOG: crate::log_budget::LogBudget = crate::log_budget::LogBudget::new(1);

fn log_event(event: async_nats::Event, closed: &watch::Sender<bool>) {
    use async_nats::Event::*;
    match event {
        Closed => {
            tracing::debug!("nats connection closed");
            closed.send_replace(true);
        }
        // A full subscription channel drops messages (a request there is
        // answered 503 by the client): never silent, but a flood of them is
        // one line a second.
        SlowConsumer(sid) => {
            if let Some(more) = SLOW_CONSUMER_LOG.take() {
                tracing::warn!(
                    sid,
                    more,
                    "slow consumer: messages were dropped for a subscription (more: since the last line)"
                )
            }
        }
        Disconnected => tracing::warn!("disconnected from nats"),
        Connected => tracing::debug!("connected to nats"),
        Draining => tracing::debug!("nats connection draining"),
        LameDuckMode => tracing::warn!("nats server entered lame duck mode"),
        ServerError(async_nats::ServerError::Other(text)) if crate::refusals::report(&text) => {}
        ServerError(err) => tracing::warn!(%err, "nats server error"),
        ClientError(err) => tracing::warn!(%err, "nats client error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_is_every_server_in_it() {
        let servers = server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,").unwrap();
        let ports: Vec<u16> = servers.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4222, 4223]);
        assert_eq!(server_addrs("localhost").unwrap().len(), 1);
        assert!(matches!(server_addrs(" , "), Err(ConnectError::Url { .. })));
        assert!(matches!(
            server_addrs("nats://a:4222,http://b:1"),
            Err(ConnectError::Url { .. })
        ));
    }
}
