//! The Event Hubs sink task: packs outgoing events into batches ([`Batcher`]), keeps several on
//! the wire on one link ([`Window`]), reports what the hub accepted, and survives throttling,
//! refused credentials, dropped connections and outages ([`Health`]).
//!
//! The task is a state machine in the manner of the Modbus poller: `Driver` holds the state and
//! has one short method per event (connect, settled, link lost, renewal due, linger, input,
//! credential re-read, cancel); the loop in `Driver::run` only waits for the next event.
//!
//! Invariants:
//! - An event is acknowledged (`acks` receives a sequence number N: every event up to N was
//!   accepted) only after the hub accepted it and every event before it. Acks are cumulative and
//!   in order, which is what the spool needs to release records.
//! - A batch is kept until the hub accepts it. A refusal (`com.microsoft:server-busy`, HTTP
//!   503/429) resends that batch only, after a pause of at least 4 s (Microsoft's advice) during
//!   which nothing is sent; the link stays open and the batches behind it are settled as the hub
//!   answers. Sustained throttling shrinks the number of batches on the wire (halved per round
//!   of refusals, widened by one per window of acceptances) instead of repeating them.
//! - When a link is lost, answers already on their way are read for up to 2 s before anything
//!   is resent: only batches the hub did not accept (or did not answer) go again, in order, on the
//!   next link. Duplicates are limited to batches whose answer was lost with the link; message
//!   ids are stable so consumers can drop them.
//! - One failure streak for every transport ([`Health`]): it ends only when the hub accepts a
//!   batch. Waits double up to 30 s (hub unreachable) or 60 s (credentials refused); a refused
//!   credential keeps the state `Unauthorized` (and `/readyz` at 503) until a batch is accepted.
//! - On every refused credential and on SIGHUP the secret is read again from its source (file or
//!   environment); a new one is logged by key name and source, never by value, and used at once
//!   (put on the open link, or the next attempt is made now).
//! - An event larger than a message may be is written to the dead-letter file with its
//!   sequence number and acknowledged in order, so it never blocks the ones behind it.
//! - Shutdown (`cancel`, after the runtime's grace period of delivering): nothing new is read or
//!   sent; batches on the wire are settled for up to `shutdown_grace`; with none (hub down or
//!   refusing) the task stops at once. What is not acknowledged stays in the spool.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{renew_at, Credential};
use super::encoding::BodyEncoding;
use super::event::{Batcher, Packed};
use super::health::Health;
use super::link::Link;
use super::setup::CredentialSource;
use super::transport::{Delivery, LinkError, Settled, Target};
use super::window::{Verdict, Window};

pub use super::event::Outgoing;
pub use super::stats::{SinkState, SinkStats};

/// Tuning of the sink.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Batches sent and not yet settled, at most.
    pub max_in_flight: usize,
    /// How long a reading may wait for a fuller batch, counted from when the gateway received
    /// it from its source (see [`Outgoing::received`]).
    pub linger: Duration,
    /// Message ids are `<prefix>-<seq>`: stable across replays.
    pub message_id_prefix: String,
    /// Where events too large to send are written (JSON lines).
    pub dead_letter: Option<PathBuf>,
    /// After `cancel`, how long batches already on the wire may still be settled.
    pub shutdown_grace: Duration,
    /// 1: one event per reading. More: up to this many readings per event, as a JSON array
    /// (`events: {array: N}`).
    pub readings_per_event: usize,
    /// How event bodies are encoded (`events: {array: N, encoding: gzip}`).
    pub encoding: BodyEncoding,
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
            encoding: BodyEncoding::Json,
        }
    }
}

/// Pause after a refusal as busy, per Microsoft's guidance for server-busy.
const SERVER_BUSY_BACKOFF: Duration = Duration::from_secs(4);
/// A connection attempt (TCP, TLS, SASL, CBS, attach) that takes longer is abandoned.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Handing a batch to the link (flow control included) that takes longer means the link is dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// A batch the hub has not settled this long after it was sent is treated as lost with its link:
/// after a dropped connection fe2o3 may never resolve the delivery.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Batches are never packed smaller than this after a refusal for size.
const MIN_MESSAGE_SIZE: usize = 4 * 1024;
/// When a link is given up, answers already on their way are awaited this long (at most).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// An Event Hubs sink, ready to run.
pub struct EventHubSink {
    pub target: Target,
    pub credential: Credential,
    pub options: SinkOptions,
    pub stats: Arc<SinkStats>,
    pub state: watch::Sender<SinkState>,
    /// Where the secret is read again on refusals and SIGHUP; `None`: the credential is fixed.
    pub source: Option<CredentialSource>,
    /// Notify to read the secret again now (what SIGHUP does).
    pub reread: Arc<Notify>,
}

