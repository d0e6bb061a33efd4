//! OPC UA values → [`RawValue`]s, status codes → the quality policy, and which timestamp a
//! reading carries.
//!
//! Conversions (one reading per value; nothing here allocates for numbers):
//!
//! | OPC UA built-in type | reading value |
//! |---|---|
//! | Boolean | `Bool` (the mapping stage writes 1/0, or a state with `states:`) |
//! | SByte, Int16, Int32, Int64 | `Int` |
//! | Byte, UInt16, UInt32, UInt64 | `UInt` |
//! | Float | `Float`, via the shortest decimal that round-trips the `f32` (0.1f32 → 0.1) |
//! | Double | `Float` |
//! | Int32 of an enumeration (EnumStrings / EnumValues read at start) | `Text`, the state name |
//! | String, XmlElement | `Text` |
//! | LocalizedText | `Text`, the text without locale |
//! | DateTime | `Text`, RFC 3339 UTC with milliseconds (`2026-01-02T03:04:05.678Z`) |
//! | Guid, NodeId, ExpandedNodeId, QualifiedName, StatusCode | `Text`, OPC UA text form |
//! | ByteString | `Text`, base64 |
//! | arrays, ExtensionObject, DataValue, DiagnosticInfo, empty | not converted: [`Unsupported`] (structures of tags with `members:` are read per field, see [`super::structure`]) |
//!
//! Arrays are rejected per tag unless the tag map asks for them with `elements: N`: the tag is
//! then compiled into N tags `sensor_id[i]`, each monitoring one element (IndexRange `i`), and
//! [`convert_element`] picks the element out of what the server sends.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use opcua::types::{DataValue, StatusCode, Variant};

use crate::sample::RawValue;

/// The state names of one enumeration data type: value → name.
pub type EnumNames = Arc<HashMap<i64, Arc<str>>>;

/// Why a value was not turned into a reading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unsupported {
    #[error("the value is an array of {len} elements: add `elements: {len}` to the tag to send each element as `sensor_id[i]`")]
    Array { len: usize },
    #[error("the value is a structure (ExtensionObject of type {type_id}): list the fields to read under `members:` (`tagbridge browse` writes them)")]
    Structure { type_id: String },
    #[error("the value is a {kind}, which has no reading form")]
    Other { kind: &'static str },
    #[error("the value is empty (null)")]
    Empty,
}

pub use crate::config::tagmap::{OpcUaTimestamps as TimestampSource, UncertainPolicy};

/// The quality class of a status code (OPC UA Part 4, 7.39: the two top bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Good,
    Uncertain,
    Bad,
}

pub fn quality(status: Option<StatusCode>) -> Quality {
    // An absent status means Good (Part 4, 7.11 DataValue).
    let Some(status) = status else {
        return Quality::Good;
    };
    if status.is_bad() {
        Quality::Bad
    } else if status.is_uncertain() {
        Quality::Uncertain
    } else {
        Quality::Good
    }
}

/// A status code's name as a quality reading shows it: the symbolic name of its code
/// (`BadSensorFailure`, `UncertainLastUsableValue`), without the info bits (limits, overflow);
/// a code OPC UA does not define is shown by severity and number (`Bad 0x80AB0000`).
pub fn status_name(status: StatusCode) -> Arc<str> {
    use opcua::types::status_code::SubStatusCode;
    let sub = status.sub_code();
    if sub != SubStatusCode::Invalid {
        return sub.name().into();
    }
    let severity = match quality(Some(status)) {
        Quality::Good => "Good",
        Quality::Uncertain => "Uncertain",
        Quality::Bad => "Bad",
    };
    format!("{severity} 0x{:08X}", status.bits()).into()
}

/// The instant `value` carries under `policy`; `now` is the gateway's clock.
pub fn timestamp(value: &DataValue, policy: TimestampSource, now: DateTime<Utc>) -> DateTime<Utc> {
    let source = value
        .source_timestamp
        .map(|t| t.as_chrono())
        .filter(not_null);
    let server = value
        .server_timestamp
        .map(|t| t.as_chrono())
        .filter(not_null);
    let chosen = match policy {
        TimestampSource::Source => source.or(server),
        TimestampSource::Server => server,
        TimestampSource::Gateway => None,
    };
    chosen.unwrap_or(now)
}

/// Unix seconds of OPC UA's epoch, 1601-01-01T00:00:00Z: a DateTime of 0 ticks, which means
/// "no timestamp" (Part 6, 5.2.2.5).
const OPC_UA_EPOCH_UNIX: i64 = -11_644_473_600;

/// Not OPC UA's null time. Compared as seconds, not through `DateTime::is_null`, which builds
/// the epoch with the calendar for every call: this runs twice per value.
fn not_null(t: &DateTime<Utc>) -> bool {
    t.timestamp() != OPC_UA_EPOCH_UNIX || t.timestamp_subsec_nanos() >= 100
}

