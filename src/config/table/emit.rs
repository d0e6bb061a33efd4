//! Writing tags back into a tag map: YAML text for values and for the `tags:` block, and the
//! splice that replaces only that block.
//!
//! Invariants:
//! - A scalar is written plain only when YAML reads the plain text back as the same value
//!   ([`plain_is_safe`] is conservative); otherwise double-quoted with escapes, which YAML
//!   reads back as that exact string.
//! - [`splice`] keeps every byte outside the `tags:` block: comments, blank lines, key order
//!   and the layout of `source:`, `defaults:` and `fields:`. The block runs from the `tags:`
//!   key to the next top-level key, without the blank lines and column-0 comments just above
//!   that key (they belong to it). Comments inside the old block go with the old tags.

use std::fmt::Write as _;

use crate::config::de::from_node;
use crate::config::diagnostic::{yaml_lines, Pos, Problem};
use crate::config::yaml::{Node, NodeKind};

use super::TAG_KEYS;

/// A scalar or a tree as the deserializer reads it, without positions.
pub fn typed(node: &Node) -> serde_json::Value {
    from_node::<serde_json::Value>(node)
        .value
        .unwrap_or(serde_json::Value::Null)
}

/// `text` as a YAML double-quoted scalar.
pub fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{FEFF}') => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `text` written plain reads back as a plain scalar with this exact text; `flow`:
/// inside `{…}` or `[…]`, where `,[]{}` end a scalar.
pub fn plain_is_safe(text: &str, flow: bool) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    let starts_ok = match first {
        '-' | '+' | '.' => text
            .chars()
            .nth(1)
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.'),
        c => {
            c.is_alphanumeric() || matches!(c, '_' | '/' | '(' | ')' | '$' | '<' | '=' | '~' | '^')
        }
    };
    let chars_ok = text.chars().all(|c| {
        !(c.is_control()
            || matches!(
                c,
                '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{FEFF}' | '"' | '\'' | '\\'
            )
            || (flow && matches!(c, ',' | '[' | ']' | '{' | '}')))
    });
    starts_ok
        && chars_ok
        && !text.ends_with([' ', ':'])
        && !text.contains(": ")
        && !text.contains(" #")
}

/// A scalar as YAML text: plain when that reads back the same, double-quoted otherwise.
fn scalar_text(node: &Node, text: &str, plain: bool, flow: bool) -> String {
    if node.is_null() {
        return "null".into();
    }
    if plain_is_safe(text, flow) {
        let as_plain = Node {
            kind: NodeKind::Scalar {
                text: text.to_string(),
                plain: true,
            },
            ..node.clone()
        };
        if plain || typed(&as_plain) == typed(node) {
            return text.to_string();
        }
    }
    double_quoted(text)
}

