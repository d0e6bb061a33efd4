//! [`Spool`]: the segmented log itself, synchronous, owned by one thread (the handle's task).
//!
//! Invariants (beyond those of the module doc):
//! - `segments` is never empty; its last entry is the active segment, open in `active`, and it
//!   is never deleted while active (a new one is started first).
//! - `total_bytes` is the sum of the segments' `bytes`, which for each is the length of its
//!   valid part: whole records only. A failed write is cut back to it.
//! - `read_pos` is the next sequence number `read` hands out; it is above `acked`. `rewind`
//!   puts it back to `acked + 1`.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::format::{
    self, ack_in_range, decode_record, encode_ack, encode_record, now_ms, parse_segment_name,
    peek_header, segment_header, segment_path, AckState, Decoded, MAX_RECORD, MAX_SEQ, QUARANTINED,
    RECORD_HEADER, RESERVE_BLOCK, SEGMENT_HEADER,
};
use super::status::SpoolStatus;
use super::{
    AppendOutcome, FsyncPolicy, Record, RecoveryReport, ReleaseFence, SpoolConfig, SpoolError,
    WhenFull,
};

/// Bytes read from a segment at a time when serving reads.
const READ_CHUNK: u64 = 1 << 20;
/// Bytes read at a time when walking record headers to find one record.
const WALK_CHUNK: u64 = 64 << 10;
/// Read positions remembered for [`Spool::status`] (one per chunk read).
const READ_MARKS: usize = 256;

/// One segment file: consecutive records from `first`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    pub first: u64,
    pub count: u64,
    /// Valid length of the file, header included.
    pub bytes: u64,
    /// Append time of its first and last record (Unix ms); 0 when empty.
    pub oldest_ms: u64,
    pub newest_ms: u64,
}

impl Segment {
    pub fn last(&self) -> Option<u64> {
        (self.count > 0).then(|| self.first + self.count - 1)
    }

    /// Records above `acked`.
    pub fn unacked(&self, acked: u64) -> u64 {
        match self.last() {
            Some(last) if last > acked => last - self.first.max(acked + 1) + 1,
            _ => 0,
        }
    }
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
}

#[cfg(not(unix))]
fn write_at(mut file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(buf)
}

