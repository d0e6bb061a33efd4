//! A YAML document as a tree in which every node knows where it starts.
//!
//! Built from `saphyr-parser` events. Keeping positions on every node (rather than only on the
//! first error, as serde YAML crates do) is what lets the loader report every problem of a file
//! at once, each at its own line and column. Anchors and aliases are resolved by copying; a
//! key written twice in one mapping is a problem, not a silent overwrite.
//!
//! Hostile input is bounded: nesting deeper than [`MAX_DEPTH`] and aliases that expand to more
//! than [`MAX_ALIAS_NODES`] nodes (a "billion laughs" document) are positioned errors, found
//! before the tree grows; nothing here recurses deeper than [`MAX_DEPTH`].

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::diagnostic::{Pos, Problem};

/// The deepest nesting of lists and mappings a file may have. Tag maps and gateway.yaml need
/// fewer than ten levels; the bound keeps every recursive step (here, in the deserializer and
/// when the tree is dropped) far from the end of the stack.
pub const MAX_DEPTH: usize = 64;
/// The most nodes that aliases (`*name`) may copy into a document, all aliases together.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    /// Where the node's content ends (the end of its last scalar), for "is X inside Y".
    pub end: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar's text. `plain` is false for quoted and block scalars, which are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar's text, if this node is a scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// True for `~`, `null`, an empty value, or an empty document.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true } if is_null_text(text))
    }

    /// A short description for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "nothing".to_string(),
            NodeKind::Scalar { text, .. } => super::diagnostic::shown(text),
            NodeKind::Seq(_) => "a list".to_string(),
            NodeKind::Map(_) => "a mapping".to_string(),
        }
    }
}

pub(crate) fn is_null_text(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line() as u32,
        col: span.start.col() as u32 + 1,
    }
}

/// Parses one YAML document. Syntax errors are fatal for the file (the tree after them cannot be
/// trusted); duplicate keys are collected and the parse goes on.
pub fn parse(text: &str) -> Result<(Node, Vec<Problem>), Problem> {
    build(text, None)
}

/// Like [`parse`], but each item of the top-level `tags:` list is handed to `each_tag` as soon
/// as it is read, and left out of the tree (which shows `tags` as an empty list). A large tag
/// map's tree is then never whole in memory.
pub fn parse_streaming_tags(
    text: &str,
    each_tag: &mut dyn FnMut(Node),
) -> Result<(Node, Vec<Problem>), Problem> {
    build(text, Some(each_tag))
}

fn build(
    text: &str,
    stream: Option<&mut dyn FnMut(Node)>,
) -> Result<(Node, Vec<Problem>), Problem> {
    if let Some(problem) = control_character(text) {
        return Err(problem);
    }
    build_tree(text, stream).map_err(|problem| within(text, problem))
}

/// The reader reports the end of a file that lacks a final line break on the line after it:
/// point at the end of the last line instead, where an editor can show it.
fn within(text: &str, mut problem: Problem) -> Problem {
    let all = super::diagnostic::yaml_lines(text);
    let lines = all.len() as u32;
    if problem.pos.line > lines {
        let last = all.last().copied().unwrap_or("");
        problem.pos = Pos {
            line: lines.max(1),
            col: last.chars().count() as u32 + 1,
        };
    }
    problem
}

fn build_tree(
    text: &str,
    stream: Option<&mut dyn FnMut(Node)>,
) -> Result<(Node, Vec<Problem>), Problem> {
    let mut builder = Builder {
        anchors: HashMap::new(),
        problems: Vec::new(),
        depth: 0,
        alias_nodes: 0,
        stream,
        streaming_next: false,
    };
    let mut parser = Parser::new_from_str(text);
    let mut root = None;
    loop {
        let (event, span) = next(&mut parser)?;
        match event {
            Event::StreamStart | Event::DocumentStart(_) | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            other => {
                if root.is_some() {
                    return Err(Problem::new(
                        pos_of(&span),
                        "a tag map or config file holds one YAML document",
                    )
                    .with_hint(
                        "remove the second `---` and what follows, or split it into its own file",
                    ));
                }
                root = Some(builder.node(&mut parser, other, span)?);
            }
        }
    }
    let root = root.unwrap_or(Node {
        pos: Pos { line: 1, col: 1 },
        end: Pos { line: 1, col: 1 },
        kind: NodeKind::Scalar {
            text: String::new(),
            plain: true,
        },
    });
    Ok((root, builder.problems))
}

fn next<'a>(
    parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
) -> Result<(Event<'a>, Span), Problem> {
    match parser.next_event() {
        Some(Ok(ok)) => Ok(ok),
        Some(Err(e)) => {
            let m = e.marker();
            let pos = Pos {
                line: m.line() as u32,
                col: m.col() as u32 + 1,
            };
            Err(Problem::new(pos, format!("YAML syntax: {}", e.info()))
                .with_hint(syntax_hint(e.info())))
        }
        None => Err(Problem::new(Pos::default(), "unexpected end of YAML")),
    }
}

