//! The spool's bytes on disk, with no I/O: segment file names, segment headers, records, the
//! ack file, and the scan that finds where a segment stops being valid.
//!
//! All integers are little-endian. The layouts are in the module doc of [`crate::spool`].
//!
//! Invariants:
//! - A record is accepted only if its length is in range, all its bytes are present, its
//!   CRC32C matches and its sequence number is the one expected next. Anything else ends the
//!   valid part of a segment; [`scan`] then looks for the next valid record after it (a flipped
//!   byte costs one record, not the rest of the segment).
//! - The ack file is all or nothing: a wrong length, magic or CRC makes it unreadable, and the
//!   caller falls back to replaying everything (duplicates, never loss).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `dir/<first, 20 digits>.seg`.
pub(crate) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// The first sequence number in a segment file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The highest sequence number the spool hands out. Numbering starts at 1 and goes up by one a
/// record (plus a reserved block a restart); at a million records a second it takes over
/// 100 000 years to get here. A file name or ack value above it was not written by the spool
/// (a stray or hostile file): it is refused rather than let the numbering wrap.
pub const MAX_SEQ: u64 = 1 << 62;

/// `TBSPOOL1`: the first bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TBSPOOL1";
/// Magic + first sequence number.
pub const SEGMENT_HEADER: usize = 16;
/// Length (u32), CRC32C (u32), sequence number (u64), append time in Unix milliseconds (u64).
pub const RECORD_HEADER: usize = 24;
/// The largest payload a record may have. Readings are hundreds of bytes; this bounds what a
/// corrupt length field can make the reader allocate.
pub const MAX_RECORD: usize = 16 << 20;
/// `TBSPACK1`: the first bytes of the ack file.
pub const ACK_MAGIC: [u8; 8] = *b"TBSPACK1";
/// Magic, acknowledged, reserved, dropped (u64 each), CRC32C (u32).
pub const ACK_FILE_LEN: usize = 8 + 3 * 8 + 4;

/// The header of a segment whose first record has sequence number `first`.
pub fn segment_header(first: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..].copy_from_slice(&first.to_le_bytes());
    h
}

/// The first sequence number a segment header names; `None` if it is not a segment header.
pub fn parse_segment_header(buf: &[u8]) -> Option<u64> {
    let h = buf.get(..SEGMENT_HEADER)?;
    if h[..8] != SEGMENT_MAGIC {
        return None;
    }
    Some(u64_at(h, 8))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn record_crc(len: &[u8], rest: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), rest)
}

/// Appends one record to `out`.
///
/// # Panics
/// If `payload` is longer than [`MAX_RECORD`]; callers refuse such records first.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, time_ms: u64, payload: &[u8]) {
    assert!(payload.len() <= MAX_RECORD, "record larger than MAX_RECORD");
    let len = (payload.len() as u32).to_le_bytes();
    let start = out.len();
    out.extend_from_slice(&len);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = record_crc(&len, &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One record found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub time_ms: u64,
    pub payload: &'a [u8],
    /// Header and payload: where the next record starts.
    pub size: usize,
}

/// What the bytes at the start of a buffer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    Record(RecordRef<'a>),
    /// A plausible record whose bytes are not all there yet (or a torn write).
    Incomplete,
    /// Not a record: the reason.
    Corrupt(&'static str),
}

/// Decodes the record at the start of `buf`, checking its length and CRC.
pub fn decode_record(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < RECORD_HEADER {
        return Decoded::Incomplete;
    }
    let len = u32_at(buf, 0) as usize;
    if len > MAX_RECORD {
        return Decoded::Corrupt("record length out of range");
    }
    let size = RECORD_HEADER + len;
    if buf.len() < size {
        return Decoded::Incomplete;
    }
    if u32_at(buf, 4) != record_crc(&buf[..4], &buf[8..size]) {
        return Decoded::Corrupt("checksum mismatch");
    }
    Decoded::Record(RecordRef {
        seq: u64_at(buf, 8),
        time_ms: u64_at(buf, 16),
        payload: &buf[RECORD_HEADER..size],
        size,
    })
}

/// The header fields of the record at the start of `buf`, without checking the CRC (for
/// walking to a known-good position): `(payload length, seq, time_ms)`.
pub fn peek_header(buf: &[u8]) -> Option<(usize, u64, u64)> {
    if buf.len() < RECORD_HEADER {
        return None;
    }
    Some((u32_at(buf, 0) as usize, u64_at(buf, 8), u64_at(buf, 16)))
}

/// What [`scan`] found in one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Valid records from the start, with consecutive sequence numbers.
    pub records: u64,
    pub first_seq: Option<u64>,
    pub oldest_ms: u64,
    pub newest_ms: u64,
    /// Bytes from the start of the file up to the end of the last valid record.
    pub valid_len: usize,
    /// Why the valid part ended before the end of the buffer.
    pub problem: Option<&'static str>,
    /// The offset of the next valid record after the problem, if one was found.
    pub resync: Option<usize>,
}

