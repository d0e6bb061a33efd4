//! Table rows ⇄ the YAML trees of tags.
//!
//! Import: the header names the columns; each row becomes the mapping a tag map would hold
//! for that tag, every node at the cell it came from, for the deserializer and the compiler
//! of `check`. Export: each tag of a tag map's `tags:` list becomes a row whose cells read back
//! into the same values ([`cell_text`] quotes what would otherwise read differently).

use crate::config::diagnostic::{shown, Pos, Problem};
use crate::config::yaml::{self, Node, NodeKind};

use super::emit::{flow, typed};
use super::sheet::{Cell, Sheet};
use super::{FIELD_PREFIX, STRUCTURED_KEYS, TAG_KEYS};

/// One tag read from a table: its row's place and the mapping a tag map would hold.
#[derive(Debug, Clone, PartialEq)]
pub struct TagRow {
    pub pos: Pos,
    pub node: Node,
}

/// What a header cell names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// A tag key, e.g. `type`.
    Key(&'static str),
    /// One extra field: `fields.unit` → `unit`.
    Field(String),
    /// A note for people (`#…`), or a column already reported: ignored.
    Skip,
}

/// The columns a header names, and its problems: unknown keys (with a "did you mean"), a key
/// written twice, no `sensor_id`.
pub fn columns(header: &[Cell]) -> (Vec<Column>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut seen: Vec<(String, u32)> = Vec::new();
    let mut out = Vec::with_capacity(header.len());
    for cell in header {
        let name = cell.text.trim();
        let column = if name.starts_with('#') {
            Column::Skip
        } else if let Some(field) = name.strip_prefix(FIELD_PREFIX) {
            if field.is_empty() {
                problems.push(
                    Problem::new(cell.pos, "column `fields.` names no field")
                        .with_hint("write the field's name after the dot, e.g. `fields.unit`"),
                );
                Column::Skip
            } else {
                Column::Field(field.to_string())
            }
        } else if name == "fields" {
            problems.push(
                Problem::new(cell.pos, "a table gives each field its own column")
                    .with_hint("name the columns `fields.unit`, `fields.description`, …"),
            );
            Column::Skip
        } else if let Some(key) = TAG_KEYS.iter().find(|k| **k == name) {
            Column::Key(key)
        } else {
            problems.push(unknown_key(name, cell.pos));
            Column::Skip
        };
        if column != Column::Skip {
            if let Some((_, first)) = seen.iter().find(|(n, _)| n == name) {
                problems.push(
                    Problem::new(
                        cell.pos,
                        format!("key {} is written twice in the header", shown(name)),
                    )
                    .with_hint(format!("the first one is in column {first}")),
                );
                out.push(Column::Skip);
                continue;
            }
            seen.push((name.to_string(), cell.pos.col));
        }
        out.push(column);
    }
    if !out.contains(&Column::Key("sensor_id")) && !header.is_empty() {
        problems.push(
            Problem::new(
                Pos { line: 1, col: 1 },
                "the header has no `sensor_id` column",
            )
            .with_hint("every tag needs a sensor_id; name the first column `sensor_id`"),
        );
    }
    (out, problems)
}

/// "unknown key", as `check` says it for a tag.
fn unknown_key(name: &str, pos: Pos) -> Problem {
    let error = <crate::config::de::Error as serde::de::Error>::unknown_field(name, &TAG_KEYS);
    let (message, hint) = match error {
        crate::config::de::Error::Pending { message, hint, .. } => (message, hint),
        crate::config::de::Error::Reported => (format!("unknown key `{name}`"), None),
    };
    let mut problem = Problem::new(pos, message);
    problem.hint = hint.or_else(|| {
        Some(format!(
            "expected one of: {}, fields.NAME; a column starting with # is a note",
            TAG_KEYS[..TAG_KEYS.len() - 1].join(", ")
        ))
    });
    problem
}

/// The rows of a table as tags. Problems: the header's, and cells that are not YAML where
/// YAML is expected (`{0: Stopped` without its brace).
pub fn rows_from_sheet(sheet: &Sheet) -> (Vec<TagRow>, Vec<Problem>) {
    let (columns, mut problems) = columns(&sheet.header);
    let mut rows = Vec::with_capacity(sheet.rows.len());
    if !columns.contains(&Column::Key("sensor_id")) {
        return (rows, problems);
    }
    for cells in &sheet.rows {
        let pairs = columns.iter().zip(cells).filter_map(|(column, cell)| {
            (!matches!(column, Column::Skip) && !cell.text.is_empty()).then_some((column, cell))
        });
        let (row, mut more) = tag_row(cells.first().map_or(Pos::default(), |c| c.pos), pairs);
        problems.append(&mut more);
        rows.extend(row);
    }
    (rows, problems)
}

