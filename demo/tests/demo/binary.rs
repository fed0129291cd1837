//! The `demo` binary, run as a user runs it: exit status, the log lines,
//! graceful shutdown on signals, clear errors, and no broker left behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use broker::NatsServer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);

/// The seed's five steps, as the demo logs them.
const STEPS: [&str; 5] = [
    "user created",
    "product added",
    "order placed",
    "payment successful",
    "product stock updated",
];

fn demo(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_demo"));
    command
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn finish(child: Child) -> (std::process::ExitStatus, String) {
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("demo exits in time")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status, text)
}

/// The broker pid the demo logged (`pid=1234`).
pub(crate) fn broker_pid(output: &str) -> u32 {
    let line = output
        .lines()
        .find(|l| l.contains("nats server started"))
        .unwrap_or_else(|| panic!("no broker start line in:\n{output}"));
    let pid = line.split("pid=").nth(1).expect("pid field");
    pid.split_whitespace().next().unwrap().parse().unwrap()
}

fn assert_clean(output: &str) {
    for line in output.lines() {
        assert!(
            !line.contains(" ERROR ") && !line.contains(" WARN "),
            "unexpected line: {line}\n{output}"
        );
    }
    assert!(!output.contains("connection closed"), "{output}");
    assert!(output.contains("shut down cleanly"), "{output}");
}

pub(crate) fn assert_gone(pid: u32) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "nats-server {pid} is still there"
    );
}

#[tokio::test]
async fn the_demo_runs_the_scenario_and_exits_cleanly() {
    let child = demo(&["--payment-delay", "0"]).spawn().unwrap();
    let (status, output) = finish(child).await;
    assert!(status.success(), "{status}\n{output}");
    let mut last = 0;
    for step in STEPS {
        let at = output
            .find(step)
            .unwrap_or_else(|| panic!("missing step {step:?}:\n{output}"));
        assert!(at >= last, "step {step:?} out of order:\n{output}");
        last = at;
    }
    assert!(output.contains("stock=90"), "{output}");
    assert!(output.contains("payment declined"), "{output}");
    assert!(output.contains("reservation released"), "{output}");
    assert!(output.contains("insufficient_stock"), "{output}");
    assert_clean(&output);
    assert_gone(broker_pid(&output));
}

#[tokio::test]
async fn without_the_payment_module_the_story_shows_orders_failing_at_their_deadline() {
    let args = [
        "--modules",
        "user,product,order",
        "--payment-timeout",
        "500ms",
    ];
    let child = demo(&args).spawn().unwrap();
    let (status, output) = finish(child).await;
    assert!(status.success(), "{status}\n{output}");
    let timed_out = output
        .lines()
        .filter(|l| {
            l.contains("order failed") && l.contains("payment_timeout: not paid within 500ms")
        })
        .count();
    assert_eq!(
        timed_out, 2,
        "both orders fail at their deadline:\n{output}"
    );
    assert_eq!(
        output.matches("reservation released").count(),
        2,
        "{output}"
    );
    assert!(output.contains("stock=100 available=100"), "{output}");
    assert!(!output.contains("payment successful"), "{output}");
    assert_clean(&output);
    assert_gone(broker_pid(&output));
}

/// A `demo` process whose stdout is being read.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) seen: String,
    rest: tokio::task::JoinHandle<String>,
}

/// Connects to what `running` (a `demo serve` with auth on) serves, as
/// `identity`, with that identity's seed from the auth directory it printed.
pub(crate) async fn connect_to(running: &Running, identity: &str) -> messaging_core::Connection {
    let line = |prefix: &str| {
        running
            .seen
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", running.seen))
            .to_owned()
    };
    let url = line("serving on ");
    let client_seed = std::path::PathBuf::from(line("client seed: "));
    let seed_file = client_seed.with_file_name(format!("{identity}.nk"));
    let seed = std::fs::read_to_string(&seed_file).unwrap();
    let credentials = messaging_core::Credentials::nkey(identity, seed.trim().to_owned());
    messaging_core::Connection::connect_as(&url, identity, &credentials)
        .await
        .unwrap()
}

