//! What the broker's permissions refused: a publish or request the broker
//! will not deliver is reported only as an error *on the connection*
//! (`-ERR 'Permissions Violation for Publish to "X"'`), while the call
//! itself would wait for its timeout. Connections made by
//! [`crate::Connection`] report those errors here; a request or an event
//! publish on subject X waiting at that moment fails at once with
//! `Forbidden { subject: X }`, and the refusal is logged once per subject,
//! as an error.
//!
//! Process-wide, because modules are given a plain `async_nats::Client`
//! (which carries no state of ours): a refusal seen on one connection also
//! fails a call on the same subject from another connection of this
//! process waiting at that moment. Every module's permissions come from
//! the same declarations, so such a subject is refused to them alike.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use tokio::sync::broadcast;

/// How many refused subjects are remembered for "log once".
const LOGGED_LIMIT: usize = 1024;

struct Refusals {
    subjects: broadcast::Sender<String>,
    logged: Mutex<HashSet<String>>,
}

fn refusals() -> &'static Refusals {
    static REFUSALS: OnceLock<Refusals> = OnceLock::new();
    REFUSALS.get_or_init(|| Refusals {
        subjects: broadcast::channel(256).0,
        logged: Mutex::default(),
    })
}

/// The subject a server's permissions-violation message names, if it is one.
pub(crate) fn refused_subject(message: &str) -> Option<&str> {
    let lower = message.to_ascii_lowercase();
    if !lower.contains("permissions violation for publish to") {
        return None;
    }
    let start = message.find('"')? + 1;
    let end = start + message[start..].find('"')?;
    Some(&message[start..end])
}

/// Reports a server error; a permissions violation is logged (once per
/// subject) and fails the calls waiting on its subject.
pub(crate) fn report(message: &str) -> bool {
    let Some(subject) = refused_subject(message) else {
        return false;
    };
    let registry = refusals();
    let first = {
        let mut logged = registry.logged.lock().expect("refusals lock");
        logged.len() < LOGGED_LIMIT && logged.insert(subject.to_owned())
    };
    if first {
        tracing::error!(
            subject,
            "the broker refused this identity a publish: check the broker's permissions"
        );
    }
    let _ = registry.subjects.send(subject.to_owned());
    true
}

/// Listens for refusals; subscribe *before* sending, then [`Watch::refused`].
pub(crate) struct Watch(broadcast::Receiver<String>);

pub(crate) fn watch() -> Watch {
    Watch(refusals().subjects.subscribe())
}

impl Watch {
    /// Resolves when the broker refuses `subject`; never otherwise.
    pub(crate) async fn refused(mut self, subject: &str) {
        loop {
            match self.0.recv().await {
                Ok(refused) if refused == subject => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_subject_is_read_from_the_servers_message() {
        assert_eq!(
            refused_subject(r#"Permissions Violation for Publish to "product.reserve""#),
            Some("product.reserve")
        );
        assert_eq!(
            refused_subject(r#"permissions violation for publish to "events.x" using queue "q""#),
            Some("events.x")
        );
        assert_eq!(
            refused_subject(r#"Permissions Violation for Subscription to "a.b""#),
            None
        );
        assert_eq!(refused_subject("maximum payload exceeded"), None);
    }

    #[tokio::test]
    async fn a_waiting_call_learns_of_its_subjects_refusal_only() {
        let waiting = watch();
        assert!(report(
            r#"Permissions Violation for Publish to "other.subject""#
        ));
        assert!(report(r#"Permissions Violation for Publish to "mine""#));
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting.refused("mine"))
            .await
            .expect("the refusal of its own subject");
        assert!(!report("slow consumer"));
    }
}
