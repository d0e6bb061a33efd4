//! The OPC UA source against the simulated PLC (async-opcua server) and against Python's
//! asyncua server. Each test starts its own server on an ephemeral loopback port, its own PKI
//! directories, and waits for conditions with deadlines.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tagbridge::mapping::{load_all, SourcePlan, TagMapPlan};
use tagbridge::sample::{RawValue, Sample, SampleBatch};
use tagbridge::sim::plc::{
    OpcUaConfig, OpcUaSecurity, OpcUaType, OpcUaUser, OpcUaVariable, Plc, PlcConfig, PlcHandle,
};
use tagbridge::sim::signal::{Signal, SignalValue};
use tagbridge::source::opcua::{self, OpcUaCounters, OpcUaError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{self, python};

/// Long enough for a debug build on a loaded 2-core machine; conditions usually hold in ~1 s.
const DEADLINE: Duration = Duration::from_secs(60);

fn var(path: &str, data_type: OpcUaType, signal: Signal) -> OpcUaVariable {
    OpcUaVariable {
        path: path.into(),
        node_id: None,
        data_type,
        enum_strings: None,
        signal,
    }
}

fn constant(v: SignalValue) -> Signal {
    Signal::Constant(v)
}

async fn start_sim(config: OpcUaConfig) -> PlcHandle {
    Plc::start(PlcConfig {
        opcua: Some(config),
        ..Default::default()
    })
    .await
    .expect("the simulator starts")
}

/// Writes `yaml` as a tag map in `dir` and compiles it.
fn tag_map(dir: &Path, yaml: &str) -> TagMapPlan {
    let path = dir.join("opcua.yaml");
    std::fs::write(&path, yaml).unwrap();
    match load_all(&[path]) {
        Ok(mut plans) => plans.remove(0),
        Err(report) => panic!("tag map does not compile:\n{report}\n---\n{yaml}"),
    }
}

/// A running source and what it sent.
struct Running {
    plan: TagMapPlan,
    counters: Arc<OpcUaCounters>,
    samples: Arc<std::sync::Mutex<Vec<Sample>>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// How soon a refusal the server answers at once must be reported. Far below every retry
/// of [`SLOW`] and browse's 30 s wait for a session, so only a first answer passes; loose
/// enough for a debug build on a loaded 2-core machine (it takes well under a second).
const PROMPT: Duration = Duration::from_secs(10);

/// Retries stretched far past [`PROMPT`]: a source that did not report the first answer
/// cannot pass by reporting a later one.
const SLOW: opcua::Tuning = opcua::Tuning {
    first_retry: Duration::from_secs(120),
    max_retry: Duration::from_secs(120),
    trust_retry: Duration::from_secs(120),
    session_retry: Duration::from_secs(120),
};

impl Running {
    fn start(plan: TagMapPlan) -> Running {
        Self::start_tuned(plan, opcua::Tuning::default())
    }

    fn start_tuned(plan: TagMapPlan, tuning: opcua::Tuning) -> Running {
        let SourcePlan::OpcUa(source) = &plan.source else {
            panic!("not an OPC UA tag map")
        };
        // Small on purpose: the source must cope with a slow consumer.
        let (tx, mut rx) = mpsc::channel::<SampleBatch>(4);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let counters = opcua::start_tuned(&plan, source, tuning, tx, cancel.clone(), &tracker);
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&samples);
        tracker.spawn(async move {
            while let Some(batch) = rx.recv().await {
                sink.lock().unwrap().extend(batch);
            }
        });
        Running {
            plan,
            counters,
            samples,
            cancel,
            tracker,
        }
    }

    fn sensor(&self, s: &Sample) -> &str {
        &self.plan.tags[s.tag].sensor_id
    }

    /// The samples of `sensor_id` so far.
    fn of(&self, sensor_id: &str) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| self.sensor(s) == sensor_id)
            .cloned()
            .collect()
    }

    /// The latest value per sensor_id.
    fn latest(&self) -> HashMap<String, RawValue> {
        let mut out = HashMap::new();
        for s in self.samples.lock().unwrap().iter() {
            out.insert(self.sensor(s).to_string(), s.value.clone());
        }
        out
    }

    fn explain(&self) -> String {
        let c = &self.counters;
        format!(
            "counters: republished {} lost {} tags_bad {} readings {} bad {} unsupported {} reconnects {} connect_failures {} monitored {} failed {} connected {}\nlatest: {:#?}",
            OpcUaCounters::get(&c.republished),
            OpcUaCounters::get(&c.lost_messages),
            OpcUaCounters::get(&c.tags_bad),
            OpcUaCounters::get(&c.readings),
            OpcUaCounters::get(&c.bad),
            OpcUaCounters::get(&c.unsupported),
            OpcUaCounters::get(&c.reconnects),
            OpcUaCounters::get(&c.connect_failures),
            OpcUaCounters::get(&c.items_monitored),
            OpcUaCounters::get(&c.items_failed),
            c.connected.load(Ordering::Relaxed),
            self.latest()
        )
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        let stopped = tokio::time::timeout(Duration::from_secs(20), self.tracker.wait()).await;
        assert!(stopped.is_ok(), "the OPC UA source did not stop on cancel");
    }
}

/// The signal time of a source timestamp. OPC UA timestamps are truncated to 100 ns ticks, so
/// a value that became valid at `k · update` may carry a stamp up to 100 ns earlier.
fn held_at(plc: &PlcHandle, ts: DateTime<Utc>) -> Duration {
    plc.t_at(ts + chrono::Duration::nanoseconds(100))
}

