//! The running gateway: one adapter and one mapping task per tag map, then the output.
//!
//! ```text
//! adapter ─Vec<Sample>─▶ mapping task ─Vec<Reading>─┐
//! adapter ─Vec<Sample>─▶ mapping task ─Vec<Reading>─┴▶ lines sink (stdout / file)
//!                                                    └▶ journal ─▶ Event Hub sink ─acks─▶ journal
//! ```
//! Channels are bounded: a slow output makes mapping tasks wait, which makes adapters wait.
//! Shutdown: cancel stops the adapters; each mapping task drains its channel and ends when the
//! adapter drops its sender; the output drains what it has, the Event Hub sink within a grace
//! period, after which what is unsent stays in the journal.

pub mod delivery;
pub mod gateway;
pub mod journal;
pub mod last_sent;
pub mod map_task;
pub mod reload;
pub mod status;
pub mod supervise;
pub mod tag_maps;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::gateway::PartitionKeySpec;
use crate::mapping::{MappingCounters, TagMapPlan};
use crate::sink::eventhub::sink::EventHubSink;
use crate::sink::lines::{LinesError, LinesSink};

use delivery::TaggedReadings;
use journal::Journal;
use status::{GatewayStatus, SinkView};
use tag_maps::TagMaps;

pub use gateway::{prepare, prepare_with, Gateway, Prepared, Secrets, Tweaks};

/// Reading batches queued before mapping tasks wait for the output.
const READING_QUEUE: usize = 256;

/// Where the readings go.
pub enum Output {
    Stdout,
    File(PathBuf),
    EventHub {
        sink: Box<EventHubSink>,
        journal: Arc<Journal>,
        partition: PartitionKeySpec,
        /// After shutdown starts, how long the sink may keep delivering.
        grace: Duration,
        /// The last reading handed to the journal per sensor, so none is sent twice.
        last_sent: Arc<last_sent::LastSent>,
    },
}

