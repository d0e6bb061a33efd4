//! What arrived: accepted events in memory (for tests), counters, and the JSON-lines output.
//!
//! Invariants:
//! - An event is recorded (memory, count, output queue) before its transfer is accepted, so a
//!   client that saw `accepted` can always find its event in `events()` and in the output.
//! - Memory keeps the first `retain` events; the count keeps going, so a benchmark does not
//!   grow the emulator without bound.
//! - The output queue is bounded: when the writer falls behind, the link that delivered the
//!   event waits, which holds back its client's credit (backpressure, not loss).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use base64::Engine;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use super::HubError;

/// One accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// The event's body: its Data sections concatenated, or the UTF-8 of a string value.
    pub body: Vec<u8>,
    pub partition_key: Option<String>,
    pub message_id: Option<String>,
    /// Application properties with their types: AMQP integers and doubles as JSON numbers,
    /// booleans as booleans, strings as strings, timestamps as RFC 3339 text (non-finite doubles
    /// and other types as text).
    pub properties: BTreeMap<String, serde_json::Value>,
    pub content_type: Option<String>,
    /// The AMQP `content-encoding` property (`gzip` for compressed array events).
    pub content_encoding: Option<String>,
    /// The body as it arrived, when `body` holds its decoded form (a gzip body: `body` is the
    /// JSON, this the compressed bytes the hub stored and counts). See `decode`.
    pub encoded: Option<Vec<u8>>,
    /// Why a body marked as compressed could not be decoded (`body` is then as it arrived).
    pub decode_error: Option<String>,
    /// The partition the emulator assigned (from the link, the key's hash, or round robin).
    pub partition: u32,
    pub arrived: DateTime<Utc>,
}

impl ReceivedEvent {
    /// The body as text, when it is UTF-8.
    pub fn body_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The body as it arrived on the wire (compressed, if it was).
    pub fn wire_body(&self) -> &[u8] {
        self.encoded.as_deref().unwrap_or(&self.body)
    }

    /// One JSON line: the body as `body` (UTF-8 text, decoded if it arrived compressed) or
    /// `body_base64`; a compressed body adds `content_encoding` and its size as `wire_bytes`.
    pub fn to_json_line(&self, hub: &str) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert("arrived".into(), self.arrived.to_rfc3339().into());
        obj.insert("hub".into(), hub.into());
        obj.insert("partition".into(), self.partition.into());
        obj.insert("partition_key".into(), self.partition_key.clone().into());
        obj.insert("message_id".into(), self.message_id.clone().into());
        obj.insert("content_type".into(), self.content_type.clone().into());
        obj.insert(
            "properties".into(),
            serde_json::to_value(&self.properties).unwrap_or_default(),
        );
        if let Some(encoding) = &self.content_encoding {
            obj.insert("content_encoding".into(), encoding.clone().into());
            obj.insert("wire_bytes".into(), self.wire_body().len().into());
        }
        if let Some(error) = &self.decode_error {
            obj.insert("decode_error".into(), error.clone().into());
        }
        match self.body_text() {
            Some(text) => obj.insert("body".into(), text.into()),
            None => obj.insert(
                "body_base64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(&self.body)
                    .into(),
            ),
        };
        serde_json::Value::Object(obj).to_string()
    }
}