/// The first control character YAML does not allow (YAML 1.2, 5.1: tab, line feed, carriage
/// return and next line are the only ones), at its position.
fn control_character(text: &str) -> Option<Problem> {
    let (offset, c) = text
        .char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{85}'))?;
    let before = super::diagnostic::yaml_lines(&text[..offset]);
    let line = before.len() as u32;
    let col = before.last().map_or(0, |l| l.chars().count()) as u32 + 1;
    let name = if c == '\0' { " (a NUL byte)" } else { "" };
    Some(
        Problem::new(
            Pos { line, col },
            format!(
                "the file holds the control character U+{:04X}{name}, which YAML does not allow",
                u32::from(c)
            ),
        )
        .with_hint("is it a text file? remove the character"),
    )
}

fn syntax_hint(info: &str) -> &'static str {
    let has_word = |w: &str| {
        info.split(|c: char| !c.is_ascii_alphabetic())
            .any(|word| word.eq_ignore_ascii_case(w))
    };
    if has_word("tab") || has_word("tabs") {
        "YAML indents with spaces; replace the tab characters"
    } else if info.contains("mapping values are not allowed") {
        "a value containing `: ` must be quoted, or the line is indented too far"
    } else {
        "check the indentation and quoting on this line and the one before"
    }
}

struct Builder<'s> {
    /// Where the top-level `tags:` items go, when they are streamed.
    stream: Option<&'s mut dyn FnMut(Node)>,
    /// Anchored nodes and how many nodes each holds.
    anchors: HashMap<usize, (Node, usize)>,
    problems: Vec<Problem>,
    /// Lists and mappings open around the current event.
    depth: usize,
    /// Nodes copied by aliases so far.
    alias_nodes: usize,
    /// The sequence about to start is the top-level `tags:` list, to be streamed.
    streaming_next: bool,
}

/// How many nodes `node` holds, itself included.
fn count_nodes(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
    }
}

