//! The simulated PLC read by independent clients: pymodbus for Modbus, asyncua for OPC UA.
//! Each test starts its own simulator in-process on ephemeral loopback ports.

use std::time::Duration;

use serde_json::json;
use tagbridge::config::tagmap::{DataType, Table, WordOrder};
use tagbridge::sim::plc::{ModbusConfig, ModbusPoint, Plc, PlcConfig};
use tagbridge::sim::signal::{Signal, SignalValue};

use crate::support::python;

const ORDERS: [(WordOrder, &str); 4] = [
    (WordOrder::ABCD, "ABCD"),
    (WordOrder::CDAB, "CDAB"),
    (WordOrder::BADC, "BADC"),
    (WordOrder::DCBA, "DCBA"),
];

fn point(
    unit: u8,
    table: Table,
    address: u16,
    dt: DataType,
    order: WordOrder,
    v: SignalValue,
) -> ModbusPoint {
    ModbusPoint {
        unit,
        table,
        address,
        data_type: Some(dt),
        order,
        bit: None,
        length: None,
        signal: Signal::Constant(v),
    }
}

fn type_name(dt: DataType) -> &'static str {
    match dt {
        DataType::Bool => "bool",
        DataType::Int16 => "int16",
        DataType::Uint16 => "uint16",
        DataType::Int32 => "int32",
        DataType::Uint32 => "uint32",
        DataType::Int64 => "int64",
        DataType::Uint64 => "uint64",
        DataType::Float32 => "float32",
        DataType::Float64 => "float64",
        DataType::String => "string",
    }
}

/// Every numeric type in every order, on two units and both register tables, plus strings,
/// packed bits, coils and discrete inputs; with the expectations pymodbus must read.
fn layout() -> (Vec<ModbusPoint>, Vec<serde_json::Value>) {
    let values: [(DataType, SignalValue, serde_json::Value); 8] = [
        (DataType::Int16, SignalValue::Int(-12_345), json!(-12_345)),
        (DataType::Uint16, SignalValue::Int(0xBEEF), json!(0xBEEF)),
        (
            DataType::Int32,
            SignalValue::Int(-0x1234_5678),
            json!(-0x1234_5678),
        ),
        (
            DataType::Uint32,
            SignalValue::Int(0x89AB_CDEF),
            json!(0x89AB_CDEFu32),
        ),
        (
            DataType::Int64,
            SignalValue::Int(-0x0123_4567_89AB_CDEF),
            json!(-0x0123_4567_89AB_CDEFi64),
        ),
        (
            DataType::Uint64,
            SignalValue::Int(0x7EDC_BA98_7654_3210),
            json!(0x7EDC_BA98_7654_3210u64),
        ),
        // 3.25 is exact in f32, so the expectation needs no rounding model.
        (DataType::Float32, SignalValue::Float(3.25), json!(3.25)),
        (
            DataType::Float64,
            SignalValue::Float(-12_345.678_901_234),
            json!(-12_345.678_901_234),
        ),
    ];
    let mut points = Vec::new();
    let mut expect = Vec::new();
    for unit in [1u8, 7] {
        for table in [Table::HoldingRegister, Table::InputRegister] {
            let mut address = 100u16;
            for (dt, v, want) in &values {
                for (order, order_name) in ORDERS {
                    points.push(point(unit, table, address, *dt, order, v.clone()));
                    expect.push(json!({
                        "unit": unit, "table": table.name(), "address": address,
                        "type": type_name(*dt), "order": order_name, "expected": want,
                    }));
                    address += dt.registers() + 1; // a gap of one register between points
                }
            }
            let mut s = point(
                unit,
                table,
                0,
                DataType::String,
                WordOrder::ABCD,
                SignalValue::Text("COMP-7A".into()),
            );
            s.length = Some(5);
            points.push(s);
            expect.push(json!({"unit": unit, "table": table.name(), "address": 0, "type": "string", "length": 5, "expected": "COMP-7A"}));
            for (bit, on) in [(0u8, true), (1, false), (9, true), (15, true)] {
                let mut b = point(
                    unit,
                    table,
                    10,
                    DataType::Bool,
                    WordOrder::ABCD,
                    SignalValue::Bool(on),
                );
                b.bit = Some(bit);
                points.push(b);
                expect.push(json!({"unit": unit, "table": table.name(), "address": 10, "type": "bool", "bit": bit, "expected": on}));
            }
            // Beyond the last point, and a unit that does not exist.
            expect.push(json!({"unit": unit, "table": table.name(), "address": address + 50, "count": 1, "exception": 2}));
        }
        for table in [Table::Coil, Table::DiscreteInput] {
            for (address, on) in [(0u16, true), (1, false), (5, true)] {
                points.push(point(
                    unit,
                    table,
                    address,
                    DataType::Bool,
                    WordOrder::ABCD,
                    SignalValue::Bool(on),
                ));
                expect.push(json!({"unit": unit, "table": table.name(), "address": address, "type": "bool", "expected": on}));
            }
            expect.push(json!({"unit": unit, "table": table.name(), "address": 6, "count": 1, "exception": 2}));
        }
    }
    expect.push(json!({"unit": 3, "table": "holding_register", "address": 100, "count": 1, "exception": 11}));
    (points, expect)
}

