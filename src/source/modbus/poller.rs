//! The poller: one task per Modbus connection (one tag map), reading its tags on schedule.
//!
//! Invariants:
//! - **One request in flight per connection**: the task awaits each response before sending the
//!   next, and every unit id behind the connection shares that one line.
//! - **Cycles**: tags are grouped by poll interval; a group's cycle sends its planned reads in
//!   address order and emits what it read in order, in one [`SampleBatch`] every 5 ms
//!   (`HAND_OFF_EVERY`) and one at its end, so the first values of a long cycle (a serial line,
//!   a slow device) are not held back until its last response. A cycle that ends after its
//!   next tick is an *overrun*: counted, logged at the start of a streak, and the missed ticks
//!   are skipped (the schedule keeps its phase), so cycles never pile up.
//! - **Timestamps** are the instant the response arrived (wall clock, UTC). Every tag of one
//!   response carries the same timestamp.
//! - **Every value read is emitted**; the mapping stage turns them into changes (deadband 0 sends
//!   changes only) and re-sends unchanged values on `heartbeat`.
//! - **The link failed** (timeout, closed, garbled) → the connection is dropped and the read is
//!   retried on a fresh one, up to `retries` times. Reads that keep timing out mark their *unit*
//!   as down for a backoff (exponential with jitter) and later probes of it are not retried, so a
//!   dead device behind a gateway costs the others one timeout per backoff; other link failures
//!   end the cycle and reconnecting backs off the same way. Nothing restarts: once the device
//!   answers, values flow again.
//! - A tag map with `connections: N` runs N pollers, each owning one connection and a
//!   contiguous share of the planned reads ([`super::planner::share`]); they share counters.
//! - **The device said no** (a Modbus exception) to a read of several tags → the read is split
//!   in halves until the refused address is found. A single tag refused is *quarantined*:
//!   logged once, counted, left out of the joined reads, retried alone later (doubling waits).
//!   If both halves read fine the refused addresses lie between them: that gap is never joined
//!   again (a cut, kept for the life of the task). Busy/acknowledge exceptions skip the read this
//!   cycle; gateway exceptions (0x0A, 0x0B) treat the unit as down.
//! - **Per-tag causes go with the samples**: a tag the device refuses (quarantined, or behind a
//!   gateway exception) or whose answer cannot be decoded gets a [`SourceEvent::Lost`] naming the
//!   exception, in order with the cycle's samples, so a quality reading says why at once
//!   (docs/quality.md). Busy answers and timeouts send none: one of those is not a loss, and
//!   the mapping stage judges silence by age.
//! - The task stops when cancelled (dropping the connection and the sender) or when the mapping
//!   stage has gone away.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;

use super::counters::ModbusCounters;
use super::decode::{decode, Data};
use super::link::{self, Exception, Items, Link, LinkError};
use super::planner::{self, Blocked, Limits, ReadRequest};
use crate::config::tagmap::Table;
use crate::mapping::plan::{ModbusAddress, ModbusPlan, ModbusTransport, TagAddress, TagMapPlan};
use crate::sample::{Cause, Sample, SampleBatch, Scope, SourceEvent};

type Counters = ModbusCounters;

/// How long a cycle collects values before handing them to the mapping stage: the longest a
/// value waits for the rest of its cycle (the Event Hub sink's linger comes after).
const HAND_OFF_EVERY: Duration = Duration::from_millis(5);

/// Knobs with sensible defaults; tests shorten the waits.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// Times a read is sent again (on a fresh connection) after a timeout or link failure.
    pub retries: u32,
    /// First wait before reconnecting or re-trying a unit that timed out; doubles per failure.
    pub backoff_min: Duration,
    /// Longest such wait.
    pub backoff_max: Duration,
    /// First wait before a quarantined tag is read again; doubles per refusal.
    pub quarantine_retry: Duration,
    /// Longest wait between reads of a quarantined tag.
    pub quarantine_retry_max: Duration,
    /// Registers per read, 1..=125; lower for devices that accept fewer.
    pub max_registers: u16,
    /// Bits per read, 1..=2000.
    pub max_bits: u16,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            retries: 1,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            quarantine_retry: Duration::from_secs(30),
            quarantine_retry_max: Duration::from_secs(600),
            max_registers: planner::MAX_REGISTERS,
            max_bits: planner::MAX_BITS,
        }
    }
}

