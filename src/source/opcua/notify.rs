//! Notifications → samples: the state the source's tasks share ([`Ctx`]), the bounded queue
//! between the notification callback and the forwarding task, the subscription callback with
//! its sequence-gap detection, and the conversion of notification messages into samples.
//! See the module docs of [`super`] for the invariants.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore};
use opcua::types::{DataChangeNotification, NotificationMessage, StatusCode};
use tokio::sync::Notify;

use super::convert::{self, EnumNames, Quality, TimestampSource, UncertainPolicy};
use super::OpcUaCounters;
use crate::mapping::{OpcUaPlan, TagMapPlan};
use crate::sample::{Cause, Sample, SampleBatch, Scope, SourceEvent};

/// Per-tag flags, so each problem is logged once per episode.
const FLAG_BAD: u8 = 1;
const FLAG_UNSUPPORTED: u8 = 2;
/// The node does not exist (any more): counted in [`OpcUaCounters::tags_gone`].
const FLAG_GONE: u8 = 4;

/// Everything the tasks of one source share.
pub(super) struct Ctx {
    pub plan: Arc<TagMapPlan>,
    pub source: Arc<OpcUaPlan>,
    pub counters: Arc<OpcUaCounters>,
    pub queue: Arc<Queue>,
    /// One per tag: [`FLAG_BAD`], [`FLAG_UNSUPPORTED`], [`FLAG_GONE`].
    pub flags: Arc<Vec<AtomicU8>>,
    /// Per tag: the array element it monitors (`elements:`). Empty when no tag has one: the
    /// server sends values in its own order, so each per-tag array looked up per value costs
    /// a cache miss at 100 000 tags.
    pub elements: Vec<Option<u32>>,
    pub timestamps: TimestampSource,
    pub uncertain: UncertainPolicy,
}

/// Samples (and status events) waiting for the forwarding task. Bounded: when full, the oldest
/// samples are dropped.
pub(super) struct Queue {
    samples: Mutex<SampleBatch>,
    pub(super) notify: Notify,
    capacity: usize,
}

impl Queue {
    pub(super) fn new(capacity: usize) -> Queue {
        Queue {
            samples: Mutex::new(SampleBatch::default()),
            notify: Notify::new(),
            capacity,
        }
    }

    /// Appends `batch` (samples and the status events between them); returns how many old
    /// samples were dropped to make room. Events are never dropped.
    pub(super) fn push(&self, mut batch: SampleBatch) -> usize {
        if batch.is_empty() {
            return 0;
        }
        let mut dropped = 0;
        {
            // A poisoned lock only means another callback panicked mid-push; the Vec is
            // still valid.
            let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            let total = samples.len() + batch.len();
            if total > self.capacity {
                let excess = total - self.capacity;
                let from_old = excess.min(samples.len());
                samples.drain(..from_old);
                for (before, _) in &mut samples.events {
                    *before = before.saturating_sub(from_old);
                }
                let from_new = excess - from_old;
                batch.drain(..from_new);
                for (before, _) in &mut batch.events {
                    *before = before.saturating_sub(from_new);
                }
                dropped = excess;
            }
            // The earliest of the two, or now.
            samples.received = match (samples.received, batch.received) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            samples.received_now();
            let base = samples.len();
            samples
                .events
                .extend(batch.events.drain(..).map(|(before, e)| (before + base, e)));
            samples.append(&mut batch.samples);
        }
        self.notify.notify_one();
        dropped
    }

    /// Appends a status event after the samples queued so far. A confirmation replaces one
    /// queued right before it (only the newest matters), so events stay few.
    pub(super) fn event(&self, event: SourceEvent) {
        {
            let mut queued = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            let n = queued.samples.len();
            if let (SourceEvent::Confirmed { .. }, Some((before, SourceEvent::Confirmed { .. }))) =
                (&event, queued.events.last())
            {
                if *before == n {
                    queued.events.pop();
                }
            }
            queued.event(event);
            queued.received_now();
        }
        self.notify.notify_one();
    }

