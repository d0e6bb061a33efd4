//! What the gateway last handed to the journal, per `sensor_id`: the fingerprint of its
//! `(timestamp, value)`. A reading equal to it is a duplicate and is not sent again: the initial
//! notification of an OPC UA monitored item after a reconnect, a resubscription, a tag-map
//! reload or a restart repeats the value (same source timestamp) already delivered.
//!
//! It lives above the per-tag-map units (a reload keeps it) and survives restarts:
//! - at a graceful stop it is saved as `last_sent` in the spool directory;
//! - every [`CHECKPOINT_EVERY`] while it changes it is saved again, so a `kill -9` loses at most
//!   that much of it;
//! - at start the file is loaded, then every record still in the spool's segment files (sent or
//!   not) is folded in: those were handed to the journal too; the result is saved at once.
//! - the spool deletes an acknowledged segment only once a saved file covers its records: it
//!   holds them behind a [`ReleaseFence`] that a save moves to the last sequence number handed
//!   to the journal before the save's snapshot. Without it a segment released between two
//!   checkpoints would take the only trace of its readings with it, and after a `kill -9` an
//!   acknowledged reading could be sent again (issue 13).
//!
//! Memory: one entry per sensor, the `sensor_id` shared with the tag map's plan plus 8 bytes
//! (about 60 bytes with the table's overhead: 6 MB for 100 000 tags).
//!
//! File format: `tagbridge-last-sent 1\n`, then per sensor `[len: u32 LE][sensor_id][fp: u64 LE]`,
//! then `[count: u64 LE][check: u64 LE]` (FNV-1a of everything before). A file that does not
//! check out is ignored with a warning (the spool scan still covers what was not acknowledged).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::spool::format::{decode_record, Decoded, SEGMENT_HEADER};
use crate::spool::payload;
use crate::spool::ReleaseFence;

/// How often a changed memory is saved while running.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
const FILE: &str = "last_sent";
const MAGIC: &[u8] = b"tagbridge-last-sent 1\n";

/// The memory, shared by the writer of the journal and the checkpoint task.
#[derive(Debug, Default)]
pub struct LastSent {
    map: Mutex<Memory>,
    dirty: AtomicBool,
    /// Where it is saved; `None`: memory only.
    file: Option<PathBuf>,
    /// The last spool sequence number whose reading went through [`LastSent::filter`] (set by
    /// the writer after each append).
    appended: AtomicU64,
    /// Moved to `appended` (as read before a save's snapshot) once that save is on disk.
    fence: ReleaseFence,
}

