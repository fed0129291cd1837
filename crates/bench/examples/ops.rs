//! What each kind of broker operation the saga makes costs, alone: CPU
//! microseconds per operation in nats-server and in this (client) process,
//! and the rate, with 64 operations in flight, raw async-nats, one
//! nats-server with a file store (`sync_interval` default), as the saga's.
//!
//! The saga's cost is about the sum of these over what one order makes
//! (see README, Performance): this is the price list behind it.
//!
//! `cargo run --release -p bench --example ops -- [OPS]` (default 20000)

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use futures::StreamExt;

const IN_FLIGHT: usize = 64;

// The bench's own reading of /proc (the bench is a binary: no library to
// import it from).
#[path = "../src/process.rs"]
#[allow(dead_code)]
mod process;
use process::cpu_seconds;

/// The CPU both processes spent from `start` on, and the time it took.
struct Meter {
    server: u32,
    started: Instant,
    ours: f64,
    nats: f64,
}

impl Meter {
    fn start(server: u32) -> Self {
        Self {
            server,
            started: Instant::now(),
            ours: cpu_seconds(None),
            nats: cpu_seconds(Some(server)),
        }
    }

    /// Prints the rate of `total` operations and their cost per operation.
    fn report(self, name: &str, total: usize) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let per = |cpu: f64| cpu * 1e6 / total as f64;
        println!(
            "{name:<50} {:>8.0} ops/s   nats-server {:>5.1} us/op   client {:>5.1} us/op",
            total as f64 / elapsed,
            per(cpu_seconds(Some(self.server)) - self.nats),
            per(cpu_seconds(None) - self.ours),
        );
    }
}

/// Publishes entity `i`'s event `what` (`ev.ent.<what>.<i>`), refused
/// unless the entity's last event on any of its subjects is at `last` (0:
/// none yet); returns its sequence.
async fn entity_event(
    js: &jetstream::Context,
    i: usize,
    what: &str,
    last: u64,
) -> anyhow::Result<u64> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("e{i}/{what}").as_str());
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        last.to_string().as_str(),
    );
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence-Subject",
        format!("ev.ent.*.{i}").as_str(),
    );
    let subject = format!("ev.ent.{what}.{i}");
    let ack = js
        .publish_with_headers(subject, headers, bytes::Bytes::from(vec![b'x'; 300]))
        .await?
        .await?;
    Ok(ack.sequence)
}

