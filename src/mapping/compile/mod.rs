//! Tag map files → validated plans. Every check reports at the value's position, and every
//! problem of every file is collected before giving up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::de::Spanned;
use crate::config::diagnostic::{did_you_mean, shown, Pos, Problem, Report};
use crate::config::tagmap::*;
use crate::reading::write_json_str;

use super::plan::*;

mod events;
mod modbus;
mod opcua;
mod structure;
#[cfg(test)]
mod tests;

/// Default Modbus poll interval and OPC UA sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default for the values an OPC UA server puts into one publish response: about 150–250 KB
/// of them, so that 100 000 changes a second arrive (and are decoded and mapped) in pieces the
/// size of a cache, not in one message of several MB.
pub const DEFAULT_MAX_NOTIFICATIONS_PER_PUBLISH: u32 = 5000;
/// Default Modbus unit id.
pub const DEFAULT_UNIT: u8 = 1;
/// Default for joining two Modbus tags into one read across unused registers.
pub const DEFAULT_MAX_GAP: u16 = 8;
/// Members every reading has; extra fields may not reuse their names.
const RESERVED_FIELDS: [&str; 3] = ["sensor_id", "timestamp", "value"];

/// The longest sensor_id, in bytes of UTF-8: a name, not a payload (every reading carries it).
pub const MAX_SENSOR_ID_BYTES: usize = 256;

/// Keys that only make sense for one protocol.
const MODBUS_TAG_KEYS: [&str; 8] = [
    "table", "address", "modicon", "type", "order", "bit", "length", "unit",
];

/// Loads, parses and compiles tag map files; reports every problem in every file, including a
/// `sensor_id` used in two files.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<TagMapPlan>, Report> {
    let mut report = Report::default();
    let mut plans = Vec::new();
    // Where each sensor_id was first seen: (index into `paths`, line).
    let mut first_seen: HashMap<Arc<str>, (usize, u32)> = HashMap::new();
    for (index, path) in paths.iter().enumerate() {
        let (plan, problems) = match crate::config::read_file(path) {
            Ok(text) => load_one(path, text),
            Err(problem) => (None, vec![problem]),
        };
        report.extend(path, problems);
        let Some(plan) = plan else { continue };
        let events = match &plan.source {
            SourcePlan::OpcUa(o) => o.events.as_slice(),
            SourcePlan::Modbus(_) => &[],
        };
        let fixed_events = events
            .iter()
            .filter_map(|e| Some((e.fixed_sensor_id()?, e.pos)));
        // Events first: a file names its event subscriptions before its tags.
        let tags = plan.tags.iter().map(|t| (&t.sensor_id, t.pos));
        for (sensor_id, pos) in fixed_events.chain(tags) {
            if let Some(&(other, line)) = first_seen.get(sensor_id) {
                if other != index {
                    report.push(
                        Problem::new(
                            pos,
                            format!("sensor_id `{sensor_id}` is used in two tag maps"),
                        )
                        .with_hint(format!(
                            "also at {}:{line}; sensor_ids must be unique across all tag maps",
                            paths[other].display()
                        ))
                        .in_file(path),
                    );
                }
            } else {
                first_seen.insert(sensor_id.clone(), (index, pos.line));
            }
        }
        plans.push(plan);
    }
    report.sort();
    if report.is_empty() {
        Ok(plans)
    } else {
        Err(report)
    }
}

/// Parses and compiles one tag map, holding little more than its plan in memory: a first
/// read takes the file's settings and skips its tags, a second read checks and plans each tag
/// as the YAML reader builds it, so neither the whole tree nor every parsed tag is ever held.
/// A file with any problem in its settings takes the ordinary path, which reports everything.
fn load_one(path: &Path, text: String) -> (Option<TagMapPlan>, Vec<Problem>) {
    use crate::config::{de, yaml};
    let mut count = 0usize;
    let settings = match yaml::parse_streaming_tags(&text, &mut |_| count += 1) {
        Ok((node, problems)) if problems.is_empty() && !node.is_null() => {
            let parsed = de::from_node::<TagMapFile>(&node);
            parsed.value.filter(|_| parsed.problems.is_empty())
        }
        _ => None,
    };
    let Some(file) = settings else {
        let parsed = crate::config::parse_tag_map(text);
        let mut problems = parsed.problems;
        let Some(file) = parsed.value else {
            return (None, problems);
        };
        let (plan, more) = compile_owned(file, path, &parsed.dropped);
        problems.extend(more);
        return (Some(plan), problems);
    };
    let mut compiler = TagsCompiler::new(&file, path, count);
    let mut problems = Vec::new();
    let second = yaml::parse_streaming_tags(&text, &mut |item| {
        let one = de::from_node::<Spanned<TagSpec>>(&item);
        drop(item);
        problems.extend(one.problems);
        match one.value {
            Some(tag) => compiler.add(&tag, &one.dropped),
            None => compiler.failed += 1,
        }
    });
    drop(text);
    // The same text read the same way a moment ago: a failure here is reported, not assumed.
    if let Err(problem) = second {
        problems.push(problem);
    }
    let (plan, more) = compiler.finish();
    problems.extend(more);
    problems.sort_by_key(|p| p.pos);
    (Some(plan), problems)
}

