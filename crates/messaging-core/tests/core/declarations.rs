//! Declarations: a module is held to what it declares (serving, listening,
//! requesting, publishing), its consumers are named after its handlers (so a
//! renamed subject keeps its consumer, and two handlers of one event each get
//! every event), and its event handlers say in the type whether a failure is
//! worth a retry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer;
use messaging_core::dead_letter::{DeadLetterKind, DeadLetters};
use messaging_core::{
    Context, Declaration, Endpoint, Event, EventError, Listener, Module, ModuleHandle,
    ModuleOptions, RegisterError, RequestError, Rpc, ServiceError, Storage, EVENTS_STREAM,
};
use serde::{Deserialize, Serialize};
use testkit::{expect_refusal, spawn_broker, TestBroker};
use tokio::sync::watch;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

// ---- Messages ----------------------------------------------------------

/// Served by `peer`; requested by `relay` (declared) and `rogue` (not).
#[derive(Debug, Serialize, Deserialize)]
struct Lookup {
    n: u32,
}
impl Rpc for Lookup {
    const SUBJECT: &'static str = "peer.lookup";
    type Reply = String;
}

/// Served by `relay`: looks `n` up at `peer`, then publishes [`Noted`].
#[derive(Debug, Serialize, Deserialize)]
struct Run {
    n: u32,
}
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Ran {
    looked_up: String,
}
impl Rpc for Run {
    const SUBJECT: &'static str = "relay.run";
    type Reply = Ran;
}

/// Served by `rogue`: publishes [`Noted`], which `rogue` does not declare.
#[derive(Debug, Serialize, Deserialize)]
struct TryPublish {
    n: u32,
}
impl Rpc for TryPublish {
    const SUBJECT: &'static str = "rogue.publish";
    type Reply = ();
}

/// Served by `rogue`: requests [`Lookup`], which `rogue` does not declare.
#[derive(Debug, Serialize, Deserialize)]
struct TryRequest {
    n: u32,
}
impl Rpc for TryRequest {
    const SUBJECT: &'static str = "rogue.request";
    type Reply = String;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Noted {
    n: u32,
    by: String,
}
impl Event for Noted {
    const SUBJECT: &'static str = "events.probe.noted";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tick {
    n: u32,
}
impl Event for Tick {
    const SUBJECT: &'static str = "events.probe.tick";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tock {
    n: u32,
}
impl Event for Tock {
    const SUBJECT: &'static str = "events.probe.tock";
}

/// The same event before and after its subject was renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProbeV1 {
    n: u32,
}
impl Event for ProbeV1 {
    const SUBJECT: &'static str = "events.probe.v1";
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProbeV2 {
    n: u32,
}
impl Event for ProbeV2 {
    const SUBJECT: &'static str = "events.probe.v2";
}

/// Refused for good by its handler when `permanent`, handled otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Verdict {
    n: u32,
    permanent: bool,
}
impl Event for Verdict {
    const SUBJECT: &'static str = "events.probe.verdict";
}

// ---- Declarations ------------------------------------------------------

const PEER: Declaration = Declaration {
    name: "peer",
    description: "answers lookups",
    serves: &[Endpoint {
        subject: Lookup::SUBJECT,
        // Only modules that declare they request it may.
        public: false,
    }],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &[],
    listens: &[],
};

const RELAY: Declaration = Declaration {
    name: "relay",
    description: "declares all it does",
    serves: &[Endpoint {
        subject: Run::SUBJECT,
        public: true,
    }],
    requests: &[Lookup::SUBJECT],
    publishes: &[Noted::SUBJECT],
    schedules: &[],
    buckets: &[],
    listens: &[],
};

/// Serves two endpoints whose handlers go beyond the declaration.
const ROGUE: Declaration = Declaration {
    name: "rogue",
    description: "does more than it declares",
    serves: &[
        Endpoint {
            subject: TryPublish::SUBJECT,
            public: true,
        },
        Endpoint {
            subject: TryRequest::SUBJECT,
            public: true,
        },
    ],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &[],
    listens: &[],
};

const COUNTER: Declaration = Declaration {
    name: "probe",
    description: "counts ticks",
    serves: &[],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &[],
    listens: &[Listener {
        handler: "count",
        subject: Tick::SUBJECT,
    }],
};

/// Version 1 of a module; [`RENAMED_V2`] renames the subject, not the handler.
const RENAMED_V1: Declaration = Declaration {
    name: "probe",
    description: "counts probes",
    serves: &[],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &[],
    listens: &[Listener {
        handler: "count",
        subject: ProbeV1::SUBJECT,
    }],
};

