//! The mapping stage at run time: samples in, readings out, one [`Mapper`] per tag map.
//!
//! Per tag it remembers the last value sent, to apply:
//! - **deadband**: a value within `deadband` of the last sent one is not sent (0 means only an
//!   equal value is held back, so polling sources send changes only);
//! - **heartbeat**: an unchanged value is sent again once `heartbeat` has passed since the last
//!   send, but only while it is still confirmed: on the next sample (a poll that read it), or,
//!   for sources that only report changes, on a [`SourceEvent::Confirmed`] (a live
//!   subscription's publish or keep-alive), stamped with the time of that confirmation. A tag
//!   whose source reported it lost ([`SourceEvent::Lost`]: connection lost, Bad status,
//!   quarantine) gets no heartbeat until its next sample. Never a reading stamped with a time
//!   at which nothing was read (docs/operations.md, "Heartbeats").
//!
//! NaN and ±Inf are skipped and counted per tag; the first one of each tag is logged.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::reading::{Reading, Value};
use crate::sample::{Item, Sample, SampleBatch, Scope, SourceEvent};

use super::plan::{TagMapPlan, Transform};
use super::transform::Skip;

/// Counts of what the stage did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MappingCounters {
    pub samples: u64,
    pub readings: u64,
    /// Readings made of OPC UA events (also counted in `readings`).
    pub events: u64,
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
    /// The source said this tag cannot be read; cleared by its next sample.
    lost: bool,
    warned_non_finite: bool,
}

/// What the mapper needs of a tag's plan.
#[derive(Debug)]
struct TagRules {
    sensor_id: Arc<str>,
    extra: Arc<str>,
    transform: Transform,
}

/// A tag's rules and memory side by side. An OPC UA server sends values in its own order, so
/// each value's tag is a cache miss away at 100 000 tags, and fewer when what the mapper
/// reads and writes for it is in one place (not a plan in one array and a state in another).
#[derive(Debug)]
struct Tag {
    rules: TagRules,
    state: TagState,
}

/// Applies one tag map's transforms and per-tag memory.
#[derive(Debug)]
pub struct Mapper {
    tags: Vec<Tag>,
    /// The tag map's event subscriptions (OPC UA `events:`).
    events: Arc<[super::event_plan::EventPlan]>,
    /// No tag's heartbeat is due before this instant; `None`: none is pending. A confirmation
    /// before it skips the walk over every tag (an OPC UA source confirms with each publish
    /// response, many a second with many tags).
    heartbeat_due: Option<DateTime<Utc>>,
    counters: MappingCounters,
}

impl Mapper {
    pub fn new(plan: &TagMapPlan) -> Self {
        Mapper {
            tags: plan
                .tags
                .iter()
                .map(|t| Tag {
                    rules: TagRules {
                        sensor_id: t.sensor_id.clone(),
                        extra: t.extra.clone(),
                        transform: t.transform.clone(),
                    },
                    state: TagState::default(),
                })
                .collect(),
            events: match &plan.source {
                super::plan::SourcePlan::OpcUa(o) => o.events.clone().into(),
                super::plan::SourcePlan::Modbus(_) => Arc::from(Vec::new()),
            },
            heartbeat_due: None,
            counters: MappingCounters::default(),
        }
    }

    pub fn counters(&self) -> MappingCounters {
        self.counters
    }

    /// Forgets what was last sent for `tag` (it stopped being readable): its next value is sent
    /// whatever it is, and no heartbeat repeats the old one.
    pub fn forget(&mut self, tag: usize) {
        if let Some(Tag { state, .. }) = self.tags.get_mut(tag) {
            state.last = None;
            state.last_sent = None;
        }
    }