/// Tags sharing one poll interval, and their reads.
#[derive(Debug)]
struct Group {
    interval: Duration,
    tags: Vec<usize>,
    requests: Vec<ReadRequest>,
    /// The plan must be rebuilt (quarantine or cuts changed) before the next cycle.
    dirty: bool,
    next_due: Instant,
    /// In an overrun streak: logged at its start only.
    overrunning: bool,
}

#[derive(Debug)]
struct Quarantine {
    retry_at: Instant,
    wait: Duration,
}

#[derive(Debug, Default)]
struct UnitState {
    down_until: Option<Instant>,
    failures: u32,
}

/// Why a read went nowhere.
enum CallError {
    /// No answer within the timeout, on every attempt.
    Timeout,
    /// The link failed or cannot be opened: end the cycle.
    Link,
}

/// What became of one (possibly split) read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every tag was read.
    Read,
    /// Some tags were refused or skipped.
    Partly,
}

/// The link is down for this cycle; stop sending.
struct Abort;

pub(crate) struct Poller {
    name: String,
    target: String,
    transport: ModbusTransport,
    timeout: Duration,
    tuning: Tuning,
    limits: Limits,
    /// Modbus address of every tag of the plan, by tag index.
    tags: Vec<Option<ModbusAddress>>,
    groups: Vec<Group>,
    blocked: Blocked,
    quarantine: HashMap<usize, Quarantine>,
    units: HashMap<u8, UnitState>,
    link: Option<Link>,
    /// Link failures since the last response, for the reconnect backoff.
    link_failures: u32,
    /// The failure streak under way: when it began and the kind of its latest cause, so a
    /// streak is logged once when it starts, once per new kind of cause, and once when it ends.
    streak: Option<(Instant, std::mem::Discriminant<LinkError>)>,
    reconnect_at: Option<Instant>,
    counters: Arc<Counters>,
    /// Bounded: when the mapping stage is behind, the poller waits here (and its cycles overrun).
    tx: mpsc::Sender<SampleBatch>,
    /// Whether this poller counts in the `connected` gauge (shared by a tag map's connections).
    connected: bool,
}

impl Poller {
    pub(crate) fn new(
        plan: &TagMapPlan,
        source: &ModbusPlan,
        tuning: Tuning,
        counters: Arc<Counters>,
        tx: mpsc::Sender<SampleBatch>,
        only: &[usize],
    ) -> Poller {
        let limits = Limits {
            max_registers: tuning.max_registers,
            max_bits: tuning.max_bits,
            max_gap: source.max_gap,
        };
        let tags: Vec<Option<ModbusAddress>> = plan
            .tags
            .iter()
            .map(|t| match &t.address {
                TagAddress::Modbus(a) => Some(*a),
                TagAddress::OpcUa { .. } => None,
            })
            .collect();
        let mut by_interval: Vec<(Duration, Vec<usize>)> = Vec::new();
        for &i in only {
            let Some(tag) = plan.tags.get(i) else {
                continue;
            };
            if tags[i].is_none() {
                continue;
            }
            match by_interval.iter_mut().find(|(d, _)| *d == tag.interval) {
                Some((_, list)) => list.push(i),
                None => by_interval.push((tag.interval, vec![i])),
            }
        }
        let now = Instant::now();
        let groups = by_interval
            .into_iter()
            .map(|(interval, tags)| Group {
                interval: interval.max(Duration::from_millis(1)),
                tags,
                requests: Vec::new(),
                dirty: true,
                next_due: now,
                overrunning: false,
            })
            .collect();
        Poller {
            name: plan.path.display().to_string(),
            target: link::describe(&source.transport),
            transport: source.transport.clone(),
            timeout: source.timeout,
            tuning,
            limits,
            tags,
            groups,
            blocked: Blocked::default(),
            quarantine: HashMap::new(),
            units: HashMap::new(),
            link: None,
            link_failures: 0,
            streak: None,
            reconnect_at: None,
            counters,
            tx,
            connected: false,
        }
    }

    /// Polls until the mapping stage goes away; the caller cancels by dropping this future.
    pub(crate) async fn run(mut self) {
        if self.groups.is_empty() {
            return;
        }
        loop {
            let Some(gi) = (0..self.groups.len()).min_by_key(|&i| self.groups[i].next_due) else {
                return;
            };
            let due = self.groups[gi].next_due;
            tokio::time::sleep_until(due).await;
            let reads_before = self.counters.requests.load(Ordering::Relaxed);
            let mut batch = self.cycle(gi).await;
            Counters::set(
                &self.counters.last_cycle_reads,
                self.counters.requests.load(Ordering::Relaxed) - reads_before,
            );
            if !self.hand_off(&mut batch).await {
                return;
            }
            self.schedule(gi, due);
        }
    }

