//! Body encodings of events: `json` (the reading or the array of readings as JSON text) and
//! `gzip` (`events: {array: N, encoding: gzip}`: the gzip of that same text).
//!
//! A gzip event is the JSON event with three differences, so that consumers know without
//! guessing and Azure Data Explorer's Event Hubs data connection ingests it with no code:
//! - the Data section holds the gzip (RFC 1952, one member, mtime 0) of the JSON array;
//! - the AMQP properties carry `content-encoding: gzip` beside `content-type: application/json`
//!   (AMQP 1.0 part 3, 3.2.4: the HTTP meaning of the two fields);
//! - application properties `content-encoding: gzip`, and the ingestion properties ADX reads
//!   from `EventData.Properties`: `Compression: GZip` and `Format: MULTIJSON` (one record per
//!   array element), which override the data connection's own settings, so a connection
//!   created for plain JSON still ingests these events.
//!
//! Invariants:
//! - The same readings give the same bytes (no timestamp in the gzip header), so a batch
//!   resent after a lost link is byte-identical and keeps its message ids.
//! - Batches are filled by the compressed size: the batcher only sees the encoded message,
//!   whose Data section is the compressed body. An array is packed to at most half the
//!   message size before compression, and gzip never grows text by more than its small
//!   framing, so only a single reading too large even compressed is dead-lettered (as
//!   JSON, as today).
//! - HTTPS batches carry text bodies only, so `check` refuses gzip with `transport: https`;
//!   a sink built with both anyway sends JSON.

use std::io::Write as _;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::event::{
    encode_binary, encode_compound, encode_partition_key_annotations, encode_rest_event,
    encode_str, Encoder, DATA, DESCRIBED, LIST32, LIST8, MAP32, MAP8, NULL, PROPERTIES, SMALLULONG,
    STR32, STR8, SYM32, SYM8,
};
use crate::config::gateway::Transport;

/// AMQP 1.0 part 3, 3.2.5: the application-properties section's descriptor code.
const APPLICATION_PROPERTIES: u8 = 0x74;
/// The `content-encoding` of a gzip body (properties and application properties).
pub const GZIP_CONTENT_ENCODING: &str = "gzip";
/// Application properties of a gzip event: the content encoding for any consumer, and Azure
/// Data Explorer's ingestion properties (`Compression`, `Format`).
pub const GZIP_APPLICATION_PROPERTIES: [(&str, &str); 3] = [
    ("content-encoding", GZIP_CONTENT_ENCODING),
    ("Compression", "GZip"),
    ("Format", "MULTIJSON"),
];
/// zlib's default level. On 100 000 plant-style readings in arrays of 500
/// (`examples/compress_bench.rs`): level 1 gives 10.2 bytes per reading at 0.6 µs, level 3
/// 9.3 at 1.8 µs, level 6 8.8 at 3.2 µs, level 9 8.7 at 6.1 µs. Level 6 keeps 100 000
/// readings/s within one throughput unit's 1 MB/s (level 1 does not) for under half a core.
pub const GZIP_LEVEL: u32 = 6;

/// How event bodies are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyEncoding {
    /// JSON text.
    #[default]
    Json,
    /// gzip of the JSON text.
    Gzip,
}

/// The gzip of `body`, deterministic (mtime 0, no file name).
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 32),
        Compression::new(GZIP_LEVEL),
    );
    // Writing into a Vec cannot fail, so neither can these two calls.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

/// Encodes one event whose body is the gzip of `json`: annotations (if a partition key),
/// properties with `content-encoding: gzip`, application properties, the compressed body.
pub fn encode_gzip_event(
    out: &mut Vec<u8>,
    message_id: &str,
    partition_key: Option<&str>,
    json: &[u8],
) {
    if let Some(key) = partition_key {
        encode_partition_key_annotations(out, key);
    }
    // properties: message-id, user-id, to, subject, reply-to, correlation-id, content-type,
    // content-encoding; trailing fields left out.
    out.extend_from_slice(&[DESCRIBED, SMALLULONG, PROPERTIES]);
    let mut fields = Vec::with_capacity(message_id.len() + 40);
    encode_str(&mut fields, STR8, STR32, message_id);
    fields.extend_from_slice(&[NULL; 5]);
    encode_str(&mut fields, SYM8, SYM32, "application/json");
    encode_str(&mut fields, SYM8, SYM32, GZIP_CONTENT_ENCODING);
    encode_compound(out, LIST8, LIST32, 8, &fields);
    out.extend_from_slice(&[DESCRIBED, SMALLULONG, APPLICATION_PROPERTIES]);
    let mut entries = Vec::with_capacity(64);
    for (key, value) in GZIP_APPLICATION_PROPERTIES {
        encode_str(&mut entries, STR8, STR32, key);
        encode_str(&mut entries, STR8, STR32, value);
    }
    let count = 2 * GZIP_APPLICATION_PROPERTIES.len() as u32;
    encode_compound(out, MAP8, MAP32, count, &entries);
    out.extend_from_slice(&[DESCRIBED, SMALLULONG, DATA]);
    encode_binary(out, &gzip(json));
}

