//! The async face of the spool: one task owns the [`Spool`] and its files; everyone else sends
//! it commands over a bounded channel, so no async task ever blocks on disk I/O.
//!
//! ```text
//! writer ─Append─┐                       ┌─ spawn_blocking: every queued command,
//! reader ─Read───┼─▶ command queue ─▶ task ─┤   then one commit (group commit: one fsync)
//! acker ─Ack─────┘     (bounded)          └─ replies: append outcomes, then waiting reads
//! ```
//!
//! Invariants:
//! - Appends are answered only after the commit of their group, so with `fsync: always` an
//!   append that returned is on the disk, and a reader never sees a record before it is as
//!   durable as the policy promises.
//! - A read waits (parked in the task) until there is a record to hand out; it gets an empty
//!   answer only once the handle was closed (or the task stopped) and everything was read. A
//!   reader that went away before taking its records gives them back (`unread`).
//! - Shutdown: when every handle is dropped or `cancel` fires, the task processes what is
//!   queued, commits, syncs (unless `fsync: never`) and ends; the tracker sees it end.
//! - Drops are logged at most every ten seconds, with the count since the last line.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::status::SpoolStatus;
use super::{AppendOutcome, FsyncPolicy, Record, Spool, SpoolError};

/// Commands queued for the spool task; appenders, readers and ackers wait when it is full
/// (the task is busy with the disk).
const COMMAND_QUEUE: usize = 256;
/// Commands handled in one group (one commit).
const MAX_GROUP: usize = 256;
/// Age limits, status, and retries of reads that failed.
const TICK: Duration = Duration::from_secs(1);
/// Drops and errors are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

enum Command {
    Append(Vec<Vec<u8>>, oneshot::Sender<AppendOutcome>),
    Read(usize, oneshot::Sender<Vec<Record>>),
    Ack(u64),
    Rewind,
    /// Nothing to do but look at `closed`.
    Wake,
}

struct Shared {
    status: Mutex<SpoolStatus>,
    depth: AtomicU64,
    closed: AtomicBool,
}

/// A handle on a spool owned by a task. Cloning it is cheap; the task ends when the last
/// clone is dropped.
#[derive(Clone)]
pub struct SpoolHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// Starts the task that owns `spool`.
pub fn spawn(mut spool: Spool, tracker: &TaskTracker, cancel: CancellationToken) -> SpoolHandle {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let status = spool.status();
    let shared = Arc::new(Shared {
        depth: AtomicU64::new(status.depth),
        status: Mutex::new(status),
        closed: AtomicBool::new(false),
    });
    let worker = Worker {
        shared: shared.clone(),
        logged_dropped: spool.dropped(),
        spool,
        parked: VecDeque::new(),
        last_log: None,
        last_status: Instant::now(),
    };
    tracker.spawn(run(worker, rx, shared.clone(), cancel));
    SpoolHandle { tx, shared }
}

fn stopped(n: usize) -> AppendOutcome {
    AppendOutcome {
        refused: n as u64,
        error: Some(SpoolError::Stopped),
        ..AppendOutcome::default()
    }
}

