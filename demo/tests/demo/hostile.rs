//! Hostile input from outside: what an attacker (or a buggy client) sends
//! must cost at most a clear error, never an endpoint or the connection.

use std::sync::atomic::Ordering;

use contract::order::{OrderStatus, PlaceOrder};
use messaging_core::ServiceError;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::{instant_payments, q, spawn_system, WAIT};

/// Every subject that takes an id, with a payload whose id is `bad`.
fn id_payloads(bad: &str) -> Vec<(&'static str, String)> {
    let id = uuid::Uuid::new_v4();
    let bad = serde_json::to_string(bad).unwrap();
    vec![
        ("user.get", format!(r#"{{"id":{bad}}}"#)),
        ("product.get", format!(r#"{{"id":{bad}}}"#)),
        (
            "product.reserve",
            format!(r#"{{"order_id":{bad},"product_id":"{id}","quantity":1}}"#),
        ),
        (
            "order.create",
            format!(r#"{{"user_id":{bad},"product_id":"{id}","quantity":1}}"#),
        ),
        ("order.get", format!(r#"{{"id":{bad}}}"#)),
        ("order.cancel", format!(r#"{{"id":{bad}}}"#)),
    ]
}

fn assert_header_safe(err: &ServiceError) {
    assert_eq!(err.status, 400, "{err}");
    assert!(
        !err.message.contains(char::is_control),
        "control character in {err:?}"
    );
    assert!(
        err.message.len() <= messaging_core::MAX_HEADER_TEXT + 3,
        "{}",
        err.message.len()
    );
}

#[tokio::test]
async fn control_characters_and_huge_ids_get_a_400_and_every_endpoint_keeps_serving() {
    let system = spawn_system(Some(instant_payments())).await;
    // Just under the 64 KiB a request may have: decoded, refused, and the
    // refusal's text (which quotes it) cut to a header-safe size.
    let huge = "x".repeat(60_000);
    for bad in [
        "\n",
        "\r\n",
        "a\u{0}b",
        "\u{1b}[31m",
        "\u{202e}",
        huge.as_str(),
    ] {
        for (subject, payload) in id_payloads(bad) {
            let err = system
                .broker
                .request_raw(subject, &payload)
                .await
                .unwrap_err();
            assert_header_safe(&err);
            if bad == "\n" {
                // Escaped, not dropped: the caller sees what was wrong.
                assert!(err.message.contains(r"\n"), "{subject}: {}", err.message);
            }
        }
    }
    // Larger than the contract allows: refused unread, on every subject.
    let oversized = "x".repeat(100_000);
    for (subject, payload) in id_payloads(&oversized) {
        let err = system
            .broker
            .request_raw(subject, &payload)
            .await
            .unwrap_err();
        assert_eq!(
            (err.status, err.code.as_str()),
            (413, "payload_too_large"),
            "{subject}"
        );
    }
    // Every endpoint still serves: the whole saga goes through.
    let user = system.user().await;
    let product = system.product(5).await;
    let order = system.place(&user, &product, 2).await.unwrap();
    let order_module = system.module("order");
    order_module
        .wait_until("events.product.stock.updated", WAIT, |s| s.completed >= 1)
        .await
        .expect("the order is fulfilled");
    assert_eq!(
        system.get_order(order.id).await.status,
        OrderStatus::Fulfilled
    );
    assert_eq!(system.get_product(&product).await.stock, 3);
    for module in &system.modules {
        for stats in module.all_stats() {
            assert_eq!(stats.restarts, 0, "{stats:?}");
        }
    }
    system.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_match_in_any_case_and_a_blank_one_is_refused() {
    let system = spawn_system(Some(instant_payments())).await;
    let user = system.user().await;
    let product = system.product(10).await;
    let request = PlaceOrder {
        user_id: user.id,
        product_id: product.id,
        quantity: q(1),
    };
    let payload = serde_json::to_vec(&request).unwrap();
    let send = |name: &'static str, key: &'static str| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(name, key);
        let client = system.bus().client().clone();
        let payload = payload.clone();
        async move {
            let reply = client
                .request_with_headers("order.create", headers, payload.into())
                .await
                .unwrap();
            match reply.headers.as_ref().and_then(ServiceError::from_headers) {
                Some(err) => Err(err),
                None => Ok(serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()),
            }
        }
    };
    let first = send("idempotency-key", "k-1").await.unwrap();
    let again = send("IDEMPOTENCY-KEY", "k-1").await.unwrap();
    let canonical = send("Idempotency-Key", "k-1").await.unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["id"], canonical["id"]);
    let blank = send("Idempotency-Key", "   ").await.unwrap_err();
    assert_eq!((blank.status, blank.code.as_str()), (400, "bad_request"));
    // One order placed, not three: exactly one unit held.
    assert_eq!(system.get_product(&product).await.available, 9);
    // A key the client library cannot send is an error, not a panic.
    let err = system
        .bus()
        .request_with_key(&request, "a\r\nb")
        .await
        .unwrap_err();
    assert!(
        matches!(err, messaging_core::RequestError::InvalidKey { .. }),
        "{err}"
    );
    system.shutdown().await;
}

/// A raw NATS protocol client: what an attacker has, no library in the way.
struct RawClient {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl RawClient {
    /// Connects as the nkey user of `seed`: it signs the server's nonce,
    /// as any client must on a broker with authorization.
    async fn connect(url: &str, seed: &str) -> Self {
        let address = url.trim_start_matches("nats://");
        let (read, writer) = TcpStream::connect(address).await.unwrap().into_split();
        let mut client = RawClient {
            reader: BufReader::new(read),
            writer,
        };
        let info = client.line().await;
        let connect = testkit::raw_connect(&info, seed);
        client.send(connect.as_bytes()).await;
        client
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// `HPUB` with `header` as the raw header block.
    async fn hpub(&mut self, subject: &str, reply: &str, header: &[u8], payload: &[u8]) {
        let line = format!(
            "HPUB {subject} {reply} {} {}\r\n",
            header.len(),
            header.len() + payload.len()
        );
        let mut frame = line.into_bytes();
        frame.extend_from_slice(header);
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.send(&frame).await;
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("a line from the server in time")
            .unwrap();
        line
    }

    /// Reads until a message arrives on `sid`, answering pings; returns its
    /// protocol line.
    async fn message(&mut self, sid: &str) -> String {
        loop {
            let line = self.line().await;
            if line.starts_with("PING") {
                self.send(b"PONG\r\n").await;
            } else if (line.starts_with("MSG ") || line.starts_with("HMSG "))
                && line.split_whitespace().nth(2) == Some(sid)
            {
                return line;
            }
        }
    }
}

/// Header blocks async-nats 0.51 cannot parse (it used to drop the whole
/// connection on each, then reconnect).
const MALFORMED: [&[u8]; 5] = [
    b"GARBAGE\r\n\r\n",
    b"NATS/1.0\r\nno colon here\r\n\r\n",
    b"NATS/1.0 abc\r\n\r\n",
    "NATS/1.0\r\nNäme: x\r\n\r\n".as_bytes(),
    b"NATS/1.0\r\nX: \xff\xfe\r\n\r\n",
];

#[tokio::test]
async fn malformed_headers_never_cost_the_connection() {
    let system = spawn_system(Some(instant_payments())).await;
    let stats = system.bus().client().statistics();
    let connects = stats.connects.load(Ordering::SeqCst);
    let seed = system.broker.credentials().nkey_seed.clone().unwrap();
    let mut raw = RawClient::connect(system.broker.url(), &seed).await;
    raw.send(b"SUB _INBOX.raw.> 1\r\n").await;

    // Requests: each one is still answered (the headers are dropped, the
    // payload is read), and the module's connection stays up.
    for (n, header) in MALFORMED.iter().enumerate() {
        let reply = format!("_INBOX.raw.{n}");
        raw.hpub("user.get", &reply, header, b"{\"id\":\"x\"}")
            .await;
        let answer = raw.message("1").await;
        assert!(answer.contains(&reply), "{answer}");
    }
    // Events: stored in the stream, delivered to the payment module, which
    // dead-letters each one once (the payload is no order).
    for header in MALFORMED {
        raw.hpub(
            "events.order.created",
            "_INBOX.raw.ack",
            header,
            b"{\"junk\":1}",
        )
        .await;
    }
    let payment = system.module("payment");
    let seen = payment
        .wait_until("events.order.created", WAIT, |s| {
            s.dead_lettered >= MALFORMED.len() as u64
        })
        .await
        .expect("every malformed event dead-lettered");
    assert_eq!(seen.dead_lettered, MALFORMED.len() as u64);

    // Still one connection, never re-established, and the saga works.
    assert_eq!(stats.connects.load(Ordering::SeqCst), connects);
    let user = system.user().await;
    let product = system.product(5).await;
    let order = system.place(&user, &product, 1).await.unwrap();
    system
        .module("order")
        .wait_until("events.product.stock.updated", WAIT, |s| s.completed >= 1)
        .await
        .expect("the order is fulfilled");
    assert_eq!(
        system.get_order(order.id).await.status,
        OrderStatus::Fulfilled
    );
    // No redelivery loop: still exactly one dead letter per malformed event.
    assert_eq!(
        payment.stats("events.order.created").unwrap().dead_lettered,
        MALFORMED.len() as u64
    );
    assert_eq!(stats.connects.load(Ordering::SeqCst), connects);
    system.shutdown().await;
}

/// An operator deletes a consumer, then the whole event stream: the modules
/// set them up again by themselves and orders go through, no restart.
#[tokio::test]
async fn a_deleted_consumer_or_stream_is_recreated_and_orders_flow_again() {
    let owned = spawn_system(Some(instant_payments())).await;
    let system = &owned;
    let user = system.user().await;
    let product = system.product(100).await;
    let fulfilled = |n: u64| async move {
        system
            .module("order")
            .wait_until("mark_fulfilled", WAIT, |s| s.completed >= n)
            .await
            .expect("orders fulfilled")
    };
    let first = system.place(&user, &product, 1).await.unwrap();
    fulfilled(1).await;

    // The payment module's consumer goes: the next order still gets paid.
    let jetstream = system.bus().jetstream();
    let stream = jetstream
        .get_stream(messaging_core::EVENTS_STREAM)
        .await
        .unwrap();
    assert!(
        stream
            .delete_consumer("payment_take_payment")
            .await
            .unwrap()
            .success
    );
    let second = system.place(&user, &product, 1).await.unwrap();
    fulfilled(2).await;
    assert!(
        system
            .module("payment")
            .stats("take_payment")
            .unwrap()
            .restarts
            >= 1
    );

    // The event stream goes (and every event in it): the next order
    // recreates it when it publishes, the consumers follow.
    assert!(
        jetstream
            .delete_stream(messaging_core::EVENTS_STREAM)
            .await
            .unwrap()
            .success
    );
    let third = system.place(&user, &product, 1).await.unwrap();
    fulfilled(3).await;
    for order in [first, second, third] {
        assert_eq!(
            system.get_order(order.id).await.status,
            OrderStatus::Fulfilled
        );
    }
    assert_eq!(system.get_product(&product).await.stock, 97);
    owned.shutdown().await;
}

/// The stream cannot take `events.order.created` when the order is stored
/// (here: it is full): the client is told the truth, the order is placed
/// and pending, and it goes through once the stream has room again.
#[tokio::test]
async fn an_order_whose_event_cannot_be_stored_yet_is_placed_not_refused() {
    use messaging_core::{Limits, ModuleOptions, Storage};
    let broker = testkit::spawn_broker().await;
    let client = broker.bus().client().clone();
    let options = ModuleOptions {
        limits: Limits {
            events_max_bytes: 64 << 10,
            ..Limits::default()
        },
        ..ModuleOptions::with_storage(Storage::Durable)
    };
    let modules = register_all(&client, options).await;
    let bus = broker.bus();
    let (user, product) = crate::support::customer_and_product(bus, 10).await;

    // Fill the stream to its very limit with events nobody listens to.
    for size in [4096, 256, 16, 1] {
        loop {
            let ack = bus
                .jetstream()
                .publish("events.filler.junk", vec![b'x'; size].into())
                .await
                .unwrap()
                .await;
            if ack.is_err() {
                break;
            }
        }
    }

    let order = bus
        .request(&PlaceOrder {
            user_id: user.id,
            product_id: product.id,
            quantity: q(2),
        })
        .await
        .expect("placed, not refused: the order is stored");
    assert_eq!(order.status, OrderStatus::Pending);

    // Room again: the deferred event goes out and the saga runs its course.
    let stream = bus
        .jetstream()
        .get_stream(messaging_core::EVENTS_STREAM)
        .await
        .unwrap();
    stream.purge().filter("events.filler.>").await.unwrap();
    modules[2]
        .wait_until("mark_fulfilled", WAIT, |s| s.completed >= 1)
        .await
        .expect("the order is fulfilled");
    let fetched = bus
        .request(&contract::order::GetOrder { id: order.id })
        .await
        .unwrap();
    assert_eq!(fetched.status, OrderStatus::Fulfilled);
    messaging_core::shutdown_all(modules).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_broker_frozen_mid_order_never_turns_a_503_into_an_order() {
    use std::collections::HashSet;

    use contract::product::{StockChange, StockUpdated};
    use messaging_core::{ModuleOptions, RequestError, Storage};
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    const ROUNDS: usize = 3;
    let broker = testkit::spawn_broker().await;
    let client = broker.bus().client().clone();
    let options = ModuleOptions {
        deadline: std::time::Duration::from_secs(1),
        ..ModuleOptions::with_storage(Storage::Durable)
    };
    let modules = register_all(&client, options).await;
    let bus = broker.bus().clone();
    let mut updates = bus.watch::<StockUpdated>().await.unwrap();
    let (user, product) = crate::support::customer_and_product(&bus, 10).await;
    let pid = Pid::from_raw(broker.server().pid().unwrap() as i32);

    // Each order is in the order module's hands when the broker freezes,
    // for longer than any step waits for it (2 s); without an idempotency
    // key, the client has only the answer to go by.
    let mut placed = HashSet::new();
    let mut refused = 0;
    for round in 0..ROUNDS {
        let request = tokio::spawn({
            let bus = bus.clone();
            async move {
                bus.request(&PlaceOrder {
                    user_id: user.id,
                    product_id: product.id,
                    quantity: q(1),
                })
                .await
            }
        });
        // Frozen at another step each round: asking the user module, while
        // the product module reserves, once it has reserved.
        let (orders, products) = (&modules[2], &modules[1]);
        let reserved = products.stats("product.reserve").unwrap().completed;
        let step = match round % 3 {
            0 => {
                orders
                    .wait_until("order.create", WAIT, |s| s.in_flight >= 1)
                    .await
            }
            1 => {
                products
                    .wait_until("product.reserve", WAIT, |s| s.in_flight >= 1)
                    .await
            }
            _ => {
                products
                    .wait_until("product.reserve", WAIT, |s| s.completed > reserved)
                    .await
            }
        };
        step.expect("the order is being placed");
        kill(pid, Signal::SIGSTOP).unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        kill(pid, Signal::SIGCONT).unwrap();
        match request.await.unwrap() {
            Ok(order) => {
                placed.insert(order.id);
            }
            Err(RequestError::Remote { error, .. }) => {
                assert_eq!(error.status, 503, "round {round}: {error}");
                refused += 1;
            }
            // The client gave up first: it does not know, and may not assume.
            Err(other) => println!("round {round}: {other}"),
        }
        modules[2]
            .wait_until("order.create", WAIT, |s| s.completed as usize > round)
            .await
            .unwrap();
    }
    println!("frozen broker: {} placed, {refused} refused", placed.len());

    // Every handler is done: what is stored is what will ever be. An order
    // the client was told failed (503) is not among them.
    let kv = bus.jetstream().get_key_value("orders").await.unwrap();
    let mut stored = HashSet::new();
    let mut keys = kv.keys().await.unwrap();
    while let Some(key) = futures::StreamExt::next(&mut keys).await {
        let key = key.unwrap();
        let entry = kv.get(&key).await.unwrap().unwrap();
        let record: serde_json::Value = serde_json::from_slice(&entry).unwrap();
        if record["order"]["product_id"] == serde_json::json!(product.id) {
            stored.insert(contract::order::OrderId(key.parse().unwrap()));
        }
    }
    assert!(
        placed.is_subset(&stored),
        "placed {placed:?}, stored {stored:?}"
    );
    assert!(
        stored.len() <= ROUNDS - refused,
        "{refused} refused, yet {} stored",
        stored.len()
    );

    // And the stock comes out exact: every hold ends, committed with its
    // paid order or released (an order that failed, a hold whose order was
    // never stored), once.
    let products = bus.jetstream().get_key_value("products").await.unwrap();
    let mut holds = HashSet::new();
    let mut keys = products.keys().await.unwrap();
    while let Some(key) = futures::StreamExt::next(&mut keys).await {
        if let Some(order) = key.unwrap().strip_prefix(&format!("{}.", product.id)) {
            holds.insert(contract::order::OrderId(order.parse().unwrap()));
        }
    }
    let mut ended = std::collections::HashMap::new();
    while !holds.iter().all(|h| ended.contains_key(h)) {
        let update = match updates.next_within(WAIT).await {
            Ok(update) => update.event,
            Err(err) => {
                let mut seen = Vec::new();
                for h in &holds {
                    let e = products.get(format!("{}.{h}", product.id)).await.unwrap();
                    seen.push((h, e.map(|b| String::from_utf8_lossy(&b).into_owned())));
                }
                let p = products.get(product.id.to_string()).await.unwrap();
                let letters =
                    messaging_core::dead_letter::DeadLetters::open(bus.client(), Storage::Durable)
                        .await
                        .unwrap()
                        .list()
                        .await
                        .unwrap();
                panic!(
                    "{err}: holds {seen:?}, ended {ended:?}, product {:?}, letters {letters:?}",
                    p.map(|b| String::from_utf8_lossy(&b).into_owned())
                );
            }
        };
        assert_eq!(ended.insert(update.order_id, update.change), None);
    }
    let committed = ended
        .values()
        .filter(|c| **c == StockChange::Committed)
        .count() as u32;
    let after = bus
        .request(&contract::product::GetProduct { id: product.id })
        .await
        .unwrap();
    assert_eq!(
        (after.stock, after.available),
        (10 - committed, 10 - committed)
    );
    for id in ended
        .iter()
        .filter(|(_, c)| **c == StockChange::Committed)
        .map(|(id, _)| id)
    {
        assert!(
            stored.contains(id),
            "stock committed for {id}, never stored"
        );
    }
    messaging_core::shutdown_all(modules).await;
    broker.shutdown().await;
}

/// User, product, order and payment (instant payments) on `client`, with
/// `options`: the modules in that order, as their handles are indexed.
async fn register_all(
    client: &async_nats::Client,
    options: messaging_core::ModuleOptions,
) -> Vec<messaging_core::ModuleHandle> {
    let modules = demo::app::Modules::parse("user,product,order,payment").unwrap();
    demo::app::register_some(client, &modules, instant_payments(), options)
        .await
        .unwrap()
}
