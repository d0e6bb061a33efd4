//! Structured variables of the simulated OPC UA server: one custom structured type,
//! `SimRecipe`, published with its DataTypeDefinition (and a "Default Binary" encoding node),
//! nested, with an enumeration and an array field, driven by the deterministic signals.
//!
//! ```text
//! SimRecipe (ns=2;s=Types/SimRecipe)        SimStage (ns=2;s=Types/SimStage)
//!   temperature  Double                        duration     UInt32
//!   pressure     Float                         temperature  Double
//!   count        Int64
//!   running      Boolean                     SimPhase (ns=2;s=Types/SimPhase), Enumeration
//!   phase        SimPhase                      0 Idle, 1 Heating, 2 Pressing, 3 Cooling
//!   name         String
//!   setpoints    Double[3]
//!   stage        SimStage
//! ```
//!
//! Revision 2 (`recipe_revision: 2`, a changed PLC program) appends `batch  UInt32`.
//!
//! Each field is driven by its own signal (`fields:` in the config, by path: `temperature`,
//! `setpoints[1]`, `stage.duration`); a field without one holds 0, false or "". At every step
//! of the fastest field signal the whole value is written with that step's instant as source
//! timestamp, so a client can check every field against `signal.value_at(source - epoch)`.
//!
//! Values are encoded here by hand (OPC UA Part 6, 5.2: little-endian scalars, Int32-length
//! strings and arrays, nested structures inline), independently of the gateway's decoder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opcua::nodes::{DataTypeBuilder, ObjectBuilder, ReferenceDirection, VariableBuilder};
use opcua::server::address_space::AddressSpace;
use opcua::server::node_manager::memory::SimpleNodeManager;
use opcua::server::ServerHandle;
use opcua::types::{
    ByteString, ByteStringBody, DataTypeDefinition, DataTypeId, DataValue, DateTime,
    EnumDefinition, EnumField, ExtensionObject, LocalizedText, NodeId, ObjectTypeId, QualifiedName,
    ReferenceTypeId, StatusCode, StructureDefinition, StructureField, StructureType,
    VariableTypeId, Variant,
};
use tokio_util::sync::CancellationToken;

use super::config::OpcUaStructure;
use crate::sim::signal::Signal;

/// Names of the enumeration's values 0…3.
pub const PHASES: [&str; 4] = ["Idle", "Heating", "Pressing", "Cooling"];
/// Elements of `setpoints`.
pub const SETPOINTS: usize = 3;
/// Every leaf field path of `SimRecipe`, in encoding order.
pub const FIELDS: [&str; 10] = [
    "temperature",
    "pressure",
    "count",
    "running",
    "phase",
    "name",
    "setpoints[0]",
    "setpoints[1]",
    "setpoints[2]",
    "stage.duration",
];
/// The nested structure's second field (also a leaf path).
pub const STAGE_TEMPERATURE: &str = "stage.temperature";

fn id(ns: u16, name: &str) -> NodeId {
    NodeId::new(ns, format!("Types/{name}"))
}

/// The binary encoding node of `SimRecipe`.
pub fn recipe_encoding(ns: u16) -> NodeId {
    id(ns, "SimRecipe/DefaultBinary")
}

/// Adds the types (with DataTypeDefinitions) and the structured variables. `parent_of` gives
/// the folder a path lives in (creating it).
pub(super) fn populate(
    structures: &[OpcUaStructure],
    revision: u32,
    ns: u16,
    space: &mut AddressSpace,
    parent_of: &mut dyn FnMut(&mut AddressSpace, &str) -> NodeId,
    epoch_wall: chrono::DateTime<chrono::Utc>,
    now: Duration,
) {
    if structures.is_empty() {
        return;
    }
    add_types(ns, revision, space);
    for s in structures {
        let path = s.path.trim_matches('/');
        let name = path.rsplit('/').next().unwrap_or(path);
        let parent = parent_of(space, path);
        let node = NodeId::new(ns, path.to_string());
        let (value, source) = sample(s, revision, ns, epoch_wall, now);
        VariableBuilder::new(&node, QualifiedName::new(ns, name), name)
            .data_type(id(ns, "SimRecipe"))
            .value(value.clone())
            .has_type_definition(VariableTypeId::BaseDataVariableType)
            .organized_by(parent)
            .minimum_sampling_interval(0.0)
            .insert(space);
        if let Some(opcua::nodes::NodeType::Variable(var)) = space.find_mut(&node) {
            var.set_data_value(data_value(value, source));
        }
    }
}

fn field(name: &str, data_type: NodeId, value_rank: i32, dims: Option<Vec<u32>>) -> StructureField {
    StructureField {
        name: name.into(),
        description: LocalizedText::null(),
        data_type,
        value_rank,
        array_dimensions: dims,
        max_string_length: 0,
        is_optional: false,
    }
}

