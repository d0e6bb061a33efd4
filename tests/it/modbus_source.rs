//! The Modbus source against the simulated PLC and against pymodbus as the server.
//!
//! Each test starts its own servers on ephemeral loopback ports and runs the source alone (no
//! mapping stage): what it emits is compared with what the server held. Failures print the
//! source's counters and the last value of every tag.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tagbridge::config::tagmap::{DataType, Table, WordOrder};
use tagbridge::config::Pos;
use tagbridge::mapping::plan::{
    ModbusAddress, ModbusPlan, ModbusTransport, SourcePlan, TagAddress, TagMapPlan, TagPlan,
    Transform,
};
use tagbridge::sample::{RawValue, Sample};
use tagbridge::sim::plc::{ModbusConfig, ModbusPoint, Plc, PlcConfig};
use tagbridge::sim::signal::{Signal, SignalValue};
use tagbridge::source::modbus::{self, ModbusCounters, Tuning};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{python, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);
const ORDERS: [WordOrder; 4] = [
    WordOrder::ABCD,
    WordOrder::CDAB,
    WordOrder::BADC,
    WordOrder::DCBA,
];

/// Short waits so faults and recoveries show within seconds.
fn tuning() -> Tuning {
    Tuning {
        retries: 1,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        quarantine_retry: Duration::from_millis(300),
        quarantine_retry_max: Duration::from_secs(1),
        ..Tuning::default()
    }
}

fn address(unit: u8, table: Table, address: u16, data_type: DataType) -> ModbusAddress {
    ModbusAddress {
        unit,
        table,
        address,
        data_type,
        order: WordOrder::ABCD,
        bit: None,
        length: 1,
    }
}

fn tag_map(
    transport: ModbusTransport,
    addresses: &[ModbusAddress],
    interval: Duration,
) -> TagMapPlan {
    TagMapPlan {
        path: "test.yaml".into(),
        source: SourcePlan::Modbus(ModbusPlan {
            transport,
            timeout: Duration::from_millis(500),
            max_gap: 8,
            connections: std::num::NonZeroU8::MIN,
        }),
        tags: addresses
            .iter()
            .enumerate()
            .map(|(i, a)| TagPlan {
                sensor_id: format!("t{i}:{}:{:?}:{}", a.unit, a.table, a.address).into(),
                address: TagAddress::Modbus(*a),
                interval,
                transform: Transform::default(),
                extra: "".into(),
                pos: Pos { line: 1, col: 1 },
            })
            .collect(),
        disabled: 0,
    }
}

/// The source running alone, its samples collected.
struct Gateway {
    samples: Arc<Mutex<Vec<Sample>>>,
    counters: Arc<ModbusCounters>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    plan: TagMapPlan,
}