impl EventHubSink {
    pub fn new(target: Target, credential: Credential, options: SinkOptions) -> Self {
        EventHubSink {
            target,
            credential,
            options,
            stats: Arc::default(),
            state: watch::Sender::new(SinkState::Connecting),
            source: None,
            reread: Arc::default(),
        }
    }

    /// Reads the secret again from `source` on every refused credential and on SIGHUP.
    pub fn with_credential_source(mut self, source: CredentialSource) -> Self {
        self.source = Some(source);
        self
    }

    /// Runs until `input` closes (and everything is settled) or `cancel` fires (see the module
    /// doc). `acks` receives the sequence number up to which everything was accepted, in order;
    /// waiting on it is what slows the sink if the spool is slow to record acks. Returns the
    /// last sequence number acknowledged.
    pub async fn run(
        self,
        input: mpsc::Receiver<Vec<Outgoing>>,
        acks: mpsc::Sender<u64>,
        cancel: CancellationToken,
    ) -> Option<u64> {
        let reread = self.reread.clone();
        Driver::new(self, acks).run(input, cancel, reread).await
    }
}

/// The sink task's state. See the module doc.
struct Driver {
    target: Target,
    credential: Credential,
    source: Option<CredentialSource>,
    options: SinkOptions,
    stats: Arc<SinkStats>,
    state: watch::Sender<SinkState>,
    acks: mpsc::Sender<u64>,
    link: Option<Link>,
    window: Window,
    batcher: Batcher,
    health: Health,
    /// No connection attempt before this.
    retry_at: Option<Instant>,
    /// Nothing is sent before this: the hub said it is busy.
    hold_until: Option<Instant>,
    /// The link is being given up: answers are awaited until then, nothing new is sent.
    retiring: Option<Instant>,
    /// When to put a fresh token on the link (fixed when the token is put).
    renew_due: Option<Instant>,
    input_open: bool,
    /// Shutdown started: batches already packed may be settled until then.
    stopping: Option<Instant>,
    ever_connected: bool,
    last_acked: Option<u64>,
    /// Polite closes of links given up, so none outlives the task.
    closing: TaskTracker,
}

/// What the loop waits for, taken out of the `select!` so each has its own method.
enum Event {
    Cancel,
    Reread,
    Settled(usize, Settled),
    SettleOverdue,
    Retired,
    RenewalDue,
    HoldOver,
    Sent(usize, Result<Delivery, LinkError>),
    Linger,
    Input(Option<Vec<Outgoing>>),
    StopDeadline,
}

impl Driver {
    fn new(sink: EventHubSink, acks: mpsc::Sender<u64>) -> Driver {
        let EventHubSink {
            target,
            credential,
            options,
            stats,
            state,
            source,
            reread: _,
        } = sink;
        let batcher = Batcher::new(
            super::encoding::encoder(target.transport, options.encoding),
            options.message_id_prefix.clone(),
            options.readings_per_event,
            super::amqp::DEFAULT_MAX_MESSAGE_SIZE,
        );
        Driver {
            window: Window::new(options.max_in_flight),
            batcher,
            target,
            credential,
            source,
            options,
            stats,
            state,
            acks,
            link: None,
            health: Health::default(),
            retry_at: None,
            hold_until: None,
            retiring: None,
            renew_due: None,
            input_open: true,
            stopping: None,
            ever_connected: false,
            last_acked: None,
            closing: TaskTracker::new(),
        }
    }