/// Compiles one parsed file. The plan holds every tag that passed its checks, so a caller that
/// tolerates problems (live reload of other files) still learns what is healthy. Tags that
/// contain a position in `broken` (problems found while parsing) are left out unchecked: their
/// bad values were dropped while parsing, and checking what remains would only report echoes.
pub fn compile(file: &TagMapFile, path: &Path, broken: &[Pos]) -> (TagMapPlan, Vec<Problem>) {
    compile_tags(file, file.tags.iter(), path, broken)
}

/// [`compile`], consuming the file: each tag's parsed form is freed once its plan is made, so a
/// large tag map's parsed form and plan never coexist whole.
pub fn compile_owned(
    mut file: TagMapFile,
    path: &Path,
    broken: &[Pos],
) -> (TagMapPlan, Vec<Problem>) {
    let tags = std::mem::take(&mut file.tags.items);
    compile_tags(&file, tags.into_iter(), path, broken)
}

/// Compiles `file`'s settings and `tags` (the file's own, borrowed or taken out of it).
fn compile_tags<T: AsRef<Spanned<TagSpec>>>(
    file: &TagMapFile,
    tag_specs: impl Iterator<Item = T>,
    path: &Path,
    broken: &[Pos],
) -> (TagMapPlan, Vec<Problem>) {
    let mut compiler = TagsCompiler::new(file, path, tag_specs.size_hint().0);
    compiler.failed += file.tags.failed;
    for spanned in tag_specs {
        compiler.add(spanned.as_ref(), broken);
    }
    compiler.finish()
}

/// One pass over a file's tags: the file's settings checked once, then each tag checked and
/// planned as it comes, with the state that spans tags (ids and addresses seen, monitoring).
/// Tags may come from the parsed file or straight from the YAML reader.
pub(crate) struct TagsCompiler<'f> {
    c: Compiler<'f>,
    /// The file's settings (`source`, `defaults`, `fields`); its `tags` are not read here.
    file: &'f TagMapFile,
    path: &'f Path,
    source: Option<SourcePlan>,
    is_modbus: bool,
    map_extra: BTreeMap<String, serde_json::Value>,
    /// The file's defaults passed their checks; tags that would use bad ones are left out.
    defaults_ok: bool,
    tags: Vec<TagPlan>,
    disabled: usize,
    ids: HashMap<Arc<str>, u32>,
    /// Fixed `sensor_id`s of the file's event subscriptions, with their lines: no tag may
    /// take one.
    event_ids: HashMap<Arc<str>, u32>,
    addresses: HashMap<String, (u32, Arc<str>)>,
    monitoring: Vec<MonitoringPlan>,
    /// Structure tags' fields (`members:`), grouped per monitored node.
    structures: super::members::StructurePlan,
    seen: usize,
    /// Tags that failed while parsing (reported there).
    pub(crate) failed: usize,
}

impl<'f> TagsCompiler<'f> {
    /// Checks the file's settings; `expected` tags size the tables once (a table that grows
    /// holds its old and new arrays at the same time).
    pub(crate) fn new(file: &'f TagMapFile, path: &'f Path, expected: usize) -> Self {
        let mut c = Compiler {
            problems: Vec::new(),
            base: path.parent().unwrap_or(Path::new(".")),
        };
        let source = c.source(&file.source);
        let is_modbus = matches!(file.source.value, SourceSpec::Modbus(_));
        let map_extra = c.fields(&file.fields);
        let defaults_ok = c.deadband(file.defaults.deadband.as_ref())
            & c.decimals(file.defaults.decimals.as_ref());
        let events = c.events(file, &map_extra);
        let event_ids = events
            .iter()
            .filter_map(|e| Some((e.fixed_sensor_id()?.clone(), e.pos.line)))
            .collect();
        let mut source = source;
        if let Some(SourcePlan::OpcUa(o)) = &mut source {
            o.events = events;
        }
        TagsCompiler {
            c,
            file,
            path,
            source,
            is_modbus,
            map_extra,
            defaults_ok,
            tags: Vec::with_capacity(expected),
            disabled: 0,
            ids: HashMap::with_capacity(expected),
            event_ids,
            addresses: HashMap::with_capacity(expected),
            monitoring: Vec::with_capacity(if is_modbus { 0 } else { expected }),
            structures: Default::default(),
            seen: 0,
            failed: 0,
        }
    }

