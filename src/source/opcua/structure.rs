//! Structures (ExtensionObjects of custom structured types) → one sample per field.
//!
//! Types are learned from the server once per session (`Structures::learn`): the DataType of
//! every structure tag's node, then async-opcua's `DataTypeTreeBuilder`, which reads the
//! `DataTypeDefinition` attribute of the structured and enumerated types, restricted to the
//! namespaces the tag map uses (its nodes' and their data types'), widened only to the
//! namespaces of field types those definitions name. After a reconnect one Read of the same
//! attributes tells whether the server's types changed (a restarted PLC with a new program);
//! only then are they learned again.
//!
//! Values are decoded here, not by the session: the session keeps an unknown structure's body
//! as bytes, and this module decodes those bytes per tag with the learned definitions, so a
//! body that does not match its definition costs that tag's fields one value, never the
//! notification message that carried it, and never another tag.
//!
//! | inside a structure | outcome |
//! |---|---|
//! | scalar field of a built-in type | one sample, converted like a scalar tag's value ([`super::convert`]) |
//! | enumeration field | its name from the type's EnumDefinition; the number when the field has `states:` |
//! | nested structure | its fields, path `outer.inner` |
//! | array field | per element, path `name[i]` (multi-dimensional arrays: flattened index) |
//! | optional field that is absent | no sample this time (like an unchanged value) |
//! | union | only the field that is set gives a sample; the others are absent |
//! | field of abstract type (`Structure`, subtypes sent as ExtensionObjects) | decoded by the type the value names |
//! | field of type `BaseDataType` (a Variant) | one sample when it holds a scalar |
//! | a path naming a structure or a whole array | reported per field, with the names or the length to use |
//! | a field name the type does not have | reported once per session with the tag map's `file:line`, with a "did you mean" |
//! | a type the server does not describe, structures with subtyped values | reported per tag |

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use opcua::client::custom_types::DataTypeTreeBuilder;
use opcua::client::Session;
use opcua::types::custom::{
    DataTypeTree, DataTypeVariant, ParsedStructureField, StructTypeInfo, TypeInfoRef,
};
use opcua::types::{
    AttributeId, BinaryDecodable, ByteString, ByteStringBody, ContextOwned, DataTypeId, DataValue,
    DateTime as UaDateTime, DecodingOptions, DiagnosticInfo, ExpandedNodeId, ExtensionObject, Guid,
    LocalizedText, NodeId, QualifiedName, ReadValueId, StatusCode, StructureType,
    TimestampsToReturn, UAString, Variant, VariantScalarTypeId, XmlElement,
};

use super::convert::{self, EnumNames};
use crate::config::structure::{path_text, PathStep};
use crate::mapping::members::{MemberPlan, StructureGroup};
use crate::mapping::{OpcUaPlan, TagMapPlan};
use crate::sample::{Cause, Sample, SampleBatch, SourceEvent};

/// Nested structures deeper than this are refused (a hostile or broken definition).
const MAX_DEPTH: usize = 32;
/// Elements of all arrays in one structure value, at most.
const MAX_ELEMENTS: usize = 1_000_000;
/// Rounds of widening the learned namespaces to the ones field types live in.
const MAX_ROUNDS: usize = 4;

/// The structure tags of one source and the types learned for them.
pub(crate) struct Structures {
    plan: Arc<TagMapPlan>,
    source: Arc<OpcUaPlan>,
    types: RwLock<Option<Arc<Types>>>,
    /// Member tags whose last value could not be read, so each problem is logged once until a
    /// value arrives again.
    warned: Mutex<HashSet<usize>>,
    /// Groups whose structure as a whole could not be decoded, logged once per episode.
    group_warned: Mutex<HashSet<usize>>,
    /// Set when a value names a type the learned ones do not hold: learn again.
    pub(crate) stale: std::sync::atomic::AtomicBool,
}

/// What one session learned: the type tree, a decoding context and enumeration names.
pub(crate) struct Types {
    tree: DataTypeTree,
    context: ContextOwned,
    enums: HashMap<NodeId, EnumNames>,
    /// The attributes read to learn (lead nodes' DataType, types' DataTypeDefinition) and
    /// their values, to tell after a reconnect whether the server's types changed.
    fingerprint: Vec<(ReadValueId, Option<Variant>)>,
    /// Member tags whose path the declared type refuses (reported when learned).
    refused: HashSet<usize>,
    /// BrowseNames of the structure types reachable from the tags, for messages
    /// (async-opcua 0.19's `DataTypeTreeBuilder` leaves `StructTypeInfo::name` empty).
    names: HashMap<NodeId, String>,
    /// Namespaces whose types were learned.
    pub namespaces: BTreeSet<u16>,
}

/// A decoded structure value, as a tree the field paths walk.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A value of a built-in type, with the field's data type (for enumeration names).
    Leaf(Variant, NodeId),
    /// A structure: its type and one node per field, in definition order.
    Struct(Arc<StructTypeInfo>, Vec<Node>),
    Array(Vec<Node>),
    /// An optional field not sent, or a union's field that is not the one set.
    Absent,
}

