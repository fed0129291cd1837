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

const BUCKET: &str = "idempotency";
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
        max_bytes: i64,
    ) -> Result<Self, StoreError> {
        let window = Some(IDEMPOTENCY_WINDOW);
        Ok(Self {
            table: Table::open(client, storage, BUCKET, window, max_bytes).await?,
        })
    }

    fn record_key(subject: &str, key: &str) -> String {
        Uuid::new_v5(&NAMESPACE, format!("{subject}\n{key}").as_bytes()).to_string()
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
