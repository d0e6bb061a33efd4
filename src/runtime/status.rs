//! What the running gateway is doing, read live by `/metrics`, `/readyz` and the one-line
//! summary in the log.
//!
//! Components keep their own atomics (mapping counters per tag map, the sink's stats, the
//! journal's depth); this module only reads them. Nothing here is on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::journal::Journal;
use crate::mapping::MappingCounters;
use crate::sink::eventhub::sink::{SinkState, SinkStats};
use crate::source::SourceCounters;
use crate::telemetry::metrics::{single, Labels, Metrics, Points};

/// Live mapping counters of one tag map.
#[derive(Debug, Default)]
pub struct MapStats {
    pub samples: AtomicU64,
    pub readings: AtomicU64,
    pub suppressed: AtomicU64,
    pub non_finite: AtomicU64,
    /// Readings made of OPC UA events (included in `readings`).
    pub events: AtomicU64,
}

impl MapStats {
    /// Publishes a mapper's running totals.
    pub fn store(&self, c: &MappingCounters) {
        self.samples.store(c.samples, Ordering::Relaxed);
        self.readings.store(c.readings, Ordering::Relaxed);
        self.suppressed.store(c.suppressed, Ordering::Relaxed);
        self.non_finite.store(c.non_finite, Ordering::Relaxed);
        self.events.store(c.events, Ordering::Relaxed);
    }
}

/// The sink side, when the output is an event hub.
#[derive(Clone)]
pub struct SinkView {
    pub state: watch::Receiver<SinkState>,
    pub stats: Arc<SinkStats>,
    pub journal: Arc<Journal>,
}

/// One running tag map.
#[derive(Debug, Clone)]
pub struct MapEntry {
    /// The file stem, the `tag_map` label.
    pub name: Arc<str>,
    pub stats: Arc<MapStats>,
    pub source: SourceCounters,
}

/// The tag maps running now; a reload replaces entries.
pub type RunningMaps = Arc<RwLock<Vec<MapEntry>>>;

/// Everything `/metrics`, `/readyz` and the summary line read.
#[derive(Clone, Default)]
pub struct GatewayStatus {
    pub maps: RunningMaps,
    /// Every Modbus source's counters, for its `tagbridge_modbus_*` families.
    pub modbus: crate::source::modbus::ModbusStats,
    pub sink: Option<SinkView>,
}

impl GatewayStatus {
    fn maps(&self) -> Vec<MapEntry> {
        self.maps.read().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn readings_total(&self) -> u64 {
        self.maps()
            .iter()
            .map(|m| m.stats.readings.load(Ordering::Relaxed))
            .sum()
    }

    /// The hub's state and the spool's depth, for the live view (`none` without a hub).
    pub fn hub_and_spool(&self) -> (String, Option<u64>) {
        match &self.sink {
            None => ("none (lines output)".into(), None),
            Some(view) => (view.state.borrow().to_string(), Some(view.journal.depth())),
        }
    }

    /// Ready when at least one source runs and the sink (if any) is connected and authorised.
    /// The JSON says which part is not.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let maps = self.maps();
        let running = maps.len();
        // One read of each source's state: a map is in exactly one of the two lists.
        let mut connected: Vec<&str> = Vec::new();
        let mut disconnected: Vec<&str> = Vec::new();
        // Why each disconnected source is down, with the next step, where it says.
        let mut reasons = serde_json::Map::new();
        for m in &maps {
            if m.source.connected() {
                connected.push(&m.name);
            } else {
                disconnected.push(&m.name);
                if let Some(reason) = m.source.reason() {
                    reasons.insert(m.name.to_string(), reason.into());
                }
            }
        }
        let sources_ok = !connected.is_empty();
        let (sink_ok, sink_detail) = match &self.sink {
            None => (true, "lines output".to_string()),
            Some(view) => {
                let state = view.state.borrow().clone();
                (matches!(state, SinkState::Connected), state.to_string())
            }
        };
        (
            sources_ok && sink_ok,
            serde_json::json!({
                "sources": {"ok": sources_ok, "running": running, "connected": connected, "disconnected": disconnected, "reasons": reasons},
                "sink": {"ok": sink_ok, "state": sink_detail},
            }),
        )
    }