const RENAMED_V2: Declaration = Declaration {
    schedules: &[],
    buckets: &[],
    listens: &[Listener {
        handler: "count",
        subject: ProbeV2::SUBJECT,
    }],
    ..RENAMED_V1
};

const TWO_HANDLERS: Declaration = Declaration {
    name: "probe",
    description: "two handlers of one event",
    serves: &[],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &[],
    listens: &[
        Listener {
            handler: "a",
            subject: Tick::SUBJECT,
        },
        Listener {
            handler: "b",
            subject: Tick::SUBJECT,
        },
    ],
};

const JUDGE: Declaration = Declaration {
    name: "judge",
    description: "refuses some verdicts",
    serves: &[],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &[],
    listens: &[Listener {
        handler: "decide",
        subject: Verdict::SUBJECT,
    }],
};

// ---- Handlers ----------------------------------------------------------

/// What a probe module saw: event numbers per handler, and a signal on each
/// one, so that a test waits for what it expects instead of sleeping.
struct Seen {
    by_handler: Mutex<HashMap<&'static str, Vec<u32>>>,
    changed: watch::Sender<()>,
    calls: AtomicU32,
}

impl Seen {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            by_handler: Mutex::default(),
            changed: watch::Sender::new(()),
            calls: AtomicU32::new(0),
        })
    }

    fn record(&self, handler: &'static str, n: u32) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.by_handler
            .lock()
            .unwrap()
            .entry(handler)
            .or_default()
            .push(n);
        self.changed.send_replace(());
    }

    /// What `handler` saw, in handling order.
    fn of(&self, handler: &str) -> Vec<u32> {
        let seen = self.by_handler.lock().unwrap();
        seen.get(handler).cloned().unwrap_or_default()
    }

    /// Waits until `handler` has seen at least `count` events, at most `WAIT`.
    async fn wait_for(&self, handler: &str, count: usize) {
        let mut changed = self.changed.subscribe();
        tokio::time::timeout(WAIT, changed.wait_for(|_| self.of(handler).len() >= count))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{handler} saw {:?}, expected {count} events",
                    self.of(handler)
                )
            })
            .unwrap();
    }
}

async fn lookup(seen: Arc<Seen>, _: Context, req: Lookup) -> Result<String, ServiceError> {
    seen.record("lookup", req.n);
    Ok(format!("value-{}", req.n))
}

async fn run(_: Arc<()>, ctx: Context, req: Run) -> Result<Ran, ServiceError> {
    let looked_up = ctx.request(&Lookup { n: req.n }).await?;
    let noted = Noted {
        n: req.n,
        by: "relay".into(),
    };
    ctx.publish_fact(&noted, &format!("run/{}/noted", req.n))
        .await?;
    Ok(Ran { looked_up })
}

async fn try_publish(_: Arc<()>, ctx: Context, req: TryPublish) -> Result<(), ServiceError> {
    let noted = Noted {
        n: req.n,
        by: "rogue".into(),
    };
    // Refused before anything is sent; `?` turns it into the error reply.
    ctx.publish_fact(&noted, &format!("rogue/{}/noted", req.n))
        .await?;
    Ok(())
}

async fn try_request(_: Arc<()>, ctx: Context, req: TryRequest) -> Result<String, ServiceError> {
    match ctx.request(&Lookup { n: req.n }).await {
        Err(RequestError::Undeclared { subject, module }) => {
            Ok(format!("refused: {module} may not request {subject}"))
        }
        other => Err(ServiceError::internal(format!(
            "expected an undeclared request, got {other:?}"
        ))),
    }
}

async fn count_tick(seen: Arc<Seen>, _: Context, tick: Tick) -> Result<(), EventError> {
    seen.record("count", tick.n);
    Ok(())
}

async fn count_tick_a(seen: Arc<Seen>, _: Context, tick: Tick) -> Result<(), EventError> {
    seen.record("a", tick.n);
    Ok(())
}

async fn count_tick_b(seen: Arc<Seen>, _: Context, tick: Tick) -> Result<(), EventError> {
    seen.record("b", tick.n);
    Ok(())
}

async fn count_v1(seen: Arc<Seen>, _: Context, probe: ProbeV1) -> Result<(), EventError> {
    seen.record("count", probe.n);
    Ok(())
}

