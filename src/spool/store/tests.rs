use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn config(max_bytes: u64, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        max_bytes,
        segment_bytes,
        max_age: None,
        when_full: WhenFull::DropOldest,
        fsync: FsyncPolicy::Never,
    }
}

fn open(dir: &Path, cfg: &SpoolConfig) -> (Spool, RecoveryReport) {
    Spool::open(dir, cfg.clone()).expect("spool opens")
}

fn recs(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("reading-{i}").into_bytes()).collect()
}

fn payloads(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect()
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn appends_reads_acks_and_replays_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 16);
    let (mut s, report) = open(tmp.path(), &cfg);
    assert_eq!(report.records, 0);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let out = s.append(&recs(0..5));
    assert_eq!((out.appended, out.refused, out.evicted), (5, 0, 0));
    let first = out.first_seq.unwrap();
    let got = s.read(3).unwrap();
    assert_eq!(
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        [first, first + 1, first + 2]
    );
    assert_eq!(payloads(&got), ["reading-0", "reading-1", "reading-2"]);
    s.ack(first + 1).unwrap();
    assert_eq!(s.depth(), 3);
    // Read-ahead goes on from where it was; rewind goes back to the first unacknowledged.
    assert_eq!(payloads(&s.read(10).unwrap()), ["reading-3", "reading-4"]);
    assert!(s.read(10).unwrap().is_empty());
    s.rewind();
    assert_eq!(s.read(10).unwrap().len(), 3);
    drop(s);

    let (mut s, report) = open(tmp.path(), &cfg);
    assert_eq!(report.records, 3);
    assert_eq!(report.acked, first + 1);
    assert!(report.next_seq > first + 4, "numbering never goes back");
    assert_eq!(
        payloads(&s.read(10).unwrap()),
        ["reading-2", "reading-3", "reading-4"]
    );
    let again = s.append(&recs(5..6));
    assert!(again.first_seq.unwrap() > first + 4);
    assert_eq!(s.read(10).unwrap().len(), 1);
}

#[test]
fn acknowledged_segments_are_deleted_and_the_active_one_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 200);
    let (mut s, _) = open(tmp.path(), &cfg);
    for i in 0..20 {
        s.append(&recs(i * 3..i * 3 + 3));
    }
    assert!(segment_files(tmp.path()).len() > 5);
    let all = s.read(1000).unwrap();
    assert_eq!(all.len(), 60);
    s.ack(all.last().unwrap().0).unwrap();
    assert_eq!(s.depth(), 0);
    assert_eq!(segment_files(tmp.path()).len(), 1);
    let st = s.status();
    assert_eq!((st.depth, st.segments, st.oldest_age), (0, 1, None));
}

#[test]
fn a_second_process_cannot_open_the_same_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 16);
    let (_s, _) = open(tmp.path(), &cfg);
    assert!(matches!(
        Spool::open(tmp.path(), cfg),
        Err(SpoolError::Locked(_))
    ));
}

#[test]
fn a_torn_tail_is_cut_and_reported_and_the_records_before_it_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 16);
    let (mut s, _) = open(tmp.path(), &cfg);
    s.append(&recs(0..10));
    drop(s);
    let seg = segment_files(tmp.path()).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    // Cut the last record in half, as a power cut mid-write does.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let (mut s, report) = open(tmp.path(), &cfg);
    assert_eq!(report.records, 9);
    assert_eq!(report.bytes_truncated, (RECORD_HEADER + 9 - 10) as u64);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("torn record"),
        "{:?}",
        report.problems
    );
    let got = payloads(&s.read(100).unwrap());
    assert_eq!(
        got,
        (0..9).map(|i| format!("reading-{i}")).collect::<Vec<_>>()
    );
    // The repair is durable: opening again finds nothing wrong.
    drop(s);
    let (_, report) = open(tmp.path(), &cfg);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.records, 9);
}

