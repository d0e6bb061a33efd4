//! `tagbridge check` and `tagbridge schema` as an engineer runs them.

use super::support::tagbridge;

/// Every error in tests/fixtures/broken, in the order `check` prints them. Each line names
/// file:line:column, says what is wrong with which value, and how to fix it.
const BROKEN_FIXTURE_ERRORS: &[&str] = &[
    r#"tests/fixtures/broken/duplicates.yaml:6:3: error: field `value` would replace a reading's own member (sensor_id, timestamp and value are set by the gateway; pick another name)"#,
    r#"tests/fixtures/broken/duplicates.yaml:10:16: error: sensor_id `dup:a` is used twice in this file (the first is at line 8)"#,
    r#"tests/fixtures/broken/duplicates.yaml:12:5: error: this tag reads the same node as `dup:a` (line 8; read it once and derive the other value downstream)"#,
    r#"tests/fixtures/broken/duplicates.yaml:16:5: error: key `node` is written twice in this mapping (the first one is at line 15)"#,
    r#"tests/fixtures/broken/durations-and-ranges.yaml:3:15: error: `http://127.0.0.1:4840` is not an OPC UA endpoint (write it as opc.tcp://host:port, e.g. opc.tcp://10.0.0.5:4840)"#,
    r#"tests/fixtures/broken/durations-and-ranges.yaml:7:15: error: `10` has no unit: write it as e.g. `10ms` or `10s`"#,
    r#"tests/fixtures/broken/durations-and-ranges.yaml:10:16: error: `5 mins` has an unknown unit `mins`: use ms, s, m, h or d"#,
    r#"tests/fixtures/broken/durations-and-ranges.yaml:13:12: error: scale 0 would erase every value (use a finite, non-zero factor)"#,
    r#"tests/fixtures/broken/durations-and-ranges.yaml:14:15: error: deadband -1 must be zero or more (it is the smallest change that is sent)"#,
    r#"tests/fixtures/broken/durations-and-ranges.yaml:17:15: error: decimals 20 is more than a float holds (use 0 to 12)"#,
    r#"tests/fixtures/broken/many-in-one-tag.yaml:4:22: error: unknown value `basic256` (expected one of: none, basic256sha256, aes128_sha256_rsaoaep, aes256_sha256_rsapss)"#,
    r#"tests/fixtures/broken/many-in-one-tag.yaml:8:15: error: expected an integer from 0 to 255, found `lots`"#,
    r#"tests/fixtures/broken/many-in-one-tag.yaml:9:16: error: `often` is not a duration: write a number and a unit, e.g. `500ms`, `1s`, `5m`"#,
    r#"tests/fixtures/broken/many-in-one-tag.yaml:10:14: error: expected true or false, found `maybe`"#,
    r#"tests/fixtures/broken/modbus-addresses.yaml:3:10: error: `127.0.0.1` is not host:port (e.g. 10.0.0.7:502; Modbus TCP's usual port is 502)"#,
    r#"tests/fixtures/broken/modbus-addresses.yaml:6:14: error: `address: 40001` needs a `table` (`address` is the 0-based offset sent on the wire; to use the 1-based 40001 notation of PLC manuals, write `modicon: 40001` instead)"#,
    r#"tests/fixtures/broken/modbus-addresses.yaml:8:14: error: `1234` is not a Modicon reference (write 5 or 6 digits whose first names the table: 0 coil, 1 discrete input, 3 input register, 4 holding register, e.g. 40001; for a 0-based offset use `table` + `address`)"#,
    r#"tests/fixtures/broken/modbus-addresses.yaml:10:14: error: `70001` does not start with a table digit (write 5 or 6 digits whose first names the table: 0 coil, 1 discrete input, 3 input register, 4 holding register, e.g. 40001; for a 0-based offset use `table` + `address`)"#,
    r#"tests/fixtures/broken/modbus-addresses.yaml:12:14: error: use either `modicon` or `table` + `address`, not both (`modicon: 40001` is the same register as `table: holding_register, address: 0`)"#,
    r#"tests/fixtures/broken/modbus-addresses.yaml:17:14: error: float64 at address 65534 runs past the last address 65535 (check the address and type)"#,
    r#"tests/fixtures/broken/modbus-addresses.yaml:22:11: error: a coil holds one bit; it cannot be read as float32 (use `type: bool`, or a register table)"#,
    r#"tests/fixtures/broken/modbus-addresses.yaml:26:11: error: a `string` needs `length`, its number of registers (two characters per register, e.g. `length: 10` for up to 20 characters)"#,
    r#"tests/fixtures/broken/modbus-addresses.yaml:30:10: error: `bit: 16` needs a register table, type bool and a bit from 0 to 15 (bit 0 is the least significant bit of the register)"#,
    r#"tests/fixtures/broken/modbus-addresses.yaml:34:11: error: `node` is an OPC UA key, and this tag map reads a Modbus device (address Modbus tags with `table` + `address`, or `modicon`)"#,
    r#"tests/fixtures/broken/opcua-node-ids.yaml:7:11: error: `Line1/Compressor7/VibeX` is not an OPC UA node id (write ns=<index>;s=<name>, ns=<index>;i=<number>, ns=<index>;g=<guid> or ns=<index>;b=<base64>)"#,
    r#"tests/fixtures/broken/opcua-node-ids.yaml:9:11: error: `ns=70000;s=VibeX` is not an OPC UA node id (write ns=<index>;s=<name>, ns=<index>;i=<number>, ns=<index>;g=<guid> or ns=<index>;b=<base64>)"#,
    r#"tests/fixtures/broken/opcua-node-ids.yaml:12:12: error: `table` is a Modbus key, and this tag map reads an OPC UA server (OPC UA tags are addressed with `node`)"#,
    r#"tests/fixtures/broken/opcua-node-ids.yaml:13:5: error: missing required key `node` (OPC UA tags name their node, e.g. `node: ns=2;s=Line1/Compressor7/VibeX`)"#,
    r#"tests/fixtures/broken/syntax-tab.yaml:3:2: error: YAML syntax: tabs disallowed within this context (block indentation) (YAML indents with spaces; replace the tab characters)"#,
    r#"tests/fixtures/broken/unknown-keys.yaml:4:1: error: unknown key `default` (did you mean `defaults`?)"#,
    r#"tests/fixtures/broken/unknown-keys.yaml:7:5: error: unknown key `sensorid` (did you mean `sensor_id`?)"#,
    r#"tests/fixtures/broken/unknown-keys.yaml:10:16: error: sensor_id `press:b` is used in two tag maps (also at tests/fixtures/broken/duplicates.yaml:14; sensor_ids must be unique across all tag maps)"#,
    r#"tests/fixtures/broken/unknown-keys.yaml:13:5: error: unknown key `scle` (did you mean `scale`?)"#,
    r#"tests/fixtures/broken/unknown-keys.yaml:14:5: error: unknown key `colour` (expected one of: sensor_id, enabled, node, queue_size, trigger, server_deadband, elements, table, address, modicon, unit, type, order, bit, length, interval, scale, offset, states, deadband, heartbeat, decimals, fields)"#,
    r#"tests/fixtures/broken/wrong-types.yaml:8:15: error: expected an integer from 0 to 255, found `two`"#,
    r#"tests/fixtures/broken/wrong-types.yaml:12:14: error: expected true or false, found `yes`"#,
    r#"tests/fixtures/broken/wrong-types.yaml:16:11: error: 300 is out of range: expected an integer from 0 to 255"#,
    r#"tests/fixtures/broken/wrong-types.yaml:18:12: error: unknown value `holding_regster` (did you mean `holding_register`?)"#,
];

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn shipped_tag_maps_pass_and_print_a_summary() {
    let out = tagbridge().args(["check", "tag-maps/"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tag-maps/press-3.yaml: Modbus TCP 127.0.0.1:5020, 8 tags"),
        "{stdout}"
    );
    assert!(stdout.contains("total: 2 sources, 13 tags"), "{stdout}");
    assert!(
        stdout.contains("1 Event Hubs throughput unit(s)"),
        "{stdout}"
    );
}

#[test]
fn example_gateway_config_checks_its_tag_maps() {
    let out = tagbridge()
        .args(["check", "-c", "examples/gateway.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn broken_tag_maps_exit_2_with_every_error_at_file_line_column() {
    let out = tagbridge()
        .args(["check", "tests/fixtures/broken/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(errors, BROKEN_FIXTURE_ERRORS, "full output:\n{text}");
    assert!(text.ends_with(&format!(
        "{} error(s); nothing was started.\n",
        BROKEN_FIXTURE_ERRORS.len()
    )));
}

#[test]
fn an_error_shows_the_source_line_and_a_caret() {
    let out = tagbridge()
        .args(["check", "tests/fixtures/broken/wrong-types.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    let expected = "tests/fixtures/broken/wrong-types.yaml:12:14: error: expected true or false, found `yes`\n 12 |     enabled: yes\n    |              ^\n";
    assert!(text.contains(expected), "{text}");
}

#[test]
fn a_broken_gateway_config_is_reported_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "tag_maps: missing-dir\nsink:\n  stdot: {}\ntelemetry:\n  log_format: xml\n",
    )
    .unwrap();
    let out = tagbridge()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    let p = path.display();
    assert!(
        text.contains(&format!(
            "{p}:3:3: error: unknown value `stdot` (did you mean `stdout`?)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{p}:5:15: error: unknown value `xml` (expected one of: human, json)"
        )),
        "{text}"
    );
}

#[test]
fn committed_schemas_match_the_code() {
    let out = tagbridge()
        .args(["schema", "--check", "--dir", "schema"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "schema/ drifted from the Rust types; run `cargo run -- schema`:\n{}",
        stderr(&out)
    );
}

#[test]
fn every_shipped_yaml_points_editors_at_its_schema() {
    for dir in ["tag-maps", "examples"] {
        for entry in std::fs::read_dir(super::support::repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("# yaml-language-server: $schema=../schema/"),
                "{} lacks the `# yaml-language-server: $schema=` first line",
                path.display()
            );
        }
    }
}

/// The examples in docs/tag-maps.md are valid tag maps: the reference cannot drift from the code.
#[test]
fn the_tag_map_reference_examples_pass_check() {
    let doc = std::fs::read_to_string(super::support::repo().join("docs/tag-maps.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for block in doc.split("```yaml\n").skip(1) {
        let Some((yaml, _)) = block.split_once("```") else {
            continue;
        };
        if yaml.contains("\nsource:") || yaml.starts_with("source:") {
            n += 1;
            std::fs::write(dir.path().join(format!("example-{n}.yaml")), yaml).unwrap();
        }
    }
    assert!(n >= 3, "expected the reference's examples, found {n}");
    let out = super::support::tagbridge()
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
