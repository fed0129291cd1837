//! What every module needs to live on the bus, written once.
//!
//! * [`Rpc`], [`Event`], [`ErrorCode`]: what it knows of a message (the
//!   business contract implements them; this crate names no business);
//! * [`Declaration`]: what a module does on the bus, as data; the framework
//!   holds each module to its own;
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
//! Module crates depend on this crate and on the `contract` crate, never on
//! each other: they meet on the bus. This crate depends on neither.

mod bus;
mod consumer;
mod context;
pub mod dead_letter;
mod declaration;
mod deferred;
mod endpoint;
mod error;
mod events;
mod idempotency;
mod limits;
mod log_budget;
mod message;
mod module;
pub mod permissions;
mod refusals;
mod stats;
pub mod store;
mod supervisor;

pub use bus::{
    Announced, Bus, Connection, Credentials, Published, WatchSetupError, CORRELATION_ID,
    DEFAULT_REQUEST_TIMEOUT, PUBLISHED_BY,
};
pub use consumer::ConsumerOptions;
pub use context::Context;
pub use declaration::{Declaration, Endpoint, Listener};
pub use error::{
    header_safe, ConnectError, DrainError, EventError, PublishError, RegisterError, RequestError,
    ServiceError, MAX_HEADER_TEXT,
};
pub use events::{
    ensure_stream, schedule_subject, stream_of, Delivered, EventMeta, EventStream, WatchError,
    DEADLINES_PREFIX, DEADLINES_STREAM, DUPLICATE_WINDOW, EVENTS_STREAM, SCHEDULES_PREFIX,
};
pub use idempotency::{IDEMPOTENCY_KEY, IDEMPOTENCY_WINDOW};
pub use limits::Limits;
pub use message::{ErrorCode, Event, Rpc};
pub use module::{
    shutdown_all, Module, ModuleHandle, ModuleOptions, Setup, DEFAULT_DEADLINE,
    DEFAULT_MAX_IN_FLIGHT, PEER_REQUEST_TIMEOUT,
};
pub use stats::HandlerSnapshot;
pub use store::Storage;