#[test]
fn a_flipped_byte_costs_one_record_and_the_rest_is_rescued() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 16);
    let (mut s, _) = open(tmp.path(), &cfg);
    s.append(&recs(0..10));
    drop(s);
    let seg = segment_files(tmp.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    // Inside the fourth record's payload ("reading-3").
    let at = SEGMENT_HEADER + 3 * (RECORD_HEADER + 9) + RECORD_HEADER + 2;
    bytes[at] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    let (mut s, report) = open(tmp.path(), &cfg);
    assert_eq!(report.records, 9, "{report:?}");
    assert_eq!(report.bytes_truncated, (RECORD_HEADER + 9) as u64);
    assert!(
        report.problems[0].contains("checksum mismatch"),
        "{:?}",
        report.problems
    );
    let got = payloads(&s.read(100).unwrap());
    let expect: Vec<String> = (0..10)
        .filter(|&i| i != 3)
        .map(|i| format!("reading-{i}"))
        .collect();
    assert_eq!(got, expect);
    drop(s);
    let (_, report) = open(tmp.path(), &cfg);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_segment_damaged_while_open_is_skipped_and_counted_not_a_stall() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &config(1 << 20, 200));
    for i in 0..4 {
        s.append(&recs(i * 5..i * 5 + 5));
    }
    let first = segment_files(tmp.path()).remove(0);
    let in_first = s.segments[0].count;
    let mut bytes = fs::read(&first).unwrap();
    for b in &mut bytes[SEGMENT_HEADER..SEGMENT_HEADER + 30] {
        *b = 0;
    }
    fs::write(&first, &bytes).unwrap();
    let got = s.read(100).unwrap();
    assert_eq!(got.len() as u64, 20 - in_first);
    assert_eq!(s.dropped(), in_first);
    assert_eq!(payloads(&got)[0], format!("reading-{in_first}"));
}

#[test]
fn a_damaged_ack_file_replays_everything_rather_than_lose_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 16);
    let (mut s, _) = open(tmp.path(), &cfg);
    let first = s.append(&recs(0..4)).first_seq.unwrap();
    s.ack(first + 1).unwrap();
    drop(s);
    fs::write(tmp.path().join("ack"), b"garbage").unwrap();
    let (mut s, report) = open(tmp.path(), &cfg);
    assert!(report.problems[0].contains("ack"), "{:?}", report.problems);
    assert_eq!(s.read(10).unwrap().len(), 4);
}

#[test]
fn drop_oldest_keeps_the_newest_and_counts_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(2000, 400);
    let (mut s, _) = open(tmp.path(), &cfg);
    let mut appended = 0;
    let mut counted = 0;
    for i in 0..100 {
        let out = s.append(&recs(i..i + 1));
        appended += out.appended;
        counted += out.evicted + out.refused;
        assert!(s.status().bytes <= 2000);
    }
    assert_eq!(appended, 100);
    let kept = s.read(1000).unwrap();
    assert_eq!(counted, s.dropped());
    assert_eq!(kept.len() as u64 + s.dropped(), 100);
    // What is kept is the newest, in order, with no hole.
    let expect: Vec<String> = (100 - kept.len() as u32..100)
        .map(|i| format!("reading-{i}"))
        .collect();
    assert_eq!(payloads(&kept), expect);
    assert!(kept.len() > 30, "most of the space holds records");
    // The count survives a restart.
    drop(s);
    let (s, _) = open(tmp.path(), &cfg);
    assert_eq!(s.dropped(), 100 - kept.len() as u64);
}

#[test]
fn records_the_sink_holds_are_not_counted_when_their_segment_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &config(2000, 400));
    s.append(&recs(0..5));
    // The sink has these five; the hub is down, nothing is acknowledged.
    let held = s.read(5).unwrap();
    assert_eq!(held.len(), 5);
    let mut appended = 5;
    for i in 5..100 {
        appended += s.append(&recs(i..i + 1)).appended;
    }
    let rest = s.read(1000).unwrap();
    assert!(
        rest[0].0 > held[4].0 + 1,
        "the oldest unread ones were dropped"
    );
    // Delivered (held + rest) and dropped add up to appended, exactly.
    assert_eq!(
        held.len() as u64 + rest.len() as u64 + s.dropped(),
        appended
    );
}

