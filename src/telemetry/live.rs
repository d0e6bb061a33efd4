//! The live view: the last value, time and status of every tag, for `GET /api/live`, the page
//! at `/` and `tagbridge watch`.
//!
//! Invariants:
//! - The hot path takes no lock. Each tag map owns an `Arc<LiveMap>` whose `tags` is a fixed
//!   slice of [`TagSlot`]s, one per tag, indexed like the plan's tags. Only that map's mapping
//!   task writes a slot, with relaxed atomic stores (a number is its 64 bits plus a kind byte);
//!   a text value is swapped in behind an [`ArcSwapOption`] (lock-free, and text readings are
//!   only recorded when sent, that is when they change).
//! - Readers (a snapshot) load each atomic once. A snapshot taken during a write may pair a new
//!   value with the previous timestamp for one tag; the next snapshot is exact. Nothing the
//!   gateway delivers is read from here.
//! - The list of tag maps is behind an `RwLock` taken for writing only when a tag map starts or
//!   stops (reload), and for reading once per snapshot.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::mapping::plan::{ModbusTransport, SourcePlan};
use crate::mapping::TagMapPlan;
use crate::reading::{format_timestamp, write_json_str, Number, Reading, Value};

/// Points kept for the charts: one a second, ten minutes.
pub const HISTORY: usize = 600;
/// The most tags one answer lists, whatever `limit` asks.
pub const MAX_LIMIT: usize = 1_000_000;

const KIND_NONE: u8 = 0;
const KIND_INT: u8 = 1;
const KIND_UINT: u8 = 2;
const KIND_FLOAT: u8 = 3;
const KIND_TEXT: u8 = 4;

/// A tag's quality as the gateway knows it, separate from staleness (which is computed from
/// the age and the source's connection when a snapshot is taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TagQuality {
    Good = 0,
    Uncertain = 1,
    Bad = 2,
}

/// Live state of one tag. Written by its tag map's mapping task only.
#[derive(Debug)]
pub struct TagSlot {
    pub sensor_id: Arc<str>,
    /// Line of the tag in its tag map file.
    pub line: u32,
    /// How old a value may get before the tag is shown stale; `None`: never by age (a source
    /// that reports changes only, such as an OPC UA subscription).
    pub stale_after: Option<Duration>,
    kind: AtomicU8,
    bits: AtomicU64,
    text: ArcSwapOption<Arc<str>>,
    /// Source timestamp of the value shown, ms since the epoch.
    source_ms: AtomicI64,
    /// When the gateway last confirmed the value (received it, or the same value again), ms.
    seen_ms: AtomicI64,
    quality: AtomicU8,
    /// Why the tag is bad or uncertain, when it is.
    reason: ArcSwapOption<Arc<str>>,
    sent: AtomicU64,
    suppressed: AtomicU64,
}

