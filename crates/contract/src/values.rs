//! Value types shared by several modules' payloads, parsed once, at the
//! edge: a handler that receives a [`Name`] knows it is not blank.

use std::fmt;

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// Declares a UUID id newtype (`UserId`, `OrderId`, ...): a string on the wire.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, schemars::JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A fresh random (v4) id.
            pub fn new() -> Self {
                Self(uuid::Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}
pub(crate) use id_type;

/// A display name: trimmed, not blank, at most [`Name::MAX_LEN`] characters,
/// without control characters or bidirectional overrides (which make a name
/// display as something else than it is).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl JsonSchema for Name {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Name".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": Name::MAX_LEN,
            "description": "Trimmed, not blank, no control or bidirectional formatting characters."
        })
    }
}

impl Name {
    /// Longest accepted name, in characters.
    pub const MAX_LEN: usize = 200;

    /// Parses a name; the error says what is wrong with it.
    pub fn parse(raw: impl Into<String>) -> Result<Self, String> {
        let raw = raw.into();
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("name must not be empty".to_owned());
        }
        if trimmed.chars().count() > Self::MAX_LEN {
            return Err(format!("name must be at most {} characters", Self::MAX_LEN));
        }
        if let Some(c) = trimmed
            .chars()
            .find(|&c| c.is_control() || is_bidi_control(c))
        {
            return Err(format!(
                "name must not contain control characters (found U+{:04X})",
                c as u32
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The Unicode bidirectional formatting characters (embeddings, overrides,
/// isolates, marks), used to make text display differently from what it is.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> Self {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A strictly positive number of items (order quantity, initial stock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Quantity(u32);

impl JsonSchema for Quantity {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer",
            "minimum": 1,
            "maximum": u32::MAX,
        })
    }
}

impl Quantity {
    /// Parses a quantity; zero is refused.
    pub fn new(value: u32) -> Result<Self, String> {
        if value == 0 {
            Err("quantity must be greater than zero".to_owned())
        } else {
            Ok(Self(value))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Quantity {
    type Error = String;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> Self {
        q.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_control_and_bidi_characters() {
        for bad in [
            "a\u{0}b",
            "a\nb",
            "\u{1b}[31mred",
            "abc\u{202E}fed",
            "x\u{2066}y",
        ] {
            let err = Name::parse(bad).unwrap_err();
            assert!(err.contains("control characters"), "{bad:?}: {err}");
        }
        assert_eq!(
            Name::parse("  Zoë Ñandú 李 ").unwrap().as_str(),
            "Zoë Ñandú 李"
        );
    }
}
