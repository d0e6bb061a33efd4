//! The durable spool: an append-only, segmented on-disk log between the mapping stage and the
//! sink. Records go in and get sequence numbers; the sink reads ahead of acknowledgements; a
//! record is released (its segment deleted) only after the sink acknowledged it, which it does
//! only after the hub accepted it. At-least-once.
//!
//! On disk, in one directory:
//!
//! ```text
//! lock                         held (flock) by the one process that writes the spool
//! ack                          36 bytes, replaced atomically (write ack.tmp, rename):
//!   "TBSPACK1" | acked u64 | reserved u64 | dropped u64 | crc32c(previous 32 bytes) u32
//! 00000000000000000001.seg     segments, named by the sequence number of their first record
//! 00000000000000004097.seg     (20 digits, so names sort like numbers)
//!
//! segment = "TBSPOOL1" | first seq u64 | record*
//! record  = len u32 | crc32c u32 | seq u64 | append time, Unix ms u64 | payload (len bytes)
//!           crc32c covers len, seq, time and payload; integers are little-endian
//! ```
//!
//! Invariants:
//! - Sequence numbers only grow, across restarts and crashes. The records of one segment have
//!   consecutive numbers starting at the one in its name; segments do not overlap. Every open
//!   starts a new segment at the next number, which is at least `reserved`: `reserved` is
//!   raised (and fsynced, unless `fsync: never`) before any number at or above it is handed
//!   out, so a record lost in a power cut never has its number, and so its event's message id,
//!   reused for another reading.
//! - `append` writes straight to the kernel (no user-space buffer survives a call), so a killed
//!   process loses nothing that `append` returned. What a power cut may lose depends on
//!   [`FsyncPolicy`].
//! - Recovery (on [`Spool::open`]) reads every segment, keeps every record up to the first one
//!   that is torn, corrupt or out of sequence, looks for the next valid record after the damage
//!   and keeps those too (in a new segment), truncates the rest and reports it. Damage never
//!   stops the spool and never hides the records before it.
//! - `ack(n)` is cumulative. The acknowledged position is durable (ack file); if the ack file is
//!   lost or damaged, everything still on disk is replayed: duplicates, never loss.
//! - With a [`ReleaseFence`], an acknowledged segment stays on disk until the fence passes its
//!   last record: whoever must read acknowledged records back after a crash (the gateway's
//!   memory of what it sent, `runtime::last_sent`) moves the fence once it has saved what it
//!   needs from them. Such segments still count towards `max_bytes` and are the first to go
//!   when the spool is full.
//! - Bounds: the files never exceed `max_bytes` after an append (except a lone segment header).
//!   When full, `drop_oldest` deletes the oldest segments, `drop_newest` refuses new records.
//!   Records older than `max_age` are deleted a segment at a time (a segment goes when its newest
//!   record is older). Every record removed before it was handed to the sink is counted in
//!   `dropped` (and persisted in the ack file); records the sink already holds are not, because
//!   it keeps them until the hub accepts them (a warning says so: a crash before then loses
//!   them). So after a drain, delivered + dropped = appended, exactly. A full disk (ENOSPC) is
//!   handled by the same policy; no I/O error panics.

pub mod format;
pub mod handle;
pub mod payload;
pub mod status;
mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use handle::SpoolHandle;
pub use status::{inspect, SpoolStatus};
pub use store::Spool;

/// A record and its sequence number.
pub type Record = (u64, Vec<u8>);

/// How far the spool may delete acknowledged records, shared between the spool and the
/// component that holds it back. Starts at 0 (nothing may go); only ever moves forward.
#[derive(Debug, Clone, Default)]
pub struct ReleaseFence(Arc<AtomicU64>);

impl ReleaseFence {
    pub fn new() -> Self {
        ReleaseFence::default()
    }

    /// Acknowledged records up to `seq` may be deleted.
    pub fn allow(&self, seq: u64) {
        self.0.fetch_max(seq, Ordering::AcqRel);
    }

    /// The last sequence number that may be deleted once acknowledged.
    pub fn allowed(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// When appended records are forced to the disk (fsync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every group of appends, before `append` returns (and before the sink can read
    /// them). A power cut loses nothing that was appended. Costs one fsync per group commit
    /// (milliseconds on flash).
    Always,
    /// At most this long after an append. A power cut may lose the records of the last
    /// interval (never an acknowledged position's worth of earlier data, and never numbering).
    /// A process crash (kill -9) loses nothing.
    Interval(Duration),
    /// Never: the OS writes back when it likes (about 30 s on Linux). A power cut may lose
    /// anything since then. For tests and benchmarks.
    Never,
}

/// What to drop when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Delete the oldest segments (keep the newest readings).
    #[default]
    DropOldest,
    /// Refuse new records (keep the oldest readings).
    DropNewest,
}

/// Bounds and durability of a spool.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Largest total size of the segment files.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size. Space is reclaimed a segment
    /// at a time, so this should be well below `max_bytes` (see [`SpoolConfig::new`]).
    pub segment_bytes: u64,
    /// Records older than this are dropped (a segment at a time).
    pub max_age: Option<Duration>,
    pub when_full: WhenFull,
    pub fsync: FsyncPolicy,
}

impl SpoolConfig {
    /// `max_bytes` with segments of a sixteenth of it (between 4 KiB and 64 MiB), no age
    /// limit, `drop_oldest`, fsync every 100 ms.
    pub fn new(max_bytes: u64) -> Self {
        SpoolConfig {
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(4 << 10, 64 << 20),
            max_age: None,
            when_full: WhenFull::DropOldest,
            fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
        }
    }
}

impl Default for SpoolConfig {
    /// 1 GiB.
    fn default() -> Self {
        SpoolConfig::new(1 << 30)
    }
}

/// What recovery found when the spool was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files kept.
    pub segments: usize,
    /// Records waiting to be delivered (not acknowledged).
    pub records: u64,
    /// Bytes cut from damaged segments.
    pub bytes_truncated: u64,
    /// Everything up to here had been acknowledged.
    pub acked: u64,
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// One line per damaged file: which, where, why.
    pub problems: Vec<String>,
}

/// What happened to one `append`.
#[derive(Debug, Default)]
pub struct AppendOutcome {
    /// The sequence number of the first appended record; the others follow it consecutively.
    pub first_seq: Option<u64>,
    pub appended: u64,
    /// Records of this append that were not stored (`drop_newest`, too large, disk errors).
    pub refused: u64,
    /// Older records deleted unacknowledged to make room (`drop_oldest`) or for age.
    pub evicted: u64,
    /// The I/O error behind refused records, if any.
    pub error: Option<SpoolError>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool {0} is in use by another process")]
    Locked(PathBuf),
    #[error("the spool task has stopped")]
    Stopped,
}

impl SpoolError {
    fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SpoolError::Io { op, path, source }
    }
}
