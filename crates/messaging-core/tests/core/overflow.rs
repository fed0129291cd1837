//! Back-pressure that answers: a burst beyond what a service endpoint can
//! take gets immediate `503`s, never silence (issue 11, item 3).
//!
//! async-nats buffers a bounded number of messages per subscription
//! (`subscription_capacity`); the patched client (patches/async-nats,
//! PATCHED.md) answers a request that a service endpoint's full buffer
//! cannot take with the same `503 unavailable` our endpoints send when
//! saturated, instead of dropping it. Here the buffer is made small and
//! the serving side is held by the test (a `Notify`, a semaphore), so the
//! counts are exact whatever the timing.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use messaging_core::{
    Context, Declaration, Endpoint, Module, ModuleOptions, RequestError, Rpc, ServiceError, Storage,
};
use serde::{Deserialize, Serialize};
use testkit::{spawn_broker, TestBroker};
use tokio::sync::{Notify, Semaphore};

/// A bound on the whole burst, not a measurement: requests are answered
/// in milliseconds; this only turns a hang into a failure.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
struct Hold {}
impl Rpc for Hold {
    const SUBJECT: &'static str = "flood.hold";
    type Reply = String;
}

const FLOOD: Declaration = Declaration {
    name: "flood",
    description: "test module",
    serves: &[Endpoint::public(Hold::SUBJECT)],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &[],
    listens: &[],
};

/// A client of the test's broker (as its `admin`) whose subscriptions
/// buffer `capacity` messages each.
async fn connect_with_capacity(app: &TestBroker, capacity: usize) -> async_nats::Client {
    let credentials = app.credentials();
    let seed = credentials
        .nkey_seed
        .clone()
        .expect("the test admin's seed");
    let prefix = credentials.inbox_prefix.clone().expect("the admin's inbox");
    async_nats::ConnectOptions::with_nkey(seed)
        .custom_inbox_prefix(prefix)
        .subscription_capacity(capacity)
        .connect(app.url())
        .await
        .expect("connect to the test broker")
}

/// Returns once the server has processed everything `client` sent so far,
/// its subscriptions included: a round trip on that very connection (the
/// server handles a connection's messages in order). A flush only puts
/// them on the socket, and the burst comes over another connection.
async fn subscribed(client: &async_nats::Client) {
    async_nats::jetstream::new(client.clone())
        .query_account()
        .await
        .expect("a round trip to the broker");
}

/// What each request of a burst got: a value, a `503`, or something else
/// (a timeout, any other error: every one a failure of the test).
#[derive(Debug, Default, PartialEq)]
struct Tally {
    ok: usize,
    unavailable: usize,
}

impl Tally {
    fn count(&mut self, reply: Result<String, RequestError>) {
        match reply {
            Ok(_) => self.ok += 1,
            Err(RequestError::Remote { error, .. }) => {
                // Exactly the shape of our own saturation refusal.
                let ours = ServiceError::unavailable("overloaded");
                assert_eq!((error.status, &error.code), (ours.status, &ours.code));
                assert!(error.message.starts_with("overloaded: "), "{error}");
                self.unavailable += 1;
            }
            Err(other) => panic!("every request gets a reply, got {other:?}"),
        }
    }

    fn total(&self) -> usize {
        self.ok + self.unavailable
    }
}

/// `n` requests at once over the test's connection (one socket: pipelined).
fn burst(
    app: &TestBroker,
    n: usize,
) -> FuturesUnordered<impl std::future::Future<Output = Result<String, RequestError>>> {
    let bus = app.bus().clone().with_request_timeout(WAIT);
    (0..n)
        .map(|_| {
            let bus = bus.clone();
            async move { bus.request(&Hold {}).await }
        })
        .collect()
}

