//! `cargo xtask bench [ARGS...]`: runs the benchmark binary, in release mode
//! (debug-build numbers are meaningless), against a checked nats-server.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::{cargo, nats};

/// The workspace package holding the benchmarks.
const BENCH_PACKAGE: &str = "bench";

pub fn run(args: &[String]) -> Result<ExitCode> {
    // Checked first: cheaper than setup, and the more useful message.
    let metadata = cargo::Cargo::plain().metadata()?;
    let has_bench = metadata["packages"]
        .as_array()
        .is_some_and(|packages| packages.iter().any(|p| p["name"] == BENCH_PACKAGE));
    if !has_bench {
        bail!("no bench crate yet (no workspace package named `{BENCH_PACKAGE}`)");
    }

    let server = nats::setup()?;
    eprintln!(
        "==> xtask bench: using nats-server v{} at {}",
        server.version,
        server.path.display()
    );
    let mut command = cargo::Cargo::with_nats(&server.path).command(&[
        "run",
        "--release",
        "--quiet",
        "-p",
        BENCH_PACKAGE,
        "--",
    ]);
    command.args(args);
    Ok(cargo::exit_code(cargo::run(&mut command)?))
}