    /// Maps one sample; `None` when it is held back or cannot be sent.
    pub fn map(&mut self, sample: &Sample) -> Option<Reading> {
        self.counters.samples += 1;
        let Some(Tag { rules: tag, state }) = self.tags.get_mut(sample.tag) else {
            self.counters.unknown_tag += 1;
            return None;
        };
        if std::mem::take(&mut state.lost) {
            // Left out of the heartbeat bound while lost.
            if let Some(sent) = state.last_sent {
                lower(&mut self.heartbeat_due, tag.transform.heartbeat, sent);
            }
        }
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
        let heartbeat_due = (tag.transform.heartbeat.zip(state.last_sent))
            .and_then(|(every, last)| due_after(last, every))
            .is_some_and(|due| sample.timestamp >= due);
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
        lower(
            &mut self.heartbeat_due,
            tag.transform.heartbeat,
            sample.timestamp,
        );
        self.counters.readings += 1;
        Some(Reading {
            sensor_id: tag.sensor_id.clone(),
            timestamp: sample.timestamp,
            value,
            extra: tag.extra.clone(),
        })
    }

    /// Maps a batch in order: samples to readings, status events to heartbeats and lost tags.
    pub fn apply(&mut self, batch: &SampleBatch, out: &mut Vec<Reading>) {
        for item in batch.items() {
            match item {
                Item::Sample(sample) => out.extend(self.map(sample)),
                Item::Event(event) => self.event(event, out),
            }
        }
    }

    /// Takes a status event of the source: a confirmation may make heartbeats due; a lost tag
    /// gets none until its next sample.
    pub fn event(&mut self, event: &SourceEvent, out: &mut Vec<Reading>) {
        match event {
            SourceEvent::Confirmed { at } => self.confirmed(*at, out),
            SourceEvent::OpcUaEvent(e) => {
                if let Some(r) = super::events::reading(&self.events, e) {
                    self.counters.events += 1;
                    self.counters.readings += 1;
                    out.push(r);
                }
            }
            SourceEvent::Lost { scope, .. } => match scope {
                Scope::Source => self.tags.iter_mut().for_each(|t| t.state.lost = true),
                Scope::Tag(i) => {
                    if let Some(t) = self.tags.get_mut(*i) {
                        t.state.lost = true;
                    }
                }
            },
            // The value is sent all the same; quality readings mark it (mapping::quality).
            SourceEvent::Uncertain { .. } => {}
        }
    }