impl SpoolHandle {
    /// Appends records; the outcome says what was stored, refused and evicted. Never waits
    /// for the sink: a full spool drops as configured.
    pub async fn append(&self, records: Vec<Vec<u8>>) -> AppendOutcome {
        let n = records.len();
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Command::Append(records, reply)).await.is_err() {
            return stopped(n);
        }
        answer.await.unwrap_or_else(|_| stopped(n))
    }

    /// Up to `max` records after the last one read, waiting until there is one; empty once
    /// the handle is closed and everything was read, or if the task stopped.
    pub async fn read(&self, max: usize) -> Vec<Record> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Command::Read(max, reply)).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Releases every record up to `upto`.
    pub async fn ack(&self, upto: u64) {
        let _ = self.tx.send(Command::Ack(upto)).await;
    }

    /// The next read starts again at the first unacknowledged record.
    pub async fn rewind(&self) {
        let _ = self.tx.send(Command::Rewind).await;
    }

    /// No more appends: readers get what is left, then empty answers.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        // If the queue is full the task is busy and looks at `closed` after this group.
        let _ = self.tx.try_send(Command::Wake);
    }

    /// Records not yet acknowledged.
    pub fn depth(&self) -> u64 {
        self.shared.depth.load(Ordering::Relaxed)
    }

    /// The status as of the last second or so.
    pub fn status(&self) -> SpoolStatus {
        self.shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

struct Worker {
    spool: Spool,
    shared: Arc<Shared>,
    /// Reads waiting for records, in arrival order.
    parked: VecDeque<(usize, oneshot::Sender<Vec<Record>>)>,
    /// `dropped` as of the last log line.
    logged_dropped: u64,
    last_log: Option<Instant>,
    last_status: Instant,
}

async fn run(
    mut worker: Worker,
    mut rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = worker.spool.sync_due_in();
        let mut group = Vec::new();
        tokio::select! {
            // Stop: what is queued is handled below, then the final sync.
            _ = cancel.cancelled() => break,
            cmd = rx.recv() => match cmd {
                Some(cmd) => group.push(cmd),
                // Every handle is gone.
                None => break,
            },
            // An interval fsync is due.
            _ = tokio::time::sleep(due.unwrap_or(TICK)), if due.is_some() => {}
            // Age limits, status, retrying reads after an I/O error.
            _ = tick.tick() => {}
        }
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(cmd) => group.push(cmd),
                Err(_) => break,
            }
        }
        let closed = shared.closed.load(Ordering::Acquire);
        worker = match tokio::task::spawn_blocking(move || {
            worker.process(group, closed);
            worker.publish(false);
            worker
        })
        .await
        {
            Ok(w) => w,
            Err(error) => {
                tracing::error!(message = "The spool task failed; the spool stops.", %error);
                return;
            }
        };
    }
    rx.close();
    let mut group = Vec::new();
    while let Ok(cmd) = rx.try_recv() {
        group.push(cmd);
    }
    let _ = tokio::task::spawn_blocking(move || {
        worker.process(group, true);
        worker.finish();
        worker.publish(true);
    })
    .await;
}

impl Worker {
    fn process(&mut self, group: Vec<Command>, closed: bool) {
        let mut answers = Vec::new();
        for cmd in group {
            match cmd {
                Command::Append(records, reply) => {
                    answers.push((self.spool.append_nosync(&records), reply));
                }
                Command::Read(max, reply) => self.parked.push_back((max, reply)),
                Command::Ack(upto) => self.spool.ack_nosync(upto),
                Command::Rewind => self.spool.rewind(),
                Command::Wake => {}
            }
        }
        // One commit for the whole group.
        let committed = self.spool.tick();
        // Depth first, so that whoever gets an answer sees the depth that goes with it.
        self.shared
            .depth
            .store(self.spool.depth(), Ordering::Relaxed);
        let mut error = committed.err().map(|e| e.to_string());
        for (outcome, reply) in answers {
            if let Some(e) = &outcome.error {
                error.get_or_insert_with(|| e.to_string());
            }
            let _ = reply.send(outcome);
        }
        self.log(error);
        self.serve_reads(closed);
    }

    fn serve_reads(&mut self, closed: bool) {
        while let Some((max, reply)) = self.parked.pop_front() {
            if reply.is_closed() {
                continue;
            }
            if !self.spool.has_unread() {
                if closed {
                    let _ = reply.send(Vec::new());
                    continue;
                }
                self.parked.push_front((max, reply));
                return;
            }
            match self.spool.read(max) {
                Ok(records) if records.is_empty() => {
                    // Everything left was damaged and skipped.
                    self.parked.push_front((max, reply));
                }
                Ok(records) => {
                    if let Err(records) = reply.send(records) {
                        if let Some((seq, _)) = records.first() {
                            self.spool.unread(*seq);
                        }
                    }
                }
                Err(e) => {
                    // Tried again at the next tick.
                    self.parked.push_front((max, reply));
                    self.log(Some(e.to_string()));
                    return;
                }
            }
        }
    }

    /// Logs drops since the last line and an error, at most every [`LOG_EVERY`].
    fn log(&mut self, error: Option<String>) {
        let dropped = self.spool.dropped() - self.logged_dropped;
        if (dropped == 0 && error.is_none())
            || self.last_log.is_some_and(|t| t.elapsed() < LOG_EVERY)
        {
            return;
        }
        self.last_log = Some(Instant::now());
        self.logged_dropped = self.spool.dropped();
        let policy = match self.spool.config().when_full {
            super::WhenFull::DropOldest => "drop_oldest",
            super::WhenFull::DropNewest => "drop_newest",
        };
        match error {
            Some(error) => tracing::warn!(
                message = "Spool error; readings may be dropped.",
                %error,
                dropped,
                total_dropped = self.logged_dropped,
                policy
            ),
            None => tracing::warn!(
                message = "Spool full or past max_age: readings dropped.",
                dropped,
                total_dropped = self.logged_dropped,
                policy
            ),
        }
    }

