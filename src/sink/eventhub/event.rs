//! Events as AMQP 1.0 messages, and batches of them.
//!
//! One reading is one event: an AMQP message whose body is one Data section holding the
//! reading's JSON, with `content-type: application/json`, a `message-id` stable across replays
//! (so consumers can de-duplicate what a reconnect sends twice), and the partition key, when
//! there is one, in the `x-opt-partition-key` message annotation.
//!
//! Events are encoded here by hand (AMQP 1.0, part 1 "Types" and part 3 "Messaging") rather than
//! through generic serde types: the encoder knows each event's exact size, which is what packing
//! events up to the link's maximum message size needs, and it costs one small allocation per
//! event. Tests decode every shape with fe2o3's independent decoder.
//!
//! A batch is what Event Hubs' SDKs send: one transfer with message-format `0x80013700` whose
//! body is one Data section per event, each holding the event's encoded message. The batch
//! carries the partition key of its events, so all events of a batch share one key.

use std::sync::Arc;

use fe2o3_amqp::types::messaging::Data;
use fe2o3_amqp::types::primitives::Binary;

/// Event Hubs' batch message format (`0x80013700`), as the service and its SDKs use it.
pub const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;
/// The annotation carrying the partition key.
pub const PARTITION_KEY_ANNOTATION: &str = "x-opt-partition-key";
/// Bytes reserved in every batch for the outer message's own framing and annotations, beyond
/// what [`Batch::encoded_size`] counts, so a batch at the limit is never refused for size.
const OUTER_MARGIN: usize = 512;

// AMQP 1.0 part 1, 1.6: format codes.
pub(super) const NULL: u8 = 0x40;
const VBIN8: u8 = 0xa0;
const VBIN32: u8 = 0xb0;
pub(super) const STR8: u8 = 0xa1;
pub(super) const STR32: u8 = 0xb1;
pub(super) const SYM8: u8 = 0xa3;
pub(super) const SYM32: u8 = 0xb3;
pub(super) const LIST8: u8 = 0xc0;
pub(super) const LIST32: u8 = 0xd0;
pub(super) const MAP8: u8 = 0xc1;
pub(super) const MAP32: u8 = 0xd1;
// AMQP 1.0 part 3, 3.2: section descriptors (small ulong codes).
pub(super) const DESCRIBED: u8 = 0x00;
pub(super) const SMALLULONG: u8 = 0x53;
const MESSAGE_ANNOTATIONS: u8 = 0x72;
pub(super) const PROPERTIES: u8 = 0x73;
pub(super) const DATA: u8 = 0x75;

/// Encodes one event as an entry of an HTTPS batch
/// (`application/vnd.microsoft.servicebus.json`): the body as a JSON string, the message id
/// and partition key as broker properties.
pub fn encode_rest_event(
    out: &mut Vec<u8>,
    message_id: &str,
    partition_key: Option<&str>,
    body: &[u8],
) {
    let body = String::from_utf8_lossy(body);
    let mut broker = serde_json::Map::new();
    broker.insert("MessageId".into(), message_id.into());
    if let Some(key) = partition_key {
        broker.insert("PartitionKey".into(), key.into());
    }
    let entry = serde_json::json!({
        "Body": body,
        "BrokerProperties": broker,
        "UserProperties": {"content-type": "application/json"},
    });
    // Serializing a JSON value into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &entry);
}

/// Encodes one event: annotations (if a partition key), properties, and the body. Written
/// straight into `out`: the sizes of the compound parts are known before their contents.
pub fn encode_event(out: &mut Vec<u8>, message_id: &str, partition_key: Option<&str>, body: &[u8]) {
    if let Some(key) = partition_key {
        encode_partition_key_annotations(out, key);
    }
    // properties: a list of message-id, user-id, to, subject, reply-to, correlation-id,
    // content-type; trailing fields left out.
    const CONTENT_TYPE: &str = "application/json";
    out.extend_from_slice(&[DESCRIBED, SMALLULONG, PROPERTIES]);
    let fields = variable_size(message_id.len()) + 5 + variable_size(CONTENT_TYPE.len());
    compound_header(out, LIST8, LIST32, 7, fields);
    encode_str(out, STR8, STR32, message_id);
    out.extend_from_slice(&[NULL; 5]);
    encode_str(out, SYM8, SYM32, CONTENT_TYPE);
    out.extend_from_slice(&[DESCRIBED, SMALLULONG, DATA]);
    encode_binary(out, body);
}