    /// Status events (and OPC UA events) waiting now.
    pub(super) fn pending_events(&self) -> usize {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events
            .len()
    }

    pub(super) fn take(&self) -> SampleBatch {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Largest sequence-number gap that is republished; a larger jump means the subscription was
/// re-created (numbers start again) or the loss is beyond what the server keeps.
const MAX_GAP: u32 = 1000;

/// Notification messages lost in transit, found by gaps in sequence numbers, waiting for
/// Republish (OPC UA Part 4, 5.13.6).
#[derive(Default)]
pub(super) struct Gaps {
    /// (subscription id, sequence number) pairs.
    pub missing: Mutex<Vec<(u32, u32)>>,
    pub notify: Notify,
}

/// The subscription callback: one batch per publish response, and gap detection.
pub(super) struct Notifier {
    pub deliver: Arc<Deliver>,
    /// The server's id of this notifier's subscription, set once it is known.
    pub subscription: Arc<AtomicU32>,
    /// The last data message's sequence number; 0: none yet.
    pub last: u32,
    pub gaps: Arc<Gaps>,
}

impl Notifier {
    /// Records the sequence numbers skipped before `seq`; returns whether any were.
    fn track(&mut self, seq: u32) -> bool {
        let last = self.last;
        // Numbers restart when a subscription is re-created: no gap, just a new start.
        if last == 0 || seq <= last || seq - last > MAX_GAP {
            self.last = seq;
            return false;
        }
        self.last = seq;
        if seq == last + 1 {
            return false;
        }
        let id = self.subscription.load(Ordering::Relaxed);
        let mut missing = self.gaps.missing.lock().unwrap_or_else(|p| p.into_inner());
        missing.extend((last + 1..seq).map(|n| (id, n)));
        drop(missing);
        self.gaps.notify.notify_one();
        true
    }
}

impl OnSubscriptionNotificationCore for Notifier {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let confirmed_at = Utc::now();
        // Keep-alives carry the next number without consuming it: only data messages count.
        if notification
            .notification_data
            .as_ref()
            .is_some_and(|d| !d.is_empty())
        {
            self.track(notification.sequence_number);
            let messages = &self.deliver.ctx.counters.messages;
            messages.fetch_add(1, Ordering::Relaxed);
        }
        self.deliver.deliver(notification);
        // A publish or keep-alive response: the subscription is alive, its values still hold.
        self.deliver
            .ctx
            .queue
            .event(SourceEvent::Confirmed { at: confirmed_at });
    }
}

/// A per-tag table, or an empty one when no tag has an entry: looked up with `get(tag)`, an
/// empty table answers `None` without touching memory.
pub(super) fn per_tag_or_empty<T>(per_tag: impl IntoIterator<Item = Option<T>>) -> Vec<Option<T>> {
    let table: Vec<Option<T>> = per_tag.into_iter().collect();
    if table.iter().all(Option::is_none) {
        Vec::new()
    } else {
        table
    }
}

/// Turns notification messages (published or republished) into queued samples.
pub(super) struct Deliver {
    pub ctx: Arc<Ctx>,
    /// State names per tag (enumerations), read at start. Empty when no tag has any (as
    /// [`Ctx::elements`]).
    pub names: Arc<Vec<Option<EnumNames>>>,
    /// Structure tags (`members:`) and their learned types; None when the tag map has none.
    pub structs: Option<Arc<super::structure::Structures>>,
}

impl Deliver {
    /// Turns one notification message into samples and status events for the mapping stage.
    /// Long on purpose: one pass over the items with the per-status rules (Good, Uncertain,
    /// Bad, gone) side by side, so the policy documented in docs/sources.md reads in one place.
    pub fn deliver(&self, notification: NotificationMessage) {
        let Some(data) = notification.notification_data else {
            return;
        };
        let now = Utc::now();
        let ctx = &self.ctx;
        // Samples, with status events in order between them: a tag whose value is not usable
        // (Bad, or Uncertain when skipped) gets a Lost event (no heartbeat for it), stamped like
        // a value (source timestamp by default), so a gap starts when the server says the
        // status began; an Uncertain value that is sent is preceded by its mark.
        let mut batch = SampleBatch::default();
        let (mut bad, mut uncertain, mut unsupported) = (0u64, 0u64, 0u64);
        for object in data {
            let Some(change) = object.into_inner_as::<DataChangeNotification>() else {
                continue;
            };
            let items = change.monitored_items.unwrap_or_default();
            batch.reserve(items.len());
            for item in items {
                let Some(tag) = (item.client_handle as usize).checked_sub(1) else {
                    continue;
                };
                let (Some(plan), Some(flags)) = (ctx.plan.tags.get(tag), ctx.flags.get(tag)) else {
                    continue;
                };
                let value = item.value;
                match convert::quality(value.status) {
                    Quality::Bad => {
                        bad += 1;
                        self.lost(
                            &mut batch,
                            tag,
                            value.status.unwrap_or(StatusCode::Bad),
                            convert::timestamp(&value, ctx.timestamps, now),
                        );
                        let status = value.status.unwrap_or(StatusCode::Bad);
                        if is_gone(status) {
                            let before = flags.fetch_or(FLAG_BAD | FLAG_GONE, Ordering::Relaxed);
                            if before & FLAG_BAD == 0 {
                                ctx.counters.tags_bad.fetch_add(1, Ordering::Relaxed);
                            }
                            if before & FLAG_GONE == 0 {
                                ctx.counters.tags_gone.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    message = "OPC UA node does not exist on the server (deleted or renamed?); the tag counts as failed until the node is back.",
                                    sensor_id = %plan.sensor_id,
                                    %status
                                );
                            }
                            continue;
                        }
                        if flags.fetch_or(FLAG_BAD, Ordering::Relaxed) & FLAG_BAD == 0 {
                            ctx.counters.tags_bad.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                message = "OPC UA tag has a Bad status; its values are skipped until it recovers.",
                                sensor_id = %plan.sensor_id,
                                status = %value.status.unwrap_or(StatusCode::Bad)
                            );
                        }
                        continue;
                    }
                    Quality::Uncertain => {
                        uncertain += 1;
                        if ctx.uncertain == UncertainPolicy::Skip {
                            self.lost(
                                &mut batch,
                                tag,
                                value.status.unwrap_or(StatusCode::Uncertain),
                                convert::timestamp(&value, ctx.timestamps, now),
                            );
                            continue;
                        }
                    }
                    Quality::Good => {}
                }
                if flags.load(Ordering::Relaxed) & FLAG_BAD != 0
                    && flags.fetch_and(!FLAG_BAD, Ordering::Relaxed) & FLAG_BAD != 0
                {
                    ctx.counters.tags_bad.fetch_sub(1, Ordering::Relaxed);
                    tracing::info!(message = "OPC UA tag recovered from a Bad status.", sensor_id = %plan.sensor_id);
                }
                if flags.load(Ordering::Relaxed) & FLAG_GONE != 0
                    && flags.fetch_and(!FLAG_GONE, Ordering::Relaxed) & FLAG_GONE != 0
                {
                    ctx.counters.tags_gone.fetch_sub(1, Ordering::Relaxed);
                }
                let Some(variant) = &value.value else {
                    unsupported += 1;
                    continue;
                };
                if let Some(structs) = &self.structs {
                    let at = convert::timestamp(&value, ctx.timestamps, now);
                    let element = ctx.elements.get(tag).copied().flatten();
                    let uncertain = value.status.filter(StatusCode::is_uncertain);
                    if let Some(failed) =
                        structs.deliver(tag, element, variant, at, uncertain, &mut batch)
                    {
                        unsupported += failed;
                        continue;
                    }
                }
                let names = self.names.get(tag).and_then(Option::as_ref);
                let converted = match ctx.elements.get(tag).copied().flatten() {
                    Some(index) => convert::convert_element(variant, index, names),
                    None => convert::convert(variant, names),
                };
                match converted {
                    Ok(raw) => {
                        let timestamp = convert::timestamp(&value, ctx.timestamps, now);
                        if let Some(status) = value.status.filter(StatusCode::is_uncertain) {
                            batch.event(SourceEvent::Uncertain {
                                tag,
                                timestamp,
                                cause: Cause::OpcUaStatus(convert::status_name(status)),
                            });
                        }
                        batch.push(Sample {
                            tag,
                            timestamp,
                            value: raw,
                        });
                    }
                    Err(error) => {
                        unsupported += 1;
                        if flags.fetch_or(FLAG_UNSUPPORTED, Ordering::Relaxed) & FLAG_UNSUPPORTED
                            == 0
                        {
                            tracing::warn!(
                                message = "OPC UA tag value cannot be read; skipping it.",
                                sensor_id = %plan.sensor_id,
                                %error
                            );
                        }
                    }
                }
            }
        }
        let c = &ctx.counters;
        if bad > 0 {
            c.bad.fetch_add(bad, Ordering::Relaxed);
        }
        if uncertain > 0 {
            c.uncertain.fetch_add(uncertain, Ordering::Relaxed);
        }
        if unsupported > 0 {
            c.unsupported.fetch_add(unsupported, Ordering::Relaxed);
        }
        c.readings.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let dropped = ctx.queue.push(batch);
        if dropped > 0
            && c.overflow_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed)
                == 0
        {
            tracing::warn!(
                message = "The mapping stage is behind; dropping the oldest OPC UA samples.",
                tag_map = %ctx.plan.path.display(),
                dropped
            );
        }
    }
}

