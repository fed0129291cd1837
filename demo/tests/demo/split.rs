//! Modules as separate processes: each `demo serve --modules X` against one
//! broker, three payment processes sharing the payments, one of them
//! SIGKILLed mid-load. Every order still ends once, paid at most once.
//!
//! `pub(crate)`: the cluster tests run the same processes.

use nix::sys::signal::Signal;

use crate::binary::{start_until, Running};
use crate::support::{bucket, customer_and_product, orders, settle, Load};

/// `demo serve` of `modules` against `url`, each module as itself with
/// its seed from `auth_dir`, then `extra` flags; payments take 5 ms and a
/// fifth are declined (seeded).
pub(crate) async fn serve(
    url: &str,
    auth_dir: &std::path::Path,
    modules: &str,
    extra: &[&str],
) -> Running {
    let mut args = vec![
        "serve",
        "--nats-url",
        url,
        "--auth-dir",
        auth_dir.to_str().unwrap(),
        "--modules",
        modules,
        "--payment-delay",
        "5ms",
        "--payment-failure-rate",
        "0.2",
        "--seed",
        "11",
    ];
    args.extend_from_slice(extra);
    start_until(&args, "serving on").await
}

/// How many events the handler `handler` of this process handled, from the
/// counts it logs when it stops.
pub(crate) fn handled(output: &str, handler: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.contains(" handled ") && l.contains(handler))
        .unwrap_or_else(|| panic!("no count for {handler}:\n{output}"));
    let count = line.split("handled=").nth(1).expect("a handled= field");
    count.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn modules_in_separate_processes_share_the_work_and_survive_a_kill() {
    // Least privilege: each process's modules connect as themselves, the
    // test as admin.
    let identities = demo::auth::Identities::load_or_generate(None).unwrap();
    let broker = testkit::spawn_broker_with(
        Some(identities.authorization()),
        identities.credentials("admin"),
    )
    .await;
    let auth = identities.dir();
    let url = broker.url().to_owned();
    let mut processes = Vec::new();
    for modules in ["user", "product", "order", "shipping"] {
        processes.push(serve(&url, auth, modules, &[]).await);
    }
    let payments = [
        serve(&url, auth, "payment", &[]).await,
        serve(&url, auth, "payment", &[]).await,
        serve(&url, auth, "payment", &[]).await,
    ];
    let [first, second, doomed] = payments;

    let bus = broker.bus().clone();
    let (user, product) = customer_and_product(&bus, 10_000).await;

    // Keyed orders from 16 clients; one payment process dies half-way.
    let orders = orders(500);
    let load = Load::place(&bus, user.id, product.id, orders, "split");
    load.until(orders / 2).await;
    doomed.signal(Signal::SIGKILL);
    let (ids, _) = load.finish().await;

    // Every order ends (the killed process's unacknowledged payments are
    // redelivered to the others after their ack wait), paid at most once.
    let outcome = settle(&bus, &ids, product.id, 10_000).await;
    println!(
        "split: {orders} orders, {} fulfilled, {} failed",
        outcome.fulfilled, outcome.failed
    );
    // One payment record per order (taken or declined), none made twice.
    assert_eq!(bucket(&bus, "payments").await.len(), orders);

    // Discovery sees each surviving payment instance, by its own id.
    let instances = service_ids(&bus, "payment", 2).await;
    assert_eq!(instances.len(), 2, "{instances:?}");

    // The two surviving payment processes both took a share.
    let mut shares = Vec::new();
    for payment in [first, second] {
        payment.signal(Signal::SIGTERM);
        let (status, output) = payment.finish().await;
        assert!(status.success(), "{output}");
        shares.push(handled(&output, "take_payment"));
    }
    println!("split: payment shares {shares:?} (plus the killed one's)");
    assert!(shares.iter().all(|n| *n > 0), "{shares:?}");
    for process in processes {
        process.signal(Signal::SIGTERM);
        let (status, output) = process.finish().await;
        assert!(status.success(), "{output}");
    }
    // A module that is down is said to be down at once, not a hang.
    let asked = tokio::time::Instant::now();
    let down = bus.request(&contract::order::GetOrder { id: ids[0] }).await;
    assert!(
        matches!(down, Err(messaging_core::RequestError::NoResponders { .. })),
        "{down:?}"
    );
    assert!(asked.elapsed() < std::time::Duration::from_secs(1));
    broker.shutdown().await;
}

/// The distinct ids of the instances of service `name` that answer
/// `$SRV.INFO.<name>`, waiting (at most 10 s) until `wanted` have answered.
async fn service_ids(bus: &messaging_core::Bus, name: &str, wanted: usize) -> Vec<String> {
    use futures::StreamExt;
    let client = bus.client();
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(format!("$SRV.INFO.{name}"), inbox, "".into())
        .await
        .unwrap();
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while ids.len() < wanted {
        let reply = tokio::time::timeout_at(deadline, replies.next())
            .await
            .unwrap_or_else(|_| panic!("only {ids:?} answered $SRV.INFO.{name}"))
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        let id = info["id"].as_str().unwrap().to_owned();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}
