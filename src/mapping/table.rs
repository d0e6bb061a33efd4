//! Importing a table (CSV, or a Kepware export) into a tag map, through the same deserializer
//! and compiler as `tagbridge check`, so a row is refused exactly when the same tag written in
//! YAML would be, with the same message, at `file.csv:line:column`.
//!
//! Invariants:
//! - Nothing is produced unless every row passed every check: the caller gets the whole new
//!   tag map text or every problem (the table's, and the tag map's own settings if they are
//!   broken), never a partial result.
//! - Only the `tags:` block changes ([`crate::config::table::emit::splice`]).
//! - The text produced is checked again as `check` would load it, and its tags compared with
//!   the rows read: a difference is an internal error, and nothing is written.

use std::path::Path;

use crate::config::de::{from_node, Spanned};
use crate::config::diagnostic::{Pos, Problem, Report};
use crate::config::table::emit::{internal, splice, tags_block};
use crate::config::table::kepware::{looks_like_kepware, rows_from_kepware, KepwareOptions};
use crate::config::table::rows::reading;
use crate::config::table::{read_sheet, rows_from_sheet};
use crate::config::tagmap::{SourceSpec, TagMapFile, TagSpec};
use crate::config::yaml::{self, Node, NodeKind};

use super::compile::TagsCompiler;

/// How to read the table.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// `,` or `;`; found on the header line when `None`.
    pub delimiter: Option<u8>,
    /// How to read a Kepware export (recognised by its `Tag Name` and `Address` columns).
    pub kepware: KepwareOptions,
}

/// A tag map with its tags replaced by a table's rows.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The new text of the tag map.
    pub text: String,
    /// Tags written.
    pub tags: usize,
    /// The table was read as a Kepware export.
    pub kepware: bool,
}

/// Replaces the tags of the tag map `map_text` (from `map_path`) with the rows of the table
/// `csv_text` (from `csv_path`), or reports every problem of both.
pub fn import(
    csv_path: &Path,
    csv_text: &str,
    map_path: &Path,
    map_text: &str,
    options: &ImportOptions,
) -> Result<Imported, Report> {
    let mut report = Report::default();
    let (root, file) = match settings(map_text) {
        Ok(ok) => ok,
        Err(problems) => {
            report.extend(map_path, problems);
            return Err(report);
        }
    };
    let (sheet, problems) = read_sheet(csv_text, options.delimiter);
    report.extend(csv_path, problems);
    let kepware = looks_like_kepware(&sheet);
    let (rows, problems) = if kepware {
        let mut k = options.kepware.clone();
        k.modbus = matches!(file.source.value, SourceSpec::Modbus(_));
        k.defaults_have_order = file.defaults.order.is_some();
        rows_from_kepware(&sheet, &k)
    } else {
        rows_from_sheet(&sheet)
    };
    report.extend(csv_path, problems);
    if sheet.header.is_empty() {
        report.push(
            Problem::new(Pos { line: 1, col: 1 }, "the table is empty")
                .with_hint("the first row names the columns: sensor_id, then the tag keys")
                .in_file(csv_path),
        );
    } else if rows.is_empty() && report.is_empty() {
        report.push(
            Problem::new(Pos { line: 1, col: 1 }, "the table has no tags")
                .with_hint("add one row per tag under the header")
                .in_file(csv_path),
        );
    }
    let mut compiler = TagsCompiler::new(&file, map_path, rows.len());
    report.extend(map_path, compiler.take_problems());
    for row in &rows {
        let one = from_node::<Spanned<TagSpec>>(&row.node);
        report.extend(csv_path, one.problems);
        match one.value {
            Some(tag) => compiler.add(&tag, &one.dropped),
            None => compiler.failed += 1,
        }
    }
    let (_, problems) = compiler.finish();
    if !rows.is_empty() {
        report.extend(csv_path, problems);
    }
    if !report.is_empty() {
        report.sort();
        return Err(report);
    }
    let nodes: Vec<&Node> = rows.iter().map(|r| &r.node).collect();
    let text = match splice(map_text, &root, &tags_block(&nodes)) {
        Ok(text) => text,
        Err(problem) => {
            report.push(problem.in_file(map_path));
            return Err(report);
        }
    };
    if let Err(problem) = verify(&text, map_path, &nodes) {
        report.push(problem.in_file(map_path));
        return Err(report);
    }
    Ok(Imported {
        text,
        tags: rows.len(),
        kepware,
    })
}

