//! The simulated PLC's alarm source (OPC UA Part 9, Alarms & Conditions, the minimum a client
//! of conditions needs): conditions declared in the simulator's YAML that fire, clear and
//! retain deterministically from the signals, a ConditionRefresh that sends the retained ones
//! again, and the Alarms object as an event notifier.
//!
//! ```yaml
//! opcua:
//!   variables:
//!     - {path: Line1/Temp, type: double, signal: {sine: {offset: 70, amplitude: 20, period: 20s, update: 1s}}}
//!     - {path: Line1/State, type: enum, signal: {states: {names: [Running, Fault], period: 7s}}}
//!   alarms:
//!     - {name: TempHigh, source: Line1/Temp, limit: {high: 85}, severity: 700}
//!     - {name: LineFault, source: Line1/State, off_normal: {normal: Running}}
//! ```
//!
//! Invariants (what a test can compute from the signals alone):
//! - A condition is evaluated at its source variable's update instants `k · update`, on the
//!   value the variable holds from then on. `limit` is active when the value is above `high`
//!   or below `low`; `off_normal` when the value (a state's name, or a number) is not
//!   `normal`. A change of the active state between step `k - 1` and step `k` is one event
//!   whose Time is `epoch + k · update` (the variable's SourceTimestamp) and whose EventId is
//!   the bytes of `<name>/<k>`.
//! - Conditions are acknowledged automatically when they clear (AckedState/Id = !active), so a
//!   condition is retained (Retain = true) exactly while it is active.
//! - ConditionRefresh (and ConditionRefresh2) on the gateway's subscription sends, to that
//!   subscription's event items only, a RefreshStartEvent, every retained condition as its
//!   latest transition (same EventId and Time; the transition is searched back up to
//!   [`LOOKBACK_STEPS`] steps, for a condition active since before the server started), and a
//!   RefreshEndEvent.
//! - A server (re)start evaluates every condition at its current step without sending an event:
//!   like a PLC reboot, transitions while the server was down are not sent; the retained ones
//!   come back with the next refresh.
//! - Events are reported by the Server object (`i=2253`) and by the `Alarms` object
//!   (`ns=2;s=Alarms`, EventNotifier SubscribeToEvents), each event once per item.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opcua::nodes::{Event, EventNotifier, ObjectBuilder};
use opcua::server::node_manager::{
    MethodCall, NodeManager, NodeManagerBuilder, RequestContext, ServerContext,
};
use opcua::server::SubscriptionCache;
use opcua::types::{
    AttributeId, ByteString, DateTime, LocalizedText, MethodId, NodeId, NumericRange, ObjectId,
    QualifiedName, StatusCode, UAString, Variant,
};
use tokio_util::sync::CancellationToken;

use super::config::{AlarmConfig, OpcUaVariable};
use super::generate::NAMESPACE_INDEX;
use super::SimError;
use crate::sim::signal::{Signal, SignalValue};

/// How far back a refresh looks for the step at which a retained condition became active.
pub const LOOKBACK_STEPS: u64 = 100_000;

/// The `Alarms` object: an event notifier for the simulator's conditions.
pub const ALARMS_OBJECT: &str = "Alarms";

/// ExclusiveLevelAlarmType, OffNormalAlarmType, RefreshStart/EndEventType (Part 9).
const LEVEL_ALARM_TYPE: u32 = 9482;
const OFF_NORMAL_ALARM_TYPE: u32 = 10637;
const REFRESH_START_EVENT_TYPE: u32 = 2787;
const REFRESH_END_EVENT_TYPE: u32 = 2788;
/// ProcessConditionClassType (Part 9, 5.9).
const PROCESS_CONDITION_CLASS: u32 = 11163;

/// One condition, checked and resolved against the variables.
#[derive(Debug, Clone)]
pub struct Alarm {
    pub name: String,
    pub source_path: String,
    pub source_node: NodeId,
    pub signal: Signal,
    pub kind: Kind,
    pub severity: u16,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Limit { high: Option<f64>, low: Option<f64> },
    OffNormal(serde_json::Value),
}

