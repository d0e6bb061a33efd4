//! Spool throughput: append rate for each fsync policy and batch size, drain rate (read and
//! acknowledge), the journal pipeline (writer → journal → reader → ack), and the gateway's
//! delivery path end to end (readings → journal → Event Hub sink → the hub emulator over AMQP
//! with TLS), each with the spool on versus off (the in-memory journal). Prints tables; asserts
//! nothing.
//!
//! ```text
//! cargo run --release --example spool_bench [-- --dir /path/on/the/disk/to/measure]
//! ```
//!
//! Records are 130 bytes, about a reading's JSON. Each cell runs for about a second.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tagbridge::config::gateway::{PartitionKeySpec, Transport};
use tagbridge::reading::{Reading, Value};
use tagbridge::runtime::delivery;
use tagbridge::runtime::journal::Journal;
use tagbridge::sim::hub::{Hub, HubConfig, HubHandle, DEFAULT_KEY_NAME};
use tagbridge::sink::eventhub::amqp::Target;
use tagbridge::sink::eventhub::auth::Credential;
use tagbridge::sink::eventhub::sink::{EventHubSink, SinkOptions};
use tagbridge::sink::eventhub::ConnectionString;
use tagbridge::spool::{handle, FsyncPolicy, Spool, SpoolConfig, WhenFull};

const RECORD: usize = 130;
const CELL: Duration = Duration::from_secs(1);

fn config(fsync: FsyncPolicy) -> SpoolConfig {
    SpoolConfig {
        max_bytes: 4 << 30,
        segment_bytes: 64 << 20,
        max_age: None,
        when_full: WhenFull::DropOldest,
        fsync,
    }
}

fn policies() -> [(&'static str, FsyncPolicy); 3] {
    [
        ("never", FsyncPolicy::Never),
        ("100ms", FsyncPolicy::Interval(Duration::from_millis(100))),
        ("always", FsyncPolicy::Always),
    ]
}

fn record(i: u64) -> Vec<u8> {
    let mut r = format!(
        "{{\"sensor_id\":\"line-{}:temp\",\"timestamp\":\"2026-01-01T00:00:00.000Z\",\"value\":{i}}}",
        i % 100
    )
    .into_bytes();
    r.resize(RECORD, b' ');
    r
}

/// Appends batches for about `CELL`; returns records/s and how many were appended.
fn append_rate(spool: &mut Spool, batch: usize) -> (f64, u64) {
    let start = Instant::now();
    let mut n = 0u64;
    let batch: Vec<Vec<u8>> = (0..batch as u64).map(record).collect();
    while start.elapsed() < CELL {
        n += spool.append(&batch).appended;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

/// Reads and acknowledges everything; returns records/s.
fn drain_rate(spool: &mut Spool) -> f64 {
    spool.rewind();
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let got = match spool.read(4096) {
            Ok(got) => got,
            Err(e) => {
                eprintln!("read failed: {e}");
                break;
            }
        };
        let Some((last, _)) = got.last() else { break };
        n += got.len() as u64;
        if let Err(e) = spool.ack(*last) {
            eprintln!("ack failed: {e}");
            break;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Writer tasks append batches of `batch` while a reader reads and acknowledges, for about
/// `CELL`; returns records/s delivered.
async fn pipeline_rate(journal: Arc<Journal>, writers: usize, batch: usize) -> f64 {
    let start = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (journal, stop) = (journal.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w as u64 * 1_000_000_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let records = (0..batch as u64).map(|k| record(i + k)).collect();
                i += batch as u64;
                journal.append(records).await;
            }
        }));
    }
    let reader = {
        let journal = journal.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let got = journal.read(4096).await;
                let Some((last, _)) = got.last() else { break };
                n += got.len() as u64;
                journal.ack(*last).await;
            }
            n
        })
    };
    tokio::time::sleep(CELL).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    journal.close();
    let n = reader.await.unwrap_or(0);
    n as f64 / start.elapsed().as_secs_f64()
}

fn sink_to(hub: &HubHandle) -> Result<EventHubSink, String> {
    let cs = ConnectionString::parse(&hub.connection_string(DEFAULT_KEY_NAME), None)
        .map_err(|e| e.to_string())?;
    let tls = tagbridge::sink::eventhub::tls::client_config(Some(hub.ca_cert_path()))
        .map_err(|e| e.to_string())?;
    let target =
        Target::for_connection_string(&cs, Some(tls), hub.amqps_addr().port(), Transport::Amqp);
    Ok(EventHubSink::new(
        target,
        Credential::Sas(cs.credential),
        SinkOptions::default(),
    ))
}