/// The tag map's tree and its settings (`source`, `defaults`, `fields`), its own tags left out:
/// they are about to be replaced, and a file without `tags:` yet is fine.
fn settings(map_text: &str) -> Result<(Node, TagMapFile), Vec<Problem>> {
    let (root, problems) = yaml::parse(map_text).map_err(|p| vec![p])?;
    if !problems.is_empty() {
        return Err(problems);
    }
    let NodeKind::Map(entries) = &root.kind else {
        return Err(vec![Problem::new(
            root.pos,
            "the tag map is not a mapping of keys",
        )
        .with_hint("a tag map starts with `source:`")]);
    };
    let mut entries: Vec<(Node, Node)> = entries
        .iter()
        .filter(|(k, _)| k.as_scalar() != Some("tags"))
        .cloned()
        .collect();
    let at = root.pos;
    let scalar = |text: &str| Node {
        pos: at,
        end: at,
        kind: NodeKind::Scalar {
            text: text.into(),
            plain: true,
        },
    };
    entries.push((
        scalar("tags"),
        Node {
            pos: at,
            end: at,
            kind: NodeKind::Seq(Vec::new()),
        },
    ));
    let without_tags = Node {
        kind: NodeKind::Map(entries),
        ..root.clone()
    };
    let parsed = from_node::<TagMapFile>(&without_tags);
    match parsed.value {
        Some(file) if parsed.problems.is_empty() => Ok((root, file)),
        _ => Err(parsed.problems),
    }
}