/// Runs `op(i)` for i in 0..total, `IN_FLIGHT` at a time, and prints its
/// cost per operation.
async fn measure<F, Fut>(name: &str, server: u32, total: usize, op: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let meter = Meter::start(server);
    let workers = (0..IN_FLIGHT).map(|_| {
        let (op, next) = (op.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                op(i).await?;
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    meter.report(name, total);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let server = broker::NatsServer::start().await?;
    let pid = server.pid().expect("a child process");
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "EV".into(),
        subjects: vec!["ev.>".into()],
        storage: stream::StorageType::File,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    js.create_stream(stream::Config {
        name: "DL".into(),
        subjects: vec!["dl.>".into(), "sched.>".into()],
        storage: stream::StorageType::File,
        allow_message_schedules: true,
        ..Default::default()
    })
    .await?;
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "b".into(),
            history: 1,
            storage: stream::StorageType::File,
            limit_markers: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await?;
    println!(
        "{total} operations each, {IN_FLIGHT} in flight, nats-server {}",
        server.version()
    );

    // Core request/reply, answered in this process.
    let mut service = client.subscribe("svc").await?;
    let responder = client.clone();
    let answering = tokio::spawn(async move {
        while let Some(request) = service.next().await {
            if let Some(reply) = request.reply {
                let _ = responder.publish(reply, request.payload).await;
            }
        }
    });
    let c = client.clone();
    measure("core request/reply (100 B)", pid, total, move |_| {
        let c = c.clone();
        async move {
            c.request("svc", vec![b'x'; 100].into()).await?;
            Ok(())
        }
    })
    .await?;
    answering.abort();

    let payload = || bytes::Bytes::from(vec![b'x'; 300]);
    let j = js.clone();
    measure(
        "JetStream publish + ack, Nats-Msg-Id (300 B)",
        pid,
        total,
        move |i| {
            let j = j.clone();
            async move {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("m{i}").as_str());
                j.publish_with_headers(format!("ev.{}", i % 8), headers, payload())
                    .await?
                    .await?;
                Ok(())
            }
        },
    )
    .await?;

    let j = js.clone();
    measure(
        "schedule (@at in 1 h) + ack (300 B)",
        pid,
        total,
        move |i| {
            let j = j.clone();
            async move {
                let at = SystemTime::now() + Duration::from_secs(3600);
                let at = humantime::format_rfc3339_seconds(at).to_string();
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("s{i}").as_str());
                headers.insert("Nats-Schedule", format!("@at {at}").as_str());
                headers.insert("Nats-Schedule-Target", "dl.due");
                j.publish_with_headers(format!("sched.dl.due.{i}"), headers, payload())
                    .await?
                    .await?;
                Ok(())
            }
        },
    )
    .await?;

    // Each key's revision, as a module's cache knows it.
    let revisions: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let (b, r) = (bucket.clone(), revisions.clone());
    measure("KV create (new key)", pid, total, move |i| {
        let (b, r) = (b.clone(), r.clone());
        async move {
            let revision = b.create(format!("k{i}"), payload()).await?;
            r[i].store(revision, Ordering::Relaxed);
            Ok(())
        }
    })
    .await?;

    let (b, r) = (bucket.clone(), revisions.clone());
    measure(
        "KV update (compare-and-set, revision known)",
        pid,
        total,
        move |i| {
            let (b, r) = (b.clone(), r.clone());
            async move {
                let revision = r[i].load(Ordering::Relaxed);
                b.update(format!("k{i}"), payload(), revision).await?;
                Ok(())
            }
        },
    )
    .await?;

    let b = bucket.clone();
    measure("KV direct get", pid, total, move |i| {
        let b = b.clone();
        async move {
            b.entry(format!("k{i}")).await?;
            Ok(())
        }
    })
    .await?;

    let s = js.get_stream("KV_b").await?;
    measure(
        "stream leader read (STREAM.MSG.GET)",
        pid,
        total,
        move |i| {
            let s = s.clone();
            async move {
                s.get_last_raw_message_by_subject(&format!("$KV.b.k{i}"))
                    .await?;
                Ok(())
            }
        },
    )
    .await?;

    let b = bucket.clone();
    measure(
        "KV purge marker with a TTL (one write)",
        pid,
        total / 2,
        move |i| {
            let b = b.clone();
            async move {
                b.purge_with_ttl(format!("k{i}"), Duration::from_secs(1))
                    .await?;
                Ok(())
            }
        },
    )
    .await?;

    let s = js.get_stream("KV_b").await?;
    measure(
        "purge by subject (STREAM.PURGE API)",
        pid,
        total / 2,
        move |i| {
            let s = s.clone();
            let key = format!("$KV.b.k{}", total / 2 + i);
            async move {
                s.purge().filter(key).await?;
                Ok(())
            }
        },
    )
    .await?;

    // A state change written as the entity's own event, once (direction 1 of
    // issue 13): the event on a subject of the entity, refused unless the
    // entity's last event (any of its subjects) is the one read, with its
    // id for deduplication. Checked on 2.15.1 first: a stale sequence is
    // refused (10071), and a direct get of the last message on the
    // wildcard `ent.*.<id>` returns the entity's latest event.
    let (j, r) = (js.clone(), revisions.clone());
    measure(
        "entity event (create: none before it)",
        pid,
        total,
        move |i| {
            let (j, r) = (j.clone(), r.clone());
            async move {
                r[i].store(entity_event(&j, i, "created", 0).await?, Ordering::Relaxed);
                Ok(())
            }
        },
    )
    .await?;
    let (j, r) = (js.clone(), revisions.clone());
    measure(
        "entity event (change: compare-and-set)",
        pid,
        total,
        move |i| {
            let (j, r) = (j.clone(), r.clone());
            async move {
                entity_event(&j, i, "paid", r[i].load(Ordering::Relaxed)).await?;
                Ok(())
            }
        },
    )
    .await?;
    // What the design rests on: a stale change is refused, and the last
    // event on the entity's subjects is its state.
    let created = revisions[0].load(Ordering::Relaxed);
    let stale = entity_event(&js, 0, "fulfilled", created).await;
    anyhow::ensure!(stale.is_err(), "a change from a stale state was stored");
    let stream = js.get_stream("EV").await?;
    let last = stream.direct_get_last_for_subject("ev.ent.*.0").await?;
    anyhow::ensure!(
        last.subject.as_str() == "ev.ent.paid.0",
        "last: {}",
        last.subject
    );
    println!("  checked: a stale change is refused; the last of ev.ent.*.0 is ev.ent.paid.0");
    let s = js.get_stream("EV").await?;
    measure(
        "entity state read (direct get, last of ent.*.<id>)",
        pid,
        total,
        move |i| {
            let s = s.clone();
            async move {
                s.direct_get_last_for_subject(format!("ev.ent.*.{i}"))
                    .await?;
                Ok(())
            }
        },
    )
    .await?;

    // Deliveries: the events published above, pulled and acked one by one
    // (an explicit ack is a publish; nothing waits for the server's word).
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream("EV")
        .await?
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("ops".into()),
            filter_subject: "ev.*".into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let meter = Meter::start(pid);
    let mut messages = consumer.messages().await?;
    for _ in 0..total {
        let message = messages
            .next()
            .await
            .expect("a message")
            .map_err(anyhow::Error::msg)?;
        message.ack().await.map_err(anyhow::Error::msg)?;
    }
    meter.report("durable delivery + ack (pull consumer)", total);
    drop(messages);

    client.drain().await?;
    server.stop().await?;
    Ok(())
}
