//! `tagbridge tags export|import`: tag maps as spreadsheet tables and back, checked like
//! `tagbridge check`; Kepware tag exports imported, served by `sim plc --from` and read end to
//! end by `tagbridge run`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tagbridge::mapping::{load_all, TagMapPlan, TagPlan};

use super::support::{repo, tagbridge, wait_until};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a tag map reads, without positions: equal for equivalent tag maps.
fn meaning(path: &Path) -> (String, Vec<TagPlan>, usize) {
    let plans: Vec<TagMapPlan> = load_all(&[path.to_path_buf()])
        .unwrap_or_else(|report| panic!("{} does not pass check:\n{report}", path.display()));
    let plan = &plans[0];
    let tags = plan
        .tags
        .iter()
        .map(|t| TagPlan {
            pos: Default::default(),
            ..t.clone()
        })
        .collect();
    (format!("{:?}", plan.source), tags, plan.disabled)
}

/// The text of a tag map before its `tags:` line.
fn before_tags(text: &str) -> &str {
    let at = text.find("\ntags:").map_or(0, |i| i + 1);
    &text[..at]
}

/// Every tag map in the docs and README: ```yaml blocks with top-level `source:` and `tags:`.
fn docs_examples() -> Vec<(String, String)> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut rest = text.as_str();
        let mut n = 0;
        while let Some(start) = rest.find("```yaml\n") {
            let body = &rest[start + 8..];
            let Some(end) = body.find("```") else { break };
            let block = &body[..end];
            n += 1;
            let top = |key: &str| block.lines().any(|l| l.starts_with(key));
            if top("source:") && top("tags:") {
                let name = format!("{}#{n}", file.file_name().unwrap().to_string_lossy());
                found.push((name, block.to_string()));
            }
            rest = &body[end + 3..];
        }
    }
    found
}

/// Export → import of `text`, through the CLI, in both separators with and without a byte
/// order mark; the tag map read back means the same, and its text before `tags:` is kept.
fn round_trip(name: &str, text: &str, dir: &Path) {
    let original = dir.join("original.yaml");
    std::fs::write(&original, text).unwrap();
    let expected = meaning(&original);
    for (delimiter, bom) in [("comma", false), ("semicolon", true)] {
        let csv = dir.join("tags.csv");
        let out = tagbridge()
            .args(["tags", "export"])
            .arg(&original)
            .arg("-o")
            .arg(&csv)
            .args(["--delimiter", delimiter])
            .args(if bom { &["--bom"][..] } else { &[] })
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let copy = dir.join("copy.yaml");
        std::fs::write(&copy, text).unwrap();
        let out = tagbridge()
            .args(["tags", "import"])
            .arg(&csv)
            .arg("--into")
            .arg(&copy)
            .output()
            .unwrap();
        let table = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name} ({delimiter}):\n{}\ntable:\n{table}",
            stderr(&out)
        );
        let written = std::fs::read_to_string(&copy).unwrap();
        assert_eq!(
            meaning(&copy),
            expected,
            "{name} ({delimiter}): the tag map read back differs\ntable:\n{table}\nwritten:\n{written}"
        );
        assert_eq!(
            before_tags(&written),
            before_tags(text),
            "{name}: the text outside `tags:` changed"
        );
    }
}