/// Loads `text` as `check` does and compares its tags with `rows`.
fn verify(text: &str, map_path: &Path, rows: &[&Node]) -> Result<(), Problem> {
    let parsed = crate::config::parse_tag_map(text.to_string());
    if let Some(p) = parsed.problems.first() {
        return Err(internal(p.pos, &format!("does not parse: {}", p.message)));
    }
    let Some(file) = parsed.value else {
        return Err(internal(Pos::default(), "does not parse"));
    };
    let (_, problems) = super::compile_owned(file, map_path, &parsed.dropped);
    if let Some(p) = problems.first() {
        return Err(internal(p.pos, &format!("fails a check: {}", p.message)));
    }
    let (root, _) = yaml::parse(text).map_err(|p| internal(p.pos, "does not parse"))?;
    let written = match &root.kind {
        NodeKind::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_scalar() == Some("tags"))
            .map(|(_, v)| v),
        _ => None,
    };
    let Some(Node {
        kind: NodeKind::Seq(written),
        ..
    }) = written
    else {
        return Err(internal(Pos::default(), "has no tags list"));
    };
    if written.len() != rows.len() {
        return Err(internal(Pos::default(), "has a different number of tags"));
    }
    for (w, r) in written.iter().zip(rows) {
        if reading(w) != reading(r) {
            return Err(internal(w.pos, "differs from its row"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::table::{export_rows, write_csv, CsvStyle};
    use proptest::prelude::*;

    /// Text a spreadsheet user may type: quotes, separators, line breaks, YAML indicators,
    /// look-alikes of numbers and booleans, non-ASCII.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,12}",
            "[a-z0-9 ,;:#\"'{}\\[\\]&*!|>%@`\\\\-]{1,10}",
            Just("12".to_string()),
            Just("true".to_string()),
            Just("null".to_string()),
            Just("~".to_string()),
            Just("0x1F".to_string()),
            Just("-.inf".to_string()),
            Just("\"quoted\"".to_string()),
            Just("'single'".to_string()),
            Just("{a: 1}".to_string()),
            Just("line\nbreak\r\nand\ttab".to_string()),
            Just("°C, µm/s, 温度 ✓".to_string()),
            Just(String::new()),
        ]
    }

    fn field_value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            text().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e9f64..1e9).prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            prop::collection::vec(text(), 0..3).prop_map(serde_json::Value::from),
        ]
    }

    /// A tag map of OPC UA tags as JSON (which YAML reads): ids and nodes with any printable
    /// text, fields with any value.
    fn tag_map() -> impl Strategy<Value = String> {
        let tag = (
            "[!-~]([ -~]{0,10}[!-~])?",
            text(),
            prop::option::of(any::<bool>()),
            prop::collection::btree_map("[a-z][a-z_.]{0,6}", field_value(), 0..4),
            prop::option::of(0u8..=12),
        );
        prop::collection::vec(tag, 1..6).prop_map(|tags| {
            let mut text = String::from(
                "# kept\nsource: {opcua: {endpoint: \"opc.tcp://127.0.0.1:4840\", security_policy: none}}\ntags:\n",
            );
            for (i, (id, node, enabled, fields, decimals)) in tags.into_iter().enumerate() {
                let mut tag = serde_json::json!({
                    "sensor_id": format!("{id}{i}"),
                    "node": format!("ns=2;s={node}{i}"),
                });
                if let Some(e) = enabled {
                    tag["enabled"] = e.into();
                }
                if let Some(d) = decimals {
                    tag["decimals"] = d.into();
                }
                if !fields.is_empty() {
                    tag["fields"] = serde_json::to_value(fields).unwrap_or_default();
                }
                text.push_str(&format!("  - {tag}\n"));
            }
            text
        })
    }

    fn tags_of(text: &str) -> Vec<serde_json::Value> {
        let (root, _) = yaml::parse(text).expect("parses");
        let NodeKind::Map(entries) = root.kind else {
            panic!("not a mapping")
        };
        let Some((_, tags)) = entries
            .into_iter()
            .find(|(k, _)| k.as_scalar() == Some("tags"))
        else {
            panic!("no tags")
        };
        let NodeKind::Seq(tags) = tags.kind else {
            panic!("tags is not a list")
        };
        tags.iter().map(reading).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Export → CSV → import gives back the same tags, whatever their text, in both
        /// separators, with and without a byte order mark.
        #[test]
        fn export_then_import_gives_back_the_same_tags(
            map in tag_map(),
            semicolon in any::<bool>(),
            bom in any::<bool>(),
        ) {
            let path = Path::new("map.yaml");
            let parsed = crate::config::parse_tag_map(map.clone());
            prop_assume!(parsed.problems.is_empty());
            let (root, _) = yaml::parse(&map).expect("parses");
            let NodeKind::Map(entries) = &root.kind else { panic!("not a mapping") };
            let Some((_, tags)) = entries.iter().find(|(k, _)| k.as_scalar() == Some("tags")) else {
                panic!("no tags")
            };
            let NodeKind::Seq(tags) = &tags.kind else { panic!("not a list") };
            let (header, rows) = export_rows(tags).expect("exports");
            let style = CsvStyle { delimiter: if semicolon { b';' } else { b',' }, bom };
            let csv = String::from_utf8(write_csv(&header, &rows, style)).expect("UTF-8");
            let imported = import(Path::new("t.csv"), &csv, path, &map, &ImportOptions::default());
            let imported = match imported {
                Ok(i) => i,
                Err(report) => {
                    // A tag that `check` refuses is refused from the table too.
                    let (_, problems) = crate::mapping::compile_owned(
                        parsed.value.expect("parsed"), path, &parsed.dropped);
                    prop_assert!(!problems.is_empty(), "refused:\n{report}\ntable:\n{csv}");
                    return Ok(());
                }
            };
            prop_assert_eq!(tags_of(&imported.text), tags_of(&map), "table:\n{}", csv);
            prop_assert!(imported.text.starts_with("# kept\nsource:"));
        }
    }
}
