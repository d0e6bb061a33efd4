//! The key of a `states:` entry (tag maps and structure fields): an integer or a boolean, as
//! written in YAML (`0: stopped`, `true: running`, or either quoted).

use schemars::JsonSchema;
use serde::Deserialize;

/// A raw value that a `states` entry maps: an integer or a boolean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(with = "String")]
pub enum StateKey {
    Int(i64),
    Bool(bool),
}

impl<'de> Deserialize<'de> for StateKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = StateKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer or true/false as a state key")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StateKey, E> {
                Ok(StateKey::Int(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StateKey, E> {
                i64::try_from(v)
                    .map(StateKey::Int)
                    .map_err(|_| E::custom(format!("state key {v} is too large")))
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<StateKey, E> {
                Ok(StateKey::Bool(v))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StateKey, E> {
                match v {
                    "true" => Ok(StateKey::Bool(true)),
                    "false" => Ok(StateKey::Bool(false)),
                    _ => v.parse().map(StateKey::Int).map_err(|_| {
                        E::custom(format!("state key `{v}` is not an integer or true/false"))
                    }),
                }
            }
        }

        deserializer.deserialize_any(KeyVisitor)
    }
}
