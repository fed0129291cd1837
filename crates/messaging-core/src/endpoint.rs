//! Serving one request subject: decode, run the handler concurrently with
//! the others in flight, reply the value or the structured error. Every
//! request gets a reply.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_nats::service::endpoint::Endpoint;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use uuid::Uuid;

use crate::bus::CORRELATION_ID;
use crate::context::Context;
use crate::error::ServiceError;
use crate::idempotency::{Claim, IDEMPOTENCY_KEY, MAX_KEY_LEN};
use crate::message::{ErrorCode, Rpc};
use crate::module::Shared;
use crate::stats::{Ending, HandlerStats};

/// Reads requests from `endpoint` until the module stops, handling them
/// concurrently.
pub(crate) async fn serve<R, S, F, Fut>(
    shared: Arc<Shared<S>>,
    mut endpoint: Endpoint,
    stats: Arc<HandlerStats>,
    max_in_flight: usize,
    handler: Arc<F>,
) where
    R: Rpc,
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Context, R) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R::Reply, ServiceError>> + Send + 'static,
{
    let subject = R::SUBJECT;
    // Requests in flight run as futures of this one task (see the same
    // choice in `consumer.rs`): concurrent, without a task per request.
    let mut running = FuturesUnordered::new();
    // Refusals are sent beside the intake, not inline: under a burst the
    // intake must keep reading as fast as requests arrive (what the client
    // library cannot buffer, it drops), while replies wait for the socket.
    let mut refusing = FuturesUnordered::new();
    let mut stopping = false;
    let mut open = true;
    while open || !running.is_empty() || !refusing.is_empty() {
        let request = tokio::select! {
            request = endpoint.next(), if open && refusing.len() < MAX_REFUSING => request,
            Some(()) = running.next(), if !running.is_empty() => continue,
            Some(()) = refusing.next(), if !refusing.is_empty() => continue,
            () = shared.cancel.cancelled(), if !stopping => {
                // Stop intake; requests already delivered to us are still
                // read and answered until the endpoint's stream ends.
                stopping = true;
                if let Err(err) = endpoint.stop().await {
                    tracing::warn!(subject, %err, "failed to unsubscribe endpoint");
                    open = false;
                }
                continue;
            }
        };
        let Some(request) = request else {
            open = false;
            continue;
        };
        // Too large for the contract: refused before anything reads it.
        let size = request.message.payload.len();
        if size > R::MAX_PAYLOAD {
            let too_large = ErrorCode::PAYLOAD_TOO_LARGE.error(format!(
                "{subject} payload is {size} bytes, at most {} allowed",
                R::MAX_PAYLOAD
            ));
            refusing.push(refuse(request, too_large));
            continue;
        }
        // Saturated: say so at once rather than let the requester time out
        // waiting for a slot.
        if running.len() >= max_in_flight {
            let busy = ServiceError::unavailable(format!(
                "overloaded: too many {subject} requests in flight, retry later"
            ));
            refusing.push(refuse(request, busy));
            continue;
        }
        let in_flight = stats.enter();
        let (shared, handler) = (&shared, &handler);
        running.push(async move {
            let ending = answer::<R, S, F, Fut>(request, shared, handler).await;
            in_flight.finish(ending);
        });
    }
    tracing::debug!(subject, "endpoint stopped");
}

/// Refusals being sent at most, before the intake waits for one to go out.
const MAX_REFUSING: usize = 4096;

async fn refuse(mut request: async_nats::service::Request, err: ServiceError) {
    // Only the reply subject is needed from here on: the payload (up to the
    // server's max_payload) is not kept while the refusal waits to be sent.
    request.message.payload = Bytes::new();
    let _ = request.respond(Err(err.into())).await;
}

/// Decodes one request, runs the handler and replies; whatever panics on
/// the way (our code, a library's), the requester still gets a `500` and the
/// endpoint keeps serving.
async fn answer<R, S, F, Fut>(
    request: async_nats::service::Request,
    shared: &Shared<S>,
    handler: &F,
) -> Ending
where
    R: Rpc,
    F: Fn(Arc<S>, Context, R) -> Fut,
    Fut: Future<Output = Result<R::Reply, ServiceError>>,
{
    let attempt = AssertUnwindSafe(try_answer::<R, S, F, Fut>(&request, shared, handler))
        .catch_unwind()
        .await;
    match attempt {
        Ok(ending) => ending,
        Err(_) => {
            tracing::error!(subject = R::SUBJECT, "replying panicked; answering 500");
            // A plain, known-safe reply: nothing left here can panic.
            refuse(
                request,
                ServiceError::internal("the reply could not be produced"),
            )
            .await;
            Ending::Failed
        }
    }
}