/// Starts `demo` with `args` and returns once it printed a line containing
/// `marker`.
pub(crate) async fn start_until(args: &[&str], marker: &str) -> Running {
    let mut child = demo(args).spawn().unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(marker) {
                return true;
            }
        }
        false
    })
    .await
    .expect("marker in time");
    assert!(found, "demo ended before {marker:?}:\n{seen}");
    let rest = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });
    Running {
        child,
        pid,
        seen,
        rest,
    }
}

impl Running {
    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid as i32), signal).unwrap();
    }

    pub(crate) async fn finish(self) -> (std::process::ExitStatus, String) {
        let (status, stderr) = finish(self.child).await;
        let rest = self.rest.await.unwrap();
        (status, self.seen + &rest + &stderr)
    }
}

#[tokio::test]
async fn serve_keeps_the_modules_up_until_sigterm_then_stops_cleanly() {
    let running = start_until(&["serve", "--payment-delay", "0"], "serving on").await;
    let url = running
        .seen
        .lines()
        .find_map(|l| l.strip_prefix("serving on "))
        .expect("the URL to connect to")
        .to_owned();

    // Auth is on: nobody connects without a known key...
    let anonymous = async_nats::ConnectOptions::new()
        .max_reconnects(1)
        .connect(url.as_str())
        .await;
    assert!(anonymous.is_err(), "an anonymous client got in");
    // ...and a client with the printed seed uses the modules.
    let client = connect_to(&running, "client").await;
    let name = contract::values::Name::parse("Grace").unwrap();
    let user = client
        .bus()
        .request(&contract::user::CreateUser { name })
        .await
        .unwrap();
    assert_eq!(user.name.as_str(), "Grace");
    client.drain(WAIT).await.unwrap();

    running.signal(Signal::SIGTERM);
    let (status, output) = running.finish().await;
    assert!(status.success(), "{status}\n{output}");
    assert_clean(&output);
    assert_gone(broker_pid(&output));
}

#[tokio::test]
async fn ctrl_c_in_the_middle_of_the_scenario_shuts_down_gracefully() {
    // Interrupted while the first payment (2 s) is in flight.
    let running = start_until(&["--payment-delay", "2s"], "order placed").await;
    running.signal(Signal::SIGINT);
    let (status, output) = running.finish().await;
    assert!(status.success(), "{status}\n{output}");
    assert!(output.contains("interrupted"), "{output}");
    assert_clean(&output);
    assert_gone(broker_pid(&output));
}

