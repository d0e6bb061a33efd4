//! Quality readings (gateway.yaml `quality: true`; docs/quality.md).
//!
//! Off (the default), nothing here runs and readings keep the seed format. On:
//! - every reading carries `"quality":"good"` right after `value` (pre-encoded into the tag's
//!   `extra`, so it costs nothing per reading, heartbeats included);
//! - when a tag stops being readable, exactly one reading says so:
//!   `{"sensor_id":…,"timestamp":<when>,"value":null,"quality":"bad","status":"<why>",…fields}`.
//!   `value` is `null`, never the last good value, so a consumer that reads only `value` is not
//!   misled;
//! - the first good value after it is always sent (even if equal to the last one before the
//!   gap, which the deadband would otherwise hold back): it closes the gap. A consumer gets,
//!   per sensor, the interval [bad reading's timestamp, next good reading's timestamp) in which
//!   the gateway knew nothing.
//!
//! - a value the source marks uncertain ([`SourceEvent::Uncertain`]: an OPC UA Uncertain
//!   status) is sent with `"quality":"uncertain","status":"<status name>"`: the value is what
//!   the device gave, flagged. A change of quality (good ⇄ uncertain, or another uncertain
//!   status) is sent even when the value is unchanged, and a heartbeat repeats the quality of
//!   the value it repeats.
//!
//! Invariant: per tag, a bad reading is followed by a reading with a value (good or uncertain)
//! before any other bad reading: no bad reading follows a bad reading without a value between.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::reading::{write_json_str, Reading, Value};
use crate::sample::{Sample, SourceEvent};

use super::stage::Mapper;

use super::plan::{SourcePlan, TagMapPlan};

/// What a good reading carries after `value`.
pub const GOOD: &str = ",\"quality\":\"good\"";

/// Turns quality on for one tag map: each tag's `extra` starts with [`GOOD`].
pub fn enable(plan: &mut TagMapPlan) {
    for tag in &mut plan.tags {
        if !tag.extra.starts_with(GOOD) {
            tag.extra = format!("{GOOD}{}", tag.extra).into();
        }
    }
}

/// Per tag map: which tags are in a gap now.
#[derive(Debug)]
pub struct QualityState {
    tags: Vec<TagQuality>,
    /// The source has been connected at least once: before that, nothing was ever readable, so
    /// nothing "stopped" (the first connection attempt is not a lost connection).
    ever_connected: bool,
    /// The source's mark for the next sample: (tag, timestamp, status name).
    mark: Option<(usize, DateTime<Utc>, Arc<str>)>,
    /// Tags whose last reading sent was uncertain (heartbeats are relabelled while any is).
    uncertain_tags: usize,
}

#[derive(Debug)]
struct TagQuality {
    sensor_id: Arc<str>,
    /// The tag map's fields, without the quality member.
    fields: Arc<str>,
    bad: bool,
    interval: Duration,
    /// A polled tag with no sample for this long cannot be read; `None` for subscribed tags
    /// (they report changes only; their session's state says whether they are readable).
    silent_after: Option<Duration>,
    /// The last sample: when it arrived and its timestamp.
    last_seen: Option<(Instant, DateTime<Utc>)>,
    /// The last reading sent was uncertain: its status name and the `extra` it carried.
    uncertain: Option<(Arc<str>, Arc<str>)>,
}

impl QualityState {
    /// `None` when the plan's quality is off (see [`enable`]).
    pub fn new(plan: &TagMapPlan) -> Option<QualityState> {
        let on = plan.tags.first().is_some_and(|t| t.extra.starts_with(GOOD));
        let timeout = match &plan.source {
            SourcePlan::Modbus(m) => Some(m.timeout),
            SourcePlan::OpcUa(_) => None,
        };
        on.then(|| QualityState {
            tags: plan
                .tags
                .iter()
                .map(|t| TagQuality {
                    sensor_id: t.sensor_id.clone(),
                    fields: t.extra.strip_prefix(GOOD).unwrap_or(&t.extra).into(),
                    bad: false,
                    interval: t.interval,
                    // Three polls in a row without an answer, each allowed its timeout.
                    silent_after: timeout.map(|timeout| 3 * (t.interval + timeout)),
                    last_seen: None,
                    uncertain: None,
                })
                .collect(),
            ever_connected: false,
            mark: None,
            uncertain_tags: 0,
        })
    }

