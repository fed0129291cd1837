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

/// cargo-mutants' configuration: the files, and the equivalent mutants.
const CONFIG: &str = ".cargo/mutants.toml";

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
    // cargo-mutants creates only the last directory of the path (and a
    // fresh clone built with CARGO_TARGET_DIR elsewhere has no target/).
    let output_dir = cargo::workspace_root().join(OUTPUT_DIR);
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;

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
    if args.iter().any(|arg| arg.starts_with("--list")) {
        // Listed, not tested: nothing to sum up.
        return Ok(cargo::exit_code(status));
    }

    let out = cargo::workspace_root().join(OUTPUT_DIR).join("mutants.out");
    let mut outcomes = read_outcomes(&out)?;
    let config = cargo::workspace_root().join(CONFIG);
    let config = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let excluded = leave_out(&mut outcomes, &plain_exclusions(&config));
    print!("{}", summary(&outcomes));
    for mutant in &excluded {
        println!("excluded as equivalent ({CONFIG}): {mutant}");
    }
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

/// The `exclude_re` patterns of the configuration that are plain text
/// (no regex syntax), for which a substring match is the regex match.
///
/// cargo-mutants 27.1 does not apply `exclude_re` to struct field deletions
/// (sourcefrog/cargo-mutants#632); those are left out here instead. Reads
/// the one array as our configuration writes it: strings, comments, `]`.
fn plain_exclusions(config: &str) -> Vec<String> {
    let Some(start) = config
        .lines()
        .position(|line| line.trim_start().starts_with("exclude_re"))
    else {
        return Vec::new();
    };
    let mut patterns = Vec::new();
    'lines: for (i, line) in config.lines().skip(start).enumerate() {
        // The first line: what follows `exclude_re =`.
        let line = match line.split_once('=') {
            Some((_, rest)) if i == 0 => rest,
            _ => line,
        };
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '#' => continue 'lines,
                ']' => break 'lines,
                '"' | '\'' => {
                    let mut text = String::new();
                    while let Some(next) = chars.next() {
                        match next {
                            _ if next == c => break,
                            // Basic strings escape; literal strings do not.
                            '\\' if c == '"' => text.extend(chars.next()),
                            _ => text.push(next),
                        }
                    }
                    patterns.push(text);
                }
                _ => {}
            }
        }
    }
    const REGEX_SYNTAX: &str = "\\.+*?()|[]{}^$";
    patterns.retain(|p| !p.chars().any(|c| REGEX_SYNTAX.contains(c)));
    patterns
}

/// Takes the mutants matching one of `patterns` out of `outcomes`, and
/// returns them.
fn leave_out(
    outcomes: &mut BTreeMap<&'static str, Vec<String>>,
    patterns: &[String],
) -> Vec<String> {
    let mut left_out = Vec::new();
    for mutants in outcomes.values_mut() {
        mutants.retain(|mutant| {
            let excluded = patterns.iter().any(|p| mutant.contains(p.as_str()));
            if excluded {
                left_out.push(mutant.clone());
            }
            !excluded
        });
    }
    left_out
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

    #[test]
    fn leaves_out_the_plain_text_exclusions_of_the_configuration() {
        let config = r#"
examine_globs = ["a.rs"] # not this array
exclude_re = [
    # a comment with "quotes"
    "delete field history from struct kv::Config", # trailing
    'replace f with \(\)', # regex syntax: cargo-mutants' business
    "with \"quotes\"",
]
other = ["not this either"]
"#;
        let patterns = plain_exclusions(config);
        assert_eq!(
            patterns,
            [
                "delete field history from struct kv::Config",
                "with \"quotes\""
            ]
        );
        let mut outcomes = BTreeMap::from([
            (
                "missed",
                vec![
                    "s.rs:1:2: delete field history from struct kv::Config expression".into(),
                    "s.rs:3:4: delete field max_age from struct kv::Config expression".into(),
                ],
            ),
            ("caught", vec!["s.rs:5:6: replace f with ()".into()]),
        ]);
        let left_out = leave_out(&mut outcomes, &patterns);
        assert_eq!(
            left_out,
            ["s.rs:1:2: delete field history from struct kv::Config expression"]
        );
        assert_eq!(outcomes["missed"].len(), 1);
        assert_eq!(outcomes["caught"].len(), 1);
    }

    #[test]
    fn reads_the_exclusions_of_the_real_configuration() {
        let config = std::fs::read_to_string(cargo::workspace_root().join(CONFIG)).unwrap();
        let patterns = plain_exclusions(&config);
        assert_eq!(patterns.len(), 4, "{patterns:?}");
        assert!(patterns.iter().all(|p| p.starts_with("delete field ")));
    }
}
