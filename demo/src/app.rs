//! The running system: broker, connection and modules, started and stopped
//! in the right order.
//!
//! Shutdown order is what makes it lossless (the seed's bonus challenge):
//! 1. every module stops intake (endpoints unsubscribed; event consumers stop
//!    pulling and hand back what they pulled but did not start);
//! 2. in-flight handlers finish, and what they published is flushed;
//! 3. the connection drains, and we wait for it to be *closed*, not just told to close;
//! 4. only then is the broker stopped.

use std::time::Duration;

use anyhow::Context as _;
use broker::{BrokerConfig, ClusterConfig, NatsCluster, NatsServer};
use messaging_core::{
    permissions, shutdown_all, Bus, Connection, Credentials, ModuleHandle, ModuleOptions,
    RegisterError, Storage,
};
use payment::PaymentConfig;

/// How long the connection may take to drain at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a whole shutdown may take.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the broker comes from.
#[derive(Debug, Clone)]
pub enum Broker {
    /// Launch a child `nats-server` and stop it at the end.
    Launch(BrokerConfig),
    /// Launch a cluster of child `nats-server`s and stop it at the end.
    LaunchCluster(ClusterConfig),
    /// Use a server (or a cluster: comma-separated URLs) someone else runs.
    Existing(String),
}

/// A broker this process launched (and stops at the end).
#[derive(Debug)]
pub enum Launched {
    Server(Box<NatsServer>),
    Cluster(NatsCluster),
}

impl Launched {
    /// What clients connect with: the URL, or every node's, comma-separated.
    pub fn url(&self) -> String {
        match self {
            Launched::Server(server) => server.url().to_owned(),
            Launched::Cluster(cluster) => cluster.url(),
        }
    }

    /// Stops the server, or every node, gracefully.
    pub async fn stop(self) -> Result<(), broker::BrokerError> {
        match self {
            Launched::Server(server) => server.stop().await,
            Launched::Cluster(cluster) => cluster.stop().await,
        }
    }
}

/// Who the processes connect as.
pub enum Access {
    /// Nobody proves anything: an open broker (`--no-auth`, or a server
    /// without authorization).
    Open,
    /// Each module as itself, the scenario and tools as `admin`, from the
    /// identities' seeds; a launched broker knows exactly these.
    Identities(crate::auth::Identities),
    /// One identity for everything in this process (`--nkey`, `--creds`).
    Single(Credentials),
}

impl Access {
    /// How `who` (a module, or `admin`) connects; `tls` added.
    pub fn credentials(&self, who: &str, tls: &Credentials) -> Credentials {
        let own = match self {
            Access::Open => Credentials::default(),
            Access::Identities(identities) => identities.credentials(who),
            Access::Single(credentials) => credentials.clone(),
        };
        Credentials {
            tls_ca: tls.tls_ca.clone(),
            tls_client: tls.tls_client.clone(),
            ..own
        }
    }

    /// The identities, when each module has its own.
    pub fn identities(&self) -> Option<&crate::auth::Identities> {
        match self {
            Access::Identities(identities) => Some(identities),
            _ => None,
        }
    }
}

/// The modules, connected and serving, each on its own connection (as its
/// own identity when there are identities).
pub struct App {
    server: Option<Launched>,
    url: String,
    /// The scenario's and tools' connection (`admin`).
    connection: Connection,
    modules: Vec<(Connection, ModuleHandle)>,
    access: Access,
}

impl App {
    /// Starts (or joins) the broker and registers every module, their
    /// state kept as `storage` says.
    pub async fn start(
        broker: Broker,
        payment: PaymentConfig,
        storage: Storage,
    ) -> anyhow::Result<App> {
        let options = ModuleOptions::with_storage(storage);
        let access = Access::Identities(crate::auth::Identities::load_or_generate(None)?);
        let tls = Credentials::default();
        Self::start_some(broker, access, &tls, &Modules::all(), payment, options).await
    }

    /// Starts (or joins) the broker and registers the `modules` asked for
    /// (the others may run in other processes, or not at all), each module
    /// connected as `access` says.
    pub async fn start_some(
        broker: Broker,
        access: Access,
        tls: &Credentials,
        modules: &Modules,
        payment: PaymentConfig,
        options: ModuleOptions,
    ) -> anyhow::Result<App> {
        let (server, connection, url) = connect(broker, &access, tls).await?;
        let mut app = App {
            server,
            url,
            connection,
            modules: Vec::new(),
            access,
        };
        for name in modules.names() {
            if let Err(err) = app.add_module(name, tls, &payment, options).await {
                // Stop what did start (the broker too, if ours), then say why.
                if let Err(stopping) = app.shutdown().await {
                    tracing::warn!(err = %stopping, "stopping after a failed start");
                }
                return Err(err);
            }
        }
        Ok(app)
    }

