//! The `events:` list of a tag map compiled into [`EventPlan`]s: notifier and type node ids,
//! field browse paths, member names and the `sensor_id` pattern, each checked at its position.

use super::*;
use crate::config::events::EventSpec;
use crate::mapping::event_plan::*;

/// Member names an event reading sets itself.
const EVENT_RESERVED: [&str; 4] = ["sensor_id", "timestamp", "value", "refresh"];
/// Events a server queues per subscription between publishes, unless `queue_size` says.
pub const DEFAULT_EVENT_QUEUE: u32 = 1000;

impl Compiler<'_> {
    /// Checks and plans the file's `events:`; a Modbus tag map may not have any.
    pub(super) fn events(
        &mut self,
        file: &TagMapFile,
        map_extra: &BTreeMap<String, serde_json::Value>,
    ) -> Vec<EventPlan> {
        let Some(events) = &file.events else {
            return Vec::new();
        };
        if matches!(file.source.value, SourceSpec::Modbus(_)) {
            self.problem(
                Problem::new(
                    events.pos,
                    "`events` are OPC UA event subscriptions, and this tag map reads a Modbus device",
                )
                .with_hint("Modbus has no events; read the alarm bit as a tag, with `states:` for its names"),
            );
            return Vec::new();
        }
        let extra = encode_extra(map_extra);
        let mut out: Vec<EventPlan> = Vec::new();
        for spec in events.value.iter() {
            if spec.enabled == Some(false) {
                continue;
            }
            let Some(plan) = self.event(spec, map_extra, &extra) else {
                continue;
            };
            // A fixed sensor_id names one stream, like a tag's: two entries may not share it.
            if let Some(id) = plan.fixed_sensor_id() {
                let first = out
                    .iter()
                    .find(|p| p.fixed_sensor_id() == Some(id))
                    .map(|p| p.pos.line);
                if let Some(first) = first {
                    self.problem(
                        Problem::new(
                            plan.pos,
                            format!("sensor_id `{id}` is used twice in this file"),
                        )
                        .with_hint(format!("the first is at line {first}")),
                    );
                    continue;
                }
            }
            out.push(plan);
        }
        out
    }

    /// One event subscription; every mistake in it is reported before giving up.
    ///
    /// Long on purpose: every key of an event entry is checked here (sensor_id, notifier,
    /// types, fields, value, queue size), so all of its mistakes come out in one run.
    fn event(
        &mut self,
        spec: &Spanned<EventSpec>,
        map_extra: &BTreeMap<String, serde_json::Value>,
        extra: &Arc<str>,
    ) -> Option<EventPlan> {
        let before = self.problems.len();
        let mut select = vec![
            FieldPath::standard("EventType"),
            FieldPath::standard("Time"),
            FieldPath::standard("Message"),
        ];
        let index = |path: FieldPath, select: &mut Vec<FieldPath>| match select
            .iter()
            .position(|p| *p == path)
        {
            Some(i) => i,
            None => {
                select.push(path);
                select.len() - 1
            }
        };
        let sensor_id = self.id_pattern(&spec.sensor_id).map(|parts| {
            parts
                .into_iter()
                .map(|p| match p {
                    Pattern::Text(t) => IdPart::Text(t.into()),
                    Pattern::Field(path) => IdPart::Field(index(path, &mut select)),
                })
                .collect::<Vec<_>>()
        });
        let notifier = match &spec.notifier {
            None => Some(SERVER_OBJECT.to_string()),
            Some(n) => match node_id_text(n) {
                Some(id) => Some(id),
                None => self.err(
                    n.pos,
                    format!("notifier {} is not an OPC UA node id", shown(&n.value)),
                    "the Server object is i=2253; an area or object is written like a tag's node, e.g. ns=2;s=Line1",
                ),
            },
        };
        let mut types = Vec::new();
        for t in &spec.types {
            let name = t.trim();
            if let Some((_, id)) = EVENT_TYPES.iter().find(|(n, _)| *n == name) {
                types.push(format!("i={id}"));
            } else if let Some(id) = node_id_text(t).filter(|_| name.contains('=')) {
                types.push(id);
            } else {
                let names = EVENT_TYPES.iter().map(|(n, _)| *n);
                let hint = match did_you_mean(name, names) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => "write a standard type such as AlarmConditionType or OffNormalAlarmType, or a custom type's node id, e.g. ns=2;i=5001".to_string(),
                };
                self.problem(
                    Problem::new(t.pos, format!("unknown event type {}", shown(&t.value)))
                        .with_hint(hint),
                );
            }
        }
        let mut members = Vec::new();
        match &spec.fields {
            None => {
                for (name, path) in DEFAULT_FIELDS {
                    if !map_extra.contains_key(name) {
                        members.push((
                            Arc::from(name),
                            index(FieldPath::standard_path(path), &mut select),
                        ));
                    }
                }
            }
            Some(fields) => {
                if fields.is_empty() {
                    self.problem(
                        Problem::new(fields.pos, "`fields` is empty")
                            .with_hint("leave it out for the default members, or list at least one, e.g. `severity: Severity`"),
                    );
                }
                for (name, path) in fields.iter() {
                    if EVENT_RESERVED.contains(&name.as_str()) || name.trim().is_empty() {
                        self.problem(
                            Problem::new(
                                name.pos,
                                format!("field `{}` would replace an event reading's own member", name.value),
                            )
                            .with_hint("sensor_id, timestamp, value and refresh are set by the gateway; pick another name"),
                        );
                        continue;
                    }
                    if map_extra.contains_key(name.as_str()) {
                        self.problem(
                            Problem::new(
                                name.pos,
                                format!(
                                    "field `{}` is also one of the tag map's `fields`",
                                    name.value
                                ),
                            )
                            .with_hint("a reading cannot carry the same member twice; rename one"),
                        );
                        continue;
                    }
                    match FieldPath::parse(&path.value) {
                        Some(p) => members.push((Arc::from(name.as_str()), index(p, &mut select))),
                        None => self.problem(
                            Problem::new(
                                path.pos,
                                format!("{} is not an event field's browse path", shown(&path.value)),
                            )
                            .with_hint("write browse names separated by `/`, with the namespace index before a colon where it is not 0, e.g. `ActiveState/Id` or `2:BatchId`"),
                        ),
                    }
                }
            }
        }
        let value = spec.value.value.unwrap_or_default();
        let active = (value == EventValue::State)
            .then(|| index(FieldPath::standard_path("ActiveState/Id"), &mut select));
        if let Some(q) = &spec.queue_size {
            if q.value == 0 {
                self.problem(
                    Problem::new(q.pos, "queue_size must be at least 1")
                        .with_hint("leave it out for 1000 events between publishes"),
                );
            }
        }
        if self.problems.len() > before {
            return None;
        }
        Some(EventPlan {
            sensor_id: sensor_id?,
            notifier: notifier?,
            types,
            select,
            members,
            value,
            active,
            queue_size: spec
                .queue_size
                .as_ref()
                .map_or(DEFAULT_EVENT_QUEUE, |q| q.value),
            extra: extra.clone(),
            pos: spec.sensor_id.pos,
        })
    }

    /// Splits a `sensor_id` pattern into text and `{field}` parts.
    fn id_pattern(&mut self, id: &Spanned<String>) -> Option<Vec<Pattern>> {
        let hint = "write text with event fields in braces, e.g. `line1:{SourceName}:{ConditionName}`; `{{` and `}}` write a brace";
        if id.trim().is_empty() {
            return self.err(id.pos, "sensor_id is empty", hint);
        }
        if id.len() > MAX_SENSOR_ID_BYTES {
            return self.err(
                id.pos,
                format!(
                    "sensor_id is {} bytes long; at most {MAX_SENSOR_ID_BYTES} are allowed",
                    id.len()
                ),
                "a sensor_id names a stream of events; keep it short",
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
        match parse_pattern(id) {
            Ok(parts) => Some(parts),
            Err(message) => self.err(id.pos, message, hint),
        }
    }
}

/// A piece of a `sensor_id` pattern.
#[derive(Debug, PartialEq)]
enum Pattern {
    Text(String),
    Field(FieldPath),
}

fn parse_pattern(text: &str) -> Result<Vec<Pattern>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '}' => {
                return Err(format!(
                    "sensor_id {} has a `}}` without its `{{`",
                    shown(text)
                ))
            }
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => {
                            return Err(format!(
                                "sensor_id {} has a `{{` that is not closed",
                                shown(text)
                            ))
                        }
                        Some(c) => inner.push(c),
                    }
                }
                let Some(path) = FieldPath::parse(&inner) else {
                    return Err(format!(
                        "`{{{inner}}}` in sensor_id {} is not an event field's browse path",
                        shown(text)
                    ));
                };
                if !literal.is_empty() {
                    parts.push(Pattern::Text(std::mem::take(&mut literal)));
                }
                parts.push(Pattern::Field(path));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(Pattern::Text(literal));
    }
    Ok(parts)
}

