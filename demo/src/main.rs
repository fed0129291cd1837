//! `demo`: run the scenario (default), serve the modules until interrupted,
//! or look after dead letters.
//!
//! SIGINT (Ctrl-C) or SIGTERM at any moment leads to the same graceful
//! shutdown as the end of the scenario.

use std::process::ExitCode;

use broker::{BrokerConfig, SyncMode};
use clap::Parser;
use demo::app::{Access, App, Broker, Modules};
use demo::auth::Identities;
use demo::cli::AuthCommand;
use demo::cli::{Cli, Command, DeadLetterCommand, Sync};
use messaging_core::dead_letter::DeadLetters;
use messaging_core::Credentials;
use messaging_core::Storage;
use messaging_core::{Limits, ModuleOptions};
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
    anyhow::ensure!(
        !(cli.ephemeral && (cli.data_dir.is_some() || cli.nats_url.is_some())),
        "--ephemeral keeps module state in memory, which would not match the durable \
         events of --data-dir or --nats-url after a restart: use one or the other"
    );
    let storage = if cli.ephemeral {
        Storage::Memory
    } else {
        Storage::Durable
    };
    anyhow::ensure!(
        !(cli.cluster.is_some() && (cli.nats_url.is_some() || cli.port.is_some())),
        "--cluster launches its own nodes on free ports: it goes with neither --nats-url nor --port"
    );
    let node = BrokerConfig {
        store_dir: cli.data_dir.clone(),
        port: cli.port,
        sync: match cli.sync {
            Sync::Interval => SyncMode::Interval,
            Sync::Always => SyncMode::Always,
        },
        ..BrokerConfig::default()
    };
    let (broker, replicas) = match (cli.nats_url, cli.cluster) {
        (Some(url), _) => (Broker::Existing(url), cli.replicas.unwrap_or(0)),
        (None, Some(nodes)) => {
            let replicas = cli.replicas.unwrap_or(nodes.min(3));
            anyhow::ensure!(
                replicas <= nodes,
                "--replicas {replicas} needs at least {replicas} nodes; --cluster {nodes} has {nodes}"
            );
            let config = broker::ClusterConfig {
                nodes: nodes.into(),
                node,
                ..broker::ClusterConfig::default()
            };
            (Broker::LaunchCluster(config), replicas)
        }
        (None, None) => {
            let replicas = cli.replicas.unwrap_or(1);
            anyhow::ensure!(
                replicas == 1,
                "--replicas {replicas} needs a cluster: add --cluster 3, or use --nats-url"
            );
            (Broker::Launch(node), replicas)
        }
    };
    let options = ModuleOptions {
        limits: Limits::replicated(replicas.into()),
        deadline: cli.payment_timeout,
        ..ModuleOptions::with_storage(storage)
    };
    let tls = Credentials {
        tls_ca: cli.tls_ca.clone(),
        tls_client: cli.tls_cert.clone().zip(cli.tls_key.clone()),
        ..Credentials::default()
    };
    let command = cli.command.unwrap_or(Command::Run);
    let auth_dir = cli
        .auth_dir
        .clone()
        .or_else(|| cli.data_dir.as_ref().map(|dir| dir.join("auth")));
    if let Command::Auth(AuthCommand::Config) = command {
        let identities = Identities::load_or_generate(auth_dir.as_deref())?;
        print!("{}", identities.config_text());
        return Ok(());
    }
    let access = if let Some(file) = &cli.nkey {
        let seed = std::fs::read_to_string(file)
            .map_err(|err| anyhow::anyhow!("--nkey {}: {err}", file.display()))?;
        Access::Single(Credentials {
            nkey_seed: Some(seed.trim().to_owned()),
            ..Credentials::default()
        })
    } else if let Some(file) = &cli.creds {
        Access::Single(Credentials {
            creds_file: Some(file.clone()),
            ..Credentials::default()
        })
    } else if cli.no_auth || (matches!(broker, Broker::Existing(_)) && cli.auth_dir.is_none()) {
        if cli.no_auth {
            tracing::warn!(
                "--no-auth: the broker is open, any client may publish any event and call any \
                 endpoint (for experiments only)"
            );
        }
        Access::Open
    } else {
        Access::Identities(Identities::load_or_generate(auth_dir.as_deref())?)
    };
    if let Command::DeadLetters(action) = command {
        return dead_letters(broker, &access, &tls, storage, action).await;
    }

    let modules = cli.modules.unwrap_or_else(Modules::all);
    // The story needs users, products and orders; without payments, its
    // orders are not paid and fail at their deadline (--payment-timeout).
    let story = ["user", "product", "order"];
    anyhow::ensure!(
        story.iter().all(|m| modules.contains(m)) || matches!(command, Command::Serve),
        "the scenario needs the user, product and order modules; run any subset with \
         `serve --modules ...`"
    );

    let signal = interrupted();
    tokio::pin!(signal);

    let app = tokio::select! {
        app = App::start_some(broker, access, &tls, &modules, payment, options) => app?,
        // Dropping the half-started app kills the child broker.
        () = &mut signal => return Ok(()),
    };

    let mut signalled = false;
    let result = match command {
        Command::Serve => {
            let replicas = match replicas {
                0 => "as found (1 for new ones)".to_owned(),
                n => n.to_string(),
            };
            tracing::info!(
                url = app.url(),
                modules = modules.names().join(","),
                %replicas,
                "modules serving; connect to this URL (Ctrl-C to stop)"
            );
            // What runs here, in one place: an operator running several
            // processes reads which is which from these lines.
            println!("modules: {}", modules.names().join(","));
            println!("replicas: {replicas}");
            if let Some(identities) = app.access().identities() {
                let client = identities.seed_path(messaging_core::permissions::CLIENT);
                println!("client seed: {}", client.display());
                println!(
                    "connect: nats --server {} --nkey {} (nats-py: nkeys_seed=\"{}\")",
                    app.url(),
                    client.display(),
                    client.display()
                );
            }
            println!("serving on {}", app.url());
            (&mut signal).await;
            signalled = true;
            // What this process did, so that an operator running several
            // sees how the work split between them.
            for module in app.modules() {
                for stats in module.all_stats() {
                    tracing::info!(
                        module = module.name(),
                        handler = stats.handler,
                        handled = stats.completed,
                        failed = stats.failed,
                        "handled"
                    );
                }
            }
            Ok(())
        }
        _ => tokio::select! {
            outcome = demo::scenario::run(app.bus(), cli.payment_delay, cli.payment_timeout) => outcome.map(|_| ()),
            () = &mut signal => {
                signalled = true;
                Ok(())
            }
        },
    };
    // Shut down gracefully whatever happened above. A signal during the
    // shutdown counts as the first one if none came before; the one after
    // that means "now": exit at once (the child broker dies with us).
    let hurry = async {
        if !signalled {
            (&mut signal).await;
        }
        interrupted().await;
    };
    let shutdown = tokio::select! {
        shutdown = app.shutdown() => shutdown,
        () = hurry => {
            eprintln!("error: interrupted again during shutdown; exiting now");
            std::process::exit(130);
        }
    };
    result.and(shutdown)
}

