//! The OPC UA source (being built).

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{SampleBatch, SourceError};
use crate::mapping::{OpcUaPlan, TagMapPlan};

/// Starts polling/subscribing for one tag map; see [`super::spawn`].
pub fn spawn(
    plan: &TagMapPlan,
    _source: &OpcUaPlan,
    _tx: mpsc::Sender<SampleBatch>,
    _cancel: CancellationToken,
    _tracker: &TaskTracker,
) -> Result<(), SourceError> {
    Err(SourceError::NotAvailable {
        protocol: "OPC UA",
        path: plan.path.display().to_string(),
    })
}