    /// Tag `tag` cannot be read from `at` because of `cause`: one bad reading into `out`, unless
    /// it is already in a gap. Returns whether a reading was added (the caller then makes the
    /// mapping stage forget the tag's last value, so the next good one is sent whatever it is).
    pub fn lost(
        &mut self,
        tag: usize,
        at: DateTime<Utc>,
        cause: &str,
        out: &mut Vec<Reading>,
    ) -> bool {
        let Some(t) = self.tags.get_mut(tag) else {
            return false;
        };
        if t.bad {
            return false;
        }
        t.bad = true;
        if t.uncertain.take().is_some() {
            self.uncertain_tags -= 1;
        }
        let mut extra = Vec::with_capacity(48 + cause.len() + t.fields.len());
        extra.extend_from_slice(b",\"quality\":\"bad\",\"status\":");
        write_json_str(&mut extra, cause);
        extra.extend_from_slice(t.fields.as_bytes());
        out.push(Reading {
            sensor_id: t.sensor_id.clone(),
            timestamp: at,
            value: Value::Null,
            // Only valid UTF-8 was written: ASCII punctuation, an escaped string, the fields.
            extra: String::from_utf8_lossy(&extra).into(),
        });
        true
    }

    /// Every tag of the map cannot be read (connection lost): one bad reading per tag not
    /// already in a gap. Returns the indexes of the tags that got one.
    pub fn lost_all(
        &mut self,
        at: DateTime<Utc>,
        cause: &str,
        out: &mut Vec<Reading>,
    ) -> Vec<usize> {
        (0..self.tags.len())
            .filter(|&i| self.lost(i, at, cause, out))
            .collect()
    }

    /// Maps one sample with quality on: the source's uncertain mark (if it is for this sample)
    /// labels the reading, a change of quality is sent even if the value is not, and a reading
    /// sent closes the tag's gap. Returns the reading, and whether the value was skipped as
    /// non-finite.
    pub fn map(
        &mut self,
        mapper: &mut Mapper,
        sample: &Sample,
        now: Instant,
    ) -> (Option<Reading>, bool) {
        let uncertain = match self.mark.take() {
            Some((tag, ts, status)) if tag == sample.tag && ts == sample.timestamp => Some(status),
            _ => None,
        };
        let Some(t) = self.tags.get_mut(sample.tag) else {
            return (mapper.map(sample), false);
        };
        let was = t.uncertain.as_ref().map(|(status, _)| status);
        if was != uncertain.as_ref() {
            // good ⇄ uncertain: the consumer must learn it even if the value did not change.
            mapper.forget(sample.tag);
        }
        let non_finite = mapper.counters().non_finite;
        let mut reading = mapper.map(sample);
        let skipped = mapper.counters().non_finite != non_finite;
        if !skipped {
            t.last_seen = Some((now, sample.timestamp));
        }
        if let Some(r) = &mut reading {
            t.bad = false;
            match uncertain {
                Some(status) => {
                    let extra = match &t.uncertain {
                        Some((s, extra)) if *s == status => extra.clone(),
                        _ => {
                            let mut extra = Vec::with_capacity(48 + status.len() + t.fields.len());
                            extra.extend_from_slice(b",\"quality\":\"uncertain\",\"status\":");
                            write_json_str(&mut extra, &status);
                            extra.extend_from_slice(t.fields.as_bytes());
                            // Only valid UTF-8 was written (see `lost`).
                            String::from_utf8_lossy(&extra).into()
                        }
                    };
                    if t.uncertain.is_none() {
                        self.uncertain_tags += 1;
                    }
                    r.extra = extra.clone();
                    t.uncertain = Some((status, extra));
                }
                None => {
                    if t.uncertain.take().is_some() {
                        self.uncertain_tags -= 1;
                    }
                }
            }
        }
        (reading, skipped)
    }

