//! Issue 13, "A panicking component must never leave a half-alive gateway": with a fault
//! injected (`TAGBRIDGE_TEST_PANIC`, inert otherwise) the mapping task or the journal writer
//! panics; `tagbridge run` must stop by itself with a non-zero status (so systemd restarts
//! it), and a restarted gateway goes on delivering: the counter's readings that reached the
//! hub before the crash are all there, once.

use std::time::Duration;

use tagbridge::sim::hub::{Hub, HubConfig, HubHandle};

use crate::support::chain::{self, values_of, COUNTER};
use crate::support::wait_until;

const DEADLINE: Duration = Duration::from_secs(90);

fn spawn(dir: &std::path::Path, hub: &HubHandle, fault: Option<&str>) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"));
    cmd.args(["run", "-c"])
        .arg(dir.join("gateway.yaml"))
        .env(
            "TB_PANIC_TEST_CS",
            hub.connection_string(tagbridge::sim::hub::DEFAULT_KEY_NAME),
        )
        .env_remove("TAGBRIDGE_TEST_PANIC")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(fault) = fault {
        cmd.env("TAGBRIDGE_TEST_PANIC", fault);
    }
    cmd.spawn().expect("start tagbridge run")
}

async fn a_panic_stops_the_gateway(fault: &str) {
    let (_plc, modbus) = chain::modbus_plc().await;
    let hub = Hub::start(HubConfig::default()).await.expect("hub");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("plant.yaml"),
        format!(
            "source:\n  modbus:\n    tcp: {modbus}\n    unit: 1\n    timeout: 1s\n\
             defaults:\n  interval: 50ms\n\
             tags:\n\
             \x20 - {{sensor_id: {COUNTER}, table: holding_register, address: 0, type: uint32}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "tag_maps: plant.yaml\nsink:\n  eventhub:\n    connection_string_env: TB_PANIC_TEST_CS\n    ca_file: {}\n    linger: 10ms\n\
             spool:\n  dir: spool\ntelemetry:\n  metrics: \"off\"\n",
            hub.ca_cert_path().display()
        ),
    )
    .unwrap();

    // The fault fires on the 8th batch: some readings are delivered first.
    let gateway = spawn(dir.path(), &hub, Some(&format!("{fault}@8")));
    let output = tokio::time::timeout(DEADLINE, gateway.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{fault}: the gateway kept running after a panic"))
        .expect("gateway output");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{fault}: exit status {} after a panic\n{log}",
        output.status
    );
    assert!(log.contains("panicked"), "{fault}: no error logged\n{log}");
    let before = values_of(&hub.events(), COUNTER);
    assert!(
        !before.is_empty(),
        "{fault}: nothing delivered before the panic\n{log}"
    );

    // Restarted (as systemd would), it delivers again, and nothing was sent twice.
    let mut gateway = spawn(dir.path(), &hub, None);
    let more = before.len() + 3;
    let flowing = wait_until(DEADLINE, || values_of(&hub.events(), COUNTER).len() >= more).await;
    let _ = gateway.start_kill();
    assert!(flowing, "{fault}: no readings after the restart");
    let after = values_of(&hub.events(), COUNTER);
    // A duplicate is the same reading (time and value); a re-poll of an unchanged counter
    // after the restart is a new reading.
    let mut seen = std::collections::HashSet::new();
    let repeated: Vec<String> = chain::readings(&hub.events())
        .iter()
        .filter(|r| r["sensor_id"] == COUNTER)
        .map(|r| format!("{} {}", r["timestamp"], r["value"]))
        .filter(|k| !seen.insert(k.clone()))
        .collect();
    assert!(
        repeated.is_empty(),
        "{fault}: values delivered twice: {repeated:?}"
    );
    assert!(
        before.iter().all(|v| after.contains(v)),
        "{fault}: readings lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_mapping_task_stops_the_gateway_nonzero() {
    a_panic_stops_the_gateway("mapping").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_journal_writer_stops_the_gateway_nonzero() {
    a_panic_stops_the_gateway("journal").await;
}
