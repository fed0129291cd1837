//! What every module needs to live on the bus, written once.
//!
//! * [`contract`]: every subject and payload of the system, in one file;
//! * [`Bus`]: typed request/reply, and events published to the JetStream
//!   event stream with their acknowledgement;
//! * [`Module`]: serving a module (endpoints, durable event consumers)
//!   concurrently, replying structured errors, honouring `Idempotency-Key`,
//!   and shutting down gracefully via [`ModuleHandle`];
//! * [`store`]: module state in JetStream key-value buckets (or memory), with
//!   compare-and-set;
//! * [`dead_letter`]: events given up on, listed and retried by an operator;
//! * [`Connection`]: a connection whose drain can be awaited to its real end;
//!
//! Module crates depend on this crate only, never on each other: they meet on
//! the bus, through the contract.

mod bus;
mod consumer;
mod context;
pub mod contract;
pub mod dead_letter;
mod endpoint;
mod error;
mod events;
mod idempotency;
mod module;
mod stats;
pub mod store;
mod supervisor;

pub use bus::{
    Bus, Connection, Published, WatchSetupError, CORRELATION_ID, DEFAULT_REQUEST_TIMEOUT,
};
pub use consumer::ConsumerOptions;
pub use context::Context;
pub use error::{
    header_safe, ConnectError, DrainError, PublishError, RegisterError, RequestError, ServiceError,
    MAX_HEADER_TEXT,
};
pub use events::{
    ensure_stream, Delivered, EventMeta, EventStream, WatchError, DUPLICATE_WINDOW, EVENTS_STREAM,
};
pub use idempotency::{IDEMPOTENCY_KEY, IDEMPOTENCY_WINDOW};
pub use module::{
    shutdown_all, Module, ModuleHandle, ModuleSpec, DEFAULT_MAX_IN_FLIGHT, PEER_REQUEST_TIMEOUT,
};
pub use stats::HandlerSnapshot;
pub use store::Storage;