impl Alarm {
    /// Checks `configs` against the variables (`node_ids` in the same order).
    pub fn resolve(
        configs: &[AlarmConfig],
        variables: &[OpcUaVariable],
        node_ids: &[NodeId],
    ) -> Result<Vec<Alarm>, SimError> {
        let mut out: Vec<Alarm> = Vec::new();
        for c in configs {
            if c.name.trim().is_empty() || out.iter().any(|a| a.name == c.name) {
                return Err(SimError::Config(format!(
                    "alarm names must be unique and not empty (`{}`)",
                    c.name
                )));
            }
            let source = c.source.trim_matches('/');
            let Some(i) = variables
                .iter()
                .position(|v| v.path.trim_matches('/') == source)
            else {
                return Err(SimError::Config(format!(
                    "alarm `{}` watches `{}`, which is not a variable's path",
                    c.name, c.source
                )));
            };
            let kind = match (&c.limit, &c.off_normal) {
                (Some(l), None) if l.high.is_some() || l.low.is_some() => Kind::Limit {
                    high: l.high,
                    low: l.low,
                },
                (None, Some(o)) => Kind::OffNormal(o.normal.clone()),
                _ => {
                    return Err(SimError::Config(format!(
                        "alarm `{}` needs exactly one of `limit: {{high, low}}` or `off_normal: {{normal}}`",
                        c.name
                    )))
                }
            };
            let severity = c.severity.unwrap_or(500);
            if !(1..=1000).contains(&severity) {
                return Err(SimError::Config(format!(
                    "alarm `{}`: severity must be 1 to 1000",
                    c.name
                )));
            }
            out.push(Alarm {
                name: c.name.clone(),
                source_path: source.to_string(),
                source_node: node_ids.get(i).cloned().unwrap_or_default(),
                signal: variables[i].signal.clone(),
                kind,
                severity,
                message: c
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("{} active", c.name)),
            });
        }
        Ok(out)
    }

    /// The step length: the source variable's update period.
    pub fn period(&self) -> Duration {
        match self.signal.update_period() {
            Duration::MAX => Duration::from_secs(1),
            p => p.max(Duration::from_millis(1)),
        }
    }

    /// Whether the condition is active at step `k`.
    pub fn active_at(&self, k: u64) -> bool {
        let t = step_time(self.period(), k);
        is_active(&self.kind, &self.signal.value_at(t))
    }

    fn event_type(&self) -> u32 {
        match self.kind {
            Kind::Limit { .. } => LEVEL_ALARM_TYPE,
            Kind::OffNormal(_) => OFF_NORMAL_ALARM_TYPE,
        }
    }
}

fn step_time(period: Duration, k: u64) -> Duration {
    Duration::from_nanos((period.as_nanos() * u128::from(k)).min(u128::from(u64::MAX)) as u64)
}

/// The condition's predicate on one value.
pub fn is_active(kind: &Kind, value: &SignalValue) -> bool {
    match kind {
        Kind::Limit { high, low } => {
            let v = value.as_f64();
            high.is_some_and(|h| v > h) || low.is_some_and(|l| v < l)
        }
        Kind::OffNormal(normal) => match normal {
            serde_json::Value::Number(n) => n.as_f64().is_none_or(|n| value.as_f64() != n),
            serde_json::Value::Bool(b) => value.as_bool() != *b,
            serde_json::Value::String(s) => value.as_text() != *s,
            _ => true,
        },
    }
}

/// The state of every condition of one server instance, shared by the updater and
/// ConditionRefresh.
pub struct Table {
    alarms: Vec<Alarm>,
    epoch: Instant,
    epoch_wall: chrono::DateTime<chrono::Utc>,
    state: Mutex<Vec<State>>,
    /// Events sent (transitions, not refreshes), for tests and logs.
    pub sent: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// The last step evaluated.
    k: u64,
    active: bool,
    /// The step of the latest transition (or the step found by looking back).
    since: u64,
}

impl Table {
    pub fn new(
        alarms: Vec<Alarm>,
        epoch: Instant,
        epoch_wall: chrono::DateTime<chrono::Utc>,
    ) -> Arc<Table> {
        let now = epoch.elapsed();
        let state = alarms
            .iter()
            .map(|a| {
                let k = (now.as_nanos() / a.period().as_nanos()) as u64;
                let active = a.active_at(k);
                State {
                    k,
                    active,
                    since: transition_step(a, k, active),
                }
            })
            .collect();
        Arc::new(Table {
            alarms,
            epoch,
            epoch_wall,
            state: Mutex::new(state),
            sent: AtomicU64::new(0),
        })
    }

