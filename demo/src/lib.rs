//! The demo: the four modules on one broker, and the seed's scenario.
//!
//! * [`app`]: launch (or join) the broker, connect, register the modules,
//!   and shut everything down in order;
//! * [`scenario`]: the story the demo tells, one log line per step;
//! * [`cli`]: the command line.

pub mod app;
pub mod auth;
pub mod cli;
pub mod scenario;
