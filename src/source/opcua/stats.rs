//! Prometheus families for every running OPC UA source, labelled by tag map: what
//! [`OpcUaCounters`] counts, read at scrape time.
//!
//! The caller says which sources run now (a closure over the running tag maps), so a source
//! whose tag map is removed by a reload disappears from the next scrape.

use std::sync::Arc;

use super::OpcUaCounters;
use crate::telemetry::metrics::{Metrics, Points};

type Read = fn(&OpcUaCounters) -> u64;
/// (name, help, read) of one family.
type Family = (&'static str, &'static str, Read);

/// Gauge families.
const GAUGES: [Family; 3] = [
    (
        "tagbridge_opcua_monitored_items",
        "Tags with a monitored item now.",
        OpcUaCounters::monitored_items,
    ),
    (
        "tagbridge_opcua_failed_items",
        "Tags not read: monitored item not created (retried), or node gone from the server.",
        OpcUaCounters::failed_items,
    ),
    (
        "tagbridge_opcua_bad_tags",
        "Tags whose last value had a Bad status.",
        |c| OpcUaCounters::get(&c.tags_bad),
    ),
];

/// Counter families; `_total` is appended by the encoder.
const COUNTERS: [Family; 14] = [
    (
        "tagbridge_opcua_subscriptions_created",
        "Subscriptions created.",
        |c| OpcUaCounters::get(&c.subscriptions_created),
    ),
    (
        "tagbridge_opcua_reconnects",
        "Sessions re-established after a lost connection.",
        |c| OpcUaCounters::get(&c.reconnects),
    ),
    (
        "tagbridge_opcua_connect_failures",
        "Connection attempts that failed (unreachable, untrusted, refused login, ...).",
        |c| OpcUaCounters::get(&c.connect_failures),
    ),
    (
        "tagbridge_opcua_bad_values",
        "Notifications with a Bad status (not sent).",
        |c| OpcUaCounters::get(&c.bad),
    ),
    (
        "tagbridge_opcua_uncertain_values",
        "Notifications with an Uncertain status.",
        |c| OpcUaCounters::get(&c.uncertain),
    ),
    (
        "tagbridge_opcua_unsupported_values",
        "Values with no reading form (arrays, structures, null), not sent.",
        |c| OpcUaCounters::get(&c.unsupported),
    ),
    (
        "tagbridge_opcua_overflow_dropped",
        "Values dropped because the forwarding queue was full.",
        |c| OpcUaCounters::get(&c.overflow_dropped),
    ),
    (
        "tagbridge_opcua_messages",
        "Publish responses with data received.",
        |c| OpcUaCounters::get(&c.messages),
    ),
    (
        "tagbridge_opcua_republished",
        "Notification messages lost in transit and recovered with Republish.",
        |c| OpcUaCounters::get(&c.republished),
    ),
    (
        "tagbridge_opcua_lost_messages",
        "Notification messages lost in transit that the server could not republish.",
        |c| OpcUaCounters::get(&c.lost_messages),
    ),
    (
        "tagbridge_opcua_readings",
        "Values received from OPC UA servers and passed to the mapping stage.",
        |c| OpcUaCounters::get(&c.readings),
    ),
    (
        "tagbridge_opcua_events",
        "OPC UA events (alarm transitions, refreshed conditions) passed to the mapping stage.",
        |c| OpcUaCounters::get(&c.events),
    ),
    (
        "tagbridge_opcua_events_dropped",
        "OPC UA events dropped because the mapping stage was far behind.",
        |c| OpcUaCounters::get(&c.events_dropped),
    ),
    (
        "tagbridge_opcua_condition_refreshes",
        "ConditionRefresh calls the server accepted (one per connect of a tag map with events).",
        |c| OpcUaCounters::get(&c.event_refreshes),
    ),
];

/// Registers every `tagbridge_opcua_*` family on `metrics`. `sources` lists the running OPC
/// UA sources as (tag map label, counters) at scrape time.
pub fn register<F>(metrics: &Metrics, sources: F)
where
    F: Fn() -> Vec<(String, Arc<OpcUaCounters>)> + Clone + Send + Sync + 'static,
{
    let reader = |read: Read| {
        let sources = sources.clone();
        move |points: &mut Points| {
            for (tag_map, c) in sources() {
                let value = read(&c) as f64;
                points.push((vec![("tag_map".to_string(), tag_map)], value));
            }
        }
    };
    for (name, help, read) in GAUGES {
        metrics.gauge(name, help, reader(read));
    }
    for (name, help, read) in COUNTERS {
        metrics.counter(name, help, reader(read));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn families_are_labelled_by_tag_map() {
        let metrics = Metrics::default();
        let counters = Arc::new(OpcUaCounters::default());
        let c = Arc::clone(&counters);
        register(&metrics, move || {
            vec![("line1".to_string(), Arc::clone(&c))]
        });
        counters.items_monitored.store(7, Ordering::Relaxed);
        counters.connect_failures.store(2, Ordering::Relaxed);
        let text = metrics.render();
        assert!(
            text.contains("tagbridge_opcua_monitored_items{tag_map=\"line1\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("tagbridge_opcua_connect_failures_total{tag_map=\"line1\"} 2"),
            "{text}"
        );
    }
}
