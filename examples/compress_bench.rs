//! Bytes on the link and sink CPU per reading for the three event shapes: one reading per
//! event, JSON arrays (`events: {array: N}`), and gzip arrays (`events: {array: N, encoding:
//! gzip}`), with the Event Hubs throughput units they need at 100 000 readings/s. Prints a
//! table; asserts nothing.
//!
//! ```text
//! cargo run --release --example compress_bench [-- --tags 5000 --array 500]
//! ```
//!
//! The readings: `--tags` tags (default 5 000) with plant-style sensor ids
//! (`plant-a/line-07/press-12/hydraulic_pressure_bar`, ~45 characters), each read once per
//! second, values varying like analog signals (3 to 5 significant digits), timestamps in
//! milliseconds: 100 000 readings, a second of a large plant at 100 000 readings/s. They go
//! through the sink's own batcher (`sink::eventhub::event::Batcher`, the code `run` uses:
//! array packing, AMQP encoding, gzip, batches filled to 1 MiB) in chunks of 1 000, as the
//! spool hands them over. "bytes/reading" is each batch transfer's size over the readings it
//! carries; "CPU" is the batcher's time on one core (best of 3), which is the sink's added
//! work per reading (the readings' JSON is written once, upstream, for the spool).

use std::sync::Arc;
use std::time::Instant;

use tagbridge::reading::{Number, Reading, Value};
use tagbridge::sink::eventhub::encoding::{encode_gzip_event, GZIP_LEVEL};
use tagbridge::sink::eventhub::event::{encode_event, Batcher, Encoder, Outgoing, Packed};

const READINGS_PER_S: f64 = 100_000.0;
const MAX_MESSAGE: usize = 1024 * 1024;
const TU_EVENTS: f64 = 1000.0;
const TU_BYTES: f64 = 1_048_576.0;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 100 000 readings of `tags` tags (see the module doc), as the spool holds them.
fn readings(tags: usize) -> Vec<Outgoing> {
    let quantities = [
        "hydraulic_pressure_bar",
        "oil_temperature_c",
        "motor_current_a",
        "cycle_count",
        "spindle_speed_rpm",
        "vibration_mm_s",
    ];
    let ids: Vec<Arc<str>> = (0..tags)
        .map(|i| {
            Arc::from(format!(
                "plant-a/line-{:02}/press-{:02}/{}",
                i / 600,
                i / 6 % 100,
                quantities[i % quantities.len()]
            ))
        })
        .collect();
    let start = chrono::DateTime::from_timestamp_millis(1_755_592_200_000).unwrap_or_default();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let total = READINGS_PER_S as usize;
    (0..total)
        .map(|n| {
            let tag = n % tags;
            let digits = 10f64.powi((next() % 3) as i32);
            let value = ((next() % 50_000) as f64 / 100.0 * digits).round() / digits;
            let reading = Reading {
                sensor_id: ids[tag].clone(),
                // Each tag once per second, spread over the second.
                timestamp: start
                    + chrono::Duration::milliseconds(
                        ((n / tags) * 1000 + tag * 1000 / tags) as i64,
                    ),
                value: Value::Number(Number::float(value).unwrap_or(Number::Int(0))),
                extra: Arc::from(""),
            };
            Outgoing {
                seq: n as u64 + 1,
                body: reading.to_json().into_bytes(),
                partition_key: None,
                received: None,
            }
        })
        .collect()
}

struct Row {
    name: String,
    events: usize,
    bytes: usize,
    seconds: f64,
}

fn run(name: String, encode: Encoder, per_event: usize, input: &[Outgoing]) -> Row {
    let mut best = f64::MAX;
    let (mut events, mut bytes) = (0, 0);
    for _ in 0..3 {
        let chunks: Vec<Vec<Outgoing>> = input.chunks(1000).map(|c| c.to_vec()).collect();
        let started = Instant::now();
        let mut batcher = Batcher::new(encode, "plant-a-gateway-01".into(), per_event, MAX_MESSAGE);
        let mut out = Vec::new();
        let now = tokio::time::Instant::now();
        for chunk in chunks {
            batcher.add(chunk, now, &mut out);
        }
        out.extend(batcher.flush().map(Packed::Batch));
        best = best.min(started.elapsed().as_secs_f64());
        (events, bytes) = (0, 0);
        for packed in &out {
            if let Packed::Batch(b) = packed {
                events += b.len();
                bytes += b.encoded_size();
            }
        }
    }
    Row {
        name,
        events,
        bytes,
        seconds: best,
    }
}

/// gzip alone at each level over the same arrays: compressed bytes per reading and µs per
/// reading (best of 3), to choose [`GZIP_LEVEL`].
fn levels(input: &[Outgoing], array: usize) {
    use std::io::Write as _;
    let arrays: Vec<Vec<u8>> = input
        .chunks(array)
        .map(|chunk| {
            let mut body = vec![b'['];
            for (i, o) in chunk.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&o.body);
            }
            body.push(b']');
            body
        })
        .collect();
    println!();
    println!("| gzip level | bytes/reading | ratio | µs/reading |");
    println!("|---:|---:|---:|---:|");
    let json: usize = arrays.iter().map(Vec::len).sum();
    for level in [1, 3, 6, 9] {
        let mut best = f64::MAX;
        let mut bytes = 0;
        for _ in 0..3 {
            let started = Instant::now();
            bytes = 0;
            for body in &arrays {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                let _ = e.write_all(body);
                bytes += e.finish().map_or(0, |b| b.len());
            }
            best = best.min(started.elapsed().as_secs_f64());
        }
        let n = input.len() as f64;
        println!(
            "| {level} | {:.1} | {:.1}:1 | {:.2} |",
            bytes as f64 / n,
            json as f64 / bytes.max(1) as f64,
            best / n * 1e6
        );
    }
}

fn main() {
    let tags = arg("--tags", 5000).max(1);
    let array = arg("--array", 500).max(2);
    let input = readings(tags);
    let json: usize = input.iter().map(|o| o.body.len()).sum();
    println!(
        "{} readings of {tags} tags, {:.0} B of JSON each on average; arrays of {array}; gzip level {GZIP_LEVEL}; batches of at most 1 MiB",
        input.len(),
        json as f64 / input.len() as f64
    );
    let rows = [
        run("one".into(), encode_event, 1, &input),
        run(format!("array {array}"), encode_event, array, &input),
        run(
            format!("array {array} + gzip"),
            encode_gzip_event,
            array,
            &input,
        ),
    ];
    println!();
    levels(&input, array);
    println!();
    println!(
        "| events | bytes/reading on the link | CPU µs/reading | at 100 000 readings/s: events/s | MB/s | TUs for events | TUs for bytes | TUs | cores |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let n = input.len() as f64;
    for r in &rows {
        let per_reading = r.bytes as f64 / n;
        let events_per_s = r.events as f64 / n * READINGS_PER_S;
        let bytes_per_s = per_reading * READINGS_PER_S;
        let tu_events = (events_per_s / TU_EVENTS).ceil();
        let tu_bytes = (bytes_per_s / TU_BYTES).ceil();
        let us = r.seconds / n * 1e6;
        println!(
            "| {} | {per_reading:.1} | {us:.2} | {events_per_s:.0} | {:.2} | {tu_events} | {tu_bytes} | {} | {:.2} |",
            r.name,
            bytes_per_s / 1e6,
            tu_events.max(tu_bytes).max(1.0),
            us * READINGS_PER_S / 1e6,
        );
    }
}
