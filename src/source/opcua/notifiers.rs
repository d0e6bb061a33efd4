//! Event notifiers for `tagbridge browse`: the objects whose EventNotifier attribute has
//! SubscribeToEvents (OPC UA Part 3, 5.4), written after the tags as a commented `events:`
//! block to start from.
//!
//! Invariants:
//! - The candidates are the Server object `i=2253` (Part 5, 8.3.2: it reports every event of
//!   the server), the browse root when it is not in namespace 0, and every object the tag walk
//!   passed (`super::browse`): no second walk.
//! - Finding notifiers never fails the browse: a refused Read becomes a comment in the output,
//!   because the tags matter more.
//! - Uncommented, the block is a valid `events:` list (`tagbridge check` accepts it): strings
//!   are JSON-quoted, and braces from browse names are doubled so they stay text in a
//!   `sensor_id` pattern.

use std::fmt::Write as _;

use opcua::client::Session;
use opcua::types::{AttributeId, NodeId, ObjectId, ReadValueId, TimestampsToReturn, Variant};

/// Nodes per Read request.
const CHUNK: usize = 500;

/// Part 3, 5.4, Table 7 (EventNotifierType): bit 0, SubscribeToEvents.
const SUBSCRIBE_TO_EVENTS: u8 = 1;

/// One object that reports events.
#[derive(Debug, Clone, PartialEq)]
pub struct Notifier {
    /// Browse names from below the root joined with `/`; `Server` for the Server object.
    pub path: String,
    pub node: NodeId,
}

/// The notifiers found, or why they could not be read.
pub type Notifiers = Result<Vec<Notifier>, String>;

/// Which of the Server object, `root` and `objects` (browse path, node id) are event
/// notifiers, the Server object first.
pub async fn find(
    session: &Session,
    root: &NodeId,
    objects: &[(Vec<String>, NodeId)],
) -> Notifiers {
    let server: NodeId = ObjectId::Server.into();
    let mut candidates: Vec<(String, NodeId)> = vec![("Server".into(), server.clone())];
    if root.namespace != 0 {
        candidates.push((root_name(session, root).await, root.clone()));
    }
    candidates.extend(
        objects
            .iter()
            .filter(|(_, id)| *id != server)
            .map(|(path, id)| (path.join("/"), id.clone())),
    );
    let mut out = Vec::new();
    for chunk in candidates.chunks(CHUNK) {
        let read: Vec<ReadValueId> = chunk
            .iter()
            .map(|(_, id)| ReadValueId {
                node_id: id.clone(),
                attribute_id: AttributeId::EventNotifier as u32,
                ..Default::default()
            })
            .collect();
        let values = session
            .read(&read, TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| e.to_string())?;
        for ((path, id), v) in chunk.iter().zip(values) {
            if matches!(v.value, Some(Variant::Byte(bits)) if bits & SUBSCRIBE_TO_EVENTS != 0) {
                out.push(Notifier {
                    path: path.clone(),
                    node: id.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// The root's browse name (its node id when that cannot be read): the prefix of its entry.
async fn root_name(session: &Session, root: &NodeId) -> String {
    let read = [ReadValueId {
        node_id: root.clone(),
        attribute_id: AttributeId::BrowseName as u32,
        ..Default::default()
    }];
    match session.read(&read, TimestampsToReturn::Neither, 0.0).await {
        Ok(values) => match values.into_iter().next().and_then(|v| v.value) {
            Some(Variant::QualifiedName(name)) if !name.name.is_null() => name.name.to_string(),
            _ => root.to_string(),
        },
        Err(_) => root.to_string(),
    }
}

/// A commented `events:` block for the notifiers found, ready to uncomment.
pub fn render(notifiers: &Notifiers) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n# Event notifiers: uncomment an entry to receive its events and alarms as readings"
    );
    let _ = writeln!(
        out,
        "# (docs/tag-maps.md, \"Events and alarms\"). The Server object reports every event of the"
    );
    let _ = writeln!(
        out,
        "# server, an area only its own: an event reported by both arrives once per entry."
    );
    let found = match notifiers {
        Ok(found) if !found.is_empty() => found,
        Ok(_) => {
            let _ = writeln!(
                out,
                "# (no event notifier found: this server reports no events)"
            );
            return out;
        }
        Err(why) => {
            let _ = writeln!(out, "# (event notifiers could not be read: {why})");
            return out;
        }
    };
    let _ = writeln!(out, "# events:");
    let server_object: NodeId = ObjectId::Server.into();
    for n in found {
        let server = n.node == server_object;
        let prefix = if server {
            String::new()
        } else {
            format!("{}:", n.path.replace('{', "{{").replace('}', "}}"))
        };
        let _ = writeln!(
            out,
            "#   - sensor_id: {}",
            q(&format!("{prefix}{{SourceName}}:{{ConditionName}}"))
        );
        let _ = writeln!(out, "#     notifier: {}", q(&n.node.to_string()));
        if server {
            let _ = writeln!(out, "#     types: [AlarmConditionType]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block with its `# ` taken off, in a tag map, compiled like `check` does.
    fn uncommented(notifiers: &Notifiers) -> (String, crate::mapping::TagMapPlan) {
        let text = render(notifiers);
        let events: String = text
            .lines()
            .filter(|l| l.starts_with("# events:") || l.starts_with("#   "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let yaml = format!(
            "source:\n  opcua: {{endpoint: \"opc.tcp://h:4840/\", security_policy: none}}\n{events}"
        );
        let file = crate::config::parse_str::<crate::config::tagmap::TagMapFile>(&yaml);
        assert!(file.problems.is_empty(), "{:?}\n{yaml}", file.problems);
        let (plan, problems) = crate::mapping::compile(
            file.value.as_ref().expect("parses"),
            std::path::Path::new("t.yaml"),
            &[],
        );
        assert!(problems.is_empty(), "{problems:?}\n{yaml}");
        (yaml, plan)
    }

    #[test]
    fn uncommented_it_is_a_valid_events_list() {
        let (yaml, plan) = uncommented(&Ok(vec![
            Notifier {
                path: "Server".into(),
                node: ObjectId::Server.into(),
            },
            Notifier {
                path: "Plant/Alarms {\"A\"}".into(),
                node: NodeId::new(2, "Alarms"),
            },
        ]));
        let crate::mapping::SourcePlan::OpcUa(o) = &plan.source else {
            panic!("OPC UA")
        };
        assert_eq!(o.events.len(), 2, "{yaml}");
        assert_eq!(o.events[0].notifier, "i=2253");
        assert_eq!(o.events[1].notifier, "ns=2;s=Alarms");
        assert!(
            yaml.contains(r#"sensor_id: "Plant/Alarms {{\"A\"}}:{SourceName}:{ConditionName}""#),
            "{yaml}"
        );
    }

    #[test]
    fn nothing_found_or_a_refusal_says_so_without_an_events_key() {
        let none = render(&Ok(Vec::new()));
        assert!(none.contains("no event notifier found"), "{none}");
        assert!(!none.contains("events:"), "{none}");
        let refused = render(&Err("BadUserAccessDenied".into()));
        assert!(
            refused.contains("could not be read: BadUserAccessDenied"),
            "{refused}"
        );
        assert!(!refused.contains("events:"), "{refused}");
    }
}
