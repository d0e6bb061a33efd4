//! Sources: one adapter per protocol, each turning a tag map into reads of a real device and
//! emitting [`Sample`](crate::sample::Sample)s. An adapter owns its connections; a dead device never stalls another.

pub mod modbus;
pub mod opcua;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mapping::{SourcePlan, TagMapPlan};
use crate::sample::SampleBatch;

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

    /// Why the adapter is not connected, with the next step, when it says.
    pub fn reason(&self) -> Option<String> {
        match self {
            SourceCounters::Modbus(_) => None,
            SourceCounters::OpcUa(c) => c.reason(),
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
) -> SourceCounters {
    match &plan.source {
        SourcePlan::OpcUa(source) => {
            SourceCounters::OpcUa(opcua::start(plan, source, tx, cancel, tracker))
        }
        SourcePlan::Modbus(source) => SourceCounters::Modbus(modbus::start(
            plan,
            source,
            modbus::Tuning::default(),
            tx,
            cancel,
            tracker,
        )),
    }
}
