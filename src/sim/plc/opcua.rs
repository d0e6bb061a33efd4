//! The simulated OPC UA server (async-opcua): variables in folders of the simulator's own
//! namespace (index 2), string node ids `ns=2;s=<path>`, values driven by signals.
//!
//! Invariants:
//! - A variable's value changes only at `epoch + k · update` of its signal, and carries that
//!   instant as its SourceTimestamp: a client that reads value and source timestamp can check
//!   `value == signal.value_at(source_timestamp - epoch)` exactly.
//! - Updates are written in slices of `update_slice` variables (default 10 000), yielding in
//!   between, so one update of 100 000 variables never holds the node store for long.
//! - One supervisor task owns the running server; a restart (fault) stops it, waits for it to
//!   end, and starts a new one on the same host and port with the same PKI directory. Sessions
//!   and subscriptions do not survive, as with a PLC reboot.
//! - Limits that stop 100 000-item subscriptions are lifted (see DEPENDENCIES.md).
//! - Statuses other than Good come only from faults ([`Faults::opcua_status`]): the updater
//!   writes each change at once, stamped with its instant, and records it (faults.rs).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opcua::crypto::SecurityPolicy;
use opcua::nodes::{DataTypeBuilder, ObjectBuilder, VariableBuilder};
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{ServerBuilder, ServerHandle, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::{
    DataTypeId, DataValue, DateTime, LocalizedText, MessageSecurityMode, NodeId, ObjectId,
    QualifiedName, StatusCode, VariableTypeId, Variant,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{OpcUaConfig, OpcUaSecurity, OpcUaType, OpcUaVariable};
use super::faults::{Faults, OpcUaStatusChange, RestartRequest};
use super::generate::NAMESPACE_INDEX;
use super::SimError;
use crate::sim::signal::{Signal, SignalValue};

/// What [`start`] reports back.
pub(crate) struct Started {
    pub endpoint: String,
    /// A PKI directory created for this instance, to remove on shutdown.
    pub temp_pki: Option<PathBuf>,
}

/// Everything needed to build (and rebuild) the server.
struct Spec {
    cfg: OpcUaConfig,
    port: u16,
    pki_dir: PathBuf,
    /// Wall-clock time of the epoch, for source timestamps.
    epoch_wall: chrono::DateTime<chrono::Utc>,
    epoch: Instant,
    /// Resolved node ids, one per variable, in config order.
    node_ids: Arc<Vec<NodeId>>,
    /// Statuses other than Good, set by tests and schedules.
    faults: Faults,
    /// The conditions, checked against the variables.
    alarms: Vec<super::alarms::Alarm>,
}

/// Starts the server and its supervisor; returns once it accepts connections.
pub(crate) async fn start(
    cfg: OpcUaConfig,
    epoch: Instant,
    epoch_wall: chrono::DateTime<chrono::Utc>,
    restart: mpsc::Receiver<RestartRequest>,
    faults: Faults,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Started, SimError> {
    let node_ids = Arc::new(resolve_node_ids(&cfg.variables)?);
    let alarms = super::alarms::Alarm::resolve(&cfg.alarms, &cfg.variables, &node_ids)?;
    let listener = bind(&cfg.host, cfg.port).await?;
    let port = listener
        .local_addr()
        .map_err(|e| SimError::OpcUa(format!("cannot read the bound port: {e}")))?
        .port();
    let (pki_dir, temp_pki) = match &cfg.pki_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = unique_temp_dir();
            (dir.clone(), Some(dir))
        }
    };
    let endpoint = format!("opc.tcp://{}:{port}/", cfg.host);
    let spec = Arc::new(Spec {
        cfg,
        port,
        pki_dir,
        epoch_wall,
        epoch,
        node_ids,
        faults,
        alarms,
    });
    let instance = Instance::start(&spec, listener, tracker, &shutdown)?;
    tracker.spawn(supervise(
        Arc::clone(&spec),
        instance,
        restart,
        tracker.clone(),
        shutdown,
    ));
    Ok(Started { endpoint, temp_pki })
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, SimError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })
}

