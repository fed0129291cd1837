//! `bench`: what the clean abstractions cost, side by side with raw
//! async-nats in the same run, and what the whole saga does near the
//! machine's limit.
//!
//! Prints one figure per line (`name value unit`); `--json FILE` writes the
//! same figures as JSON. Run it with `cargo xtask bench` (release build).

mod events;
mod process;
mod report;
mod rpc;
mod saga;
mod worker;

use std::path::PathBuf;
use std::time::Instant;

use broker::NatsServer;
use clap::Parser;
use messaging_core::Connection;

use crate::report::Report;

#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Cli {
    /// Also write the figures to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Tiny sizes: checks that everything runs and completes (used by tests).
    #[arg(long)]
    smoke: bool,
    /// Interleaved rounds of each raw/ours pair.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Requests per request/reply measurement (at 64 in flight; 1/8 of it at 1).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Events per publish/consume measurement.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Acks in flight when publishing events.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Orders per saga level (1/5 of it with one client).
    #[arg(long, default_value_t = 3_000)]
    orders: usize,
    /// Concurrent clients of the saga levels.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64, 256])]
    clients: Vec<usize>,
    /// Run the soak instead: this many orders, RSS at 10%, 50% and 100%.
    #[arg(long, value_name = "ORDERS")]
    soak: Option<usize>,
    /// Clients of the soak.
    #[arg(long, default_value_t = 64)]
    soak_clients: usize,
    /// Run the ablation instead: the durable saga at `--soak-clients`
    /// clients with each module's state in memory in turn, `--rounds`
    /// rounds of `--orders` orders (where the durable cost goes).
    #[arg(long)]
    ablate: bool,
    /// Skip the raw/ours overhead pairs.
    #[arg(long)]
    no_overhead: bool,
    /// Skip the saga levels.
    #[arg(long)]
    no_saga: bool,
    /// Internal: serve a payment instance on URL until SIGTERM (the
    /// scale-out figures start the bench again this way).
    #[arg(long, value_name = "URL", hide = true)]
    payment_worker: Option<String>,
    /// Skip the scale-out comparison (two payment instances; a 3-node R3
    /// cluster against one R1 server).
    #[arg(long)]
    no_scale: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if let Some(url) = &cli.payment_worker {
        return worker::serve(url).await;
    }
    if cli.smoke {
        cli.rounds = 1;
        cli.requests = 400;
        cli.events = 500;
        cli.orders = 200;
        cli.clients = vec![1, 16];
        cli.soak = cli.soak.map(|n| n.min(400));
    }
    let started = Instant::now();
    let mut report = Report::default();
    report.add("machine.cpus", num_cpus() as f64, "cores");

    if let Some(orders) = cli.soak {
        saga::soak(&mut report, orders, cli.soak_clients, cli.quiet).await?;
    } else if cli.ablate {
        saga::ablate(&mut report, cli.orders, cli.soak_clients, cli.rounds).await?;
    } else {
        if !cli.no_overhead {
            let server = NatsServer::start().await?;
            let connection = Connection::connect(server.url(), "bench").await?;
            rpc::run(connection.bus(), &mut report, cli.rounds, cli.requests).await?;
            events::run(
                connection.bus(),
                &mut report,
                cli.rounds,
                cli.events,
                cli.window,
            )
            .await?;
            connection.drain(std::time::Duration::from_secs(10)).await?;
            server.stop().await?;
        }
        if !cli.no_saga {
            saga::run(&mut report, &cli.clients, cli.orders, cli.quiet).await?;
        }
        if !cli.no_scale {
            let clients = cli.clients.iter().copied().max().unwrap_or(64).min(64);
            saga::scale(&mut report, cli.orders, clients, cli.quiet).await?;
        }
    }
    report.add("bench.wall_time", started.elapsed().as_secs_f64(), "s");
    if let Some(path) = &cli.json {
        report.write_json(path)?;
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
