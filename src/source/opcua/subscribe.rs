//! Subscriptions and monitored items: operation limits, enumeration names, creating items in
//! chunks across as many subscriptions as needed, and re-creating what a reconnect lost.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AttributeId, BrowsePath, DataChangeFilter, DataTypeId, EnumDefinition, EnumValueType,
    ExtensionObject, LocalizedText, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NodeId, QualifiedName, ReadValueId, ReferenceTypeId, RelativePath,
    RelativePathElement, StatusCode, TimestampsToReturn, VariableId, Variant,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::convert::EnumNames;
use super::notify::{Ctx, Deliver, Gaps, Notifier};
use super::RETRY_INTERVAL;
use crate::config::tagmap::{DataChangeTrigger, ServerDeadband};
use crate::mapping::plan::{MonitoringPlan, TagAddress};

/// Items per CreateMonitoredItems call when the server sets no lower limit; also bounds the
/// size of one request message.
pub(super) const DEFAULT_CHUNK: usize = 1000;
/// Nodes per Read call when the server sets no lower limit.
const DEFAULT_READ_CHUNK: usize = 1000;
/// Retry soon after a request failed for connection reasons.
const RETRY_SOON: Duration = Duration::from_secs(2);

/// One subscription of this session.
struct Sub {
    id: u32,
    count: usize,
    /// The server refused more items.
    full: bool,
}

/// Creates and maintains the monitored items of one session. Never returns before `cancel`;
/// after it, pends so that the driver can close the session.
pub(super) async fn manage(
    ctx: Arc<Ctx>,
    session: Arc<Session>,
    mut connected: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    // Wait for the first connection.
    loop {
        if *connected.borrow_and_update() > 0 {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => return futures::future::pending().await,
            r = connected.changed() => if r.is_err() { return futures::future::pending().await },
        }
    }
    let nodes = resolve_nodes(&ctx, &session).await;
    let (chunk, read_chunk) = limits(&session).await;
    let names = Arc::new(enum_names(&ctx, &session, &nodes, read_chunk).await);
    let structs = super::structure::Structures::new(&ctx.plan, &ctx.source);
    if let Some(s) = &structs {
        s.learn(&session, &nodes).await;
    }
    let gaps = Arc::new(Gaps::default());
    let mut m = Manager {
        deliver: Arc::new(Deliver {
            ctx: Arc::clone(&ctx),
            names,
            structs: structs.clone(),
        }),
        gaps: Arc::clone(&gaps),
        ctx: Arc::clone(&ctx),
        session,
        nodes,
        chunk,
        subs: Vec::new(),
        // A structure's fields ride on one monitored item, its first field's.
        pending: (0..ctx.plan.tags.len())
            .filter(|t| !ctx.source.structures.is_follower(*t))
            .collect(),
        reported: HashMap::new(),
    };
    let started = std::time::Instant::now();
    let mut announced = false;
    loop {
        let soon = m.create_pending().await;
        let c = &ctx.counters;
        let total = ctx.plan.tags.len();
        c.items_monitored
            .store((total - m.pending.len()) as u64, Ordering::Relaxed);
        c.items_failed
            .store(m.pending.len() as u64, Ordering::Relaxed);
        if !announced && !soon {
            announced = true;
            tracing::info!(
                message = "OPC UA monitored items created.",
                tag_map = %ctx.plan.path.display(),
                monitored = total - m.pending.len(),
                failed = m.pending.len(),
                subscriptions = m.subs.len(),
                seconds = started.elapsed().as_secs_f64()
            );
        }
        let wait = if soon {
            Some(RETRY_SOON)
        } else if m.pending.is_empty() {
            None
        } else {
            Some(RETRY_INTERVAL)
        };
        tokio::select! {
            // Shutdown: the driver closes the session.
            _ = cancel.cancelled() => return futures::future::pending().await,
            r = connected.changed() => {
                if r.is_err() {
                    return futures::future::pending().await;
                }
                m.refresh();
                if let Some(s) = &structs {
                    s.relearn_if_changed(&m.session, &m.nodes).await;
                }
            }
            // A value named a structure type not learned: learn again, at most this often.
            _ = tokio::time::sleep(RETRY_INTERVAL), if structs.as_ref().is_some_and(|s| s.is_stale()) => {
                if let Some(s) = &structs {
                    s.learn(&m.session, &m.nodes).await;
                }
            }
            _ = tokio::time::sleep(wait.unwrap_or(Duration::MAX)), if wait.is_some() => {}
            // Notifications lost in transit: ask the server to send them again.
            _ = gaps.notify.notified() => m.republish().await,
        }
    }
}