/// The last fingerprint per sensor_id. The standard, per-process keyed hasher: event readings
/// build their sensor_id from fields the OPC UA server sends (`{SourceName}`, …), so the keys
/// can be chosen by a peer, and an unkeyed hash would let it pile them into one bucket. (A
/// multiply-rotate hash saved about 1.4 % of the gateway's CPU at 100 000 tags, but its
/// collisions can be built without knowing any seed.)
type Memory = HashMap<Arc<str>, u64>;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a from state `h`: stable across builds and versions (the fingerprints are saved).
const fn fnv_from(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h = (h ^ bytes[i] as u64).wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

fn fnv(bytes: &[u8]) -> u64 {
    fnv_from(FNV_OFFSET, bytes)
}

/// Every fingerprinted span starts with these bytes; FNV-1a's state after them is a constant.
const SPAN_HEAD: &[u8] = b",\"timestamp\":\"";
const AFTER_HEAD: u64 = fnv_from(FNV_OFFSET, SPAN_HEAD);

/// The fingerprint of a reading's `,"timestamp":…,"value":…` members as encoded (the span
/// [`crate::reading::Reading::write_json_marked`] returns). The same value as `fnv` over the
/// span, which the start-up scan computes; the constant head is not hashed again per reading.
pub fn fingerprint(span: &[u8]) -> u64 {
    match span.strip_prefix(SPAN_HEAD) {
        Some(rest) => fnv_from(AFTER_HEAD, rest),
        None => fnv(span),
    }
}

/// [`fingerprint`], remembering the hash of the last span's timestamp: the readings of one
/// Modbus response share theirs, and those of one OPC UA publish mostly do (to the
/// millisecond). FNV-1a hashes a byte at a time, each step waiting for the one before, so the
/// ~34 bytes of `2025-08-19T08:30:00.000Z","value":` were most of the work; a span that starts
/// with the remembered bytes continues from the state after them (the same result: FNV-1a of
/// a concatenation is FNV-1a of its second part from the state after its first).
#[derive(Debug, Default)]
pub struct Fingerprinter {
    /// The bytes after [`SPAN_HEAD`] up to and including `","value":` of a recent span.
    head: Vec<u8>,
    /// FNV-1a's state after [`SPAN_HEAD`] and `head`.
    state: u64,
}

impl Fingerprinter {
    /// Equal to [`fingerprint`]`(span)`.
    pub fn fingerprint(&mut self, span: &[u8]) -> u64 {
        const VALUE_KEY: &[u8] = b"\",\"value\":";
        let Some(rest) = span.strip_prefix(SPAN_HEAD) else {
            return fnv(span);
        };
        if !self.head.is_empty() && rest.starts_with(&self.head) {
            return fnv_from(self.state, &rest[self.head.len()..]);
        }
        // A timestamp is written without escapes: its string ends at the first quote.
        let end = rest
            .iter()
            .position(|&b| b == b'"')
            .map(|quote| quote + VALUE_KEY.len())
            .filter(|&end| rest.get(end - VALUE_KEY.len()..end) == Some(VALUE_KEY));
        let Some(end) = end else {
            return fnv_from(AFTER_HEAD, rest);
        };
        self.head.clear();
        self.head.extend_from_slice(&rest[..end]);
        self.state = fnv_from(AFTER_HEAD, &self.head);
        fnv_from(self.state, &rest[end..])
    }
}

/// The sensor and the [`fingerprint`] of an encoded reading (the JSON
/// [`crate::reading::Reading::write_json`] writes), found by parsing it: for the records read
/// back from the spool at start; `None` if it is not one.
pub fn identity(body: &[u8]) -> Option<(String, u64)> {
    let rest = body.strip_prefix(b"{\"sensor_id\":")?;
    let mut it = serde_json::Deserializer::from_slice(rest).into_iter::<String>();
    let sensor = it.next()?.ok()?;
    let tail = rest.get(it.byte_offset()..)?;
    let after_ts = tail.strip_prefix(b",\"timestamp\":")?;
    let mut it =
        serde_json::Deserializer::from_slice(after_ts).into_iter::<serde::de::IgnoredAny>();
    it.next()?.ok()?;
    let after_value = after_ts
        .get(it.byte_offset()..)?
        .strip_prefix(b",\"value\":")?;
    let mut it =
        serde_json::Deserializer::from_slice(after_value).into_iter::<serde::de::IgnoredAny>();
    it.next()?.ok()?;
    let end = (tail.len() - after_value.len()) + it.byte_offset();
    Some((sensor, fnv(tail.get(..end)?)))
}

impl LastSent {
    /// An empty memory that is never saved.
    pub fn in_memory() -> Self {
        LastSent::default()
    }

    /// The memory of the spool in `dir`: its saved file, then the records still in its segments.
    pub fn open(dir: &Path) -> Self {
        let file = dir.join(FILE);
        let mut map = Memory::default();
        match std::fs::read(&file) {
            Ok(bytes) => match decode(&bytes) {
                Some(entries) => map.extend(entries),
                None => tracing::warn!(
                    message = "Ignoring a damaged record of the last readings sent; values already delivered may be sent again once.",
                    path = %file.display()
                ),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(
                message = "Cannot read the record of the last readings sent; values already delivered may be sent again once.",
                path = %file.display(),
                %error
            ),
        }
        let (scanned, last_seq) = scan_spool(dir, &mut map);
        tracing::debug!(
            message = "Last readings sent loaded.",
            sensors = map.len(),
            spool_records = scanned
        );
        let me = LastSent {
            map: Mutex::new(map),
            dirty: AtomicBool::new(scanned > 0),
            file: Some(file),
            appended: AtomicU64::new(last_seq),
            fence: ReleaseFence::new(),
        };
        // What the segments added is saved before the spool may delete any of them.
        me.save();
        me
    }

    /// The fence behind which the spool keeps acknowledged segments until a save covers them
    /// (give it to [`crate::spool::Spool::set_release_fence`]).
    pub fn fence(&self) -> ReleaseFence {
        self.fence.clone()
    }

    /// The writer appended the records it last filtered, up to spool sequence number `seq`.
    pub fn appended(&self, seq: u64) {
        self.appended.fetch_max(seq, Ordering::SeqCst);
    }

    /// Sensors remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the records of `batch` that are not a repeat of the last one sent for their sensor,
    /// and remembers them. `keys` gives each record's sensor_id (shared, not copied) and its
    /// [`fingerprint`], taken while the record was encoded: the hot path never parses JSON.
    pub fn filter<'a>(
        &self,
        records: Vec<Vec<u8>>,
        keys: impl Iterator<Item = (&'a Arc<str>, u64)>,
    ) -> (Vec<Vec<u8>>, u64) {
        let mut map = self.lock();
        let mut kept = Vec::with_capacity(records.len());
        let mut repeats = 0;
        for (record, (sensor, fp)) in records.into_iter().zip(keys) {
            match map.get_mut(&**sensor) {
                Some(last) if *last == fp => repeats += 1,
                Some(last) => {
                    *last = fp;
                    kept.push(record);
                }
                None => {
                    map.insert(sensor.clone(), fp);
                    kept.push(record);
                }
            }
        }
        drop(map);
        if !kept.is_empty() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        (kept, repeats)
    }

    /// Writes the file if anything changed since the last save (temporary file, fsync, rename),
    /// then lets the spool release what the file covers.
    ///
    /// Why the fence is right: a record gets its sequence number after its reading was
    /// filtered (and `dirty` set), and `appended` moves after that. So every record up to
    /// `covered`, read first, was filtered before `dirty` is swapped here: it is in this
    /// save's snapshot or, if `dirty` was already clear, in the previous save's.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        let covered = self.appended.load(Ordering::SeqCst);
        if !self.dirty.swap(false, Ordering::SeqCst) {
            self.fence.allow(covered);
            return;
        }
        let bytes = encode(&self.lock());
        let tmp = file.with_extension("tmp");
        let written = (|| {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
            std::fs::rename(&tmp, file)
        })();
        if written.is_ok() {
            self.fence.allow(covered);
        }
        if let Err(error) = written {
            self.dirty.store(true, Ordering::SeqCst);
            tracing::warn!(
                message = "Cannot save the record of the last readings sent; after a restart values already delivered may be sent again once.",
                path = %file.display(),
                %error
            );
        }
    }

    /// Saves every [`CHECKPOINT_EVERY`] until `stop`, then once more.
    pub async fn checkpoints(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.save()).await;
        }
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.save()).await;
    }
}