    /// Books the cycle that was due at `due` and sets the group's next tick.
    fn schedule(&mut self, gi: usize, due: Instant) {
        let now = Instant::now();
        let group = &mut self.groups[gi];
        let took = now.saturating_duration_since(due);
        Counters::inc(&self.counters.cycles);
        Counters::set(
            &self.counters.last_cycle_micros,
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        );
        let interval = group.interval;
        if took > interval {
            Counters::inc(&self.counters.overruns);
            if !group.overrunning {
                group.overrunning = true;
                tracing::warn!(
                    message = "Modbus poll cycle took longer than its interval; skipping the missed cycles.",
                    tag_map = %self.name,
                    target = %self.target,
                    interval = ?interval,
                    took = ?took,
                    tags = group.tags.len(),
                    reads = group.requests.len(),
                );
            }
        } else if group.overrunning {
            group.overrunning = false;
            tracing::info!(
                message = "Modbus poll cycles fit their interval again.",
                tag_map = %self.name,
                interval = ?interval,
            );
        }
        group.next_due = next_tick(due, interval, now);
    }

    /// Sends what `batch` holds to the mapping stage (nothing if it is empty); false once the
    /// stage is gone.
    async fn hand_off(&mut self, batch: &mut SampleBatch) -> bool {
        if batch.is_empty() {
            return !self.tx.is_closed();
        }
        let batch = std::mem::take(batch);
        Counters::add(&self.counters.samples, batch.len() as u64);
        self.tx.send(batch).await.is_ok()
    }

