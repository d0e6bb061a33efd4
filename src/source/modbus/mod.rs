//! The Modbus source (being built).

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{SampleBatch, SourceError};
use crate::mapping::{ModbusPlan, TagMapPlan};

/// Starts polling/subscribing for one tag map; see [`super::spawn`].
pub fn spawn(
    plan: &TagMapPlan,
    _source: &ModbusPlan,
    _tx: mpsc::Sender<SampleBatch>,
    _cancel: CancellationToken,
    _tracker: &TaskTracker,
) -> Result<(), SourceError> {
    Err(SourceError::NotAvailable {
        protocol: "Modbus",
        path: plan.path.display().to_string(),
    })
}
