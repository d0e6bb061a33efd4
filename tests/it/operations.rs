//! Operations: `/metrics` and `/readyz` during a real run, and live reload of tag maps through
//! the `tagbridge run` binary while readings flow to the emulator.

use std::time::Duration;

use tagbridge::sim::hub::{Hub, HubConfig};

use crate::support::chain::{self, http_get, metric, values_of, ChainOptions, COUNTER};
use crate::support::{wait_for, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_was_delivered_and_readyz_follows_the_hub() {
    let chain = chain::start(ChainOptions {
        metrics: true,
        ..Default::default()
    })
    .await;
    let addr = chain.metrics.expect("metrics served");
    assert!(chain.wait_for_counter_steps(3, DEADLINE).await);
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(addr, "/healthz").await.0, 200);

    // Quiet the PLC so nothing new is produced, let the sink drain, then the counters must
    // equal what the hub holds exactly.
    chain.plc.faults().go_silent(Duration::from_secs(30));
    assert!(
        wait_until(DEADLINE, || {
            let hub_events = chain.hub.stats().events;
            chain.journal.depth() == 0
                && chain
                    .stats
                    .events_accepted
                    .load(std::sync::atomic::Ordering::Relaxed)
                    == hub_events
        })
        .await,
        "the sink did not drain"
    );
    let hub_events = chain.hub.stats().events as f64;
    let (_, text) = http_get(addr, "/metrics").await;
    assert_eq!(
        metric(&text, "tagbridge_eventhub_events_accepted_total"),
        Some(hub_events),
        "{text}"
    );
    assert_eq!(
        metric(&text, "tagbridge_readings_total{tag_map=\"chain\"}"),
        Some(hub_events),
        "every reading produced was delivered exactly once: {text}"
    );
    assert!(metric(&text, "tagbridge_eventhub_batches_sent_total").is_some_and(|b| b >= 1.0));
    assert!(
        metric(&text, "tagbridge_eventhub_sent_bytes_total").is_some_and(|b| b >= hub_events),
        "every event sent is at least a byte on the link: {text}"
    );
    assert!(
        metric(&text, "tagbridge_modbus_requests_total{tag_map=\"chain\"}")
            .is_some_and(|r| r > 0.0),
        "{text}"
    );
    assert_eq!(metric(&text, "tagbridge_spool_depth_records"), Some(0.0));
    assert_eq!(metric(&text, "tagbridge_eventhub_connected"), Some(1.0));
    assert!(
        metric(&text, "tagbridge_eventhub_send_latency_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        metric(&text, "tagbridge_eventhub_token_expiry_seconds").is_some_and(|s| s > 3000.0),
        "a fresh 1 h token: {text}"
    );
    chain.plc.faults().end_silence();

    // The hub goes away: /readyz says the sink is not ready, and recovers with the hub.
    chain.hub.faults().down_for(Duration::from_secs(6));
    let not_ready = std::sync::Mutex::new(String::new());
    let went_down = wait_for(DEADLINE, || async {
        let (status, body) = http_get(addr, "/readyz").await;
        *not_ready.lock().unwrap() = body;
        status == 503
    })
    .await;
    let not_ready = not_ready.into_inner().unwrap();
    assert!(
        went_down,
        "/readyz stayed ready with the hub down: {not_ready}"
    );
    let detail: serde_json::Value =
        serde_json::from_str(not_ready.trim()).expect("/readyz went 503 with a JSON body");
    assert_eq!(detail["ready"], false);
    assert_eq!(detail["detail"]["sink"]["ok"], false, "{detail}");
    assert!(
        wait_for(DEADLINE, || async {
            http_get(addr, "/readyz").await.0 == 200
        })
        .await,
        "/readyz did not recover after the hub came back"
    );
    let (_, events, plc, hub) = chain.stop().await;
    assert!(!events.is_empty());
    hub.shutdown().await;
    plc.shutdown().await;
}

fn tag_map(modbus: std::net::SocketAddr, counter_id: &str, extra: &str) -> String {
    format!(
        "source:\n  modbus:\n    tcp: {modbus}\n    unit: 1\n    timeout: 1s\n\
         defaults:\n  interval: 50ms\n\
         tags:\n\
         \x20 - {{sensor_id: {counter_id}, table: holding_register, address: 0, type: uint32}}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_tag_map_applies_without_restart_and_a_broken_edit_keeps_the_old_map() {
    // The PLC: the shared counter at HR0 and a constant at HR4 for the tag added later.
    let (plc, modbus) = chain::modbus_plc().await;
    let hub = Hub::start(HubConfig::default()).await.expect("hub");

    let dir = tempfile::tempdir().expect("temp dir");
    // A free port for /metrics (the config file needs a number).
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    let map = dir.path().join("maps").join("line.yaml");
    std::fs::write(&map, tag_map(modbus, COUNTER, "")).unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "tag_maps: maps\nsink:\n  eventhub:\n    connection_string_env: TB_RELOAD_TEST_CS\n    ca_file: {}\n    linger: 10ms\n\
             spool:\n  dir: spool\n  fsync: never\ntelemetry:\n  metrics: 127.0.0.1:{metrics_port}\n",
            hub.ca_cert_path().display()
        ),
    )
    .unwrap();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["run", "-c"])
        .arg(dir.path().join("gateway.yaml"))
        .env(
            "TB_RELOAD_TEST_CS",
            hub.connection_string(tagbridge::sim::hub::DEFAULT_KEY_NAME),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    let has = |sensor: &str, n: usize| {
        let sensor = sensor.to_string();
        let hub = &hub;
        move || {
            chain::readings(&hub.events())
                .iter()
                .filter(|v| v["sensor_id"] == sensor.as_str())
                .count()
                >= n
        }
    };
    assert!(
        wait_until(DEADLINE, has(COUNTER, 3)).await,
        "no readings before the edit"
    );

    // Edit: rename the counter and add a tag. Unchanged content would keep the connection.
    let renamed = "chain:counter_renamed";
    std::fs::write(
        &map,
        tag_map(
            modbus,
            renamed,
            "  - {sensor_id: chain:added, table: holding_register, address: 4, type: float32}\n",
        ),
    )
    .unwrap();
    let switched = wait_until(DEADLINE, has(renamed, 3)).await
        && wait_until(DEADLINE, has("chain:added", 1)).await;
    if !switched {
        gateway.start_kill().expect("stop the gateway");
        let output = gateway.wait_with_output().await.expect("gateway output");
        let sensors: std::collections::BTreeSet<String> = hub
            .events()
            .iter()
            .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&e.body).ok())
            .map(|v| v["sensor_id"].to_string())
            .collect();
        panic!(
            "the edit was not applied; the hub has {sensors:?}; gateway log:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let old_after_switch = values_of(&hub.events(), COUNTER).len();

    // `tagbridge status` shows the person at the box the same thing.
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["status", "-c"])
        .arg(dir.path().join("gateway.yaml"))
        .output()
        .await
        .expect("tagbridge status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("READY"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("line ") && l.contains("modbus") && l.contains("yes")),
        "{text}"
    );
    assert!(text.contains("readings waiting"), "{text}");

    // A broken edit: rejected; the running map keeps delivering under the new name.
    std::fs::write(&map, "source:\n  modbus:\n    tcp: [broken\n").unwrap();
    let before = values_of(&hub.events(), renamed).len();
    assert!(
        wait_until(DEADLINE, has(renamed, before + 10)).await,
        "the running map stopped after a broken edit"
    );
    // No reading under the old name after the switch; none lost across it: the counter's
    // values under both names form one run with no gap.
    let events = hub.events();
    assert_eq!(values_of(&events, COUNTER).len(), old_after_switch);
    let mut all: Vec<u64> = values_of(&events, COUNTER);
    all.extend(values_of(&events, renamed));
    all.sort_unstable();
    all.dedup();
    let missing: Vec<u64> = (all[0]..=all[all.len() - 1])
        .filter(|v| all.binary_search(v).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "counter values lost across the reload: {missing:?}"
    );

    // The gateway said why it kept the old map.
    gateway.start_kill().expect("stop the gateway");
    let output = gateway.wait_with_output().await.expect("gateway output");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("Tag maps not reloaded"), "{log}");
    assert!(
        log.contains("maps/line.yaml:4:1: error: YAML syntax"),
        "the rejection does not point at file:line:column: {log}"
    );
    hub.shutdown().await;
    plc.shutdown().await;
}