    /// Registers every family on `metrics`.
    pub fn register(&self, metrics: &Metrics) {
        let status = self.clone();
        let per_map = move |read: fn(&MapStats) -> u64| {
            let status = status.clone();
            move |points: &mut Points| {
                for m in &status.maps() {
                    let labels: Labels = vec![("tag_map".into(), m.name.to_string())];
                    points.push((labels, read(&m.stats) as f64));
                }
            }
        };
        self.register_sources(metrics);
        metrics.counter(
            "tagbridge_samples",
            "Values received from sources, per tag map.",
            per_map(|s| s.samples.load(Ordering::Relaxed)),
        );
        metrics.counter(
            "tagbridge_readings",
            "Readings produced by the mapping stage, per tag map.",
            per_map(|s| s.readings.load(Ordering::Relaxed)),
        );
        metrics.counter(
            "tagbridge_event_readings",
            "Readings made of OPC UA events (alarm transitions, refreshed conditions), per tag map.",
            per_map(|s| s.events.load(Ordering::Relaxed)),
        );
        metrics.counter(
            "tagbridge_readings_suppressed",
            "Values held back by deadband or unchanged, per tag map.",
            per_map(|s| s.suppressed.load(Ordering::Relaxed)),
        );
        metrics.counter(
            "tagbridge_readings_non_finite",
            "NaN or infinite values skipped (not representable in JSON), per tag map.",
            per_map(|s| s.non_finite.load(Ordering::Relaxed)),
        );
        let Some(view) = &self.sink else {
            return;
        };
        // The sink's own families (counters, latency, token expiry, connected).
        crate::sink::eventhub::stats::register(metrics, &view.stats, &view.state);
        let journal = view.journal.clone();
        metrics.gauge(
            "tagbridge_spool_depth_records",
            "Readings waiting for the hub's acknowledgement.",
            move |points: &mut Points| single(journal.depth() as f64)(points),
        );
        // The durable spool's size, drops and backlog age (nothing with the memory journal).
        if view.journal.spool_status().is_some() {
            let journal = view.journal.clone();
            metrics.gauge(
                "tagbridge_spool_bytes",
                "Bytes in the spool's files.",
                move |p: &mut Points| {
                    single(journal.spool_status().unwrap_or_default().bytes as f64)(p)
                },
            );
            let journal = view.journal.clone();
            metrics.counter(
                "tagbridge_spool_dropped",
                "Readings dropped by the spool (full, too old, disk full), over its life.",
                move |p: &mut Points| {
                    single(journal.spool_status().unwrap_or_default().dropped as f64)(p)
                },
            );
            let journal = view.journal.clone();
            metrics.gauge(
                "tagbridge_spool_quarantined_files",
                "Files in the spool directory set aside because the spool could not have written them.",
                move |p: &mut Points| {
                    single(journal.spool_status().unwrap_or_default().quarantined as f64)(p)
                },
            );
            let journal = view.journal.clone();
            metrics.gauge(
                "tagbridge_spool_oldest_age_seconds",
                "Age of the oldest unacknowledged reading (0 when none).",
                move |p: &mut Points| {
                    let age = journal.spool_status().and_then(|s| s.oldest_age);
                    single(age.map_or(0.0, |a| a.as_secs_f64()))(p)
                },
            );
        }
    }

    /// Per-source families: connection state and what each protocol counts.
    fn register_sources(&self, metrics: &Metrics) {
        let status = self.clone();
        metrics.gauge(
            "tagbridge_source_connected",
            "1 when the source has a working connection to its device.",
            move |points: &mut Points| {
                for m in &status.maps() {
                    let labels: Labels = vec![
                        ("tag_map".into(), m.name.to_string()),
                        ("protocol".into(), m.source.protocol().into()),
                    ];
                    points.push((labels, f64::from(u8::from(m.source.connected()))));
                }
            },
        );
        // Modbus families (requests, exceptions, timeouts, overruns, quarantine, cycle time).
        self.modbus.register(metrics);
        // OPC UA families, beside the source's code.
        let status = self.clone();
        crate::source::opcua::stats::register(metrics, move || {
            let maps = status.maps();
            let opcua = maps.iter().filter_map(|m| match &m.source {
                SourceCounters::OpcUa(c) => Some((m.name.to_string(), Arc::clone(c))),
                SourceCounters::Modbus(_) => None,
            });
            opcua.collect()
        });
    }