impl Deliver {
    /// Tag `tag` cannot be read from `at`: one Lost event for it, or for each of its fields
    /// when it is a structure (a structure's status is its fields' status).
    fn lost(
        &self,
        batch: &mut SampleBatch,
        tag: usize,
        status: StatusCode,
        at: chrono::DateTime<Utc>,
    ) {
        match &self.structs {
            Some(structs) => {
                for field in structs.tags_of(tag) {
                    batch.event(lost(field, status, at));
                }
            }
            None => batch.event(lost(tag, status, at)),
        }
    }
}

/// Tag `tag` cannot be read from `at`, because the server says `status`.
fn lost(tag: usize, status: StatusCode, at: chrono::DateTime<Utc>) -> SourceEvent {
    SourceEvent::Lost {
        scope: Scope::Tag(tag),
        at,
        cause: Cause::OpcUaStatus(convert::status_name(status)),
    }
}

/// A status that says the node is not there (Part 4, 7.39).
fn is_gone(status: StatusCode) -> bool {
    status == StatusCode::BadNodeIdUnknown || status == StatusCode::BadNodeIdInvalid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::RawValue;

    #[test]
    fn a_per_tag_table_without_entries_is_empty_and_one_with_entries_is_kept_whole() {
        assert!(per_tag_or_empty([None::<u32>, None, None]).is_empty());
        assert_eq!(
            per_tag_or_empty([None, Some(2u32), None]),
            [None, Some(2), None]
        );
    }

    fn sample(tag: usize) -> Sample {
        Sample {
            tag,
            timestamp: Utc::now(),
            value: RawValue::Int(tag as i64),
        }
    }

    #[test]
    fn sequence_gaps_are_recorded_for_republish() {
        let gaps = Arc::new(Gaps::default());
        let subscription = Arc::new(AtomicU32::new(7));
        let plan = Arc::new(TagMapPlan {
            path: "t.yaml".into(),
            source: crate::mapping::SourcePlan::Modbus(crate::mapping::ModbusPlan {
                transport: crate::mapping::plan::ModbusTransport::Tcp(String::new()),
                timeout: std::time::Duration::from_secs(1),
                max_gap: 0,
                connections: std::num::NonZeroU8::MIN,
            }),
            tags: Vec::new(),
            disabled: 0,
        });
        let ctx = Arc::new(Ctx {
            plan,
            source: Arc::new(super::super::test_plan()),
            counters: Arc::default(),
            queue: Arc::new(Queue::new(10)),
            flags: Arc::new(Vec::new()),
            elements: Vec::new(),
            timestamps: Default::default(),
            uncertain: Default::default(),
        });
        let mut n = Notifier {
            deliver: Arc::new(Deliver {
                ctx,
                names: Arc::new(Vec::new()),
                structs: None,
            }),
            subscription,
            last: 0,
            gaps: Arc::clone(&gaps),
        };
        assert!(!n.track(5)); // the first message
        assert!(!n.track(6));
        assert!(n.track(9)); // 7 and 8 lost
        assert!(!n.track(1)); // re-created subscription: numbers start again
        assert!(!n.track(5000)); // too far to be a gap
        let missing = gaps.missing.lock().unwrap().clone();
        assert_eq!(missing, vec![(7, 7), (7, 8)]);
    }

    #[test]
    fn queue_drops_the_oldest_when_full() {
        let q = Queue::new(3);
        assert_eq!(q.push(vec![sample(0), sample(1)].into()), 0);
        assert_eq!(q.push(vec![sample(2), sample(3)].into()), 1);
        let tags: Vec<usize> = q.take().iter().map(|s| s.tag).collect();
        assert_eq!(tags, vec![1, 2, 3]);
        // A batch larger than the queue keeps its newest samples.
        assert_eq!(q.push((0..5).map(sample).collect::<Vec<_>>().into()), 2);
        let tags: Vec<usize> = q.take().iter().map(|s| s.tag).collect();
        assert_eq!(tags, vec![2, 3, 4]);
        assert!(q.take().is_empty());
    }

    #[test]
    fn the_queue_remembers_when_its_oldest_samples_came_in() {
        let q = Queue::new(10);
        let before = std::time::Instant::now();
        q.push(vec![sample(0)].into());
        let first = q.take().received.expect("stamped when queued");
        assert!(first >= before);
        // Later pushes keep the first one's time until the batch is taken.
        let mut early: SampleBatch = vec![sample(1)].into();
        early.received = Some(before);
        q.push(vec![sample(2)].into());
        q.push(early);
        assert_eq!(q.take().received, Some(before));
        assert_eq!(q.take().received, None);
    }

    /// One data change for `tag` with `status`.
    fn change(tag: u32, status: StatusCode) -> NotificationMessage {
        let mut value = opcua::types::DataValue::new_now(1.5f64);
        value.status = Some(status);
        NotificationMessage {
            sequence_number: 1,
            publish_time: opcua::types::DateTime::now(),
            notification_data: Some(vec![opcua::types::ExtensionObject::from_message(
                DataChangeNotification {
                    monitored_items: Some(vec![opcua::types::MonitoredItemNotification {
                        client_handle: tag + 1,
                        value,
                    }]),
                    diagnostic_infos: None,
                },
            )]),
        }
    }

    #[test]
    fn status_events_keep_their_place_between_the_samples() {
        let yaml = "source:\n  opcua: {endpoint: \"opc.tcp://h:4840/\", security_policy: none}\ntags:\n  - {sensor_id: a, node: \"ns=2;s=A\"}\n";
        let file = crate::config::parse_str::<crate::config::tagmap::TagMapFile>(yaml);
        let (plan, _) = crate::mapping::compile(
            file.value.as_ref().expect("parses"),
            std::path::Path::new("t.yaml"),
            &[],
        );
        let queue = Arc::new(Queue::new(10));
        let deliver = Deliver {
            ctx: Arc::new(Ctx {
                flags: Arc::new(vec![AtomicU8::new(0)]),
                elements: vec![None],
                plan: Arc::new(plan),
                source: Arc::new(super::super::test_plan()),
                counters: Arc::default(),
                queue: Arc::clone(&queue),
                timestamps: Default::default(),
                uncertain: Default::default(),
            }),
            names: Arc::new(Vec::new()),
            structs: None,
        };
        // Good, Bad, Uncertain, Good for one tag in one publish (queue size > 1).
        let mut message = change(0, StatusCode::Good);
        let item = |status: StatusCode, secs: i64| {
            let mut value = opcua::types::DataValue::new_now(1.5f64);
            value.status = Some(status);
            value.source_timestamp = Some(
                chrono::DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0)
                    .unwrap()
                    .into(),
            );
            opcua::types::MonitoredItemNotification {
                client_handle: 1,
                value,
            }
        };
        message.notification_data = Some(vec![opcua::types::ExtensionObject::from_message(
            DataChangeNotification {
                monitored_items: Some(vec![
                    item(StatusCode::Good, 0),
                    item(StatusCode::BadSensorFailure, 1),
                    item(StatusCode::UncertainLastUsableValue, 2),
                    item(StatusCode::Good, 3),
                ]),
                diagnostic_infos: None,
            },
        )]);
        deliver.deliver(message);
        let batch = queue.take();
        let order: Vec<String> = batch
            .items()
            .map(|i| match i {
                crate::sample::Item::Sample(s) => format!("s{}", s.timestamp.timestamp() % 10),
                crate::sample::Item::Event(SourceEvent::Lost { at, cause, .. }) => {
                    format!("lost{} {cause}", at.timestamp() % 10)
                }
                crate::sample::Item::Event(SourceEvent::Uncertain {
                    timestamp, cause, ..
                }) => format!("uncertain{} {cause}", timestamp.timestamp() % 10),
                crate::sample::Item::Event(e) => format!("{e:?}"),
            })
            .collect();
        assert_eq!(
            order,
            [
                "s0",
                "lost1 BadSensorFailure",
                "uncertain2 UncertainLastUsableValue",
                "s2",
                "s3"
            ]
        );
    }

    #[test]
    fn a_deleted_node_counts_as_a_failed_item_until_it_is_back() {
        let yaml = "source:\n  opcua: {endpoint: \"opc.tcp://h:4840/\", security_policy: none}\ntags:\n  - {sensor_id: a, node: \"ns=2;s=A\"}\n  - {sensor_id: b, node: \"ns=2;s=B\"}\n";
        let file = crate::config::parse_str::<crate::config::tagmap::TagMapFile>(yaml);
        let (plan, problems) = crate::mapping::compile(
            file.value.as_ref().expect("parses"),
            std::path::Path::new("t.yaml"),
            &[],
        );
        assert!(problems.is_empty(), "{problems:?}");
        let counters: Arc<OpcUaCounters> = Arc::default();
        let ctx = Arc::new(Ctx {
            flags: Arc::new((0..plan.tags.len()).map(|_| AtomicU8::new(0)).collect()),
            elements: vec![None; plan.tags.len()],
            plan: Arc::new(plan),
            source: Arc::new(super::super::test_plan()),
            counters: Arc::clone(&counters),
            queue: Arc::new(Queue::new(10)),
            timestamps: Default::default(),
            uncertain: Default::default(),
        });
        let deliver = Deliver {
            ctx,
            names: Arc::new(Vec::new()),
            structs: None,
        };
        counters.items_monitored.store(2, Ordering::Relaxed);
        deliver.deliver(change(1, StatusCode::BadNodeIdUnknown));
        deliver.deliver(change(1, StatusCode::BadNodeIdUnknown));
        assert_eq!(counters.failed_items(), 1);
        assert_eq!(counters.monitored_items(), 1);
        assert_eq!(OpcUaCounters::get(&counters.tags_bad), 1);
        // A Bad status that is not about the node is not a failed item.
        deliver.deliver(change(0, StatusCode::BadSensorFailure));
        assert_eq!(counters.failed_items(), 1);
        // The node is back.
        deliver.deliver(change(1, StatusCode::Good));
        assert_eq!(counters.failed_items(), 0);
        assert_eq!(counters.monitored_items(), 2);
        assert_eq!(OpcUaCounters::get(&counters.tags_bad), 1);
        assert_eq!(OpcUaCounters::get(&counters.readings), 1);
    }
}
