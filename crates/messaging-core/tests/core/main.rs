//! Integration tests of messaging-core, each against its own real nats-server.

mod broker;
mod durability;
mod serving;
