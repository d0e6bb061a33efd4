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

use std::cell::Cell;
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
        self.write_json_marked(out);
    }

    /// Appends the reading's JSON encoding to `out` and returns where its
    /// `,"timestamp":…,"value":…` members are in `out`: the part that says what was read and
    /// when, which the "no reading twice" memory fingerprints
    /// ([`crate::runtime::last_sent`]) without parsing the JSON again.
    pub fn write_json_marked(&self, out: &mut Vec<u8>) -> std::ops::Range<usize> {
        out.reserve(self.encoded_len_hint());
        out.extend_from_slice(b"{\"sensor_id\":");
        write_json_str(out, &self.sensor_id);
        let start = out.len();
        out.extend_from_slice(b",\"timestamp\":\"");
        write_timestamp(out, self.timestamp);
        out.extend_from_slice(b"\",\"value\":");
        match &self.value {
            Value::Number(n) => write_number(out, *n),
            Value::Text(s) => write_json_str(out, s),
            Value::Null => out.extend_from_slice(b"null"),
        }
        let end = out.len();
        out.extend_from_slice(self.extra.as_bytes());
        out.push(b'}');
        start..end
    }

    /// The encoded length, exact or a little over unless a string needs escapes: enough to
    /// allocate a reading's buffer once.
    pub fn encoded_len_hint(&self) -> usize {
        // {"sensor_id":"…","timestamp":"2025-08-19T08:30:00.000Z","value":…}
        const FIXED: usize = 13 + 2 + 14 + 24 + 10 + 1;
        let value = match &self.value {
            // The longest: -9223372036854775808, -2.2250738585072014e-308.
            Value::Number(_) => 24,
            Value::Text(s) => s.len() + 2,
            Value::Null => 4,
        };
        FIXED + self.sensor_id.len() + value + self.extra.len()
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
    let mut out = Vec::with_capacity(24);
    write_timestamp(&mut out, t);
    // Only ASCII digits and punctuation are written.
    String::from_utf8(out).unwrap_or_default()
}

thread_local! {
    /// The last instant [`write_timestamp`] wrote on this thread (Unix seconds, milliseconds)
    /// and its text: the readings of one Modbus response or OPC UA publish mostly share their
    /// timestamp. Seconds of `i64::MIN` are outside the range written here: no match.
    static LAST_TIMESTAMP: Cell<(i64, u32, [u8; 24])> = const { Cell::new((i64::MIN, 0, [0; 24])) };
}

/// Appends [`format_timestamp`]'s text to `out` with integer arithmetic (no chrono formatting
/// machinery, no allocation): this runs once per reading. Years outside 0..=9999 and leap
/// seconds, which no device sends, take chrono's path, so the text is chrono's for every input.
pub fn write_timestamp(out: &mut Vec<u8>, t: DateTime<Utc>) {
    let secs = t.timestamp();
    let nanos = t.timestamp_subsec_nanos();
    // 0000-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z
    const MIN: i64 = -62_167_219_200;
    const MAX: i64 = 253_402_300_799;
    if !(MIN..=MAX).contains(&secs) || nanos >= 1_000_000_000 {
        out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::Millis, true).as_bytes());
        return;
    }
    let millis = nanos / 1_000_000;
    let (last_secs, last_millis, last_text) = LAST_TIMESTAMP.get();
    if (last_secs, last_millis) == (secs, millis) {
        out.extend_from_slice(&last_text);
        return;
    }
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    // `year` is within 0..=9999 here (checked above).
    put(0, 4, year as u32);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 3, millis);
    out.extend_from_slice(&buf);
    LAST_TIMESTAMP.set((secs, millis, buf));
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, valid far beyond the years formatted here).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn write_number(out: &mut Vec<u8>, n: Number) {
    match n {
        Number::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Number::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes()),
        // The shortest text that reads back to the same f64, written by the formatter
        // serde_json uses (so the text is what serde_json writes, without a String per value).
        Number::Float(f) => {
            out.extend_from_slice(zmij::Buffer::new().format_finite(f.0).as_bytes())
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
    fn the_length_hint_covers_plain_readings() {
        for value in [
            Value::Number(Number::Int(i64::MIN)),
            Value::Number(Number::UInt(u64::MAX)),
            Value::Number(Number::float(-2.2250738585072014e-308).unwrap()),
            Value::Number(Number::float(-1.7976931348623157e308).unwrap()),
            Value::from("Running"),
            Value::Null,
        ] {
            let mut r = reading(value);
            r.extra = r#","unit":"mm/s""#.into();
            let len = r.to_json().len();
            assert!(
                len <= r.encoded_len_hint(),
                "{len} > {}",
                r.encoded_len_hint()
            );
            assert!(r.encoded_len_hint() - len <= 24);
        }
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

    proptest::proptest! {
        /// The hand-written formatter writes chrono's text for every instant chrono can hold.
        #[test]
        fn timestamps_are_chronos_text(secs in -8_334_601_228_800i64..8_210_266_876_799, nanos in 0u32..2_000_000_000) {
            if let Some(t) = Utc.timestamp_opt(secs, nanos).single() {
                proptest::prop_assert_eq!(
                    format_timestamp(t),
                    t.to_rfc3339_opts(SecondsFormat::Millis, true)
                );
            }
        }

        /// The same, for runs of instants that repeat and differ in their seconds or only in
        /// their milliseconds (the last one written is remembered).
        #[test]
        fn repeated_timestamps_are_chronos_text(
            steps in proptest::collection::vec((0i64..3, 0u32..3, 0u32..2), 1..40),
        ) {
            for (secs, millis, micros) in steps {
                let nanos = millis * 1_000_000 + micros * 1_000;
                let t = Utc.timestamp_opt(1_755_592_200 + secs, nanos).unwrap();
                proptest::prop_assert_eq!(
                    format_timestamp(t),
                    t.to_rfc3339_opts(SecondsFormat::Millis, true)
                );
            }
        }

        /// Numbers are written as serde_json writes them.
        #[test]
        fn numbers_are_serde_jsons_text(i in proptest::num::i64::ANY, u in proptest::num::u64::ANY, bits in proptest::num::u64::ANY) {
            proptest::prop_assert_eq!(Value::from(i).to_string(), serde_json::to_string(&i).unwrap());
            let unsigned = Value::Number(Number::UInt(u));
            proptest::prop_assert_eq!(unsigned.to_string(), serde_json::to_string(&u).unwrap());
            if let Some(n) = Number::float(f64::from_bits(bits)) {
                let text = Value::Number(n).to_string();
                proptest::prop_assert_eq!(&text, &serde_json::to_string(&f64::from_bits(bits)).unwrap());
                proptest::prop_assert_eq!(text.parse::<f64>().unwrap().to_bits(), bits);
            }
        }
    }

    #[test]
    fn timestamps_at_the_edges_are_chronos_text() {
        for (secs, nanos) in [
            (-62_167_219_200, 0),
            (-62_167_219_201, 999_999_999),
            (253_402_300_799, 999_999_999),
            (253_402_300_800, 0),
            (0, 0),
            (-1, 999_000_000),
            (951_782_400, 0),               // 2000-02-29
            (4_107_542_400, 0),             // 2100-03-01
            (1_483_228_799, 1_500_000_000), // a leap second
        ] {
            let t = Utc.timestamp_opt(secs, nanos).unwrap();
            assert_eq!(
                format_timestamp(t),
                t.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
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