impl TagSlot {
    pub fn new(sensor_id: Arc<str>, line: u32, stale_after: Option<Duration>) -> TagSlot {
        TagSlot {
            sensor_id,
            line,
            stale_after,
            kind: AtomicU8::new(KIND_NONE),
            bits: AtomicU64::new(0),
            text: ArcSwapOption::empty(),
            source_ms: AtomicI64::new(0),
            seen_ms: AtomicI64::new(0),
            quality: AtomicU8::new(TagQuality::Good as u8),
            reason: ArcSwapOption::empty(),
            sent: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// A value was sent: it is the one shown now.
    pub fn sent(&self, value: &Value, source: DateTime<Utc>, now_ms: i64) {
        match value {
            Value::Number(Number::Int(i)) => self.store_bits(KIND_INT, *i as u64),
            Value::Number(Number::UInt(u)) => self.store_bits(KIND_UINT, *u),
            Value::Number(Number::Float(f)) => self.store_bits(KIND_FLOAT, f.get().to_bits()),
            Value::Text(t) => {
                self.text.store(Some(Arc::new(t.clone())));
                self.kind.store(KIND_TEXT, Relaxed);
            }
            Value::Null => self.kind.store(KIND_NONE, Relaxed),
        }
        self.source_ms.store(source.timestamp_millis(), Relaxed);
        self.seen_ms.store(now_ms, Relaxed);
        // One writer per slot: a plain load and store, not a locked read-modify-write.
        self.sent
            .store(self.sent.load(Relaxed).wrapping_add(1), Relaxed);
        if self.quality.load(Relaxed) != TagQuality::Good as u8 {
            self.set_quality(TagQuality::Good, None);
        }
    }

    /// A value came in but was held back (unchanged or within the deadband): the value shown
    /// is still current, confirmed now.
    pub fn suppressed(&self, now_ms: i64) {
        self.seen_ms.store(now_ms, Relaxed);
        self.suppressed
            .store(self.suppressed.load(Relaxed).wrapping_add(1), Relaxed);
        if self.quality.load(Relaxed) != TagQuality::Good as u8 {
            self.set_quality(TagQuality::Good, None);
        }
    }

    /// Marks the tag bad or uncertain (with why), or good again.
    pub fn set_quality(&self, quality: TagQuality, reason: Option<&str>) {
        if self.quality.swap(quality as u8, Relaxed) != quality as u8 || reason.is_some() {
            self.reason.store(reason.map(|r| Arc::new(Arc::from(r))));
        }
    }

    fn store_bits(&self, kind: u8, bits: u64) {
        self.bits.store(bits, Relaxed);
        self.kind.store(kind, Relaxed);
    }

    fn write_value(&self, out: &mut String) {
        let bits = self.bits.load(Relaxed);
        match self.kind.load(Relaxed) {
            KIND_INT => {
                let _ = write!(out, "{}", bits as i64);
            }
            KIND_UINT => {
                let _ = write!(out, "{bits}");
            }
            KIND_FLOAT => match Number::float(f64::from_bits(bits)) {
                Some(n) => out.push_str(&Value::Number(n).to_string()),
                None => out.push_str("null"),
            },
            KIND_TEXT => match self.text.load().as_deref() {
                Some(t) => push_json_str(out, t),
                None => out.push_str("null"),
            },
            _ => out.push_str("null"),
        }
    }
}

/// Whether a tag map's source is connected now.
pub type ConnectedFn = Box<dyn Fn() -> bool + Send + Sync>;

/// Live state of one running tag map.
pub struct LiveMap {
    /// The file stem, as in `/metrics`' `tag_map` label.
    pub name: Arc<str>,
    /// The tag map file, as given.
    pub file: String,
    /// `modbus` or `opcua`.
    pub protocol: &'static str,
    /// The device: `host:port`, a serial port or an OPC UA endpoint.
    pub endpoint: String,
    pub connected: ConnectedFn,
    pub tags: Box<[TagSlot]>,
    /// Readings made of OPC UA events (`events:`), counted by the mapping task.
    pub events: AtomicU64,
}

impl LiveMap {
    /// The live state of a tag map about to start, every tag waiting for its first value.
    pub fn for_plan(plan: &TagMapPlan, name: Arc<str>, connected: ConnectedFn) -> LiveMap {
        let (protocol, endpoint, poll_timeout) = match &plan.source {
            SourcePlan::Modbus(m) => (
                "modbus",
                match &m.transport {
                    ModbusTransport::Tcp(addr) => addr.clone(),
                    ModbusTransport::RtuOverTcp(addr) => format!("{addr} (RTU over TCP)"),
                    ModbusTransport::Serial { port, baud, .. } => format!("{port} @ {baud}"),
                },
                Some(m.timeout),
            ),
            SourcePlan::OpcUa(o) => ("opcua", o.endpoint.clone(), None),
        };
        let tags = plan
            .tags
            .iter()
            .map(|t| {
                // A polled tag is confirmed every interval: three missed polls (each allowed its
                // timeout) and a second of slack make it stale. A subscribed tag reports changes
                // only, so its age says nothing; it is stale when the session is down.
                let stale_after =
                    poll_timeout.map(|timeout| 3 * (t.interval + timeout) + Duration::from_secs(1));
                TagSlot::new(t.sensor_id.clone(), t.pos.line, stale_after)
            })
            .collect();
        LiveMap {
            name,
            file: plan.path.display().to_string(),
            protocol,
            endpoint,
            connected,
            tags,
            events: AtomicU64::new(0),
        }
    }

    /// One reading made of an OPC UA event.
    pub fn event(&self) {
        self.events.fetch_add(1, Relaxed);
    }

    /// Tag `tag` cannot be read now, because of `cause`.
    pub fn bad(&self, tag: usize, cause: &str) {
        if let Some(slot) = self.tags.get(tag) {
            slot.set_quality(TagQuality::Bad, Some(cause));
        }
    }

    /// Records what the mapping stage did with one sample of tag `tag`: sent `reading`, or held
    /// it back (`None`; `non_finite` when it was NaN or infinite, not merely unchanged).
    #[inline]
    pub fn observe(&self, tag: usize, reading: Option<&Reading>, non_finite: bool, now_ms: i64) {
        let Some(slot) = self.tags.get(tag) else {
            return;
        };
        match reading {
            Some(r) => slot.sent(&r.value, r.timestamp, now_ms),
            None if non_finite => {
                slot.seen_ms.store(now_ms, Relaxed);
                if slot.quality.load(Relaxed) != TagQuality::Uncertain as u8 {
                    slot.set_quality(
                        TagQuality::Uncertain,
                        Some("not a finite number (NaN or infinity)"),
                    );
                }
            }
            None => slot.suppressed(now_ms),
        }
    }
}

impl std::fmt::Debug for LiveMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveMap")
            .field("name", &self.name)
            .field("tags", &self.tags.len())
            .finish()
    }
}

