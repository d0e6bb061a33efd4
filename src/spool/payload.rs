//! The payload of one spool (or in-memory journal) record: the event's partition key and the
//! reading's JSON, fixed when the reading is appended so that a replay sends exactly what was
//! spooled, whatever the configuration is by then.
//!
//! ```text
//! [key length: u8][key: UTF-8, 0..=255 bytes][reading JSON]
//! ```

use crate::reading::Reading;

/// A record: `[key length: u8][key][reading JSON]`; length 0 means no partition key. Returns
/// where the reading's `,"timestamp":…,"value":…` members are in `out`
/// ([`Reading::write_json_marked`]).
pub fn encode(out: &mut Vec<u8>, key: Option<&str>, reading: &Reading) -> std::ops::Range<usize> {
    // Cut at a character boundary: a key cut inside a character would not decode (checks
    // refuse keys over Event Hubs' 128 characters long before this).
    let key = key
        .map(|k| {
            // `str::floor_char_boundary` is newer than our minimum Rust version.
            let end = (0..=k.len().min(255))
                .rev()
                .find(|&i| k.is_char_boundary(i))
                .unwrap_or(0);
            &k.as_bytes()[..end]
        })
        .unwrap_or_default();
    out.push(key.len() as u8);
    out.extend_from_slice(key);
    reading.write_json_marked(out)
}

/// Splits a record into its partition key and body; `None` for a record too short to be one.
pub fn decode(record: &[u8]) -> Option<(Option<&str>, &[u8])> {
    let (&len, rest) = record.split_first()?;
    let (key, body) = rest.split_at_checked(usize::from(len))?;
    let key = if key.is_empty() {
        None
    } else {
        std::str::from_utf8(key).ok()
    };
    Some((key, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Value;

    #[test]
    fn a_long_key_is_cut_at_a_character_boundary() {
        let r = Reading {
            sensor_id: "s".into(),
            timestamp: chrono::Utc::now(),
            value: Value::from(1),
            extra: "".into(),
        };
        // 254 bytes, then a 2-byte character across the 255-byte cut.
        let key = format!("{}é", "k".repeat(254));
        let mut out = Vec::new();
        encode(&mut out, Some(&key), &r);
        let (decoded, _) = decode(&out).unwrap();
        assert_eq!(decoded, Some("k".repeat(254).as_str()));
    }

    #[test]
    fn records_round_trip_with_and_without_a_key() {
        let r = Reading {
            sensor_id: "s".into(),
            timestamp: chrono::Utc::now(),
            value: Value::from(1),
            extra: "".into(),
        };
        let mut with = Vec::new();
        encode(&mut with, Some("line-1"), &r);
        assert_eq!(
            decode(&with),
            Some((Some("line-1"), r.to_json().as_bytes()))
        );
        let mut without = Vec::new();
        encode(&mut without, None, &r);
        assert_eq!(decode(&without), Some((None, r.to_json().as_bytes())));
        assert_eq!(decode(&[5, b'a']), None);
        assert_eq!(decode(&[]), None);
    }
}
