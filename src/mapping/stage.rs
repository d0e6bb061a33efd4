//! The mapping stage at run time: samples in, readings out, one [`Mapper`] per tag map.
//!
//! Per tag it remembers the last value sent, to apply:
//! - **deadband**: a value within `deadband` of the last sent one is not sent (0 means only an
//!   equal value is held back, so polling sources send changes only);
//! - **heartbeat**: an unchanged value is sent again once `heartbeat` has passed since the last
//!   send, either on the next sample or, for sources that only report changes, from
//!   [`Mapper::heartbeats`] with the current time.
//!
//! NaN and ±Inf are skipped and counted per tag; the first one of each tag is logged.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::reading::{Reading, Value};
use crate::sample::Sample;

use super::plan::{TagMapPlan, TagPlan};
use super::transform::Skip;

/// Counts of what the stage did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MappingCounters {
    pub samples: u64,
    pub readings: u64,
    /// Held back by deadband (or unchanged).
    pub suppressed: u64,
    /// NaN or ±Inf, not sendable as JSON.
    pub non_finite: u64,
    /// Samples naming a tag index the plan does not have (an adapter bug).
    pub unknown_tag: u64,
}

#[derive(Debug, Default)]
struct TagState {
    last: Option<Value>,
    last_sent: Option<DateTime<Utc>>,
    warned_non_finite: bool,
}

/// Applies one tag map's transforms and per-tag memory.
#[derive(Debug)]
pub struct Mapper {
    tags: Arc<[TagPlan]>,
    state: Vec<TagState>,
    counters: MappingCounters,
}

impl Mapper {
    pub fn new(plan: &TagMapPlan) -> Self {
        Mapper {
            tags: plan.tags.clone().into(),
            state: plan.tags.iter().map(|_| TagState::default()).collect(),
            counters: MappingCounters::default(),
        }
    }

    pub fn counters(&self) -> MappingCounters {
        self.counters
    }

    /// Forgets what was last sent for `tag` (it stopped being readable): its next value is sent
    /// whatever it is, and no heartbeat repeats the old one.
    pub fn forget(&mut self, tag: usize) {
        if let Some(state) = self.state.get_mut(tag) {
            state.last = None;
            state.last_sent = None;
        }
    }

    /// Maps one sample; `None` when it is held back or cannot be sent.
    pub fn map(&mut self, sample: &Sample) -> Option<Reading> {
        self.counters.samples += 1;
        let (Some(tag), Some(state)) = (self.tags.get(sample.tag), self.state.get_mut(sample.tag))
        else {
            self.counters.unknown_tag += 1;
            return None;
        };
        let value = match tag.transform.apply(&sample.value) {
            Ok(v) => v,
            Err(Skip::NonFinite) => {
                self.counters.non_finite += 1;
                if !state.warned_non_finite {
                    state.warned_non_finite = true;
                    tracing::warn!(
                        message = "Skipping a non-finite value (NaN or infinity); JSON cannot carry it. Further ones of this tag are only counted.",
                        sensor_id = %tag.sensor_id,
                        raw = ?sample.value,
                    );
                }
                return None;
            }
        };
        let heartbeat_due = match (tag.transform.heartbeat, state.last_sent) {
            (Some(every), Some(last)) => (sample.timestamp - last)
                .to_std()
                .is_ok_and(|elapsed| elapsed >= every),
            _ => false,
        };
        if !heartbeat_due
            && state
                .last
                .as_ref()
                .is_some_and(|last| within_deadband(last, &value, tag.transform.deadband))
        {
            self.counters.suppressed += 1;
            return None;
        }
        state.last = Some(value.clone());
        state.last_sent = Some(sample.timestamp);
        self.counters.readings += 1;
        Some(Reading {
            sensor_id: tag.sensor_id.clone(),
            timestamp: sample.timestamp,
            value,
            extra: tag.extra.clone(),
        })
    }

    /// Re-sends, stamped `now`, the last value of every tag whose heartbeat has passed without a
    /// send. For sources that report changes only (OPC UA subscriptions).
    pub fn heartbeats(&mut self, now: DateTime<Utc>, out: &mut Vec<Reading>) {
        for (tag, state) in self.tags.iter().zip(self.state.iter_mut()) {
            let (Some(every), Some(last_sent), Some(value)) =
                (tag.transform.heartbeat, state.last_sent, &state.last)
            else {
                continue;
            };
            if (now - last_sent)
                .to_std()
                .is_ok_and(|elapsed| elapsed >= every)
            {
                state.last_sent = Some(now);
                self.counters.readings += 1;
                out.push(Reading {
                    sensor_id: tag.sensor_id.clone(),
                    timestamp: now,
                    value: value.clone(),
                    extra: tag.extra.clone(),
                });
            }
        }
    }
}

