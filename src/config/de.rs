//! A serde `Deserializer` over [`Node`] that reports every problem it can, each at its position.
//!
//! Derived `Deserialize` code stops at its first error. To report a whole file at once:
//! - unknown keys are found before a struct is visited (serde hands us its field names), all of
//!   them recorded with a "did you mean", and then skipped;
//! - an error inside a list element is recorded and that element skipped, so the next tag is
//!   still checked;
//! - every error gets the position of the innermost node that caused it.
//!
//! Values read as YAML 1.2 core schema: plain `true`/`false`, integers, floats and `null`; quoted
//! scalars are always strings. Where a string is wanted, a plain number is taken as its text.
//! [`Spanned<T>`] records where a value was written, for checks that run after parsing.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;

use super::diagnostic::{did_you_mean, Pos, Problem};
use super::yaml::{is_null_text, Node, NodeKind};

/// What deserializing a document found.
#[derive(Debug)]
pub struct Parsed<T> {
    /// The value, when the shape allowed one; with problems it lacks the parts that failed.
    pub value: Option<T>,
    pub problems: Vec<Problem>,
    /// Keys whose values failed and were left out of `value`: checks after parsing skip what
    /// contains them, since what is left would only produce echoes of the same mistake.
    pub dropped: Vec<Pos>,
}

/// Deserializes `T` from `node`, returning the value when the shape allowed one and every
/// problem found. A value with problems may miss the list elements that failed.
///
/// Derived code abandons a struct at its first bad field, which would hide the problems of the
/// fields after it. So each pass removes the entries whose values failed and runs again, until
/// a pass fails no entry: every pass reveals what the previous one hid.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Parsed<T> {
    /// More passes than any config file has broken values; a guard, not a limit in practice.
    const MAX_PASSES: usize = 64;
    // The tree is copied only when a pass fails an entry (a file with mistakes): a valid file,
    // however large, is deserialized straight from `node`.
    let mut tree: Option<Node> = None;
    let mut pruned = HashSet::new();
    let mut problems = Vec::new();
    let mut dropped = Vec::new();
    let mut value = None;
    for _ in 0..MAX_PASSES {
        let ctx = Ctx {
            pruned: pruned.clone(),
            ..Ctx::default()
        };
        let current = tree.as_ref().unwrap_or(node);
        value = match T::deserialize(NodeDe {
            node: current,
            ctx: &ctx,
        }) {
            Ok(v) => Some(v),
            Err(e) => {
                ctx.record(e, current.pos);
                None
            }
        };
        problems.extend(ctx.problems.into_inner());
        let failed = ctx.failed_entries.into_inner();
        if failed.is_empty() {
            break;
        }
        let tree = tree.get_or_insert_with(|| node.clone());
        for (map_pos, key_pos, key) in failed {
            remove_entry(tree, map_pos, key_pos);
            dropped.push(key_pos);
            pruned.insert((map_pos, key));
        }
    }
    problems.sort_by_key(|p| p.pos);
    problems.dedup();
    Parsed {
        value,
        problems,
        dropped,
    }
}

/// Removes the entry whose key starts at `key_pos` from the mapping that starts at `map_pos`.
fn remove_entry(node: &mut Node, map_pos: Pos, key_pos: Pos) {
    if node.pos > map_pos || node.end < map_pos {
        return;
    }
    match &mut node.kind {
        NodeKind::Map(entries) => {
            if node.pos == map_pos {
                entries.retain(|(k, _)| k.pos != key_pos);
            }
            for (_, v) in entries.iter_mut() {
                remove_entry(v, map_pos, key_pos);
            }
        }
        NodeKind::Seq(items) => items
            .iter_mut()
            .for_each(|n| remove_entry(n, map_pos, key_pos)),
        NodeKind::Scalar { .. } => {}
    }
}

#[derive(Default)]
struct Ctx {
    problems: RefCell<Vec<Problem>>,
    /// Entries whose value failed in this pass: (mapping start, key start, key).
    failed_entries: RefCell<Vec<(Pos, Pos, String)>>,
    /// Entries removed by earlier passes: (mapping start, key). Their absence is no news.
    pruned: HashSet<(Pos, String)>,
}

