//! The Event Hubs sink task: packs outgoing events into batches, keeps several in flight on one
//! link, reports what the hub accepted, and survives throttling, dropped connections and outages.
//!
//! Invariants:
//! - An event is acknowledged (`acks` receives a sequence number N: every event up to N was
//!   accepted) only after the hub accepted it and every event before it. Acks are cumulative and
//!   in order, which is what the spool needs to release records.
//! - Batches in flight are kept until accepted. When the link fails (or the hub answers
//!   server-busy), every unaccepted batch is sent again, in its original order, on the next link:
//!   at-least-once, with duplicates only of batches in flight at the failure (message ids are
//!   stable so consumers can drop them).
//! - Throttling (`com.microsoft:server-busy`) waits at least 4 s before resending, as Microsoft
//!   advises. Authentication failures back off up to a minute and say which key the service
//!   refused; the data stays queued (and, upstream, in the spool).
//! - An event larger than a message may be is written to the dead-letter file with its
//!   sequence number and acknowledged, so it never blocks the ones behind it.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::{renew_at, Credential};
use super::event::{AddError, Batch};
use super::link::{encoder, Link};
pub use super::stats::{SinkState, SinkStats};
use super::transport::{Delivery, LinkError, Settled, Target};

/// One event to deliver.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Spool sequence number: strictly increasing.
    pub seq: u64,
    /// The event body (a reading's JSON).
    pub body: Vec<u8>,
    pub partition_key: Option<Arc<str>>,
}

/// Tuning of the sink.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Batches sent and not yet settled, at most.
    pub max_in_flight: usize,
    /// How long a partly filled batch waits for more events.
    pub linger: Duration,
    /// Message ids are `<prefix>-<seq>`: stable across replays.
    pub message_id_prefix: String,
    /// Where events too large to send are written (JSON lines).
    pub dead_letter: Option<PathBuf>,
    /// Give up waiting for in-flight batches this long after shutdown starts.
    pub shutdown_grace: Duration,
    /// 1: one event per reading. More: up to this many readings per event, as a JSON array
    /// (`events: {array: N}`).
    pub readings_per_event: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            max_in_flight: 16,
            linger: Duration::from_millis(20),
            message_id_prefix: "tagbridge".into(),
            dead_letter: None,
            shutdown_grace: Duration::from_secs(10),
            readings_per_event: 1,
        }
    }
}

/// Backoff after throttling, per Microsoft's guidance for server-busy.
const SERVER_BUSY_BACKOFF: Duration = Duration::from_secs(4);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_AUTH_BACKOFF: Duration = Duration::from_secs(60);

/// A connection attempt (TCP, TLS, SASL, CBS, attach) that takes longer is abandoned.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Handing a batch to the link (flow control included) that takes longer means the link is dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// A batch the hub has not settled this long after it was sent is treated as lost with its link:
/// after a dropped connection fe2o3 may never resolve the delivery.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

struct InFlight {
    /// The batch's events, kept to resend them.
    batch: Batch,
    delivery: Option<Delivery>,
    /// When the settlement is overdue.
    settle_by: Instant,
    sent_at: Instant,
}

/// An Event Hubs sink, ready to run.
pub struct EventHubSink {
    pub target: Target,
    pub credential: Credential,
    pub options: SinkOptions,
    pub stats: Arc<SinkStats>,
    pub state: watch::Sender<SinkState>,
}

impl EventHubSink {
    pub fn new(target: Target, credential: Credential, options: SinkOptions) -> Self {
        EventHubSink {
            target,
            credential,
            options,
            stats: Arc::default(),
            state: watch::Sender::new(SinkState::Connecting),
        }
    }