/// The sink side: hub state and spool depth, read once per snapshot.
pub type GatewayFn = Box<dyn Fn() -> (String, Option<u64>) + Send + Sync>;

/// One point of the charts.
#[derive(Debug, Clone, Copy)]
struct Point {
    at_ms: i64,
    readings_per_s: f64,
    spool_depth: Option<u64>,
}

/// Every running tag map's live state, plus the recent history for charts.
#[derive(Default)]
pub struct LiveView {
    maps: RwLock<Vec<Arc<LiveMap>>>,
    gateway: Mutex<Option<GatewayFn>>,
    history: Mutex<std::collections::VecDeque<Point>>,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView").finish_non_exhaustive()
    }
}

/// What a snapshot lists.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Substring of the sensor_id or the tag map's name (case-insensitive); empty: all.
    pub filter: String,
    /// Only tags with this status (`good`, `stale`, `bad`, `uncertain`, `waiting`, or
    /// `problem` for anything but good).
    pub status: Option<String>,
    /// At most this many tags (after filtering); the counts still cover every tag.
    pub limit: Option<usize>,
}

impl Query {
    /// From a URL query string: `q=…&status=…&limit=…` (percent-encoded).
    pub fn parse(query: Option<&str>) -> Query {
        let mut q = Query::default();
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(&value.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            match key {
                "q" | "filter" => q.filter = value,
                "status" if !value.is_empty() => q.status = Some(value),
                "limit" => q.limit = value.parse().ok(),
                _ => {}
            }
        }
        q
    }
}

impl LiveView {
    pub fn new() -> LiveView {
        LiveView::default()
    }

    /// Adds (or replaces, by name) a running tag map.
    pub fn add(&self, map: Arc<LiveMap>) {
        if let Ok(mut maps) = self.maps.write() {
            maps.retain(|m| m.name != map.name);
            maps.push(map);
            maps.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }

    /// Removes a tag map that stopped.
    pub fn remove(&self, name: &str) {
        if let Ok(mut maps) = self.maps.write() {
            maps.retain(|m| &*m.name != name);
        }
    }

    /// Sets how the hub state and spool depth are read.
    pub fn set_gateway(&self, gateway: GatewayFn) {
        if let Ok(mut g) = self.gateway.lock() {
            *g = Some(gateway);
        }
    }

    fn maps(&self) -> Vec<Arc<LiveMap>> {
        self.maps.read().map(|m| m.clone()).unwrap_or_default()
    }

    fn readings_total(&self) -> u64 {
        self.maps()
            .iter()
            .flat_map(|m| m.tags.iter())
            .map(|t| t.sent.load(Relaxed))
            .sum()
    }

    /// Records one chart point a second until cancelled.
    pub async fn record_history(self: Arc<Self>, cancel: CancellationToken) {
        let every = Duration::from_secs(1);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(tokio::time::Instant, u64)> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let now = (tokio::time::Instant::now(), self.readings_total());
            let rate = match last {
                Some((at, n)) => {
                    now.1.saturating_sub(n) as f64
                        / now.0.duration_since(at).as_secs_f64().max(1e-3)
                }
                None => 0.0,
            };
            last = Some(now);
            let spool_depth = self.gateway_state().1;
            if let Ok(mut h) = self.history.lock() {
                if h.len() == HISTORY {
                    h.pop_front();
                }
                h.push_back(Point {
                    at_ms: Utc::now().timestamp_millis(),
                    readings_per_s: rate,
                    spool_depth,
                });
            }
        }
    }