async fn start_modbus(points: Vec<ModbusPoint>) -> tagbridge::sim::plc::PlcHandle {
    Plc::start(PlcConfig {
        modbus: Some(ModbusConfig {
            listen: Some("127.0.0.1:0".into()),
            points,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("the simulator starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_reads_every_type_and_order_as_documented() {
    let (points, expect) = layout();
    let plc = start_modbus(points).await;
    let addr = plc.modbus_addr().expect("modbus is configured");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("expect.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&expect).unwrap()).unwrap();
    let out = python::run_script_async(
        "sim_modbus_read.py",
        &[
            "127.0.0.1",
            &addr.port().to_string(),
            file.to_str().unwrap(),
        ],
    )
    .await;
    python::assert_success("pymodbus reading the simulator", &out);
    plc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_values_follow_the_signal_clock() {
    let counter = Signal::Counter {
        start: 0,
        step: 1,
        wrap: None,
        update: Some(tagbridge::config::duration::HumanDuration(
            Duration::from_millis(100),
        )),
    };
    let mut p = point(
        1,
        Table::HoldingRegister,
        0,
        DataType::Uint32,
        WordOrder::ABCD,
        SignalValue::Int(0),
    );
    p.signal = counter.clone();
    let plc = start_modbus(vec![p]).await;
    let addr = plc.modbus_addr().unwrap();
    let before = plc.elapsed();
    let out = python::run_script_async(
        "sim_modbus_clock.py",
        &["127.0.0.1", &addr.port().to_string()],
    )
    .await;
    let after = plc.elapsed();
    python::assert_success("pymodbus sampling a counter", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    let values: Vec<i64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(values.len() >= 5, "too few samples: {text}");
    let lo = counter.value_at(before).as_i64();
    let hi = counter.value_at(after).as_i64();
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "a counter never goes back: {values:?}"
    );
    assert!(
        values.iter().all(|v| (lo..=hi).contains(v)),
        "values {values:?} outside what the PLC held between {lo} and {hi}"
    );
    assert!(
        values.last() > values.first(),
        "the counter moved: {values:?}"
    );
    plc.shutdown().await;
}

mod faults {
    use super::*;
    use tokio_modbus::client::{tcp, Reader};
    use tokio_modbus::{ExceptionCode, Slave};

    async fn one_register() -> tagbridge::sim::plc::PlcHandle {
        start_modbus(vec![point(
            1,
            Table::HoldingRegister,
            0,
            DataType::Uint16,
            WordOrder::ABCD,
            SignalValue::Int(42),
        )])
        .await
    }

    #[tokio::test]
    async fn dropped_connections_fail_and_reconnect() {
        let plc = one_register().await;
        let addr = plc.modbus_addr().unwrap();
        let mut ctx = tcp::connect_slave(addr, Slave(1)).await.unwrap();
        assert_eq!(
            ctx.read_holding_registers(0, 1).await.unwrap(),
            Ok(vec![42])
        );
        plc.faults().drop_connections();
        let after = tokio::time::timeout(Duration::from_secs(5), ctx.read_holding_registers(0, 1))
            .await
            .expect("a dropped connection fails fast, it does not hang");
        assert!(after.is_err(), "the old connection is closed: {after:?}");
        let mut again = tcp::connect_slave(addr, Slave(1)).await.unwrap();
        assert_eq!(
            again.read_holding_registers(0, 1).await.unwrap(),
            Ok(vec![42])
        );
        plc.shutdown().await;
    }

    #[tokio::test]
    async fn silence_times_out_then_answers_again() {
        let plc = one_register().await;
        let addr = plc.modbus_addr().unwrap();
        let mut ctx = tcp::connect_slave(addr, Slave(1)).await.unwrap();
        plc.faults().go_silent(Duration::from_secs(60));
        let silent =
            tokio::time::timeout(Duration::from_millis(500), ctx.read_holding_registers(0, 1))
                .await;
        assert!(silent.is_err(), "no answer while silent: {silent:?}");
        plc.faults().end_silence();
        // A fresh connection: the old one holds an unanswered transaction.
        let mut again = tcp::connect_slave(addr, Slave(1)).await.unwrap();
        assert_eq!(
            again.read_holding_registers(0, 1).await.unwrap(),
            Ok(vec![42])
        );
        plc.shutdown().await;
    }

    #[tokio::test]
    async fn exceptions_on_demand_for_chosen_addresses() {
        let plc = one_register().await;
        let addr = plc.modbus_addr().unwrap();
        let mut ctx = tcp::connect_slave(addr, Slave(1)).await.unwrap();
        plc.faults().modbus_exception(
            1,
            Table::HoldingRegister,
            0,
            ExceptionCode::ServerDeviceFailure,
        );
        assert_eq!(
            ctx.read_holding_registers(0, 1).await.unwrap(),
            Err(ExceptionCode::ServerDeviceFailure)
        );
        // Other tables of the same address are untouched; clearing restores the value.
        assert_eq!(
            ctx.read_input_registers(0, 1).await.unwrap(),
            Err(ExceptionCode::IllegalDataAddress)
        );
        plc.faults().clear_modbus_exceptions();
        assert_eq!(
            ctx.read_holding_registers(0, 1).await.unwrap(),
            Ok(vec![42])
        );
        plc.shutdown().await;
    }

    #[tokio::test]
    async fn scheduled_faults_from_config() {
        let yaml = "modbus:\n  listen: 127.0.0.1:0\n  points:\n    - {table: holding_register, address: 0, signal: {constant: 42}}\n\
                    faults:\n  - {at: 300ms, fault: {modbus_exception: {table: holding_register, address: 0, code: 6, duration: 500ms}}}\n";
        let tagbridge::config::de::Parsed {
            value: config,
            problems,
            ..
        } = tagbridge::config::parse_str::<PlcConfig>(yaml);
        assert!(problems.is_empty(), "{problems:?}");
        let plc = Plc::start(config.unwrap()).await.unwrap();
        let mut ctx = tcp::connect_slave(plc.modbus_addr().unwrap(), Slave(1))
            .await
            .unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let r = ctx.read_holding_registers(0, 1).await.unwrap();
            if seen.last() != Some(&r) {
                seen.push(r);
            }
            if seen.len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            seen,
            [
                Ok(vec![42]),
                Err(ExceptionCode::ServerDeviceBusy),
                Ok(vec![42])
            ],
            "value, then the scheduled exception, then the value again"
        );
        plc.shutdown().await;
    }
}

#[test]
fn the_shipped_example_config_parses() {
    let config: PlcConfig =
        tagbridge::config::load_file(&crate::support::repo().join("examples/sim-plc.yaml"))
            .unwrap_or_else(|report| panic!("{}", report.render()));
    assert!(config.opcua.is_some() && config.modbus.is_some());
}

mod opcua {
    use super::*;
    use tagbridge::config::duration::HumanDuration;
    use tagbridge::sim::plc::{OpcUaConfig, OpcUaType, OpcUaUser, OpcUaVariable};

    fn var(path: &str, ty: OpcUaType, signal: Signal) -> OpcUaVariable {
        OpcUaVariable {
            path: path.into(),
            node_id: None,
            data_type: ty,
            enum_strings: None,
            signal,
        }
    }

    fn c(v: SignalValue) -> Signal {
        Signal::Constant(v)
    }

    fn counter() -> Signal {
        Signal::Counter {
            start: 10,
            step: 3,
            wrap: None,
            update: Some(HumanDuration(Duration::from_millis(200))),
        }
    }

    fn config(pki: &std::path::Path) -> OpcUaConfig {
        use SignalValue::*;
        OpcUaConfig {
            pki_dir: Some(pki.to_path_buf()),
            users: vec![OpcUaUser {
                username: "operator".into(),
                password: "s3cret".into(),
            }],
            variables: vec![
                var(
                    "Line1/Compressor7/Running",
                    OpcUaType::Boolean,
                    c(Bool(true)),
                ),
                var("Line1/Compressor7/I16", OpcUaType::Int16, c(Int(-1234))),
                var(
                    "Line1/Compressor7/I32",
                    OpcUaType::Int32,
                    c(Int(-123_456_789)),
                ),
                var(
                    "Line1/Compressor7/I64",
                    OpcUaType::Int64,
                    c(Int(-9_000_000_000)),
                ),
                var("Line1/Compressor7/U16", OpcUaType::UInt16, c(Int(65_000))),
                var(
                    "Line1/Compressor7/U32",
                    OpcUaType::UInt32,
                    c(Int(4_000_000_000)),
                ),
                var(
                    "Line1/Compressor7/U64",
                    OpcUaType::UInt64,
                    c(Int(9_000_000_000_000)),
                ),
                var("Line1/Compressor7/VibeX", OpcUaType::Float, c(Float(4.25))),
                var(
                    "Line1/Compressor7/Temp",
                    OpcUaType::Double,
                    c(Float(-273.15)),
                ),
                var(
                    "Line1/Compressor7/Model",
                    OpcUaType::String,
                    c(Text("GA-37".into())),
                ),
                var(
                    "Line1/Compressor7/State",
                    OpcUaType::Enum,
                    Signal::States {
                        names: vec!["Stopped".into(), "Running".into(), "Fault".into()],
                        period: HumanDuration(Duration::from_secs(3600)),
                    },
                ),
                var("Line1/Compressor7/Starts", OpcUaType::UInt32, counter()),
            ],
            ..Default::default()
        }
    }

    fn expectations() -> serde_json::Value {
        let n = |s: &str| format!("ns=2;s=Line1/Compressor7/{s}");
        json!([
            {"node": n("Running"), "type": "Boolean", "value": true},
            {"node": n("I16"), "type": "Int16", "value": -1234},
            {"node": n("I32"), "type": "Int32", "value": -123_456_789},
            {"node": n("I64"), "type": "Int64", "value": -9_000_000_000i64},
            {"node": n("U16"), "type": "UInt16", "value": 65_000},
            {"node": n("U32"), "type": "UInt32", "value": 4_000_000_000u32},
            {"node": n("U64"), "type": "UInt64", "value": 9_000_000_000_000u64},
            {"node": n("VibeX"), "type": "Float", "value": 4.25},
            {"node": n("Temp"), "type": "Double", "value": -273.15},
            {"node": n("Model"), "type": "String", "value": "GA-37"},
            {"node": n("State"), "type": "Int32", "value": 0, "enum_strings": ["Stopped", "Running", "Fault"]},
        ])
    }

    /// Runs the asyncua client with `spec`; returns the data changes it printed.
    async fn run_client(
        mut spec: serde_json::Value,
        dir: &std::path::Path,
    ) -> Vec<serde_json::Value> {
        spec["workdir"] = json!(dir.to_str().unwrap());
        let file = dir.join("spec.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        let out = python::run_script_async("sim_opcua_client.py", &[file.to_str().unwrap()]).await;
        python::assert_success("asyncua against the simulator", &out);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asyncua_reads_every_type_and_subscribes_to_signal_values() {
        let dir = tempfile::tempdir().unwrap();
        let plc = Plc::start(PlcConfig {
            opcua: Some(config(&dir.path().join("pki"))),
            ..Default::default()
        })
        .await
        .expect("the simulator starts");
        let endpoint = plc.opcua_endpoint().unwrap();
        assert!(endpoint.starts_with("opc.tcp://127.0.0.1:"), "{endpoint}");
        let changes = run_client(
            json!({
                "endpoint": endpoint,
                "security": "none",
                "expect": expectations(),
                "subscribe": {"node": "ns=2;s=Line1/Compressor7/Starts", "seconds": 1.5},
            }),
            dir.path(),
        )
        .await;
        let signal = counter();
        assert!(changes.len() >= 4, "too few data changes: {changes:?}");
        for change in &changes {
            let ts: chrono::DateTime<chrono::Utc> = change["source_timestamp"]
                .as_str()
                .and_then(|s| {
                    chrono::DateTime::parse_from_rfc3339(s).ok().or_else(|| {
                        chrono::DateTime::parse_from_rfc3339(&format!("{s}+00:00")).ok()
                    })
                })
                .map(|d| d.with_timezone(&chrono::Utc))
                .unwrap_or_else(|| panic!("bad timestamp in {change}"));
            // Source timestamps are the instants the values became valid: exact multiples.
            let t = plc.t_at(ts) + Duration::from_micros(500);
            assert_eq!(
                change["value"].as_i64(),
                Some(signal.value_at(t).as_i64()),
                "the value at {ts} (t = {t:?}) is what the signal held: {change}"
            );
        }
        let values: Vec<i64> = changes.iter().filter_map(|c| c["value"].as_i64()).collect();
        assert!(
            values.windows(2).all(|w| w[1] > w[0]),
            "every change is new: {values:?}"
        );
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn basic256sha256_sign_and_encrypt_with_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let plc = Plc::start(PlcConfig {
            opcua: Some(config(&dir.path().join("pki"))),
            ..Default::default()
        })
        .await
        .unwrap();
        let endpoint = plc.opcua_endpoint().unwrap();
        let user = json!({"username": "operator", "password": "s3cret"});
        let one =
            json!([{"node": "ns=2;s=Line1/Compressor7/Temp", "type": "Double", "value": -273.15}]);
        for security in ["sign_encrypt", "sign"] {
            run_client(
                json!({"endpoint": endpoint, "security": security, "user": user, "expect": one}),
                dir.path(),
            )
            .await;
        }
        // A wrong password is refused: the script must fail.
        let file = dir.path().join("bad.json");
        let bad = json!({"endpoint": endpoint, "security": "none", "workdir": dir.path(),
            "user": {"username": "operator", "password": "wrong"}, "expect": one});
        std::fs::write(&file, bad.to_string()).unwrap();
        let out = python::run_script_async("sim_opcua_client.py", &[file.to_str().unwrap()]).await;
        assert!(!out.status.success(), "a wrong password must be refused");
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_drops_connections_and_serves_again_on_the_same_endpoint() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let plc = Plc::start(PlcConfig {
            opcua: Some(config(&dir.path().join("pki"))),
            ..Default::default()
        })
        .await
        .unwrap();
        let endpoint = plc.opcua_endpoint().unwrap();
        let addr = endpoint
            .trim_start_matches("opc.tcp://")
            .trim_end_matches('/')
            .to_string();
        // A client connection open across the restart (OPC UA waits for the client's Hello).
        let mut old = tokio::net::TcpStream::connect(&addr).await.unwrap();
        plc.faults()
            .restart_opcua()
            .await
            .expect("the server restarts");
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), old.read(&mut buf))
            .await
            .expect("the old connection is closed, not left hanging");
        assert!(
            matches!(closed, Ok(0) | Err(_)),
            "the old connection ended: {closed:?}"
        );
        assert_eq!(plc.opcua_endpoint().unwrap(), endpoint, "same endpoint");
        let one =
            json!([{"node": "ns=2;s=Line1/Compressor7/Temp", "type": "Double", "value": -273.15}]);
        run_client(
            json!({"endpoint": endpoint, "security": "none", "expect": one}),
            dir.path(),
        )
        .await;
        plc.shutdown().await;
    }
}

/// `tagbridge sim plc --from`: serves exactly what tag maps read, and prints its endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_serves_what_tag_maps_read() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("drive.yaml"),
        "source: {modbus: {tcp: \"127.0.0.1:1\"}}\ntags:\n\
         - {sensor_id: drive:name, table: holding_register, address: 0, type: string, length: 4}\n\
         - {sensor_id: drive:speed, table: holding_register, address: 8, type: float32, order: CDAB}\n\
         - {sensor_id: drive:ok, unit: 3, table: coil, address: 2}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("line1.yaml"),
        "source: {opcua: {endpoint: \"opc.tcp://127.0.0.1:1/\", security_policy: none}}\ntags:\n\
         - {sensor_id: c7:vibe_x, node: \"ns=2;s=Line1/Compressor7/VibeX\"}\n\
         - {sensor_id: c7:state, node: \"ns=2;s=Line1/Compressor7/State\", states: {0: Stopped, 1: Running, 2: Fault}}\n",
    )
    .unwrap();
    let mut child = crate::support::tagbridge()
        .args(["sim", "plc", "--from"])
        .arg(dir.path())
        .args([
            "--modbus-listen",
            "127.0.0.1:0",
            "--opcua-port",
            "0",
            "--exit-after",
            "60s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tagbridge runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let (mut opcua, mut modbus) = (None, None);
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let word = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|r| r.split_whitespace().next())
                .map(String::from)
        };
        opcua = opcua.or(word("opcua: "));
        modbus = modbus.or(word("modbus: "));
        if line.starts_with("ready in") {
            break;
        }
    }
    let (Some(opcua), Some(modbus)) = (opcua, modbus) else {
        let _ = child.kill();
        panic!("the simulator did not print both endpoints");
    };
    let port = modbus.rsplit(':').next().unwrap().to_string();
    let expect = json!([
        {"unit": 1, "table": "holding_register", "address": 0, "type": "string", "length": 4, "expected": "SIM1"},
        {"unit": 1, "table": "holding_register", "address": 8, "type": "float32", "order": "CDAB", "expected": null},
        {"unit": 3, "table": "coil", "address": 2, "type": "bool", "expected": null},
        {"unit": 1, "table": "holding_register", "address": 10, "count": 1, "exception": 2},
    ]);
    let file = dir.path().join("expect.json");
    std::fs::write(&file, expect.to_string()).unwrap();
    let modbus_out = python::run_script_async(
        "sim_modbus_read.py",
        &["127.0.0.1", &port, file.to_str().unwrap()],
    )
    .await;
    let spec = json!({
        "endpoint": opcua, "security": "none", "workdir": dir.path(),
        "expect": [
            {"node": "ns=2;s=Line1/Compressor7/VibeX", "type": "Double"},
            {"node": "ns=2;s=Line1/Compressor7/State", "type": "Int32", "enum_strings": ["Stopped", "Running", "Fault"]},
        ],
    });
    let file = dir.path().join("spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let opcua_out =
        python::run_script_async("sim_opcua_client.py", &[file.to_str().unwrap()]).await;
    let _ = child.kill();
    let _ = child.wait();
    python::assert_success("pymodbus against `sim plc --from`", &modbus_out);
    python::assert_success("asyncua against `sim plc --from`", &opcua_out);
}