/// The README's first command: `tagbridge demo` runs the whole chain and stops by itself.
#[test]
fn the_demo_delivers_readings_from_both_sources() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = dir.path().join("events.jsonl");
    let out = crate::support::tagbridge()
        // Run from a scratch folder: the demo must not write into the directory it runs in.
        .current_dir(dir.path())
        .args(["demo", "--seconds", "8", "--events"])
        .arg(&events)
        .output()
        .expect("run tagbridge demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("events accepted by the hub"), "{stdout}");
    let lines = std::fs::read_to_string(&events).expect("the emulator wrote its events");
    let sensors: std::collections::BTreeSet<String> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| {
            let body: serde_json::Value = serde_json::from_str(e["body"].as_str()?).ok()?;
            body["sensor_id"].as_str().map(String::from)
        })
        .collect();
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("events.jsonl")],
        "the demo left files behind"
    );
    // Both shipped tag maps deliver: the OPC UA compressor and the Modbus press.
    assert!(
        sensors.iter().any(|s| s.starts_with("compressor-7:")),
        "{sensors:?}"
    );
    assert!(
        sensors.iter().any(|s| s.starts_with("press-3:")),
        "{sensors:?}"
    );
}

/// Out of file handles, the metrics listener's accept fails over and over (EMFILE). It must
/// pause and log the streak at most once per interval, not spin: the old loop wrote millions
/// of lines in seconds at full CPU. The gateway runs with `ulimit -n 64`, and the test holds
/// open more connections than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_accept_failures_pause_and_log_once_instead_of_spinning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // A Modbus device that is never there: the gateway runs, the listener is what matters.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    std::fs::write(
        dir.path().join("maps/line.yaml"),
        tag_map(dead, "emfile:counter", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!("tag_maps: maps\nsink:\n  stdout: {{}}\ntelemetry:\n  metrics: 127.0.0.1:{port}\n"),
    )
    .unwrap();
    let mut gateway = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" run -c \"$1\"")
        .arg(env!("CARGO_BIN_EXE_tagbridge"))
        .arg(dir.path().join("gateway.yaml"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_for(DEADLINE, || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await,
        "the metrics listener did not come up"
    );
    // Hold more idle connections than the gateway has file handles.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    gateway.start_kill().expect("stop the gateway");
    let output = gateway.wait_with_output().await.expect("gateway output");
    drop(held);
    let log = String::from_utf8_lossy(&output.stderr);
    let failures = log.matches("accept failed").count();
    assert!(
        (1..=3).contains(&failures),
        "{failures} accept-failure lines in 3 s (expected the streak logged once, and an EMFILE at all):\n{}",
        log.lines().take(40).collect::<Vec<_>>().join("\n")
    );
}