    fn event(&self, i: usize, k: u64, active: bool) -> AlarmEvent {
        let a = &self.alarms[i];
        let t = step_time(a.period(), k);
        let wall = self.epoch_wall
            + chrono::Duration::from_std(t).unwrap_or_else(|_| chrono::Duration::zero());
        AlarmEvent {
            event_id: ByteString::from(format!("{}/{k}", a.name).into_bytes()),
            event_type: NodeId::new(0, a.event_type()),
            condition_id: NodeId::new(NAMESPACE_INDEX, format!("{ALARMS_OBJECT}/{}", a.name)),
            source_node: a.source_node.clone(),
            source_name: a.source_path.clone(),
            time: DateTime::from(wall),
            message: if active {
                a.message.clone()
            } else {
                format!("{} returned to normal", a.name)
            },
            severity: a.severity,
            condition_name: a.name.clone(),
            active,
            limits: match a.kind {
                Kind::Limit { high, low } => (high, low),
                Kind::OffNormal(_) => (None, None),
            },
        }
    }
}

/// The step at which the run of `active` ending at `k` began (bounded look-back).
fn transition_step(a: &Alarm, k: u64, active: bool) -> u64 {
    let mut s = k;
    let floor = k.saturating_sub(LOOKBACK_STEPS);
    while s > floor && a.active_at(s - 1) == active {
        s -= 1;
    }
    s
}

/// Adds the `Alarms` object (an event notifier) to the address space.
pub fn populate(space: &mut opcua::server::address_space::AddressSpace) {
    let id = NodeId::new(NAMESPACE_INDEX, ALARMS_OBJECT);
    ObjectBuilder::new(
        &id,
        QualifiedName::new(NAMESPACE_INDEX, ALARMS_OBJECT),
        ALARMS_OBJECT,
    )
    .event_notifier(EventNotifier::SUBSCRIBE_TO_EVENTS)
    .organized_by(ObjectId::ObjectsFolder)
    .insert(space);
}

/// Evaluates every condition at its steps and sends the transitions, until this server
/// instance stops or the simulator shuts down.
pub async fn run(
    table: Arc<Table>,
    subscriptions: Arc<SubscriptionCache>,
    instance: CancellationToken,
    shutdown: CancellationToken,
) {
    if table.alarms.is_empty() {
        return;
    }
    let alarms_object = NodeId::new(NAMESPACE_INDEX, ALARMS_OBJECT);
    loop {
        // The next step of every condition; the earliest is due first.
        let due = {
            let state = table.state.lock().unwrap_or_else(|p| p.into_inner());
            table
                .alarms
                .iter()
                .zip(state.iter())
                .map(|(a, s)| step_time(a.period(), s.k + 1))
                .min()
                .unwrap_or(Duration::from_secs(1))
        };
        tokio::select! {
            _ = instance.cancelled() => return,
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until((table.epoch + due).into()) => {}
        }
        let now = table.epoch.elapsed();
        let mut events = Vec::new();
        {
            let mut state = table.state.lock().unwrap_or_else(|p| p.into_inner());
            for (i, (a, s)) in table.alarms.iter().zip(state.iter_mut()).enumerate() {
                let last = (now.as_nanos() / a.period().as_nanos()) as u64;
                // Every step up to now, in order, so none is skipped when the task was late.
                while s.k < last {
                    s.k += 1;
                    let active = a.active_at(s.k);
                    if active != s.active {
                        s.active = active;
                        s.since = s.k;
                        events.push(table.event(i, s.k, active));
                    }
                }
            }
        }
        if events.is_empty() {
            continue;
        }
        table.sent.fetch_add(events.len() as u64, Ordering::Relaxed);
        // Notified once, on the Alarms object: async-opcua also hands every event to the
        // items on the Server object, so naming the Server too sent those items each event
        // twice.
        subscriptions.notify_events(events.iter().map(|e| (e as &dyn Event, &alarms_object)));
    }
}

/// One condition's state as an event (a transition, or its state sent again by a refresh).
#[derive(Debug, Clone)]
pub struct AlarmEvent {
    event_id: ByteString,
    event_type: NodeId,
    condition_id: NodeId,
    source_node: NodeId,
    source_name: String,
    time: DateTime,
    message: String,
    severity: u16,
    condition_name: String,
    active: bool,
    /// HighLimit and LowLimit of a limit alarm.
    limits: (Option<f64>, Option<f64>),
}