/// One tag from its non-empty cells. `None` when a cell could not be read (reported).
pub fn tag_row<'a>(
    at: Pos,
    cells: impl Iterator<Item = (&'a Column, &'a Cell)>,
) -> (Option<TagRow>, Vec<Problem>) {
    let pos = Pos {
        line: at.line,
        col: 1,
    };
    let mut problems = Vec::new();
    let mut entries: Vec<(Node, Node)> = Vec::new();
    let mut fields: Vec<(Node, Node)> = Vec::new();
    for (column, cell) in cells {
        let structured = match column {
            Column::Key(k) => STRUCTURED_KEYS.contains(k),
            Column::Field(_) => true,
            Column::Skip => continue,
        };
        let value = match cell_node(cell, structured) {
            Ok(node) => node,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let name = match column {
            Column::Key(k) => k.to_string(),
            Column::Field(f) => f.clone(),
            Column::Skip => continue,
        };
        let key = scalar(cell.pos, name, true);
        match column {
            Column::Field(_) => fields.push((key, value)),
            _ => entries.push((key, value)),
        }
    }
    if let Some((first, _)) = fields.first() {
        let at = first.pos;
        let end = fields.last().map_or(at, |(_, v)| v.end);
        entries.push((
            scalar(at, "fields".into(), true),
            Node {
                pos: at,
                end,
                kind: NodeKind::Map(fields),
            },
        ));
    }
    if !problems.is_empty() {
        return (None, problems);
    }
    // Keys in column order, so "is X inside this tag" holds for every cell of the row.
    entries.sort_by_key(|(k, _)| k.pos);
    let end = entries.iter().map(|(_, v)| v.end).max().unwrap_or(pos);
    let node = Node {
        pos,
        end,
        kind: NodeKind::Map(entries),
    };
    (Some(TagRow { pos, node }), problems)
}

fn scalar(pos: Pos, text: String, plain: bool) -> Node {
    Node {
        pos,
        end: pos,
        kind: NodeKind::Scalar { text, plain },
    }
}

/// A cell as a YAML node at the cell's place: a plain scalar, literally; a whole quoted YAML
/// string; in `structured` columns a flow collection.
fn cell_node(cell: &Cell, structured: bool) -> Result<Node, Problem> {
    let text = cell.text.as_str();
    let quoted = text.len() >= 2
        && ((text.starts_with('"') && text.ends_with('"'))
            || (text.starts_with('\'') && text.ends_with('\'')));
    let collection = structured && (text.starts_with('{') || text.starts_with('['));
    if quoted || collection {
        match yaml::parse(text) {
            Ok((mut node, problems)) if problems.is_empty() => {
                let is_quoted_scalar = matches!(node.kind, NodeKind::Scalar { plain: false, .. });
                let is_collection = matches!(node.kind, NodeKind::Seq(_) | NodeKind::Map(_));
                if (quoted && is_quoted_scalar) || (collection && is_collection) {
                    place(&mut node, cell.pos);
                    return Ok(node);
                }
            }
            Ok((_, problems)) if collection => {
                let first = problems.into_iter().next();
                return Err(Problem::new(
                    cell.pos,
                    first.map_or_else(|| "not YAML".to_string(), |p| p.message),
                ));
            }
            Err(problem) if collection => {
                return Err(Problem::new(cell.pos, problem.message)
                    .with_hint("write a YAML flow collection, e.g. `{0: Stopped, 1: Running}`"));
            }
            _ => {}
        }
    }
    Ok(scalar(cell.pos, text.to_string(), true))
}

/// Puts every node of a tree at `pos`.
fn place(node: &mut Node, pos: Pos) {
    node.pos = pos;
    node.end = pos;
    match &mut node.kind {
        NodeKind::Scalar { .. } => {}
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| place(n, pos)),
        NodeKind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            place(k, pos);
            place(v, pos);
        }),
    }
}

/// A table to write: its header and its rows of cell texts.
pub type Exported = (Vec<String>, Vec<Vec<String>>);