#[test]
fn every_shipped_tag_map_and_docs_example_survives_export_then_import() {
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    let mut shipped: Vec<PathBuf> = std::fs::read_dir(repo().join("tag-maps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    shipped.sort();
    for path in shipped {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        round_trip(&name, &text, dir.path());
        names.push(name);
    }
    let examples = docs_examples();
    for (name, text) in &examples {
        round_trip(name, text, dir.path());
        names.push(name.clone());
    }
    assert!(
        names.len() >= 7,
        "expected the 2 shipped tag maps and at least 5 docs examples, found {names:?}"
    );
}

/// Every error of tests/fixtures/tables/press-3-broken.csv, as `tags import` prints them: the
/// messages of `check`, at file.csv:line:column (column 1 = A), each followed by its cell.
const BROKEN_TABLE_OUTPUT: &str = r#"tests/fixtures/tables/press-3-broken.csv:1:16: error: unknown key `unit_id` (expected one of: sensor_id, enabled, node, queue_size, trigger, server_deadband, elements, members, table, address, modicon, unit, type, order, bit, length, interval, scale, offset, states, deadband, heartbeat, decimals, fields.NAME; a column starting with # is a note)
 1 | column P (`unit_id`): `unit_id`
tests/fixtures/tables/press-3-broken.csv:5:5: error: unknown value `flaot32` (did you mean `float32`?)
 5 | column E (`type`): `flaot32`
tests/fixtures/tables/press-3-broken.csv:6:2: error: use either `modicon` or `table` + `address`, not both (`modicon: 40001` is the same register as `table: holding_register, address: 0`)
 6 | column B (`modicon`): `40007`
tests/fixtures/tables/press-3-broken.csv:7:1: error: sensor_id `press-3:pressure` is used twice in this file (the first is at line 2)
 7 | column A (`sensor_id`): `press-3:pressure`
tests/fixtures/tables/press-3-broken.csv:8:1: error: this tag reads the same address as `press-3:oil_temp` (line 3; read it once and derive the other value downstream)
 8 | column A (`sensor_id`): `press-3:oil_temp_again`
tests/fixtures/tables/press-3-broken.csv:9:8: error: `5 mins` has an unknown unit `mins`: use ms, s, m, h or d
 9 | column H (`interval`): `5 mins`
tests/fixtures/tables/press-3-broken.csv:10:9: error: scale 0 would erase every value (use a finite, non-zero factor)
 10 | column I (`scale`): `0`
tests/fixtures/tables/press-3-broken.csv:11:10: error: YAML syntax: while parsing a flow mapping, did not find expected ',' or '}' (write a YAML flow collection, e.g. `{0: Stopped, 1: Running}`)
 11 | column J (`states`): `{0: Manual, 1: Auto`
tests/fixtures/tables/press-3-broken.csv:12:11: error: deadband -1 must be zero or more (it is the smallest change that is sent)
 12 | column K (`deadband`): `-1`
tests/fixtures/tables/press-3-broken.csv:13:12: error: expected true or false, found `maybe`
 13 | column L (`enabled`): `maybe`
tests/fixtures/tables/press-3-broken.csv:14:2: error: `70001` does not start with a table digit (write 5 or 6 digits whose first names the table: 0 coil, 1 discrete input, 3 input register, 4 holding register, e.g. 40001; for a 0-based offset use `table` + `address`)
 14 | column B (`modicon`): `70001`
tests/fixtures/tables/press-3-broken.csv:15:6: error: `bit: 16` needs a register table, type bool and a bit from 0 to 15 (bit 0 is the least significant bit of the register)
 15 | column F (`bit`): `16`
tests/fixtures/tables/press-3-broken.csv:16:5: error: a `string` needs `length`, its number of registers (two characters per register, e.g. `length: 10` for up to 20 characters)
 16 | column E (`type`): `string`
tests/fixtures/tables/press-3-broken.csv:17:1: error: this row has 4 cells and the header has 16 (check the separators and quotes on this row; the separator is `,`)
tests/fixtures/tables/press-3-broken.csv:18:1: error: sensor_id " press-3:space" has leading/trailing spaces or control characters (downstream queries match sensor_ids exactly; remove them)
 18 | column A (`sensor_id`): ` press-3:space`
tests/fixtures/tables/press-3-broken.csv:19:14: error: field `value` would replace a reading's own member (sensor_id, timestamp and value are set by the gateway; pick another name)
 19 | column N (`fields.value`): `1`
tests/fixtures/tables/press-3-broken.csv:20:5: error: a coil holds one bit; it cannot be read as float32 (use `type: bool`, or a register table)
 20 | column E (`type`): `float32`
17 error(s); nothing was written.
"#;

#[test]
fn a_broken_table_exits_2_with_every_error_pinned_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("press-3.yaml");
    let before = std::fs::read_to_string(repo().join("tag-maps/press-3.yaml")).unwrap();
    std::fs::write(&target, &before).unwrap();
    let out = tagbridge()
        .args([
            "tags",
            "import",
            "tests/fixtures/tables/press-3-broken.csv",
            "--into",
        ])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out), BROKEN_TABLE_OUTPUT);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn a_table_or_tag_map_that_is_not_a_regular_file_is_invalid_input() {
    // A directory stands for every non-regular file (a FIFO would hang a reader, /dev/zero never
    // ends): refused before reading, like `check` does, with exit 2 and nothing written.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("press-3.yaml");
    let before = std::fs::read_to_string(repo().join("tag-maps/press-3.yaml")).unwrap();
    std::fs::write(&target, &before).unwrap();
    let table = dir.path().join("table.csv");
    std::fs::write(&table, "sensor_id,node\na,ns=2;s=A\n").unwrap();
    for (table, into) in [
        (dir.path(), target.as_path()),
        (table.as_path(), dir.path()),
    ] {
        let out = tagbridge()
            .args(["tags", "import"])
            .arg(table)
            .arg("--into")
            .arg(into)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("error: not a regular file (a directory)"),
            "{err}"
        );
        assert!(err.ends_with("1 error(s); nothing was written.\n"), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), before);
}