    fn gateway_state(&self) -> (String, Option<u64>) {
        match self.gateway.lock().ok().as_deref() {
            Some(Some(f)) => f(),
            _ => ("none (lines output)".into(), None),
        }
    }

    /// The JSON answer of `GET /api/live`.
    pub fn snapshot_json(&self, query: &Query) -> String {
        self.snapshot_at(query, Utc::now())
    }

    fn snapshot_at(&self, query: &Query, now: DateTime<Utc>) -> String {
        let now_ms = now.timestamp_millis();
        let maps = self.maps();
        let total: usize = maps.iter().map(|m| m.tags.len()).sum();
        let mut out = String::with_capacity(256 + total.min(query.limit.unwrap_or(total)) * 200);
        let (hub, spool) = self.gateway_state();
        out.push_str("{\"now\":\"");
        out.push_str(&format_timestamp(now));
        out.push_str("\",\"hub\":");
        push_json_str(&mut out, &hub);
        out.push_str(",\"spool_depth\":");
        push_opt(&mut out, spool);
        out.push_str(",\"history\":[");
        if let Ok(h) = self.history.lock() {
            for (i, p) in h.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    "{{\"at\":{},\"readings_per_s\":{:.1},\"spool_depth\":",
                    p.at_ms, p.readings_per_s
                );
                push_opt(&mut out, p.spool_depth);
                out.push('}');
            }
        }
        out.push_str("],\"maps\":[");
        let filter = query.filter.to_lowercase();
        let limit = query.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
        let mut listed = 0usize;
        let mut matched = 0usize;
        let mut counts = [0usize; 5];
        for (i, map) in maps.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let connected = (map.connected)();
            out.push_str("{\"name\":");
            push_json_str(&mut out, &map.name);
            out.push_str(",\"file\":");
            push_json_str(&mut out, &map.file);
            out.push_str(",\"protocol\":");
            push_json_str(&mut out, map.protocol);
            out.push_str(",\"endpoint\":");
            push_json_str(&mut out, &map.endpoint);
            let _ = write!(
                out,
                ",\"connected\":{connected},\"tag_count\":{},\"events\":{},\"tags\":[",
                map.tags.len(),
                map.events.load(Relaxed)
            );
            let map_matches = !filter.is_empty() && contains_ci(&map.name, &filter);
            let mut first = true;
            for tag in map.tags.iter() {
                let status = status_of(tag, connected, now_ms);
                counts[status as usize] += 1;
                if !map_matches && !filter.is_empty() && !contains_ci(&tag.sensor_id, &filter) {
                    continue;
                }
                if let Some(want) = &query.status {
                    let ok = match want.as_str() {
                        "problem" => status != Status::Good,
                        w => w == status.name(),
                    };
                    if !ok {
                        continue;
                    }
                }
                matched += 1;
                if listed >= limit {
                    continue;
                }
                listed += 1;
                if !first {
                    out.push(',');
                }
                first = false;
                write_tag(&mut out, tag, status, now_ms);
            }
            out.push_str("]}");
        }
        let _ = write!(
            out,
            "],\"tags_total\":{total},\"tags_matched\":{matched},\"tags_listed\":{listed},\"counts\":{{\"good\":{},\"uncertain\":{},\"bad\":{},\"stale\":{},\"waiting\":{}}}}}",
            counts[0], counts[1], counts[2], counts[3], counts[4]
        );
        out
    }
}

/// What a tag shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Good = 0,
    Uncertain = 1,
    Bad = 2,
    Stale = 3,
    /// No value yet.
    Waiting = 4,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Good => "good",
            Status::Uncertain => "uncertain",
            Status::Bad => "bad",
            Status::Stale => "stale",
            Status::Waiting => "waiting",
        }
    }
}

fn status_of(tag: &TagSlot, connected: bool, now_ms: i64) -> Status {
    let quality = tag.quality.load(Relaxed);
    if quality == TagQuality::Bad as u8 {
        return Status::Bad;
    }
    let seen = tag.seen_ms.load(Relaxed);
    if seen == 0 {
        return if connected {
            Status::Waiting
        } else {
            Status::Stale
        };
    }
    let too_old = tag
        .stale_after
        .is_some_and(|after| now_ms.saturating_sub(seen) > after.as_millis() as i64);
    if !connected || too_old {
        return Status::Stale;
    }
    if quality == TagQuality::Uncertain as u8 {
        Status::Uncertain
    } else {
        Status::Good
    }
}