/// True when `new` is not worth sending after `last`.
fn within_deadband(last: &Value, new: &Value, deadband: f64) -> bool {
    match (last, new) {
        (Value::Number(a), Value::Number(b)) if deadband > 0.0 => {
            (a.as_f64() - b.as_f64()).abs() < deadband
        }
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::plan::*;
    use crate::sample::RawValue;
    use chrono::TimeZone;
    use std::time::Duration;

    fn plan(transform: Transform) -> TagMapPlan {
        TagMapPlan {
            path: "t.yaml".into(),
            source: SourcePlan::Modbus(ModbusPlan {
                transport: ModbusTransport::Tcp("x:502".into()),
                timeout: Duration::from_secs(1),
                max_gap: 8,
                connections: std::num::NonZeroU8::MIN,
            }),
            tags: vec![TagPlan {
                sensor_id: "s".into(),
                address: TagAddress::OpcUa { node: "i=1".into() },
                interval: Duration::from_secs(1),
                transform,
                extra: ",\"unit\":\"bar\"".into(),
                pos: Default::default(),
            }],
            disabled: 0,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn sample(secs: i64, v: f64) -> Sample {
        Sample {
            tag: 0,
            timestamp: at(secs),
            value: RawValue::Float(v),
        }
    }

    fn sent(m: &mut Mapper, samples: &[Sample]) -> Vec<String> {
        samples
            .iter()
            .filter_map(|s| m.map(s))
            .map(|r| r.value.to_string())
            .collect()
    }

    #[test]
    fn unchanged_values_are_held_back_by_default() {
        let mut m = Mapper::new(&plan(Transform::default()));
        let out = sent(
            &mut m,
            &[
                sample(0, 1.0),
                sample(1, 1.0),
                sample(2, 2.0),
                sample(3, 2.0),
            ],
        );
        assert_eq!(out, ["1.0", "2.0"]);
        assert_eq!(m.counters().suppressed, 2);
    }

    #[test]
    fn deadband_compares_with_the_last_sent_value() {
        let mut m = Mapper::new(&plan(Transform {
            deadband: 0.5,
            ..Default::default()
        }));
        // 1.3 and 1.45 are each within 0.5 of 1.0 (the last *sent*), 1.6 is not.
        let out = sent(
            &mut m,
            &[
                sample(0, 1.0),
                sample(1, 1.3),
                sample(2, 1.45),
                sample(3, 1.6),
                sample(4, 1.2),
            ],
        );
        assert_eq!(out, ["1.0", "1.6"]);
    }

    #[test]
    fn heartbeat_resends_unchanged_values() {
        let mut m = Mapper::new(&plan(Transform {
            heartbeat: Some(Duration::from_secs(10)),
            ..Default::default()
        }));
        let out = sent(
            &mut m,
            &[
                sample(0, 5.0),
                sample(5, 5.0),
                sample(10, 5.0),
                sample(15, 5.0),
            ],
        );
        assert_eq!(out, ["5.0", "5.0"]);
        let mut beats = Vec::new();
        m.heartbeats(at(19), &mut beats);
        assert!(beats.is_empty());
        m.heartbeats(at(20), &mut beats);
        assert_eq!(beats.len(), 1);
        assert_eq!(beats[0].timestamp, at(20));
        assert_eq!(
            beats[0].to_json(),
            r#"{"sensor_id":"s","timestamp":"2023-11-14T22:13:40.000Z","value":5.0,"unit":"bar"}"#
        );
    }

    #[test]
    fn nan_is_skipped_and_counted_and_the_tag_goes_on() {
        let mut m = Mapper::new(&plan(Transform::default()));
        let out = sent(
            &mut m,
            &[
                sample(0, f64::NAN),
                sample(1, f64::INFINITY),
                sample(2, 3.0),
            ],
        );
        assert_eq!(out, ["3.0"]);
        assert_eq!(m.counters().non_finite, 2);
    }

    #[test]
    fn unknown_tag_index_is_counted_not_a_panic() {
        let mut m = Mapper::new(&plan(Transform::default()));
        assert!(m
            .map(&Sample {
                tag: 9,
                timestamp: at(0),
                value: RawValue::Int(1)
            })
            .is_none());
        assert_eq!(m.counters().unknown_tag, 1);
    }
}
