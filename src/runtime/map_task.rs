//! The mapping task of one tag map: receives its adapter's sample batches, maps them to
//! readings (heartbeats come with the source's confirmations), and hands the readings to the
//! output. It ends when the adapter drops its sender, after adding its counters to the run's totals.
//!
//! With quality on (docs/quality.md), a source's `Lost` event becomes one bad reading per tag,
//! and a tick finds polled tags that went silent without an event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::mapping::quality::QualityState;
use crate::mapping::{Mapper, MappingCounters};
use crate::reading::Reading;
use crate::sample::{Item, SampleBatch, Scope, SourceEvent};
use crate::telemetry::live::LiveMap;

use super::delivery::TaggedReadings;
use super::status::MapStats;

/// Sample batches queued per tag map before its adapter waits.
pub(crate) const SAMPLE_QUEUE: usize = 64;
/// With quality on: how often silent tags and lost sessions are looked for.
const QUALITY_TICK: Duration = Duration::from_millis(500);

/// What a mapping task feeds and watches besides its readings.
pub(crate) struct Watch {
    /// The live view's slots of this tag map, when the live view is served.
    pub live: Option<Arc<LiveMap>>,
    /// Quality readings, when on.
    pub quality: Option<QualityState>,
    /// Whether the source is connected now.
    pub connected: Box<dyn Fn() -> bool + Send + Sync>,
}

pub(crate) async fn map_task(
    name: Arc<str>,
    mut mapper: Mapper,
    mut samples: mpsc::Receiver<SampleBatch>,
    readings: mpsc::Sender<TaggedReadings>,
    totals: Arc<std::sync::Mutex<MappingCounters>>,
    stats: Arc<MapStats>,
    mut watch: Watch,
) {
    let plain = watch.live.is_none() && watch.quality.is_none();
    let mut tick = tokio::time::interval(QUALITY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut out: Vec<Reading> = Vec::new();
        tokio::select! {
            batch = samples.recv() => {
                // None: the adapter has stopped, nothing more will come.
                let Some(batch) = batch else { break };
                super::supervise::fault_point("mapping");
                if plain {
                    mapper.apply(&batch, &mut out);
                } else {
                    items(&batch, &mut mapper, &mut watch, &mut out);
                }
            }
            // Only with quality on: polled tags that went silent, sessions that went down.
            _ = tick.tick(), if watch.quality.is_some() => {
                if let Some(q) = &mut watch.quality {
                    let now = chrono::Utc::now();
                    for (tag, cause) in q.check(Instant::now(), now, (watch.connected)(), &mut out) {
                        // Nothing old is repeated: no heartbeat, and the next value is sent.
                        mapper.forget(tag);
                        if let Some(live) = &watch.live {
                            live.bad(tag, cause);
                        }
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

/// One batch with the live view and/or quality on: a few relaxed atomic stores per sample for
/// the live view (no lock), and the source's `Lost` events turned into bad readings.
fn items(batch: &SampleBatch, mapper: &mut Mapper, watch: &mut Watch, out: &mut Vec<Reading>) {
    let now = Instant::now();
    let now_ms = chrono::Utc::now().timestamp_millis();
    for item in batch.items() {
        match item {
            Item::Sample(s) => {
                let non_finite = mapper.counters().non_finite;
                let reading = mapper.map(s);
                let skipped = mapper.counters().non_finite != non_finite;
                if let Some(q) = &mut watch.quality {
                    if !skipped {
                        q.saw(s.tag, s.timestamp, now);
                    }
                    if reading.is_some() {
                        q.good(s.tag);
                    }
                }
                if let Some(live) = &watch.live {
                    live.observe(s.tag, reading.as_ref(), skipped, now_ms);
                }
                out.extend(reading);
            }
            Item::Event(event) => {
                mapper.event(event, out);
                if let SourceEvent::Lost { scope, at, cause } = event {
                    let cause = cause.to_string();
                    let tags = match scope {
                        Scope::Source => 0..mapper_len(watch),
                        Scope::Tag(i) => *i..i.saturating_add(1),
                    };
                    for tag in tags {
                        if let Some(q) = &mut watch.quality {
                            if q.lost(tag, *at, &cause, out) {
                                mapper.forget(tag);
                            }
                        }
                        if let Some(live) = &watch.live {
                            live.bad(tag, &cause);
                        }
                    }
                }
            }
        }
    }
}

/// Tags of the tag map, as the watchers know them.
fn mapper_len(watch: &Watch) -> usize {
    match (&watch.live, &watch.quality) {
        (Some(live), _) => live.tags.len(),
        (None, Some(q)) => q.len(),
        (None, None) => 0,
    }
}
