//! Issue 17: OPC UA events and Alarms & Conditions through the real `tagbridge run`, spool and
//! Event Hub emulator. The simulated PLC's conditions fire and clear from its signals
//! (`sim::plc::alarms`), so this test computes every transition that must arrive, by the
//! signal alone, and checks the hub against it across a hub outage, a `kill -9` of the
//! gateway and a restart of the OPC UA server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use tagbridge::sim::hub::{Hub, HubConfig, HubHandle};
use tagbridge::sim::plc::{Plc, PlcConfig, PlcHandle};
use tagbridge::sim::signal::Signal;

use crate::support::chain;
use crate::support::wait_until;

const DEADLINE: Duration = Duration::from_secs(90);
/// The level's square wave (2 s high, 2 s low) steps every 500 ms.
const LEVEL_UPDATE_MS: u64 = 500;

const PLC: &str = r#"
opcua:
  variables:
    - {path: Tank/Level, type: double, signal: {square: {low: 10, high: 90, period: 4s, duty: 0.5, update: 500ms}}}
    - {path: Tank/Mode, type: enum, signal: {states: {names: [Auto, Manual, Auto, Auto, Off], period: 700ms}}}
    - {path: Tank/Stuck, type: double, signal: {constant: 1}}
  alarms:
    - {name: LevelHigh, source: Tank/Level, limit: {high: 50}, severity: 700, message: Tank level high}
    - {name: NotAuto, source: Tank/Mode, off_normal: {normal: Auto}, severity: 300}
    - {name: Stuck, source: Tank/Stuck, limit: {high: 0.5}, severity: 900}
"#;

fn tag_map(endpoint: &str, pki: &Path) -> String {
    format!(
        "source:\n  opcua:\n    endpoint: {endpoint}\n    security_policy: none\n    publishing_interval: 100ms\n    pki_dir: {}\n\
         fields: {{site: plant-a}}\n\
         events:\n  - sensor_id: \"tank:{{SourceName}}:{{ConditionName}}\"\n    types: [AlarmConditionType]\n    value: state\n  \
           - sensor_id: tank:all\n    notifier: \"ns=2;s=Alarms\"\n    fields: {{event_id: EventId, condition: ConditionName}}\n",
        pki.display()
    )
}

/// One event reading at the hub.
#[derive(Debug, Clone)]
struct Seen {
    sensor_id: String,
    timestamp: DateTime<Utc>,
    value: String,
    refresh: bool,
    event_id: String,
    json: serde_json::Value,
}