async fn try_answer<R, S, F, Fut>(
    request: &async_nats::service::Request,
    shared: &Shared<S>,
    handler: &F,
) -> Ending
where
    R: Rpc,
    F: Fn(Arc<S>, Context, R) -> Fut,
    Fut: Future<Output = Result<R::Reply, ServiceError>>,
{
    // Header names are case-insensitive (as in HTTP; nats-py and others
    // send what the user typed): an `idempotency-key` must not be ignored.
    let header = |name: &str| {
        let headers = request.message.headers.as_ref()?;
        headers
            .iter()
            .find(|(n, _)| AsRef::<str>::as_ref(n).eq_ignore_ascii_case(name))
            .and_then(|(_, values)| values.first())
            .map(|v| v.as_str().trim().to_owned())
    };
    let correlation_id = header(CORRELATION_ID)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(Uuid::new_v4);
    let key = header(IDEMPOTENCY_KEY);
    let ctx = Context {
        bus: shared.bus.clone(),
        subject: R::SUBJECT,
        correlation_id,
        event: None,
        published: None,
        idempotency_key: key.clone(),
    };

    let reply = reply_to(&request.message.payload, key, ctx, shared, handler).await;

    let ending = if reply.is_ok() {
        Ending::Ok
    } else {
        Ending::Failed
    };
    if let Err(err) = &reply {
        if err.status >= 500 {
            tracing::warn!(subject = R::SUBJECT, %err, "request failed");
        } else {
            tracing::debug!(subject = R::SUBJECT, %err, "request refused");
        }
    }
    let reply = reply.map(Bytes::from).map_err(Into::into);
    if let Err(err) = request.respond(reply).await {
        // Only possible without a reply subject (a publish, not a request) or
        // with the connection gone; there is nobody left to tell.
        tracing::debug!(subject = R::SUBJECT, %err, "could not send reply");
    }
    ending
}

/// The reply to one request: decoded first (malformed input is refused
/// before its key is remembered, so the corrected request, with the same
/// key, runs), then handled, or replayed under its `Idempotency-Key`.
async fn reply_to<R, S, F, Fut>(
    payload: &[u8],
    key: Option<String>,
    ctx: Context,
    shared: &Shared<S>,
    handler: &F,
) -> Result<String, ServiceError>
where
    R: Rpc,
    F: Fn(Arc<S>, Context, R) -> Fut,
    Fut: Future<Output = Result<R::Reply, ServiceError>>,
{
    let request = decode::<R>(payload)?;
    let Some(key) = key else {
        return handle(handler, shared, ctx, request).await;
    };
    // A blank key is a client bug; ignoring it would make its retry a
    // second order.
    if key.is_empty() {
        return Err(ServiceError::bad_request(format!(
            "{IDEMPOTENCY_KEY} must not be blank"
        )));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ServiceError::bad_request(format!(
            "{IDEMPOTENCY_KEY} is longer than {MAX_KEY_LEN} bytes"
        )));
    }
    match shared.idempotency.claim(R::SUBJECT, &key, payload).await? {
        Claim::Replay(reply) => reply,
        Claim::Busy => Err(ServiceError::conflict(
            "request_in_progress",
            format!("a request with {IDEMPOTENCY_KEY} {key:?} is still being handled"),
        )),
        Claim::OtherRequest => Err(ServiceError::new(
            422,
            "idempotency_key_reused",
            format!("{IDEMPOTENCY_KEY} {key:?} was used for a different request"),
        )),
        Claim::Claimed => {
            let reply = handle(handler, shared, ctx, request).await;
            let remembered = shared.idempotency.finish(R::SUBJECT, &key, payload, &reply);
            if let Err(err) = remembered.await {
                // The effect happened; only the memory of it is missing,
                // and the handler's derived ids make a retry converge.
                tracing::warn!(subject = R::SUBJECT, %err, "idempotency key not stored");
            }
            reply
        }
    }
}

/// Runs the handler; the reply as JSON text, or the error.
async fn handle<R, S, F, Fut>(
    handler: &F,
    shared: &Shared<S>,
    ctx: Context,
    request: R,
) -> Result<String, ServiceError>
where
    R: Rpc,
    F: Fn(Arc<S>, Context, R) -> Fut,
    Fut: Future<Output = Result<R::Reply, ServiceError>>,
{
    let value = AssertUnwindSafe(handler(shared.state.clone(), ctx, request))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(ServiceError::internal("request handler panicked")))?;
    serde_json::to_string(&value)
        .map_err(|err| ServiceError::internal(format!("reply could not be encoded: {err}")))
}

fn decode<R: Rpc>(payload: &[u8]) -> Result<R, ServiceError> {
    if payload.is_empty() {
        return Err(ServiceError::bad_request(format!(
            "empty payload: {} expects a JSON object",
            R::SUBJECT
        )));
    }
    // serde would also accept a struct written as an array (`["Ada"]`); the
    // contract is JSON objects with named fields, nothing positional.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ServiceError::bad_request(format!(
            "invalid {} request: expected a JSON object",
            R::SUBJECT
        )));
    }
    serde_json::from_slice(payload)
        .map_err(|err| ServiceError::bad_request(format!("invalid {} request: {err}", R::SUBJECT)))
}
