//! `Idempotency-Key`: a client that retries a request after a timeout gets
//! the first reply again instead of a second effect.
//!
//! The key (header name from the IETF HTTP draft) is remembered per subject
//! in the `idempotency` bucket for [`IDEMPOTENCY_WINDOW`]: first as
//! *in progress*, then with the reply. A retry while the first attempt still
//! runs gets `409 request_in_progress`; a claim older than [`STALE_CLAIM`]
//! (its handler died with the process) is taken over, and since handlers
//! derive their ids from the key ([`crate::Context::derive_id`]), the
//! takeover re-creates the same thing rather than a second one. A key reused
//! with a different payload is refused (`422 idempotency_key_reused`), and a
//! malformed request is refused before its key is remembered.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ServiceError;
use crate::store::{Change, Storage, StoreError, Table};

/// Longest accepted `Idempotency-Key`, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// The request header carrying the key (matched case-insensitively).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// How long a key is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// After this long, an unfinished first attempt is presumed dead.
pub const STALE_CLAIM: Duration = Duration::from_secs(10);

pub(crate) const BUCKET: &str = "idempotency";
const NAMESPACE: Uuid = Uuid::from_u128(0x1de3_9073_4c0e_4a11_b0b5_7e57_ab1e_c0de);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Remembered {
    InProgress {
        started_ms: u64,
        request: Uuid,
    },
    Replied {
        reply: Result<String, ServiceError>,
        request: Uuid,
    },
}

/// What to do with a request that carries a key.
pub(crate) enum Claim {
    /// First time (or a dead first attempt): handle it.
    Claimed,
    /// Handled before: send this reply again.
    Replay(Result<String, ServiceError>),
    /// The first attempt is still running.
    Busy,
    /// The key was used for a request with another payload.
    OtherRequest,
}

#[derive(Clone)]
pub(crate) struct IdempotencyKeys {
    table: Table<Remembered>,
}

impl IdempotencyKeys {
    pub async fn open(
        client: &async_nats::Client,
        storage: Storage,
        limits: &crate::Limits,
    ) -> Result<Self, StoreError> {
        let window = Some(IDEMPOTENCY_WINDOW);
        Ok(Self {
            table: Table::open(client, storage, BUCKET, window, limits).await?,
        })
    }

    /// `<subject>.<uuid of subject and key>`: a fixed size whatever the
    /// client sent, and under the subject's own prefix, so the broker can
    /// let each module reach only the keys of the subjects it serves
    /// (`$KV.idempotency.<subject>.*`).
    fn record_key(subject: &str, key: &str) -> String {
        let id = Uuid::new_v5(&NAMESPACE, format!("{subject}\n{key}").as_bytes());
        format!("{subject}.{id}")
    }