#[test]
fn drop_newest_keeps_the_oldest_and_refuses_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(2000, 400);
    cfg.when_full = WhenFull::DropNewest;
    let (mut s, _) = open(tmp.path(), &cfg);
    let mut refused = 0;
    for i in 0..100 {
        refused += s.append(&recs(i..i + 1)).refused;
    }
    let kept = s.read(1000).unwrap();
    assert_eq!(kept.len() as u64 + refused, 100);
    assert_eq!(s.dropped(), refused);
    let expect: Vec<String> = (0..kept.len() as u32)
        .map(|i| format!("reading-{i}"))
        .collect();
    assert_eq!(payloads(&kept), expect);
    // Acknowledging frees room again.
    s.ack(kept.last().unwrap().0).unwrap();
    let out = s.append(&recs(500..501));
    assert_eq!(out.appended, 1);
}

#[test]
fn a_record_larger_than_the_spool_is_refused_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &config(1000, 400));
    let out = s.append(&[vec![0; 2000], b"small".to_vec()]);
    assert_eq!((out.appended, out.refused), (1, 1));
    assert_eq!(s.dropped(), 1);
}

#[test]
fn records_past_max_age_are_dropped_a_segment_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(1 << 20, 100);
    cfg.max_age = Some(Duration::from_secs(60));
    let (mut s, _) = open(tmp.path(), &cfg);
    s.append(&recs(0..10));
    assert_eq!(s.tick().unwrap(), 0);
    s.clock_shift_ms = 61_000;
    let out = s.append(&recs(10..12));
    assert_eq!(out.evicted, 10);
    assert_eq!(s.dropped(), 10);
    assert_eq!(
        payloads(&s.read(100).unwrap()),
        ["reading-10", "reading-11"]
    );
    // Without appends, the tick ages them out too; these two were read (the sink holds
    // them), so they are not counted.
    s.clock_shift_ms = 200_000;
    assert_eq!(s.tick().unwrap(), 0);
    assert_eq!(s.depth(), 0);
    s.append(&recs(12..13));
    s.clock_shift_ms = 300_000;
    assert_eq!(s.tick().unwrap(), 1);
    assert_eq!(s.dropped(), 11);
}

#[test]
fn a_full_disk_drops_as_the_policy_says_and_leaves_no_partial_record() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(1 << 20, 300);
    cfg.when_full = WhenFull::DropNewest;
    let (mut s, _) = open(tmp.path(), &cfg);
    s.append(&recs(0..3));
    s.fail_writes = Some(io::ErrorKind::StorageFull);
    let out = s.append(&recs(3..6));
    assert_eq!((out.appended, out.refused), (0, 3));
    assert!(out.error.is_some());
    assert_eq!(s.dropped(), 3);
    s.fail_writes = None;
    s.append(&recs(6..7));
    drop(s);
    let (mut s, report) = open(tmp.path(), &cfg);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(
        payloads(&s.read(10).unwrap()),
        ["reading-0", "reading-1", "reading-2", "reading-6"]
    );
}

#[test]
fn a_full_disk_with_drop_oldest_evicts_old_segments_first() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &config(1 << 20, 100));
    for i in 0..6 {
        s.append(&recs(i * 2..i * 2 + 2));
    }
    let before = s.status().segments;
    assert!(before > 2);
    s.fail_writes = Some(io::ErrorKind::StorageFull);
    let out = s.append(&recs(20..21));
    // Every old segment went, then the write still failed: all counted, nothing panicked.
    assert_eq!(out.refused, 1);
    assert_eq!(out.evicted + out.refused, s.dropped());
    assert_eq!(s.status().segments, 1);
}

