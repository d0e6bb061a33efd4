//! The running source: the connect loop, the session event loop driver and the forwarding
//! task. See the module docs of [`super`] for the invariants.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use opcua::client::transport::TcpConnector;
use opcua::client::{Client, Session, SessionEventLoop, SessionPollResult};
use opcua::types::{EndpointDescription, StatusCode};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::notify::{Ctx, Queue};
use super::{connect, subscribe, OpcUaCounters, OpcUaError};
use crate::mapping::{OpcUaPlan, TagMapPlan};
use crate::sample::{Cause, SampleBatch, Scope, SourceEvent};

pub(super) fn start(
    plan: Arc<TagMapPlan>,
    source: Arc<OpcUaPlan>,
    tx: mpsc::Sender<SampleBatch>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
    counters: Arc<OpcUaCounters>,
    tuning: Tuning,
) {
    // Room for a few publishes of every tag before the oldest samples are dropped.
    let capacity = (plan.tags.len() * 4).max(10_000);
    let queue = Arc::new(Queue::new(capacity));
    let ctx = Arc::new(Ctx {
        flags: Arc::new((0..plan.tags.len()).map(|_| AtomicU8::new(0)).collect()),
        elements: super::notify::per_tag_or_empty(
            (0..plan.tags.len()).map(|t| source.monitoring.get(t).and_then(|m| m.index)),
        ),
        timestamps: source.timestamps,
        uncertain: source.uncertain,
        plan,
        source,
        counters,
        queue: Arc::clone(&queue),
    });
    tracker.spawn(forward(queue, tx, cancel.child_token()));
    tracker.spawn(run(ctx, cancel.child_token(), tuning));
}

/// How a session ended.
enum Ended {
    /// Shutdown.
    Cancelled,
    /// The server refused the session (the gateway's certificate or the login); the error
    /// says what to do.
    Refused(OpcUaError),
    /// The server presents a new certificate: connect from scratch, fetching the endpoints
    /// and checking the new certificate against `trusted/`.
    CertificateChanged,
    /// The event loop ended with this status.
    Failed(StatusCode),
}

/// Connects, runs the session until it ends, and connects again, with backoff, until
/// cancelled. Every failure leaves its reason, with the next step, in the counters.
async fn run(ctx: Arc<Ctx>, cancel: CancellationToken, tuning: Tuning) {
    let mut backoff = tuning.first_retry;
    let mut last_error = String::new();
    if ctx.plan.tags.is_empty() && ctx.source.events.is_empty() {
        return;
    }
    loop {
        let attempt = async {
            let client =
                connect::client_with(&ctx.source, subscribe::DEFAULT_CHUNK, tuning.session_retry)?;
            let connection = connect::connect(&client, &ctx.source, &ctx.plan.path).await?;
            Ok::<_, OpcUaError>((client, connection))
        };
        let connected = tokio::select! {
            // Shutdown while connecting.
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        let error = match connected {
            Ok((client, connection)) => match run_session(&ctx, &client, connection, &cancel).await
            {
                Ended::Cancelled => return,
                Ended::CertificateChanged => {
                    tracing::info!(
                        message = "The OPC UA server presents a new certificate; connecting again to check it.",
                        endpoint = %ctx.source.endpoint
                    );
                    backoff = tuning.first_retry;
                    last_error.clear();
                    continue;
                }
                Ended::Refused(error) => error,
                Ended::Failed(status) => {
                    let reason = format!("the session ended ({status}); connecting again");
                    tracing::warn!(message = "OPC UA session ended; connecting again.", endpoint = %ctx.source.endpoint, %status);
                    ctx.counters.set_reason(Some(reason));
                    backoff = tuning.first_retry;
                    last_error.clear();
                    if !pause(tuning.first_retry, &cancel).await {
                        return;
                    }
                    continue;
                }
            },
            Err(error) => error,
        };
        ctx.counters
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        let wait = retry_after(&error, backoff, &tuning);
        let mut text = error.to_string();
        if matches!(error, OpcUaError::LoginRefused { .. }) {
            text.push_str(&format!(
                ". Retried only every {} s, so that the server does not lock the account",
                wait.as_secs()
            ));
        }
        if text != last_error {
            tracing::warn!(
                message = "Cannot connect to the OPC UA server.",
                tag_map = %ctx.plan.path.display(),
                error = %text,
                retry_seconds = wait.as_secs_f64()
            );
            last_error = text.clone();
        } else {
            tracing::debug!(message = "Cannot connect to the OPC UA server.", %error);
        }
        ctx.counters.set_reason(Some(text));
        if !pause(wait, &cancel).await {
            return;
        }
        backoff = (backoff * 2).min(tuning.max_retry);
    }
}

/// How an OPC UA source times its retries. The defaults are the product's; tests stretch
/// them far past their deadlines, so that only a first answer can pass them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// The first retry after a failure; doubled up to `max_retry`.
    pub first_retry: Duration,
    pub max_retry: Duration,
    /// Retries while a certificate waits to be trusted (on either side) stay this short at
    /// most, so the gateway connects soon after the operator acted.
    pub trust_retry: Duration,
    /// async-opcua's first reconnect of a session ([`connect::SESSION_RETRY`]).
    pub session_retry: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            first_retry: Duration::from_millis(500),
            max_retry: Duration::from_secs(30),
            trust_retry: Duration::from_secs(5),
            session_retry: connect::SESSION_RETRY,
        }
    }
}
/// While the connection is lost, how often the server's certificate is fetched again to see
/// whether it was renewed.
const CERTIFICATE_PROBE: Duration = Duration::from_secs(2);