/// Scans a whole segment file's bytes (header included); the first record must have sequence
/// number `first`, each next one the following number.
pub fn scan(buf: &[u8], first: u64) -> Scan {
    let mut s = scan_from(buf, SEGMENT_HEADER.min(buf.len()), first);
    if s.problem.is_some() {
        s.resync = resync(buf, s.valid_len + 1, first.saturating_add(s.records));
    }
    s
}

/// Scans from `at` (a record boundary) while records follow with consecutive sequence numbers
/// from `expected`. `valid_len` is where the run ends; `resync` is not looked for.
fn scan_from(buf: &[u8], at: usize, expected: u64) -> Scan {
    let mut s = Scan {
        valid_len: at,
        ..Scan::default()
    };
    let mut expected = expected;
    let mut at = at;
    while at < buf.len() {
        match decode_record(&buf[at..]) {
            Decoded::Record(r) if r.seq == expected => {
                if s.records == 0 {
                    s.first_seq = Some(r.seq);
                    s.oldest_ms = r.time_ms;
                }
                s.records += 1;
                s.newest_ms = r.time_ms;
                expected = expected.saturating_add(1);
                at += r.size;
                s.valid_len = at;
            }
            Decoded::Record(_) => {
                s.problem = Some("sequence number out of order");
                break;
            }
            Decoded::Incomplete => {
                s.problem = Some("torn record at the end");
                break;
            }
            Decoded::Corrupt(why) => {
                s.problem = Some(why);
                break;
            }
        }
    }
    s
}

/// A stretch of valid records with consecutive sequence numbers, found by [`scan_all`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Run {
    /// Byte offset of its first record.
    pub start: usize,
    /// Byte offset just after its last record.
    pub end: usize,
    pub first_seq: u64,
    pub records: u64,
    pub oldest_ms: u64,
    pub newest_ms: u64,
}

/// A damaged stretch found by [`scan_all`]: the bytes `at..next` are lost (`next` is the start
/// of the following run, or the end of the buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub at: usize,
    pub next: usize,
    pub why: &'static str,
}

/// Scans a whole segment in one pass, O(its size): the valid part from the start (the first
/// run, possibly empty), then every later run of valid records after damage, each with
/// sequence numbers above the run before it.
pub fn scan_all(buf: &[u8], first: u64) -> (Vec<Run>, Vec<Damage>) {
    let mut runs = Vec::new();
    let mut damage = Vec::new();
    let mut at = SEGMENT_HEADER.min(buf.len());
    let mut expected = first;
    loop {
        let s = scan_from(buf, at, expected);
        runs.push(Run {
            start: at,
            end: s.valid_len,
            first_seq: s.first_seq.unwrap_or(expected),
            records: s.records,
            oldest_ms: s.oldest_ms,
            newest_ms: s.newest_ms,
        });
        expected = expected.saturating_add(s.records);
        let Some(why) = s.problem else {
            break;
        };
        let next = resync(buf, s.valid_len + 1, expected);
        damage.push(Damage {
            at: s.valid_len,
            next: next.unwrap_or(buf.len()),
            why,
        });
        let Some(next) = next else {
            break;
        };
        let Some((_, seq, _)) = peek_header(&buf[next..]) else {
            break;
        };
        at = next;
        expected = seq;
    }
    (runs, damage)
}

/// The first offset from `from` where a valid record with a sequence number at or after
/// `expected` starts. The cheap checks (length, plausible sequence number) come before the CRC.
fn resync(buf: &[u8], from: usize, expected: u64) -> Option<usize> {
    let end = buf.len().checked_sub(RECORD_HEADER)?;
    // A record is at least RECORD_HEADER bytes, so at most this many can follow.
    let horizon = expected.saturating_add((buf.len() / RECORD_HEADER) as u64 + 1);
    (from..=end).find(|&at| {
        let Some((len, seq, _)) = peek_header(&buf[at..]) else {
            return false;
        };
        len <= MAX_RECORD
            && at + RECORD_HEADER + len <= buf.len()
            && (expected..horizon).contains(&seq)
            && matches!(decode_record(&buf[at..]), Decoded::Record(_))
    })
}

/// The durable part of the spool's state besides the records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckState {
    /// Every record up to this sequence number was acknowledged by the sink.
    pub acked: u64,
    /// No sequence number below this was ever handed out; a restart continues at or after it,
    /// so a record lost in a power cut never has its number (and message id) reused.
    pub reserved: u64,
    /// Records dropped (bounds, age, disk full) over the spool's life.
    pub dropped: u64,
}

