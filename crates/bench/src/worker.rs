//! A payment instance in a process of its own, for the scale-out figures:
//! the bench runs itself again (`bench --payment-worker URL`), so the
//! second payment instance is a real separate process, as in production.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use messaging_core::{Connection, ModuleOptions, Storage};
use payment::PaymentConfig;
use tokio::io::{AsyncBufReadExt, BufReader};

/// What the worker prints once its module serves.
const READY: &str = "payment worker ready";

/// The worker's side: registers the payment module (delay 0) on `url`,
/// says so, and serves until SIGTERM, then stops gracefully.
pub async fn serve(url: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, "bench-payment-worker").await?;
    let payment = PaymentConfig {
        delay: Duration::ZERO,
        ..PaymentConfig::default()
    };
    // Default limits: replicas as the first instance set them.
    let options = ModuleOptions::with_storage(Storage::Durable);
    let module = payment::register_with(connection.client().clone(), payment, options).await?;
    println!("{READY}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    module.shutdown().await;
    connection.drain(Duration::from_secs(10)).await?;
    Ok(())
}

/// A running worker process.
pub struct Worker {
    child: tokio::process::Child,
}

impl Worker {
    /// Starts a worker against `url` and waits until it serves.
    pub async fn start(url: &str) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe().context("the bench's own path")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["--payment-worker", url])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a payment worker")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(READY) {
                    return Ok(true);
                }
            }
            anyhow::Ok(false)
        })
        .await
        .context("the payment worker did not start within 30 s")??;
        anyhow::ensure!(ready, "the payment worker exited before serving");
        Ok(Worker { child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the worker gracefully (SIGTERM) and checks it exited cleanly.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("the payment worker did not stop within 30 s")??;
        anyhow::ensure!(status.success(), "the payment worker failed: {status}");
        Ok(())
    }
}
