//! The plan of OPC UA structure tags (`members:`): which tags are fields of which monitored
//! structure. A structure tag becomes one [`super::TagPlan`] per enabled field (so the mapping
//! stage treats each field as a tag of its own: changes only, deadband, heartbeat), and one
//! [`StructureGroup`] per monitored node (or array element) that says which tag carries the
//! monitored item and which field path each member reads.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::structure::PathStep;
use crate::config::Pos;

/// Every structure group of one OPC UA tag map.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StructurePlan {
    pub groups: Vec<StructureGroup>,
    /// Tag index → (group index, member index) for every tag that is a field of a structure.
    pub by_tag: HashMap<usize, (u32, u32)>,
}

impl StructurePlan {
    /// The group `tag` belongs to, if it is a structure field.
    pub fn group_of(&self, tag: usize) -> Option<&StructureGroup> {
        let (g, _) = self.by_tag.get(&tag)?;
        self.groups.get(*g as usize)
    }

    /// True when `tag` is a structure field that rides on another tag's monitored item.
    pub fn is_follower(&self, tag: usize) -> bool {
        self.group_of(tag).is_some_and(|g| g.lead != tag)
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// The fields read from one monitored structure value.
#[derive(Debug, Clone, PartialEq)]
pub struct StructureGroup {
    /// The tag whose monitored item (client handle `lead + 1`) brings the structure; the
    /// other members get their samples from its notifications.
    pub lead: usize,
    /// The structure tag's own sensor_id (`press-3:recipe`, or `press-3:recipe[2]` for an
    /// element), for messages.
    pub name: Arc<str>,
    /// Where the tag's `members:` key is, for messages about the structure as a whole.
    pub pos: Pos,
    pub members: Vec<MemberPlan>,
}

/// One field of a structure, read as its own tag.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberPlan {
    /// Its index in [`super::TagMapPlan::tags`].
    pub tag: usize,
    pub path: Arc<[PathStep]>,
    /// Where its path is written, for "no such field" at run time.
    pub pos: Pos,
    /// The tag map asked for state names of its own (`states:`), so an enumeration field
    /// stays a number.
    pub own_states: bool,
}
