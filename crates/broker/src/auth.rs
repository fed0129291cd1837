//! Who may connect to the broker, and what each may do: NATS nkey users,
//! one per identity, with publish and subscribe permissions, written into
//! the server's configuration; and the identities' seeds, written one file
//! each, readable by their owner only.
//!
//! What the permissions *are* is not decided here (the framework derives
//! them from the modules' declarations); this only writes them down.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The users a server accepts (nobody else may connect).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorization {
    pub users: Vec<AuthorizedUser>,
}

/// One nkey user and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedUser {
    /// The user's public key (`U...`).
    pub nkey: String,
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to (`"subject queue"` for one queue group).
    pub subscribe: Vec<String>,
    /// It may reply once to each request it receives.
    pub allow_responses: bool,
}

impl Authorization {
    /// The `authorization { ... }` block of the server's configuration.
    pub fn config_text(&self) -> String {
        let quoted = |text: &str| serde_json::to_string(text).expect("a string serializes");
        let list = |subjects: &[String]| {
            subjects
                .iter()
                .map(|s| quoted(s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = String::from("authorization {\n  users = [\n");
        for user in &self.users {
            text += &format!(
                "    {{ nkey: {}, permissions: {{ publish: {{ allow: [{}] }}, \
                 subscribe: {{ allow: [{}] }}, allow_responses: {} }} }}\n",
                quoted(&user.nkey),
                list(&user.publish),
                list(&user.subscribe),
                user.allow_responses
            );
        }
        text + "  ]\n}\n"
    }
}

/// An identity's key pair.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    /// The secret seed (`SU...`): what a client connects with.
    pub seed: String,
    /// The public key (`U...`): what the server knows it by.
    pub public_key: String,
}

/// Why an identity could not be made, kept or read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("nkey: {0}")]
    Key(#[from] nkeys::error::Error),
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Identity {
    /// A new user key pair for `name`.
    pub fn generate(name: &str) -> Result<Self, AuthError> {
        let pair = nkeys::KeyPair::new_user();
        Ok(Self {
            name: name.to_owned(),
            seed: pair.seed()?,
            public_key: pair.public_key(),
        })
    }

    /// The identity `name` whose seed is in `dir/<name>.nk`, if the file
    /// exists (so a restart on the same data keeps its identities);
    /// otherwise a new one, written there, readable by the owner only.
    pub fn load_or_generate(dir: &Path, name: &str) -> Result<Self, AuthError> {
        let path = seed_path(dir, name);
        let file_error = |source| AuthError::File {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(seed) => {
                let pair = nkeys::KeyPair::from_seed(seed.trim())?;
                Ok(Self {
                    name: name.to_owned(),
                    seed: seed.trim().to_owned(),
                    public_key: pair.public_key(),
                })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate(name)?;
                std::fs::create_dir_all(dir).map_err(file_error)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(file_error)?;
                writeln!(file, "{}", identity.seed).map_err(file_error)?;
                Ok(identity)
            }
            Err(err) => Err(file_error(err)),
        }
    }
}

/// Where identity `name`'s seed is kept under `dir`.
pub fn seed_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.nk"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_seed_is_written_once_owner_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_generate(dir.path(), "client").unwrap();
        assert!(first.seed.starts_with("SU"));
        assert!(first.public_key.starts_with('U'));
        let mode = std::fs::metadata(seed_path(dir.path(), "client"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Identity::load_or_generate(dir.path(), "client").unwrap();
        assert_eq!(again.public_key, first.public_key);
        let other = Identity::load_or_generate(dir.path(), "admin").unwrap();
        assert_ne!(other.public_key, first.public_key);
    }

    #[test]
    fn the_config_block_lists_every_user_with_quoted_subjects() {
        let auth = Authorization {
            users: vec![AuthorizedUser {
                nkey: "UABC".into(),
                publish: vec!["a.b".into(), "$JS.API.>".into()],
                subscribe: vec!["c q".into()],
                allow_responses: true,
            }],
        };
        let text = auth.config_text();
        assert!(text.contains(r#"nkey: "UABC""#), "{text}");
        assert!(text.contains(r#"allow: ["a.b", "$JS.API.>"]"#), "{text}");
        assert!(text.contains(r#"allow: ["c q"]"#), "{text}");
        assert!(text.contains("allow_responses: true"), "{text}");
    }
}