/// The node id of every tag; `nsu=<URI>;…` ids get the server's index for that namespace (read
/// once per session: indexes may change when a server restarts). A URI the server does not
/// know is reported once per session and leaves that tag unmonitored.
async fn resolve_nodes(ctx: &Ctx, session: &Session) -> Vec<Option<NodeId>> {
    let mut missing: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(ctx.plan.tags.len());
    for t in &ctx.plan.tags {
        let TagAddress::OpcUa { node } = &t.address else {
            out.push(None);
            continue;
        };
        let Some((uri, id)) = node.strip_prefix("nsu=").and_then(|r| r.split_once(';')) else {
            out.push(NodeId::from_str(node).ok());
            continue;
        };
        let index = if missing.contains(uri) {
            None
        } else {
            match session.get_namespace_index(uri).await {
                Ok(i) => Some(i),
                Err(error) => {
                    tracing::warn!(
                        message = "The OPC UA server has no such namespace URI; its tags are not read.",
                        tag_map = %ctx.plan.path.display(),
                        namespace = uri,
                        %error
                    );
                    missing.insert(uri.to_string());
                    None
                }
            }
        };
        out.push(index.and_then(|i| NodeId::from_str(&format!("ns={i};{id}")).ok()));
    }
    out
}

struct Manager {
    ctx: Arc<Ctx>,
    session: Arc<Session>,
    nodes: Vec<Option<NodeId>>,
    /// Shared with every subscription's callback.
    deliver: Arc<Deliver>,
    gaps: Arc<Gaps>,
    chunk: usize,
    subs: Vec<Sub>,
    /// Tags without a monitored item.
    pending: BTreeSet<usize>,
    /// The last failure reported per tag, so each is logged once.
    reported: HashMap<usize, StatusCode>,
}

impl Manager {
    /// After a reconnect: learn the (possibly re-created) subscriptions and which tags lost
    /// their item.
    fn refresh(&mut self) {
        let mut present: HashSet<u32> = HashSet::new();
        let mut subs = Vec::new();
        {
            let state = self.session.subscription_state().lock();
            for id in state.subscription_ids().unwrap_or_default() {
                let Some(sub) = state.get(id) else { continue };
                // The event subscription is not for data items.
                if sub
                    .monitored_items()
                    .any(|i| super::events::is_event_handle(i.client_handle()))
                {
                    continue;
                }
                let mut count = 0;
                for item in sub.monitored_items() {
                    present.insert(item.client_handle());
                    count += 1;
                }
                subs.push(Sub {
                    id,
                    count,
                    full: false,
                });
            }
        }
        self.subs = subs;
        self.pending = (0..self.nodes.len())
            .filter(|t| {
                !present.contains(&handle(*t)) && !self.ctx.source.structures.is_follower(*t)
            })
            .collect();
        if !self.pending.is_empty() {
            tracing::info!(
                message = "Re-creating OPC UA monitored items lost in a reconnect.",
                tag_map = %self.ctx.plan.path.display(),
                count = self.pending.len()
            );
        }
    }