    /// Connects module `name` as itself and registers it.
    async fn add_module(
        &mut self,
        name: &str,
        tls: &Credentials,
        payment: &PaymentConfig,
        options: ModuleOptions,
    ) -> anyhow::Result<()> {
        let credentials = self.access.credentials(name, tls);
        let connection = Connection::connect_as(&self.url, name, &credentials)
            .await
            .with_context(|| format!("connecting the {name} module"))?;
        match register_one(connection.client(), name, payment, options).await {
            Ok(module) => {
                self.modules.push((connection, module));
                Ok(())
            }
            Err(err) => {
                let _ = connection.drain(DRAIN_TIMEOUT).await;
                Err(err.into())
            }
        }
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
    pub fn modules(&self) -> impl Iterator<Item = &ModuleHandle> {
        self.modules.iter().map(|(_, module)| module)
    }

    /// Who the processes connect as (the identities' seeds, if any).
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Stops everything gracefully; see the module docs for the order.
    ///
    /// Bounded: if the broker is gone, the modules cannot flush and the
    /// connection cannot drain; after [`SHUTDOWN_TIMEOUT`] we give up on
    /// them, and the broker (if ours) is killed when dropped.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let App {
            server,
            connection,
            modules,
            ..
        } = self;
        tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
            let (connections, modules): (Vec<_>, Vec<_>) = modules.into_iter().unzip();
            shutdown_all(modules).await;
            for module_connection in connections {
                module_connection.drain(DRAIN_TIMEOUT).await?;
            }
            connection.drain(DRAIN_TIMEOUT).await
        })
        .await
        .context("modules did not stop in time (is the broker gone?)")?
        .context("draining the connection")?;
        if let Some(server) = server {
            server.stop().await.context("stopping nats-server")?;
        }
        tracing::info!("shut down cleanly");
        Ok(())
    }
}

/// Registers every module on `client`, their state kept as `storage` says.
pub async fn register_modules(
    client: &async_nats::Client,
    payment: PaymentConfig,
    storage: Storage,
) -> Result<Vec<ModuleHandle>, RegisterError> {
    let options = ModuleOptions::with_storage(storage);
    register_some(client, &Modules::all(), payment, options).await
}

/// Registers the `modules` asked for on `client`, each with `options`.
pub async fn register_some(
    client: &async_nats::Client,
    modules: &Modules,
    payment: PaymentConfig,
    options: ModuleOptions,
) -> Result<Vec<ModuleHandle>, RegisterError> {
    let mut handles = Vec::new();
    for name in &modules.0 {
        handles.push(register_one(client, name, &payment, options).await?);
    }
    Ok(handles)
}

/// Registers the module `name` on `client`: the one place a new module is
/// added.
async fn register_one(
    client: &async_nats::Client,
    name: &str,
    payment: &PaymentConfig,
    options: ModuleOptions,
) -> Result<ModuleHandle, RegisterError> {
    let client = client.clone();
    match name {
        "user" => user::register_with(client, options).await,
        "product" => product::register_with(client, options).await,
        "order" => order::register_with(client, options).await,
        "payment" => payment::register_with(client, payment.clone(), options).await,
        "shipping" => shipping::register_with(client, options).await,
        other => Err(RegisterError::Config(format!(
            "module {other} is declared in the contract but this demo cannot run it"
        ))),
    }
}

/// A set of modules to run, by name, in the contract's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modules(Vec<&'static str>);

impl Modules {
    /// Every module the contract declares.
    pub fn all() -> Self {
        Self(contract::MODULES.iter().map(|m| m.name).collect())
    }

    /// Parses a comma-separated list (`order,payment`); names are checked
    /// against the contract.
    pub fn parse(list: &str) -> Result<Self, String> {
        let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
        if let Some(unknown) = wanted.iter().find(|w| contract::module(w).is_none()) {
            let known: Vec<&str> = contract::MODULES.iter().map(|m| m.name).collect();
            return Err(format!(
                "no module called {unknown:?} (modules: {})",
                known.join(", ")
            ));
        }
        let chosen: Vec<&'static str> = contract::MODULES
            .iter()
            .map(|m| m.name)
            .filter(|name| wanted.contains(name))
            .collect();
        Ok(Self(chosen))
    }

    pub fn names(&self) -> &[&'static str] {
        &self.0
    }

    pub fn is_all(&self) -> bool {
        *self == Self::all()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(&name)
    }
}

/// Starts (or joins) the broker and connects as `admin` (or as `access`
/// says); checks that it has JetStream. A launched broker knows the
/// identities of `access`, and only them; with [`Access::Open`] it is open.
pub async fn connect(
    broker: Broker,
    access: &Access,
    tls: &Credentials,
) -> anyhow::Result<(Option<Launched>, Connection, String)> {
    let authorization = access.identities().map(|ids| ids.authorization());
    let (server, url) = match broker {
        Broker::Launch(mut config) => {
            config.authorization = authorization;
            let server = NatsServer::start_with(config)
                .await
                .context("cannot start nats-server")?;
            tracing::info!(
                url = server.url(), version = %server.version(), pid = server.pid(),
                store = %server.store_dir().display(),
                "nats server started"
            );
            let url = server.url().to_owned();
            (Some(Launched::Server(Box::new(server))), url)
        }
        Broker::LaunchCluster(mut config) => {
            config.node.authorization = authorization;
            let nodes = config.nodes;
            let cluster = NatsCluster::start_with(config)
                .await
                .context("cannot start the nats-server cluster")?;
            for index in 0..cluster.len() {
                if let Some(node) = cluster.node(index) {
                    tracing::info!(
                        node = index + 1, url = node.url(), pid = node.pid(),
                        store = %node.store_dir().display(),
                        "nats cluster node started"
                    );
                }
            }
            tracing::info!(nodes, "nats cluster healthy");
            let url = cluster.url();
            (Some(Launched::Cluster(cluster)), url)
        }
        Broker::Existing(url) => (None, url),
    };
    let admin = permissions::ADMIN;
    let connection = Connection::connect_as(&url, "demo", &access.credentials(admin, tls)).await?;
    // Without JetStream nothing durable works: say so now, not as a hang later.
    async_nats::jetstream::new(connection.client().clone())
        .query_account()
        .await
        .with_context(|| {
            format!("the NATS server at {url} has no JetStream (start it with `nats-server -js`)")
        })?;
    tracing::info!(%url, "connected to nats server");
    Ok((server, connection, url))
}
