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

/// Event Hubs' batch message format (`0x80013700`), as the service and its SDKs use it.
pub const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;
/// The annotation carrying the partition key.
pub const PARTITION_KEY_ANNOTATION: &str = "x-opt-partition-key";
/// Bytes reserved in every batch for the outer message's own framing and annotations, beyond
/// what [`Batch::encoded_size`] counts, so a batch at the limit is never refused for size.
const OUTER_MARGIN: usize = 512;

// AMQP 1.0 part 1, 1.6: format codes.
const NULL: u8 = 0x40;
const VBIN8: u8 = 0xa0;
const VBIN32: u8 = 0xb0;
const STR8: u8 = 0xa1;
const STR32: u8 = 0xb1;
const SYM8: u8 = 0xa3;
const SYM32: u8 = 0xb3;
const LIST8: u8 = 0xc0;
const LIST32: u8 = 0xd0;
const MAP8: u8 = 0xc1;
const MAP32: u8 = 0xd1;
// AMQP 1.0 part 3, 3.2: section descriptors (small ulong codes).
const DESCRIBED: u8 = 0x00;
const SMALLULONG: u8 = 0x53;
const MESSAGE_ANNOTATIONS: u8 = 0x72;
const PROPERTIES: u8 = 0x73;
const DATA: u8 = 0x75;

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

/// Encodes one event: annotations (if a partition key), properties, and the body.
pub fn encode_event(out: &mut Vec<u8>, message_id: &str, partition_key: Option<&str>, body: &[u8]) {
    if let Some(key) = partition_key {
        encode_partition_key_annotations(out, key);
    }
    // properties: a list of message-id, user-id, to, subject, reply-to, correlation-id,
    // content-type; trailing fields left out.
    out.extend_from_slice(&[DESCRIBED, SMALLULONG, PROPERTIES]);
    let mut fields = Vec::with_capacity(message_id.len() + 32);
    encode_str(&mut fields, STR8, STR32, message_id);
    fields.extend_from_slice(&[NULL; 5]);
    encode_str(&mut fields, SYM8, SYM32, "application/json");
    encode_compound(out, LIST8, LIST32, 7, &fields);
    out.extend_from_slice(&[DESCRIBED, SMALLULONG, DATA]);
    encode_binary(out, body);
}

/// Encodes a message-annotations section holding only the partition key.
pub fn encode_partition_key_annotations(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(&[DESCRIBED, SMALLULONG, MESSAGE_ANNOTATIONS]);
    let mut entries = Vec::with_capacity(key.len() + 24);
    encode_str(&mut entries, SYM8, SYM32, PARTITION_KEY_ANNOTATION);
    encode_str(&mut entries, STR8, STR32, key);
    encode_compound(out, MAP8, MAP32, 2, &entries);
}

fn encode_str(out: &mut Vec<u8>, code8: u8, code32: u8, s: &str) {
    encode_variable(out, code8, code32, s.as_bytes());
}

fn encode_binary(out: &mut Vec<u8>, b: &[u8]) {
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
fn encode_compound(out: &mut Vec<u8>, code8: u8, code32: u8, count: u32, body: &[u8]) {
    match (u8::try_from(body.len() + 1), u8::try_from(count)) {
        (Ok(size), Ok(count)) => out.extend_from_slice(&[code8, size, count]),
        _ => {
            out.push(code32);
            out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
        }
    }
    out.extend_from_slice(body);
}

/// Bytes one Data section holding `len` bytes takes: descriptor plus binary header.
pub fn data_section_size(len: usize) -> usize {
    3 + if len < 256 { 2 } else { 5 } + len
}

/// Events for one transfer, all with the same partition key, within a size limit. Cloned to be
/// resent after a failure.
#[derive(Debug, Clone)]
pub struct Batch {
    partition_key: Option<String>,
    /// Each event's encoded message.
    events: Vec<Vec<u8>>,
    /// Spool sequence numbers of the events, in order.
    seqs: Vec<u64>,
    size: usize,
    max_size: usize,
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
            events: Vec::new(),
            seqs: Vec::new(),
            size,
            max_size,
        }
    }

    /// Adds an event already encoded with [`encode_event`].
    pub fn try_add(&mut self, seq: u64, encoded: Vec<u8>) -> Result<(), (AddError, Vec<u8>)> {
        let added = data_section_size(encoded.len());
        let alone = Batch::new(self.partition_key.clone(), self.max_size).size + added;
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
        self.events.push(encoded);
        self.seqs.push(seq);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// An upper bound of the transfer's size.
    pub fn encoded_size(&self) -> usize {
        self.size
    }

    pub fn partition_key(&self) -> Option<&str> {
        self.partition_key.as_deref()
    }

    pub fn seqs(&self) -> &[u64] {
        &self.seqs
    }

    /// The events' encoded messages, in order, and their sequence numbers.
    pub fn into_parts(self) -> (Option<String>, Vec<Vec<u8>>, Vec<u64>) {
        (self.partition_key, self.events, self.seqs)
    }
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
}