impl Builder<'_> {
    /// One node from its first event: a scalar, an alias, or a list or mapping read to its end.
    /// Long on purpose: one match over the parser's event kinds, each arm short, sharing the
    /// depth and alias budgets that bound hostile input.
    fn node<'a>(
        &mut self,
        parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
        event: Event<'a>,
        span: Span,
    ) -> Result<Node, Problem> {
        let pos = pos_of(&span);
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                // An explicit `!!str` tag makes a plain scalar a string, as quoting does.
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !is_str_tag;
                (
                    Node {
                        pos,
                        end: Pos {
                            line: span.end.line() as u32,
                            col: span.end.col() as u32 + 1,
                        },
                        kind: NodeKind::Scalar {
                            text: text.into_owned(),
                            plain,
                        },
                    },
                    anchor,
                )
            }
            Event::SequenceStart(anchor, _) => {
                // The top-level `tags:` list, streamed: its items leave as they are read.
                let streamed = std::mem::take(&mut self.streaming_next);
                self.enter(pos)?;
                let mut items = Vec::new();
                loop {
                    let (event, span) = next(parser)?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    let item = self.node(parser, event, span)?;
                    match (&mut self.stream, streamed) {
                        (Some(stream), true) => stream(item),
                        _ => items.push(item),
                    }
                }
                // An error above ends the whole parse, so only success needs to leave.
                self.depth -= 1;
                // Large files hold many small lists: no spare capacity kept.
                items.shrink_to_fit();
                let end = items.last().map_or(pos, |n| n.end);
                (
                    Node {
                        pos,
                        end,
                        kind: NodeKind::Seq(items),
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => {
                self.enter(pos)?;
                let mut entries: Vec<(Node, Node)> = Vec::new();
                // Scalar keys seen so far, so that a wide mapping is checked in linear time.
                let mut seen: HashMap<String, usize> = HashMap::new();
                let root = self.depth == 1;
                loop {
                    let (event, span) = next(parser)?;
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let key = self.node(parser, event, span)?;
                    let (event, span) = next(parser)?;
                    self.streaming_next = root
                        && self.stream.is_some()
                        && key.as_scalar() == Some("tags")
                        && matches!(event, Event::SequenceStart(..));
                    let value = self.node(parser, event, span)?;
                    let first = match key.as_scalar() {
                        Some(text) => seen.get(text).map(|&i| &entries[i]),
                        None => entries.iter().find(|(k, _)| k.kind == key.kind),
                    };
                    if let Some((first, _)) = first {
                        self.problems.push(
                            Problem::new(
                                key.pos,
                                format!("key {} is written twice in this mapping", key.describe()),
                            )
                            .with_hint(format!("the first one is at line {}", first.pos.line)),
                        );
                        continue;
                    }
                    if let Some(text) = key.as_scalar() {
                        seen.insert(text.to_string(), entries.len());
                    }
                    entries.push((key, value));
                }
                self.depth -= 1;
                entries.shrink_to_fit();
                let end = entries.last().map_or(pos, |(_, v)| v.end);
                (
                    Node {
                        pos,
                        end,
                        kind: NodeKind::Map(entries),
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                return match self.anchors.get(&id) {
                    Some((node, count)) => {
                        self.alias_nodes = self.alias_nodes.saturating_add(*count);
                        if self.alias_nodes > MAX_ALIAS_NODES {
                            return Err(Problem::new(
                                pos,
                                format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                            )
                            .with_hint(
                                "write the repeated parts out, or use fewer nested aliases",
                            ));
                        }
                        Ok(Node {
                            pos,
                            end: pos,
                            ..node.clone()
                        })
                    }
                    None => Err(Problem::new(
                        pos,
                        "alias refers to an anchor that is not defined before it",
                    )),
                };
            }
            other => {
                return Err(Problem::new(
                    pos,
                    format!("unexpected YAML event {other:?}"),
                ))
            }
        };
        if anchor != 0 {
            self.anchors
                .insert(anchor, (node.clone(), count_nodes(&node)));
        }
        Ok(node)
    }

    /// One level deeper, refused past [`MAX_DEPTH`]; the caller leaves with `depth -= 1`.
    fn enter(&mut self, pos: Pos) -> Result<(), Problem> {
        if self.depth >= MAX_DEPTH {
            return Err(Problem::new(
                pos,
                format!("lists and mappings are nested more than {MAX_DEPTH} levels deep"),
            )
            .with_hint("tag maps and gateway.yaml need only a few levels"));
        }
        self.depth += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(node: &Node) -> (&str, Pos) {
        (node.as_scalar().unwrap(), node.pos)
    }

    #[test]
    fn positions_are_one_based() {
        let (root, problems) = parse("a: 1\nlist:\n  - x: 'q'\n").unwrap();
        assert!(problems.is_empty());
        let NodeKind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert_eq!(scalar(&entries[0].0), ("a", Pos { line: 1, col: 1 }));
        assert_eq!(scalar(&entries[0].1), ("1", Pos { line: 1, col: 4 }));
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!("not a seq")
        };
        let NodeKind::Map(inner) = &items[0].kind else {
            panic!("not a map")
        };
        assert_eq!(inner[0].1.pos, Pos { line: 3, col: 8 });
        assert_eq!(
            inner[0].1.kind,
            NodeKind::Scalar {
                text: "q".into(),
                plain: false
            }
        );
    }

    #[test]
    fn duplicate_keys_are_reported_and_first_wins() {
        let (root, problems) = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].pos, Pos { line: 3, col: 1 });
        assert_eq!(
            problems[0].message,
            "key `a` is written twice in this mapping"
        );
        let NodeKind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1.as_scalar(), Some("1"));
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let (root, _) = parse("base: &b {x: 1}\ncopy: *b\n").unwrap();
        let NodeKind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.kind, entries[1].1.kind);
        assert_eq!(entries[1].1.pos.line, 2);
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.message.starts_with("YAML syntax:"), "{}", err.message);
        assert!(err.pos.line >= 1);
        let tab = parse("a:\n\tb: 1\n").unwrap_err();
        assert_eq!(tab.pos.line, 2, "{tab:?}");
    }

    #[test]
    fn deep_nesting_is_a_positioned_error_not_a_stack_overflow() {
        let deep = "- ".repeat(10_000) + "x\n";
        let err = parse(&deep).unwrap_err();
        assert_eq!(
            err.message,
            format!("lists and mappings are nested more than {MAX_DEPTH} levels deep")
        );
        assert_eq!(
            err.pos,
            Pos {
                line: 1,
                col: 2 * MAX_DEPTH as u32 + 1
            }
        );
        let flow = "[".repeat(100_000);
        assert!(parse(&flow).is_err());
        let ok = "- ".repeat(MAX_DEPTH) + "x\n";
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn alias_expansion_is_bounded() {
        // Ten levels of ten aliases each: 10^10 nodes if copied naively.
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&doc).unwrap_err();
        assert_eq!(
            err.message,
            format!("aliases expand to more than {MAX_ALIAS_NODES} nodes")
        );
        assert_eq!(err.pos.line, 5, "{err:?}");
    }

    #[test]
    fn a_nul_byte_is_not_taken_for_a_tab() {
        let err = parse("a: x\nb: b\0c\n").unwrap_err();
        assert_eq!(
            err.message,
            "the file holds the control character U+0000 (a NUL byte), which YAML does not allow"
        );
        assert_eq!(err.pos, Pos { line: 2, col: 5 });
        assert_eq!(
            err.hint.as_deref(),
            Some("is it a text file? remove the character")
        );
        assert_eq!(
            syntax_hint("found unprintable character"),
            "check the indentation and quoting on this line and the one before"
        );
    }

    #[test]
    fn empty_document_is_null() {
        let (root, _) = parse("# only a comment\n").unwrap();
        assert!(root.is_null());
    }
}
