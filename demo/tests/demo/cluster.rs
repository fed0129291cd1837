//! The system on a 3-node cluster: R3 stream and buckets, the modules in
//! two `demo serve` processes, the node leading the event stream SIGKILLed
//! mid-load and brought back; and a whole cluster restarted on its stores.

use std::time::Duration;

use contract::order::{GetOrder, OrderStatus, PlaceOrder};
use messaging_core::{Bus, EVENTS_STREAM};
use nix::sys::signal::Signal;

use crate::binary::start_until;
use crate::split::{handled, serve};
use crate::support::{bucket, customer_and_product, orders, place_until_answered, q, settle, Load};

/// Every stream and bucket on all three nodes.
const R3: &[&str] = &["--replicas", "3"];

/// The replica count of the stream `name`.
async fn replicas(bus: &Bus, name: &str) -> usize {
    let mut stream = bus.jetstream().get_stream(name).await.unwrap();
    stream.info().await.unwrap().config.num_replicas
}

#[tokio::test]
async fn losing_the_event_streams_leader_mid_load_loses_nothing_and_doubles_nothing() {
    // Every node enforces the generated permissions; the modules connect
    // as themselves, the test as admin.
    let identities = demo::auth::Identities::load_or_generate(None).unwrap();
    let mut app = testkit::spawn_cluster_with(
        Some(identities.authorization()),
        identities.credentials("admin"),
    )
    .await;
    let url = app.url();
    let front = serve(&url, identities.dir(), "user,product,order", R3).await;
    let back = serve(&url, identities.dir(), "payment,shipping", R3).await;
    let bus = app.bus().clone();
    for stream in [
        EVENTS_STREAM,
        "KV_orders",
        "KV_products",
        "KV_payments",
        "KV_idempotency",
    ] {
        assert_eq!(replicas(&bus, stream).await, 3, "{stream} is R3");
    }
    let (user, product) = customer_and_product(&bus, 10_000).await;

    let orders = orders(300);
    let load = Load::place(&bus, user.id, product.id, orders, "cluster");
    load.until(orders / 3).await;
    let leader = app.leader_of(EVENTS_STREAM).await.expect("a leader");
    app.cluster().kill(leader).await.unwrap();
    println!(
        "cluster: SIGKILLed node {} (led {EVENTS_STREAM})",
        leader + 1
    );
    load.until(2 * orders / 3).await;
    app.cluster()
        .restart(leader)
        .await
        .expect("the node comes back");
    let (ids, pause) = load.finish().await;
    assert_eq!(ids.len(), orders);
    // What a node loss costs: the longest time no order was answered.
    println!(
        "cluster: longest pause in answers {:.2} s",
        pause.as_secs_f64()
    );

    let outcome = settle(&bus, &ids, product.id, 10_000).await;
    println!(
        "cluster: {orders} orders, {} fulfilled, {} failed",
        outcome.fulfilled, outcome.failed
    );
    assert_eq!(bucket(&bus, "payments").await.len(), orders);
    assert!(
        bucket(&bus, "dead_letters").await.is_empty(),
        "a node loss is a transient failure, never a dead letter"
    );

    // Our processes rode it out: never restarted, they stop cleanly.
    let mut shares = 0;
    for process in [front, back] {
        process.signal(Signal::SIGTERM);
        let (status, output) = process.finish().await;
        assert!(status.success(), "{output}");
        if output.contains("take_payment") {
            shares = handled(&output, "take_payment");
        }
    }
    assert!(
        shares as usize >= orders,
        "one process took every payment: {shares}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_cluster_restarted_on_its_data_dir_resumes_unfinished_orders() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let cluster = ["--cluster", "3", "--data-dir", dir, "--payment-delay", "0"];

    // First run: no payment module, so the orders stay pending.
    let args: Vec<&str> = ["serve", "--modules", "user,product,order"]
        .into_iter()
        .chain(cluster)
        .collect();
    let first = start_until(&args, "serving on").await;
    assert!(first.seen.contains("replicas: 3"), "{}", first.seen);
    let connection = crate::binary::connect_to(&first, "admin").await;
    let bus = connection.bus().clone();
    let (user, product) = customer_and_product(&bus, 100).await;
    let request = PlaceOrder {
        user_id: user.id,
        product_id: product.id,
        quantity: q(1),
    };
    let mut ids = Vec::new();
    for n in 0..20 {
        let key = format!("resume-{n}");
        ids.push(place_until_answered(&bus, &request, &key, Duration::from_secs(30)).await);
    }
    for id in &ids {
        let order = bus.request(&GetOrder { id: *id }).await.unwrap();
        assert_eq!(order.status, OrderStatus::Pending);
    }
    connection.drain(Duration::from_secs(5)).await.unwrap();
    first.signal(Signal::SIGTERM);
    let (status, output) = first.finish().await;
    assert!(status.success(), "{output}");

    // Second run, every module, the same stores, new ports.
    let args: Vec<&str> = ["serve"].into_iter().chain(cluster).collect();
    let second = start_until(&args, "serving on").await;
    let connection = crate::binary::connect_to(&second, "admin").await;
    let bus = connection.bus().clone();
    let outcome = settle(&bus, &ids, product.id, 100).await;
    assert_eq!(outcome.fulfilled, ids.len(), "every resumed order is paid");
    connection.drain(Duration::from_secs(5)).await.unwrap();
    second.signal(Signal::SIGTERM);
    let (status, output) = second.finish().await;
    assert!(status.success(), "{output}");
}
