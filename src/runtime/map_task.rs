//! The mapping task of one tag map: receives its adapter's sample batches, maps them to
//! readings (heartbeats come with the source's confirmations), feeds the live view and quality
//! readings when they are on, and hands the readings to the output. It ends when the adapter
//! drops its sender, after adding its counters to the run's totals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::mapping::quality::QualityState;
use crate::mapping::{Mapper, MappingCounters};
use crate::reading::Reading;
use crate::sample::{Item, SampleBatch, SourceEvent};
use crate::telemetry::live::{LiveMap, TagQuality};

use super::delivery::TaggedReadings;
use super::status::MapStats;

/// Sample batches queued per tag map before its adapter waits.
pub(crate) const SAMPLE_QUEUE: usize = 64;
/// How often quality looks for polled tags that went silent (a dead device sends no event,
/// only nothing).
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
    let mut tick = tokio::time::interval(QUALITY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let plain = watch.live.is_none() && watch.quality.is_none();
    loop {
        let mut out: Vec<Reading> = Vec::new();
        let received;
        tokio::select! {
            batch = samples.recv() => {
                // The adapter has stopped: nothing more will come.
                let Some(batch) = batch else { break };
                received = batch
                    .received
                    .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
                super::supervise::fault_point("mapping");
                // At most one reading per sample (heartbeats come with events): sized once.
                out.reserve(batch.len());
                if plain {
                    mapper.apply(&batch, &mut out);
                } else {
                    observe(&mut mapper, &mut watch, &batch, &mut out);
                }
            }
            // Only with quality on: silence is a loss too.
            _ = tick.tick(), if watch.quality.is_some() => {
                received = tokio::time::Instant::now();
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
        let tagged = TaggedReadings {
            tag_map: name.clone(),
            readings: out,
            received,
        };
        if !tagged.readings.is_empty() && readings.send(tagged).await.is_err() {
            break;
        }
    }
    if let Ok(mut t) = totals.lock() {
        let c = mapper.counters();
        t.samples += c.samples;
        t.readings += c.readings;
        t.events += c.events;
        t.suppressed += c.suppressed;
        t.non_finite += c.non_finite;
        t.unknown_tag += c.unknown_tag;
    }
}

/// One batch with the live view and/or quality on: the live view gets a few relaxed atomic
/// stores per sample (no lock); quality learns which tags answer and turns the source's "lost"
/// events into one bad reading per tag and gap.
fn observe(mapper: &mut Mapper, watch: &mut Watch, batch: &SampleBatch, out: &mut Vec<Reading>) {
    let now = Instant::now();
    let now_ms = chrono::Utc::now().timestamp_millis();
    // The source's uncertain mark for the sample right after it (the live view shows it
    // whether or not quality readings are on).
    let mut mark: Option<&SourceEvent> = None;
    for item in batch.items() {
        match item {
            Item::Sample(s) => {
                let (reading, skipped) = match &mut watch.quality {
                    // Marks uncertain values, closes gaps, learns which tags answer.
                    Some(q) => q.map(mapper, s, now),
                    None => {
                        let non_finite = mapper.counters().non_finite;
                        let reading = mapper.map(s);
                        (reading, mapper.counters().non_finite != non_finite)
                    }
                };
                if let Some(live) = &watch.live {
                    live.observe(s.tag, reading.as_ref(), skipped, now_ms);
                    if let Some(SourceEvent::Uncertain {
                        tag,
                        timestamp,
                        cause,
                    }) = mark.take()
                    {
                        if let (true, Some(slot)) = (
                            *tag == s.tag && *timestamp == s.timestamp,
                            live.tags.get(s.tag),
                        ) {
                            slot.set_quality(TagQuality::Uncertain, Some(&cause.to_string()));
                        }
                    }
                }
                out.extend(reading);
            }
            Item::Event(event) => {
                let added = out.len();
                mapper.event(event, out);
                if let Some(q) = &mut watch.quality {
                    q.event(event, &mut out[added..]);
                }
                mark = matches!(event, SourceEvent::Uncertain { .. }).then_some(event);
                let SourceEvent::Lost { scope, at, cause } = event else {
                    continue;
                };
                let cause = cause.to_string();
                // The live view shows the cause whether or not quality readings are on.
                if let Some(live) = &watch.live {
                    match scope {
                        crate::sample::Scope::Source => {
                            (0..live.tags.len()).for_each(|tag| live.bad(tag, &cause))
                        }
                        crate::sample::Scope::Tag(tag) => live.bad(*tag, &cause),
                    }
                }
                let Some(q) = &mut watch.quality else {
                    continue;
                };
                let tags = match scope {
                    crate::sample::Scope::Source => q.lost_all(*at, &cause, out),
                    crate::sample::Scope::Tag(tag) => {
                        if q.lost(*tag, *at, &cause, out) {
                            vec![*tag]
                        } else {
                            Vec::new()
                        }
                    }
                };
                for tag in tags {
                    mapper.forget(tag);
                }
            }
        }
    }
}