/// A node id in canonical text, `nsu=` ids kept as written (the source resolves them).
fn node_id_text(text: &str) -> Option<String> {
    let text = text.trim();
    match text.strip_prefix("nsu=").and_then(|r| r.split_once(';')) {
        Some((uri, id)) if !uri.is_empty() => {
            ::opcua::types::NodeId::from_str(&format!("ns=1;{id}"))
                .ok()
                .map(|_| text.to_string())
        }
        _ => ::opcua::types::NodeId::from_str(text)
            .ok()
            .map(|id| id.to_string()),
    }
}

impl FieldPath {
    /// A standard path written in code (`ActiveState/Id`); always parses.
    fn standard_path(text: &str) -> FieldPath {
        FieldPath::parse(text).unwrap_or_else(|| FieldPath::standard(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(events: &str) -> (TagMapPlan, Vec<String>) {
        let yaml = format!(
            "source:\n  opcua: {{endpoint: \"opc.tcp://h:4840/\", security_policy: none}}\nfields: {{site: a}}\nevents:\n{events}"
        );
        let file = crate::config::parse_str::<TagMapFile>(&yaml);
        assert!(file.problems.is_empty(), "{:?}", file.problems);
        let (plan, problems) = crate::mapping::compile(
            file.value.as_ref().expect("parses"),
            Path::new("t.yaml"),
            &[],
        );
        (
            plan,
            problems
                .iter()
                .map(|p| format!("{}:{} {}", p.pos.line, p.pos.col, p.message))
                .collect(),
        )
    }

    fn events(plan: &TagMapPlan) -> &[EventPlan] {
        match &plan.source {
            SourcePlan::OpcUa(o) => &o.events,
            SourcePlan::Modbus(_) => &[],
        }
    }

    #[test]
    fn an_alarm_list_compiles() {
        let (plan, problems) = compile(
            "  - sensor_id: \"line1:{SourceName}:{{x}}\"\n    types: [AlarmConditionType, \"ns=2;i=5001\"]\n    fields: {severity: Severity, active: ActiveState/Id, batch: \"2:BatchId\"}\n    value: state\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert!(plan.tags.is_empty());
        let e = &events(&plan)[0];
        assert_eq!(e.notifier, "i=2253");
        assert_eq!(e.types, ["i=2915", "ns=2;i=5001"]);
        let paths: Vec<String> = e.select.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            paths,
            [
                "EventType",
                "Time",
                "Message",
                "SourceName",
                "Severity",
                "ActiveState/Id",
                "2:BatchId"
            ]
        );
        assert_eq!(
            e.sensor_id,
            vec![
                IdPart::Text("line1:".into()),
                IdPart::Field(3),
                IdPart::Text(":{x}".into())
            ]
        );
        let members: Vec<(&str, usize)> = e.members.iter().map(|(n, i)| (&**n, *i)).collect();
        assert_eq!(members, [("severity", 4), ("active", 5), ("batch", 6)]);
        assert_eq!(e.active, Some(5));
        assert_eq!(e.queue_size, DEFAULT_EVENT_QUEUE);
        assert_eq!(&*e.extra, ",\"site\":\"a\"");
    }

    #[test]
    fn default_members() {
        let (plan, problems) = compile("  - sensor_id: alarms\n");
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = events(&plan)[0].members.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names, DEFAULT_FIELDS.map(|(n, _)| n));
    }

    #[test]
    fn broken_event_definitions_are_reported_at_their_position() {
        let (plan, problems) = compile(concat!(
            "  - sensor_id: \"a:{SourceName\"\n",
            "    notifier: Server\n",
            "    types: [AlarmCondtionType, Nothing]\n",
            "    fields: {value: Message, site: Severity, x: \"A//B\"}\n",
            "    queue_size: 0\n",
            "  - sensor_id: \"b}\"\n",
            "  - {sensor_id: \"{}\", enabled: true}\n",
            "  - {sensor_id: off, enabled: false, types: [Nope]}\n",
        ));
        assert!(events(&plan).is_empty());
        assert_eq!(
            problems,
            [
                "5:16 sensor_id `a:{SourceName` has a `{` that is not closed",
                "6:15 notifier `Server` is not an OPC UA node id",
                "7:13 unknown event type `AlarmCondtionType`",
                "7:32 unknown event type `Nothing`",
                "8:14 field `value` would replace an event reading's own member",
                "8:30 field `site` is also one of the tag map's `fields`",
                "8:49 `A//B` is not an event field's browse path",
                "9:17 queue_size must be at least 1",
                "10:16 sensor_id `b}` has a `}` without its `{`",
                "11:17 `{}` in sensor_id `{}` is not an event field's browse path",
            ]
        );
    }

    #[test]
    fn patterns() {
        assert_eq!(
            parse_pattern("{{a}}{2:X/Y}").unwrap(),
            vec![
                Pattern::Text("{a}".into()),
                Pattern::Field(FieldPath(vec![(2, "X".into()), (0, "Y".into())]))
            ]
        );
        assert!(parse_pattern("{a{b}}").is_err());
    }
}