fn seen(hub: &HubHandle) -> Vec<Seen> {
    chain::readings(&hub.events())
        .into_iter()
        .filter(|r| {
            r["sensor_id"]
                .as_str()
                .is_some_and(|s| s.starts_with("tank:"))
        })
        .map(|r| Seen {
            sensor_id: r["sensor_id"].as_str().unwrap_or_default().to_string(),
            timestamp: r["timestamp"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or_default(),
            value: r["value"].as_str().unwrap_or_default().to_string(),
            refresh: r["refresh"].as_bool().unwrap_or(false),
            event_id: r["event_id"].as_str().unwrap_or_default().to_string(),
            json: r.clone(),
        })
        .collect()
}

/// The EventId the simulator gives the transition of `alarm` at step `k`, as the gateway
/// sends it (base64 of the bytes).
fn event_id(alarm: &str, k: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{alarm}/{k}"))
}

/// The transitions of a condition in steps `from..=to`, computed from the signal alone: step
/// → active.
fn transitions(
    signal: &Signal,
    step: Duration,
    active: impl Fn(&tagbridge::sim::signal::SignalValue) -> bool,
    from: u64,
    to: u64,
) -> BTreeMap<u64, bool> {
    let at = |k: u64| active(&signal.value_at(step * k as u32));
    (from.max(1)..=to)
        .filter(|&k| at(k) != at(k - 1))
        .map(|k| (k, at(k)))
        .collect()
}

struct Gw {
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

fn spawn(dir: &Path, hub: &HubHandle, run: usize) -> Gw {
    let log = dir.join(format!("gateway-{run}.log"));
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["run", "-c"])
        .arg(dir.join("gateway.yaml"))
        .env(
            "TB_EVENTS_TEST_CS",
            hub.connection_string(tagbridge::sim::hub::DEFAULT_KEY_NAME),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    Gw { child, log }
}

impl Gw {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn terminate(mut self) {
        let pid = self.child.id().expect("running");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = tokio::time::timeout(DEADLINE, self.child.wait()).await;
    }

    async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }
}

/// Refresh readings of the always-active `Stuck` condition seen so far on `tank:all` (one
/// sensor_id for every condition: the gateway's memory of the last reading per sensor never
/// holds a refresh back there).
fn stuck_refreshes(hub: &HubHandle) -> usize {
    seen(hub)
        .iter()
        .filter(|s| s.sensor_id == "tank:all" && s.json["condition"] == "Stuck" && s.refresh)
        .count()
}

/// Transitions of `alarm` (not refreshes) at the hub: step → active, and how often each came.
fn arrived(
    hub: &HubHandle,
    plc: &PlcHandle,
    alarm: &str,
    step: Duration,
) -> BTreeMap<u64, (bool, usize)> {
    let mut out: BTreeMap<u64, (bool, usize)> = BTreeMap::new();
    for s in seen(hub)
        .into_iter()
        .filter(|s| s.sensor_id.ends_with(&format!(":{alarm}")) && !s.refresh)
    {
        // Readings carry milliseconds: the nearest step.
        let t = plc.t_at(s.timestamp);
        let k = ((t.as_nanos() + step.as_nanos() / 2) / step.as_nanos()) as u64;
        assert_eq!(
            s.event_id,
            event_id(alarm, k),
            "event id and Time agree: {:?}",
            s.json
        );
        let exact = plc.epoch() + chrono::Duration::from_std(step * k as u32).unwrap();
        assert!(
            (exact - s.timestamp)
                .num_microseconds()
                .unwrap_or(i64::MAX)
                .abs()
                < 1000,
            "Time is the step's instant {exact}: {:?}",
            s.json
        );
        let e = out.entry(k).or_insert((s.value == "active", 0));
        e.1 += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_transitions_arrive_as_the_signals_dictate_through_outages_and_restarts() {
    let parsed = tagbridge::config::parse_str::<PlcConfig>(PLC);
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let config = parsed.value.expect("PLC config");
    let level = config.opcua.as_ref().unwrap().variables[0].signal.clone();
    let mode = config.opcua.as_ref().unwrap().variables[1].signal.clone();
    let plc = Plc::start(config).await.expect("PLC");
    let endpoint = plc.opcua_endpoint().expect("OPC UA");
    let hub = Hub::start(HubConfig::default()).await.expect("hub");
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = dir.path().join("pki");
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    std::fs::write(
        dir.path().join("maps").join("alarms.yaml"),
        tag_map(&endpoint, &pki),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "tag_maps: maps\nsink:\n  eventhub:\n    connection_string_env: TB_EVENTS_TEST_CS\n    ca_file: {}\n    linger: 10ms\n\
             spool:\n  dir: spool\ntelemetry:\n  metrics: \"off\"\n",
            hub.ca_cert_path().display()
        ),
    )
    .unwrap();
    let level_step = Duration::from_millis(LEVEL_UPDATE_MS);
    let mode_step = Duration::from_millis(700);
    let level_active = |v: &tagbridge::sim::signal::SignalValue| v.as_f64() > 50.0;
    let mode_active = |v: &tagbridge::sim::signal::SignalValue| v.as_text() != "Auto";

    // 1. Start: the retained condition comes as a refresh, transitions follow.
    let gw = spawn(dir.path(), &hub, 1);
    assert!(
        wait_until(DEADLINE, || stuck_refreshes(&hub) >= 1).await,
        "no refresh of the retained condition after connecting\n{}",
        gw.log()
    );
    let stuck = seen(&hub)
        .into_iter()
        .find(|s| s.sensor_id == "tank:Tank/Stuck:Stuck")
        .expect("stuck");
    assert_eq!(stuck.value, "active");
    assert_eq!(
        stuck.event_id,
        event_id("Stuck", 0),
        "a refresh repeats the transition's EventId"
    );
    assert_eq!(stuck.json["site"], "plant-a");
    assert_eq!(stuck.json["severity"], 900);
    assert_eq!(stuck.json["active"], true);
    assert_eq!(stuck.json["retain"], true);
    let level_count = |hub: &HubHandle| arrived(hub, &plc, "LevelHigh", level_step).len();
    let n = level_count(&hub);
    assert!(
        wait_until(DEADLINE, || level_count(&hub) >= n + 3).await,
        "no level transitions\n{}",
        gw.log()
    );

    // 2. A hub outage: events wait in the spool.
    hub.faults().down_for(Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n = level_count(&hub);
    assert!(
        wait_until(DEADLINE, || level_count(&hub) >= n + 2).await,
        "no level transitions after the hub outage\n{}",
        gw.log()
    );

    // 3. kill -9 of the gateway; a new one refreshes and goes on.
    let refreshes = stuck_refreshes(&hub);
    let killed_at = plc.elapsed();
    gw.kill9().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gw = spawn(dir.path(), &hub, 2);
    assert!(
        wait_until(DEADLINE, || stuck_refreshes(&hub) > refreshes).await,
        "no refresh after kill -9\n{}\n{:#?}",
        gw.log(),
        seen(&hub)
            .iter()
            .filter(|s| s.sensor_id.contains("Stuck"))
            .map(|s| &s.json)
            .collect::<Vec<_>>()
    );
    let restarted_at = plc.elapsed();
    let n = level_count(&hub);
    assert!(
        wait_until(DEADLINE, || level_count(&hub) >= n + 3).await,
        "no level transitions after kill -9\n{}",
        gw.log()
    );

    // 4. The OPC UA server restarts: the gateway reconnects and refreshes.
    let refreshes = stuck_refreshes(&hub);
    let server_down_at = plc.elapsed();
    plc.faults()
        .restart_opcua()
        .await
        .expect("restart the server");
    assert!(
        wait_until(DEADLINE, || stuck_refreshes(&hub) > refreshes).await,
        "no refresh after the server restart\n{}",
        gw.log()
    );
    let server_back_at = plc.elapsed();
    let n = level_count(&hub);
    assert!(
        wait_until(DEADLINE, || level_count(&hub) >= n + 3).await,
        "no level transitions after the server restart\n{}",
        gw.log()
    );
    let log = gw.log();
    gw.terminate().await;

    // A condition's own sensor_id: the refreshes that repeat a transition already delivered
    // are held back by the gateway's memory of the last reading sent; the transition arrived
    // once (the first connect's refresh), with its EventId.
    let own: Vec<Seen> = seen(&hub)
        .into_iter()
        .filter(|s| s.sensor_id == "tank:Tank/Stuck:Stuck")
        .collect();
    assert_eq!(own.len(), 1, "{own:#?}");
    assert!(own[0].refresh);
    // The area notifier reports the same transitions as the Server object.
    let all_ids: BTreeSet<String> = seen(&hub)
        .into_iter()
        .filter(|s| s.sensor_id == "tank:all" && !s.refresh)
        .map(|s| s.event_id)
        .collect();
    let own_ids: BTreeSet<String> = seen(&hub)
        .into_iter()
        .filter(|s| s.sensor_id != "tank:all" && !s.refresh)
        .map(|s| s.event_id)
        .collect();
    assert_eq!(all_ids, own_ids);

    // Every transition between the first and the last that arrived, except while no gateway
    // was running (kill -9 .. restart) or the server was restarting, arrived, with the state
    // the signal dictates.
    for (alarm, signal, step, active) in [
        (
            "LevelHigh",
            &level,
            level_step,
            &level_active as &dyn Fn(&_) -> bool,
        ),
        (
            "NotAuto",
            &mode,
            mode_step,
            &mode_active as &dyn Fn(&_) -> bool,
        ),
    ] {
        let got = arrived(&hub, &plc, alarm, step);
        let (Some(first), Some(last)) = (got.keys().next().copied(), got.keys().last().copied())
        else {
            panic!("no {alarm} transitions\n{log}");
        };
        let expected = transitions(signal, step, active, first, last);
        // No gateway (kill -9 until the new one refreshed), or no server (restart until the
        // gateway refreshed): transitions then are not sent, as with a PLC reboot.
        let gap = |k: u64| {
            let t = step * k as u32;
            (t + step >= killed_at && t <= restarted_at + step)
                || (t + step >= server_down_at && t <= server_back_at + step)
        };
        let missing: Vec<u64> = expected
            .keys()
            .copied()
            .filter(|k| !got.contains_key(k) && !gap(*k))
            .collect();
        assert!(
            missing.is_empty(),
            "{alarm}: transitions missing at steps {missing:?}\nexpected {expected:?}\ngot {got:?}\n{log}"
        );
        for (k, (active, _)) in &got {
            assert_eq!(
                expected.get(k),
                Some(active),
                "{alarm} step {k}: not a transition the signal makes"
            );
        }
        let keys: BTreeSet<u64> = got.keys().copied().collect();
        assert!(keys.len() >= 5, "{alarm}: {keys:?}");
    }
}

/// Python asyncua's event generator (`tests/python/opcua_events_server.py`): a custom event
/// type with its own fields, selected by browse path in its namespace, filtered by type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_events_from_python_asyncua_arrive_with_their_fields() {
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncBufReadExt;

    let python = tokio::task::spawn_blocking(crate::support::python::python)
        .await
        .unwrap();
    let mut child = tokio::process::Command::new(python)
        .arg(crate::support::repo().join("tests/python/opcua_events_server.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the asyncua event server");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut ns, mut type_id, mut endpoint) = (None, None, None);
    let _ = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(v) = line.strip_prefix("NS ") {
                ns = Some(v.trim().to_string());
            }
            if let Some(v) = line.strip_prefix("TYPE ") {
                type_id = Some(v.trim().to_string());
            }
            if let Some(v) = line.strip_prefix("READY ") {
                endpoint = Some(v.trim().to_string());
                return;
            }
        }
    })
    .await;
    let (Some(ns), Some(type_id), Some(endpoint)) = (ns, type_id, endpoint) else {
        panic!("the asyncua event server did not start")
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "source:\n  opcua: {{endpoint: \"{endpoint}\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\n\
         events:\n  - sensor_id: \"py:{{SourceName}}\"\n    types: [\"{type_id}\"]\n    fields: {{batch: \"{ns}:BatchId\", quantity: \"{ns}:Quantity\", severity: Severity, event_id: EventId}}\n",
        dir.path().join("pki").display()
    );
    let path = dir.path().join("py.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let plan = match tagbridge::mapping::load_all(&[path]) {
        Ok(mut plans) => plans.remove(0),
        Err(report) => panic!("{report}\n{yaml}"),
    };
    let tagbridge::mapping::SourcePlan::OpcUa(source) = &plan.source else {
        panic!("not OPC UA")
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let cancel = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let counters = tagbridge::source::opcua::start(&plan, source, tx, cancel.clone(), &tracker);
    let readings: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let mut mapper = tagbridge::mapping::Mapper::new(&plan);
    let collected = Arc::clone(&readings);
    let collector = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let mut out = Vec::new();
            mapper.apply(&batch, &mut out);
            let mut r = collected.lock().unwrap();
            r.extend(
                out.iter()
                    .map(|r| serde_json::from_str(&r.to_json()).expect("JSON")),
            );
        }
    });
    let count = || readings.lock().unwrap().len();
    assert!(
        wait_until(DEADLINE, || count() >= 30).await,
        "{} events arrived; counters {counters:?}",
        count()
    );
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    let _ = collector.await;
    drop(child);

    let got = readings.lock().unwrap().clone();
    let mut numbers = Vec::new();
    for r in &got {
        assert_eq!(r["sensor_id"], "py:Dosing", "{r}");
        let value = r["value"].as_str().unwrap_or_default();
        let n: u64 = value
            .strip_prefix("Batch ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("only BatchEventType events: {r}"));
        assert_eq!(r["batch"], format!("B-{n}"), "{r}");
        assert_eq!(r["quantity"].as_f64(), Some(n as f64 * 1.5), "{r}");
        assert_eq!(r["severity"].as_u64(), Some(100 + n % 900), "{r}");
        assert_eq!(r["refresh"], false, "{r}");
        assert!(r["event_id"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        numbers.push(n);
    }
    // In order and complete: every event the type filter accepts, none of the ticks.
    let expected: Vec<u64> = (numbers[0]..=*numbers.last().unwrap())
        .filter(|n| n % 10 != 0)
        .collect();
    assert_eq!(numbers, expected);
    let ids: BTreeSet<&str> = got.iter().filter_map(|r| r["event_id"].as_str()).collect();
    assert_eq!(ids.len(), got.len(), "event ids are unique");
}

/// `tagbridge browse` lists the event notifiers (the Server object and the simulator's `Alarms`
/// object) as a commented `events:` block; uncommented, `check` accepts it and `run` delivers
/// the retained condition through both entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_lists_the_event_notifiers_ready_to_uncomment() {
    let parsed = tagbridge::config::parse_str::<PlcConfig>(PLC);
    let plc = Plc::start(parsed.value.expect("PLC config"))
        .await
        .expect("PLC");
    let endpoint = plc.opcua_endpoint().expect("OPC UA");
    let hub = Hub::start(HubConfig::default()).await.expect("hub");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    let browsed = dir.path().join("browsed.yaml");
    let args: Vec<String> = vec![
        "browse".into(),
        endpoint.clone(),
        "--security".into(),
        "none".into(),
        "--pki-dir".into(),
        dir.path().join("pki").display().to_string(),
        "-o".into(),
        browsed.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        crate::support::tagbridge()
            .args(&args)
            .output()
            .expect("run browse")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "browse failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&browsed).unwrap();
    for needle in [
        "# events:\n",
        "#   - sensor_id: \"{SourceName}:{ConditionName}\"\n#     notifier: \"i=2253\"\n",
        "#   - sensor_id: \"Alarms:{SourceName}:{ConditionName}\"\n#     notifier: \"ns=2;s=Alarms\"\n",
    ] {
        assert!(text.contains(needle), "browse output lacks {needle:?}:\n{text}");
    }
    assert!(
        !text.contains("notifier: \"ns=2;s=Tank\""),
        "the Tank folder is no event notifier:\n{text}"
    );

    // Uncommented: `check` accepts it, and both entries deliver the retained condition.
    let (tags, events) = text.split_at(text.find("# events:").unwrap());
    let events: String = events
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
        .collect();
    let map = dir.path().join("maps").join("browsed.yaml");
    std::fs::write(&map, format!("{tags}{events}")).unwrap();
    let check = crate::support::tagbridge()
        .arg("check")
        .arg(&map)
        .output()
        .expect("run check");
    assert!(
        check.status.success(),
        "check refused the uncommented events:\n{}{}\n---\n{tags}{events}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "tag_maps: maps\nsink:\n  eventhub:\n    connection_string_env: TB_EVENTS_TEST_CS\n    ca_file: {}\n    linger: 10ms\n\
             spool:\n  dir: spool\ntelemetry:\n  metrics: \"off\"\n",
            hub.ca_cert_path().display()
        ),
    )
    .unwrap();
    let gw = spawn(dir.path(), &hub, 1);
    let stuck = |hub: &HubHandle| -> BTreeSet<String> {
        chain::readings(&hub.events())
            .iter()
            .filter(|r| r["condition"] == "Stuck" && r["active"] == true)
            .filter_map(|r| r["sensor_id"].as_str().map(str::to_string))
            .collect()
    };
    let want: BTreeSet<String> = ["Tank/Stuck:Stuck", "Alarms:Tank/Stuck:Stuck"]
        .map(String::from)
        .into();
    assert!(
        wait_until(DEADLINE, || stuck(&hub) == want).await,
        "the retained condition did not arrive through both notifiers: {:?}\n---\n{tags}{events}\n---\n{}",
        stuck(&hub),
        gw.log()
    );
    gw.terminate().await;
    hub.shutdown().await;
    plc.shutdown().await;
}

/// Each transition reaches the source once per event item, on the Server object as on the
/// Alarms object. The simulator once notified every event on both, and async-opcua hands an
/// event of any node to the Server object's items too: those items got each event twice, and
/// only the gateway's duplicate memory kept it from the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transition_reaches_the_source_once_per_event_item() {
    use tagbridge::sample::{SampleBatch, SourceEvent};
    const MODE: &str = "opcua:\n  variables:\n    - {path: T/Mode, type: enum, signal: {states: {names: [Auto, Off], period: 200ms}}}\n  alarms:\n    - {name: NotAuto, source: T/Mode, off_normal: {normal: Auto}}\n";
    let parsed = tagbridge::config::parse_str::<PlcConfig>(MODE);
    let plc = Plc::start(parsed.value.expect("PLC config"))
        .await
        .expect("PLC");
    let endpoint = plc.opcua_endpoint().expect("OPC UA");
    let dir = tempfile::tempdir().expect("temp dir");
    let map = dir.path().join("once.yaml");
    std::fs::write(
        &map,
        format!(
            "source:\n  opcua: {{endpoint: \"{endpoint}\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\n\
             events:\n  - sensor_id: server\n  - sensor_id: alarms\n    notifier: \"ns=2;s=Alarms\"\n",
            dir.path().join("pki").display()
        ),
    )
    .unwrap();
    let plan = tagbridge::mapping::load_all(&[map])
        .expect("valid")
        .remove(0);
    let tagbridge::mapping::SourcePlan::OpcUa(source) = &plan.source else {
        panic!("OPC UA")
    };
    // EventId's place in each subscription's fields.
    let id_at: Vec<usize> = source
        .events
        .iter()
        .map(|e| {
            e.members
                .iter()
                .find(|(name, _)| &**name == "event_id")
                .expect("event_id is a default member")
                .1
        })
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SampleBatch>(16);
    let cancel = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    tagbridge::source::opcua::start(&plan, source, tx, cancel.clone(), &tracker);
    // (subscription, EventId) → how often it came, new transitions only.
    let mut seen: BTreeMap<(usize, String), usize> = BTreeMap::new();
    let enough = tokio::time::timeout(DEADLINE, async {
        while let Some(batch) = rx.recv().await {
            for (_, event) in batch.events {
                if let SourceEvent::OpcUaEvent(e) = event {
                    if !e.refresh {
                        let id = format!("{:?}", e.fields[id_at[e.subscription]]);
                        *seen.entry((e.subscription, id)).or_default() += 1;
                    }
                }
            }
            // Ten transitions on each item, and one more publish for a late twin.
            if (0..2).all(|s| seen.keys().filter(|(i, _)| *i == s).count() >= 10) {
                break;
            }
        }
    })
    .await;
    assert!(enough.is_ok(), "too few events: {seen:?}");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "events that came more than once: {twice:?}\nall: {seen:?}"
    );
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    plc.shutdown().await;
}