/// An upper bound of [`encode_event`]'s size (and near that of the other encoders), to
/// allocate an event's buffer once.
pub fn event_capacity(message_id: &str, partition_key: Option<&str>, body: &[u8]) -> usize {
    // Section descriptors (3 each), compound headers (9 each), variable headers (5 each).
    const FIXED: usize = 3 * 3 + 9 * 2 + 5 * 5 + PARTITION_KEY_ANNOTATION.len() + 5 + 16;
    FIXED + message_id.len() + partition_key.map_or(0, str::len) + body.len()
}

/// Encodes a message-annotations section holding only the partition key.
pub fn encode_partition_key_annotations(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(&[DESCRIBED, SMALLULONG, MESSAGE_ANNOTATIONS]);
    let entries = variable_size(PARTITION_KEY_ANNOTATION.len()) + variable_size(key.len());
    compound_header(out, MAP8, MAP32, 2, entries);
    encode_str(out, SYM8, SYM32, PARTITION_KEY_ANNOTATION);
    encode_str(out, STR8, STR32, key);
}

/// Bytes a string or binary of `len` bytes takes: its header and the bytes.
fn variable_size(len: usize) -> usize {
    if len < 256 {
        2 + len
    } else {
        5 + len
    }
}

pub(super) fn encode_str(out: &mut Vec<u8>, code8: u8, code32: u8, s: &str) {
    encode_variable(out, code8, code32, s.as_bytes());
}

pub(super) fn encode_binary(out: &mut Vec<u8>, b: &[u8]) {
    encode_variable(out, VBIN8, VBIN32, b);
}