#[tokio::test]
async fn requests_beyond_a_full_endpoint_buffer_are_answered_503_at_once() {
    const CAPACITY: usize = 16;
    const REQUESTS: usize = 2_000;
    let app = spawn_broker().await;

    // A service endpoint whose requests nobody reads until the gate opens:
    // its buffer holds CAPACITY of them, and no more.
    let client = connect_with_capacity(&app, CAPACITY).await;
    let service = async_nats::service::ServiceExt::service_builder(&client)
        .start("flood", "1.0.0")
        .await
        .unwrap();
    let mut endpoint = service.endpoint(Hold::SUBJECT).await.unwrap();
    subscribed(&client).await;
    let gate = Arc::new(Notify::new());
    let serving = tokio::spawn({
        let gate = gate.clone();
        async move {
            gate.notified().await;
            let mut served = 0;
            while served < CAPACITY {
                let request = endpoint.next().await.expect("a buffered request");
                request.respond(Ok("\"done\"".into())).await.unwrap();
                served += 1;
            }
            endpoint
        }
    });

    let mut replies = burst(&app, REQUESTS);
    let mut tally = Tally::default();
    // All but the buffered ones are refused while the endpoint is held:
    // with the unpatched client they would wait for their timeout.
    tokio::time::timeout(WAIT, async {
        while tally.total() < REQUESTS - CAPACITY {
            tally.count(replies.next().await.expect("a reply"));
        }
    })
    .await
    .expect("every request beyond the buffer is answered while the endpoint is held");
    assert_eq!(
        tally,
        Tally {
            ok: 0,
            unavailable: REQUESTS - CAPACITY
        }
    );

    // Released, the endpoint answers the buffered ones.
    gate.notify_one();
    tokio::time::timeout(WAIT, async {
        while let Some(reply) = replies.next().await {
            tally.count(reply);
        }
    })
    .await
    .expect("the buffered requests are answered once released");
    assert_eq!(
        tally,
        Tally {
            ok: CAPACITY,
            unavailable: REQUESTS - CAPACITY
        }
    );

    let _endpoint = serving.await.unwrap();
    service.stop().await.unwrap();
    client.drain().await.unwrap();
    app.shutdown().await;
}

struct Held {
    gate: Semaphore,
}

async fn hold(held: Arc<Held>, _: Context, _: Hold) -> Result<String, ServiceError> {
    let _permit = held.gate.acquire().await.expect("gate open");
    Ok("done".to_owned())
}

#[tokio::test]
async fn a_burst_at_a_module_with_blocked_handlers_is_answered_in_full() {
    const CAPACITY: usize = 4;
    const MAX_IN_FLIGHT: usize = 8;
    const REQUESTS: usize = 5_000;
    let app = spawn_broker().await;

    // A module whose handlers wait for the test, on a connection whose
    // subscription buffers hold 4 messages: what its intake does not take
    // at once overflows (how much depends on scheduling; the replies do not).
    let client = connect_with_capacity(&app, CAPACITY).await;
    let held = Arc::new(Held {
        gate: Semaphore::new(0),
    });
    let options = ModuleOptions {
        max_in_flight: MAX_IN_FLIGHT,
        ..ModuleOptions::with_storage(Storage::Memory)
    };
    let setup = Module::setup(client.clone(), &FLOOD, "1.0.0", options)
        .await
        .expect("setup");
    let mut module = setup.start(held.clone()).await.expect("start");
    module.serve(hold).await.unwrap();
    let module = module.running();
    subscribed(&client).await;

    let mut replies = burst(&app, REQUESTS);
    let mut tally = Tally::default();
    // Every request but those held in the handlers (at most MAX_IN_FLIGHT)
    // is refused: by the intake (too many in flight) or, past the buffer,
    // by the client.
    tokio::time::timeout(WAIT, async {
        while tally.total() < REQUESTS - MAX_IN_FLIGHT {
            tally.count(replies.next().await.expect("a reply"));
        }
    })
    .await
    .expect("every request but those in flight is answered while the handlers are blocked");
    assert_eq!(tally.ok, 0);

    held.gate.add_permits(REQUESTS);
    tokio::time::timeout(WAIT, async {
        while let Some(reply) = replies.next().await {
            tally.count(reply);
        }
    })
    .await
    .expect("the held requests are answered once released");
    // Every one answered. How many reached a handler depends on
    // scheduling (a request buffered behind an overflow still does), but
    // at least the first and at most MAX_IN_FLIGHT.
    assert_eq!(tally.total(), REQUESTS, "{tally:?}");
    assert!((1..=MAX_IN_FLIGHT).contains(&tally.ok), "{tally:?}");
    assert!(tally.unavailable >= REQUESTS - MAX_IN_FLIGHT, "{tally:?}");

    module.shutdown().await;
    client.drain().await.unwrap();
    app.shutdown().await;
}