    /// Takes a status event of the source (after the mapping stage took it): remembers an
    /// uncertain mark for the next sample, and labels the heartbeats the stage just added to
    /// `added` with the quality of the value they repeat.
    pub fn event(&mut self, event: &SourceEvent, added: &mut [Reading]) {
        if let SourceEvent::Uncertain {
            tag,
            timestamp,
            cause,
        } = event
        {
            self.mark = Some((*tag, *timestamp, cause.to_string().into()));
        }
        if self.uncertain_tags == 0 || added.is_empty() {
            return;
        }
        for r in added {
            let extra = self.tags.iter().find_map(|t| match &t.uncertain {
                Some((_, extra)) if Arc::ptr_eq(&t.sensor_id, &r.sensor_id) => Some(extra),
                _ => None,
            });
            if let Some(extra) = extra {
                r.extra = extra.clone();
            }
        }
    }

    /// A good reading of `tag` was sent: its gap, if any, is closed.
    pub fn good(&mut self, tag: usize) {
        if let Some(t) = self.tags.get_mut(tag) {
            t.bad = false;
        }
    }

    /// A sample of `tag` arrived (sent or held back: either way the tag is readable).
    #[inline]
    pub fn saw(&mut self, tag: usize, timestamp: DateTime<Utc>, now: Instant) {
        if let Some(t) = self.tags.get_mut(tag) {
            t.last_seen = Some((now, timestamp));
        }
    }

    /// Called on a tick: tags that stopped being readable get their bad reading. A subscribed
    /// source's tags when its session is down ("connection lost", now); a polled tag with no
    /// sample for three polls ("connection lost" or "no answer", stamped at the first poll that
    /// brought nothing). Returns the tags that got one, with the cause.
    pub fn check(
        &mut self,
        now: Instant,
        now_utc: DateTime<Utc>,
        connected: bool,
        out: &mut Vec<Reading>,
    ) -> Vec<(usize, &'static str)> {
        let cause = if connected {
            "no answer"
        } else {
            "connection lost"
        };
        self.ever_connected |= connected;
        let session_lost = !connected && self.ever_connected;
        let mut lost = Vec::new();
        for i in 0..self.tags.len() {
            let t = &self.tags[i];
            let at = match (t.silent_after, t.last_seen) {
                (None, _) if session_lost => Some(now_utc),
                (Some(after), Some((seen, ts))) if now.duration_since(seen) > after => {
                    let interval = chrono::Duration::from_std(t.interval).unwrap_or_default();
                    Some(ts + interval)
                }
                _ => None,
            };
            if let Some(at) = at {
                if self.lost(i, at, cause, out) {
                    lost.push((i, cause));
                }
            }
        }
        lost
    }

