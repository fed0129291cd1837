//! Errors: the structured error a handler replies with, and one error type per
//! operation of the client side (request, publish, connect, register).
//!
//! A [`ServiceError`] crosses the wire as the two standard headers of the NATS
//! service protocol (ADR-32), with an empty body:
//!
//! ```text
//! Nats-Service-Error-Code: 404
//! Nats-Service-Error:      not_found: user 5f0c... does not exist
//! ```
//!
//! The description always starts with a stable machine code followed by `": "`,
//! so any client can branch on the code and show the message.

use std::fmt;

use async_nats::HeaderMap;

/// The structured error a request handler replies with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct ServiceError {
    /// HTTP-like status: 400 bad input, 404 not found, 409 conflict,
    /// 500 internal, 503 unavailable or shutting down.
    pub status: u16,
    /// Stable machine-readable code, `snake_case` (`not_found`, `insufficient_stock`).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ServiceError {
    /// A structured error. The message is made [header-safe](header_safe):
    /// it often quotes the caller's input, and it travels as a header.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: header_safe(&code.into()),
            message: header_safe(&message.into()),
        }
    }

    /// 400: the request is malformed or invalid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }

    /// 404 with a specific code (`not_found`, `user_not_found`, ...).
    pub fn not_found(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }

    /// 500: a bug or an unexpected failure on the serving side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// 503: a module this one depends on cannot be reached, or this one is stopping.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }

    /// The `Nats-Service-Error` header value: `code: message`, header-safe
    /// even when the fields were set directly.
    pub fn description(&self) -> String {
        header_safe(&format!("{}: {}", self.code, self.message))
    }

    /// Rebuilds the error from the headers of a reply, if they carry one.
    ///
    /// Returns `None` when the reply is not an error reply.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let status = headers.get(async_nats::service::NATS_SERVICE_ERROR_CODE)?;
        let status: u16 = status.as_str().trim().parse().unwrap_or(500);
        let description = headers
            .get(async_nats::service::NATS_SERVICE_ERROR)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        // A peer that does not follow our `code: message` convention still
        // yields a usable error: the whole text becomes the message.
        let (code, message) = match description.split_once(": ") {
            Some((code, message)) if is_machine_code(code) => (code.to_owned(), message.to_owned()),
            _ => ("error".to_owned(), description),
        };
        Some(Self {
            status,
            code,
            message,
        })
    }
}

/// Longest text an error puts in a header, in bytes (the description of a
/// `400` quotes the caller's input, which may be megabytes long).
pub const MAX_HEADER_TEXT: usize = 512;