/// How long to wait before the next attempt after `error`.
fn retry_after(error: &OpcUaError, backoff: Duration, tuning: &Tuning) -> Duration {
    match error {
        // Lockout risk: a wrong password is not hammered.
        OpcUaError::LoginRefused { .. } => super::LOGIN_RETRY,
        OpcUaError::Untrusted(_) | OpcUaError::ClientUntrusted { .. } => {
            backoff.min(tuning.trust_retry)
        }
        _ => backoff,
    }
}

/// Sleeps for `wait`; false when cancelled first.
async fn pause(wait: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        // Shutdown while waiting to retry.
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Drives one session: the event loop, and the subscription manager beside it. Returns when
/// the event loop ends (cancelled, refused, a new server certificate, or a fatal error).
async fn run_session(
    ctx: &Arc<Ctx>,
    client: &Client,
    connection: connect::Connection,
    cancel: &CancellationToken,
) -> Ended {
    let connect::Connection {
        session,
        event_loop,
        endpoint,
    } = connection;
    // Bumped on every (re)connect; the manager re-checks its items.
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let session_ctx = SessionCtx {
        ctx,
        client,
        endpoint: &endpoint,
    };
    let driver = drive(
        session_ctx,
        Arc::clone(&session),
        event_loop,
        connected_tx,
        cancel,
    );
    let events = super::events::manage(
        Arc::clone(ctx),
        Arc::clone(&session),
        connected_rx.clone(),
        cancel.clone(),
    );
    let manager = subscribe::manage(
        Arc::clone(ctx),
        Arc::clone(&session),
        connected_rx,
        cancel.clone(),
    );
    let ended = tokio::select! {
        // The event loop ended: shutdown done, refused, or a fatal session error.
        ended = driver => ended,
        // The managers never end on their own.
        _ = manager => Ended::Cancelled,
        _ = events => Ended::Cancelled,
    };
    ctx.counters.connected.store(false, Ordering::Relaxed);
    ctx.counters.items_monitored.store(0, Ordering::Relaxed);
    if cancel.is_cancelled() {
        Ended::Cancelled
    } else {
        ended
    }
}

/// What [`drive`] needs besides the session.
struct SessionCtx<'a> {
    ctx: &'a Ctx,
    client: &'a Client,
    /// The endpoint the session was built for, with the server certificate it trusts.
    endpoint: &'a EndpointDescription,
}

/// Polls the session event loop: logs connection changes, kicks a publish after every
/// reconnect, watches for a renewed server certificate while disconnected, ends the session
/// when the server refuses it, and closes the session on cancellation.
///
/// Long on purpose: one `select!` over the session's events and the certificate watch.
async fn drive(
    s: SessionCtx<'_>,
    session: Arc<Session>,
    event_loop: SessionEventLoop<TcpConnector>,
    connected: watch::Sender<u64>,
    cancel: &CancellationToken,
) -> Ended {
    let ctx = s.ctx;
    let stream = event_loop.enter();
    tokio::pin!(stream);
    let mut last_failure = None;
    let mut connects = 0u64;
    let mut disconnected = false;
    let mut probe_tick = tokio::time::interval(CERTIFICATE_PROBE);
    let mut probe: Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>> =
        None;
    loop {
        tokio::select! {
            // Shutdown: close the session below.
            _ = cancel.cancelled() => break,
            // Disconnected: has the server a new certificate? (The library would keep
            // encrypting to the old one, and the server could never read it.)
            _ = probe_tick.tick(), if disconnected && probe.is_none() => {
                probe = Some(Box::pin(connect::certificate_changed(s.client, &ctx.source, s.endpoint)));
            }
            changed = async {
                match probe.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if probe.is_some() => {
                probe = None;
                if changed {
                    return Ended::CertificateChanged;
                }
            }
            next = stream.next() => match next {
                None => return Ended::Failed(StatusCode::Good),
                Some(Err(status)) => return Ended::Failed(status),
                Some(Ok(SessionPollResult::Reconnected(mode))) => {
                    ctx.counters.connected.store(true, Ordering::Relaxed);
                    ctx.counters.set_reason(None);
                    disconnected = false;
                    probe = None;
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
                    ctx.counters.set_reason(Some(format!("connection lost ({status}); reconnecting")));
                    disconnected = true;
                    ctx.queue.event(SourceEvent::Lost { scope: Scope::Source, at: chrono::Utc::now(), cause: Cause::ConnectionLost });
                    tracing::warn!(message = "OPC UA connection lost; reconnecting.", endpoint = %ctx.source.endpoint, %status);
                }
                Some(Ok(SessionPollResult::ReconnectFailed(status))) => {
                    disconnected = true;
                    if let Some(error) = connect::refused(&ctx.source, status) {
                        // A server that cannot read us may be one with a new certificate.
                        if connect::is_certificate_refusal(status)
                            && connect::certificate_changed(s.client, &ctx.source, s.endpoint).await
                        {
                            return Ended::CertificateChanged;
                        }
                        return Ended::Refused(error);
                    }
                    ctx.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    ctx.counters.set_reason(Some(format!(
                        "cannot reach the server ({status}); retrying with backoff"
                    )));
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
    Ended::Cancelled
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
