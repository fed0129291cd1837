//! Our durable consumer alone, for profiling: N events pre-published, then
//! handled by a module.
use messaging_core::Event;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use messaging_core::{Context, Declaration, EventError, Listener, Module, ModuleOptions, Storage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick {
    n: u64,
    note: String,
}
impl Event for Tick {
    const SUBJECT: &'static str = "events.prof.tick";
}

/// Counts events; the one that makes `total` tells `done` (waiting on the
/// module's live counters would wake the waiter at every event).
struct Counter {
    seen: AtomicU64,
    total: u64,
    done: tokio::sync::Notify,
}

async fn count(c: Arc<Counter>, _: Context, _: Tick) -> Result<(), EventError> {
    if c.seen.fetch_add(1, Ordering::Relaxed) + 1 == c.total {
        c.done.notify_one();
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let server = broker::NatsServer::start().await?;
    let conn = messaging_core::Connection::connect(server.url(), "prof").await?;
    let bus = conn.bus().clone();
    messaging_core::ensure_stream(bus.client(), &messaging_core::Limits::default()).await?;
    let mut acks = Vec::new();
    for n in 0..total {
        acks.push(bus.jetstream().publish(Tick::SUBJECT, serde_json::to_vec(&serde_json::json!({"event_id": uuid::Uuid::new_v4(), "correlation_id": uuid::Uuid::new_v4(), "n": n, "note": "x"}))?.into()).await?);
        if acks.len() > 1000 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks.drain(..) {
        a.await?;
    }
    let counter = Arc::new(Counter {
        seen: AtomicU64::new(0),
        total,
        done: tokio::sync::Notify::new(),
    });
    const PROF: Declaration = Declaration {
        name: "prof",
        description: "",
        serves: &[],
        requests: &[],
        publishes: &[],
        schedules: &[],
        buckets: &[],
        listens: &[Listener::new("count", Tick::SUBJECT)],
    };
    let options = ModuleOptions::with_storage(Storage::Memory);
    let mut m = Module::setup(bus.client().clone(), &PROF, "0.1.0", options)
        .await?
        .start(counter.clone())
        .await?;
    let t0 = Instant::now();
    m.on_event("count", count).await?;
    let m = m.running();
    tokio::time::timeout(Duration::from_secs(600), counter.done.notified()).await?;
    println!(
        "consumed {total} in {:?}: {:.0}/s",
        t0.elapsed(),
        total as f64 / t0.elapsed().as_secs_f64()
    );
    m.shutdown().await;
    conn.drain(Duration::from_secs(5)).await?;
    server.stop().await?;
    Ok(())
}