fn write_tag(out: &mut String, tag: &TagSlot, status: Status, now_ms: i64) {
    out.push_str("{\"sensor_id\":");
    push_json_str(out, &tag.sensor_id);
    let _ = write!(out, ",\"line\":{},\"value\":", tag.line);
    tag.write_value(out);
    out.push_str(",\"timestamp\":");
    let source_ms = tag.source_ms.load(Relaxed);
    match DateTime::<Utc>::from_timestamp_millis(source_ms).filter(|_| source_ms != 0) {
        Some(t) => {
            out.push('"');
            out.push_str(&format_timestamp(t));
            out.push('"');
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"age_s\":");
    let seen = tag.seen_ms.load(Relaxed);
    if seen == 0 {
        out.push_str("null");
    } else {
        let _ = write!(
            out,
            "{:.3}",
            now_ms.saturating_sub(seen).max(0) as f64 / 1000.0
        );
    }
    let _ = write!(out, ",\"status\":\"{}\",\"reason\":", status.name());
    match tag.reason.load().as_deref() {
        Some(r) => push_json_str(out, r),
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        ",\"sent\":{},\"suppressed\":{}}}",
        tag.sent.load(Relaxed),
        tag.suppressed.load(Relaxed)
    );
}

/// Whether `hay` contains `needle_lower` (already lower case), ignoring case; no allocation
/// for an ASCII needle (the usual sensor_id), so filtering 100 000 tags stays cheap.
fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    if needle_lower.is_ascii() {
        let n = needle_lower.as_bytes();
        n.is_empty()
            || hay
                .as_bytes()
                .windows(n.len())
                .any(|w| w.eq_ignore_ascii_case(n))
    } else {
        hay.to_lowercase().contains(needle_lower)
    }
}

