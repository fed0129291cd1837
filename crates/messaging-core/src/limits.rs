//! Size limits on everything the system stores: nothing grows without bound,
//! whatever a client sends or however long the system runs.
//!
//! When a limit is reached the broker refuses the write (JetStream's
//! "discard new"), so the client that caused it gets a `503`: nothing already
//! stored is silently dropped to make room.

/// The limits a module applies to what it creates (the event stream, its
/// state buckets, idempotency keys and dead letters). Part of
/// [`crate::ModuleOptions`]; give every module of a system the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the event stream may hold (its events also expire after 7 days).
    pub events_max_bytes: i64,
    /// Largest single event the stream accepts, in bytes.
    pub event_max_size: i32,
    /// Bytes each key-value bucket may hold (a module's state, the
    /// idempotency keys, the dead letters).
    pub bucket_max_bytes: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            events_max_bytes: 1 << 30,
            event_max_size: 64 << 10,
            bucket_max_bytes: 256 << 20,
        }
    }
}
