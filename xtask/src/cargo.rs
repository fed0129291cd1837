//! How xtask runs cargo: the `cargo` that invoked us, from the workspace root,
//! and, once setup has found a broker, with `NATS_SERVER_BIN` pointing at it so
//! tests and the demo use exactly the server setup checked.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::nats::BINARY_ENV;

/// The workspace root: xtask sits one level below it, whatever the caller's
/// working directory is.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent directory")
        .to_path_buf()
}

/// Builds cargo commands; carries the broker path once one is known.
pub struct Cargo {
    nats_bin: Option<PathBuf>,
}

impl Cargo {
    /// For tasks that run nothing needing a broker (e.g. `arch`).
    pub fn plain() -> Self {
        Cargo { nats_bin: None }
    }

    /// Every command built from this sets `NATS_SERVER_BIN=<server>`.
    pub fn with_nats(server: &Path) -> Self {
        Cargo {
            nats_bin: Some(server.to_path_buf()),
        }
    }

    /// `cargo <args>` in the workspace root. `CARGO` is set by `cargo run`
    /// to the cargo binary running us, so a rustup toolchain override or a
    /// non-PATH cargo is honoured by the nested commands too.
    pub fn command(&self, args: &[&str]) -> Command {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(args).current_dir(workspace_root());
        if let Some(bin) = &self.nats_bin {
            command.env(BINARY_ENV, bin);
        }
        command
    }

    /// `cargo metadata` for the workspace members only (their declared
    /// dependencies are all the architecture check needs).
    pub fn metadata(&self) -> Result<Value> {
        let mut command = self.command(&["metadata", "--format-version", "1", "--no-deps"]);
        let output = command
            .output()
            .with_context(|| format!("could not run `{}`", describe(&command)))?;
        if !output.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                describe(&command),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")
    }
}

/// Runs a command with inherited stdio and waits for it.
pub fn run(command: &mut Command) -> Result<ExitStatus> {
    command
        .status()
        .with_context(|| format!("could not run `{}`", describe(command)))
}

/// The command line as a user would type it (program name without its path).
pub fn describe(command: &Command) -> String {
    let program = Path::new(command.get_program())
        .file_name()
        .unwrap_or(command.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Passes a child's exit status on as ours, so `cargo xtask demo` fails exactly
/// as the demo did. A child killed by a signal maps to 128+signal, as shells do.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        // Exit codes are 0..=255 on Unix; elsewhere don't let a failure wrap to 0.
        return match u8::try_from(code) {
            Ok(code) => ExitCode::from(code),
            Err(_) => ExitCode::FAILURE,
        };
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return ExitCode::from(128u8.saturating_add(signal as u8));
        }
    }
    ExitCode::FAILURE
}