    /// The problems found so far (after [`TagsCompiler::new`]: the file's settings'), taken
    /// out, for callers that report settings and tags in different files (`mapping::table`).
    pub(crate) fn take_problems(&mut self) -> Vec<Problem> {
        std::mem::take(&mut self.c.problems)
    }

    /// Checks and plans one tag; `broken` holds positions whose values failed while parsing.
    ///
    /// Long on purpose: every tag key is checked here in file order, so all of a tag's
    /// mistakes are reported together at their own positions.
    pub(crate) fn add(&mut self, spanned: &Spanned<TagSpec>, broken: &[Pos]) {
        self.seen += 1;
        if broken.iter().any(|p| spanned.contains(*p)) {
            self.failed += 1;
            return;
        }
        let tag = &spanned.value;
        let line = spanned.pos.line;
        let id_fits = tag.sensor_id.len() <= MAX_SENSOR_ID_BYTES;
        let id: Arc<str> = if id_fits {
            tag.sensor_id.value.as_str().into()
        } else {
            Arc::from("")
        };
        if let Some(first) = self.ids.insert(id.clone(), line).filter(|_| id_fits) {
            self.c.problem(
                Problem::new(
                    tag.sensor_id.pos,
                    format!(
                        "sensor_id `{}` is used twice in this file",
                        tag.sensor_id.value
                    ),
                )
                .with_hint(format!("the first is at line {first}")),
            );
        }
        if let Some(line) = self.event_ids.get(&id) {
            self.c.problem(
                Problem::new(
                    tag.sensor_id.pos,
                    format!(
                        "sensor_id `{}` is also the sensor_id of the event subscription at line {line}",
                        tag.sensor_id.value
                    ),
                )
                .with_hint("a tag's readings and an event subscription's need names of their own"),
            );
        }
        if !tag.enabled.or(self.file.defaults.enabled).unwrap_or(true) {
            self.disabled += 1;
            return;
        }
        let address = match &self.file.source.value {
            SourceSpec::Modbus(m) => self
                .c
                .modbus_address(spanned, &self.file.defaults, m)
                .map(TagAddress::Modbus),
            SourceSpec::OpcUa(_) => self
                .c
                .opcua_address(spanned)
                .map(|node| TagAddress::OpcUa { node }),
        };
        let sensor_id = self.c.sensor_id(&tag.sensor_id).map(|()| id.clone());
        let transform = self
            .c
            .transform(tag, &self.file.defaults)
            .filter(|_| self.defaults_ok);
        let mut extra = self.map_extra.clone();
        for (k, v) in self.c.fields(&tag.fields) {
            extra.insert(k, v);
        }
        let (Some(address), Some(sensor_id), Some(transform)) = (address, sensor_id, transform)
        else {
            return;
        };
        let key = match &address {
            TagAddress::OpcUa { node } => node.clone(),
            TagAddress::Modbus(a) => format!(
                "unit {} {} {} bit {:?}",
                a.unit,
                a.table.name(),
                a.address,
                a.bit
            ),
        };
        if let Some((first, other)) = self.addresses.get(&key) {
            let what = if self.is_modbus { "address" } else { "node" };
            self.c.problem(
                Problem::new(
                    spanned.pos,
                    format!("this tag reads the same {what} as `{other}`"),
                )
                .with_hint(format!(
                    "line {first}; read it once and derive the other value downstream"
                )),
            );
            return;
        }
        self.addresses.insert(key, (line, id));
        let interval = tag
            .interval
            .or(self.file.defaults.interval)
            .map(|s| s.as_duration())
            .unwrap_or(DEFAULT_INTERVAL);
        if !self.is_modbus {
            let Some(m) = self.c.monitoring(tag) else {
                return;
            };
            if let Some(members) = &tag.members {
                self.structure_tag(tag, members, &sensor_id, &address, interval, &extra, m);
                return;
            }
            // An array node read per element: one tag `sensor_id[i]` per element.
            if let Some(n) = tag.elements.as_ref().map(|e| e.value) {
                let extra = encode_extra(&extra);
                for i in 0..n {
                    self.monitoring.push(MonitoringPlan {
                        index: Some(i),
                        ..m
                    });
                    self.tags.push(TagPlan {
                        sensor_id: format!("{sensor_id}[{i}]").into(),
                        address: address.clone(),
                        interval,
                        transform: transform.clone(),
                        extra: extra.clone(),
                        pos: tag.sensor_id.pos,
                    });
                }
                return;
            }
            self.monitoring.push(m);
        }
        self.tags.push(TagPlan {
            sensor_id,
            address,
            interval,
            transform,
            extra: encode_extra(&extra),
            pos: tag.sensor_id.pos,
        });
    }