/// Converts one variant; `names` are the state names when the node's data type is an
/// enumeration.
pub fn convert(value: &Variant, names: Option<&EnumNames>) -> Result<RawValue, Unsupported> {
    Ok(match value {
        Variant::Boolean(b) => RawValue::Bool(*b),
        Variant::SByte(v) => RawValue::Int((*v).into()),
        Variant::Int16(v) => RawValue::Int((*v).into()),
        Variant::Int32(v) => match names.and_then(|n| n.get(&i64::from(*v))) {
            Some(name) => RawValue::Text(name.clone()),
            None => RawValue::Int((*v).into()),
        },
        Variant::Int64(v) => RawValue::Int(*v),
        Variant::Byte(v) => RawValue::UInt((*v).into()),
        Variant::UInt16(v) => RawValue::UInt((*v).into()),
        Variant::UInt32(v) => match names.and_then(|n| n.get(&i64::from(*v))) {
            Some(name) => RawValue::Text(name.clone()),
            None => RawValue::UInt((*v).into()),
        },
        Variant::UInt64(v) => RawValue::UInt(*v),
        Variant::Float(v) => RawValue::Float(f32_to_f64(*v)),
        Variant::Double(v) => RawValue::Float(*v),
        Variant::String(s) => RawValue::Text(s.as_ref().into()),
        Variant::XmlElement(s) => RawValue::Text(s.to_string().into()),
        Variant::LocalizedText(t) => RawValue::Text(t.text.as_ref().into()),
        Variant::DateTime(t) => RawValue::Text(rfc3339(t.as_chrono()).into()),
        Variant::Guid(g) => RawValue::Text(g.to_string().into()),
        Variant::NodeId(n) => RawValue::Text(n.to_string().into()),
        Variant::ExpandedNodeId(n) => RawValue::Text(n.to_string().into()),
        Variant::QualifiedName(q) => RawValue::Text(q.to_string().into()),
        Variant::StatusCode(s) => RawValue::Text(s.to_string().into()),
        Variant::ByteString(b) => RawValue::Text(
            base64::engine::general_purpose::STANDARD
                .encode(b.value.as_deref().unwrap_or_default())
                .into(),
        ),
        Variant::Variant(inner) => return convert(inner, names),
        Variant::Array(a) => {
            return Err(Unsupported::Array {
                len: a.values.len(),
            })
        }
        Variant::ExtensionObject(o) => {
            return Err(Unsupported::Structure {
                type_id: o.type_name().unwrap_or("null").to_string(),
            })
        }
        Variant::DataValue(_) => return Err(Unsupported::Other { kind: "DataValue" }),
        Variant::DiagnosticInfo(_) => {
            return Err(Unsupported::Other {
                kind: "DiagnosticInfo",
            })
        }
        Variant::Empty => return Err(Unsupported::Empty),
    })
}

/// Converts element `index` of a monitored array. A server applying the IndexRange sends a
/// one-element array (Part 4, 7.27); one that ignores it sends the whole array, from which the
/// element is picked. A scalar is accepted too.
pub fn convert_element(
    value: &Variant,
    index: u32,
    names: Option<&EnumNames>,
) -> Result<RawValue, Unsupported> {
    match value {
        Variant::Array(a) if a.values.len() == 1 => convert(&a.values[0], names),
        Variant::Array(a) => match a.values.get(index as usize) {
            Some(v) => convert(v, names),
            None => Err(Unsupported::Other {
                kind: "array without the configured element",
            }),
        },
        other => convert(other, names),
    }
}

