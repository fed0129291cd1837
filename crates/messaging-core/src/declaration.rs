//! A module's declaration: what it does on the bus, as data.
//!
//! The contract writes one per module: the requests it serves, the requests
//! it makes, the events it publishes, and the events it listens to (each by
//! a named handler). The framework holds a module to it: serving, requesting,
//! publishing or listening outside the declaration fails with a clear error,
//! at registration or at the call. Docs, the AsyncAPI document and (next) the
//! broker's permissions are generated from the same data, so what runs and
//! what is documented cannot drift apart.

/// What one module does on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declaration {
    /// The module's name: its service name on `$SRV`, the prefix of its
    /// durable consumers. `[A-Za-z0-9_-]+`.
    pub name: &'static str,
    /// One line on what the module owns.
    pub description: &'static str,
    /// The request subjects it answers.
    pub serves: &'static [Endpoint],
    /// The request subjects it sends to other modules.
    pub requests: &'static [&'static str],
    /// The event subjects it publishes.
    pub publishes: &'static [&'static str],
    /// The events it schedules for later (its deadlines): stored now, and
    /// published on their subject by the broker when due, never by the
    /// module itself. Usually the module also listens to them.
    pub schedules: &'static [&'static str],
    /// The key-value buckets it keeps its state in (its own: no other
    /// module may touch them). The framework's shared buckets (idempotency
    /// keys, dead letters) are not listed: each module reaches only its
    /// own keys in them.
    pub buckets: &'static [&'static str],
    /// The events it reacts to, each by a named handler.
    pub listens: &'static [Listener],
}

/// A request subject a module answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub subject: &'static str,
    /// Callable by clients outside the system; otherwise only modules that
    /// declare they request it may (such as `product.reserve`).
    pub public: bool,
}

impl Endpoint {
    /// An endpoint clients outside the system may call.
    pub const fn public(subject: &'static str) -> Self {
        Self {
            subject,
            public: true,
        }
    }

    /// An endpoint only the modules that declare they request it may call.
    pub const fn internal(subject: &'static str) -> Self {
        Self {
            subject,
            public: false,
        }
    }
}

/// One event handler of a module.
///
/// The handler's **name** is its identity: its durable consumer is
/// `<module>_<handler>`, so renaming the *subject* keeps the consumer (and
/// its position in the stream), while renaming the *handler* starts a new
/// consumer that reads the stream from its start (up to 7 days of events).
/// Two handlers of the same event in one module each see every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// `[A-Za-z0-9_-]+`, stable.
    pub handler: &'static str,
    pub subject: &'static str,
}

impl Listener {
    /// The handler `handler` of the events on `subject`.
    pub const fn new(handler: &'static str, subject: &'static str) -> Self {
        Self { handler, subject }
    }
}

impl Declaration {
    pub fn serves(&self, subject: &str) -> bool {
        self.serves.iter().any(|e| e.subject == subject)
    }

    pub fn requests(&self, subject: &str) -> bool {
        self.requests.contains(&subject)
    }

    pub fn publishes(&self, subject: &str) -> bool {
        self.publishes.contains(&subject)
    }

    pub fn schedules(&self, subject: &str) -> bool {
        self.schedules.contains(&subject)
    }

    pub fn owns_bucket(&self, bucket: &str) -> bool {
        self.buckets.contains(&bucket)
    }

    pub fn listens(&self, handler: &str, subject: &str) -> bool {
        self.listens
            .iter()
            .any(|l| l.handler == handler && l.subject == subject)
    }

    /// The durable consumer of `handler`: `<module>_<handler>`.
    pub fn consumer_name(&self, handler: &str) -> String {
        format!("{}_{handler}", self.name)
    }

    /// What is wrong with this declaration, if anything: names that NATS
    /// would refuse, or a handler declared twice.
    pub fn check(&self) -> Result<(), String> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !valid(self.name) {
            return Err(format!("module name {:?} is not [A-Za-z0-9_-]+", self.name));
        }
        for subject in self.schedules {
            let deadline = crate::events::stream_of(subject) == crate::events::DEADLINES_STREAM;
            if !deadline {
                return Err(format!(
                    "{}: scheduled event {subject:?} must be a `{}.` subject",
                    self.name,
                    crate::events::DEADLINES_PREFIX
                ));
            }
        }
        for (i, listener) in self.listens.iter().enumerate() {
            if !valid(listener.handler) {
                return Err(format!(
                    "{}: handler name {:?} is not [A-Za-z0-9_-]+",
                    self.name, listener.handler
                ));
            }
            if self.listens[..i]
                .iter()
                .any(|l| l.handler == listener.handler)
            {
                return Err(format!(
                    "{}: handler {:?} is declared twice",
                    self.name, listener.handler
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: Declaration = Declaration {
        name: "probe",
        description: "test",
        serves: &[Endpoint {
            subject: "probe.echo",
            public: true,
        }],
        requests: &["other.get"],
        publishes: &["events.probe.tick"],
        schedules: &[],
        buckets: &[],
        listens: &[Listener {
            handler: "count_ticks",
            subject: "events.probe.tick",
        }],
    };

    #[test]
    fn answers_what_it_declares_and_nothing_else() {
        assert!(PROBE.serves("probe.echo") && !PROBE.serves("probe.other"));
        assert!(PROBE.requests("other.get") && !PROBE.requests("probe.echo"));
        assert!(PROBE.publishes("events.probe.tick") && !PROBE.publishes("events.x"));
        assert!(PROBE.listens("count_ticks", "events.probe.tick"));
        assert!(!PROBE.listens("count_ticks", "events.other"));
        assert_eq!(PROBE.consumer_name("count_ticks"), "probe_count_ticks");
        assert_eq!(PROBE.check(), Ok(()));
    }

    #[test]
    fn bad_names_and_twice_declared_handlers_are_found() {
        const COUNT: Listener = Listener {
            handler: "count_ticks",
            subject: "events.probe.tick",
        };
        let twice = Declaration {
            buckets: &[],
            listens: &[COUNT, COUNT],
            ..PROBE
        };
        assert!(twice.check().unwrap_err().contains("declared twice"));
        let dotted = Declaration {
            name: "pro.be",
            ..PROBE
        };
        assert!(dotted.check().is_err());
    }
}