fn pki(dir: &Path) -> String {
    dir.join("pki").display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_arrives_with_the_right_value() {
    let states = || Signal::States {
        names: vec!["Stopped".into(), "Running".into(), "Fault".into()],
        period: tagbridge::config::duration::HumanDuration(Duration::from_millis(300)),
    };
    let counter = Signal::Counter {
        start: 0,
        step: 1,
        wrap: None,
        update: Some(tagbridge::config::duration::HumanDuration(
            Duration::from_millis(200),
        )),
    };
    let plc = start_sim(OpcUaConfig {
        variables: vec![
            var(
                "T/Bool",
                OpcUaType::Boolean,
                constant(SignalValue::Bool(true)),
            ),
            var(
                "T/I16",
                OpcUaType::Int16,
                constant(SignalValue::Int(-12_345)),
            ),
            var(
                "T/I32",
                OpcUaType::Int32,
                constant(SignalValue::Int(-1_234_567)),
            ),
            var(
                "T/I64",
                OpcUaType::Int64,
                constant(SignalValue::Int(-1_234_567_890_123)),
            ),
            var(
                "T/U16",
                OpcUaType::UInt16,
                constant(SignalValue::Int(54_321)),
            ),
            var(
                "T/U32",
                OpcUaType::UInt32,
                constant(SignalValue::Int(3_000_000_000)),
            ),
            var(
                "T/U64",
                OpcUaType::UInt64,
                constant(SignalValue::Int(1_000_000_000_000_000_000)),
            ),
            var("T/F32", OpcUaType::Float, constant(SignalValue::Float(0.1))),
            var(
                "T/F64",
                OpcUaType::Double,
                constant(SignalValue::Float(1.0 / 3.0)),
            ),
            var(
                "T/Str",
                OpcUaType::String,
                constant(SignalValue::Text("hello, plant".into())),
            ),
            var("T/Enum", OpcUaType::Enum, states()),
            var("T/EnumOwnStates", OpcUaType::Enum, states()),
            var("T/Counter", OpcUaType::Int32, counter.clone()),
        ],
        ..Default::default()
    })
    .await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
source:
  opcua:
    endpoint: {endpoint}
    security_policy: none
    publishing_interval: 100ms
    pki_dir: {pki}
defaults:
  interval: 50ms
tags:
  - {{sensor_id: bool, node: "ns=2;s=T/Bool"}}
  - {{sensor_id: i16, node: "ns=2;s=T/I16"}}
  - {{sensor_id: i32, node: "ns=2;s=T/I32"}}
  - {{sensor_id: i64, node: "ns=2;s=T/I64"}}
  - {{sensor_id: u16, node: "ns=2;s=T/U16"}}
  - {{sensor_id: u32, node: "ns=2;s=T/U32"}}
  - {{sensor_id: u64, node: "ns=2;s=T/U64"}}
  - {{sensor_id: f32, node: "ns=2;s=T/F32"}}
  - {{sensor_id: f64, node: "ns=2;s=T/F64"}}
  - {{sensor_id: str, node: "ns=2;s=T/Str"}}
  - {{sensor_id: enum, node: "ns=2;s=T/Enum"}}
  - {{sensor_id: enum_own, node: "ns=2;s=T/EnumOwnStates", states: {{0: S, 1: R, 2: F}}}}
  - {{sensor_id: counter, node: "ns=2;s=T/Counter", queue_size: 10, trigger: status_value_timestamp}}
"#,
        pki = pki(dir.path())
    );
    let run = Running::start(tag_map(dir.path(), &yaml));
    let expected: Vec<(&str, RawValue)> = vec![
        ("bool", RawValue::Bool(true)),
        ("i16", RawValue::Int(-12_345)),
        ("i32", RawValue::Int(-1_234_567)),
        ("i64", RawValue::Int(-1_234_567_890_123)),
        ("u16", RawValue::UInt(54_321)),
        ("u32", RawValue::UInt(3_000_000_000)),
        ("u64", RawValue::UInt(1_000_000_000_000_000_000)),
        ("f32", RawValue::Float(0.1)),
        ("f64", RawValue::Float(1.0 / 3.0)),
        ("str", RawValue::Text("hello, plant".into())),
    ];
    let all_there = support::wait_until(DEADLINE, || {
        let latest = run.latest();
        latest.len() == 13 && run.of("counter").len() >= 5 && run.of("enum").len() >= 3
    })
    .await;
    assert!(all_there, "not every tag arrived\n{}", run.explain());
    let latest = run.latest();
    for (sensor, value) in &expected {
        assert_eq!(
            latest.get(*sensor),
            Some(value),
            "{sensor}\n{}",
            run.explain()
        );
    }
    // Enumerations arrive as state names read from EnumStrings, and each name is the one the
    // signal held at the sample's source timestamp.
    let names = ["Stopped", "Running", "Fault"];
    for s in run.of("enum") {
        let RawValue::Text(name) = &s.value else {
            panic!(
                "enum value {:?} is not a state name\n{}",
                s.value,
                run.explain()
            )
        };
        assert!(names.contains(&&**name), "{name}");
        let held = states().value_at(held_at(&plc, s.timestamp));
        assert_eq!(held.as_text(), **name, "state at {}", s.timestamp);
    }
    // With its own `states:`, the tag keeps numbers for the mapping stage to name.
    assert!(
        run.of("enum_own")
            .iter()
            .all(|s| matches!(s.value, RawValue::Int(0..=2))),
        "{:?}",
        run.of("enum_own")
    );
    // Changing values carry their source timestamps: value == signal(t).
    let counted = run.of("counter");
    for s in &counted {
        let held = counter.value_at(held_at(&plc, s.timestamp)).as_i64();
        assert_eq!(s.value, RawValue::Int(held), "counter at {}", s.timestamp);
    }
    run.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_node_is_reported_and_the_rest_flow() {
    let plc = start_sim(OpcUaConfig {
        variables: vec![var(
            "A/Good",
            OpcUaType::Double,
            constant(SignalValue::Float(2.5)),
        )],
        ..Default::default()
    })
    .await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
source:
  opcua: {{endpoint: {endpoint}, security_policy: none, publishing_interval: 100ms, pki_dir: {pki}}}
tags:
  - {{sensor_id: missing, node: "ns=2;s=A/DoesNotExist"}}
  - {{sensor_id: good, node: "ns=2;s=A/Good"}}
  - {{sensor_id: missing_too, node: "ns=7;i=4242"}}
"#,
        pki = pki(dir.path())
    );
    let run = Running::start(tag_map(dir.path(), &yaml));
    // A server may refuse the item (BadNodeIdUnknown when creating it) or accept it and
    // report the status in its values (as async-opcua does for a missing node in its own
    // namespace): both count as reported.
    let c = &run.counters;
    let ok = support::wait_until(DEADLINE, || {
        !run.of("good").is_empty()
            && OpcUaCounters::get(&c.items_failed) + OpcUaCounters::get(&c.tags_bad) == 2
    })
    .await;
    assert!(
        ok,
        "the good tag did not flow past the unknown ones\n{}",
        run.explain()
    );
    assert_eq!(run.of("good")[0].value, RawValue::Float(2.5));
    assert!(run.of("missing").is_empty() && run.of("missing_too").is_empty());
    run.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_resume_after_the_server_restarts() {
    let counter = Signal::Counter {
        start: 0,
        step: 1,
        wrap: None,
        update: Some(tagbridge::config::duration::HumanDuration(
            Duration::from_millis(200),
        )),
    };
    let plc = start_sim(OpcUaConfig {
        variables: vec![var("R/Counter", OpcUaType::Int64, counter.clone())],
        ..Default::default()
    })
    .await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
source:
  opcua: {{endpoint: {endpoint}, security_policy: none, publishing_interval: 100ms, pki_dir: {pki}}}
defaults: {{interval: 50ms}}
tags:
  - {{sensor_id: counter, node: "ns=2;s=R/Counter"}}
"#,
        pki = pki(dir.path())
    );
    let run = Running::start(tag_map(dir.path(), &yaml));
    assert!(
        support::wait_until(DEADLINE, || run.of("counter").len() >= 3).await,
        "no readings before the restart\n{}",
        run.explain()
    );
    plc.faults().restart_opcua().await.expect("restart");
    let restarted: DateTime<Utc> = Utc::now();
    let resumed = support::wait_until(DEADLINE, || {
        run.of("counter")
            .iter()
            .filter(|s| s.timestamp > restarted + chrono::Duration::milliseconds(500))
            .count()
            >= 3
    })
    .await;
    assert!(
        resumed,
        "readings did not resume after the restart\n{}",
        run.explain()
    );
    assert!(
        OpcUaCounters::get(&run.counters.reconnects) >= 1,
        "{}",
        run.explain()
    );
    for s in run.of("counter") {
        let held = counter.value_at(held_at(&plc, s.timestamp)).as_i64();
        assert_eq!(
            s.value,
            RawValue::Int(held),
            "counter at {} (t = {:?}), all: {:?}",
            s.timestamp,
            held_at(&plc, s.timestamp),
            run.of("counter")
        );
    }
    run.stop().await;
    plc.shutdown().await;
}