    /// The plan and every problem.
    pub(crate) fn finish(self) -> (TagMapPlan, Vec<Problem>) {
        let TagsCompiler {
            mut c,
            file,
            path,
            mut source,
            tags,
            disabled,
            monitoring,
            structures,
            seen,
            failed,
            ..
        } = self;
        if let Some(SourcePlan::OpcUa(o)) = &mut source {
            o.monitoring = monitoring;
            o.structures = structures;
        }
        if seen == 0 && failed == 0 && file.events.is_none() {
            c.problem(
                Problem::new(file.source.pos, "this tag map has no tags")
                    .with_hint("add at least one entry under `tags:`"),
            );
        }
        let source = source.unwrap_or(SourcePlan::Modbus(ModbusPlan {
            transport: ModbusTransport::Tcp(String::new()),
            timeout: DEFAULT_INTERVAL,
            max_gap: DEFAULT_MAX_GAP,
            connections: std::num::NonZeroU8::MIN,
        }));
        (
            TagMapPlan {
                path: path.to_path_buf(),
                source,
                tags,
                disabled,
            },
            c.problems,
        )
    }
}

fn encode_extra(fields: &BTreeMap<String, serde_json::Value>) -> Arc<str> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.push(b',');
        write_json_str(&mut out, k);
        out.push(b':');
        // Writing a `serde_json::Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, v);
    }
    String::from_utf8(out).unwrap_or_default().into()
}

struct Compiler<'a> {
    problems: Vec<Problem>,
    base: &'a Path,
}