/// Why a structure value, or one field of it, was not read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum StructError {
    #[error("the value is not a structure but {0}")]
    NotAStructure(&'static str),
    #[error("the structure is empty (a null ExtensionObject)")]
    Null,
    #[error("the server sent a structure of type {0}, which it does not describe (no DataTypeDefinition in the namespaces learned); its types are learned again")]
    UnknownType(String),
    #[error("the types of this server are not learned (yet)")]
    NotLearned,
    #[error("structure type {0} uses subtyped values, which cannot be decoded")]
    Subtyped(String),
    #[error("the structure does not match its definition: {0}")]
    Undecodable(String),
    #[error("the structure has no field `{name}` (it has: {fields}){hint}")]
    NoField {
        name: String,
        fields: String,
        hint: String,
    },
    #[error("`{path}` is a structure: name one of its fields ({fields})")]
    IsStructure { path: String, fields: String },
    #[error("`{path}` is an array of {len} elements: name one, e.g. `{path}[0]`")]
    IsArray { path: String, len: usize },
    #[error("`{path}` is an array: name one of its elements, e.g. `{path}[0]`")]
    IsArrayField { path: String },
    #[error("`{path}` has {len} elements, so [{index}] is not there")]
    OutOfRange {
        path: String,
        len: usize,
        index: u32,
    },
    #[error("`{path}` is not an array, so it has no [{index}]")]
    NotAnArray { path: String, index: u32 },
    #[error("{0}")]
    Value(#[from] convert::Unsupported),
}

impl Structures {
    /// None when the tag map has no structure tags.
    pub(crate) fn new(plan: &Arc<TagMapPlan>, source: &Arc<OpcUaPlan>) -> Option<Arc<Self>> {
        if source.structures.is_empty() {
            return None;
        }
        Some(Arc::new(Structures {
            plan: Arc::clone(plan),
            source: Arc::clone(source),
            types: RwLock::new(None),
            warned: Mutex::new(HashSet::new()),
            group_warned: Mutex::new(HashSet::new()),
            stale: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// A value named a type that was not learned.
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn groups(&self) -> &[StructureGroup] {
        &self.source.structures.groups
    }

    /// Every tag whose samples come from `tag`'s monitored item: its group's members when it
    /// leads one, else `tag` itself.
    pub(crate) fn tags_of(&self, tag: usize) -> Vec<usize> {
        match self.lead_group(tag) {
            Some(g) => g.members.iter().map(|m| m.tag).collect(),
            None => vec![tag],
        }
    }

    fn lead_group(&self, tag: usize) -> Option<&StructureGroup> {
        self.source
            .structures
            .group_of(tag)
            .filter(|g| g.lead == tag)
    }

    /// Learns the types for this session (`nodes`: each tag's resolved node id). Problems are
    /// logged; the tags wait for the next attempt.
    pub(crate) async fn learn(&self, session: &Session, nodes: &[Option<NodeId>]) {
        self.stale
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let started = std::time::Instant::now();
        match learn(session, self.groups(), nodes, &self.plan).await {
            Ok(types) => {
                tracing::info!(
                    message = "OPC UA structure types learned.",
                    tag_map = %self.plan.path.display(),
                    namespaces = ?types.namespaces,
                    seconds = started.elapsed().as_secs_f64()
                );
                *self.types.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(types));
                self.group_warned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            Err(error) => tracing::warn!(
                message = "Cannot learn the OPC UA server's structure types; structure tags are not read until the next attempt.",
                tag_map = %self.plan.path.display(),
                %error
            ),
        }
    }

    /// After a reconnect: learns the types again when the server's changed (or were never
    /// learned), else keeps them.
    pub(crate) async fn relearn_if_changed(&self, session: &Session, nodes: &[Option<NodeId>]) {
        let current = self.types.read().unwrap_or_else(|p| p.into_inner()).clone();
        let changed = match current {
            None => true,
            Some(types) => {
                let read: Vec<ReadValueId> =
                    types.fingerprint.iter().map(|(r, _)| r.clone()).collect();
                match session.read(&read, TimestampsToReturn::Neither, 0.0).await {
                    Ok(values) => {
                        values.len() != read.len()
                            || values
                                .into_iter()
                                .zip(&types.fingerprint)
                                .any(|(v, (_, old))| v.value != *old)
                    }
                    // Not reachable now: the next reconnect asks again.
                    Err(_) => false,
                }
            }
        };
        if changed || self.stale.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(
                message = "The OPC UA server's structure types changed; learning them again.",
                tag_map = %self.plan.path.display()
            );
            self.learn(session, nodes).await;
        }
    }

    /// Samples for the members of the group `tag` leads, from its value (element `element` of
    /// an array with `elements:`), each after an Uncertain mark when the value's status is
    /// `uncertain`; `None` when `tag` leads no group. `Some(n)`: `n` members had
    /// no sample because of a problem (logged once per episode).
    pub(crate) fn deliver(
        &self,
        tag: usize,
        element: Option<u32>,
        value: &Variant,
        timestamp: DateTime<Utc>,
        uncertain: Option<StatusCode>,
        batch: &mut SampleBatch,
    ) -> Option<u64> {
        let group = self.lead_group(tag)?;
        let types = self.types.read().unwrap_or_else(|p| p.into_inner()).clone();
        let decoded = match &types {
            Some(t) => t.decode_value(value, element),
            None => Err(StructError::NotLearned),
        };
        let node = match decoded {
            Ok(node) => {
                self.group_warned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&tag);
                node
            }
            Err(error) => {
                if matches!(error, StructError::UnknownType(_)) {
                    self.stale.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if self
                    .group_warned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(tag)
                {
                    tracing::warn!(
                        message = "OPC UA structure cannot be read; its fields are skipped.",
                        structure = %group.name,
                        %error
                    );
                }
                return Some(group.members.len() as u64);
            }
        };
        let Some(types) = types else {
            return Some(group.members.len() as u64);
        };
        let mut failed = 0;
        for member in &group.members {
            if types.refused.contains(&member.tag) {
                failed += 1;
                continue;
            }
            match types.member_value(&node, member) {
                Ok(Some(raw)) => {
                    self.clear_warning(member.tag);
                    if let Some(status) = uncertain {
                        batch.event(SourceEvent::Uncertain {
                            tag: member.tag,
                            timestamp,
                            cause: Cause::OpcUaStatus(convert::status_name(status)),
                        });
                    }
                    batch.push(Sample {
                        tag: member.tag,
                        timestamp,
                        value: raw,
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    failed += 1;
                    self.warn_member(member, &error);
                }
            }
        }
        Some(failed)
    }

    fn clear_warning(&self, tag: usize) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if !warned.is_empty() {
            warned.remove(&tag);
        }
    }

    fn warn_member(&self, member: &MemberPlan, error: &StructError) {
        if self
            .warned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(member.tag)
        {
            let sensor_id = self
                .plan
                .tags
                .get(member.tag)
                .map(|t| t.sensor_id.clone())
                .unwrap_or_default();
            tracing::warn!(
                message = "OPC UA structure field cannot be read; skipping it.",
                %sensor_id,
                at = %format!("{}:{}", self.plan.path.display(), member.pos.line),
                %error
            );
        }
    }
}

/// Reads what is needed and builds [`Types`].
///
/// Long on purpose: five numbered reads from the server in the order they depend on each
/// other (data types, type tree, enumerations, definitions, names), sharing the chunked
/// request pattern and the namespaces found along the way.
async fn learn(
    session: &Session,
    groups: &[StructureGroup],
    nodes: &[Option<NodeId>],
    plan: &TagMapPlan,
) -> Result<Types, String> {
    // 1. The DataType of each structure node.
    let mut leads: Vec<(usize, NodeId)> = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        if let Some(Some(node)) = nodes.get(group.lead) {
            leads.push((g, node.clone()));
        }
    }
    let mut fingerprint_ids: Vec<ReadValueId> = leads
        .iter()
        .map(|(_, node)| ReadValueId::new(node.clone(), AttributeId::DataType))
        .collect();
    let mut declared: HashMap<usize, NodeId> = HashMap::new();
    let mut namespaces: BTreeSet<u16> = leads.iter().map(|(_, n)| n.namespace).collect();
    let mut fingerprint: Vec<(ReadValueId, Option<Variant>)> = Vec::new();
    for (chunk_ids, chunk_leads) in fingerprint_ids.chunks(1000).zip(leads.chunks(1000)) {
        let values = session
            .read(chunk_ids, TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| format!("reading the data types of structure nodes: {e}"))?;
        for ((id, (g, _)), v) in chunk_ids.iter().zip(chunk_leads).zip(values) {
            if let Some(Variant::NodeId(t)) = &v.value {
                namespaces.insert(t.namespace);
                declared.insert(*g, (**t).clone());
            }
            fingerprint.push((id.clone(), v.value));
        }
    }
    // 2. The type tree, widened to the namespaces field types live in.
    let roots: Vec<NodeId> = declared.values().cloned().collect();
    let tree = build_tree(session, &mut namespaces, &roots).await?;
    // 3. Enumeration names of every enumeration a reachable structure uses.
    let reachable = reachable_types(&tree, declared.values());
    let enums = enum_table(&tree, &reachable);
    // 4. The definitions, so a reconnect can tell whether they changed.
    let defs: Vec<ReadValueId> = reachable
        .iter()
        .filter(|id| tree.get_struct_type(id).is_some())
        .map(|id| ReadValueId::new(id.clone(), AttributeId::DataTypeDefinition))
        .collect();
    for chunk in defs.chunks(1000) {
        let values = session
            .read(chunk, TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| format!("reading data type definitions: {e}"))?;
        for (id, v) in chunk.iter().zip(values) {
            fingerprint.push((id.clone(), v.value));
        }
    }
    // 5. Their names, for messages (a server that refuses gives node ids in messages).
    let mut names = HashMap::new();
    let name_ids: Vec<ReadValueId> = defs
        .iter()
        .map(|r| ReadValueId::new(r.node_id.clone(), AttributeId::BrowseName))
        .collect();
    for chunk in name_ids.chunks(1000) {
        let Ok(values) = session.read(chunk, TimestampsToReturn::Neither, 0.0).await else {
            break;
        };
        for (id, v) in chunk.iter().zip(values) {
            if let Some(Variant::QualifiedName(q)) = v.value {
                names.insert(id.node_id.clone(), q.name.to_string());
            }
        }
    }
    fingerprint_ids.clear();
    let mut types = Types {
        tree,
        context: ContextOwned::new_default(Default::default(), DecodingOptions::default()),
        enums,
        fingerprint,
        refused: HashSet::new(),
        names,
        namespaces,
    };
    // 6. Field paths checked against the declared types, reported with file:line.
    for (g, group) in groups.iter().enumerate() {
        let Some(ty) = declared.get(&g).and_then(|t| types.tree.get_struct_type(t)) else {
            continue;
        };
        if ty.is_abstract {
            continue;
        }
        let ty = Arc::clone(ty);
        for member in &group.members {
            if let Err(error) = types.check_path(&ty, &member.path) {
                types.refused.insert(member.tag);
                let sensor_id = plan
                    .tags
                    .get(member.tag)
                    .map(|t| t.sensor_id.clone())
                    .unwrap_or_default();
                tracing::warn!(
                    message = "A structure field in the tag map does not exist on the server; it is not read.",
                    at = %format!("{}:{}", plan.path.display(), member.pos.line),
                    %sensor_id,
                    structure_type = %types.type_name(&ty),
                    %error
                );
            }
        }
    }
    Ok(types)
}

/// The type tree of `namespaces`, widened to the namespaces of the field types the structures
/// reachable from `roots` use (a few rounds at most).
async fn build_tree(
    session: &Session,
    namespaces: &mut BTreeSet<u16>,
    roots: &[NodeId],
) -> Result<DataTypeTree, String> {
    let mut rounds = 0;
    loop {
        rounds += 1;
        let wanted = namespaces.clone();
        let tree = DataTypeTreeBuilder::new(move |id: &NodeId| wanted.contains(&id.namespace))
            .build(session)
            .await
            .map_err(|e| format!("reading the server's data types: {e}"))?;
        let missing: BTreeSet<u16> = missing_types(&tree, roots.iter())
            .into_iter()
            .map(|id| id.namespace)
            .filter(|ns| !namespaces.contains(ns))
            .collect();
        if missing.is_empty() || rounds >= MAX_ROUNDS {
            return Ok(tree);
        }
        namespaces.extend(missing);
    }
}

/// A structure variable's fields for `tagbridge browse`: (path, type) per leaf.
pub type BrowsedFields = Vec<(String, String)>;

/// Most elements of one array field that `browse` lists.
const BROWSE_ELEMENTS: usize = 64;

/// The leaf fields of structure variables (`(data type, current value, array)` each), for
/// `tagbridge browse`: from the current value when it decodes (array lengths as they are now),
/// else from the type alone (arrays as `[0]`). `None` where the type is not described.
pub async fn browse_fields(
    session: &Session,
    vars: &[(NodeId, Option<Variant>, bool)],
) -> Result<Vec<Option<BrowsedFields>>, String> {
    let roots: Vec<NodeId> = vars.iter().map(|(t, _, _)| t.clone()).collect();
    let mut namespaces: BTreeSet<u16> = roots.iter().map(|t| t.namespace).collect();
    let tree = build_tree(session, &mut namespaces, &roots).await?;
    let reachable = reachable_types(&tree, roots.iter());
    let types = Types {
        enums: enum_table(&tree, &reachable),
        tree,
        context: ContextOwned::new_default(Default::default(), DecodingOptions::default()),
        fingerprint: Vec::new(),
        refused: HashSet::new(),
        names: HashMap::new(),
        namespaces,
    };
    Ok(vars
        .iter()
        .map(|(data_type, value, array)| {
            let mut out = Vec::new();
            let element = array.then_some(0);
            if let Some(node) = value
                .as_ref()
                .and_then(|v| types.decode_value(v, element).ok())
            {
                types.node_leaves(&node, &mut String::new(), &mut out);
                return Some(out);
            }
            let ty = types.tree.get_struct_type(data_type)?;
            types.type_leaves(ty, &mut String::new(), &mut out, 0);
            Some(out)
        })
        .collect())
}

/// Field types that structures reachable from `roots` use but `tree` does not describe.
fn missing_types<'a>(tree: &DataTypeTree, roots: impl Iterator<Item = &'a NodeId>) -> Vec<NodeId> {
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    let mut queue: Vec<NodeId> = roots.cloned().collect();
    while let Some(id) = queue.pop() {
        if !seen.insert(id.clone()) || is_builtin(&id) {
            continue;
        }
        match tree.get_type(&id) {
            Some(TypeInfoRef::Struct(s)) => {
                queue.extend(s.fields.iter().map(|f| f.type_id.clone()));
            }
            Some(_) => {}
            None => {
                if matches!(
                    tree.parent_ids().get_data_type_variant(&id),
                    Some(DataTypeVariant::Structure | DataTypeVariant::Enumeration)
                ) {
                    missing.push(id);
                }
            }
        }
    }
    missing
}

/// Value → name of every enumeration among `ids` (its EnumDefinition's Name, or DisplayName
/// when the name is empty).
fn enum_table(tree: &DataTypeTree, ids: &[NodeId]) -> HashMap<NodeId, EnumNames> {
    let mut enums = HashMap::new();
    for id in ids {
        if let Some(TypeInfoRef::Enum(e)) = tree.get_type(id) {
            let names: HashMap<i64, Arc<str>> = e
                .variants
                .values()
                .map(|f| {
                    let name: Arc<str> = if f.name.is_empty() {
                        f.display_name.text.as_ref().into()
                    } else {
                        f.name.as_ref().into()
                    };
                    (f.value, name)
                })
                .collect();
            enums.insert(id.clone(), Arc::new(names));
        }
    }
    enums
}

/// Every type reachable from `roots` through structure fields.
fn reachable_types<'a>(
    tree: &DataTypeTree,
    roots: impl Iterator<Item = &'a NodeId>,
) -> Vec<NodeId> {
    let mut seen: HashSet<NodeId> = HashSet::new();
    let mut out = Vec::new();
    let mut queue: Vec<NodeId> = roots.cloned().collect();
    while let Some(id) = queue.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(TypeInfoRef::Struct(s)) = tree.get_type(&id) {
            queue.extend(s.fields.iter().map(|f| f.type_id.clone()));
        }
        out.push(id);
    }
    out
}

/// Built-in and abstract base types of namespace 0 that are never learned.
fn is_builtin(id: &NodeId) -> bool {
    id.namespace == 0
        && id.as_u32().is_some_and(|n| {
            n <= DataTypeId::DiagnosticInfo as u32 || n == DataTypeId::BaseDataType as u32
        })
}

impl Types {
    /// A structure type's name for messages: its BrowseName when learned, else its node id
    /// (`StructTypeInfo::name` stays empty with async-opcua 0.19).
    fn type_name(&self, ty: &StructTypeInfo) -> String {
        match self.names.get(&ty.node_id) {
            Some(name) => name.clone(),
            None if ty.name.is_empty() => ty.node_id.to_string(),
            None => ty.name.clone(),
        }
    }

    /// Decodes a structure tag's value (element `element` of an array value).
    pub(crate) fn decode_value(
        &self,
        value: &Variant,
        element: Option<u32>,
    ) -> Result<Node, StructError> {
        let value = match (value, element) {
            (Variant::Array(a), Some(i)) if a.values.len() != 1 => {
                a.values
                    .get(i as usize)
                    .ok_or(StructError::Value(convert::Unsupported::Other {
                        kind: "array without the configured element",
                    }))?
            }
            (Variant::Array(a), Some(_)) => &a.values[0],
            (Variant::Array(a), None) => {
                return Err(StructError::Value(convert::Unsupported::Array {
                    len: a.values.len(),
                }))
            }
            (Variant::Variant(inner), _) => return self.decode_value(inner, element),
            (v, _) => v,
        };
        let Variant::ExtensionObject(o) = value else {
            return Err(StructError::NotAStructure(variant_kind(value)));
        };
        self.decode_object(o)
    }

    /// Decodes one ExtensionObject by the type its encoding id names.
    fn decode_object(&self, o: &ExtensionObject) -> Result<Node, StructError> {
        if o.is_null() {
            return Err(StructError::Null);
        }
        let (bytes, encoding) = if let Some(raw) = o.inner_as::<ByteStringBody>() {
            (
                raw.raw_body().value.clone().unwrap_or_default(),
                raw.encoding_id().clone(),
            )
        } else {
            // A type the session decoded itself (namespace 0): encode it back to bytes.
            let mut bytes = Vec::new();
            if let Some(body) = &o.body {
                body.encode_binary(&mut bytes, &self.context.context())
                    .map_err(|e| StructError::Undecodable(e.to_string()))?;
            }
            (bytes, o.binary_type_id().node_id)
        };
        let ty = self.struct_of_encoding(&encoding)?;
        let mut cursor = Cursor::new(bytes.as_slice());
        let mut budget = MAX_ELEMENTS;
        let node = self.decode_struct(&ty, &mut cursor, 0, &mut budget)?;
        let left = bytes.len() as u64 - cursor.position();
        if left > 0 {
            return Err(StructError::Undecodable(format!(
                "{left} bytes are left after the last field of {}",
                self.type_name(&ty)
            )));
        }
        Ok(node)
    }

    fn struct_of_encoding(&self, encoding: &NodeId) -> Result<Arc<StructTypeInfo>, StructError> {
        let data_type = self
            .tree
            .encoding_to_data_type()
            .get(encoding)
            .unwrap_or(encoding);
        let ty = self
            .tree
            .get_struct_type(data_type)
            .ok_or_else(|| StructError::UnknownType(encoding.to_string()))?;
        if !ty.is_supported() {
            return Err(StructError::Subtyped(self.type_name(ty)));
        }
        Ok(Arc::clone(ty))
    }

    fn decode_struct(
        &self,
        ty: &Arc<StructTypeInfo>,
        r: &mut Cursor<&[u8]>,
        depth: usize,
        budget: &mut usize,
    ) -> Result<Node, StructError> {
        if depth > MAX_DEPTH {
            return Err(StructError::Undecodable(format!(
                "structures nested deeper than {MAX_DEPTH}"
            )));
        }
        let fields = &ty.fields;
        let mut out = Vec::with_capacity(fields.len());
        match ty.structure_type {
            StructureType::Structure => {
                for f in fields {
                    out.push(self.decode_field(f, r, depth, budget)?);
                }
            }
            StructureType::StructureWithOptionalFields => {
                let mask: u32 = self.read(r)?;
                let mut bit = 0u32;
                for f in fields {
                    if f.is_optional {
                        let present = bit < 32 && mask & (1 << bit) != 0;
                        bit += 1;
                        if !present {
                            out.push(Node::Absent);
                            continue;
                        }
                    }
                    out.push(self.decode_field(f, r, depth, budget)?);
                }
            }
            StructureType::Union => {
                let switch: u32 = self.read(r)?;
                if switch as usize > fields.len() {
                    return Err(StructError::Undecodable(format!(
                        "union {} has {} fields, and field {switch} is set",
                        self.type_name(ty),
                        fields.len()
                    )));
                }
                for (i, f) in fields.iter().enumerate() {
                    if i + 1 == switch as usize {
                        out.push(self.decode_field(f, r, depth, budget)?);
                    } else {
                        out.push(Node::Absent);
                    }
                }
            }
            StructureType::StructureWithSubtypedValues | StructureType::UnionWithSubtypedValues => {
                return Err(StructError::Subtyped(self.type_name(ty)))
            }
        }
        Ok(Node::Struct(Arc::clone(ty), out))
    }

    fn decode_field(
        &self,
        f: &ParsedStructureField,
        r: &mut Cursor<&[u8]>,
        depth: usize,
        budget: &mut usize,
    ) -> Result<Node, StructError> {
        if f.value_rank <= 0 {
            return self.decode_one(f, r, depth, budget);
        }
        let len = if f.value_rank == 1 {
            let n: i32 = self.read(r)?;
            // -1: a null array, read as empty.
            n.max(0) as usize
        } else {
            let dims: Option<Vec<i32>> = self.read(r)?;
            let dims = dims.unwrap_or_default();
            if dims.len() != f.value_rank as usize {
                return Err(StructError::Undecodable(format!(
                    "field {} has {} dimensions, its definition {}",
                    f.name,
                    dims.len(),
                    f.value_rank
                )));
            }
            dims.iter().try_fold(1usize, |acc, d| {
                usize::try_from(*d)
                    .ok()
                    .and_then(|d| acc.checked_mul(d))
                    .ok_or_else(|| {
                        StructError::Undecodable(format!("field {} has bad dimensions", f.name))
                    })
            })?
        };
        if len > *budget {
            return Err(StructError::Undecodable(format!(
                "field {} holds {len} elements, more than {MAX_ELEMENTS} in one structure",
                f.name
            )));
        }
        *budget -= len;
        let mut items = Vec::with_capacity(len.min(1024));
        for _ in 0..len {
            items.push(self.decode_one(f, r, depth, budget)?);
        }
        Ok(Node::Array(items))
    }

    /// One value of field `f` (a scalar, or one element of an array field).
    fn decode_one(
        &self,
        f: &ParsedStructureField,
        r: &mut Cursor<&[u8]>,
        depth: usize,
        budget: &mut usize,
    ) -> Result<Node, StructError> {
        use VariantScalarTypeId as T;
        let leaf = |v: Variant| Ok(Node::Leaf(v, f.type_id.clone()));
        match f.scalar_type {
            T::Boolean => leaf(Variant::from(self.read::<bool>(r)?)),
            T::SByte => leaf(Variant::from(self.read::<i8>(r)?)),
            T::Byte => leaf(Variant::from(self.read::<u8>(r)?)),
            T::Int16 => leaf(Variant::from(self.read::<i16>(r)?)),
            T::UInt16 => leaf(Variant::from(self.read::<u16>(r)?)),
            T::Int32 => leaf(Variant::from(self.read::<i32>(r)?)),
            T::UInt32 => leaf(Variant::from(self.read::<u32>(r)?)),
            T::Int64 => leaf(Variant::from(self.read::<i64>(r)?)),
            T::UInt64 => leaf(Variant::from(self.read::<u64>(r)?)),
            T::Float => leaf(Variant::from(self.read::<f32>(r)?)),
            T::Double => leaf(Variant::from(self.read::<f64>(r)?)),
            T::String => leaf(Variant::from(self.read::<UAString>(r)?)),
            T::DateTime => leaf(Variant::from(self.read::<UaDateTime>(r)?)),
            T::Guid => leaf(Variant::from(self.read::<Guid>(r)?)),
            T::ByteString => leaf(Variant::from(self.read::<ByteString>(r)?)),
            T::XmlElement => leaf(Variant::from(self.read::<XmlElement>(r)?)),
            T::NodeId => leaf(Variant::from(self.read::<NodeId>(r)?)),
            T::ExpandedNodeId => leaf(Variant::from(self.read::<ExpandedNodeId>(r)?)),
            T::StatusCode => leaf(Variant::from(self.read::<StatusCode>(r)?)),
            T::QualifiedName => leaf(Variant::from(self.read::<QualifiedName>(r)?)),
            T::LocalizedText => leaf(Variant::from(self.read::<LocalizedText>(r)?)),
            T::DataValue => leaf(Variant::from(self.read::<DataValue>(r)?)),
            T::DiagnosticInfo => leaf(Variant::from(self.read::<DiagnosticInfo>(r)?)),
            T::Variant => {
                let v: Variant = self.read(r)?;
                match v {
                    Variant::ExtensionObject(o) => self.decode_object(&o),
                    other => leaf(other),
                }
            }
            T::ExtensionObject => match self.tree.get_struct_type(&f.type_id) {
                // A concrete structure: its body follows directly (Part 6, 5.2.6).
                Some(ty) if !ty.is_abstract => {
                    if !ty.is_supported() {
                        return Err(StructError::Subtyped(self.type_name(ty)));
                    }
                    let ty = Arc::clone(ty);
                    self.decode_struct(&ty, r, depth + 1, budget)
                }
                // An abstract type (e.g. Structure): a whole ExtensionObject naming its type.
                _ => {
                    let o: ExtensionObject = self.read(r)?;
                    if o.is_null() {
                        return Ok(Node::Absent);
                    }
                    self.decode_object(&o)
                }
            },
        }
    }

    /// The type written next to a leaf in `browse` output.
    fn leaf_kind(&self, type_id: &NodeId, value: Option<&Variant>) -> String {
        if self.enums.contains_key(type_id) {
            return "enumeration: names are sent".into();
        }
        if let Some(TypeInfoRef::Struct(s)) = self.tree.get_type(type_id) {
            return self.type_name(s);
        }
        match value.and_then(Variant::scalar_type_id) {
            Some(t) => t.to_string(),
            None => match type_id.as_data_type_id() {
                Ok(t) => format!("{t:?}"),
                Err(_) => type_id.to_string(),
            },
        }
    }

    fn node_leaves(&self, node: &Node, prefix: &mut String, out: &mut BrowsedFields) {
        match node {
            Node::Leaf(v, type_id) => out.push((prefix.clone(), self.leaf_kind(type_id, Some(v)))),
            Node::Absent => out.push((prefix.clone(), "absent now (optional or union)".into())),
            Node::Array(items) => {
                for (i, item) in items.iter().take(BROWSE_ELEMENTS).enumerate() {
                    let len = prefix.len();
                    prefix.push_str(&format!("[{i}]"));
                    self.node_leaves(item, prefix, out);
                    prefix.truncate(len);
                }
            }
            Node::Struct(ty, fields) => {
                for (f, child) in ty.fields.iter().zip(fields) {
                    let len = prefix.len();
                    if !prefix.is_empty() {
                        prefix.push('.');
                    }
                    prefix.push_str(&f.name);
                    self.node_leaves(child, prefix, out);
                    prefix.truncate(len);
                }
            }
        }
    }

    fn type_leaves(
        &self,
        ty: &StructTypeInfo,
        prefix: &mut String,
        out: &mut BrowsedFields,
        depth: usize,
    ) {
        for f in &ty.fields {
            let len = prefix.len();
            if !prefix.is_empty() {
                prefix.push('.');
            }
            prefix.push_str(&f.name);
            if f.value_rank > 0 {
                prefix.push_str("[0]");
            }
            match self.tree.get_struct_type(&f.type_id) {
                Some(inner) if !inner.is_abstract && depth < MAX_DEPTH => {
                    let inner = Arc::clone(inner);
                    self.type_leaves(&inner, prefix, out, depth + 1);
                }
                _ => out.push((prefix.clone(), self.leaf_kind(&f.type_id, None))),
            }
            prefix.truncate(len);
        }
    }

    fn read<T: BinaryDecodable>(&self, r: &mut Cursor<&[u8]>) -> Result<T, StructError> {
        T::decode(r as &mut dyn Read, &self.context.context())
            .map_err(|e| StructError::Undecodable(e.to_string()))
    }

    /// The sample value of `member` in a decoded structure; `Ok(None)` when the field is
    /// absent (optional, or not the union's field that is set).
    pub(crate) fn member_value(
        &self,
        node: &Node,
        member: &MemberPlan,
    ) -> Result<Option<crate::sample::RawValue>, StructError> {
        let Some((value, type_id)) = walk(node, &member.path)? else {
            return Ok(None);
        };
        let names = if member.own_states {
            None
        } else {
            self.enums.get(type_id)
        };
        Ok(Some(convert::convert(value, names)?))
    }

    /// Checks a path against a type without a value: field names, and a leaf at the end.
    /// Array lengths are only known from values.
    fn check_path(&self, ty: &Arc<StructTypeInfo>, path: &[PathStep]) -> Result<(), StructError> {
        let mut ty = Arc::clone(ty);
        let mut rank = 0;
        let mut leaf = false;
        for (i, step) in path.iter().enumerate() {
            let here = path_text(&path[..i]);
            match step {
                PathStep::Field(name) => {
                    if rank > 0 {
                        return Err(StructError::IsArrayField { path: here });
                    }
                    if leaf {
                        return Err(StructError::NotAStructure("a scalar value"));
                    }
                    let field = ty
                        .get_field_by_name(name)
                        .ok_or_else(|| no_field(&ty, name))?;
                    rank = field.value_rank.max(0);
                    match self.tree.get_struct_type(&field.type_id) {
                        Some(next) if !next.is_abstract => ty = Arc::clone(next),
                        // Abstract structures and Variants: what is inside is known from values.
                        Some(_) => return Ok(()),
                        None if matches!(
                            field.scalar_type,
                            VariantScalarTypeId::ExtensionObject | VariantScalarTypeId::Variant
                        ) =>
                        {
                            return Ok(())
                        }
                        None => leaf = true,
                    }
                }
                PathStep::Index(index) => {
                    if rank == 0 {
                        return Err(StructError::NotAnArray {
                            path: here,
                            index: *index,
                        });
                    }
                    rank = 0;
                }
            }
        }
        let whole = path_text(path);
        if rank > 0 {
            return Err(StructError::IsArrayField { path: whole });
        }
        if !leaf {
            return Err(StructError::IsStructure {
                path: whole,
                fields: field_names(&ty),
            });
        }
        Ok(())
    }
}

fn no_field(ty: &StructTypeInfo, name: &str) -> StructError {
    let hint =
        crate::config::diagnostic::did_you_mean(name, ty.fields.iter().map(|f| f.name.as_str()))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
    StructError::NoField {
        name: name.to_string(),
        fields: field_names(ty),
        hint,
    }
}

fn field_names(ty: &StructTypeInfo) -> String {
    ty.fields
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Follows `path` through a decoded value to a leaf.
fn walk<'a>(
    node: &'a Node,
    path: &[PathStep],
) -> Result<Option<(&'a Variant, &'a NodeId)>, StructError> {
    let mut node = node;
    let mut leaf_array: Option<(&'a Variant, &'a NodeId)> = None;
    for (i, step) in path.iter().enumerate() {
        let here = || path_text(&path[..i]);
        match (node, step) {
            (Node::Absent, _) => return Ok(None),
            (Node::Struct(ty, fields), PathStep::Field(name)) => {
                let index = ty
                    .index_by_name
                    .get(name)
                    .copied()
                    .ok_or_else(|| no_field(ty, name))?;
                node = fields.get(index).ok_or_else(|| no_field(ty, name))?;
            }
            (Node::Array(items), PathStep::Index(index)) => {
                node = items
                    .get(*index as usize)
                    .ok_or_else(|| StructError::OutOfRange {
                        path: here(),
                        len: items.len(),
                        index: *index,
                    })?;
            }
            // A Variant field holding an array.
            (Node::Leaf(Variant::Array(a), type_id), PathStep::Index(index)) => {
                let v = a
                    .values
                    .get(*index as usize)
                    .ok_or_else(|| StructError::OutOfRange {
                        path: here(),
                        len: a.values.len(),
                        index: *index,
                    })?;
                leaf_array = Some((v, type_id));
                if i + 1 != path.len() {
                    return Err(StructError::NotAStructure(variant_kind(v)));
                }
            }
            (Node::Array(items), PathStep::Field(_)) => {
                return Err(StructError::IsArray {
                    path: here(),
                    len: items.len(),
                })
            }
            (_, PathStep::Index(index)) => {
                return Err(StructError::NotAnArray {
                    path: here(),
                    index: *index,
                })
            }
            (Node::Leaf(v, _), PathStep::Field(_)) => {
                return Err(StructError::NotAStructure(variant_kind(v)))
            }
        }
    }
    if let Some(found) = leaf_array {
        return Ok(Some(found));
    }
    match node {
        Node::Leaf(v, type_id) => Ok(Some((v, type_id))),
        Node::Absent => Ok(None),
        Node::Struct(ty, _) => Err(StructError::IsStructure {
            path: path_text(path),
            fields: field_names(ty),
        }),
        Node::Array(items) => Err(StructError::IsArray {
            path: path_text(path),
            len: items.len(),
        }),
    }
}

fn variant_kind(v: &Variant) -> &'static str {
    match v {
        Variant::Empty => "empty",
        Variant::Array(_) => "an array",
        Variant::ExtensionObject(_) => "a structure",
        Variant::String(_) | Variant::LocalizedText(_) => "text",
        Variant::Boolean(_) => "a boolean",
        _ => "a scalar value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::structure::parse_path;
    use crate::sample::RawValue;
    use opcua::types::custom::{EncodingIds, ParentIds, TypeInfo};
    use opcua::types::{
        DataTypeDefinition, EnumDefinition, EnumField, StructureDefinition, StructureField,
    };
    use proptest::prelude::*;

    fn n(name: &str) -> NodeId {
        NodeId::new(2, name.to_string())
    }

    fn field(name: &str, ty: NodeId, rank: i32, optional: bool) -> StructureField {
        StructureField {
            name: name.into(),
            description: LocalizedText::null(),
            data_type: ty,
            value_rank: rank,
            array_dimensions: None,
            max_string_length: 0,
            is_optional: optional,
        }
    }

    fn add_struct(
        tree: &mut DataTypeTree,
        name: &str,
        kind: StructureType,
        fields: Vec<StructureField>,
    ) {
        let id = n(name);
        tree.parent_ids_mut()
            .add_type(id.clone(), DataTypeId::Structure.into());
        let info = TypeInfo::from_type_definition(
            DataTypeDefinition::Structure(StructureDefinition {
                default_encoding_id: n(&format!("{name}/bin")),
                base_data_type: DataTypeId::Structure.into(),
                structure_type: kind,
                fields: Some(fields),
            }),
            name.to_string(),
            Some(EncodingIds {
                binary_id: n(&format!("{name}/bin")),
                json_id: n(&format!("{name}/json")),
                xml_id: n(&format!("{name}/xml")),
            }),
            false,
            &id,
            tree.parent_ids(),
        )
        .expect("a valid definition");
        tree.add_type(id, info);
    }

    /// Outer { t: Double, mode: Mode, xs: Int16[], inner: Inner { a: UInt32, s: String } },
    /// Opt { a: Int32, b?: Int32, c?: Double }, U = union { i: Int32, d: Double },
    /// Loop { next: Loop } (self-nesting).
    fn types() -> Types {
        let mut tree = DataTypeTree::new(ParentIds::new());
        tree.parent_ids_mut()
            .add_type(n("Mode"), DataTypeId::Enumeration.into());
        tree.add_type(
            n("Mode"),
            TypeInfo::from_type_definition(
                DataTypeDefinition::Enum(EnumDefinition {
                    fields: Some(vec![EnumField {
                        value: 3,
                        display_name: LocalizedText::new("", "Three"),
                        description: LocalizedText::null(),
                        name: "".into(),
                    }]),
                }),
                "Mode".into(),
                None,
                false,
                &n("Mode"),
                tree.parent_ids(),
            )
            .expect("an enum"),
        );
        add_struct(
            &mut tree,
            "Inner",
            StructureType::Structure,
            vec![
                field("a", DataTypeId::UInt32.into(), -1, false),
                field("s", DataTypeId::String.into(), -1, false),
            ],
        );
        add_struct(
            &mut tree,
            "Outer",
            StructureType::Structure,
            vec![
                field("t", DataTypeId::Double.into(), -1, false),
                field("mode", n("Mode"), -1, false),
                field("xs", DataTypeId::Int16.into(), 1, false),
                field("inner", n("Inner"), -1, false),
            ],
        );
        add_struct(
            &mut tree,
            "Opt",
            StructureType::StructureWithOptionalFields,
            vec![
                field("a", DataTypeId::Int32.into(), -1, false),
                field("b", DataTypeId::Int32.into(), -1, true),
                field("c", DataTypeId::Double.into(), -1, true),
            ],
        );
        add_struct(
            &mut tree,
            "U",
            StructureType::Union,
            vec![
                field("i", DataTypeId::Int32.into(), -1, false),
                field("d", DataTypeId::Double.into(), -1, false),
            ],
        );
        add_struct(
            &mut tree,
            "Loop",
            StructureType::Structure,
            vec![field("next", n("Loop"), -1, false)],
        );
        let enums = enum_table(&tree, &[n("Mode")]);
        Types {
            tree,
            context: ContextOwned::new_default(Default::default(), DecodingOptions::default()),
            enums,
            fingerprint: Vec::new(),
            refused: HashSet::new(),
            names: HashMap::new(),
            namespaces: BTreeSet::from([2]),
        }
    }

    fn object(type_name: &str, body: Vec<u8>) -> Variant {
        Variant::from(ExtensionObject::new(ByteStringBody::new(
            ByteString::from(body),
            n(&format!("{type_name}/bin")),
        )))
    }

    fn outer_body(xs: &[i16], s: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&2.5f64.to_le_bytes());
        b.extend_from_slice(&3i32.to_le_bytes());
        b.extend_from_slice(&(xs.len() as i32).to_le_bytes());
        for x in xs {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&(s.len() as i32).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
        b
    }

    fn member(path: &str, own_states: bool) -> MemberPlan {
        MemberPlan {
            tag: 0,
            path: parse_path(path).expect("a path").into(),
            pos: crate::config::Pos { line: 1, col: 1 },
            own_states,
        }
    }

    fn get(types: &Types, value: &Variant, path: &str) -> Result<Option<RawValue>, StructError> {
        let node = types.decode_value(value, None)?;
        types.member_value(&node, &member(path, false))
    }

    #[test]
    fn nested_fields_arrays_and_enumerations() {
        let t = types();
        let v = object("Outer", outer_body(&[-1, 4], "hi"));
        assert_eq!(get(&t, &v, "t"), Ok(Some(RawValue::Float(2.5))));
        assert_eq!(
            get(&t, &v, "mode"),
            Ok(Some(RawValue::Text("Three".into())))
        );
        let node = t.decode_value(&v, None).unwrap();
        assert_eq!(
            t.member_value(&node, &member("mode", true)),
            Ok(Some(RawValue::Int(3))),
            "with its own states an enumeration stays a number"
        );
        assert_eq!(get(&t, &v, "xs[1]"), Ok(Some(RawValue::Int(4))));
        assert_eq!(get(&t, &v, "inner.a"), Ok(Some(RawValue::UInt(7))));
        assert_eq!(
            get(&t, &v, "inner.s"),
            Ok(Some(RawValue::Text("hi".into())))
        );
        assert!(matches!(
            get(&t, &v, "xs[2]"),
            Err(StructError::OutOfRange { len: 2, .. })
        ));
        assert!(matches!(
            get(&t, &v, "xs"),
            Err(StructError::IsArray { len: 2, .. })
        ));
        assert!(matches!(
            get(&t, &v, "inner"),
            Err(StructError::IsStructure { .. })
        ));
        let Err(StructError::NoField { hint, .. }) = get(&t, &v, "innr.a") else {
            panic!("an unknown field")
        };
        assert!(hint.contains("inner"), "{hint}");
        assert!(matches!(
            get(&t, &v, "t[0]"),
            Err(StructError::NotAnArray { .. })
        ));
    }

    #[test]
    fn optional_fields_and_unions() {
        let t = types();
        let mut b = 2u32.to_le_bytes().to_vec(); // only `c` present
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&0.5f64.to_le_bytes());
        let v = object("Opt", b);
        assert_eq!(get(&t, &v, "a"), Ok(Some(RawValue::Int(1))));
        assert_eq!(get(&t, &v, "b"), Ok(None), "absent: no sample, no error");
        assert_eq!(get(&t, &v, "c"), Ok(Some(RawValue::Float(0.5))));

        let mut b = 2u32.to_le_bytes().to_vec(); // the union holds `d`
        b.extend_from_slice(&9.0f64.to_le_bytes());
        let v = object("U", b);
        assert_eq!(get(&t, &v, "i"), Ok(None));
        assert_eq!(get(&t, &v, "d"), Ok(Some(RawValue::Float(9.0))));
        let v = object("U", 0u32.to_le_bytes().to_vec());
        assert_eq!(get(&t, &v, "d"), Ok(None), "a null union");
        let v = object("U", 3u32.to_le_bytes().to_vec());
        assert!(matches!(get(&t, &v, "d"), Err(StructError::Undecodable(_))));
    }

    #[test]
    fn bodies_that_do_not_match_are_refused() {
        let t = types();
        let mut long = outer_body(&[1], "x");
        long.push(0);
        assert!(matches!(
            get(&t, &object("Outer", long), "t"),
            Err(StructError::Undecodable(m)) if m.contains("1 bytes are left")
        ));
        let short = outer_body(&[1], "x");
        assert!(matches!(
            get(&t, &object("Outer", short[..short.len() - 1].to_vec()), "t"),
            Err(StructError::Undecodable(_))
        ));
        // An array that claims two billion elements is refused before it is allocated.
        let mut huge = 2.5f64.to_le_bytes().to_vec();
        huge.extend_from_slice(&3i32.to_le_bytes());
        huge.extend_from_slice(&i32::MAX.to_le_bytes());
        assert!(matches!(
            get(&t, &object("Outer", huge), "t"),
            Err(StructError::Undecodable(_))
        ));
        // A structure nested in itself ends at the depth limit, not in a stack overflow.
        assert!(matches!(
            get(&t, &object("Loop", vec![0; 4096]), "next"),
            Err(StructError::Undecodable(m)) if m.contains("deeper")
        ));
        assert!(matches!(
            get(&t, &object("Nobody", vec![1, 2]), "a"),
            Err(StructError::UnknownType(_))
        ));
        assert!(matches!(
            get(&t, &Variant::Double(1.0), "a"),
            Err(StructError::NotAStructure(_))
        ));
    }

    #[test]
    fn paths_are_checked_against_the_declared_type() {
        let t = types();
        let outer = Arc::clone(t.tree.get_struct_type(&n("Outer")).unwrap());
        let check = |p: &str| t.check_path(&outer, &parse_path(p).unwrap());
        assert_eq!(check("t"), Ok(()));
        assert_eq!(check("xs[9]"), Ok(()), "lengths are only known from values");
        assert_eq!(check("inner.s"), Ok(()));
        assert!(matches!(check("tt"), Err(StructError::NoField { .. })));
        assert!(matches!(
            check("inner"),
            Err(StructError::IsStructure { .. })
        ));
        assert!(matches!(check("xs"), Err(StructError::IsArrayField { .. })));
        assert!(matches!(check("t[0]"), Err(StructError::NotAnArray { .. })));
        assert!(matches!(
            check("inner.zz"),
            Err(StructError::NoField { .. })
        ));
    }

    proptest! {
        /// Any body, for any type, decodes or is refused: never a panic, never a hang.
        #[test]
        fn hostile_bodies_are_refused_not_fatal(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            ty in prop::sample::select(vec!["Outer", "Opt", "U", "Loop", "Inner"]),
        ) {
            let t = types();
            let v = object(ty, body);
            if let Ok(node) = t.decode_value(&v, None) {
                for p in ["t", "xs[0]", "inner.s", "a", "b", "d", "next"] {
                    let _ = t.member_value(&node, &member(p, false));
                }
            }
        }

        /// A well-formed Outer decodes to exactly the values encoded.
        #[test]
        fn well_formed_bodies_decode_exactly(
            xs in proptest::collection::vec(any::<i16>(), 0..20),
            s in "[a-z]{0,20}",
        ) {
            let t = types();
            let v = object("Outer", outer_body(&xs, &s));
            for (i, x) in xs.iter().enumerate() {
                prop_assert_eq!(get(&t, &v, &format!("xs[{i}]")), Ok(Some(RawValue::Int((*x).into()))));
            }
            prop_assert_eq!(get(&t, &v, "inner.s"), Ok(Some(RawValue::Text(s.as_str().into()))));
        }
    }
}
