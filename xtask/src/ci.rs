//! `cargo xtask ci`: every check CI runs, in order, stopping at the first
//! failure. `.ci/run` calls exactly this, so a green local run means a green CI.

use anyhow::{bail, Context, Result};

use crate::{arch, cargo, docs, nats, tests};

/// One cargo invocation of the CI sequence.
struct Step {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

/// The cargo steps after the architecture and docs checks. Cheap checks come first so a
/// formatting slip fails in seconds, not after a full test build.
const CARGO_STEPS: &[Step] = &[
    Step {
        args: &["fmt", "--all", "--", "--check"],
        env: &[],
    },
    Step {
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        env: &[],
    },
    Step {
        args: &["test", "--workspace"],
        env: &[],
    },
    // The patched dependency's own tests (patches/async-nats/PATCHED.md):
    // not a workspace member, so `--workspace` does not run them.
    // `connection::` = `read_op` (header blocks), `write_op`,
    // `overflow_reply` (503 past a full endpoint buffer).
    Step {
        args: &["test", "-p", "async-nats", "--lib", "connection::"],
        env: &[],
    },
    // Broken intra-doc links and the like are bugs too.
    Step {
        args: &["doc", "--workspace", "--no-deps"],
        env: &[("RUSTDOCFLAGS", "-D warnings")],
    },
];

pub fn run() -> Result<()> {
    announce("nats-server setup");
    let server = nats::setup().context("xtask ci: step `nats-server setup` failed")?;
    println!(
        "nats-server v{} at {} ({})",
        server.version,
        server.path.display(),
        server.origin
    );
    // Every cargo command below gets NATS_SERVER_BIN, so the tests use the
    // server just checked rather than searching again on their own.
    let cargo = cargo::Cargo::with_nats(&server.path);
    // CI builds from scratch once: incremental caches would only double the
    // disk a full test build takes (CI machines can be short of it). An
    // explicit CARGO_INCREMENTAL from the caller is respected.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        std::env::set_var("CARGO_INCREMENTAL", "0");
    }

    announce("architecture check");
    arch::run(&cargo).context("xtask ci: step `architecture check` failed")?;

    // Before the cargo steps: a stale doc is as quick to find as a
    // formatting slip, and the message says how to fix it.
    announce("docs --check");
    docs::run(docs::Mode::Check).context("xtask ci: step `docs --check` failed")?;

    let mut totals: Option<tests::Totals> = None;
    for Step { args, env } in CARGO_STEPS {
        let mut command = cargo.command(args);
        command.envs(env.iter().copied());
        let step = env
            .iter()
            .map(|(key, value)| format!("{key}='{value}' "))
            .collect::<String>()
            + &cargo::describe(&command);
        announce(&step);
        let status = if args.first() == Some(&"test") {
            let (status, counted) = tests::run_counting(&mut command)?;
            totals = Some(match totals {
                Some(sum) => sum + counted,
                None => counted,
            });
            status
        } else {
            cargo::run(&mut command)?
        };
        if !status.success() {
            bail!("xtask ci: step `{step}` failed ({status})");
        }
    }

    println!("==> xtask ci: all checks passed");
    // One plain closing line with the totals, for whoever reads the log's end.
    if let Some(totals) = totals {
        println!("{totals}");
    }
    Ok(())
}

fn announce(step: &str) {
    println!("==> xtask ci: {step}");
}