pub fn encode_ack(state: &AckState) -> [u8; ACK_FILE_LEN] {
    let mut b = [0u8; ACK_FILE_LEN];
    b[..8].copy_from_slice(&ACK_MAGIC);
    b[8..16].copy_from_slice(&state.acked.to_le_bytes());
    b[16..24].copy_from_slice(&state.reserved.to_le_bytes());
    b[24..32].copy_from_slice(&state.dropped.to_le_bytes());
    let crc = crc32c::crc32c(&b[..32]);
    b[32..].copy_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode_ack(b: &[u8]) -> Option<AckState> {
    if b.len() != ACK_FILE_LEN || b[..8] != ACK_MAGIC || u32_at(b, 32) != crc32c::crc32c(&b[..32]) {
        return None;
    }
    Some(AckState {
        acked: u64_at(b, 8),
        reserved: u64_at(b, 16),
        dropped: u64_at(b, 24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = segment_header(first).to_vec();
        for (i, p) in payloads.iter().enumerate() {
            encode_record(&mut buf, first + i as u64, 1000 + i as u64, p);
        }
        buf
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 99, b"hello");
        assert_eq!(buf.len(), RECORD_HEADER + 5);
        assert_eq!(
            decode_record(&buf),
            Decoded::Record(RecordRef {
                seq: 7,
                time_ms: 99,
                payload: b"hello",
                size: buf.len()
            })
        );
        assert_eq!(decode_record(&buf[..buf.len() - 1]), Decoded::Incomplete);
        assert_eq!(decode_record(&buf[..3]), Decoded::Incomplete);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 2, b"reading");
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode_record(&b), Decoded::Record(r) if r.seq == 1 && r.payload == b"reading"),
                    "flip at {byte}:{bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_huge_length_is_corrupt_not_an_allocation() {
        let mut buf = vec![0xff; RECORD_HEADER];
        buf[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_record(&buf),
            Decoded::Corrupt("record length out of range")
        );
    }

    #[test]
    fn scan_reads_a_clean_segment() {
        let buf = segment(10, &[b"a", b"bb", b"ccc"]);
        let s = scan(&buf, 10);
        assert_eq!(s.records, 3);
        assert_eq!(s.first_seq, Some(10));
        assert_eq!((s.oldest_ms, s.newest_ms), (1000, 1002));
        assert_eq!(s.valid_len, buf.len());
        assert_eq!(s.problem, None);
        assert_eq!(parse_segment_header(&buf), Some(10));
    }

    #[test]
    fn scan_stops_at_a_torn_tail() {
        let buf = segment(1, &[b"one", b"two", b"three"]);
        let ends = [
            SEGMENT_HEADER + 27,
            SEGMENT_HEADER + 54,
            SEGMENT_HEADER + 83,
        ];
        assert_eq!(buf.len(), ends[2]);
        for cut in SEGMENT_HEADER..buf.len() {
            let s = scan(&buf[..cut], 1);
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(s.records, whole as u64, "cut at {cut}");
            let valid = if whole == 0 {
                SEGMENT_HEADER
            } else {
                ends[whole - 1]
            };
            assert_eq!(s.valid_len, valid, "cut at {cut}");
            assert_eq!(s.problem.is_some(), cut != valid, "cut at {cut}");
            assert_eq!(s.resync, None);
        }
    }

    #[test]
    fn scan_resyncs_after_a_flipped_byte() {
        let buf = segment(1, &[b"one", b"two", b"three", b"four"]);
        let mut bad = buf.clone();
        // A byte of the second record's payload.
        bad[SEGMENT_HEADER + 27 + RECORD_HEADER] ^= 0x20;
        let s = scan(&bad, 1);
        assert_eq!(s.records, 1);
        assert_eq!(s.valid_len, SEGMENT_HEADER + 27);
        assert_eq!(s.problem, Some("checksum mismatch"));
        let at = s.resync.expect("the third record is found");
        assert_eq!(at, SEGMENT_HEADER + 54);
        let rest = scan_from(&bad[at..], 3);
        assert_eq!(rest, 2);
    }

    fn scan_from(records: &[u8], first: u64) -> u64 {
        let mut buf = segment_header(first).to_vec();
        buf.extend_from_slice(records);
        scan(&buf, first).records
    }

    #[test]
    fn scan_refuses_a_sequence_gap() {
        let mut buf = segment(1, &[b"a"]);
        encode_record(&mut buf, 3, 0, b"c");
        let s = scan(&buf, 1);
        assert_eq!(s.records, 1);
        assert_eq!(s.problem, Some("sequence number out of order"));
    }

    #[test]
    fn ack_state_round_trips_and_rejects_damage() {
        let st = AckState {
            acked: 5,
            reserved: 1 << 20,
            dropped: 3,
        };
        let b = encode_ack(&st);
        assert_eq!(decode_ack(&b), Some(st));
        for i in 0..b.len() {
            let mut d = b;
            d[i] ^= 1;
            assert_eq!(decode_ack(&d), None, "byte {i}");
        }
        assert_eq!(decode_ack(&b[..20]), None);
    }
}