fn encode(map: &Memory) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + map.len() * 32 + 16);
    out.extend_from_slice(MAGIC);
    for (sensor, fp) in map {
        out.extend_from_slice(&(sensor.len() as u32).to_le_bytes());
        out.extend_from_slice(sensor.as_bytes());
        out.extend_from_slice(&fp.to_le_bytes());
    }
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    let check = fnv(&out);
    out.extend_from_slice(&check.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<Vec<(Arc<str>, u64)>> {
    let body_len = bytes.len().checked_sub(8)?;
    let (body, check) = bytes.split_at(body_len);
    if fnv(body) != u64::from_le_bytes(check.try_into().ok()?) {
        return None;
    }
    let mut rest = body.strip_prefix(MAGIC)?;
    let count_at = rest.len().checked_sub(8)?;
    let count = u64::from_le_bytes(rest.get(count_at..)?.try_into().ok()?);
    rest = rest.get(..count_at)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let sensor = std::str::from_utf8(rest.get(4..4 + len)?).ok()?;
        let fp = u64::from_le_bytes(rest.get(4 + len..12 + len)?.try_into().ok()?);
        out.push((Arc::from(sensor), fp));
        rest = rest.get(12 + len..)?;
    }
    (out.len() as u64 == count).then_some(out)
}