impl opcua::types::event_field::EventField for AlarmEvent {
    /// Fields by browse path from the condition type (Part 9, 5.5 to 5.8).
    fn get_value(
        &self,
        attribute_id: AttributeId,
        _index_range: &NumericRange,
        path: &[QualifiedName],
    ) -> Variant {
        if attribute_id == AttributeId::NodeId && path.is_empty() {
            // The ConditionId select clause (Part 9, 5.5.2).
            return Variant::from(self.condition_id.clone());
        }
        if attribute_id != AttributeId::Value || path.iter().any(|q| q.namespace_index != 0) {
            return Variant::Empty;
        }
        let names: Vec<&str> = path.iter().map(|q| q.name.as_ref()).collect();
        let two = |active: bool, yes: &str, no: &str| {
            Variant::from(LocalizedText::new("en", if active { yes } else { no }))
        };
        match names.as_slice() {
            ["EventId"] => Variant::from(self.event_id.clone()),
            ["EventType"] => Variant::from(self.event_type.clone()),
            ["SourceNode"] => Variant::from(self.source_node.clone()),
            ["SourceName"] => Variant::from(UAString::from(self.source_name.as_str())),
            ["Time"] | ["ReceiveTime"] => Variant::from(self.time),
            ["Message"] => Variant::from(LocalizedText::new("en", &self.message)),
            ["Severity"] | ["LastSeverity"] => Variant::UInt16(self.severity),
            ["ConditionName"] => Variant::from(UAString::from(self.condition_name.as_str())),
            ["ConditionClassId"] => Variant::from(NodeId::new(0, PROCESS_CONDITION_CLASS)),
            ["ConditionClassName"] => Variant::from(LocalizedText::new("en", "Process")),
            ["BranchId"] => Variant::from(NodeId::null()),
            ["Retain"] => Variant::Boolean(self.active),
            ["Quality"] => Variant::StatusCode(StatusCode::Good),
            ["EnabledState"] => two(true, "Enabled", "Disabled"),
            ["EnabledState", "Id"] => Variant::Boolean(true),
            ["ActiveState"] => two(self.active, "Active", "Inactive"),
            ["ActiveState", "Id"] => Variant::Boolean(self.active),
            ["AckedState"] => two(!self.active, "Acknowledged", "Unacknowledged"),
            ["AckedState", "Id"] => Variant::Boolean(!self.active),
            ["ConfirmedState", "Id"] => Variant::Boolean(!self.active),
            ["InputNode"] => Variant::from(self.source_node.clone()),
            ["HighLimit"] => self.limits.0.map_or(Variant::Empty, Variant::Double),
            ["LowLimit"] => self.limits.1.map_or(Variant::Empty, Variant::Double),
            ["Comment"] => Variant::from(LocalizedText::null()),
            ["ClientUserId"] => Variant::from(UAString::null()),
            _ => Variant::Empty,
        }
    }
}

impl Event for AlarmEvent {
    fn get_field(
        &self,
        _type_definition_id: &NodeId,
        attribute_id: AttributeId,
        index_range: &NumericRange,
        browse_path: &[QualifiedName],
    ) -> Variant {
        use opcua::types::event_field::EventField;
        self.get_value(attribute_id, index_range, browse_path)
    }

    fn time(&self) -> &DateTime {
        &self.time
    }

    fn event_type_id(&self) -> &NodeId {
        &self.event_type
    }
}

/// RefreshStartEvent / RefreshEndEvent (Part 9, 5.11.2).
#[derive(Debug)]
struct RefreshEvent {
    event_id: ByteString,
    event_type: NodeId,
    time: DateTime,
}

impl RefreshEvent {
    fn new(type_id: u32) -> RefreshEvent {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        RefreshEvent {
            event_id: ByteString::from(format!("refresh/{type_id}/{n}").into_bytes()),
            event_type: NodeId::new(0, type_id),
            time: DateTime::now(),
        }
    }
}

impl opcua::types::event_field::EventField for RefreshEvent {
    fn get_value(
        &self,
        attribute_id: AttributeId,
        _index_range: &NumericRange,
        path: &[QualifiedName],
    ) -> Variant {
        if attribute_id != AttributeId::Value || path.len() != 1 || path[0].namespace_index != 0 {
            return Variant::Empty;
        }
        match path[0].name.as_ref() {
            "EventId" => Variant::from(self.event_id.clone()),
            "EventType" => Variant::from(self.event_type.clone()),
            "SourceNode" => Variant::from(NodeId::from(ObjectId::Server)),
            "SourceName" => Variant::from(UAString::from("Server")),
            "Time" | "ReceiveTime" => Variant::from(self.time),
            "Message" => Variant::from(LocalizedText::new("en", "Refresh")),
            "Severity" => Variant::UInt16(1),
            _ => Variant::Empty,
        }
    }
}

