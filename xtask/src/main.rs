//! The project's task runner, run as `cargo xtask <task>` (the alias lives in
//! `.cargo/config.toml`), following the rust-analyzer xtask convention: build
//! and CI chores are written in Rust, so they need nothing but cargo.
//!
//! This file only dispatches; each task lives in its own module.

mod arch;
mod bench;
mod cargo;
mod ci;
mod demo;
mod docs;
mod mutants;
mod nats;
mod tests;

use std::process::ExitCode;

const USAGE: &str = "\
Usage: cargo xtask <TASK> [ARGS...]

Tasks:
  setup            find or install nats-server >= 2.14.0 and print its path and version
  demo [ARGS...]   run the demo against that server: cargo run -p demo -- ARGS...
  bench [ARGS...]  run the benchmarks in release mode: cargo run --release -p bench -- ARGS...
  arch             check the crate graph: each module of contract::MODULES depends on
                   messaging-core and contract, never on another module
  docs [--check]   generate docs/asyncapi.yaml, docs/permissions.md and the README/ARCHITECTURE
                   blocks from the contract; --check fails if a committed file differs
  ci               setup, arch, docs --check, fmt --check, clippy -D warnings, test, doc -D warnings
  mutants [ARGS...]
                   cargo mutants on the state, store, idempotency and consumer code (installs
                   cargo-mutants if missing; slow, not part of ci); fails if a mutant is missed
  help             print this message
";

/// Exit code for a command line we cannot make sense of (as sysexits' EX_USAGE
/// is rarely used, 2 is the conventional shell/clap choice).
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next();
    let rest: Vec<String> = args.collect();

    let result = match task.as_deref() {
        None | Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(task @ ("setup" | "arch" | "ci")) if !rest.is_empty() => {
            eprintln!(
                "error: task `{task}` takes no arguments (got: {})\n",
                rest.join(" ")
            );
            eprint!("{USAGE}");
            return ExitCode::from(USAGE_ERROR);
        }
        Some("setup") => nats::setup().map(|server| {
            println!(
                "nats-server v{} at {} ({})",
                server.version,
                server.path.display(),
                server.origin
            );
            ExitCode::SUCCESS
        }),
        Some("arch") => arch::run(&cargo::Cargo::plain()).map(|()| ExitCode::SUCCESS),
        Some("ci") => ci::run().map(|()| ExitCode::SUCCESS),
        Some("docs") => match rest.as_slice() {
            [] => docs::run(docs::Mode::Write),
            [flag] if flag == "--check" => docs::run(docs::Mode::Check),
            _ => {
                eprintln!(
                    "error: task `docs` takes only `--check` (got: {})\n",
                    rest.join(" ")
                );
                eprint!("{USAGE}");
                return ExitCode::from(USAGE_ERROR);
            }
        }
        .map(|()| ExitCode::SUCCESS),
        Some("demo") => demo::run(&rest),
        Some("bench") => bench::run(&rest),
        Some("mutants") => mutants::run(&rest),
        Some(unknown) => {
            eprintln!("error: unknown task `{unknown}`\n");
            eprint!("{USAGE}");
            return ExitCode::from(USAGE_ERROR);
        }
    };

    result.unwrap_or_else(|err| {
        // `{:#}` prints the whole context chain on one line ("a: b: c").
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}
