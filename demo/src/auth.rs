//! The system's identities: one per module, `client` for outside callers
//! and `admin` for setup and operations; their nkey seeds in one directory,
//! and the broker authorization that lets each do what the contract says
//! (see `messaging_core::permissions`) and nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use broker::auth::{Authorization, AuthorizedUser, Identity};
use messaging_core::permissions::{self, Permissions, ADMIN, CLIENT};
use messaging_core::{Credentials, Declaration};

/// The identities of every module of the contract, `client` and `admin`.
pub struct Identities {
    dir: PathBuf,
    identities: BTreeMap<String, Identity>,
    // A directory of our own, removed with us, when none was given.
    _temp: Option<tempfile::TempDir>,
}

impl Identities {
    /// Reads the identities' seeds from `dir` (`<identity>.nk`), making the
    /// missing ones (owner-only files); a temporary directory when `None`.
    pub fn load_or_generate(dir: Option<&Path>) -> anyhow::Result<Self> {
        let (dir, temp) = match dir {
            Some(dir) => (dir.to_owned(), None),
            None => {
                let temp = tempfile::Builder::new().prefix("nats-auth-").tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let names = contract::MODULES
            .iter()
            .map(|m| m.name)
            .chain([CLIENT, ADMIN]);
        let mut identities = BTreeMap::new();
        for name in names {
            let identity = Identity::load_or_generate(&dir, name)
                .with_context(|| format!("the identity {name} in {}", dir.display()))?;
            identities.insert(name.to_owned(), identity);
        }
        Ok(Self {
            dir,
            identities,
            _temp: temp,
        })
    }

    /// The broker's users: each identity with its permissions.
    pub fn authorization(&self) -> Authorization {
        let modules: Vec<&Declaration> = contract::MODULES.to_vec();
        let users = self
            .identities
            .values()
            .map(|identity| {
                let granted = match identity.name.as_str() {
                    CLIENT => permissions::client(&modules),
                    ADMIN => permissions::admin(),
                    module => permissions::module(
                        contract::module(module).expect("identities are the contract's modules"),
                    ),
                };
                user(&identity.public_key, granted)
            })
            .collect();
        Authorization { users }
    }

    /// The `authorization` block of a nats-server's configuration for
    /// these identities, with a comment on where the seeds are.
    pub fn config_text(&self) -> String {
        format!(
            "# The modules' NATS users, generated from the contract by `demo auth config`.\n\
             # Seeds (keep them secret): {}/<identity>.nk\n{}",
            self.dir.display(),
            self.authorization().config_text()
        )
    }

    /// How `identity` connects.
    pub fn credentials(&self, identity: &str) -> Credentials {
        let seed = self.identities[identity].seed.clone();
        Credentials::nkey(identity, seed)
    }

    /// Where `identity`'s seed is kept.
    pub fn seed_path(&self, identity: &str) -> PathBuf {
        broker::auth::seed_path(&self.dir, identity)
    }

    /// The directory of the seeds.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn user(nkey: &str, granted: Permissions) -> AuthorizedUser {
    AuthorizedUser {
        nkey: nkey.to_owned(),
        publish: granted.publish,
        subscribe: granted.subscribe,
        allow_responses: granted.allow_responses,
    }
}