#[cfg(unix)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(not(unix))]
pub(crate) fn read_at(mut file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Makes renames and new files in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The durable spool. See the module doc of [`crate::spool`].
pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    /// Holds the directory's lock for as long as the spool is open.
    _lock: File,
    segments: VecDeque<Segment>,
    /// The last segment, open for writing.
    active: File,
    next_seq: u64,
    state: AckState,
    read_pos: u64,
    /// Where `read_pos` is: (segment first seq, byte offset, seq at that offset).
    cursor: Option<(u64, u64, u64)>,
    /// A read handle on one segment, by first seq.
    reader: Option<(u64, File)>,
    total_bytes: u64,
    /// Records written since the last fsync of the active segment.
    data_dirty: bool,
    /// Files created or renamed since the last fsync of the directory.
    dir_dirty: bool,
    /// `state` changed since the ack file was written.
    ack_dirty: bool,
    /// The ack file was replaced without an fsync.
    ack_unsynced: bool,
    last_sync: Instant,
    /// The first unacknowledged record when `status` last looked: (segment first seq, seq,
    /// offset, append time).
    oldest_cache: Option<(u64, u64, u64, u64)>,
    /// Where recent reads started, oldest first: (segment first seq, seq, offset). The first
    /// unacknowledged record was read not long ago, so `status` walks to it from the mark
    /// just before it instead of from where it last looked: at 100 000 readings a second that
    /// walk read about 15 MB of records a second.
    read_marks: VecDeque<(u64, u64, u64)>,
    buf: Vec<u8>,
    /// The last read's buffer, kept for the next read (up to [`READ_CHUNK`] and one record).
    read_buf: Vec<u8>,
    /// Files set aside at open (see [`quarantine`]).
    quarantined: u64,
    /// Acknowledged segments are deleted only up to here, when set.
    fence: Option<ReleaseFence>,
    /// Test hook: every write fails with this error (a full disk).
    #[cfg(test)]
    pub(crate) fail_writes: Option<io::ErrorKind>,
    /// Test hook: added to the clock, to age records without waiting.
    #[cfg(test)]
    pub(crate) clock_shift_ms: u64,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovers it, and starts a new segment.
    /// Fails if another process has it open, or on I/O errors on the directory itself; damage
    /// inside files is repaired and reported, not an error.
    ///
    /// Long on purpose: recovery is one sequence (lock, sweep the directory, quarantine what
    /// the spool could not have written, read the ack file, check every segment, reserve the
    /// next sequence numbers) whose order is what makes a crash at any step safe.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: SpoolConfig,
    ) -> Result<(Spool, RecoveryReport), SpoolError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(SpoolError::io("create", &dir))?;
        let lock_path = dir.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(SpoolError::io("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(SpoolError::io("lock", &lock_path)(e)),
        }
        let mut report = RecoveryReport::default();
        let mut quarantined = 0;
        let mut firsts = BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(SpoolError::io("list", &dir))? {
            let entry = entry.map_err(SpoolError::io("list", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // Left by a crash between writing and renaming; the rename never happened.
                let _ = fs::remove_file(entry.path());
            } else if name.ends_with(QUARANTINED) {
                quarantined += 1;
            } else if let Some(first) = parse_segment_name(&name) {
                if first <= MAX_SEQ {
                    firsts.insert(first);
                } else {
                    let why = format!("names sequence number {first}, beyond {MAX_SEQ}");
                    quarantine(&entry.path(), &why, &mut report)?;
                    quarantined += 1;
                }
            }
        }
        let ack_path = dir.join("ack");
        let mut state = match fs::read(&ack_path) {
            Ok(bytes) => format::decode_ack(&bytes).unwrap_or_else(|| {
                report.problems.push(format!(
                    "{}: unreadable ({} bytes); every record on disk will be sent again",
                    ack_path.display(),
                    bytes.len()
                ));
                AckState::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => AckState::default(),
            Err(e) => {
                report.problems.push(format!(
                    "{}: {e}; every record on disk will be sent again",
                    ack_path.display()
                ));
                AckState::default()
            }
        };
        if !ack_in_range(&state) {
            let why = format!(
                "acknowledged up to {} and reserved up to {}, beyond {MAX_SEQ}; every record on \
                 disk will be sent again",
                state.acked, state.reserved
            );
            quarantine(&ack_path, &why, &mut report)?;
            quarantined += 1;
            state = AckState {
                dropped: state.dropped,
                ..AckState::default()
            };
        }

        let mut segments = VecDeque::new();
        let durable = config.fsync != FsyncPolicy::Never;
        while let Some(first) = firsts.pop_first() {
            match recover_segment(&dir, first, &firsts, durable, &mut report) {
                Ok(segs) => segments.extend(segs),
                Err(e) => report.problems.push(format!("{e}; file left as it is")),
            }
        }
        // Runs rescued from a damaged segment come after it; keep the order of numbering.
        segments.make_contiguous().sort_by_key(|s| s.first);

        let mut next_seq = state.reserved.max(state.acked + 1).max(1);
        for s in &segments {
            next_seq = next_seq.max(s.first + s.count);
        }
        // Fully acknowledged and empty segments go; the new active one carries the numbering.
        let acked = state.acked;
        segments.retain(|s| {
            let keep = s.unacked(acked) > 0;
            if !keep {
                let _ = fs::remove_file(segment_path(&dir, s.first));
            }
            keep
        });
        let path = segment_path(&dir, next_seq);
        let active = create_segment(&path, next_seq)?;
        segments.push_back(Segment {
            first: next_seq,
            count: 0,
            bytes: SEGMENT_HEADER as u64,
            oldest_ms: 0,
            newest_ms: 0,
        });
        state.reserved = next_seq.saturating_add(RESERVE_BLOCK);
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let mut spool = Spool {
            dir,
            config,
            _lock: lock,
            segments,
            active,
            next_seq,
            state,
            read_pos: state.acked + 1,
            cursor: None,
            reader: None,
            total_bytes,
            data_dirty: false,
            dir_dirty: true,
            ack_dirty: true,
            ack_unsynced: false,
            last_sync: Instant::now(),
            oldest_cache: None,
            read_marks: VecDeque::new(),
            buf: Vec::new(),
            read_buf: Vec::new(),
            quarantined,
            fence: None,
            #[cfg(test)]
            fail_writes: None,
            #[cfg(test)]
            clock_shift_ms: 0,
        };
        let durable = spool.config.fsync != FsyncPolicy::Never;
        spool.write_ack(durable)?;
        if durable {
            spool
                .active
                .sync_all()
                .map_err(SpoolError::io("fsync", &path))?;
            sync_dir(&spool.dir).map_err(SpoolError::io("fsync", &spool.dir))?;
            spool.dir_dirty = false;
        }
        report.segments = spool.segments.len();
        report.records = spool.depth();
        report.acked = spool.state.acked;
        report.next_seq = spool.next_seq;
        Ok((spool, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Records not yet acknowledged.
    pub fn depth(&self) -> u64 {
        let acked = self.state.acked;
        self.segments.iter().map(|s| s.unacked(acked)).sum()
    }

    /// The last acknowledged sequence number.
    pub fn acked(&self) -> u64 {
        self.state.acked
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records dropped over the spool's life.
    pub fn dropped(&self) -> u64 {
        self.state.dropped
    }

    /// Whether `read` has a record to hand out.
    pub fn has_unread(&self) -> bool {
        self.segments
            .iter()
            .rev()
            .find_map(Segment::last)
            .is_some_and(|last| last >= self.read_pos)
    }

    fn now(&self) -> u64 {
        #[cfg(test)]
        return now_ms() + self.clock_shift_ms;
        #[cfg(not(test))]
        now_ms()
    }

    fn active_seg(&self) -> &Segment {
        // `segments` is never empty (see the invariants).
        &self.segments[self.segments.len() - 1]
    }

    /// Appends `records` as one group and commits it according to the fsync policy.
    pub fn append(&mut self, records: &[Vec<u8>]) -> AppendOutcome {
        let mut out = self.append_nosync(records);
        if let Err(e) = self.commit() {
            out.error.get_or_insert(e);
        }
        out
    }

    /// Appends without the fsync of [`commit`](Spool::commit): the handle appends every
    /// request it has, then commits once (group commit).
    pub(crate) fn append_nosync(&mut self, records: &[Vec<u8>]) -> AppendOutcome {
        let mut out = AppendOutcome::default();
        let now = self.now();
        out.evicted += self.expire(now);
        let room = self.config.max_bytes.saturating_sub(SEGMENT_HEADER as u64);
        let mut batch: Vec<&[u8]> = Vec::with_capacity(records.len());
        for r in records {
            if r.len() > MAX_RECORD || (RECORD_HEADER + r.len()) as u64 > room {
                out.refused += 1;
            } else {
                batch.push(r);
            }
        }
        let need =
            |b: &[&[u8]]| -> u64 { b.iter().map(|r| (RECORD_HEADER + r.len()) as u64).sum() };
        // What a batch costs: its records, and a segment header if it starts a new segment.
        let cost = |s: &Spool, b: &[&[u8]]| -> u64 {
            let active = s.active_seg();
            let n = need(b);
            let header = active.count > 0 && active.bytes + n > s.config.segment_bytes;
            n + if header { SEGMENT_HEADER as u64 } else { 0 }
        };
        let max = self.config.max_bytes;
        if !batch.is_empty() && self.total_bytes + cost(self, &batch) > max {
            if let Err(e) = self.make_room(cost(self, &batch), &mut out) {
                return self.refuse_all(out, batch.len(), e);
            }
            let cut = match self.config.when_full {
                // Oldest first: the front of the batch goes.
                WhenFull::DropOldest => {
                    let mut k = 0;
                    while k < batch.len() && self.total_bytes + cost(self, &batch[k..]) > max {
                        k += 1;
                    }
                    batch.drain(..k).count()
                }
                WhenFull::DropNewest => {
                    let mut k = batch.len();
                    while k > 0 && self.total_bytes + cost(self, &batch[..k]) > max {
                        k -= 1;
                    }
                    batch.drain(k..).count()
                }
            };
            out.refused += cut as u64;
        }
        if !batch.is_empty()
            && self.active_seg().count > 0
            && self.active_seg().bytes + need(&batch) > self.config.segment_bytes
        {
            if let Err(e) = self.roll() {
                return self.refuse_all(out, batch.len(), e);
            }
        }
        if !batch.is_empty() {
            match self.write_batch(&batch, now, &mut out) {
                Ok(first) => {
                    out.first_seq = Some(first);
                    out.appended = batch.len() as u64;
                }
                Err(e) => return self.refuse_all(out, batch.len(), e),
            }
        }
        self.count_dropped(out.refused);
        out
    }

    fn refuse_all(&mut self, mut out: AppendOutcome, n: usize, e: SpoolError) -> AppendOutcome {
        out.refused += n as u64;
        out.error = Some(e);
        self.count_dropped(out.refused);
        out
    }

    fn count_dropped(&mut self, n: u64) {
        if n > 0 {
            self.state.dropped += n;
            self.ack_dirty = true;
        }
    }

    /// Frees space for `need` bytes: acknowledged segments first, then as the policy says.
    fn make_room(&mut self, need: u64, out: &mut AppendOutcome) -> Result<(), SpoolError> {
        let max = self.config.max_bytes;
        // Acknowledged records in the active segment are freed by starting a new one.
        let active = *self.active_seg();
        if active.count > 0 && active.unacked(self.state.acked) == 0 {
            self.roll()?;
            self.release_acked();
        }
        if self.config.when_full == WhenFull::DropOldest {
            while self.total_bytes + need > max && self.segments.len() > 1 {
                out.evicted += self.evict_front();
            }
            if self.total_bytes + need > max && self.active_seg().count > 0 {
                self.roll()?;
                out.evicted += self.evict_front();
            }
        }
        Ok(())
    }

    /// Writes the records to the active segment; returns the first sequence number.
    fn write_batch(
        &mut self,
        batch: &[&[u8]],
        now: u64,
        out: &mut AppendOutcome,
    ) -> Result<u64, SpoolError> {
        let n = batch.len() as u64;
        let first = self.next_seq;
        if first + n > self.state.reserved {
            self.state.reserved = first + n + RESERVE_BLOCK;
            self.write_ack(self.config.fsync != FsyncPolicy::Never)?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for (i, r) in batch.iter().enumerate() {
            encode_record(&mut buf, first + i as u64, now, r);
        }
        let mut result = self.write_active(&buf);
        // A full disk is handled like a full spool: drop_oldest makes room and tries again.
        while let Err(SpoolError::Io { source, .. }) = &result {
            if !(is_disk_full(source)
                && self.config.when_full == WhenFull::DropOldest
                && self.segments.len() > 1)
            {
                break;
            }
            let evicted = self.evict_front();
            out.evicted += evicted;
            tracing::warn!(
                message = "Disk full: dropped the oldest spool segment.",
                readings = evicted
            );
            result = self.write_active(&buf);
        }
        self.buf = buf;
        result?;
        let len = self.buf.len() as u64;
        let seg = self.segments.back_mut().ok_or(SpoolError::Stopped)?;
        if seg.count == 0 {
            seg.oldest_ms = now;
        }
        seg.newest_ms = now;
        seg.count += n;
        seg.bytes += len;
        self.total_bytes += len;
        self.next_seq += n;
        self.data_dirty = true;
        Ok(first)
    }

    /// Writes `buf` at the end of the active segment, or cuts the file back and fails.
    fn write_active(&mut self, buf: &[u8]) -> Result<(), SpoolError> {
        let seg = *self.active_seg();
        let path = segment_path(&self.dir, seg.first);
        #[cfg(test)]
        if let Some(kind) = self.fail_writes {
            // Half a write, then the error, as a full disk does it.
            let _ = write_at(&self.active, &buf[..buf.len() / 2], seg.bytes);
            let _ = self.active.set_len(seg.bytes);
            return Err(SpoolError::io("write", path)(kind.into()));
        }
        write_at(&self.active, buf, seg.bytes).map_err(|e| {
            // Leave whole records only; if even this fails, recovery cuts the tail.
            let _ = self.active.set_len(seg.bytes);
            SpoolError::io("write", path)(e)
        })
    }

    /// Starts a new active segment at `next_seq`.
    fn roll(&mut self) -> Result<(), SpoolError> {
        if self.data_dirty && self.config.fsync != FsyncPolicy::Never {
            let path = segment_path(&self.dir, self.active_seg().first);
            self.active
                .sync_data()
                .map_err(SpoolError::io("fsync", path))?;
            self.data_dirty = false;
        }
        let first = self.next_seq;
        let path = segment_path(&self.dir, first);
        let file = create_segment(&path, first)?;
        if self.config.fsync == FsyncPolicy::Always {
            file.sync_all().map_err(SpoolError::io("fsync", &path))?;
            sync_dir(&self.dir).map_err(SpoolError::io("fsync", &self.dir))?;
        } else {
            self.dir_dirty = true;
        }
        self.active = file;
        self.segments.push_back(Segment {
            first,
            count: 0,
            bytes: SEGMENT_HEADER as u64,
            oldest_ms: 0,
            newest_ms: 0,
        });
        self.total_bytes += SEGMENT_HEADER as u64;
        Ok(())
    }

    /// Deletes the oldest segment (never the active one); returns its records not yet handed
    /// to a reader, now counted as dropped. Records already read stay with the sink, which
    /// keeps them until the hub accepts them.
    fn evict_front(&mut self) -> u64 {
        if self.segments.len() < 2 {
            return 0;
        }
        let Some(seg) = self.segments.pop_front() else {
            return 0;
        };
        let in_flight = seg.unacked(self.state.acked);
        let dropped = seg.unacked(self.state.acked.max(self.read_pos - 1));
        if in_flight > dropped {
            tracing::warn!(
                message = "Spool full: deleted readings the sink is still sending; they are lost if the gateway stops before the hub accepts them.",
                readings = in_flight - dropped
            );
        }
        self.remove_segment(&seg);
        self.count_dropped(dropped);
        dropped
    }

    fn remove_segment(&mut self, seg: &Segment) {
        let path = segment_path(&self.dir, seg.first);
        if let Err(error) = fs::remove_file(&path) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(message = "Cannot delete a spool segment.", path = %path.display(), %error);
            }
        }
        self.total_bytes -= seg.bytes;
        if self.reader.as_ref().is_some_and(|(f, _)| *f == seg.first) {
            self.reader = None;
        }
        if let Some(next) = self.segments.front() {
            self.read_pos = self.read_pos.max(next.first);
        }
    }

    /// From now on, acknowledged segments are deleted only once `fence` has passed their last
    /// record (see [`ReleaseFence`]).
    pub fn set_release_fence(&mut self, fence: ReleaseFence) {
        self.fence = Some(fence);
    }

    /// Deletes segments (not the active one) whose records were all acknowledged, and passed
    /// by the release fence if there is one.
    fn release_acked(&mut self) {
        let limit = match &self.fence {
            Some(fence) => self.state.acked.min(fence.allowed()),
            None => self.state.acked,
        };
        while self.segments.len() > 1 && self.segments[0].unacked(limit) == 0 {
            if let Some(seg) = self.segments.pop_front() {
                self.remove_segment(&seg);
            }
        }
    }

    /// Drops segments whose newest record is older than `max_age`; returns the records dropped.
    fn expire(&mut self, now: u64) -> u64 {
        let Some(age) = self.config.max_age else {
            return 0;
        };
        let limit = now.saturating_sub(age.as_millis() as u64);
        let mut dropped = 0;
        while let Some(front) = self.segments.front().copied() {
            if front.count == 0 || front.newest_ms >= limit {
                break;
            }
            if self.segments.len() == 1 && self.roll().is_err() {
                break;
            }
            dropped += self.evict_front();
        }
        dropped
    }

    /// Time-driven work: drops expired segments and runs a due interval fsync. Returns the
    /// records dropped for age.
    pub fn tick(&mut self) -> Result<u64, SpoolError> {
        // The release fence may have moved since the last ack.
        if self.fence.is_some() {
            self.release_acked();
        }
        let dropped = self.expire(self.now());
        self.commit()?;
        Ok(dropped)
    }

    /// Releases every record up to `upto` (cumulative) and persists the position.
    pub fn ack(&mut self, upto: u64) -> Result<(), SpoolError> {
        self.ack_nosync(upto);
        self.commit()
    }

    pub(crate) fn ack_nosync(&mut self, upto: u64) {
        let upto = upto.min(self.next_seq - 1);
        if upto <= self.state.acked {
            return;
        }
        self.state.acked = upto;
        self.ack_dirty = true;
        self.read_pos = self.read_pos.max(upto + 1);
        self.release_acked();
    }

    /// Reading starts again from the first unacknowledged record (after the sink lost what it
    /// had read).
    pub fn rewind(&mut self) {
        self.read_pos = self.state.acked + 1;
    }

    /// Hands records from `seq` on out again (a reader went away with them).
    pub(crate) fn unread(&mut self, seq: u64) {
        self.read_pos = self.read_pos.min(seq).max(self.state.acked + 1);
    }

    /// Makes what was written durable as the fsync policy says, and writes the ack file if
    /// the state changed.
    pub fn commit(&mut self) -> Result<(), SpoolError> {
        match self.config.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::Interval(d) if self.last_sync.elapsed() >= d => self.sync()?,
            _ => {}
        }
        if self.ack_dirty {
            self.write_ack(self.config.fsync == FsyncPolicy::Always)?;
        }
        Ok(())
    }

    /// How long until an interval fsync is due, if something waits for one.
    pub fn sync_due_in(&self) -> Option<Duration> {
        match self.config.fsync {
            FsyncPolicy::Interval(d) if self.data_dirty || self.dir_dirty || self.ack_unsynced => {
                Some(d.saturating_sub(self.last_sync.elapsed()))
            }
            _ => None,
        }
    }

    /// Forces everything written so far to the disk.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.data_dirty {
            let path = segment_path(&self.dir, self.active_seg().first);
            self.active
                .sync_data()
                .map_err(SpoolError::io("fsync", path))?;
            self.data_dirty = false;
        }
        if self.ack_dirty {
            self.write_ack(true)?;
        } else if self.ack_unsynced {
            let path = self.dir.join("ack");
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(SpoolError::io("fsync", &path))?;
            self.dir_dirty = true;
            self.ack_unsynced = false;
        }
        if self.dir_dirty {
            sync_dir(&self.dir).map_err(SpoolError::io("fsync", &self.dir))?;
            self.dir_dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Replaces the ack file (write a temporary file, rename it over).
    fn write_ack(&mut self, durable: bool) -> Result<(), SpoolError> {
        use std::io::Write as _;
        let tmp = self.dir.join("ack.tmp");
        let path = self.dir.join("ack");
        let bytes = encode_ack(&self.state);
        let mut f = File::create(&tmp).map_err(SpoolError::io("create", &tmp))?;
        f.write_all(&bytes).map_err(SpoolError::io("write", &tmp))?;
        if durable {
            f.sync_data().map_err(SpoolError::io("fsync", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(SpoolError::io("rename", &path))?;
        if durable {
            sync_dir(&self.dir).map_err(SpoolError::io("fsync", &self.dir))?;
        }
        self.ack_unsynced = !durable;
        self.ack_dirty = false;
        Ok(())
    }

    /// Up to `max` records from the read position, in order; empty if there are none.
    pub fn read(&mut self, max: usize) -> Result<Vec<Record>, SpoolError> {
        let max = max.max(1);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(seg) = self
                .segments
                .iter()
                .find(|s| s.last().is_some_and(|l| l >= self.read_pos))
                .copied()
            else {
                break;
            };
            self.read_pos = self.read_pos.max(seg.first);
            let offset = match self.cursor {
                Some((f, off, seq)) if f == seg.first && seq == self.read_pos => off,
                _ => match self.walk(&seg, self.read_pos, SEGMENT_HEADER as u64) {
                    Ok(offset) => offset,
                    // The record is not where the segment's index says: damaged since
                    // recovery. Skip the rest of the segment, counted, rather than stall.
                    Err(SpoolError::Io { source, path, .. })
                        if source.kind() == io::ErrorKind::InvalidData =>
                    {
                        let last = seg.last().unwrap_or(self.read_pos);
                        let lost = last + 1 - self.read_pos;
                        tracing::error!(message = "Spool segment damaged while open; skipping the rest of it.", path = %path.display(), reason = %source, readings = lost);
                        self.count_dropped(lost);
                        self.read_pos = last + 1;
                        self.cursor = None;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            if self.read_marks.len() == READ_MARKS {
                self.read_marks.pop_front();
            }
            self.read_marks
                .push_back((seg.first, self.read_pos, offset));
            let avail = seg.bytes - offset;
            let path = segment_path(&self.dir, seg.first);
            // The buffer of the last read, grown when needed: a fresh zeroed megabyte per read
            // cost page faults and a memset for every 4 096 readings delivered.
            let mut buf = std::mem::take(&mut self.read_buf);
            let file = self.reader_for(seg.first)?;
            let mut head = [0u8; RECORD_HEADER];
            read_at(file, &mut head, offset).map_err(SpoolError::io("read", &path))?;
            let first_size = peek_header(&head).map_or(0, |(len, _, _)| RECORD_HEADER + len) as u64;
            let want = avail.min(READ_CHUNK.max(first_size)) as usize;
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let chunk = &mut buf[..want];
            // `read_exact_at`: all of `chunk` is this read's bytes, or it fails.
            read_at(file, chunk, offset).map_err(SpoolError::io("read", &path))?;
            let mut at = 0;
            let mut damaged = None;
            while out.len() < max && at < chunk.len() {
                match decode_record(&chunk[at..]) {
                    Decoded::Record(r) if r.seq == self.read_pos => {
                        out.push((r.seq, r.payload.to_vec()));
                        self.read_pos += 1;
                        at += r.size;
                    }
                    Decoded::Incomplete if at > 0 => break,
                    Decoded::Record(_) => damaged = Some("sequence number out of order"),
                    Decoded::Incomplete => damaged = Some("record cut short"),
                    Decoded::Corrupt(why) => damaged = Some(why),
                }
                if damaged.is_some() {
                    break;
                }
            }
            self.read_buf = buf;
            if let Some(why) = damaged {
                // Damaged since recovery checked it (the disk, or another writer): the rest of
                // this segment cannot be trusted. Count it and carry on with the next one.
                let last = seg.last().unwrap_or(self.read_pos);
                let lost = last + 1 - self.read_pos;
                tracing::error!(message = "Spool segment damaged while open; skipping the rest of it.", path = %path.display(), offset = offset + at as u64, reason = why, readings = lost);
                self.count_dropped(lost);
                self.read_pos = last + 1;
                self.cursor = None;
                continue;
            }
            self.cursor = Some((seg.first, offset + at as u64, self.read_pos));
        }
        Ok(out)
    }

    fn reader_for(&mut self, first: u64) -> Result<&File, SpoolError> {
        if self.reader.as_ref().is_none_or(|(f, _)| *f != first) {
            let path = segment_path(&self.dir, first);
            let file = File::open(&path).map_err(SpoolError::io("open", &path))?;
            self.reader = Some((first, file));
        }
        match &self.reader {
            Some((_, file)) => Ok(file),
            None => Err(SpoolError::Stopped),
        }
    }

    /// The byte offset of record `seq` in `seg`, found by walking the record headers from
    /// `from` (an offset known to hold a record at or before `seq`).
    fn walk(&mut self, seg: &Segment, seq: u64, from: u64) -> Result<u64, SpoolError> {
        let path = segment_path(&self.dir, seg.first);
        let file = self.reader_for(seg.first)?;
        let mut offset = from;
        let mut chunk = Vec::new();
        while offset < seg.bytes {
            let n = (seg.bytes - offset).min(WALK_CHUNK) as usize;
            chunk.resize(n, 0);
            read_at(file, &mut chunk, offset).map_err(SpoolError::io("read", &path))?;
            let mut at = 0;
            while let Some((len, s, _)) = peek_header(&chunk[at..]) {
                if s >= seq {
                    return Ok(offset + at as u64);
                }
                at += RECORD_HEADER + len;
                if at >= chunk.len() {
                    break;
                }
            }
            if at == 0 {
                break;
            }
            offset += at as u64;
        }
        Err(SpoolError::io("find a record in", path)(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no record {seq} where the index says it is"),
        )))
    }

    /// Depth, bytes, age of the oldest unacknowledged record, drops.
    pub fn status(&mut self) -> SpoolStatus {
        let acked = self.state.acked;
        let oldest = self
            .segments
            .iter()
            .find(|s| s.unacked(acked) > 0)
            .copied()
            .and_then(|seg| {
                let seq = seg.first.max(acked + 1);
                if seq == seg.first {
                    return Some(seg.oldest_ms);
                }
                // Acknowledgements only move forward: walk on from where the last look ended,
                // or from the closest read before the record, whichever is closer.
                let (mut from_seq, mut from) = match self.oldest_cache {
                    Some((f, s, _, ms)) if f == seg.first && s == seq => return Some(ms),
                    Some((f, s, off, _)) if f == seg.first && s < seq => (s, off),
                    _ => (seg.first, SEGMENT_HEADER as u64),
                };
                while let Some(&(f, s, off)) = self.read_marks.front() {
                    if s > seq {
                        break;
                    }
                    if f == seg.first && s >= from_seq {
                        (from_seq, from) = (s, off);
                    }
                    self.read_marks.pop_front();
                }
                let offset = self.walk(&seg, seq, from).ok()?;
                let file = self.reader_for(seg.first).ok()?;
                let mut head = [0u8; RECORD_HEADER];
                read_at(file, &mut head, offset).ok()?;
                let (_, _, ms) = peek_header(&head)?;
                self.oldest_cache = Some((seg.first, seq, offset, ms));
                Some(ms)
            });
        SpoolStatus {
            depth: self.depth(),
            bytes: self.total_bytes,
            oldest_age: oldest.map(|ms| Duration::from_millis(self.now().saturating_sub(ms))),
            dropped: self.state.dropped,
            segments: self.segments.len(),
            acked,
            next_seq: self.next_seq,
            quarantined: self.quarantined,
        }
    }
}

impl Drop for Spool {
    /// Best effort: what the policy would have synced soon is synced now.
    fn drop(&mut self) {
        if self.config.fsync != FsyncPolicy::Never {
            let _ = self.sync();
        } else if self.ack_dirty {
            let _ = self.write_ack(false);
        }
    }
}

/// Sets aside a file the spool could not have written, renaming it `<name>.quarantined` (kept
/// for whoever investigates, never read again), and says so loudly: an error log and a problem
/// in the report; [`SpoolStatus::quarantined`] counts such files.
fn quarantine(path: &Path, why: &str, report: &mut RecoveryReport) -> Result<(), SpoolError> {
    let mut target = path.as_os_str().to_owned();
    target.push(QUARANTINED);
    let target = PathBuf::from(target);
    fs::rename(path, &target).map_err(SpoolError::io("rename", path))?;
    tracing::error!(
        message = "Spool file quarantined: the spool could not have written it.",
        file = %path.display(),
        moved_to = %target.display(),
        reason = %why
    );
    report.problems.push(format!(
        "{}: {why}; quarantined as {}",
        path.display(),
        target.display()
    ));
    Ok(())
}

/// Creates a segment file holding only its header.
fn create_segment(path: &Path, first: u64) -> Result<File, SpoolError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(SpoolError::io("create", path))?;
    if let Err(e) = write_at(&file, &segment_header(first), 0) {
        let _ = fs::remove_file(path);
        return Err(SpoolError::io("write", path)(e));
    }
    Ok(file)
}

/// Checks one segment file, repairs it and reports what was wrong, in one pass over it: each
/// run of valid records found after damage is written once to a new segment named by its first
/// sequence number (returned after the repaired segment, already checked), then the file is
/// cut after its valid start. Files are fsynced only if `durable`, and each once.
/// Long on purpose: the one pass over a damaged file, kept together so it stays one pass.
fn recover_segment(
    dir: &Path,
    first: u64,
    firsts: &BTreeSet<u64>,
    durable: bool,
    report: &mut RecoveryReport,
) -> Result<Vec<Segment>, SpoolError> {
    let path = segment_path(dir, first);
    let buf = fs::read(&path).map_err(SpoolError::io("read", &path))?;
    let file = File::options()
        .write(true)
        .open(&path)
        .map_err(SpoolError::io("open", &path))?;
    let mut changed = false;
    if format::parse_segment_header(&buf) != Some(first) {
        write_at(&file, &segment_header(first), 0).map_err(SpoolError::io("write", &path))?;
        report.problems.push(format!(
            "{}: damaged header rewritten from the file name",
            path.display()
        ));
        changed = true;
    }
    let (runs, damage) = format::scan_all(&buf, first);
    let head = runs.first().copied().unwrap_or_default();
    let valid = head.end.max(SEGMENT_HEADER);
    let mut segments = vec![Segment {
        first,
        count: head.records,
        bytes: valid as u64,
        oldest_ms: head.oldest_ms,
        newest_ms: head.newest_ms,
    }];
    if let Some(first_damage) = damage.first() {
        let mut written = Vec::new();
        let mut moved = Vec::new();
        for run in runs.iter().skip(1) {
            let target = segment_path(dir, run.first_seq);
            moved.push((run.first_seq, target.clone()));
            // An earlier recovery may have moved them already and been cut off before
            // truncating this file: that file is checked in turn.
            if firsts.contains(&run.first_seq) || target.exists() {
                continue;
            }
            let mut bytes = Vec::with_capacity(SEGMENT_HEADER + run.end - run.start);
            bytes.extend_from_slice(&segment_header(run.first_seq));
            bytes.extend_from_slice(&buf[run.start..run.end]);
            let tmp = target.with_extension("seg.tmp");
            fs::write(&tmp, &bytes).map_err(SpoolError::io("write", &tmp))?;
            written.push((tmp, target));
            segments.push(Segment {
                first: run.first_seq,
                count: run.records,
                bytes: bytes.len() as u64,
                oldest_ms: run.oldest_ms,
                newest_ms: run.newest_ms,
            });
        }
        if durable {
            for (tmp, _) in &written {
                File::open(tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(SpoolError::io("fsync", tmp))?;
            }
        }
        for (tmp, target) in &written {
            fs::rename(tmp, target).map_err(SpoolError::io("rename", tmp))?;
        }
        if durable && !written.is_empty() {
            sync_dir(dir).map_err(SpoolError::io("fsync", dir))?;
        }
        let cut: usize = damage.iter().map(|d| d.next - d.at).sum();
        report.bytes_truncated += cut as u64;
        let moved_text = match moved.as_slice() {
            [] => String::new(),
            [(seq, target)] => format!(
                "; the records after it, from {seq} on, moved to {}",
                target.display()
            ),
            [(seq, target), ..] => format!(
                "; the {} runs of records between them, from {seq} on, moved to new segments \
                 from {} on",
                moved.len(),
                target.display()
            ),
        };
        let spots = match damage.len() {
            1 => String::new(),
            n => format!("{n} damaged spots, the first: "),
        };
        report.problems.push(format!(
            "{}: {spots}{} at byte {valid}; {cut} bytes cut{moved_text}",
            path.display(),
            first_damage.why
        ));
        file.set_len(valid as u64)
            .map_err(SpoolError::io("truncate", &path))?;
        changed = true;
    }
    if changed && durable {
        file.sync_all().map_err(SpoolError::io("fsync", &path))?;
    }
    Ok(segments)
}

#[cfg(test)]
mod tests;