#[test]
fn a_browse_style_table_becomes_a_new_opcua_tag_map() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("line1.csv");
    std::fs::write(
        &csv,
        "sensor_id;node;enabled;#data type\r\nLine1/Temp;ns=2;s=Line1/Temp;;Double\r\nLine1/Arr;\"ns=2;s=Line1/Arr\";false;Double[]\r\n",
    )
    .unwrap();
    let map = dir.path().join("line1.yaml");
    let out = tagbridge()
        .args(["tags", "import"])
        .arg(&csv)
        .arg("--new")
        .arg(&map)
        .args([
            "--source",
            "opc.tcp://127.0.0.1:4840/",
            "--security",
            "none",
        ])
        .output()
        .unwrap();
    // `ns=2;s=Line1/Temp` unquoted splits the row at its `;`: reported, not guessed.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(":2:1: error: this row has 5 cells and the header has 4"),
        "{}",
        stderr(&out)
    );
    assert!(!map.exists());
    std::fs::write(
        &csv,
        "sensor_id;node;enabled;#data type\r\nLine1/Temp;\"ns=2;s=Line1/Temp\";;Double\r\nLine1/Arr;\"ns=2;s=Line1/Arr\";false;Double[]\r\n",
    )
    .unwrap();
    let out = tagbridge()
        .args(["tags", "import"])
        .arg(&csv)
        .arg("--new")
        .arg(&map)
        .args([
            "--source",
            "opc.tcp://127.0.0.1:4840/",
            "--security",
            "none",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (_, tags, disabled) = meaning(&map);
    assert_eq!(tags.len(), 1);
    assert_eq!(&*tags[0].sensor_id, "Line1/Temp");
    assert_eq!(disabled, 1);
}

/// The readings `tagbridge run` printed, by sensor_id.
type Seen = Arc<Mutex<Vec<serde_json::Value>>>;

/// A Kepware export of a Modbus device (tests/fixtures/tables/kepware-press-3.csv, written
/// from Kepware's documented column set) imported, served by `sim plc --from` and read end to
/// end: every tag delivers, 32- and 64-bit values decode with the word order given, linear
/// scaling is applied, units and descriptions ride along as fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kepware_export_is_imported_served_and_read_end_to_end() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let kepware = repo().join("tests/fixtures/tables/kepware-press-3.csv");
    let import = |map: &Path, source: &str| {
        tagbridge()
            .args(["tags", "import"])
            .arg(&kepware)
            .arg("--new")
            .arg(map)
            .args([
                "--source",
                source,
                "--prefix",
                "press-3:",
                "--word-order",
                "CDAB",
            ])
            .output()
            .unwrap()
    };
    // The simulator serves what the imported tag map reads.
    let sim_map = dir.path().join("sim.yaml");
    let out = import(&sim_map, "modbus://127.0.0.1:1");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["sim", "plc", "--from"])
        .arg(&sim_map)
        .args(["--modbus-listen", "127.0.0.1:0", "--exit-after", "120s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start sim plc");
    let mut lines = tokio::io::BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut modbus = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        if let Some(rest) = line.strip_prefix("modbus: ") {
            modbus = rest.split_whitespace().next().map(String::from);
        }
        if line.starts_with("ready in") {
            break;
        }
    }
    let modbus = modbus.expect("the simulator printed its Modbus address");
    // The gateway reads the same export, imported for the simulator's address.
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    let map = dir.path().join("maps/press-3.yaml");
    let out = import(&map, &format!("modbus://{modbus}"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "tag_maps: maps\nsink:\n  stdout: {}\ntelemetry:\n  metrics: off\n",
    )
    .unwrap();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["run", "-c"])
        .arg(dir.path().join("gateway.yaml"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    let seen: Seen = Arc::default();
    let collector = {
        let seen = Arc::clone(&seen);
        let mut lines = tokio::io::BufReader::new(gateway.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    seen.lock().unwrap().push(v);
                }
            }
        })
    };
    let ids = [
        "press-3:Pressure",
        "press-3:OilTemp",
        "press-3:Strokes",
        "press-3:Energy",
        "press-3:PumpOn",
        "press-3:GuardClosed",
        "press-3:Horn",
        "press-3:Recipe",
        "press-3:Valve.Setpoint",
    ];
    // Changing values twice; a constant (the recipe) once: unchanged values are not re-sent.
    let each_delivered = || {
        let seen = seen.lock().unwrap();
        ids.iter().all(|id| {
            let n = seen.iter().filter(|r| r["sensor_id"] == *id).count();
            n >= if *id == "press-3:Recipe" { 1 } else { 2 }
        })
    };
    let all = wait_until(Duration::from_secs(60), each_delivered).await;
    gateway.start_kill().ok();
    let output = gateway.wait_with_output().await.expect("gateway output");
    let _ = collector.await;
    sim.start_kill().ok();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    let seen = seen.lock().unwrap().clone();
    let map_text = std::fs::read_to_string(&map).unwrap();
    let context = format!(
        "tag map:\n{map_text}\nreadings:\n{}\ngateway log:\n{log}",
        seen.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(all, "not every tag delivered\n{context}");
    let mut wrong = Vec::new();
    for r in &seen {
        let id = r["sensor_id"].as_str().unwrap_or_default();
        let v = &r["value"];
        let f = v.as_f64();
        let ok = match id {
            // Sines between 5 and 150: a wrong word order would decode garbage.
            "press-3:Pressure" | "press-3:Energy" => f.is_some_and(|f| (4.9..=150.1).contains(&f)),
            // Counters from -5: a wrong word order would make them huge.
            "press-3:Strokes" => f.is_some_and(|f| (-5.0..100_000.0).contains(&f)),
            // Raw 0..999 scaled by Kepware's 0..4095 → -50..150: raw = (v + 50) × 4095 / 200.
            "press-3:OilTemp" => f.is_some_and(|f| {
                let raw = (f + 50.0) * 4095.0 / 200.0;
                (raw - raw.round()).abs() < 1e-6 && (0.0..1000.0).contains(&raw.round())
            }),
            // Raw -5.. scaled 0..1000 → 0..100, negated: v = -raw / 10.
            "press-3:Valve.Setpoint" => f.is_some_and(|f| {
                let raw = -f * 10.0;
                (raw - raw.round()).abs() < 1e-6 && (-5.0..1000.0).contains(&raw.round())
            }),
            // Booleans are sent as 1 and 0.
            "press-3:PumpOn" | "press-3:GuardClosed" | "press-3:Horn" => {
                v.as_u64().is_some_and(|b| b <= 1)
            }
            "press-3:Recipe" => v.as_str().is_some_and(|s| s.starts_with("SIM")),
            _ => false,
        };
        if !ok {
            wrong.push(r.to_string());
        }
    }
    assert!(wrong.is_empty(), "unexpected readings {wrong:?}\n{context}");
    let first = |id: &str| {
        seen.iter()
            .find(|r| r["sensor_id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(first("press-3:OilTemp")["unit"], "degC", "{context}");
    assert_eq!(
        first("press-3:Recipe")["description"],
        "Active recipe, \"name\" as on the HMI",
        "{context}"
    );
    let keys: Vec<String> = first("press-3:Horn")
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(keys, ["sensor_id", "timestamp", "value"], "{context}");
}

/// `tagbridge browse --format csv` against the simulated PLC's OPC UA server, then `tags
/// import --new`: the table a user would curate becomes a tag map that `check` accepts, with
/// the same tags as the YAML `browse` writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsed_table_imports_into_the_tag_map_browse_would_write() {
    use tagbridge::sim::plc::{OpcUaConfig, OpcUaType, OpcUaVariable, Plc, PlcConfig};
    use tagbridge::sim::signal::{Signal, SignalValue};
    let var = |path: &str, data_type, value| OpcUaVariable {
        path: path.into(),
        node_id: None,
        data_type,
        enum_strings: None,
        signal: Signal::Constant(value),
    };
    let plc = Plc::start(PlcConfig {
        opcua: Some(OpcUaConfig {
            variables: vec![
                var(
                    "Line1/Press, \"A\"/Temp",
                    OpcUaType::Double,
                    SignalValue::Float(1.5),
                ),
                var("Line1/Run", OpcUaType::Boolean, SignalValue::Bool(true)),
                var("Top", OpcUaType::UInt32, SignalValue::Int(9)),
            ],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("the simulator starts");
    let endpoint = plc.opcua_endpoint().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki").display().to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || tagbridge().args(&args).output().unwrap())
    };
    let path = |name: &str| dir.path().join(name).display().to_string();
    let browse = |format: &str, out: String| {
        let args: Vec<String> = ["browse", &endpoint, "--security", "none", "--pki-dir", &pki]
            .into_iter()
            .map(String::from)
            .chain(["--format".into(), format.into(), "-o".into(), out])
            .collect();
        run(args)
    };
    let out = browse("csv", path("browsed.csv")).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = browse("yaml", path("browsed.yaml")).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    plc.shutdown().await;
    let table = std::fs::read_to_string(path("browsed.csv")).unwrap();
    let args: Vec<String> = [
        "tags",
        "import",
        &path("browsed.csv"),
        "--new",
        &path("imported.yaml"),
        "--source",
        &endpoint,
        "--security",
        "none",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let out = run(args).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{table}", stderr(&out));
    let (_, from_csv, _) = meaning(&dir.path().join("imported.yaml"));
    let (_, from_yaml, _) = meaning(&dir.path().join("browsed.yaml"));
    assert_eq!(from_csv, from_yaml, "table:\n{table}");
    assert_eq!(from_csv.len(), 3, "table:\n{table}");
}
