//! Structure tags (`members:`) end to end: the OPC UA source learns the server's types, decodes
//! each structure value and the mapping stage sends one reading per field, changes only.
//! Against the simulated PLC (`SimRecipe`, encoded by hand in `sim::plc::structs`) and against
//! Python asyncua with a structure made by its `new_struct` helpers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tagbridge::config::duration::HumanDuration;
use tagbridge::mapping::{load_all, Mapper, SourcePlan, TagMapPlan};
use tagbridge::reading::{Reading, Value};
use tagbridge::sample::SampleBatch;
use tagbridge::sim::plc::{OpcUaConfig, OpcUaStructure, Plc, PlcConfig, PlcHandle};
use tagbridge::sim::signal::{Signal, SignalValue};
use tagbridge::source::opcua::{self, OpcUaCounters};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{self, python};

const DEADLINE: Duration = Duration::from_secs(60);

fn every(ms: u64) -> Option<HumanDuration> {
    Some(HumanDuration(Duration::from_millis(ms)))
}

fn tag_map(dir: &Path, yaml: &str) -> TagMapPlan {
    let path = dir.join("structs.yaml");
    std::fs::write(&path, yaml).unwrap();
    match load_all(&[path]) {
        Ok(mut plans) => plans.remove(0),
        Err(report) => panic!("tag map does not compile:\n{report}\n---\n{yaml}"),
    }
}

/// The source and the mapping stage of one tag map, and the readings they produced.
struct Running {
    readings: Arc<std::sync::Mutex<Vec<Reading>>>,
    counters: Arc<OpcUaCounters>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    fn start(plan: &TagMapPlan) -> Running {
        let SourcePlan::OpcUa(source) = &plan.source else {
            panic!("not an OPC UA tag map")
        };
        let (tx, mut rx) = mpsc::channel::<SampleBatch>(4);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let counters = opcua::start(plan, source, tx, cancel.clone(), &tracker);
        let readings = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&readings);
        let mut mapper = Mapper::new(plan);
        tracker.spawn(async move {
            while let Some(batch) = rx.recv().await {
                let mut out = Vec::new();
                mapper.apply(&batch, &mut out);
                sink.lock().unwrap().extend(out);
            }
        });
        Running {
            readings,
            counters,
            cancel,
            tracker,
        }
    }

    fn of(&self, sensor_id: &str) -> Vec<Reading> {
        self.readings
            .lock()
            .unwrap()
            .iter()
            .filter(|r| &*r.sensor_id == sensor_id)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Reading> {
        self.readings.lock().unwrap().clone()
    }

    fn explain(&self) -> String {
        let c = &self.counters;
        let mut ids: Vec<String> = self.all().iter().map(|r| r.sensor_id.to_string()).collect();
        ids.sort();
        ids.dedup();
        format!(
            "readings from the source {} unsupported {} monitored {} failed {}\nsensor_ids: {ids:?}\nlast: {:?}",
            OpcUaCounters::get(&c.readings),
            OpcUaCounters::get(&c.unsupported),
            OpcUaCounters::get(&c.items_monitored),
            OpcUaCounters::get(&c.items_failed),
            self.all().last()
        )
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        let stopped = tokio::time::timeout(Duration::from_secs(20), self.tracker.wait()).await;
        assert!(stopped.is_ok(), "the OPC UA source did not stop on cancel");
    }
}

fn number(r: &Reading) -> f64 {
    match &r.value {
        Value::Number(n) => n.as_f64(),
        other => panic!("{} is not a number: {other:?}", r.sensor_id),
    }
}

fn text(r: &Reading) -> &str {
    match &r.value {
        Value::Text(t) => t,
        other => panic!("{} is not text: {other:?}", r.sensor_id),
    }
}

fn held_at(plc: &PlcHandle, ts: DateTime<Utc>) -> Duration {
    plc.t_at(ts + chrono::Duration::nanoseconds(100))
}

