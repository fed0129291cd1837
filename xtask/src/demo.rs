//! `cargo xtask demo [ARGS...]`: runs the demo against a checked nats-server,
//! so a fresh checkout needs only this one command.

use std::process::ExitCode;

use anyhow::Result;

use crate::{cargo, nats};

pub fn run(args: &[String]) -> Result<ExitCode> {
    let server = nats::setup()?;
    eprintln!(
        "==> xtask demo: using nats-server v{} at {}",
        server.version,
        server.path.display()
    );
    let mut command =
        cargo::Cargo::with_nats(&server.path).command(&["run", "--quiet", "-p", "demo", "--"]);
    command.args(args);
    // The demo's own exit code is the result (scenario failures must show).
    Ok(cargo::exit_code(cargo::run(&mut command)?))
}
