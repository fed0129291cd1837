//! The running system: broker, connection and modules, started and stopped
//! in the right order.
//!
//! Shutdown order is what makes it lossless (the seed's bonus challenge):
//! 1. every module stops intake (endpoints unsubscribed, event subscriptions drained);
//! 2. in-flight handlers finish, and what they published is flushed;
//! 3. the connection drains, and we wait for it to be *closed*, not just told to close;
//! 4. only then is the broker stopped.

use std::time::Duration;

use anyhow::Context as _;
use messaging_core::broker::{BrokerConfig, NatsServer};
use messaging_core::{shutdown_all, Bus, Connection, ModuleHandle};
use payment::PaymentConfig;

/// How long the connection may take to drain at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the broker comes from.
#[derive(Debug, Clone)]
pub enum Broker {
    /// Launch a child `nats-server` and stop it at the end.
    Launch(BrokerConfig),
    /// Use a server someone else runs.
    Existing(String),
}

/// The four modules, connected and serving.
pub struct App {
    server: Option<NatsServer>,
    url: String,
    connection: Connection,
    modules: Vec<ModuleHandle>,
}

impl App {
    /// Starts (or joins) the broker and registers the four modules.
    pub async fn start(broker: Broker, payment: PaymentConfig) -> anyhow::Result<App> {
        let (server, url) = match broker {
            Broker::Launch(config) => {
                let server = NatsServer::start_with(config)
                    .await
                    .context("cannot start nats-server")?;
                tracing::info!(
                    url = server.url(), version = %server.version(), pid = server.pid(),
                    "nats server started"
                );
                let url = server.url().to_owned();
                (Some(server), url)
            }
            Broker::Existing(url) => (None, url),
        };
        let connection = Connection::connect(&url, "demo").await?;
        tracing::info!(%url, "connected to nats server");

        let client = connection.client().clone();
        let modules = vec![
            user::register(client.clone()).await?,
            product::register(client.clone()).await?,
            order::register(client.clone()).await?,
            payment::register(client, payment).await?,
        ];
        Ok(App {
            server,
            url,
            connection,
            modules,
        })
    }

    /// The bus the scenario (or anyone in-process) talks on.
    pub fn bus(&self) -> &Bus {
        self.connection.bus()
    }

    /// The URL other clients connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The running modules (for their handler counters).
    pub fn modules(&self) -> &[ModuleHandle] {
        &self.modules
    }

    /// Stops everything gracefully; see the module docs for the order.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let App {
            server,
            connection,
            modules,
            ..
        } = self;
        shutdown_all(modules).await;
        connection
            .drain(DRAIN_TIMEOUT)
            .await
            .context("draining the connection")?;
        if let Some(server) = server {
            server.stop().await.context("stopping nats-server")?;
        }
        tracing::info!("shut down cleanly");
        Ok(())
    }
}
