//! The reading: what the gateway delivers for each tag change.
//!
//! Encoded as one JSON object, members in this order:
//! `{"sensor_id":"compressor-7:vibe_x","timestamp":"2025-08-19T08:30:00.000Z","value":42.1}`
//! followed by the tag map's extra fields, if any. With quality on (docs/quality.md), a
//! `"quality"` member (and, for a tag that cannot be read, `"status"`) comes before them.
//!
//! Invariants, held by construction:
//! - `timestamp` is UTC, RFC 3339, with a `Z` and exactly three fractional digits, everywhere.
//! - `value` is a JSON number or a string. Integers stay exact integers (an int64 or uint64 is
//!   never routed through a float). Floats are finite: NaN and ±Inf cannot be represented in
//!   JSON, so [`Number::float`] refuses them and the mapping stage skips and counts such samples.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};

/// One delivered value of one sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub sensor_id: Arc<str>,
    pub timestamp: DateTime<Utc>,
    pub value: Value,
    /// Extra members, already encoded with a leading comma (`,"unit":"mm/s"`), or empty. Shared
    /// by every reading of a tag, so adding fields costs one pointer per reading.
    pub extra: Arc<str>,
}

/// A reading's value: a number or a state string; `null` only in a quality reading that says
/// the tag cannot be read (docs/quality.md), so no consumer takes an old value for a fresh one.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(Number),
    Text(Arc<str>),
    Null,
}

/// A JSON number: an exact integer or a finite float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    UInt(u64),
    Float(Finite),
}

/// A float that is neither NaN nor infinite.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Finite(f64);

impl Finite {
    pub fn new(value: f64) -> Option<Finite> {
        value.is_finite().then_some(Finite(value))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Number {
    /// A float as a number, or `None` for NaN and ±Inf.
    pub fn float(value: f64) -> Option<Number> {
        Finite::new(value).map(Number::Float)
    }

    /// The value as a float, for arithmetic (deadband, scaling). Lossy above 2^53 by nature.
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::UInt(u) => u as f64,
            Number::Float(f) => f.0,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Number(Number::Int(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.into())
    }
}

impl Reading {
    /// Appends the reading's JSON encoding to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"sensor_id\":");
        write_json_str(out, &self.sensor_id);
        out.extend_from_slice(b",\"timestamp\":\"");
        out.extend_from_slice(format_timestamp(self.timestamp).as_bytes());
        out.extend_from_slice(b"\",\"value\":");
        match &self.value {
            Value::Number(n) => write_number(out, *n),
            Value::Text(s) => write_json_str(out, s),
            Value::Null => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(self.extra.as_bytes());
        out.push(b'}');
    }

    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(96 + self.extra.len());
        self.write_json(&mut out);
        // Only valid UTF-8 is written: JSON punctuation, escaped strings, digits.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The `sensor_id` of an encoded reading, read from its first member without parsing the rest.
pub fn sensor_id_of(json: &[u8]) -> Option<String> {
    let rest = json.strip_prefix(b"{\"sensor_id\":")?;
    let mut de = serde_json::Deserializer::from_slice(rest);
    serde::Deserialize::deserialize(&mut de).ok()
}

/// The one timestamp format: RFC 3339, UTC, `Z`, milliseconds.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn write_number(out: &mut Vec<u8>, n: Number) {
    match n {
        Number::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Number::UInt(u) => out.extend_from_slice(u.to_string().as_bytes()),
        Number::Float(f) => {
            // serde_json writes the shortest text that reads back to the same f64.
            let text = serde_json::Number::from_f64(f.0)
                .map(|n| n.to_string())
                .unwrap_or_else(|| "0".into());
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// Writes `s` as a JSON string with the escapes RFC 8259 requires.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        match self {
            Value::Number(n) => write_number(&mut out, *n),
            Value::Text(s) => write_json_str(&mut out, s),
            Value::Null => out.extend_from_slice(b"null"),
        }
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn reading(value: Value) -> Reading {
        Reading {
            sensor_id: "compressor-7:vibe_x".into(),
            timestamp: Utc.with_ymd_and_hms(2025, 8, 19, 8, 30, 0).unwrap(),
            value,
            extra: "".into(),
        }
    }

    #[test]
    fn encodes_the_seed_format() {
        let r = reading(Value::Number(Number::float(42.1).unwrap()));
        assert_eq!(
            r.to_json(),
            r#"{"sensor_id":"compressor-7:vibe_x","timestamp":"2025-08-19T08:30:00.000Z","value":42.1}"#
        );
    }

    #[test]
    fn int64_extremes_stay_exact() {
        let r = reading(Value::Number(Number::Int(i64::MIN)));
        assert!(r.to_json().ends_with(r#""value":-9223372036854775808}"#));
        let r = reading(Value::Number(Number::UInt(u64::MAX)));
        assert!(r.to_json().ends_with(r#""value":18446744073709551615}"#));
        // 2^53 + 1 is not representable as f64; it must survive as written.
        let r = reading(Value::Number(Number::Int(9_007_199_254_740_993)));
        assert!(r.to_json().ends_with(r#""value":9007199254740993}"#));
    }

    #[test]
    fn non_finite_floats_are_not_numbers() {
        assert_eq!(Number::float(f64::NAN), None);
        assert_eq!(Number::float(f64::INFINITY), None);
        assert_eq!(Number::float(f64::NEG_INFINITY), None);
        assert!(Number::float(-0.0).is_some());
    }

    #[test]
    fn strings_are_escaped() {
        let r = reading(Value::Text("say \"hi\"\n\u{1}é".into()));
        let json = r.to_json();
        assert!(
            json.ends_with(r#""value":"say \"hi\"\n\u0001é"}"#),
            "{json}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["value"], "say \"hi\"\n\u{1}é");
    }

    #[test]
    fn extra_fields_follow_the_required_three() {
        let mut r = reading(Value::from("Running"));
        r.extra = r#","unit":"mm/s""#.into();
        assert_eq!(
            r.to_json(),
            r#"{"sensor_id":"compressor-7:vibe_x","timestamp":"2025-08-19T08:30:00.000Z","value":"Running","unit":"mm/s"}"#
        );
    }

    #[test]
    fn sensor_id_reads_back_from_the_encoding() {
        let mut r = reading(Value::from(1));
        r.sensor_id = "a \"quoted\" id".into();
        assert_eq!(
            sensor_id_of(r.to_json().as_bytes()).as_deref(),
            Some("a \"quoted\" id")
        );
        assert_eq!(sensor_id_of(b"{\"value\":1}"), None);
    }

    #[test]
    fn timestamps_have_millis_and_z() {
        let t = Utc.timestamp_opt(1_755_592_200, 123_456_789).unwrap();
        assert_eq!(format_timestamp(t), "2025-08-19T08:30:00.123Z");
        let whole = Utc.timestamp_opt(1_755_592_200, 0).unwrap();
        assert_eq!(format_timestamp(whole), "2025-08-19T08:30:00.000Z");
    }

    #[test]
    fn floats_use_shortest_round_trip_text() {
        for (v, text) in [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (-2.5e-7, "-2.5e-7"),
            (1e21, "1e+21"),
        ] {
            assert_eq!(Value::Number(Number::float(v).unwrap()).to_string(), text);
        }
    }
}
