//! OPC UA events and Alarms & Conditions (Part 9): the tag map's `events:` become event
//! monitored items with an EventFilter, and each event notification becomes one
//! [`EventSample`] for the mapping stage, in order with the data samples.
//!
//! Invariants:
//! - Event items live in a subscription of their own, never shared with data items (the
//!   data manager skips it): a client handle at or above [`EVENT_HANDLE_BASE`] is an event
//!   subscription's index plus that base.
//! - The select clauses are the plan's (`EventType`, `Time`, `Message` first), each from
//!   BaseEventType, so a server resolves them on any event type; the where clause is
//!   `OfType` of the configured types (with their subtypes), or'ed with RefreshStartEventType
//!   and RefreshEndEventType so the refresh brackets always arrive.
//! - After every connect and reconnect (transferred, re-created or new subscription) the
//!   source calls ConditionRefresh (Part 9, 5.5.7) on the event subscription: the server sends
//!   every retained condition again between a RefreshStart and a RefreshEnd event; what comes
//!   between them is marked `refresh`. A server without Alarms & Conditions answers with a Bad
//!   status: logged once per session, events still flow.
//! - An item the server refuses (unknown notifier, refused filter) is reported once and
//!   retried every [`RETRY_INTERVAL`]; the other subscriptions go on.
//! - Events are never dropped for a slow mapping stage below [`MAX_QUEUED_EVENTS`] waiting in
//!   the forwarding queue; past it the newest are counted in
//!   [`OpcUaCounters::events_dropped`] and logged once.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore, Session};
use opcua::types::{
    AttributeId, ContentFilter, ContentFilterElement, ElementOperand, EventFilter,
    EventNotificationList, ExtensionObject, FilterOperator, LiteralOperand, MethodId,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, NotificationMessage,
    ObjectTypeId, QualifiedName, ReadValueId, SimpleAttributeOperand, StatusCode,
    TimestampsToReturn, Variant,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::notify::Ctx;
use super::{OpcUaCounters, RETRY_INTERVAL};
use crate::mapping::event_plan::{
    EventPlan, REFRESH_END_EVENT_TYPE, REFRESH_START_EVENT_TYPE, SELECT_EVENT_TYPE, SELECT_TIME,
};
use crate::sample::{EventSample, RawValue, SourceEvent};

/// Client handles of event items start here (data items use `tag index + 1`).
pub(super) const EVENT_HANDLE_BASE: u32 = 0xF000_0000;
/// Events waiting for the forwarding task before new ones are dropped and counted.
pub(super) const MAX_QUEUED_EVENTS: usize = 100_000;
/// Retry soon after a request failed for connection reasons.
const RETRY_SOON: Duration = Duration::from_secs(2);

/// Whether a client handle belongs to an event item.
pub(super) fn is_event_handle(handle: u32) -> bool {
    handle >= EVENT_HANDLE_BASE
}

/// Keeps the tag map's event items alive across reconnects and asks for a refresh after each.
/// Never returns before `cancel`; after it, pends so that the driver can close the session.
pub(super) async fn manage(
    ctx: Arc<Ctx>,
    session: Arc<Session>,
    mut connected: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    if ctx.source.events.is_empty() {
        return futures::future::pending().await;
    }
    let refreshing: Arc<Vec<AtomicBool>> = Arc::new(
        (0..ctx.source.events.len())
            .map(|_| AtomicBool::new(false))
            .collect(),
    );
    let mut m = Events {
        ctx: Arc::clone(&ctx),
        session,
        refreshing,
        targets: None,
        reported: vec![None; ctx.source.events.len()],
        refresh_reported: None,
    };
    let mut seen = 0u64;
    loop {
        // Wait for a (re)connect.
        while *connected.borrow_and_update() == seen {
            tokio::select! {
                _ = cancel.cancelled() => return futures::future::pending().await,
                r = connected.changed() => if r.is_err() { return futures::future::pending().await },
            }
        }
        seen = *connected.borrow();
        for r in m.refreshing.iter() {
            r.store(false, Ordering::Relaxed);
        }
        // Create what is missing, then refresh; retry what failed.
        let mut refreshed = false;
        loop {
            let wait = match m.ensure().await {
                Ok((subscription, complete)) => {
                    if !refreshed {
                        refreshed = m.refresh(subscription).await;
                    }
                    match (complete, refreshed) {
                        (true, true) => None,
                        (_, false) => Some(RETRY_SOON),
                        (false, true) => Some(RETRY_INTERVAL),
                    }
                }
                Err(()) => Some(RETRY_SOON),
            };
            let Some(wait) = wait else { break };
            tokio::select! {
                _ = cancel.cancelled() => return futures::future::pending().await,
                // A reconnect: start over (and refresh again).
                r = connected.changed() => {
                    if r.is_err() { return futures::future::pending().await }
                    break;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A notifier and the event types accepted from it, as this session's node ids.
type Target = (NodeId, Vec<NodeId>);

/// The event side of one session.
struct Events {
    ctx: Arc<Ctx>,
    session: Arc<Session>,
    /// Per event subscription: between a RefreshStart and a RefreshEnd event.
    refreshing: Arc<Vec<AtomicBool>>,
    /// Per event subscription: notifier and types with namespace indexes resolved (once per
    /// session); `None` where a namespace URI is unknown.
    targets: Option<Vec<Option<Target>>>,
    /// The last failure logged per event subscription.
    reported: Vec<Option<StatusCode>>,
    /// The last ConditionRefresh failure logged.
    refresh_reported: Option<StatusCode>,
}

impl Events {
    /// Makes sure the event subscription and its items exist. Returns the subscription id and
    /// whether every item exists; `Err` when a request failed (try again soon).
    async fn ensure(&mut self) -> Result<(u32, bool), ()> {
        if self.targets.is_none() {
            self.targets = Some(self.resolve().await);
        }
        let (subscription, present) = self.find();
        let subscription = match subscription {
            Some(id) => id,
            None => self.create_subscription().await?,
        };
        let plans = &self.ctx.source.events;
        let mut requests = Vec::new();
        let mut wanted = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let handle = EVENT_HANDLE_BASE + i as u32;
            if present.contains(&handle) {
                continue;
            }
            let Some(Some((notifier, types))) =
                self.targets.as_ref().map(|t| t.get(i).cloned().flatten())
            else {
                continue;
            };
            wanted.push(i);
            requests.push(request(plan, handle, notifier, &types));
        }
        if requests.is_empty() {
            return Ok((subscription, self.targets_complete()));
        }
        let results = match self
            .session
            .create_monitored_items(subscription, TimestampsToReturn::Neither, requests)
            .await
        {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(
                    message = "Creating OPC UA event items failed; retrying.",
                    tag_map = %self.ctx.plan.path.display(),
                    %error
                );
                return Err(());
            }
        };
        let mut complete = self.targets_complete();
        for (k, i) in wanted.into_iter().enumerate() {
            let status = results
                .get(k)
                .map(|r| r.result.status_code)
                .unwrap_or(StatusCode::BadUnexpectedError);
            let plan = &plans[i];
            if status.is_good() {
                if self.reported[i].take().is_some() {
                    tracing::info!(message = "OPC UA event subscription is monitored now.", notifier = %plan.notifier);
                }
                continue;
            }
            complete = false;
            if self.reported[i] != Some(status) {
                self.reported[i] = Some(status);
                tracing::warn!(
                    message = "OPC UA event subscription cannot be created; the other subscriptions and tags go on, and it is retried periodically.",
                    tag_map = %self.ctx.plan.path.display(),
                    notifier = %plan.notifier,
                    %status,
                    retry_seconds = RETRY_INTERVAL.as_secs()
                );
            }
        }
        Ok((subscription, complete))
    }

    /// False when some notifier or type could not be resolved (an unknown namespace URI).
    fn targets_complete(&self) -> bool {
        self.targets
            .as_ref()
            .is_some_and(|t| t.iter().all(Option::is_some))
    }

    /// The session's event subscription (the one holding event handles) and the event
    /// handles it holds: after a transfer or a re-creation by the library it is still there.
    fn find(&self) -> (Option<u32>, Vec<u32>) {
        let state = self.session.subscription_state().lock();
        for id in state.subscription_ids().unwrap_or_default() {
            let Some(sub) = state.get(id) else { continue };
            let handles: Vec<u32> = sub
                .monitored_items()
                .map(|i| i.client_handle())
                .filter(|h| is_event_handle(*h))
                .collect();
            if !handles.is_empty() || sub_is_ours(sub) {
                return (Some(id), handles);
            }
        }
        (None, Vec::new())
    }

    async fn create_subscription(&mut self) -> Result<u32, ()> {
        let publishing = self
            .ctx
            .source
            .publishing_interval
            .max(Duration::from_millis(1));
        let keep_alive =
            (Duration::from_secs(10).as_millis() / publishing.as_millis()).max(1) as u32;
        let callback = EventCallback {
            ctx: Arc::clone(&self.ctx),
            refreshing: Arc::clone(&self.refreshing),
        };
        match self
            .session
            .create_subscription(publishing, keep_alive * 6, keep_alive, 0, 0, true, callback)
            .await
        {
            Ok(id) => {
                OURS.store(id, Ordering::Relaxed);
                Ok(id)
            }
            Err(error) => {
                tracing::warn!(
                    message = "Cannot create the OPC UA event subscription; retrying.",
                    tag_map = %self.ctx.plan.path.display(),
                    %error
                );
                Err(())
            }
        }
    }

    /// Notifiers and types with `nsu=` resolved to this session's namespace indexes.
    async fn resolve(&self) -> Vec<Option<Target>> {
        let mut out = Vec::new();
        for plan in &self.ctx.source.events {
            let notifier = self.node(&plan.notifier).await;
            let mut types = Vec::new();
            let mut ok = notifier.is_some();
            for t in &plan.types {
                match self.node(t).await {
                    Some(id) => types.push(id),
                    None => ok = false,
                }
            }
            out.push(notifier.filter(|_| ok).map(|n| (n, types)));
        }
        out
    }

    async fn node(&self, text: &str) -> Option<NodeId> {
        let Some((uri, id)) = text.strip_prefix("nsu=").and_then(|r| r.split_once(';')) else {
            return NodeId::from_str(text).ok();
        };
        match self.session.get_namespace_index(uri).await {
            Ok(i) => NodeId::from_str(&format!("ns={i};{id}")).ok(),
            Err(error) => {
                tracing::warn!(
                    message = "The OPC UA server has no such namespace URI; the event subscription is not created.",
                    tag_map = %self.ctx.plan.path.display(),
                    namespace = uri,
                    %error
                );
                None
            }
        }
    }

    /// Calls ConditionRefresh for the subscription; false when the request itself failed
    /// (try again soon). A server that refuses it is logged once, and counts as done.
    async fn refresh(&mut self, subscription: u32) -> bool {
        let call = (
            NodeId::from(ObjectTypeId::ConditionType),
            NodeId::from(MethodId::ConditionType_ConditionRefresh),
            Some(vec![Variant::UInt32(subscription)]),
        );
        let status = match self.session.call_one(call).await {
            Ok(result) => result.status_code,
            Err(error) => {
                tracing::debug!(message = "ConditionRefresh failed; retrying.", %error);
                return false;
            }
        };
        let c = &self.ctx.counters;
        if status.is_good() {
            c.event_refreshes.fetch_add(1, Ordering::Relaxed);
            self.refresh_reported = None;
            tracing::info!(
                message = "Asked the OPC UA server to send its retained conditions again (ConditionRefresh).",
                tag_map = %self.ctx.plan.path.display(),
                subscription
            );
        } else if self.refresh_reported != Some(status) {
            self.refresh_reported = Some(status);
            tracing::warn!(
                message = "The OPC UA server refused ConditionRefresh; retained alarms are not sent again after this connect, new events still are.",
                tag_map = %self.ctx.plan.path.display(),
                %status
            );
        }
        true
    }
}

/// The id of the last event subscription this process created, to recognise it while it has
/// no items yet.
static OURS: AtomicU32 = AtomicU32::new(0);

fn sub_is_ours(sub: &opcua::client::Subscription) -> bool {
    sub.monitored_items().next().is_none() && sub.subscription_id() == OURS.load(Ordering::Relaxed)
}

/// The monitored item of one event subscription.
fn request(
    plan: &EventPlan,
    handle: u32,
    notifier: NodeId,
    types: &[NodeId],
) -> MonitoredItemCreateRequest {
    MonitoredItemCreateRequest {
        item_to_monitor: ReadValueId {
            node_id: notifier,
            attribute_id: AttributeId::EventNotifier as u32,
            ..Default::default()
        },
        monitoring_mode: MonitoringMode::Reporting,
        requested_parameters: MonitoringParameters {
            client_handle: handle,
            sampling_interval: 0.0,
            filter: ExtensionObject::from_message(filter(plan, types)),
            queue_size: plan.queue_size,
            discard_oldest: true,
        },
    }
}

/// The EventFilter of a subscription (Part 4, 7.22.3).
pub(super) fn filter(plan: &EventPlan, types: &[NodeId]) -> EventFilter {
    let select_clauses = plan
        .select
        .iter()
        .map(|path| SimpleAttributeOperand {
            type_definition_id: ObjectTypeId::BaseEventType.into(),
            browse_path: Some(
                path.0
                    .iter()
                    .map(|(ns, name)| QualifiedName::new(*ns, name.as_str()))
                    .collect(),
            ),
            attribute_id: AttributeId::Value as u32,
            index_range: Default::default(),
        })
        .collect();
    let mut elements = Vec::new();
    if !types.is_empty() {
        let mut all: Vec<NodeId> = types.to_vec();
        all.push(NodeId::new(0, REFRESH_START_EVENT_TYPE));
        all.push(NodeId::new(0, REFRESH_END_EVENT_TYPE));
        or_of_types(&all, &mut elements);
    }
    EventFilter {
        select_clauses: Some(select_clauses),
        where_clause: ContentFilter {
            elements: (!elements.is_empty()).then_some(elements),
        },
    }
}

/// Appends `OfType(t0) or OfType(t1) or …` as a tree whose root is the first element
/// appended; returns the root's index.
fn or_of_types(types: &[NodeId], elements: &mut Vec<ContentFilterElement>) -> u32 {
    let at = elements.len() as u32;
    if let [only] = types {
        elements.push(ContentFilterElement {
            filter_operator: FilterOperator::OfType,
            filter_operands: Some(vec![ExtensionObject::from_message(LiteralOperand {
                value: Variant::NodeId(Box::new(only.clone())),
            })]),
        });
        return at;
    }
    elements.push(ContentFilterElement {
        filter_operator: FilterOperator::Or,
        filter_operands: None,
    });
    let (left, right) = types.split_at(types.len() / 2);
    let l = or_of_types(left, elements);
    let r = or_of_types(right, elements);
    elements[at as usize].filter_operands = Some(vec![
        ExtensionObject::from_message(ElementOperand { index: l }),
        ExtensionObject::from_message(ElementOperand { index: r }),
    ]);
    at
}

/// The subscription callback of the event subscription.
struct EventCallback {
    ctx: Arc<Ctx>,
    refreshing: Arc<Vec<AtomicBool>>,
}

impl OnSubscriptionNotificationCore for EventCallback {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        for object in notification.notification_data.unwrap_or_default() {
            let Some(list) = object.into_inner_as::<EventNotificationList>() else {
                continue;
            };
            for event in list.events.unwrap_or_default() {
                let Some(index) = event.client_handle.checked_sub(EVENT_HANDLE_BASE) else {
                    continue;
                };
                if let Some(sample) = decode(
                    index as usize,
                    event.event_fields.unwrap_or_default(),
                    &self.refreshing,
                    &self.ctx.source.events,
                ) {
                    push(&self.ctx, sample);
                }
            }
        }
    }
}

/// Queues one event for the mapping stage, within [`MAX_QUEUED_EVENTS`].
fn push(ctx: &Ctx, sample: EventSample) {
    let c: &OpcUaCounters = &ctx.counters;
    if ctx.queue.pending_events() >= MAX_QUEUED_EVENTS {
        if c.events_dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                message = "The mapping stage is far behind; dropping new OPC UA events.",
                tag_map = %ctx.plan.path.display()
            );
        }
        return;
    }
    c.events.fetch_add(1, Ordering::Relaxed);
    ctx.queue.event(SourceEvent::OpcUaEvent(Box::new(sample)));
}

/// One event's field list → a sample; `None` for the refresh brackets (which only switch
/// `refreshing`) and for handles of no subscription.
pub(super) fn decode(
    index: usize,
    fields: Vec<Variant>,
    refreshing: &[AtomicBool],
    plans: &[EventPlan],
) -> Option<EventSample> {
    let plan = plans.get(index)?;
    let flag = refreshing.get(index)?;
    if let Some(Variant::NodeId(t)) = fields.get(SELECT_EVENT_TYPE) {
        if t.namespace == 0 {
            match t.as_u32() {
                Some(REFRESH_START_EVENT_TYPE) => {
                    flag.store(true, Ordering::Relaxed);
                    return None;
                }
                Some(REFRESH_END_EVENT_TYPE) => {
                    flag.store(false, Ordering::Relaxed);
                    return None;
                }
                _ => {}
            }
        }
    }
    let time = match fields.get(SELECT_TIME) {
        Some(Variant::DateTime(t)) if !t.is_null() => t.as_chrono(),
        _ => Utc::now(),
    };
    let mut values: Vec<Option<RawValue>> = fields.iter().map(field).collect();
    values.resize(plan.select.len(), None);
    Some(EventSample {
        subscription: index,
        time,
        fields: values,
        refresh: flag.load(Ordering::Relaxed),
    })
}

/// One event field as a value; null, Bad statuses (a field the event does not have) and
/// values with no reading form (arrays, structures) are `None`.
fn field(v: &Variant) -> Option<RawValue> {
    match v {
        Variant::Empty => None,
        Variant::StatusCode(s) if !s.is_good() => None,
        Variant::Variant(inner) => field(inner),
        other => super::convert::convert(other, None).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::event_plan::FieldPath;

    fn plan() -> EventPlan {
        EventPlan {
            sensor_id: vec![],
            notifier: "i=2253".into(),
            types: vec![],
            select: ["EventType", "Time", "Message", "Severity", "ActiveState/Id"]
                .iter()
                .map(|p| FieldPath::parse(p).unwrap())
                .collect(),
            members: vec![],
            value: Default::default(),
            active: None,
            queue_size: 10,
            extra: "".into(),
            pos: Default::default(),
        }
    }

    #[test]
    fn the_where_clause_accepts_the_types_and_the_refresh_brackets() {
        let types = [NodeId::new(0, 2915u32), NodeId::new(2, 5001u32)];
        let f = filter(&plan(), &types);
        let elements = f.where_clause.elements.unwrap();
        // Or(Or(2915, 5001), Or(2787, 2788)): 3 Or, 4 OfType.
        assert_eq!(elements.len(), 7);
        assert_eq!(elements[0].filter_operator, FilterOperator::Or);
        let of: Vec<NodeId> = elements
            .iter()
            .filter(|e| e.filter_operator == FilterOperator::OfType)
            .map(|e| {
                let op = e.filter_operands.as_ref().unwrap()[0]
                    .inner_as::<LiteralOperand>()
                    .unwrap();
                match &op.value {
                    Variant::NodeId(n) => (**n).clone(),
                    _ => panic!("not a node id"),
                }
            })
            .collect();
        assert_eq!(
            of,
            [
                types[0].clone(),
                types[1].clone(),
                NodeId::new(0, 2787u32),
                NodeId::new(0, 2788u32)
            ]
        );
        // Every operand points inside the list.
        for e in &elements {
            for op in e.filter_operands.iter().flatten() {
                if let Some(el) = op.inner_as::<ElementOperand>() {
                    assert!((el.index as usize) < elements.len());
                }
            }
        }
        assert_eq!(f.select_clauses.unwrap().len(), 5);
        assert!(filter(&plan(), &[]).where_clause.elements.is_none());
    }

    #[test]
    fn refresh_brackets_mark_what_is_between_them() {
        let plans = [plan()];
        let flags = [AtomicBool::new(false)];
        let ev = |t: u32| {
            vec![
                Variant::NodeId(Box::new(NodeId::new(0, t))),
                Variant::DateTime(Box::new(opcua::types::DateTime::now())),
                Variant::LocalizedText(Box::new("High".into())),
                Variant::UInt16(700),
            ]
        };
        let a = decode(0, ev(2915), &flags, &plans).unwrap();
        assert!(!a.refresh);
        assert_eq!(a.fields.len(), 5);
        assert_eq!(a.fields[3], Some(RawValue::UInt(700)));
        assert_eq!(a.fields[4], None);
        assert!(decode(0, ev(REFRESH_START_EVENT_TYPE), &flags, &plans).is_none());
        assert!(decode(0, ev(2915), &flags, &plans).unwrap().refresh);
        assert!(decode(0, ev(REFRESH_END_EVENT_TYPE), &flags, &plans).is_none());
        assert!(!decode(0, ev(2915), &flags, &plans).unwrap().refresh);
        assert!(decode(1, ev(2915), &flags, &plans).is_none());
        // A field the event lacks comes as a Bad status or null.
        assert_eq!(field(&Variant::StatusCode(StatusCode::BadNoMatch)), None);
        assert_eq!(field(&Variant::Empty), None);
    }
}
