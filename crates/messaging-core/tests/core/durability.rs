//! Durable events: retries, dead letters, slow handlers, duplicates,
//! restarts of a consumer, and idempotency keys on requests.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use messaging_core::dead_letter::{DeadLetterKind, DeadLetters};
use messaging_core::{
    ConsumerOptions, Context, Declaration, Endpoint, Event, EventError, EventMeta, Listener,
    Module, ModuleHandle, ModuleOptions, Rpc, ServiceError, Storage, IDEMPOTENCY_KEY,
};
use serde::{Deserialize, Serialize};
use testkit::{spawn_broker, TestBroker};
use tokio::sync::Semaphore;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// Exactly what the worker serves, publishes and listens to.
const WORKER: Declaration = Declaration {
    name: "worker",
    description: "test worker",
    serves: &[Endpoint {
        subject: Take::SUBJECT,
        public: true,
    }],
    requests: &[],
    publishes: &[Done::SUBJECT],
    schedules: &[],
    buckets: &[],
    listens: &[Listener {
        handler: "on_job",
        subject: Job::SUBJECT,
    }],
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    n: u32,
}
impl Event for Job {
    const SUBJECT: &'static str = "events.probe.job";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Done {
    n: u32,
}
impl Event for Done {
    const SUBJECT: &'static str = "events.probe.done";
}

#[derive(Debug, Serialize, Deserialize)]
struct Take {
    what: String,
}
impl Rpc for Take {
    const SUBJECT: &'static str = "worker.take";
    type Reply = Taken;
}
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Taken {
    id: Uuid,
    what: String,
}

/// A worker whose failures the test controls.
struct Worker {
    /// Fail (transiently) this many more times before succeeding.
    failures_left: AtomicU32,
    /// Fail (transiently) every time while set.
    broken: AtomicBool,
    /// How long a job takes.
    slow_ms: AtomicU32,
    jobs_started: AtomicU32,
    takes_started: AtomicU32,
    /// `take` waits for a permit when `gate_takes` is set.
    gate_takes: AtomicBool,
    gate: Semaphore,
}

impl Default for Worker {
    fn default() -> Self {
        Self {
            failures_left: AtomicU32::new(0),
            broken: AtomicBool::new(false),
            slow_ms: AtomicU32::new(0),
            jobs_started: AtomicU32::new(0),
            takes_started: AtomicU32::new(0),
            gate_takes: AtomicBool::new(false),
            gate: Semaphore::new(0),
        }
    }
}

async fn on_job(worker: Arc<Worker>, ctx: Context, job: Job) -> Result<(), EventError> {
    worker.jobs_started.fetch_add(1, Ordering::SeqCst);
    if worker.broken.load(Ordering::SeqCst) {
        return Err(EventError::transient("the worker is broken"));
    }
    let left = worker.failures_left.load(Ordering::SeqCst);
    if left > 0 {
        worker.failures_left.store(left - 1, Ordering::SeqCst);
        return Err(EventError::transient("flaky dependency"));
    }
    let slow = worker.slow_ms.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(slow.into())).await;
    // Every test uses each job number once, so the fact is distinct per job.
    ctx.publish_fact(&Done { n: job.n }, &format!("job/{}/done", job.n))
        .await?;
    Ok(())
}

async fn take(worker: Arc<Worker>, ctx: Context, request: Take) -> Result<Taken, ServiceError> {
    worker.takes_started.fetch_add(1, Ordering::SeqCst);
    if worker.gate_takes.load(Ordering::SeqCst) {
        let _permit = worker.gate.acquire().await.expect("gate open");
    }
    Ok(Taken {
        id: ctx.derive_id("take"),
        what: request.what,
    })
}

async fn start(app: &TestBroker, worker: Arc<Worker>, options: ConsumerOptions) -> ModuleHandle {
    let options = ModuleOptions {
        consumer: options,
        ..ModuleOptions::with_storage(Storage::Durable)
    };
    let setup = Module::setup(app.bus().client().clone(), &WORKER, "0.1.0", options)
        .await
        .unwrap();
    let mut module = setup.start(worker).await.unwrap();
    module.serve(take).await.unwrap();
    module.on_event("on_job", on_job).await.unwrap();
    module.running()
}

fn quick_retries() -> ConsumerOptions {
    ConsumerOptions {
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..ConsumerOptions::default()
    }
}

async fn publish_job(app: &TestBroker, n: u32) {
    app.bus().publish(&Job { n }, Uuid::new_v4()).await.unwrap();
}

