//! Event consumers: the durable consumer is created as the options say, no
//! more events are handled at once than a module allows, a consumer or
//! stream deleted under a module is made again, and the server's word that
//! it gave up on an event is recorded as a dead letter.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use messaging_core::{
    ConsumerOptions, Context, Declaration, Event, EventError, Listener, Module, ModuleHandle,
    ModuleOptions, Storage, EVENTS_STREAM,
};
use serde::{Deserialize, Serialize};
use testkit::{spawn_broker, TestBroker};
use tokio::sync::{mpsc, Semaphore};

const WAIT: Duration = Duration::from_secs(10);

const LISTENER: Declaration = Declaration {
    name: "listener",
    description: "handles pings, as many at once as allowed",
    serves: &[],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &[],
    listens: &[Listener {
        handler: "on_ping",
        subject: Ping::SUBJECT,
    }],
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping {
    n: u32,
}
impl Event for Ping {
    const SUBJECT: &'static str = "events.probe.ping";
}

struct Pings {
    /// Each ping waits for a permit from the test...
    gate: Semaphore,
    /// ...then says it was handled.
    handled: mpsc::UnboundedSender<u32>,
}

async fn on_ping(pings: Arc<Pings>, _: Context, ping: Ping) -> Result<(), EventError> {
    let permit = pings.gate.acquire().await.expect("gate open");
    permit.forget();
    pings.handled.send(ping.n).ok();
    Ok(())
}

/// The listener module, its handlers let through `permits` at first.
async fn start(
    app: &TestBroker,
    options: ModuleOptions,
    permits: usize,
) -> (ModuleHandle, Arc<Pings>, mpsc::UnboundedReceiver<u32>) {
    let (handled, handled_rx) = mpsc::unbounded_channel();
    let pings = Arc::new(Pings {
        gate: Semaphore::new(permits),
        handled,
    });
    let setup = Module::setup(app.bus().client().clone(), &LISTENER, "0.1.0", options)
        .await
        .unwrap();
    let mut module = setup.start(pings.clone()).await.unwrap();
    module.on_event("on_ping", on_ping).await.unwrap();
    (module.running(), pings, handled_rx)
}

/// Waits until ping `n` is handled (others may be handled meanwhile).
async fn until_handled(handled: &mut mpsc::UnboundedReceiver<u32>, n: u32) {
    tokio::time::timeout(WAIT, async { while handled.recv().await != Some(n) {} })
        .await
        .unwrap_or_else(|_| panic!("ping {n} not handled within {WAIT:?}"));
}

#[tokio::test]
async fn the_durable_consumer_is_made_as_the_options_say() {
    let app = spawn_broker().await;
    let consumer = ConsumerOptions {
        ack_wait: Duration::from_secs(7),
        max_deliver: 4,
        ..ConsumerOptions::default()
    };
    let options = ModuleOptions {
        consumer,
        ..ModuleOptions::with_storage(Storage::Memory)
    };
    let (module, _, _) = start(&app, options, 0).await;

    let stream = app
        .bus()
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap();
    let info = stream.consumer_info("listener_on_ping").await.unwrap();
    let config = &info.config;
    assert_eq!(config.durable_name.as_deref(), Some("listener_on_ping"));
    assert_eq!(config.filter_subject, Ping::SUBJECT);
    assert_eq!(config.ack_policy, AckPolicy::Explicit);
    assert_eq!(config.deliver_policy, DeliverPolicy::All);
    assert_eq!(config.ack_wait, Duration::from_secs(7));
    assert_eq!(config.max_deliver, 4);
    assert_eq!(config.max_ack_pending, 10_000);
    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn no_more_events_are_handled_at_once_than_allowed() {
    let app = spawn_broker().await;
    let options = ModuleOptions {
        max_in_flight: 3,
        ..ModuleOptions::with_storage(Storage::Memory)
    };
    let (module, pings, _) = start(&app, options, 0).await;
    for n in 0..8 {
        app.bus()
            .publish(&Ping { n }, uuid::Uuid::new_v4())
            .await
            .unwrap();
    }
    module
        .wait_until(Ping::SUBJECT, WAIT, |s| s.in_flight == 3)
        .await
        .expect("three pings in flight");
    // Five more wait on the stream. Had any started beside the three, the
    // peak, checked once all eight are done, would say so.

    pings.gate.add_permits(8);
    let stats = module
        .handled(Ping::SUBJECT, 8, WAIT)
        .await
        .expect("all eight handled");
    assert_eq!((stats.completed, stats.peak_in_flight), (8, 3));
    module.shutdown().await;
    app.shutdown().await;
}

async fn publish_ping(app: &TestBroker, n: u32) {
    app.bus()
        .publish(&Ping { n }, uuid::Uuid::new_v4())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_deleted_consumer_or_stream_is_made_again_and_events_flow() {
    let app = spawn_broker().await;
    let options = ModuleOptions::with_storage(Storage::Memory);
    let (module, _, mut handled) = start(&app, options, 100).await;
    let jetstream = app.bus().jetstream();

    publish_ping(&app, 1).await;
    until_handled(&mut handled, 1).await;
    let events = jetstream.get_stream(EVENTS_STREAM).await.unwrap();
    events.delete_consumer("listener_on_ping").await.unwrap();
    module
        .wait_until(Ping::SUBJECT, WAIT, |s| s.restarts == 1)
        .await
        .expect("the intake is set up again");
    // (The new consumer starts from the first event: ping 1 comes again.)
    publish_ping(&app, 2).await;
    until_handled(&mut handled, 2).await;

    jetstream.delete_stream(EVENTS_STREAM).await.unwrap();
    module
        .wait_until(Ping::SUBJECT, WAIT, |s| s.restarts == 2)
        .await
        .expect("the intake is set up again");
    // The intake counts its restart before it makes the stream and the
    // consumer again: ask the server until both are there.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(events) = jetstream.get_stream(EVENTS_STREAM).await {
            if events.consumer_info("listener_on_ping").await.is_ok() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream and the consumer are not made again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish_ping(&app, 3).await;
    until_handled(&mut handled, 3).await;
    assert_eq!(module.stats(Ping::SUBJECT).unwrap().restarts, 2);
    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_event_given_up_on_unanswered_is_recorded_from_the_advisory() {
    use messaging_core::dead_letter::{DeadLetterKind, DeadLetters};
    let app = spawn_broker().await;
    let options = ModuleOptions::with_storage(Storage::Durable);
    // Permits for the real event below: a handler left waiting would hold
    // up the shutdown at the end.
    let (module, _, _) = start(&app, options, 100).await;

    // A real event of ours, handled; then what the server says when the
    // last delivery of it went unanswered (its handler's process died):
    // twice, as it may. Advisories are only believed for an event of our
    // subject in our stream, to our consumer: forged ones are ignored.
    let published = app
        .bus()
        .publish_as(
            &Ping { n: 42 },
            messaging_core::EventMeta {
                event_id: uuid::Uuid::new_v4(),
                correlation_id: uuid::Uuid::new_v4(),
            },
        )
        .await
        .unwrap();
    let seq = published.sequence;
    let advisory = |consumer: &str, stream_seq: u64| {
        serde_json::to_vec(&serde_json::json!({
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "stream": EVENTS_STREAM,
            "consumer": consumer,
            "stream_seq": stream_seq,
            "deliveries": 5,
        }))
        .unwrap()
    };
    let subject =
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{EVENTS_STREAM}.listener_on_ping");
    let forged = [
        advisory("listener_on_ping", seq + 1000), // no such event
        advisory("someone_else", seq),            // not our consumer
        b"not an advisory".to_vec(),
    ];
    // Forged ones first: the genuine ones, read after them, prove they were read.
    for payload in forged.into_iter().chain([
        advisory("listener_on_ping", seq),
        advisory("listener_on_ping", seq),
    ]) {
        app.bus()
            .client()
            .publish(subject.clone(), payload.into())
            .await
            .unwrap();
    }
    module
        .wait_until(Ping::SUBJECT, WAIT, |s| s.dead_lettered == 1)
        .await
        .expect("the advisory is recorded");

    let letters = DeadLetters::open(app.bus().client(), Storage::Durable)
        .await
        .unwrap()
        .list()
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "recorded once: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.kind, DeadLetterKind::MaxDeliveries);
    assert_eq!(letter.id, format!("listener_on_ping.{seq}"));
    assert_eq!(
        (
            letter.subject.as_str(),
            letter.stream_sequence,
            letter.deliveries
        ),
        (Ping::SUBJECT, seq, 5)
    );
    assert!(
        letter.reason.contains("without an answer"),
        "{}",
        letter.reason
    );
    // Both advisories and the stray message are read by now.
    app.bus().client().flush().await.unwrap();
    assert_eq!(module.stats(Ping::SUBJECT).unwrap().dead_lettered, 1);
    module.shutdown().await;
    app.shutdown().await;
}

/// Sends `frames` to the broker over a raw protocol connection (what no
/// well-behaved client sends), and waits until the broker has read them.
fn send_raw(url: &str, seed: &str, frames: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let address = url.trim_start_matches("nats://");
    let stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    writer
        .write_all(testkit::raw_connect(&line, seed).as_bytes())
        .unwrap();
    writer.write_all(frames).unwrap();
    writer.write_all(b"PING\r\n").unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty() && !line.starts_with("-ERR"), "{line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

#[tokio::test]
async fn a_stray_status_on_the_pull_inbox_does_not_restart_the_intake() {
    use futures::StreamExt;
    let app = spawn_broker().await;
    // The consumer's pull requests name the inbox its events arrive on.
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.listener_on_ping");
    let mut pulls = app.bus().client().subscribe(next).await.unwrap();
    let options = ModuleOptions::with_storage(Storage::Memory);
    let (module, _, mut handled) = start(&app, options, 100).await;
    let pull = tokio::time::timeout(WAIT, pulls.next())
        .await
        .expect("a pull request")
        .unwrap();
    let inbox = pull.reply.expect("pulls are requests").to_string();

    // A status the pull stream does not know: an error for the intake,
    // which finds its consumer still there and carries on.
    let header = b"NATS/1.0 400 Injected\r\n\r\n";
    let mut frame = format!("HPUB {inbox} {} {}\r\n", header.len(), header.len()).into_bytes();
    frame.extend_from_slice(header);
    frame.extend_from_slice(b"\r\n");
    let url = app.url().to_owned();
    let seed = app.credentials().nkey_seed.clone().unwrap();
    tokio::task::spawn_blocking(move || send_raw(&url, &seed, &frame))
        .await
        .unwrap();
    // The broker read the status before the ping below is published, and
    // delivers both to us in that order: once the ping is handled, the
    // status was seen, and a restart would be counted.
    publish_ping(&app, 1).await;
    until_handled(&mut handled, 1).await;
    assert_eq!(module.stats(Ping::SUBJECT).unwrap().restarts, 0);
    module.shutdown().await;
    app.shutdown().await;
}

/// A TCP proxy to the broker that the test can cut: the connections through
/// it drop, and new ones are refused until it is restored.
struct Proxy {
    url: String,
    refusing: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn to(broker_url: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let target = broker_url.trim_start_matches("nats://").to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (refusing_, open_) = (refusing.clone(), open.clone());
        // Threads that end with the test process (or when a socket fails).
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if refusing_.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let mut sockets = open_.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                sockets.extend([client, server]);
            }
        });
        Proxy {
            url,
            refusing,
            open,
        }
    }

    fn cut(&self) {
        self.refusing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for socket in self.open.lock().unwrap().drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_consumer_deleted_while_the_module_was_cut_off_is_made_again() {
    let app = spawn_broker().await;
    let proxy = Proxy::to(app.url());
    let connection =
        messaging_core::Connection::connect_as(&proxy.url, "cut-off", app.credentials())
            .await
            .unwrap();
    let (handled_tx, mut handled) = mpsc::unbounded_channel();
    let pings = Arc::new(Pings {
        gate: Semaphore::new(100),
        handled: handled_tx,
    });
    let options = ModuleOptions::with_storage(Storage::Memory);
    let setup = Module::setup(connection.client().clone(), &LISTENER, "0.1.0", options)
        .await
        .unwrap();
    let mut module = setup.start(pings).await.unwrap();
    module.on_event("on_ping", on_ping).await.unwrap();
    let module = module.running();
    publish_ping(&app, 1).await;
    until_handled(&mut handled, 1).await;

    // The module cannot hear that its consumer is deleted...
    proxy.cut();
    let events = app
        .bus()
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap();
    events.delete_consumer("listener_on_ping").await.unwrap();
    proxy.restore();
    // ...and finds out when it is back: async-nats asks for the consumer
    // for about 15 s before it reports it missing, then the module makes
    // the consumer again.
    publish_ping(&app, 2).await;
    tokio::time::timeout(Duration::from_secs(45), async {
        while handled.recv().await != Some(2) {}
    })
    .await
    .expect("ping 2 handled once the consumer is made again");
    assert_eq!(module.stats(Ping::SUBJECT).unwrap().restarts, 1);
    module.shutdown().await;
    drop(connection);
    app.shutdown().await;
}

/// A module with a deadline of its own.
const TIMEKEEPER: Declaration = Declaration {
    name: "timekeeper",
    description: "schedules its own deadlines and handles them",
    serves: &[],
    requests: &[],
    publishes: &[],
    schedules: &[Due::SUBJECT],
    buckets: &[],
    listens: &[Listener {
        handler: "on_due",
        subject: Due::SUBJECT,
    }],
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Due {
    n: u32,
}
impl Event for Due {
    const SUBJECT: &'static str = "deadlines.probe.due";
}

async fn on_due(
    seen: Arc<mpsc::UnboundedSender<u32>>,
    _: Context,
    due: Due,
) -> Result<(), EventError> {
    seen.send(due.n).ok();
    Ok(())
}

/// The timekeeper running on a broker of its own: the broker, the module,
/// a context in a new flow on its bus, and the deadlines it handled.
async fn timekeeper() -> (
    TestBroker,
    ModuleHandle,
    Context,
    mpsc::UnboundedReceiver<u32>,
) {
    let app = spawn_broker().await;
    let (seen, seen_rx) = mpsc::unbounded_channel();
    let options = ModuleOptions::with_storage(Storage::Memory);
    let setup = Module::setup(app.bus().client().clone(), &TIMEKEEPER, "0.1.0", options)
        .await
        .unwrap();
    let mut module = setup.start(Arc::new(seen)).await.unwrap();
    module.on_event("on_due", on_due).await.unwrap();
    let ctx = Context::new_flow(module.bus().clone());
    (app, module.running(), ctx, seen_rx)
}

#[tokio::test]
async fn a_scheduled_event_is_published_by_the_broker_when_due_and_only_its_own_schedule_may() {
    let (app, module, ctx, mut seen_rx) = timekeeper().await;

    // Scheduled half a second ahead: nothing yet, then the broker
    // publishes it (to the module's durable consumer).
    let scheduled = std::time::Instant::now();
    ctx.schedule_fact(&Due { n: 1 }, "probe/1", Duration::from_millis(500))
        .await
        .unwrap();
    let n = tokio::time::timeout(WAIT, seen_rx.recv()).await.unwrap();
    assert_eq!(n, Some(1));
    assert!(
        scheduled.elapsed() >= Duration::from_millis(400),
        "published when due, not at once ({:?})",
        scheduled.elapsed()
    );

    // A module may only schedule what it declares...
    let undeclared = ctx
        .bus()
        .schedule_as(
            &Ping { n: 2 },
            messaging_core::EventMeta {
                event_id: uuid::Uuid::new_v4(),
                correlation_id: uuid::Uuid::new_v4(),
            },
            std::time::SystemTime::now(),
        )
        .await;
    assert!(matches!(
        undeclared,
        Err(messaging_core::PublishError::Undeclared { .. })
    ));

    // ...and a schedule of another subject aimed at this one (which the
    // broker allows: it checks who may publish the schedule, not its
    // target) is refused by the consumer: poisoned, never handled.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Schedule", "@at 2020-01-01T00:00:00Z");
    headers.insert("Nats-Schedule-Target", Due::SUBJECT);
    let forged = serde_json::json!({
        "n": 3,
        "event_id": uuid::Uuid::new_v4(),
        "correlation_id": uuid::Uuid::new_v4(),
    });
    app.bus()
        .jetstream()
        .publish_with_headers(
            format!("schedules.deadlines.other.due.{}", uuid::Uuid::new_v4()),
            headers,
            forged.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    module
        .wait_until("on_due", WAIT, |s| s.completed >= 2)
        .await
        .expect("the forged deadline was delivered and refused");
    assert_eq!(module.stats("on_due").unwrap().failed, 1);
    assert!(
        seen_rx.try_recv().is_err(),
        "the forged deadline was handled"
    );
    module.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_keyed_deadline_is_replaced_by_the_next_of_its_key_and_a_cancelled_one_never_comes() {
    let (app, module, ctx, mut seen_rx) = timekeeper().await;
    let soon = Duration::from_millis(300);

    // Key "a": scheduled twice; the second replaces the first.
    ctx.schedule_keyed(&Due { n: 1 }, "a/1", "a", soon)
        .await
        .unwrap();
    ctx.schedule_keyed(&Due { n: 2 }, "a/2", "a", soon)
        .await
        .unwrap();
    // Key "b": scheduled, then taken back. Key "c": taken back, never
    // scheduled (nothing happens); then scheduled, and it comes.
    ctx.schedule_keyed(&Due { n: 3 }, "b/3", "b", soon)
        .await
        .unwrap();
    ctx.cancel_schedule::<Due>("b").await.unwrap();
    ctx.cancel_schedule::<Due>("c").await.unwrap();
    ctx.schedule_keyed(&Due { n: 4 }, "c/4", "c", soon * 3)
        .await
        .unwrap();

    let mut came = Vec::new();
    while came.len() < 2 {
        let n = tokio::time::timeout(WAIT, seen_rx.recv()).await.unwrap();
        came.push(n.unwrap());
    }
    // Deadlines come in order of their time: 4, the last, came after
    // anything "a" or "b" could have sent.
    assert_eq!(came, [2, 4], "a's second, c's; neither a's first nor b's");
    assert!(seen_rx.try_recv().is_err());
    assert_eq!(module.stats("on_due").unwrap().failed, 0);

    // Nothing is left of them in the stream: the cancellations' markers
    // expire (a second), the schedules went when they fired.
    let deadlines = app
        .bus()
        .jetstream()
        .get_stream(messaging_core::DEADLINES_STREAM)
        .await
        .unwrap();
    let schedules_left = || async {
        let info = deadlines
            .clone()
            .info_with_subjects(format!("schedules.{}.>", Due::SUBJECT))
            .await
            .unwrap();
        let mut subjects = info;
        let mut left = 0;
        while let Some(Ok((_, count))) = futures::StreamExt::next(&mut subjects).await {
            left += count;
        }
        left
    };
    let gone = async {
        while schedules_left().await > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("no schedule and no marker left");

    // Only declared deadlines may be keyed or taken back.
    assert!(matches!(
        ctx.cancel_schedule::<Ping>("a").await,
        Err(messaging_core::PublishError::Undeclared { .. })
    ));
    assert!(matches!(
        ctx.schedule_keyed(&Ping { n: 5 }, "p/5", "p", soon).await,
        Err(messaging_core::PublishError::Undeclared { .. })
    ));
    module.shutdown().await;
    app.shutdown().await;
}
