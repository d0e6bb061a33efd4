//! What consumers read: one log per partition of the events the hub accepted, as it stored them
//! (the body as it arrived, compressed or not), numbered as Event Hubs numbers them.
//!
//! Invariants:
//! - Per partition, sequence numbers start at 0 and grow by one per event, with no gap and no
//!   reuse; offsets are the byte position of the event in the partition (the sum of the wire
//!   sizes of the events before it), as text on the wire, as the service sends them; enqueued
//!   times never go backwards within a partition.
//! - An event is in its partition's log before its transfer is accepted (it is appended in
//!   `Shared::accept_events`, with the store), so a sender that saw `accepted` can read it back.
//! - Retention is by bytes per partition (`HubConfig::consumer_retention_bytes`): the oldest
//!   events go first; the numbering does not change, and a reader asking for a trimmed position
//!   starts at the oldest event kept, as the service does after its time retention.
//! - Readers wait on a `watch` of the partition's next sequence number: no polling.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::store::{lock, ReceivedEvent};

/// One stored event, as a consumer receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub partition: u32,
    /// `x-opt-sequence-number`.
    pub sequence_number: i64,
    /// `x-opt-offset`: the byte position in the partition.
    pub offset: i64,
    /// `x-opt-enqueued-time`, milliseconds since the Unix epoch.
    pub enqueued_ms: i64,
    pub partition_key: Option<String>,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub properties: BTreeMap<String, serde_json::Value>,
    /// The body as it arrived (gzip bodies stay compressed).
    pub body: Vec<u8>,
}

/// A partition's description for `$management` READ of `com.microsoft:partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub begin_sequence_number: i64,
    /// -1 when nothing was ever enqueued.
    pub last_sequence_number: i64,
    /// -1 when nothing was ever enqueued.
    pub last_offset: i64,
    /// None when nothing was ever enqueued.
    pub last_enqueued_ms: Option<i64>,
    /// No event is retained.
    pub is_empty: bool,
}

/// Where a reader starts: the filter of its link (`amqp.annotation.x-opt-offset > '-1'`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first retained event (also offset `-1`).
    Earliest,
    /// Only events enqueued after the link opens (offset `@latest`).
    Latest,
    /// Events whose offset is greater than (or equal to, when `inclusive`) this one.
    Offset { offset: i64, inclusive: bool },
    /// Events whose sequence number is greater than (or equal to) this one.
    Sequence { number: i64, inclusive: bool },
    /// Events enqueued after (or at) this time, in milliseconds.
    Enqueued { ms: i64, inclusive: bool },
}

struct Log {
    events: VecDeque<Arc<StoredEvent>>,
    /// Wire bytes of `events`.
    bytes: usize,
    next_sequence: i64,
    next_offset: i64,
    last: Option<(i64, i64, i64)>,
}

/// Every partition's log.
pub(crate) struct Partitions {
    logs: Vec<Mutex<Log>>,
    /// Per partition: the next sequence number, changed after every append.
    appended: Vec<watch::Sender<i64>>,
    retention_bytes: usize,
}

impl Partitions {
    pub(crate) fn new(partitions: u32, retention_bytes: usize) -> Partitions {
        let n = partitions.max(1) as usize;
        Partitions {
            logs: (0..n)
                .map(|_| {
                    Mutex::new(Log {
                        events: VecDeque::new(),
                        bytes: 0,
                        next_sequence: 0,
                        next_offset: 0,
                        last: None,
                    })
                })
                .collect(),
            appended: (0..n).map(|_| watch::Sender::new(0)).collect(),
            retention_bytes,
        }
    }

