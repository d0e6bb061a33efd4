//! Browsing a server's address space into a ready-to-edit tag map (`tagbridge browse`).
//!
//! Invariants:
//! - The walk follows hierarchical references forward from the root (default: the Objects
//!   folder), descends into objects only (never into variables' properties), skips
//!   namespace 0 (the server's own diagnostics), and stops at `depth` levels.
//! - Every variable found becomes one tag: `sensor_id` is its browse path below the root
//!   (`Folder/Sub/Name`), made unique with `~2`, `~3`… when two paths collide; `node` is its
//!   node id. Its data type goes into a comment; arrays and structures are written with
//!   `enabled: false` and a comment saying why (and, for arrays, how to read them with
//!   `elements:`), so the file passes `tagbridge check` as is. Structures whose type the
//!   server describes come with every field listed under `members:`, ready to enable.
//! - The text is built from JSON-quoted strings, which YAML reads back unchanged.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use opcua::client::{Session, SessionPollResult};
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, ByteString, DataTypeId,
    NodeClass, NodeClassMask, NodeId, ReadValueId, ReferenceTypeId, StatusCode, TimestampsToReturn,
    Variant,
};

use super::OpcUaError;
use crate::config::tagmap::{SecurityMode, SecurityPolicy};
use crate::mapping::plan::{SecretSource, UserPlan};
use crate::mapping::OpcUaPlan;

/// Nodes per Browse and Read request.
const CHUNK: usize = 500;

/// One variable found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Browse names from below the root to the variable.
    pub path: Vec<String>,
    pub node: NodeId,
    /// The data type's name, e.g. `Double` or `SimEnum1`.
    pub data_type: String,
    /// An array (see `is_array`).
    pub array: bool,
    /// The data type is a structure (or another non-scalar the source cannot read).
    pub structure: bool,
    /// A structure's fields (path, type), learned from the server's types; `members:` lists
    /// them ([`super::structure::browse_fields`]).
    pub fields: Option<super::structure::BrowsedFields>,
}

/// Walks the address space below `root` down to `depth` levels.
pub async fn browse(
    session: &Session,
    root: &NodeId,
    depth: usize,
) -> Result<Vec<Found>, OpcUaError> {
    let walked = walk(session, root, depth).await?;
    describe(session, walked.variables).await
}

/// What one walk below the root passed: (browse path, node id) of each variable and object.
pub(super) struct Walked {
    pub variables: Vec<(Vec<String>, NodeId)>,
    /// Objects and folders, for `super::notifiers` (which of them report events).
    pub objects: Vec<(Vec<String>, NodeId)>,
}

/// The walk of [`browse`]: hierarchical references forward, objects only descended into,
/// namespace 0 skipped, continuation points followed.
async fn walk(session: &Session, root: &NodeId, depth: usize) -> Result<Walked, OpcUaError> {
    let request = |e: opcua::types::Error| OpcUaError::Request(e.to_string());
    let mut found: Vec<(Vec<String>, NodeId)> = Vec::new();
    let mut objects: Vec<(Vec<String>, NodeId)> = Vec::new();
    let mut seen: HashSet<NodeId> = HashSet::from([root.clone()]);
    let mut level: Vec<(Vec<String>, NodeId)> = vec![(Vec::new(), root.clone())];
    for _ in 0..depth.max(1) {
        let mut next = Vec::new();
        for chunk in level.chunks(CHUNK) {
            let descriptions: Vec<BrowseDescription> = chunk
                .iter()
                .map(|(_, id)| BrowseDescription {
                    node_id: id.clone(),
                    browse_direction: BrowseDirection::Forward,
                    reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
                    include_subtypes: true,
                    node_class_mask: (NodeClassMask::OBJECT | NodeClassMask::VARIABLE).bits(),
                    result_mask: BrowseResultMask::All as u32,
                })
                .collect();
            let mut results = session
                .browse(&descriptions, 1000, None)
                .await
                .map_err(request)?;
            let mut parents: Vec<usize> = (0..results.len()).collect();
            loop {
                let mut continuation: Vec<(usize, ByteString)> = Vec::new();
                for (r, &parent) in results.iter().zip(&parents) {
                    let (path, _) = &chunk[parent];
                    for reference in r.references.iter().flatten() {
                        let id = reference.node_id.node_id.clone();
                        if id.namespace == 0 || !reference.node_id.namespace_uri.is_null() {
                            continue;
                        }
                        if !seen.insert(id.clone()) {
                            continue;
                        }
                        let mut child = path.clone();
                        child.push(reference.browse_name.name.to_string());
                        match reference.node_class {
                            NodeClass::Variable => found.push((child, id)),
                            NodeClass::Object => next.push((child, id)),
                            _ => {}
                        }
                    }
                    if !r.continuation_point.is_null() {
                        continuation.push((parent, r.continuation_point.clone()));
                    }
                }
                if continuation.is_empty() {
                    break;
                }
                let points: Vec<ByteString> = continuation.iter().map(|(_, c)| c.clone()).collect();
                results = session.browse_next(false, &points).await.map_err(request)?;
                parents = continuation.into_iter().map(|(p, _)| p).collect();
            }
        }
        if next.is_empty() {
            break;
        }
        objects.extend(next.iter().cloned());
        level = next;
    }
    Ok(Walked {
        variables: found,
        objects,
    })
}

