//! Integration tests of messaging-core, each against its own real nats-server.

mod consumers;
mod declarations;
mod durability;
mod overflow;
mod replication;
mod serving;
mod tables;