    async fn run(
        mut self,
        mut input: mpsc::Receiver<Vec<Outgoing>>,
        cancel: CancellationToken,
        reread: Arc<Notify>,
    ) -> Option<u64> {
        let mut hangup = Hangup::new(self.source.is_some());
        loop {
            if !self.input_open && self.batcher.is_empty() && self.window.is_empty() {
                break;
            }
            if self.retiring.is_some() && self.window.in_flight() == 0 {
                self.finish_retiring();
            }
            // Shutdown: nothing new is sent; done once nothing is on the wire (at once when the
            // hub is down or refusing).
            if self.stopping.is_some() && self.window.in_flight() == 0 {
                self.report_unsent("shutdown");
                break;
            }
            if self.link.is_none() && self.has_work() {
                tokio::select! {
                    _ = cancel.cancelled() => self.on_cancel(&mut input),
                    _ = signalled(&reread, &mut hangup) => self.on_reread("SIGHUP"),
                    _ = self.connect() => {}
                }
                continue;
            }
            let event = self
                .next_event(&mut input, &cancel, &reread, &mut hangup)
                .await;
            match event {
                Event::Cancel => self.on_cancel(&mut input),
                Event::Reread => self.on_reread("SIGHUP"),
                Event::Settled(i, settled) => self.on_settled(i, settled).await,
                Event::SettleOverdue => self.on_settle_overdue(),
                Event::Retired => self.finish_retiring(),
                Event::RenewalDue => self.on_renewal_due().await,
                Event::HoldOver => self.hold_until = None,
                Event::Sent(i, sent) => self.on_sent(i, sent),
                Event::Linger => self.on_linger().await,
                Event::Input(events) => self.on_input(events).await,
                Event::StopDeadline => {
                    self.report_unsent("Shutdown grace period over");
                    break;
                }
            }
        }
        if let Some(link) = self.link.take() {
            link.close().await;
        }
        self.closing.close();
        self.closing.wait().await;
        let _ = self.state.send(SinkState::Stopped);
        self.last_acked
    }

    fn has_work(&self) -> bool {
        !self.window.is_empty() || !self.batcher.is_empty()
    }

    /// Waits for the next event.
    async fn next_event(
        &mut self,
        input: &mut mpsc::Receiver<Vec<Outgoing>>,
        cancel: &CancellationToken,
        reread: &Notify,
        hangup: &mut Hangup,
    ) -> Event {
        let now = Instant::now();
        let held = self.hold_until.is_some_and(|h| h > now);
        let to_send = match (&self.link, self.retiring, held, self.stopping) {
            (Some(_), None, false, None) => self.window.next_to_send().map(|(i, b)| (i, b.clone())),
            _ => None,
        };
        let linger = self.batcher.linger_deadline(self.options.linger);
        let renew = self
            .link
            .as_ref()
            .and(self.renew_due)
            .filter(|_| self.retiring.is_none());
        let settle_by = self.window.settle_deadline();
        let wants_input = self.input_open
            && self.stopping.is_none()
            && self.window.len() < self.options.max_in_flight.max(1) * 2;
        let Driver { link, window, .. } = self;
        tokio::select! {
            biased;
            // Shutdown: stop reading, settle what is packed within the grace period.
            _ = cancel.cancelled(), if self.stopping.is_none() => Event::Cancel,
            _ = sleep_until_opt(self.stopping), if self.stopping.is_some() => Event::StopDeadline,
            _ = signalled(reread, hangup) => Event::Reread,
            (i, settled) = window.next_settled() => Event::Settled(i, settled),
            _ = sleep_until_opt(settle_by), if settle_by.is_some() => Event::SettleOverdue,
            _ = sleep_until_opt(self.retiring), if self.retiring.is_some() => Event::Retired,
            _ = sleep_until_opt(renew), if renew.is_some() => Event::RenewalDue,
            _ = sleep_until_opt(self.hold_until), if self.hold_until.is_some() => Event::HoldOver,
            sent = send(link.as_mut(), to_send.as_ref().map(|(_, b)| b.clone())), if to_send.is_some() => {
                Event::Sent(to_send.as_ref().map_or(0, |(i, _)| *i), sent)
            }
            // Events already waiting are packed before a lingering batch goes: its readings may
            // be past their linger when they reach the sink, and the next chunk may fill it.
            next = input.recv(), if wants_input => Event::Input(next),
            _ = sleep_until_opt(linger), if linger.is_some() => Event::Linger,
        }
    }

