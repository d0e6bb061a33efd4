//! The `events:` list of an OPC UA tag map as written: event subscriptions (OPC UA Part 4,
//! 7.22.3 EventFilter) next to the data-change tags. Each entry names a notifier, the event
//! types it accepts, the fields it selects and how each event's `sensor_id` is built.
//! [`crate::mapping::compile()`] checks them (`mapping::compile::events`) into
//! [`crate::mapping::event_plan::EventPlan`]s; docs/tag-maps.md ("Events and alarms") is the
//! user's description.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::de::Spanned;

/// One event subscription: the events one notifier reports, filtered by type.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// The `sensor_id` of the readings: fixed text, or a pattern with event fields in braces,
    /// e.g. `line1:{SourceName}:{ConditionName}`. `{{` and `}}` write a brace.
    pub sensor_id: Spanned<String>,
    /// Set to false to keep the entry in the file but not subscribe.
    pub enabled: Option<bool>,
    /// The node whose events are reported: the Server object `i=2253` (default, every event
    /// of the server), or an area or object with an EventNotifier.
    pub notifier: Option<Spanned<String>>,
    /// Event types to accept, with their subtypes: names of standard types
    /// (`AlarmConditionType`, `OffNormalAlarmType`, …) or node ids (`ns=2;i=5001`). Default:
    /// every event (`BaseEventType`).
    #[serde(default)]
    pub types: Vec<Spanned<String>>,
    /// Members of each reading: member name → the event field's browse path, e.g.
    /// `severity: Severity`, `active: ActiveState/Id`, `batch: 2:BatchId` (namespace index
    /// before a colon). Default: event_id, event_type, source, severity, message, condition,
    /// active, acked and retain.
    pub fields: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    /// What the reading's `value` is: the event's `message` (default) or, for conditions, its
    /// `state` (`active` or `inactive`).
    pub value: Option<EventValue>,
    /// How many events the server keeps for this subscription between publishes. Default 1000.
    pub queue_size: Option<Spanned<u32>>,
}

/// The `value` of an event reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventValue {
    /// The Message text.
    #[default]
    Message,
    /// `active` or `inactive` from ActiveState/Id; the message for events without it.
    State,
}