    /// One cycle of group `gi`: its planned reads, then due retries of its quarantined tags.
    /// What was read goes to the mapping stage every [`HAND_OFF_EVERY`] during the cycle and
    /// the rest is returned, so a long cycle does not hold its first values until its end.
    async fn cycle(&mut self, gi: usize) -> SampleBatch {
        if self.groups[gi].dirty {
            self.replan(gi);
        }
        let mut batch = SampleBatch::with_capacity(self.groups[gi].tags.len());
        let requests = std::mem::take(&mut self.groups[gi].requests);
        let mut aborted = false;
        let mut handed_off = Instant::now();
        for req in &requests {
            if self.unit_down(req.unit) {
                Counters::inc(&self.counters.skipped_unit_down);
                continue;
            }
            if self
                .read_tags(req.unit, req.table, &req.tags, &mut batch)
                .await
                .is_err()
            {
                aborted = true;
                break;
            }
            if handed_off.elapsed() >= HAND_OFF_EVERY {
                handed_off = Instant::now();
                // The stage is gone: the run loop's own hand-off sees it and stops.
                if !self.hand_off(&mut batch).await {
                    break;
                }
            }
        }
        // Put the plan back unless a read changed what it must be.
        if !self.groups[gi].dirty {
            self.groups[gi].requests = requests;
        }
        if !aborted && !self.quarantine.is_empty() {
            let now = Instant::now();
            let due: Vec<usize> = self.groups[gi]
                .tags
                .iter()
                .copied()
                .filter(|t| self.quarantine.get(t).is_some_and(|q| q.retry_at <= now))
                .collect();
            for tag in due {
                let Some(a) = self.tags[tag] else { continue };
                if self.unit_down(a.unit) {
                    continue;
                }
                if self
                    .read_tags(a.unit, a.table, &[tag], &mut batch)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        batch
    }

    fn replan(&mut self, gi: usize) {
        let group = &mut self.groups[gi];
        let tags: Vec<(usize, ModbusAddress)> = group
            .tags
            .iter()
            .filter(|t| !self.quarantine.contains_key(t))
            .filter_map(|&t| Some((t, self.tags[t]?)))
            .collect();
        group.requests = planner::plan(&tags, self.limits, &self.blocked);
        group.dirty = false;
    }

    fn unit_down(&self, unit: u8) -> bool {
        self.units
            .get(&unit)
            .and_then(|u| u.down_until)
            .is_some_and(|until| Instant::now() < until)
    }

    fn backoff(&self, failures: u32) -> Duration {
        backoff(
            self.tuning.backoff_min,
            self.tuning.backoff_max,
            failures,
            rand::thread_rng().gen_range(0.5..=1.0),
        )
    }

    /// Reads `tags` (sorted by address, same unit and table) in one request, splitting it on a
    /// Modbus exception to find the refused tag. Samples go to `batch`, and so does a
    /// [`SourceEvent::Lost`] with the device's reason for every tag it refused (or whose value
    /// cannot be decoded), in order with the samples.
    fn read_tags<'a>(
        &'a mut self,
        unit: u8,
        table: Table,
        tags: &'a [usize],
        batch: &'a mut SampleBatch,
    ) -> Pin<Box<dyn Future<Output = Result<Outcome, Abort>> + Send + 'a>> {
        Box::pin(async move {
            let spans: Vec<(u32, u32)> = tags
                .iter()
                .filter_map(|&t| self.tags[t].as_ref().map(planner::span))
                .collect();
            let (Some(start), Some(end)) = (
                spans.iter().map(|s| s.0).min(),
                spans.iter().map(|s| s.1).max(),
            ) else {
                return Ok(Outcome::Read);
            };
            // Tags end at most at 65536 and reads are planned within the protocol's limits.
            let (address, count) = (start as u16, (end - start) as u16);
            match self.call(unit, table, address, count).await {
                Ok(Ok(items)) => {
                    let timestamp = Utc::now();
                    batch.received_now();
                    for &t in tags {
                        let Some(a) = self.tags[t] else { continue };
                        let offset = usize::from(a.address - address);
                        let data = match &items {
                            Items::Bits(bits) => Data::Bits(bits.get(offset..).unwrap_or(&[])),
                            Items::Words(words) => Data::Words(words.get(offset..).unwrap_or(&[])),
                        };
                        match decode(&a, data) {
                            Ok(value) => batch.push(Sample {
                                tag: t,
                                timestamp,
                                value,
                            }),
                            Err(error) => {
                                Counters::inc(&self.counters.decode_errors);
                                tracing::debug!(message = "Cannot decode a Modbus value.", tag = t, %error);
                                lost(batch, t, Cause::Undecodable);
                            }
                        }
                        if !self.quarantine.is_empty() {
                            self.release(t);
                        }
                    }
                    Ok(Outcome::Read)
                }
                Ok(Err(code)) => match u8::from(code) {
                    // Acknowledge, busy: try again next cycle.
                    0x05 | 0x06 => Ok(Outcome::Partly),
                    // Gateway path unavailable, target device failed to respond: the unit is gone.
                    0x0A | 0x0B => {
                        self.unit_failed(unit, &Exception(code).to_string());
                        for &t in tags {
                            lost(batch, t, Cause::ModbusException(u8::from(code)));
                        }
                        Ok(Outcome::Partly)
                    }
                    _ if tags.len() == 1 => {
                        self.quarantine(tags[0], code);
                        lost(batch, tags[0], Cause::ModbusException(u8::from(code)));
                        Ok(Outcome::Partly)
                    }
                    _ => {
                        let mid = tags.len() / 2;
                        let left = self.read_tags(unit, table, &tags[..mid], batch).await?;
                        let right = self.read_tags(unit, table, &tags[mid..], batch).await?;
                        if left == Outcome::Read && right == Outcome::Read {
                            let left_end = spans[..mid].iter().map(|s| s.1).max().unwrap_or(0);
                            let right_start = spans[mid..].iter().map(|s| s.0).min().unwrap_or(0);
                            if left_end <= right_start {
                                self.cut(unit, table, left_end, right_start, code);
                            }
                        }
                        Ok(Outcome::Partly)
                    }
                },
                Err(CallError::Timeout) => {
                    self.unit_failed(unit, "no answer");
                    Ok(Outcome::Partly)
                }
                Err(CallError::Link) => Err(Abort),
            }
        })
    }

