//! The test kit: a real broker per test, with a connected [`Bus`], and a
//! module registered on it (`spawn_module`, the `spawn_app()` of module tests).
//!
//! ```ignore
//! let app = testkit::spawn_broker().await;
//! let handle = user::register(app.bus().client().clone()).await?;
//! let user = app.bus().request(&CreateUser { .. }).await?;
//! ```
//!
//! Each call starts its own `nats-server` (own port, own temporary store).
//! Dropping the [`TestBroker`] kills the server, so a failing (panicking) test
//! leaves nothing behind.

use std::future::Future;
use std::time::Duration;

use broker::auth::Authorization;
use broker::{BrokerConfig, ClusterConfig, NatsCluster, NatsServer};
use messaging_core::{
    Bus, Connection, Credentials, ModuleHandle, RegisterError, RequestError, ServiceError,
};

/// The structured error of a request that was expected to be refused.
///
/// Panics (failing the test) on success or on any other kind of failure,
/// such as a timeout: every refusal must be an explicit error reply.
pub fn expect_refusal<T: std::fmt::Debug>(result: Result<T, RequestError>) -> ServiceError {
    match result {
        Err(RequestError::Remote { error, .. }) => error,
        other => panic!("expected a structured error reply, got {other:?}"),
    }
}

/// A running broker and one connection to it.
pub struct TestBroker {
    // Field order matters on drop: the connection goes before the server.
    connection: Option<Connection>,
    server: NatsServer,
    /// How the test's connections prove who they are.
    credentials: Credentials,
}

/// Starts a broker and connects to it; panics with the launcher's error,
/// which says how to install `nats-server` when it is missing.
///
/// Authorization is on, as in production: the broker knows one identity,
/// the test's `admin` (every permission), and refuses anybody else. Tests
/// of least privilege itself use [`spawn_broker_with`] and the modules'
/// own identities.
pub async fn spawn_broker() -> TestBroker {
    let (authorization, credentials) = admin_only();
    spawn_broker_with(Some(authorization), credentials).await
}

/// An authorization that knows only a fresh `admin` identity (allowed
/// everything), and the credentials to connect as it.
pub fn admin_only() -> (Authorization, Credentials) {
    let admin = broker::auth::Identity::generate(messaging_core::permissions::ADMIN)
        .expect("an nkey can be generated");
    let granted = messaging_core::permissions::admin();
    let authorization = Authorization {
        users: vec![broker::auth::AuthorizedUser {
            nkey: admin.public_key.clone(),
            publish: granted.publish,
            subscribe: granted.subscribe,
            allow_responses: granted.allow_responses,
        }],
    };
    let credentials = Credentials::nkey(messaging_core::permissions::ADMIN, admin.seed);
    (authorization, credentials)
}

/// Starts a broker that knows only the users of `authorization` (open when
/// `None`), and connects to it with `credentials` (its `admin`, say).
pub async fn spawn_broker_with(
    authorization: Option<Authorization>,
    credentials: Credentials,
) -> TestBroker {
    let config = BrokerConfig {
        authorization,
        ..BrokerConfig::default()
    };
    let server = match NatsServer::start_with(config).await {
        Ok(server) => server,
        Err(err) => panic!("cannot start nats-server for the test: {err}"),
    };
    let connection = Connection::connect_as(server.url(), "test", &credentials)
        .await
        .expect("connect to the test broker");
    TestBroker {
        connection: Some(connection),
        server,
        credentials,
    }
}

impl TestBroker {
    /// The broker's client URL.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// How the test's connections prove who they are (its `admin`).
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The broker process.
    pub fn server(&self) -> &NatsServer {
        &self.server
    }

    /// The test's connection.
    pub fn bus(&self) -> &Bus {
        self.connection.as_ref().expect("connection open").bus()
    }

    /// Another, independent connection (e.g. to play a second process),
    /// with the test's credentials.
    pub async fn connect(&self, name: &str) -> Connection {
        Connection::connect_as(self.url(), name, &self.credentials)
            .await
            .expect("connect to the test broker")
    }

    /// Sends raw bytes to `subject` (to test what malformed input gets back):
    /// the reply body, or the structured error the service replied.
    pub async fn request_raw(
        &self,
        subject: &str,
        payload: &str,
    ) -> Result<bytes::Bytes, ServiceError> {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            self.bus()
                .client()
                .request(subject.to_owned(), payload.to_owned().into()),
        )
        .await
        .expect("a reply within 10 s: every request must get one")
        .expect("the request reaches a responder");
        match reply.headers.as_ref().and_then(ServiceError::from_headers) {
            Some(error) => Err(error),
            None => Ok(reply.payload),
        }
    }

    /// Drains the connection and stops the broker gracefully.
    pub async fn shutdown(mut self) {
        if let Some(connection) = self.connection.take() {
            connection
                .drain(Duration::from_secs(10))
                .await
                .expect("drain the test connection");
        }
        self.server.stop().await.expect("stop the test broker");
    }
}