    fn finish(&mut self) {
        if self.spool.config().fsync != FsyncPolicy::Never {
            if let Err(error) = self.spool.sync() {
                tracing::error!(message = "Final spool fsync failed.", %error);
            }
        } else if let Err(error) = self.spool.commit() {
            tracing::error!(message = "Final spool commit failed.", %error);
        }
        // Unlogged drops get their line now.
        self.last_log = None;
        self.log(None);
        let status = self.spool.status();
        tracing::info!(
            message = "Spool closed.",
            depth = status.depth,
            bytes = status.bytes,
            dropped = status.dropped
        );
    }

    /// Shares depth (always) and the status (every [`TICK`]; it may read the disk).
    fn publish(&mut self, force: bool) {
        let shared = &self.shared;
        shared.depth.store(self.spool.depth(), Ordering::Relaxed);
        if force || self.last_status.elapsed() >= TICK {
            self.last_status = Instant::now();
            let status = self.spool.status();
            if let Ok(mut s) = shared.status.lock() {
                *s = status;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{SpoolConfig, WhenFull};

    fn open(dir: &std::path::Path) -> Spool {
        let cfg = SpoolConfig {
            max_bytes: 1 << 20,
            segment_bytes: 4096,
            max_age: None,
            when_full: WhenFull::DropOldest,
            fsync: FsyncPolicy::Always,
        };
        Spool::open(dir, cfg).expect("opens").0
    }

    #[tokio::test]
    async fn a_read_waits_for_an_append_and_close_ends_reading() {
        let tmp = tempfile::tempdir().unwrap();
        let tracker = TaskTracker::new();
        let h = spawn(open(tmp.path()), &tracker, CancellationToken::new());
        let reader = tokio::spawn({
            let h = h.clone();
            async move { h.read(10).await }
        });
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        let out = h.append(vec![b"a".to_vec(), b"b".to_vec()]).await;
        assert_eq!(out.appended, 2);
        let first = out.first_seq.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            vec![(first, b"a".to_vec()), (first + 1, b"b".to_vec())]
        );
        assert_eq!(h.depth(), 2);
        h.ack(first).await;
        h.close();
        assert!(h.read(10).await.is_empty());
        // The ack was applied before the close took effect: one record left, durably.
        drop(h);
        tracker.close();
        tracker.wait().await;
        let st = crate::spool::inspect(tmp.path()).unwrap();
        assert_eq!((st.depth, st.acked), (1, first));
    }

    #[tokio::test]
    async fn a_rewind_hands_out_the_unacknowledged_again() {
        let tmp = tempfile::tempdir().unwrap();
        let tracker = TaskTracker::new();
        let h = spawn(open(tmp.path()), &tracker, CancellationToken::new());
        let first = h
            .append(vec![vec![1], vec![2], vec![3]])
            .await
            .first_seq
            .unwrap();
        assert_eq!(h.read(10).await.len(), 3);
        h.ack(first).await;
        h.rewind().await;
        let again = h.read(10).await;
        assert_eq!(
            again.iter().map(|r| r.0).collect::<Vec<_>>(),
            [first + 1, first + 2]
        );
    }

    #[tokio::test]
    async fn cancel_stops_the_task_and_the_handle_reports_it() {
        let tmp = tempfile::tempdir().unwrap();
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let h = spawn(open(tmp.path()), &tracker, cancel.clone());
        h.append(vec![vec![9]]).await;
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        let out = h.append(vec![vec![1]]).await;
        assert!(matches!(out.error, Some(SpoolError::Stopped)));
        assert_eq!(out.refused, 1);
        assert!(h.read(1).await.is_empty());
        // The files were released: the spool opens again with its record.
        let (_, report) = Spool::open(tmp.path(), SpoolConfig::new(1 << 20)).unwrap();
        assert_eq!(report.records, 1);
    }
}