/// RFC 3339 in UTC with milliseconds, the form readings use for their own timestamps.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The `f64` of the shortest decimal that reads back as `v`, so 0.1f32 becomes 0.1 and not
/// 0.10000000149011612.
fn f32_to_f64(v: f32) -> f64 {
    if !v.is_finite() {
        return v.into();
    }
    // `Display` of f32 prints the shortest round-tripping decimal; parsing it cannot fail.
    v.to_string().parse().unwrap_or(v.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{ByteString, LocalizedText, NodeId, UAString};

    fn names() -> EnumNames {
        Arc::new(
            [(0, "Stopped".into()), (1, "Running".into())]
                .into_iter()
                .collect(),
        )
    }

    #[test]
    fn numbers() {
        assert_eq!(
            convert(&Variant::Boolean(true), None),
            Ok(RawValue::Bool(true))
        );
        assert_eq!(convert(&Variant::SByte(-3), None), Ok(RawValue::Int(-3)));
        assert_eq!(
            convert(&Variant::Int64(i64::MIN), None),
            Ok(RawValue::Int(i64::MIN))
        );
        assert_eq!(convert(&Variant::Byte(200), None), Ok(RawValue::UInt(200)));
        assert_eq!(
            convert(&Variant::UInt64(u64::MAX), None),
            Ok(RawValue::UInt(u64::MAX))
        );
        assert_eq!(
            convert(&Variant::Float(0.1), None),
            Ok(RawValue::Float(0.1))
        );
        assert_eq!(
            convert(&Variant::Float(-2.5e-7), None),
            Ok(RawValue::Float(-2.5e-7))
        );
        assert_eq!(
            convert(&Variant::Double(1.0 / 3.0), None),
            Ok(RawValue::Float(1.0 / 3.0))
        );
    }

    #[test]
    fn non_finite_floats_stay_non_finite() {
        let RawValue::Float(f) = convert(&Variant::Float(f32::NAN), None).unwrap() else {
            panic!("not a float")
        };
        assert!(f.is_nan());
        assert_eq!(
            convert(&Variant::Float(f32::INFINITY), None),
            Ok(RawValue::Float(f64::INFINITY))
        );
    }

    #[test]
    fn enumerations_become_state_names() {
        let n = names();
        assert_eq!(
            convert(&Variant::Int32(1), Some(&n)),
            Ok(RawValue::Text("Running".into()))
        );
        // A value the enumeration does not name stays a number.
        assert_eq!(convert(&Variant::Int32(7), Some(&n)), Ok(RawValue::Int(7)));
        assert_eq!(convert(&Variant::Int32(1), None), Ok(RawValue::Int(1)));
    }

    #[test]
    fn text_forms() {
        assert_eq!(
            convert(&Variant::String(UAString::from("hi")), None),
            Ok(RawValue::Text("hi".into()))
        );
        assert_eq!(
            convert(
                &Variant::LocalizedText(Box::new(LocalizedText::new("en", "Open"))),
                None
            ),
            Ok(RawValue::Text("Open".into()))
        );
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            convert(&Variant::DateTime(Box::new(t.into())), None),
            Ok(RawValue::Text("2026-01-02T03:04:05.678Z".into()))
        );
        assert_eq!(
            convert(&Variant::NodeId(Box::new(NodeId::new(2, "A/B"))), None),
            Ok(RawValue::Text("ns=2;s=A/B".into()))
        );
        assert_eq!(
            convert(
                &Variant::ByteString(ByteString::from(vec![1u8, 2, 3])),
                None
            ),
            Ok(RawValue::Text("AQID".into()))
        );
    }

    #[test]
    fn array_elements() {
        let whole = Variant::from(vec![1i32, 2, 3]);
        assert_eq!(convert_element(&whole, 2, None), Ok(RawValue::Int(3)));
        let one = Variant::from(vec![7i32]);
        assert_eq!(convert_element(&one, 2, None), Ok(RawValue::Int(7)));
        assert!(convert_element(&whole, 5, None).is_err());
        assert_eq!(
            convert_element(&Variant::Int32(4), 0, None),
            Ok(RawValue::Int(4))
        );
    }

    #[test]
    fn unsupported_values_say_why() {
        let array = Variant::from(vec![1i32, 2, 3]);
        assert_eq!(convert(&array, None), Err(Unsupported::Array { len: 3 }));
        assert_eq!(convert(&Variant::Empty, None), Err(Unsupported::Empty));
        let e = convert(&array, None).unwrap_err().to_string();
        assert!(e.contains("array of 3"), "{e}");
    }

    #[test]
    fn quality_classes() {
        assert_eq!(quality(None), Quality::Good);
        assert_eq!(quality(Some(StatusCode::Good)), Quality::Good);
        assert_eq!(
            quality(Some(StatusCode::UncertainLastUsableValue)),
            Quality::Uncertain
        );
        assert_eq!(quality(Some(StatusCode::BadNodeIdUnknown)), Quality::Bad);
    }

    #[test]
    fn status_names_leave_out_info_bits() {
        assert_eq!(
            &*status_name(StatusCode::BadSensorFailure),
            "BadSensorFailure"
        );
        let limited = StatusCode::UncertainLastUsableValue
            .set_info_type(opcua::types::status_code::StatusCodeInfoType::DataValue)
            .set_overflow(true);
        assert_eq!(&*status_name(limited), "UncertainLastUsableValue");
        assert_eq!(
            &*status_name(StatusCode::from(0x80FF_0000)),
            "Bad 0x80FF0000"
        );
        assert_eq!(
            &*status_name(StatusCode::from(0x40FF_0000)),
            "Uncertain 0x40FF0000"
        );
    }

    #[test]
    fn timestamp_policy() {
        let now = Utc::now();
        let src = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let srv = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:01Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut dv = DataValue::new_now(1.0f64);
        dv.source_timestamp = Some(src.into());
        dv.server_timestamp = Some(srv.into());
        assert_eq!(timestamp(&dv, TimestampSource::Source, now), src);
        assert_eq!(timestamp(&dv, TimestampSource::Server, now), srv);
        assert_eq!(timestamp(&dv, TimestampSource::Gateway, now), now);
        dv.source_timestamp = None;
        assert_eq!(timestamp(&dv, TimestampSource::Source, now), srv);
        dv.server_timestamp = None;
        assert_eq!(timestamp(&dv, TimestampSource::Source, now), now);
    }
}