#[test]
fn inspect_sees_what_the_open_spool_sees() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &config(1 << 20, 200));
    s.append(&recs(0..30));
    let got = s.read(12).unwrap();
    s.ack(got[11].0).unwrap();
    let mine = s.status();
    let theirs = crate::spool::inspect(tmp.path()).unwrap();
    assert_eq!(theirs.depth, 18);
    assert_eq!(
        (
            theirs.depth,
            theirs.bytes,
            theirs.segments,
            theirs.acked,
            theirs.next_seq
        ),
        (
            mine.depth,
            mine.bytes,
            mine.segments,
            mine.acked,
            mine.next_seq
        )
    );
    assert!(theirs.oldest_age.is_some() && mine.oldest_age.is_some());
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    Read(usize),
    /// Acknowledge up to the n-th record read and not yet acknowledged (modulo).
    Ack(usize),
    Rewind,
    Reopen,
    /// Close, write this many bytes of a torn record at the end of the newest segment, open.
    TearTail(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0usize..300, 0..12).prop_map(Op::Append),
        3 => (1usize..20).prop_map(Op::Read),
        2 => (0usize..20).prop_map(Op::Ack),
        1 => Just(Op::Rewind),
        1 => Just(Op::Reopen),
        1 => (1usize..40).prop_map(Op::TearTail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The spool against a `VecDeque`: no unacknowledged record is ever lost, reordered or
    /// renumbered, whatever the appends, reads, acks, reopens and torn tails.
    #[test]
    fn never_loses_nor_reorders_an_unacknowledged_record(ops in prop::collection::vec(op(), 1..60)) {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(1 << 30, 1000);
        let (mut s, _) = open(tmp.path(), &cfg);
        // Unacknowledged records, oldest first, and how many of them were read.
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut read = 0usize;
        let mut last_seq = 0u64;
        let mut counter = 0u32;
        for op in ops {
            match op {
                Op::Append(sizes) => {
                    let batch: Vec<Vec<u8>> = sizes.iter().map(|&n| {
                        counter += 1;
                        let mut p = counter.to_le_bytes().to_vec();
                        p.resize(n.max(4), b'x');
                        p
                    }).collect();
                    let out = s.append(&batch);
                    prop_assert_eq!(out.appended as usize, batch.len());
                    if let Some(first) = out.first_seq {
                        prop_assert!(first > last_seq, "sequence numbers only grow");
                        for (i, p) in batch.into_iter().enumerate() {
                            model.push_back((first + i as u64, p));
                        }
                        last_seq = model.back().unwrap().0;
                    }
                }
                Op::Read(n) => {
                    let got = s.read(n).unwrap();
                    let expect: Vec<_> = model.iter().skip(read).take(n).cloned().collect();
                    prop_assert_eq!(&got, &expect);
                    read += got.len();
                }
                Op::Ack(k) => {
                    if read > 0 {
                        let upto = k % read;
                        s.ack(model[upto].0).unwrap();
                        model.drain(..=upto);
                        read -= upto + 1;
                    }
                }
                Op::Rewind => {
                    s.rewind();
                    read = 0;
                }
                Op::Reopen | Op::TearTail(_) => {
                    drop(s);
                    if let Op::TearTail(n) = op {
                        let seg = segment_files(tmp.path()).pop().unwrap();
                        let mut torn = Vec::new();
                        format::encode_record(&mut torn, last_seq + 1, 0, &[7u8; 40]);
                        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
                        f.write_all(&torn[..n.min(torn.len() - 1)]).unwrap();
                    }
                    let (s2, report) = open(tmp.path(), &cfg);
                    s = s2;
                    prop_assert_eq!(report.records as usize, model.len());
                    if let Op::TearTail(n) = op {
                        prop_assert_eq!(report.bytes_truncated as usize, n.min(RECORD_HEADER + 40 - 1));
                    }
                    read = 0;
                }
            }
            prop_assert_eq!(s.depth() as usize, model.len());
            prop_assert_eq!(s.dropped(), 0);
        }
        // Everything left comes out, in order.
        s.rewind();
        let rest = s.read(100_000).unwrap();
        prop_assert_eq!(rest, model.into_iter().collect::<Vec<_>>());
    }

    /// With a tiny bound, whatever is kept is in order and everything else is counted.
    #[test]
    fn bounded_spools_keep_order_and_count_every_drop(
        sizes in prop::collection::vec(prop::collection::vec(0usize..200, 1..6), 1..80),
        newest in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(3000, 500);
        if newest { cfg.when_full = WhenFull::DropNewest; }
        let (mut s, _) = open(tmp.path(), &cfg);
        let mut total = 0u64;
        for batch in sizes {
            let batch: Vec<Vec<u8>> = batch.into_iter().map(|n| {
                total += 1;
                let mut p = (total as u32).to_le_bytes().to_vec();
                p.resize(n.max(4), 0);
                p
            }).collect();
            s.append(&batch);
            prop_assert!(s.status().bytes <= 3000);
        }
        let kept = s.read(100_000).unwrap();
        prop_assert_eq!(kept.len() as u64 + s.dropped(), total);
        let ids: Vec<u32> = kept.iter().map(|(_, p)| u32::from_le_bytes([p[0], p[1], p[2], p[3]])).collect();
        prop_assert!(ids.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(kept.windows(2).all(|w| w[0].0 < w[1].0));
    }
}

#[test]
fn a_segment_named_near_u64_max_is_quarantined_not_a_wrap() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 16);
    let (mut s, _) = open(tmp.path(), &cfg);
    s.append(&recs(0..3));
    drop(s);
    // Not something the spool could have written: numbering would wrap at the next record.
    let hostile = tmp.path().join(format!("{:020}.seg", u64::MAX));
    fs::write(&hostile, format::segment_header(u64::MAX)).unwrap();
    let (mut s, report) = open(tmp.path(), &cfg);
    assert!(report.next_seq < 1 << 40, "{report:?}");
    assert!(
        report.problems.iter().any(|p| p.contains("quarantined")),
        "{:?}",
        report.problems
    );
    assert!(!hostile.exists());
    assert!(tmp
        .path()
        .join(format!("{:020}.seg.quarantined", u64::MAX))
        .exists());
    s.append(&recs(3..6));
    let got = payloads(&s.read(100).unwrap());
    let expect: Vec<String> = (0..6).map(|i| format!("reading-{i}")).collect();
    assert_eq!(got, expect);
    assert_eq!(s.status().quarantined, 1);
    drop(s);
    let (mut s, _) = open(tmp.path(), &cfg);
    assert_eq!(payloads(&s.read(100).unwrap()), expect);
    assert_eq!(crate::spool::inspect(tmp.path()).unwrap().depth, 6);
}

