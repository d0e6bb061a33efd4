//! What one Modbus connection did, as plain atomics: the poller adds, metrics and tests read.
//!
//! Counters only grow; gauges (`connected`, `quarantined_tags`, `last_cycle_*`) are set.
//! All use `Relaxed` ordering: each value is independent and read for display only.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one Modbus source: one tag map, summed over its connections. `last_cycle_*`
/// are those of whichever connection finished a cycle last.
#[derive(Debug, Default)]
pub struct ModbusCounters {
    /// Read requests sent (retries and bisection reads included).
    pub requests: AtomicU64,
    /// Normal responses received.
    pub responses: AtomicU64,
    /// Modbus exception responses received (the device said no).
    pub exceptions: AtomicU64,
    /// Requests that got no answer within the timeout.
    pub timeouts: AtomicU64,
    /// Requests that failed on the link (closed, reset, garbled frame).
    pub link_errors: AtomicU64,
    /// Requests sent again after a timeout or link error.
    pub retries: AtomicU64,
    /// Connections opened.
    pub connects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Connections open now.
    pub connected: AtomicU64,
    /// Poll cycles completed (one per interval group per tick).
    pub cycles: AtomicU64,
    /// Cycles that took longer than their interval (counted, logged, later ticks skipped).
    pub overruns: AtomicU64,
    /// Values decoded and sent to the mapping stage.
    pub samples: AtomicU64,
    /// Responses too short for a tag they should hold.
    pub decode_errors: AtomicU64,
    /// Times a tag was put in quarantine after an exception on its own read.
    pub quarantines: AtomicU64,
    /// Tags in quarantine now.
    pub quarantined_tags: AtomicU64,
    /// Reads skipped because their unit was backing off after timeouts.
    pub skipped_unit_down: AtomicU64,
    /// Duration of the last completed cycle, in microseconds.
    pub last_cycle_micros: AtomicU64,
    /// Read requests the last completed cycle sent (retries and splits included).
    pub last_cycle_reads: AtomicU64,
}

impl ModbusCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// A copy of every value, for tests and tables.
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            requests: g(&self.requests),
            responses: g(&self.responses),
            exceptions: g(&self.exceptions),
            timeouts: g(&self.timeouts),
            link_errors: g(&self.link_errors),
            retries: g(&self.retries),
            connects: g(&self.connects),
            connect_failures: g(&self.connect_failures),
            connected: g(&self.connected),
            cycles: g(&self.cycles),
            overruns: g(&self.overruns),
            samples: g(&self.samples),
            decode_errors: g(&self.decode_errors),
            quarantines: g(&self.quarantines),
            quarantined_tags: g(&self.quarantined_tags),
            skipped_unit_down: g(&self.skipped_unit_down),
            last_cycle_micros: g(&self.last_cycle_micros),
            last_cycle_reads: g(&self.last_cycle_reads),
        }
    }
}

/// Plain copy of [`ModbusCounters`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub requests: u64,
    pub responses: u64,
    pub exceptions: u64,
    pub timeouts: u64,
    pub link_errors: u64,
    pub retries: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub connected: u64,
    pub cycles: u64,
    pub overruns: u64,
    pub samples: u64,
    pub decode_errors: u64,
    pub quarantines: u64,
    pub quarantined_tags: u64,
    pub skipped_unit_down: u64,
    pub last_cycle_micros: u64,
    pub last_cycle_reads: u64,
}
