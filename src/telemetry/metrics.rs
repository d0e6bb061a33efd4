//! Prometheus metrics, read from the components' own counters at scrape time.
//!
//! Components keep plain atomics (cheap on the hot path, no metrics crate in their code). Each
//! registers here a family with a name, a help text and a closure that reads its current
//! points; `prometheus-client` encodes them in the Prometheus text format. Names follow the
//! conventions: `tagbridge_` prefix, units in names, counters get `_total` appended by the
//! encoder.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Label pairs of one point.
pub type Labels = Vec<(String, String)>;
/// The points of one family at one scrape.
pub type Points = Vec<(Labels, f64)>;

type ReadFn = Box<dyn Fn(&mut Points) + Send + Sync>;

struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    read: ReadFn,
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// A histogram family: the component observes into it, the scrape encodes it as it is.
type HistogramFamily = (
    &'static str,
    &'static str,
    Arc<prometheus_client::metrics::histogram::Histogram>,
);

#[derive(Debug, Default)]
struct Families(Mutex<Vec<Family>>, Mutex<Vec<HistogramFamily>>);

impl prometheus_client::collector::Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families = self.0.lock().map_err(|_| std::fmt::Error)?;
        let mut points = Points::new();
        for family in families.iter() {
            points.clear();
            (family.read)(&mut points);
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            match points.as_slice() {
                // One point without labels: no `{}` after the name.
                [(labels, value)] if labels.is_empty() => {
                    encode_point(family.kind, metric, *value)?
                }
                _ => {
                    for (labels, value) in &points {
                        encode_point(family.kind, metric.encode_family(labels)?, *value)?;
                    }
                }
            }
        }
        let histograms = self.1.lock().map_err(|_| std::fmt::Error)?;
        for (name, help, histogram) in histograms.iter() {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            histogram.encode(metric)?;
        }
        Ok(())
    }
}

fn encode_point(
    kind: MetricType,
    point: MetricEncoder<'_>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => ConstCounter::new(value as u64).encode(point),
        _ => ConstGauge::new(value).encode(point),
    }
}

/// The gateway's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    families: Arc<Families>,
}

impl Default for Metrics {
    fn default() -> Self {
        let families = Arc::new(Families::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(families.clone()));
        Metrics {
            registry: Arc::new(registry),
            families,
        }
    }
}

impl Metrics {
    /// A counter family (`_total` is appended to `name`).
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        read: impl Fn(&mut Points) + Send + Sync + 'static,
    ) {
        self.add(name, help, MetricType::Counter, Box::new(read));
    }

    /// A gauge family.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        read: impl Fn(&mut Points) + Send + Sync + 'static,
    ) {
        self.add(name, help, MetricType::Gauge, Box::new(read));
    }

    /// A histogram family the component observes into directly.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        histogram: Arc<prometheus_client::metrics::histogram::Histogram>,
    ) {
        if let Ok(mut list) = self.families.1.lock() {
            list.push((name, help, histogram));
        }
    }

    fn add(&self, name: &'static str, help: &'static str, kind: MetricType, read: ReadFn) {
        if let Ok(mut families) = self.families.0.lock() {
            families.push(Family {
                name,
                help,
                kind,
                read,
            });
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One unlabelled point.
pub fn single(value: f64) -> impl Fn(&mut Points) + Send + Sync {
    move |points: &mut Points| points.push((Vec::new(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn renders_counters_and_gauges_read_at_scrape_time() {
        let metrics = Metrics::default();
        let sent = Arc::new(AtomicU64::new(0));
        let s = sent.clone();
        metrics.counter("tagbridge_readings", "Readings produced.", move |p| {
            p.push((
                vec![("tag_map".into(), "press-3".into())],
                s.load(Ordering::Relaxed) as f64,
            ))
        });
        metrics.gauge("tagbridge_spool_bytes", "Bytes in the spool.", single(42.0));
        sent.store(7, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains("# TYPE tagbridge_readings counter"), "{text}");
        assert!(
            text.contains("tagbridge_readings_total{tag_map=\"press-3\"} 7"),
            "{text}"
        );
        assert!(text.contains("\ntagbridge_spool_bytes 42.0\n"), "{text}");
    }

    #[test]
    fn renders_histograms() {
        let metrics = Metrics::default();
        let h = Arc::new(prometheus_client::metrics::histogram::Histogram::new([
            0.01, 0.1, 1.0,
        ]));
        metrics.histogram("tagbridge_send_latency_seconds", "Latency.", h.clone());
        h.observe(0.05);
        let text = metrics.render();
        assert!(
            text.contains("# TYPE tagbridge_send_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("tagbridge_send_latency_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("tagbridge_send_latency_seconds_bucket{le=\"0.1\"} 1"),
            "{text}"
        );
    }
}
