//! Size limits and replication of everything the system stores: nothing
//! grows without bound, whatever a client sends or however long the system
//! runs, and nothing lives on fewer nodes than asked.
//!
//! When a limit is reached the broker refuses the write (JetStream's
//! "discard new"), so the client that caused it gets a `503`: nothing already
//! stored is silently dropped to make room.

/// The limits a module applies to what it creates (the event stream, its
/// state buckets, idempotency keys and dead letters), and on how many nodes
/// they are kept. Part of [`crate::ModuleOptions`]; give every module of a
/// system the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the event stream may hold (its events also expire after 7 days).
    pub events_max_bytes: i64,
    /// Largest single event the stream accepts, in bytes.
    pub event_max_size: i32,
    /// Bytes each key-value bucket may hold (a module's state, the
    /// idempotency keys, the dead letters).
    pub bucket_max_bytes: i64,
    /// On how many nodes JetStream keeps the stream and each bucket (1 on a
    /// single server; 3 on a 3-node cluster survives losing a node). An
    /// existing stream or bucket with another count is scaled to this one.
    /// `0`: as it is (1 for a new one), for tools that must not change what
    /// the modules set up.
    pub replicas: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            events_max_bytes: 1 << 30,
            event_max_size: 64 << 10,
            bucket_max_bytes: 256 << 20,
            replicas: 0,
        }
    }
}

impl Limits {
    /// The defaults, kept on `replicas` nodes.
    pub fn replicated(replicas: usize) -> Self {
        Self {
            replicas,
            ..Self::default()
        }
    }

    /// The replica count to configure on a stream that has `existing` (if
    /// it exists): ours, or with `0` what it has.
    pub(crate) fn replicas_for(&self, existing: Option<usize>) -> usize {
        match self.replicas {
            0 => existing.unwrap_or(1),
            wanted => wanted,
        }
    }
}

/// How many replicas the stream `name` has now, if it exists; says so in
/// the log when that is about to change to `wanted`.
pub(crate) async fn existing_replicas(
    jetstream: &async_nats::jetstream::Context,
    name: &str,
    limits: &Limits,
) -> Option<usize> {
    // Getting the stream reads its info once; no second request.
    let stream = jetstream.get_stream(name).await.ok()?;
    let existing = stream.cached_info().config.num_replicas;
    let wanted = limits.replicas_for(Some(existing));
    if wanted != existing {
        tracing::info!(
            stream = name,
            from = existing,
            to = wanted,
            "changing the replica count"
        );
    }
    Some(existing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_replicas_keeps_what_exists_and_starts_new_ones_at_one() {
        let keep = Limits::default();
        assert_eq!(keep.replicas_for(Some(3)), 3);
        assert_eq!(keep.replicas_for(None), 1);
        let three = Limits::replicated(3);
        assert_eq!(three.replicas_for(Some(1)), 3);
        assert_eq!(three.replicas_for(None), 3);
        assert_eq!(three.bucket_max_bytes, Limits::default().bucket_max_bytes);
    }
}
