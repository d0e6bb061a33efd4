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
