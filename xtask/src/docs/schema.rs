//! The payload schemas, as schemars writes them, made fit for one AsyncAPI
//! document: every type under `components.schemas` by name, each root's
//! `$defs` hoisted there too and its `#/$defs/...` refs rewritten, the
//! envelope fields added to events. Also the field lists the README tables
//! show.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};
use serde_norway::Value;

use super::yaml::{self, Map};

/// Where shared schemas live in the AsyncAPI document.
pub const COMPONENTS: &str = "#/components/schemas/";

/// The fields every event carries on the wire beside its own (the envelope
/// `messaging_core` wraps events in); the contract's schemas leave them out.
pub const ENVELOPE: [(&str, &str); 2] = [
    (
        "event_id",
        "Unique per event (also its `Nats-Msg-Id` header, which the stream dedupes on).",
    ),
    (
        "correlation_id",
        "The id of the flow this event belongs to: one order's whole life shares one.",
    ),
];

/// The `components.schemas` of the document being built, by name (sorted,
/// so the output does not depend on the order types are met in).
#[derive(Default)]
pub struct Schemas(BTreeMap<String, Json>);

impl Schemas {
    /// Adds a root schema from schemars as `name`, with its definitions;
    /// returns the `$ref` pointer to it.
    pub fn add_root(&mut self, name: &str, schema: &Json) -> Result<String> {
        let mut root = schema.clone();
        let object = root
            .as_object_mut()
            .with_context(|| format!("the schema of {name} is not a JSON object"))?;
        // The document's schema format is AsyncAPI's (a JSON Schema
        // superset): a per-schema dialect would contradict it.
        object.remove("$schema");
        // The component's name says what `title` said; without it a root and
        // the same type met as another's definition compare equal.
        object.remove("title");
        if let Some(defs) = object.remove("$defs") {
            let Json::Object(defs) = defs else {
                bail!("the `$defs` of {name} is not an object");
            };
            for (def_name, def) in defs {
                self.insert(&def_name, def)?;
            }
        }
        self.insert(name, root)?;
        Ok(format!("{COMPONENTS}{name}"))
    }

    /// Adds `schema` as `name`. The same name twice is fine only for the
    /// same schema: two types of one name would otherwise shadow each other.
    pub fn insert(&mut self, name: &str, mut schema: Json) -> Result<()> {
        rewrite_refs(&mut schema)?;
        match self.0.get(name) {
            Some(existing) if *existing != schema => {
                bail!("two different schemas are both named {name}: rename one of the types")
            }
            Some(_) => {}
            None => {
                self.0.insert(name.to_owned(), schema);
            }
        }
        Ok(())
    }

    pub fn to_yaml(&self) -> Value {
        let mut map = Map::new();
        for (name, schema) in &self.0 {
            map.insert(name, yaml::from_json(schema));
        }
        map.into()
    }
}

/// Points schemars' `#/$defs/X` refs at `#/components/schemas/X`; any other
/// kind of ref (to the root, to another file) would dangle once hoisted.
fn rewrite_refs(value: &mut Json) -> Result<()> {
    match value {
        Json::Object(object) => {
            if let Some(Json::String(target)) = object.get_mut("$ref") {
                if let Some(name) = target.strip_prefix("#/$defs/") {
                    *target = format!("{COMPONENTS}{name}");
                } else if !target.starts_with(COMPONENTS) {
                    bail!("cannot place the schema reference {target:?} in the AsyncAPI document");
                }
            }
            for child in object.values_mut() {
                rewrite_refs(child)?;
            }
        }
        Json::Array(items) => {
            for item in items {
                rewrite_refs(item)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// An event's schema as it is on the wire: its fields plus the envelope's,
/// all required.
pub fn with_envelope(name: &str, schema: &Json) -> Result<Json> {
    let mut schema = schema.clone();
    let object = schema
        .as_object_mut()
        .with_context(|| format!("the schema of event {name} is not a JSON object"))?;
    let properties = object
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .with_context(|| format!("the properties of event {name} are not an object"))?;
    for (field, description) in ENVELOPE {
        if properties.contains_key(field) {
            bail!("event {name} has a field {field}, which the envelope already carries");
        }
        properties.insert(
            field.to_owned(),
            json!({ "type": "string", "format": "uuid", "description": description }),
        );
    }
    let required = object
        .entry("required")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .with_context(|| format!("the required fields of event {name} are not a list"))?;
    required.extend(ENVELOPE.iter().map(|(field, _)| json!(field)));
    Ok(schema)
}

/// A payload's fields, JSON-ish: `{"user_id","product_id","quantity"}`.
/// Required fields come first in declaration order (schemars lists them so);
/// optional ones follow, sorted, marked with `?`.
pub fn fields(schema: &Json) -> String {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .collect();
    let mut optional: Vec<&str> = schema["properties"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.keys().map(String::as_str))
        .filter(|field| !required.contains(field))
        .collect();
    optional.sort_unstable();
    let listed: Vec<String> = required
        .iter()
        .map(|field| format!("\"{field}\""))
        .chain(optional.iter().map(|field| format!("\"{field}\"?")))
        .collect();
    format!("{{{}}}", listed.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Json {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "User",
            "type": "object",
            "properties": { "id": { "$ref": "#/$defs/UserId" }, "nick": { "type": "string" } },
            "required": ["id"],
            "$defs": { "UserId": { "type": "string", "format": "uuid" } }
        })
    }

    #[test]
    fn roots_and_their_defs_become_components_with_rewritten_refs() {
        let mut schemas = Schemas::default();
        assert_eq!(
            schemas.add_root("User", &user()).unwrap(),
            "#/components/schemas/User"
        );
        // The same definition met again (from another root) is one schema.
        schemas.add_root("Again", &user()).unwrap();
        assert_eq!(
            schemas.0["User"],
            json!({
                "type": "object",
                "properties": { "id": { "$ref": "#/components/schemas/UserId" }, "nick": { "type": "string" } },
                "required": ["id"],
            })
        );
        assert_eq!(
            schemas.0["UserId"],
            json!({ "type": "string", "format": "uuid" })
        );
        assert_eq!(schemas.0.len(), 3);
    }

    #[test]
    fn two_types_of_one_name_are_refused() {
        let mut schemas = Schemas::default();
        schemas.add_root("User", &user()).unwrap();
        let err = schemas
            .add_root("User", &json!({ "type": "string" }))
            .unwrap_err();
        assert!(err.to_string().contains("both named User"), "{err}");
    }

    #[test]
    fn refs_that_cannot_be_hoisted_are_refused() {
        let mut schemas = Schemas::default();
        let err = schemas
            .add_root("Tree", &json!({ "items": { "$ref": "#" } }))
            .unwrap_err();
        assert!(err.to_string().contains("\"#\""), "{err}");
    }

    #[test]
    fn events_get_the_envelope_fields_as_required_uuids() {
        let event = with_envelope("UserCreated", &user()).unwrap();
        assert_eq!(
            event["required"],
            json!(["id", "event_id", "correlation_id"])
        );
        assert_eq!(event["properties"]["event_id"]["format"], "uuid");
        assert_eq!(event["properties"]["correlation_id"]["type"], "string");
        let clash = json!({ "properties": { "event_id": {} } });
        assert!(with_envelope("Clash", &clash).is_err());
    }

    #[test]
    fn fields_list_required_ones_in_order_then_optional_ones() {
        assert_eq!(fields(&user()), r#"{"id","nick"?}"#);
        assert_eq!(fields(&json!({ "type": "object" })), "{}");
    }
}