    /// Sends one read, reconnecting and retrying on link failures.
    async fn call(
        &mut self,
        unit: u8,
        table: Table,
        address: u16,
        count: u16,
    ) -> Result<Result<Items, ExceptionCode>, CallError> {
        let mut attempt = 0;
        // A unit already known not to answer is probed once, not retried: a dead device
        // behind a gateway costs one timeout per backoff.
        let retries = if self.units.get(&unit).is_some_and(|u| u.failures > 0) {
            0
        } else {
            self.tuning.retries
        };
        loop {
            if self.link.is_none() {
                if self.reconnect_at.is_some_and(|at| Instant::now() < at) {
                    return Err(CallError::Link);
                }
                match link::connect(&self.transport, self.timeout).await {
                    Ok(l) => {
                        Counters::inc(&self.counters.connects);
                        self.set_connected(true);
                        // A connection that opens is not yet a device that answers: the streak
                        // ends at the first answer, below.
                        self.reconnect_at = None;
                        self.link = Some(l);
                    }
                    Err(error) => {
                        Counters::inc(&self.counters.connect_failures);
                        self.link_down(&error);
                        return Err(CallError::Link);
                    }
                }
            }
            let Some(link) = self.link.as_mut() else {
                return Err(CallError::Link);
            };
            Counters::inc(&self.counters.requests);
            match link.read(unit, table, address, count, self.timeout).await {
                Ok(result) => {
                    if result.is_ok() {
                        Counters::inc(&self.counters.responses);
                    } else {
                        Counters::inc(&self.counters.exceptions);
                    }
                    if let Some((since, _)) = self.streak.take() {
                        tracing::info!(message = "Modbus device answers again.", tag_map = %self.name, target = %self.target, failures = self.link_failures, after = ?since.elapsed());
                    }
                    self.link_failures = 0;
                    if let Some(u) = self.units.get_mut(&unit) {
                        if u.failures > 0 {
                            tracing::info!(message = "Modbus unit answers again.", tag_map = %self.name, unit);
                        }
                        *u = UnitState::default();
                    }
                    return Ok(result);
                }
                Err(error) => {
                    let timed_out = matches!(error, LinkError::Timeout(_));
                    if timed_out {
                        Counters::inc(&self.counters.timeouts);
                    } else {
                        Counters::inc(&self.counters.link_errors);
                    }
                    // The stream may still carry a late answer: never reuse it.
                    self.link = None;
                    self.set_connected(false);
                    if attempt >= retries {
                        if timed_out {
                            return Err(CallError::Timeout);
                        }
                        self.link_down(&error);
                        return Err(CallError::Link);
                    }
                    attempt += 1;
                    Counters::inc(&self.counters.retries);
                    tracing::debug!(message = "Modbus read failed; retrying on a new connection.", target = %self.target, unit, %error);
                }
            }
        }
    }

    /// The link failed for good this cycle: back off before reconnecting.
    fn link_down(&mut self, error: &LinkError) {
        self.link = None;
        self.set_connected(false);
        self.link_failures = self.link_failures.saturating_add(1);
        let wait = self.backoff(self.link_failures);
        self.reconnect_at = Some(Instant::now() + wait);
        let kind = std::mem::discriminant(error);
        match self.streak {
            None => {
                self.streak = Some((Instant::now(), kind));
                tracing::warn!(message = "Modbus connection failed; reconnecting with backoff.", tag_map = %self.name, target = %self.target, %error, retry_in = ?wait);
            }
            Some((since, last)) if last != kind => {
                self.streak = Some((since, kind));
                tracing::warn!(message = "Modbus connection still failing, for another reason.", tag_map = %self.name, target = %self.target, %error, failures = self.link_failures, retry_in = ?wait);
            }
            Some(_) => {
                tracing::debug!(message = "Modbus connection still failing.", target = %self.target, %error, failures = self.link_failures, retry_in = ?wait);
            }
        }
    }

    /// A unit did not answer: skip its reads for a backoff.
    fn unit_failed(&mut self, unit: u8, why: &str) {
        let failures = self.units.get(&unit).map_or(0, |u| u.failures) + 1;
        let wait = self.backoff(failures);
        let state = self.units.entry(unit).or_default();
        state.failures = failures;
        state.down_until = Some(Instant::now() + wait);
        if failures == 1 {
            tracing::warn!(message = "Modbus unit does not answer; its reads are skipped for a while, other units keep flowing.", tag_map = %self.name, target = %self.target, unit, error = why, retry_in = ?wait);
        } else {
            tracing::debug!(message = "Modbus unit still does not answer.", unit, error = why, failures, retry_in = ?wait);
        }
    }

