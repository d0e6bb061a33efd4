//! The contract between the sources and the mapping stage: what an adapter emits for one tag.
//! It sits below both, so a source never imports the mapping stage's runtime code and the
//! mapping stage never imports a source.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A value as the device gave it, before the tag map's transforms.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(Arc<str>),
}

/// One value of one tag at one time. `tag` indexes [`crate::mapping::TagMapPlan::tags`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tag: usize,
    pub timestamp: DateTime<Utc>,
    pub value: RawValue,
}

/// Samples travel in batches (one poll cycle, one publish response): one channel send per batch.
pub type SampleBatch = Vec<Sample>;