    /// Tags of the tag map.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// No tags.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Whether `tag` is in a gap now.
    pub fn is_bad(&self, tag: usize) -> bool {
        self.tags.get(tag).is_some_and(|t| t.bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::plan::*;
    use crate::mapping::Mapper;
    use crate::sample::{RawValue, Sample};
    use chrono::TimeZone;
    use std::time::Duration;

    fn plan() -> TagMapPlan {
        let tag = |id: &str| TagPlan {
            sensor_id: id.into(),
            address: TagAddress::OpcUa { node: "i=1".into() },
            interval: Duration::from_secs(1),
            transform: Transform::default(),
            extra: ",\"site\":\"a\"".into(),
            pos: Default::default(),
        };
        TagMapPlan {
            path: "t.yaml".into(),
            source: SourcePlan::Modbus(ModbusPlan {
                transport: ModbusTransport::Tcp("x:502".into()),
                timeout: Duration::from_secs(1),
                max_gap: 8,
                connections: std::num::NonZeroU8::MIN,
            }),
            tags: vec![tag("p:a"), tag("p:b")],
            disabled: 0,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_755_592_200 + secs, 0).unwrap()
    }

    #[test]
    fn off_is_the_seed_format() {
        let plan = plan();
        assert!(QualityState::new(&plan).is_none());
        let mut m = Mapper::new(&plan);
        let r = m
            .map(&Sample {
                tag: 0,
                timestamp: at(0),
                value: RawValue::Int(5),
            })
            .unwrap();
        assert_eq!(
            r.to_json(),
            r#"{"sensor_id":"p:a","timestamp":"2025-08-19T08:30:00.000Z","value":5,"site":"a"}"#
        );
    }

    #[test]
    fn one_bad_reading_per_gap_and_the_next_good_value_closes_it() {
        let mut plan = plan();
        enable(&mut plan);
        enable(&mut plan); // twice is once
        let mut q = QualityState::new(&plan).expect("on");
        let mut m = Mapper::new(&plan);
        let good = m
            .map(&Sample {
                tag: 0,
                timestamp: at(0),
                value: RawValue::Int(5),
            })
            .unwrap();
        assert_eq!(
            good.to_json(),
            r#"{"sensor_id":"p:a","timestamp":"2025-08-19T08:30:00.000Z","value":5,"quality":"good","site":"a"}"#
        );
        let mut out = Vec::new();
        assert!(q.lost(0, at(1), "Modbus exception 0x02", &mut out));
        assert!(!q.lost(0, at(2), "Modbus exception 0x02", &mut out));
        assert_eq!(q.lost_all(at(3), "connection lost", &mut out), vec![1]);
        let json: Vec<String> = out.iter().map(Reading::to_json).collect();
        assert_eq!(
            json,
            [
                r#"{"sensor_id":"p:a","timestamp":"2025-08-19T08:30:01.000Z","value":null,"quality":"bad","status":"Modbus exception 0x02","site":"a"}"#,
                r#"{"sensor_id":"p:b","timestamp":"2025-08-19T08:30:03.000Z","value":null,"quality":"bad","status":"connection lost","site":"a"}"#,
            ]
        );
        for j in &json {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            assert!(v["value"].is_null());
        }
        q.good(0);
        assert!(!q.is_bad(0));
        assert!(q.is_bad(1));
        // Silence: a polled tag with no sample for three polls gets its bad reading, stamped at
        // the first poll that brought nothing.
        let start = Instant::now();
        q.saw(0, at(10), start);
        let mut silent = Vec::new();
        assert!(q
            .check(start + Duration::from_secs(5), at(15), true, &mut silent)
            .is_empty());
        assert_eq!(
            q.check(start + Duration::from_secs(7), at(17), true, &mut silent),
            vec![(0, "no answer")]
        );
        assert_eq!(silent.len(), 1);
        assert!(silent[0].to_json().contains(r#""timestamp":"2025-08-19T08:30:11.000Z","value":null,"quality":"bad","status":"no answer""#));
        q.good(0);
        q.saw(0, at(20), start + Duration::from_secs(8));
        // A new gap after the first closed gets its own reading.
        let mut again = Vec::new();
        assert!(q.lost(0, at(9), "connection lost", &mut again));
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn after_a_gap_the_unchanged_value_is_sent_and_no_heartbeat_repeats_the_old_one() {
        let mut plan = plan();
        plan.tags[0].transform.heartbeat = Some(Duration::from_secs(1));
        enable(&mut plan);
        let mut q = QualityState::new(&plan).unwrap();
        let mut m = Mapper::new(&plan);
        let sample = |secs| Sample {
            tag: 0,
            timestamp: at(secs),
            value: RawValue::Int(5),
        };
        assert!(m.map(&sample(0)).is_some());
        assert!(m.map(&sample(0)).is_none(), "unchanged is held back");
        let mut out = Vec::new();
        assert!(q.lost(0, at(1), "no answer", &mut out));
        m.forget(0);
        // Even a confirmation from the source brings no heartbeat of the value before the gap.
        let mut beats = Vec::new();
        m.event(
            &crate::sample::SourceEvent::Confirmed { at: at(30) },
            &mut beats,
        );
        assert!(
            beats.is_empty(),
            "a heartbeat repeated a value of before the gap: {beats:?}"
        );
        let closing = m
            .map(&sample(31))
            .expect("the first value after the gap is sent");
        assert_eq!(closing.value, Value::from(5));
    }

    #[test]
    fn a_subscribed_source_is_lost_only_after_it_was_connected() {
        let mut plan = plan();
        enable(&mut plan);
        let mut q = QualityState::new(&plan).unwrap();
        // As for an OPC UA plan: subscribed tags, no silence by age.
        for t in &mut q.tags {
            t.silent_after = None;
        }
        let now = Instant::now();
        let mut out = Vec::new();
        // Still connecting at start: nothing was lost.
        assert!(q.check(now, at(0), false, &mut out).is_empty());
        assert!(q.check(now, at(1), true, &mut out).is_empty());
        let lost = q.check(now, at(2), false, &mut out);
        assert_eq!(lost, vec![(0, "connection lost"), (1, "connection lost")]);
        assert!(
            q.check(now, at(3), false, &mut out).is_empty(),
            "one per gap"
        );
    }

    #[test]
    fn uncertain_values_are_sent_marked_and_a_change_of_quality_is_never_held_back() {
        use crate::sample::Cause;
        let mut plan = plan();
        plan.tags[0].transform.heartbeat = Some(Duration::from_secs(5));
        enable(&mut plan);
        let mut q = QualityState::new(&plan).unwrap();
        let mut m = Mapper::new(&plan);
        let now = Instant::now();
        let sample = |secs, v| Sample {
            tag: 0,
            timestamp: at(secs),
            value: RawValue::Int(v),
        };
        let mark = |secs| SourceEvent::Uncertain {
            tag: 0,
            timestamp: at(secs),
            cause: Cause::OpcUaStatus("UncertainLastUsableValue".into()),
        };
        let json = |r: Option<Reading>| r.map(|r| r.to_json());
        assert!(json(q.map(&mut m, &sample(0, 5), now).0)
            .unwrap()
            .contains(r#""value":5,"quality":"good","site""#));
        // Same value, now uncertain: sent, marked, the value still there.
        q.event(&mark(1), &mut []);
        assert_eq!(
            json(q.map(&mut m, &sample(1, 5), now).0).as_deref(),
            Some(
                r#"{"sensor_id":"p:a","timestamp":"2025-08-19T08:30:01.000Z","value":5,"quality":"uncertain","status":"UncertainLastUsableValue","site":"a"}"#
            )
        );
        // Still uncertain and unchanged: held back as usual.
        q.event(&mark(2), &mut []);
        assert!(q.map(&mut m, &sample(2, 5), now).0.is_none());
        // A heartbeat repeats the value with the quality it had.
        let mut beats = Vec::new();
        m.event(&SourceEvent::Confirmed { at: at(7) }, &mut beats);
        q.event(&SourceEvent::Confirmed { at: at(7) }, &mut beats);
        assert_eq!(beats.len(), 1);
        assert!(beats[0]
            .to_json()
            .contains(r#""quality":"uncertain","status":"UncertainLastUsableValue""#));
        // Good again with the same value: sent, good.
        assert!(json(q.map(&mut m, &sample(8, 5), now).0)
            .unwrap()
            .contains(r#""value":5,"quality":"good","site""#));
        // A mark for another sample (dropped in a full queue) marks nothing.
        q.event(&mark(9), &mut []);
        assert!(q
            .map(&mut m, &sample(10, 6), now)
            .0
            .unwrap()
            .to_json()
            .contains(r#""quality":"good""#));
        // An uncertain value closes a gap: it has a value.
        let mut out = Vec::new();
        assert!(q.lost(0, at(11), "BadSensorFailure", &mut out));
        m.forget(0);
        q.event(&mark(12), &mut []);
        let closing = q.map(&mut m, &sample(12, 6), now).0.unwrap();
        assert!(closing.to_json().contains(r#""quality":"uncertain""#));
        assert!(!q.is_bad(0));
        assert!(q.lost(0, at(13), "BadSensorFailure", &mut out));
    }

    #[test]
    fn causes_are_escaped() {
        let mut plan = plan();
        enable(&mut plan);
        let mut q = QualityState::new(&plan).unwrap();
        let mut out = Vec::new();
        q.lost(1, at(0), "bad \"node\"\n", &mut out);
        let v: serde_json::Value = serde_json::from_str(&out[0].to_json()).unwrap();
        assert_eq!(v["status"], "bad \"node\"\n");
        assert_eq!(v["site"], "a");
    }
}
