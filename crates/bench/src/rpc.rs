//! Request/reply overhead: a raw `async_nats::service` endpoint echoing JSON
//! against our typed path (`Bus::request` -> `Module::serve`), same broker,
//! interleaved rounds.

use messaging_core::Rpc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::service::ServiceExt;
use futures::StreamExt;
use hdrhistogram::Histogram;

use messaging_core::{
    Bus, Context, Declaration, Endpoint, Module, ModuleHandle, ModuleOptions, ServiceError, Storage,
};
use serde::{Deserialize, Serialize};

use crate::report::{histogram, Report};

const RAW_SUBJECT: &str = "bench.raw.echo";

/// The payload both sides echo: a small order-like object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    pub id: uuid::Uuid,
    pub name: String,
    pub quantity: u32,
}
impl Rpc for Echo {
    const SUBJECT: &'static str = "bench.ours.echo";
    type Reply = Echo;
}

async fn echo(_: Arc<()>, _: Context, request: Echo) -> Result<Echo, ServiceError> {
    Ok(request)
}

/// Starts both servers: the raw one handles requests inline, as the
/// simplest hand-written service would; ours is a module.
pub async fn start_servers(
    bus: &Bus,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, ModuleHandle)> {
    let service = bus
        .client()
        .service_builder()
        .start("raw-echo", "0.1.0")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut endpoint = service
        .endpoint(RAW_SUBJECT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let raw = tokio::spawn(async move {
        let _service = service;
        while let Some(request) = endpoint.next().await {
            let reply = match serde_json::from_slice::<Echo>(&request.message.payload) {
                Ok(echo) => Ok(serde_json::to_vec(&echo).expect("encodes").into()),
                Err(err) => Err(async_nats::service::error::Error {
                    status: format!("bad_request: {err}"),
                    code: 400,
                }),
            };
            let _ = request.respond(reply).await;
        }
    });
    const ECHO_MODULE: Declaration = Declaration {
        name: "ours-echo",
        description: "bench echo",
        serves: &[Endpoint::public(Echo::SUBJECT)],
        requests: &[],
        publishes: &[],
        schedules: &[],
        buckets: &[],
        listens: &[],
    };
    let options = ModuleOptions::with_storage(Storage::Memory);
    let setup = Module::setup(bus.client().clone(), &ECHO_MODULE, "0.1.0", options).await?;
    let mut module = setup.start(Arc::new(())).await?;
    module.serve(echo).await?;
    Ok((raw, module.running()))
}

fn sample() -> Echo {
    Echo {
        id: uuid::Uuid::new_v4(),
        name: "Widget".to_owned(),
        quantity: 3,
    }
}

/// One measurement: `total` requests from `in_flight` concurrent workers.
async fn measure(
    bus: &Bus,
    ours: bool,
    in_flight: usize,
    total: usize,
) -> anyhow::Result<(Duration, Histogram<u64>)> {
    let per_worker = total.div_ceil(in_flight);
    let started = Instant::now();
    let workers = (0..in_flight).map(|_| {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut latencies = histogram();
            let request = sample();
            let raw_payload = bytes::Bytes::from(serde_json::to_vec(&request).expect("encodes"));
            for _ in 0..per_worker {
                let t0 = Instant::now();
                if ours {
                    bus.request(&request).await?;
                } else {
                    let reply = bus
                        .client()
                        .request(RAW_SUBJECT, raw_payload.clone())
                        .await?;
                    let _: Echo = serde_json::from_slice(&reply.payload)?;
                }
                latencies.record(t0.elapsed().as_micros().max(1) as u64)?;
            }
            anyhow::Ok(latencies)
        })
    });
    let mut merged = histogram();
    for worker in futures::future::join_all(workers).await {
        merged.add(worker??)?;
    }
    Ok((started.elapsed(), merged))
}

/// Runs the interleaved pairs and records their figures.
pub async fn run(
    bus: &Bus,
    report: &mut Report,
    rounds: usize,
    requests: usize,
) -> anyhow::Result<()> {
    let (raw_server, ours_server) = start_servers(bus).await?;
    for in_flight in [1usize, 64] {
        // One at a time is slow: fewer requests keep the phase short.
        let total = if in_flight == 1 {
            (requests / 8).max(100)
        } else {
            requests
        };
        let mut sums = [
            (Duration::ZERO, 0usize, histogram()),
            (Duration::ZERO, 0usize, histogram()),
        ];
        // Warm-up, not recorded.
        measure(bus, false, in_flight, total / 10 + 1).await?;
        measure(bus, true, in_flight, total / 10 + 1).await?;
        for _ in 0..rounds {
            for (side, ours) in [(0, false), (1, true)] {
                let (elapsed, latencies) = measure(bus, ours, in_flight, total).await?;
                sums[side].0 += elapsed;
                sums[side].1 += latencies.len() as usize;
                sums[side].2.add(&latencies)?;
            }
        }
        for (side, name) in [(0, "raw"), (1, "ours")] {
            let (elapsed, count, latencies) = &sums[side];
            let prefix = format!("rpc.{name}.c{in_flight}");
            report.add(
                format!("{prefix}.req_per_s"),
                *count as f64 / elapsed.as_secs_f64(),
                "req/s",
            );
            report.latency(&prefix, latencies, false);
        }
        let (o, r) = (
            format!("rpc.ours.c{in_flight}"),
            format!("rpc.raw.c{in_flight}"),
        );
        report.ratio(
            format!("rpc.ratio.c{in_flight}.req_per_s"),
            &format!("{o}.req_per_s"),
            &format!("{r}.req_per_s"),
        );
        report.ratio(
            format!("rpc.ratio.c{in_flight}.p50"),
            &format!("{o}.p50"),
            &format!("{r}.p50"),
        );
    }
    ours_server.shutdown().await;
    raw_server.abort();
    Ok(())
}