#[test]
fn an_ack_value_near_u64_max_is_refused_and_everything_replayed() {
    let cfg = config(1 << 20, 1 << 16);
    for acked in [u64::MAX, u64::MAX - 3, format::MAX_SEQ + 1] {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, _) = open(tmp.path(), &cfg);
        s.append(&recs(0..4));
        drop(s);
        let state = AckState {
            acked,
            reserved: 10,
            dropped: 7,
        };
        fs::write(tmp.path().join("ack"), format::encode_ack(&state)).unwrap();
        let st = crate::spool::inspect(tmp.path()).unwrap();
        assert_eq!(st.depth, 4, "{st:?}");
        assert_eq!(st.quarantined, 1, "{st:?}");
        let (mut s, report) = open(tmp.path(), &cfg);
        assert!(
            report.problems.iter().any(|p| p.contains("quarantined")),
            "{:?}",
            report.problems
        );
        assert!(report.next_seq < 1 << 40, "{report:?}");
        assert_eq!(s.dropped(), 7);
        assert_eq!(s.read(10).unwrap().len(), 4);
        s.append(&recs(10..11));
        assert_eq!(s.read(10).unwrap().len(), 1);
        drop(s);
        let (mut s, _) = open(tmp.path(), &cfg);
        assert_eq!(s.read(10).unwrap().len(), 5);
    }
}

