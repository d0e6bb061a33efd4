//! Delivery to the Event Hub through the journal (spool):
//!
//! ```text
//! readings ─▶ writer ─append─▶ journal ─read─▶ reader ─Vec<Outgoing>─▶ sink ─acks─▶ journal.ack
//! ```
//! The writer turns each reading into a record (its partition key and its JSON) so that what
//! the journal holds is exactly what will be sent, whatever the configuration is on replay.
//!
//! Shutdown: when the readings channel closes the writer closes the journal; the reader hands
//! the sink everything left and then closes the sink's input; the sink settles what it can
//! within its grace period. Acknowledged records are released; the rest stay in the journal
//! (durable when it is the spool).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::gateway::PartitionKeySpec;
use crate::reading::Reading;
use crate::sink::eventhub::sink::{EventHubSink, Outgoing};
use crate::spool::payload;

use super::journal::{Journal, Record};
use super::last_sent::{Fingerprinter, LastSent};
use super::supervise::Supervisor;

/// Records handed to the sink per read.
const READ_BATCH: usize = 4096;
/// Batches of outgoing events queued for the sink; the reader waits when it is full.
const SINK_QUEUE: usize = 4;
/// How long the writer may take to put the last readings into the journal at shutdown.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Readings of one tag map, as its mapping task hands them over.
#[derive(Debug)]
pub struct TaggedReadings {
    /// The tag map's name (for `partition_key: tag_map`).
    pub tag_map: Arc<str>,
    pub readings: Vec<Reading>,
    /// When the gateway received them from their source: the sink's linger counts from here.
    pub received: Instant,
}

/// When the records of recent appends were received, so the reader can tell the sink (see
/// [`Outgoing::received`]). Bounded: after a long backlog the oldest are forgotten, and those
/// records linger from when they reach the sink, as records replayed after a restart do.
#[derive(Debug, Default)]
struct ReceivedTimes {
    /// `(first seq, last seq, received)` of each append, oldest first.
    appends: VecDeque<(u64, u64, Instant)>,
    /// The append under way (its sequence numbers are known once it returns, but the reader
    /// may see its records before that).
    appending: Option<Instant>,
}

impl ReceivedTimes {
    /// Appends remembered, at most (one per batch of a mapping task).
    const MAX: usize = 4096;

    /// Records received at `received` are being appended (one append at a time).
    fn appending(&mut self, received: Instant) {
        self.appending = Some(received);
    }

    fn appended(&mut self, first: u64, last: u64, received: Instant) {
        self.appending = None;
        if self.appends.len() == Self::MAX {
            self.appends.pop_front();
        }
        self.appends.push_back((first, last, received));
    }

    /// When record `seq` was received. Records are read in order: what is before `seq` is
    /// forgotten.
    fn of(&mut self, seq: u64) -> Option<Instant> {
        while self.appends.front().is_some_and(|&(_, last, _)| last < seq) {
            self.appends.pop_front();
        }
        match self.appends.front() {
            Some(&(first, _, received)) => (first <= seq).then_some(received),
            // After every append this run knows of: the one under way.
            None => self.appending,
        }
    }
}

fn partition_key<'a>(
    spec: &'a PartitionKeySpec,
    tag_map: &'a str,
    reading: &'a Reading,
) -> Option<&'a str> {
    match spec {
        PartitionKeySpec::None => None,
        PartitionKeySpec::SensorId => Some(&reading.sensor_id),
        PartitionKeySpec::TagMap => Some(tag_map),
        PartitionKeySpec::Fixed(key) => Some(key),
    }
}