#[tokio::test]
async fn an_existing_server_can_be_used_with_nats_url() {
    // Somebody else's server, configured with `demo auth config`'s users:
    // the demo connects each module with its seed from --auth-dir.
    let auth = tempfile::tempdir().unwrap();
    let identities = demo::auth::Identities::load_or_generate(Some(auth.path())).unwrap();
    let server = NatsServer::start_with(broker::BrokerConfig {
        authorization: Some(identities.authorization()),
        ..Default::default()
    })
    .await
    .unwrap();
    let auth_dir = auth.path().to_str().unwrap();
    let args = [
        "--nats-url",
        server.url(),
        "--auth-dir",
        auth_dir,
        "--payment-delay",
        "0",
    ];
    let child = demo(&args).spawn().unwrap();
    let (status, output) = finish(child).await;
    assert!(status.success(), "{status}\n{output}");
    assert!(
        !output.contains("nats server started"),
        "no broker of its own:\n{output}"
    );
    for step in STEPS {
        assert!(output.contains(step), "missing {step:?}:\n{output}");
    }
    assert_clean(&output);

    // One identity for the whole process (--nkey): the admin's does it all.
    let admin = identities.seed_path("admin");
    let admin = admin.to_str().unwrap();
    let args = [
        "--nats-url",
        server.url(),
        "--nkey",
        admin,
        "--payment-delay",
        "0",
    ];
    let (status, output) = finish(demo(&args).spawn().unwrap()).await;
    assert!(status.success(), "{status}\n{output}");
    assert_clean(&output);

    // Without credentials, that server is closed to it.
    let child = demo(&["--nats-url", server.url(), "--payment-delay", "0"])
        .spawn()
        .unwrap();
    let (status, output) = finish(child).await;
    assert!(!status.success(), "{output}");
    assert!(output.contains("authorization violation"), "{output}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_flags_and_unreachable_servers_are_one_clear_error() {
    let cases: [(&[&str], &str); 4] = [
        // An identity for somebody else's broker, never for our own (which
        // would then be launched without the generated users: open).
        (&["--nkey", "seed.nk"], "--nats-url"),
        (&["--payment-delay", "soon"], "invalid value 'soon'"),
        (&["--payment-failure-rate", "2"], "not between 0 and 1"),
        (
            &["--nats-url", "nats://127.0.0.1:1"],
            "error: cannot connect to NATS at nats://127.0.0.1:1",
        ),
    ];
    for (args, expected) in cases {
        let child = demo(args).spawn().unwrap();
        let (status, output) = finish(child).await;
        assert!(!status.success(), "{args:?} must fail:\n{output}");
        assert!(output.contains(expected), "{args:?}:\n{output}");
        assert!(!output.contains("panicked"), "{args:?}:\n{output}");
    }
}

#[tokio::test]
async fn a_server_without_jetstream_is_one_clear_error() {
    let server = NatsServer::start_with(broker::BrokerConfig {
        jetstream: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let child = demo(&["--nats-url", server.url(), "--payment-delay", "0"])
        .spawn()
        .unwrap();
    let (status, output) = finish(child).await;
    assert!(!status.success(), "{output}");
    assert!(output.contains("has no JetStream"), "{output}");
    assert!(!output.contains("panicked"), "{output}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn dead_letters_can_be_listed_and_retried_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();

    // A system on that store receives a malformed event and gives up on it.
    let server = NatsServer::start_with(broker::BrokerConfig {
        store_dir: Some(data.path().to_owned()),
        ..Default::default()
    })
    .await
    .unwrap();
    let connection = messaging_core::Connection::connect(server.url(), "test")
        .await
        .unwrap();
    let payment = payment::register(
        connection.client().clone(),
        payment::PaymentConfig::default(),
    )
    .await
    .unwrap();
    connection
        .bus()
        .jetstream()
        .publish(contract::order::CREATED, "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    payment
        .wait_until(contract::order::CREATED, WAIT, |s| s.dead_lettered == 1)
        .await
        .unwrap();
    payment.shutdown().await;
    connection.drain(WAIT).await.unwrap();
    server.stop().await.unwrap();

    let list = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, output) = finish(demo(&args).spawn().unwrap()).await;
        assert!(status.success(), "{args:?}: {output}");
        output
    };
    let listed = list(vec![
        "dead-letters".into(),
        "list".into(),
        "--data-dir".into(),
        dir.clone(),
    ])
    .await;
    let line = listed
        .lines()
        .find(|l| l.contains(contract::order::CREATED))
        .unwrap_or_else(|| panic!("no dead letter listed:\n{listed}"));
    assert!(
        line.contains("Poisoned") && line.contains("undecodable"),
        "{line}"
    );
    let id = line.split('\t').next().unwrap().to_owned();
    assert_eq!(id.split('.').next(), Some("payment_take_payment"));

    let retried = list(vec![
        "dead-letters".into(),
        "retry".into(),
        id.clone(),
        "--data-dir".into(),
        dir.clone(),
    ])
    .await;
    assert!(retried.contains(&format!("re-published {id}")), "{retried}");
    let empty = list(vec![
        "dead-letters".into(),
        "list".into(),
        "--data-dir".into(),
        dir.clone(),
    ])
    .await;
    assert!(empty.contains("no dead letters"), "{empty}");

    // Ids that cannot be a dead letter get that answer, at once.
    let long = "x".repeat(5000);
    for bad in ["*", ">", "a b", long.as_str(), id.as_str()] {
        let args = ["dead-letters", "retry", bad, "--data-dir", dir.as_str()];
        let (status, output) = finish(demo(&args).spawn().unwrap()).await;
        assert!(!status.success(), "{bad:.20}: {output}");
        assert!(output.contains("no dead letter"), "{bad:.20}: {output}");
        assert!(!output.contains("unavailable"), "{bad:.20}: {output}");
    }

    let (status, output) = finish(demo(&["dead-letters", "list"]).spawn().unwrap()).await;
    assert!(!status.success());
    assert!(
        output.contains("pass --data-dir DIR or --nats-url URL"),
        "{output}"
    );
}

#[tokio::test]
async fn sigterm_still_ends_the_demo_when_its_broker_died() {
    let running = start_until(&["serve", "--payment-delay", "0"], "serving on").await;
    let broker = broker_pid(&running.seen);
    kill(Pid::from_raw(broker as i32), Signal::SIGKILL).unwrap();
    running.signal(Signal::SIGTERM);
    // Bounded by the demo's own shutdown deadline, not by a reconnect that
    // will never happen.
    let (status, output) = running.finish().await;
    assert!(
        !status.success(),
        "it could not shut down cleanly:\n{output}"
    );
    assert!(output.contains("error: "), "one clear error:\n{output}");
    assert!(!output.contains("panicked"), "{output}");
}

#[tokio::test]
async fn no_auth_opens_the_broker_and_says_so() {
    let running = start_until(
        &["serve", "--no-auth", "--payment-delay", "0"],
        "serving on",
    )
    .await;
    assert!(running.seen.contains("WARN"), "{}", running.seen);
    assert!(running.seen.contains("--no-auth"), "{}", running.seen);
    assert!(!running.seen.contains("client seed"), "{}", running.seen);
    let url = running
        .seen
        .lines()
        .find_map(|l| l.strip_prefix("serving on "))
        .unwrap()
        .to_owned();
    let anyone = messaging_core::Connection::connect(&url, "anyone")
        .await
        .unwrap();
    let name = contract::values::Name::parse("Open").unwrap();
    anyone
        .bus()
        .request(&contract::user::CreateUser { name })
        .await
        .unwrap();
    anyone.drain(WAIT).await.unwrap();
    running.signal(Signal::SIGTERM);
    let (status, output) = running.finish().await;
    assert!(status.success(), "{output}");
}

#[tokio::test]
async fn auth_config_prints_a_user_per_identity_and_keeps_the_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let auth_dir = dir.path().to_str().unwrap();
    let (status, first) = finish(
        demo(&["auth", "config", "--auth-dir", auth_dir])
            .spawn()
            .unwrap(),
    )
    .await;
    assert!(status.success(), "{first}");
    assert!(first.contains("authorization {"), "{first}");
    let identities = contract::MODULES.len() + 2;
    assert_eq!(first.matches("nkey: \"U").count(), identities, "{first}");
    for identity in ["client", "admin", "order"] {
        assert!(dir.path().join(format!("{identity}.nk")).is_file());
    }
    // The same seeds, the same users, the next time.
    let (_, second) = finish(
        demo(&["auth", "config", "--auth-dir", auth_dir])
            .spawn()
            .unwrap(),
    )
    .await;
    assert_eq!(first, second);
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, as PEM
/// files in `dir`: (ca, server cert, server key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, server.pem()).unwrap();
    std::fs::write(&paths.2, server_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn a_tls_server_is_used_with_its_ca_and_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert_file, key_file) = certificates(dir.path());
    let identities =
        demo::auth::Identities::load_or_generate(Some(&dir.path().join("auth"))).unwrap();
    let server = NatsServer::start_with(broker::BrokerConfig {
        authorization: Some(identities.authorization()),
        tls: Some(broker::ServerTls {
            cert_file,
            key_file,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let auth_dir = dir.path().join("auth");
    let auth_dir = auth_dir.to_str().unwrap();
    let ca = ca.to_str().unwrap();
    let url = server.url();
    let base = [
        "--nats-url",
        url,
        "--auth-dir",
        auth_dir,
        "--payment-delay",
        "0",
    ];

    let with_ca: Vec<&str> = base.iter().copied().chain(["--tls-ca", ca]).collect();
    let (status, output) = finish(demo(&with_ca).spawn().unwrap()).await;
    assert!(status.success(), "{status}\n{output}");
    for step in STEPS {
        assert!(output.contains(step), "missing {step:?}:\n{output}");
    }

    // Not trusting its certificate, the demo does not talk to it.
    let (status, output) = finish(demo(&base).spawn().unwrap()).await;
    assert!(!status.success(), "{output}");
    assert!(output.contains("error: "), "{output}");
    server.stop().await.unwrap();
}

/// The peak resident memory of process `pid` so far (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib / 1024.0
}

/// The bound README states for `demo serve` flooded with 1 MB requests.
const BIG_REQUESTS_RSS_BOUND_MIB: f64 = 512.0;

#[tokio::test]
async fn a_flood_of_1_mb_requests_is_refused_and_memory_stays_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const REQUESTS: usize = 1000;
    const WAVE: usize = 100;
    let running = start_until(&["serve", "--payment-delay", "0"], "serving on").await;
    let line = |prefix: &str| {
        running
            .seen
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap()
            .to_owned()
    };
    let url = line("serving on ");
    let seed = std::fs::read_to_string(line("client seed: ")).unwrap();

    // A raw client (no library buffering for it): 1,000 valid-looking
    // 1,000,000-byte `user.create` requests, in waves of 100 pipelined
    // ones, each wave's replies read before the next. Whatever the demo
    // kept of a request would add up to a gigabyte; a wave in flight is
    // 100 MB.
    let address = url.trim_start_matches("nats://");
    let (read, mut write) = tokio::net::TcpStream::connect(address)
        .await
        .unwrap()
        .into_split();
    let mut read = BufReader::new(read);
    let mut info = String::new();
    read.read_line(&mut info).await.unwrap();
    let connect = testkit::raw_connect(&info, seed.trim());
    write.write_all(connect.as_bytes()).await.unwrap();
    write
        .write_all(b"SUB _INBOX_client.big.> 1\r\n")
        .await
        .unwrap();
    // A valid user (unknown fields are ignored), padded to 1,000,000 bytes.
    let pad = "x".repeat(1_000_000 - r#"{"name":"Ada","pad":""}"#.len());
    let payload = format!(r#"{{"name":"Ada","pad":"{pad}"}}"#);

    // Every one is answered, `413` (refused before it is decoded).
    let (mut answered, mut too_large) = (0, 0);
    let mut body = Vec::new();
    for wave in 0..REQUESTS / WAVE {
        for i in wave * WAVE..(wave + 1) * WAVE {
            let head = format!(
                "PUB user.create _INBOX_client.big.{i} {}\r\n",
                payload.len()
            );
            write.write_all(head.as_bytes()).await.unwrap();
            write.write_all(payload.as_bytes()).await.unwrap();
            write.write_all(b"\r\n").await.unwrap();
        }
        while answered < (wave + 1) * WAVE {
            let mut line = String::new();
            tokio::time::timeout(WAIT, read.read_line(&mut line))
                .await
                .expect("every request is answered")
                .unwrap();
            if line.starts_with("HMSG ") || line.starts_with("MSG ") {
                let len: usize = line.split_whitespace().last().unwrap().parse().unwrap();
                body.resize(len + 2, 0);
                read.read_exact(&mut body).await.unwrap();
                if String::from_utf8_lossy(&body).contains("413") {
                    too_large += 1;
                }
                answered += 1;
            } else if line.starts_with("PING") {
                write.write_all(b"PONG\r\n").await.unwrap();
            }
        }
    }
    assert_eq!(too_large, REQUESTS);
    let peak = peak_rss_mib(running.pid);
    println!("1 MB flood: {REQUESTS} answered 413, demo peak RSS {peak:.1} MiB");
    assert!(
        peak < BIG_REQUESTS_RSS_BOUND_MIB,
        "peak RSS {peak:.1} MiB for {REQUESTS} MB sent"
    );

    running.signal(Signal::SIGTERM);
    let (status, output) = running.finish().await;
    assert!(status.success(), "{output}");
}
