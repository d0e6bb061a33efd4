//! Tag lists as tables: a tag map's `tags:` as CSV rows and back (`tagbridge tags export` /
//! `import`), and Kepware tag exports read as the same rows.
//!
//! A table has one header row naming tag keys (`sensor_id`, `modicon`, `type`, …), one column
//! per field as `fields.NAME`, and notes in columns whose name starts with `#` (ignored). Each
//! later row is one tag. Invariants:
//! - A row becomes the same YAML tree a tag map would hold ([`rows::TagRow`]), every node
//!   placed at the row's line and the cell's column number, so that the one deserializer and
//!   the one compiler of `check` report its mistakes, with their messages, at
//!   `file.csv:line:column` (column 1 is the first column, A).
//! - A cell is read as a plain YAML scalar, literally: `40001`, `float32`, `0.1`, `true`. An
//!   empty cell means the key is absent. A cell that is a whole YAML quoted string (`"12"`)
//!   is that string; `states`, `server_deadband` and `fields.*` cells starting with `{` or `[`
//!   are YAML flow collections (`{0: Stopped, 1: Running}`).
//! - Export writes what import reads back into the same tree (checked by tests for every
//!   shipped tag map and docs example); import writes only the `tags:` block of a tag map
//!   ([`emit`]), and only once every row passed every check.

pub mod emit;
pub mod kepware;
pub mod rows;
pub mod sheet;

pub use rows::{export_rows, rows_from_sheet, TagRow};
pub use sheet::{read_sheet, write_csv, Cell, CsvStyle, Sheet};

/// Every tag key, in the order export writes them (the order of [`crate::config::tagmap::TagSpec`]).
/// A unit test checks it against the JSON Schema, so a new key cannot be forgotten here.
pub const TAG_KEYS: [&str; 24] = [
    "sensor_id",
    "enabled",
    "node",
    "queue_size",
    "trigger",
    "server_deadband",
    "elements",
    "members",
    "table",
    "address",
    "modicon",
    "unit",
    "type",
    "order",
    "bit",
    "length",
    "interval",
    "scale",
    "offset",
    "states",
    "deadband",
    "heartbeat",
    "decimals",
    "fields",
];

/// Keys whose cells may hold a YAML flow collection.
pub const STRUCTURED_KEYS: [&str; 3] = ["server_deadband", "members", "states"];

/// The prefix of a column holding one extra field: `fields.unit`.
pub const FIELD_PREFIX: &str = "fields.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_keys_are_the_schema_s_tag_keys_in_order() {
        let schema = schemars::schema_for!(crate::config::tagmap::TagSpec);
        let props = schema
            .as_object()
            .and_then(|o| o.get("properties"))
            .and_then(|p| p.as_object())
            .expect("TagSpec has properties");
        let keys: Vec<&str> = props.keys().map(String::as_str).collect();
        let mut sorted_schema = keys.clone();
        sorted_schema.sort_unstable();
        let mut sorted_ours = TAG_KEYS.to_vec();
        sorted_ours.sort_unstable();
        assert_eq!(sorted_ours, sorted_schema);
    }
}