    /// Opens a link (after the wait the streak asks for).
    async fn connect(&mut self) {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
        }
        let _ = self.state.send(match self.health.refused() {
            true => self.health.on_opened(),
            false => SinkState::Connecting,
        });
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            Link::open(&self.target, &self.credential, unix_now()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(LinkError::Open {
                host: self.target.host.clone(),
                reason: format!("no answer within {} s", OPEN_TIMEOUT.as_secs()),
            })
        });
        match opened {
            Ok(link) => self.on_connected(link),
            Err(error) => self.on_connect_failed(error),
        }
    }

    fn on_connected(&mut self, link: Link) {
        let max_size = link.max_message_size();
        self.fit(max_size);
        self.renew_due = Some(renewal_instant(link.token_expires_at()));
        self.stats
            .token_expires_at
            .store(link.token_expires_at(), Ordering::Relaxed);
        if self.ever_connected {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.ever_connected = true;
        self.retry_at = None;
        tracing::info!(message = "Connected to the event hub.", hub = %self.target.hub, host = %self.target.host, max_message_size = max_size);
        // An HTTPS "link" has not asked the hub anything yet: connected once a batch is accepted.
        if link.verified() || self.health.refused() {
            let _ = self.state.send(self.health.on_opened());
        }
        self.link = Some(link);
    }

    /// Packs for a link taking at most `max_size`: batches packed for more are split.
    fn fit(&mut self, max_size: usize) {
        if self.batcher.max_size() != max_size {
            if let Some(batch) = self.batcher.flush() {
                self.window.push(batch);
            }
            self.batcher.set_max_size(max_size);
        }
        for (seq, size) in self.window.fit_queued(max_size) {
            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                message = "Event too large for the hub; dropped (acknowledged in order).",
                seq,
                size,
                max = max_size
            );
        }
    }

    fn on_connect_failed(&mut self, error: LinkError) {
        let (wait, state, shown) = if error.is_auth() {
            self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            self.credential.forget_token();
            let (wait, state) = self.health.on_refused(error.to_string());
            (
                wait,
                state,
                "The event hub refused the credentials; data stays queued.",
            )
        } else {
            let (wait, state) = self.health.on_down(error.to_string());
            (wait, state, "Cannot connect to the event hub; retrying.")
        };
        let _ = self.state.send(state);
        tracing::warn!(message = shown, %error, retry_in_ms = wait.as_millis() as u64);
        self.retry_at = Some(Instant::now() + wait);
        if error.is_auth() && self.reread_credential("the credentials were refused") {
            self.retry_at = None;
        }
    }

    fn on_cancel(&mut self, input: &mut mpsc::Receiver<Vec<Outgoing>>) {
        self.stopping = Some(Instant::now() + self.options.shutdown_grace);
        input.close();
        self.input_open = false;
        if let Some(batch) = self.batcher.flush() {
            self.window.push(batch);
        }
    }

    fn on_reread(&mut self, why: &str) {
        if !self.reread_credential(why) {
            return;
        }
        // Use the new credential now: on the open link, or by trying again at once.
        self.retry_at = None;
        if self.link.is_some() {
            self.renew_due = Some(Instant::now());
        }
    }

    /// Reads the secret again; true if a new one is now in use.
    fn reread_credential(&mut self, why: &str) -> bool {
        let Some(source) = self.source.as_mut() else {
            return false;
        };
        match source.reread() {
            Ok(Some((target, credential))) => {
                tracing::info!(message = "A new event hub credential is in use.", credential = %credential.describe(), from = %source.describe(), reason = why);
                let moved = (&target.host, target.port, &target.hub)
                    != (&self.target.host, self.target.port, &self.target.hub);
                self.target = target;
                self.credential = credential;
                if moved {
                    self.retire(Duration::ZERO);
                }
                true
            }
            Ok(None) => {
                tracing::debug!(message = "The event hub credential is unchanged.", from = %source.describe(), reason = why);
                false
            }
            Err(error) => {
                tracing::warn!(message = "Cannot read the event hub credential again; keeping the one in use.", from = %source.describe(), reason = why, %error);
                false
            }
        }
    }

    async fn on_settled(&mut self, index: usize, settled: Settled) {
        let now = Instant::now();
        let why = match &settled {
            Settled::Accepted => String::new(),
            Settled::Busy(w)
            | Settled::Unauthorized(w)
            | Settled::TooLarge(w)
            | Settled::Failed(w) => w.clone(),
        };
        match self.window.settle(index, settled, now) {
            Verdict::Accepted { latency } => {
                self.stats.send_latency.observe(latency.as_secs_f64());
                self.health.on_accepted();
                self.state.send_if_modified(|state| {
                    let changed = *state != SinkState::Connected;
                    *state = SinkState::Connected;
                    changed
                });
                self.release().await;
            }
            Verdict::Busy { shrunk } => {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                let until = now + SERVER_BUSY_BACKOFF;
                self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
                if shrunk {
                    tracing::warn!(message = "The event hub is throttling; resending the refused batches after a pause.", error = %why, pause_ms = SERVER_BUSY_BACKOFF.as_millis() as u64, in_flight_limit = self.window.limit());
                }
            }
            Verdict::TooLarge { size } => {
                // The hub takes less than the link said (HTTPS: the tier's limit): pack smaller.
                let max = (size / 2).max(MIN_MESSAGE_SIZE);
                tracing::warn!(message = "The event hub refused a batch as too large; sending smaller batches.", error = %why, size, max_message_size = max);
                if let Some(link) = self.link.as_mut() {
                    link.limit_message_size(max);
                }
                self.fit(max);
            }
            // Several answers of a link being given up count once.
            Verdict::Unauthorized | Verdict::Failed if self.retiring.is_some() => {}
            Verdict::Unauthorized => {
                self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                self.credential.forget_token();
                let (wait, state) = self
                    .health
                    .on_refused(format!("{} refused: {why}", self.credential.describe()));
                let _ = self.state.send(state);
                tracing::warn!(message = "The event hub refused the credentials; data stays queued.", error = %why, retry_in_ms = wait.as_millis() as u64);
                self.retire(wait);
                if self.reread_credential("the credentials were refused") {
                    self.retry_at = Some(Instant::now());
                }
            }
            Verdict::Failed => {
                let (wait, state) = self.health.on_down(why.clone());
                let _ = self.state.send(state);
                tracing::warn!(message = "Delivery failed; resending what the hub did not accept on a new link.", error = %why, retry_in_ms = wait.as_millis() as u64);
                self.retire(wait);
            }
        }
    }

    /// Sends acknowledgements for every batch released at the front of the window.
    async fn release(&mut self) {
        if let Some((seq, events)) = self.window.release() {
            self.stats
                .events_accepted
                .fetch_add(events as u64, Ordering::Relaxed);
            self.last_acked = Some(seq);
            let _ = self.acks.send(seq).await;
        }
    }

    /// Gives the link up: nothing new is sent, answers on their way are awaited briefly, then
    /// the link closes and the next attempt waits `wait`.
    fn retire(&mut self, wait: Duration) {
        let now = Instant::now();
        self.retry_at = Some(now + wait);
        if self.link.is_none() {
            return;
        }
        if self.retiring.is_none() {
            self.retiring = Some(now + DRAIN_TIMEOUT.min(wait.max(Duration::from_millis(100))));
        }
        if self.window.in_flight() == 0 {
            self.finish_retiring();
        }
    }

    /// Honours the answers that came in, queues the rest again, closes the link (tracked).
    fn finish_retiring(&mut self) {
        self.retiring = None;
        let now = Instant::now();
        for verdict in self.window.honour_ready(now) {
            if let Verdict::Accepted { latency } = verdict {
                self.stats.send_latency.observe(latency.as_secs_f64());
            }
        }
        let resent = self.window.requeue_unsettled();
        if resent > 0 {
            tracing::debug!(
                message = "Batches without an answer are queued again.",
                batches = resent
            );
        }
        if let Some(link) = self.link.take() {
            self.closing.spawn(link.close());
        }
        self.renew_due = None;
        self.stats.token_expires_at.store(0, Ordering::Relaxed);
    }

    fn on_settle_overdue(&mut self) {
        let why = format!(
            "the hub did not settle a batch within {} s",
            SETTLE_TIMEOUT.as_secs()
        );
        let (wait, state) = self.health.on_down(why.clone());
        let _ = self.state.send(state);
        tracing::warn!(message = "Delivery failed; resending what the hub did not accept on a new link.", error = %why, retry_in_ms = wait.as_millis() as u64);
        self.retry_at = Some(Instant::now() + wait);
        self.finish_retiring();
    }

    async fn on_renewal_due(&mut self) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let renewed = tokio::time::timeout(
            OPEN_TIMEOUT,
            link.renew(&self.target, &self.credential, unix_now()),
        )
        .await
        .unwrap_or_else(|_| Err(LinkError::Send("token renewal got no answer".into())));
        match renewed {
            Ok(()) => {
                let expires = link.token_expires_at();
                self.renew_due = Some(renewal_instant(expires));
                self.stats
                    .token_expires_at
                    .store(expires, Ordering::Relaxed);
                self.stats.token_renewals.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(message = "Renewed the event hub token.");
            }
            Err(error) => {
                let (wait, state) = if error.is_auth() {
                    self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                    self.credential.forget_token();
                    self.health.on_refused(error.to_string())
                } else {
                    self.health.on_down(error.to_string())
                };
                let _ = self.state.send(state);
                tracing::warn!(message = "Token renewal failed; reconnecting.", %error, retry_in_ms = wait.as_millis() as u64);
                self.retire(wait);
                if error.is_auth() && self.reread_credential("the credentials were refused") {
                    self.retry_at = Some(Instant::now());
                }
            }
        }
    }

    fn on_sent(&mut self, index: usize, sent: Result<Delivery, LinkError>) {
        match sent {
            Ok(delivery) => {
                let now = Instant::now();
                if let Some(size) = self.window.encoded_size(index) {
                    self.stats
                        .bytes_sent
                        .fetch_add(size as u64, Ordering::Relaxed);
                }
                self.window
                    .mark_sent(index, delivery, now, now + SETTLE_TIMEOUT);
                self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                let (wait, state) = self.health.on_down(error.to_string());
                let _ = self.state.send(state);
                tracing::warn!(message = "Send failed; reconnecting.", %error, retry_in_ms = wait.as_millis() as u64);
                self.retire(wait);
            }
        }
    }

    async fn on_linger(&mut self) {
        if let Some(batch) = self.batcher.flush() {
            self.window.push(batch);
        }
    }

    async fn on_input(&mut self, events: Option<Vec<Outgoing>>) {
        let Some(events) = events else {
            self.input_open = false;
            if let Some(batch) = self.batcher.flush() {
                self.window.push(batch);
            }
            return;
        };
        let mut packed = Vec::new();
        self.batcher.add(events, Instant::now(), &mut packed);
        for p in packed {
            match p {
                Packed::Batch(batch) => self.window.push(batch),
                Packed::TooLarge { event, size, max } => {
                    dead_letter(&self.options, &event, size, max, &self.stats);
                    self.window.push_settled(event.seq);
                }
            }
        }
        self.release().await;
    }

    fn report_unsent(&self, why: &str) {
        let unsent = self.window.events() + self.batcher.events();
        if unsent > 0 || !self.input_open {
            tracing::warn!(
                message = "Event hub sink stopped; readings not accepted stay in the spool.",
                reason = why,
                unsent_in_sink = unsent
            );
        }
    }
}

