//! What the Event Hubs sink reports: its state (read by `/readyz`, `status` and the summary
//! line) and its counters, with the `tagbridge_eventhub_*` Prometheus families that read them
//! at scrape time (as Modbus keeps its own families beside its code).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::telemetry::metrics::{single, Metrics, Points};

/// What the sink is doing, for health checks and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkState {
    Connecting,
    Connected,
    /// The service refused the credentials; the message says which and why.
    Unauthorized(String),
    /// The last attempt failed; retrying.
    Down(String),
    Stopped,
}

/// Counters, read by metrics.
#[derive(Debug)]
pub struct SinkStats {
    pub batches_sent: AtomicU64,
    pub events_accepted: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub throttled: AtomicU64,
    pub auth_failures: AtomicU64,
    pub reconnects: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub token_renewals: AtomicU64,
    /// When the token on the open link expires (Unix seconds; 0 without a link).
    pub token_expires_at: AtomicI64,
    /// Seconds from handing a batch to the link to the hub's acceptance.
    pub send_latency: Arc<prometheus_client::metrics::histogram::Histogram>,
}

impl Default for SinkStats {
    fn default() -> Self {
        SinkStats {
            batches_sent: AtomicU64::default(),
            events_accepted: AtomicU64::default(),
            bytes_sent: AtomicU64::default(),
            throttled: AtomicU64::default(),
            auth_failures: AtomicU64::default(),
            reconnects: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            token_renewals: AtomicU64::default(),
            token_expires_at: AtomicI64::default(),
            // 1 ms … 32 s, doubling.
            send_latency: Arc::new(prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
            )),
        }
    }
}

impl std::fmt::Display for SinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkState::Connecting => f.write_str("connecting"),
            SinkState::Connected => f.write_str("connected"),
            SinkState::Unauthorized(why) => write!(f, "unauthorized: {why}"),
            SinkState::Down(why) => write!(f, "down: {why}"),
            SinkState::Stopped => f.write_str("stopped"),
        }
    }
}

/// The sink's counter families: (name, help, field). `_total` is appended by the encoder.
type SinkCounter = (&'static str, &'static str, fn(&SinkStats) -> &AtomicU64);
const SINK_COUNTERS: [SinkCounter; 8] = [
    (
        "tagbridge_eventhub_batches_sent",
        "Batch messages sent to the event hub.",
        |s| &s.batches_sent,
    ),
    (
        "tagbridge_eventhub_events_accepted",
        "Events the event hub accepted.",
        |s| &s.events_accepted,
    ),
    (
        "tagbridge_eventhub_sent_bytes",
        "Bytes of batch messages sent.",
        |s| &s.bytes_sent,
    ),
    (
        "tagbridge_eventhub_throttled",
        "Batches the hub refused as server-busy.",
        |s| &s.throttled,
    ),
    (
        "tagbridge_eventhub_auth_failures",
        "Connection attempts the hub refused for the credentials.",
        |s| &s.auth_failures,
    ),
    (
        "tagbridge_eventhub_reconnects",
        "Links dropped and re-established.",
        |s| &s.reconnects,
    ),
    (
        "tagbridge_eventhub_dead_lettered",
        "Events too large for the hub, written to the dead-letter file.",
        |s| &s.dead_lettered,
    ),
    (
        "tagbridge_eventhub_token_renewals",
        "Tokens renewed on a live link.",
        |s| &s.token_renewals,
    ),
];

/// Registers the sink's families on `metrics`.
pub fn register(metrics: &Metrics, stats: &Arc<SinkStats>, state: &watch::Receiver<SinkState>) {
    let stat = |read: fn(&SinkStats) -> &AtomicU64| {
        let stats = stats.clone();
        move |points: &mut Points| {
            points.push((Vec::new(), read(&stats).load(Ordering::Relaxed) as f64))
        }
    };
    for (name, help, read) in SINK_COUNTERS {
        metrics.counter(name, help, stat(read));
    }
    metrics.histogram(
        "tagbridge_eventhub_send_latency_seconds",
        "Seconds from handing a batch to the link to the hub's acceptance.",
        stats.send_latency.clone(),
    );
    let expiry = stats.clone();
    metrics.gauge(
        "tagbridge_eventhub_token_expiry_seconds",
        "Seconds until the token on the open link expires (renewed at 80 % of its life).",
        move |points: &mut Points| {
            let at = expiry.token_expires_at.load(Ordering::Relaxed);
            if at > 0 {
                let left = at - chrono::Utc::now().timestamp();
                single(left as f64)(points)
            }
        },
    );
    let state = state.clone();
    metrics.gauge(
        "tagbridge_eventhub_connected",
        "1 when the link to the hub is open and authorised.",
        move |points: &mut Points| {
            let up = matches!(*state.borrow(), SinkState::Connected);
            single(f64::from(u8::from(up)))(points)
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_read_live_counters_and_state() {
        let stats = Arc::new(SinkStats::default());
        let (tx, rx) = watch::channel(SinkState::Connecting);
        let metrics = Metrics::default();
        register(&metrics, &stats, &rx);
        stats.reconnects.fetch_add(2, Ordering::Relaxed);
        tx.send_replace(SinkState::Connected);
        let text = metrics.render();
        assert!(
            text.contains("tagbridge_eventhub_reconnects_total 2"),
            "{text}"
        );
        assert!(text.contains("tagbridge_eventhub_connected 1"), "{text}");
    }
}
