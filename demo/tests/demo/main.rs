//! End-to-end tests of the whole system, against real nats-servers:
//! the flow in one process, the saga's guarantees under concurrency, and the
//! `demo` binary as a user runs it.

mod auth;
mod binary;
mod cluster;
mod conformance;
mod crash;
mod deadlines;
mod durability;
mod flow;
mod hostile;
mod saga;
mod split;
mod support;