    /// The source confirmed at `at` that the values it gave still hold: re-sends, stamped `at`,
    /// the last value of every tag not lost whose heartbeat has passed since its last send.
    fn confirmed(&mut self, at: DateTime<Utc>, out: &mut Vec<Reading>) {
        if self.heartbeat_due.is_none_or(|due| at < due) {
            return;
        }
        let mut next: Option<DateTime<Utc>> = None;
        for Tag { rules: tag, state } in self.tags.iter_mut() {
            let (Some(every), Some(last_sent), Some(value), false) = (
                tag.transform.heartbeat,
                state.last_sent,
                &state.last,
                state.lost,
            ) else {
                continue;
            };
            let Some(mut due) = due_after(last_sent, every) else {
                continue;
            };
            if at >= due {
                state.last_sent = Some(at);
                self.counters.readings += 1;
                out.push(Reading {
                    sensor_id: tag.sensor_id.clone(),
                    timestamp: at,
                    value: value.clone(),
                    extra: tag.extra.clone(),
                });
                let Some(after) = due_after(at, every) else {
                    continue;
                };
                due = after;
            }
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        // Lost tags are left out: their next heartbeat waits for a sample, which lowers it.
        self.heartbeat_due = next;
    }
}

/// Lowers `bound` to the heartbeat due after a send at `sent` of a tag with heartbeat `every`.
fn lower(
    bound: &mut Option<DateTime<Utc>>,
    every: Option<std::time::Duration>,
    sent: DateTime<Utc>,
) {
    if let Some(due) = every.and_then(|every| due_after(sent, every)) {
        *bound = Some(bound.map_or(due, |b| b.min(due)));
    }
}

/// When a heartbeat of `every` falls due after a send at `sent`; `None` past the calendar's
/// end (never).
fn due_after(sent: DateTime<Utc>, every: std::time::Duration) -> Option<DateTime<Utc>> {
    sent.checked_add_signed(chrono::TimeDelta::from_std(every).ok()?)
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

    fn confirmed(secs: i64) -> SourceEvent {
        SourceEvent::Confirmed { at: at(secs) }
    }

    fn batch(items: Vec<Result<Sample, SourceEvent>>) -> SampleBatch {
        let mut b = SampleBatch::default();
        for i in items {
            match i {
                Ok(s) => b.push(s),
                Err(e) => b.event(e),
            }
        }
        b
    }

    fn heartbeat_mapper() -> Mapper {
        Mapper::new(&plan(Transform {
            heartbeat: Some(Duration::from_secs(10)),
            ..Default::default()
        }))
    }

    #[test]
    fn heartbeat_resends_unchanged_polled_values() {
        let mut m = heartbeat_mapper();
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
    }

    #[test]
    fn a_heartbeat_falls_due_exactly_one_interval_after_the_last_send() {
        let mut m = heartbeat_mapper();
        let sent: Vec<DateTime<Utc>> = [sample(0, 5.0), sample(9, 5.0), sample(10, 5.0)]
            .iter()
            .filter_map(|s| m.map(s))
            .map(|r| r.timestamp)
            .collect();
        assert_eq!(sent, [at(0), at(10)]);
        let mut out = Vec::new();
        m.apply(
            &batch(vec![Err(confirmed(19)), Err(confirmed(20))]),
            &mut out,
        );
        let resent: Vec<DateTime<Utc>> = out.iter().map(|r| r.timestamp).collect();
        assert_eq!(resent, [at(20)]);
    }

    #[test]
    fn heartbeat_of_a_subscription_carries_the_confirmation_time() {
        let mut m = heartbeat_mapper();
        let mut out = Vec::new();
        m.apply(
            &batch(vec![Ok(sample(0, 5.0)), Err(confirmed(9))]),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        m.apply(&batch(vec![Err(confirmed(12))]), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].timestamp, at(12));
        assert_eq!(
            out[1].to_json(),
            r#"{"sensor_id":"s","timestamp":"2023-11-14T22:13:32.000Z","value":5.0,"unit":"bar"}"#
        );
        // The next one is due 10 s after the last send, not after the first sample.
        m.apply(&batch(vec![Err(confirmed(21))]), &mut out);
        assert_eq!(out.len(), 2);
        m.apply(&batch(vec![Err(confirmed(22))]), &mut out);
        assert_eq!(out.len(), 3);
    }

    /// Issue 13: a dead or garbage-answering device got heartbeats stamped "now".
    #[test]
    fn no_heartbeat_without_a_confirmation() {
        let mut m = heartbeat_mapper();
        let mut out = Vec::new();
        m.apply(&batch(vec![Ok(sample(0, 5.0))]), &mut out);
        // Nothing heard for a minute: nothing to send, however long it lasts.
        m.apply(&SampleBatch::default(), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn no_heartbeat_for_a_lost_tag_or_source_until_its_next_sample() {
        for scope in [Scope::Source, Scope::Tag(0)] {
            let mut m = heartbeat_mapper();
            let mut out = Vec::new();
            let lost = SourceEvent::Lost {
                scope,
                at: at(3),
                cause: crate::sample::Cause::OpcUaStatus("BadNodeIdUnknown".into()),
            };
            m.apply(&batch(vec![Ok(sample(0, 5.0)), Err(lost)]), &mut out);
            m.apply(
                &batch(vec![Err(confirmed(30)), Err(confirmed(60))]),
                &mut out,
            );
            assert_eq!(out.len(), 1, "{scope:?}");
            // A fresh sample (same value) clears it; the heartbeat is due again from it.
            m.apply(
                &batch(vec![Ok(sample(61, 5.0)), Err(confirmed(65))]),
                &mut out,
            );
            assert_eq!(out.len(), 2);
            assert_eq!(out[1].timestamp, at(61));
            m.apply(&batch(vec![Err(confirmed(71))]), &mut out);
            assert_eq!(out.len(), 3);
            assert_eq!(out[2].timestamp, at(71));
        }
    }

    /// Generated sequences: every heartbeat carries the time of a sample or a confirmation,
    /// never one of a tag lost since its last sample.
    #[test]
    fn heartbeats_only_carry_confirmed_times() {
        use proptest::prelude::*;
        let step = prop_oneof![
            (0i64..3).prop_map(|v| (0u8, v)),
            Just((1u8, 0)),
            Just((2u8, 0)),
            Just((3u8, 0)),
        ];
        proptest!(|(steps in proptest::collection::vec(step, 1..60))| {
            let mut m = heartbeat_mapper();
            let mut out = Vec::new();
            let mut lost = false;
            let mut confirmed_times = std::collections::HashSet::new();
            for (i, (kind, v)) in steps.iter().enumerate() {
                let t = i as i64 * 4;
                let before = out.len();
                let b = match kind {
                    0 => { lost = false; confirmed_times.insert(at(t)); batch(vec![Ok(sample(t, *v as f64))]) }
                    1 => { if !lost { confirmed_times.insert(at(t)); } batch(vec![Err(confirmed(t))]) }
                    2 => { lost = true; batch(vec![Err(SourceEvent::Lost { scope: Scope::Source, at: at(t), cause: crate::sample::Cause::ConnectionLost })]) }
                    _ => SampleBatch::default(),
                };
                m.apply(&b, &mut out);
                for r in &out[before..] {
                    prop_assert!(confirmed_times.contains(&r.timestamp), "{:?} at step {}", r.timestamp, i);
                    prop_assert!(!lost);
                }
            }
        });
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

    /// What a test drives a mapper with: a sample, a confirmation, a lost tag or source, a
    /// forgotten tag.
    #[derive(Debug, Clone)]
    enum Step {
        Sample { tag: usize, secs: i64, value: u8 },
        Confirmed(i64),
        LostTag(usize),
        LostSource,
        Forget(usize),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..3usize, 0..120i64, 0..3u8)
                .prop_map(|(tag, secs, value)| Step::Sample { tag, secs, value }),
            3 => (0..120i64).prop_map(Step::Confirmed),
            1 => (0..3usize).prop_map(Step::LostTag),
            1 => Just(Step::LostSource),
            1 => (0..3usize).prop_map(Step::Forget),
        ]
    }

    proptest::proptest! {
        /// Skipping the walk over every tag before the heartbeat bound sends exactly what the
        /// walk sends on every confirmation: for any steps (timestamps going back included),
        /// with tags of different heartbeats and one without.
        #[test]
        fn the_heartbeat_bound_skips_only_walks_that_send_nothing(
            steps in proptest::collection::vec(step(), 0..60),
        ) {
            let mut plan = plan(Transform::default());
            let tag = plan.tags[0].clone();
            plan.tags = [Some(10), Some(25), None]
                .into_iter()
                .enumerate()
                .map(|(i, secs)| TagPlan {
                    sensor_id: format!("s{i}").into(),
                    transform: Transform {
                        heartbeat: secs.map(Duration::from_secs),
                        ..Default::default()
                    },
                    ..tag.clone()
                })
                .collect();
            let (mut bounded, mut walking) = (Mapper::new(&plan), Mapper::new(&plan));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for step in steps {
                let mut batch = SampleBatch::default();
                match step {
                    Step::Sample { tag, secs, value } => batch.push(Sample {
                        tag,
                        timestamp: at(secs),
                        value: RawValue::Int(value.into()),
                    }),
                    Step::Confirmed(secs) => batch.event(SourceEvent::Confirmed { at: at(secs) }),
                    Step::LostTag(tag) => batch.event(SourceEvent::Lost {
                        scope: Scope::Tag(tag),
                        at: at(0),
                        cause: crate::sample::Cause::NoAnswer,
                    }),
                    Step::LostSource => batch.event(SourceEvent::Lost {
                        scope: Scope::Source,
                        at: at(0),
                        cause: crate::sample::Cause::ConnectionLost,
                    }),
                    Step::Forget(tag) => {
                        bounded.forget(tag);
                        walking.forget(tag);
                    }
                }
                walking.heartbeat_due = Some(DateTime::<Utc>::MIN_UTC);
                bounded.apply(&batch, &mut a);
                walking.apply(&batch, &mut b);
                proptest::prop_assert_eq!(&a, &b);
            }
        }
    }
}