    /// Appends accepted events to their partitions (numbering them), oldest first.
    pub(crate) fn append(&self, events: &[ReceivedEvent]) {
        let mut touched = Vec::new();
        for event in events {
            let p = event.partition as usize;
            let Some(log) = self.logs.get(p) else {
                continue;
            };
            let body = event.wire_body().to_vec();
            let mut log = lock(log);
            let enqueued_ms = event
                .arrived
                .timestamp_millis()
                .max(log.last.map_or(i64::MIN, |(_, _, at)| at));
            let stored = StoredEvent {
                partition: event.partition,
                sequence_number: log.next_sequence,
                offset: log.next_offset,
                enqueued_ms,
                partition_key: event.partition_key.clone(),
                message_id: event.message_id.clone(),
                content_type: event.content_type.clone(),
                content_encoding: event.content_encoding.clone(),
                properties: event.properties.clone(),
                body,
            };
            let size = stored.body.len();
            log.last = Some((stored.sequence_number, stored.offset, enqueued_ms));
            log.next_sequence += 1;
            log.next_offset += size.max(1) as i64;
            log.bytes += size;
            log.events.push_back(Arc::new(stored));
            while log.bytes > self.retention_bytes && log.events.len() > 1 {
                if let Some(old) = log.events.pop_front() {
                    log.bytes -= old.body.len();
                }
            }
            touched.push((p, log.next_sequence));
        }
        for (p, next) in touched {
            self.appended[p].send_replace(next);
        }
    }

    /// Sequence number of the first event a reader starting at `start` gets.
    pub(crate) fn resolve(&self, partition: u32, start: StartAt) -> i64 {
        let Some(log) = self.logs.get(partition as usize) else {
            return 0;
        };
        let log = lock(log);
        let first = log
            .events
            .front()
            .map_or(log.next_sequence, |e| e.sequence_number);
        let find = |pred: &dyn Fn(&StoredEvent) -> bool| {
            log.events
                .iter()
                .find(|e| pred(e))
                .map_or(log.next_sequence, |e| e.sequence_number)
        };
        match start {
            StartAt::Earliest => first,
            StartAt::Latest => log.next_sequence,
            StartAt::Offset { offset, inclusive } => {
                find(&|e| e.offset > offset || (inclusive && e.offset == offset))
            }
            StartAt::Sequence { number, inclusive } => {
                let from = if inclusive { number } else { number + 1 };
                from.clamp(first, log.next_sequence)
            }
            StartAt::Enqueued { ms, inclusive } => {
                find(&|e| e.enqueued_ms > ms || (inclusive && e.enqueued_ms == ms))
            }
        }
    }

    /// Up to `max` events from sequence number `from` (or from the oldest retained, if `from`
    /// was trimmed).
    pub(crate) fn read(&self, partition: u32, from: i64, max: usize) -> Vec<Arc<StoredEvent>> {
        let Some(log) = self.logs.get(partition as usize) else {
            return Vec::new();
        };
        let log = lock(log);
        let Some(first) = log.events.front().map(|e| e.sequence_number) else {
            return Vec::new();
        };
        let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(0);
        log.events.iter().skip(skip).take(max).cloned().collect()
    }

    /// Watches the partition's next sequence number.
    pub(crate) fn subscribe(&self, partition: u32) -> Option<watch::Receiver<i64>> {
        self.appended.get(partition as usize).map(|w| w.subscribe())
    }

    pub(crate) fn info(&self, partition: u32) -> Option<PartitionInfo> {
        let log = lock(self.logs.get(partition as usize)?);
        let begin = log
            .events
            .front()
            .map_or(log.next_sequence, |e| e.sequence_number);
        Some(PartitionInfo {
            begin_sequence_number: begin,
            last_sequence_number: log.last.map_or(-1, |(s, _, _)| s),
            last_offset: log.last.map_or(-1, |(_, o, _)| o),
            last_enqueued_ms: log.last.map(|(_, _, at)| at),
            is_empty: log.events.is_empty(),
        })
    }
}