fn encode_variable(out: &mut Vec<u8>, code8: u8, code32: u8, bytes: &[u8]) {
    match u8::try_from(bytes.len()) {
        Ok(len) => out.extend_from_slice(&[code8, len]),
        Err(_) => {
            out.push(code32);
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(bytes);
}

/// A list or map: size counts the count field and the elements (part 1, 1.6.22-25).
pub(super) fn encode_compound(out: &mut Vec<u8>, code8: u8, code32: u8, count: u32, body: &[u8]) {
    compound_header(out, code8, code32, count, body.len());
    out.extend_from_slice(body);
}

/// The header of a list or map whose `count` elements take `body_len` bytes.
fn compound_header(out: &mut Vec<u8>, code8: u8, code32: u8, count: u32, body_len: usize) {
    match (u8::try_from(body_len + 1), u8::try_from(count)) {
        (Ok(size), Ok(count)) => out.extend_from_slice(&[code8, size, count]),
        _ => {
            out.push(code32);
            out.extend_from_slice(&((body_len + 4) as u32).to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
        }
    }
}

/// Bytes one Data section holding `len` bytes takes: descriptor plus binary header.
pub fn data_section_size(len: usize) -> usize {
    3 + if len < 256 { 2 } else { 5 } + len
}

/// The Data sections of one AMQP batch message: each holds one encoded event.
pub type Sections = fe2o3_amqp::types::messaging::Batch<Data>;

/// Events for one transfer, all with the same partition key, within a size limit. Kept in the
/// sink's window until the hub answers, and cloned to be sent (and resent after a failure):
/// once [`sealed`](Batch::sealed) the events are shared, so a clone copies no event.
#[derive(Debug, Clone)]
pub struct Batch {
    partition_key: Option<String>,
    events: Events,
    /// What the batch takes before any event: the margin and the partition key's annotation.
    empty_size: usize,
    size: usize,
    max_size: usize,
}

/// Each event's encoded message, ready to be the body of the AMQP transfer, and its spool
/// sequence number, in order.
#[derive(Debug, Clone)]
enum Events {
    /// Being filled: owned, so adding an event is a push (sharing would make each add an
    /// atomic read-modify-write, 2 % of the gateway's CPU at 100 000 readings a second).
    Filling { sections: Vec<Data>, seqs: Vec<u64> },
    /// Closed: shared by the window and the transfers under way.
    Sealed {
        sections: Arc<Sections>,
        seqs: Arc<Vec<u64>>,
    },
}

/// Why an event was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    /// The batch has no room left for it; send this batch and start another.
    Full,
    /// The event alone is larger than a message may be; it can never be sent.
    TooLarge { size: usize, max: usize },
}

impl Batch {
    /// An empty batch for a link whose maximum message size is `max_size`.
    pub fn new(partition_key: Option<String>, max_size: usize) -> Self {
        let mut size = OUTER_MARGIN;
        if let Some(key) = &partition_key {
            let mut annotations = Vec::new();
            encode_partition_key_annotations(&mut annotations, key);
            size += annotations.len();
        }
        Batch {
            partition_key,
            events: Events::Filling {
                sections: Vec::new(),
                seqs: Vec::new(),
            },
            empty_size: size,
            size,
            max_size,
        }
    }

    /// Adds an event already encoded with [`encode_event`].
    pub fn try_add(&mut self, seq: u64, encoded: Vec<u8>) -> Result<(), (AddError, Vec<u8>)> {
        let added = data_section_size(encoded.len());
        let alone = self.empty_size + added;
        if alone > self.max_size {
            return Err((
                AddError::TooLarge {
                    size: alone,
                    max: self.max_size,
                },
                encoded,
            ));
        }
        if self.size + added > self.max_size {
            return Err((AddError::Full, encoded));
        }
        self.size += added;
        let data = Data(Binary::from(encoded));
        match &mut self.events {
            Events::Filling { sections, seqs } => {
                sections.push(data);
                seqs.push(seq);
            }
            // Not done by the sink (it seals batches once full), but correct: copies if shared.
            Events::Sealed { sections, seqs } => {
                Arc::make_mut(sections).push(data);
                Arc::make_mut(seqs).push(seq);
            }
        }
        Ok(())
    }

    /// The batch with its events shared from now on: a clone copies no event.
    pub fn sealed(self) -> Batch {
        let events = match self.events {
            Events::Filling { sections, seqs } => Events::Sealed {
                sections: Arc::new(Sections::new(sections)),
                seqs: Arc::new(seqs),
            },
            sealed => sealed,
        };
        Batch { events, ..self }
    }

    fn sections(&self) -> &[Data] {
        match &self.events {
            Events::Filling { sections, .. } => sections,
            Events::Sealed { sections, .. } => sections,
        }
    }

    pub fn len(&self) -> usize {
        self.sections().len()
    }

    pub fn is_empty(&self) -> bool {
        self.sections().is_empty()
    }

    /// An upper bound of the transfer's size.
    pub fn encoded_size(&self) -> usize {
        self.size
    }

    pub fn partition_key(&self) -> Option<&str> {
        self.partition_key.as_deref()
    }

    pub fn seqs(&self) -> &[u64] {
        match &self.events {
            Events::Filling { seqs, .. } => seqs,
            Events::Sealed { seqs, .. } => seqs,
        }
    }

    /// Splits into batches that fit `max_size` (a link that takes less than the batch was
    /// packed for), in order. An event that cannot fit alone comes back as
    /// `Err((seq, size))` in its place.
    pub fn split(self, max_size: usize) -> Vec<Result<Batch, (u64, usize)>> {
        let mut out = Vec::new();
        let mut current = Batch::new(self.partition_key.clone(), max_size);
        let seqs = self.seqs().iter().copied();
        for (seq, encoded) in seqs.zip(self.sections().iter().map(|d| d.0.to_vec())) {
            match current.try_add(seq, encoded) {
                Ok(()) => {}
                Err((AddError::Full, encoded)) => {
                    let full = std::mem::replace(
                        &mut current,
                        Batch::new(self.partition_key.clone(), max_size),
                    );
                    out.push(Ok(full.sealed()));
                    if let Err((AddError::TooLarge { size, .. }, _)) = current.try_add(seq, encoded)
                    {
                        out.push(Err((seq, size)));
                    }
                }
                Err((AddError::TooLarge { size, .. }, _)) => {
                    if !current.is_empty() {
                        let before = std::mem::replace(
                            &mut current,
                            Batch::new(self.partition_key.clone(), max_size),
                        );
                        out.push(Ok(before.sealed()));
                    }
                    out.push(Err((seq, size)));
                }
            }
        }
        if !current.is_empty() {
            out.push(Ok(current.sealed()));
        }
        out
    }

    /// The events' encoded messages, in order.
    pub fn events(&self) -> impl Iterator<Item = &[u8]> {
        self.sections().iter().map(|d| d.0.as_slice())
    }

    /// The partition key and the events as the body of an AMQP batch message (shared, not
    /// copied).
    pub fn into_message_parts(self) -> (Option<String>, Arc<Sections>) {
        let sections = match self.events {
            Events::Sealed { sections, .. } => sections,
            Events::Filling { sections, .. } => Arc::new(Sections::new(sections)),
        };
        (self.partition_key, sections)
    }
}

/// One event to deliver.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Spool sequence number: strictly increasing.
    pub seq: u64,
    /// The event body (a reading's JSON).
    pub body: Vec<u8>,
    pub partition_key: Option<std::sync::Arc<str>>,
    /// When the gateway received the reading from its source: a partly filled batch goes
    /// `linger` after its oldest reading was received. `None` when not known (read back from
    /// the spool after a restart): then from when the event reached the sink.
    pub received: Option<tokio::time::Instant>,
}

/// How one event is encoded for the transport (AMQP message or REST JSON entry).
pub type Encoder = fn(&mut Vec<u8>, &str, Option<&str>, &[u8]);

/// What packing produced, oldest first.
#[derive(Debug)]
pub enum Packed {
    /// A full batch (or one closed because the next event has another partition key).
    Batch(Batch),
    /// An event larger than a message may be: it can never be sent.
    TooLarge {
        event: Outgoing,
        size: usize,
        max: usize,
    },
}

/// Packs outgoing events into batches: message ids `<prefix>-<seq>` (or `<prefix>-<first>-<last>`
/// for JSON arrays of `readings_per_event` readings), one partition key per batch, up to the
/// link's maximum message size. A partly filled batch waits for more events until its linger
/// time, counted from when its oldest reading was received, is over.
pub struct Batcher {
    encode: Encoder,
    prefix: String,
    readings_per_event: usize,
    max_size: usize,
    /// The batch being filled, and when its oldest reading was received.
    filling: Option<(Batch, tokio::time::Instant)>,
    /// The message id being written (reused from event to event).
    id: String,
}

impl Batcher {
    pub fn new(
        encode: Encoder,
        prefix: String,
        readings_per_event: usize,
        max_size: usize,
    ) -> Self {
        Batcher {
            encode,
            prefix,
            readings_per_event: readings_per_event.max(1),
            max_size,
            filling: None,
            id: String::new(),
        }
    }

    /// The link's maximum message size, for batches started from now on.
    pub fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    pub fn is_empty(&self) -> bool {
        self.filling.is_none()
    }

    /// Events in the batch being filled.
    pub fn events(&self) -> usize {
        self.filling.as_ref().map_or(0, |(b, _)| b.len())
    }

    /// When the batch being filled must go, whether full or not.
    pub fn linger_deadline(&self, linger: std::time::Duration) -> Option<tokio::time::Instant> {
        self.filling.as_ref().map(|(_, since)| *since + linger)
    }

    /// The batch being filled, if any.
    pub fn flush(&mut self) -> Option<Batch> {
        self.filling
            .take()
            .map(|(b, _)| b)
            .filter(|b| !b.is_empty())
            .map(Batch::sealed)
    }

    /// Packs `events` (in sequence order); closed batches and refused events go to `out`, in
    /// order. An event too large is preceded by the batch being filled, so acknowledgements stay
    /// in order.
    pub fn add(&mut self, events: Vec<Outgoing>, now: tokio::time::Instant, out: &mut Vec<Packed>) {
        let events = if self.readings_per_event > 1 {
            pack_arrays(events, self.readings_per_event, self.max_size / 2)
        } else {
            events.into_iter().map(|e| (None, e)).collect()
        };
        for (first, event) in events {
            // `<prefix>-<seq>`, or `<prefix>-<first>-<last>` for an array.
            self.id.clear();
            self.id.push_str(&self.prefix);
            if let Some(first) = first.filter(|&f| f != event.seq) {
                self.id.push('-');
                self.id.push_str(itoa::Buffer::new().format(first));
            }
            self.id.push('-');
            self.id.push_str(itoa::Buffer::new().format(event.seq));
            let key = event.partition_key.as_deref();
            // One allocation per event, sized once: it becomes the event's Data section.
            let mut bytes = Vec::with_capacity(event_capacity(&self.id, key, &event.body));
            (self.encode)(&mut bytes, &self.id, key, &event.body);
            // A batch lingers from when its oldest reading was received, not from when it
            // reached the sink: the rest of a burst does not wait a second linger.
            let received = event.received.map_or(now, |r| r.min(now));
            loop {
                let max_size = self.max_size;
                let (batch, _) = self
                    .filling
                    .get_or_insert_with(|| (Batch::new(key.map(String::from), max_size), received));
                if batch.partition_key() != key {
                    out.extend(self.flush().map(Packed::Batch));
                    continue;
                }
                match batch.try_add(event.seq, bytes) {
                    Ok(()) => break,
                    Err((AddError::Full, back)) => {
                        bytes = back;
                        out.extend(self.flush().map(Packed::Batch));
                    }
                    Err((AddError::TooLarge { size, max }, _)) => {
                        out.extend(self.flush().map(Packed::Batch));
                        out.push(Packed::TooLarge { event, size, max });
                        break;
                    }
                }
            }
        }
    }
}

/// Packs consecutive readings with the same partition key into JSON-array events of at most
/// `per_event` readings and about `max_bytes`. Each packed event carries the sequence number of
/// its last reading (acks are cumulative) and, as `Some(first)`, its first one for the message
/// id `<prefix>-<first>-<last>`.
fn pack_arrays(
    events: Vec<Outgoing>,
    per_event: usize,
    max_bytes: usize,
) -> Vec<(Option<u64>, Outgoing)> {
    let mut out: Vec<(Option<u64>, Outgoing)> = Vec::new();
    let mut count = 0;
    for event in events {
        let fits = out.last().is_some_and(|(_, last)| {
            // The id `<first>-<last>` must cover exactly the array's readings: a gap in the
            // sequence numbers (a new run's first records after replayed ones) starts another.
            last.seq.checked_add(1) == Some(event.seq)
                && last.partition_key == event.partition_key
                && count < per_event
                && last.body.len() + event.body.len() < max_bytes
        });
        match out.last_mut() {
            Some((_, last)) if fits => {
                // `[a]` + `b` → `[a,b]`
                last.body.pop();
                last.body.push(b',');
                last.body.extend_from_slice(&event.body);
                last.body.push(b']');
                last.seq = event.seq;
                count += 1;
            }
            _ => {
                let mut body = Vec::with_capacity(event.body.len() + 2);
                body.push(b'[');
                body.extend_from_slice(&event.body);
                body.push(b']');
                out.push((
                    Some(event.seq),
                    Outgoing {
                        seq: event.seq,
                        body,
                        partition_key: event.partition_key,
                        received: event.received,
                    },
                ));
                count = 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::message::__private::Deserializable;
    use fe2o3_amqp::types::messaging::{Body, Message, MessageId};
    use fe2o3_amqp::types::primitives::Value;

    fn decode(bytes: &[u8]) -> Message<Body<Value>> {
        let Deserializable(message): Deserializable<Message<Body<Value>>> =
            serde_amqp::from_slice(bytes).unwrap();
        message
    }

    fn body_bytes(m: &Message<Body<Value>>) -> Vec<u8> {
        match &m.body {
            Body::Data(batch) => batch.iter().flat_map(|d| d.0.to_vec()).collect(),
            other => panic!("expected a data body, got {other:?}"),
        }
    }

    #[test]
    fn rest_entries_carry_body_id_and_key() {
        let mut out = Vec::new();
        encode_rest_event(&mut out, "tagbridge-7", Some("line1"), br#"{"value":1}"#);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["Body"], r#"{"value":1}"#);
        assert_eq!(v["BrokerProperties"]["MessageId"], "tagbridge-7");
        assert_eq!(v["BrokerProperties"]["PartitionKey"], "line1");
    }

    #[test]
    fn an_event_decodes_with_fe2o3() {
        let body = br#"{"sensor_id":"a","timestamp":"2025-08-19T08:30:00.000Z","value":1}"#;
        let mut out = Vec::new();
        encode_event(&mut out, "gw-1-42", Some("compressor-7"), body);
        let m = decode(&out);
        let props = m.properties.as_ref().unwrap();
        assert_eq!(props.message_id, Some(MessageId::String("gw-1-42".into())));
        assert_eq!(
            props.content_type.as_ref().map(|s| s.0.as_str()),
            Some("application/json")
        );
        let annotations = m.message_annotations.as_ref().unwrap();
        let key = annotations
            .0
            .iter()
            .find(|(k, _)| format!("{k:?}").contains(PARTITION_KEY_ANNOTATION));
        assert_eq!(
            key.map(|(_, v)| v.clone()),
            Some(Value::String("compressor-7".into()))
        );
        assert_eq!(body_bytes(&m), body);
    }

    #[test]
    fn large_fields_use_the_32_bit_forms() {
        let body = vec![b'x'; 70_000];
        let id = "i".repeat(300);
        let key = "k".repeat(300);
        let mut out = Vec::new();
        encode_event(&mut out, &id, Some(&key), &body);
        let m = decode(&out);
        assert_eq!(
            m.properties.unwrap().message_id,
            Some(MessageId::String(id))
        );
        assert_eq!(body_bytes(&decode(&out)), body);
    }

    #[test]
    fn the_capacity_bounds_every_event_across_the_8_and_32_bit_forms() {
        for id_len in [0, 1, 200, 230, 255, 256, 300] {
            for key in [None, Some(0), Some(200), Some(255), Some(256)] {
                for body_len in [0, 100, 200, 255, 256, 70_000] {
                    let id = "i".repeat(id_len);
                    let key = key.map(|n| "k".repeat(n));
                    let body = vec![b'x'; body_len];
                    let mut out = Vec::new();
                    encode_event(&mut out, &id, key.as_deref(), &body);
                    let capacity = event_capacity(&id, key.as_deref(), &body);
                    assert!(
                        out.len() <= capacity,
                        "id {id_len}, key {key:?}, body {body_len}: {} > {capacity}",
                        out.len()
                    );
                }
            }
        }
    }

    #[test]
    fn without_a_partition_key_there_are_no_annotations() {
        let mut out = Vec::new();
        encode_event(&mut out, "1", None, b"{}");
        let m = decode(&out);
        assert!(m.message_annotations.is_none());
        assert_eq!(body_bytes(&m), b"{}");
    }

    #[test]
    fn batches_fill_to_the_limit_and_refuse_oversized_events() {
        let max = 4096;
        let mut batch = Batch::new(Some("p".into()), max);
        let mut added = 0u64;
        loop {
            let mut e = Vec::new();
            encode_event(&mut e, &added.to_string(), Some("p"), &[b'x'; 100]);
            match batch.try_add(added, e) {
                Ok(()) => added += 1,
                Err((AddError::Full, _)) => break,
                Err((other, _)) => panic!("{other:?}"),
            }
        }
        // ~175 bytes per event with its annotations and properties.
        assert!(added >= 18, "{added}");
        assert!(batch.encoded_size() <= max);
        assert_eq!(batch.seqs().len() as u64, added);
        let mut huge = Vec::new();
        encode_event(&mut huge, "h", None, &vec![0; max]);
        let mut empty = Batch::new(None, max);
        assert!(matches!(
            empty.try_add(0, huge),
            Err((AddError::TooLarge { .. }, _))
        ));
    }

    fn reading(seq: u64, key: Option<&str>) -> Outgoing {
        Outgoing {
            seq,
            body: format!("{{\"n\":{seq}}}").into_bytes(),
            partition_key: key.map(std::sync::Arc::from),
            received: None,
        }
    }

    #[test]
    fn arrays_pack_up_to_n_readings_per_key_in_order() {
        let events = vec![
            reading(1, None),
            reading(2, None),
            reading(3, None),
            reading(4, Some("a")),
            reading(5, Some("a")),
            reading(9, Some("a")),
        ];
        let packed = pack_arrays(events, 3, 1 << 20);
        let shown: Vec<(Option<u64>, u64, String)> = packed
            .into_iter()
            .map(|(first, e)| (first, e.seq, String::from_utf8(e.body).unwrap()))
            .collect();
        assert_eq!(
            shown,
            vec![
                (Some(1), 3, r#"[{"n":1},{"n":2},{"n":3}]"#.to_string()),
                (Some(4), 5, r#"[{"n":4},{"n":5}]"#.to_string()),
                // Not after 5: another array, so its id says which readings it holds.
                (Some(9), 9, r#"[{"n":9}]"#.to_string()),
            ]
        );
    }

    #[test]
    fn the_batcher_splits_by_key_and_size_and_keeps_too_large_events_in_order() {
        let now = tokio::time::Instant::now();
        let mut b = Batcher::new(encode_event, "gw".into(), 1, 2048);
        let mut out = Vec::new();
        let mut big = reading(4, Some("a"));
        big.body = vec![b'x'; 4096];
        b.add(
            vec![
                reading(1, Some("a")),
                reading(2, Some("b")),
                reading(3, Some("b")),
                big,
                reading(5, Some("a")),
            ],
            now,
            &mut out,
        );
        let shown: Vec<String> = out
            .iter()
            .map(|p| match p {
                Packed::Batch(b) => format!("batch {:?}", b.seqs()),
                Packed::TooLarge { event, .. } => format!("too large {}", event.seq),
            })
            .collect();
        assert_eq!(shown, vec!["batch [1]", "batch [2, 3]", "too large 4"]);
        assert_eq!(b.events(), 1);
        let last = b.flush();
        assert_eq!(last.as_ref().map(|b| b.seqs().to_vec()), Some(vec![5]));
        assert!(b.is_empty());
        // What the batcher hands over is shared when cloned for a transfer.
        let closed = out.iter().filter_map(|p| match p {
            Packed::Batch(b) => Some(b),
            Packed::TooLarge { .. } => None,
        });
        for batch in closed.chain(last.as_ref()) {
            assert!(shares_its_events(batch), "{:?}", batch.seqs());
        }
    }

    fn shares_its_events(batch: &Batch) -> bool {
        let copy = batch.clone();
        match (&batch.events, &copy.events) {
            (Events::Sealed { sections: a, .. }, Events::Sealed { sections: b, .. }) => {
                Arc::ptr_eq(a, b)
            }
            _ => false,
        }
    }

    #[test]
    fn linger_counts_from_when_the_oldest_reading_was_received() {
        use std::time::Duration;
        let linger = Duration::from_millis(20);
        let received = tokio::time::Instant::now();
        let now = received + Duration::from_millis(12);
        // Room for a few events per batch: a burst of thirty closes some and leaves the rest.
        let mut b = Batcher::new(encode_event, "gw".into(), 1, 1500);
        let burst = |seqs: std::ops::RangeInclusive<u64>, at| {
            seqs.map(|seq| Outgoing {
                received: at,
                ..reading(seq, None)
            })
            .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        b.add(burst(1..=30, Some(received)), now, &mut out);
        assert!(!out.is_empty() && b.events() > 0, "{out:?}");
        // The rest of the burst waits for its readings' linger, not a new one from now.
        assert_eq!(b.linger_deadline(linger), Some(received + linger));
        let _ = b.flush();
        // Not known (replayed from the spool): from when the events reached the sink.
        b.add(burst(31..=31, None), now, &mut out);
        assert_eq!(b.linger_deadline(linger), Some(now + linger));
        let _ = b.flush();
        // A clock never runs backwards: a reading "received" later than now counts from now.
        b.add(burst(32..=32, Some(now + linger)), now, &mut out);
        assert_eq!(b.linger_deadline(linger), Some(now + linger));
    }

    #[test]
    fn a_batch_splits_to_fit_a_smaller_link() {
        let mut b = Batch::new(Some("k".into()), 1 << 20);
        for seq in 1..=30 {
            b.try_add(seq, vec![7; 100]).unwrap();
        }
        b.try_add(31, vec![7; 3000]).unwrap();
        b.try_add(32, vec![7; 100]).unwrap();
        let parts = b.split(1024);
        let mut seqs = Vec::new();
        for p in &parts {
            match p {
                Ok(b) => {
                    assert!(b.encoded_size() <= 1024);
                    assert_eq!(b.partition_key(), Some("k"));
                    seqs.extend_from_slice(b.seqs());
                }
                Err((seq, size)) => {
                    assert_eq!(*seq, 31);
                    assert!(*size > 1024);
                    seqs.push(*seq);
                }
            }
        }
        assert_eq!(seqs, (1..=32).collect::<Vec<_>>());
        assert!(parts.len() > 3);
        assert!(parts.iter().flatten().all(shares_its_events));
    }
}