/// Reads DataType and ValueRank of each variable, and the names of non-built-in types.
async fn describe(
    session: &Session,
    found: Vec<(Vec<String>, NodeId)>,
) -> Result<Vec<Found>, OpcUaError> {
    let request = |e: opcua::types::Error| OpcUaError::Request(e.to_string());
    let mut out = Vec::with_capacity(found.len());
    let mut type_names: HashMap<NodeId, (String, bool)> = HashMap::new();
    // Structure variables: (index in `out`, data type, value, array), for their fields.
    let mut structures = Vec::new();
    for chunk in found.chunks(CHUNK / 3) {
        let read: Vec<ReadValueId> = chunk
            .iter()
            .flat_map(|(_, id)| {
                [
                    AttributeId::DataType,
                    AttributeId::ValueRank,
                    AttributeId::Value,
                ]
                .map(|a| ReadValueId {
                    node_id: id.clone(),
                    attribute_id: a as u32,
                    ..Default::default()
                })
            })
            .collect();
        let values = session
            .read(&read, TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(request)?;
        for (i, (path, node)) in chunk.iter().enumerate() {
            let data_type = match values.get(3 * i).and_then(|v| v.value.clone()) {
                Some(Variant::NodeId(id)) => *id,
                _ => NodeId::null(),
            };
            let rank = match values.get(3 * i + 1).and_then(|v| v.value.clone()) {
                Some(Variant::Int32(r)) => r,
                _ => -1,
            };
            let value = values.get(3 * i + 2).and_then(|v| v.value.as_ref());
            let array = is_array(rank, value);
            if !type_names.contains_key(&data_type) {
                let name = type_name(session, &data_type).await;
                type_names.insert(data_type.clone(), name);
            }
            let (name, structure) = type_names[&data_type].clone();
            if structure {
                structures.push((out.len(), (data_type.clone(), value.cloned(), array)));
            }
            out.push(Found {
                path: path.clone(),
                node: node.clone(),
                data_type: name,
                array,
                structure,
                fields: None,
            });
        }
    }
    if !structures.is_empty() {
        let vars: Vec<_> = structures.iter().map(|(_, v)| v.clone()).collect();
        // Types the server does not describe leave the structure disabled without fields.
        if let Ok(fields) = super::structure::browse_fields(session, &vars).await {
            for ((i, _), f) in structures.iter().zip(fields) {
                out[*i].fields = f.filter(|f| !f.is_empty());
            }
        }
    }
    Ok(out)
}

/// Whether a variable holds arrays: ValueRank ≥ 0 (one or more dimensions; asyncua sets 0
/// for its arrays), or a rank that allows both (-2 Any, -3 ScalarOrOneDimension; Part 3,
/// 5.6.2) with an array as its current value.
fn is_array(rank: i32, value: Option<&Variant>) -> bool {
    rank >= 0 || (rank != -1 && matches!(value, Some(Variant::Array(_))))
}

/// A data type's name and whether it is a structure.
async fn type_name(session: &Session, id: &NodeId) -> (String, bool) {
    if id.is_null() {
        return ("unknown".into(), false);
    }
    if id.namespace == 0 {
        if let Some(n) = id.as_u32() {
            if let Ok(t) = DataTypeId::try_from(n) {
                let structure = matches!(t, DataTypeId::Structure);
                return (format!("{t:?}"), structure);
            }
        }
    }
    // A custom type: its browse name, and whether it derives from Structure (one level
    // up is enough for a comment; deeper hierarchies read as "structure" when unknown).
    let name = session
        .read(
            &[ReadValueId {
                node_id: id.clone(),
                attribute_id: AttributeId::BrowseName as u32,
                ..Default::default()
            }],
            TimestampsToReturn::Neither,
            0.0,
        )
        .await
        .ok()
        .and_then(|v| v.into_iter().next())
        .and_then(|v| match v.value {
            Some(Variant::QualifiedName(q)) => Some(q.name.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| id.to_string());
    let parent = session
        .browse(
            &[BrowseDescription {
                node_id: id.clone(),
                browse_direction: BrowseDirection::Inverse,
                reference_type_id: ReferenceTypeId::HasSubtype.into(),
                include_subtypes: false,
                node_class_mask: NodeClassMask::DATA_TYPE.bits(),
                result_mask: BrowseResultMask::All as u32,
            }],
            1,
            None,
        )
        .await
        .ok()
        .and_then(|r| r.into_iter().next())
        .and_then(|r| r.references)
        .and_then(|r| r.into_iter().next())
        .map(|r| r.node_id.node_id);
    let structure = parent.as_ref().is_some_and(|p| *p == DataTypeId::Structure);
    let enumeration = parent.is_some_and(|p| p == DataTypeId::Enumeration);
    let kind = if enumeration {
        " (enumeration: state names are sent)"
    } else {
        ""
    };
    (format!("{name}{kind}"), structure)
}

/// The tag map text for `found`, reading from the server `plan` describes.
///
/// Long on purpose: it writes the file top to bottom (header, source, defaults, one entry per
/// variable), so the code has the shape of the output.
pub fn render(plan: &OpcUaPlan, root: &NodeId, found: &[Found], command: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"));
    let mut out = String::new();
    let _ = writeln!(out, "# Written by `{command}`:");
    let _ = writeln!(
        out,
        "# {} variables below {root}. sensor_ids are browse paths: rename them freely, they",
        found.len()
    );
    let _ = writeln!(out, "# only have to be unique. Types are noted as comments; `tagbridge check` validates the file.");
    let _ = writeln!(out, "source:\n  opcua:");
    let _ = writeln!(out, "    endpoint: {}", q(&plan.endpoint));
    let policy = match plan.security_policy {
        SecurityPolicy::None => "none",
        SecurityPolicy::Basic256Sha256 => "basic256sha256",
        SecurityPolicy::Aes128Sha256RsaOaep => "aes128_sha256_rsaoaep",
        SecurityPolicy::Aes256Sha256RsaPss => "aes256_sha256_rsapss",
    };
    let _ = writeln!(out, "    security_policy: {policy}");
    if plan.security_policy != SecurityPolicy::None {
        let mode = match plan.security_mode {
            SecurityMode::Sign => "sign",
            _ => "sign_and_encrypt",
        };
        let _ = writeln!(out, "    security_mode: {mode}");
    }
    match &plan.user {
        UserPlan::Anonymous => {}
        UserPlan::Username { username, password } => {
            let secret = match password {
                SecretSource::Env(v) => format!("password_env: {}", q(v)),
                SecretSource::File(p) => format!("password_file: {}", q(&p.display().to_string())),
            };
            let _ = writeln!(
                out,
                "    user: {{username: {{username: {}, {secret}}}}}",
                q(username)
            );
        }
        UserPlan::Certificate { cert, key } => {
            let _ = writeln!(
                out,
                "    user: {{certificate: {{cert: {}, key: {}}}}}",
                q(&cert.display().to_string()),
                q(&key.display().to_string())
            );
        }
    }
    let _ = writeln!(
        out,
        "    publishing_interval: {}ms",
        plan.publishing_interval.as_millis()
    );
    if let Some(dir) = &plan.pki_dir {
        let _ = writeln!(out, "    pki_dir: {}", q(&dir.display().to_string()));
    }
    let _ = writeln!(out, "\ndefaults:\n  interval: 1s\n\ntags:");
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut folder = String::new();
    for f in found {
        let parent = f.path[..f.path.len().saturating_sub(1)].join("/");
        if parent != folder {
            let _ = writeln!(
                out,
                "\n  # {}",
                if parent.is_empty() { "(root)" } else { &parent }
            );
            folder = parent;
        }
        let base = f.path.join("/");
        let n = used.entry(base.clone()).or_insert(0);
        *n += 1;
        let sensor_id = if *n == 1 { base } else { format!("{base}~{n}") };
        let _ = writeln!(
            out,
            "  - sensor_id: {}    # {}{}",
            q(&sensor_id),
            f.data_type,
            if f.array { "[]" } else { "" }
        );
        let _ = writeln!(out, "    node: {}", q(&f.node.to_string()));
        if let (true, Some(fields)) = (f.structure, &f.fields) {
            let how = if f.array {
                "an array of structures: add `elements: N` and remove this line to read each field as sensor_id[i].field"
            } else {
                "a structure: remove this line to read each field below as sensor_id.field"
            };
            let _ = writeln!(out, "    enabled: false    # {how}");
            let _ = writeln!(out, "    members:");
            for (path, kind) in fields {
                let _ = writeln!(out, "      {}: {{}}    # {kind}", q(path));
            }
            continue;
        }
        if f.array || f.structure {
            let why = if f.array {
                "an array: add `elements: N` and remove this line to read N elements as sensor_id[i]"
            } else {
                "a structure: not read; point a tag at one of its fields"
            };
            let _ = writeln!(out, "    enabled: false    # {why}");
        }
    }
    out
}

/// How long `browse` waits for a session after the server answered GetEndpoints.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// Convenience for the CLI: connect with `plan`, browse (the variables, and the event
/// notifiers among the objects passed: `super::notifiers`), disconnect. A server that refuses
/// the session (the gateway's certificate, the login) is reported at once, with the next step.
pub async fn browse_server(
    plan: &OpcUaPlan,
    root: &NodeId,
    depth: usize,
) -> Result<(Vec<Found>, super::notifiers::Notifiers), OpcUaError> {
    let client = super::connect::client(plan, 1000)?;
    let connection =
        super::connect::connect(&client, plan, std::path::Path::new(&plan.endpoint)).await?;
    let session: Arc<Session> = connection.session;
    let mut stream = Box::pin(connection.event_loop.enter());
    let deadline = tokio::time::sleep(SESSION_TIMEOUT);
    tokio::pin!(deadline);
    let mut last = None;
    loop {
        tokio::select! {
            _ = &mut deadline => {
                let why = last.map(|s: StatusCode| format!(" (last answer: {s})")).unwrap_or_default();
                return Err(OpcUaError::Unreachable {
                    endpoint: plan.endpoint.clone(),
                    reason: format!("no session within {} s{why}", SESSION_TIMEOUT.as_secs()),
                });
            }
            next = stream.next() => match next {
                None => return Err(OpcUaError::Request("the session closed".into())),
                Some(Err(status)) => {
                    return Err(super::connect::refused(plan, status)
                        .unwrap_or_else(|| OpcUaError::Request(status.to_string())))
                }
                Some(Ok(SessionPollResult::Reconnected(_))) => break,
                Some(Ok(SessionPollResult::ReconnectFailed(status))) => {
                    if let Some(error) = super::connect::refused(plan, status) {
                        return Err(error);
                    }
                    last = Some(status);
                }
                Some(Ok(_)) => {}
            }
        }
    }
    // Keep polling the event loop while browsing; aborted below.
    let driver = tokio::spawn(async move { while stream.next().await.is_some() {} });
    let result = async {
        let walked = walk(&session, root, depth).await?;
        let notifiers = super::notifiers::find(&session, root, &walked.objects).await;
        let found = describe(&session, walked.variables).await?;
        Ok((found, notifiers))
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(3), session.disconnect()).await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> OpcUaPlan {
        crate::source::opcua::test_plan()
    }

    #[test]
    fn value_ranks_that_allow_arrays() {
        let array = Variant::from(vec![1i32, 2]);
        let scalar = Variant::Int32(1);
        assert!(is_array(0, None), "OneOrMoreDimensions");
        assert!(is_array(1, Some(&scalar)));
        assert!(!is_array(-1, Some(&array)), "Scalar");
        assert!(is_array(-2, Some(&array)));
        assert!(is_array(-3, Some(&array)));
        assert!(!is_array(-3, Some(&scalar)));
        assert!(!is_array(-2, None));
    }

    #[test]
    fn rendered_tag_maps_compile() {
        let found = vec![
            Found {
                path: vec!["Line1".into(), "Temp \"A\"".into()],
                node: NodeId::new(2, "Line1/Temp"),
                data_type: "Double".into(),
                array: false,
                structure: false,
                fields: None,
            },
            Found {
                path: vec!["Line1".into(), "Temp \"A\"".into()],
                node: NodeId::new(2, 7u32),
                data_type: "Int32".into(),
                array: true,
                structure: false,
                fields: None,
            },
            Found {
                path: vec!["Press3".into(), "Recipe".into()],
                node: NodeId::new(2, "Press3/Recipe"),
                data_type: "SimRecipe".into(),
                array: false,
                structure: true,
                fields: Some(vec![
                    ("temperature".into(), "Double".into()),
                    ("setpoints[0]".into(), "Double".into()),
                    ("stage.duration".into(), "UInt32".into()),
                ]),
            },
        ];
        let text = render(
            &plan(),
            &opcua::types::ObjectId::ObjectsFolder.into(),
            &found,
            "tagbridge browse x",
        );
        let file = crate::config::parse_str::<crate::config::tagmap::TagMapFile>(&text);
        assert!(file.problems.is_empty(), "{:?}\n{text}", file.problems);
        let (compiled, problems) = crate::mapping::compile(
            file.value.as_ref().unwrap(),
            std::path::Path::new("b.yaml"),
            &[],
        );
        assert!(problems.is_empty(), "{problems:?}\n{text}");
        assert_eq!(compiled.tags.len(), 1, "{text}");
        assert_eq!(&*compiled.tags[0].sensor_id, "Line1/Temp \"A\"");
        assert_eq!(compiled.disabled, 2);
        assert!(text.contains("Line1/Temp \\\"A\\\"~2"), "{text}");
        // Enabling the structure reads its listed fields.
        let enabled = text.replacen(
            "    enabled: false    # a structure",
            "    # a structure",
            1,
        );
        let file = crate::config::parse_str::<crate::config::tagmap::TagMapFile>(&enabled);
        let (compiled, problems) = crate::mapping::compile(
            file.value.as_ref().unwrap(),
            std::path::Path::new("b.yaml"),
            &[],
        );
        assert!(problems.is_empty(), "{problems:?}\n{enabled}");
        let ids: Vec<&str> = compiled.tags.iter().map(|t| &*t.sensor_id).collect();
        assert!(
            ids.contains(&"Press3/Recipe.setpoints[0]")
                && ids.contains(&"Press3/Recipe.stage.duration"),
            "{ids:?}\n{enabled}"
        );
    }
}
