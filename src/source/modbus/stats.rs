//! Prometheus families for every running Modbus source, labelled by tag map.
//!
//! [`ModbusStats`] holds a weak reference to each source's [`ModbusCounters`]: a source that
//! stops (shutdown, or its tag map removed by a reload) drops its counters and disappears from
//! the next scrape; nothing has to unregister. Values are read at scrape time.

use std::sync::{Arc, Mutex, Weak};

use super::counters::{CountersSnapshot, ModbusCounters};
use crate::telemetry::metrics::{Metrics, Points};

type Read = fn(&CountersSnapshot) -> f64;
/// Tag map path and its source's counters.
type Entry = (String, Weak<ModbusCounters>);

/// (name, help, read) of each counter family; `_total` is appended by the encoder.
const COUNTERS: [(&str, &str, Read); 14] = [
    (
        "tagbridge_modbus_requests",
        "Modbus read requests sent, retries and splits included.",
        |c| c.requests as f64,
    ),
    (
        "tagbridge_modbus_responses",
        "Modbus normal responses received.",
        |c| c.responses as f64,
    ),
    (
        "tagbridge_modbus_exceptions",
        "Modbus exception responses (the device refused a read).",
        |c| c.exceptions as f64,
    ),
    (
        "tagbridge_modbus_timeouts",
        "Modbus requests without an answer within the timeout.",
        |c| c.timeouts as f64,
    ),
    (
        "tagbridge_modbus_link_errors",
        "Modbus requests that failed on the link (closed, reset, garbled).",
        |c| c.link_errors as f64,
    ),
    (
        "tagbridge_modbus_retries",
        "Modbus requests sent again on a new connection.",
        |c| c.retries as f64,
    ),
    (
        "tagbridge_modbus_connects",
        "Modbus connections opened.",
        |c| c.connects as f64,
    ),
    (
        "tagbridge_modbus_connect_failures",
        "Modbus connection attempts that failed.",
        |c| c.connect_failures as f64,
    ),
    (
        "tagbridge_modbus_cycles",
        "Modbus poll cycles completed.",
        |c| c.cycles as f64,
    ),
    (
        "tagbridge_modbus_overruns",
        "Modbus poll cycles longer than their interval (missed cycles skipped).",
        |c| c.overruns as f64,
    ),
    (
        "tagbridge_modbus_samples",
        "Values read from Modbus devices and passed to the mapping stage.",
        |c| c.samples as f64,
    ),
    (
        "tagbridge_modbus_decode_errors",
        "Modbus responses too short for a tag they should hold.",
        |c| c.decode_errors as f64,
    ),
    (
        "tagbridge_modbus_quarantines",
        "Modbus tags put in quarantine after the device refused them.",
        |c| c.quarantines as f64,
    ),
    (
        "tagbridge_modbus_skipped_reads",
        "Modbus reads skipped while their unit backed off after timeouts.",
        |c| c.skipped_unit_down as f64,
    ),
];

/// (name, help, read) of each gauge family.
const GAUGES: [(&str, &str, Read); 4] = [
    (
        "tagbridge_modbus_connected",
        "1 while the Modbus connection is open.",
        |c| c.connected as f64,
    ),
    (
        "tagbridge_modbus_quarantined_tags",
        "Modbus tags in quarantine now.",
        |c| c.quarantined_tags as f64,
    ),
    (
        "tagbridge_modbus_last_cycle_seconds",
        "Duration of the last Modbus poll cycle.",
        |c| c.last_cycle_micros as f64 / 1e6,
    ),
    (
        "tagbridge_modbus_last_cycle_reads",
        "Read requests the last Modbus poll cycle sent.",
        |c| c.last_cycle_reads as f64,
    ),
];

/// The counters of every Modbus source, for metrics. Clone freely; clones share the list.
#[derive(Debug, Clone, Default)]
pub struct ModbusStats {
    sources: Arc<Mutex<Vec<Entry>>>,
}

impl ModbusStats {
    /// Adds a source's counters under the label `tag_map` (its file path).
    pub fn add(&self, tag_map: &str, counters: &Arc<ModbusCounters>) {
        if let Ok(mut list) = self.sources.lock() {
            list.retain(|(_, c)| c.strong_count() > 0);
            list.push((tag_map.to_string(), Arc::downgrade(counters)));
        }
    }

    /// Registers every `tagbridge_modbus_*` family on `metrics`.
    pub fn register(&self, metrics: &Metrics) {
        for (name, help, read) in COUNTERS {
            metrics.counter(name, help, self.reader(read));
        }
        for (name, help, read) in GAUGES {
            metrics.gauge(name, help, self.reader(read));
        }
    }

    fn reader(&self, read: Read) -> impl Fn(&mut Points) + Send + Sync + 'static {
        let stats = self.clone();
        move |points: &mut Points| {
            let Ok(list) = stats.sources.lock() else {
                return;
            };
            for (tag_map, counters) in list.iter() {
                if let Some(c) = counters.upgrade() {
                    points.push((
                        vec![("tag_map".to_string(), tag_map.clone())],
                        read(&c.snapshot()),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn families_are_labelled_by_tag_map_and_follow_the_sources_life() {
        let metrics = Metrics::default();
        let stats = ModbusStats::default();
        stats.register(&metrics);
        let counters = Arc::new(ModbusCounters::default());
        counters.requests.store(3, Ordering::Relaxed);
        counters.last_cycle_micros.store(2_500, Ordering::Relaxed);
        stats.add("tag-maps/press-3.yaml", &counters);
        let text = metrics.render();
        assert!(
            text.contains("tagbridge_modbus_requests_total{tag_map=\"tag-maps/press-3.yaml\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "tagbridge_modbus_last_cycle_seconds{tag_map=\"tag-maps/press-3.yaml\"} 0.0025"
            ),
            "{text}"
        );
        drop(counters);
        assert!(!metrics.render().contains("press-3"));
    }
}
