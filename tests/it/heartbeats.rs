//! Issue 13, "Heartbeats invent readings": with `heartbeat:` set, a dead device's last value
//! was re-sent stamped "now". A heartbeat may only repeat a value a poll (or a live
//! subscription) still confirms, stamped with that time: once the PLC is gone, no reading
//! of the tag carries a later time.

use std::time::Duration;

use tagbridge::sim::hub::{Hub, HubConfig};

use crate::support::chain::{self, LEVEL};
use crate::support::wait_until;

const DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_heartbeat_once_the_device_is_gone() {
    let (plc, modbus) = chain::modbus_plc().await;
    let hub = Hub::start(HubConfig::default()).await.expect("hub");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("plant.yaml"),
        format!(
            "source:\n  modbus:\n    tcp: {modbus}\n    unit: 1\n    timeout: 300ms\n\
             defaults:\n  interval: 100ms\n\
             tags:\n\
             \x20 - {{sensor_id: {LEVEL}, table: holding_register, address: 4, type: float32, heartbeat: 1s}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "tag_maps: plant.yaml\nsink:\n  eventhub:\n    connection_string_env: TB_HB_TEST_CS\n    ca_file: {}\n    linger: 10ms\n\
             spool:\n  dir: spool\ntelemetry:\n  metrics: \"off\"\n",
            hub.ca_cert_path().display()
        ),
    )
    .unwrap();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["run", "-c"])
        .arg(dir.path().join("gateway.yaml"))
        .env(
            "TB_HB_TEST_CS",
            hub.connection_string(tagbridge::sim::hub::DEFAULT_KEY_NAME),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    let level_times = || -> Vec<chrono::DateTime<chrono::Utc>> {
        chain::readings(&hub.events())
            .iter()
            .filter(|r| r["sensor_id"] == LEVEL)
            .filter_map(|r| r["timestamp"].as_str()?.parse().ok())
            .collect()
    };
    // The constant and two heartbeats of it.
    assert!(
        wait_until(DEADLINE, || level_times().len() >= 3).await,
        "no heartbeats while the PLC answers"
    );
    plc.shutdown().await;
    let gone = chrono::Utc::now();
    // Several heartbeat periods with the device gone: nothing may be stamped after it went.
    let invented = wait_until(Duration::from_secs(5), || {
        level_times().iter().any(|t| *t > gone)
    })
    .await;
    let _ = gateway.start_kill();
    let late: Vec<_> = level_times().into_iter().filter(|t| *t > gone).collect();
    assert!(
        !invented,
        "readings stamped after the device went away: {late:?}"
    );
}