/// Readings pushed as fast as the delivery path takes them (batches of 500, as a mapping task
/// sends them) for about 3 s; returns events/s the hub accepted after a 1 s warm-up.
async fn end_to_end_rate(hub: &HubHandle, journal: Arc<Journal>) -> Result<f64, String> {
    let sink = sink_to(hub)?;
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(delivery::run(
        rx,
        journal,
        Arc::new(tagbridge::runtime::last_sent::LastSent::in_memory()),
        sink,
        PartitionKeySpec::None,
        cancel.clone(),
        tagbridge::runtime::supervise::Supervisor::new(cancel.clone()),
    ));
    let tag_map: Arc<str> = "bench".into();
    let sensors: Vec<Arc<str>> = (0..500).map(|i| format!("line-{i}:temp").into()).collect();
    let producer = tokio::spawn(async move {
        let start = Instant::now();
        let mut i = 0i64;
        while start.elapsed() < Duration::from_secs(4) {
            let now = chrono::Utc::now();
            let batch = sensors
                .iter()
                .map(|s| {
                    i += 1;
                    Reading {
                        sensor_id: s.clone(),
                        timestamp: now,
                        value: Value::from(i),
                        extra: "".into(),
                    }
                })
                .collect();
            let tagged = delivery::TaggedReadings {
                tag_map: tag_map.clone(),
                readings: batch,
                received: tokio::time::Instant::now(),
            };
            if tx.send(tagged).await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t0, n0) = (Instant::now(), hub.stats().events);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rate = (hub.stats().events - n0) as f64 / t0.elapsed().as_secs_f64();
    let _ = producer.await;
    cancel.cancel();
    let _ = run.await;
    Ok(rate)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut base: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        if a == "--dir" {
            base = args.next().map(PathBuf::from);
        }
    }
    let holder = match &base {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    };
    let holder = match holder {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cannot make a scratch directory: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "spool in {} (records of {RECORD} bytes, ~{}s per cell)\n",
        holder.path().display(),
        CELL.as_secs()
    );

    println!("| fsync  | batch | append records/s | drain records/s |");
    println!("|--------|------:|-----------------:|----------------:|");
    for (name, policy) in policies() {
        for batch in [1usize, 64, 1024] {
            let dir = holder.path().join(format!("sync-{name}-{batch}"));
            let (mut spool, _) = match Spool::open(&dir, config(policy)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cannot open {}: {e}", dir.display());
                    std::process::exit(1);
                }
            };
            let (append, _) = append_rate(&mut spool, batch);
            let drain = drain_rate(&mut spool);
            println!("| {name:<6} | {batch:>5} | {append:>16.0} | {drain:>15.0} |");
        }
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            std::process::exit(1);
        }
    };
    println!("\nPipeline: writers append batches of 256, one reader reads 4096 and acknowledges.");
    println!("| journal          | writers | delivered records/s |");
    println!("|------------------|--------:|--------------------:|");
    runtime.block_on(async {
        for writers in [1usize, 4] {
            let memory = Arc::new(Journal::memory(1_000_000));
            let rate = pipeline_rate(memory, writers, 256).await;
            println!("| memory (off)     | {writers:>7} | {rate:>19.0} |");
            for (name, policy) in policies() {
                let dir = holder.path().join(format!("pipe-{name}-{writers}"));
                let tracker = tokio_util::task::TaskTracker::new();
                let spool = match Spool::open(&dir, config(policy)) {
                    Ok((s, _)) => s,
                    Err(e) => {
                        eprintln!("cannot open {}: {e}", dir.display());
                        return;
                    }
                };
                let h = handle::spawn(spool, &tracker, tokio_util::sync::CancellationToken::new());
                let journal = Arc::new(Journal::spool(h));
                let rate = pipeline_rate(journal, writers, 256).await;
                println!("| spool, {name:<9} | {writers:>7} | {rate:>19.0} |");
                tracker.close();
                tracker.wait().await;
            }
        }

        println!("\nEnd to end: readings → journal → Event Hub sink → hub emulator (AMQP, TLS, loopback).");
        println!("| journal          | hub accepted readings/s |");
        println!("|------------------|------------------------:|");
        let hub = match Hub::start(HubConfig {
            retain_events: 0,
            ..HubConfig::default()
        })
        .await
        {
            Ok(h) => h,
            Err(e) => {
                eprintln!("cannot start the hub emulator: {e}");
                return;
            }
        };
        let memory = Arc::new(Journal::memory(1_000_000));
        match end_to_end_rate(&hub, memory).await {
            Ok(rate) => println!("| memory (off)     | {rate:>23.0} |"),
            Err(e) => eprintln!("end to end failed: {e}"),
        }
        for (name, policy) in policies() {
            let dir = holder.path().join(format!("e2e-{name}"));
            let tracker = tokio_util::task::TaskTracker::new();
            let spool = match Spool::open(&dir, config(policy)) {
                Ok((s, _)) => s,
                Err(e) => {
                    eprintln!("cannot open {}: {e}", dir.display());
                    return;
                }
            };
            let h = handle::spawn(spool, &tracker, tokio_util::sync::CancellationToken::new());
            match end_to_end_rate(&hub, Arc::new(Journal::spool(h))).await {
                Ok(rate) => println!("| spool, {:<9} | {rate:>23.0} |", name),
                Err(e) => eprintln!("end to end failed: {e}"),
            }
            tracker.close();
            tracker.wait().await;
        }
        hub.shutdown().await;
    });
}
