//! Unit tests of the compiler: each check on its own, from YAML text to plan or problem.

use super::*;

/// Compiles a tag map written as YAML: the plan and every problem as `line:col: message`.
fn compile_text(text: &str) -> (TagMapPlan, Vec<String>) {
    let parsed = crate::config::parse_tag_map(text.to_string());
    let mut problems: Vec<String> = parsed
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.pos, p.message))
        .collect();
    let file = parsed.value.expect("the shape parses");
    let (plan, more) = compile(&file, Path::new("/maps/m.yaml"), &parsed.dropped);
    problems.extend(more.iter().map(|p| format!("{}: {}", p.pos, p.message)));
    (plan, problems)
}

const OPCUA: &str = "source:\n  opcua: {endpoint: \"opc.tcp://10.0.0.5:4840\"}\n";
const MODBUS: &str = "source:\n  modbus: {tcp: \"10.0.0.7:502\", unit: 3}\n";

#[test]
fn opcua_tags_get_their_node_and_the_default_interval() {
    let (plan, problems) = compile_text(&format!(
        "{OPCUA}tags:\n  - {{sensor_id: a, node: \"ns=2;s=A\"}}\n  - {{sensor_id: b, node: \"ns=2;i=7\", interval: 250ms}}\n"
    ));
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(plan.tags.len(), 2);
    assert_eq!(
        plan.tags[0].address,
        TagAddress::OpcUa {
            node: "ns=2;s=A".into()
        }
    );
    assert_eq!(plan.tags[0].interval, DEFAULT_INTERVAL);
    assert_eq!(plan.tags[1].interval, Duration::from_millis(250));
    let SourcePlan::OpcUa(o) = &plan.source else {
        panic!("not OPC UA")
    };
    assert_eq!(o.monitoring.len(), 2, "one monitored item per tag");
    assert_eq!(
        o.max_notifications_per_publish,
        DEFAULT_MAX_NOTIFICATIONS_PER_PUBLISH
    );
}

#[test]
fn array_nodes_become_one_tag_per_element() {
    let (plan, problems) = compile_text(&format!(
        "{OPCUA}tags:\n  - {{sensor_id: v, node: \"ns=2;s=V\", elements: 3}}\n"
    ));
    assert!(problems.is_empty(), "{problems:?}");
    let ids: Vec<&str> = plan.tags.iter().map(|t| &*t.sensor_id).collect();
    assert_eq!(ids, ["v[0]", "v[1]", "v[2]"]);
}

#[test]
fn modbus_tags_resolve_modicon_references_and_the_source_unit() {
    let (plan, problems) = compile_text(&format!(
        "{MODBUS}tags:\n  - {{sensor_id: a, modicon: 40001, type: uint16}}\n  - {{sensor_id: b, modicon: 300010, type: int16, unit: 9}}\n"
    ));
    assert!(problems.is_empty(), "{problems:?}");
    let TagAddress::Modbus(a) = &plan.tags[0].address else {
        panic!("not Modbus")
    };
    assert_eq!((a.table, a.address, a.unit), (Table::HoldingRegister, 0, 3));
    let TagAddress::Modbus(b) = &plan.tags[1].address else {
        panic!("not Modbus")
    };
    assert_eq!((b.table, b.address, b.unit), (Table::InputRegister, 9, 9));
}

#[test]
fn protocol_keys_on_the_wrong_source_are_named() {
    let (_, problems) = compile_text(&format!(
        "{MODBUS}tags:\n  - {{sensor_id: a, node: \"ns=2;s=A\", table: coil, address: 0}}\n"
    ));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`node` is an OPC UA key")),
        "{problems:?}"
    );
    let (_, problems) = compile_text(&format!(
        "{OPCUA}tags:\n  - {{sensor_id: a, node: \"ns=2;s=A\", table: coil}}\n"
    ));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`table` is a Modbus key")),
        "{problems:?}"
    );
}

#[test]
fn duplicate_ids_and_addresses_are_problems_at_the_second_tag() {
    let (plan, problems) = compile_text(&format!(
        "{MODBUS}tags:\n  - {{sensor_id: a, modicon: 40001, type: uint16}}\n  - {{sensor_id: a, modicon: 40002, type: uint16}}\n  - {{sensor_id: c, modicon: 40001, type: uint16}}\n"
    ));
    assert_eq!(
        problems,
        [
            "5:17: sensor_id `a` is used twice in this file",
            "6:5: this tag reads the same address as `a`"
        ]
    );
    assert_eq!(plan.tags.len(), 2, "the healthy tags stay in the plan");
}

#[test]
fn transforms_are_checked_on_tags_and_on_the_defaults() {
    let (plan, problems) = compile_text(&format!(
        "{OPCUA}defaults: {{deadband: 0.5, decimals: 2}}\ntags:\n  - {{sensor_id: a, node: \"ns=2;s=A\", scale: 2, offset: 1}}\n  - {{sensor_id: b, node: \"ns=2;s=B\", offset: .nan}}\n"
    ));
    assert_eq!(problems, ["6:46: offset NaN is not a finite number"]);
    let t = &plan.tags[0].transform;
    assert_eq!(
        (t.scale, t.offset, t.deadband, t.decimals),
        (Some(2.0), Some(1.0), 0.5, Some(2))
    );
    let (plan, problems) = compile_text(&format!(
        "{OPCUA}defaults: {{deadband: .inf, decimals: 13}}\ntags:\n  - {{sensor_id: a, node: \"ns=2;s=A\"}}\n"
    ));
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(plan.tags.is_empty(), "no tag runs with bad defaults");
}

#[test]
fn sensor_ids_are_bounded_and_trimmed() {
    let long = "x".repeat(MAX_SENSOR_ID_BYTES + 1);
    let (_, problems) = compile_text(&format!(
        "{OPCUA}tags:\n  - {{sensor_id: {long}, node: \"ns=2;s=A\"}}\n  - {{sensor_id: \" b\", node: \"ns=2;s=B\"}}\n"
    ));
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].ends_with("sensor_id is 257 bytes long; at most 256 are allowed"));
    assert!(problems[1].contains("leading/trailing spaces"));
}

#[test]
fn fields_cannot_replace_the_reading_members() {
    let (plan, problems) = compile_text(&format!(
        "{OPCUA}fields: {{site: plant-a}}\ntags:\n  - {{sensor_id: a, node: \"ns=2;s=A\", fields: {{line: 2}}}}\n  - {{sensor_id: b, node: \"ns=2;s=B\", fields: {{value: 1}}}}\n"
    ));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("field `value` would replace"));
    assert_eq!(&*plan.tags[0].extra, r#","line":2,"site":"plant-a""#);
}

#[test]
fn an_empty_tag_list_is_a_problem() {
    let (_, problems) = compile_text(&format!("{OPCUA}tags: []\n"));
    assert_eq!(problems, ["2:3: this tag map has no tags"]);
}

#[test]
fn compile_and_compile_owned_agree() {
    let text = format!(
        "{MODBUS}tags:\n  - {{sensor_id: a, modicon: 40001, type: float32, scale: 0.1}}\n  - {{sensor_id: b, modicon: 10001}}\n"
    );
    let parsed = crate::config::parse_tag_map(text);
    let file = parsed.value.unwrap();
    let borrowed = compile(&file, Path::new("m.yaml"), &[]);
    let owned = compile_owned(file, Path::new("m.yaml"), &[]);
    assert_eq!(borrowed.0.tags, owned.0.tags);
    assert_eq!(borrowed.1, owned.1);
}
