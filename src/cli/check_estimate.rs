//! `tagbridge check`'s Event Hubs estimate: events/s, bytes/s on the link and throughput units
//! for the configured tag maps sent one reading per event, as JSON arrays, and as gzip arrays.
//!
//! Where the figures come from: each tag's reading rate is its interval (every poll or
//! publish changing, the upper bound); event sizes are the exact AMQP messages the sink would
//! encode (`sink::eventhub::event` and `encoding`, with a message id of realistic length),
//! inside batch transfers. The gzip ratio is measured here and now, by compressing arrays of
//! synthetic readings of these very tags (their sensor ids and extra fields, values varying
//! like analog signals with 3 to 5 significant digits, timestamps advancing by each tag's
//! interval) with the level the sink uses. Real values usually compress at least as well
//! (counters, states and flat signals repeat more).

use std::time::Duration;

use crate::mapping::plan::TagMapPlan;
use crate::reading::{Number, Reading, Value};
use crate::sink::eventhub::encoding::{encode_gzip_event, gzip};
use crate::sink::eventhub::event::{data_section_size, encode_event};

/// Event Hubs throughput unit: 1 000 events/s or 1 MB/s of ingress, whichever is reached first.
const TU_EVENTS_PER_S: f64 = 1000.0;
const TU_BYTES_PER_S: f64 = 1_048_576.0;
/// The array size shown when gateway.yaml does not set one (the example).
pub const DEFAULT_ARRAY: usize = 500;
/// A message id of realistic length: `<host name>-<first seq>-<last seq>`.
const SAMPLE_ID: &str = "plant-a-gateway-01-120000000-120000499";

/// One way of sending, estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub events_per_s: f64,
    pub bytes_per_s: f64,
    pub units: f64,
}

/// The three estimates (one, array, array + gzip) and the gzip ratio measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimates {
    pub readings_per_s: f64,
    pub array: usize,
    pub one: Estimate,
    pub array_json: Estimate,
    pub array_gzip: Estimate,
    /// JSON bytes of an array over its compressed bytes.
    pub gzip_ratio: f64,
}

fn per_second(interval: Duration) -> f64 {
    1.0 / interval.as_secs_f64().max(0.001)
}

fn units(events_per_s: f64, bytes_per_s: f64) -> f64 {
    (events_per_s / TU_EVENTS_PER_S)
        .max(bytes_per_s / TU_BYTES_PER_S)
        .ceil()
        .max(1.0)
}

/// `n` synthetic readings of the tags, in the order a gateway would send them: every tag
/// once per its interval, values varying (see the module doc).
pub fn sample_readings(plans: &[TagMapPlan], n: usize) -> Vec<Reading> {
    let tags: Vec<&crate::mapping::TagPlan> = plans.iter().flat_map(|p| p.tags.iter()).collect();
    let mut out = Vec::with_capacity(n);
    if tags.is_empty() {
        return out;
    }
    let start = chrono::DateTime::from_timestamp_millis(1_755_592_200_000).unwrap_or_default();
    // A small linear congruential generator: deterministic, so `check` prints the same
    // figures for the same files.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut round = 0u32;
    while out.len() < n {
        for tag in &tags {
            if out.len() == n {
                break;
            }
            let interval = chrono::Duration::from_std(tag.interval).unwrap_or_default();
            // 3 to 5 significant digits, in a range of a few hundred.
            let digits = 10f64.powi((next() % 3) as i32);
            let value = ((next() % 50_000) as f64 / 100.0 * digits).round() / digits;
            out.push(Reading {
                sensor_id: tag.sensor_id.clone(),
                timestamp: start + interval * (round as i32),
                value: Value::Number(Number::float(value).unwrap_or(Number::Int(0))),
                extra: tag.extra.clone(),
            });
        }
        round += 1;
    }
    out
}

/// The JSON array of `readings`.
fn json_array(readings: &[Reading]) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, r) in readings.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        r.write_json(&mut out);
    }
    out.push(b']');
    out
}