fn unique_temp_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "tagbridge-sim-pki-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Node ids in config order, refusing duplicates and foreign namespaces.
fn resolve_node_ids(variables: &[OpcUaVariable]) -> Result<Vec<NodeId>, SimError> {
    let mut seen = HashSet::new();
    let mut ids = Vec::with_capacity(variables.len());
    for v in variables {
        let path = v.path.trim_matches('/');
        if path.is_empty() {
            return Err(SimError::Config(
                "an OPC UA variable has an empty path".into(),
            ));
        }
        let id = match &v.node_id {
            Some(text) => {
                let id: NodeId = text
                    .parse()
                    .map_err(|_| SimError::Config(format!("`{text}` is not an OPC UA node id")))?;
                if id.namespace != NAMESPACE_INDEX {
                    return Err(SimError::Config(format!(
                        "`{text}`: the simulator serves namespace {NAMESPACE_INDEX} only"
                    )));
                }
                id
            }
            None => NodeId::new(NAMESPACE_INDEX, path.to_string()),
        };
        if !seen.insert(id.clone()) {
            return Err(SimError::Config(format!("node {id} is configured twice")));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// One running server: its handle and the token of its updater.
struct Instance {
    handle: ServerHandle,
    /// Ends when the server's `run_with` returns.
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Instance {
    fn start(
        spec: &Arc<Spec>,
        listener: TcpListener,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Instance, SimError> {
        let table = super::alarms::Table::new(spec.alarms.clone(), spec.epoch, spec.epoch_wall);
        let mut b = builder(spec);
        if !spec.alarms.is_empty() {
            // ConditionRefresh is answered by the simulator's own node manager, which must come
            // before the core one (that refuses it).
            b = super::alarms::with_refresh_manager(b, Arc::clone(&table), &spec.cfg.namespace);
        }
        let (server, handle) = b.build().map_err(SimError::OpcUa)?;
        let ns = handle
            .get_namespace_index(&spec.cfg.namespace)
            .ok_or_else(|| SimError::OpcUa("the simulator's namespace is missing".into()))?;
        if ns != NAMESPACE_INDEX {
            return Err(SimError::OpcUa(format!(
                "the simulator's namespace got index {ns}, expected {NAMESPACE_INDEX}"
            )));
        }
        let manager = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .ok_or_else(|| SimError::OpcUa("no simple node manager".into()))?;
        populate(spec, &manager)?;
        if !spec.alarms.is_empty() {
            super::alarms::populate(&mut manager.address_space().write());
        }

        let (done_tx, done) = tokio::sync::oneshot::channel();
        tracker.spawn(async move {
            if let Err(error) = server.run_with(listener).await {
                tracing::warn!(message = "Simulated OPC UA server failed.", %error);
            }
            let _ = done_tx.send(());
        });
        // The updater stops with this server instance, or with the simulator.
        let instance_token = handle.token().clone();
        if !spec.cfg.structures.is_empty() {
            tracker.spawn(super::structs::update_loop(
                Arc::new(spec.cfg.structures.clone()),
                (spec.cfg.recipe_revision, NAMESPACE_INDEX),
                spec.epoch,
                spec.epoch_wall,
                Arc::clone(&manager),
                handle.clone(),
                instance_token.clone(),
                shutdown.clone(),
            ));
        }
        tracker.spawn(update_loop(
            Arc::clone(spec),
            manager,
            handle.clone(),
            instance_token,
            shutdown.clone(),
        ));
        tracker.spawn(super::alarms::run(
            table,
            handle.subscriptions().clone(),
            handle.token().clone(),
            shutdown.clone(),
        ));
        Ok(Instance { handle, done })
    }

    async fn stop(self) {
        self.handle.cancel();
        let _ = self.done.await;
    }
}

/// Owns the running server: restarts it on request, stops it on shutdown.
async fn supervise(
    spec: Arc<Spec>,
    mut instance: Instance,
    mut restart: mpsc::Receiver<RestartRequest>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            // Simulator shutdown: stop the server and end.
            _ = shutdown.cancelled() => {
                instance.stop().await;
                return;
            }
            request = restart.recv() => {
                let Some(reply) = request else {
                    instance.stop().await;
                    return;
                };
                instance.stop().await;
                tracing::info!(message = "Restarting the simulated OPC UA server.", port = spec.port);
                let started = match bind(&spec.cfg.host, spec.port).await {
                    Ok(listener) => Instance::start(&spec, listener, &tracker, &shutdown),
                    Err(e) => Err(e),
                };
                match started {
                    Ok(next) => {
                        instance = next;
                        let _ = reply.send(Ok(()));
                    }
                    Err(error) => {
                        tracing::warn!(message = "Cannot restart the simulated OPC UA server.", %error);
                        let _ = reply.send(Err(error));
                        return;
                    }
                }
            }
        }
    }
}

/// The async-opcua builder for `spec`: endpoints, users, PKI, lifted limits.
fn builder(spec: &Spec) -> ServerBuilder {
    let cfg = &spec.cfg;
    let mut token_ids: Vec<String> = Vec::new();
    if cfg.anonymous {
        token_ids.push(ANONYMOUS_USER_TOKEN_ID.to_string());
    }
    let mut b = ServerBuilder::new()
        .application_name("tagbridge simulated PLC")
        .application_uri("urn:tagbridge:sim-plc")
        .product_uri("urn:tagbridge")
        .with_node_manager(simple_node_manager(
            opcua::server::diagnostics::NamespaceMetadata {
                namespace_uri: cfg.namespace.clone(),
                ..Default::default()
            },
            "sim",
        ))
        .host(cfg.host.clone())
        .port(spec.port)
        .pki_dir(spec.pki_dir.clone())
        .create_sample_keypair(true)
        .certificate_path("own/cert.der")
        .private_key_path("private/private.pem")
        .trust_client_certs(true)
        .check_cert_time(false)
        .discovery_urls(vec!["/".to_owned()])
        // Lifted so that one client can monitor 100 000 items (DEPENDENCIES.md).
        .max_message_size(64 * 1024 * 1024)
        .max_chunk_count(0)
        .max_array_length(1_000_000)
        .max_sessions(100)
        .diagnostics_enabled(false);
    for (i, user) in cfg.users.iter().enumerate() {
        let id = format!("user{i}");
        b = b.add_user_token(
            &id,
            ServerUserToken::user_pass(user.username.clone(), user.password.clone()),
        );
        token_ids.push(id);
    }
    let ids: Vec<&str> = token_ids.iter().map(String::as_str).collect();
    for security in &cfg.security {
        let (id, policy, mode) = match security {
            OpcUaSecurity::None => ("none", SecurityPolicy::None, MessageSecurityMode::None),
            OpcUaSecurity::Basic256Sha256Sign => (
                "basic256sha256_sign",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::Sign,
            ),
            OpcUaSecurity::Basic256Sha256SignAndEncrypt => (
                "basic256sha256_sign_encrypt",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
            ),
        };
        b = b.add_endpoint(id, ("/", policy, mode, &ids as &[&str]));
    }
    let limits = b.limits_mut();
    limits.max_message_size = 64 * 1024 * 1024;
    limits.max_chunk_count = 0;
    limits.max_array_length = 1_000_000;
    limits.subscriptions.max_monitored_items_per_sub = 0;
    limits.subscriptions.max_subscriptions_per_session = 100;
    limits.subscriptions.max_queued_notifications = 500;
    // Event items queue every event of a publishing interval (the gateway asks for 1 000);
    // at 100, 1 000 alarm events/s overflowed whenever two 100 ms steps fell in one publish.
    limits.subscriptions.max_monitored_item_queue_size = 10_000;
    b
}

/// The built-in data type of `ty`.
fn data_type_id(ty: OpcUaType) -> DataTypeId {
    match ty {
        OpcUaType::Boolean => DataTypeId::Boolean,
        OpcUaType::Int16 => DataTypeId::Int16,
        OpcUaType::Int32 => DataTypeId::Int32,
        OpcUaType::Int64 => DataTypeId::Int64,
        OpcUaType::UInt16 => DataTypeId::UInt16,
        OpcUaType::UInt32 => DataTypeId::UInt32,
        OpcUaType::UInt64 => DataTypeId::UInt64,
        OpcUaType::Float => DataTypeId::Float,
        OpcUaType::Double => DataTypeId::Double,
        OpcUaType::String => DataTypeId::String,
        OpcUaType::Enum => DataTypeId::Int32,
    }
}

/// The OPC UA value of `value` as `ty`. Integers: round half away from zero, saturate.
pub fn to_variant(value: &SignalValue, ty: OpcUaType) -> Variant {
    let i = || value.as_i64();
    match ty {
        OpcUaType::Boolean => Variant::Boolean(value.as_bool()),
        OpcUaType::Int16 => Variant::Int16(i().clamp(i16::MIN.into(), i16::MAX.into()) as i16),
        OpcUaType::Int32 | OpcUaType::Enum => {
            Variant::Int32(i().clamp(i32::MIN.into(), i32::MAX.into()) as i32)
        }
        OpcUaType::Int64 => Variant::Int64(i()),
        OpcUaType::UInt16 => Variant::UInt16(i().clamp(0, u16::MAX.into()) as u16),
        OpcUaType::UInt32 => Variant::UInt32(i().clamp(0, u32::MAX.into()) as u32),
        OpcUaType::UInt64 => Variant::UInt64(match value {
            SignalValue::Float(f) => f.round().max(0.0) as u64,
            other => other.as_i64().max(0) as u64,
        }),
        OpcUaType::Float => Variant::Float(value.as_f64() as f32),
        OpcUaType::Double => Variant::Double(value.as_f64()),
        OpcUaType::String => Variant::String(value.as_text().into()),
    }
}

/// The EnumStrings of an `enum` variable: configured, or the names of a `states` signal.
fn enum_strings(v: &OpcUaVariable) -> Vec<String> {
    match (&v.enum_strings, &v.signal) {
        (Some(names), _) => names.clone(),
        (None, Signal::States { names, .. }) => names.clone(),
        _ => Vec::new(),
    }
}

/// Adds folders, enumeration types and variables to the node manager's address space.
fn populate(spec: &Spec, manager: &SimpleNodeManager) -> Result<(), SimError> {
    let ns = NAMESPACE_INDEX;
    let mut space = manager.address_space().write();
    let mut folders: HashSet<String> = HashSet::new();
    let mut enums: HashMap<Vec<String>, NodeId> = HashMap::new();
    let now = spec.epoch.elapsed();
    for (v, id) in spec.cfg.variables.iter().zip(spec.node_ids.iter()) {
        let path = v.path.trim_matches('/');
        let name = path.rsplit('/').next().unwrap_or(path);
        let parent = folder_of(&mut space, &mut folders, path);
        let data_type: NodeId = if v.data_type == OpcUaType::Enum {
            let names = enum_strings(v);
            if names.is_empty() {
                return Err(SimError::Config(format!(
                    "`{path}` is an enum: give `enum_strings` or a `states` signal"
                )));
            }
            let n = enums.len();
            enums
                .entry(names.clone())
                .or_insert_with(|| {
                    let type_id = NodeId::new(ns, format!("Types/SimEnum{}", n + 1));
                    let type_name = format!("SimEnum{}", n + 1);
                    DataTypeBuilder::new(
                        &type_id,
                        QualifiedName::new(ns, type_name.as_str()),
                        type_name.as_str(),
                    )
                    .subtype_of(DataTypeId::Enumeration)
                    .insert(&mut *space);
                    let strings: Vec<LocalizedText> =
                        names.iter().map(|s| LocalizedText::new("", s)).collect();
                    VariableBuilder::new(
                        &NodeId::new(ns, format!("Types/SimEnum{}/EnumStrings", n + 1)),
                        QualifiedName::new(0, "EnumStrings"),
                        "EnumStrings",
                    )
                    .property_of(type_id.clone())
                    .has_type_definition(VariableTypeId::PropertyType)
                    .data_type(DataTypeId::LocalizedText)
                    .value_rank(1)
                    .array_dimensions(&[strings.len() as u32])
                    .value(strings)
                    .insert(&mut *space);
                    type_id
                })
                .clone()
        } else {
            data_type_id(v.data_type).into()
        };
        let (value, source) = sample(spec, &v.signal, v.data_type, now);
        let inserted = VariableBuilder::new(id, QualifiedName::new(ns, name), name)
            .data_type(data_type)
            .value(value)
            .has_type_definition(VariableTypeId::BaseDataVariableType)
            .organized_by(parent)
            .minimum_sampling_interval(0.0)
            .insert(&mut *space);
        if !inserted {
            return Err(SimError::Config(format!("node {id} clashes with a folder")));
        }
        // Give the first value its source timestamp too.
        if let Some(opcua::nodes::NodeType::Variable(var)) = space.find_mut(id) {
            var.set_data_value(data_value(to_variant_of(spec, v, now), source));
        }
    }
    super::structs::populate(
        &spec.cfg.structures,
        spec.cfg.recipe_revision,
        ns,
        &mut space,
        &mut |space, path| folder_of(space, &mut folders, path),
        spec.epoch_wall,
        now,
    );
    Ok(())
}

/// The folder a variable at `path` lives in (`A/B/name` → `ns=2;s=A/B`), created with its
/// parents on first use; the Objects folder for a bare name.
fn folder_of(
    space: &mut opcua::server::address_space::AddressSpace,
    folders: &mut HashSet<String>,
    path: &str,
) -> NodeId {
    let ns = NAMESPACE_INDEX;
    let mut parent: NodeId = ObjectId::ObjectsFolder.into();
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    let mut prefix = String::new();
    for part in parts {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        let folder = NodeId::new(ns, prefix.clone());
        if folders.insert(prefix.clone()) {
            ObjectBuilder::new(&folder, QualifiedName::new(ns, part), part)
                .is_folder()
                .organized_by(parent.clone())
                .insert(space);
        }
        parent = folder;
    }
    parent
}

fn to_variant_of(spec: &Spec, v: &OpcUaVariable, t: Duration) -> Variant {
    sample(spec, &v.signal, v.data_type, t).0
}

/// The value at `t` and the instant it became valid.
fn sample(spec: &Spec, signal: &Signal, ty: OpcUaType, t: Duration) -> (Variant, DateTime) {
    let period = signal.update_period();
    let valid_from = if period == Duration::MAX {
        Duration::ZERO
    } else {
        let k = t.as_nanos() / period.as_nanos();
        Duration::from_nanos((k * period.as_nanos()) as u64)
    };
    let wall = spec.epoch_wall
        + chrono::Duration::from_std(valid_from).unwrap_or_else(|_| chrono::Duration::zero());
    (to_variant(&signal.value_at(t), ty), DateTime::from(wall))
}

fn data_value(value: Variant, source: DateTime) -> DataValue {
    status_value(Some(value), StatusCode::Good, source)
}

fn status_value(value: Option<Variant>, status: StatusCode, source: DateTime) -> DataValue {
    DataValue {
        value,
        status: Some(status),
        source_timestamp: Some(source),
        source_picoseconds: None,
        server_timestamp: Some(DateTime::now()),
        server_picoseconds: None,
    }
}

/// Writes new values when each signal's update period comes round, and statuses other than
/// Good when faults set or end them.
/// How far behind its clock an update group may fall and still write the steps it missed;
/// further behind, it skips to the present.
const CATCH_UP: Duration = Duration::from_secs(2);

async fn update_loop(
    spec: Arc<Spec>,
    manager: Arc<SimpleNodeManager>,
    handle: ServerHandle,
    instance: CancellationToken,
    shutdown: CancellationToken,
) {
    // Variables grouped by update period; constants never change.
    let mut groups: BTreeMap<Duration, Vec<usize>> = BTreeMap::new();
    for (i, v) in spec.cfg.variables.iter().enumerate() {
        let p = v.signal.update_period();
        if p != Duration::MAX {
            groups.entry(p).or_default().push(i);
        }
    }
    let slice = spec.cfg.update_slice.unwrap_or(10_000).max(1);
    // The next step index of every group.
    let mut next: BTreeMap<Duration, u128> = groups
        .keys()
        .map(|p| (*p, spec.epoch.elapsed().as_nanos() / p.as_nanos() + 1))
        .collect();
    let subscriptions = handle.subscriptions().clone();
    let mut statuses = Statuses::default();
    loop {
        // Faults first: a status set or ended is written at once.
        let fault_end = statuses.apply(&spec, &manager, &subscriptions);
        let step = next
            .iter()
            .map(|(p, k)| (*p, *k))
            .min_by_key(|(p, k)| p.as_nanos() * k);
        let due = step
            .map(|(period, k)| spec.epoch + Duration::from_nanos((period.as_nanos() * k) as u64));
        tokio::select! {
            // This server instance stopped (restart) or the simulator shuts down.
            _ = instance.cancelled() => return,
            _ = shutdown.cancelled() => return,
            // A fault set or cleared a status, or one ran out: apply it, then wait again.
            _ = spec.faults.opcua_status_changed() => continue,
            _ = tokio::time::sleep_until(fault_end.unwrap_or_else(Instant::now).into()), if fault_end.is_some() => continue,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {}
        }
        let (Some((period, k)), Some(due)) = (step, due) else {
            continue;
        };
        let t = due - spec.epoch;
        let members = &groups[&period];
        for chunk in members.chunks(slice) {
            let values: Vec<(&NodeId, DataValue)> = chunk
                .iter()
                .filter_map(|&i| {
                    let v = &spec.cfg.variables[i];
                    let (value, source) = sample(&spec, &v.signal, v.data_type, t);
                    let dv = match statuses.of(i) {
                        None => data_value(value, source),
                        // A failed sensor has no new value.
                        Some(status) if status.is_bad() => return None,
                        Some(status) => status_value(Some(value), status, source),
                    };
                    Some((&spec.node_ids[i], dv))
                })
                .collect();
            if let Err(status) = manager.set_values(
                &subscriptions,
                values.into_iter().map(|(id, dv)| (id, None, dv)),
            ) {
                tracing::warn!(message = "Cannot update simulated OPC UA values.", %status);
            }
            tokio::task::yield_now().await;
        }
        // Steps missed while the machine was busy are written late, each with its own source
        // timestamp, so a subscriber sees every value the signal took, as a server with
        // sampling queues would report it. More than [`CATCH_UP`] behind (a long stall, or
        // more values than the machine can write in a period) the missed steps are skipped:
        // values are functions of time, and the next one is the signal's value now.
        let now_k = spec.epoch.elapsed().as_nanos() / period.as_nanos();
        let behind = now_k.saturating_sub(k) * period.as_nanos();
        let following = if behind > CATCH_UP.as_nanos() {
            now_k + 1
        } else {
            k + 1
        };
        next.insert(period, following);
    }
}

/// The statuses other than Good the updater has written, by variable index.
#[derive(Default)]
struct Statuses {
    written: HashMap<usize, StatusCode>,
    /// Path and node id text → variable index, built at the first fault.
    index: Option<HashMap<String, usize>>,
}

impl Statuses {
    /// The status variable `i` carries now, when not Good.
    fn of(&self, i: usize) -> Option<StatusCode> {
        if self.written.is_empty() {
            return None;
        }
        self.written.get(&i).copied()
    }

    /// Writes every status that differs from what the faults say now; returns the earliest
    /// end of a status in force.
    fn apply(
        &mut self,
        spec: &Spec,
        manager: &SimpleNodeManager,
        subscriptions: &opcua::server::SubscriptionCache,
    ) -> Option<Instant> {
        let (wanted, next_end) = spec.faults.opcua_statuses();
        if wanted.is_empty() && self.written.is_empty() {
            return next_end;
        }
        let index = self.index.get_or_insert_with(|| {
            let mut index = HashMap::new();
            for (i, (v, id)) in spec
                .cfg
                .variables
                .iter()
                .zip(spec.node_ids.iter())
                .enumerate()
            {
                index.insert(v.path.trim_matches('/').to_string(), i);
                index.insert(id.to_string(), i);
            }
            index
        });
        let wanted: HashMap<usize, StatusCode> = wanted
            .into_iter()
            .filter_map(|(key, status)| Some((*index.get(&key)?, status)))
            .collect();
        let mut changes: Vec<(usize, StatusCode)> = wanted
            .iter()
            .filter(|(i, status)| self.written.get(i) != Some(status))
            .map(|(i, status)| (*i, *status))
            .collect();
        changes.extend(
            self.written
                .keys()
                .filter(|i| !wanted.contains_key(i))
                .map(|i| (*i, StatusCode::Good)),
        );
        if changes.is_empty() {
            return next_end;
        }
        let t = spec.epoch.elapsed();
        let wall = spec.epoch_wall
            + chrono::Duration::from_std(t).unwrap_or_else(|_| chrono::Duration::zero());
        let mut values = Vec::with_capacity(changes.len());
        for &(i, status) in &changes {
            let v = &spec.cfg.variables[i];
            // A Bad value is empty (async-opcua sends no status with a missing value).
            let value = if status.is_bad() {
                Some(Variant::Empty)
            } else {
                Some(to_variant_of(spec, v, t))
            };
            values.push((&spec.node_ids[i], status_value(value, status, wall.into())));
            if status.is_good() {
                self.written.remove(&i);
            } else {
                self.written.insert(i, status);
            }
        }
        if let Err(status) = manager.set_values(
            subscriptions,
            values.into_iter().map(|(id, dv)| (id, None, dv)),
        ) {
            tracing::warn!(message = "Cannot write a simulated OPC UA status.", %status);
            return next_end;
        }
        for (i, status) in changes {
            let path = spec.cfg.variables[i].path.trim_matches('/').to_string();
            tracing::info!(message = "Simulated OPC UA variable status changed.", %path, %status);
            spec.faults.log_opcua_status(OpcUaStatusChange {
                path,
                status,
                at: wall,
            });
        }
        next_end
    }
}