/// `text` made fit for a NATS header value: control characters (CR and LF
/// above all, which async-nats refuses with a panic, but also NUL, tabs,
/// escapes and the C1 range) and bidirectional overrides are written as
/// escapes, and the text is cut at
/// [`MAX_HEADER_TEXT`] bytes on a character boundary, marked with `…`.
///
/// Escaping rather than dropping keeps the message truthful: the caller sees
/// that their input had a newline, not a silently different value.
pub fn header_safe(text: &str) -> String {
    // Bidirectional formatting characters too: quoted back to a client or
    // logged, they make text read as something else than it is.
    let clean = |c: char| {
        !c.is_control()
            && !matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if text.len() <= MAX_HEADER_TEXT && text.chars().all(clean) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len().min(MAX_HEADER_TEXT + 8));
    for c in text.chars() {
        let before = out.len();
        if clean(c) {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
        if out.len() > MAX_HEADER_TEXT {
            out.truncate(before);
            out.push('…');
            break;
        }
    }
    out
}

fn is_machine_code(code: &str) -> bool {
    !code.is_empty()
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl From<ServiceError> for async_nats::service::error::Error {
    fn from(err: ServiceError) -> Self {
        Self {
            status: err.description(),
            code: err.status as usize,
        }
    }
}

/// Why a typed request did not produce a reply value.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Nobody serves the subject (the module is not running).
    #[error("no module answers {subject}")]
    NoResponders { subject: &'static str },
    /// Somebody serves the subject but did not answer in time.
    #[error("request to {subject} timed out")]
    Timeout { subject: &'static str },
    /// The module answered with a structured error.
    #[error("{subject} replied {error}")]
    Remote {
        subject: &'static str,
        error: ServiceError,
    },
    /// The reply did not decode as the contract's reply type.
    #[error("reply from {subject} is not a valid {expected}: {source}")]
    Decode {
        subject: &'static str,
        expected: &'static str,
        source: serde_json::Error,
    },
    /// The request could not be encoded.
    #[error("request to {subject} could not be encoded: {source}")]
    Encode {
        subject: &'static str,
        source: serde_json::Error,
    },
    /// The module's declaration does not say it makes this request.
    #[error("module {module} does not declare that it requests {subject}")]
    Undeclared {
        subject: &'static str,
        module: &'static str,
    },
    /// The `Idempotency-Key` cannot be sent (blank, too long, or with
    /// control characters); nothing was sent.
    #[error("request to {subject} not sent: {reason}")]
    InvalidKey {
        subject: &'static str,
        reason: String,
    },
    /// The connection failed while sending.
    /// The broker's permissions do not let this connection send it.
    #[error("the broker refused {subject}: this identity may not send it")]
    Forbidden { subject: &'static str },
    #[error("request to {subject} failed: {source}")]
    Transport {
        subject: &'static str,
        source: async_nats::RequestError,
    },
}

impl RequestError {
    /// The structured error, when the remote module replied with one.
    pub fn remote(&self) -> Option<&ServiceError> {
        match self {
            RequestError::Remote { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<PublishError> for ServiceError {
    /// The stream did not store the event: worth retrying (the handler is
    /// idempotent and the event keeps its id), so `503 unavailable`. An
    /// event the module may not publish, or cannot encode, is a bug of the
    /// module that no retry cures: `500 internal`.
    fn from(err: PublishError) -> Self {
        match err {
            PublishError::Stream { .. } => ServiceError::unavailable(err.to_string()),
            PublishError::Undeclared { .. }
            | PublishError::Encode { .. }
            | PublishError::Forbidden { .. } => ServiceError::internal(err.to_string()),
        }
    }
}

impl From<RequestError> for ServiceError {
    /// The default view of a failed call to another module: an unreachable
    /// or unavailable peer is `503 unavailable` (worth retrying); anything
    /// else, including a refusal the caller did not expect, is our fault:
    /// `500 internal`. Handlers map the remote errors they expect (such as a
    /// 404) explicitly.
    fn from(err: RequestError) -> Self {
        match &err {
            RequestError::NoResponders { .. } | RequestError::Timeout { .. } => {
                ServiceError::unavailable(err.to_string())
            }
            RequestError::Remote { error, .. } if error.status == 503 => {
                ServiceError::unavailable(err.to_string())
            }
            _ => ServiceError::internal(err.to_string()),
        }
    }
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The module's declaration does not say it publishes this event.
    #[error("module {module} does not declare that it publishes {subject}")]
    Undeclared {
        subject: &'static str,
        module: &'static str,
    },
    #[error("event for {subject} could not be encoded: {source}")]
    Encode {
        subject: &'static str,
        source: serde_json::Error,
    },
    #[error("publishing on {subject} failed: {reason}")]
    Stream {
        subject: &'static str,
        reason: String,
    },
    /// The broker's permissions do not let this connection publish it.
    #[error("the broker refused {subject}: this identity may not publish it")]
    Forbidden { subject: &'static str },
}

/// Why connecting to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot use the credentials for {url}: {source}")]
    Credentials { url: String, source: std::io::Error },
    #[error("{url:?} is not a NATS URL (or a comma-separated list of them): {source}")]
    Url { url: String, source: std::io::Error },
}

/// Why a module could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("starting service {name} failed: {source}")]
    Service {
        name: String,
        source: async_nats::Error,
    },
    #[error("serving {subject} failed: {source}")]
    Endpoint {
        subject: &'static str,
        source: async_nats::Error,
    },
    #[error("subscribing to {subject} failed: {reason}")]
    Subscribe {
        subject: &'static str,
        reason: String,
    },
    #[error("the event stream cannot be set up: {0}")]
    Stream(String),
    #[error("state store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The module tried to serve or listen outside its declaration.
    #[error("module {module} does not declare that it may {what}")]
    Undeclared { module: &'static str, what: String },
}

/// Why an event handler did not handle an event, and so what becomes of
/// the event: said by the handler, in the type, not read from a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Worth another try (a peer or the store is unavailable): the event is
    /// redelivered with a growing delay, and dead-lettered when its
    /// deliveries run out.
    #[error("transient: {0}")]
    Transient(String),
    /// No retry can help (the event contradicts the state, or is
    /// nonsense): the event is dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl EventError {
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient(reason.into())
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent(reason.into())
    }
}

impl From<ServiceError> for EventError {
    /// For code shared with request handlers, which speaks in replies: a
    /// `5xx` (something unavailable, or a bug that a fix and a redelivery
    /// may cure) is transient; any other refusal is permanent.
    fn from(err: ServiceError) -> Self {
        if err.status >= 500 {
            Self::Transient(err.to_string())
        } else {
            Self::Permanent(err.to_string())
        }
    }
}

impl From<PublishError> for EventError {
    fn from(err: PublishError) -> Self {
        match err {
            PublishError::Stream { .. } => Self::Transient(err.to_string()),
            PublishError::Encode { .. }
            | PublishError::Undeclared { .. }
            | PublishError::Forbidden { .. } => Self::Permanent(err.to_string()),
        }
    }
}

impl From<RequestError> for EventError {
    /// A request the module may not make, or cannot encode, is a bug no
    /// redelivery cures: permanent. The rest reads as its reply would.
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::Undeclared { .. }
            | RequestError::Encode { .. }
            | RequestError::InvalidKey { .. }
            | RequestError::Forbidden { .. } => Self::Permanent(err.to_string()),
            other => ServiceError::from(other).into(),
        }
    }
}

impl From<crate::store::StoreError> for EventError {
    fn from(err: crate::store::StoreError) -> Self {
        ServiceError::from(err).into()
    }
}

/// Why draining the connection did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("draining the NATS connection failed: {0}")]
    Drain(#[from] async_nats::client::DrainError),
    #[error("the NATS connection did not close within {0:?} of the drain")]
    Timeout(std::time::Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_headers() {
        let err = ServiceError::not_found("user_not_found", "user 42 does not exist");
        let wire: async_nats::service::error::Error = err.clone().into();
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::service::NATS_SERVICE_ERROR,
            wire.status.as_str(),
        );
        headers.insert(
            async_nats::service::NATS_SERVICE_ERROR_CODE,
            wire.code.to_string().as_str(),
        );
        assert_eq!(ServiceError::from_headers(&headers), Some(err));
    }

    #[test]
    fn header_text_has_no_control_characters_and_a_bound() {
        assert_eq!(header_safe("plain: text"), "plain: text");
        let err = ServiceError::bad_request("invalid id \"\n\r\0\u{1b}\u{85}\"");
        assert_eq!(err.message, r#"invalid id "\n\r\u{0}\u{1b}\u{85}""#);
        assert_eq!(header_safe("a\u{202E}b"), r"a\u{202e}b");
        // Set directly, the fields are still made safe on the way out.
        let direct = ServiceError {
            status: 400,
            code: "bad_request".into(),
            message: "a\nb".into(),
        };
        let wire: async_nats::service::error::Error = direct.into();
        assert_eq!(wire.status, r"bad_request: a\nb");
        let long = header_safe(&"é".repeat(10_000));
        assert!(
            long.len() <= MAX_HEADER_TEXT + '…'.len_utf8(),
            "{}",
            long.len()
        );
        assert!(long.ends_with('…') && long.starts_with("éé"));
        // Usable as a header value: async-nats would panic otherwise.
        let mut headers = HeaderMap::new();
        headers.insert("X", header_safe("x\r\ny").as_str());
    }

    #[test]
    fn foreign_descriptions_keep_their_text() {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::service::NATS_SERVICE_ERROR,
            "Something Broke: badly",
        );
        headers.insert(async_nats::service::NATS_SERVICE_ERROR_CODE, "500");
        let err = ServiceError::from_headers(&headers).unwrap();
        assert_eq!(err.status, 500);
        assert_eq!(err.code, "error");
        assert_eq!(err.message, "Something Broke: badly");
    }
}
