//! Durations as engineers write them: `250ms`, `1s`, `1.5s`, `5m`, `2h`, `1d`.
//!
//! A bare number is refused on purpose: "interval: 1" could mean a second or a millisecond, and a
//! gateway that guesses wrong polls a PLC a thousand times too often.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer};

/// A positive duration written with a unit, as in YAML and on the command line. (Not to be
/// confused with [`super::de::Spanned`], a value with its position in a file.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn from_millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            _ if ms.is_multiple_of(86_400_000) => write!(f, "{}d", ms / 86_400_000),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` has no unit: write it as e.g. `{0}ms` or `{0}s`")]
    NoUnit(String),
    #[error("`{text}` has an unknown unit `{unit}`: use ms, s, m, h or d")]
    UnknownUnit { text: String, unit: String },
    #[error("`{0}` is not a duration: write a number and a unit, e.g. `500ms`, `1s`, `5m`")]
    Malformed(String),
    #[error("`{0}` must be more than zero")]
    Zero(String),
}

impl std::str::FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, DurationError> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| DurationError::Malformed(text.to_string()))?;
        let unit_ms = match unit.trim() {
            "" => return Err(DurationError::NoUnit(text.to_string())),
            "ms" => 1.0,
            "s" => 1000.0,
            "m" | "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            other => {
                return Err(DurationError::UnknownUnit {
                    text: text.to_string(),
                    unit: other.to_string(),
                })
            }
        };
        let ms = number * unit_ms;
        if ms < 1.0 {
            return Err(DurationError::Zero(text.to_string()));
        }
        Ok(HumanDuration(Duration::from_micros(
            (ms * 1000.0).round() as u64
        )))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|min|h|d)$",
            "description": "A duration with a unit: 500ms, 1s, 1.5s, 5m, 2h, 1d.",
            "examples": ["500ms", "1s", "5m"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(
            "500ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            "1s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(1)
        );
        assert_eq!(
            "1.5s".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(
            "2h".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(7200)
        );
        assert_eq!(
            "1d".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(86400)
        );
    }

    #[test]
    fn refuses_ambiguous_or_broken_text() {
        assert_eq!(
            "10".parse::<HumanDuration>(),
            Err(DurationError::NoUnit("10".into()))
        );
        assert!(matches!(
            "10 sec".parse::<HumanDuration>(),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "fast".parse::<HumanDuration>(),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            "0s".parse::<HumanDuration>(),
            Err(DurationError::Zero(_))
        ));
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(HumanDuration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(HumanDuration::from_millis(60_000).to_string(), "1m");
        assert_eq!(HumanDuration::from_millis(2000).to_string(), "2s");
    }
}
