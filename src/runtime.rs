//! The running gateway: one adapter and one mapping task per tag map, one sink task.
//!
//! ```text
//! adapter ─Vec<Sample>─▶ mapping task ─Vec<Reading>─┐
//! adapter ─Vec<Sample>─▶ mapping task ─Vec<Reading>─┴▶ sink task
//! ```
//! Channels are bounded: a slow sink makes mapping tasks wait, which makes adapters wait.
//! Shutdown: cancel stops the adapters; each mapping task drains its channel and ends when the
//! adapter drops its sender; the sink drains and ends when every mapping task has ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mapping::{Mapper, MappingCounters, TagMapPlan};
use crate::reading::Reading;
use crate::sink::lines::{LinesError, LinesSink};
use crate::source::{self, SampleBatch};

/// Sample batches queued per tag map before its adapter waits.
const SAMPLE_QUEUE: usize = 64;
/// Reading batches queued before mapping tasks wait for the sink.
const READING_QUEUE: usize = 256;
/// How often tags with a heartbeat are checked.
const HEARTBEAT_TICK: Duration = Duration::from_millis(500);

/// Where the readings go.
#[derive(Debug, Clone)]
pub enum SinkTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Sink(#[from] LinesError),
    #[error("no source could be started; see the errors above")]
    NoSource,
}

/// What a finished run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunSummary {
    pub mapping: MappingCounters,
    pub delivered: u64,
}

/// Runs until `shutdown` is cancelled (or every source has ended), then drains and returns.
pub async fn run(
    plans: Vec<TagMapPlan>,
    sink: SinkTarget,
    shutdown: CancellationToken,
) -> Result<RunSummary, RuntimeError> {
    let mut sink = match &sink {
        SinkTarget::Stdout => LinesSink::stdout(),
        SinkTarget::File(path) => LinesSink::append_to(path).await?,
    };
    let tracker = TaskTracker::new();
    let (readings_tx, mut readings_rx) = mpsc::channel::<Vec<Reading>>(READING_QUEUE);
    let totals = Arc::new(std::sync::Mutex::new(MappingCounters::default()));
    let mut started = 0;
    for plan in &plans {
        let (tx, rx) = mpsc::channel::<SampleBatch>(SAMPLE_QUEUE);
        if let Err(error) = source::spawn(plan, tx, shutdown.child_token(), &tracker) {
            tracing::error!(message = "Source not started; the other tag maps keep running.", %error);
            continue;
        }
        started += 1;
        tracker.spawn(map_task(
            Mapper::new(plan),
            rx,
            readings_tx.clone(),
            totals.clone(),
        ));
    }
    drop(readings_tx);
    tracker.close();
    if started == 0 {
        return Err(RuntimeError::NoSource);
    }
    tracing::info!(message = "Gateway running.", tag_maps = started);

    let mut delivered = 0;
    // The sink ends when every mapping task has dropped its sender, which follows shutdown.
    while let Some(batch) = readings_rx.recv().await {
        sink.send(&batch).await?;
        delivered += batch.len() as u64;
    }
    tracker.wait().await;
    let mapping = totals.lock().map(|t| *t).unwrap_or_default();
    Ok(RunSummary { mapping, delivered })
}

async fn map_task(
    mut mapper: Mapper,
    mut samples: mpsc::Receiver<SampleBatch>,
    readings: mpsc::Sender<Vec<Reading>>,
    totals: Arc<std::sync::Mutex<MappingCounters>>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut out = Vec::new();
        tokio::select! {
            batch = samples.recv() => match batch {
                Some(batch) => out.extend(batch.iter().filter_map(|s| mapper.map(s))),
                // The adapter has stopped: nothing more will come.
                None => break,
            },
            _ = tick.tick() => mapper.heartbeats(chrono::Utc::now(), &mut out),
        }
        if !out.is_empty() && readings.send(out).await.is_err() {
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
