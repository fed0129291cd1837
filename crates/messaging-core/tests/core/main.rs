//! Integration tests of messaging-core, each against its own real nats-server.

mod durability;
mod serving;