impl Compiler<'_> {
    fn problem(&mut self, p: Problem) {
        self.problems.push(p);
    }

    fn err<T>(
        &mut self,
        pos: Pos,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Option<T> {
        self.problems
            .push(Problem::new(pos, message).with_hint(hint));
        None
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn source(&mut self, spec: &Spanned<SourceSpec>) -> Option<SourcePlan> {
        match &spec.value {
            SourceSpec::OpcUa(o) => self.opcua_source(o).map(SourcePlan::OpcUa),
            SourceSpec::Modbus(m) => self.modbus_source(spec.pos, m).map(SourcePlan::Modbus),
        }
    }

    fn sensor_id(&mut self, id: &Spanned<String>) -> Option<()> {
        if id.len() > MAX_SENSOR_ID_BYTES {
            return self.err(
                id.pos,
                format!(
                    "sensor_id is {} bytes long; at most {MAX_SENSOR_ID_BYTES} are allowed",
                    id.len()
                ),
                "a sensor_id names a tag; keep it short, e.g. `compressor-7:vibe_x`",
            );
        }
        if id.trim().is_empty() {
            return self.err(
                id.pos,
                "sensor_id is empty",
                "give every tag a name such as `compressor-7:vibe_x`",
            );
        }
        if id.trim() != id.as_str() || id.chars().any(char::is_control) {
            return self.err(
                id.pos,
                format!(
                    "sensor_id {:?} has leading/trailing spaces or control characters",
                    id.value
                ),
                "downstream queries match sensor_ids exactly; remove them",
            );
        }
        Some(())
    }

    /// Reports keys of the other protocol on a tag.
    fn foreign_keys(&mut self, tag: &Spanned<TagSpec>, modbus: bool) {
        let t = &tag.value;
        if modbus {
            if let Some(node) = &t.node {
                self.problem(
                    Problem::new(
                        node.pos,
                        "`node` is an OPC UA key, and this tag map reads a Modbus device",
                    )
                    .with_hint("address Modbus tags with `table` + `address`, or `modicon`"),
                );
            }
            if let Some(members) = &t.members {
                self.problem(
                    Problem::new(
                        members.pos,
                        "`members` is an OPC UA key, and this tag map reads a Modbus device",
                    )
                    .with_hint("Modbus tags read one value each; give every value its own tag"),
                );
            }
            return;
        }
        // Point at the key's value where it is spanned, otherwise at the tag.
        let present = [
            t.table.as_ref().map(|v| v.pos),
            t.address.as_ref().map(|v| v.pos),
            t.modicon.as_ref().map(|v| v.pos),
            t.data_type.as_ref().map(|v| v.pos),
            t.order.map(|_| tag.pos),
            t.bit.as_ref().map(|v| v.pos),
            t.length.as_ref().map(|v| v.pos),
            t.unit.map(|_| tag.pos),
        ];
        for (key, pos) in MODBUS_TAG_KEYS
            .iter()
            .zip(present)
            .filter_map(|(k, p)| Some((k, p?)))
        {
            self.problem(
                Problem::new(
                    pos,
                    format!("`{key}` is a Modbus key, and this tag map reads an OPC UA server"),
                )
                .with_hint("OPC UA tags are addressed with `node`"),
            );
        }
    }

    fn transform(&mut self, t: &TagSpec, d: &TagDefaults) -> Option<Transform> {
        let mut ok = true;
        if let Some(scale) = &t.scale {
            if scale.value == 0.0 || !scale.is_finite() {
                let why = if scale.value == 0.0 {
                    "would erase every value"
                } else {
                    "is not a finite number"
                };
                self.problem(
                    Problem::new(scale.pos, format!("scale {} {why}", scale.value))
                        .with_hint("use a finite, non-zero factor"),
                );
                ok = false;
            }
        }
        if let Some(offset) = &t.offset {
            if !offset.is_finite() {
                self.problem(
                    Problem::new(
                        offset.pos,
                        format!("offset {} is not a finite number", offset.value),
                    )
                    .with_hint("use a finite number"),
                );
                ok = false;
            }
        }
        // Checked here for the tag's own value; the file's defaults are checked once, by
        // `defaults`.
        ok &= self.deadband(t.deadband.as_ref());
        ok &= self.decimals(t.decimals.as_ref());
        let mut states = None;
        if let Some(map) = &t.states {
            if map.is_empty() || map.values().any(|s| s.trim().is_empty()) {
                self.problem(
                    Problem::new(
                        t.sensor_id.pos,
                        "`states` needs at least one entry and no empty names",
                    )
                    .with_hint("e.g. `states: {0: Stopped, 1: Running}`"),
                );
                ok = false;
            }
            states = Some(
                map.iter()
                    .map(|(k, v)| (*k, Arc::from(v.as_str())))
                    .collect(),
            );
        }
        ok.then(|| Transform {
            scale: t.scale.as_ref().map(|s| s.value),
            offset: t.offset.as_ref().map(|o| o.value),
            states,
            deadband: t
                .deadband
                .as_ref()
                .or(d.deadband.as_ref())
                .map_or(0.0, |s| s.value),
            heartbeat: t.heartbeat.or(d.heartbeat).map(|s| s.as_duration()),
            decimals: t.decimals.as_ref().or(d.decimals.as_ref()).map(|s| s.value),
        })
    }

    /// A deadband must be a finite number, zero or more.
    fn deadband(&mut self, deadband: Option<&Spanned<f64>>) -> bool {
        match deadband {
            Some(d) if !(d.value >= 0.0 && d.value.is_finite()) => {
                self.problem(
                    Problem::new(d.pos, format!("deadband {} must be zero or more", d.value))
                        .with_hint("it is the smallest change that is sent"),
                );
                false
            }
            _ => true,
        }
    }

    /// Decimals: 0 to 12, what a float holds.
    fn decimals(&mut self, decimals: Option<&Spanned<u8>>) -> bool {
        match decimals {
            Some(d) if d.value > 12 => {
                self.problem(
                    Problem::new(
                        d.pos,
                        format!("decimals {} is more than a float holds", d.value),
                    )
                    .with_hint("use 0 to 12"),
                );
                false
            }
            _ => true,
        }
    }

    fn fields(
        &mut self,
        fields: &BTreeMap<Spanned<String>, serde_json::Value>,
    ) -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        for (name, value) in fields {
            if RESERVED_FIELDS.contains(&name.as_str()) {
                self.problem(
                    Problem::new(
                        name.pos,
                        format!(
                            "field `{}` would replace a reading's own member",
                            name.value
                        ),
                    )
                    .with_hint(
                        "sensor_id, timestamp and value are set by the gateway; pick another name",
                    ),
                );
                continue;
            }
            if let Some(s) = did_you_mean(name, RESERVED_FIELDS) {
                if s != name.as_str() && name.eq_ignore_ascii_case(s) {
                    self.problem(
                        Problem::new(
                            name.pos,
                            format!("field `{}` is too close to the reading's `{s}`", name.value),
                        )
                        .with_hint("consumers would confuse them; pick another name"),
                    );
                    continue;
                }
            }
            out.insert(name.value.clone(), value.clone());
        }
        out
    }
}