#[test]
fn every_second_record_damaged_is_recovered_in_one_pass_keeping_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 16);
    let (mut s, _) = open(tmp.path(), &cfg);
    s.append(&recs(0..40));
    drop(s);
    let seg = segment_files(tmp.path()).remove(0);
    let mut bytes = fs::read(&seg).unwrap();
    // "reading-N" is 9 bytes for N < 10, then 10.
    let mut at = SEGMENT_HEADER;
    for i in 0..40 {
        let len = format!("reading-{i}").len();
        if i % 2 == 1 {
            bytes[at + RECORD_HEADER + 1] ^= 0x01;
        }
        at += RECORD_HEADER + len;
    }
    fs::write(&seg, &bytes).unwrap();
    let (mut s, report) = open(tmp.path(), &cfg);
    // One line for the file, not one per damaged spot.
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("20 damaged spots"),
        "{:?}",
        report.problems
    );
    assert_eq!(report.records, 20, "{report:?}");
    let got = payloads(&s.read(100).unwrap());
    let expect: Vec<String> = (0..40)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("reading-{i}"))
        .collect();
    assert_eq!(got, expect);
    drop(s);
    let (mut s, report) = open(tmp.path(), &cfg);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(payloads(&s.read(100).unwrap()), expect);
}

/// One kind of damage done to a closed spool's directory.
#[derive(Debug, Clone)]
enum Damage {
    /// Flip bits of one byte in the records area of a segment (chosen by index, wrapped).
    Flip { file: usize, at: usize, mask: u8 },
    /// Cut a segment to a length (wrapped into its records area).
    Truncate { file: usize, at: usize },
    /// A file that is not the spool's, named like a segment or not, holding random bytes.
    Junk { name: String, bytes: Vec<u8> },
    /// A segment renamed to something that is not a segment name.
    Rename { file: usize, to: String },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<usize>(), 1u8..=255).prop_map(|(file, at, mask)| Damage::Flip {
            file,
            at,
            mask
        }),
        (any::<usize>(), any::<usize>()).prop_map(|(file, at)| Damage::Truncate { file, at }),
        (
            prop_oneof![
                Just("7.seg".to_string()),
                Just("18446744073709551615.seg".to_string()),
                Just("x.seg".to_string()),
                Just("notes.txt".to_string()),
                Just("ack.tmp".to_string()),
            ],
            prop::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(name, bytes)| Damage::Junk { name, bytes }),
        (
            any::<usize>(),
            prop_oneof![Just("old.seg.bak"), Just("copy"), Just("1x.seg")]
        )
            .prop_map(|(file, to)| Damage::Rename {
                file,
                to: to.to_string()
            }),
    ]
}

/// Where each record sits on disk: (segment file, byte range, payload).
fn layout(dir: &Path) -> Vec<(std::path::PathBuf, std::ops::Range<usize>, Vec<u8>)> {
    let mut out = Vec::new();
    for seg in segment_files(dir) {
        let bytes = fs::read(&seg).unwrap();
        let mut at = SEGMENT_HEADER;
        while let Some(format::Decoded::Record(r)) = bytes.get(at..).map(format::decode_record) {
            let size = RECORD_HEADER + r.payload.len();
            out.push((seg.clone(), at..at + size, r.payload.to_vec()));
            at += size;
        }
    }
    out
}

