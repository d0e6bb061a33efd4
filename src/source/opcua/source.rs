//! The running source: the connect loop, the session event loop driver and the forwarding
//! task. See the module docs of [`super`] for the invariants.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use opcua::client::transport::TcpConnector;
use opcua::client::{Session, SessionEventLoop, SessionPollResult};
use opcua::types::StatusCode;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::notify::{Ctx, Queue};
use super::{connect, subscribe, OpcUaCounters};
use crate::mapping::{OpcUaPlan, TagMapPlan};
use crate::sample::SampleBatch;

pub(super) fn start(
    plan: Arc<TagMapPlan>,
    source: Arc<OpcUaPlan>,
    tx: mpsc::Sender<SampleBatch>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
    counters: Arc<OpcUaCounters>,
) {
    // Room for a few publishes of every tag before the oldest samples are dropped.
    let capacity = (plan.tags.len() * 4).max(10_000);
    let queue = Arc::new(Queue::new(capacity));
    let ctx = Arc::new(Ctx {
        flags: Arc::new((0..plan.tags.len()).map(|_| AtomicU8::new(0)).collect()),
        elements: (0..plan.tags.len())
            .map(|t| source.monitoring.get(t).and_then(|m| m.index))
            .collect(),
        timestamps: source.timestamps,
        uncertain: source.uncertain,
        plan,
        source,
        counters,
        queue: Arc::clone(&queue),
    });
    tracker.spawn(forward(queue, tx, cancel.child_token()));
    tracker.spawn(run(ctx, cancel.child_token()));
}

/// Connects, runs the session until it ends, and connects again, with backoff, until
/// cancelled.
async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    let mut last_error = String::new();
    if ctx.plan.tags.is_empty() {
        return;
    }
    loop {
        let chunk = subscribe::DEFAULT_CHUNK;
        let attempt = async {
            let client = connect::client(&ctx.source, chunk)?;
            connect::connect(&client, &ctx.source, &ctx.plan.path).await
        };
        let connected = tokio::select! {
            // Shutdown while connecting.
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        match connected {
            Ok((session, event_loop)) => {
                backoff = Duration::from_millis(500);
                last_error.clear();
                run_session(&ctx, session, event_loop, &cancel).await;
                if cancel.is_cancelled() {
                    return;
                }
            }
            Err(error) => {
                ctx.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                let text = error.to_string();
                if text != last_error {
                    tracing::warn!(
                        message = "Cannot connect to the OPC UA server.",
                        tag_map = %ctx.plan.path.display(),
                        %error
                    );
                    last_error = text;
                } else {
                    tracing::debug!(message = "Cannot connect to the OPC UA server.", %error);
                }
            }
        }
        tokio::select! {
            // Shutdown while waiting to retry.
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Drives one session: the event loop, and the subscription manager beside it. Returns when
/// the event loop ends (cancelled, or a fatal error).
async fn run_session(
    ctx: &Arc<Ctx>,
    session: Arc<Session>,
    event_loop: SessionEventLoop<TcpConnector>,
    cancel: &CancellationToken,
) {
    // Bumped on every (re)connect; the manager re-checks its items.
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let driver = drive(ctx, Arc::clone(&session), event_loop, connected_tx, cancel);
    let manager = subscribe::manage(
        Arc::clone(ctx),
        Arc::clone(&session),
        connected_rx,
        cancel.clone(),
    );
    tokio::select! {
        // The event loop ended: shutdown done, or a fatal session error.
        status = driver => {
            if !cancel.is_cancelled() {
                tracing::warn!(message = "OPC UA session ended; connecting again.", %status);
            }
        }
        // The manager never ends on its own.
        _ = manager => {}
    }
    ctx.counters.connected.store(false, Ordering::Relaxed);
    ctx.counters.items_monitored.store(0, Ordering::Relaxed);
}

/// Polls the session event loop: logs connection changes, kicks a publish after every
/// reconnect, and closes the session on cancellation.
async fn drive(
    ctx: &Ctx,
    session: Arc<Session>,
    event_loop: SessionEventLoop<TcpConnector>,
    connected: watch::Sender<u64>,
    cancel: &CancellationToken,
) -> StatusCode {
    let stream = event_loop.enter();
    tokio::pin!(stream);
    let mut last_failure = None;
    let mut connects = 0u64;
    loop {
        tokio::select! {
            // Shutdown: close the session below.
            _ = cancel.cancelled() => break,
            next = stream.next() => match next {
                None => return StatusCode::Good,
                Some(Err(status)) => return status,
                Some(Ok(SessionPollResult::Reconnected(mode))) => {
                    ctx.counters.connected.store(true, Ordering::Relaxed);
                    if connects > 0 {
                        ctx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(message = "OPC UA session re-established.", endpoint = %ctx.source.endpoint, ?mode);
                    } else {
                        tracing::info!(message = "OPC UA session established.", endpoint = %ctx.source.endpoint, ?mode);
                    }
                    connects += 1;
                    last_failure = None;
                    // Known async-opcua quirk: without this, publishing may not resume until
                    // the next keep-alive after a reconnect.
                    session.trigger_publish_now();
                    connected.send_modify(|n| *n += 1);
                }
                Some(Ok(SessionPollResult::ConnectionLost(status))) => {
                    ctx.counters.connected.store(false, Ordering::Relaxed);
                    tracing::warn!(message = "OPC UA connection lost; reconnecting.", endpoint = %ctx.source.endpoint, %status);
                }
                Some(Ok(SessionPollResult::ReconnectFailed(status))) => {
                    ctx.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    if last_failure != Some(status) {
                        tracing::warn!(message = "OPC UA reconnect failed; retrying with backoff.", endpoint = %ctx.source.endpoint, %status);
                        last_failure = Some(status);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }
    // Close the session (deleting its subscriptions) while still polling the event loop that
    // carries the request; bounded so shutdown cannot hang on a dead server.
    let close = async {
        let disconnect = session.disconnect();
        tokio::pin!(disconnect);
        loop {
            tokio::select! {
                _ = &mut disconnect => break,
                next = stream.next() => if next.is_none() { break },
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), close).await;
    StatusCode::Good
}

/// Moves queued samples onto the bounded channel, waiting when the mapping stage is behind.
async fn forward(queue: Arc<Queue>, tx: mpsc::Sender<SampleBatch>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            // Shutdown: drop the sender.
            _ = cancel.cancelled() => return,
            _ = queue.notify.notified() => {}
        }
        let batch = queue.take();
        if batch.is_empty() {
            continue;
        }
        tokio::select! {
            // Shutdown while the mapping stage is behind.
            _ = cancel.cancelled() => return,
            sent = tx.send(batch) => if sent.is_err() { return },
        }
    }
}
