//! Sources: one adapter per protocol, each turning a tag map into reads of a real device and
//! emitting [`Sample`]s. An adapter owns its connections; a dead device never stalls another.

pub mod modbus;
pub mod opcua;

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

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mapping::{SourcePlan, TagMapPlan};

/// Samples travel in batches (one poll cycle, one publish response): one channel send per batch.
pub type SampleBatch = Vec<Sample>;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{protocol} sources are not available in this build yet ({path})")]
    NotAvailable {
        protocol: &'static str,
        path: String,
    },
}

/// A running adapter's live counters, for metrics and `/readyz`.
#[derive(Debug, Clone)]
pub enum SourceCounters {
    Modbus(Arc<modbus::ModbusCounters>),
    OpcUa(Arc<opcua::OpcUaCounters>),
}

impl SourceCounters {
    pub fn protocol(&self) -> &'static str {
        match self {
            SourceCounters::Modbus(_) => "modbus",
            SourceCounters::OpcUa(_) => "opcua",
        }
    }

    /// Whether the adapter has a working connection to its device now.
    pub fn connected(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        match self {
            SourceCounters::Modbus(c) => c.connected.load(Relaxed) > 0,
            SourceCounters::OpcUa(c) => c.connected.load(Relaxed),
        }
    }
}

/// Starts the adapter for one tag map. It sends sample batches on `tx` (waiting when the
/// mapping stage is behind) until `cancel` fires, then drops `tx`.
pub fn spawn(
    plan: &TagMapPlan,
    tx: mpsc::Sender<SampleBatch>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SourceCounters, SourceError> {
    match &plan.source {
        SourcePlan::OpcUa(source) => Ok(SourceCounters::OpcUa(opcua::start(
            plan, source, tx, cancel, tracker,
        ))),
        SourcePlan::Modbus(source) => {
            modbus::start(plan, source, modbus::Tuning::default(), tx, cancel, tracker)
                .map(SourceCounters::Modbus)
        }
    }
}
