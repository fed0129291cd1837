//! Building YAML values whose key order we choose.
//!
//! `serde_norway::Mapping` keeps insertion order, so the AsyncAPI document
//! reads top-down (`asyncapi`, `info`, ... `components`) instead of
//! alphabetically. JSON values coming from schemars are converted with their
//! keys sorted: serde_json's map order depends on a cargo feature
//! (`preserve_order`) that any crate in a build may switch on, and the
//! generated files must not change with the set of crates being built.

use serde_json::Value as Json;
use serde_norway::{Mapping, Value};

/// A YAML mapping built in the order its entries are added.
#[derive(Default)]
pub struct Map(Mapping);

impl Map {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key: value` and returns the map, for chaining.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    pub fn insert(&mut self, key: &str, value: impl Into<Value>) {
        self.0.insert(Value::from(key), value.into());
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

impl From<Map> for Value {
    fn from(map: Map) -> Self {
        Value::Mapping(map.0)
    }
}

/// `{ $ref: pointer }`.
pub fn reference(pointer: &str) -> Value {
    Map::new().with("$ref", pointer).into()
}

/// Converts a JSON value, sorting object keys so the result never depends
/// on how serde_json was built.
pub fn from_json(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => items.iter().map(from_json).collect(),
        Json::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            let mut map = Map::new();
            for key in keys {
                map.insert(key, from_json(&object[key]));
            }
            map.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_keep_insertion_order_and_json_keys_are_sorted() {
        let value: Value = Map::new()
            .with("z", from_json(&json!({ "b": 1, "a": [true, null, "x"] })))
            .with("a", -2i64)
            .into();
        assert_eq!(
            serde_norway::to_string(&value).unwrap(),
            "z:\n  a:\n  - true\n  - null\n  - x\n  b: 1\na: -2\n"
        );
    }
}
