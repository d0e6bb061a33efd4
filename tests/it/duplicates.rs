//! Issue 13, "Duplicates after re-subscription": every OPC UA monitored item's initial
//! notification repeats the value (same source timestamp) already delivered. Counted at the
//! hub for constant tags (each must arrive exactly once, however often the gateway resubscribes)
//! and for a ramp (no `(sensor, timestamp, value)` twice), against the real `tagbridge run`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tagbridge::config::duration::HumanDuration;
use tagbridge::sim::hub::{Hub, HubConfig, HubHandle};
use tagbridge::sim::plc::{OpcUaConfig, OpcUaType, OpcUaVariable, Plc, PlcConfig};
use tagbridge::sim::signal::{Signal, SignalValue};

use crate::support::chain;
use crate::support::wait_until;

const DEADLINE: Duration = Duration::from_secs(90);
const CONSTANTS: usize = 20;
const RAMP: &str = "dup:ramp";

fn var(path: &str, signal: Signal, data_type: OpcUaType) -> OpcUaVariable {
    OpcUaVariable {
        path: path.into(),
        node_id: None,
        data_type,
        enum_strings: None,
        signal,
    }
}

fn tag_map(endpoint: &str, pki: &Path, extra: bool) -> String {
    let mut tags: String = (0..CONSTANTS)
        .map(|i| format!("  - {{sensor_id: dup:c{i}, node: \"ns=2;s=C/{i}\"}}\n"))
        .collect();
    tags.push_str(&format!("  - {{sensor_id: {RAMP}, node: \"ns=2;s=R\"}}\n"));
    if extra {
        tags.push_str("  - {sensor_id: dup:extra, node: \"ns=2;s=C/extra\"}\n");
    }
    format!(
        "source:\n  opcua:\n    endpoint: {endpoint}\n    security_policy: none\n    publishing_interval: 100ms\n    pki_dir: {}\ntags:\n{tags}",
        pki.display()
    )
}

/// Readings per (sensor, timestamp, value) at the hub.
fn counts(hub: &HubHandle) -> HashMap<(String, String, String), usize> {
    let mut out = HashMap::new();
    for r in chain::readings(&hub.events()) {
        let key = (
            r["sensor_id"].as_str().unwrap_or_default().to_string(),
            r["timestamp"].to_string(),
            r["value"].to_string(),
        );
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

fn of(hub: &HubHandle, sensor: &str) -> usize {
    chain::readings(&hub.events())
        .iter()
        .filter(|r| r["sensor_id"] == sensor)
        .count()
}

/// What was delivered more than once, as "sensor ts value ×n".
fn duplicates(hub: &HubHandle, sensors: impl Fn(&str) -> bool) -> Vec<String> {
    let mut d: Vec<String> = counts(hub)
        .into_iter()
        .filter(|((s, _, _), n)| *n > 1 && sensors(s))
        .map(|((s, t, v), n)| format!("{s} {t} {v} ×{n}"))
        .collect();
    d.sort();
    d
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
            "TB_DUP_TEST_CS",
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
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the gateway stops on SIGTERM")
            .expect("wait");
        assert!(status.success(), "{status}\n{}", self.log());
    }

    async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }
}

/// Waits until the ramp has `more` readings at the hub than now (data flows again).
async fn flowing(hub: &HubHandle, gw: &Gw, more: usize, what: &str) {
    let target = of(hub, RAMP) + more;
    assert!(
        wait_until(DEADLINE, || of(hub, RAMP) >= target).await,
        "no ramp readings after {what}\n{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_and_restarting_send_no_reading_twice() {
    let mut variables: Vec<OpcUaVariable> = (0..CONSTANTS)
        .map(|i| {
            var(
                &format!("C/{i}"),
                Signal::Constant(SignalValue::Int(i as i64 * 7)),
                OpcUaType::Int32,
            )
        })
        .collect();
    variables.push(var(
        "C/extra",
        Signal::Constant(SignalValue::Float(2.5)),
        OpcUaType::Double,
    ));
    let ramp = Signal::Ramp {
        from: 0.0,
        to: 1_000_000.0,
        period: HumanDuration(Duration::from_secs(100_000)),
        update: Some(HumanDuration(Duration::from_millis(200))),
    };
    variables.push(var("R", ramp, OpcUaType::Double));
    let plc = Plc::start(PlcConfig {
        opcua: Some(OpcUaConfig {
            variables,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("PLC");
    let endpoint = plc.opcua_endpoint().expect("OPC UA");
    let hub = Hub::start(HubConfig::default()).await.expect("hub");
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = dir.path().join("pki");
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    let map = dir.path().join("maps").join("plant.yaml");
    std::fs::write(&map, tag_map(&endpoint, &pki, false)).unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "tag_maps: maps\nsink:\n  eventhub:\n    connection_string_env: TB_DUP_TEST_CS\n    ca_file: {}\n    linger: 10ms\n\
             spool:\n  dir: spool\ntelemetry:\n  metrics: \"off\"\n",
            hub.ca_cert_path().display()
        ),
    )
    .unwrap();
    let constants = |s: &str| s.starts_with("dup:c") || s == "dup:extra";

    let gw = spawn(dir.path(), &hub, 1);
    let all_constants = || (0..CONSTANTS).all(|i| of(&hub, &format!("dup:c{i}")) >= 1);
    assert!(
        wait_until(DEADLINE, all_constants).await,
        "constants never arrived\n{}",
        gw.log()
    );
    flowing(&hub, &gw, 3, "the start").await;

    // 1. The OPC UA server restarts: the client reconnects and subscribes again.
    plc.faults()
        .restart_opcua()
        .await
        .expect("restart the server");
    flowing(&hub, &gw, 5, "the server restart").await;

    // 2. A tag-map reload: the map's unit is rebuilt and subscribes again.
    std::fs::write(&map, tag_map(&endpoint, &pki, true)).unwrap();
    assert!(
        wait_until(DEADLINE, || of(&hub, "dup:extra") >= 1).await,
        "the reload was not applied\n{}",
        gw.log()
    );
    flowing(&hub, &gw, 5, "the reload").await;

    // 3. A graceful restart.
    gw.terminate().await;
    let gw = spawn(dir.path(), &hub, 2);
    flowing(&hub, &gw, 5, "a graceful restart").await;
    assert_eq!(
        duplicates(&hub, |_| true),
        Vec::<String>::new(),
        "{}",
        gw.log()
    );

    // 4. kill -9, long after the constants were acknowledged.
    flowing(&hub, &gw, 15, "a while").await;
    gw.kill9().await;
    let gw = spawn(dir.path(), &hub, 3);
    flowing(&hub, &gw, 5, "kill -9").await;
    gw.terminate().await;

    assert_eq!(duplicates(&hub, constants), Vec::<String>::new());
    for i in 0..CONSTANTS {
        assert_eq!(of(&hub, &format!("dup:c{i}")), 1, "dup:c{i}");
    }
}
