//! Structure tags (`members:`): one tag per enabled field, `sensor_id.path` (or
//! `sensor_id[i].path` with `elements`), grouped behind one monitored item per node or element.
//! Only syntax is checked here; whether a field exists is known once the server's types are
//! learned, and the run reports unknown fields at their `file:line`.

use super::*;
use crate::config::structure::{parse_path, path_text};
use crate::mapping::members::{MemberPlan, StructureGroup};

impl TagsCompiler<'_> {
    /// Plans the fields of a structure tag; `base` is the tag's transform without its own
    /// scale, offset and states (those belong to fields).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn structure_tag(
        &mut self,
        tag: &TagSpec,
        members: &Spanned<Members>,
        sensor_id: &Arc<str>,
        address: &TagAddress,
        interval: Duration,
        extra: &BTreeMap<String, serde_json::Value>,
        monitoring: MonitoringPlan,
    ) {
        // Scale, offset and states mean nothing for a whole structure.
        let misplaced = [
            ("scale", tag.scale.as_ref().map(|s| s.pos)),
            ("offset", tag.offset.as_ref().map(|s| s.pos)),
            ("states", tag.states.as_ref().map(|_| tag.sensor_id.pos)),
        ];
        let mut ok = true;
        for (key, pos) in misplaced {
            if let Some(pos) = pos {
                self.c.problem(
                    Problem::new(pos, format!("`{key}` on a structure tag has no value to act on"))
                        .with_hint(format!(
                            "put it on the field it is for, under `members:`, e.g. `members: {{temperature: {{{key}: …}}}}`"
                        )),
                );
                ok = false;
            }
        }
        if members.is_empty() {
            self.c.problem(
                Problem::new(members.pos, "`members` needs at least one field")
                    .with_hint("list the fields to read, e.g. `members: {temperature: {}, state: {}}`; `tagbridge browse` writes them all"),
            );
            ok = false;
        }
        // The tag's deadband, heartbeat and decimals are the defaults of its fields.
        let defaults = TagDefaults {
            deadband: tag.deadband.clone().or(self.file.defaults.deadband.clone()),
            heartbeat: tag.heartbeat.or(self.file.defaults.heartbeat),
            decimals: tag.decimals.clone().or(self.file.defaults.decimals.clone()),
            ..TagDefaults::default()
        };
        // Each field: its path and its own plan, or None when it is disabled or broken.
        let mut planned = Vec::with_capacity(members.len());
        for (path, spec) in members.iter() {
            let spec = spec.clone().unwrap_or_default();
            let steps = match parse_path(path) {
                Ok(steps) => steps,
                Err(message) => {
                    self.c.problem(Problem::new(path.pos, message).with_hint(
                        "write a field path: `name`, `outer.inner`, or `array[0].name`",
                    ));
                    ok = false;
                    continue;
                }
            };
            if !spec.enabled.unwrap_or(true) {
                self.disabled += 1;
                continue;
            }
            let Some(transform) = self.member_transform(path, &spec, &defaults) else {
                ok = false;
                continue;
            };
            let mut fields = extra.clone();
            for (k, v) in self.c.fields(&spec.fields) {
                fields.insert(k, v);
            }
            planned.push((
                path.pos,
                Arc::<[_]>::from(steps),
                transform,
                encode_extra(&fields),
                spec.states.is_some(),
            ));
        }
        if !ok || planned.is_empty() {
            return;
        }
        let elements: Vec<Option<u32>> = match tag.elements.as_ref().map(|e| e.value) {
            Some(n) => (0..n).map(Some).collect(),
            None => vec![None],
        };
        let structures = &mut self.structures;
        for element in elements {
            let name: Arc<str> = match element {
                Some(i) => format!("{sensor_id}[{i}]").into(),
                None => sensor_id.clone(),
            };
            let group = structures.groups.len() as u32;
            let mut group_members = Vec::with_capacity(planned.len());
            for (pos, steps, transform, extra, own_states) in &planned {
                let id: Arc<str> = format!("{name}.{}", path_text(steps)).into();
                if id.len() > MAX_SENSOR_ID_BYTES {
                    self.c.problem(
                        Problem::new(*pos, format!(
                            "the field's sensor_id `{id}` is {} bytes long; at most {MAX_SENSOR_ID_BYTES} are allowed",
                            id.len()
                        ))
                        .with_hint("shorten the tag's sensor_id"),
                    );
                    continue;
                }
                if let Some(first) = self.ids.insert(id.clone(), pos.line) {
                    self.c.problem(
                        Problem::new(*pos, format!("sensor_id `{id}` is used twice in this file"))
                            .with_hint(format!("the first is at line {first}")),
                    );
                    continue;
                }
                let index = self.tags.len();
                structures
                    .by_tag
                    .insert(index, (group, group_members.len() as u32));
                group_members.push(MemberPlan {
                    tag: index,
                    path: steps.clone(),
                    pos: *pos,
                    own_states: *own_states,
                });
                self.monitoring.push(MonitoringPlan {
                    index: element,
                    ..monitoring
                });
                self.tags.push(TagPlan {
                    sensor_id: id,
                    address: address.clone(),
                    interval,
                    transform: transform.clone(),
                    extra: extra.clone(),
                    pos: *pos,
                });
            }
            if let Some(first) = group_members.first() {
                structures.groups.push(StructureGroup {
                    lead: first.tag,
                    name,
                    pos: members.pos,
                    members: group_members,
                });
            }
        }
    }

    /// A field's transform: its own options, then its tag's and the file's defaults.
    fn member_transform(
        &mut self,
        path: &Spanned<String>,
        spec: &MemberSpec,
        defaults: &TagDefaults,
    ) -> Option<Transform> {
        // Checked like a tag of its own; messages about the whole field point at its path.
        let as_tag = TagSpec {
            sensor_id: path.clone(),
            enabled: None,
            node: None,
            queue_size: None,
            trigger: None,
            server_deadband: None,
            elements: None,
            members: None,
            table: None,
            address: None,
            modicon: None,
            unit: None,
            data_type: None,
            order: None,
            bit: None,
            length: None,
            interval: None,
            scale: spec.scale.clone(),
            offset: spec.offset.clone(),
            states: spec.states.clone(),
            deadband: spec.deadband.clone(),
            heartbeat: spec.heartbeat,
            decimals: spec.decimals.clone(),
            fields: BTreeMap::new(),
        };
        self.c.transform(&as_tag, defaults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_text(text: &str) -> (TagMapPlan, Vec<String>) {
        let parsed = crate::config::parse_tag_map(text.to_string());
        let mut problems: Vec<String> = parsed
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.pos, p.message))
            .collect();
        let file = parsed.value.expect("the shape parses");
        let (plan, more) = compile(&file, Path::new("/maps/m.yaml"), &parsed.dropped);
        problems.extend(more.iter().map(|p| format!("{}: {}", p.pos, p.message)));
        (plan, problems)
    }

    const OPCUA: &str = "source:\n  opcua: {endpoint: \"opc.tcp://10.0.0.5:4840\"}\n";

    fn opcua(plan: &TagMapPlan) -> &OpcUaPlan {
        match &plan.source {
            SourcePlan::OpcUa(o) => o,
            SourcePlan::Modbus(_) => panic!("not OPC UA"),
        }
    }

    #[test]
    fn each_enabled_field_is_a_tag_behind_one_monitored_item() {
        let (plan, problems) = compile_text(&format!(
            "{OPCUA}defaults: {{decimals: 3}}\ntags:\n  - sensor_id: press-3:recipe\n    node: ns=2;s=R\n    deadband: 0.5\n    fields: {{site: a}}\n    members:\n      temperature: {{scale: 0.1, decimals: 1, fields: {{unit: degC}}}}\n      stage.duration: ~\n      setpoints[2]: {{deadband: 0}}\n      name: {{enabled: false}}\n      state: {{states: {{0: Idle}}}}\n  - {{sensor_id: b, node: \"ns=2;s=B\"}}\n"
        ));
        assert!(problems.is_empty(), "{problems:?}");
        let ids: Vec<&str> = plan.tags.iter().map(|t| &*t.sensor_id).collect();
        // Members in file order, then the next tag.
        assert_eq!(
            ids,
            [
                "press-3:recipe.temperature",
                "press-3:recipe.stage.duration",
                "press-3:recipe.setpoints[2]",
                "press-3:recipe.state",
                "b"
            ]
        );
        assert_eq!(plan.disabled, 1, "the disabled field");
        let t = &plan.tags[0];
        assert_eq!(t.transform.scale, Some(0.1));
        assert_eq!(t.transform.decimals, Some(1));
        assert_eq!(t.transform.deadband, 0.5, "the tag's deadband");
        assert_eq!(&*t.extra, ",\"site\":\"a\",\"unit\":\"degC\"");
        assert_eq!(plan.tags[2].transform.deadband, 0.0, "its own deadband");
        assert_eq!(
            plan.tags[1].transform.decimals,
            Some(3),
            "the file's default"
        );
        let o = opcua(&plan);
        assert_eq!(o.monitoring.len(), 5);
        assert_eq!(o.structures.groups.len(), 1);
        let g = &o.structures.groups[0];
        assert_eq!(g.lead, 0);
        assert_eq!(&*g.name, "press-3:recipe");
        assert_eq!(g.members.len(), 4);
        assert!(g.members[3].own_states);
        assert!(!o.structures.is_follower(0));
        assert!(o.structures.is_follower(3));
        assert!(o.structures.group_of(4).is_none());
        assert_eq!(plan.tags[3].pos.line, 14, "a field points at its own line");
    }

    #[test]
    fn arrays_of_structures_get_one_group_per_element() {
        let (plan, problems) = compile_text(&format!(
            "{OPCUA}tags:\n  - {{sensor_id: s, node: \"ns=2;s=S\", elements: 2, members: {{a: {{}}, b.c: {{}}}}}}\n"
        ));
        assert!(problems.is_empty(), "{problems:?}");
        let ids: Vec<&str> = plan.tags.iter().map(|t| &*t.sensor_id).collect();
        assert_eq!(ids, ["s[0].a", "s[0].b.c", "s[1].a", "s[1].b.c"]);
        let o = opcua(&plan);
        assert_eq!(o.structures.groups.len(), 2);
        assert_eq!(o.structures.groups[1].lead, 2);
        assert_eq!(o.monitoring[3].index, Some(1));
    }

    #[test]
    fn mistakes_are_reported_where_they_are() {
        let (plan, problems) = compile_text(&format!(
            "{OPCUA}tags:\n  - sensor_id: s\n    node: ns=2;s=S\n    scale: 2\n    members:\n      a[x]: {{}}\n      b: {{decimals: 40}}\n  - {{sensor_id: v, node: \"ns=2;s=V\", members: {{c: {{colour: red}}}}}}\n  - {{sensor_id: t, node: \"ns=2;s=T\", members: {{}}}}\n  - {{sensor_id: u.a, node: \"ns=2;s=U1\"}}\n  - {{sensor_id: u, node: \"ns=2;s=U\", members: {{a: {{}}}}}}\n"
        ));
        let text = problems.join("\n");
        for wanted in [
            "6:12: `scale` on a structure tag has no value to act on",
            "8:7: `a[x]`: `[x]` is not an array index from 0 to 1000000",
            "9:21: decimals 40 is more than a float holds",
            "10:52: unknown key `colour`",
            "`members` needs at least one field",
            "sensor_id `u.a` is used twice in this file",
        ] {
            assert!(text.contains(wanted), "missing {wanted:?} in:\n{text}");
        }
        let ids: Vec<&str> = plan.tags.iter().map(|t| &*t.sensor_id).collect();
        assert!(
            !ids.iter()
                .any(|id| id.starts_with("s.") || id.starts_with("u.a.")),
            "{ids:?}"
        );
    }

    #[test]
    fn members_on_a_modbus_tag_are_refused() {
        let (_, problems) = compile_text(
            "source:\n  modbus: {tcp: \"10.0.0.7:502\"}\ntags:\n  - {sensor_id: a, table: holding_register, address: 0, members: {x: {}}}\n",
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`members` is an OPC UA key")),
            "{problems:?}"
        );
    }
}
