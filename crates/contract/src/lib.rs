//! The contract of the system, as data: every subject, payload and error
//! code, grouped by the module that owns it, and per module a
//! [`Declaration`] of what it serves, requests, publishes and listens to.
//!
//! This crate *is* the public API of the system. Clients in any language
//! write against the JSON defined here, so the rules are pinned:
//!
//! * JSON objects with `snake_case` fields, ids as UUID strings;
//! * missing fields and wrong types are bad input (a `name` of `42` is
//!   rejected, never coerced);
//! * unknown fields are ignored, so that a contract can grow without breaking
//!   older peers;
//! * every event also carries `event_id` and `correlation_id`.
//!
//! Values are parsed into newtypes ([`values::Name`], [`values::Quantity`],
//! the ids) while decoding, so a handler never validates twice.
//!
//! Everything else is derived from here: the framework holds each module to
//! its declaration (an undeclared serve, request, publish or listen is an
//! error); `cargo xtask docs` generates the AsyncAPI document, the flow
//! diagram and the subject tables from [`MODULES`] and [`messages`].

use messaging_core::{Declaration, ErrorCode, Event, Rpc};

pub mod order;
pub mod payment;
pub mod product;
pub mod shipping;
pub mod user;
pub mod values;

/// `404 not_found`: the thing asked for (by its id) does not exist.
pub const NOT_FOUND: ErrorCode = ErrorCode::new(404, "not_found");

/// Every module of the system, in the order the demo registers them.
pub const MODULES: &[&Declaration] = &[
    &user::MODULE,
    &product::MODULE,
    &order::MODULE,
    &payment::MODULE,
    &shipping::MODULE,
];

/// The declaration of the module called `name`.
pub fn module(name: &str) -> Option<&'static Declaration> {
    MODULES.iter().copied().find(|m| m.name == name)
}

/// One message of the contract, for the generated docs.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: &'static str,
    /// The Rust type of the payload (`PlaceOrder`).
    pub type_name: &'static str,
    /// JSON Schema of the payload (for an event: without the envelope's
    /// `event_id` and `correlation_id`).
    pub payload: schemars::Schema,
    pub kind: MessageKind,
}

#[derive(Debug, Clone)]
pub enum MessageKind {
    Request {
        reply_type: &'static str,
        reply: schemars::Schema,
        /// The errors specific to this request (every request may also get
        /// [`ErrorCode::COMMON`]).
        errors: &'static [ErrorCode],
    },
    Event,
}

fn short_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

fn request<R: Rpc + schemars::JsonSchema>() -> Message
where
    R::Reply: schemars::JsonSchema,
{
    Message {
        subject: R::SUBJECT,
        type_name: short_name::<R>(),
        payload: schemars::schema_for!(R),
        kind: MessageKind::Request {
            reply_type: short_name::<R::Reply>(),
            reply: schemars::schema_for!(R::Reply),
            errors: R::ERRORS,
        },
    }
}

fn event<E: Event + schemars::JsonSchema>() -> Message {
    Message {
        subject: E::SUBJECT,
        type_name: short_name::<E>(),
        payload: schemars::schema_for!(E),
        kind: MessageKind::Event,
    }
}

