//! `tagbridge check` and `tagbridge schema` as an engineer runs them.

use super::support::tagbridge;

/// Every error in tests/fixtures/broken, in the order `check` prints them. Each line names
/// file:line:column, says what is wrong with which value, and how to fix it.
const BROKEN_FIXTURE_ERRORS: &[&str] = &[
    r#"tests/fixtures/broken/alias-bomb.yaml:6:45: error: aliases expand to more than 100000 nodes (write the repeated parts out, or use fewer nested aliases)"#,
    r#"tests/fixtures/broken/control-character.yaml:4:24: error: the file holds the control character U+0000 (a NUL byte), which YAML does not allow (is it a text file? remove the character)"#,
    r#"tests/fixtures/broken/deep-nesting.yaml:2:129: error: lists and mappings are nested more than 64 levels deep (tag maps and gateway.yaml need only a few levels)"#,
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
    r#"tests/fixtures/broken/events.yaml:8:16: error: sensor_id `alarms:{SourceName` has a `{` that is not closed (write text with event fields in braces, e.g. `line1:{SourceName}:{ConditionName}`; `{{` and `}}` write a brace)"#,
    r#"tests/fixtures/broken/events.yaml:9:15: error: notifier `Server` is not an OPC UA node id (the Server object is i=2253; an area or object is written like a tag's node, e.g. ns=2;s=Line1)"#,
    r#"tests/fixtures/broken/events.yaml:10:13: error: unknown event type `AlarmCondtionType` (did you mean `AlarmConditionType`?)"#,
    r#"tests/fixtures/broken/events.yaml:12:7: error: field `value` would replace an event reading's own member (sensor_id, timestamp, value and refresh are set by the gateway; pick another name)"#,
    r#"tests/fixtures/broken/events.yaml:13:7: error: field `site` is also one of the tag map's `fields` (a reading cannot carry the same member twice; rename one)"#,
    r#"tests/fixtures/broken/events.yaml:14:14: error: `2:Batch//Id` is not an event field's browse path (write browse names separated by `/`, with the namespace index before a colon where it is not 0, e.g. `ActiveState/Id` or `2:BatchId`)"#,
    r#"tests/fixtures/broken/events.yaml:15:12: error: unknown value `status` (did you mean `state`?)"#,
    r#"tests/fixtures/broken/events.yaml:16:17: error: queue_size must be at least 1 (leave it out for 1000 events between publishes)"#,
    r#"tests/fixtures/broken/events.yaml:17:16: error: `{}` in sensor_id `alarms:{}` is not an event field's browse path (write text with event fields in braces, e.g. `line1:{SourceName}:{ConditionName}`; `{{` and `}}` write a brace)"#,
    r#"tests/fixtures/broken/events.yaml:18:13: error: unknown event type `Nothing` (write a standard type such as AlarmConditionType or OffNormalAlarmType, or a custom type's node id, e.g. ns=2;i=5001)"#,
    r#"tests/fixtures/broken/events.yaml:21:16: error: sensor_id `alarms:area` is used twice in this file (the first is at line 19)"#,
    r#"tests/fixtures/broken/events.yaml:23:13: error: `fields` is empty (leave it out for the default members, or list at least one, e.g. `severity: Severity`)"#,
    r#"tests/fixtures/broken/events.yaml:25:16: error: sensor_id `alarms:area` is also the sensor_id of the event subscription at line 19 (a tag's readings and an event subscription's need names of their own)"#,
    r#"tests/fixtures/broken/limits.yaml:4:13: error: deadband -1 must be zero or more (it is the smallest change that is sent)"#,
    r#"tests/fixtures/broken/limits.yaml:5:13: error: decimals 20 is more than a float holds (use 0 to 12)"#,
    r#"tests/fixtures/broken/limits.yaml:7:60: error: offset -inf is not a finite number (use a finite number)"#,
    r#"tests/fixtures/broken/limits.yaml:8:58: error: scale inf is not a finite number (use a finite, non-zero factor)"#,
    r#"tests/fixtures/broken/limits.yaml:9:17: error: sensor_id is 300 bytes long; at most 256 are allowed (a sensor_id names a tag; keep it short, e.g. `compressor-7:vibe_x`)"#,
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
    r#"tests/fixtures/broken/modbus-events.yaml:5:3: error: `events` are OPC UA event subscriptions, and this tag map reads a Modbus device (Modbus has no events; read the alarm bit as a tag, with `states:` for its names)"#,
    r#"tests/fixtures/broken/opcua-events-elsewhere.yaml:6:16: error: sensor_id `alarms:area` is used in two tag maps (also at tests/fixtures/broken/events.yaml:19; sensor_ids must be unique across all tag maps)"#,
    r#"tests/fixtures/broken/opcua-node-ids.yaml:7:11: error: `Line1/Compressor7/VibeX` is not an OPC UA node id (write ns=<index>;s=<name>, nsu=<namespace URI>;s=<name>, ns=<index>;i=<number>, ns=<index>;g=<guid> or ns=<index>;b=<base64>)"#,
    r#"tests/fixtures/broken/opcua-node-ids.yaml:9:11: error: `ns=70000;s=VibeX` is not an OPC UA node id (write ns=<index>;s=<name>, nsu=<namespace URI>;s=<name>, ns=<index>;i=<number>, ns=<index>;g=<guid> or ns=<index>;b=<base64>)"#,
    r#"tests/fixtures/broken/opcua-node-ids.yaml:12:12: error: `table` is a Modbus key, and this tag map reads an OPC UA server (OPC UA tags are addressed with `node`)"#,
    r#"tests/fixtures/broken/opcua-node-ids.yaml:13:5: error: missing required key `node` (OPC UA tags name their node, e.g. `node: ns=2;s=Line1/Compressor7/VibeX`)"#,
    r#"tests/fixtures/broken/structures.yaml:6:12: error: `scale` on a structure tag has no value to act on (put it on the field it is for, under `members:`, e.g. `members: {temperature: {scale: …}}`)"#,
    r#"tests/fixtures/broken/structures.yaml:9:7: error: `setpoints[x]`: `[x]` is not an array index from 0 to 1000000 (write a field path: `name`, `outer.inner`, or `array[0].name`)"#,
    r#"tests/fixtures/broken/structures.yaml:10:7: error: `stage..duration` has an empty field name (write a field path: `name`, `outer.inner`, or `array[0].name`)"#,
    r#"tests/fixtures/broken/structures.yaml:11:7: error: `states` needs at least one entry and no empty names (e.g. `states: {0: Stopped, 1: Running}`)"#,
    r#"tests/fixtures/broken/structures.yaml:14:14: error: `members` needs at least one field (list the fields to read, e.g. `members: {temperature: {}, state: {}}`; `tagbridge browse` writes them all)"#,
    r#"tests/fixtures/broken/structures.yaml:19:16: error: sensor_id `press-3:other.temperature` is used twice in this file (the first is at line 18)"#,
    r#"tests/fixtures/broken/syntax-tab.yaml:3:2: error: YAML syntax: tabs disallowed within this context (block indentation) (YAML indents with spaces; replace the tab characters)"#,
    r#"tests/fixtures/broken/unknown-keys.yaml:4:1: error: unknown key `default` (did you mean `defaults`?)"#,
    r#"tests/fixtures/broken/unknown-keys.yaml:7:5: error: unknown key `sensorid` (did you mean `sensor_id`?)"#,
    r#"tests/fixtures/broken/unknown-keys.yaml:10:16: error: sensor_id `press:b` is used in two tag maps (also at tests/fixtures/broken/duplicates.yaml:14; sensor_ids must be unique across all tag maps)"#,
    r#"tests/fixtures/broken/unknown-keys.yaml:13:5: error: unknown key `scle` (did you mean `scale`?)"#,
    r#"tests/fixtures/broken/unknown-keys.yaml:14:5: error: unknown key `colour` (expected one of: sensor_id, enabled, node, queue_size, trigger, server_deadband, elements, members, table, address, modicon, unit, type, order, bit, length, interval, scale, offset, states, deadband, heartbeat, decimals, fields)"#,
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

/// Every mistake in tests/fixtures/gateway-broken, as `check -c` prints them: whatever `run`
/// refuses, `check` refuses first, at its place. `shapes.yaml` has mistakes found while
/// reading the file, `values.yaml` those found when its values are compiled.
const GATEWAY_FIXTURE_ERRORS: &[(&str, &[&str])] = &[
    (
        "tests/fixtures/gateway-broken/shapes.yaml",
        &[
            r#"tests/fixtures/gateway-broken/shapes.yaml:6:21: error: expected a nonzero u16, found `0`"#,
            r#"tests/fixtures/gateway-broken/shapes.yaml:7:20: error: expected a nonzero u16, found `0`"#,
            r#"tests/fixtures/gateway-broken/shapes.yaml:9:10: error: `sometimes` is not `always`, `never` or a duration such as `100ms`"#,
            r#"tests/fixtures/gateway-broken/shapes.yaml:11:15: error: unknown value `xml` (expected one of: human, json)"#,
            r#"tests/fixtures/gateway-broken/shapes.yaml:12:12: error: `localhost` is not host:port (e.g. 127.0.0.1:9898) or `off`"#,
        ],
    ),
    (
        "tests/fixtures/gateway-broken/values.yaml",
        &[
            r#"tests/fixtures/gateway-broken/values.yaml:2:31: error: tag_maps `missing-dir`: no such file or directory"#,
            r#"tests/fixtures/gateway-broken/values.yaml:5:5: error: the Event Hub sink needs exactly one of connection_string_env, connection_string_file or entra (never write the key itself in gateway.yaml)"#,
            r#"tests/fixtures/gateway-broken/values.yaml:7:20: error: partition_key fixed is 129 characters long; Event Hubs takes partition keys of at most 128 (shorten it, or use another partition_key)"#,
            r#"tests/fixtures/gateway-broken/values.yaml:9:14: error: spool.max_bytes 1 is less than the smallest spool, 4096 bytes (the default is 1 GiB: 1073741824)"#,
            r#"tests/fixtures/gateway-broken/values.yaml:11:14: error: log_level `info,tagbridge=loudest` is not a log filter: error parsing level filter: expected one of "off", "error", "warn", "info", "debug", "trace", or a number 0-5 (write a level (error, warn, info, debug, trace) or e.g. `info,tagbridge=debug`)"#,
        ],
    ),
    (
        "tests/fixtures/gateway-broken/opcua-certificate.yaml",
        &[
            r#"tests/fixtures/gateway-broken/opcua-certificate.yaml:6:22: error: application_uri `plant a gateway` holds a space, which a certificate cannot carry in a URI (printable ASCII without spaces, e.g. urn:plant-a:gw01:tagbridge)"#,
            r#"tests/fixtures/gateway-broken/opcua-certificate.yaml:7:18: error: common_name is empty (servers list certificates by their common name: write one, or leave the key out for the default)"#,
            r#"tests/fixtures/gateway-broken/opcua-certificate.yaml:8:19: error: organization is 65 characters long; a certificate takes at most 64 (RFC 5280 bounds the subject's fields; shorten it)"#,
            r#"tests/fixtures/gateway-broken/opcua-certificate.yaml:9:14: error: country `de` is not two capital letters (write the ISO 3166 country code, e.g. DE, FR, US)"#,
            r#"tests/fixtures/gateway-broken/opcua-certificate.yaml:10:38: error: host name `gw_01` is not a DNS name or an IP address: a DNS name holds letters, digits, dots and inner hyphens (e.g. gw01.plant-a.local or 10.0.0.5)"#,
            r#"tests/fixtures/gateway-broken/opcua-certificate.yaml:10:45: error: host name `10.0.0.300` is not an IP address: an IPv4 address has four parts of 0 to 255 (e.g. gw01.plant-a.local or 10.0.0.5)"#,
            r#"tests/fixtures/gateway-broken/opcua-certificate.yaml:10:57: error: host name `gw01.plant-a.local` is listed twice"#,
            r#"tests/fixtures/gateway-broken/opcua-certificate.yaml:11:15: error: key_size 1024 is not 2048, 3072 or 4096 (OPC UA's RSA security policies take keys of 2048 to 4096 bits)"#,
            r#"tests/fixtures/gateway-broken/opcua-certificate.yaml:12:17: error: valid_days 0 is not from 1 to 36500"#,
        ],
    ),
];

#[test]
fn broken_gateway_configs_exit_2_with_every_error_at_file_line_column() {
    for (file, expected) in GATEWAY_FIXTURE_ERRORS {
        let out = tagbridge().args(["check", "-c", file]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let text = stderr(&out);
        let errors: Vec<&str> = text.lines().filter(|l| l.contains(": error: ")).collect();
        assert_eq!(errors, *expected, "full output:\n{text}");
        // `run` refuses the same file with the same diagnostics, before starting anything.
        let run = tagbridge().args(["run", "-c", file]).output().unwrap();
        assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
        let run_text = stderr(&run);
        let run_errors: Vec<&str> = run_text
            .lines()
            .filter(|l| l.contains(": error: "))
            .collect();
        assert_eq!(run_errors, *expected, "full output:\n{run_text}");
    }
}

/// The shipped files are what the broken ones are not: `check -c` passes them.
#[test]
fn a_partition_key_too_long_for_event_hubs_is_refused_where_the_sensor_id_is() {
    let dir = tempfile::tempdir().unwrap();
    let long = "s".repeat(129);
    std::fs::write(
        dir.path().join("map.yaml"),
        format!("source:\n  opcua: {{endpoint: \"opc.tcp://127.0.0.1:4840\"}}\ntags:\n  - {{sensor_id: {long}, node: \"ns=2;s=A\"}}\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("hub"), "Endpoint=sb://localhost:5671/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0;EntityPath=hub\n").unwrap();
    let gateway = dir.path().join("gateway.yaml");
    std::fs::write(
        &gateway,
        "tag_maps: map.yaml\nsink:\n  eventhub:\n    connection_string_file: hub\n    partition_key: sensor_id\n",
    )
    .unwrap();
    let out = tagbridge()
        .arg("check")
        .arg("-c")
        .arg(&gateway)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let expected = format!(
        "{}:4:17: error: this sensor_id (the partition key with `partition_key: sensor_id`) is 129 characters long; Event Hubs takes partition keys of at most 128 (shorten it, or use another partition_key)",
        dir.path().join("map.yaml").display()
    );
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
}

#[test]
fn files_that_are_not_regular_files_are_refused_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let gateway = dir.path().join("gateway.yaml");
    std::fs::write(&gateway, "tag_maps: /dev/zero\nsink: {stdout: {}}\n").unwrap();
    let cases: [(Vec<std::ffi::OsString>, String); 4] = [
        (
            vec!["check".into(), "/dev/zero".into()],
            "/dev/zero:0:0: error: not a regular file or a directory (a device)".into(),
        ),
        (
            vec!["check".into(), fifo.clone().into()],
            format!("{}:0:0: error: not a regular file or a directory (a FIFO)", fifo.display()),
        ),
        (
            vec!["check".into(), "-c".into(), fifo.clone().into()],
            format!("{}:1:1: error: not a regular file (a FIFO) (configuration files must be regular files)", fifo.display()),
        ),
        (
            vec!["check".into(), "-c".into(), gateway.clone().into()],
            format!("{}:1:11: error: tag_maps `/dev/zero`: not a regular file or a directory (a device)", gateway.display()),
        ),
    ];
    for (args, expected) in cases {
        let child = tagbridge()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(child.wait_with_output()));
        let Ok(out) = finished.recv_timeout(std::time::Duration::from_secs(20)) else {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
            panic!("`tagbridge {args:?}` still runs after 20 s");
        };
        let out = out.unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// A connection string or key handed to any command in the wrong place is never echoed: every
/// output of every failing command is searched for the key.
#[test]
fn no_failing_command_prints_any_part_of_a_secret() {
    const KEY: &str = "Zm9yIHRlc3RzIG9ubHk6IG5vdCBhIHJlYWwga2V5IQ==";
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let full = write(
        "hub.txt",
        format!("Endpoint=sb://localhost:1/;SharedAccessKeyName=send;SharedAccessKey={KEY};EntityPath=hub\n"),
    );
    let yaml = write("hub.yaml", std::fs::read_to_string(&full).unwrap());
    let raw = write(
        "raw-key",
        format!("Endpoint=sb://localhost:1/;SharedAccessKeyName=send;{KEY};EntityPath=hub\n"),
    );
    let bare = write("bare-key.yaml", format!("{KEY}\n"));
    let in_map = write(
        "in-map.yaml",
        format!("source:\n  opcua: {{endpoint: \"opc.tcp://h:4840\"}}\ntags:\n  - {{sensor_id: x, node: {KEY}}}\n  - {{sensor_id: y, nod: \"{KEY}\"}}\n"),
    );
    let mut gateways = Vec::new();
    for (i, (tag_maps, secret)) in [
        (yaml.display().to_string(), full.display().to_string()),
        (bare.display().to_string(), raw.display().to_string()),
        (in_map.display().to_string(), raw.display().to_string()),
        (full.display().to_string(), full.display().to_string()),
    ]
    .into_iter()
    .enumerate()
    {
        gateways.push(write(
            &format!("gateway-{i}.yaml"),
            format!("tag_maps: {tag_maps}\nsink:\n  eventhub:\n    connection_string_file: {secret}\n    hub: other\n"),
        ));
    }
    let mut commands: Vec<Vec<std::ffi::OsString>> = Vec::new();
    for file in [&full, &yaml, &raw, &bare, &in_map] {
        commands.push(vec!["check".into(), file.into()]);
        commands.push(vec!["check".into(), "-c".into(), file.into()]);
        commands.push(vec!["run".into(), "-c".into(), file.into()]);
        commands.push(vec![
            "spool".into(),
            "status".into(),
            "-c".into(),
            file.into(),
        ]);
    }
    for gateway in &gateways {
        commands.push(vec!["check".into(), "-c".into(), gateway.into()]);
        commands.push(vec!["run".into(), "-c".into(), gateway.into()]);
    }
    for args in commands {
        let out = tagbridge().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        for part in [KEY, &KEY[..12], &KEY[KEY.len() - 12..]] {
            assert!(
                !text.contains(part),
                "{args:?} printed part of the key:\n{text}"
            );
        }
    }
}

#[test]
fn a_fifty_megabyte_sensor_id_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let id = "x".repeat(50 << 20);
    std::fs::write(
        &path,
        format!("source:\n  opcua: {{endpoint: \"opc.tcp://h:4840\"}}\ntags:\n  - {{sensor_id: {id}, node: \"ns=2;s=A\"}}\n"),
    )
    .unwrap();
    let out = tagbridge().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.starts_with(&format!(
            "{}:4:17: error: sensor_id is 52428800 bytes long; at most 256 are allowed",
            path.display()
        )),
        "{}",
        &text[..text.len().min(500)]
    );
    assert!(
        text.len() < 10_000,
        "the error echoes the value: {} bytes",
        text.len()
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

/// A hostile file saved beside a running gateway's tag maps (10 000 levels of nesting, an
/// alias bomb) is refused on reload with its position; the gateway keeps running and the
/// healthy tag map keeps delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tag_map_is_refused_on_reload_and_the_gateway_keeps_running() {
    let (plc, modbus) = super::support::chain::modbus_plc().await;
    let dir = tempfile::tempdir().unwrap();
    let maps = dir.path().join("maps");
    std::fs::create_dir(&maps).unwrap();
    std::fs::write(
        maps.join("line.yaml"),
        format!(
            "source:\n  modbus: {{tcp: \"{modbus}\", unit: 1}}\ndefaults: {{interval: 50ms}}\n\
             tags:\n  - {{sensor_id: line:counter, table: holding_register, address: 0, type: uint32}}\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("readings.jsonl");
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "tag_maps: maps\nsink:\n  file: {{path: {}}}\ntelemetry:\n  metrics: \"off\"\n",
            out.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["run", "-c"])
        .arg(dir.path().join("gateway.yaml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    let lines = || {
        std::fs::read_to_string(&out)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let deadline = std::time::Duration::from_secs(30);
    assert!(
        super::support::wait_until(deadline, || lines() >= 3).await,
        "no readings before the hostile files"
    );
    std::fs::write(maps.join("deep.yaml"), "- ".repeat(10_000) + "x\n").unwrap();
    let refused = |what: &'static str| {
        let log = log.clone();
        move || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(what)
        }
    };
    assert!(
        super::support::wait_until(deadline, refused("nested more than 64 levels deep")).await,
        "the deep file was not refused:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        gateway.try_wait().unwrap().is_none(),
        "the gateway died on reload:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let before = lines();
    assert!(
        super::support::wait_until(deadline, || lines() >= before + 3).await,
        "the healthy tag map stopped delivering after the refused reload"
    );
    assert!(gateway.try_wait().unwrap().is_none());
    let _ = gateway.kill().await;
    plc.shutdown().await;
}
