//! What each identity may do on the broker, derived from the declarations:
//! the subjects a module's NATS user may publish and subscribe to, those of
//! an outside `client`, and the `admin`'s.
//!
//! The framework knows which broker subjects it uses for what a module
//! declares (its service, its stream and consumers, its buckets, its keys
//! in the shared buckets); the declarations say the rest. Nothing here is
//! hand-kept per module: a new subject in the contract is a new grant.
//!
//! Each identity has its own reply inbox (`_INBOX_<identity>.`), so no
//! identity can read the replies meant for another.

use crate::dead_letter::DEAD_LETTER_BUCKET;
use crate::declaration::Declaration;
use crate::events::{stream_of, DEADLINES_STREAM, EVENTS_STREAM, SCHEDULES_PREFIX};
use crate::idempotency::BUCKET as IDEMPOTENCY_BUCKET;

/// The queue group async-nats services serve their endpoints in.
pub const QUEUE_GROUP: &str = "q";

/// The identity of outside callers: public requests only.
pub const CLIENT: &str = "client";

/// The identity of setup and operations: everything.
pub const ADMIN: &str = "admin";

/// What one identity may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    /// Subjects it may publish to (NATS wildcards allowed).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to; `"<subject> <queue>"` allows only
    /// that queue group.
    pub subscribe: Vec<String>,
    /// It may reply to the requests it receives (one reply each), without
    /// a grant on the requesters' inboxes.
    pub allow_responses: bool,
}

/// The inbox prefix of `identity`'s connection (`_INBOX_<identity>`).
pub fn inbox_prefix(identity: &str) -> String {
    format!("_INBOX_{identity}")
}