fn recipe() -> OpcUaStructure {
    let fields = [
        (
            "temperature",
            Signal::Sine {
                offset: 180.0,
                amplitude: 20.0,
                period: HumanDuration(Duration::from_secs(7)),
                update: every(200),
            },
        ),
        ("pressure", Signal::Constant(SignalValue::Float(1.25))),
        (
            "count",
            Signal::Counter {
                start: 0,
                step: 1,
                wrap: None,
                update: every(200),
            },
        ),
        ("running", Signal::Constant(SignalValue::Bool(true))),
        (
            "phase",
            Signal::Counter {
                start: 0,
                step: 1,
                wrap: Some(4),
                update: every(400),
            },
        ),
        ("name", Signal::Constant(SignalValue::Text("secret".into()))),
        ("setpoints[0]", Signal::Constant(SignalValue::Float(10.5))),
        ("setpoints[1]", Signal::Constant(SignalValue::Int(11))),
        ("setpoints[2]", Signal::Constant(SignalValue::Float(-12.25))),
        ("stage.duration", Signal::Constant(SignalValue::Int(90))),
        (
            "stage.temperature",
            Signal::Counter {
                start: 100,
                step: 5,
                wrap: None,
                update: every(1000),
            },
        ),
    ];
    OpcUaStructure {
        path: "Press3/Recipe".into(),
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

async fn start_sim(structures: Vec<OpcUaStructure>) -> PlcHandle {
    Plc::start(PlcConfig {
        opcua: Some(OpcUaConfig {
            structures,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("the simulator starts")
}

const MEMBERS: &str = "    members:\n      temperature: {}\n      pressure: {}\n      count: {}\n      running: {}\n      phase: {}\n      name: {enabled: false}\n      setpoints[0]: {}\n      setpoints[1]: {}\n      setpoints[2]: {}\n      stage.duration: {}\n      stage.temperature: {}\n";

/// The fields `MEMBERS` enables (`name` is excluded).
const SENT: [&str; 10] = [
    "temperature",
    "pressure",
    "count",
    "running",
    "phase",
    "setpoints[0]",
    "setpoints[1]",
    "setpoints[2]",
    "stage.duration",
    "stage.temperature",
];

/// A second structure whose fields change at other paces than `recipe()`'s, so readings of
/// one structure cannot pass for the other's.
fn press4() -> OpcUaStructure {
    let ms = |n| HumanDuration(Duration::from_millis(n));
    let fields = [
        ("temperature", Signal::Constant(SignalValue::Float(55.5))),
        (
            "pressure",
            Signal::Square {
                low: 1.0,
                high: 2.5,
                period: ms(1200),
                duty: None,
                update: every(300),
            },
        ),
        (
            "count",
            Signal::Counter {
                start: 1000,
                step: 3,
                wrap: None,
                update: every(300),
            },
        ),
        (
            "running",
            Signal::Square {
                low: 0.0,
                high: 1.0,
                period: ms(2400),
                duty: None,
                update: every(300),
            },
        ),
        (
            "phase",
            Signal::Counter {
                start: 2,
                step: 1,
                wrap: Some(4),
                update: every(900),
            },
        ),
        ("name", Signal::Constant(SignalValue::Text("other".into()))),
        (
            "setpoints[0]",
            Signal::Ramp {
                from: 0.0,
                to: 30.0,
                period: ms(3000),
                update: every(600),
            },
        ),
        ("setpoints[2]", Signal::Constant(SignalValue::Float(3.75))),
        (
            "stage.duration",
            Signal::Counter {
                start: 5,
                step: 5,
                wrap: None,
                update: every(1500),
            },
        ),
    ];
    OpcUaStructure {
        path: "Press4/Recipe".into(),
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

/// What the gateway sends for field `f` of a `SimRecipe` whose signal holds `v` at `t`, as the
/// simulator encodes it (`sim::plc::structs::encode`): Float, Int64, Boolean as 0/1, the
/// enumeration by name, UInt32, Doubles; a field without a signal holds 0.
#[derive(Debug, PartialEq)]
enum Want {
    Number(f64),
    Text(&'static str),
}

fn want(s: &OpcUaStructure, f: &str, t: Duration) -> Want {
    let Some(v) = s.fields.get(f).map(|sig| sig.value_at(t)) else {
        return match f {
            "phase" => Want::Text("Idle"),
            _ => Want::Number(0.0),
        };
    };
    match f {
        "pressure" => Want::Number(f64::from(v.as_f64() as f32)),
        "count" => Want::Number(v.as_i64() as f64),
        "running" => Want::Number(f64::from(u8::from(v.as_bool()))),
        "phase" => Want::Text(["Idle", "Heating", "Pressing", "Cooling"][v.as_i64() as usize]),
        "stage.duration" => Want::Number(v.as_i64().clamp(0, u32::MAX.into()) as f64),
        _ => Want::Number(v.as_f64()),
    }
}

fn got(r: &Reading) -> Want {
    match &r.value {
        Value::Text(t) => Want::Text(match t.as_ref() {
            "Idle" => "Idle",
            "Heating" => "Heating",
            "Pressing" => "Pressing",
            "Cooling" => "Cooling",
            other => panic!("{}: unexpected text {other:?}", r.sensor_id),
        }),
        _ => Want::Number(number(r)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_every_simulated_structure_arrives_changes_only() {
    let structures = [("press-3:recipe", recipe()), ("press-4:recipe", press4())];
    let plc = start_sim(structures.iter().map(|(_, s)| s.clone()).collect()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = format!(
        "source:\n  opcua: {{endpoint: \"{}\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n",
        plc.opcua_endpoint().unwrap(),
        dir.path().join("pki").display()
    );
    for (id, s) in &structures {
        yaml += &format!(
            "  - sensor_id: {id}\n    node: ns=2;s={}\n    interval: 50ms\n{MEMBERS}",
            s.path
        );
    }
    let plan = tag_map(dir.path(), &yaml);
    let run = Running::start(&plan);
    // Enough changes of the fast fields, and two of each structure's slowest one.
    let ok = support::wait_until(DEADLINE, || {
        run.of("press-3:recipe.count").len() >= 12
            && run.of("press-3:recipe.stage.temperature").len() >= 2
            && run.of("press-4:recipe.stage.duration").len() >= 2
    })
    .await;
    assert!(ok, "the fields did not arrive\n{}\n{yaml}", run.explain());

    let all = run.all();
    for r in &all {
        let field = structures
            .iter()
            .find_map(|(id, _)| r.sensor_id.strip_prefix(&format!("{id}.")))
            .unwrap_or("?");
        // The excluded field is never sent; nothing but the listed fields is.
        assert!(SENT.contains(&field), "unexpected {}", r.sensor_id);
    }
    for (id, s) in &structures {
        // Each structure update's readings, by its source timestamp.
        let mut updates: std::collections::BTreeMap<DateTime<Utc>, Vec<&str>> = Default::default();
        for f in SENT {
            for r in run.of(&format!("{id}.{f}")) {
                let t = held_at(&plc, r.timestamp);
                // Every reading of every field holds the value its signal dictates.
                assert_eq!(got(&r), want(s, f, t), "{id}.{f} at {t:?}");
                updates.entry(r.timestamp).or_default().push(f);
            }
        }
        // Changes only, per field: the first update sends every field, each later one exactly
        // the fields whose value differs from the update sent before it.
        let mut previous: Option<Duration> = None;
        for (ts, mut sent) in updates {
            let t = held_at(&plc, ts);
            let mut changed: Vec<&str> = SENT
                .into_iter()
                .filter(|f| previous.is_none_or(|p| want(s, f, p) != want(s, f, t)))
                .collect();
            sent.sort_unstable();
            changed.sort_unstable();
            assert_eq!(
                sent, changed,
                "{id}: the update at {t:?} after {previous:?}"
            );
            previous = Some(t);
        }
    }
    run.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_is_reported_and_the_others_flow() {
    let plc = start_sim(vec![recipe()]).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "source:\n  opcua: {{endpoint: \"{}\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - sensor_id: r\n    node: ns=2;s=Press3/Recipe\n    interval: 50ms\n    members:\n      count: {{}}\n      temprature: {{}}\n      stage: {{}}\n      setpoints[7]: {{}}\n  - {{sensor_id: s, node: \"ns=2;s=Nowhere\", members: {{a: {{}}}}}}\n",
        plc.opcua_endpoint().unwrap(),
        dir.path().join("pki").display()
    );
    let plan = tag_map(dir.path(), &yaml);
    let run = Running::start(&plan);
    let ok = support::wait_until(DEADLINE, || run.of("r.count").len() >= 3).await;
    assert!(ok, "count did not flow\n{}", run.explain());
    for bad in ["r.temprature", "r.stage", "r.setpoints[7]", "s.a"] {
        assert!(run.of(bad).is_empty(), "{bad} was sent");
    }
    assert!(
        OpcUaCounters::get(&run.counters.unsupported) > 0,
        "{}",
        run.explain()
    );
    run.stop().await;
    plc.shutdown().await;
}

/// tests/python/opcua_struct_server.py running (killed on drop), its endpoint and the index
/// of its namespace.
async fn asyncua_struct_server() -> (tokio::process::Child, String, u16) {
    use tokio::io::AsyncBufReadExt;
    let python = tokio::task::spawn_blocking(python::python).await.unwrap();
    let mut child = tokio::process::Command::new(python)
        .arg(support::repo().join("tests/python/opcua_struct_server.py"))
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
                ns = n.trim().parse::<u16>().ok();
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
    (
        child,
        endpoint,
        ns.expect("the server printed its namespace index"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_of_a_python_asyncua_new_struct_arrive() {
    let (child, endpoint, ns) = asyncua_struct_server().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "source:\n  opcua: {{endpoint: \"{endpoint}\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - sensor_id: py\n    node: ns={ns};s=Plant/Recipe\n    interval: 50ms\n    members:\n      temperature: {{decimals: 1}}\n      count: {{}}\n      mode: {{}}\n      mode_number: {{}}\n      label: {{enabled: false}}\n      limits[0]: {{}}\n      limits[1]: {{scale: 10}}\n      inner.x: {{}}\n      inner.flag: {{}}\n      note: {{}}\n",
        dir.path().join("pki").display()
    );
    let plan = tag_map(dir.path(), &yaml);
    let run = Running::start(&plan);
    let ok = support::wait_until(DEADLINE, || {
        run.of("py.count").len() >= 3 && run.of("py.inner.x").len() >= 2
    })
    .await;
    assert!(
        ok,
        "the asyncua structure did not arrive\n{}",
        run.explain()
    );
    let one = |id: &str| {
        let got = run.of(id);
        assert_eq!(got.len(), 1, "{id} is constant: {got:?}");
        got[0].clone()
    };
    assert_eq!(
        number(&one("py.temperature")),
        21.6,
        "decimals: 1 on 21.625"
    );
    assert_eq!(
        text(&one("py.mode")),
        "Running",
        "an enumeration field by name"
    );
    assert_eq!(
        number(&one("py.mode_number")),
        2.0,
        "an Int32 field stays a number"
    );
    assert_eq!(number(&one("py.limits[0]")), 1.5);
    assert_eq!(
        number(&one("py.limits[1]")),
        25.0,
        "scale on one array element"
    );
    assert_eq!(number(&one("py.inner.flag")), 1.0);
    assert!(run.of("py.label").is_empty(), "an excluded field was sent");
    // `note` is an optional field the server leaves out: no reading, no error.
    assert!(run.of("py.note").is_empty());
    // Changes only, per field: each update (one source timestamp) sends `count`, and
    // `inner.x` exactly when count // 10 moved since the update sent before; the constants
    // only with the first. `inner.x` holds what the server wrote with that count.
    let mut updates: std::collections::BTreeMap<DateTime<Utc>, Vec<Reading>> = Default::default();
    for r in run.all() {
        updates.entry(r.timestamp).or_default().push(r);
    }
    let mut previous: Option<f64> = None;
    for (i, (ts, readings)) in updates.into_iter().enumerate() {
        let mut ids: Vec<&str> = readings.iter().map(|r| &*r.sensor_id).collect();
        ids.sort_unstable();
        let count = readings
            .iter()
            .find(|r| &*r.sensor_id == "py.count")
            .map(number)
            .unwrap_or_else(|| panic!("an update without count at {ts}: {ids:?}"));
        let mut want = vec!["py.count"];
        if previous.is_none_or(|p| (p / 10.0).floor() != (count / 10.0).floor()) {
            want.push("py.inner.x");
        }
        if i == 0 {
            want.extend([
                "py.temperature",
                "py.mode",
                "py.mode_number",
                "py.limits[0]",
                "py.limits[1]",
                "py.inner.flag",
            ]);
        }
        want.sort_unstable();
        assert_eq!(
            ids, want,
            "the update at {ts} (count {count} after {previous:?})"
        );
        if let Some(x) = readings.iter().find(|r| &*r.sensor_id == "py.inner.x") {
            assert_eq!(
                number(x),
                -7.0 - (count / 10.0).floor(),
                "inner.x at count {count}"
            );
        }
        assert!(
            previous.is_none_or(|p| count > p),
            "count goes up: {count} after {previous:?}"
        );
        previous = Some(count);
    }
    run.stop().await;
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_lists_a_structures_fields_ready_to_enable() {
    let plc = start_sim(vec![recipe()]).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki").display().to_string();
    let endpoint = plc.opcua_endpoint().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        support::tagbridge()
            .args(["browse", &endpoint, "--security", "none", "--pki-dir", &pki])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = text
        .split("  - sensor_id: ")
        .find(|e| e.starts_with("\"Press3/Recipe\""))
        .unwrap_or_else(|| panic!("Press3/Recipe missing:\n{text}"));
    assert!(entry.contains("enabled: false    # a structure"), "{entry}");
    for path in tagbridge::sim::plc::structs::FIELDS
        .iter()
        .chain([&tagbridge::sim::plc::structs::STAGE_TEMPERATURE])
    {
        assert!(
            entry.contains(&format!("\"{path}\": {{}}")),
            "{path}: {entry}"
        );
    }
    assert!(entry.contains("\"phase\": {}    # enumeration"), "{entry}");
    // Enabled as written, the file checks and every field is a tag.
    let enabled = text.replace("    enabled: false    # a structure", "    # a structure");
    let plan = tag_map(dir.path(), &enabled);
    assert_eq!(plan.tags.len(), 11, "{enabled}");
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_are_learned_again_after_a_restart_with_a_changed_program() {
    // Revision 1 has no `batch`: the field is counted as unreadable, the others flow.
    let first = start_sim(vec![recipe()]).await;
    let endpoint = first.opcua_endpoint().unwrap();
    let port: u16 = endpoint
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "source:\n  opcua: {{endpoint: \"{endpoint}\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - sensor_id: r\n    node: ns=2;s=Press3/Recipe\n    interval: 50ms\n    members: {{count: {{}}, batch: {{}}}}\n",
        dir.path().join("pki").display()
    );
    let plan = tag_map(dir.path(), &yaml);
    let run = Running::start(&plan);
    let ok = support::wait_until(DEADLINE, || run.of("r.count").len() >= 3).await;
    assert!(ok, "count did not flow\n{}", run.explain());
    assert!(run.of("r.batch").is_empty());
    assert!(
        OpcUaCounters::get(&run.counters.unsupported) > 0,
        "batch was not reported\n{}",
        run.explain()
    );
    first.shutdown().await;

    // The PLC comes back on the same endpoint with revision 2: `batch` exists now.
    let mut changed = recipe();
    changed
        .fields
        .insert("batch".into(), Signal::Constant(SignalValue::Int(42)));
    let second = Plc::start(PlcConfig {
        opcua: Some(OpcUaConfig {
            port,
            structures: vec![changed],
            recipe_revision: 2,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("the simulator starts again");
    let ok = support::wait_until(DEADLINE, || !run.of("r.batch").is_empty()).await;
    assert!(
        ok,
        "batch did not arrive after the restart\n{}",
        run.explain()
    );
    assert_eq!(number(&run.of("r.batch")[0]), 42.0);
    let before = run.of("r.count").len();
    let ok = support::wait_until(DEADLINE, || run.of("r.count").len() > before + 2).await;
    assert!(ok, "count stopped after the restart\n{}", run.explain());
    // Changes only, as before the restart: the constant batch is sent once.
    assert_eq!(run.of("r.batch").len(), 1, "{}", run.explain());
    run.stop().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_sends_fields_to_the_hub_and_reports_an_unknown_one_at_its_line() {
    use tagbridge::sim::hub::{Hub, HubConfig};
    let plc = start_sim(vec![recipe()]).await;
    let hub = Hub::start(HubConfig::default()).await.expect("hub");
    let dir = tempfile::tempdir().unwrap();
    // `temprature` is on line 9 of the tag map.
    let tag_map = format!(
        "source:\n  opcua: {{endpoint: \"{}\", security_policy: none, publishing_interval: 100ms, pki_dir: pki}}\n\
         tags:\n\
         \x20 - sensor_id: press-3:recipe\n\
         \x20   node: ns=2;s=Press3/Recipe\n\
         \x20   interval: 50ms\n\
         \x20   members:\n\
         \x20     count: {{}}\n\
         \x20     temprature: {{}}\n\
         \x20     name: {{enabled: false}}\n",
        plc.opcua_endpoint().unwrap()
    );
    assert!(tag_map.lines().nth(8).unwrap().contains("temprature"));
    std::fs::write(dir.path().join("structs.yaml"), &tag_map).unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "tag_maps: structs.yaml\nsink:\n  eventhub:\n    connection_string_env: TB_STRUCTS_TEST_CS\n    ca_file: {}\n    linger: 10ms\n\
             spool:\n  dir: spool\ntelemetry:\n  metrics: \"off\"\n",
            hub.ca_cert_path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["run", "-c"])
        .arg(dir.path().join("gateway.yaml"))
        .current_dir(dir.path())
        .env(
            "TB_STRUCTS_TEST_CS",
            hub.connection_string(tagbridge::sim::hub::DEFAULT_KEY_NAME),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    let received = || crate::support::chain::readings(&hub.events());
    let of = |id: &str| -> Vec<serde_json::Value> {
        received()
            .into_iter()
            .filter(|r| r["sensor_id"] == id)
            .collect()
    };
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let ok = support::wait_until(DEADLINE, || {
        of("press-3:recipe.count").len() >= 3 && logged().contains("does not exist")
    })
    .await;
    let _ = gateway.start_kill();
    assert!(
        ok,
        "no count readings at the hub or no report\n{}\n{tag_map}",
        logged()
    );
    // The report names the field's line in the tag map and the field meant.
    let report = logged()
        .lines()
        .find(|l| l.contains("does not exist"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(report.contains("structs.yaml:9"), "{report}");
    assert!(report.contains("did you mean `temperature`"), "{report}");
    assert!(
        report.contains("structure_type=SimRecipe "),
        "the type is named: {report}"
    );
    // What the PLC held at each reading's timestamp reached the hub, changes only.
    let config = recipe();
    let counts: Vec<f64> = of("press-3:recipe.count")
        .iter()
        .map(|r| {
            let ts: DateTime<Utc> = r["timestamp"].as_str().unwrap().parse().unwrap();
            // Timestamps reach the hub in whole milliseconds (truncated).
            let t = plc.t_at(ts + chrono::Duration::milliseconds(1));
            let want = config.fields["count"].value_at(t).as_f64();
            let got = r["value"].as_f64().unwrap();
            assert_eq!(got, want, "count at {ts}");
            got
        })
        .collect();
    assert!(counts.windows(2).all(|w| w[1] > w[0]), "{counts:?}");
    for r in received() {
        assert_eq!(r["sensor_id"], "press-3:recipe.count", "only count is sent");
    }
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_element_of_an_asyncua_array_of_structures_is_read() {
    let (child, endpoint, ns) = asyncua_struct_server().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "source:\n  opcua: {{endpoint: \"{endpoint}\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\ntags:\n  - sensor_id: arr\n    node: ns={ns};s=Plant/Recipes\n    interval: 50ms\n    elements: 2\n    members:\n      count: {{}}\n      inner.x: {{}}\n      label: {{enabled: false}}\n",
        dir.path().join("pki").display()
    );
    let plan = tag_map(dir.path(), &yaml);
    let run = Running::start(&plan);
    let ok = support::wait_until(DEADLINE, || {
        run.of("arr[0].count").len() >= 3 && run.of("arr[1].count").len() >= 3
    })
    .await;
    assert!(ok, "the elements did not arrive\n{}", run.explain());
    // Element i holds count + 1000 i and inner.x = -7 - count // 10, written together: each
    // element's fields agree with each other, and the elements with their own offset.
    for (i, offset) in [(0, 0.0), (1, 1000.0)] {
        let counts: Vec<f64> = run
            .of(&format!("arr[{i}].count"))
            .iter()
            .map(number)
            .collect();
        assert!(
            counts.iter().all(|c| *c >= offset && *c < offset + 1000.0),
            "element {i}: {counts:?}"
        );
        assert!(
            counts.windows(2).all(|w| w[1] > w[0]),
            "element {i}: changes only, increasing: {counts:?}"
        );
        for x in run.of(&format!("arr[{i}].inner.x")) {
            let count = run
                .of(&format!("arr[{i}].count"))
                .into_iter()
                .find(|c| c.timestamp == x.timestamp)
                .map(|c| number(&c))
                .expect("inner.x is sent with a count change");
            assert_eq!(number(&x), -7.0 - (count / 10.0).floor(), "element {i}");
        }
    }
    for r in run.all() {
        let ok = ["arr[0].", "arr[1]."].iter().any(|p| {
            r.sensor_id
                .strip_prefix(p)
                .is_some_and(|f| f == "count" || f == "inner.x")
        });
        assert!(ok, "unexpected {}", r.sensor_id);
    }
    run.stop().await;
    drop(child);
}