/// Estimates for the tag maps with arrays of `array` readings.
pub fn estimate(plans: &[TagMapPlan], array: usize) -> Estimates {
    let array = array.max(1);
    let readings_per_s: f64 = plans
        .iter()
        .flat_map(|p| p.tags.iter())
        .map(|t| per_second(t.interval))
        .sum();
    let sample = sample_readings(plans, array.max(2000));
    let count = sample.len().max(1) as f64;
    // One reading per event: each message exactly as the sink encodes it.
    let mut one_bytes = 0usize;
    let mut buf = Vec::new();
    for r in &sample {
        buf.clear();
        encode_event(
            &mut buf,
            "plant-a-gateway-01-120000000",
            None,
            r.to_json().as_bytes(),
        );
        one_bytes += data_section_size(buf.len());
    }
    let one_per_reading = one_bytes as f64 / count;
    // Arrays: whole arrays of the sample, plain and gzip.
    let (mut plain, mut gzipped, mut json, mut compressed) = (0usize, 0usize, 0usize, 0usize);
    for chunk in sample.chunks(array) {
        let body = json_array(chunk);
        json += body.len();
        compressed += gzip(&body).len();
        buf.clear();
        encode_event(&mut buf, SAMPLE_ID, None, &body);
        plain += data_section_size(buf.len());
        buf.clear();
        encode_gzip_event(&mut buf, SAMPLE_ID, None, &body);
        gzipped += data_section_size(buf.len());
    }
    let gzip_ratio = json as f64 / compressed.max(1) as f64;
    let per_reading = |bytes: usize| bytes as f64 / count;
    // Full arrays: a slow tag map's arrays are cut by `linger` and carry fewer readings.
    let events_per_s = readings_per_s / array as f64;
    let make = |events_per_s: f64, bytes_per_s: f64| Estimate {
        events_per_s,
        bytes_per_s,
        units: units(events_per_s, bytes_per_s),
    };
    Estimates {
        readings_per_s,
        array,
        one: make(readings_per_s, readings_per_s * one_per_reading),
        array_json: make(events_per_s, readings_per_s * per_reading(plain)),
        array_gzip: make(events_per_s, readings_per_s * per_reading(gzipped)),
        gzip_ratio,
    }
}

/// What `check` prints.
pub fn render(e: &Estimates, configured: bool) -> String {
    let mut out = format!(
        "Event Hubs estimate at up to {:.1} readings/s (bytes on the link, full arrays; gzip {:.1}:1, measured now on synthetic readings of these tags):\n",
        e.readings_per_s, e.gzip_ratio
    );
    let row = |name: &str, x: &Estimate| {
        format!(
            "  {name:<22} {:>10.2} events/s {:>10.1} KB/s {:>4} throughput unit(s)\n",
            x.events_per_s,
            x.bytes_per_s / 1024.0,
            x.units
        )
    };
    out.push_str(&row("one", &e.one));
    out.push_str(&row(&format!("array {}", e.array), &e.array_json));
    out.push_str(&row(&format!("array {} + gzip", e.array), &e.array_gzip));
    if !configured {
        out.push_str(&format!(
            "  (arrays of {DEFAULT_ARRAY}: gateway.yaml's `events: {{array: N, encoding: gzip}}` sets them)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn shipped() -> Vec<TagMapPlan> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tag-maps");
        let paths: Vec<PathBuf> = ["press-3.yaml"].iter().map(|p| dir.join(p)).collect();
        crate::mapping::load_all(&paths).expect("the shipped tag maps are valid")
    }

    #[test]
    fn arrays_cut_events_and_gzip_cuts_bytes() {
        let plans = shipped();
        let e = estimate(&plans, 500);
        assert!(e.readings_per_s > 0.0);
        assert!((e.one.events_per_s - e.readings_per_s).abs() < 1e-9);
        assert!(e.array_json.events_per_s < e.one.events_per_s);
        assert!(e.array_json.bytes_per_s < e.one.bytes_per_s);
        assert!(
            e.array_gzip.bytes_per_s * 3.0 < e.array_json.bytes_per_s,
            "{e:?}"
        );
        assert!(e.gzip_ratio > 3.0, "{e:?}");
        let text = render(&e, false);
        assert!(text.contains("array 500 + gzip"), "{text}");
    }

    #[test]
    fn the_figures_are_deterministic() {
        let plans = shipped();
        assert_eq!(estimate(&plans, 100), estimate(&plans, 100));
        let r = sample_readings(&plans, 50);
        assert_eq!(r.len(), 50);
    }

    #[test]
    fn units_are_the_larger_of_events_and_bytes() {
        assert_eq!(units(0.0, 0.0), 1.0);
        assert_eq!(units(100_000.0, 1.0), 100.0);
        assert_eq!(units(1.0, 15.0 * 1_048_576.0), 15.0);
    }
}