/// Runs the writer, reader, sink and ack tasks until the readings channel closes and
/// everything is settled (or the sink gives up at `sink_cancel`). Returns the last
/// acknowledged sequence number. A reading that repeats the last one handed to the journal
/// for its sensor (same timestamp and value, see [`LastSent`]) is not appended again.
///
/// Long on purpose: the four tasks (writer, reader, sink, acker) and the channels between
/// them are wired in one place, so the order in which they stop after the sink ends (reader
/// aborted, writer given its grace, acks drained) reads top to bottom.
pub async fn run(
    mut readings: mpsc::Receiver<TaggedReadings>,
    journal: Arc<Journal>,
    last_sent: Arc<LastSent>,
    sink: EventHubSink,
    partition: PartitionKeySpec,
    sink_cancel: CancellationToken,
    supervisor: Supervisor,
) -> Option<u64> {
    let received_times = Arc::new(Mutex::new(ReceivedTimes::default()));
    let writer = {
        let journal = journal.clone();
        let times = received_times.clone();
        let supervisor2 = supervisor.clone();
        supervisor.spawn_untracked("journal writer", async move {
            let mut fingerprinter = Fingerprinter::default();
            while let Some(TaggedReadings {
                tag_map,
                readings: batch,
                received,
            }) = readings.recv().await
            {
                super::supervise::fault_point("journal");
                let mut fingerprints = Vec::with_capacity(batch.len());
                let records = batch
                    .iter()
                    .map(|r| {
                        let key = partition_key(&partition, &tag_map, r);
                        // Sized once: no reallocation while encoding.
                        let mut out =
                            Vec::with_capacity(1 + key.map_or(0, str::len) + r.encoded_len_hint());
                        let span = payload::encode(&mut out, key, r);
                        fingerprints
                            .push(out.get(span).map_or(0, |s| fingerprinter.fingerprint(s)));
                        out
                    })
                    .collect();
                let keys = batch.iter().map(|r| &r.sensor_id).zip(fingerprints);
                let (records, repeats) = last_sent.filter(records, keys);
                if repeats > 0 {
                    tracing::debug!(
                        message = "Readings already sent are not sent again.",
                        repeats
                    );
                }
                if records.is_empty() {
                    continue;
                }
                let appended = records.len() as u64;
                if let Ok(mut times) = times.lock() {
                    times.appending(received);
                }
                match journal.append_checked(records).await {
                    Some(last) => {
                        last_sent.appended(last);
                        if let Ok(mut times) = times.lock() {
                            times.appended((last + 1).saturating_sub(appended), last, received);
                        }
                    }
                    None => {
                        // The spool's task is gone: stop the gateway for a restart (what the
                        // spool holds on disk is sent then) rather than run on without spooling.
                        supervisor2.fail("spool", "the spool task stopped");
                        break;
                    }
                }
            }
            journal.close();
        })
    };
    let (sink_tx, sink_rx) = mpsc::channel::<Vec<Outgoing>>(SINK_QUEUE);
    let reader = {
        let journal = journal.clone();
        supervisor.spawn_untracked("journal reader", async move {
            loop {
                let records = journal.read(READ_BATCH).await;
                if records.is_empty() {
                    break;
                }
                let outgoing = to_outgoing(records, &received_times);
                if sink_tx.send(outgoing).await.is_err() {
                    break;
                }
            }
        })
    };
    // Acks are small and few (one per batch); the sink waits if the journal is slow to take them.
    let (ack_tx, mut ack_rx) = mpsc::channel::<u64>(1024);
    let acker = {
        let journal = journal.clone();
        supervisor.spawn_untracked("journal acker", async move {
            while let Some(seq) = ack_rx.recv().await {
                journal.ack(seq).await;
            }
        })
    };
    let last = sink.run(sink_rx, ack_tx, sink_cancel).await;
    // The sink has ended: stop feeding it (the journal keeps what was not acknowledged).
    reader.abort();
    // A durable journal takes every reading without waiting for the sink; a full in-memory
    // one could wait forever for acks that will not come.
    if tokio::time::timeout(WRITER_GRACE, writer).await.is_err() {
        tracing::warn!(
            message = "Readings still queued for a full in-memory journal are dropped at shutdown."
        );
    }
    let _ = acker.await;
    // What the hub has not acknowledged stays for the next run (with the durable spool).
    tracing::info!(
        message = "Event hub output stopped.",
        left_in_spool = journal.depth(),
        last_acked_seq = last
    );
    last
}

/// Records read from the journal as events for the sink, each with when it was received.
fn to_outgoing(records: Vec<Record>, times: &Mutex<ReceivedTimes>) -> Vec<Outgoing> {
    let mut times = times.lock().ok();
    // Consecutive records mostly share their key: one `Arc` for a run of them.
    let mut last_key: Option<Arc<str>> = None;
    records
        .into_iter()
        .filter_map(|(seq, mut record)| {
            let Some((key, body)) = payload::decode(&record) else {
                tracing::error!(message = "Skipping a malformed spool record.", seq);
                return None;
            };
            let partition_key = key.map(|key| match &last_key {
                Some(last) if **last == *key => last.clone(),
                _ => last_key.insert(Arc::from(key)).clone(),
            });
            // The body in place: the record's buffer without its key prefix.
            let prefix = record.len() - body.len();
            record.drain(..prefix);
            Some(Outgoing {
                seq,
                body: record,
                partition_key,
                received: times.as_mut().and_then(|t| t.of(seq)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn records_are_matched_with_when_their_append_was_received() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut times = ReceivedTimes::default();
        times.appended(10, 12, at(1));
        times.appended(13, 13, at(2));
        times.appended(14, 20, at(3));
        // Replayed from before this run: not known.
        assert_eq!(times.of(9), None);
        assert_eq!(times.of(10), Some(at(1)));
        assert_eq!(times.of(12), Some(at(1)));
        assert_eq!(times.of(13), Some(at(2)));
        assert_eq!(times.of(20), Some(at(3)));
        // Read in order: what was before is forgotten.
        assert_eq!(times.of(21), None);
        assert!(times.appends.is_empty());
        // The reader may see an append's records before the writer knows their numbers.
        times.appending(at(4));
        assert_eq!(times.of(21), Some(at(4)));
        times.appended(21, 30, at(4));
        times.appending(at(5));
        assert_eq!(times.of(30), Some(at(4)));
        assert_eq!(times.of(31), Some(at(5)));
    }

    #[test]
    fn a_long_backlog_forgets_its_oldest_appends() {
        let t0 = Instant::now();
        let mut times = ReceivedTimes::default();
        let appends = ReceivedTimes::MAX as u64 + 10;
        for n in 0..appends {
            times.appended(n * 2 + 1, n * 2 + 2, t0 + Duration::from_millis(n));
        }
        assert_eq!(times.appends.len(), ReceivedTimes::MAX);
        assert_eq!(times.of(1), None);
        let kept = 10 * 2 + 1;
        assert_eq!(times.of(kept), Some(t0 + Duration::from_millis(10)));
    }
}