impl Event for RefreshEvent {
    fn get_field(
        &self,
        _type_definition_id: &NodeId,
        attribute_id: AttributeId,
        index_range: &NumericRange,
        browse_path: &[QualifiedName],
    ) -> Variant {
        use opcua::types::event_field::EventField;
        self.get_value(attribute_id, index_range, browse_path)
    }

    fn time(&self) -> &DateTime {
        &self.time
    }

    fn event_type_id(&self) -> &NodeId {
        &self.event_type
    }
}

/// A node manager that owns only the ConditionRefresh methods, placed before the core node
/// manager (which refuses them), so the simulator can answer them.
pub struct RefreshManager {
    table: Arc<Table>,
}

/// Builds the [`RefreshManager`] of one server instance.
pub struct RefreshManagerBuilder(pub Arc<Table>);

impl NodeManagerBuilder for RefreshManagerBuilder {
    fn build(
        self: Box<Self>,
        _context: ServerContext,
    ) -> Arc<opcua::server::node_manager::DynNodeManager> {
        Arc::new(RefreshManager { table: self.0 })
    }
}

/// `b` with its node managers in the order refresh, core, diagnostics, the simulator's own:
/// Call goes to the first manager that owns the method.
pub fn with_refresh_manager(
    b: opcua::server::ServerBuilder,
    table: Arc<Table>,
    namespace: &str,
) -> opcua::server::ServerBuilder {
    use opcua::server::node_manager::memory::{
        simple_node_manager, CoreNodeManagerBuilder, InMemoryNodeManagerBuilder,
    };
    b.without_node_managers()
        .with_node_manager(RefreshManagerBuilder(table))
        .with_node_manager(InMemoryNodeManagerBuilder::new(CoreNodeManagerBuilder))
        .with_node_manager(opcua::server::diagnostics::DiagnosticsNodeManagerBuilder)
        .with_node_manager(simple_node_manager(
            opcua::server::diagnostics::NamespaceMetadata {
                namespace_uri: namespace.to_string(),
                ..Default::default()
            },
            "sim",
        ))
}

fn is_refresh_method(id: &NodeId) -> bool {
    *id == NodeId::from(MethodId::ConditionType_ConditionRefresh)
        || *id == NodeId::from(MethodId::ConditionType_ConditionRefresh2)
}

impl RefreshManager {
    /// One ConditionRefresh(2) call: the brackets and the retained conditions to the
    /// subscription's event items (or the one item of ConditionRefresh2).
    fn refresh(&self, context: &RequestContext, call: &mut MethodCall) {
        let args = call.arguments();
        let subscription = match args.first() {
            Some(Variant::UInt32(id)) => *id,
            _ => {
                call.set_status(StatusCode::BadInvalidArgument);
                return;
            }
        };
        let only_item = match (
            call.method_id() == &NodeId::from(MethodId::ConditionType_ConditionRefresh2),
            args.get(1),
        ) {
            (false, _) => None,
            (true, Some(Variant::UInt32(item))) => Some(*item),
            (true, _) => {
                call.set_status(StatusCode::BadInvalidArgument);
                return;
            }
        };
        let Some(session_subs) = context
            .subscriptions
            .get_session_subscriptions(context.session_id)
        else {
            call.set_status(StatusCode::BadSubscriptionIdInvalid);
            return;
        };
        let retained: Vec<AlarmEvent> = {
            let state = self.table.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .iter()
                .enumerate()
                .filter(|(_, s)| s.active)
                .map(|(i, s)| self.table.event(i, s.since, true))
                .collect()
        };
        let start = RefreshEvent::new(REFRESH_START_EVENT_TYPE);
        let end = RefreshEvent::new(REFRESH_END_EVENT_TYPE);
        let type_tree = context.get_type_tree_for_user();
        let mut subs = session_subs.lock();
        let Some(sub) = subs.get_mut(subscription) else {
            call.set_status(StatusCode::BadSubscriptionIdInvalid);
            return;
        };
        let items: Vec<u32> = sub
            .items()
            .filter(|i| i.item_to_monitor().attribute_id == AttributeId::EventNotifier)
            .map(|i| i.id())
            .filter(|id| only_item.is_none_or(|only| only == *id))
            .collect();
        if only_item.is_some() && items.is_empty() {
            call.set_status(StatusCode::BadMonitoredItemIdInvalid);
            return;
        }
        for id in &items {
            sub.notify_event(id, &start, type_tree.get());
            for e in &retained {
                sub.notify_event(id, e, type_tree.get());
            }
            sub.notify_event(id, &end, type_tree.get());
        }
        call.set_status(StatusCode::Good);
    }
}