    pub async fn claim(
        &self,
        subject: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<Claim, StoreError> {
        let now = now_ms();
        let request = fingerprint(payload);
        let claim = Remembered::InProgress {
            started_ms: now,
            request,
        };
        self.table
            .modify(&Self::record_key(subject, key), |seen| {
                Ok::<_, StoreError>(match seen {
                    None => Change::Write(claim.clone(), Claim::Claimed),
                    Some(Remembered::InProgress { request: other, .. })
                    | Some(Remembered::Replied { request: other, .. })
                        if *other != request =>
                    {
                        Change::Keep(Claim::OtherRequest)
                    }
                    Some(Remembered::InProgress { started_ms, .. })
                        if now.saturating_sub(*started_ms) > STALE_CLAIM.as_millis() as u64 =>
                    {
                        Change::Write(claim.clone(), Claim::Claimed)
                    }
                    Some(Remembered::InProgress { .. }) => Change::Keep(Claim::Busy),
                    Some(Remembered::Replied { reply, .. }) => {
                        Change::Keep(Claim::Replay(reply.clone()))
                    }
                })
            })
            .await
    }

    /// Remembers the reply of a claimed key; a reply worth retrying (5xx)
    /// releases the key instead, so that the retry runs again.
    pub async fn finish(
        &self,
        subject: &str,
        key: &str,
        payload: &[u8],
        reply: &Result<String, ServiceError>,
    ) -> Result<(), StoreError> {
        let record_key = Self::record_key(subject, key);
        match reply {
            Err(err) if err.status >= 500 => self.table.delete(&record_key).await,
            _ => {
                let remembered = Remembered::Replied {
                    reply: reply.clone(),
                    request: fingerprint(payload),
                };
                self.table.put(&record_key, &remembered).await.map(|_| ())
            }
        }
    }
}

/// A stable fingerprint of a request payload (a name-based UUID, SHA-1).
fn fingerprint(payload: &[u8]) -> Uuid {
    Uuid::new_v5(&NAMESPACE, payload)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "probe.take";
    const PAYLOAD: &[u8] = br#"{"what":"thing"}"#;

    /// Milliseconds since the Unix epoch, read here rather than through
    /// the code under test.
    fn wall_clock_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    fn keys() -> IdempotencyKeys {
        IdempotencyKeys {
            table: Table::in_memory(),
        }
    }

    impl IdempotencyKeys {
        /// Writes a first attempt begun at `started_ms`, as a process
        /// (perhaps one that died since) would have.
        async fn begun_at(&self, key: &str, started_ms: u64) {
            let claim = Remembered::InProgress {
                started_ms,
                request: fingerprint(PAYLOAD),
            };
            let record_key = Self::record_key(SUBJECT, key);
            self.table.put(&record_key, &claim).await.unwrap();
        }

        /// When the claim on `key` was made, if it is in progress.
        async fn claimed_at(&self, key: &str) -> Option<u64> {
            let record_key = Self::record_key(SUBJECT, key);
            match self.table.get(&record_key).await.unwrap()?.value {
                Remembered::InProgress { started_ms, .. } => Some(started_ms),
                Remembered::Replied { .. } => None,
            }
        }
    }

    /// What a claim came to, comparably.
    fn outcome(claim: Claim) -> String {
        match claim {
            Claim::Claimed => "claimed".into(),
            Claim::Busy => "busy".into(),
            Claim::OtherRequest => "other request".into(),
            Claim::Replay(Ok(reply)) => format!("replay {reply}"),
            Claim::Replay(Err(err)) => format!("replay {}", err.status),
        }
    }

    async fn claim(keys: &IdempotencyKeys, key: &str) -> String {
        outcome(keys.claim(SUBJECT, key, PAYLOAD).await.unwrap())
    }

    #[tokio::test]
    async fn a_failure_worth_retrying_frees_the_key_and_a_refusal_is_replayed() {
        let keys = keys();
        for status in [500, 503, 504] {
            let key = format!("key-{status}");
            assert_eq!(claim(&keys, &key).await, "claimed");
            let reply = Err(ServiceError::new(status, "down", "try again"));
            keys.finish(SUBJECT, &key, PAYLOAD, &reply).await.unwrap();
            assert_eq!(
                claim(&keys, &key).await,
                "claimed",
                "after a {status} the retry runs again"
            );
        }
        for status in [400, 404, 409, 422, 499] {
            let key = format!("key-{status}");
            assert_eq!(claim(&keys, &key).await, "claimed");
            let reply = Err(ServiceError::new(status, "no", "refused"));
            keys.finish(SUBJECT, &key, PAYLOAD, &reply).await.unwrap();
            assert_eq!(
                claim(&keys, &key).await,
                format!("replay {status}"),
                "a {status} is the answer, not a reason to run again"
            );
        }
        assert_eq!(claim(&keys, "ok").await, "claimed");
        keys.finish(SUBJECT, "ok", PAYLOAD, &Ok("done".into()))
            .await
            .unwrap();
        assert_eq!(claim(&keys, "ok").await, "replay done");
        // Keys are per subject: the same key elsewhere is another request.
        let elsewhere = keys.claim("probe.other", "ok", PAYLOAD).await.unwrap();
        assert_eq!(outcome(elsewhere), "claimed");
    }

    #[tokio::test]
    async fn a_first_attempt_is_taken_over_once_stale_and_not_before() {
        let keys = keys();
        let stale_ms = STALE_CLAIM.as_millis() as u64;

        // Begun a second ago: still running.
        keys.begun_at("fresh", wall_clock_ms() - 1_000).await;
        assert_eq!(claim(&keys, "fresh").await, "busy");

        // Begun a second longer ago than a claim lives: its handler died.
        let begun = wall_clock_ms() - stale_ms - 1_000;
        keys.begun_at("dead", begun).await;
        let before = wall_clock_ms();
        assert_eq!(claim(&keys, "dead").await, "claimed");
        let renewed = keys.claimed_at("dead").await.unwrap();
        assert!(renewed >= before, "taken over from now on: {renewed}");
        assert_eq!(claim(&keys, "dead").await, "busy", "by this attempt");
    }

    #[tokio::test]
    async fn a_claim_exactly_as_old_as_the_stale_limit_still_stands() {
        // The clock is the system's, so the boundary is met by starting
        // each attempt at the beginning of a millisecond: the claim, a few
        // microseconds later, almost always reads the same millisecond.
        // Whatever millisecond it reads, the claim must be taken over if
        // and only if it is older than the limit.
        let keys = keys();
        let stale_ms = STALE_CLAIM.as_millis() as u64;
        for attempt in 0..50 {
            let key = format!("key-{attempt}");
            let tick = wall_clock_ms();
            let at = loop {
                let at = wall_clock_ms();
                if at != tick {
                    break at;
                }
                std::hint::spin_loop();
            };
            let begun = at - stale_ms;
            keys.begun_at(&key, begun).await;
            match claim(&keys, &key).await.as_str() {
                // Read in millisecond `at`: exactly the limit, not stale.
                "busy" => return,
                "claimed" => {
                    let now = keys.claimed_at(&key).await.unwrap();
                    assert!(
                        now - begun > stale_ms,
                        "a claim {} ms old was taken over (limit {stale_ms} ms)",
                        now - begun
                    );
                }
                other => panic!("{other}"),
            }
        }
    }

    #[tokio::test]
    async fn another_payload_under_the_same_key_is_refused() {
        let keys = keys();
        assert_eq!(claim(&keys, "k").await, "claimed");
        let other = keys.claim(SUBJECT, "k", b"{}").await.unwrap();
        assert_eq!(outcome(other), "other request");
        keys.finish(SUBJECT, "k", PAYLOAD, &Ok("done".into()))
            .await
            .unwrap();
        let other = keys.claim(SUBJECT, "k", b"{}").await.unwrap();
        assert_eq!(outcome(other), "other request");
    }
}
