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

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::gateway::PartitionKeySpec;
use crate::reading::Reading;
use crate::sink::eventhub::sink::{EventHubSink, Outgoing};
use crate::spool::payload;

use super::journal::Journal;
use super::last_sent::{fingerprint, LastSent};
use super::supervise::Supervisor;

/// Records handed to the sink per read.
const READ_BATCH: usize = 4096;
/// Batches of outgoing events queued for the sink; the reader waits when it is full.
const SINK_QUEUE: usize = 4;
/// How long the writer may take to put the last readings into the journal at shutdown.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Readings of one tag map (its name travels along for `partition_key: tag_map`).
pub type TaggedReadings = (Arc<str>, Vec<Reading>);

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
    let writer = {
        let journal = journal.clone();
        let supervisor2 = supervisor.clone();
        supervisor.spawn_untracked("journal writer", async move {
            while let Some((tag_map, batch)) = readings.recv().await {
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
                        fingerprints.push(out.get(span).map_or(0, fingerprint));
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
                match journal.append_checked(records).await {
                    Some(last) => last_sent.appended(last),
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
                // Consecutive records mostly share their key: one `Arc` for a run of them.
                let mut last_key: Option<Arc<str>> = None;
                let outgoing: Vec<Outgoing> = records
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
                        })
                    })
                    .collect();
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
