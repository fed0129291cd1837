//! Dead letters: events a module could not handle, kept for an operator.
//!
//! Two ways an event ends up here, both recorded in the `dead_letters`
//! key-value bucket with its subject, the consumer, the reason and the number
//! of deliveries:
//!
//! * **poisoned**: the event does not decode, or the handler refused it for
//!   good (a 4xx): it is terminated at once instead of redelivered forever;
//! * **max deliveries**: a handler kept failing (5xx) until the consumer's
//!   `max_deliver` was reached (recorded by the consumer with the last error),
//!   or its last delivery was never answered (recorded from the server's
//!   max-deliveries advisory).
//!
//! Once the cause is fixed, [`DeadLetters::retry`] publishes the stored event
//! again (same subject and payload, a new `Nats-Msg-Id` so the stream accepts
//! it): every consumer of that subject sees it once more, which idempotent
//! handlers absorb.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

use crate::events::stream_of;
use crate::store::{Storage, StoreError, Table};

/// The bucket dead letters are kept in.
pub const DEAD_LETTER_BUCKET: &str = "dead_letters";

/// Why an event was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    Poisoned,
    MaxDeliveries,
}

/// One event given up on by one consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `<consumer>.<stream sequence>`: what `retry` takes.
    pub id: String,
    pub kind: DeadLetterKind,
    pub consumer: String,
    pub subject: String,
    pub stream_sequence: u64,
    pub deliveries: i64,
    pub reason: String,
}

impl DeadLetter {
    /// The letter of event `stream_sequence` given up on by `consumer`.
    pub fn new(
        kind: DeadLetterKind,
        consumer: &str,
        subject: &str,
        stream_sequence: u64,
        deliveries: i64,
        reason: String,
    ) -> Self {
        Self {
            id: format!("{consumer}.{stream_sequence}"),
            kind,
            consumer: consumer.to_owned(),
            subject: subject.to_owned(),
            stream_sequence,
            deliveries,
            reason,
        }
    }
}

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no dead letter {0:?}")]
    Unknown(String),
    #[error("dead letter {0} is being retried by someone else (published once)")]
    AlreadyRetried(String),
    #[error("event {sequence} is no longer in the stream: {reason}")]
    Gone { sequence: u64, reason: String },
    #[error("re-publishing failed: {0}")]
    Publish(String),
}

/// The dead letters of a system.
#[derive(Clone)]
pub struct DeadLetters {
    table: Table<DeadLetter>,
    jetstream: jetstream::Context,
    log: std::sync::Arc<crate::log_budget::LogBudget>,
}

/// How many dead letters are logged one by one per second; beyond that they
/// are counted, and the count is logged with the next line. A flood of junk
/// events must not become a flood of log lines.
const LOGGED_PER_SECOND: u32 = 10;

impl DeadLetters {
    /// Opens the dead letters with the default [`crate::Limits`] (which
    /// leave an existing bucket's replica count as it is).
    pub async fn open(client: &async_nats::Client, storage: Storage) -> Result<Self, StoreError> {
        Self::open_with(client, storage, &crate::Limits::default()).await
    }