impl Gateway {
    fn start(plan: TagMapPlan, tuning: Tuning) -> Gateway {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Capacity 4: the source waits when the collector is behind.
        let (tx, mut rx) = mpsc::channel(4);
        let SourcePlan::Modbus(source) = &plan.source else {
            panic!("not a Modbus tag map")
        };
        let counters = modbus::start(&plan, source, tuning, tx, cancel.child_token(), &tracker);
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&samples);
        // Ends when the source drops its sender (on cancel).
        tracker.spawn(async move {
            while let Some(batch) = rx.recv().await {
                sink.lock().unwrap().extend(batch);
            }
        });
        Gateway {
            samples,
            counters,
            cancel,
            tracker,
            plan,
        }
    }

    fn count(&self, tag: usize) -> usize {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.tag == tag)
            .count()
    }

    fn latest(&self, tag: usize) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.tag == tag)
            .cloned()
    }

    fn total(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Samples of `tag` stamped after `after`.
    fn count_after(&self, tag: usize, after: chrono::DateTime<chrono::Utc>) -> usize {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.tag == tag && s.timestamp > after)
            .count()
    }

    /// What a failing test prints.
    fn report(&self) -> String {
        let mut out = format!("counters: {:?}\n", self.counters.snapshot());
        for (i, tag) in self.plan.tags.iter().enumerate() {
            out.push_str(&format!(
                "  [{i}] {} {:?}: {} samples, last {:?}\n",
                tag.sensor_id,
                tag.address,
                self.count(i),
                self.latest(i).map(|s| s.value)
            ));
        }
        out
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Every numeric type in every order on two units and both register tables, plus strings,
/// packed bits, coils and discrete inputs: (where, the constant served, what must come out).
fn layout() -> Vec<(ModbusAddress, SignalValue, RawValue)> {
    let values: [(DataType, SignalValue, RawValue); 8] = [
        (
            DataType::Int16,
            SignalValue::Int(-12_345),
            RawValue::Int(-12_345),
        ),
        (
            DataType::Uint16,
            SignalValue::Int(0xBEEF),
            RawValue::UInt(0xBEEF),
        ),
        (
            DataType::Int32,
            SignalValue::Int(-0x1234_5678),
            RawValue::Int(-0x1234_5678),
        ),
        (
            DataType::Uint32,
            SignalValue::Int(0x89AB_CDEF),
            RawValue::UInt(0x89AB_CDEF),
        ),
        (
            DataType::Int64,
            SignalValue::Int(-0x0123_4567_89AB_CDEF),
            RawValue::Int(-0x0123_4567_89AB_CDEF),
        ),
        // Above i64::MAX, so a signed decode would show; exact as an f64.
        (
            DataType::Uint64,
            SignalValue::Float((1u64 << 63 | 1u64 << 40) as f64),
            RawValue::UInt(1u64 << 63 | 1u64 << 40),
        ),
        // Exact in f32, so no rounding model is needed.
        (
            DataType::Float32,
            SignalValue::Float(3.25),
            RawValue::Float(3.25),
        ),
        (
            DataType::Float64,
            SignalValue::Float(-12_345.678_901_234),
            RawValue::Float(-12_345.678_901_234),
        ),
    ];
    let mut out = Vec::new();
    for unit in [1u8, 7] {
        for table in [Table::HoldingRegister, Table::InputRegister] {
            let mut at = 100u16;
            for (dt, v, want) in &values {
                for order in ORDERS {
                    let mut a = address(unit, table, at, *dt);
                    a.order = order;
                    out.push((a, v.clone(), want.clone()));
                    at += dt.registers() + 1; // one unused register between tags
                }
            }
            let mut s = address(unit, table, 0, DataType::String);
            s.length = 5;
            out.push((
                s,
                SignalValue::Text("COMP-7A".into()),
                RawValue::Text("COMP-7A".into()),
            ));
            for (bit, on) in [(0u8, true), (1, false), (9, true), (15, true)] {
                let mut b = address(unit, table, 10, DataType::Bool);
                b.bit = Some(bit);
                out.push((b, SignalValue::Bool(on), RawValue::Bool(on)));
            }
        }
        for table in [Table::Coil, Table::DiscreteInput] {
            for (at, on) in [(0u16, true), (1, false), (5, true)] {
                out.push((
                    address(unit, table, at, DataType::Bool),
                    SignalValue::Bool(on),
                    RawValue::Bool(on),
                ));
            }
        }
    }
    out
}

fn points(layout: &[(ModbusAddress, SignalValue, RawValue)]) -> Vec<ModbusPoint> {
    layout
        .iter()
        .map(|(a, v, _)| ModbusPoint {
            unit: a.unit,
            table: a.table,
            address: a.address,
            data_type: Some(a.data_type),
            order: a.order,
            bit: a.bit,
            length: (a.data_type == DataType::String).then_some(a.length),
            signal: Signal::Constant(v.clone()),
        })
        .collect()
}

/// A free loopback port (for the simulator's RTU-over-TCP listener, which takes an address).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until every tag has shown its expected value; panics with the report otherwise.
async fn expect_values(gateway: &Gateway, expected: &[RawValue], what: &str) {
    let ok = wait_until(DEADLINE, || {
        expected
            .iter()
            .enumerate()
            .all(|(i, want)| gateway.latest(i).is_some_and(|s| &s.value == want))
    })
    .await;
    if !ok {
        let wrong: Vec<String> = expected
            .iter()
            .enumerate()
            .filter(|(i, want)| gateway.latest(*i).is_none_or(|s| &s.value != *want))
            .map(|(i, want)| {
                format!(
                    "[{i}] {:?}: want {want:?}, got {:?}",
                    gateway.plan.tags[i].address,
                    gateway.latest(i).map(|s| s.value)
                )
            })
            .collect();
        panic!(
            "{what}: {} tag(s) wrong:\n{}\n{}",
            wrong.len(),
            wrong.join("\n"),
            gateway.report()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_decodes_over_tcp_and_rtu_over_tcp() {
    let layout = layout();
    let rtu_addr = format!("127.0.0.1:{}", free_port());
    let plc = Plc::start(PlcConfig {
        modbus: Some(ModbusConfig {
            listen: Some("127.0.0.1:0".into()),
            rtu_over_tcp_listen: Some(rtu_addr.clone()),
            points: points(&layout),
        }),
        ..Default::default()
    })
    .await
    .expect("simulator starts");
    let addresses: Vec<ModbusAddress> = layout.iter().map(|(a, _, _)| *a).collect();
    let expected: Vec<RawValue> = layout.iter().map(|(_, _, v)| v.clone()).collect();
    let tcp = ModbusTransport::Tcp(plc.modbus_addr().expect("modbus").to_string());
    let tcp = Gateway::start(
        tag_map(tcp, &addresses, Duration::from_millis(200)),
        tuning(),
    );
    let rtu = Gateway::start(
        tag_map(
            ModbusTransport::RtuOverTcp(rtu_addr),
            &addresses,
            Duration::from_millis(200),
        ),
        tuning(),
    );
    expect_values(&tcp, &expected, "Modbus TCP").await;
    expect_values(&rtu, &expected, "RTU over TCP").await;
    // Joined reads: far fewer requests than tags, and no device refusal on the way.
    let c = tcp.counters.snapshot();
    assert_eq!(c.exceptions, 0, "{}", tcp.report());
    assert_eq!(c.quarantined_tags, 0, "{}", tcp.report());
    tcp.stop().await;
    rtu.stop().await;
    plc.shutdown().await;
}

/// What the simulator serves for `v` as `a` (its documented rounding and saturation).
fn served(v: &SignalValue, a: &ModbusAddress) -> RawValue {
    let i = v.as_i64();
    match a.data_type {
        DataType::Bool => RawValue::Bool(v.as_bool()),
        DataType::Int16 => RawValue::Int(i.clamp(i16::MIN.into(), i16::MAX.into())),
        DataType::Int32 => RawValue::Int(i.clamp(i32::MIN.into(), i32::MAX.into())),
        DataType::Int64 => RawValue::Int(i),
        DataType::Uint16 => RawValue::UInt(i.clamp(0, u16::MAX.into()) as u64),
        DataType::Uint32 => RawValue::UInt(i.clamp(0, u32::MAX.into()) as u64),
        DataType::Uint64 => RawValue::UInt(match v {
            SignalValue::Float(f) => f.round().max(0.0) as u64,
            other => other.as_i64().max(0) as u64,
        }),
        DataType::Float32 => RawValue::Float(f64::from(v.as_f64() as f32)),
        DataType::Float64 => RawValue::Float(v.as_f64()),
        DataType::String => {
            let text: String = v
                .as_text()
                .chars()
                .map(|c| if c.is_ascii() { c } else { '?' })
                .take(usize::from(a.length) * 2)
                .collect();
            RawValue::Text(text.into())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_map_with_modicon_addresses_reads_what_the_signals_hold() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("press.yaml");
    std::fs::write(
        &path,
        r#"
source:
  modbus:
    tcp: 127.0.0.1:5020
    timeout: 1s
defaults:
  interval: 200ms
tags:
  - {sensor_id: p:pressure, modicon: "40001", type: float32}
  - {sensor_id: p:temp, table: holding_register, address: 2, type: int16}
  - {sensor_id: p:strokes, table: input_register, address: 0, type: uint32, order: CDAB}
  - {sensor_id: p:energy, table: input_register, address: 2, type: uint64, order: DCBA}
  - {sensor_id: p:big, modicon: "300007", type: int64, order: BADC}
  - {sensor_id: p:ratio, modicon: "40013", type: float64, order: CDAB}
  - {sensor_id: p:guard, modicon: "10001"}
  - {sensor_id: p:pump, modicon: "00003"}
  - {sensor_id: p:run, table: holding_register, address: 10, bit: 3}
  - {sensor_id: p:recipe, table: holding_register, address: 20, type: string, length: 4}
"#,
    )
    .expect("write tag map");
    let mut plans = tagbridge::mapping::load_all(&[path]).expect("tag map compiles");
    let mut config = PlcConfig::from_tag_maps(&plans);
    if let Some(m) = config.modbus.as_mut() {
        m.listen = Some("127.0.0.1:0".into());
    }
    let signals: Vec<Signal> = config
        .modbus
        .as_ref()
        .map(|m| m.points.iter().map(|p| p.signal.clone()).collect())
        .unwrap_or_default();
    let plc = Plc::start(config).await.expect("simulator starts");
    let plan = plans.remove(0);
    let mut plan = plan;
    if let SourcePlan::Modbus(m) = &mut plan.source {
        m.transport = ModbusTransport::Tcp(plc.modbus_addr().expect("modbus").to_string());
    }
    assert_eq!(signals.len(), plan.tags.len());
    let gateway = Gateway::start(plan, tuning());
    let n = gateway.plan.tags.len();
    assert!(
        wait_until(DEADLINE, || (0..n).all(|i| gateway.count(i) >= 3)).await,
        "not every tag was read 3 times:\n{}",
        gateway.report()
    );
    // The server computed each value when the request arrived, a little before the response
    // (the timestamp): accept the signal's value anywhere in the second before.
    let samples = gateway.samples.lock().unwrap().clone();
    for s in &samples {
        let TagAddress::Modbus(a) = &gateway.plan.tags[s.tag].address else {
            unreachable!()
        };
        let t = plc.t_at(s.timestamp);
        let ok = (0..=100u32).any(|k| {
            let at = t.saturating_sub(Duration::from_millis(10) * k);
            served(&signals[s.tag].value_at(at), a) == s.value
        });
        assert!(
            ok,
            "tag {} {a:?} at t={t:?}: got {:?}, the signal held {:?}\n{}",
            gateway.plan.tags[s.tag].sensor_id,
            s.value,
            served(&signals[s.tag].value_at(t), a),
            gateway.report()
        );
    }
    gateway.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_on_one_address_quarantines_only_that_tag() {
    let mut addresses: Vec<ModbusAddress> = (0..20)
        .map(|a| address(1, Table::HoldingRegister, a, DataType::Uint16))
        .collect();
    // Two input registers with a gap the device refuses to read across.
    addresses.push(address(1, Table::InputRegister, 0, DataType::Uint16));
    addresses.push(address(1, Table::InputRegister, 3, DataType::Uint16));
    // A unit the device does not have (a gateway answers 0x0B): skipped, never blocking.
    addresses.push(address(9, Table::HoldingRegister, 0, DataType::Uint16));
    let (bad, unit9) = (7usize, 22usize);
    let layout: Vec<(ModbusAddress, SignalValue, RawValue)> = addresses[..22]
        .iter()
        .map(|a| {
            let v = 1000
                + i64::from(a.address)
                + if a.table == Table::InputRegister {
                    500
                } else {
                    0
                };
            (*a, SignalValue::Int(v), RawValue::UInt(v as u64))
        })
        .collect();
    let plc = Plc::start(PlcConfig {
        modbus: Some(ModbusConfig {
            listen: Some("127.0.0.1:0".into()),
            points: points(&layout),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("simulator starts");
    let faults = plc.faults();
    faults.modbus_exception(
        1,
        Table::HoldingRegister,
        7,
        ExceptionCode::IllegalDataAddress,
    );
    faults.modbus_exception(
        1,
        Table::InputRegister,
        2,
        ExceptionCode::IllegalDataAddress,
    );
    let tcp = ModbusTransport::Tcp(plc.modbus_addr().expect("modbus").to_string());
    let gateway = Gateway::start(
        tag_map(tcp, &addresses, Duration::from_millis(100)),
        tuning(),
    );
    let healthy: Vec<usize> = (0..22).filter(|i| *i != bad).collect();
    let flowing = wait_until(DEADLINE, || {
        healthy.iter().all(|&i| gateway.count(i) >= 5)
            && gateway.counters.snapshot().quarantines >= 1
    })
    .await;
    assert!(
        flowing,
        "healthy tags did not keep flowing:\n{}",
        gateway.report()
    );
    for &i in &healthy {
        assert_eq!(
            gateway.latest(i).map(|s| s.value),
            Some(layout[i].2.clone()),
            "{}",
            gateway.report()
        );
    }
    let c = gateway.counters.snapshot();
    assert_eq!(gateway.count(bad), 0, "{}", gateway.report());
    assert_eq!(gateway.count(unit9), 0, "{}", gateway.report());
    assert_eq!(
        c.quarantines,
        1,
        "only the refused tag: {}",
        gateway.report()
    );
    assert_eq!(c.quarantined_tags, 1, "{}", gateway.report());
    assert!(
        c.skipped_unit_down > 0 || c.exceptions > 2,
        "{}",
        gateway.report()
    );

    // The device accepts it again: the quarantined tag comes back by itself.
    faults.clear_modbus_exceptions();
    let back = wait_until(DEADLINE, || {
        gateway
            .latest(bad)
            .is_some_and(|s| s.value == RawValue::UInt(1007))
            && gateway.counters.snapshot().quarantined_tags == 0
    })
    .await;
    assert!(
        back,
        "the quarantined tag did not come back:\n{}",
        gateway.report()
    );
    gateway.stop().await;
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_goes_dark_comes_back_without_a_restart() {
    let addresses: Vec<ModbusAddress> = (0..4)
        .map(|a| address(1, Table::HoldingRegister, a * 2, DataType::Int32))
        .collect();
    let layout: Vec<(ModbusAddress, SignalValue, RawValue)> = addresses
        .iter()
        .map(|a| {
            let v = -70_000 - i64::from(a.address);
            (*a, SignalValue::Int(v), RawValue::Int(v))
        })
        .collect();
    let config = || PlcConfig {
        modbus: Some(ModbusConfig {
            listen: Some("127.0.0.1:0".into()),
            points: points(&layout),
            ..Default::default()
        }),
        ..Default::default()
    };
    let plc = Plc::start(config()).await.expect("simulator starts");
    // A second, healthy device with its own tag map: it must not notice the first one's outage.
    let other_plc = Plc::start(config()).await.expect("simulator starts");
    let addr = plc.modbus_addr().expect("modbus");
    let mut plan = tag_map(
        ModbusTransport::Tcp(addr.to_string()),
        &addresses,
        Duration::from_millis(100),
    );
    if let SourcePlan::Modbus(m) = &mut plan.source {
        m.timeout = Duration::from_millis(300);
    }
    let gateway = Gateway::start(plan, tuning());
    let other = Gateway::start(
        tag_map(
            ModbusTransport::Tcp(other_plc.modbus_addr().expect("modbus").to_string()),
            &addresses,
            Duration::from_millis(100),
        ),
        tuning(),
    );
    let all_flow = |g: &Gateway, after| (0..4).all(|i| g.count_after(i, after) >= 3);
    let start = chrono::Utc::now();
    assert!(
        wait_until(DEADLINE, || all_flow(&gateway, start)).await,
        "{}",
        gateway.report()
    );

    // 1. Silence: requests time out, the unit backs off, then answers again.
    plc.faults().go_silent(Duration::from_millis(1500));
    assert!(
        wait_until(DEADLINE, || gateway.counters.snapshot().timeouts >= 1).await,
        "no timeout seen:\n{}",
        gateway.report()
    );
    let during = other.total();
    assert!(
        wait_until(DEADLINE, || other.total() >= during + 20).await,
        "the healthy device stalled while the other was dark:\n{}",
        other.report()
    );
    assert!(wait_until(DEADLINE, || !plc.faults().is_silent()).await);
    // Two timeouts of 300 ms in a 100 ms cycle: an overrun, counted.
    assert!(
        gateway.counters.snapshot().overruns >= 1,
        "{}",
        gateway.report()
    );
    let after_silence = chrono::Utc::now();
    assert!(
        wait_until(DEADLINE, || all_flow(&gateway, after_silence)).await,
        "no values after the silence:\n{}",
        gateway.report()
    );

    // 2. Connections dropped by the device: reconnect at once.
    let connects = gateway.counters.snapshot().connects;
    plc.faults().drop_connections();
    let after_drop = chrono::Utc::now();
    assert!(
        wait_until(DEADLINE, || all_flow(&gateway, after_drop)
            && gateway.counters.snapshot().connects > connects)
        .await,
        "no values after the connection was dropped:\n{}",
        gateway.report()
    );

    // 3. The device is gone (connection refused), then starts again on the same address.
    plc.shutdown().await;
    let failures = gateway.counters.snapshot().connect_failures;
    assert!(
        wait_until(DEADLINE, || gateway.counters.snapshot().connect_failures
            > failures + 1)
        .await,
        "the source did not notice the device was gone:\n{}",
        gateway.report()
    );
    let mut again = config();
    if let Some(m) = again.modbus.as_mut() {
        m.listen = Some(addr.to_string());
    }
    let plc = Plc::start(again)
        .await
        .expect("simulator restarts on the same port");
    let after_restart = chrono::Utc::now();
    assert!(
        wait_until(DEADLINE, || all_flow(&gateway, after_restart)).await,
        "no values after the device came back:\n{}",
        gateway.report()
    );
    for (i, (_, _, want)) in layout.iter().enumerate() {
        assert_eq!(gateway.latest(i).map(|s| s.value).as_ref(), Some(want));
    }
    gateway.stop().await;
    other.stop().await;
    plc.shutdown().await;
    other_plc.shutdown().await;
}

/// A pymodbus server process, killed when dropped.
struct PyServer {
    child: tokio::process::Child,
    port: u16,
}

async fn start_pymodbus(points_file: &std::path::Path) -> PyServer {
    let script = crate::support::repo().join("tests/python/modbus_server.py");
    let python = tokio::task::spawn_blocking(python::python)
        .await
        .expect("python venv");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg(points_file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the pymodbus server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("pymodbus server printed its port in time")
        .expect("read its output")
        .expect("a line with the port");
    let port = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the pymodbus server: {line}"));
    PyServer { child, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_decodes_against_pymodbus() {
    let layout = layout();
    let spec: Vec<serde_json::Value> = layout
        .iter()
        .map(|(a, v, _)| {
            let value = match v {
                SignalValue::Bool(b) => json!(b),
                SignalValue::Int(i) => json!(i),
                SignalValue::Float(f) if a.data_type == DataType::Uint64 => json!(*f as u64),
                SignalValue::Float(f) => json!(f),
                other => json!(other.as_text()),
            };
            json!({
                "unit": a.unit, "table": a.table.name(), "address": a.address,
                "type": a.data_type.name(), "order": format!("{:?}", a.order),
                "length": a.length, "bit": a.bit, "value": value,
            })
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("points.json");
    std::fs::write(&file, serde_json::to_vec(&spec).expect("json")).expect("write points");
    let mut server = start_pymodbus(&file).await;
    let addresses: Vec<ModbusAddress> = layout.iter().map(|(a, _, _)| *a).collect();
    let expected: Vec<RawValue> = layout.iter().map(|(_, _, v)| v.clone()).collect();
    let gateway = Gateway::start(
        tag_map(
            ModbusTransport::Tcp(format!("127.0.0.1:{}", server.port)),
            &addresses,
            Duration::from_millis(200),
        ),
        tuning(),
    );
    expect_values(&gateway, &expected, "pymodbus server").await;
    gateway.stop().await;
    let _ = server.child.kill().await;
}

/// Holding register `a` holds `a · 3`; anything else is refused.
struct TimesThree;

impl tokio_modbus::server::Service for TimesThree {
    type Request = tokio_modbus::SlaveRequest<'static>;
    type Response = tokio_modbus::Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<tokio_modbus::Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(match req.request {
            tokio_modbus::Request::ReadHoldingRegisters(a, n) => Ok(
                tokio_modbus::Response::ReadHoldingRegisters((a..a + n).map(|x| x * 3).collect()),
            ),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_rtu_reads_through_a_pseudo_terminal() {
    use tokio_serial::SerialPort;
    // The server owns the pty's master side; the source opens the slave by its path, as it
    // would open /dev/ttyUSB0.
    let (master, mut slave) = tokio_serial::SerialStream::pair().expect("a pseudo terminal");
    // Our end of the slave stays open (a pty master reads EIO once no slave is open), but lets
    // the source take the exclusive lock it takes on a real port.
    slave
        .set_exclusive(false)
        .expect("let the source open it too");
    // SAFETY: a valid open descriptor; dropping our advisory lock has no other effect.
    let unlocked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&slave), libc::LOCK_UN) };
    assert_eq!(unlocked, 0, "cannot release the pty's lock");
    let path = slave.name().expect("the pty's path");
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        tokio_modbus::server::rtu::Server::new(master)
            .serve_until(TimesThree, stop.clone().cancelled_owned()),
    );
    let addresses: Vec<ModbusAddress> = [0u16, 1, 2, 40]
        .iter()
        .map(|a| address(1, Table::HoldingRegister, *a, DataType::Uint16))
        .collect();
    let mut int32 = address(1, Table::HoldingRegister, 10, DataType::Uint32);
    int32.order = WordOrder::CDAB;
    let mut addresses = addresses;
    addresses.push(int32);
    let gateway = Gateway::start(
        tag_map(
            ModbusTransport::Serial {
                port: path,
                baud: 19_200,
                parity: tagbridge::config::tagmap::Parity::Even,
                data_bits: 8,
                stop_bits: 1,
            },
            &addresses,
            Duration::from_millis(100),
        ),
        tuning(),
    );
    // Registers 10, 11 hold 30, 33; CDAB puts 33 in the high word.
    let expected = [0u64, 3, 6, 120, 33 << 16 | 30].map(RawValue::UInt);
    expect_values(&gateway, &expected, "serial RTU").await;
    gateway.stop().await;
    stop.cancel();
    let _ = server.await;
    drop(slave);
}

/// Random refused addresses (in tags and in gaps) over a mixed layout: exactly the tags that
/// contain a refused address are quarantined, every other tag keeps its value flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_refused_addresses_quarantine_exactly_the_tags_that_hold_them() {
    use rand::{Rng, SeedableRng};
    for seed in 0..8u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut addresses = Vec::new();
        let mut at = 0u16;
        for _ in 0..40 {
            let dt = [DataType::Uint16, DataType::Int32, DataType::Float64][rng.gen_range(0..3)];
            addresses.push(address(1, Table::HoldingRegister, at, dt));
            at += dt.registers() + rng.gen_range(0..4);
        }
        let layout: Vec<(ModbusAddress, SignalValue, RawValue)> = addresses
            .iter()
            .map(|a| {
                let v = i64::from(a.address) + 1;
                let want = match a.data_type {
                    DataType::Float64 => RawValue::Float(v as f64),
                    DataType::Int32 => RawValue::Int(v),
                    _ => RawValue::UInt(v as u64),
                };
                (*a, SignalValue::Int(v), want)
            })
            .collect();
        let refused: Vec<u16> = (0..3).map(|_| rng.gen_range(0..at)).collect();
        let holds_refused = |a: &ModbusAddress| {
            refused
                .iter()
                .any(|r| *r >= a.address && *r < a.address + a.count())
        };
        let plc = Plc::start(PlcConfig {
            modbus: Some(ModbusConfig {
                listen: Some("127.0.0.1:0".into()),
                points: points(&layout),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("simulator starts");
        for r in &refused {
            plc.faults().modbus_exception(
                1,
                Table::HoldingRegister,
                *r,
                ExceptionCode::ServerDeviceFailure,
            );
        }
        let gateway = Gateway::start(
            tag_map(
                ModbusTransport::Tcp(plc.modbus_addr().expect("modbus").to_string()),
                &addresses,
                Duration::from_millis(100),
            ),
            tuning(),
        );
        let bad: Vec<usize> = (0..addresses.len())
            .filter(|i| holds_refused(&addresses[*i]))
            .collect();
        let ok = wait_until(DEADLINE, || {
            (0..addresses.len()).all(|i| bad.contains(&i) || gateway.count(i) >= 3)
                && gateway.counters.snapshot().quarantined_tags == bad.len() as u64
        })
        .await;
        assert!(
            ok,
            "seed {seed}, refused {refused:?}, expected quarantined {bad:?}:\n{}",
            gateway.report()
        );
        for (i, (_, _, want)) in layout.iter().enumerate() {
            if bad.contains(&i) {
                assert_eq!(
                    gateway.count(i),
                    0,
                    "seed {seed}, tag {i}\n{}",
                    gateway.report()
                );
            } else {
                assert_eq!(
                    gateway.latest(i).map(|s| s.value).as_ref(),
                    Some(want),
                    "seed {seed}, tag {i}\n{}",
                    gateway.report()
                );
            }
        }
        gateway.stop().await;
        plc.shutdown().await;
    }
}

/// A Modbus TCP server on an ephemeral loopback port, each connection answered by a service
/// from `service`, until the returned token is cancelled.
async fn serve_tcp<S>(
    service: fn() -> S,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<tokio_modbus::server::Terminated>>,
)
where
    S: tokio_modbus::server::Service<Request = tokio_modbus::SlaveRequest<'static>>
        + Send
        + Sync
        + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            let on_connected = move |stream: tokio::net::TcpStream, _peer| async move {
                Ok::<_, std::io::Error>(Some((service(), stream)))
            };
            tokio_modbus::server::tcp::Server::new(listener)
                .serve_until(&on_connected, |_error| {}, stop.cancelled_owned())
                .await
        }
    });
    (addr, stop, server)
}

/// Unit 1 answers (holding register `a` holds `a + 100`); unit 2 never answers, like a dead
/// device behind a gateway.
struct OneDeadUnit;

impl tokio_modbus::server::Service for OneDeadUnit {
    type Request = tokio_modbus::SlaveRequest<'static>;
    /// `None` sends nothing.
    type Response = Option<tokio_modbus::Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Option<tokio_modbus::Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(match (req.slave, req.request) {
            (1, tokio_modbus::Request::ReadHoldingRegisters(a, n)) => Ok(Some(
                tokio_modbus::Response::ReadHoldingRegisters((a..a + n).map(|x| x + 100).collect()),
            )),
            (2, _) => Ok(None),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_unit_behind_a_gateway_backs_off_and_the_live_unit_keeps_flowing() {
    let (addr, stop, server) = serve_tcp(|| OneDeadUnit).await;
    let addresses = vec![
        address(1, Table::HoldingRegister, 0, DataType::Uint16),
        address(1, Table::HoldingRegister, 1, DataType::Uint16),
        address(2, Table::HoldingRegister, 0, DataType::Uint16),
    ];
    let mut plan = tag_map(
        ModbusTransport::Tcp(addr.to_string()),
        &addresses,
        Duration::from_millis(100),
    );
    if let SourcePlan::Modbus(m) = &mut plan.source {
        m.timeout = Duration::from_millis(200);
    }
    // Backoff up to 2 s, as a real deployment would have (30 s by default).
    let gateway = Gateway::start(
        plan,
        Tuning {
            backoff_max: Duration::from_secs(2),
            ..tuning()
        },
    );
    assert!(
        wait_until(DEADLINE, || gateway.count(0) >= 60
            && gateway.count(1) >= 60)
        .await,
        "the live unit stalled:\n{}",
        gateway.report()
    );
    let c = gateway.counters.snapshot();
    assert_eq!(gateway.count(2), 0, "{}", gateway.report());
    assert_eq!(
        gateway.latest(1).map(|s| s.value),
        Some(RawValue::UInt(101))
    );
    // Without the unit's backoff every cycle would spend a timeout or two on it; with it,
    // most cycles skip it.
    assert!(
        c.timeouts >= 1 && c.skipped_unit_down > 0,
        "{}",
        gateway.report()
    );
    assert!(
        c.timeouts * 3 < c.cycles,
        "the dead unit was tried too often:\n{}",
        gateway.report()
    );
    gateway.stop().await;
    stop.cancel();
    let _ = server.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_share_the_reads_of_one_device() {
    let addresses: Vec<ModbusAddress> = (0..600)
        .map(|a| address(1, Table::InputRegister, a, DataType::Uint16))
        .collect();
    let layout: Vec<(ModbusAddress, SignalValue, RawValue)> = addresses
        .iter()
        .map(|a| {
            let v = i64::from(a.address) * 7;
            (*a, SignalValue::Int(v), RawValue::UInt(v as u64))
        })
        .collect();
    let plc = Plc::start(PlcConfig {
        modbus: Some(ModbusConfig {
            listen: Some("127.0.0.1:0".into()),
            points: points(&layout),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("simulator starts");
    let mut plan = tag_map(
        ModbusTransport::Tcp(plc.modbus_addr().expect("modbus").to_string()),
        &addresses,
        Duration::from_millis(100),
    );
    if let SourcePlan::Modbus(m) = &mut plan.source {
        m.connections = std::num::NonZeroU8::new(3).expect("non-zero");
    }
    let gateway = Gateway::start(plan, tuning());
    let expected: Vec<RawValue> = layout.iter().map(|(_, _, v)| v.clone()).collect();
    expect_values(&gateway, &expected, "three connections").await;
    assert!(
        wait_until(DEADLINE, || gateway.counters.snapshot().connected == 3).await,
        "{}",
        gateway.report()
    );
    let counters = Arc::clone(&gateway.counters);
    gateway.stop().await;
    assert_eq!(counters.snapshot().connected, 0, "gauge after shutdown");
    plc.shutdown().await;
}

#[test]
fn connections_are_checked_against_the_transport() {
    let dir = tempfile::tempdir().expect("temp dir");
    let serial = dir.path().join("serial.yaml");
    std::fs::write(
        &serial,
        "source:\n  modbus:\n    serial: {port: /dev/ttyUSB0}\n    connections: 2\ntags:\n  - {sensor_id: a, modicon: \"40001\"}\n",
    )
    .expect("write");
    let zero = dir.path().join("zero.yaml");
    std::fs::write(
        &zero,
        "source:\n  modbus:\n    tcp: 10.0.0.7:502\n    connections: 0\ntags:\n  - {sensor_id: b, modicon: \"40001\"}\n",
    )
    .expect("write");
    let report = tagbridge::mapping::load_all(&[serial, zero])
        .expect_err("both files are invalid")
        .render();
    assert!(
        report.contains("serial.yaml:4:18: error: `connections: 2` on a serial line"),
        "{report}"
    );
    assert!(
        report.contains("zero.yaml:4:18: error: `connections: 0` is out of range"),
        "{report}"
    );
}

/// Unit `u` answers after `(u - 1)²` seconds (unit 1 at once, 2 after 1 s, 3 after 4 s);
/// holding register `a` holds `a + u`.
struct SlowerByUnit;

impl tokio_modbus::server::Service for SlowerByUnit {
    type Request = tokio_modbus::SlaveRequest<'static>;
    type Response = tokio_modbus::Response;
    type Exception = ExceptionCode;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<tokio_modbus::Response, ExceptionCode>> + Send>,
    >;

    fn call(&self, req: Self::Request) -> Self::Future {
        let unit = u16::from(req.slave);
        let request = req.request;
        Box::pin(async move {
            let wait = u64::from(unit.saturating_sub(1).pow(2));
            tokio::time::sleep(Duration::from_secs(wait)).await;
            match request {
                tokio_modbus::Request::ReadHoldingRegisters(a, n) => {
                    Ok(tokio_modbus::Response::ReadHoldingRegisters(
                        (a..a + n).map(|x| x + unit).collect(),
                    ))
                }
                _ => Err(ExceptionCode::IllegalFunction),
            }
        })
    }
}

/// A cycle whose reads take long (a slow device, a serial line) hands over what it has read as
/// it goes: a value does not wait for the responses read after it. Before, a cycle emitted
/// everything at its end, so unit 2's value appeared together with unit 3's, 4 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_cycle_hands_over_its_values_as_it_reads_them() {
    let (addr, stop, server) = serve_tcp(|| SlowerByUnit).await;
    let addresses: Vec<_> = (1..=3)
        .map(|unit| address(unit, Table::HoldingRegister, 0, DataType::Uint16))
        .collect();
    let mut plan = tag_map(
        ModbusTransport::Tcp(addr.to_string()),
        &addresses,
        Duration::from_secs(30),
    );
    if let SourcePlan::Modbus(m) = &mut plan.source {
        m.timeout = Duration::from_secs(10);
    }
    let gateway = Gateway::start(plan, tuning());
    assert!(
        wait_until(DEADLINE, || gateway.count(1) >= 1).await,
        "unit 2's value never came:\n{}",
        gateway.report()
    );
    // Unit 3 answers 4 s after unit 2: its value cannot be here yet unless unit 2's was held.
    assert_eq!(
        gateway.count(2),
        0,
        "unit 2's value waited for unit 3's:\n{}",
        gateway.report()
    );
    assert_eq!(gateway.count(0), 1, "{}", gateway.report());
    assert!(
        wait_until(DEADLINE, || gateway.count(2) >= 1).await,
        "unit 3's value never came:\n{}",
        gateway.report()
    );
    assert_eq!(gateway.latest(2).map(|s| s.value), Some(RawValue::UInt(3)));
    gateway.stop().await;
    stop.cancel();
    let _ = server.await;
}
