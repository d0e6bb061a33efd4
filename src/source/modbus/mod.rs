//! The Modbus source: polls one device or gateway per tag map and emits every value it reads.
//!
//! Parts, from plain to I/O:
//! - [`planner`]: tags of one poll interval → the fewest read requests (≤ 125 registers,
//!   ≤ 2000 bits, `max_gap`, never across a blocked address).
//! - [`decode`]: registers → typed values in every byte/word order.
//! - [`link`]: one connection (Modbus TCP, RTU over TCP, RTU over a serial port), one read at a
//!   time with a timeout.
//! - [`poller`]: the task per connection (a tag map may ask for several with `connections`,
//!   each polling a contiguous run of the planned reads): schedule per interval, retries, reconnect with backoff and jitter,
//!   quarantine of refused tags, overrun accounting. Its module doc lists the invariants,
//!   including the timestamp policy (the instant the response arrived).
//! - [`ModbusCounters`]: what it did, as atomics, for metrics and tests; [`ModbusStats`] turns
//!   the counters of every source into `tagbridge_modbus_*` Prometheus families.
//!
//! Addressing is resolved before this code runs (see `ARCHITECTURE.md`, "Modbus addressing"): every
//! tag carries its 0-based wire address; `modicon: 40001` has already become holding register 0.

pub mod counters;
pub mod decode;
pub mod fuzz;
pub mod link;
pub mod planner;
pub mod poller;
pub mod stats;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use counters::{CountersSnapshot, ModbusCounters};
pub use poller::Tuning;
pub use stats::ModbusStats;

use crate::mapping::{ModbusPlan, TagMapPlan};
use crate::sample::SampleBatch;

/// Starts polling for one tag map and returns its counters: one task per connection
/// (`connections`, default 1), each sending one batch per poll cycle on `tx` (waiting while the
/// mapping stage is behind) until `cancel` fires or the receiver is gone, then dropping its
/// sender and connection.
pub fn start(
    plan: &TagMapPlan,
    source: &ModbusPlan,
    tuning: Tuning,
    tx: mpsc::Sender<SampleBatch>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Arc<ModbusCounters> {
    let counters = Arc::new(ModbusCounters::default());
    let limits = planner::Limits {
        max_registers: tuning.max_registers,
        max_bits: tuning.max_bits,
        max_gap: source.max_gap,
    };
    // One poller per connection, each with a contiguous run of the planned reads.
    let shares = planner::share(plan, limits, usize::from(source.connections.get()));
    for share in shares.iter().filter(|s| !s.is_empty()) {
        let poller = poller::Poller::new(
            plan,
            source,
            tuning.clone(),
            Arc::clone(&counters),
            tx.clone(),
            share,
        );
        let cancel = cancel.clone();
        tracker.spawn(async move {
            tokio::select! {
                // Shutdown: dropping the poller closes its connection and its sender.
                _ = cancel.cancelled() => {}
                // The mapping stage went away.
                _ = poller.run() => {}
            }
        });
    }
    counters
}