/// Operations settings of a run.
#[derive(Debug)]
pub struct RunOptions {
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None`: not at all.
    pub metrics: Option<SocketAddr>,
    /// Told the address actually bound (port 0 picks a free one; tests use that).
    pub metrics_bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    /// How often to log the one-line summary.
    pub summary_every: Duration,
    /// Live reload of tag maps; `None`: the tag maps given are run as they are.
    pub reload: Option<reload::Reload>,
    /// Serve the live view (`/` and `/api/live`) beside `/metrics`.
    pub live_view: bool,
    /// Quality readings (gateway.yaml `quality: true`).
    pub quality: bool,
}

impl std::fmt::Debug for reload::Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("watch", &self.watch)
            .field("every", &self.every)
            .finish()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            metrics: None,
            metrics_bound: None,
            summary_every: Duration::from_secs(60),
            reload: None,
            live_view: true,
            quality: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Sink(#[from] LinesError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no source could be started; see the errors above")]
    NoSource,
    #[error("the gateway stopped because its {0} task panicked; see the error above")]
    Panicked(String),
}

/// What a finished run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunSummary {
    pub mapping: MappingCounters,
    /// Readings written (stdout, file) or events the hub accepted during this run.
    pub delivered: u64,
    /// With the Event Hub output: the spool sequence number of the last reading the hub
    /// acknowledged, a position in the spool, not a count.
    pub last_acked_seq: Option<u64>,
}

/// Runs until `shutdown` is cancelled (or every source has ended), then drains and returns.
///
/// Long on purpose: it is the one place that wires a run together in start-up order (metrics
/// bind, tag maps, reload, supervision, operations tasks, the output, then shutdown in
/// reverse); split up, the ordering that shutdown relies on would be spread over files.
pub async fn run(
    plans: Vec<TagMapPlan>,
    output: Output,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunSummary, RuntimeError> {
    // Bind first: a taken metrics port fails the run before any device is touched.
    let listener = match options.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RuntimeError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let tracker = TaskTracker::new();
    // A panicking task shuts the run down (and run returns an error): never half-alive.
    let supervisor = supervise::Supervisor::new(shutdown.clone());
    let mut status = GatewayStatus::default();
    let (readings_tx, readings_rx) = mpsc::channel::<TaggedReadings>(READING_QUEUE);
    let totals = Arc::new(std::sync::Mutex::new(MappingCounters::default()));
    // The live view exists only where it is served: without it the mapping tasks skip it.
    let live = (listener.is_some() && options.live_view)
        .then(|| Arc::new(crate::telemetry::live::LiveView::new()));
    let mut maps = TagMaps::new(
        tracker.clone(),
        readings_tx,
        totals.clone(),
        shutdown.clone(),
        status.maps.clone(),
        status.modbus.clone(),
    )
    .with_live(live.clone())
    .with_supervisor(supervisor.clone())
    .with_quality(options.quality);
    maps.apply(plans);
    let started = maps.len();
    if maps.is_empty() && options.reload.is_none() {
        return Err(RuntimeError::NoSource);
    }
    // The reload task owns the running tag maps; it ends at shutdown, dropping the last
    // readings sender the output waits for.
    let reloader = supervisor.spawn_untracked(
        "reload",
        reload::run(options.reload.clone(), maps, shutdown.clone()),
    );
    tracing::info!(message = "Gateway running.", tag_maps = started);
    if let Output::EventHub { sink, journal, .. } = &output {
        status.sink = Some(SinkView {
            state: sink.state.subscribe(),
            stats: sink.stats.clone(),
            journal: journal.clone(),
        });
    }
    // Operations tasks stop when the output is done, not at shutdown: /readyz and /metrics
    // stay truthful while the sink drains.
    let ops_cancel = CancellationToken::new();
    let ops = TaskTracker::new();
    if let (Some(listener), Some(bound)) = (&listener, options.metrics_bound) {
        if let Ok(addr) = listener.local_addr() {
            let _ = bound.send(addr);
        }
    }
    if let Some(listener) = listener {
        let metrics = crate::telemetry::metrics::Metrics::default();
        status.register(&metrics);
        let readiness: crate::telemetry::http::ReadinessFn = {
            let status = status.clone();
            Arc::new(move || status.readiness())
        };
        tracing::info!(message = "Serving /metrics, /healthz and /readyz.", addr = ?listener.local_addr().ok());
        if let Some(live) = &live {
            let status = status.clone();
            live.set_gateway(Box::new(move || status.hub_and_spool()));
            supervisor.spawn(
                &ops,
                "telemetry",
                live.clone().record_history(ops_cancel.clone()),
            );
            tracing::info!(message = "Serving the live view at / and /api/live.", addr = ?listener.local_addr().ok());
        }
        supervisor.spawn(
            &ops,
            "telemetry",
            crate::telemetry::http::serve(listener, metrics, readiness, live, ops_cancel.clone()),
        );
    }
    supervisor.spawn(
        &ops,
        "telemetry",
        status
            .clone()
            .log_summaries(options.summary_every, ops_cancel.clone()),
    );
    ops.close();

    let (delivered, last_acked_seq) = match output {
        Output::Stdout => (write_lines(LinesSink::stdout(), readings_rx).await?, None),
        Output::File(path) => (
            write_lines(LinesSink::append_to(&path).await?, readings_rx).await?,
            None,
        ),
        Output::EventHub {
            sink,
            journal,
            partition,
            grace,
            last_sent,
        } => {
            let checkpoints_stop = CancellationToken::new();
            let checkpoints = tokio::spawn(last_sent.clone().checkpoints(checkpoints_stop.clone()));
            let sink_cancel = CancellationToken::new();
            // The sink keeps delivering for `grace` after shutdown starts, then settles and stops.
            let timer = tokio::spawn({
                let (shutdown, sink_cancel) = (shutdown.clone(), sink_cancel.clone());
                async move {
                    shutdown.cancelled().await;
                    tokio::time::sleep(grace).await;
                    sink_cancel.cancel();
                }
            });
            let stats = sink.stats.clone();
            let last = delivery::run(
                readings_rx,
                journal,
                last_sent,
                *sink,
                partition,
                sink_cancel,
                supervisor.clone(),
            )
            .await;
            timer.abort();
            // The writer is done: the last save covers everything handed to the journal.
            checkpoints_stop.cancel();
            let _ = checkpoints.await;
            let accepted = stats
                .events_accepted
                .load(std::sync::atomic::Ordering::Relaxed);
            (accepted, last)
        }
    };
    let _ = reloader.await;
    tracker.close();
    tracker.wait().await;
    ops_cancel.cancel();
    ops.wait().await;
    if let Some(component) = supervisor.failed() {
        return Err(RuntimeError::Panicked(component));
    }
    let mapping = totals.lock().map(|t| *t).unwrap_or_default();
    Ok(RunSummary {
        mapping,
        delivered,
        last_acked_seq,
    })
}

async fn write_lines(
    mut sink: LinesSink,
    mut readings: mpsc::Receiver<TaggedReadings>,
) -> Result<u64, RuntimeError> {
    let mut written = 0;
    // Ends when every mapping task has dropped its sender, which follows shutdown.
    while let Some(TaggedReadings {
        readings: batch, ..
    }) = readings.recv().await
    {
        sink.send(&batch).await?;
        written += batch.len() as u64;
    }
    Ok(written)
}
