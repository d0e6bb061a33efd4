//! Spool recovery time: how long `Spool::open` takes on one segment in which every second
//! record is damaged (a flipped payload byte), for growing segment sizes and each fsync
//! policy. Recovery should grow with the segment's size, not with its square. Prints a table;
//! asserts nothing.
//!
//! ```text
//! cargo run --example spool_recovery [-- --dir /path/on/the/disk/to/measure]
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tagbridge::spool::format::{RECORD_HEADER, SEGMENT_HEADER};
use tagbridge::spool::{FsyncPolicy, Spool, SpoolConfig, WhenFull};

/// Bytes of one record's payload, about a reading's JSON.
const PAYLOAD: usize = 106;

fn config(fsync: FsyncPolicy) -> SpoolConfig {
    SpoolConfig {
        max_bytes: 4 << 30,
        segment_bytes: 64 << 20,
        max_age: None,
        when_full: WhenFull::DropOldest,
        fsync,
    }
}

/// Writes `records` records into one segment of a fresh spool in `dir`, then flips one payload
/// byte in every second record. Returns the segment's size.
fn damaged_spool(dir: &std::path::Path, records: usize) -> u64 {
    let (mut spool, _) = Spool::open(dir, config(FsyncPolicy::Never)).expect("open");
    let batch: Vec<Vec<u8>> = (0..records).map(|_| vec![b'x'; PAYLOAD]).collect();
    spool.append(&batch);
    drop(spool);
    let seg = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let size = RECORD_HEADER + PAYLOAD;
    for i in (1..records).step_by(2) {
        bytes[SEGMENT_HEADER + i * size + RECORD_HEADER + 1] ^= 1;
    }
    std::fs::write(&seg, &bytes).expect("write");
    bytes.len() as u64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    println!("| segment bytes | records | damaged | fsync | open (recovery) | kept |");
    println!("|---:|---:|---:|---|---:|---:|");
    for records in [477usize, 954, 1908, 3816] {
        for (name, fsync) in [
            ("never", FsyncPolicy::Never),
            ("always", FsyncPolicy::Always),
        ] {
            let tmp = match &base {
                Some(b) => tempfile::tempdir_in(b),
                None => tempfile::tempdir(),
            }
            .expect("temp dir");
            let bytes = damaged_spool(tmp.path(), records);
            let started = Instant::now();
            let (spool, report) = Spool::open(tmp.path(), config(fsync)).expect("open");
            let took: Duration = started.elapsed();
            println!(
                "| {bytes} | {records} | {} | {name} | {:.3} s | {} |",
                records / 2,
                took.as_secs_f64(),
                report.records
            );
            drop(spool);
        }
    }
}