/// A running 3-node cluster and one connection to all of its nodes.
pub struct TestCluster {
    // Field order matters on drop: the connection goes before the nodes.
    connection: Option<Connection>,
    cluster: NatsCluster,
    credentials: Credentials,
}

/// Starts a 3-node cluster (JetStream on every node, each its own store)
/// and connects to it with every node's URL; authorization on, as in
/// [`spawn_broker`].
pub async fn spawn_cluster() -> TestCluster {
    let (authorization, credentials) = admin_only();
    spawn_cluster_with(Some(authorization), credentials).await
}

/// [`spawn_cluster`], every node knowing only the users of `authorization`
/// (open when `None`); the test connects with `credentials`.
pub async fn spawn_cluster_with(
    authorization: Option<Authorization>,
    credentials: Credentials,
) -> TestCluster {
    let config = ClusterConfig {
        node: BrokerConfig {
            authorization,
            ..BrokerConfig::default()
        },
        ..ClusterConfig::default()
    };
    let cluster = match NatsCluster::start_with(config).await {
        Ok(cluster) => cluster,
        Err(err) => panic!("cannot start the test cluster: {err}"),
    };
    let connection = Connection::connect_as(&cluster.url(), "test", &credentials)
        .await
        .expect("connect to the test cluster");
    TestCluster {
        connection: Some(connection),
        cluster,
        credentials,
    }
}

impl TestCluster {
    /// Every node's URL, comma-separated.
    pub fn url(&self) -> String {
        self.cluster.url()
    }

    /// The nodes (to kill and restart one).
    pub fn cluster(&mut self) -> &mut NatsCluster {
        &mut self.cluster
    }

    /// The test's connection.
    pub fn bus(&self) -> &Bus {
        self.connection.as_ref().expect("connection open").bus()
    }

    /// Another, independent connection to the cluster, with the test's
    /// credentials.
    pub async fn connect(&self, name: &str) -> Connection {
        Connection::connect_as(&self.url(), name, &self.credentials)
            .await
            .expect("connect to the test cluster")
    }

    /// The node index that leads JetStream stream `stream` now.
    pub async fn leader_of(&self, stream: &str) -> Option<usize> {
        let js = async_nats::jetstream::new(self.bus().client().clone());
        let mut stream = js.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.as_deref()?;
        self.cluster.index_of(leader)
    }

    /// Drains the connection and stops every node gracefully.
    pub async fn shutdown(mut self) {
        if let Some(connection) = self.connection.take() {
            connection
                .drain(Duration::from_secs(10))
                .await
                .expect("drain the test connection");
        }
        let TestCluster { cluster, .. } = self;
        cluster.stop().await.expect("stop the test cluster");
    }
}

/// A broker with one module registered on the test's connection: the
/// `spawn_app()` of a module crate's tests.
pub struct TestModule {
    pub broker: TestBroker,
    pub module: ModuleHandle,
}

/// Starts a broker and registers a module with `register` (such as
/// `user::register`); panics if either fails.
pub async fn spawn_module<F, Fut>(register: F) -> TestModule
where
    F: FnOnce(async_nats::Client) -> Fut,
    Fut: Future<Output = Result<ModuleHandle, RegisterError>>,
{
    let broker = spawn_broker().await;
    let module = register(broker.bus().client().clone())
        .await
        .unwrap_or_else(|err| panic!("cannot register the module: {err}"));
    TestModule { broker, module }
}

impl TestModule {
    /// The test's connection.
    pub fn bus(&self) -> &Bus {
        self.broker.bus()
    }

    /// Stops the module gracefully, then the broker.
    pub async fn shutdown(self) {
        self.module.shutdown().await;
        self.broker.shutdown().await;
    }
}

/// The `CONNECT` line a raw protocol client (a test playing an attacker,
/// no library in the way) sends after the server's `INFO` line `info`:
/// signed with the nkey `seed`, as a broker with authorization requires.
pub fn raw_connect(info: &str, seed: &str) -> String {
    use base64::Engine;
    let info: serde_json::Value =
        serde_json::from_str(info.trim().strip_prefix("INFO ").expect("an INFO line"))
            .expect("INFO is JSON");
    let nonce = info["nonce"].as_str().expect("a nonce to sign");
    let key = nkeys::KeyPair::from_seed(seed).expect("a valid seed");
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(key.sign(nonce.as_bytes()).expect("signing works"));
    let connect = serde_json::json!({
        "verbose": false, "pedantic": false, "headers": true,
        "no_responders": true, "protocol": 1,
        "nkey": key.public_key(), "sig": signature,
    });
    format!("CONNECT {connect}\r\n")
}
