//! The queue between the mapping stage and the sink: records in, sequence numbers assigned,
//! read ahead of acknowledgements, released only when acknowledged.
//!
//! [`Journal::Memory`] is a bounded in-memory queue: nothing survives a restart, and a full queue
//! makes writers wait (so the sources wait). It serves stdout/file runs, tests, and the "spool
//! off" side of the spool benchmark. [`Journal::Spool`] is the durable spool
//! ([`crate::spool`]) behind its async handle: it never makes writers wait for the sink (a full
//! spool drops as configured and counts it), and what is not acknowledged survives restarts.
//!
//! Invariants: sequence numbers start at 1 and increase by one per record; `read` hands out each
//! record once, in order; `ack(n)` releases every record up to `n`.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::spool::SpoolHandle;

/// A record and its sequence number.
pub type Record = (u64, Vec<u8>);

/// Where records wait for the sink.
pub enum Journal {
    Memory(MemoryJournal),
    Spool(SpoolHandle),
}

impl Journal {
    pub fn memory(capacity: usize) -> Self {
        Journal::Memory(MemoryJournal::new(capacity))
    }

    /// The durable spool, through the handle of its task.
    pub fn spool(handle: SpoolHandle) -> Self {
        Journal::Spool(handle)
    }

    /// Appends records, waiting while the journal is full (memory) or until they are committed
    /// (spool). Returns the first sequence number, 0 if none was stored.
    pub async fn append(&self, records: Vec<Vec<u8>>) -> u64 {
        match self {
            Journal::Memory(m) => m.append(records).await,
            // The spool task logs and counts what it drops.
            Journal::Spool(h) => h.append(records).await.first_seq.unwrap_or(0),
        }
    }

    /// Like [`Journal::append`], but returns the sequence number of the last record stored (0
    /// if none was); `None` when the spool's task has stopped (it panicked or failed), so the
    /// caller can stop the gateway instead of losing readings silently.
    pub async fn append_checked(&self, records: Vec<Vec<u8>>) -> Option<u64> {
        let n = records.len() as u64;
        match self {
            Journal::Memory(m) => {
                let first = m.append(records).await;
                // The memory journal stores every record (it waits for room).
                Some(if first == 0 { 0 } else { first + n - 1 })
            }
            Journal::Spool(h) => {
                let outcome = h.append(records).await;
                if matches!(outcome.error, Some(crate::spool::SpoolError::Stopped)) {
                    return None;
                }
                Some(match outcome.first_seq {
                    Some(first) if outcome.appended > 0 => first + outcome.appended - 1,
                    _ => 0,
                })
            }
        }
    }

    /// Up to `max_records` records after the last one read, waiting until there is at least one;
    /// empty once the journal is closed and everything was read.
    pub async fn read(&self, max_records: usize) -> Vec<Record> {
        match self {
            Journal::Memory(m) => m.read(max_records).await,
            Journal::Spool(h) => h.read(max_records).await,
        }
    }

    /// Releases every record up to `seq`.
    pub async fn ack(&self, seq: u64) {
        match self {
            Journal::Memory(m) => m.ack(seq),
            Journal::Spool(h) => h.ack(seq).await,
        }
    }

    /// No more appends: readers finish when they have read everything.
    pub fn close(&self) {
        match self {
            Journal::Memory(m) => m.close(),
            Journal::Spool(h) => h.close(),
        }
    }

    /// The spool's bytes, drops and oldest age (refreshed every second); `None` in memory.
    pub fn spool_status(&self) -> Option<crate::spool::SpoolStatus> {
        match self {
            Journal::Memory(_) => None,
            Journal::Spool(h) => Some(h.status()),
        }
    }

    /// Records not yet acknowledged.
    pub fn depth(&self) -> u64 {
        match self {
            Journal::Memory(m) => m.depth(),
            Journal::Spool(h) => h.depth(),
        }
    }
}

struct State {
    /// Unacknowledged records, oldest first.
    records: VecDeque<Record>,
    next_seq: u64,
    /// The next sequence number to hand to a reader.
    read_from: u64,
    closed: bool,
}

/// The bounded in-memory journal.
pub struct MemoryJournal {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes readers (records appended, or closed) and writers (records acknowledged).
    changed: Notify,
}

impl MemoryJournal {
    pub fn new(capacity: usize) -> Self {
        MemoryJournal {
            state: Mutex::new(State {
                records: VecDeque::new(),
                next_seq: 1,
                read_from: 1,
                closed: false,
            }),
            capacity: capacity.max(1),
            changed: Notify::new(),
        }
    }

