//! Event overhead: raw JetStream publish-with-ack against `Bus::publish`, and
//! a raw pull consumer with explicit acks against a module's durable event
//! handler. Same broker, interleaved rounds.

use messaging_core::Event;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use messaging_core::{
    Bus, Context, Declaration, EventError, Listener, Module, ModuleOptions, Storage, EVENTS_STREAM,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::report::Report;

const RAW_SUBJECT: &str = "events.bench.raw";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tick {
    pub n: u64,
    pub note: String,
}
impl Event for Tick {
    const SUBJECT: &'static str = "events.bench.ours";
}

/// How a measurement publishes.
#[derive(Clone, Copy, PartialEq)]
enum Publisher {
    /// Plain JetStream publish, no headers.
    Raw,
    /// JetStream publish with a `Nats-Msg-Id` header: the server's
    /// deduplication, which our events use by design, without our code.
    RawWithMsgId,
    /// `Bus::publish`.
    Ours,
}

/// Publishes `total` events with `window` acks in flight.
async fn publish(
    bus: &Bus,
    publisher: Publisher,
    window: usize,
    total: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    if publisher == Publisher::Ours {
        // Ours awaits each ack in its publisher: `window` concurrent publishers.
        let per = total.div_ceil(window);
        let publishers = (0..window).map(|w| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    let tick = Tick {
                        n: (w * per + i) as u64,
                        note: "bench".into(),
                    };
                    bus.publish(&tick, Uuid::new_v4()).await?;
                }
                anyhow::Ok(())
            })
        });
        for publisher in futures::future::join_all(publishers).await {
            publisher??;
        }
    } else {
        let js = bus.jetstream();
        let mut acks = FuturesUnordered::new();
        for n in 0..total {
            let payload = serde_json::to_vec(&Tick {
                n: n as u64,
                note: "bench".into(),
            })?;
            let ack = if publisher == Publisher::RawWithMsgId {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", Uuid::new_v4().to_string().as_str());
                js.publish_with_headers(RAW_SUBJECT, headers, payload.into())
                    .await?
            } else {
                js.publish(RAW_SUBJECT, payload.into()).await?
            };
            acks.push(std::future::IntoFuture::into_future(ack));
            if acks.len() >= window {
                acks.next().await.expect("one in flight")?;
            }
        }
        while let Some(ack) = acks.next().await {
            ack?;
        }
    }
    Ok(started.elapsed())
}

struct Counter {
    seen: AtomicU64,
    total: u64,
    /// Told once, by the handler that counts the last event: the raw loop
    /// counts in line too. (Waiting on the module's live counters instead
    /// would wake the waiter at every event, a cost no module in service
    /// pays: nobody waits on them there.)
    all_seen: tokio::sync::Notify,
}

async fn count(counter: Arc<Counter>, _: Context, _: Tick) -> Result<(), EventError> {
    if counter.seen.fetch_add(1, Ordering::Relaxed) + 1 == counter.total {
        counter.all_seen.notify_one();
    }
    Ok(())
}

/// Consumes the `total` events waiting on the subject, from a new durable
/// consumer, acking each.
async fn consume(bus: &Bus, ours: bool, round: usize, total: usize) -> anyhow::Result<Duration> {
    if ours {
        // A fresh module name gives a fresh durable consumer that starts at
        // the beginning of the (purged) subject.
        let name: &'static str = Box::leak(format!("bench-ours-{round}").into_boxed_str());
        const COUNT: Listener = Listener::new("count", Tick::SUBJECT);
        let declaration: &'static Declaration = Box::leak(Box::new(Declaration {
            name,
            description: "bench consumer",
            serves: &[],
            requests: &[],
            publishes: &[],
            schedules: &[],
            buckets: &[],
            listens: &[COUNT],
        }));
        let counter = Arc::new(Counter {
            seen: AtomicU64::new(0),
            total: total as u64,
            all_seen: tokio::sync::Notify::new(),
        });
        let options = ModuleOptions::with_storage(Storage::Memory);
        let setup = Module::setup(bus.client().clone(), declaration, "0.1.0", options).await?;
        let mut module = setup.start(counter.clone()).await?;
        // Timed from the consumer's creation, like the raw side.
        let started = Instant::now();
        module.on_event("count", count).await?;
        let module = module.running();
        tokio::time::timeout(Duration::from_secs(300), counter.all_seen.notified())
            .await
            .map_err(|_| anyhow::anyhow!("our consumer did not finish"))?;
        let elapsed = started.elapsed();
        module.shutdown().await;
        Ok(elapsed)
    } else {
        let started = Instant::now();
        let stream = bus.jetstream().get_stream(EVENTS_STREAM).await?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("bench-raw-{round}")),
                filter_subject: RAW_SUBJECT.to_owned(),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let mut seen = 0;
        while seen < total {
            let message = messages
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
            let _: Tick = serde_json::from_slice(&message.payload)?;
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            seen += 1;
        }
        Ok(started.elapsed())
    }
}

async fn purge(bus: &Bus, subject: &str) -> anyhow::Result<()> {
    let stream = bus.jetstream().get_stream(EVENTS_STREAM).await?;
    stream.purge().filter(subject).await?;
    Ok(())
}

/// Runs the interleaved pairs and records their figures.
pub async fn run(
    bus: &Bus,
    report: &mut Report,
    rounds: usize,
    total: usize,
    window: usize,
) -> anyhow::Result<()> {
    messaging_core::ensure_stream(bus.client(), &messaging_core::Limits::default()).await?;
    let mut publish_time = [Duration::ZERO; 3];
    let mut consume_time = [Duration::ZERO; 2];
    for round in 0..rounds {
        for (side, ours, subject) in [(0, false, RAW_SUBJECT), (1, true, Tick::SUBJECT)] {
            purge(bus, subject).await?;
            let publisher = if ours {
                Publisher::Ours
            } else {
                Publisher::Raw
            };
            publish_time[side] += publish(bus, publisher, window, total).await?;
            consume_time[side] += consume(bus, ours, round, total).await?;
        }
        purge(bus, RAW_SUBJECT).await?;
        publish_time[2] += publish(bus, Publisher::RawWithMsgId, window, total).await?;
    }
    let events = (total * rounds) as f64;
    let rate = |time: Duration| events / time.as_secs_f64();
    for (side, name) in [(0, "raw"), (1, "ours")] {
        report.add(
            format!("events.publish.{name}.msgs_per_s"),
            rate(publish_time[side]),
            "msg/s",
        );
        report.add(
            format!("events.consume.{name}.msgs_per_s"),
            rate(consume_time[side]),
            "msg/s",
        );
    }
    report.add(
        "events.publish.raw_msg_id.msgs_per_s",
        rate(publish_time[2]),
        "msg/s",
    );
    report.ratio(
        "events.publish.ratio",
        "events.publish.ours.msgs_per_s",
        "events.publish.raw.msgs_per_s",
    );
    report.ratio(
        "events.publish.ratio_to_raw_msg_id",
        "events.publish.ours.msgs_per_s",
        "events.publish.raw_msg_id.msgs_per_s",
    );
    report.ratio(
        "events.consume.ratio",
        "events.consume.ours.msgs_per_s",
        "events.consume.raw.msgs_per_s",
    );
    Ok(())
}
