//! Latency of one event hop: publish -> module handler -> publish -> watcher.
use messaging_core::Event;
use std::sync::Arc;
use std::time::{Duration, Instant};

use messaging_core::{Context, Declaration, EventError, Listener, Module, ModuleOptions, Storage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping {
    n: u32,
}
impl Event for Ping {
    const SUBJECT: &'static str = "events.hop.ping";
}
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pong {
    n: u32,
}
impl Event for Pong {
    const SUBJECT: &'static str = "events.hop.pong";
}

static START: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
async fn on_ping(_: Arc<()>, ctx: Context, p: Ping) -> Result<(), EventError> {
    let t = START.lock().unwrap().unwrap().elapsed();
    ctx.publish_fact(&Pong { n: p.n }, &format!("pong/{}", p.n))
        .await?;
    let t2 = START.lock().unwrap().unwrap().elapsed();
    println!("  handler start {t:?}, after publish {t2:?}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = broker::NatsServer::start().await?;
    let conn = messaging_core::Connection::connect(server.url(), "hop").await?;
    let bus = conn.bus().clone();
    const HOP: Declaration = Declaration {
        name: "hop",
        description: "",
        serves: &[],
        requests: &[],
        publishes: &[Pong::SUBJECT],
        schedules: &[],
        buckets: &[],
        listens: &[Listener::new("pong", Ping::SUBJECT)],
    };
    let options = ModuleOptions::with_storage(Storage::Memory);
    let mut m = Module::setup(bus.client().clone(), &HOP, "0.1.0", options)
        .await?
        .start(Arc::new(()))
        .await?;
    m.on_event("pong", on_ping).await?;
    let m = m.running();
    let mut pongs = bus.watch::<Pong>().await?;
    let mut pings_seen = bus.watch::<Ping>().await?;
    for n in 0..20 {
        let t0 = Instant::now();
        *START.lock().unwrap() = Some(t0);
        bus.publish(&Ping { n }, uuid::Uuid::new_v4()).await?;
        let t1 = t0.elapsed();
        pings_seen.next_within(Duration::from_secs(5)).await?;
        let t2 = t0.elapsed();
        pongs.next_within(Duration::from_secs(5)).await?;
        let t3 = t0.elapsed();
        println!(
            "publish+ack {:?}  watcher sees ping {:?}  pong seen {:?}",
            t1, t2, t3
        );
    }
    let t0 = Instant::now();
    for _ in 0..100 {
        bus.client().flush().await?;
    }
    println!("flush rtt {:?}", t0.elapsed() / 100);
    m.shutdown().await;
    conn.drain(Duration::from_secs(5)).await?;
    server.stop().await?;
    Ok(())
}