async fn count_v2(seen: Arc<Seen>, _: Context, probe: ProbeV2) -> Result<(), EventError> {
    seen.record("count", probe.n);
    Ok(())
}

async fn decide(seen: Arc<Seen>, _: Context, verdict: Verdict) -> Result<(), EventError> {
    seen.record("decide", verdict.n);
    if verdict.permanent {
        return Err(EventError::permanent("this verdict contradicts the state"));
    }
    Ok(())
}

// ---- Helpers -----------------------------------------------------------

fn memory() -> ModuleOptions {
    ModuleOptions::with_storage(Storage::Memory)
}

async fn start_peer(app: &TestBroker) -> (ModuleHandle, Arc<Seen>) {
    let seen = Seen::new();
    let setup = Module::setup(app.bus().client().clone(), &PEER, "1.0.0", memory())
        .await
        .unwrap();
    let mut module = setup.start(seen.clone()).await.unwrap();
    module.serve(lookup).await.unwrap();
    (module.running(), seen)
}

async fn start_rogue(app: &TestBroker) -> ModuleHandle {
    let setup = Module::setup(app.bus().client().clone(), &ROGUE, "1.0.0", memory())
        .await
        .unwrap();
    let mut module = setup.start(Arc::new(())).await.unwrap();
    module.serve(try_publish).await.unwrap();
    module.serve(try_request).await.unwrap();
    module.running()
}

async fn consumer_info(app: &TestBroker, name: &str) -> Option<consumer::Info> {
    let stream = app
        .bus()
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap();
    stream.consumer_info(name).await.ok()
}