/// A tag map's tags as a table: the header (the keys the tags use, in [`TAG_KEYS`] order, then
/// `fields.*` in name order) and one row per tag. `tags` is the `tags:` list of a file that
/// passed `check`; a tag that is not a mapping is a problem at its place.
pub fn export_rows(tags: &[Node]) -> Result<Exported, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut keys: Vec<&'static str> = Vec::new();
    let mut field_names: Vec<String> = Vec::new();
    let mut maps = Vec::with_capacity(tags.len());
    for tag in tags {
        let NodeKind::Map(entries) = &tag.kind else {
            problems.push(Problem::new(
                tag.pos,
                "expected a tag (a mapping), found something else",
            ));
            continue;
        };
        for (k, v) in entries {
            let name = k.as_scalar().unwrap_or_default();
            match TAG_KEYS.iter().find(|t| **t == name) {
                Some(&"fields") => match &v.kind {
                    NodeKind::Map(fields) => {
                        for (f, _) in fields {
                            let f = f.as_scalar().unwrap_or_default().to_string();
                            if !field_names.contains(&f) {
                                field_names.push(f);
                            }
                        }
                    }
                    _ if v.is_null() => {}
                    _ => problems.push(Problem::new(v.pos, "`fields` is not a mapping")),
                },
                Some(key) => {
                    if !keys.contains(key) {
                        keys.push(key);
                    }
                }
                None => problems.push(Problem::new(k.pos, format!("unknown key {}", k.describe()))),
            }
        }
        maps.push(entries);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    keys.sort_by_key(|k| TAG_KEYS.iter().position(|t| t == k));
    field_names.sort();
    let mut header: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    header.extend(field_names.iter().map(|f| format!("{FIELD_PREFIX}{f}")));
    let rows = maps
        .into_iter()
        .map(|entries| {
            let get = |name: &str| entries.iter().find(|(k, _)| k.as_scalar() == Some(name));
            let fields = get("fields").map(|(_, v)| v);
            let mut row: Vec<String> = keys
                .iter()
                .map(|k| get(k).map_or_else(String::new, |(_, v)| cell_text(v, Kind::of(k))))
                .collect();
            row.extend(field_names.iter().map(|f| {
                let value = fields.and_then(|v| match &v.kind {
                    NodeKind::Map(entries) => entries
                        .iter()
                        .find(|(k, _)| k.as_scalar() == Some(f.as_str()))
                        .map(|(_, v)| v),
                    _ => None,
                });
                value.map_or_else(String::new, |v| cell_text(v, Kind::Field))
            }));
            row
        })
        .collect();
    Ok((header, rows))
}

/// What a column holds, for writing its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text keys (`sensor_id`, `node`, `modicon`): the deserializer takes any plain scalar
    /// but `null` as its text, so `40001` needs no quotes.
    Text,
    /// `states`, `server_deadband`: cells may be YAML flow collections.
    Structured,
    /// `fields.*`: any YAML value.
    Field,
    /// Every other key: a plain scalar.
    Plain,
}

impl Kind {
    pub fn of(key: &str) -> Kind {
        match key {
            "sensor_id" | "node" | "modicon" => Kind::Text,
            k if STRUCTURED_KEYS.contains(&k) => Kind::Structured,
            _ => Kind::Plain,
        }
    }
}

/// The cell for a value, read back by import as the same value. Collections are
/// written as YAML flow text; a scalar that would be read differently in a cell (a quoted
/// `"12"`, an empty string, text starting with a quote) is written YAML-quoted. In a
/// field column an empty value is written `null` (an empty cell means "no such field").
pub fn cell_text(node: &Node, kind: Kind) -> String {
    let structured = matches!(kind, Kind::Structured | Kind::Field);
    match &node.kind {
        NodeKind::Seq(_) | NodeKind::Map(_) => flow(node),
        NodeKind::Scalar { text, plain } => {
            if node.is_null() {
                return if kind == Kind::Field {
                    "null".into()
                } else {
                    String::new()
                };
            }
            let as_cell = scalar(node.pos, text.clone(), true);
            let same_reading = *plain
                || (kind == Kind::Text && !as_cell.is_null())
                || typed(&as_cell) == typed(node);
            let read_back_raw = cell_node(
                &Cell {
                    pos: node.pos,
                    text: text.clone(),
                },
                structured,
            )
            .is_ok_and(|n| n.kind == as_cell.kind);
            if same_reading && read_back_raw && !text.is_empty() {
                text.clone()
            } else {
                super::emit::double_quoted(text)
            }
        }
    }
}

/// A tag as the deserializer reads it, without positions: what "the same tag" means. The
/// text keys ([`Kind::Text`]) are read as text, as their deserializer does (`sensor_id: 00`
/// is the sensor_id `00`).
pub fn reading(node: &Node) -> serde_json::Value {
    let mut node = node.clone();
    if let NodeKind::Map(entries) = &mut node.kind {
        for (k, v) in entries.iter_mut() {
            let text_key = k.as_scalar().is_some_and(|k| Kind::of(k) == Kind::Text);
            if let (true, false, NodeKind::Scalar { plain, .. }) =
                (text_key, v.is_null(), &mut v.kind)
            {
                *plain = false;
            }
        }
    }
    typed(&node)
}