    async fn append(&self, records: Vec<Vec<u8>>) -> u64 {
        let mut pending = records.into_iter().peekable();
        let mut first = None;
        loop {
            {
                let Ok(mut s) = self.state.lock() else {
                    return 0;
                };
                while s.records.len() < self.capacity {
                    let Some(r) = pending.next() else { break };
                    let seq = s.next_seq;
                    s.next_seq += 1;
                    first.get_or_insert(seq);
                    s.records.push_back((seq, r));
                }
            }
            // Wake readers before registering our own wait: a `Notified` receives every
            // `notify_waiters` from its creation on, so the order matters.
            self.changed.notify_waiters();
            if pending.peek().is_none() {
                return first.unwrap_or(0);
            }
            let notified = self.changed.notified();
            // Full: wait for an ack, unless one came between the unlock and now.
            if self
                .state
                .lock()
                .map(|s| s.records.len() >= self.capacity)
                .unwrap_or(false)
            {
                notified.await;
            }
        }
    }

    async fn read(&self, max_records: usize) -> Vec<Record> {
        loop {
            let notified = self.changed.notified();
            {
                let Ok(mut s) = self.state.lock() else {
                    return Vec::new();
                };
                let start = s.records.iter().position(|(seq, _)| *seq >= s.read_from);
                if let Some(start) = start {
                    let out: Vec<Record> = s
                        .records
                        .iter()
                        .skip(start)
                        .take(max_records.max(1))
                        .cloned()
                        .collect();
                    if let Some((last, _)) = out.last() {
                        s.read_from = last + 1;
                    }
                    return out;
                }
                if s.closed {
                    return Vec::new();
                }
            }
            notified.await;
        }
    }

    fn ack(&self, seq: u64) {
        if let Ok(mut s) = self.state.lock() {
            while s.records.front().is_some_and(|(n, _)| *n <= seq) {
                s.records.pop_front();
            }
        }
        self.changed.notify_waiters();
    }

    fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
        }
        self.changed.notify_waiters();
    }

    fn depth(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.records.len() as u64)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn appends_reads_ahead_and_releases_on_ack() {
        let j = Journal::memory(10);
        assert_eq!(j.append(vec![b"a".to_vec(), b"b".to_vec()]).await, 1);
        assert_eq!(j.append(vec![b"c".to_vec()]).await, 3);
        let first = j.read(2).await;
        assert_eq!(first.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
        let second = j.read(10).await;
        assert_eq!(second, vec![(3, b"c".to_vec())]);
        assert_eq!(j.depth(), 3);
        j.ack(2).await;
        assert_eq!(j.depth(), 1);
        j.close();
        assert!(j.read(10).await.is_empty());
    }

    #[tokio::test]
    async fn a_full_journal_makes_the_writer_wait_for_acks() {
        let j = Arc::new(Journal::memory(2));
        j.append(vec![vec![1], vec![2]]).await;
        let writer = tokio::spawn({
            let j = j.clone();
            async move { j.append(vec![vec![3]]).await }
        });
        tokio::task::yield_now().await;
        assert!(!writer.is_finished());
        assert_eq!(j.read(2).await.len(), 2);
        j.ack(1).await;
        let seq = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seq, 3);
    }

    #[tokio::test]
    async fn the_spool_journal_makes_the_same_calls_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let tracker = tokio_util::task::TaskTracker::new();
        let open =
            || crate::spool::Spool::open(tmp.path(), crate::spool::SpoolConfig::new(1 << 20));
        let (spool, _) = open().unwrap();
        let j = Journal::spool(crate::spool::handle::spawn(
            spool,
            &tracker,
            tokio_util::sync::CancellationToken::new(),
        ));
        let first = j
            .append(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
            .await;
        assert!(first > 0);
        assert_eq!(
            j.read(2).await.iter().map(|r| r.0).collect::<Vec<_>>(),
            [first, first + 1]
        );
        j.ack(first).await;
        j.close();
        assert_eq!(j.read(10).await, vec![(first + 2, b"c".to_vec())]);
        assert!(j.read(10).await.is_empty());
        assert_eq!(j.depth(), 2);
        drop(j);
        tracker.close();
        tracker.wait().await;
        // A restart replays what was not acknowledged, under the same sequence numbers.
        let (mut spool, report) = open().unwrap();
        assert_eq!(report.records, 2);
        assert_eq!(
            spool.read(10).unwrap(),
            vec![(first + 1, b"b".to_vec()), (first + 2, b"c".to_vec())]
        );
    }
}
