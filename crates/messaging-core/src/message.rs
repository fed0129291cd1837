//! What the framework knows of a message: its subject, and for a request its
//! reply type and the error codes it may answer. The business contract
//! implements these traits for its payloads; the framework never names one.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ServiceError;

/// A request/reply message: its subject and the type of its successful reply.
///
/// [`crate::Bus::request`] and [`crate::Module::serve`] use it to pair a
/// subject with its types.
pub trait Rpc: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The subject the owning module answers on.
    const SUBJECT: &'static str;
    /// The errors this request may be refused with, beyond those every
    /// request may get ([`ErrorCode::COMMON`]); for the generated docs.
    const ERRORS: &'static [ErrorCode] = &[];
    /// The largest payload this request may have, in bytes: a larger one is
    /// refused (`413 payload_too_large`) before it is decoded or handled.
    /// With the endpoint's in-flight count, this bounds the bytes a module
    /// holds for its requests.
    const MAX_PAYLOAD: usize = 64 * 1024;
    /// The payload of a successful reply.
    type Reply: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// A domain event: a fact that happened, published on its subject.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The subject the event is published on.
    const SUBJECT: &'static str;
}

/// A kind of structured error: an HTTP-like status and a stable machine
/// code. Declared once (in the contract, or here for the framework's own),
/// used by the side that refuses and the side that branches on the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode {
    pub status: u16,
    pub code: &'static str,
}

impl ErrorCode {
    pub const fn new(status: u16, code: &'static str) -> Self {
        Self { status, code }
    }

    /// `400 bad_request`: the payload or a header is malformed.
    pub const BAD_REQUEST: ErrorCode = ErrorCode::new(400, "bad_request");
    /// `413 payload_too_large`: larger than the request may be.
    pub const PAYLOAD_TOO_LARGE: ErrorCode = ErrorCode::new(413, "payload_too_large");
    /// `409 request_in_progress`: an attempt with the same `Idempotency-Key` is still running.
    pub const REQUEST_IN_PROGRESS: ErrorCode = ErrorCode::new(409, "request_in_progress");
    /// `422 idempotency_key_reused`: the key was used for another payload.
    pub const IDEMPOTENCY_KEY_REUSED: ErrorCode = ErrorCode::new(422, "idempotency_key_reused");
    /// `500 internal`: a bug, or a handler that panicked.
    pub const INTERNAL: ErrorCode = ErrorCode::new(500, "internal");
    /// `503 unavailable`: saturated, stopping, or a peer or the store is down; worth retrying.
    pub const UNAVAILABLE: ErrorCode = ErrorCode::new(503, "unavailable");

    /// The errors any request may get from the framework itself.
    pub const COMMON: &'static [ErrorCode] = &[
        Self::BAD_REQUEST,
        Self::PAYLOAD_TOO_LARGE,
        Self::REQUEST_IN_PROGRESS,
        Self::IDEMPOTENCY_KEY_REUSED,
        Self::INTERNAL,
        Self::UNAVAILABLE,
    ];

    /// An error of this kind.
    pub fn error(self, message: impl Into<String>) -> ServiceError {
        ServiceError::new(self.status, self.code, message)
    }

    /// Whether `error` is of this kind.
    pub fn is(self, error: &ServiceError) -> bool {
        error.status == self.status && error.code == self.code
    }
}