/// The event encoder for a transport and a body encoding (HTTPS: always JSON, see the
/// module doc).
pub fn encoder(transport: Transport, encoding: BodyEncoding) -> Encoder {
    match (transport, encoding) {
        (Transport::Https, _) => encode_rest_event,
        (Transport::Amqp | Transport::AmqpWs, BodyEncoding::Json) => super::event::encode_event,
        (Transport::Amqp | Transport::AmqpWs, BodyEncoding::Gzip) => encode_gzip_event,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::sink::eventhub::event::{Batch, Batcher, Outgoing, Packed};
    use fe2o3_amqp::types::messaging::message::__private::Deserializable;
    use fe2o3_amqp::types::messaging::{Body, Message, MessageId};
    use fe2o3_amqp::types::primitives::{SimpleValue, Value};
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> Message<Body<Value>> {
        let Deserializable(message): Deserializable<Message<Body<Value>>> =
            serde_amqp::from_slice(bytes).unwrap();
        message
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn reading(seq: u64) -> Vec<u8> {
        format!(
            r#"{{"sensor_id":"line1.press{}.temperature","timestamp":"2025-08-19T08:30:{:02}.{:03}Z","value":{}.{}}}"#,
            seq % 40,
            seq / 1000 % 60,
            seq % 1000,
            20 + seq % 7,
            seq % 100
        )
        .into_bytes()
    }

    #[test]
    fn a_gzip_event_decodes_with_fe2o3_and_says_how_it_is_encoded() {
        let json = br#"[{"sensor_id":"a","timestamp":"2025-08-19T08:30:00.000Z","value":1}]"#;
        let mut out = Vec::new();
        encode_gzip_event(&mut out, "gw-1-42", Some("compressor-7"), json);
        let m = decode(&out);
        let props = m.properties.as_ref().unwrap();
        assert_eq!(props.message_id, Some(MessageId::String("gw-1-42".into())));
        assert_eq!(
            props.content_type.as_ref().map(|s| s.0.as_str()),
            Some("application/json")
        );
        assert_eq!(
            props.content_encoding.as_ref().map(|s| s.0.as_str()),
            Some("gzip")
        );
        let app = m.application_properties.as_ref().unwrap();
        for (key, value) in GZIP_APPLICATION_PROPERTIES {
            assert_eq!(
                app.0.get(key),
                Some(&SimpleValue::String(value.into())),
                "{key}"
            );
        }
        assert!(m.message_annotations.is_some());
        let Body::Data(data) = &m.body else {
            panic!("expected a data body, got {:?}", m.body)
        };
        let body: Vec<u8> = data.iter().flat_map(|d| d.0.to_vec()).collect();
        assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzip member");
        assert_eq!(gunzip(&body), json);
    }

    #[test]
    fn the_same_readings_compress_to_the_same_bytes() {
        let json: Vec<u8> = reading(1);
        assert_eq!(gzip(&json), gzip(&json));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_gzip_event(&mut a, "x-1-2", None, &json);
        encode_gzip_event(&mut b, "x-1-2", None, &json);
        assert_eq!(a, b);
    }

    #[test]
    fn large_bodies_use_the_32_bit_forms() {
        // Incompressible: the compressed body is over 64 KiB too.
        let json: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let id = "i".repeat(300);
        let mut out = Vec::new();
        encode_gzip_event(&mut out, &id, Some(&"k".repeat(300)), &json);
        let m = decode(&out);
        assert_eq!(
            m.properties.as_ref().unwrap().message_id,
            Some(MessageId::String(id))
        );
        let Body::Data(data) = &m.body else { panic!() };
        assert_eq!(gunzip(&data[0].0), json);
    }

    #[test]
    fn https_never_gets_gzip() {
        let rest: Encoder = encode_rest_event;
        assert_eq!(
            encoder(Transport::Https, BodyEncoding::Gzip) as usize,
            rest as usize
        );
        let gz: Encoder = encode_gzip_event;
        assert_eq!(
            encoder(Transport::AmqpWs, BodyEncoding::Gzip) as usize,
            gz as usize
        );
    }

    /// Packs `n` readings in arrays of 500 and returns the batches' sizes and reading counts.
    fn pack(encode: Encoder, n: u64, max: usize) -> Vec<Batch> {
        let mut b = Batcher::new(encode, "gw".into(), 500, max);
        let mut out = Vec::new();
        let events = (1..=n)
            .map(|seq| Outgoing {
                seq,
                body: reading(seq),
                partition_key: None,
                received: None,
            })
            .collect();
        b.add(events, tokio::time::Instant::now(), &mut out);
        out.extend(b.flush().map(Packed::Batch));
        out.into_iter()
            .map(|p| match p {
                Packed::Batch(b) => b,
                Packed::TooLarge { .. } => panic!("nothing is too large here"),
            })
            .collect()
    }

    #[test]
    fn batches_fill_to_the_limit_by_the_compressed_size() {
        let max = 64 * 1024;
        let plain = pack(super::super::event::encode_event, 20_000, max);
        let gzipped = pack(encode_gzip_event, 20_000, max);
        for b in plain.iter().chain(&gzipped) {
            assert!(b.encoded_size() <= max);
        }
        // Arrays of 500 readings (~40 KB of JSON): one per batch uncompressed, many gzipped.
        assert!(plain.len() >= 40, "{}", plain.len());
        assert!(
            gzipped.len() * 4 < plain.len(),
            "{} gzip batches vs {} plain",
            gzipped.len(),
            plain.len()
        );
        let seqs: Vec<u64> = gzipped.iter().flat_map(|b| b.seqs().to_vec()).collect();
        assert_eq!(seqs.last(), Some(&20_000));
    }

    proptest! {
        #[test]
        fn any_body_round_trips(body in proptest::collection::vec(any::<u8>(), 0..4096),
                                id in "[a-z0-9-]{1,300}",
                                key in proptest::option::of("[a-z]{1,200}")) {
            let mut out = Vec::new();
            encode_gzip_event(&mut out, &id, key.as_deref(), &body);
            let m = decode(&out);
            let Body::Data(data) = &m.body else { panic!() };
            prop_assert_eq!(gunzip(&data[0].0), body);
            prop_assert_eq!(
                m.properties.as_ref().and_then(|p| p.message_id.clone()),
                Some(MessageId::String(id))
            );
        }
    }
}