impl Ctx {
    fn record(&self, error: Error, fallback: Pos) {
        if let Error::Pending { pos, message, hint } = error {
            let mut problem = Problem::new(pos.unwrap_or(fallback), message);
            problem.hint = hint;
            self.problems.borrow_mut().push(problem);
        }
    }

    fn push(&self, problem: Problem) {
        self.problems.borrow_mut().push(problem);
    }
}

/// A deserialization error on its way to a recovery point.
#[derive(Debug)]
pub enum Error {
    /// Not recorded yet; the position is filled in by the innermost node that knows it.
    Pending {
        pos: Option<Pos>,
        message: String,
        hint: Option<String>,
    },
    /// Recorded already; callers only unwind.
    Reported,
}

impl Error {
    fn at(pos: Pos, message: impl Into<String>) -> Self {
        Error::Pending {
            pos: Some(pos),
            message: message.into(),
            hint: None,
        }
    }

    fn or_at(self, at: Pos) -> Self {
        match self {
            Error::Pending {
                pos: None,
                message,
                hint,
            } => Error::Pending {
                pos: Some(at),
                message,
                hint,
            },
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Pending { message, .. } => f.write_str(message),
            Error::Reported => f.write_str(REPORTED),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Pending {
            pos: None,
            message: msg.to_string(),
            hint: None,
        }
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        de::Error::custom(format_args!(
            "expected {exp}, found {}",
            describe_unexpected(&unexp)
        ))
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        de::Error::custom(format_args!(
            "expected {exp}, found {}",
            describe_unexpected(&unexp)
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        de::Error::custom(format_args!("missing required key `{field}`"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        unknown_value(variant, expected)
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let hint =
            did_you_mean(field, expected.iter().copied()).map(|s| format!("did you mean `{s}`?"));
        Error::Pending {
            pos: None,
            message: format!("unknown key `{field}`"),
            hint,
        }
    }
}

fn unknown_value(value: &str, expected: &[&str]) -> Error {
    let hint = match did_you_mean(value, expected.iter().copied()) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!("expected one of: {}", expected.join(", ")),
    };
    Error::Pending {
        pos: None,
        message: format!("unknown value {}", super::diagnostic::shown(value)),
        hint: Some(hint),
    }
}

fn describe_unexpected(unexp: &de::Unexpected<'_>) -> String {
    match unexp {
        de::Unexpected::Str(s) => format!("`{s}`"),
        de::Unexpected::Signed(i) => format!("`{i}`"),
        de::Unexpected::Unsigned(u) => format!("`{u}`"),
        de::Unexpected::Float(f) => format!("`{f}`"),
        de::Unexpected::Bool(b) => format!("`{b}`"),
        de::Unexpected::Seq => "a list".into(),
        de::Unexpected::Map => "a mapping".into(),
        de::Unexpected::Unit => "nothing".into(),
        other => other.to_string(),
    }
}

/// Plain scalars as YAML 1.2 core schema integers: decimal, `0x` hex, `0o` octal, with `_`.
fn parse_int(text: &str) -> Option<i128> {
    let t = text.replace('_', "");
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(&t)),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -magnitude } else { magnitude })
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    let looks_numeric = text.bytes().any(|b| b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E' | b'_'));
    if !looks_numeric {
        return None;
    }
    text.replace('_', "").parse().ok()
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

struct NodeDe<'a> {
    node: &'a Node,
    ctx: &'a Ctx,
}

impl<'a> NodeDe<'a> {
    fn mismatch(&self, expected: &str) -> Error {
        Error::at(
            self.node.pos,
            format!("expected {expected}, found {}", self.node.describe()),
        )
    }

    fn plain(&self) -> Option<&'a str> {
        match &self.node.kind {
            NodeKind::Scalar { text, plain: true } => Some(text),
            _ => None,
        }
    }

    fn int_in(&self, min: i128, max: i128) -> Result<i128, Error> {
        let expected = || format!("an integer from {min} to {max}");
        let value = self
            .plain()
            .and_then(parse_int)
            .ok_or_else(|| self.mismatch(&expected()))?;
        if value < min || value > max {
            return Err(Error::at(
                self.node.pos,
                format!("{value} is out of range: expected {}", expected()),
            ));
        }
        Ok(value)
    }
}

macro_rules! deserialize_int {
    ($method:ident, $ty:ty, $visit:ident, $as:ty) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let v = self.int_in(<$ty>::MIN as i128, <$ty>::MAX as i128)?;
            // In range of $ty by the check above, so the cast is exact.
            visitor
                .$visit(v as $as)
                .map_err(|e: Error| e.or_at(self.node.pos))
        }
    };
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let pos = self.node.pos;
        let result = match &self.node.kind {
            NodeKind::Scalar { text, plain: true } => {
                if is_null_text(text) {
                    visitor.visit_unit()
                } else if let Some(b) = parse_bool(text) {
                    visitor.visit_bool(b)
                } else if let Some(i) = parse_int(text) {
                    match (i64::try_from(i), u64::try_from(i)) {
                        (Ok(i), _) => visitor.visit_i64(i),
                        (_, Ok(u)) => visitor.visit_u64(u),
                        _ => {
                            return Err(Error::at(
                                pos,
                                format!("integer {text} does not fit in 64 bits"),
                            ))
                        }
                    }
                } else if let Some(f) = parse_float(text) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(text)
                }
            }
            NodeKind::Scalar { text, plain: false } => visitor.visit_str(text),
            NodeKind::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter(),
                ctx: self.ctx,
            }),
            NodeKind::Map(entries) => visitor.visit_map(MapDe::new(
                self.node.pos,
                entries.iter().collect(),
                self.ctx,
            )),
        };
        result.map_err(|e: Error| e.or_at(pos))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.plain().and_then(parse_bool) {
            Some(b) => visitor.visit_bool(b),
            None => Err(self.mismatch("true or false")),
        }
    }

    deserialize_int!(deserialize_i8, i8, visit_i64, i64);
    deserialize_int!(deserialize_i16, i16, visit_i64, i64);
    deserialize_int!(deserialize_i32, i32, visit_i64, i64);
    deserialize_int!(deserialize_i64, i64, visit_i64, i64);
    deserialize_int!(deserialize_u8, u8, visit_u64, u64);
    deserialize_int!(deserialize_u16, u16, visit_u64, u64);
    deserialize_int!(deserialize_u32, u32, visit_u64, u64);
    deserialize_int!(deserialize_u64, u64, visit_u64, u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.plain().and_then(parse_float) {
            Some(f) => visitor
                .visit_f64(f)
                .map_err(|e: Error| e.or_at(self.node.pos)),
            None => Err(self.mismatch("a number")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            _ if self.node.is_null() => Err(self.mismatch("text")),
            NodeKind::Scalar { text, .. } => visitor
                .visit_str(text)
                .map_err(|e: Error| e.or_at(self.node.pos)),
            _ => Err(self.mismatch("text")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            visitor.visit_unit()
        } else {
            Err(self.mismatch("nothing"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter(),
                ctx: self.ctx,
            }),
            _ => Err(self.mismatch("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Map(entries) => visitor
                .visit_map(MapDe::new(
                    self.node.pos,
                    entries.iter().collect(),
                    self.ctx,
                ))
                .map_err(|e: Error| e.or_at(self.node.pos)),
            _ => Err(self.mismatch("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == SPANNED {
            return visitor.visit_map(SpannedDe {
                node: self.node,
                ctx: self.ctx,
                step: 0,
            });
        }
        let entries: Vec<&(Node, Node)> = match &self.node.kind {
            NodeKind::Map(entries) => entries.iter().collect(),
            // `stdout:` with nothing under it reads as an empty mapping.
            _ if self.node.is_null() => Vec::new(),
            _ => return Err(self.mismatch("a mapping")),
        };
        let mut known = Vec::with_capacity(entries.len());
        // Keys suggested for typos: a "missing key" for one of them would say the same twice.
        let mut suggested = Vec::new();
        for entry in entries {
            let key = entry.0.as_scalar().unwrap_or_default();
            if fields.contains(&key) {
                known.push(entry);
            } else {
                let suggestion = did_you_mean(key, fields.iter().copied());
                suggested.extend(suggestion);
                let hint = suggestion
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("expected one of: {}", fields.join(", ")));
                self.ctx.push(
                    Problem::new(entry.0.pos, format!("unknown key {}", entry.0.describe()))
                        .with_hint(hint),
                );
            }
        }
        visitor
            .visit_map(MapDe::new(self.node.pos, known, self.ctx))
            .map_err(|e: Error| match e {
                Error::Pending { ref message, .. }
                    if suggested
                        .iter()
                        .copied()
                        .chain(
                            fields.iter().copied().filter(|f| {
                                self.ctx.pruned.contains(&(self.node.pos, f.to_string()))
                            }),
                        )
                        .any(|s| *message == format!("missing required key `{s}`")) =>
                {
                    Error::Reported
                }
                e => e.or_at(self.node.pos),
            })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let pos = self.node.pos;
        let (variant, content) = match &self.node.kind {
            NodeKind::Scalar { text, .. } if !self.node.is_null() => (text.as_str(), None),
            NodeKind::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                match k.as_scalar() {
                    Some(text) => (text, Some(v)),
                    None => return Err(self.mismatch(&format!("one of: {}", variants.join(", ")))),
                }
            }
            _ => {
                let error = self.mismatch(&format!("one of: {}", variants.join(", ")));
                return Err(match (error, enum_example(_name)) {
                    (Error::Pending { pos, message, .. }, Some(example)) => Error::Pending {
                        pos,
                        message,
                        hint: Some(example.to_string()),
                    },
                    (error, _) => error,
                });
            }
        };
        if !variants.contains(&variant) {
            let key_pos = match &self.node.kind {
                NodeKind::Map(entries) => entries[0].0.pos,
                _ => pos,
            };
            return Err(unknown_value(variant, variants).or_at(key_pos));
        }
        visitor
            .visit_enum(EnumDe {
                variant,
                content,
                ctx: self.ctx,
                pos,
            })
            .map_err(|e: Error| e.or_at(pos))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// The correct nested form of an enum whose shape is easy to get wrong, shown when a value
/// has the wrong shape (e.g. `user: {username: op, password: …}`).
fn enum_example(name: &str) -> Option<&'static str> {
    match name {
        "OpcUaUser" => Some(
            "write `user: {username: {username: op, password_file: /etc/tagbridge/opcua-password}}` \
             (or `password_env: VAR`), `user: {certificate: {cert: user.der, key: user.pem}}`, or `user: anonymous`",
        ),
        _ => None,
    }
}

/// A list. An element that fails is recorded and skipped, so later elements are still checked.
struct SeqDe<'a> {
    items: std::slice::Iter<'a, Node>,
    ctx: &'a Ctx,
}

impl<'de, 'a> de::SeqAccess<'de> for SeqDe<'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        // The failed element is recorded here and the iterator has moved past it, so an
        // [`Items`] visitor can ask for the next one; a plain `Vec` just unwinds.
        let Some(node) = self.items.next() else {
            return Ok(None);
        };
        match seed.deserialize(NodeDe {
            node,
            ctx: self.ctx,
        }) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.ctx.record(e, node.pos);
                Err(Error::Reported)
            }
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a> {
    /// Where the mapping starts, to name it for pruning.
    pos: Pos,
    entries: std::vec::IntoIter<&'a (Node, Node)>,
    current: Option<&'a (Node, Node)>,
    ctx: &'a Ctx,
}

impl<'a> MapDe<'a> {
    fn new(pos: Pos, entries: Vec<&'a (Node, Node)>, ctx: &'a Ctx) -> Self {
        MapDe {
            pos,
            entries: entries.into_iter(),
            current: None,
            ctx,
        }
    }
}

impl<'de, 'a> de::MapAccess<'de> for MapDe<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some(entry);
        let key = &entry.0;
        seed.deserialize(NodeDe {
            node: key,
            ctx: self.ctx,
        })
        .map(Some)
        .map_err(|e: Error| e.or_at(key.pos))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((key, node)) = self.current.take() else {
            return Err(de::Error::custom("value requested before key"));
        };
        seed.deserialize(NodeDe {
            node,
            ctx: self.ctx,
        })
        .map_err(|e: Error| match e {
            // The innermost failing entry records the problem and is pruned for the next pass.
            Error::Pending { .. } => {
                self.ctx.record(e, node.pos);
                let name = key.as_scalar().unwrap_or_default().to_string();
                self.ctx
                    .failed_entries
                    .borrow_mut()
                    .push((self.pos, key.pos, name));
                Error::Reported
            }
            Error::Reported => Error::Reported,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumDe<'a> {
    variant: &'a str,
    content: Option<&'a Node>,
    ctx: &'a Ctx,
    pos: Pos,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumDe<'a> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Error> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de, 'a> de::VariantAccess<'de> for EnumDe<'a> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.content {
            None => Ok(()),
            Some(node) if node.is_null() => Ok(()),
            Some(node) => Err(Error::at(
                node.pos,
                format!("`{}` takes no settings", self.variant),
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        match self.content {
            Some(node) => seed.deserialize(NodeDe {
                node,
                ctx: self.ctx,
            }),
            None => Err(Error::at(
                self.pos,
                format!("`{}` needs settings under it", self.variant),
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.content {
            Some(node) => de::Deserializer::deserialize_tuple(
                NodeDe {
                    node,
                    ctx: self.ctx,
                },
                len,
                visitor,
            ),
            None => Err(Error::at(
                self.pos,
                format!("`{}` needs a list under it", self.variant),
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let null = Node {
            pos: self.pos,
            end: self.pos,
            kind: NodeKind::Scalar {
                text: String::new(),
                plain: true,
            },
        };
        let node = self.content.unwrap_or(&null);
        de::Deserializer::deserialize_struct(
            NodeDe {
                node,
                ctx: self.ctx,
            },
            "",
            fields,
            visitor,
        )
    }
}

/// Display text of [`Error::Reported`], by which [`Items`] recognises a recorded element error
/// through serde's opaque error type.
const REPORTED: &str = "\u{0}tagbridge: reported";

/// A list whose failed elements are reported and skipped, so one broken tag does not hide the
/// problems of the next ones, and the healthy tags still reach the checks after parsing.
#[derive(Debug, Clone, PartialEq)]
pub struct Items<T> {
    pub items: Vec<T>,
    /// Elements that failed and were reported.
    pub failed: usize,
}

impl<T> std::ops::Deref for Items<T> {
    type Target = Vec<T>;

    fn deref(&self) -> &Vec<T> {
        &self.items
    }
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items {
            items: Vec::new(),
            failed: 0,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Items<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ItemsVisitor<T> {
            type Value = Items<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Items<T>, A::Error> {
                let mut items = Items {
                    items: Vec::with_capacity(seq.size_hint().unwrap_or(0)),
                    failed: 0,
                };
                loop {
                    match seq.next_element::<T>() {
                        Ok(Some(item)) => items.items.push(item),
                        Ok(None) => return Ok(items),
                        Err(e) if e.to_string() == REPORTED => items.failed += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
        }

        deserializer.deserialize_seq(ItemsVisitor(std::marker::PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Items<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        Vec::<T>::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        Vec::<T>::json_schema(generator)
    }
}

const SPANNED: &str = "$__tagbridge_spanned";
const SPANNED_FIELDS: &[&str] = &["line", "col", "end_line", "end_col", "value"];

/// A value and the place it was written, for checks that run after parsing (duplicates, ranges,
/// syntax of node ids) and still want to point at the right line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Spanned<T> {
    pub pos: Pos,
    /// Where the value's content ends.
    pub end: Pos,
    pub value: T,
}

impl<T> Spanned<T> {
    pub fn new(pos: Pos, value: T) -> Self {
        Spanned {
            pos,
            end: pos,
            value,
        }
    }

    /// Whether `pos` lies within this value.
    pub fn contains(&self, pos: Pos) -> bool {
        self.pos <= pos && pos <= self.end
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

struct SpannedDe<'a> {
    node: &'a Node,
    ctx: &'a Ctx,
    step: u8,
}

impl<'de, 'a> de::MapAccess<'de> for SpannedDe<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(key) = SPANNED_FIELDS.get(usize::from(self.step)) else {
            return Ok(None);
        };
        seed.deserialize((*key).into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let step = self.step;
        self.step += 1;
        match step {
            0 => seed.deserialize(self.node.pos.line.into_deserializer()),
            1 => seed.deserialize(self.node.pos.col.into_deserializer()),
            2 => seed.deserialize(self.node.end.line.into_deserializer()),
            3 => seed.deserialize(self.node.end.col.into_deserializer()),
            _ => seed
                .deserialize(NodeDe {
                    node: self.node,
                    ctx: self.ctx,
                })
                .map_err(|e: Error| e.or_at(self.node.pos)),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value with its position")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Spanned<T>, A::Error> {
                let (_, line): (String, u32) = map
                    .next_entry()?
                    .ok_or_else(|| de::Error::missing_field("line"))?;
                let (_, col): (String, u32) = map
                    .next_entry()?
                    .ok_or_else(|| de::Error::missing_field("col"))?;
                let (_, end_line): (String, u32) = map
                    .next_entry()?
                    .ok_or_else(|| de::Error::missing_field("end_line"))?;
                let (_, end_col): (String, u32) = map
                    .next_entry()?
                    .ok_or_else(|| de::Error::missing_field("end_col"))?;
                let (_, value): (String, T) = map
                    .next_entry()?
                    .ok_or_else(|| de::Error::missing_field("value"))?;
                Ok(Spanned {
                    pos: Pos { line, col },
                    end: Pos {
                        line: end_line,
                        col: end_col,
                    },
                    value,
                })
            }
        }

        deserializer.deserialize_struct(
            SPANNED,
            SPANNED_FIELDS,
            SpannedVisitor(std::marker::PhantomData),
        )
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::super::yaml;
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Tag {
        sensor_id: Spanned<String>,
        scale: Option<f64>,
        unit_id: Option<u8>,
        enabled: Option<bool>,
        kind: Option<Kind>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Holding,
        Input,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct File {
        tags: Items<Tag>,
        states: Option<BTreeMap<i64, String>>,
    }

    fn load(text: &str) -> (Option<File>, Vec<String>) {
        let (node, mut problems) = yaml::parse(text).unwrap();
        let parsed = from_node::<File>(&node);
        let value = parsed.value;
        problems.extend(parsed.problems);
        let lines = problems
            .iter()
            .map(|p| match &p.hint {
                Some(h) => format!("{}: {} ({h})", p.pos, p.message),
                None => format!("{}: {}", p.pos, p.message),
            })
            .collect();
        (value, lines)
    }

    #[test]
    fn good_file_reads_with_positions() {
        let (file, problems) = load(
            "tags:\n  - sensor_id: a\n    scale: 2\n    kind: holding\nstates: {0: Stopped}\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let file = file.unwrap();
        assert_eq!(file.tags[0].sensor_id.pos, Pos { line: 2, col: 16 });
        assert_eq!(file.tags[0].scale, Some(2.0));
        assert_eq!(file.tags[0].kind, Some(Kind::Holding));
        assert_eq!(file.states.unwrap()[&0], "Stopped");
    }

    #[test]
    fn every_error_is_reported_at_its_place() {
        let text = "\
tags:
  - sensor_id: a
    scle: 2
    colour: red
  - sensor_id: b
    unit_id: 300
  - sensor_id: c
    enabled: yes
  - sensor_id: d
    kind: holdng
  - scale: 1
";
        let (file, problems) = load(text);
        assert_eq!(
            problems,
            [
                "3:5: unknown key `scle` (did you mean `scale`?)",
                "4:5: unknown key `colour` (expected one of: sensor_id, scale, unit_id, enabled, kind)",
                "6:14: 300 is out of range: expected an integer from 0 to 255",
                "8:14: expected true or false, found `yes`",
                "10:11: unknown value `holdng` (did you mean `holding`?)",
                "11:5: missing required key `sensor_id`",
            ]
        );
        // The healthy tag survives for later checks.
        let tags = file.unwrap().tags;
        // Tags whose bad values were pruned come back; the one without a name stays failed.
        assert_eq!((tags.len(), tags.failed), (4, 1));
    }

    #[test]
    fn plain_numbers_read_as_text_where_text_is_wanted() {
        let (file, problems) = load("tags:\n  - sensor_id: 42\n");
        assert!(problems.is_empty());
        assert_eq!(file.unwrap().tags[0].sensor_id.value, "42");
    }

    #[test]
    fn integers_follow_yaml_core_schema() {
        assert_eq!(parse_int("0x1F"), Some(31));
        assert_eq!(parse_int("-12"), Some(-12));
        assert_eq!(parse_int("1_000"), Some(1000));
        assert_eq!(parse_int("12a"), None);
        assert_eq!(parse_float("1e3"), Some(1000.0));
        assert_eq!(parse_float("abc"), None);
    }
}
