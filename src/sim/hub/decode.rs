//! Compressed bodies decoded for the emulator's own output: an event marked gzip (the AMQP
//! `content-encoding` property, or the application properties `content-encoding: gzip` or
//! Azure Data Explorer's `Compression: GZip`) is gunzipped into `body`, so the JSON lines and
//! every test reading [`ReceivedEvent::body`] see the readings whatever the encoding, while the
//! compressed bytes stay in `encoded` (what the hub counts, stores and serves to consumers).
//!
//! Hostile bodies: decoding stops at [`MAX_DECODED`] bytes (a gzip bomb is reported, not
//! inflated); a body that is not gzip keeps its bytes and says why in `decode_error`. Neither
//! refuses the event: Event Hubs stores bodies without looking at them.

use std::io::Read as _;

use super::store::ReceivedEvent;

/// The largest decoded body: far above any event (1 MiB) at realistic ratios (10:1 to 20:1).
pub const MAX_DECODED: u64 = 64 << 20;

/// Whether the event says its body is gzip.
pub fn is_gzip(event: &ReceivedEvent) -> bool {
    let says = |v: &str| v.eq_ignore_ascii_case("gzip");
    event.content_encoding.as_deref().is_some_and(says)
        || ["content-encoding", "Compression"].iter().any(|key| {
            event
                .properties
                .get(*key)
                .and_then(|v| v.as_str())
                .is_some_and(says)
        })
}

/// Gunzips the body of an event marked gzip (see the module doc); others are left alone.
pub fn decode_body(event: &mut ReceivedEvent) {
    if event.encoded.is_some() || !is_gzip(event) {
        return;
    }
    if event.content_encoding.is_none() {
        event.content_encoding = Some("gzip".into());
    }
    match gunzip(&event.body) {
        Ok(decoded) => event.encoded = Some(std::mem::replace(&mut event.body, decoded)),
        Err(why) => event.decode_error = Some(why),
    }
}

/// Decodes every gzip member of `bytes`, up to [`MAX_DECODED`] bytes.
pub fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    gunzip_at_most(bytes, MAX_DECODED)
}

fn gunzip_at_most(bytes: &[u8], max: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(8).min(1 << 24));
    let mut decoder = flate2::read::MultiGzDecoder::new(bytes).take(max + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| format!("the body is marked gzip but does not decode: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!(
            "the body is marked gzip and decodes to more than {max} bytes"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::eventhub::encoding::gzip;
    use std::collections::BTreeMap;

    fn event(body: Vec<u8>, encoding: Option<&str>, props: &[(&str, &str)]) -> ReceivedEvent {
        ReceivedEvent {
            body,
            partition_key: None,
            message_id: None,
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect::<BTreeMap<_, _>>(),
            content_type: Some("application/json".into()),
            content_encoding: encoding.map(String::from),
            encoded: None,
            decode_error: None,
            partition: 0,
            arrived: chrono::Utc::now(),
        }
    }

    #[test]
    fn gzip_bodies_are_decoded_and_keep_their_wire_form() {
        let json = br#"[{"sensor_id":"a","timestamp":"2025-01-01T00:00:00.000Z","value":1}]"#;
        for (encoding, props) in [
            (Some("gzip"), vec![]),
            (None, vec![("Compression", "GZip")]),
            (None, vec![("content-encoding", "GZIP")]),
        ] {
            let mut e = event(gzip(json), encoding, &props);
            decode_body(&mut e);
            assert_eq!(e.body, json);
            assert_eq!(e.wire_body(), gzip(json).as_slice());
            assert_eq!(e.decode_error, None);
            let line: serde_json::Value = serde_json::from_str(&e.to_json_line("h")).unwrap();
            assert_eq!(line["content_encoding"], "gzip");
            assert_eq!(line["wire_bytes"], gzip(json).len());
            assert!(line["body"].as_str().unwrap().starts_with("[{"));
        }
    }

    #[test]
    fn unmarked_bodies_are_left_alone_and_bad_gzip_is_reported_not_refused() {
        let mut plain = event(b"{}".to_vec(), None, &[]);
        decode_body(&mut plain);
        assert_eq!((plain.body.as_slice(), plain.encoded), (&b"{}"[..], None));
        let mut bad = event(b"not gzip".to_vec(), Some("gzip"), &[]);
        decode_body(&mut bad);
        assert_eq!(bad.body, b"not gzip");
        assert!(bad.decode_error.unwrap().contains("does not decode"));
    }

    #[test]
    fn a_gzip_bomb_is_stopped() {
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 2_000);
        assert_eq!(gunzip_at_most(&bomb, 1 << 20).map(|b| b.len()), Ok(1 << 20));
        let error = gunzip_at_most(&bomb, (1 << 20) - 1).unwrap_err();
        assert!(error.contains("more than"), "{error}");
    }

    #[test]
    fn truncated_and_garbled_gzip_never_panics() {
        let good = gzip(&[b'x'; 5000]);
        for cut in 0..good.len() {
            let _ = gunzip(&good[..cut]);
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            let _ = gunzip(&bad);
        }
    }
}