/// `demo dead-letters list | retry ID`, against `--nats-url` or the store in `--data-dir`.
async fn dead_letters(
    broker: Broker,
    access: &Access,
    tls: &Credentials,
    storage: Storage,
    action: DeadLetterCommand,
) -> anyhow::Result<()> {
    let store_dir = match &broker {
        Broker::Launch(config) => Some(&config.store_dir),
        Broker::LaunchCluster(config) => Some(&config.node.store_dir),
        Broker::Existing(_) => None,
    };
    if let Some(store_dir) = store_dir {
        anyhow::ensure!(
            store_dir.is_some(),
            "dead letters live in the broker's store: pass --data-dir DIR or --nats-url URL"
        );
    }
    anyhow::ensure!(
        storage == Storage::Durable,
        "--ephemeral runs keep no dead letters to inspect"
    );
    let (server, connection, _) = demo::app::connect(broker, access, tls).await?;
    let letters = DeadLetters::open(connection.client(), storage).await?;
    let result = match action {
        DeadLetterCommand::List => letters.list().await.map_err(Into::into).map(|all| {
            if all.is_empty() {
                println!("no dead letters");
            }
            for l in all {
                println!(
                    "{}\t{:?}\t{}\tdeliveries={}\t{}",
                    l.id, l.kind, l.subject, l.deliveries, l.reason
                );
            }
        }),
        DeadLetterCommand::Retry { id } => letters
            .retry(&id)
            .await
            .map(|l| println!("re-published {} ({})", l.id, l.subject))
            .map_err(Into::into),
    };
    connection.drain(std::time::Duration::from_secs(10)).await?;
    if let Some(server) = server {
        server.stop().await?;
    }
    result
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handlers can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("interrupted: shutting down");
}
