//! JSON Schemas for `gateway.yaml`, tag maps and the simulated PLC's configuration, generated from the Rust types so they never
//! drift from what the loader accepts. Editors with a YAML language server complete and check
//! keys while typing through a first line such as
//! `# yaml-language-server: $schema=../schema/tag-map.schema.json`.

use schemars::generate::SchemaSettings;

use super::{GatewayConfig, TagMapFile};

/// File names under `schema/` and their contents.
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        (
            "gateway.schema.json",
            render::<GatewayConfig>("tagbridge gateway.yaml"),
        ),
        (
            "tag-map.schema.json",
            render::<TagMapFile>("tagbridge tag map"),
        ),
        (
            "sim-plc.schema.json",
            render::<crate::sim::plc::PlcConfig>("tagbridge simulated PLC"),
        ),
    ]
}

fn render<T: schemars::JsonSchema>(title: &str) -> String {
    let generator = SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<T>();
    schema.insert("title".into(), title.into());
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
