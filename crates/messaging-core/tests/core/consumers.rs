//! Event consumers: the durable consumer is created as the options say, and
//! no more events are handled at once than a module allows.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use messaging_core::{
    ConsumerOptions, Context, Declaration, Event, EventError, Listener, Module, ModuleHandle,
    ModuleOptions, Storage, EVENTS_STREAM,
};
use serde::{Deserialize, Serialize};
use testkit::{spawn_broker, TestBroker};
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(10);

/// For negative checks only, once the handlers that could act have started.
const QUIET: Duration = Duration::from_millis(300);

const LISTENER: Declaration = Declaration {
    name: "listener",
    description: "handles pings, as many at once as allowed",
    serves: &[],
    requests: &[],
    publishes: &[],
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

/// Each ping waits for a permit from the test.
async fn on_ping(gate: Arc<Semaphore>, _: Context, _: Ping) -> Result<(), EventError> {
    let permit = gate.acquire().await.expect("gate open");
    permit.forget();
    Ok(())
}

async fn start(app: &TestBroker, options: ModuleOptions, gate: Arc<Semaphore>) -> ModuleHandle {
    let setup = Module::setup(app.bus().client().clone(), &LISTENER, "0.1.0", options)
        .await
        .unwrap();
    let mut module = setup.start(gate).await.unwrap();
    module.on_event("on_ping", on_ping).await.unwrap();
    module.running()
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
    let module = start(&app, options, Arc::new(Semaphore::new(0))).await;

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
    let gate = Arc::new(Semaphore::new(0));
    let options = ModuleOptions {
        max_in_flight: 3,
        ..ModuleOptions::with_storage(Storage::Memory)
    };
    let module = start(&app, options, gate.clone()).await;
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
    // Five more are waiting on the stream; none may start yet.
    tokio::time::sleep(QUIET).await;
    let stats = module.stats(Ping::SUBJECT).unwrap();
    assert_eq!((stats.in_flight, stats.peak_in_flight), (3, 3));

    gate.add_permits(8);
    let stats = module
        .handled(Ping::SUBJECT, 8, WAIT)
        .await
        .expect("all eight handled");
    assert_eq!((stats.completed, stats.peak_in_flight), (8, 3));
    module.shutdown().await;
    app.shutdown().await;
}