/// Cases for the damage property: 64 in `cargo test`; `TAGBRIDGE_FUZZ_CASES=100000 cargo test
/// --lib spool::store::tests::damage` runs it as long as wanted.
fn damage_cases() -> u32 {
    std::env::var("TAGBRIDGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: damage_cases(), ..ProptestConfig::default() })]

    /// Damage to a closed spool costs exactly the damaged records: the spool opens without a
    /// panic, delivers only records that were written, in order, and every record whose bytes
    /// and file were left alone.
    #[test]
    fn damage_costs_only_the_damaged_records(
        n in 1u32..120,
        pad in 0usize..40,
        damages in prop::collection::vec(damage(), 1..4),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(1 << 20, 700);
        let written: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("r{i:04}:{}", "x".repeat(pad)).into_bytes())
            .collect();
        let (mut s, _) = open(tmp.path(), &cfg);
        for chunk in written.chunks(7) {
            s.append(chunk);
        }
        drop(s);
        let before = layout(tmp.path());
        let files = segment_files(tmp.path());
        // Records that a damage touched: their bytes, or their whole file for a rename.
        let mut hit: Vec<bool> = vec![false; before.len()];
        for d in &damages {
            match d {
                Damage::Flip { file, at, mask } => {
                    let f = &files[file % files.len()];
                    // Gone when an earlier damage renamed it.
                    let Ok(mut bytes) = fs::read(f) else { continue };
                    if bytes.len() <= SEGMENT_HEADER { continue; }
                    let at = SEGMENT_HEADER + at % (bytes.len() - SEGMENT_HEADER);
                    bytes[at] ^= mask;
                    fs::write(f, &bytes).unwrap();
                    for (i, (p, range, _)) in before.iter().enumerate() {
                        hit[i] |= p == f && range.contains(&at);
                    }
                }
                Damage::Truncate { file, at } => {
                    let f = &files[file % files.len()];
                    let Ok(len) = fs::metadata(f).map(|m| m.len() as usize) else { continue };
                    if len <= SEGMENT_HEADER { continue; }
                    let at = SEGMENT_HEADER + at % (len - SEGMENT_HEADER);
                    OpenOptions::new().write(true).open(f).unwrap().set_len(at as u64).unwrap();
                    for (i, (p, range, _)) in before.iter().enumerate() {
                        hit[i] |= p == f && range.end > at;
                    }
                }
                Damage::Junk { name, bytes } => {
                    let path = tmp.path().join(name);
                    if !path.exists() {
                        fs::write(path, bytes).unwrap();
                    }
                }
                Damage::Rename { file, to } => {
                    let f = &files[file % files.len()];
                    if f.exists() {
                        fs::rename(f, tmp.path().join(to)).unwrap();
                        for (i, (p, _, _)) in before.iter().enumerate() {
                            hit[i] |= p == f;
                        }
                    }
                }
            }
        }
        let (mut s, _) = open(tmp.path(), &cfg);
        let mut got = Vec::new();
        loop {
            let batch = s.read(50).unwrap();
            if batch.is_empty() { break; }
            got.extend(batch.into_iter().map(|(_, p)| p));
        }
        // Only what was written, in the order it was written.
        let index = |p: &Vec<u8>| written.iter().position(|w| w == p);
        let positions: Vec<Option<usize>> = got.iter().map(index).collect();
        prop_assert!(positions.iter().all(Option::is_some), "a record that was never written came back");
        let positions: Vec<usize> = positions.into_iter().flatten().collect();
        prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of order or twice: {positions:?}");
        // Everything left alone came back.
        for (i, (_, _, payload)) in before.iter().enumerate() {
            if !hit[i] {
                prop_assert!(got.contains(payload), "lost an undamaged record {}", String::from_utf8_lossy(payload));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The age of the oldest unacknowledged record is that record's, however reads and
    /// acknowledgements interleave (status walks from where it last looked or from a read).
    #[test]
    fn status_reports_the_age_of_the_first_unacknowledged_record(
        steps in prop::collection::vec((1usize..9, 0u64..9, any::<bool>()), 1..30),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, _) = open(tmp.path(), &config(1 << 20, 1024));
        // Record i is appended i seconds after record 0.
        let mut first = None;
        for i in 0..60u32 {
            s.clock_shift_ms = u64::from(i) * 1000;
            let out = s.append(&recs(i..i + 1));
            first = first.or(out.first_seq);
        }
        let first = first.unwrap();
        s.clock_shift_ms = 100_000;
        let mut acked = first - 1;
        for (read, ack, look) in steps {
            let got = s.read(read).unwrap();
            let read_to = got.last().map_or(acked, |r| r.0);
            acked = (acked + ack).min(read_to.max(acked));
            s.ack(acked).unwrap();
            if !look {
                continue;
            }
            let age = s.status().oldest_age.map(|a| a.as_millis() as u64);
            let oldest = acked + 1 - first;
            if oldest >= 60 {
                prop_assert_eq!(age, None);
            } else {
                let want = 100_000 - oldest * 1000;
                let age = age.expect("records are unacknowledged");
                prop_assert!((want..want + 900).contains(&age), "age {} for record {}", age, oldest);
            }
        }
    }
}