fn add_types(ns: u16, revision: u32, space: &mut AddressSpace) {
    // The enumeration, with both an EnumDefinition and EnumStrings.
    let phase = id(ns, "SimPhase");
    DataTypeBuilder::new(&phase, QualifiedName::new(ns, "SimPhase"), "SimPhase")
        .subtype_of(DataTypeId::Enumeration)
        .data_type_definition(DataTypeDefinition::Enum(EnumDefinition {
            fields: Some(
                PHASES
                    .iter()
                    .enumerate()
                    .map(|(i, n)| EnumField {
                        value: i as i64,
                        display_name: LocalizedText::new("", n),
                        description: LocalizedText::null(),
                        name: (*n).into(),
                    })
                    .collect(),
            ),
        }))
        .insert(space);
    let strings: Vec<LocalizedText> = PHASES.iter().map(|s| LocalizedText::new("", s)).collect();
    VariableBuilder::new(
        &id(ns, "SimPhase/EnumStrings"),
        QualifiedName::new(0, "EnumStrings"),
        "EnumStrings",
    )
    .property_of(phase.clone())
    .has_type_definition(VariableTypeId::PropertyType)
    .data_type(DataTypeId::LocalizedText)
    .value_rank(1)
    .array_dimensions(&[strings.len() as u32])
    .value(strings)
    .insert(space);

    let stage = id(ns, "SimStage");
    structure(
        ns,
        space,
        "SimStage",
        vec![
            field("duration", DataTypeId::UInt32.into(), -1, None),
            field("temperature", DataTypeId::Double.into(), -1, None),
        ],
    );
    let mut recipe = vec![
        field("temperature", DataTypeId::Double.into(), -1, None),
        field("pressure", DataTypeId::Float.into(), -1, None),
        field("count", DataTypeId::Int64.into(), -1, None),
        field("running", DataTypeId::Boolean.into(), -1, None),
        field("phase", phase, -1, None),
        field("name", DataTypeId::String.into(), -1, None),
        field(
            "setpoints",
            DataTypeId::Double.into(),
            1,
            Some(vec![SETPOINTS as u32]),
        ),
        field("stage", stage, -1, None),
    ];
    if revision >= 2 {
        recipe.push(field("batch", DataTypeId::UInt32.into(), -1, None));
    }
    structure(ns, space, "SimRecipe", recipe);
}

/// A structured DataType with its definition and its "Default Binary" encoding object.
fn structure(ns: u16, space: &mut AddressSpace, name: &str, fields: Vec<StructureField>) {
    let type_id = id(ns, name);
    let encoding = id(ns, &format!("{name}/DefaultBinary"));
    DataTypeBuilder::new(&type_id, QualifiedName::new(ns, name), name)
        .subtype_of(DataTypeId::Structure)
        .data_type_definition(DataTypeDefinition::Structure(StructureDefinition {
            default_encoding_id: encoding.clone(),
            base_data_type: DataTypeId::Structure.into(),
            structure_type: StructureType::Structure,
            fields: Some(fields),
        }))
        .insert(space);
    ObjectBuilder::new(
        &encoding,
        QualifiedName::new(0, "Default Binary"),
        "Default Binary",
    )
    .has_type_definition(ObjectTypeId::DataTypeEncodingType)
    .reference(
        type_id,
        ReferenceTypeId::HasEncoding,
        ReferenceDirection::Inverse,
    )
    .insert(space);
}

/// The value of structure `s` at `t` (with the fastest field signal's step start as source
/// time).
fn sample(
    s: &OpcUaStructure,
    revision: u32,
    ns: u16,
    epoch_wall: chrono::DateTime<chrono::Utc>,
    t: Duration,
) -> (Variant, DateTime) {
    let period = period(s);
    let valid_from = if period == Duration::MAX {
        Duration::ZERO
    } else {
        let k = t.as_nanos() / period.as_nanos();
        Duration::from_nanos((k * period.as_nanos()) as u64)
    };
    let wall = epoch_wall
        + chrono::Duration::from_std(valid_from).unwrap_or_else(|_| chrono::Duration::zero());
    let body = encode(s, revision, valid_from);
    let object = ExtensionObject::new(ByteStringBody::new(
        ByteString::from(body),
        recipe_encoding(ns),
    ));
    (Variant::from(object), DateTime::from(wall))
}

/// The fastest update period of the structure's field signals.
fn period(s: &OpcUaStructure) -> Duration {
    s.fields
        .values()
        .map(Signal::update_period)
        .min()
        .unwrap_or(Duration::MAX)
}