/// What the module `module` may do: serve its endpoints, request what it
/// declares it requests, publish its events, consume through its own
/// durable consumers, use its own buckets and its own keys in the shared
/// ones, and answer service discovery.
pub fn module(module: &Declaration) -> Permissions {
    let name = module.name;
    let mut publish: Vec<String> = Vec::new();
    let mut subscribe = vec![format!("{}.>", inbox_prefix(name))];

    publish.extend(module.requests.iter().map(|s| s.to_string()));
    publish.extend(module.publishes.iter().map(|s| s.to_string()));
    // Its deadlines: only the schedules of its own scheduled events (the
    // broker publishes them when due; consumers refuse an event published
    // by a schedule of another subject, see `consumer.rs`).
    publish.extend(
        module
            .schedules
            .iter()
            .map(|subject| format!("{SCHEDULES_PREFIX}.{subject}.*")),
    );

    // The account's JetStream limits, which bucket setup reads.
    publish.push("$JS.API.INFO".to_owned());
    // The event and deadline streams: made sure of at start, read for
    // dead letters.
    for stream in [EVENTS_STREAM, DEADLINES_STREAM] {
        publish.extend(stream_setup(stream));
        publish.push(format!("$JS.API.STREAM.MSG.GET.{stream}"));
        publish.push(format!("$JS.API.DIRECT.GET.{stream}"));
    }

    for endpoint in module.serves {
        subscribe.push(format!("{} {QUEUE_GROUP}", endpoint.subject));
    }
    // Service discovery, which every module answers.
    for verb in ["PING", "INFO", "STATS"] {
        subscribe.push(format!("$SRV.{verb}"));
        subscribe.push(format!("$SRV.{verb}.{name}"));
        subscribe.push(format!("$SRV.{verb}.{name}.>"));
    }

    for listener in module.listens {
        let consumer = module.consumer_name(listener.handler);
        let stream = stream_of(listener.subject);
        publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>"));
        publish.push(format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"));
        publish.push(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"));
        // Acks, in both forms: `$JS.ACK.<stream>.<consumer>...` and the
        // newer one with a domain and an account hash in front.
        publish.push(format!("$JS.ACK.{stream}.{consumer}.>"));
        publish.push(format!("$JS.ACK.*.*.{stream}.{consumer}.>"));
        subscribe.push(crate::dead_letter::max_deliveries_subject(
            &consumer,
            listener.subject,
        ));
    }

    for bucket in module.buckets {
        publish.extend(bucket_use(bucket));
        publish.push(format!("$KV.{bucket}.>"));
        publish.push(format!("$JS.API.DIRECT.GET.KV_{bucket}.>"));
    }

    // The shared buckets: set up by whichever module starts first; each
    // module writes and reads only its own keys in them.
    for bucket in [IDEMPOTENCY_BUCKET, DEAD_LETTER_BUCKET] {
        publish.extend(stream_setup(&format!("KV_{bucket}")));
    }
    for endpoint in module.serves {
        let keys = format!("$KV.{IDEMPOTENCY_BUCKET}.{}.*", endpoint.subject);
        publish.push(format!("$JS.API.DIRECT.GET.KV_{IDEMPOTENCY_BUCKET}.{keys}"));
        publish.push(keys);
    }
    for listener in module.listens {
        let consumer = module.consumer_name(listener.handler);
        let keys = format!("$KV.{DEAD_LETTER_BUCKET}.{consumer}.*");
        publish.push(format!("$JS.API.DIRECT.GET.KV_{DEAD_LETTER_BUCKET}.{keys}"));
        publish.push(keys);
    }

    Permissions {
        publish,
        subscribe,
        // Every module answers requests: its endpoints, and `$SRV`
        // discovery (a module that serves nothing still answers PING).
        allow_responses: true,
    }
}

/// What an outside caller may do: send the public requests of `modules`
/// and read its replies. No event, no internal request, no JetStream.
pub fn client(modules: &[&Declaration]) -> Permissions {
    let publish = modules
        .iter()
        .flat_map(|m| m.serves.iter())
        .filter(|e| e.public)
        .map(|e| e.subject.to_owned())
        .collect();
    Permissions {
        publish,
        subscribe: vec![format!("{}.>", inbox_prefix(CLIENT))],
        allow_responses: false,
    }
}

/// What the operator may do: everything (setting up streams and buckets,
/// dead letters, observing events).
pub fn admin() -> Permissions {
    Permissions {
        publish: vec![">".to_owned()],
        subscribe: vec![">".to_owned()],
        allow_responses: false,
    }
}

/// Making sure a stream exists with the right configuration.
fn stream_setup(stream: &str) -> [String; 3] {
    ["INFO", "CREATE", "UPDATE"].map(|verb| format!("$JS.API.STREAM.{verb}.{stream}"))
}

/// Owning a bucket: setting it up, listing and purging its keys (through
/// short-lived consumers of its stream, with flow control).
fn bucket_use(bucket: &str) -> Vec<String> {
    let stream = format!("KV_{bucket}");
    let mut subjects: Vec<String> = stream_setup(&stream).into();
    subjects.extend([
        format!("$JS.API.STREAM.PURGE.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]);
    subjects
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declaration::{Endpoint, Listener};

    const SHOP: Declaration = Declaration {
        name: "shop",
        description: "test",
        serves: &[
            Endpoint::public("shop.buy"),
            Endpoint::internal("shop.hold"),
        ],
        requests: &["bank.charge"],
        publishes: &["events.shop.sold"],
        schedules: &[],
        buckets: &["sales"],
        listens: &[Listener::new("settle", "events.bank.charged")],
    };

    #[test]
    fn a_module_gets_its_own_subjects_and_nothing_of_anybody_else() {
        let p = module(&SHOP);
        for granted in [
            "bank.charge",
            "events.shop.sold",
            "$KV.sales.>",
            "$KV.idempotency.shop.buy.*",
            "$KV.dead_letters.shop_settle.*",
            "$JS.API.CONSUMER.MSG.NEXT.EVENTS.shop_settle",
            "$JS.ACK.EVENTS.shop_settle.>",
        ] {
            assert!(p.publish.iter().any(|s| s == granted), "{granted}");
        }
        for granted in [
            "_INBOX_shop.>",
            "shop.buy q",
            "shop.hold q",
            "$SRV.PING.shop",
        ] {
            assert!(p.subscribe.iter().any(|s| s == granted), "{granted}");
        }
        assert!(p.allow_responses);
        // Nothing broad: no `>` wildcard at a subject's start, no `_INBOX.>`.
        assert!(p
            .publish
            .iter()
            .chain(&p.subscribe)
            .all(|s| s != ">" && !s.starts_with("_INBOX.")));
        assert!(!p.publish.iter().any(|s| s.starts_with("events.bank")));
    }

    #[test]
    fn a_client_may_only_call_public_endpoints() {
        let p = client(&[&SHOP]);
        assert_eq!(p.publish, ["shop.buy"]);
        assert_eq!(p.subscribe, ["_INBOX_client.>"]);
        assert!(!p.allow_responses);
    }
}
