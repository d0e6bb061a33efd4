//! The contract between the sources and the mapping stage: what an adapter emits for its tags.
//! It sits below both, so a source never imports the mapping stage's runtime code and the
//! mapping stage never imports a source.
//!
//! A [`SampleBatch`] carries values ([`Sample`]s) and, in order with them, status
//! [`SourceEvent`]s: "every value I gave you still holds as of now" (a live OPC UA subscription's
//! publish or keep-alive response) and "this tag, or this whole source, cannot be read now, and
//! why". The mapping stage uses them to send a heartbeat only for a value that is still
//! confirmed (docs/operations.md, "Heartbeats"); the same events are what quality readings
//! (issue 16) will report.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A value as the device gave it, before the tag map's transforms.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(Arc<str>),
}

/// One value of one tag at one time. `tag` indexes [`crate::mapping::TagMapPlan::tags`].
/// A sample also confirms its tag: the device gave this value at `timestamp`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tag: usize,
    pub timestamp: DateTime<Utc>,
    pub value: RawValue,
}

/// Which tags a [`SourceEvent`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every tag of the tag map (the connection, the subscription).
    Source,
    /// One tag, by its index in the plan.
    Tag(usize),
}

/// Why a tag cannot be read. Kept specific so a quality reading can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The connection to the device or server is gone.
    ConnectionLost,
    /// The device did not answer in time.
    NoAnswer,
    /// A Modbus exception code from the device.
    ModbusException(u8),
    /// An OPC UA status that is not Good (its symbolic name, e.g. `BadNodeIdUnknown`).
    OpcUaStatus(Arc<str>),
    /// The device answered with something that is not a value of this tag.
    Undecodable,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::ConnectionLost => f.write_str("connection lost"),
            Cause::NoAnswer => f.write_str("no answer"),
            Cause::ModbusException(code) => match modbus_exception_name(*code) {
                Some(name) => write!(f, "{name} (Modbus exception 0x{code:02X})"),
                None => write!(f, "Modbus exception 0x{code:02X}"),
            },
            Cause::OpcUaStatus(name) => f.write_str(name),
            Cause::Undecodable => f.write_str("undecodable value"),
        }
    }
}

/// The name of a Modbus exception code, when the specification defines one (Modbus
/// Application Protocol V1.1b3, 7).
pub fn modbus_exception_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => return None,
    })
}

/// Status news from a source, between its samples.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// Every tag's last value that was not lost since still holds at `at` (the source heard from
    /// the device at `at`: an OPC UA publish or keep-alive response).
    Confirmed { at: DateTime<Utc> },
    /// From `at` the tags of `scope` cannot be read, until their next sample.
    Lost {
        scope: Scope,
        at: DateTime<Utc>,
        cause: Cause,
    },
    /// The sample right after this event, of `tag` stamped `timestamp`, is a value the device
    /// gave but says may be inaccurate (an OPC UA Uncertain status), because of `cause`. Only
    /// a sample that matches both applies: if the queue dropped it, nothing is marked.
    Uncertain {
        tag: usize,
        timestamp: DateTime<Utc>,
        cause: Cause,
    },
    /// An OPC UA event (an alarm transition, …) of one of the tag map's `events:`; the mapping
    /// stage makes one reading of it (`mapping::events`).
    OpcUaEvent(Box<EventSample>),
}

/// One event as the server reported it: the fields its subscription selected.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSample {
    /// Index into the tag map's event subscriptions (`OpcUaPlan::events`).
    pub subscription: usize,
    /// The event's Time (the gateway's clock when the server sent none).
    pub time: DateTime<Utc>,
    /// One value per select clause of the subscription; `None` when the event has no such
    /// field (or it has no reading form).
    pub fields: Vec<Option<RawValue>>,
    /// Sent again by ConditionRefresh (a retained condition), not a new transition.
    pub refresh: bool,
}

/// What an adapter sends in one channel send (one poll cycle, one publish response): samples
/// and status events in the order they happened. Derefs to its samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleBatch {
    pub samples: Vec<Sample>,
    /// Each event with the number of `samples` that came before it.
    pub events: Vec<(usize, SourceEvent)>,
    /// When the source got the first of them (a Modbus response, an OPC UA notification): the
    /// sink's linger counts from here. `None`: from when the mapping stage takes the batch.
    pub received: Option<std::time::Instant>,
}

impl SampleBatch {
    pub fn with_capacity(n: usize) -> Self {
        SampleBatch {
            samples: Vec::with_capacity(n),
            events: Vec::new(),
            received: None,
        }
    }

    /// Notes that what the batch holds was received now, unless something earlier was.
    pub fn received_now(&mut self) {
        self.received.get_or_insert_with(std::time::Instant::now);
    }

    /// Appends an event after the samples so far.
    pub fn event(&mut self, event: SourceEvent) {
        self.events.push((self.samples.len(), event));
    }

    /// Neither samples nor events.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.events.is_empty()
    }

    /// Samples and events merged in order.
    pub fn items(&self) -> impl Iterator<Item = Item<'_>> {
        let mut events = self.events.iter().peekable();
        let mut samples = self.samples.iter().enumerate().peekable();
        std::iter::from_fn(move || {
            let before = samples.peek().map_or(usize::MAX, |(i, _)| *i);
            match events.peek() {
                Some((at, _)) if *at <= before => events.next().map(|(_, e)| Item::Event(e)),
                _ => samples.next().map(|(_, s)| Item::Sample(s)),
            }
        })
    }
}

/// One entry of [`SampleBatch::items`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    Sample(&'a Sample),
    Event(&'a SourceEvent),
}

impl From<Vec<Sample>> for SampleBatch {
    fn from(samples: Vec<Sample>) -> Self {
        SampleBatch {
            samples,
            events: Vec::new(),
            received: None,
        }
    }
}

impl std::ops::Deref for SampleBatch {
    type Target = Vec<Sample>;
    fn deref(&self) -> &Vec<Sample> {
        &self.samples
    }
}

impl std::ops::DerefMut for SampleBatch {
    fn deref_mut(&mut self) -> &mut Vec<Sample> {
        &mut self.samples
    }
}

impl IntoIterator for SampleBatch {
    type Item = Sample;
    type IntoIter = std::vec::IntoIter<Sample>;
    fn into_iter(self) -> Self::IntoIter {
        self.samples.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(tag: usize) -> Sample {
        Sample {
            tag,
            timestamp: DateTime::<Utc>::UNIX_EPOCH,
            value: RawValue::Int(0),
        }
    }

    #[test]
    fn items_keep_the_order_of_samples_and_events() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let mut b = SampleBatch::default();
        b.event(SourceEvent::Confirmed { at });
        b.push(s(0));
        b.push(s(1));
        b.event(SourceEvent::Lost {
            scope: Scope::Source,
            at,
            cause: Cause::ConnectionLost,
        });
        b.push(s(2));
        b.event(SourceEvent::Confirmed { at });
        let order: Vec<String> = b
            .items()
            .map(|i| match i {
                Item::Sample(s) => format!("s{}", s.tag),
                Item::Event(SourceEvent::Confirmed { .. }) => "c".into(),
                Item::Event(SourceEvent::Lost { .. }) => "l".into(),
                Item::Event(SourceEvent::Uncertain { .. }) => "u".into(),
                Item::Event(SourceEvent::OpcUaEvent(_)) => "e".into(),
            })
            .collect();
        assert_eq!(order, ["c", "s0", "s1", "l", "s2", "c"]);
        assert!(!SampleBatch {
            samples: vec![],
            events: vec![(0, SourceEvent::Confirmed { at })],
            received: None,
        }
        .is_empty());
    }
}