/// Hands a batch to the link, within [`SEND_TIMEOUT`]. Dropping this future (another event won)
/// leaves the batch queued: it is marked sent only when this returns.
async fn send(
    link: Option<&mut Link>,
    batch: Option<super::event::Batch>,
) -> Result<Delivery, LinkError> {
    let (Some(link), Some(batch)) = (link, batch) else {
        return std::future::pending().await;
    };
    match tokio::time::timeout(SEND_TIMEOUT, link.send(batch)).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::Send(format!(
            "the link took no transfer within {} s",
            SEND_TIMEOUT.as_secs()
        ))),
    }
}

/// SIGHUP, when the sink reads its secret from a source.
struct Hangup(
    #[cfg(unix)] Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))] (),
);

impl Hangup {
    fn new(wanted: bool) -> Hangup {
        #[cfg(unix)]
        {
            let signal = wanted
                .then(|| {
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
                })
                .flatten();
            Hangup(signal)
        }
        #[cfg(not(unix))]
        {
            let _ = wanted;
            Hangup(())
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = self.0.as_mut() {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
}

/// SIGHUP or a request to read the secret again.
async fn signalled(reread: &Notify, hangup: &mut Hangup) {
    tokio::select! {
        _ = reread.notified() => {}
        _ = hangup.recv() => {}
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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

/// When to renew a token expiring at `expires_at` (Unix seconds), as an instant.
fn renewal_instant(expires_at: i64) -> Instant {
    let now = unix_now();
    Instant::now()
        + Duration::from_secs(renew_at(now, expires_at).saturating_sub(now).max(1) as u64)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}