/// Parses the selector filter Microsoft's SDKs put on a receiver link's source
/// (`amqp.annotation.x-opt-offset > '-1'`, `… x-opt-sequence-number >= '5'`,
/// `… x-opt-enqueued-time > '1700000000000'`).
pub fn parse_selector(selector: &str) -> Result<StartAt, String> {
    let bad = || format!("unsupported selector filter `{selector}`");
    let rest = selector
        .trim()
        .strip_prefix("amqp.annotation.x-opt-")
        .ok_or_else(bad)?;
    let (field, rest) = rest.split_once(' ').ok_or_else(bad)?;
    let (operator, value) = rest.trim_start().split_once(' ').ok_or_else(bad)?;
    let inclusive = match operator {
        ">" => false,
        ">=" => true,
        _ => return Err(bad()),
    };
    let value = value
        .trim()
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .ok_or_else(bad)?;
    let number = || value.parse::<i64>().map_err(|_| bad());
    match field {
        "offset" if value == "@latest" => Ok(StartAt::Latest),
        "offset" if value == "-1" => Ok(StartAt::Earliest),
        "offset" => Ok(StartAt::Offset {
            offset: number()?,
            inclusive,
        }),
        "sequence-number" => Ok(StartAt::Sequence {
            number: number()?,
            inclusive,
        }),
        "enqueued-time" => Ok(StartAt::Enqueued {
            ms: number()?,
            inclusive,
        }),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn event(partition: u32, body: &[u8], at_ms: i64) -> ReceivedEvent {
        ReceivedEvent {
            body: body.to_vec(),
            partition_key: None,
            message_id: Some(format!("m{at_ms}")),
            properties: BTreeMap::new(),
            content_type: None,
            content_encoding: None,
            encoded: None,
            decode_error: None,
            partition,
            arrived: DateTime::<Utc>::from_timestamp_millis(at_ms).unwrap_or_default(),
        }
    }

    #[test]
    fn numbers_like_the_service_and_reads_from_any_position() {
        let p = Partitions::new(2, 1 << 20);
        assert_eq!(p.info(0).map(|i| i.last_sequence_number), Some(-1));
        p.append(&[
            event(0, b"aaaa", 10),
            event(1, b"b", 11),
            event(0, b"cc", 5),
        ]);
        let all = p.read(0, 0, 10);
        let shown: Vec<(i64, i64, i64)> = all
            .iter()
            .map(|e| (e.sequence_number, e.offset, e.enqueued_ms))
            .collect();
        // The third arrived "earlier" by the clock: enqueued times never go backwards.
        assert_eq!(shown, [(0, 0, 10), (1, 4, 10)]);
        assert_eq!(p.read(1, 0, 10)[0].sequence_number, 0);
        assert_eq!(p.resolve(0, StartAt::Earliest), 0);
        assert_eq!(p.resolve(0, StartAt::Latest), 2);
        let offset = |offset, inclusive| StartAt::Offset { offset, inclusive };
        assert_eq!(p.resolve(0, offset(0, false)), 1);
        assert_eq!(p.resolve(0, offset(4, true)), 1);
        assert_eq!(p.resolve(0, offset(4, false)), 2);
        let seq = |number, inclusive| StartAt::Sequence { number, inclusive };
        assert_eq!(p.resolve(0, seq(0, false)), 1);
        assert_eq!(p.resolve(0, seq(0, true)), 0);
        assert_eq!(p.resolve(0, seq(99, true)), 2);
        let info = p.info(0).unwrap();
        assert_eq!(
            (
                info.begin_sequence_number,
                info.last_sequence_number,
                info.last_offset
            ),
            (0, 1, 4)
        );
        assert!(!info.is_empty);
    }

    #[test]
    fn retention_trims_the_oldest_and_keeps_the_numbers() {
        let p = Partitions::new(1, 10);
        for i in 0..5 {
            p.append(&[event(0, b"12345", i)]);
        }
        let kept = p.read(0, 0, 10);
        assert_eq!(
            kept.iter().map(|e| e.sequence_number).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(p.resolve(0, StartAt::Earliest), 3);
        assert_eq!(p.info(0).map(|i| i.begin_sequence_number), Some(3));
    }

    #[test]
    fn selectors_the_sdks_send() {
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-offset > '-1'"),
            Ok(StartAt::Earliest)
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-offset > '@latest'"),
            Ok(StartAt::Latest)
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-offset >= '120'"),
            Ok(StartAt::Offset {
                offset: 120,
                inclusive: true
            })
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-sequence-number > '5'"),
            Ok(StartAt::Sequence {
                number: 5,
                inclusive: false
            })
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-enqueued-time > '1700000000000'"),
            Ok(StartAt::Enqueued {
                ms: 1_700_000_000_000,
                inclusive: false
            })
        );
        for bad in [
            "",
            "amqp.annotation.x-opt-offset",
            "amqp.annotation.x-opt-offset < '1'",
            "amqp.annotation.x-opt-offset > 1",
            "amqp.annotation.x-opt-offset > 'x'",
            "amqp.annotation.x-opt-colour > '1'",
            "x-opt-offset > '1'",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }
}
