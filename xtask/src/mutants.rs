//! `cargo xtask mutants [ARGS...]`: mutation testing of the code whose bugs
//! the other tests would miss most quietly: the module state (payments,
//! orders and their recovery sweep, the catalogue), the framework's tables,
//! idempotency keys and event consumers.
//!
//! Runs `cargo mutants` (installing it with `cargo install cargo-mutants
//! --locked` if needed) with `.cargo/mutants.toml`, which names the files
//! and the few equivalent mutants left out; each mutant is tested by its
//! own package's tests, against a real broker (`NATS_SERVER_BIN`). The tree
//! is copied, never mutated in place, and one mutant runs at a time.
//! Prints what each file came to, every mutant the tests missed, and fails
//! if there is one. Slow (an hour or more): not part of `cargo xtask ci`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::{cargo, nats};

/// Where cargo-mutants writes its `mutants.out/`.
const OUTPUT_DIR: &str = "target/mutants";

/// How long one mutant's tests may run before it counts as a hang: the
/// tests start real brokers, and the machine may be busy.
const TEST_TIMEOUT_SECS: &str = "300";

/// The outcome files cargo-mutants writes, one mutant per line, in the
/// order the summary shows them.
const OUTCOMES: [&str; 4] = ["caught", "missed", "timeout", "unviable"];

pub fn run(args: &[String]) -> Result<ExitCode> {
    let server = nats::setup()?;
    eprintln!(
        "==> xtask mutants: using nats-server v{} at {}",
        server.version,
        server.path.display()
    );
    let cargo = cargo::Cargo::with_nats(&server.path);
    ensure_installed(&cargo)?;

    let mut command = cargo.command(&[
        "mutants",
        "--jobs",
        "1",
        "--timeout",
        TEST_TIMEOUT_SECS,
        "--output",
        OUTPUT_DIR,
    ]);
    command.args(args);
    eprintln!("==> xtask mutants: {}", cargo::describe(&command));
    let status = cargo::run(&mut command)?;

    let out = cargo::workspace_root().join(OUTPUT_DIR).join("mutants.out");
    let outcomes = read_outcomes(&out)?;
    print!("{}", summary(&outcomes));
    let missed = outcomes.get("missed").map_or(0, Vec::len);
    // cargo-mutants exits 2 when mutants were missed and 3 when some timed
    // out (a hang the tests would notice); anything else non-zero means it
    // could not do its job (the unmutated tree failing its tests, say).
    match status.code() {
        Some(0 | 2 | 3) => {}
        _ => bail!("cargo mutants failed ({status}); see {}", out.display()),
    }
    if missed > 0 {
        eprintln!(
            "==> xtask mutants: {missed} mutants missed (details in {})",
            out.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("==> xtask mutants: no mutant missed");
    Ok(ExitCode::SUCCESS)
}

/// Installs cargo-mutants unless `cargo mutants` already runs.
fn ensure_installed(cargo: &cargo::Cargo) -> Result<()> {
    let mut probe = cargo.command(&["mutants", "--version"]);
    let installed = probe
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    let mut install = cargo.command(&["install", "cargo-mutants", "--locked"]);
    eprintln!("==> xtask mutants: {}", cargo::describe(&install));
    let status = cargo::run(&mut install)?;
    if !status.success() {
        bail!("`{}` failed ({status})", cargo::describe(&install));
    }
    Ok(())
}

/// Each outcome's mutants (`file:line:col: what`), from `mutants.out`.
fn read_outcomes(out: &Path) -> Result<BTreeMap<&'static str, Vec<String>>> {
    let mut outcomes = BTreeMap::new();
    for outcome in OUTCOMES {
        let path = out.join(format!("{outcome}.txt"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // Not written when cargo-mutants stopped before testing.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let mutants = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_owned)
            .collect();
        outcomes.insert(outcome, mutants);
    }
    Ok(outcomes)
}

/// Per file, how many mutants were caught, missed, timed out and unviable,
/// then every missed mutant.
fn summary(outcomes: &BTreeMap<&'static str, Vec<String>>) -> String {
    let mut per_file: BTreeMap<&str, [usize; OUTCOMES.len()]> = BTreeMap::new();
    for (i, outcome) in OUTCOMES.iter().enumerate() {
        for mutant in outcomes.get(outcome).into_iter().flatten() {
            let file = mutant.split(':').next().unwrap_or(mutant);
            per_file.entry(file).or_default()[i] += 1;
        }
    }
    let mut text = format!(
        "{:<42} {:>6} {:>6} {:>7} {:>8}\n",
        "file", "caught", "missed", "timeout", "unviable"
    );
    let mut totals = [0; OUTCOMES.len()];
    for (file, counts) in &per_file {
        let [caught, missed, timeout, unviable] = counts;
        text += &format!("{file:<42} {caught:>6} {missed:>6} {timeout:>7} {unviable:>8}\n");
        for (total, count) in totals.iter_mut().zip(counts) {
            *total += count;
        }
    }
    let [caught, missed, timeout, unviable] = totals;
    text += &format!(
        "{:<42} {caught:>6} {missed:>6} {timeout:>7} {unviable:>8}\n",
        "total"
    );
    for mutant in outcomes.get("missed").into_iter().flatten() {
        text += &format!("MISSED {mutant}\n");
    }
    text
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn sums_up_outcomes_per_file_and_lists_the_missed() {
        let lines = |text: &str| text.lines().map(str::to_owned).collect::<Vec<_>>();
        let outcomes = BTreeMap::from([
            (
                "caught",
                lines("a/x.rs:1:2: replace f with ()\nb/y.rs:3:4: replace == with !="),
            ),
            ("missed", lines("a/x.rs:5:6: replace > with >=")),
            ("timeout", vec![]),
            (
                "unviable",
                lines("b/y.rs:7:8: replace g -> T with Default::default()"),
            ),
        ]);
        let text = summary(&outcomes);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert_eq!(rows[1], ["a/x.rs", "1", "1", "0", "0"]);
        assert_eq!(rows[2], ["b/y.rs", "1", "0", "0", "1"]);
        assert_eq!(rows[3], ["total", "2", "1", "0", "1"]);
        assert_eq!(
            text.lines().last(),
            Some("MISSED a/x.rs:5:6: replace > with >=")
        );
    }
}