    /// Logs one info line every `every` (readings/s, queue depth, hub state) until cancelled.
    pub async fn log_summaries(self, every: Duration, cancel: CancellationToken) {
        let mut last = (Instant::now(), self.readings_total());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let now = (Instant::now(), self.readings_total());
            let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-9);
            let rate = (now.1 - last.1) as f64 / secs;
            last = now;
            match &self.sink {
                Some(view) => tracing::info!(
                    message = "Summary.",
                    readings_per_s = format!("{rate:.1}"),
                    spool_depth = view.journal.depth(),
                    hub = %*view.state.borrow(),
                    accepted = view.stats.events_accepted.load(Ordering::Relaxed),
                ),
                None => {
                    tracing::info!(message = "Summary.", readings_per_s = format!("{rate:.1}"),)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, stats: Arc<MapStats>, connected: bool) -> MapEntry {
        let counters = crate::source::modbus::ModbusCounters::default();
        counters
            .connected
            .store(u64::from(connected), Ordering::Relaxed);
        MapEntry {
            name: name.into(),
            stats,
            source: SourceCounters::Modbus(Arc::new(counters)),
        }
    }

    #[test]
    fn readiness_names_the_part_that_is_not_ready() {
        let (tx, rx) = watch::channel(SinkState::Unauthorized("key `send` refused".into()));
        let status = GatewayStatus {
            maps: Arc::new(RwLock::new(vec![entry("press-3", Arc::default(), true)])),
            sink: Some(SinkView {
                state: rx,
                stats: Arc::default(),
                journal: Arc::new(Journal::memory(8)),
            }),
            ..Default::default()
        };
        let (ready, detail) = status.readiness();
        assert!(!ready);
        assert_eq!(detail["sink"]["ok"], false);
        assert!(detail["sink"]["state"]
            .as_str()
            .is_some_and(|s| s.contains("key `send` refused")));
        tx.send_replace(SinkState::Connected);
        assert!(status.readiness().0);
        status.maps.write().unwrap().clear();
        let (ready, detail) = status.readiness();
        assert!(!ready);
        assert_eq!(detail["sources"]["ok"], false);
    }

    #[test]
    fn readiness_says_why_a_source_is_down() {
        let opcua = Arc::new(crate::source::opcua::OpcUaCounters::default());
        opcua.set_reason(Some(
            "refused the login of user `op` (BadUserAccessDenied)".into(),
        ));
        let status = GatewayStatus {
            maps: Arc::new(RwLock::new(vec![MapEntry {
                name: "line1".into(),
                stats: Arc::default(),
                source: SourceCounters::OpcUa(opcua),
            }])),
            ..Default::default()
        };
        let (ready, detail) = status.readiness();
        assert!(!ready);
        assert!(detail["sources"]["reasons"]["line1"]
            .as_str()
            .is_some_and(|r| r.contains("BadUserAccessDenied")));
    }

    #[test]
    fn metrics_read_live_counters() {
        let stats = Arc::new(MapStats::default());
        let status = GatewayStatus {
            maps: Arc::new(RwLock::new(vec![entry("line1", stats.clone(), true)])),
            ..Default::default()
        };
        let metrics = Metrics::default();
        status.register(&metrics);
        stats.store(&MappingCounters {
            samples: 5,
            readings: 3,
            ..Default::default()
        });
        let text = metrics.render();
        assert!(
            text.contains("tagbridge_readings_total{tag_map=\"line1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tagbridge_samples_total{tag_map=\"line1\"} 5"),
            "{text}"
        );
    }
}
