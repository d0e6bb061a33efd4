//! The mapping stage: compiles tag maps into plans, then turns each [`crate::sample::Sample`]
//! into a [`crate::reading::Reading`] (rename, states, scale, deadband, heartbeat).

pub mod compile;
pub mod event_plan;
pub mod events;
pub mod fuzz;
pub mod members;
pub mod plan;
pub mod quality;
pub mod stage;
pub mod table;
pub mod transform;

pub use compile::{compile, compile_owned, load_all};
pub use plan::{ModbusPlan, OpcUaPlan, SourcePlan, TagMapPlan, TagPlan};
pub use stage::{Mapper, MappingCounters};
