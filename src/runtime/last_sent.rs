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
//!   not) is folded in: those were handed to the journal too.
//!
//! Memory: one entry per sensor, the `sensor_id` shared with the tag map's plan plus 8 bytes
//! (about 60 bytes with the table's overhead: 6 MB for 100 000 tags).
//!
//! File format: `tagbridge-last-sent 1\n`, then per sensor `[len: u32 LE][sensor_id][fp: u64 LE]`,
//! then `[count: u64 LE][check: u64 LE]` (FNV-1a of everything before). A file that does not
//! check out is ignored with a warning (the spool scan still covers what was not acknowledged).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::spool::format::{decode_record, Decoded, SEGMENT_HEADER};
use crate::spool::payload;

/// How often a changed memory is saved while running.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
const FILE: &str = "last_sent";
const MAGIC: &[u8] = b"tagbridge-last-sent 1\n";

/// The memory, shared by the writer of the journal and the checkpoint task.
#[derive(Debug, Default)]
pub struct LastSent {
    map: Mutex<HashMap<Arc<str>, u64>>,
    dirty: AtomicBool,
    /// Where it is saved; `None`: memory only.
    file: Option<PathBuf>,
}

/// 64-bit FNV-1a: stable across builds and versions (the fingerprints are saved).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The sensor and the fingerprint of `"timestamp":…,"value":…` of an encoded reading (the
/// JSON [`crate::reading::Reading::write_json`] writes); `None` if it is not one.
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
        let mut map = HashMap::new();
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
        let scanned = scan_spool(dir, &mut map);
        tracing::debug!(
            message = "Last readings sent loaded.",
            sensors = map.len(),
            spool_records = scanned
        );
        LastSent {
            map: Mutex::new(map),
            dirty: AtomicBool::new(false),
            file: Some(file),
        }
    }

    /// Sensors remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the records of `batch` that are not a repeat of the last one sent for their sensor,
    /// and remembers them. `sensor` gives each record's sensor_id (shared, not copied).
    pub fn filter<'a>(
        &self,
        records: Vec<Vec<u8>>,
        sensors: impl Iterator<Item = &'a Arc<str>>,
    ) -> (Vec<Vec<u8>>, u64) {
        let mut map = self.lock();
        let mut kept = Vec::with_capacity(records.len());
        let mut repeats = 0;
        for (record, sensor) in records.into_iter().zip(sensors) {
            let fp = payload::decode(&record).and_then(|(_, body)| identity(body));
            let Some((_, fp)) = fp else {
                kept.push(record);
                continue;
            };
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
        if kept.len() as u64 > 0 {
            self.dirty.store(true, Ordering::Relaxed);
        }
        (kept, repeats)
    }

    /// Writes the file if anything changed since the last save (temporary file, fsync, rename).
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        if !self.dirty.swap(false, Ordering::Relaxed) {
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
        if let Err(error) = written {
            self.dirty.store(true, Ordering::Relaxed);
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

fn encode(map: &HashMap<Arc<str>, u64>) -> Vec<u8> {
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
/// name, then position); returns how many. Damage ends the scan of that file: what the
/// spool's own recovery keeps is sent again anyway.
fn scan_spool(dir: &Path, map: &mut HashMap<Arc<str>, u64>) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
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
    let mut n = 0;
    for (_, path) in segments {
        let Ok(buf) = std::fs::read(&path) else {
            continue;
        };
        let mut at = SEGMENT_HEADER;
        while let Some(Decoded::Record(r)) = buf.get(at..).map(decode_record) {
            at += r.size;
            if let Some((sensor, fp)) =
                payload::decode(r.payload).and_then(|(_, body)| identity(body))
            {
                map.insert(Arc::from(sensor), fp);
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Reading, Value};
    use chrono::TimeZone;

    fn record(sensor: &str, secs: i64, value: Value, extra: &str) -> Vec<u8> {
        let r = Reading {
            sensor_id: sensor.into(),
            timestamp: chrono::Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap(),
            value,
            extra: extra.into(),
        };
        let mut out = Vec::new();
        payload::encode(&mut out, Some("k"), &r);
        out
    }

    fn keep(m: &LastSent, recs: Vec<(&str, Vec<u8>)>) -> usize {
        let sensors: Vec<Arc<str>> = recs.iter().map(|(s, _)| Arc::from(*s)).collect();
        m.filter(recs.into_iter().map(|(_, r)| r).collect(), sensors.iter())
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
        let mut map = HashMap::new();
        map.insert(Arc::from("s1"), 7u64);
        map.insert(Arc::from("ß"), u64::MAX);
        let bytes = encode(&map);
        let back: HashMap<_, _> = decode(&bytes).unwrap().into_iter().collect();
        assert_eq!(back, map);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_none(), "flip at {i}");
            assert!(decode(&bytes[..i]).is_none(), "cut at {i}");
        }
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
