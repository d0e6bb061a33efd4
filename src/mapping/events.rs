//! Event samples → readings: one reading per OPC UA event, built by the subscription's
//! [`EventPlan`]. No deadband, no heartbeat: every event is a fact.
//!
//! The reading: `sensor_id` from the plan's pattern (a null field gives `-`), `timestamp` the
//! event's Time (the gateway's clock when the server sent none), `value` the Message text or,
//! with `value: state`, `active` / `inactive`; then `"refresh"` (true for a condition the server
//! sent again after ConditionRefresh), the selected members in the order written (null when the
//! event has no such field), and the tag map's `fields`.

use std::sync::Arc;

use crate::reading::{write_json_str, Reading, Value};
use crate::sample::{EventSample, RawValue};

use super::compile::MAX_SENSOR_ID_BYTES;
use super::event_plan::{EventPlan, EventValue, IdPart, SELECT_MESSAGE};

/// The reading of one event, or `None` when the sample names no subscription of `plans`.
pub fn reading(plans: &[EventPlan], event: &EventSample) -> Option<Reading> {
    let plan = plans.get(event.subscription)?;
    let field = |i: usize| event.fields.get(i).and_then(Option::as_ref);
    let mut sensor_id = String::new();
    for part in &plan.sensor_id {
        match part {
            IdPart::Text(t) => sensor_id.push_str(t),
            IdPart::Field(i) => match field(*i) {
                Some(v) => push_text(&mut sensor_id, v),
                None => sensor_id.push('-'),
            },
        }
    }
    // Control characters from a server never reach a sensor_id; nor more than its limit.
    let mut sensor_id: String = sensor_id
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if sensor_id.len() > MAX_SENSOR_ID_BYTES {
        let mut cut = MAX_SENSOR_ID_BYTES;
        while !sensor_id.is_char_boundary(cut) {
            cut -= 1;
        }
        sensor_id.truncate(cut);
    }
    let message = || match field(SELECT_MESSAGE) {
        Some(v) => {
            let mut s = String::new();
            push_text(&mut s, v);
            s
        }
        None => String::new(),
    };
    let value = match (plan.value, plan.active.and_then(field)) {
        (EventValue::State, Some(RawValue::Bool(active))) => {
            if *active {
                "active".to_string()
            } else {
                "inactive".to_string()
            }
        }
        _ => message(),
    };
    let mut extra = Vec::with_capacity(64 + plan.extra.len());
    extra.extend_from_slice(if event.refresh {
        b",\"refresh\":true"
    } else {
        b",\"refresh\":false"
    });
    for (name, i) in &plan.members {
        extra.push(b',');
        write_json_str(&mut extra, name);
        extra.push(b':');
        match field(*i) {
            None => extra.extend_from_slice(b"null"),
            Some(RawValue::Bool(b)) => extra.extend_from_slice(if *b { b"true" } else { b"false" }),
            Some(RawValue::Int(n)) => extra.extend_from_slice(n.to_string().as_bytes()),
            Some(RawValue::UInt(n)) => extra.extend_from_slice(n.to_string().as_bytes()),
            Some(RawValue::Float(f)) => match serde_json::Number::from_f64(*f) {
                Some(n) => extra.extend_from_slice(n.to_string().as_bytes()),
                None => extra.extend_from_slice(b"null"),
            },
            Some(RawValue::Text(t)) => write_json_str(&mut extra, t),
        }
    }
    extra.extend_from_slice(plan.extra.as_bytes());
    Some(Reading {
        sensor_id: sensor_id.into(),
        timestamp: event.time,
        value: Value::Text(value.into()),
        // Only JSON punctuation, escaped strings and numbers were written.
        extra: Arc::from(String::from_utf8(extra).unwrap_or_default()),
    })
}

fn push_text(out: &mut String, v: &RawValue) {
    use std::fmt::Write;
    let _ = match v {
        RawValue::Bool(b) => write!(out, "{b}"),
        RawValue::Int(n) => write!(out, "{n}"),
        RawValue::UInt(n) => write!(out, "{n}"),
        RawValue::Float(f) => write!(out, "{f}"),
        RawValue::Text(t) => write!(out, "{t}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::event_plan::FieldPath;
    use chrono::TimeZone;

    fn plan(value: EventValue) -> EventPlan {
        EventPlan {
            sensor_id: vec![
                IdPart::Text("line1:".into()),
                IdPart::Field(3),
                IdPart::Text(":".into()),
                IdPart::Field(4),
            ],
            notifier: "i=2253".into(),
            types: vec![],
            select: [
                "EventType",
                "Time",
                "Message",
                "SourceName",
                "ConditionName",
                "ActiveState/Id",
                "Severity",
            ]
            .iter()
            .map(|p| FieldPath::parse(p).unwrap())
            .collect(),
            members: vec![
                ("severity".into(), 6),
                ("active".into(), 5),
                ("source".into(), 3),
            ],
            value,
            active: Some(5),
            queue_size: 10,
            extra: ",\"site\":\"a\"".into(),
            pos: Default::default(),
        }
    }

    fn sample(refresh: bool) -> EventSample {
        EventSample {
            subscription: 0,
            time: Utc.timestamp_opt(1_700_000_000, 5_000_000).unwrap(),
            fields: vec![
                None,
                None,
                Some(RawValue::Text("Temp \"high\"".into())),
                Some(RawValue::Text("Line1/Temp".into())),
                None,
                Some(RawValue::Bool(true)),
                Some(RawValue::UInt(700)),
            ],
            refresh,
        }
    }

    use chrono::Utc;

    #[test]
    fn one_reading_per_event() {
        let r = reading(&[plan(EventValue::Message)], &sample(false)).unwrap();
        assert_eq!(
            r.to_json(),
            r#"{"sensor_id":"line1:Line1/Temp:-","timestamp":"2023-11-14T22:13:20.005Z","value":"Temp \"high\"","refresh":false,"severity":700,"active":true,"source":"Line1/Temp","site":"a"}"#
        );
        let r = reading(&[plan(EventValue::State)], &sample(true)).unwrap();
        assert_eq!(r.value, Value::Text("active".into()));
        assert!(r.to_json().contains(r#""refresh":true"#));
        assert!(reading(&[], &sample(false)).is_none());
    }

    #[test]
    fn hostile_fields_make_a_bounded_clean_sensor_id() {
        let mut s = sample(false);
        s.fields[3] = Some(RawValue::Text(format!("a\nb{}", "x".repeat(1000)).into()));
        let r = reading(&[plan(EventValue::Message)], &s).unwrap();
        assert!(r.sensor_id.len() <= MAX_SENSOR_ID_BYTES);
        assert!(r.sensor_id.starts_with("line1:a b"));
        s.fields[6] = Some(RawValue::Float(f64::NAN));
        let json = reading(&[plan(EventValue::Message)], &s).unwrap().to_json();
        assert!(json.contains(r#""severity":null"#), "{json}");
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }
}