/// The binary body of `SimRecipe` (of `revision`) at `t` (Part 6, 5.2.6: fields in order, no
/// header).
pub fn encode(s: &OpcUaStructure, revision: u32, t: Duration) -> Vec<u8> {
    let at = |path: &str| s.fields.get(path).map(|sig| sig.value_at(t));
    let f64_of = |path: &str| at(path).map_or(0.0, |v| v.as_f64());
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(&f64_of("temperature").to_le_bytes());
    out.extend_from_slice(&(f64_of("pressure") as f32).to_le_bytes());
    out.extend_from_slice(&at("count").map_or(0, |v| v.as_i64()).to_le_bytes());
    out.push(u8::from(at("running").is_some_and(|v| v.as_bool())));
    let phase = at("phase").map_or(0, |v| v.as_i64().clamp(0, i32::MAX.into()) as i32);
    out.extend_from_slice(&phase.to_le_bytes());
    let name = at("name").map(|v| v.as_text()).unwrap_or_default();
    out.extend_from_slice(&(name.len() as i32).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(SETPOINTS as i32).to_le_bytes());
    for i in 0..SETPOINTS {
        out.extend_from_slice(&f64_of(&format!("setpoints[{i}]")).to_le_bytes());
    }
    let duration = at("stage.duration").map_or(0, |v| v.as_i64().clamp(0, u32::MAX.into()));
    out.extend_from_slice(&(duration as u32).to_le_bytes());
    out.extend_from_slice(&f64_of(STAGE_TEMPERATURE).to_le_bytes());
    if revision >= 2 {
        let batch = at("batch").map_or(0, |v| v.as_i64().clamp(0, u32::MAX.into()));
        out.extend_from_slice(&(batch as u32).to_le_bytes());
    }
    out
}

fn data_value(value: Variant, source: DateTime) -> DataValue {
    DataValue {
        value: Some(value),
        status: Some(StatusCode::Good),
        source_timestamp: Some(source),
        source_picoseconds: None,
        server_timestamp: Some(DateTime::now()),
        server_picoseconds: None,
    }
}

/// Writes every structure at each step of its fastest field signal, until the server
/// instance (`instance`) or the simulator (`shutdown`) stops.
// The server instance's parts, passed as the variables' updater gets them.
#[allow(clippy::too_many_arguments)]
pub(super) async fn update_loop(
    structures: Arc<Vec<OpcUaStructure>>,
    (revision, ns): (u32, u16),
    epoch: Instant,
    epoch_wall: chrono::DateTime<chrono::Utc>,
    manager: Arc<SimpleNodeManager>,
    handle: ServerHandle,
    instance: CancellationToken,
    shutdown: CancellationToken,
) {
    let Some(period) = structures.iter().map(period).min() else {
        return;
    };
    if period == Duration::MAX || period.is_zero() {
        return;
    }
    let subscriptions = handle.subscriptions().clone();
    let nodes: Vec<NodeId> = structures
        .iter()
        .map(|s| NodeId::new(ns, s.path.trim_matches('/').to_string()))
        .collect();
    let mut k = epoch.elapsed().as_nanos() / period.as_nanos() + 1;
    loop {
        let due = epoch + Duration::from_nanos((period.as_nanos() * k) as u64);
        tokio::select! {
            // This server instance stopped (restart) or the simulator shuts down.
            _ = instance.cancelled() => return,
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let t = due - epoch;
        let values: Vec<(&NodeId, DataValue)> = structures
            .iter()
            .zip(&nodes)
            .map(|(s, node)| {
                let (value, source) = sample(s, revision, ns, epoch_wall, t);
                (node, data_value(value, source))
            })
            .collect();
        if let Err(status) = manager.set_values(
            &subscriptions,
            values.into_iter().map(|(id, dv)| (id, None, dv)),
        ) {
            tracing::warn!(message = "Cannot update simulated OPC UA structures.", %status);
        }
        // Skip steps missed while busy: values are functions of time.
        k = (k + 1).max(epoch.elapsed().as_nanos() / period.as_nanos() + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_holds_every_field_in_order() {
        let s: OpcUaStructure = serde_json::from_value(serde_json::json!({
            "path": "P/R",
            "fields": {
                "temperature": {"constant": 21.5},
                "name": {"constant": "ab"},
                "setpoints[2]": {"constant": 7},
                "stage.duration": {"constant": 9},
                "phase": {"constant": 2},
            }
        }))
        .expect("config");
        let body = encode(&s, 1, Duration::ZERO);
        assert_eq!(&body[..8], &21.5f64.to_le_bytes());
        // temperature 8, pressure 4, count 8, running 1, phase 4 = 25; then the name.
        assert_eq!(&body[21..25], &2i32.to_le_bytes());
        assert_eq!(&body[25..31], &[2, 0, 0, 0, b'a', b'b']);
        assert_eq!(&body[31..35], &3i32.to_le_bytes());
        assert_eq!(&body[51..59], &7f64.to_le_bytes());
        assert_eq!(&body[59..63], &9u32.to_le_bytes());
        assert_eq!(body.len(), 71);
    }

    #[test]
    fn revision_2_appends_the_batch_after_the_stage() {
        let s: OpcUaStructure = serde_json::from_value(serde_json::json!({
            "path": "P/R",
            "fields": {"temperature": {"constant": 21.5}, "batch": {"constant": 42}}
        }))
        .expect("config");
        let first = encode(&s, 1, Duration::ZERO);
        assert_eq!(
            encode(&s, 0, Duration::ZERO),
            first,
            "0 is the first revision"
        );
        let second = encode(&s, 2, Duration::ZERO);
        assert_eq!(&second[..first.len()], &first[..]);
        assert_eq!(&second[first.len()..], &42u32.to_le_bytes());
    }
}
