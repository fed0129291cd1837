//! The demo's command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::app::Modules;

/// The event-driven modular monolith on NATS: five modules, one bus.
#[derive(Debug, Parser)]
#[command(name = "demo", version)]
pub struct Cli {
    /// Use this NATS server instead of launching a child nats-server; a
    /// cluster's nodes comma-separated (`nats://a:4222,nats://b:4222`).
    #[arg(long, env = "NATS_URL", global = true)]
    pub nats_url: Option<String>,

    /// Launch a cluster of N nats-server nodes on loopback (routes between
    /// them, JetStream and its own store on each) instead of one server.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(2..=9), global = true)]
    pub cluster: Option<u8>,

    /// On how many nodes the event stream and every bucket are kept; an
    /// existing one with another count is changed to it. Default: 3 with a
    /// launched cluster (its size if smaller), 1 with a launched server; with
    /// --nats-url, as they are (1 for new ones).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5), global = true)]
    pub replicas: Option<u8>,

    /// How long each simulated payment takes (`0`, `200ms`, `1s`).
    #[arg(long, default_value = "1s", value_parser = parse_duration, global = true)]
    pub payment_delay: Duration,

    /// How long an order waits for its payment: one still pending then
    /// fails (`payment_timeout`) and its stock goes back; a hold whose order
    /// never came is released after as long. Kept by the broker.
    #[arg(long, default_value = "30s", value_parser = parse_timeout, global = true)]
    pub payment_timeout: Duration,

    /// Chance that a payment is declined, from 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, global = true)]
    pub payment_failure_rate: f64,

    /// Seed for the payment declines, for a reproducible sequence.
    #[arg(long, global = true)]
    pub seed: Option<u64>,

    /// Keep the launched broker's store (events and module state) in DIR,
    /// across runs; without it, a temporary store is removed at exit.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Port of the launched broker (default: a free one). A fixed port lets
    /// clients reconnect by themselves after a restart of `demo serve`.
    #[arg(long, global = true)]
    pub port: Option<u16>,

    /// Launch the broker without authorization: any client may do anything
    /// (for experiments; says so in a warning).
    #[arg(long, global = true)]
    pub no_auth: bool,

    /// Where the identities' nkey seeds are (`<identity>.nk`, made if
    /// missing). Default: `<data-dir>/auth`, or a temporary directory. With
    /// --nats-url, each module connects with its own seed from here.
    #[arg(long, value_name = "DIR", global = true)]
    pub auth_dir: Option<PathBuf>,

    /// With --nats-url: connect everything in this process with this nkey
    /// seed file.
    // Only with --nats-url: a broker the demo launches knows the generated
    // identities only, and would otherwise be started without them (open).
    #[arg(long, value_name = "FILE", global = true, requires = "nats_url", conflicts_with_all = ["creds", "auth_dir"])]
    pub nkey: Option<PathBuf>,

    /// With --nats-url: connect everything in this process with this
    /// credentials file (JWT and seed).
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        requires = "nats_url",
        conflicts_with = "auth_dir"
    )]
    pub creds: Option<PathBuf>,

    /// TLS: the CA certificate that signed the server's (TLS is required).
    #[arg(long, value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// TLS: this client's certificate (with --tls-key), for servers that
    /// verify clients.
    #[arg(long, value_name = "FILE", global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS: this client's private key (with --tls-cert).
    #[arg(long, value_name = "FILE", global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Keep module state in process memory instead of JetStream key-value buckets.
    #[arg(long, global = true)]
    pub ephemeral: bool,

    /// The modules to run in this process, comma-separated (default: all of
    /// them). Several processes, each with some, form one system.
    #[arg(long, value_parser = parse_modules, global = true)]
    pub modules: Option<Modules>,

    /// When the launched broker syncs JetStream writes to disk (see README).
    #[arg(long, value_enum, default_value_t = Sync::Interval, global = true)]
    pub sync: Sync,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scenario, then shut down (the default).
    Run,
    /// Keep the modules running for other clients until interrupted.
    Serve,
    /// List or retry the events the modules gave up on.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// The identities and the broker authorization they need.
    #[command(subcommand)]
    Auth(AuthCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Print the `authorization { ... }` block a nats-server needs to run
    /// the modules with least privilege, for the identities in --auth-dir
    /// (made if missing).
    Config,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// Print every dead letter, one per line.
    List,
    /// Publish the event of dead letter ID again, once its cause is fixed.
    Retry { id: String },
}

/// The broker's disk sync policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sync {
    /// nats-server's default: fsync every 2 minutes (fast; a machine crash
    /// can lose acknowledged writes).
    Interval,
    /// fsync every write before acknowledging it (slow; survives a machine crash).
    Always,
}

fn parse_modules(text: &str) -> Result<Modules, String> {
    Modules::parse(text)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|err| format!("{err} (examples: 0, 200ms, 1s)"))
}

/// A deadline: a human duration of at least 100 ms (a shorter one would
/// fail orders before any payment could come).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout < Duration::from_millis(100) {
        return Err("must be at least 100ms (examples: 500ms, 30s, 2m)".to_owned());
    }
    Ok(timeout)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse_like_people_write_them() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("x").is_err());
        assert_eq!(
            parse_modules("payment, order").unwrap().names(),
            ["order", "payment"]
        );
        assert!(parse_modules("order,billing")
            .unwrap_err()
            .contains("no module called \"billing\""));
    }
}