/// A tree as YAML flow text: `{0: Stopped, 1: Running}`, `[a, b]`.
pub fn flow(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar { text, plain } => scalar_text(node, text, *plain, true),
        NodeKind::Seq(items) => {
            let items: Vec<String> = items.iter().map(flow).collect();
            format!("[{}]", items.join(", "))
        }
        NodeKind::Map(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", flow(k), flow(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// The `tags:` block for `tags` (each a mapping from a table row): block style, keys in
/// [`TAG_KEYS`] order, one blank line between tags, as the shipped tag maps are written.
pub fn tags_block(tags: &[&Node]) -> String {
    let mut out = String::from("tags:\n");
    for (i, tag) in tags.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let NodeKind::Map(entries) = &tag.kind else {
            continue;
        };
        let mut entries: Vec<&(Node, Node)> = entries.iter().collect();
        entries.sort_by_key(|(k, _)| {
            TAG_KEYS
                .iter()
                .position(|t| Some(*t) == k.as_scalar())
                .unwrap_or(TAG_KEYS.len())
        });
        for (j, (k, v)) in entries.iter().enumerate() {
            let lead = if j == 0 { "  - " } else { "    " };
            let key = flow(k);
            let value = match &v.kind {
                NodeKind::Scalar { text, plain } => scalar_text(v, text, *plain, false),
                _ => flow(v),
            };
            let _ = writeln!(out, "{lead}{key}: {value}");
        }
    }
    out
}

/// `text` (a tag map) with its `tags:` block replaced by `block`; appended after a blank line
/// when the file has none. `root` is `text` parsed.
pub fn splice(text: &str, root: &Node, block: &str) -> Result<String, Problem> {
    let NodeKind::Map(entries) = &root.kind else {
        return Err(Problem::new(
            root.pos,
            "the tag map is not a mapping of keys",
        ));
    };
    let lines = yaml_lines(text);
    // Byte offset where each line starts.
    let mut starts = Vec::with_capacity(lines.len() + 1);
    let mut at = 0usize;
    for line in &lines {
        starts.push(at);
        at += line.len();
        // The break after the line, as written (`\r\n`, `\n` or `\r`).
        if text[at..].starts_with("\r\n") {
            at += 2;
        } else if at < text.len() {
            at += 1;
        }
    }
    starts.push(text.len());
    let line_start = |line: u32| starts[(line.max(1) as usize - 1).min(lines.len())];
    let Some(index) = entries
        .iter()
        .position(|(k, _)| k.as_scalar() == Some("tags"))
    else {
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(block);
        return Ok(out);
    };
    let key = &entries[index].0;
    if key.pos.col != 1 {
        return Err(
            Problem::new(key.pos, "`tags:` is not at the start of its line")
                .with_hint("write the tag map in block style, one top-level key per line"),
        );
    }
    let begin = line_start(key.pos.line);
    // The block ends before the next top-level key, or at the end of the file; blank lines
    // and column-0 comments just above that key stay with it.
    let mut end_line = match entries.get(index + 1) {
        Some((next, _)) => next.pos.line as usize - 1,
        None => lines.len(),
    };
    let last_tag_line = entries[index].1.end.line as usize;
    while end_line > last_tag_line.max(key.pos.line as usize) {
        let line = lines[end_line - 1];
        if line.trim().is_empty() || line.starts_with('#') {
            end_line -= 1;
        } else {
            break;
        }
    }
    let end = starts[end_line.min(lines.len())];
    let crlf = text.contains("\r\n");
    let block = if crlf {
        block.replace('\n', "\r\n")
    } else {
        block.to_string()
    };
    let mut out = String::with_capacity(text.len() + block.len());
    out.push_str(&text[..begin]);
    out.push_str(&block);
    let rest = &text[end..];
    out.push_str(rest);
    Ok(out)
}

/// The place of a problem found in text that [`splice`] wrote (a bug if ever reached).
pub fn internal(pos: Pos, what: &str) -> Problem {
    Problem::new(
        pos,
        format!("internal error: the tag map written from the table {what}"),
    )
    .with_hint("nothing was written; please report this with the table")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;

    #[test]
    fn plain_only_when_it_reads_back_the_same() {
        for (text, flow) in [
            ("press-3:pressure", false),
            ("ns=2;s=Line1/Compressor7/VibeX", true),
            ("-5", true),
            ("0.1", true),
            ("mm/s", true),
        ] {
            assert!(plain_is_safe(text, flow), "{text}");
        }
        for (text, flow) in [
            ("", false),
            ("a: b", false),
            ("a #b", false),
            ("- x", false),
            ("a,b", true),
            (" x", false),
            ("x:", false),
            ("'q", false),
            ("@x", false),
            ("*x", false),
            ("&x", false),
            ("!x", false),
            ("|", false),
            (">", false),
            ("%x", false),
            ("?x", false),
        ] {
            assert!(!plain_is_safe(text, flow), "{text:?}");
        }
    }

    #[test]
    fn double_quoted_reads_back_exactly() {
        for text in [
            "a\"b\\c",
            "line\nbreak\ttab",
            "\u{1}\u{85}\u{2028}\u{FEFF}",
            "é ✓ 𝄞",
            "",
        ] {
            let (node, problems) = yaml::parse(&format!("k: {}\n", double_quoted(text))).unwrap();
            assert!(problems.is_empty());
            let NodeKind::Map(entries) = node.kind else {
                panic!("not a map")
            };
            assert_eq!(entries[0].1.as_scalar(), Some(text));
        }
    }

    #[test]
    fn splice_keeps_everything_outside_tags() {
        let text = "# head\nsource:\n  modbus: {tcp: \"a:1\"}   # c\n\ntags:\n  - sensor_id: a\n    # inner\n    modicon: 40001\n\n# about fields\nfields:\n  x: 1\n";
        let (root, _) = yaml::parse(text).unwrap();
        let out = splice(text, &root, "tags:\n  - sensor_id: b\n").unwrap();
        assert_eq!(
            out,
            "# head\nsource:\n  modbus: {tcp: \"a:1\"}   # c\n\ntags:\n  - sensor_id: b\n\n# about fields\nfields:\n  x: 1\n"
        );
        let last = "source: {}\ntags: [{sensor_id: a}]\n# end\n";
        let (root, _) = yaml::parse(last).unwrap();
        assert_eq!(
            splice(last, &root, "tags:\n  - sensor_id: b\n").unwrap(),
            "source: {}\ntags:\n  - sensor_id: b\n# end\n"
        );
        let none = "source: {}";
        let (root, _) = yaml::parse(none).unwrap();
        assert_eq!(
            splice(none, &root, "tags:\n").unwrap(),
            "source: {}\n\ntags:\n"
        );
    }
}