/// Folds every readable record of the spool's segment files into `map`, oldest first (by file
/// name, then position); returns how many, and the highest sequence number seen. Damage ends
/// the scan of that file: what the spool's own recovery keeps is sent again anyway.
fn scan_spool(dir: &Path, map: &mut Memory) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut segments: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let first = path
                .file_name()?
                .to_str()?
                .strip_suffix(".seg")?
                .parse::<u64>()
                .ok()?;
            e.file_type().ok()?.is_file().then_some((first, path))
        })
        .collect();
    segments.sort();
    let (mut n, mut last_seq) = (0, 0);
    for (_, path) in segments {
        let Ok(buf) = std::fs::read(&path) else {
            continue;
        };
        let mut at = SEGMENT_HEADER;
        while let Some(Decoded::Record(r)) = buf.get(at..).map(decode_record) {
            at += r.size;
            last_seq = last_seq.max(r.seq);
            if let Some((sensor, fp)) =
                payload::decode(r.payload).and_then(|(_, body)| identity(body))
            {
                map.insert(Arc::from(sensor), fp);
                n += 1;
            }
        }
    }
    (n, last_seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Reading, Value};
    use chrono::TimeZone;

    #[test]
    fn sensor_ids_chosen_by_a_peer_cannot_predict_the_memorys_buckets() {
        use std::hash::BuildHasher as _;
        // Two memories hash the same sensor_id differently: the hash is keyed, not a function
        // of the text alone that a server choosing `{SourceName}` could collide on purpose.
        let (a, b) = (Memory::default(), Memory::default());
        let differ = ["line1:pump-7", "a", "\u{80}\u{80}\u{80}\u{80}"]
            .iter()
            .any(|k| a.hasher().hash_one(k) != b.hasher().hash_one(k));
        assert!(differ);
    }

    /// A spool record of a reading, and the fingerprint taken while encoding it.
    fn record(sensor: &str, secs: i64, value: Value, extra: &str) -> (Vec<u8>, u64) {
        let r = Reading {
            sensor_id: sensor.into(),
            timestamp: chrono::Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap(),
            value,
            extra: extra.into(),
        };
        let mut out = Vec::new();
        let span = payload::encode(&mut out, Some("k"), &r);
        let fp = fingerprint(&out[span]);
        (out, fp)
    }

    fn keep(m: &LastSent, recs: Vec<(&str, (Vec<u8>, u64))>) -> usize {
        let sensors: Vec<Arc<str>> = recs.iter().map(|(s, _)| Arc::from(*s)).collect();
        let fps: Vec<u64> = recs.iter().map(|(_, (_, fp))| *fp).collect();
        m.filter(
            recs.into_iter().map(|(_, (r, _))| r).collect(),
            sensors.iter().zip(fps),
        )
        .0
        .len()
    }

    #[test]
    fn a_repeat_of_the_last_reading_is_dropped_anything_else_kept() {
        let m = LastSent::in_memory();
        let a = || record("a\"é", 1, Value::from(5), ",\"unit\":\"x\"");
        assert_eq!(keep(&m, vec![("a\"é", a())]), 1);
        // Same time and value (even with other fields): a repeat.
        assert_eq!(
            keep(&m, vec![("a\"é", record("a\"é", 1, Value::from(5), ""))]),
            0
        );
        // Another time, another value, another sensor: kept.
        assert_eq!(
            keep(&m, vec![("a\"é", record("a\"é", 2, Value::from(5), ""))]),
            1
        );
        assert_eq!(
            keep(&m, vec![("a\"é", record("a\"é", 2, Value::from(6), ""))]),
            1
        );
        assert_eq!(keep(&m, vec![("b", record("b", 2, Value::from(6), ""))]), 1);
        assert_eq!(
            keep(&m, vec![("b", record("b", 2, Value::from("6"), ""))]),
            1
        );
    }

    #[test]
    fn the_file_round_trips_and_damage_is_refused() {
        let mut map = Memory::default();
        map.insert(Arc::from("s1"), 7u64);
        map.insert(Arc::from("ß"), u64::MAX);
        let bytes = encode(&map);
        let back: Memory = decode(&bytes).unwrap().into_iter().collect();
        assert_eq!(back, map);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_none(), "flip at {i}");
            assert!(decode(&bytes[..i]).is_none(), "cut at {i}");
        }
    }

    proptest::proptest! {
        /// The remembering fingerprinter gives [`fingerprint`]'s result for any sequence of
        /// spans: readings with the timestamp of the one before, with another, and bytes
        /// that are not a reading's span at all.
        #[test]
        fn the_fingerprinter_agrees_with_fingerprint(
            spans in proptest::collection::vec(
                (0u8..4, 0i64..3, "\\PC{0,6}", proptest::collection::vec(proptest::num::u8::ANY, 0..40)),
                1..40,
            ),
        ) {
            let mut fingerprinter = Fingerprinter::default();
            for (kind, secs, text, bytes) in spans {
                let span = match kind {
                    0 | 1 => {
                        let value = if kind == 0 { Value::from(secs * 7) } else { Value::Text(text.as_str().into()) };
                        let r = Reading {
                            sensor_id: "s".into(),
                            timestamp: chrono::Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap(),
                            value,
                            extra: "".into(),
                        };
                        let mut out = Vec::new();
                        let span = payload::encode(&mut out, None, &r);
                        out[span].to_vec()
                    }
                    // A head and anything after it.
                    2 => [SPAN_HEAD, &bytes].concat(),
                    _ => bytes,
                };
                proptest::prop_assert_eq!(fingerprinter.fingerprint(&span), fingerprint(&span));
            }
        }

        /// The fingerprint taken while encoding is the one the start-up scan of the spool
        /// computes by parsing the record: restart de-duplication depends on it.
        #[test]
        fn the_encoding_fingerprint_is_the_parsed_one(
            sensor in "\\PC{0,12}",
            secs in -20_000_000_000i64..250_000_000_000,
            millis in 0u32..1000,
            kind in 0u8..5,
            int in proptest::num::i64::ANY,
            float in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO,
            text in "\\PC{0,12}",
            extra in proptest::option::of("[a-z]{1,5}"),
            key in proptest::option::of("\\PC{1,8}"),
        ) {
            let value = match kind {
                0 => Value::from(int),
                1 => Value::Number(crate::reading::Number::UInt(int as u64)),
                2 => Value::Number(crate::reading::Number::float(float).unwrap()),
                3 => Value::Text(text.as_str().into()),
                _ => Value::Null,
            };
            let r = Reading {
                sensor_id: sensor.as_str().into(),
                timestamp: chrono::Utc.timestamp_opt(secs, millis * 1_000_000).unwrap(),
                value,
                extra: extra.map(|e| format!(",\"{e}\":1")).unwrap_or_default().into(),
            };
            let mut out = Vec::new();
            let span = payload::encode(&mut out, key.as_deref(), &r);
            let (_, body) = payload::decode(&out).unwrap();
            let (parsed_sensor, parsed_fp) = identity(body).unwrap();
            proptest::prop_assert_eq!(parsed_sensor, sensor);
            proptest::prop_assert_eq!(parsed_fp, fingerprint(&out[span]));
        }
    }

    /// Appends one reading per sensor, through the filter as the writer does; returns how
    /// many the filter kept.
    fn write(m: &LastSent, spool: &mut crate::spool::Spool, sensors: &[String]) -> usize {
        let recs: Vec<(&str, (Vec<u8>, u64))> = sensors
            .iter()
            .map(|s| (s.as_str(), record(s, 1, Value::from(42), "")))
            .collect();
        let ids: Vec<Arc<str>> = recs.iter().map(|(s, _)| Arc::from(*s)).collect();
        let fps: Vec<u64> = recs.iter().map(|(_, (_, fp))| *fp).collect();
        let (kept, _) = m.filter(
            recs.into_iter().map(|(_, (r, _))| r).collect(),
            ids.iter().zip(fps),
        );
        let out = spool.append(&kept);
        if let Some(first) = out.first_seq {
            m.appended(first + out.appended - 1);
        }
        kept.len()
    }

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
            .count()
    }

    /// Issue 13: a checkpoint, then readings spooled, acknowledged and their segments released,
    /// then `kill -9` before the next checkpoint. The restarted gateway must still know them.
    #[test]
    fn acknowledged_readings_are_remembered_after_a_kill_between_checkpoints() {
        use crate::spool::{FsyncPolicy, Spool, SpoolConfig, WhenFull};
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            max_bytes: 1 << 20,
            segment_bytes: 4096,
            max_age: None,
            when_full: WhenFull::DropOldest,
            fsync: FsyncPolicy::Never,
        };
        let sensors: Vec<Vec<String>> = (0..20)
            .map(|b| (0..10).map(|i| format!("line-{b}/sensor-{i}")).collect())
            .collect();
        {
            // As the gateway opens them: the memory first, then the spool behind its fence.
            let m = LastSent::open(dir.path());
            let (mut spool, _) = Spool::open(dir.path(), config.clone()).unwrap();
            spool.set_release_fence(m.fence());
            m.save();
            for batch in &sensors {
                assert_eq!(write(&m, &mut spool, batch), batch.len());
            }
            assert!(
                segments(dir.path()) > 3,
                "the readings span several segments"
            );
            // The hub accepted everything.
            spool.ack(spool.next_seq() - 1).unwrap();
            spool.tick().unwrap();
            // kill -9: no final save (the spool's files are as the kernel has them).
            drop(spool);
            drop(m);
        }
        let m = LastSent::open(dir.path());
        for batch in &sensors {
            let (mut spool, _) = Spool::open(dir.path(), config.clone()).unwrap();
            spool.set_release_fence(m.fence());
            // The initial notifications of a new subscription repeat every value.
            assert_eq!(write(&m, &mut spool, batch), 0, "sent again: {batch:?}");
        }
    }

    /// The fence only delays the release: once a save covers them, acknowledged segments go.
    #[test]
    fn a_save_lets_the_spool_release_what_it_covers() {
        use crate::spool::{FsyncPolicy, Spool, SpoolConfig, WhenFull};
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            max_bytes: 1 << 20,
            segment_bytes: 4096,
            max_age: None,
            when_full: WhenFull::DropOldest,
            fsync: FsyncPolicy::Never,
        };
        let m = LastSent::open(dir.path());
        let (mut spool, _) = Spool::open(dir.path(), config).unwrap();
        spool.set_release_fence(m.fence());
        let sensors: Vec<String> = (0..200).map(|i| format!("s{i}")).collect();
        for chunk in sensors.chunks(10) {
            write(&m, &mut spool, chunk);
        }
        spool.ack(spool.next_seq() - 1).unwrap();
        spool.tick().unwrap();
        let held = segments(dir.path());
        assert!(held > 3, "acknowledged segments are held until a save");
        m.save();
        spool.tick().unwrap();
        assert_eq!(segments(dir.path()), 1, "only the active segment is left");
        // Nothing changed since: a save still moves the fence to what was appended.
        let more: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
        for chunk in more.chunks(10) {
            write(&m, &mut spool, chunk);
        }
        m.save();
        spool.ack(spool.next_seq() - 1).unwrap();
        m.save();
        spool.tick().unwrap();
        assert_eq!(segments(dir.path()), 1);
    }

    #[test]
    fn identity_refuses_what_is_not_a_reading() {
        for body in [
            &b""[..],
            b"{",
            b"{\"sensor_id\":1}",
            b"{\"sensor_id\":\"a\",\"value\":1}",
        ] {
            assert!(identity(body).is_none());
        }
    }
}