    /// Opens the dead letters in a bucket under `limits`.
    pub async fn open_with(
        client: &async_nats::Client,
        storage: Storage,
        limits: &crate::Limits,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            table: Table::open(client, storage, DEAD_LETTER_BUCKET, None, limits).await?,
            jetstream: jetstream::new(client.clone()),
            log: std::sync::Arc::new(crate::log_budget::LogBudget::new(LOGGED_PER_SECOND)),
        })
    }

    /// Records a dead letter (recording the same one twice keeps one).
    pub async fn record(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.table.put(&letter.id, letter).await?;
        self.log(letter);
        Ok(())
    }

    fn log(&self, letter: &DeadLetter) {
        if let Some(held_back) = self.log.take() {
            tracing::warn!(
                id = %letter.id, kind = ?letter.kind, subject = %letter.subject,
                deliveries = letter.deliveries, reason = %letter.reason,
                more_not_logged = held_back,
                "event recorded as dead letter"
            );
        }
    }

    /// Records a dead letter unless one with its id exists; `true` if recorded.
    pub async fn record_new(&self, letter: &DeadLetter) -> Result<bool, StoreError> {
        match self.table.create(&letter.id, letter).await {
            Ok(_) => {
                self.log(letter);
                Ok(true)
            }
            Err(StoreError::Exists(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Every dead letter, oldest event first (read in one pass, so tens of
    /// thousands list in well under a second).
    pub async fn list(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut letters: Vec<DeadLetter> = self
            .table
            .values()
            .await?
            .into_iter()
            .map(|(_, letter)| letter)
            .collect();
        letters.sort_by(|a, b| {
            (a.stream_sequence, &a.consumer).cmp(&(b.stream_sequence, &b.consumer))
        });
        Ok(letters)
    }

    /// Publishes the event of dead letter `id` again and forgets the letter.
    ///
    /// Exactly once, even when two operators retry the same letter at the
    /// same moment: the re-publish's `Nats-Msg-Id` is derived from the
    /// letter's id and revision, so the stream stores one of them; and the
    /// letter is forgotten only at the revision that was retried.
    pub async fn retry(&self, id: &str) -> Result<DeadLetter, DeadLetterError> {
        // Anything that is not `<consumer>.<sequence>` cannot be a letter:
        // say so plainly, without asking the store.
        if !is_letter_id(id) {
            return Err(DeadLetterError::Unknown(crate::error::header_safe(id)));
        }
        let stored = self
            .table
            .get(id)
            .await?
            .ok_or_else(|| DeadLetterError::Unknown(id.to_owned()))?;
        let (letter, revision) = (stored.value, stored.revision);
        let gone = |reason: String| DeadLetterError::Gone {
            sequence: letter.stream_sequence,
            reason,
        };
        let stream = self
            .jetstream
            .get_stream(stream_of(&letter.subject))
            .await
            .map_err(|e| gone(e.to_string()))?;
        let original = stream
            .get_raw_message(letter.stream_sequence)
            .await
            .map_err(|e| gone(e.to_string()))?;
        let mut headers = original.headers.clone();
        let retry_id = format!("{}:retry:{revision}", letter.id);
        headers.insert("Nats-Msg-Id", retry_id.as_str());
        let ack = self
            .jetstream
            .publish_with_headers(
                original.subject.to_string(),
                headers,
                original.payload.clone(),
            )
            .await
            .map_err(|e| DeadLetterError::Publish(e.to_string()))?
            .await
            .map_err(|e| DeadLetterError::Publish(e.to_string()))?;
        // Whoever forgets the letter is the one retry that succeeded; the
        // event itself was stored once whichever it was (`ack.duplicate`
        // tells the others, or a retry after a crash between the two steps).
        if !self.table.delete_at(id, revision).await? {
            return Err(DeadLetterError::AlreadyRetried(id.to_owned()));
        }
        tracing::info!(id, subject = %letter.subject, duplicate = ack.duplicate, "dead letter re-published");
        Ok(letter)
    }
}

/// Longest dead letter id accepted: a consumer name and a sequence number.
const MAX_ID_LEN: usize = 256;

/// Whether `id` has the shape of a dead letter id, `<consumer>.<sequence>`.
fn is_letter_id(id: &str) -> bool {
    let Some((consumer, sequence)) = id.rsplit_once('.') else {
        return false;
    };
    id.len() <= MAX_ID_LEN
        && !consumer.is_empty()
        && consumer
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !sequence.is_empty()
        && sequence.chars().all(|c| c.is_ascii_digit())
}

/// The fields we use of the server's max-deliveries advisory.
#[derive(Debug, Deserialize)]
pub(crate) struct MaxDeliveriesAdvisory {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: i64,
}

/// The advisory subject for one consumer, of the events of `subject`.
pub(crate) fn max_deliveries_subject(consumer: &str, subject: &str) -> String {
    let stream = stream_of(subject);
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}")
}

#[cfg(test)]
mod tests {
    use super::is_letter_id;

    #[test]
    fn only_consumer_dot_sequence_is_a_letter_id() {
        assert!(is_letter_id("payment_take_payment.42"));
        assert!(is_letter_id("a-b_c.1"));
        for bad in ["*", ">", "a b", "a.b", ".1", "a.", "a.1 ", "a\n.1", "a.*"] {
            assert!(!is_letter_id(bad), "{bad:?}");
        }
        assert!(!is_letter_id(&format!("{}.1", "x".repeat(5000))));
    }
}
