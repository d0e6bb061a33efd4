//! JSON Schemas for `gateway.yaml` and tag maps, generated from the Rust types so they never
//! drift from what the loader accepts. The simulated PLC's schema is rendered the same way by
//! [`crate::sim::plc::schema`]. Editors with a YAML language server complete and check
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
    ]
}

/// One schema as the pretty JSON written under `schema/`, titled `title`.
pub fn render<T: schemars::JsonSchema>(title: &str) -> String {
    let generator = SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<T>();
    schema.insert("title".into(), title.into());
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
