//! Quality readings end to end, through the emulator: off, every event is the seed format byte
//! for byte; on, a tag that stops being readable gets exactly one `"quality":"bad"` reading
//! with `"value":null` and the cause, and the first good value after it closes the gap, even
//! when it equals the last value before it.

use std::time::Duration;

use serde_json::Value;
use tagbridge::config::tagmap::Table;
use tagbridge::sim::hub::ReceivedEvent;

use crate::support::chain::{self, readings, ChainOptions, COUNTER, LEVEL};
use crate::support::wait_until;

const DEADLINE: Duration = Duration::from_secs(60);

fn of(events: &[ReceivedEvent], sensor: &str) -> Vec<Value> {
    readings(events)
        .into_iter()
        .filter(|r| r["sensor_id"] == sensor)
        .collect()
}

fn bad_count(events: &[ReceivedEvent], sensor: &str) -> usize {
    of(events, sensor)
        .iter()
        .filter(|r| r["quality"] == "bad")
        .count()
}

/// Per sensor: good readings, then one bad reading per gap, each followed by a good one (or the
/// end); a bad reading's value is null and its status names the cause.
fn assert_gaps_well_formed(events: &[ReceivedEvent], sensor: &str, gaps: usize) {
    let rs = of(events, sensor);
    let dump = || {
        rs.iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut bad_seen = 0;
    let mut last_bad = false;
    for r in &rs {
        match r["quality"].as_str() {
            Some("good") => {
                assert!(!r["value"].is_null(), "{}", dump());
                last_bad = false;
            }
            Some("bad") => {
                assert!(!last_bad, "two bad readings in a row:\n{}", dump());
                assert!(r["value"].is_null(), "{}", dump());
                assert!(
                    r["status"].as_str().is_some_and(|s| !s.is_empty()),
                    "{}",
                    dump()
                );
                bad_seen += 1;
                last_bad = true;
            }
            _ => panic!("a reading without quality:\n{}", dump()),
        }
    }
    assert_eq!(bad_seen, gaps, "{}", dump());
    assert!(!last_bad, "the gap was not closed:\n{}", dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_off_every_event_is_the_seed_format_byte_for_byte() {
    let chain = chain::start(ChainOptions::default()).await;
    assert!(chain.wait_for_counter_steps(3, DEADLINE).await);
    let (_, events, _, _) = chain.stop().await;
    assert!(!events.is_empty());
    for e in &events {
        let body = String::from_utf8_lossy(&e.body);
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v.as_object().map(|o| o.len()), Some(3), "{body}");
        let seed = format!(
            "{{\"sensor_id\":{},\"timestamp\":{},\"value\":{}}}",
            v["sensor_id"], v["timestamp"], v["value"]
        );
        assert_eq!(body, seed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_on_a_silent_device_gives_one_bad_reading_per_tag_and_the_gap_closes() {
    let chain = chain::start(ChainOptions {
        quality: true,
        ..Default::default()
    })
    .await;
    assert!(chain.wait_for_counter_steps(2, DEADLINE).await);
    let good = of(&chain.hub.events(), LEVEL);
    assert_eq!(good.len(), 1, "{good:?}");
    assert_eq!(good[0]["quality"], "good");
    assert_eq!(good[0]["value"], 12.5);
    chain.plc.faults().go_silent(Duration::from_secs(60));
    assert!(
        wait_until(DEADLINE, || {
            let events = chain.hub.events();
            bad_count(&events, LEVEL) == 1 && bad_count(&events, COUNTER) == 1
        })
        .await,
        "{:?}",
        readings(&chain.hub.events())
    );
    // Still silent a while longer: no second bad reading, and no heartbeat of an old value.
    let before = chain.hub.events().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(chain.hub.events().len(), before);
    chain.plc.faults().end_silence();
    // The level is unchanged (12.5) yet is sent again: it closes the gap.
    assert!(
        wait_until(DEADLINE, || of(&chain.hub.events(), LEVEL).len() == 3).await,
        "{:?}",
        of(&chain.hub.events(), LEVEL)
    );
    let (_, events, _, _) = chain.stop().await;
    assert_gaps_well_formed(&events, LEVEL, 1);
    assert_gaps_well_formed(&events, COUNTER, 1);
    let level = of(&events, LEVEL);
    assert_eq!(level[2]["value"], 12.5);
    // The gap lies between the last good reading before it and the first after it.
    let t = |r: &Value| r["timestamp"].as_str().unwrap_or_default().to_string();
    assert!(
        t(&level[0]) < t(&level[1]) && t(&level[1]) < t(&level[2]),
        "{level:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_on_an_address_that_starts_refusing_goes_bad_alone() {
    let chain = chain::start(ChainOptions {
        quality: true,
        ..Default::default()
    })
    .await;
    assert!(chain.wait_for_counter_steps(2, DEADLINE).await);
    let refused_from = chrono::Utc::now();
    chain.plc.faults().modbus_exception(
        1,
        Table::HoldingRegister,
        4,
        tokio_modbus::ExceptionCode::IllegalDataAddress,
    );
    assert!(
        wait_until(DEADLINE, || bad_count(&chain.hub.events(), LEVEL) == 1).await,
        "{:?}",
        readings(&chain.hub.events())
    );
    // The reading names the device's reason, and the gap starts when the device began refusing
    // (the first poll after it), not three polls later.
    let bad = of(&chain.hub.events(), LEVEL)
        .into_iter()
        .find(|r| r["quality"] == "bad")
        .expect("a bad reading");
    assert_eq!(
        bad["status"], "illegal data address (Modbus exception 0x02)",
        "{bad}"
    );
    let at = chrono::DateTime::parse_from_rfc3339(bad["timestamp"].as_str().unwrap_or_default())
        .expect("a timestamp");
    assert!(
        at >= refused_from && at < refused_from + chrono::Duration::seconds(2),
        "refused from {refused_from}: {bad}"
    );
    // The healthy tag keeps flowing, good.
    let counter_before = of(&chain.hub.events(), COUNTER).len();
    assert!(
        wait_until(DEADLINE, || of(&chain.hub.events(), COUNTER).len()
            >= counter_before + 3)
        .await
    );
    chain.plc.faults().clear_modbus_exceptions();
    assert!(wait_until(DEADLINE, || of(&chain.hub.events(), LEVEL).len() == 3).await);
    let (_, events, _, _) = chain.stop().await;
    assert_gaps_well_formed(&events, LEVEL, 1);
    assert_gaps_well_formed(&events, COUNTER, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_on_an_opcua_server_restart_is_one_connection_lost_gap() {
    use tagbridge::runtime::{run, Output, RunOptions};
    use tagbridge::sim::plc::{OpcUaConfig, OpcUaType, OpcUaVariable, Plc, PlcConfig};
    use tagbridge::sim::signal::Signal;

    let counter = Signal::Counter {
        start: 0,
        step: 1,
        wrap: None,
        update: Some(tagbridge::config::duration::HumanDuration(
            Duration::from_millis(200),
        )),
    };
    let plc = Plc::start(PlcConfig {
        opcua: Some(OpcUaConfig {
            variables: vec![OpcUaVariable {
                path: "R/Counter".into(),
                node_id: None,
                data_type: OpcUaType::Int64,
                enum_strings: None,
                signal: counter,
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("the simulator starts");
    let endpoint = plc.opcua_endpoint().expect("OPC UA");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("opcua.yaml");
    std::fs::write(
        &path,
        format!(
            "source:\n  opcua: {{endpoint: {endpoint}, security_policy: none, publishing_interval: 100ms, pki_dir: {}}}\n\
             defaults: {{interval: 50ms}}\ntags:\n  - {{sensor_id: counter, node: \"ns=2;s=R/Counter\"}}\n",
            dir.path().join("pki").display()
        ),
    )
    .expect("write tag map");
    let plans = tagbridge::mapping::load_all(&[path]).expect("the tag map compiles");
    let out = dir.path().join("readings.jsonl");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gateway = tokio::spawn(run(
        plans,
        Output::File(out.clone()),
        RunOptions {
            quality: true,
            ..Default::default()
        },
        shutdown.clone(),
    ));
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    assert!(wait_until(DEADLINE, || lines().len() >= 3).await);
    plc.faults().restart_opcua().await.expect("restart");
    let bad_then_good = || {
        let ls = lines();
        let bad = ls.iter().position(|r| r["quality"] == "bad");
        bad.is_some_and(|b| {
            ls[b + 1..]
                .iter()
                .filter(|r| r["quality"] == "good")
                .count()
                >= 3
        })
    };
    assert!(wait_until(DEADLINE, bad_then_good).await, "{:?}", lines());
    shutdown.cancel();
    let _ = gateway.await;
    let ls = lines();
    let bad: Vec<&Value> = ls.iter().filter(|r| r["quality"] == "bad").collect();
    assert_eq!(bad.len(), 1, "{ls:?}");
    assert_eq!(bad[0]["status"], "connection lost");
    assert!(bad[0]["value"].is_null());
    plc.shutdown().await;
}

/// A simulated OPC UA PLC with two counters (`R/Temp`, `R/Other`), and a gateway with quality
/// on reading them (and any extra nodes) into a file of readings.
struct OpcUaRun {
    plc: tagbridge::sim::plc::PlcHandle,
    out: std::path::PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
    gateway: tokio::task::JoinHandle<
        Result<tagbridge::runtime::RunSummary, tagbridge::runtime::RuntimeError>,
    >,
    _dir: tempfile::TempDir,
}

/// Every 400 ms the counters step by one (4 × the sampling interval the server grants).
const OPCUA_STEP: Duration = Duration::from_millis(400);

fn opcua_counter() -> tagbridge::sim::signal::Signal {
    tagbridge::sim::signal::Signal::Counter {
        start: 0,
        step: 1,
        wrap: None,
        update: Some(tagbridge::config::duration::HumanDuration(OPCUA_STEP)),
    }
}

impl OpcUaRun {
    /// `extra_nodes`: (sensor_id, node id) of more tags, e.g. nodes the server does not have.
    async fn start(extra_nodes: &[(&str, &str)]) -> OpcUaRun {
        use tagbridge::runtime::{run, Output, RunOptions};
        use tagbridge::sim::plc::{OpcUaConfig, OpcUaType, OpcUaVariable, Plc, PlcConfig};
        let variable = |path: &str| OpcUaVariable {
            path: path.into(),
            node_id: None,
            data_type: OpcUaType::Int64,
            enum_strings: None,
            signal: opcua_counter(),
        };
        let plc = Plc::start(PlcConfig {
            opcua: Some(OpcUaConfig {
                variables: vec![variable("R/Temp"), variable("R/Other")],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("the simulator starts");
        let endpoint = plc.opcua_endpoint().expect("OPC UA");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("opcua.yaml");
        let mut yaml = format!(
            "source:\n  opcua: {{endpoint: {endpoint}, security_policy: none, publishing_interval: 100ms, pki_dir: {}}}\n\
             defaults: {{interval: 50ms}}\ntags:\n  - {{sensor_id: temp, node: \"ns=2;s=R/Temp\"}}\n  - {{sensor_id: other, node: \"ns=2;s=R/Other\"}}\n",
            dir.path().join("pki").display()
        );
        for (sensor, node) in extra_nodes {
            yaml.push_str(&format!("  - {{sensor_id: {sensor}, node: \"{node}\"}}\n"));
        }
        std::fs::write(&path, &yaml).expect("write tag map");
        let plans = tagbridge::mapping::load_all(&[path]).expect("the tag map compiles");
        let out = dir.path().join("readings.jsonl");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let gateway = tokio::spawn(run(
            plans,
            Output::File(out.clone()),
            RunOptions {
                quality: true,
                ..Default::default()
            },
            shutdown.clone(),
        ));
        OpcUaRun {
            plc,
            out,
            shutdown,
            gateway,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn of(&self, sensor: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|r| r["sensor_id"] == sensor)
            .collect()
    }

    async fn stop(self) -> Vec<Value> {
        self.shutdown.cancel();
        let OpcUaRun {
            plc,
            gateway,
            out,
            _dir,
            ..
        } = self;
        let _ = gateway.await;
        let lines = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        plc.shutdown().await;
        drop(_dir);
        lines
    }
}

fn ts(r: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(r["timestamp"].as_str().unwrap_or_default())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|e| panic!("{e}: {r}"))
}

/// `a` as a reading shows it: milliseconds, truncated (OPC UA keeps 100 ns ticks).
fn same_ms(a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>) -> bool {
    a.timestamp_millis() == b.timestamp_millis()
}

/// Waits until the middle between two steps of the counters: a status change made then is
/// 200 ms from any value change, so the server reports it as it happened (async-opcua shifts a
/// value that comes sooner than the sampling interval after the last one).
async fn mid_step(plc: &tagbridge::sim::plc::PlcHandle) {
    let step = OPCUA_STEP.as_nanos();
    let into = plc.elapsed().as_nanos() % step;
    let wait = (step / 2 + step - into) % step;
    tokio::time::sleep(Duration::from_nanos(wait as u64)).await;
}

/// The counter's value at a reading's timestamp (milliseconds, truncated: the instant itself
/// lies within the millisecond after it).
fn counter_at(plc_epoch: chrono::DateTime<chrono::Utc>, r: &Value) -> i64 {
    let t = (ts(r) - plc_epoch).to_std().unwrap_or_default() + Duration::from_micros(999);
    opcua_counter().value_at(t).as_i64()
}

fn dump(rs: &[Value]) -> String {
    rs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_on_an_opcua_tag_going_bad_is_one_bad_reading_then_a_good_one_as_the_plc_did() {
    let run = OpcUaRun::start(&[]).await;
    assert!(
        wait_until(DEADLINE, || run.of("temp").len() >= 3).await,
        "{:?}",
        run.lines()
    );
    let faults = run.plc.faults();
    mid_step(&run.plc).await;
    faults.opcua_status(
        "R/Temp",
        opcua::types::StatusCode::BadSensorFailure,
        Some(Duration::from_millis(1600)),
    );
    // The window ends by itself; then a few good values.
    let recovered = || {
        let rs = run.of("temp");
        rs.iter()
            .position(|r| r["quality"] == "bad")
            .is_some_and(|b| rs.len() >= b + 4)
    };
    assert!(
        wait_until(DEADLINE, recovered).await,
        "{}",
        dump(&run.lines())
    );
    let other_during = run.of("other").len();
    let changes = faults.opcua_status_changes();
    let plc_epoch = run.plc.epoch();
    let lines = run.stop().await;
    let temp: Vec<Value> = lines
        .iter()
        .filter(|r| r["sensor_id"] == "temp")
        .cloned()
        .collect();
    // What the PLC did: Bad at one instant, Good at another.
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(
        changes[0].status,
        opcua::types::StatusCode::BadSensorFailure
    );
    assert_eq!(changes[1].status, opcua::types::StatusCode::Good);
    let bad: Vec<usize> = (0..temp.len())
        .filter(|&i| temp[i]["quality"] == "bad")
        .collect();
    assert_eq!(bad.len(), 1, "exactly one bad reading:\n{}", dump(&temp));
    let b = bad[0];
    assert_eq!(temp[b]["status"], "BadSensorFailure", "{}", dump(&temp));
    assert!(temp[b]["value"].is_null());
    assert!(
        same_ms(ts(&temp[b]), changes[0].at),
        "bad at {}:\n{}",
        changes[0].at,
        dump(&temp)
    );
    // The next reading closes the gap, stamped when the PLC's sensor came back, with the value
    // the PLC had then.
    let closing = &temp[b + 1];
    assert_eq!(closing["quality"], "good", "{}", dump(&temp));
    assert!(
        same_ms(ts(closing), changes[1].at),
        "good at {}:\n{}",
        changes[1].at,
        dump(&temp)
    );
    assert_eq!(
        closing["value"],
        counter_at(plc_epoch, closing),
        "{}",
        dump(&temp)
    );
    // In order, every other reading good with a value.
    for w in temp.windows(2) {
        assert!(ts(&w[0]) <= ts(&w[1]), "out of order:\n{}", dump(&temp));
    }
    for (i, r) in temp.iter().enumerate() {
        if i != b {
            assert_eq!(r["quality"], "good", "{}", dump(&temp));
            assert!(r["value"].is_i64(), "{}", dump(&temp));
        }
    }
    // The other tag was not held up, and never bad.
    assert!(other_during >= 8, "{}", dump(&lines));
    assert!(lines
        .iter()
        .filter(|r| r["sensor_id"] == "other")
        .all(|r| r["quality"] == "good"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_on_opcua_uncertain_values_are_sent_marked_uncertain_with_the_status_name() {
    let run = OpcUaRun::start(&[]).await;
    assert!(
        wait_until(DEADLINE, || run.of("temp").len() >= 3).await,
        "{:?}",
        run.lines()
    );
    let faults = run.plc.faults();
    mid_step(&run.plc).await;
    faults.opcua_status(
        "R/Temp",
        opcua::types::StatusCode::UncertainLastUsableValue,
        Some(Duration::from_millis(1600)),
    );
    let recovered = || {
        let rs = run.of("temp");
        rs.iter()
            .rposition(|r| r["quality"] == "uncertain")
            .is_some_and(|u| rs.len() >= u + 3)
    };
    assert!(
        wait_until(DEADLINE, recovered).await,
        "{}",
        dump(&run.lines())
    );
    let changes = faults.opcua_status_changes();
    let plc_epoch = run.plc.epoch();
    let lines = run.stop().await;
    let temp: Vec<Value> = lines
        .iter()
        .filter(|r| r["sensor_id"] == "temp")
        .cloned()
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    let (from, to) = (changes[0].at, changes[1].at);
    let uncertain: Vec<&Value> = temp
        .iter()
        .filter(|r| r["quality"] == "uncertain")
        .collect();
    // One value at the change, then one per 400 ms step of the 1.6 s window.
    assert!(uncertain.len() >= 4, "{}", dump(&temp));
    for r in &uncertain {
        assert_eq!(r["status"], "UncertainLastUsableValue", "{}", dump(&temp));
        // The value is still sent: the PLC's value at that instant.
        assert_eq!(r["value"], counter_at(plc_epoch, r), "{}", dump(&temp));
        assert!(
            ts(r) >= from - chrono::Duration::milliseconds(1) && ts(r) < to,
            "{}",
            dump(&temp)
        );
    }
    // The first uncertain reading is the change itself; the first one after the window is good.
    assert!(
        same_ms(ts(uncertain[0]), from),
        "uncertain from {from}:\n{}",
        dump(&temp)
    );
    let after: Vec<&Value> = temp
        .iter()
        .filter(|r| ts(r).timestamp_millis() >= to.timestamp_millis())
        .collect();
    assert!(
        !after.is_empty() && same_ms(ts(after[0]), to),
        "good from {to}:\n{}",
        dump(&temp)
    );
    assert!(
        after
            .iter()
            .all(|r| r["quality"] == "good" && r.get("status").is_none()),
        "{}",
        dump(&temp)
    );
    assert!(
        temp.iter().all(|r| r["quality"] != "bad"),
        "{}",
        dump(&temp)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_on_an_unknown_opcua_node_is_reported_once_and_holds_up_nothing() {
    let run = OpcUaRun::start(&[("missing", "ns=2;s=R/Missing")]).await;
    assert!(
        wait_until(DEADLINE, || run.of("missing").len() == 1
            && run.of("temp").len() >= 5)
        .await,
        "{}",
        dump(&run.lines())
    );
    // A node deleted while monitored: the server says BadNodeIdUnknown in its value.
    let faults = run.plc.faults();
    faults.opcua_status("R/Other", opcua::types::StatusCode::BadNodeIdUnknown, None);
    assert!(
        wait_until(DEADLINE, || run
            .of("other")
            .iter()
            .any(|r| r["quality"] == "bad"))
        .await,
        "{}",
        dump(&run.lines())
    );
    // Still reported once each, while the healthy tag keeps flowing.
    let temp_before = run.of("temp").len();
    assert!(wait_until(DEADLINE, || run.of("temp").len() >= temp_before + 8).await);
    // The node is back: its first value closes the gap.
    faults.opcua_status("R/Other", opcua::types::StatusCode::Good, None);
    assert!(
        wait_until(DEADLINE, || run
            .of("other")
            .last()
            .is_some_and(
                |r| r["quality"] == "good" && ts(r) > faults.opcua_status_changes()[0].at
            ))
        .await,
        "{}",
        dump(&run.lines())
    );
    let lines = run.stop().await;
    let missing: Vec<&Value> = lines
        .iter()
        .filter(|r| r["sensor_id"] == "missing")
        .collect();
    assert_eq!(missing.len(), 1, "{}", dump(&lines));
    assert_eq!(missing[0]["quality"], "bad");
    assert_eq!(missing[0]["status"], "BadNodeIdUnknown");
    assert!(missing[0]["value"].is_null());
    let other: Vec<&Value> = lines.iter().filter(|r| r["sensor_id"] == "other").collect();
    let bad: Vec<&&Value> = other.iter().filter(|r| r["quality"] == "bad").collect();
    assert_eq!(bad.len(), 1, "{}", dump(&lines));
    assert_eq!(bad[0]["status"], "BadNodeIdUnknown");
    assert!(lines
        .iter()
        .filter(|r| r["sensor_id"] == "temp")
        .all(|r| r["quality"] == "good"));
}

/// Against an independent server (Python asyncua, `tests/python/opcua_server.py`): its
/// `Plant/Unsure` is UncertainLastUsableValue, `Plant/Broken` BadSensorFailure, and a node it
/// does not have is refused or reported unknown. Each arrives as the quality readings say, and
/// the healthy tags flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_on_python_asyncua_statuses_arrive_as_uncertain_and_bad_readings() {
    use tagbridge::runtime::{run, Output, RunOptions};
    use tokio::io::AsyncBufReadExt;
    let python = tokio::task::spawn_blocking(crate::support::python::python)
        .await
        .expect("the Python environment");
    let mut child = tokio::process::Command::new(python)
        .arg(crate::support::repo().join("tests/python/opcua_server.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the asyncua server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let (mut ns, mut endpoint) = (None, None);
    let _ = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line.strip_prefix("NS ") {
                ns = n.trim().parse::<u16>().ok();
            }
            if let Some(e) = line.strip_prefix("READY ") {
                endpoint = Some(e.trim().to_string());
                return;
            }
        }
    })
    .await;
    let (Some(ns), Some(endpoint)) = (ns, endpoint) else {
        panic!("the asyncua server did not start (see its stderr above)")
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("asyncua.yaml");
    let mut yaml = format!(
        "source:\n  opcua: {{endpoint: \"{endpoint}\", security_policy: none, publishing_interval: 100ms, pki_dir: \"{}\"}}\n\
         defaults: {{interval: 50ms}}\ntags:\n",
        dir.path().join("pki").display()
    );
    for name in ["Double", "Unsure", "Broken", "Counter", "DoesNotExist"] {
        yaml.push_str(&format!(
            "  - {{sensor_id: {name}, node: \"ns={ns};s=Plant/{name}\"}}\n"
        ));
    }
    std::fs::write(&path, &yaml).expect("write tag map");
    let plans = tagbridge::mapping::load_all(&[path]).expect("the tag map compiles");
    let out = dir.path().join("readings.jsonl");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let gateway = tokio::spawn(run(
        plans,
        Output::File(out.clone()),
        RunOptions {
            quality: true,
            metrics: Some(([127, 0, 0, 1], 0).into()),
            metrics_bound: Some(bound_tx),
            ..Default::default()
        },
        shutdown.clone(),
    ));
    let telemetry = bound_rx.await.expect("the live view's address");
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let of = |rs: &[Value], s: &str| -> Vec<Value> {
        rs.iter().filter(|r| r["sensor_id"] == s).cloned().collect()
    };
    let complete = || {
        let rs = read();
        ["Double", "Unsure", "Broken", "DoesNotExist"]
            .iter()
            .all(|s| !of(&rs, s).is_empty())
            && of(&rs, "Counter").len() >= 5
    };
    assert!(wait_until(DEADLINE, complete).await, "{}", dump(&read()));
    // A while longer: still one reading each for the constant and the broken tags.
    let counter_before = of(&read(), "Counter").len();
    assert!(
        wait_until(DEADLINE, || of(&read(), "Counter").len()
            >= counter_before + 5)
        .await
    );
    // The live view shows the same statuses and why.
    let (code, body) = crate::support::chain::http_get(telemetry, "/api/live").await;
    assert_eq!(code, 200, "{body}");
    let live: Value = serde_json::from_str(&body).expect("JSON");
    let tags: Vec<&Value> = live["maps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["tags"].as_array().into_iter().flatten())
        .collect();
    let row = |s: &str| {
        tags.iter()
            .find(|t| t["sensor_id"] == s)
            .map(|t| (t["status"].clone(), t["reason"].clone()))
            .unwrap_or_else(|| panic!("{s} not in the live view: {body}"))
    };
    assert_eq!(
        row("Unsure"),
        ("uncertain".into(), "UncertainLastUsableValue".into()),
        "{body}"
    );
    assert_eq!(
        row("Broken"),
        ("bad".into(), "BadSensorFailure".into()),
        "{body}"
    );
    assert_eq!(
        row("DoesNotExist"),
        ("bad".into(), "BadNodeIdUnknown".into()),
        "{body}"
    );
    assert_eq!(row("Double").0, "good", "{body}");
    shutdown.cancel();
    let _ = gateway.await;
    drop(child);
    let rs = read();
    let one = |s: &str| {
        let mine = of(&rs, s);
        assert_eq!(mine.len(), 1, "{s}:\n{}", dump(&rs));
        mine[0].clone()
    };
    let double = one("Double");
    assert_eq!(double["quality"], "good");
    assert_eq!(double["value"], 3.25);
    let unsure = one("Unsure");
    assert_eq!(unsure["quality"], "uncertain", "{unsure}");
    assert_eq!(unsure["status"], "UncertainLastUsableValue", "{unsure}");
    assert_eq!(
        unsure["value"], 2.0,
        "the uncertain value is still sent: {unsure}"
    );
    let broken = one("Broken");
    assert_eq!(broken["quality"], "bad", "{broken}");
    assert_eq!(broken["status"], "BadSensorFailure", "{broken}");
    assert!(broken["value"].is_null(), "{broken}");
    let missing = one("DoesNotExist");
    assert_eq!(missing["quality"], "bad", "{missing}");
    assert_eq!(missing["status"], "BadNodeIdUnknown", "{missing}");
    assert!(missing["value"].is_null(), "{missing}");
    assert!(of(&rs, "Counter").iter().all(|r| r["quality"] == "good"));
}