/// Counters, read with [`super::HubHandle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Events accepted.
    pub events: u64,
    /// Transfers (AMQP messages or REST requests) accepted; a batch of 100 events counts once.
    pub batches: u64,
    /// Body bytes accepted, as they arrived (compressed bodies at their compressed size).
    pub bytes: u64,
    /// AMQP connections open now.
    pub connections: u64,
    /// AMQP connections accepted since start.
    pub connections_total: u64,
    /// Sender links to the hub open now.
    pub senders: u64,
    /// Consumer (receive) links open now.
    pub receivers: u64,
    /// Tokens refused, links refused for want of a token, and links closed when a token expired.
    pub auth_failures: u64,
    /// Transfers refused with `com.microsoft:server-busy`.
    pub throttled: u64,
    /// Transfers refused for size.
    pub oversize: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub events: AtomicU64,
    pub batches: AtomicU64,
    pub bytes: AtomicU64,
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub senders: AtomicU64,
    pub receivers: AtomicU64,
    pub auth_failures: AtomicU64,
    pub throttled: AtomicU64,
    pub oversize: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> HubStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HubStats {
            events: r(&self.events),
            batches: r(&self.batches),
            bytes: r(&self.bytes),
            connections: r(&self.connections),
            connections_total: r(&self.connections_total),
            senders: r(&self.senders),
            receivers: r(&self.receivers),
            auth_failures: r(&self.auth_failures),
            throttled: r(&self.throttled),
            oversize: r(&self.oversize),
        }
    }

    pub fn inc(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(a: &AtomicU64) {
        a.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Events in memory, the arrival count, and the output queue.
pub(crate) struct Store {
    hub: String,
    retain: usize,
    events: Mutex<Vec<ReceivedEvent>>,
    count: watch::Sender<u64>,
    /// Bounded: the delivering link waits when the writer is behind (module doc).
    output: Mutex<Option<mpsc::Sender<String>>>,
    partitions: u32,
    round_robin: AtomicU32,
}

/// Lines queued for the output writer before links wait.
const OUTPUT_QUEUE: usize = 4096;

/// Where the JSON lines go.
#[derive(Debug, Clone)]
pub enum OutputTarget {
    Stdout,
    File(PathBuf),
}

impl Store {
    /// A store, and the output writer to run on a blocking thread (if there is an output).
    pub fn new(
        hub: &str,
        retain: usize,
        partitions: u32,
        output: Option<OutputTarget>,
    ) -> Result<(Store, Option<OutputWriter>), HubError> {
        let (writer, tx) = match output {
            None => (None, None),
            Some(target) => {
                let sink: Box<dyn std::io::Write + Send> = match &target {
                    OutputTarget::Stdout => Box::new(std::io::stdout()),
                    OutputTarget::File(path) => {
                        let file = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)
                            .map_err(|source| HubError::Io {
                                what: format!("open output {}", path.display()),
                                source,
                            })?;
                        Box::new(file)
                    }
                };
                let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
                (Some(OutputWriter { rx, sink }), Some(tx))
            }
        };
        Ok((
            Store {
                hub: hub.to_string(),
                retain,
                events: Mutex::new(Vec::new()),
                count: watch::Sender::new(0),
                output: Mutex::new(tx),
                partitions: partitions.max(1),
                round_robin: AtomicU32::new(0),
            },
            writer,
        ))
    }

    /// The partition for an event without an explicit one.
    pub fn assign_partition(&self, key: Option<&str>) -> u32 {
        match key {
            // FNV-1a: stable across runs, so one key always lands on one partition.
            Some(k) => {
                let mut h: u32 = 0x811c_9dc5;
                for b in k.bytes() {
                    h ^= u32::from(b);
                    h = h.wrapping_mul(0x0100_0193);
                }
                h % self.partitions
            }
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % self.partitions,
        }
    }

    /// The output's JSON lines of `events`, when there is an output: rendering thousands of
    /// them is work for a blocking thread, before [`Store::record`].
    pub fn lines(&self, events: &[ReceivedEvent]) -> Option<Vec<String>> {
        let output = lock(&self.output).is_some();
        output.then(|| events.iter().map(|e| e.to_json_line(&self.hub)).collect())
    }

    /// Records accepted events with their output lines (rendered here when `None`); waits when
    /// the output queue is full.
    pub async fn record(&self, events: Vec<ReceivedEvent>, lines: Option<Vec<String>>) {
        let output = lock(&self.output).clone();
        if let Some(tx) = output {
            let lines =
                lines.unwrap_or_else(|| events.iter().map(|e| e.to_json_line(&self.hub)).collect());
            for line in lines {
                // The writer only stops at shutdown; then the line has nowhere to go.
                let _ = tx.send(line).await;
            }
        }
        let n = events.len() as u64;
        {
            let mut kept = lock(&self.events);
            let room = self.retain.saturating_sub(kept.len());
            kept.extend(events.into_iter().take(room));
        }
        self.count.send_modify(|c| *c += n);
    }

    pub fn events(&self) -> Vec<ReceivedEvent> {
        lock(&self.events).clone()
    }

    pub fn count(&self) -> u64 {
        *self.count.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.count.subscribe()
    }

    /// Closes the output queue so the writer drains and ends.
    pub fn close_output(&self) {
        lock(&self.output).take();
    }
}

/// Locks a mutex, ignoring poisoning: the data (events, counters) stays usable after a panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Writes queued lines, flushing whenever the queue runs empty.
pub(crate) struct OutputWriter {
    rx: mpsc::Receiver<String>,
    sink: Box<dyn std::io::Write + Send>,
}

impl OutputWriter {
    /// Runs until every sender is gone; call on a blocking thread.
    pub fn run(mut self) {
        let mut out = std::io::BufWriter::new(self.sink);
        while let Some(line) = self.rx.blocking_recv() {
            if writeln!(out, "{line}").is_err() {
                break;
            }
            if self.rx.is_empty() && out.flush().is_err() {
                break;
            }
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: &[u8]) -> ReceivedEvent {
        ReceivedEvent {
            body: body.to_vec(),
            partition_key: Some("k".into()),
            message_id: None,
            properties: BTreeMap::from([
                ("a".to_string(), serde_json::json!("1")),
                ("batch".to_string(), serde_json::json!(0)),
            ]),
            content_type: None,
            content_encoding: None,
            encoded: None,
            decode_error: None,
            partition: 1,
            arrived: DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default(),
        }
    }

    #[test]
    fn json_lines_keep_text_and_encode_binary() {
        let line = event(b"{\"v\":1}").to_json_line("hub");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["body"], "{\"v\":1}");
        assert_eq!(v["partition_key"], "k");
        assert_eq!(v["properties"]["a"], "1");
        assert_eq!(v["properties"]["batch"], 0, "numbers stay numbers");
        let line = event(&[0xff, 0x00]).to_json_line("hub");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["body_base64"], "/wA=");
        assert!(v.get("body").is_none());
    }

    #[tokio::test]
    async fn retains_the_first_events_and_counts_all() {
        let (store, _) = Store::new("hub", 2, 4, None).unwrap();
        store
            .record(vec![event(b"1"), event(b"2"), event(b"3")], None)
            .await;
        assert_eq!(store.count(), 3);
        assert_eq!(store.events().len(), 2);
        let p = store.assign_partition(Some("sensor-1"));
        assert_eq!(store.assign_partition(Some("sensor-1")), p);
        assert!(p < 4);
    }
}