/// The consumer's info once `ready` holds, at most `WAIT`: the server
/// applies acks asynchronously, and says nothing when it has, so this asks
/// again until it shows them.
async fn consumer_info_once(
    app: &TestBroker,
    name: &str,
    ready: impl Fn(&consumer::Info) -> bool,
) -> consumer::Info {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = consumer_info(app, name).await;
        match info {
            Some(info) if ready(&info) => return info,
            _ if tokio::time::Instant::now() >= deadline => {
                panic!("consumer {name} never got ready: {info:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn assert_undeclared(result: Result<(), RegisterError>, module: &str, what: &[&str]) {
    match result {
        Err(err @ RegisterError::Undeclared { .. }) => {
            let message = err.to_string();
            assert!(message.contains(module), "{message}");
            for word in what {
                assert!(message.contains(word), "{message} should name {word}");
            }
        }
        other => panic!("expected RegisterError::Undeclared, got {other:?}"),
    }
}

// ---- Tests -------------------------------------------------------------

#[tokio::test]
async fn undeclared_serving_and_listening_are_refused_at_registration() {
    let app = spawn_broker().await;
    let seen = Seen::new();
    let setup = Module::setup(app.bus().client().clone(), &COUNTER, "1.0.0", memory())
        .await
        .unwrap();
    let mut module = setup.start(seen.clone()).await.unwrap();

    // A subject it does not serve.
    assert_undeclared(module.serve(lookup).await, "probe", &[Lookup::SUBJECT]);
    // A declared subject under another handler name.
    assert_undeclared(
        module.on_event("other", count_tick).await,
        "probe",
        &[Tick::SUBJECT, "\"other\""],
    );
    // The declared handler name on a subject it does not declare.
    let tock = |seen: Arc<Seen>, _: Context, tock: Tock| async move {
        seen.record("count", tock.n);
        Ok::<_, EventError>(())
    };
    assert_undeclared(
        module.on_event("count", tock).await,
        "probe",
        &[Tock::SUBJECT, "\"count\""],
    );
    // What it declares is accepted.
    module.on_event("count", count_tick).await.unwrap();
    let module = module.running();

    // The refusals left nothing behind: no endpoint, no consumer.
    let err = app.bus().request(&Lookup { n: 1 }).await.unwrap_err();
    assert!(matches!(err, RequestError::NoResponders { .. }), "{err:?}");
    assert!(consumer_info(&app, "probe_other").await.is_none());
    assert!(consumer_info(&app, "probe_count").await.is_some());
    assert_eq!(
        module.all_stats().len(),
        1,
        "only the declared handler runs"
    );

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_undeclared_publish_is_refused_and_never_reaches_the_stream() {
    let app = spawn_broker().await;
    let rogue = start_rogue(&app).await;
    let mut noted = app.bus().watch::<Noted>().await.unwrap();

    let err = expect_refusal(app.bus().request(&TryPublish { n: 1 }).await);
    // The publish was refused at the call, and that is a bug of the module,
    // not a passing unavailability: 500, not 503 (nothing to retry).
    assert_eq!((err.status, err.code.as_str()), (500, "internal"), "{err}");
    assert!(
        err.message.contains("rogue") && err.message.contains(Noted::SUBJECT),
        "{}",
        err.message
    );

    // The unrestricted test bus may publish it: the next event the stream
    // holds on that subject is this marker, so the refused one never got there.
    let marker = Noted {
        n: 2,
        by: "test".into(),
    };
    app.bus().publish(&marker, Uuid::new_v4()).await.unwrap();
    assert_eq!(noted.next_within(WAIT).await.unwrap().event, marker);
    let stats = rogue.stats(TryPublish::SUBJECT).unwrap();
    assert_eq!((stats.completed, stats.failed), (1, 1));

    rogue.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_undeclared_request_is_refused_and_never_sent() {
    let app = spawn_broker().await;
    let (peer, looked_up) = start_peer(&app).await;
    let rogue = start_rogue(&app).await;

    let reply = app.bus().request(&TryRequest { n: 1 }).await.unwrap();
    assert_eq!(reply, "refused: rogue may not request peer.lookup");
    assert!(looked_up.of("lookup").is_empty());
    assert_eq!(peer.stats(Lookup::SUBJECT).unwrap().completed, 0);

    // The peer was there all along: the test's own request reaches it, and
    // it is the first and only one (one connection keeps the order, so a
    // request sent by the rogue would have arrived before it).
    assert_eq!(
        app.bus().request(&Lookup { n: 2 }).await.unwrap(),
        "value-2"
    );
    assert_eq!(looked_up.of("lookup"), [2]);
    assert_eq!(peer.stats(Lookup::SUBJECT).unwrap().completed, 1);

    rogue.shutdown().await;
    peer.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn declared_serving_requesting_and_publishing_work() {
    let app = spawn_broker().await;
    let (peer, looked_up) = start_peer(&app).await;
    let setup = Module::setup(app.bus().client().clone(), &RELAY, "1.0.0", memory())
        .await
        .unwrap();
    let mut relay = setup.start(Arc::new(())).await.unwrap();
    relay.serve(run).await.unwrap();
    let relay = relay.running();
    let mut noted = app.bus().watch::<Noted>().await.unwrap();

    let ran = app.bus().request(&Run { n: 7 }).await.unwrap();
    assert_eq!(
        ran,
        Ran {
            looked_up: "value-7".into()
        }
    );
    assert_eq!(looked_up.of("lookup"), [7], "the request reached the peer");
    assert_eq!(
        noted.next_within(WAIT).await.unwrap().event,
        Noted {
            n: 7,
            by: "relay".into()
        },
        "the event reached the stream"
    );

    relay.shutdown().await;
    peer.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_renamed_subject_keeps_the_consumer_of_its_handler() {
    let app = spawn_broker().await;

    // Version 1 handles three events on the old subject.
    let v1_seen = Seen::new();
    let setup = Module::setup(app.bus().client().clone(), &RENAMED_V1, "1.0.0", memory())
        .await
        .unwrap();
    let mut v1 = setup.start(v1_seen.clone()).await.unwrap();
    v1.on_event("count", count_v1).await.unwrap();
    let v1 = v1.running();
    for n in 1..=3 {
        app.bus()
            .publish(&ProbeV1 { n }, Uuid::new_v4())
            .await
            .unwrap();
    }
    v1.handled(ProbeV1::SUBJECT, 3, WAIT).await.unwrap();
    v1_seen.wait_for("count", 3).await;
    v1.shutdown().await;
    let before =
        consumer_info_once(&app, "probe_count", |c| c.ack_floor.stream_sequence == 3).await;
    assert_eq!(before.config.filter_subject, ProbeV1::SUBJECT);

    // Version 2: same module and handler, the subject renamed.
    let v2_seen = Seen::new();
    let setup = Module::setup(app.bus().client().clone(), &RENAMED_V2, "2.0.0", memory())
        .await
        .unwrap();
    let mut v2 = setup.start(v2_seen.clone()).await.unwrap();
    v2.on_event("count", count_v2).await.unwrap();
    let v2 = v2.running();

    let after = consumer_info(&app, "probe_count").await.unwrap();
    assert_eq!(after.name, before.name);
    assert_eq!(after.created, before.created, "the same consumer, updated");
    assert_eq!(after.config.filter_subject, ProbeV2::SUBJECT);
    assert_eq!(
        after.ack_floor.stream_sequence, before.ack_floor.stream_sequence,
        "its position in the stream is kept"
    );

    for n in 10..12 {
        app.bus()
            .publish(&ProbeV2 { n }, Uuid::new_v4())
            .await
            .unwrap();
    }
    let stats = v2.handled(ProbeV2::SUBJECT, 2, WAIT).await.unwrap();
    v2_seen.wait_for("count", 2).await;
    let mut seen = v2_seen.of("count");
    seen.sort_unstable();
    assert_eq!(seen, [10, 11], "the new events only, none of the old ones");
    assert_eq!((stats.completed, stats.failed), (2, 0));
    let end = consumer_info_once(&app, "probe_count", |c| c.ack_floor.stream_sequence == 5).await;
    assert_eq!(end.created, before.created);

    v2.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn two_handlers_of_one_event_in_one_module_each_get_every_event() {
    const N: u32 = 20;
    let app = spawn_broker().await;
    let seen = Seen::new();
    let setup = Module::setup(app.bus().client().clone(), &TWO_HANDLERS, "1.0.0", memory())
        .await
        .unwrap();
    let mut module = setup.start(seen.clone()).await.unwrap();
    module.on_event("a", count_tick_a).await.unwrap();
    module.on_event("b", count_tick_b).await.unwrap();
    let module = module.running();

    for n in 0..N {
        app.bus()
            .publish(&Tick { n }, Uuid::new_v4())
            .await
            .unwrap();
    }
    seen.wait_for("a", N as usize).await;
    seen.wait_for("b", N as usize).await;
    for handler in ["a", "b"] {
        let mut numbers = seen.of(handler);
        numbers.sort_unstable();
        assert_eq!(
            numbers,
            (0..N).collect::<Vec<_>>(),
            "{handler} saw every event once"
        );
        let info = consumer_info(&app, &format!("probe_{handler}"))
            .await
            .unwrap_or_else(|| panic!("no consumer probe_{handler}"));
        assert_eq!(info.config.filter_subject, Tick::SUBJECT);
    }
    // Both handlers have counters, but under the same subject and no handler
    // name: `stats`/`wait_until`/`handled` look a handler up by subject and
    // reach only `a`, hence the tally per handler in `Seen` above.
    let ticks = module
        .all_stats()
        .into_iter()
        .filter(|s| s.subject == Tick::SUBJECT)
        .count();
    assert_eq!(ticks, 2);

    module.shutdown().await;
    app.shutdown().await;
}

/// The transient half (retried, then handled, never dead-lettered) is
/// `durability::a_handler_that_fails_twice_then_succeeds_is_processed_once`.
#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_at_its_first_delivery() {
    let app = spawn_broker().await;
    let seen = Seen::new();
    // Durable, so that the test can read the dead letters.
    let options = ModuleOptions::with_storage(Storage::Durable);
    let setup = Module::setup(app.bus().client().clone(), &JUDGE, "1.0.0", options)
        .await
        .unwrap();
    let mut module = setup.start(seen.clone()).await.unwrap();
    module.on_event("decide", decide).await.unwrap();
    let module = module.running();

    app.bus()
        .publish(
            &Verdict {
                n: 1,
                permanent: true,
            },
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    let stats = module
        .wait_until(Verdict::SUBJECT, WAIT, |s| {
            s.dead_lettered == 1 && s.completed == 1
        })
        .await
        .expect("dead-lettered");
    assert_eq!((stats.retried, stats.failed), (0, 1));

    let letters = DeadLetters::open(app.bus().client(), Storage::Durable)
        .await
        .unwrap()
        .list()
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.kind, DeadLetterKind::Poisoned);
    assert_eq!(letter.deliveries, 1);
    assert_eq!(letter.consumer, "judge_decide");
    assert!(
        letter.reason.contains("this verdict contradicts the state"),
        "{}",
        letter.reason
    );

    // The next event flows on, and the refused one never came again.
    app.bus()
        .publish(
            &Verdict {
                n: 2,
                permanent: false,
            },
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    let stats = module.handled(Verdict::SUBJECT, 2, WAIT).await.unwrap();
    assert_eq!(
        (
            stats.completed,
            stats.failed,
            stats.retried,
            stats.dead_lettered
        ),
        (2, 1, 0, 1)
    );
    assert_eq!(seen.of("decide"), [1, 2]);

    module.shutdown().await;
    app.shutdown().await;
}
