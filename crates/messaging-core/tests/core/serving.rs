//! Serving modules: typed request/reply, structured errors, concurrency,
//! events, discovery and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use messaging_core::{
    Context, Declaration, Endpoint, Event, EventError, Listener, Module, ModuleOptions,
    RequestError, Rpc, ServiceError, Storage,
};
use serde::{Deserialize, Serialize};
use testkit::{expect_refusal, spawn_broker};
use tokio::sync::{mpsc, Barrier, Semaphore};

const WAIT: Duration = Duration::from_secs(10);

/// Exactly what the probe serves, publishes and listens to.
const PROBE: Declaration = Declaration {
    name: "probe",
    description: "test module",
    serves: &[
        Endpoint {
            subject: Echo::SUBJECT,
            public: true,
        },
        Endpoint {
            subject: Rendezvous::SUBJECT,
            public: true,
        },
        Endpoint {
            subject: Gated::SUBJECT,
            public: true,
        },
    ],
    requests: &[],
    publishes: &[Tock::SUBJECT],
    schedules: &[],
    buckets: &[],
    listens: &[Listener {
        handler: "on_tick",
        subject: Tick::SUBJECT,
    }],
};

/// Echoes its text; refuses `"fail"` with a 409; panics on `"panic"`.
#[derive(Debug, Serialize, Deserialize)]
struct Echo {
    text: String,
}
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Echoed {
    text: String,
}
impl Rpc for Echo {
    const SUBJECT: &'static str = "probe.echo";
    type Reply = Echoed;
}

/// Waits at the shared barrier before replying: it can only complete when
/// `n` handlers run at the same time.
#[derive(Debug, Serialize, Deserialize)]
struct Rendezvous {}
impl Rpc for Rendezvous {
    const SUBJECT: &'static str = "probe.rendezvous";
    type Reply = ();
}

/// Tells the test it started, then waits for the test's permission.
#[derive(Debug, Serialize, Deserialize)]
struct Gated {}
impl Rpc for Gated {
    const SUBJECT: &'static str = "probe.gated";
    type Reply = String;
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
    by: String,
}
impl Event for Tock {
    const SUBJECT: &'static str = "events.probe.tock";
}

struct Probe {
    barrier: Barrier,
    started: mpsc::UnboundedSender<()>,
    gate: Semaphore,
    name: String,
}

impl Probe {
    fn new(rendezvous: usize, name: &str) -> (Arc<Self>, mpsc::UnboundedReceiver<()>) {
        let (started, started_rx) = mpsc::unbounded_channel();
        let probe = Probe {
            barrier: Barrier::new(rendezvous),
            started,
            gate: Semaphore::new(0),
            name: name.to_owned(),
        };
        (Arc::new(probe), started_rx)
    }
}

async fn echo(_: Arc<Probe>, _: Context, req: Echo) -> Result<Echoed, ServiceError> {
    match req.text.as_str() {
        "fail" => Err(ServiceError::conflict("echo_refused", "fail was asked for")),
        "panic" => panic!("asked to panic"),
        _ => Ok(Echoed { text: req.text }),
    }
}

async fn rendezvous(probe: Arc<Probe>, _: Context, _: Rendezvous) -> Result<(), ServiceError> {
    tokio::time::timeout(WAIT, probe.barrier.wait())
        .await
        .map_err(|_| ServiceError::internal("not everyone arrived: handlers are not concurrent"))?;
    Ok(())
}

async fn gated(probe: Arc<Probe>, _: Context, _: Gated) -> Result<String, ServiceError> {
    probe.started.send(()).ok();
    let _permit = probe.gate.acquire().await.expect("gate open");
    Ok("finished".to_owned())
}

async fn on_tick(probe: Arc<Probe>, ctx: Context, tick: Tick) -> Result<(), EventError> {
    tokio::time::timeout(WAIT, probe.barrier.wait())
        .await
        .map_err(|_| EventError::transient("event handlers are not concurrent"))?;
    let tock = Tock {
        n: tick.n,
        by: probe.name.clone(),
    };
    // One fact per tick and instance: every tock is a distinct event, so a
    // tick handled twice would show as two tocks.
    ctx.publish_fact(&tock, &format!("tick/{}/tock/{}", tick.n, probe.name))
        .await?;
    Ok(())
}