fn push_opt(out: &mut String, v: Option<u64>) {
    match v {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

fn push_json_str(out: &mut String, s: &str) {
    let mut bytes = Vec::with_capacity(s.len() + 2);
    write_json_str(&mut bytes, s);
    // write_json_str writes valid UTF-8 only: the input's bytes and ASCII escapes.
    out.push_str(&String::from_utf8_lossy(&bytes));
}

/// The page at `/`: one file, no external resources.
pub const PAGE: &str = include_str!("live.html");

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn view() -> (LiveView, Arc<LiveMap>) {
        let view = LiveView::new();
        let map = Arc::new(LiveMap {
            name: "press-3".into(),
            file: "tag-maps/press-3.yaml".into(),
            protocol: "modbus",
            endpoint: "10.0.0.5:502".into(),
            connected: Box::new(|| true),
            tags: vec![
                TagSlot::new("press-3:temp".into(), 7, Some(Duration::from_secs(3))),
                TagSlot::new("press-3:\"state\"".into(), 9, None),
                TagSlot::new("press-3:count".into(), 11, None),
            ]
            .into(),
            events: AtomicU64::new(0),
        });
        view.add(map.clone());
        (view, map)
    }

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_755_592_200_000 + ms).unwrap()
    }

    #[test]
    fn snapshot_is_valid_json_with_values_ages_and_status() {
        let (view, map) = view();
        map.tags[0].sent(
            &Value::Number(Number::float(21.5).unwrap()),
            at(0),
            at(100).timestamp_millis(),
        );
        map.tags[0].suppressed(at(600).timestamp_millis());
        map.tags[1].sent(&Value::from("Run\n"), at(0), at(0).timestamp_millis());
        let json = view.snapshot_at(&Query::default(), at(1600));
        let v: serde_json::Value = serde_json::from_str(&json).expect(&json);
        let tags = &v["maps"][0]["tags"];
        assert_eq!(tags[0]["value"], 21.5);
        assert_eq!(tags[0]["age_s"], 1.0);
        assert_eq!(tags[0]["status"], "good");
        assert_eq!(tags[0]["sent"], 1);
        assert_eq!(tags[0]["suppressed"], 1);
        assert_eq!(tags[0]["line"], 7);
        assert_eq!(tags[0]["timestamp"], "2025-08-19T08:30:00.000Z");
        assert_eq!(tags[1]["value"], "Run\n");
        assert_eq!(tags[1]["sensor_id"], "press-3:\"state\"");
        assert_eq!(tags[2]["status"], "waiting");
        assert_eq!(tags[2]["value"], serde_json::Value::Null);
        assert_eq!(v["maps"][0]["file"], "tag-maps/press-3.yaml");
        assert_eq!(v["maps"][0]["events"], 0);
        assert_eq!(v["counts"]["good"], 2);
        // Past its stale_after, a polled tag is stale.
        let json = view.snapshot_at(&Query::default(), at(4000));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["maps"][0]["tags"][0]["status"], "stale");
        assert_eq!(v["maps"][0]["tags"][1]["status"], "good");
    }

    #[test]
    fn integers_stay_exact_and_bad_carries_its_reason() {
        let (view, map) = view();
        map.tags[2].sent(&Value::Number(Number::UInt(u64::MAX)), at(0), 1);
        map.tags[0].sent(&Value::Number(Number::Int(i64::MIN)), at(0), 1);
        map.tags[0].set_quality(
            TagQuality::Bad,
            Some("Modbus exception 2 (illegal address)"),
        );
        let json = view.snapshot_at(&Query::default(), at(10));
        assert!(json.contains("\"value\":18446744073709551615"), "{json}");
        assert!(json.contains("\"value\":-9223372036854775808"), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["maps"][0]["tags"][0]["status"], "bad");
        assert_eq!(
            v["maps"][0]["tags"][0]["reason"],
            "Modbus exception 2 (illegal address)"
        );
        // The next good value clears it.
        map.tags[0].sent(&Value::from(3), at(20), at(20).timestamp_millis());
        let v: serde_json::Value =
            serde_json::from_str(&view.snapshot_at(&Query::default(), at(30))).unwrap();
        assert_eq!(v["maps"][0]["tags"][0]["status"], "good");
        assert_eq!(v["maps"][0]["tags"][0]["reason"], serde_json::Value::Null);
    }

    #[test]
    fn filters_by_text_status_and_limit() {
        let (view, map) = view();
        map.tags[0].sent(&Value::from(1), at(0), at(0).timestamp_millis());
        let q = Query::parse(Some("q=TEMP&limit=5"));
        let v: serde_json::Value = serde_json::from_str(&view.snapshot_at(&q, at(10))).unwrap();
        assert_eq!(v["maps"][0]["tags"].as_array().unwrap().len(), 1);
        assert_eq!(v["tags_total"], 3);
        assert_eq!(v["tags_matched"], 1);
        let q = Query::parse(Some("status=waiting"));
        let v: serde_json::Value = serde_json::from_str(&view.snapshot_at(&q, at(10))).unwrap();
        assert_eq!(v["tags_matched"], 2);
        // The tag map's name matches all of its tags.
        let q = Query::parse(Some("q=press-3&limit=1"));
        let v: serde_json::Value = serde_json::from_str(&view.snapshot_at(&q, at(10))).unwrap();
        assert_eq!(v["tags_matched"], 3);
        assert_eq!(v["tags_listed"], 1);
        let q = Query::parse(Some("q=%22state%22&status=problem"));
        let v: serde_json::Value = serde_json::from_str(&view.snapshot_at(&q, at(10))).unwrap();
        assert_eq!(v["tags_matched"], 1);
    }

    #[test]
    fn case_insensitive_contains() {
        assert!(contains_ci("Press-3:Temp", "press-3:t"));
        assert!(!contains_ci("Press-3", "press-4"));
        assert!(contains_ci("ÄBC", "äb"));
        assert!(contains_ci("x", ""));
        assert!(!contains_ci("ab", "abc"));
    }

    #[test]
    fn a_disconnected_source_makes_its_tags_stale() {
        let view = LiveView::new();
        let map = Arc::new(LiveMap {
            name: "m".into(),
            file: "m.yaml".into(),
            protocol: "opcua",
            endpoint: "opc.tcp://x:4840".into(),
            connected: Box::new(|| false),
            tags: vec![TagSlot::new("a".into(), 1, None)].into(),
            events: AtomicU64::new(0),
        });
        view.add(map.clone());
        map.tags[0].sent(&Value::from(1), at(0), 1);
        let v: serde_json::Value =
            serde_json::from_str(&view.snapshot_at(&Query::default(), at(10))).unwrap();
        assert_eq!(v["maps"][0]["connected"], false);
        assert_eq!(v["maps"][0]["tags"][0]["status"], "stale");
        view.remove("m");
        let v: serde_json::Value =
            serde_json::from_str(&view.snapshot_at(&Query::default(), at(10))).unwrap();
        assert_eq!(v["tags_total"], 0);
    }
}