#[async_trait::async_trait]
impl NodeManager for RefreshManager {
    fn owns_node(&self, id: &NodeId) -> bool {
        is_refresh_method(id)
    }

    fn name(&self) -> &str {
        "sim-condition-refresh"
    }

    fn namespaces_for_user(
        &self,
        _context: &RequestContext,
    ) -> Vec<opcua::server::diagnostics::NamespaceMetadata> {
        Vec::new()
    }

    async fn init(&self, _type_tree: &mut opcua::nodes::DefaultTypeTree, _context: ServerContext) {}

    async fn call(
        &self,
        context: &RequestContext,
        methods_to_call: &mut [&mut MethodCall],
    ) -> Result<(), StatusCode> {
        for call in methods_to_call.iter_mut() {
            if is_refresh_method(call.method_id()) {
                self.refresh(context, call);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(kind: Kind, signal: &str) -> Alarm {
        Alarm {
            name: "A".into(),
            source_path: "X".into(),
            source_node: NodeId::new(2, "X"),
            signal: serde_yaml_signal(signal),
            kind,
            severity: 500,
            message: "A active".into(),
        }
    }

    fn serde_yaml_signal(text: &str) -> Signal {
        let parsed = crate::config::parse_str::<Signal>(text);
        parsed.value.expect("a signal")
    }

    #[test]
    fn limit_and_off_normal_predicates() {
        let high = Kind::Limit {
            high: Some(80.0),
            low: None,
        };
        assert!(is_active(&high, &SignalValue::Float(80.5)));
        assert!(!is_active(&high, &SignalValue::Float(80.0)));
        let low = Kind::Limit {
            high: None,
            low: Some(1.0),
        };
        assert!(is_active(&low, &SignalValue::Int(0)));
        let normal = Kind::OffNormal(serde_json::json!("Running"));
        assert!(!is_active(
            &normal,
            &SignalValue::State {
                index: 0,
                name: "Running".into()
            }
        ));
        assert!(is_active(
            &normal,
            &SignalValue::State {
                index: 1,
                name: "Fault".into()
            }
        ));
        assert!(is_active(
            &Kind::OffNormal(serde_json::json!(0)),
            &SignalValue::Int(2)
        ));
    }

    #[test]
    fn transitions_follow_the_signal_step_by_step() {
        // A square wave of period 4 s updated every 1 s: high at steps 0, 1, low at 2, 3.
        let a = alarm(
            Kind::Limit {
                high: Some(0.5),
                low: None,
            },
            "{square: {low: 0, high: 1, period: 4s, duty: 0.5, update: 1s}}",
        );
        let active: Vec<bool> = (0..8).map(|k| a.active_at(k)).collect();
        assert_eq!(active, [true, true, false, false, true, true, false, false]);
        assert_eq!(transition_step(&a, 5, true), 4);
        assert_eq!(transition_step(&a, 7, false), 6);
        assert_eq!(transition_step(&a, 1, true), 0);
    }

    #[test]
    fn fields_by_browse_path() {
        let table = Table::new(
            vec![alarm(
                Kind::Limit {
                    high: Some(0.5),
                    low: None,
                },
                "{constant: 1}",
            )],
            Instant::now(),
            chrono::Utc::now(),
        );
        let e = table.event(0, 7, true);
        let get = |p: &[&str]| {
            let path: Vec<QualifiedName> = p.iter().map(|n| QualifiedName::new(0, *n)).collect();
            e.get_field(
                &NodeId::null(),
                AttributeId::Value,
                &NumericRange::None,
                &path,
            )
        };
        assert_eq!(
            get(&["EventId"]),
            Variant::from(ByteString::from(b"A/7".to_vec()))
        );
        assert_eq!(get(&["ActiveState", "Id"]), Variant::Boolean(true));
        assert_eq!(get(&["AckedState", "Id"]), Variant::Boolean(false));
        assert_eq!(get(&["Retain"]), Variant::Boolean(true));
        assert_eq!(get(&["Severity"]), Variant::UInt16(500));
        assert_eq!(get(&["HighLimit"]), Variant::Double(0.5));
        assert_eq!(get(&["Nope"]), Variant::Empty);
        assert_eq!(e.event_type_id(), &NodeId::new(0, LEVEL_ALARM_TYPE));
    }
}
