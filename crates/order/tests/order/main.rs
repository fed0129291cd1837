//! Integration tests of the order module, each against its own real
//! nats-server, with the user and product modules played by a fake module
//! (`support::Peers`): placing orders and their refusals, malformed input,
//! the lifecycle driven by payment and stock events, and the recovery sweep
//! at start.

mod lifecycle;
mod peer_errors;
mod placing;
mod recovery;
mod support;