    /// Runs until `input` closes (and everything is settled) or `cancel` fires (then it waits
    /// up to `shutdown_grace` for what is in flight). `acks` receives the sequence number up to
    /// which everything was accepted, in order; waiting on it is what slows the sink if the
    /// spool is slow to record acks. Returns the last sequence number acknowledged.
    pub async fn run(
        self,
        input: mpsc::Receiver<Vec<Outgoing>>,
        acks: mpsc::Sender<u64>,
        cancel: CancellationToken,
    ) -> Option<u64> {
        let EventHubSink {
            target,
            credential,
            options,
            stats,
            state,
        } = self;
        run(
            target, credential, options, input, acks, state, stats, cancel,
        )
        .await
    }
}

#[allow(clippy::too_many_arguments)] // Private; `EventHubSink::run` is the interface.
async fn run(
    target: Target,
    credential: Credential,
    options: SinkOptions,
    mut input: mpsc::Receiver<Vec<Outgoing>>,
    acks: mpsc::Sender<u64>,
    state: watch::Sender<SinkState>,
    stats: Arc<SinkStats>,
    cancel: CancellationToken,
) -> Option<u64> {
    let mut link: Option<Link> = None;
    let encode_event = encoder(target.transport);
    let mut max_size = super::amqp::DEFAULT_MAX_MESSAGE_SIZE;
    // Batches ready to send, oldest first; in flight, oldest first.
    let mut ready: VecDeque<Batch> = VecDeque::new();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut filling: Option<(Batch, Instant)> = None;
    let mut last_acked = None;
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut renew_due: Option<Instant> = None;
    let mut input_open = true;
    let mut drain_deadline: Option<Instant> = None;
    let mut encoded = Vec::new();

    loop {
        if !input_open && filling.is_none() && ready.is_empty() && in_flight.is_empty() {
            break;
        }
        if drain_deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                message = "Shutdown grace period over; unsent events stay in the spool.",
                unsent_batches = ready.len() + in_flight.len()
            );
            break;
        }
        // Connect when there is something to send and no link.
        if link.is_none() && (!ready.is_empty() || !in_flight.is_empty() || filling.is_some()) {
            if let Some(at) = retry_at {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    // Shutting down while waiting to retry: stop when the grace period ends.
                    _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => continue,
                    _ = cancel.cancelled(), if drain_deadline.is_none() => {
                        drain_deadline = Some(Instant::now() + options.shutdown_grace);
                        input.close();
                        continue;
                    }
                }
            }
            let _ = state.send(SinkState::Connecting);
            let opened =
                tokio::time::timeout(OPEN_TIMEOUT, Link::open(&target, &credential, unix_now()))
                    .await
                    .unwrap_or_else(|_| {
                        Err(LinkError::Open {
                            host: target.host.clone(),
                            reason: format!("no answer within {} s", OPEN_TIMEOUT.as_secs()),
                        })
                    });
            match opened {
                Ok(l) => {
                    max_size = l.max_message_size();
                    renew_due = Some(renewal_instant(l.token_expires_at()));
                    stats
                        .token_expires_at
                        .store(l.token_expires_at(), Ordering::Relaxed);
                    tracing::info!(message = "Connected to the event hub.", hub = %target.hub, host = %target.host, max_message_size = max_size);
                    let _ = state.send(SinkState::Connected);
                    link = Some(l);
                    failures = 0;
                    retry_at = None;
                    // Resend everything unaccepted, in order.
                    while let Some(f) = in_flight.pop_back() {
                        ready.push_front(f.batch);
                    }
                }
                Err(error) => {
                    failures += 1;
                    let (wait, shown) = if error.is_auth() {
                        stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                        let _ = state.send(SinkState::Unauthorized(error.to_string()));
                        (
                            backoff(failures, MAX_AUTH_BACKOFF),
                            "The event hub refused the credentials; data stays queued.",
                        )
                    } else {
                        let _ = state.send(SinkState::Down(error.to_string()));
                        (
                            backoff(failures, MAX_BACKOFF),
                            "Cannot connect to the event hub; retrying.",
                        )
                    };
                    tracing::warn!(message = shown, %error, retry_in_ms = wait.as_millis() as u64);
                    retry_at = Some(Instant::now() + wait);
                    continue;
                }
            }
        }

        // Fixed when the token is put, not recomputed here: recomputing from "now" on every
        // turn of a busy loop would push the renewal past the token's expiry.
        let renew_deadline = link.as_ref().and(renew_due);
        let linger_deadline = filling.as_ref().map(|(_, since)| *since + options.linger);
        let can_send =
            link.is_some() && !ready.is_empty() && in_flight.len() < options.max_in_flight;
        let wants_input = input_open && ready.len() + in_flight.len() < options.max_in_flight * 2;

        tokio::select! {
            biased;
            _ = cancel.cancelled(), if drain_deadline.is_none() => {
                // Stop taking input; flush and settle what we have, within the grace period.
                drain_deadline = Some(Instant::now() + options.shutdown_grace);
                input.close();
            }
            settled = next_settled(&mut in_flight), if !in_flight.is_empty() => {
                match settled {
                    Ok(()) => {
                        if let Some(done) = in_flight.pop_front() {
                            stats.send_latency.observe(done.sent_at.elapsed().as_secs_f64());
                            let seqs = done.batch.seqs();
                            stats.events_accepted.fetch_add(seqs.len() as u64, Ordering::Relaxed);
                            if let Some(&last) = seqs.last() {
                                last_acked = Some(last);
                                let _ = acks.send(last).await;
                            }
                        }
                    }
                    Err(failure) => {
                        let wait = match &failure {
                            Failure::ServerBusy(_) => {
                                stats.throttled.fetch_add(1, Ordering::Relaxed);
                                SERVER_BUSY_BACKOFF
                            }
                            Failure::Unauthorized(_) => {
                                stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                                failures += 1;
                                backoff(failures, MAX_AUTH_BACKOFF)
                            }
                            Failure::Link(_) => backoff(1, MAX_BACKOFF),
                        };
                        tracing::warn!(message = "Delivery failed; resending unaccepted batches after a pause.", error = %failure, pause_ms = wait.as_millis() as u64);
                        let shown = match &failure {
                            Failure::Unauthorized(why) => SinkState::Unauthorized(format!("{} refused: {why}", credential.describe())),
                            other => SinkState::Down(other.to_string()),
                        };
                        let _ = state.send(shown);
                        if let Some(l) = link.take() {
                            tokio::spawn(l.close());
                        }
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        retry_at = Some(Instant::now() + wait);
                    }
                }
            }
            _ = sleep_until_opt(renew_deadline), if renew_deadline.is_some() => {
                if let Some(l) = link.as_mut() {
                    match l.renew(&target, &credential, unix_now()).await {
                        Ok(()) => {
                            renew_due = Some(renewal_instant(l.token_expires_at()));
                            stats.token_expires_at.store(l.token_expires_at(), Ordering::Relaxed);
                            stats.token_renewals.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(message = "Renewed the event hub token.");
                        }
                        Err(error) => {
                            tracing::warn!(message = "Token renewal failed; reconnecting.", %error);
                            if let Some(l) = link.take() { tokio::spawn(l.close()); }
                            retry_at = Some(Instant::now() + backoff(1, MAX_BACKOFF));
                        }
                    }
                }
            }
            sent = send_next(link.as_mut(), &ready), if can_send => {
                match sent {
                    Ok(delivery) => {
                        // Taken off `ready` only now: a send abandoned half-way (another branch
                        // won the select) leaves the batch queued, never dropped.
                        if let Some(batch) = ready.pop_front() {
                            stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                            stats.bytes_sent.fetch_add(batch.encoded_size() as u64, Ordering::Relaxed);
                            in_flight.push_back(InFlight { batch, delivery: Some(delivery), settle_by: Instant::now() + SETTLE_TIMEOUT, sent_at: Instant::now() });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(message = "Send failed; reconnecting.", %error);
                        if let Some(l) = link.take() { tokio::spawn(l.close()); }
                        retry_at = Some(Instant::now() + backoff(1, MAX_BACKOFF));
                    }
                }
            }
            _ = sleep_until_opt(linger_deadline), if linger_deadline.is_some() => {
                if let Some((batch, _)) = filling.take() {
                    ready.push_back(batch);
                }
            }
            next = input.recv(), if wants_input => {
                let Some(events) = next else {
                    input_open = false;
                    if let Some((batch, _)) = filling.take() { ready.push_back(batch); }
                    continue;
                };
                let events = if options.readings_per_event > 1 {
                    pack_arrays(events, options.readings_per_event, max_size / 2)
                } else {
                    events.into_iter().map(|e| (None, e)).collect()
                };
                for (first, event) in events {
                    encoded.clear();
                    let id = match first {
                        Some(first) if first != event.seq => format!("{}-{first}-{}", options.message_id_prefix, event.seq),
                        _ => format!("{}-{}", options.message_id_prefix, event.seq),
                    };
                    let key = event.partition_key.as_deref();
                    encode_event(&mut encoded, &id, key, &event.body);
                    let mut bytes = std::mem::take(&mut encoded);
                    loop {
                        let (batch, _) = filling.get_or_insert_with(|| (Batch::new(key.map(String::from), max_size), Instant::now()));
                        if batch.partition_key() != key {
                            if let Some((full, _)) = filling.take() { ready.push_back(full); }
                            continue;
                        }
                        match batch.try_add(event.seq, bytes) {
                            Ok(()) => break,
                            Err((AddError::Full, back)) => {
                                bytes = back;
                                if let Some((full, _)) = filling.take() { ready.push_back(full); }
                            }
                            Err((AddError::TooLarge { size, max }, _)) => {
                                dead_letter(&options, &event, size, max, &stats);
                                // Acknowledge it in order: a batch of its own with no events
                                // would be odd, so ack directly when nothing is ahead of it.
                                if filling.as_ref().is_none_or(|(b, _)| b.is_empty()) && ready.is_empty() && in_flight.is_empty() {
                                    last_acked = Some(event.seq);
                                    let _ = acks.send(event.seq).await;
                                }
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(l) = link.take() {
        l.close().await;
    }
    let _ = state.send(SinkState::Stopped);
    last_acked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(seq: u64, key: Option<&str>) -> Outgoing {
        Outgoing {
            seq,
            body: format!("{{\"n\":{seq}}}").into_bytes(),
            partition_key: key.map(Arc::from),
        }
    }

    #[test]
    fn arrays_pack_up_to_n_readings_per_key_in_order() {
        let events = vec![
            reading(1, None),
            reading(2, None),
            reading(3, None),
            reading(4, Some("a")),
            reading(5, Some("a")),
        ];
        let packed = pack_arrays(events, 2, 1 << 20);
        let shown: Vec<(Option<u64>, u64, String)> = packed
            .into_iter()
            .map(|(first, e)| (first, e.seq, String::from_utf8(e.body).unwrap()))
            .collect();
        assert_eq!(
            shown,
            vec![
                (Some(1), 2, r#"[{"n":1},{"n":2}]"#.to_string()),
                (Some(3), 3, r#"[{"n":3}]"#.to_string()),
                (Some(4), 5, r#"[{"n":4},{"n":5}]"#.to_string()),
            ]
        );
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("the hub is busy (throttled): {0}")]
    ServerBusy(String),
    #[error("the hub refused the credentials: {0}")]
    Unauthorized(String),
    #[error("{0}")]
    Link(String),
}

/// Waits for the oldest in-flight batch to settle.
async fn next_settled(in_flight: &mut VecDeque<InFlight>) -> Result<(), Failure> {
    let Some(front) = in_flight.front_mut() else {
        return Ok(());
    };
    let Some(delivery) = front.delivery.as_mut() else {
        return Ok(());
    };
    let Ok(settled) = tokio::time::timeout_at(front.settle_by, delivery).await else {
        return Err(Failure::Link(format!(
            "the hub did not settle a batch within {} s",
            SETTLE_TIMEOUT.as_secs()
        )));
    };
    front.delivery = None;
    match settled {
        Settled::Accepted => Ok(()),
        Settled::Busy(why) => Err(Failure::ServerBusy(why)),
        Settled::Unauthorized(why) => Err(Failure::Unauthorized(why)),
        Settled::Failed(why) => Err(Failure::Link(why)),
    }
}

/// Hands the oldest ready batch to the link. It stays in `ready` until the caller takes it on
/// success, so dropping this future (another select branch won) loses nothing.
async fn send_next(
    link: Option<&mut Link>,
    ready: &VecDeque<Batch>,
) -> Result<Delivery, LinkError> {
    let (Some(link), Some(batch)) = (link, ready.front()) else {
        // Guarded by `can_send`; nothing to do otherwise.
        return std::future::pending().await;
    };
    match tokio::time::timeout(SEND_TIMEOUT, link.send(batch.clone())).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::Send(format!(
            "the link took no transfer within {} s",
            SEND_TIMEOUT.as_secs()
        ))),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1 << failures.min(10));
    let capped = base.min(max);
    // Up to 20 % jitter so a fleet of gateways does not reconnect in step.
    capped + capped.mul_f64(rand::random::<f64>() * 0.2)
}

fn dead_letter(
    options: &SinkOptions,
    event: &Outgoing,
    size: usize,
    max: usize,
    stats: &SinkStats,
) {
    stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    let sensor = crate::reading::sensor_id_of(&event.body).unwrap_or_default();
    tracing::error!(message = "Event too large for the hub; written to the dead-letter file.", sensor_id = %sensor, seq = event.seq, size, max);
    let Some(path) = &options.dead_letter else {
        return;
    };
    let line = serde_json::json!({
        "seq": event.seq,
        "sensor_id": sensor,
        "size": size,
        "max": max,
        "body": String::from_utf8_lossy(&event.body),
    });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(error) = written {
        tracing::error!(message = "Cannot write the dead-letter file.", path = %path.display(), %error);
    }
}

/// Packs consecutive readings with the same partition key into JSON-array events of at most
/// `per_event` readings and about `max_bytes`. Each packed event carries the sequence number of
/// its last reading (acks are cumulative) and, as `Some(first)`, its first one for the message
/// id `<prefix>-<first>-<last>`.
fn pack_arrays(
    events: Vec<Outgoing>,
    per_event: usize,
    max_bytes: usize,
) -> Vec<(Option<u64>, Outgoing)> {
    let mut out: Vec<(Option<u64>, Outgoing)> = Vec::new();
    let mut count = 0;
    for event in events {
        let fits = out.last().is_some_and(|(_, last)| {
            last.partition_key == event.partition_key
                && count < per_event
                && last.body.len() + event.body.len() < max_bytes
        });
        match out.last_mut() {
            Some((_, last)) if fits => {
                // `[a]` + `b` → `[a,b]`
                last.body.pop();
                last.body.push(b',');
                last.body.extend_from_slice(&event.body);
                last.body.push(b']');
                last.seq = event.seq;
                count += 1;
            }
            _ => {
                let mut body = Vec::with_capacity(event.body.len() + 2);
                body.push(b'[');
                body.extend_from_slice(&event.body);
                body.push(b']');
                out.push((
                    Some(event.seq),
                    Outgoing {
                        seq: event.seq,
                        body,
                        partition_key: event.partition_key,
                    },
                ));
                count = 1;
            }
        }
    }
    out
}

/// When to renew a token expiring at `expires_at` (Unix seconds), as an instant.
fn renewal_instant(expires_at: i64) -> Instant {
    let now = unix_now();
    Instant::now()
        + Duration::from_secs(renew_at(now, expires_at).saturating_sub(now).max(1) as u64)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}