    /// The device refused `tag` on its own: keep it out of joined reads and retry it later.
    fn quarantine(&mut self, tag: usize, code: ExceptionCode) {
        let now = Instant::now();
        if let Some(q) = self.quarantine.get_mut(&tag) {
            q.wait = (q.wait * 2).min(self.tuning.quarantine_retry_max);
            q.retry_at = now + q.wait;
            return;
        }
        let Some(a) = self.tags[tag] else { return };
        let (start, end) = planner::span(&a);
        self.blocked.add(a.unit, a.table, start, end);
        let wait = self.tuning.quarantine_retry;
        self.quarantine.insert(
            tag,
            Quarantine {
                retry_at: now + wait,
                wait,
            },
        );
        Counters::inc(&self.counters.quarantines);
        Counters::inc(&self.counters.quarantined_tags);
        self.mark_dirty();
        tracing::warn!(
            message = "Quarantined a Modbus tag the device refuses to read; the other tags keep flowing.",
            tag_map = %self.name,
            tag,
            unit = a.unit,
            table = a.table.name(),
            address = a.address,
            error = %Exception(code),
            retry_in = ?wait,
        );
    }

    /// `tag` was read: lift its quarantine if it had one.
    fn release(&mut self, tag: usize) {
        if self.quarantine.remove(&tag).is_none() {
            return;
        }
        if let Some(a) = self.tags[tag] {
            let (start, end) = planner::span(&a);
            self.blocked.remove(a.unit, a.table, start, end);
            tracing::info!(message = "A quarantined Modbus tag reads again.", tag_map = %self.name, tag, unit = a.unit, table = a.table.name(), address = a.address);
        }
        self.counters
            .quarantined_tags
            .fetch_sub(1, Ordering::Relaxed);
        self.mark_dirty();
    }

    /// The device refused a read whose tags all read fine alone: never join across the gap.
    fn cut(&mut self, unit: u8, table: Table, start: u32, end: u32, code: ExceptionCode) {
        self.blocked.add(unit, table, start, end);
        self.mark_dirty();
        tracing::warn!(
            message = "The device refuses reads across a gap between tags; reading them separately from now on.",
            tag_map = %self.name,
            unit,
            table = table.name(),
            from = start,
            to = end,
            error = %Exception(code),
        );
    }

    /// Moves the shared `connected` gauge (connections open, over all of a tag map's pollers).
    fn set_connected(&mut self, up: bool) {
        if up != self.connected {
            self.connected = up;
            if up {
                Counters::inc(&self.counters.connected);
            } else {
                self.counters.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn mark_dirty(&mut self) {
        for g in &mut self.groups {
            g.dirty = true;
        }
    }
}

impl Drop for Poller {
    /// Takes this poller out of the shared gauges.
    fn drop(&mut self) {
        self.set_connected(false);
        let quarantined = self.quarantine.len() as u64;
        self.counters
            .quarantined_tags
            .fetch_sub(quarantined, Ordering::Relaxed);
    }
}

/// `tag` cannot be read from now, because of `cause`: the mapping stage turns this into one bad
/// reading per gap when quality is on (docs/quality.md), and sends no heartbeat of its old value.
fn lost(batch: &mut SampleBatch, tag: usize, cause: Cause) {
    batch.received_now();
    batch.event(SourceEvent::Lost {
        scope: Scope::Tag(tag),
        at: Utc::now(),
        cause,
    });
}

/// The first tick after `now` in the schedule `due + k · interval` (k ≥ 1): the phase is kept
/// and ticks already past are skipped, never caught up.
fn next_tick(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next > now {
        return next;
    }
    let behind = now.saturating_duration_since(next).as_nanos() / interval.as_nanos().max(1);
    let skip = u32::try_from(behind + 1).unwrap_or(u32::MAX);
    next + interval.saturating_mul(skip)
}

/// `min · 2^(failures-1)`, at most `max`, scaled by `jitter` (0.5..=1: "equal jitter", so
/// reconnecting gateways spread out but never retry sooner than half the wait).
fn backoff(min: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let exp = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    exp.min(max).mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrun_cycles_skip_missed_ticks_and_keep_the_phase() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // On time: the next tick.
        assert_eq!(next_tick(t0, ms(100), t0 + ms(30)), t0 + ms(100));
        // Ended exactly on the next tick: that tick is past, take the one after.
        assert_eq!(next_tick(t0, ms(100), t0 + ms(100)), t0 + ms(200));
        // Took 3.5 intervals: ticks 1..=3 are skipped, not run back to back.
        assert_eq!(next_tick(t0, ms(100), t0 + ms(350)), t0 + ms(400));
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff(min, max, 1, 1.0), min);
        assert_eq!(backoff(min, max, 3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(min, max, 30, 1.0), max);
        assert_eq!(backoff(min, max, 3, 0.5), Duration::from_millis(200));
    }
}