/// A simulator offering only Basic256Sha256 + SignAndEncrypt and a password user.
async fn secure_sim(dir: &Path) -> PlcHandle {
    start_sim(OpcUaConfig {
        security: vec![OpcUaSecurity::Basic256Sha256SignAndEncrypt],
        anonymous: false,
        users: vec![OpcUaUser {
            username: "operator".into(),
            password: "s3cret-pw".into(),
        }],
        pki_dir: Some(dir.join("server-pki")),
        variables: vec![var(
            "S/Value",
            OpcUaType::Double,
            constant(SignalValue::Float(7.25)),
        )],
        ..Default::default()
    })
    .await
}

fn secure_yaml(dir: &Path, endpoint: &str) -> String {
    let password = dir.join("password");
    std::fs::write(&password, "s3cret-pw\n").unwrap();
    format!(
        r#"
source:
  opcua:
    endpoint: {endpoint}
    security_policy: basic256sha256
    user: {{username: {{username: operator, password_file: {password}}}}}
    publishing_interval: 100ms
    pki_dir: {pki}
tags:
  - {{sensor_id: secure, node: "ns=2;s=S/Value"}}
"#,
        password = password.display(),
        pki = pki(dir)
    )
}

fn opcua_plan(plan: &TagMapPlan) -> &tagbridge::mapping::OpcUaPlan {
    match &plan.source {
        SourcePlan::OpcUa(o) => o,
        SourcePlan::Modbus(_) => panic!("not OPC UA"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_server_certificate_is_refused_with_the_documented_message() {
    let dir = tempfile::tempdir().unwrap();
    let plc = secure_sim(dir.path()).await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let plan = tag_map(dir.path(), &secure_yaml(dir.path(), &endpoint));
    let source = opcua_plan(&plan);
    let client = opcua::connect::client(source, 1000).unwrap();
    let error = match opcua::connect::connect(&client, source, &plan.path).await {
        Ok(_) => panic!("an untrusted server was accepted"),
        Err(e) => e,
    };
    let OpcUaError::Untrusted(untrusted) = &error else {
        panic!("expected an untrusted-certificate error, got: {error}")
    };
    let (rejected, trusted_dir, thumbprint) = (
        &untrusted.rejected,
        &untrusted.trusted_dir,
        &untrusted.thumbprint,
    );
    let text = error.to_string();
    assert!(rejected.exists(), "{} was not written", rejected.display());
    assert!(
        rejected.starts_with(dir.path().join("pki/rejected")),
        "{text}"
    );
    assert_eq!(trusted_dir, &dir.path().join("pki/trusted"));
    for needle in [
        &rejected.display().to_string(),
        &format!("{}/", trusted_dir.display()),
        &format!("tagbridge opcua trust {}", plan.path.display()),
        thumbprint,
    ] {
        assert!(
            text.contains(needle.as_str()),
            "message lacks `{needle}`: {text}"
        );
    }
    // The running source refuses too, and sends nothing.
    let run = Running::start(plan);
    assert!(
        support::wait_until(DEADLINE, || OpcUaCounters::get(
            &run.counters.connect_failures
        ) >= 1)
        .await
    );
    assert!(run.samples.lock().unwrap().is_empty());
    run.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_and_encrypt_with_username_works_once_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let plc = secure_sim(dir.path()).await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let plan = tag_map(dir.path(), &secure_yaml(dir.path(), &endpoint));
    // What `tagbridge opcua trust` does.
    let trusted = opcua::connect::trust_server(opcua_plan(&plan), None)
        .await
        .expect("trust");
    assert!(trusted.path.starts_with(dir.path().join("pki/trusted")));
    // The gateway's own certificate was created on first use.
    assert!(dir.path().join("pki/own/cert.der").exists());
    let run = Running::start(plan);
    let ok = support::wait_until(DEADLINE, || !run.of("secure").is_empty()).await;
    assert!(ok, "no reading over SignAndEncrypt\n{}", run.explain());
    assert_eq!(run.of("secure")[0].value, RawValue::Float(7.25));
    run.stop().await;
    plc.shutdown().await;
}

/// Runs the CLI on a blocking thread (the simulator lives on this runtime).
async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || support::tagbridge().args(&args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_writes_a_tag_map_that_checks_and_runs() {
    let plc = start_sim(OpcUaConfig {
        variables: vec![
            var(
                "Line1/Compressor7/VibeX",
                OpcUaType::Double,
                constant(SignalValue::Float(1.5)),
            ),
            var(
                "Line1/Compressor7/Running",
                OpcUaType::Boolean,
                constant(SignalValue::Bool(true)),
            ),
            var(
                "Line1/Compressor7/State",
                OpcUaType::Enum,
                Signal::States {
                    names: vec!["Stopped".into(), "Running".into()],
                    period: tagbridge::config::duration::HumanDuration(Duration::from_secs(1)),
                },
            ),
            var(
                "Line2/Name",
                OpcUaType::String,
                constant(SignalValue::Text("L2".into())),
            ),
            var("Top", OpcUaType::UInt32, constant(SignalValue::Int(9))),
        ],
        ..Default::default()
    })
    .await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("browsed.yaml");
    let browse = cli(vec![
        "browse".into(),
        endpoint.clone(),
        "--security".into(),
        "none".into(),
        "--pki-dir".into(),
        pki(dir.path()),
        "-o".into(),
        out.display().to_string(),
    ])
    .await;
    assert!(
        browse.status.success(),
        "browse failed: {}",
        String::from_utf8_lossy(&browse.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    for needle in [
        "sensor_id: \"Line1/Compressor7/VibeX\"",
        "node: \"ns=2;s=Line1/Compressor7/VibeX\"",
        "# Double",
        "sensor_id: \"Top\"",
        "enumeration",
    ] {
        assert!(
            text.contains(needle),
            "browse output lacks `{needle}`:\n{text}"
        );
    }
    let check = cli(vec!["check".into(), out.display().to_string()]).await;
    assert!(
        check.status.success(),
        "check refused the browsed tag map:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // And it runs: every tag delivers.
    let plan = load_all(&[out]).unwrap().remove(0);
    assert_eq!(plan.tags.len(), 5, "{text}");
    let run = Running::start(plan);
    let ok = support::wait_until(DEADLINE, || run.latest().len() == 5).await;
    assert!(
        ok,
        "not every browsed tag delivered\n{}\n---\n{text}",
        run.explain()
    );
    let latest = run.latest();
    assert_eq!(latest["Line1/Compressor7/VibeX"], RawValue::Float(1.5));
    assert_eq!(latest["Line2/Name"], RawValue::Text("L2".into()));
    assert!(
        matches!(&latest["Line1/Compressor7/State"], RawValue::Text(_)),
        "{latest:?}"
    );
    run.stop().await;
    plc.shutdown().await;
}

/// Python asyncua's server, started from `tests/python/opcua_server.py`; stops when dropped.
struct AsyncuaServer {
    endpoint: String,
    ns: u16,
    _child: tokio::process::Child,
}

async fn asyncua_server(secure: Option<&Path>) -> AsyncuaServer {
    asyncua_server_with(secure, &[]).await
}

/// Like [`asyncua_server`], with extra arguments for the script.
async fn asyncua_server_with(secure: Option<&Path>, extra: &[&str]) -> AsyncuaServer {
    use tokio::io::AsyncBufReadExt;
    let python = tokio::task::spawn_blocking(python::python).await.unwrap();
    let mut command = tokio::process::Command::new(python);
    command.arg(support::repo().join("tests/python/opcua_server.py"));
    if let Some(dir) = secure {
        command.arg("--secure").arg(dir);
    }
    command.args(extra);
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the asyncua server");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ns = None;
    let ready = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line.strip_prefix("NS ") {
                ns = n.trim().parse().ok();
            }
            if let Some(endpoint) = line.strip_prefix("READY ") {
                return Some(endpoint.trim().to_string());
            }
        }
        None
    })
    .await;
    let Ok(Some(endpoint)) = ready else {
        panic!("the asyncua server did not start (see its stderr above)")
    };
    AsyncuaServer {
        endpoint,
        ns: ns.expect("the server printed its namespace index"),
        _child: child,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_from_python_asyncua_server() {
    let server = asyncua_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "Double",
        "Float",
        "Bool",
        "SByte",
        "Byte",
        "Int16",
        "UInt64",
        "Text",
        "Localized",
        "When",
        "Guid",
        "Bytes",
        "Array",
        "Range",
        "Mode",
        "Broken",
        "Unsure",
        "Counter",
    ];
    let mut yaml = format!(
        "source:\n  opcua: {{endpoint: \"{}\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\ndefaults: {{interval: 50ms}}\ntags:\n",
        server.endpoint,
        pki(dir.path())
    );
    for name in names {
        yaml.push_str(&format!(
            "  - {{sensor_id: {name}, node: \"ns={};s=Plant/{name}\"}}\n",
            server.ns
        ));
    }
    // An array read per element.
    yaml.push_str(&format!(
        "  - {{sensor_id: El, node: \"ns={};s=Plant/Vector\", elements: 3}}\n",
        server.ns
    ));
    let run = Running::start(tag_map(dir.path(), &yaml));
    let c = &run.counters;
    let ok = support::wait_until(DEADLINE, || {
        run.latest().len() == names.len() - 3 + 3
            && run.of("Counter").len() >= 3
            && OpcUaCounters::get(&c.bad) >= 1
            && OpcUaCounters::get(&c.unsupported) >= 2
    })
    .await;
    assert!(ok, "not every asyncua value arrived\n{}", run.explain());
    let latest = run.latest();
    let expect = [
        ("Double", RawValue::Float(3.25)),
        ("Float", RawValue::Float(0.5)),
        ("Bool", RawValue::Bool(false)),
        ("SByte", RawValue::Int(-5)),
        ("Byte", RawValue::UInt(200)),
        ("Int16", RawValue::Int(-7)),
        ("UInt64", RawValue::UInt(18_000_000_000_000_000_000)),
        ("Text", RawValue::Text("Ärger ✓".into())),
        ("Localized", RawValue::Text("Open".into())),
        ("When", RawValue::Text("2026-01-02T03:04:05.678Z".into())),
        ("Bytes", RawValue::Text("AQID".into())),
        ("Mode", RawValue::Text("SignAndEncrypt".into())),
        // Uncertain values pass by default.
        ("Unsure", RawValue::Float(2.0)),
        ("El[0]", RawValue::Float(1.5)),
        ("El[1]", RawValue::Float(2.5)),
        ("El[2]", RawValue::Float(3.5)),
    ];
    for (sensor, value) in expect {
        assert_eq!(
            latest.get(sensor),
            Some(&value),
            "{sensor}\n{}",
            run.explain()
        );
    }
    let RawValue::Text(guid) = &latest["Guid"] else {
        panic!("Guid is not text: {:?}", latest["Guid"])
    };
    assert_eq!(guid.to_lowercase(), "72962b91-fa75-4ae6-8d28-b404dc7daf63");
    // The array, the structure and the Bad value are reported, not sent.
    for sensor in ["Array", "Range", "Broken"] {
        assert!(!latest.contains_key(sensor), "{sensor} was sent");
    }
    assert!(OpcUaCounters::get(&c.uncertain) >= 1);
    // The counter climbs.
    let counts: Vec<i64> = run
        .of("Counter")
        .iter()
        .map(|s| match s.value {
            RawValue::Int(n) => n,
            ref v => panic!("counter value {v:?}"),
        })
        .collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    run.stop().await;
}

/// `n` tags on Int32 constants `0..n`, read with the source options `options` and the tag
/// options `tag_options`, once every tag has arrived (checked against its constant).
async fn constants_arrived(
    n: i32,
    options: &str,
    tag_options: &str,
) -> (PlcHandle, Running, tempfile::TempDir) {
    let plc = start_sim(OpcUaConfig {
        variables: (0..n)
            .map(|i| {
                var(
                    &format!("C/V{i}"),
                    OpcUaType::Int32,
                    constant(SignalValue::Int(i.into())),
                )
            })
            .collect(),
        ..Default::default()
    })
    .await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = format!(
        "source:\n  opcua: {{endpoint: {endpoint}, security_policy: none, publishing_interval: 100ms, pki_dir: {}, {options}}}\ntags:\n",
        pki(dir.path())
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{sensor_id: v{i}, node: \"ns=2;s=C/V{i}\"{tag_options}}}\n"
        ));
    }
    let run = Running::start(tag_map(dir.path(), &yaml));
    let ok = support::wait_until(DEADLINE, || run.latest().len() == n as usize).await;
    assert!(ok, "not every tag arrived\n{}", run.explain());
    for i in 0..n {
        assert_eq!(run.latest()[&format!("v{i}")], RawValue::Int(i.into()));
    }
    (plc, run, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_spread_over_subscriptions_past_the_limit() {
    let (plc, run, _dir) = constants_arrived(
        7,
        "max_items_per_subscription: 3",
        ", server_deadband: {absolute: 0.5}",
    )
    .await;
    // ceil(7 / 3) subscriptions.
    assert_eq!(OpcUaCounters::get(&run.counters.subscriptions_created), 3);
    run.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sends_at_most_max_notifications_per_publish_values_per_response() {
    let (plc, run, _dir) = constants_arrived(10, "max_notifications_per_publish: 2", "").await;
    // The ten initial values, created in one call, come in responses of at most two.
    let messages = OpcUaCounters::get(&run.counters.messages);
    assert!(messages >= 5, "{messages} responses for 10 values");
    run.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_policies_and_x509_user_against_python_asyncua_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = asyncua_server(Some(dir.path())).await;
    let x509 = format!(
        "{{certificate: {{cert: \"{}\", key: \"{}\"}}}}",
        dir.path().join("user-cert.der").display(),
        dir.path().join("user-key.pem").display()
    );
    for (policy, mode, user) in [
        ("aes128_sha256_rsaoaep", "sign_and_encrypt", x509.as_str()),
        ("aes256_sha256_rsapss", "sign", x509.as_str()),
        ("aes256_sha256_rsapss", "sign_and_encrypt", x509.as_str()),
    ] {
        let yaml = format!(
            "source:\n  opcua: {{endpoint: \"{}\", security_policy: {policy}, security_mode: {mode}, user: {user}, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - {{sensor_id: d, node: \"ns={};s=Plant/Double\"}}\n",
            server.endpoint,
            pki(dir.path()),
            server.ns
        );
        let plan = tag_map(dir.path(), &yaml);
        opcua::connect::trust_server(opcua_plan(&plan), None)
            .await
            .unwrap_or_else(|e| panic!("{policy} {mode}: trust: {e}"));
        let run = Running::start(plan);
        let ok = support::wait_until(DEADLINE, || !run.of("d").is_empty()).await;
        assert!(ok, "{policy} {mode}: no reading\n{}", run.explain());
        assert_eq!(run.of("d")[0].value, RawValue::Float(3.25));
        run.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_once_a_late_server_comes_up() {
    // A port that is free now; the server binds it after the source has failed at least once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "source:\n  opcua: {{endpoint: \"opc.tcp://127.0.0.1:{port}/\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - {{sensor_id: late, node: \"ns=2;s=L/Value\"}}\n",
        pki(dir.path())
    );
    let run = Running::start(tag_map(dir.path(), &yaml));
    assert!(
        support::wait_until(DEADLINE, || OpcUaCounters::get(
            &run.counters.connect_failures
        ) >= 1)
        .await
    );
    let plc = start_sim(OpcUaConfig {
        port,
        variables: vec![var(
            "L/Value",
            OpcUaType::Int16,
            constant(SignalValue::Int(5)),
        )],
        ..Default::default()
    })
    .await;
    let ok = support::wait_until(DEADLINE, || !run.of("late").is_empty()).await;
    assert!(ok, "no reading after the server came up\n{}", run.explain());
    assert_eq!(run.of("late")[0].value, RawValue::Int(5));
    run.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_trust_command_checks_the_thumbprint() {
    let dir = tempfile::tempdir().unwrap();
    let plc = secure_sim(dir.path()).await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let plan = tag_map(dir.path(), &secure_yaml(dir.path(), &endpoint));
    let tag_map_path = plan.path.display().to_string();
    let trust = |extra: &[&str]| {
        let mut args = vec!["opcua".to_string(), "trust".into(), tag_map_path.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        cli(args)
    };
    let wrong = trust(&["--thumbprint", "00:11:22"]).await;
    assert!(!wrong.status.success(), "a wrong thumbprint was accepted");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("not 001122"), "{stderr}");
    let trusted_dir = dir.path().join("pki/trusted");
    let count = || {
        std::fs::read_dir(&trusted_dir)
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(count(), 0);
    // The thumbprint an operator would compare: the one the refusal names.
    let client = opcua::connect::client(opcua_plan(&plan), 1000).unwrap();
    let Err(OpcUaError::Untrusted(untrusted)) =
        opcua::connect::connect(&client, opcua_plan(&plan), &plan.path).await
    else {
        panic!("expected an untrusted-certificate error")
    };
    let right = trust(&["--thumbprint", &untrusted.thumbprint.to_lowercase()]).await;
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    assert!(String::from_utf8_lossy(&right.stdout).contains(&untrusted.thumbprint));
    assert_eq!(count(), 1);
    assert!(
        !untrusted.rejected.exists(),
        "the rejected copy stays behind"
    );
    let run = Running::start(plan);
    assert!(support::wait_until(DEADLINE, || !run.of("secure").is_empty()).await);
    run.stop().await;
    plc.shutdown().await;
}

/// A TCP proxy whose connections can be cut, to drop the link without stopping the server.
struct Proxy {
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    /// Listens on `listen` and forwards every connection to `upstream`.
    async fn start(listen: &str, upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .expect("bind the proxy");
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut rx = cuts.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Proxy { cut }
    }

    /// Closes every open connection; new ones are accepted.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_loses_no_values() {
    let counter = Signal::Counter {
        start: 0,
        step: 1,
        wrap: None,
        update: Some(tagbridge::config::duration::HumanDuration(
            Duration::from_millis(200),
        )),
    };
    let plc = start_sim(OpcUaConfig {
        variables: vec![var("D/Counter", OpcUaType::Int32, counter.clone())],
        ..Default::default()
    })
    .await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let port = endpoint
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    // Same port on another loopback address: the endpoint URL the server advertises still
    // matches, and the client's traffic goes through the proxy.
    let proxy = Proxy::start(&format!("127.0.0.2:{port}"), format!("127.0.0.1:{port}")).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "source:\n  opcua: {{endpoint: \"opc.tcp://127.0.0.2:{port}/\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - {{sensor_id: c, node: \"ns=2;s=D/Counter\", interval: 50ms, queue_size: 100}}\n",
        pki(dir.path())
    );
    let run = Running::start(tag_map(dir.path(), &yaml));
    // The witness: a second session straight to the server, never cut. What it saw is what
    // the server published; a step the simulator skipped while the machine was busy is
    // missing from both, so only the gateway's own losses count.
    let direct = tempfile::tempdir().unwrap();
    let witness = Running::start(tag_map(
        direct.path(),
        &yaml
            .replace("127.0.0.2", "127.0.0.1")
            .replace(&pki(dir.path()), &pki(direct.path())),
    ));
    assert!(
        support::wait_until(DEADLINE, || run.of("c").len() >= 3).await,
        "no readings through the proxy\n{}",
        run.explain()
    );
    proxy.cut();
    let cut_at = Utc::now();
    let resumed = support::wait_until(DEADLINE, || {
        OpcUaCounters::get(&run.counters.reconnects) >= 1
            && run
                .of("c")
                .iter()
                .filter(|s| s.timestamp > cut_at + chrono::Duration::seconds(1))
                .count()
                >= 3
    })
    .await;
    assert!(
        resumed,
        "readings did not resume after the cut\n{}",
        run.explain()
    );
    // Every value the server published while the gateway was subscribed arrived, and none
    // twice: the server kept them queued while the link was down (queue_size 100), the
    // session carried on, and a publish response lost with the link was republished (it then
    // arrives after later ones: order by timestamp). A session the server replaced gets its
    // subscription transferred with initial values, which sends the current sample again,
    // unchanged (same value, same source timestamp); the gateway's last-sent memory drops
    // that one, so here only a different sample of a value already seen is a repeat.
    let values = |samples: Vec<Sample>| -> Vec<(DateTime<Utc>, i64)> {
        let mut v: Vec<_> = samples
            .iter()
            .map(|s| match s.value {
                RawValue::Int(n) => (s.timestamp, n),
                ref v => panic!("{v:?}"),
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let got = values(run.of("c"));
    let (first, last) = (got[0].1, got[got.len() - 1].1);
    // The witness has seen everything up to the gateway's last value.
    let caught_up = support::wait_until(DEADLINE, || {
        witness
            .of("c")
            .iter()
            .any(|s| s.value == RawValue::Int(last))
    })
    .await;
    assert!(
        caught_up,
        "the witness never saw {last}\n{}",
        witness.explain()
    );
    let published: Vec<i64> = values(witness.of("c"))
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| (first..=last).contains(n))
        .collect();
    let seen: Vec<i64> = got.iter().map(|(_, n)| *n).collect();
    let missing: Vec<i64> = published
        .iter()
        .filter(|n| !seen.contains(n))
        .copied()
        .collect();
    let mut by_value = seen.clone();
    by_value.sort_unstable();
    let repeated: Vec<i64> = by_value
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(
        missing.is_empty() && repeated.is_empty(),
        "missing {missing:?}, repeated {repeated:?}\nthrough the proxy: {got:?}\npublished: {published:?}\n{}",
        run.explain()
    );
    witness.stop().await;
    run.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_trusts_and_a_wrong_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plc = secure_sim(dir.path()).await;
    let endpoint = plc.opcua_endpoint().unwrap();
    // Opt-in trust on first use: no trust step, the certificate lands in trusted/.
    let yaml = secure_yaml(dir.path(), &endpoint).replace(
        "    publishing_interval: 100ms\n",
        "    publishing_interval: 100ms\n    trust_on_first_use: true\n",
    );
    let run = Running::start(tag_map(dir.path(), &yaml));
    let ok = support::wait_until(DEADLINE, || !run.of("secure").is_empty()).await;
    assert!(ok, "no reading with trust_on_first_use\n{}", run.explain());
    let trusted = std::fs::read_dir(dir.path().join("pki/trusted"))
        .unwrap()
        .count();
    assert_eq!(trusted, 1);
    run.stop().await;
    // A wrong password: refused, counted and explained (the simulator answers
    // BadIdentityTokenRejected), nothing sent, nothing crashes.
    std::fs::write(dir.path().join("password"), "wrong\n").unwrap();
    let run = Running::start(tag_map(dir.path(), &yaml));
    assert!(
        support::wait_until(DEADLINE, || OpcUaCounters::get(
            &run.counters.connect_failures
        ) >= 1
            && run
                .counters
                .reason()
                .is_some_and(|r| r.contains("refused the login of user `operator`")))
        .await,
        "{}\nreason: {:?}",
        run.explain(),
        run.counters.reason()
    );
    assert!(run.samples.lock().unwrap().is_empty());
    assert!(!run.counters.connected.load(Ordering::Relaxed));
    run.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enumeration_defined_only_by_its_definition_arrives_as_names() {
    // asyncua's new_enum: names only in the DataTypeDefinition (OPC UA 1.04), no EnumStrings.
    // Also a node named by its namespace URI (`nsu=`) instead of an index.
    let server = asyncua_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "source:\n  opcua: {{endpoint: \"{}\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - {{sensor_id: state, node: \"ns={};s=Plant/State\"}}\n  - {{sensor_id: by_uri, node: \"nsu=urn:tagbridge:test:asyncua;s=Plant/Double\"}}\n",
        server.endpoint,
        pki(dir.path()),
        server.ns
    );
    let run = Running::start(tag_map(dir.path(), &yaml));
    let ok = support::wait_until(DEADLINE, || {
        !run.of("state").is_empty() && !run.of("by_uri").is_empty()
    })
    .await;
    assert!(ok, "no reading of the enumeration\n{}", run.explain());
    assert_eq!(
        run.of("state")[0].value,
        RawValue::Text("Fault".into()),
        "{}",
        run.explain()
    );
    assert_eq!(run.of("by_uri")[0].value, RawValue::Float(3.25));
    run.stop().await;
}

/// A simulator with a counter, offering only Basic256Sha256 + SignAndEncrypt and a password
/// user, its certificate store in `dir/server-pki`.
async fn secure_counter_sim(dir: &Path, counter: &Signal) -> PlcHandle {
    start_sim(OpcUaConfig {
        security: vec![OpcUaSecurity::Basic256Sha256SignAndEncrypt],
        anonymous: false,
        users: vec![OpcUaUser {
            username: "operator".into(),
            password: "s3cret-pw".into(),
        }],
        pki_dir: Some(dir.join("server-pki")),
        variables: vec![
            var(
                "S/Value",
                OpcUaType::Double,
                constant(SignalValue::Float(7.25)),
            ),
            var("S/Counter", OpcUaType::Int64, counter.clone()),
        ],
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_renewed_while_running_is_refused_then_trusted_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let counter = Signal::Counter {
        start: 0,
        step: 1,
        wrap: None,
        update: Some(tagbridge::config::duration::HumanDuration(
            Duration::from_millis(200),
        )),
    };
    let plc = secure_counter_sim(dir.path(), &counter).await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let yaml = secure_yaml(dir.path(), &endpoint).replace(
        "tags:\n",
        "defaults: {interval: 50ms}\ntags:\n  - {sensor_id: counter, node: \"ns=2;s=S/Counter\"}\n",
    );
    let plan = tag_map(dir.path(), &yaml);
    let source = opcua_plan(&plan).clone();
    let first = opcua::connect::trust_server(&source, None)
        .await
        .expect("trust");
    let run = Running::start(plan);
    assert!(
        support::wait_until(DEADLINE, || run.of("counter").len() >= 3).await,
        "no readings before the renewal\n{}",
        run.explain()
    );
    // The server gets a new certificate and restarts.
    let server_pki = dir.path().join("server-pki");
    std::fs::remove_file(server_pki.join("own/cert.der")).unwrap();
    std::fs::remove_file(server_pki.join("private/private.pem")).unwrap();
    plc.faults().restart_opcua().await.expect("restart");
    // Refused with the documented message, the new certificate in rejected/.
    let refused = support::wait_until(DEADLINE, || {
        run.counters
            .reason()
            .is_some_and(|r| r.contains("is not trusted"))
    })
    .await;
    let reason = run.counters.reason().unwrap_or_default();
    assert!(
        refused,
        "the new certificate was not refused\n{}\nreason: {reason}",
        run.explain()
    );
    let rejected: Vec<_> = std::fs::read_dir(dir.path().join("pki/rejected"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    for needle in [
        "mv '".to_string(),
        rejected[0].display().to_string(),
        "tagbridge opcua trust".to_string(),
    ] {
        assert!(
            reason.contains(&needle),
            "reason lacks `{needle}`: {reason}"
        );
    }
    assert!(!run.counters.connected.load(Ordering::Relaxed));
    // The operator trusts it; the same source connects again.
    let second = opcua::connect::trust_server(&source, None)
        .await
        .expect("trust the renewed certificate");
    assert_ne!(first.thumbprint, second.thumbprint);
    let trusted_at = Utc::now();
    let resumed = support::wait_until(DEADLINE, || {
        run.of("counter")
            .iter()
            .filter(|s| s.timestamp > trusted_at)
            .count()
            >= 3
    })
    .await;
    assert!(
        resumed,
        "readings did not resume once the new certificate was trusted\n{}\nreason: {:?}",
        run.explain(),
        run.counters.reason()
    );
    assert_eq!(run.counters.reason(), None);
    // No reading lost or invented: every value is the counter's at its timestamp, and after
    // the reconnect every counter step is there.
    let counts: Vec<i64> = run
        .of("counter")
        .iter()
        .map(|s| {
            let held = counter.value_at(held_at(&plc, s.timestamp)).as_i64();
            assert_eq!(s.value, RawValue::Int(held), "at {}", s.timestamp);
            held
        })
        .collect();
    let after: Vec<i64> = run
        .of("counter")
        .iter()
        .filter(|s| s.timestamp > trusted_at)
        .map(|s| match s.value {
            RawValue::Int(n) => n,
            ref v => panic!("{v:?}"),
        })
        .collect();
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "a step was lost after the reconnect: {after:?} (all: {counts:?})"
    );
    run.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_and_run_report_a_refused_password_at_once_and_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = asyncua_server_with(Some(dir.path()), &["--user=operator:s3cret-pw"]).await;
    let endpoint = server.endpoint.clone();
    std::fs::write(dir.path().join("password"), "wrong\n").unwrap();
    let yaml = format!(
        "source:\n  opcua: {{endpoint: \"{endpoint}\", security_policy: aes128_sha256_rsaoaep, user: {{username: {{username: operator, password_file: \"{}\"}}}}, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - {{sensor_id: d, node: \"ns={};s=Plant/Double\"}}\n",
        dir.path().join("password").display(),
        pki(dir.path()),
        server.ns
    );
    let plan = tag_map(dir.path(), &yaml);
    opcua::connect::trust_server(opcua_plan(&plan), None)
        .await
        .expect("trust");
    // browse: the server's answer, at once (it used to wait 30 s), with the next step.
    let started = std::time::Instant::now();
    let out = cli(vec![
        "browse".into(),
        endpoint.clone(),
        "--security".into(),
        "aes128_sha256_rsaoaep".into(),
        "--user".into(),
        "operator".into(),
        "--password-file".into(),
        dir.path().join("password").display().to_string(),
        "--pki-dir".into(),
        pki(dir.path()),
    ])
    .await;
    let took = started.elapsed();
    eprintln!("browse reported the refused login after {took:?} (process start included)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in [
        "BadUserAccessDenied",
        "user `operator`",
        "check the user name and the password",
    ] {
        assert!(stderr.contains(needle), "browse lacks `{needle}`: {stderr}");
    }
    assert!(
        took < PROMPT && !stderr.contains("no session within"),
        "browse took {took:?}: {stderr}"
    );
    // run: the reason, with the user and the back-off, for /readyz and status, from the
    // first answer (every retry is 120 s away).
    let started = std::time::Instant::now();
    let run = Running::start_tuned(plan.clone(), SLOW);
    let said = support::wait_until(PROMPT, || {
        run.counters
            .reason()
            .is_some_and(|r| r.contains("refused the login"))
    })
    .await;
    let took = started.elapsed();
    eprintln!("run reported the refused login after {took:?}");
    let reason = run.counters.reason().unwrap_or_default();
    assert!(
        said,
        "no reason within {PROMPT:?} (reason: {reason:?})\n{}",
        run.explain()
    );
    for needle in [
        "user `operator`",
        "password from file",
        "Retried only every 60 s, so that the server does not lock the account",
    ] {
        assert!(reason.contains(needle), "reason lacks `{needle}`: {reason}");
    }
    run.stop().await;
    // Backing off with the product's timing: no second attempt for a minute.
    let run = Running::start(plan);
    let said = support::wait_until(DEADLINE, || {
        run.counters
            .reason()
            .is_some_and(|r| r.contains("BadUserAccessDenied"))
    })
    .await;
    assert!(said, "no reason\n{}", run.explain());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        OpcUaCounters::get(&run.counters.connect_failures),
        1,
        "{}",
        run.explain()
    );
    assert!(run.samples.lock().unwrap().is_empty());
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_and_run_report_a_refused_gateway_certificate_with_the_file_to_trust() {
    let dir = tempfile::tempdir().unwrap();
    let server = asyncua_server_with(Some(dir.path()), &["--reject-clients"]).await;
    let yaml = format!(
        "source:\n  opcua: {{endpoint: \"{}\", security_policy: aes128_sha256_rsaoaep, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - {{sensor_id: d, node: \"ns={};s=Plant/Double\"}}\n",
        server.endpoint,
        pki(dir.path()),
        server.ns
    );
    let plan = tag_map(dir.path(), &yaml);
    opcua::connect::trust_server(opcua_plan(&plan), None)
        .await
        .expect("trust the server");
    let (own, thumbprint) = opcua::connect::own_certificate(opcua_plan(&plan));
    let thumbprint = thumbprint.expect("the gateway's certificate exists");
    let started = std::time::Instant::now();
    let out = cli(vec![
        "browse".into(),
        server.endpoint.clone(),
        "--security".into(),
        "aes128_sha256_rsaoaep".into(),
        "--pki-dir".into(),
        pki(dir.path()),
    ])
    .await;
    let took = started.elapsed();
    eprintln!("browse reported the refused certificate after {took:?} (process start included)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        took < PROMPT && !stderr.contains("no session within"),
        "browse took {took:?}: {stderr}"
    );
    for needle in [
        "BadCertificateUntrusted",
        "refused the gateway's certificate",
        &own.display().to_string(),
        &thumbprint,
    ] {
        assert!(stderr.contains(needle), "browse lacks `{needle}`: {stderr}");
    }
    // run: from the first answer (every retry is 120 s away), the file to trust.
    let started = std::time::Instant::now();
    let run = Running::start_tuned(plan, SLOW);
    let said = support::wait_until(PROMPT, || {
        run.counters
            .reason()
            .is_some_and(|r| r.contains("refused the gateway's certificate"))
    })
    .await;
    let took = started.elapsed();
    eprintln!("run reported the refused certificate after {took:?}");
    let reason = run.counters.reason().unwrap_or_default();
    assert!(
        said,
        "no reason within {PROMPT:?} (reason: {reason:?})\n{}",
        run.explain()
    );
    assert!(reason.contains("BadCertificateUntrusted"), "{reason}");
    assert!(reason.contains(&own.display().to_string()), "{reason}");
    assert!(reason.contains(&thumbprint), "{reason}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_logs_no_error_and_no_warning() {
    // Two OPC UA tag maps on a fresh PKI directory (they used to race to create the gateway's
    // certificate), security on, a trusted server: nothing is wrong, so nothing may say so.
    let dir = tempfile::tempdir().unwrap();
    let plc = secure_sim(dir.path()).await;
    let endpoint = plc.opcua_endpoint().unwrap();
    let maps = dir.path().join("maps");
    std::fs::create_dir(&maps).unwrap();
    let yaml = secure_yaml(dir.path(), &endpoint);
    std::fs::write(maps.join("a.yaml"), &yaml).unwrap();
    std::fs::write(
        maps.join("b.yaml"),
        yaml.replace("sensor_id: secure", "sensor_id: secure_b"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "tag_maps: maps\nsink:\n  stdout: {}\n",
    )
    .unwrap();
    // Trusting the server is part of a correct set-up (it is not on the PKI yet otherwise).
    let SourcePlan::OpcUa(source) = &tag_map(dir.path(), &yaml).source else {
        panic!("not OPC UA")
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let pki_dir = dir.path().join("pki");
    let source = source.clone();
    // The PKI directory stays fresh: trust into a copy, then move only trusted/ over.
    let scratch = tempfile::tempdir().unwrap();
    let mut scratch_source = source.clone();
    scratch_source.pki_dir = Some(scratch.path().to_path_buf());
    let trusted = opcua::connect::trust_server(&scratch_source, None)
        .await
        .expect("trust");
    std::fs::create_dir_all(pki_dir.join("trusted")).unwrap();
    std::fs::copy(
        &trusted.path,
        pki_dir
            .join("trusted")
            .join(trusted.path.file_name().unwrap()),
    )
    .unwrap();
    assert!(!pki_dir.join("own").exists());
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["run", "-c"])
        .arg(dir.path().join("gateway.yaml"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    let stdout = gateway.stdout.take().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut seen = std::collections::HashSet::new();
        while let Ok(Some(line)) = lines.next_line().await {
            for id in ["\"secure\"", "\"secure_b\""] {
                if line.contains(id) && seen.insert(id) && seen.len() == 2 {
                    let _ = tx.send(());
                }
            }
        }
    });
    let both = tokio::task::spawn_blocking(move || rx.recv_timeout(DEADLINE).is_ok())
        .await
        .unwrap();
    // Stop it as systemd would and read everything it logged.
    if let Some(pid) = gateway.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let output = tokio::time::timeout(DEADLINE, gateway.wait_with_output())
        .await
        .expect("the gateway stops on SIGTERM")
        .expect("gateway output");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(both, "no reading from both tag maps; log:\n{log}");
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        noisy.is_empty(),
        "a clean start logged warnings or errors:\n{}\n--- whole log:\n{log}",
        noisy.join("\n")
    );
    drop(source);
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_disables_asyncua_arrays_and_names_new_enumerations() {
    // asyncua gives its arrays ValueRank 0 (OneOrMoreDimensions), not 1.
    let server = asyncua_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let out = cli(vec![
        "browse".into(),
        server.endpoint.clone(),
        "--security".into(),
        "none".into(),
        "--pki-dir".into(),
        pki(dir.path()),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["Plant/Array", "Plant/Vector"] {
        let entry = text
            .split("  - sensor_id: ")
            .find(|e| e.starts_with(&format!("\"{name}\"")))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(entry.contains("enabled: false"), "{name}: {entry}");
    }
    let state = text
        .split("  - sensor_id: ")
        .find(|e| e.starts_with("\"Plant/State\""))
        .unwrap_or_else(|| panic!("Plant/State missing:\n{text}"));
    assert!(
        state.contains("MachineState (enumeration: state names are sent)"),
        "{state}"
    );
}

/// Runs `tagbridge run -c gateway` until a reading of `sensor_id` is printed (or
/// [`DEADLINE`]), stops it as systemd would, and returns whether one was and the log.
async fn run_gateway_until_a_reading(gateway: &Path, sensor_id: &str) -> (bool, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["run", "-c"])
        .arg(gateway)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    let stdout = child.stdout.take().unwrap();
    let wanted = format!("\"sensor_id\":\"{sensor_id}\"");
    let read = async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(&wanted) {
                return true;
            }
        }
        false
    };
    let got = tokio::time::timeout(DEADLINE, read).await.unwrap_or(false);
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the gateway stops on SIGTERM")
        .expect("gateway output");
    (got, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// What the asyncua server recorded of each client certificate (`--record-clients`).
fn recorded_clients(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sees_the_certificate_identity_written_in_gateway_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("clients.jsonl");
    let server = asyncua_server_with(
        Some(dir.path()),
        &[&format!("--record-clients={}", record.display())],
    )
    .await;
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    let map = dir.path().join("maps/plant.yaml");
    std::fs::write(
        &map,
        format!(
            "source:\n  opcua: {{endpoint: \"{}\", security_policy: aes128_sha256_rsaoaep, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - {{sensor_id: d, node: \"ns={};s=Plant/Double\"}}\n",
            server.endpoint,
            pki(dir.path()),
            server.ns
        ),
    )
    .unwrap();
    let gateway = dir.path().join("gateway.yaml");
    let settings = |uri: &str| {
        format!(
            "tag_maps: maps\nsink: {{stdout: {{}}}}\ntelemetry: {{metrics: \"off\"}}\nopcua:\n  certificate:\n    application_uri: \"{uri}\"\n    common_name: gw07\n    organization: \"Acme, Inc.\"\n    country: DE\n    host_names: [gw07.plant-a.local, 10.1.2.3]\n"
        )
    };
    std::fs::write(&gateway, settings("urn:plant-a:gw07:tagbridge")).unwrap();
    // Trusting the server first makes the gateway's certificate, from gateway.yaml (-c).
    let out = cli(vec![
        "opcua".into(),
        "trust".into(),
        map.display().to_string(),
        "-c".into(),
        gateway.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (got, log) = run_gateway_until_a_reading(&gateway, "d").await;
    assert!(got, "no reading; log:\n{log}");
    let seen = recorded_clients(&record);
    assert!(!seen.is_empty(), "the server saw no client certificate");
    for client in &seen {
        assert_eq!(
            client["application_uri"], "urn:plant-a:gw07:tagbridge",
            "{client}"
        );
        assert_eq!(
            client["uris"],
            serde_json::json!(["urn:plant-a:gw07:tagbridge"]),
            "{client}"
        );
        assert_eq!(
            client["dns"],
            serde_json::json!(["gw07.plant-a.local"]),
            "{client}"
        );
        assert_eq!(client["ips"], serde_json::json!(["10.1.2.3"]), "{client}");
        let subject = client["subject"].as_str().unwrap();
        for part in ["CN=gw07", "O=Acme\\, Inc.", "C=DE"] {
            assert!(subject.contains(part), "subject {subject} lacks {part}");
        }
        assert!(!subject.contains("Dublin"), "{subject}");
    }
    assert!(
        !log.contains(" WARN ") && !log.contains(" ERROR "),
        "a matching certificate is nothing to warn about:\n{log}"
    );

    // gateway.yaml now names another URI: the certificate is kept (servers trust it), the
    // gateway says so with the file and the command, and sends the certificate's URI so a
    // strict server still accepts it.
    std::fs::write(&gateway, settings("urn:plant-b:gw07:tagbridge")).unwrap();
    let before = seen.len();
    let (got, log) = run_gateway_until_a_reading(&gateway, "d").await;
    assert!(
        got,
        "no reading with a mismatching certificate; log:\n{log}"
    );
    let cert = dir.path().join("pki/own/cert.der");
    let warning = log
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains("does not match gateway.yaml"))
        .unwrap_or_else(|| panic!("no warning about the mismatch:\n{log}"));
    for needle in [
        cert.display().to_string(),
        "application_uri is `urn:plant-b:gw07:tagbridge` in gateway.yaml but `urn:plant-a:gw07:tagbridge` in the certificate".into(),
        "tagbridge opcua certificate --renew -c".into(),
    ] {
        assert!(warning.contains(&needle), "warning lacks `{needle}`: {warning}");
    }
    let seen = recorded_clients(&record);
    assert!(seen.len() > before);
    assert!(seen[before..]
        .iter()
        .all(|c| c["application_uri"] == "urn:plant-a:gw07:tagbridge"));

    // The documented way out: renew, and the server sees the new URI, with no warning.
    let out = cli(vec![
        "opcua".into(),
        "certificate".into(),
        "--renew".into(),
        "-c".into(),
        gateway.display().to_string(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "(renewed)",
        "application URI: urn:plant-b:gw07:tagbridge",
        "old file kept:",
    ] {
        assert!(text.contains(needle), "lacks `{needle}`:\n{text}");
    }
    let before = seen.len();
    let (got, log) = run_gateway_until_a_reading(&gateway, "d").await;
    assert!(got, "no reading after the renewal; log:\n{log}");
    assert!(!log.contains("does not match gateway.yaml"), "{log}");
    let seen = recorded_clients(&record);
    assert!(seen.len() > before);
    assert!(seen[before..]
        .iter()
        .all(|c| c["application_uri"] == "urn:plant-b:gw07:tagbridge"
            && c["uris"][0] == "urn:plant-b:gw07:tagbridge"));
}
