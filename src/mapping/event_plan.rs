//! The validated form of a tag map's `events:` list (what the OPC UA source subscribes to and
//! what the mapping stage turns each event into). Built by `mapping::compile::events`.
//!
//! Invariants:
//! - `select` starts with [`SELECT_EVENT_TYPE`], [`SELECT_TIME`] and [`SELECT_MESSAGE`], which
//!   every subscription needs (refresh markers, the reading's timestamp, the default value);
//!   every other path appears once, and `members`, `sensor_id` and `active` index into it.
//! - Member names are unique, none is `sensor_id`, `timestamp`, `value` or `refresh`, and
//!   none repeats a tag map `fields` name.

use std::sync::Arc;

pub use crate::config::events::EventValue;

/// Index in [`EventPlan::select`] of the EventType field.
pub const SELECT_EVENT_TYPE: usize = 0;
/// Index in [`EventPlan::select`] of the Time field.
pub const SELECT_TIME: usize = 1;
/// Index in [`EventPlan::select`] of the Message field.
pub const SELECT_MESSAGE: usize = 2;

/// The Server object, the default notifier (Part 5, 8.3.2).
pub const SERVER_OBJECT: &str = "i=2253";

/// RefreshStartEventType and RefreshEndEventType (Part 9, 5.11.2): the brackets a server puts
/// around the conditions it sends again after ConditionRefresh.
pub const REFRESH_START_EVENT_TYPE: u32 = 2787;
pub const REFRESH_END_EVENT_TYPE: u32 = 2788;

/// Standard event types by name (namespace 0), for `types:` (Part 5 and Part 9).
pub const EVENT_TYPES: [(&str, u32); 31] = [
    ("BaseEventType", 2041),
    ("SystemEventType", 2130),
    ("AuditEventType", 2052),
    ("ProgressEventType", 11436),
    ("TransitionEventType", 2311),
    ("ProgramTransitionEventType", 2378),
    ("DeviceFailureEventType", 2131),
    ("RefreshStartEventType", 2787),
    ("RefreshEndEventType", 2788),
    ("RefreshRequiredEventType", 2789),
    ("ConditionType", 2782),
    ("DialogConditionType", 2830),
    ("AcknowledgeableConditionType", 2881),
    ("AlarmConditionType", 2915),
    ("LimitAlarmType", 2955),
    ("ExclusiveLimitAlarmType", 9341),
    ("NonExclusiveLimitAlarmType", 9906),
    ("ExclusiveLevelAlarmType", 9482),
    ("NonExclusiveLevelAlarmType", 10060),
    ("ExclusiveDeviationAlarmType", 9764),
    ("NonExclusiveDeviationAlarmType", 10368),
    ("ExclusiveRateOfChangeAlarmType", 9623),
    ("NonExclusiveRateOfChangeAlarmType", 10214),
    ("DiscreteAlarmType", 10523),
    ("OffNormalAlarmType", 10637),
    ("SystemOffNormalAlarmType", 11753),
    ("TripAlarmType", 10751),
    ("CertificateExpirationAlarmType", 13225),
    ("DiscrepancyAlarmType", 17080),
    ("InstrumentDiagnosticAlarmType", 18347),
    ("SystemDiagnosticAlarmType", 18496),
];

/// Members when a subscription lists no `fields:`: what a consumer of alarms needs.
pub const DEFAULT_FIELDS: [(&str, &str); 9] = [
    ("event_id", "EventId"),
    ("event_type", "EventType"),
    ("source", "SourceName"),
    ("severity", "Severity"),
    ("message", "Message"),
    ("condition", "ConditionName"),
    ("active", "ActiveState/Id"),
    ("acked", "AckedState/Id"),
    ("retain", "Retain"),
];

/// One event subscription, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPlan {
    /// How each reading's `sensor_id` is built.
    pub sensor_id: Vec<IdPart>,
    /// The notifier node id in canonical text (`nsu=` kept as written, like tags).
    pub notifier: String,
    /// Accepted event types (node ids in canonical text); empty: every event.
    pub types: Vec<String>,
    /// The select clauses, in order: browse paths from the event type.
    pub select: Vec<FieldPath>,
    /// JSON members: name and index into `select`, in the order written.
    pub members: Vec<(Arc<str>, usize)>,
    pub value: EventValue,
    /// Index into `select` of ActiveState/Id, when `value: state` or a member needs it.
    pub active: Option<usize>,
    /// Events the server queues for this item between publishes.
    pub queue_size: u32,
    /// The tag map's `fields`, pre-encoded with a leading comma, or empty.
    pub extra: Arc<str>,
    /// Where its `sensor_id` is written.
    pub pos: crate::config::Pos,
}

impl EventPlan {
    /// The `sensor_id` when it is fixed text (no `{field}`): the one name every reading of this
    /// subscription carries, so it must be unique across tags and tag maps like a tag's.
    pub fn fixed_sensor_id(&self) -> Option<&Arc<str>> {
        match self.sensor_id.as_slice() {
            [IdPart::Text(text)] => Some(text),
            _ => None,
        }
    }
}

/// A piece of an event's `sensor_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPart {
    Text(Arc<str>),
    /// The value of this select clause.
    Field(usize),
}

/// A browse path from an event type to one of its fields, e.g. `ActiveState/Id`: each
/// element a namespace index and a browse name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath(pub Vec<(u16, String)>);

impl FieldPath {
    /// Parses `Name/Sub` with optional `<ns>:` before each element; `None` when an element is
    /// empty or its namespace index is not a number up to 65535.
    pub fn parse(text: &str) -> Option<FieldPath> {
        let mut out = Vec::new();
        for element in text.split('/') {
            let (ns, name) = match element.split_once(':') {
                Some((ns, name)) if !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()) => {
                    (ns.parse().ok()?, name)
                }
                _ => (0, element),
            };
            if name.trim().is_empty() || name.trim() != name {
                return None;
            }
            out.push((ns, name.to_string()));
        }
        (!out.is_empty()).then_some(FieldPath(out))
    }

    /// A one-element path in namespace 0.
    pub fn standard(name: &str) -> FieldPath {
        FieldPath(vec![(0, name.to_string())])
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (ns, name)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            if *ns != 0 {
                write!(f, "{ns}:")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths() {
        let p = FieldPath::parse("ActiveState/Id").unwrap();
        assert_eq!(p.0, vec![(0, "ActiveState".into()), (0, "Id".into())]);
        assert_eq!(p.to_string(), "ActiveState/Id");
        let p = FieldPath::parse("2:BatchId").unwrap();
        assert_eq!(p.0, vec![(2, "BatchId".into())]);
        assert_eq!(p.to_string(), "2:BatchId");
        for bad in ["", "/", "A//B", "70000:X", "2:", " A"] {
            assert!(FieldPath::parse(bad).is_none(), "{bad}");
        }
        // A colon after a non-number is part of the name.
        assert_eq!(FieldPath::parse("a:b").unwrap().0, vec![(0, "a:b".into())]);
    }
}
