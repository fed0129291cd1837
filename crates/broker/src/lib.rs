//! The broker for the demo and the tests: a real `nats-server`, started as a
//! child process (see [`NatsServer`]) or a cluster of them (see
//! [`NatsCluster`]), and the version rules it must meet (see
//! [`version`]).
//!
//! Stands apart from the framework: a module never starts a broker, it is
//! given a connection.

pub mod version;

#[cfg(feature = "launcher")]
pub mod auth;
#[cfg(feature = "launcher")]
mod cluster;
#[cfg(feature = "launcher")]
mod launcher;

#[cfg(feature = "launcher")]
pub use cluster::{ClusterConfig, NatsCluster};

#[cfg(feature = "launcher")]
pub use launcher::*;
pub use version::{Version, BINARY_ENV, MIN_VERSION, PINNED_VERSION};
