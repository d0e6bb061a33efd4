//! The mapping task of one tag map: receives its adapter's sample batches, maps them to
//! readings (heartbeats come with the source's confirmations), and hands the readings to the
//! output. It ends when the adapter drops its sender, after adding its counters to the run's totals.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::mapping::{Mapper, MappingCounters};
use crate::reading::Reading;
use crate::sample::{Item, SampleBatch};
use crate::telemetry::live::LiveMap;

use super::delivery::TaggedReadings;
use super::status::MapStats;

/// Sample batches queued per tag map before its adapter waits.
pub(crate) const SAMPLE_QUEUE: usize = 64;

pub(crate) async fn map_task(
    name: Arc<str>,
    mut mapper: Mapper,
    mut samples: mpsc::Receiver<SampleBatch>,
    readings: mpsc::Sender<TaggedReadings>,
    totals: Arc<std::sync::Mutex<MappingCounters>>,
    stats: Arc<MapStats>,
    live: Option<Arc<LiveMap>>,
) {
    // Ends when the adapter has stopped: nothing more will come.
    while let Some(batch) = samples.recv().await {
        super::supervise::fault_point("mapping");
        let mut out: Vec<Reading> = Vec::new();
        match &live {
            None => mapper.apply(&batch, &mut out),
            // The live view: a few relaxed atomic stores per sample, no lock.
            Some(live) => {
                let now_ms = chrono::Utc::now().timestamp_millis();
                for item in batch.items() {
                    match item {
                        Item::Sample(s) => {
                            let non_finite = mapper.counters().non_finite;
                            let reading = mapper.map(s);
                            let skipped = mapper.counters().non_finite != non_finite;
                            live.observe(s.tag, reading.as_ref(), skipped, now_ms);
                            out.extend(reading);
                        }
                        Item::Event(e) => mapper.event(e, &mut out),
                    }
                }
            }
        }
        stats.store(&mapper.counters());
        if !out.is_empty() && readings.send((name.clone(), out)).await.is_err() {
            break;
        }
    }
    if let Ok(mut t) = totals.lock() {
        let c = mapper.counters();
        t.samples += c.samples;
        t.readings += c.readings;
        t.suppressed += c.suppressed;
        t.non_finite += c.non_finite;
        t.unknown_tag += c.unknown_tag;
    }
}
