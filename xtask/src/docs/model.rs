//! The contract as the docs see it: per subject, its message and who serves,
//! requests, publishes and listens to it. Every generator reads this one
//! view, so the AsyncAPI document, the diagram and the tables cannot
//! disagree on ownership or on order.

use anyhow::{bail, Result};
use contract::{Message, MessageKind};
use messaging_core::{Declaration, Listener};

/// The modules and messages the docs are generated from.
pub struct System {
    pub modules: Vec<&'static Declaration>,
    messages: Vec<Message>,
}

/// What travels on a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Event,
}

impl System {
    /// The real system: `contract::MODULES` and `contract::messages()`.
    pub fn from_contract() -> Result<Self> {
        Self::new(contract::MODULES.to_vec(), contract::messages())
    }

    /// Checks that declarations and messages describe the same subjects,
    /// each with the right kind: a subject documented without its payload, or
    /// a payload nobody declares, would make the docs lie by omission.
    pub fn new(modules: Vec<&'static Declaration>, messages: Vec<Message>) -> Result<Self> {
        let system = System { modules, messages };
        for (i, message) in system.messages.iter().enumerate() {
            if system.messages[..i]
                .iter()
                .any(|m| m.subject == message.subject)
            {
                bail!(
                    "subject {} has two messages in the contract",
                    message.subject
                );
            }
        }
        for subject in system.subjects() {
            let Some(message) = system.message(subject) else {
                bail!("subject {subject} is declared by a module but has no message in contract::messages()");
            };
            let as_request = system
                .modules
                .iter()
                .any(|m| m.serves(subject) || m.requests(subject));
            let as_event = system
                .modules
                .iter()
                .any(|m| m.publishes(subject) || m.listens.iter().any(|l| l.subject == subject));
            if as_request && as_event {
                bail!("subject {subject} is declared both as a request and as an event");
            }
            let declared = if as_request {
                Kind::Request
            } else {
                Kind::Event
            };
            if kind(message) != declared {
                bail!(
                    "subject {subject} is declared as {declared:?} but its message {} is not",
                    message.type_name
                );
            }
        }
        for message in &system.messages {
            if !system.subjects().contains(&message.subject) {
                bail!(
                    "message {} ({}) is not declared by any module",
                    message.subject,
                    message.type_name
                );
            }
        }
        Ok(system)
    }

    /// Every declared subject once, in a stable order: module by module (in
    /// `MODULES` order) what it serves, then what it publishes; then subjects
    /// only requested or listened to (which no module provides).
    pub fn subjects(&self) -> Vec<&'static str> {
        let mut subjects: Vec<&'static str> = Vec::new();
        let mut add = |subject: &'static str| {
            if !subjects.contains(&subject) {
                subjects.push(subject);
            }
        };
        for module in &self.modules {
            module.serves.iter().for_each(|e| add(e.subject));
            module.publishes.iter().copied().for_each(&mut add);
        }
        for module in &self.modules {
            module.requests.iter().copied().for_each(&mut add);
            module.listens.iter().for_each(|l| add(l.subject));
        }
        subjects
    }

    /// The request subjects, in [`System::subjects`] order.
    pub fn requests(&self) -> Vec<&'static str> {
        self.of_kind(Kind::Request)
    }

    /// The event subjects, in [`System::subjects`] order.
    pub fn events(&self) -> Vec<&'static str> {
        self.of_kind(Kind::Event)
    }

    fn of_kind(&self, wanted: Kind) -> Vec<&'static str> {
        self.subjects()
            .into_iter()
            .filter(|s| self.message(s).map(kind) == Some(wanted))
            .collect()
    }

    /// The message on `subject` (always there once [`System::new`] passed).
    pub fn message(&self, subject: &str) -> Option<&Message> {
        self.messages.iter().find(|m| m.subject == subject)
    }

    /// The module answering `subject`, and whether clients may call it.
    pub fn server(&self, subject: &str) -> Option<(&'static Declaration, bool)> {
        self.modules.iter().find_map(|m| {
            m.serves
                .iter()
                .find(|e| e.subject == subject)
                .map(|e| (*m, e.public))
        })
    }

    /// The modules that send `subject` as a request.
    pub fn requesters(&self, subject: &str) -> Vec<&'static Declaration> {
        self.modules
            .iter()
            .copied()
            .filter(|m| m.requests(subject))
            .collect()
    }

    /// The module publishing the event `subject`.
    /// The module whose event `subject` is: it publishes it, or schedules
    /// it (a deadline, which the broker publishes when due).
    pub fn publisher(&self, subject: &str) -> Option<&'static Declaration> {
        self.modules
            .iter()
            .copied()
            .find(|m| m.publishes(subject) || m.schedules(subject))
    }

    /// Every handler of the event `subject`, with its module.
    pub fn listeners(&self, subject: &str) -> Vec<(&'static Declaration, &'static Listener)> {
        self.modules
            .iter()
            .flat_map(|m| m.listens.iter().map(move |l| (*m, l)))
            .filter(|(_, l)| l.subject == subject)
            .collect()
    }
}