async fn start_probe(
    client: &async_nats::Client,
    probe: Arc<Probe>,
) -> messaging_core::ModuleHandle {
    let options = ModuleOptions::with_storage(Storage::Memory);
    let setup = Module::setup(client.clone(), &PROBE, "1.2.3", options)
        .await
        .expect("setup");
    let mut module = setup.start(probe).await.expect("start");
    module.serve(echo).await.unwrap();
    module.serve(rendezvous).await.unwrap();
    module.serve(gated).await.unwrap();
    module.on_event("on_tick", on_tick).await.unwrap();
    module.running()
}

#[tokio::test]
async fn typed_requests_round_trip_and_errors_arrive_structured() {
    let app = spawn_broker().await;
    let (probe, _) = Probe::new(1, "a");
    let module = start_probe(app.bus().client(), probe).await;

    let reply = app
        .bus()
        .request(&Echo { text: "hi".into() })
        .await
        .unwrap();
    assert_eq!(reply, Echoed { text: "hi".into() });

    let err = expect_refusal(
        app.bus()
            .request(&Echo {
                text: "fail".into(),
            })
            .await,
    );
    assert_eq!((err.status, err.code.as_str()), (409, "echo_refused"));
    assert_eq!(err.message, "fail was asked for");

    // A panicking handler still answers.
    let err = expect_refusal(
        app.bus()
            .request(&Echo {
                text: "panic".into(),
            })
            .await,
    );
    assert_eq!((err.status, err.code.as_str()), (500, "internal"));

    let stats = module.stats(Echo::SUBJECT).unwrap();
    assert_eq!((stats.completed, stats.failed, stats.in_flight), (3, 2, 0));

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_payloads_get_a_bad_request_naming_the_problem() {
    let app = spawn_broker().await;
    let (probe, _) = Probe::new(1, "a");
    let module = start_probe(app.bus().client(), probe).await;

    let cases = [
        ("{not json", "key must be a string"),
        ("not json", "expected a JSON object"),
        (r#"["positional"]"#, "expected a JSON object"),
        ("", "empty payload"),
        (
            r#"{"text": 42}"#,
            "invalid type: integer `42`, expected a string",
        ),
        (r#"{"other": "x"}"#, "missing field `text`"),
    ];
    for (payload, problem) in cases {
        let err = app
            .request_raw(Echo::SUBJECT, payload)
            .await
            .expect_err("malformed input is refused");
        assert_eq!(
            (err.status, err.code.as_str()),
            (400, "bad_request"),
            "{payload}"
        );
        assert!(err.message.contains(problem), "{payload}: {}", err.message);
    }
    // Unknown fields are ignored: contracts can grow.
    let ok = app
        .request_raw(Echo::SUBJECT, r#"{"text":"x","extra":1}"#)
        .await
        .expect("extra fields accepted");
    assert_eq!(&ok[..], br#"{"text":"x"}"#);

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn nobody_serving_is_told_apart_from_a_timeout() {
    let app = spawn_broker().await;
    let err = app
        .bus()
        .request(&Echo { text: "x".into() })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RequestError::NoResponders {
                subject: "probe.echo"
            }
        ),
        "{err:?}"
    );

    // A subscriber that never answers: a timeout, not no-responders.
    let _silent = app.bus().client().subscribe(Echo::SUBJECT).await.unwrap();
    app.bus().client().flush().await.unwrap();
    let impatient = app
        .bus()
        .clone()
        .with_request_timeout(Duration::from_millis(200));
    let err = impatient
        .request(&Echo { text: "x".into() })
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout { .. }), "{err:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn fifty_slow_requests_on_one_endpoint_run_at_once() {
    let app = spawn_broker().await;
    let (probe, _) = Probe::new(50, "a");
    let module = start_probe(app.bus().client(), probe).await;

    // Each handler waits until all 50 are running: with serial handling this
    // could not complete, whatever the timing.
    let requests = (0..50).map(|_| app.bus().request(&Rendezvous {}));
    let replies = futures::future::join_all(requests).await;
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");

    let stats = module.stats(Rendezvous::SUBJECT).unwrap();
    assert_eq!(stats.peak_in_flight, 50);
    assert_eq!((stats.completed, stats.failed), (50, 0));

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn event_handlers_run_concurrently_and_instances_share_the_work() {
    let app = spawn_broker().await;
    // Two instances of the module, each on its own connection, as two
    // processes would be: the queue group gives each event to one of them.
    let other = app.connect("instance-b").await;
    let (probe_a, _) = Probe::new(1, "a");
    let (probe_b, _) = Probe::new(1, "b");
    let a = start_probe(app.bus().client(), probe_a).await;
    let b = start_probe(other.bus().client(), probe_b).await;
    let mut tocks = app.bus().watch::<Tock>().await.unwrap();

    for n in 0..20 {
        app.bus()
            .publish(&Tick { n }, uuid::Uuid::new_v4())
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(tocks.next_within(WAIT).await.unwrap().event);
    }
    let mut numbers: Vec<u32> = seen.iter().map(|t| t.n).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..20).collect::<Vec<_>>(),
        "each event handled exactly once"
    );
    let handled_a = a.stats(Tick::SUBJECT).unwrap().completed;
    let handled_b = b.stats(Tick::SUBJECT).unwrap().completed;
    assert_eq!(handled_a + handled_b, 20);

    a.shutdown().await;
    b.shutdown().await;
    other.drain(WAIT).await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn fifty_events_are_handled_at_once() {
    let app = spawn_broker().await;
    let (probe, _) = Probe::new(50, "a");
    let module = start_probe(app.bus().client(), probe).await;
    let mut tocks = app.bus().watch::<Tock>().await.unwrap();
    for n in 0..50 {
        app.bus()
            .publish(&Tick { n }, uuid::Uuid::new_v4())
            .await
            .unwrap();
    }
    for _ in 0..50 {
        tocks
            .next_within(WAIT)
            .await
            .expect("every handler passed the rendezvous");
    }
    let stats = module.stats(Tick::SUBJECT).unwrap();
    assert_eq!(
        (stats.peak_in_flight, stats.completed, stats.failed),
        (50, 50, 0)
    );
    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn discovery_answers_ping_info_and_stats() {
    let app = spawn_broker().await;
    let (probe, _) = Probe::new(1, "a");
    let module = start_probe(app.bus().client(), probe).await;
    app.bus().request(&Echo { text: "x".into() }).await.unwrap();

    let client = app.bus().client();
    let ping = client.request("$SRV.PING.probe", "".into()).await.unwrap();
    let ping: serde_json::Value = serde_json::from_slice(&ping.payload).unwrap();
    assert_eq!(
        (ping["name"].as_str(), ping["version"].as_str()),
        (Some("probe"), Some("1.2.3"))
    );

    let info = client.request("$SRV.INFO.probe", "".into()).await.unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    let mut subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    subjects.sort_unstable();
    assert_eq!(subjects, ["probe.echo", "probe.gated", "probe.rendezvous"]);

    let stats = client.request("$SRV.STATS.probe", "".into()).await.unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    let echo = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["subject"] == "probe.echo")
        .unwrap();
    assert_eq!(echo["num_requests"], 1);

    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_intake_and_finishes_work_in_flight() {
    let app = spawn_broker().await;
    let (probe, mut started) = Probe::new(1, "a");
    let module = start_probe(app.bus().client(), probe.clone()).await;

    let bus = app.bus().clone();
    let in_flight = tokio::spawn(async move { bus.request(&Gated {}).await });
    tokio::time::timeout(WAIT, started.recv())
        .await
        .unwrap()
        .unwrap();

    let shutdown = tokio::spawn(module.shutdown());
    // Intake stops: new requests find nobody. Until the server has seen the
    // unsubscribe they are still answered, and one that crosses the
    // unsubscribe on the wire is lost by core NATS (a timeout): the one
    // at-most-once window of request/reply, documented in the module docs.
    let deadline = tokio::time::Instant::now() + WAIT;
    let impatient = app
        .bus()
        .clone()
        .with_request_timeout(Duration::from_millis(500));
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "intake never stopped"
        );
        match impatient
            .request(&Echo {
                text: "late".into(),
            })
            .await
        {
            Err(RequestError::NoResponders { .. }) => break,
            Ok(_) | Err(RequestError::Timeout { .. }) => continue,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the handler in flight"
    );

    probe.gate.add_permits(1);
    let reply = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reply.unwrap(),
        "finished",
        "the request in flight got its reply"
    );
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    app.shutdown().await;
}