    /// Tries to create every pending item. Returns true when a request failed for connection
    /// reasons (try again soon).
    /// Long on purpose: chunking by the server's limits, opening the next subscription when one
    /// is full, and sorting each item's result are one loop over the pending items.
    async fn create_pending(&mut self) -> bool {
        let mut queue: VecDeque<usize> = std::mem::take(&mut self.pending).into_iter().collect();
        let max = self.ctx.source.max_items_per_subscription as usize;
        let mut soon = false;
        while !queue.is_empty() {
            let sub = match self
                .subs
                .iter()
                .position(|s| !s.full && (max == 0 || s.count < max))
            {
                Some(i) => i,
                None => match self.new_subscription().await {
                    Ok(i) => i,
                    Err(status) => {
                        tracing::warn!(
                            message = "Cannot create an OPC UA subscription; retrying later.",
                            tag_map = %self.ctx.plan.path.display(),
                            %status
                        );
                        soon = status != StatusCode::BadTooManySubscriptions;
                        break;
                    }
                },
            };
            let room = if max == 0 {
                self.chunk
            } else {
                self.chunk.min(max - self.subs[sub].count)
            };
            let mut batch = Vec::with_capacity(room.min(queue.len()));
            let mut requests = Vec::with_capacity(batch.capacity());
            while batch.len() < room {
                let Some(tag) = queue.pop_front() else { break };
                match self.request(tag) {
                    Some(r) => {
                        batch.push(tag);
                        requests.push(r);
                    }
                    // A node id that does not parse was refused by `check`; keep it pending.
                    // Its namespace URI is unknown to this server (logged once per URI).
                    None => {
                        self.unreadable(tag, StatusCode::BadNodeIdUnknown);
                        self.pending.insert(tag);
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            let id = self.subs[sub].id;
            match self
                .session
                .create_monitored_items(id, TimestampsToReturn::Both, requests)
                .await
            {
                Ok(results) => {
                    let mut accepted = 0;
                    let mut again = Vec::new();
                    for (i, tag) in batch.iter().enumerate() {
                        let status = results
                            .get(i)
                            .map(|r| r.result.status_code)
                            .unwrap_or(StatusCode::BadUnexpectedError);
                        if status.is_good() {
                            accepted += 1;
                            if self.reported.remove(tag).is_some() {
                                tracing::info!(message = "OPC UA tag is monitored now.", sensor_id = %self.ctx.plan.tags[*tag].sensor_id);
                            }
                        } else if status == StatusCode::BadTooManyMonitoredItems {
                            again.push(*tag);
                        } else {
                            self.report(*tag, status);
                            self.pending.insert(*tag);
                        }
                    }
                    self.subs[sub].count += accepted;
                    if !again.is_empty() {
                        self.subs[sub].full = true;
                        if self.subs[sub].count == 0 {
                            // Even an empty subscription takes none: give up until later.
                            self.pending.extend(again);
                        } else {
                            for tag in again.into_iter().rev() {
                                queue.push_front(tag);
                            }
                        }
                    }
                }
                Err(e) if e.status() == StatusCode::BadTooManyMonitoredItems => {
                    self.subs[sub].full = true;
                    if self.subs[sub].count == 0 {
                        self.pending.extend(batch);
                    } else {
                        for tag in batch.into_iter().rev() {
                            queue.push_front(tag);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        message = "Creating OPC UA monitored items failed; retrying.",
                        tag_map = %self.ctx.plan.path.display(),
                        error = %e
                    );
                    self.pending.extend(batch);
                    soon = true;
                    break;
                }
            }
        }
        self.pending.extend(queue);
        soon
    }

    /// Republishes the messages whose sequence numbers were skipped. A server that no longer
    /// has one answers BadMessageNotAvailable: that loss is counted and logged.
    async fn republish(&mut self) {
        let missing =
            std::mem::take(&mut *self.gaps.missing.lock().unwrap_or_else(|p| p.into_inner()));
        let c = &self.ctx.counters;
        for (subscription, seq) in missing {
            match self.session.republish(subscription, seq).await {
                Ok(message) => {
                    c.republished.fetch_add(1, Ordering::Relaxed);
                    self.deliver.deliver(message);
                }
                Err(error) => {
                    c.lost_messages.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        message = "A lost OPC UA notification could not be republished; its values are missing.",
                        tag_map = %self.ctx.plan.path.display(),
                        subscription,
                        sequence_number = seq,
                        %error
                    );
                }
            }
        }
    }

    /// Tag `tag` cannot be monitored because of `status`: tells the mapping stage once per
    /// status and session (a quality reading names it; the other tags are not held up).
    /// Returns whether it is news.
    fn unreadable(&mut self, tag: usize, status: StatusCode) -> bool {
        if self.reported.insert(tag, status) == Some(status) {
            return false;
        }
        self.ctx.queue.event(crate::sample::SourceEvent::Lost {
            scope: crate::sample::Scope::Tag(tag),
            at: chrono::Utc::now(),
            cause: crate::sample::Cause::OpcUaStatus(super::convert::status_name(status)),
        });
        true
    }

    fn report(&mut self, tag: usize, status: StatusCode) {
        if self.unreadable(tag, status) {
            let plan = &self.ctx.plan.tags[tag];
            let node = match &plan.address {
                TagAddress::OpcUa { node } => node.as_str(),
                TagAddress::Modbus(_) => "",
            };
            tracing::warn!(
                message = "OPC UA tag cannot be monitored; the other tags go on, and it is retried periodically.",
                sensor_id = %plan.sensor_id,
                node,
                %status,
                retry_seconds = RETRY_INTERVAL.as_secs()
            );
        }
    }

    async fn new_subscription(&mut self) -> Result<usize, StatusCode> {
        let publishing = self
            .ctx
            .source
            .publishing_interval
            .max(Duration::from_millis(1));
        // A keep-alive about every 10 s; the server keeps the subscription for 6 of them
        // without publish requests, long enough to transfer it after a short outage.
        let keep_alive =
            (Duration::from_secs(10).as_millis() / publishing.as_millis()).max(1) as u32;
        let slot = Arc::new(AtomicU32::new(0));
        let notifier = Notifier {
            deliver: Arc::clone(&self.deliver),
            subscription: Arc::clone(&slot),
            last: 0,
            gaps: Arc::clone(&self.gaps),
        };
        let id = self
            .session
            .create_subscription(
                publishing,
                keep_alive * 6,
                keep_alive,
                self.ctx.source.max_notifications_per_publish,
                0,
                true,
                notifier,
            )
            .await
            .map_err(|e| e.status())?;
        slot.store(id, Ordering::Relaxed);
        self.ctx
            .counters
            .subscriptions_created
            .fetch_add(1, Ordering::Relaxed);
        self.subs.push(Sub {
            id,
            count: 0,
            full: false,
        });
        Ok(self.subs.len() - 1)
    }

    fn request(&self, tag: usize) -> Option<MonitoredItemCreateRequest> {
        let node = self.nodes.get(tag)?.clone()?;
        let plan = &self.ctx.plan.tags[tag];
        let m = self
            .ctx
            .source
            .monitoring
            .get(tag)
            .copied()
            .unwrap_or_default();
        let sampling = plan.interval;
        Some(MonitoredItemCreateRequest {
            item_to_monitor: ReadValueId {
                node_id: node,
                attribute_id: AttributeId::Value as u32,
                index_range: m
                    .index
                    .map(opcua::types::NumericRange::Index)
                    .unwrap_or_default(),
                ..Default::default()
            },
            monitoring_mode: MonitoringMode::Reporting,
            requested_parameters: MonitoringParameters {
                client_handle: handle(tag),
                sampling_interval: sampling.as_secs_f64() * 1000.0,
                filter: filter(&m),
                queue_size: m.queue_size.unwrap_or_else(|| {
                    default_queue_size(self.ctx.source.publishing_interval, sampling)
                }),
                discard_oldest: true,
            },
        })
    }
}

/// The client handle of a tag's monitored item.
fn handle(tag: usize) -> u32 {
    u32::try_from(tag + 1).unwrap_or(u32::MAX)
}

/// Enough room for every sample of one publishing interval, plus one; at least 2 (a queue of
/// 1 loses changes that fall in the same interval, DEPENDENCIES.md).
pub(super) fn default_queue_size(publishing: Duration, sampling: Duration) -> u32 {
    let sampling = sampling.as_secs_f64().max(0.001);
    let per_publish = (publishing.as_secs_f64() / sampling).ceil() as u32;
    (per_publish + 1).clamp(2, 1000)
}

/// The DataChangeFilter of a tag, or a null filter for the server's default.
/// The data change filter of an item: always sent, even with the defaults (status or value,
/// no deadband), because some servers (async-opcua's among them) read a missing filter as
/// "value changes only" and would never report a status change alone, e.g. a value turning
/// Uncertain, which quality readings must see.
fn filter(m: &MonitoringPlan) -> ExtensionObject {
    let trigger = match m.trigger.unwrap_or(DataChangeTrigger::StatusValue) {
        DataChangeTrigger::Status => opcua::types::DataChangeTrigger::Status,
        DataChangeTrigger::StatusValue => opcua::types::DataChangeTrigger::StatusValue,
        DataChangeTrigger::StatusValueTimestamp => {
            opcua::types::DataChangeTrigger::StatusValueTimestamp
        }
    };
    // Part 4, 7.22.2: DeadbandType 0 none, 1 absolute, 2 percent.
    let (deadband_type, deadband_value) = match m.deadband {
        None => (0, 0.0),
        Some(ServerDeadband::Absolute(v)) => (1, v),
        Some(ServerDeadband::Percent(v)) => (2, v),
    };
    ExtensionObject::from_message(DataChangeFilter {
        trigger,
        deadband_type,
        deadband_value,
    })
}

/// The server's MaxMonitoredItemsPerCall and MaxNodesPerRead, capped at our defaults.
async fn limits(session: &Session) -> (usize, usize) {
    let ids = [
        VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    ];
    let read: Vec<ReadValueId> = ids
        .iter()
        .map(|id| ReadValueId::from(NodeId::from(*id)))
        .collect();
    let values = session
        .read(&read, TimestampsToReturn::Neither, 0.0)
        .await
        .unwrap_or_default();
    let limit = |i: usize, default: usize| -> usize {
        match values.get(i).and_then(|v| v.value.as_ref()) {
            Some(Variant::UInt32(n)) if *n > 0 => (*n as usize).min(default),
            _ => default,
        }
    };
    (limit(0, DEFAULT_CHUNK), limit(1, DEFAULT_READ_CHUNK))
}

/// State names for tags whose data type is an enumeration (EnumStrings or EnumValues of the
/// data type), read once per session. Tags with their own `states:` keep numbers. Failures
/// leave numbers too: they are logged, not fatal.
///
/// Long on purpose: the three places OPC UA keeps enumeration names (EnumStrings, EnumValues,
/// EnumDefinition) are read in one batched round of requests, in the order the spec prefers.
async fn enum_names(
    ctx: &Ctx,
    session: &Session,
    nodes: &[Option<NodeId>],
    read_chunk: usize,
) -> Vec<Option<EnumNames>> {
    let mut out = vec![None; nodes.len()];
    let wanted: Vec<usize> = (0..nodes.len())
        .filter(|&t| {
            nodes[t].is_some()
                && ctx.plan.tags[t].transform.states.is_none()
                && ctx.source.structures.group_of(t).is_none()
        })
        .collect();
    // 1. The DataType attribute of each node.
    let mut types: Vec<(usize, NodeId)> = Vec::new();
    for chunk in wanted.chunks(read_chunk.max(1)) {
        let read: Vec<ReadValueId> = chunk
            .iter()
            .filter_map(|&t| {
                Some(ReadValueId {
                    node_id: nodes[t].clone()?,
                    attribute_id: AttributeId::DataType as u32,
                    ..Default::default()
                })
            })
            .collect();
        let Ok(values) = session.read(&read, TimestampsToReturn::Neither, 0.0).await else {
            tracing::warn!(message = "Cannot read OPC UA data types; enumerations stay numbers.");
            return out;
        };
        for (&t, v) in chunk.iter().zip(values) {
            if let Some(Variant::NodeId(id)) = v.value {
                if !is_builtin(&id) {
                    types.push((t, *id));
                }
            }
        }
    }
    // 2. EnumStrings / EnumValues of each distinct data type.
    let distinct: Vec<NodeId> = types
        .iter()
        .map(|(_, id)| id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut by_type: HashMap<NodeId, EnumNames> = HashMap::new();
    for chunk in distinct.chunks(read_chunk.max(2) / 2) {
        let paths: Vec<BrowsePath> = chunk
            .iter()
            .flat_map(|id| {
                ["EnumStrings", "EnumValues"].map(|name| BrowsePath {
                    starting_node: id.clone(),
                    relative_path: RelativePath {
                        elements: Some(vec![RelativePathElement {
                            reference_type_id: ReferenceTypeId::HasProperty.into(),
                            is_inverse: false,
                            include_subtypes: true,
                            target_name: QualifiedName::new(0, name),
                        }]),
                    },
                })
            })
            .collect();
        let Ok(results) = session.translate_browse_paths_to_node_ids(&paths).await else {
            continue;
        };
        let mut props: Vec<(NodeId, NodeId)> = Vec::new();
        for (i, r) in results.iter().enumerate() {
            let target = r
                .targets
                .as_ref()
                .and_then(|t| t.first())
                .map(|t| t.target_id.node_id.clone());
            if let (true, Some(target)) = (r.status_code.is_good(), target) {
                props.push((chunk[i / 2].clone(), target));
            }
        }
        let read: Vec<ReadValueId> = props
            .iter()
            .map(|(_, p)| ReadValueId::from(p.clone()))
            .collect();
        let Ok(values) = session.read(&read, TimestampsToReturn::Neither, 0.0).await else {
            continue;
        };
        for ((type_id, _), v) in props.into_iter().zip(values) {
            if let Some(names) = v.value.as_ref().and_then(names_of) {
                by_type.entry(type_id).or_insert_with(|| Arc::new(names));
            }
        }
    }
    // 3. OPC UA 1.04 enumerations may define their names only in the DataTypeDefinition
    //    attribute (an EnumDefinition), without EnumStrings or EnumValues.
    let rest: Vec<NodeId> = distinct
        .into_iter()
        .filter(|id| !by_type.contains_key(id))
        .collect();
    for chunk in rest.chunks(read_chunk.max(1)) {
        let read: Vec<ReadValueId> = chunk
            .iter()
            .map(|id| ReadValueId {
                node_id: id.clone(),
                attribute_id: AttributeId::DataTypeDefinition as u32,
                ..Default::default()
            })
            .collect();
        let Ok(values) = session.read(&read, TimestampsToReturn::Neither, 0.0).await else {
            continue;
        };
        for (id, v) in chunk.iter().zip(values) {
            if let Some(names) = v.value.as_ref().and_then(definition_names) {
                by_type.insert(id.clone(), Arc::new(names));
            }
        }
    }
    for (t, id) in types {
        out[t] = by_type.get(&id).cloned();
    }
    super::notify::per_tag_or_empty(out)
}

/// Value → name from a DataTypeDefinition that is an EnumDefinition (Part 3, 8.49): each
/// field's Name, or its DisplayName when the name is empty.
fn definition_names(v: &Variant) -> Option<HashMap<i64, Arc<str>>> {
    let Variant::ExtensionObject(o) = v else {
        return None;
    };
    let definition = o.inner_as::<EnumDefinition>()?;
    let mut out = HashMap::new();
    for field in definition.fields.iter().flatten() {
        let name: Arc<str> = if field.name.is_empty() {
            text(&field.display_name)
        } else {
            field.name.as_ref().into()
        };
        out.insert(field.value, name);
    }
    (!out.is_empty()).then_some(out)
}

/// Built-in data types (ns=0, ids up to Enumeration's 29) are never enumerations with names.
fn is_builtin(id: &NodeId) -> bool {
    match (id.namespace, id.as_u32()) {
        (0, Some(n)) => n <= DataTypeId::Enumeration as u32,
        _ => false,
    }
}

/// Value → name from an EnumStrings (LocalizedText[]) or EnumValues (EnumValueType[]) value.
fn names_of(v: &Variant) -> Option<HashMap<i64, Arc<str>>> {
    let Variant::Array(a) = v else { return None };
    let mut out = HashMap::new();
    for (i, item) in a.values.iter().enumerate() {
        match item {
            Variant::LocalizedText(t) => {
                out.insert(i as i64, text(t));
            }
            Variant::ExtensionObject(o) => {
                if let Some(e) = o.inner_as::<EnumValueType>() {
                    out.insert(e.value, text(&e.display_name));
                }
            }
            _ => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

fn text(t: &LocalizedText) -> Arc<str> {
    t.text.as_ref().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::EnumField;

    fn compile(yaml: &str) -> (crate::mapping::TagMapPlan, Vec<String>) {
        let file = crate::config::parse_str::<crate::config::tagmap::TagMapFile>(yaml);
        assert!(file.problems.is_empty(), "{:?}", file.problems);
        let (plan, problems) = crate::mapping::compile(
            file.value.as_ref().unwrap(),
            std::path::Path::new("t.yaml"),
            &[],
        );
        (plan, problems.iter().map(|p| p.message.clone()).collect())
    }

    const HEAD: &str = "source:\n  opcua: {endpoint: \"opc.tcp://h:4840/\", security_policy: none, timestamps: server, uncertain: skip, max_items_per_subscription: 500, max_notifications_per_publish: 250}\ntags:\n";

    #[test]
    fn tag_map_options_reach_the_plan() {
        let (plan, problems) = compile(&format!(
            "{HEAD}  - {{sensor_id: a, node: \"ns=2;s=A\", queue_size: 5, trigger: status_value_timestamp, server_deadband: {{percent: 2}}}}\n  - {{sensor_id: v, node: \"ns=2;s=V\", elements: 3}}\n  - {{sensor_id: b, node: \"ns=2;s=B\"}}\n"
        ));
        assert!(problems.is_empty(), "{problems:?}");
        let crate::mapping::SourcePlan::OpcUa(o) = &plan.source else {
            panic!("not OPC UA")
        };
        assert_eq!(o.timestamps, crate::config::tagmap::OpcUaTimestamps::Server);
        assert_eq!(o.uncertain, crate::config::tagmap::UncertainPolicy::Skip);
        assert_eq!(o.max_items_per_subscription, 500);
        assert_eq!(o.max_notifications_per_publish, 250);
        let ids: Vec<&str> = plan.tags.iter().map(|t| &*t.sensor_id).collect();
        assert_eq!(ids, ["a", "v[0]", "v[1]", "v[2]", "b"]);
        assert_eq!(o.monitoring.len(), plan.tags.len());
        assert_eq!(
            o.monitoring[0],
            MonitoringPlan {
                index: None,
                queue_size: Some(5),
                trigger: Some(DataChangeTrigger::StatusValueTimestamp),
                deadband: Some(ServerDeadband::Percent(2.0)),
            }
        );
        assert_eq!(o.monitoring[3].index, Some(2));
        assert_eq!(o.monitoring[4], MonitoringPlan::default());
    }

    #[test]
    fn bad_tag_map_options_are_reported() {
        for (tag, wanted) in [
            ("queue_size: 0", "queue_size must be at least 1"),
            (
                "server_deadband: {percent: 120}",
                "server_deadband is out of range",
            ),
            (
                "server_deadband: {absolute: -1}",
                "server_deadband is out of range",
            ),
            ("elements: 0", "elements must be between 1 and 100000"),
        ] {
            let (plan, problems) = compile(&format!(
                "{HEAD}  - {{sensor_id: a, node: \"ns=2;s=A\", {tag}}}\n"
            ));
            assert!(
                problems.iter().any(|p| p.contains(wanted)),
                "{tag}: {problems:?}"
            );
            assert!(plan.tags.is_empty(), "{tag}");
        }
    }

    #[test]
    fn a_flat_user_gets_the_nested_form_as_hint() {
        let file = crate::config::parse_str::<crate::config::tagmap::TagMapFile>(
            "source:\n  opcua:\n    endpoint: \"opc.tcp://h:4840/\"\n    user: {username: op, password: x}\ntags:\n  - {sensor_id: a, node: \"ns=2;s=A\"}\n",
        );
        let problem = file.problems.first().expect("a problem");
        assert_eq!((problem.pos.line, problem.pos.col), (4, 11), "{problem:?}");
        let hint = problem.hint.as_deref().unwrap_or_default();
        assert!(
            hint.contains("user: {username: {username: op, password_file:"),
            "{problem:?}"
        );
    }

    #[test]
    fn queue_sizes_cover_one_publishing_interval() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(default_queue_size(s(1), s(1)), 2);
        assert_eq!(default_queue_size(s(1), ms(500)), 3);
        assert_eq!(default_queue_size(s(1), s(10)), 2);
        assert_eq!(default_queue_size(s(10), ms(1)), 1000);
    }

    #[test]
    fn filters() {
        let default = filter(&MonitoringPlan::default());
        let default = default
            .inner_as::<DataChangeFilter>()
            .expect("a DataChangeFilter even by default");
        assert_eq!(
            default.trigger,
            opcua::types::DataChangeTrigger::StatusValue
        );
        assert_eq!(default.deadband_type, 0);
        let f = filter(&MonitoringPlan {
            index: None,
            queue_size: None,
            trigger: None,
            deadband: Some(ServerDeadband::Percent(2.0)),
        });
        let f = f
            .inner_as::<DataChangeFilter>()
            .expect("a DataChangeFilter");
        assert_eq!(f.deadband_type, 2);
        assert_eq!(f.trigger, opcua::types::DataChangeTrigger::StatusValue);
    }

    #[test]
    fn enum_strings_and_values() {
        let strings = Variant::from(vec![
            LocalizedText::new("", "Off"),
            LocalizedText::new("", "On"),
        ]);
        let n = names_of(&strings).unwrap();
        assert_eq!(&*n[&1], "On");
        let values = Variant::from(vec![ExtensionObject::from_message(EnumValueType {
            value: 10,
            display_name: LocalizedText::new("", "Ten"),
            description: LocalizedText::null(),
        })]);
        let n = names_of(&values).unwrap();
        assert_eq!(&*n[&10], "Ten");
        let definition = Variant::from(ExtensionObject::from_message(EnumDefinition {
            fields: Some(vec![
                EnumField {
                    value: 0,
                    display_name: LocalizedText::new("", "Idle shown"),
                    description: LocalizedText::null(),
                    name: "Idle".into(),
                },
                EnumField {
                    value: 5,
                    display_name: LocalizedText::new("", "Busy"),
                    description: LocalizedText::null(),
                    name: "".into(),
                },
            ]),
        }));
        let n = definition_names(&definition).unwrap();
        assert_eq!(&*n[&0], "Idle");
        assert_eq!(&*n[&5], "Busy");
        assert!(definition_names(&Variant::Int32(3)).is_none());
        assert!(is_builtin(&DataTypeId::Int32.into()));
        assert!(!is_builtin(&NodeId::new(2, "Types/SimEnum1")));
    }
}