pub fn kind(message: &Message) -> Kind {
    match message.kind {
        MessageKind::Request { .. } => Kind::Request,
        MessageKind::Event => Kind::Event,
    }
}

#[cfg(test)]
pub mod fixture {
    //! A small made-up system for the generators' unit tests, so they do not
    //! break (or pass by luck) whenever the real contract changes.

    use contract::{Message, MessageKind};
    use messaging_core::{Declaration, Endpoint, ErrorCode, Listener};
    use schemars::json_schema;

    use super::System;

    pub const SHOP: Declaration = Declaration {
        name: "shop",
        description: "Shop: sells things",
        serves: &[Endpoint {
            subject: "shop.buy",
            public: true,
        }],
        requests: &["stock.take"],
        publishes: &["events.shop.sold"],
        schedules: &[],
        buckets: &[],
        listens: &[],
    };

    pub const STOCK: Declaration = Declaration {
        name: "stock",
        description: "Stock: counts things",
        serves: &[Endpoint {
            subject: "stock.take",
            public: false,
        }],
        requests: &[],
        publishes: &["events.stock.low"],
        schedules: &[],
        buckets: &[],
        listens: &[Listener {
            handler: "count_sale",
            subject: "events.shop.sold",
        }],
    };

    pub const OUT_OF_STOCK: ErrorCode = ErrorCode::new(409, "out_of_stock");

    pub fn system() -> System {
        let thing = json_schema!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Buy",
            "type": "object",
            "properties": { "thing": { "$ref": "#/$defs/ThingId" }, "note": { "type": "string" } },
            "required": ["thing"],
            "$defs": { "ThingId": { "type": "string", "format": "uuid" } }
        });
        let sale = json_schema!({
            "title": "Sale",
            "type": "object",
            "properties": { "thing": { "$ref": "#/$defs/ThingId" } },
            "required": ["thing"],
            "$defs": { "ThingId": { "type": "string", "format": "uuid" } }
        });
        let request = |subject, type_name, errors| Message {
            subject,
            type_name,
            payload: thing.clone(),
            kind: MessageKind::Request {
                reply_type: "Sale",
                reply: sale.clone(),
                errors,
            },
        };
        let event = |subject, type_name| Message {
            subject,
            type_name,
            payload: sale.clone(),
            kind: MessageKind::Event,
        };
        System::new(
            vec![&SHOP, &STOCK],
            vec![
                request("shop.buy", "Buy", &[OUT_OF_STOCK]),
                request("stock.take", "Take", &[]),
                event("events.shop.sold", "Sold"),
                event("events.stock.low", "Low"),
            ],
        )
        .expect("the fixture is consistent")
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn subjects_come_module_by_module_served_then_published() {
        let system = system();
        assert_eq!(
            system.subjects(),
            [
                "shop.buy",
                "events.shop.sold",
                "stock.take",
                "events.stock.low"
            ]
        );
        assert_eq!(system.requests(), ["shop.buy", "stock.take"]);
        assert_eq!(system.events(), ["events.shop.sold", "events.stock.low"]);
        assert_eq!(
            system.server("stock.take").map(|(m, p)| (m.name, p)),
            Some(("stock", false))
        );
        assert_eq!(system.requesters("stock.take")[0].name, "shop");
        assert_eq!(
            system.listeners("events.shop.sold")[0].1.handler,
            "count_sale"
        );
    }

    #[test]
    fn a_declared_subject_without_a_message_is_an_error() {
        let mut messages = contract::messages();
        messages.retain(|m| m.subject != contract::order::PAID);
        let err = System::new(contract::MODULES.to_vec(), messages)
            .err()
            .unwrap();
        assert!(err.to_string().contains("events.order.paid"), "{err}");
    }

    #[test]
    fn the_real_contract_is_consistent() {
        System::from_contract().unwrap();
    }
}
