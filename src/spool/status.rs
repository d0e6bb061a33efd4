//! The spool's state, from the open spool or read from its directory by another process
//! (`tagbridge spool status` while the gateway runs).
//!
//! [`inspect`] only reads: it takes no lock, changes no file, and tolerates a record being
//! written as it reads (a torn tail of the active segment is simply not counted). Its `dropped`
//! is what the gateway last wrote to the ack file, so it may lag by a moment.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use super::format::{self, now_ms, parse_segment_name, segment_path, MAX_SEQ, SEGMENT_HEADER};
use super::store::{ack_in_range, QUARANTINED};
use super::SpoolError;

/// How much is waiting in the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    /// Records not yet acknowledged.
    pub depth: u64,
    /// Size of the segment files.
    pub bytes: u64,
    /// Age of the oldest unacknowledged record.
    pub oldest_age: Option<Duration>,
    /// Records dropped over the spool's life (bounds, age, disk full, damage).
    pub dropped: u64,
    pub segments: usize,
    /// The last acknowledged sequence number.
    pub acked: u64,
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// Files set aside (renamed `*.quarantined`) because the spool could not have written
    /// them: a segment name or ack value beyond [`MAX_SEQ`].
    pub quarantined: u64,
}

/// Reads the status of the spool in `dir` without opening it.
pub fn inspect(dir: &Path) -> Result<SpoolStatus, SpoolError> {
    let mut firsts = Vec::new();
    let mut quarantined = 0;
    for entry in fs::read_dir(dir).map_err(SpoolError::io("list", dir))? {
        let entry = entry.map_err(SpoolError::io("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(QUARANTINED) {
            quarantined += 1;
        } else if let Some(first) = parse_segment_name(&name) {
            // Beyond what the spool writes: the next open quarantines it.
            if first <= MAX_SEQ {
                firsts.push(first);
            } else {
                quarantined += 1;
            }
        }
    }
    firsts.sort_unstable();
    let ack_path = dir.join("ack");
    let mut state = match fs::read(&ack_path) {
        Ok(b) => format::decode_ack(&b).unwrap_or_default(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => format::AckState::default(),
        Err(e) => return Err(SpoolError::io("read", &ack_path)(e)),
    };
    if !ack_in_range(&state) {
        quarantined += 1;
        state = format::AckState {
            dropped: state.dropped,
            ..format::AckState::default()
        };
    }
    let mut status = SpoolStatus {
        quarantined,
        acked: state.acked,
        dropped: state.dropped,
        next_seq: state.acked.saturating_add(1),
        ..SpoolStatus::default()
    };
    let mut oldest_ms = None;
    for (i, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            // Deleted (acknowledged) while we were looking.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SpoolError::io("stat", &path)(e)),
        };
        status.segments += 1;
        status.bytes += meta.len();
        status.next_seq = status.next_seq.max(first);
        // Every record of this segment is below the next segment's first: all acknowledged.
        if firsts
            .get(i + 1)
            .is_some_and(|&next| next <= state.acked.saturating_add(1))
        {
            continue;
        }
        let buf = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SpoolError::io("read", &path)(e)),
        };
        let mut at = SEGMENT_HEADER;
        let mut seq = first;
        while let format::Decoded::Record(r) = format::decode_record(buf.get(at..).unwrap_or(&[])) {
            if r.seq != seq {
                break;
            }
            if r.seq > state.acked {
                status.depth += 1;
                oldest_ms.get_or_insert(r.time_ms);
            }
            seq += 1;
            at += r.size;
        }
        status.next_seq = status.next_seq.max(seq);
    }
    status.oldest_age = oldest_ms.map(|ms| Duration::from_millis(now_ms().saturating_sub(ms)));
    Ok(status)
}