#[tokio::test]
async fn a_handler_that_fails_twice_then_succeeds_is_processed_once() {
    let app = spawn_broker().await;
    let worker = Arc::new(Worker::default());
    worker.failures_left.store(2, Ordering::SeqCst);
    let module = start(&app, worker.clone(), quick_retries()).await;
    let mut done = app.bus().watch::<Done>().await.unwrap();

    publish_job(&app, 7).await;
    assert_eq!(done.next_within(WAIT).await.unwrap().event, Done { n: 7 });
    let stats = module.handled(Job::SUBJECT, 3, WAIT).await.unwrap();
    assert_eq!(
        (stats.completed, stats.retried, stats.dead_lettered),
        (3, 2, 0)
    );
    assert_eq!(worker.jobs_started.load(Ordering::SeqCst), 3);

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn events_that_exhaust_their_deliveries_are_dead_lettered_and_can_be_retried() {
    let app = spawn_broker().await;
    let worker = Arc::new(Worker::default());
    worker.broken.store(true, Ordering::SeqCst);
    let options = ConsumerOptions {
        max_deliver: 3,
        ..quick_retries()
    };
    let module = start(&app, worker.clone(), options).await;
    let mut done = app.bus().watch::<Done>().await.unwrap();

    publish_job(&app, 1).await;
    let stats = module
        .wait_until(Job::SUBJECT, WAIT, |s| s.dead_lettered == 1)
        .await
        .expect("the max-deliveries advisory is recorded");
    assert_eq!(stats.completed, 3, "delivered max_deliver times, no more");

    let letters = DeadLetters::open(app.bus().client(), Storage::Durable)
        .await
        .unwrap();
    let listed = letters.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let letter = &listed[0];
    assert_eq!(letter.kind, DeadLetterKind::MaxDeliveries);
    assert_eq!(letter.subject, Job::SUBJECT);
    assert_eq!(letter.consumer, "worker_on_job", "<module>_<handler>");
    assert_eq!(letter.deliveries, 3);
    assert!(
        letter.reason.contains("the worker is broken"),
        "{}",
        letter.reason
    );

    // The operator fixes the cause, then retries.
    worker.broken.store(false, Ordering::SeqCst);
    letters.retry(&letter.id).await.unwrap();
    assert_eq!(done.next_within(WAIT).await.unwrap().event, Done { n: 1 });
    assert!(letters.list().await.unwrap().is_empty());

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_undecodable_event_is_poisoned_and_the_rest_flow_on() {
    let app = spawn_broker().await;
    let worker = Arc::new(Worker::default());
    let module = start(&app, worker.clone(), quick_retries()).await;
    let mut done = app.bus().watch::<Done>().await.unwrap();

    app.bus()
        .jetstream()
        .publish(Job::SUBJECT, "{\"n\": \"not a number\"}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish_job(&app, 2).await;
    assert_eq!(done.next_within(WAIT).await.unwrap().event, Done { n: 2 });
    let stats = module
        .wait_until(Job::SUBJECT, WAIT, |s| s.dead_lettered == 1)
        .await
        .unwrap();
    assert_eq!(
        (stats.completed, stats.retried),
        (2, 0),
        "poison is not retried"
    );

    let listed = DeadLetters::open(app.bus().client(), Storage::Durable)
        .await
        .unwrap()
        .list()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].kind, DeadLetterKind::Poisoned);
    assert_eq!(listed[0].deliveries, 1);
    assert!(
        listed[0].reason.contains("undecodable"),
        "{}",
        listed[0].reason
    );
    assert_eq!(
        worker.jobs_started.load(Ordering::SeqCst),
        1,
        "the handler never saw it"
    );

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_handler_slower_than_the_ack_wait_is_not_redelivered_under_it() {
    let app = spawn_broker().await;
    let worker = Arc::new(Worker::default());
    worker.slow_ms.store(2_500, Ordering::SeqCst);
    let options = ConsumerOptions {
        ack_wait: Duration::from_secs(1),
        ..quick_retries()
    };
    let module = start(&app, worker.clone(), options).await;
    let mut done = app.bus().watch::<Done>().await.unwrap();

    publish_job(&app, 3).await;
    assert_eq!(done.next_within(WAIT).await.unwrap().event, Done { n: 3 });
    // A redelivery would have come after 1 s, while the handler still ran.
    assert_eq!(worker.jobs_started.load(Ordering::SeqCst), 1);
    let stats = module.handled(Job::SUBJECT, 1, WAIT).await.unwrap();
    assert_eq!((stats.completed, stats.peak_in_flight), (1, 1));

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_republished_event_is_flagged_duplicate_and_stored_once() {
    let app = spawn_broker().await;
    let worker = Arc::new(Worker::default());
    let module = start(&app, worker.clone(), quick_retries()).await;
    let mut jobs = app.bus().watch::<Job>().await.unwrap();

    let meta = EventMeta {
        event_id: Uuid::new_v4(),
        correlation_id: Uuid::new_v4(),
    };
    let first = app.bus().publish_as(&Job { n: 4 }, meta).await.unwrap();
    let again = app.bus().publish_as(&Job { n: 4 }, meta).await.unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(
        again.sequence, first.sequence,
        "the stream points at the original"
    );
    publish_job(&app, 5).await;

    // The stream holds 4 once, then 5.
    assert_eq!(jobs.next_within(WAIT).await.unwrap().event, Job { n: 4 });
    assert_eq!(jobs.next_within(WAIT).await.unwrap().event, Job { n: 5 });
    module.handled(Job::SUBJECT, 2, WAIT).await.unwrap();
    assert_eq!(worker.jobs_started.load(Ordering::SeqCst), 2);

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn events_published_while_a_module_is_down_are_handled_when_it_returns() {
    let app = spawn_broker().await;
    let worker = Arc::new(Worker::default());
    let module = start(&app, worker.clone(), quick_retries()).await;
    module.shutdown().await;

    let mut done = app.bus().watch::<Done>().await.unwrap();
    for n in 10..15 {
        publish_job(&app, n).await;
    }
    let module = start(&app, worker.clone(), quick_retries()).await;
    let mut seen: Vec<u32> = Vec::new();
    for _ in 10..15 {
        seen.push(done.next_within(WAIT).await.unwrap().event.n);
    }
    seen.sort_unstable();
    assert_eq!(seen, [10, 11, 12, 13, 14]);

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_reply() {
    let app = spawn_broker().await;
    let worker = Arc::new(Worker::default());
    worker.gate_takes.store(true, Ordering::SeqCst);
    let module = start(&app, worker.clone(), quick_retries()).await;
    let client = app.bus().client().clone();

    let send_payload = |key: &'static str, payload: &'static str| {
        let client = client.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(IDEMPOTENCY_KEY, key);
            let reply = client
                .request_with_headers(Take::SUBJECT, headers, payload.into())
                .await
                .unwrap();
            match reply.headers.as_ref().and_then(ServiceError::from_headers) {
                Some(err) => Err(err),
                None => Ok(serde_json::from_slice::<Taken>(&reply.payload).unwrap()),
            }
        }
    };

    let send = |key: &'static str| send_payload(key, r#"{"what":"thing"}"#);

    // The first attempt is still running when the retry arrives.
    let first = tokio::spawn(send("key-1"));
    module
        .wait_until(Take::SUBJECT, WAIT, |s| s.in_flight == 1)
        .await
        .unwrap();
    let busy = send("key-1").await.unwrap_err();
    assert_eq!(
        (busy.status, busy.code.as_str()),
        (409, "request_in_progress")
    );

    worker.gate.add_permits(10);
    let first = first.await.unwrap().unwrap();
    let replayed = send("key-1").await.unwrap();
    assert_eq!(replayed, first, "same reply, same id");
    assert_eq!(
        worker.takes_started.load(Ordering::SeqCst),
        1,
        "handled once"
    );

    let other = send("key-2").await.unwrap();
    assert_ne!(other.id, first.id);
    assert_eq!(worker.takes_started.load(Ordering::SeqCst), 2);

    // The same key for another request is refused, not replayed.
    let reused = send_payload("key-1", r#"{"what":"else"}"#)
        .await
        .unwrap_err();
    assert_eq!(
        (reused.status, reused.code.as_str()),
        (422, "idempotency_key_reused")
    );
    // A malformed request does not use up its key: the corrected one runs.
    let malformed = send_payload("key-3", r#"{"what": 1}"#).await.unwrap_err();
    assert_eq!(malformed.status, 400);
    let corrected = send_payload("key-3", r#"{"what":"fixed"}"#).await.unwrap();
    assert_eq!(corrected.what, "fixed");

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn two_writers_on_one_bucket_lose_no_update() {
    use messaging_core::store::{Change, StoreError, Table};
    let app = spawn_broker().await;
    // Two tables on the same bucket: two writers as two processes would be
    // (separate local locks and caches), racing with compare-and-set only.
    let a: Table<u32> = Table::open(
        app.bus().client(),
        Storage::Durable,
        "counter",
        None,
        &bytes(1 << 20),
    )
    .await
    .unwrap();
    let b: Table<u32> = Table::open(
        app.bus().client(),
        Storage::Durable,
        "counter",
        None,
        &bytes(1 << 20),
    )
    .await
    .unwrap();
    let bump = |table: Table<u32>| async move {
        for _ in 0..40 {
            table
                .modify::<(), StoreError>("n", |n| {
                    Ok(Change::Write(n.copied().unwrap_or(0) + 1, ()))
                })
                .await
                .unwrap();
        }
    };
    tokio::join!(bump(a.clone()), bump(b.clone()), bump(a.clone()), bump(b));
    assert_eq!(a.get("n").await.unwrap().unwrap().value, 160);
    app.shutdown().await;
}

/// The default limits with buckets of at most `max_bytes`.
fn bytes(max_bytes: i64) -> messaging_core::Limits {
    messaging_core::Limits {
        bucket_max_bytes: max_bytes,
        ..messaging_core::Limits::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Filler {
    pad: String,
}
impl Event for Filler {
    const SUBJECT: &'static str = "events.filler.added";
}

/// Publishes `Filler`, nothing else.
const FILLING: Declaration = Declaration {
    name: "filling",
    description: "fills the event stream",
    serves: &[],
    requests: &[],
    publishes: &[Filler::SUBJECT],
    schedules: &[],
    buckets: &[],
    listens: &[],
};

/// An event the stream refuses (here: full) goes on the wire once and its
/// publisher is told: only an event that another publisher is storing at
/// that moment is asked about again, and only a stream found deleted is
/// set up again (by a module's bus) before one more try.
#[tokio::test]
async fn an_event_the_full_stream_refuses_is_sent_once_and_reported() {
    use futures::{FutureExt, StreamExt};
    use messaging_core::PublishError;
    let app = spawn_broker().await;
    let client = app.bus().client().clone();
    let limits = messaging_core::Limits {
        events_max_bytes: 4_096,
        ..messaging_core::Limits::default()
    };
    messaging_core::ensure_stream(&client, &limits)
        .await
        .unwrap();
    let bus = messaging_core::Bus::new(client.clone()).bound_to(&FILLING, limits);
    let filler = Filler {
        pad: "x".repeat(500),
    };
    let mut stored = 0;
    loop {
        match bus.publish(&filler, Uuid::new_v4()).await {
            Ok(_) => stored += 1,
            Err(PublishError::Stream { .. }) => break,
            Err(other) => panic!("{other}"),
        }
        assert!(stored < 100, "a 4 KiB stream took {stored} events");
    }

    let mut wire = client.subscribe(Filler::SUBJECT).await.unwrap();
    client.flush().await.unwrap();
    let refused = bus.publish(&filler, Uuid::new_v4()).await;
    assert!(
        matches!(refused, Err(PublishError::Stream { .. })),
        "{refused:?}"
    );
    // What the server sent this connection before answering the flush has
    // arrived by the time the flush returns.
    client.flush().await.unwrap();
    let mut sent = 0;
    while let Some(Some(_)) = wire.next().now_or_never() {
        sent += 1;
    }
    assert_eq!(sent, 1, "the refused event went out {sent} times");
    app.shutdown().await;
}

/// A module's bus that finds the event stream deleted (an operator, a lost
/// store) sets it up again and stores the event: no 503 until a restart.
#[tokio::test]
async fn a_module_bus_sets_up_a_deleted_event_stream_again_and_stores_the_event() {
    let app = spawn_broker().await;
    let client = app.bus().client().clone();
    let limits = messaging_core::Limits::default();
    messaging_core::ensure_stream(&client, &limits)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.delete_stream(messaging_core::EVENTS_STREAM)
        .await
        .unwrap();

    let bus = messaging_core::Bus::new(client.clone()).bound_to(&FILLING, limits);
    let filler = Filler { pad: "x".into() };
    let meta = EventMeta {
        event_id: Uuid::new_v4(),
        correlation_id: Uuid::new_v4(),
    };
    let published = bus.publish_as(&filler, meta).await.unwrap();
    assert_eq!(published.sequence, 1, "the first event of a new stream");
    let mut stream = js.get_stream(messaging_core::EVENTS_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    app.shutdown().await;
}

/// A watcher sees the events stored from its start on, not the history
/// before it.
#[tokio::test]
async fn a_watch_sees_the_events_stored_after_it_starts_not_before() {
    let app = spawn_broker().await;
    let client = app.bus().client().clone();
    messaging_core::ensure_stream(&client, &messaging_core::Limits::default())
        .await
        .unwrap();
    let bus = messaging_core::Bus::new(client);
    let event = |pad: &str| Filler { pad: pad.into() };
    bus.publish(&event("before"), Uuid::new_v4()).await.unwrap();
    let mut watch = bus.watch::<Filler>().await.unwrap();
    bus.publish(&event("after"), Uuid::new_v4()).await.unwrap();
    let first = watch.next_within(WAIT).await.unwrap();
    assert_eq!(first.event.pad, "after");
    app.shutdown().await;
}
