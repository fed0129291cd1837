//! `demo`: run the scenario (default) or serve the modules until interrupted.
//!
//! SIGINT (Ctrl-C) or SIGTERM at any moment leads to the same graceful
//! shutdown as the end of the scenario.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use demo::app::{App, Broker};
use demo::cli::{Cli, Command};
use messaging_core::broker::BrokerConfig;
use payment::PaymentConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // async-nats reports connection events at info; ours (messaging-core)
    // already log the ones that matter, at the right level.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let payment = PaymentConfig {
        delay: cli.payment_delay,
        failure_rate: cli.payment_failure_rate,
        seed: cli.seed,
        ..PaymentConfig::default()
    };
    payment.validate()?;
    let broker = match cli.nats_url {
        Some(url) => Broker::Existing(url),
        None => Broker::Launch(BrokerConfig::default()),
    };

    let interrupted = interrupted();
    tokio::pin!(interrupted);

    let app = tokio::select! {
        app = App::start(broker, payment) => app?,
        // Dropping the half-started app kills the child broker.
        () = &mut interrupted => return Ok(()),
    };

    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => tokio::select! {
            outcome = demo::scenario::run(app.bus(), cli.payment_delay) => outcome.map(|_| ()),
            () = &mut interrupted => Ok(()),
        },
        Command::Serve => {
            tracing::info!(
                url = app.url(),
                "modules serving; connect to this URL (Ctrl-C to stop)"
            );
            println!("serving on {}", app.url());
            interrupted.await;
            Ok(())
        }
    };
    // Shut down gracefully whatever happened above.
    let shutdown = app.shutdown().await;
    result.and(shutdown)
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .context("installing the SIGTERM handler")
        .expect("signal handlers can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("interrupted: shutting down");
}