/// Every message of the contract with its payload schema.
pub fn messages() -> Vec<Message> {
    vec![
        request::<user::CreateUser>(),
        request::<user::GetUser>(),
        event::<user::UserCreated>(),
        request::<product::CreateProduct>(),
        request::<product::GetProduct>(),
        request::<product::ReserveStock>(),
        event::<product::ProductCreated>(),
        event::<product::StockUpdated>(),
        event::<product::HoldDue>(),
        request::<order::PlaceOrder>(),
        request::<order::GetOrder>(),
        request::<order::CancelOrder>(),
        event::<order::OrderCreated>(),
        event::<order::OrderPaid>(),
        event::<order::OrderFulfilled>(),
        event::<order::OrderFailed>(),
        event::<order::OrderCancelled>(),
        event::<order::PaymentDue>(),
        event::<payment::PaymentSucceeded>(),
        event::<payment::PaymentFailed>(),
        event::<payment::PaymentRefunded>(),
        request::<shipping::GetShipment>(),
        event::<shipping::ShipmentDispatched>(),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::order::*;
    use super::product::*;
    use super::user::*;
    use super::values::*;
    use super::*;

    #[test]
    fn every_declared_subject_has_a_message_and_every_message_a_declaration() {
        let messages: BTreeSet<_> = messages().iter().map(|m| m.subject).collect();
        let mut declared = BTreeSet::new();
        for module in MODULES {
            module.check().unwrap();
            declared.extend(module.serves.iter().map(|e| e.subject));
            declared.extend(module.requests.iter().copied());
            declared.extend(module.publishes.iter().copied());
            declared.extend(module.schedules.iter().copied());
            declared.extend(module.listens.iter().map(|l| l.subject));
        }
        assert_eq!(messages, declared);
    }

    #[test]
    fn each_subject_has_one_owner_and_what_is_used_is_provided() {
        for message in messages() {
            let owners: Vec<_> = MODULES
                .iter()
                .filter(|m| {
                    m.serves(message.subject)
                        || m.publishes(message.subject)
                        || m.schedules(message.subject)
                })
                .map(|m| m.name)
                .collect();
            assert_eq!(owners.len(), 1, "{}: {owners:?}", message.subject);
        }
        for module in MODULES {
            for subject in module.requests {
                assert!(MODULES.iter().any(|m| m.serves(subject)), "{subject}");
            }
            for listener in module.listens {
                assert!(
                    MODULES
                        .iter()
                        .any(|m| m.publishes(listener.subject) || m.schedules(listener.subject)),
                    "{}",
                    listener.subject
                );
            }
        }
    }

    #[test]
    fn wire_format_is_snake_case_with_uuid_strings() {
        let order = Order {
            id: OrderId::new(),
            user_id: UserId::new(),
            product_id: ProductId::new(),
            quantity: Quantity::new(3).unwrap(),
            status: OrderStatus::Pending,
        };
        let json = serde_json::to_value(&order).unwrap();
        assert_eq!(json["id"], order.id.0.to_string());
        assert_eq!(json["user_id"], order.user_id.0.to_string());
        assert_eq!(json["product_id"], order.product_id.0.to_string());
        assert_eq!(json["quantity"], 3);
        assert_eq!(json["status"], "pending");
    }

    #[test]
    fn wrong_types_are_refused_not_coerced() {
        let err = serde_json::from_str::<CreateUser>(r#"{"name": 42}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let err = serde_json::from_str::<CreateProduct>(r#"{"name":"W","stock":"5"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn values_are_parsed_at_the_edge() {
        let err = serde_json::from_str::<CreateUser>(r#"{"name": "   "}"#).unwrap_err();
        assert!(err.to_string().contains("name must not be empty"), "{err}");
        let err = serde_json::from_str::<CreateProduct>(r#"{"name":"W","stock":0}"#).unwrap_err();
        assert!(err.to_string().contains("greater than zero"), "{err}");
        let err = serde_json::from_str::<CreateProduct>(r#"{"name":"W","stock":-1}"#).unwrap_err();
        assert!(err.to_string().contains("invalid value"), "{err}");
        let user: CreateUser = serde_json::from_str(r#"{"name": "  Ada  "}"#).unwrap();
        assert_eq!(user.name.as_str(), "Ada");
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_named() {
        let req: GetUser = serde_json::from_str(
            r#"{"id":"5f0c6a4e-8a39-4a57-9bd6-0c0a1c1d1e1f","future_field":true}"#,
        )
        .unwrap();
        assert_eq!(req.id.0.to_string(), "5f0c6a4e-8a39-4a57-9bd6-0c0a1c1d1e1f");
        let err = serde_json::from_str::<PlaceOrder>(
            r#"{"user_id":"5f0c6a4e-8a39-4a57-9bd6-0c0a1c1d1e1f"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("missing field `product_id`"),
            "{err}"
        );
    }

    #[test]
    fn schemas_name_their_fields() {
        let message = messages()
            .into_iter()
            .find(|m| m.subject == order::CREATE)
            .unwrap();
        let schema = serde_json::to_value(&message.payload).unwrap();
        let required = schema["required"].as_array().unwrap();
        assert_eq!(required.len(), 3, "{schema}");
        assert_eq!(schema["properties"]["quantity"]["minimum"], 1, "{schema}");
    }
}
