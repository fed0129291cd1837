//! What every module needs to live on the bus, written once.
//!
//! * [`contract`]: every subject and payload of the system, in one file;
//! * [`Bus`]: typed request/reply and event publishing over an async-nats client;
//! * [`Module`]: serving a module (endpoints, event handlers) concurrently,
//!   replying structured errors, and shutting down gracefully via [`ModuleHandle`];
//! * [`Connection`]: a connection whose drain can be awaited to its real end;
//! * [`broker`]: the child `nats-server` process used by the demo and the tests;
//! * [`testing`]: a real broker per test.
//!
//! Module crates depend on this crate only, never on each other: they meet on
//! the bus, through the contract.

pub mod broker;
mod bus;
pub mod contract;
mod error;
mod events;
mod module;
pub mod testing;

pub use bus::{Bus, Connection, CORRELATION_ID, DEFAULT_REQUEST_TIMEOUT};
pub use error::{
    ConnectError, DrainError, PublishError, RegisterError, RequestError, ServiceError,
};
pub use events::{Delivered, EventMeta, EventStream, WatchError};
pub use module::{
    shutdown_all, Context, HandlerSnapshot, Module, ModuleHandle, ModuleSpec, DEFAULT_MAX_IN_FLIGHT,
};
