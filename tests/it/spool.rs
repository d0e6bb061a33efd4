//! The durable spool end to end: a process appending and delivering through the spool is
//! killed with SIGKILL at random moments and restarted; in the end every record whose append
//! had returned (and was logged as such) was delivered, under one sequence number (stable message ids), in order.
//!
//! The child is this test binary run again with `TB_SPOOL_CHILD` set (the ignored test
//! `crash_child`), so the test needs nothing but itself.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tagbridge::spool::{handle, FsyncPolicy, Spool, SpoolConfig, WhenFull};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::support;

fn child_config() -> SpoolConfig {
    SpoolConfig {
        max_bytes: 1 << 30,
        // Small segments: rollovers and deletions happen all through the test.
        segment_bytes: 32 << 10,
        max_age: None,
        when_full: WhenFull::DropOldest,
        fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
    }
}

fn append_line(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log opens");
    f.write_all(line.as_bytes()).expect("log written");
}

/// Not a test: the process the crash test kills. Appends `<run>-<n>` records in batches and
/// logs each batch after `append` returned (`appended.log`); delivers what it reads to
/// `delivered.log` (`<seq> <payload>`) and then acknowledges it. With `TB_SPOOL_DRAIN` it only
/// delivers, and exits when the spool is empty.
#[test]
#[ignore = "run by crash_kill_restart_loses_nothing_appended"]
fn crash_child() {
    let Ok(dir) = std::env::var("TB_SPOOL_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let run = std::env::var("TB_SPOOL_RUN").unwrap_or_default();
    let drain = std::env::var("TB_SPOOL_DRAIN").is_ok();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let (spool, report) = Spool::open(dir.join("spool"), child_config()).expect("spool opens");
        eprintln!("child {run}: recovered {report:?}");
        // End a line the last kill may have cut (lines without their ` ;` are ignored).
        append_line(&dir.join("appended.log"), "\n");
        append_line(&dir.join("delivered.log"), "\n");
        let tracker = TaskTracker::new();
        let h = handle::spawn(spool, &tracker, CancellationToken::new());
        let producer = (!drain).then(|| {
            let (h, dir, run) = (h.clone(), dir.clone(), run.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    let batch: Vec<Vec<u8>> = (n..n + 10)
                        .map(|i| format!("{run}-{i}").into_bytes())
                        .collect();
                    let out = h.append(batch).await;
                    assert_eq!(out.appended, 10, "{:?}", out.error);
                    n += 10;
                    append_line(&dir.join("appended.log"), &format!("{run} {} ;\n", n - 1));
                }
            })
        });
        loop {
            let got = if drain {
                if h.depth() == 0 {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(1), h.read(100)).await {
                    Ok(got) => got,
                    Err(_) => continue,
                }
            } else {
                h.read(100).await
            };
            let Some((last, _)) = got.last() else { break };
            let mut lines = String::new();
            for (seq, payload) in &got {
                lines.push_str(&format!("{seq} {} ;\n", String::from_utf8_lossy(payload)));
            }
            append_line(&dir.join("delivered.log"), &lines);
            h.ack(*last).await;
        }
        if let Some(p) = producer {
            p.abort();
        }
    });
}

fn spawn_child(dir: &Path, run: &str, drain: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["spool::crash_child", "--exact", "--ignored", "--nocapture"])
        .env("TB_SPOOL_CHILD", dir)
        .env("TB_SPOOL_RUN", run)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if drain {
        cmd.env("TB_SPOOL_DRAIN", "1");
    }
    cmd.spawn().expect("child starts")
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Highest counter logged as appended, per run.
fn appended(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in read_lines(&dir.join("appended.log")) {
        // A line cut by a kill lacks its ` ;`.
        let Some(line) = line.strip_suffix(" ;") else {
            continue;
        };
        if let Some((run, n)) = line.split_once(' ') {
            if let Ok(n) = n.parse::<u64>() {
                let e = out.entry(run.to_string()).or_insert(0);
                *e = (*e).max(n);
            }
        }
    }
    out
}

fn status_depth(dir: &Path) -> (bool, String) {
    let out = support::tagbridge()
        .args(["spool", "status", "--dir"])
        .arg(dir.join("spool"))
        .output()
        .expect("tagbridge runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn crash_kill_restart_loses_nothing_appended() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut logged = 0;
    for round in 0..6 {
        let run = format!("r{round}");
        let mut child = spawn_child(dir, &run, false);
        let target = rng.gen_range(50..3000);
        let grew = support::wait_until(Duration::from_secs(60), || {
            appended(dir).get(&run).copied().unwrap_or(0) >= target
        })
        .await;
        if round == 2 {
            // The status command reads the spool while its writer runs.
            let (ok, text) = status_depth(dir);
            assert!(ok && text.contains("depth"), "{text}");
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("child reaped");
        assert!(
            grew,
            "round {round}: the child did not append {target} records"
        );
        assert!(!status.success(), "round {round}: the child was killed");
        let now = appended(dir).values().sum::<u64>();
        assert!(now > logged);
        logged = now;
    }
    let mut drain = spawn_child(dir, "drain", true);
    let drained = support::wait_until(Duration::from_secs(120), || {
        matches!(drain.try_wait(), Ok(Some(_)))
    })
    .await;
    if !drained {
        let _ = drain.kill();
    }
    let out = drain.wait_with_output().expect("drain reaped");
    assert!(
        drained && out.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every delivered payload has exactly one sequence number (stable message ids), and per
    // run the payloads arrived in counter order at their first delivery.
    let mut seq_of: HashMap<String, u64> = HashMap::new();
    let mut firsts: Vec<(u64, String)> = Vec::new();
    let mut deliveries = 0u64;
    for line in read_lines(&dir.join("delivered.log")) {
        let Some((seq, payload)) = line.strip_suffix(" ;").and_then(|l| l.split_once(' ')) else {
            continue;
        };
        let Ok(seq) = seq.parse::<u64>() else {
            continue;
        };
        deliveries += 1;
        match seq_of.get(payload) {
            Some(&s) => assert_eq!(s, seq, "{payload} delivered under two sequence numbers"),
            None => {
                seq_of.insert(payload.to_string(), seq);
                firsts.push((seq, payload.to_string()));
            }
        }
    }
    firsts.sort();
    let mut last_of_run: HashMap<&str, u64> = HashMap::new();
    for (_, payload) in &firsts {
        let (run, n) = payload.rsplit_once('-').expect("run-n");
        let n: u64 = n.parse().expect("counter");
        if let Some(prev) = last_of_run.insert(run, n) {
            assert!(n > prev, "{run}: {n} delivered after {prev}");
        }
    }
    // Nothing appended is missing.
    let appended = appended(dir);
    assert_eq!(appended.len(), 6, "{appended:?}");
    let mut missing = Vec::new();
    for (run, &max) in &appended {
        for n in 0..=max {
            if !seq_of.contains_key(&format!("{run}-{n}")) {
                missing.push(format!("{run}-{n}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} appended records never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let dups = deliveries - seq_of.len() as u64;
    eprintln!(
        "{} records, {} deliveries ({dups} duplicates after kills)",
        seq_of.len(),
        deliveries
    );
    let (ok, text) = status_depth(dir);
    assert!(ok && text.contains("depth      0 readings"), "{text}");
}

/// The whole chain: simulated PLC (Modbus) → `tagbridge run` with the spool → hub emulator.
mod gateway {
    use std::collections::{BTreeMap, HashMap};
    use std::path::PathBuf;
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use rand::{Rng, SeedableRng};
    use tagbridge::sim::hub::ReceivedEvent;

    use super::support;
    use super::support::child_chain::{Rig, RigOptions};

    /// Sensors `c0`.. are Modbus holding registers driven by counters.
    const SENSORS: usize = 100;

    /// PLC and hub up, gateway.yaml written with `spool_extra` added to its `spool:` map.
    async fn rig(spool_extra: &str) -> Rig {
        Rig::start(RigOptions {
            sensors: SENSORS,
            eventhub_extra: "",
            spool_extra,
        })
        .await
    }

    /// Checks each event against the PLC's signals and returns them by sequence number.
    fn delivered(rig: &Rig) -> Delivered {
        let mut d = Delivered::default();
        for e in &rig.hub.events() {
            d.add(e, |sensor, at| rig.held(sensor, at));
        }
        d
    }

    /// What the hub received.
    #[derive(Default)]
    pub struct Delivered {
        /// Deliveries per sequence number.
        pub count: BTreeMap<u64, u32>,
        /// (sensor, timestamp, value) per sequence number.
        pub readings: BTreeMap<u64, (usize, DateTime<Utc>, i64)>,
        /// Per sensor, readings in order of first arrival.
        pub per_sensor: HashMap<usize, Vec<(u64, DateTime<Utc>, i64)>>,
        pub problems: Vec<String>,
    }

    impl Delivered {
        fn add(&mut self, e: &ReceivedEvent, expected: impl Fn(usize, DateTime<Utc>) -> i64) {
            let seq = e
                .message_id
                .as_deref()
                .and_then(|id| id.strip_prefix("gw-"))
                .and_then(|s| s.parse::<u64>().ok());
            let Some(seq) = seq else {
                self.problems
                    .push(format!("message id {:?} is not gw-<seq>", e.message_id));
                return;
            };
            let body: serde_json::Value = match serde_json::from_slice(&e.body) {
                Ok(v) => v,
                Err(err) => {
                    self.problems
                        .push(format!("seq {seq}: body not JSON: {err}"));
                    return;
                }
            };
            let sensor = body["sensor_id"]
                .as_str()
                .and_then(|s| s.strip_prefix('c'))
                .and_then(|s| s.parse::<usize>().ok());
            let at = body["timestamp"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            let (Some(sensor), Some(at), Some(value)) = (sensor, at, body["value"].as_i64()) else {
                self.problems
                    .push(format!("seq {seq}: unexpected body {body}"));
                return;
            };
            let n = self.count.entry(seq).or_insert(0);
            *n += 1;
            if let Some(prev) = self.readings.get(&seq) {
                if *prev != (sensor, at, value) {
                    self.problems.push(format!(
                        "seq {seq} delivered with two contents: {prev:?} and {body}"
                    ));
                }
                return;
            }
            // The value read must be what the PLC held when the response arrived, or up to
            // two steps before (the register was read a moment earlier).
            let held = expected(sensor, at);
            if !(held - 2..=held).contains(&value) {
                self.problems.push(format!(
                    "seq {seq}: c{sensor} = {value} at {at}, but the PLC held {held}"
                ));
            }
            self.readings.insert(seq, (sensor, at, value));
            self.per_sensor
                .entry(sensor)
                .or_default()
                .push((seq, at, value));
        }

        /// Per sensor, readings first arrived in the order they were taken.
        pub fn order_problems(&self) -> Vec<String> {
            let mut out = Vec::new();
            for (sensor, rs) in &self.per_sensor {
                for w in rs.windows(2) {
                    if !(w[0].0 < w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2) {
                        out.push(format!("c{sensor}: {:?} arrived before {:?}", w[0], w[1]));
                    }
                }
            }
            out
        }
    }

    fn summary(rig: &Rig, d: &Delivered) -> String {
        format!(
            "{} distinct readings, {} deliveries; spool now {:?}\ngateway log (tail):\n{}",
            d.readings.len(),
            d.count.values().map(|&n| u64::from(n)).sum::<u64>(),
            rig.status(),
            rig.log_tail()
        )
    }

    /// Seqs in `[from, to)` not delivered.
    fn missing(d: &Delivered, from: u64, to: u64) -> Vec<u64> {
        (from..to).filter(|s| !d.count.contains_key(s)).collect()
    }

    /// kill -9 at random moments, restart, several times; then a clean stop. Every reading the
    /// gateway spooled reaches the hub; duplicates are only of readings unacknowledged at a
    /// kill; every value matches the PLC's signal; per-sensor order holds.
    #[tokio::test]
    async fn kill_9_and_restart_loses_no_spooled_reading() {
        let rig = rig("").await;
        let seed: u64 = rand::thread_rng().gen();
        eprintln!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Per kill: (acknowledged, next sequence number) right after it.
        let mut kills = Vec::new();
        for round in 0..5 {
            let mut child = rig.gateway();
            let base = rig.hub.stats().events;
            let target = if round == 1 {
                0
            } else {
                rng.gen_range(1..1500)
            };
            let reached = support::wait_until(Duration::from_secs(90), || {
                rig.hub.stats().events >= base + target
            })
            .await;
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            assert!(
                reached,
                "round {round}: the hub did not get {target} events\n{}",
                rig.log_tail()
            );
            let st = rig.status();
            kills.push((st.acked, st.next_seq));
        }
        // A last run drains the backlog and stops cleanly.
        let child = rig.gateway();
        let drained = support::wait_until(Duration::from_secs(120), || {
            let st = rig.status();
            st.acked > kills.last().map_or(0, |k| k.1) && st.depth == 0
        })
        .await;
        rig.stop(child).await;
        let d = delivered(&rig);
        assert!(drained, "backlog not drained\n{}", summary(&rig, &d));
        assert!(
            d.problems.is_empty(),
            "{:?}\n{}",
            &d.problems[..d.problems.len().min(10)],
            summary(&rig, &d)
        );
        let order = d.order_problems();
        assert!(order.is_empty(), "{:?}", &order[..order.len().min(10)]);

        let last = rig.status();
        let starts = rig.run_starts();
        assert!(!starts.is_empty(), "{}", rig.log_tail());
        // Each run's numbers, from its start to the next run's start (or the end).
        let mut lost = Vec::new();
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(last.next_seq);
            let end = kills
                .iter()
                .map(|k| k.1)
                .filter(|&n| n >= start && n <= end)
                .min()
                .unwrap_or(end);
            lost.extend(
                missing(&d, start, end)
                    .into_iter()
                    .filter(|&s| s <= last.acked),
            );
        }
        assert!(
            lost.is_empty(),
            "{} spooled readings never reached the hub, e.g. {:?}\nruns start at {starts:?}; kills (acked, next) {kills:?}\n{}",
            lost.len(),
            &lost[..lost.len().min(10)],
            summary(&rig, &d)
        );
        // Duplicates: only of readings not yet acknowledged at one of the kills.
        let bad_dups: Vec<u64> = d
            .count
            .iter()
            .filter(|&(_, &n)| n > 1)
            .map(|(&s, _)| s)
            .filter(|&s| !kills.iter().any(|&(acked, next)| s > acked && s < next))
            .collect();
        assert!(
            bad_dups.is_empty(),
            "duplicated though acknowledged: {bad_dups:?}"
        );
        let dups = d.count.values().filter(|&&n| n > 1).count();
        eprintln!(
            "{} readings over {} runs, {dups} delivered twice after kills",
            d.readings.len(),
            starts.len()
        );
        rig.hub.shutdown().await;
        rig.plc.shutdown().await;
    }

    /// The hub is down for a minute while readings flow: they wait in the spool, none is lost,
    /// and the backlog drains once the hub is back.
    #[tokio::test]
    async fn a_one_minute_hub_outage_loses_nothing_and_the_backlog_drains() {
        const OUTAGE: Duration = Duration::from_secs(60);
        let rig = rig("").await;
        let child = rig.gateway();
        let flowing =
            support::wait_until(Duration::from_secs(60), || rig.hub.stats().events >= 200).await;
        assert!(flowing, "no events before the outage\n{}", rig.log_tail());
        rig.hub.faults().down_for(OUTAGE);
        let during = rig.hub.stats().events;
        let backlog = support::wait_until(OUTAGE / 2, || rig.status().depth >= 1000).await;
        assert!(backlog, "no backlog built up\n{}", rig.log_tail());
        assert_eq!(rig.hub.stats().events, during, "the hub was down");
        let mut peak = 0;
        let drained = support::wait_until(OUTAGE + Duration::from_secs(120), || {
            let depth = rig.status().depth;
            peak = peak.max(depth);
            rig.hub.stats().events > during && depth == 0
        })
        .await;
        rig.stop(child).await;
        let d = delivered(&rig);
        assert!(drained, "backlog not drained\n{}", summary(&rig, &d));
        assert!(
            d.problems.is_empty(),
            "{:?}",
            &d.problems[..d.problems.len().min(10)]
        );
        let order = d.order_problems();
        assert!(order.is_empty(), "{:?}", &order[..order.len().min(10)]);
        let last = rig.status();
        let start = rig.run_starts()[0];
        let lost = missing(&d, start, last.acked + 1);
        assert!(
            lost.is_empty(),
            "{} readings lost, e.g. {:?}\n{}",
            lost.len(),
            &lost[..lost.len().min(10)],
            summary(&rig, &d)
        );
        assert_eq!(last.dropped, 0);
        eprintln!(
            "outage: backlog peaked at {peak} readings; {} readings delivered",
            d.readings.len()
        );
        rig.hub.shutdown().await;
        rig.plc.shutdown().await;
    }

    /// A 16 KiB spool with the hub down: `drop_oldest` deletes numbered readings (exactly the
    /// count it reports), `drop_newest` refuses new ones before they get numbers (so every
    /// numbered reading arrives), and both count.
    async fn bounds(policy: &str) {
        let rig = rig(&format!("  max_bytes: 16384\n  when_full: {policy}\n")).await;
        rig.hub.faults().down_for(Duration::from_secs(3600));
        let child = rig.gateway();
        let dropping =
            support::wait_until(Duration::from_secs(60), || rig.status().dropped >= 500).await;
        assert!(dropping, "{policy}: nothing dropped\n{}", rig.log_tail());
        assert!(rig.status().bytes <= 16384);
        rig.hub.faults().clear();
        let drained = support::wait_until(Duration::from_secs(120), || {
            rig.hub.stats().events > 0 && rig.status().depth == 0
        })
        .await;
        rig.stop(child).await;
        let d = delivered(&rig);
        assert!(drained, "{policy}: not drained\n{}", summary(&rig, &d));
        assert!(
            d.problems.is_empty(),
            "{:?}",
            &d.problems[..d.problems.len().min(10)]
        );
        let order = d.order_problems();
        assert!(order.is_empty(), "{:?}", &order[..order.len().min(10)]);
        let last = rig.status();
        let start = rig.run_starts()[0];
        let gone: Vec<u64> = missing(&d, start, last.acked + 1);
        match policy {
            "drop_oldest" => assert_eq!(
                gone.len() as u64,
                last.dropped,
                "every numbered reading that did not arrive is one counted as dropped"
            ),
            _ => assert!(
                gone.is_empty(),
                "drop_newest never deletes a numbered reading: {} of them, e.g. {:?}\n{}",
                gone.len(),
                &gone[..gone.len().min(10)],
                summary(&rig, &d)
            ),
        }
        eprintln!(
            "{policy}: {} dropped and counted, {} delivered",
            last.dropped,
            d.readings.len()
        );
        // `tagbridge spool status -c` says the same.
        let out = support::tagbridge()
            .args(["spool", "status", "--json", "-c"])
            .arg(rig.dir.path().join("gateway.yaml"))
            .output()
            .expect("tagbridge runs");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
        assert_eq!(json["dropped"].as_u64(), Some(last.dropped), "{json}");
        rig.hub.shutdown().await;
        rig.plc.shutdown().await;
    }

    #[tokio::test]
    async fn a_full_spool_drops_the_oldest_and_counts_them() {
        bounds("drop_oldest").await;
    }

    #[tokio::test]
    async fn a_full_spool_refuses_the_newest_and_counts_them() {
        bounds("drop_newest").await;
    }

    /// The records of a segment file: (offset, size, seq).
    fn records_of(path: &std::path::Path) -> Vec<(usize, usize, u64)> {
        use tagbridge::spool::format::{decode_record, Decoded, SEGMENT_HEADER};
        let bytes = std::fs::read(path).unwrap();
        let mut at = SEGMENT_HEADER;
        let mut out = Vec::new();
        while let Some(Decoded::Record(r)) = bytes.get(at..).map(decode_record) {
            out.push((at, r.size, r.seq));
            at += r.size;
        }
        out
    }

    /// A power cut mid-write (the last record cut short) and a flipped bit in an older segment:
    /// the gateway starts, reports both, and delivers every other reading.
    #[tokio::test]
    async fn a_torn_tail_and_a_flipped_byte_cost_one_reading_each() {
        let rig = rig("  max_bytes: 1048576\n").await;
        rig.hub.faults().down_for(Duration::from_secs(3600));
        let mut child = rig.gateway();
        let spooled =
            support::wait_until(Duration::from_secs(60), || rig.status().depth >= 1500).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        assert!(spooled, "nothing spooled\n{}", rig.log_tail());
        let before = rig.status();
        let mut segments: Vec<PathBuf> = std::fs::read_dir(rig.spool_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .filter(|p| !records_of(p).is_empty())
            .collect();
        segments.sort();
        assert!(segments.len() >= 2, "{segments:?}");
        // A flipped bit in the payload of the third record of the oldest segment.
        let old = &segments[0];
        let (at, size, flipped) = records_of(old)[2];
        let mut bytes = std::fs::read(old).unwrap();
        bytes[at + size - 3] ^= 0x04;
        std::fs::write(old, &bytes).unwrap();
        // The newest record cut short.
        let new = &segments[segments.len() - 1];
        let &(at, size, torn) = records_of(new).last().unwrap();
        std::fs::File::options()
            .write(true)
            .open(new)
            .unwrap()
            .set_len((at + size - 5) as u64)
            .unwrap();

        rig.hub.faults().clear();
        let child = rig.gateway();
        let drained = support::wait_until(Duration::from_secs(120), || {
            rig.hub.stats().events > 0 && rig.status().depth == 0
        })
        .await;
        rig.stop(child).await;
        let d = delivered(&rig);
        assert!(drained, "not drained\n{}", summary(&rig, &d));
        assert!(
            d.problems.is_empty(),
            "{:?}",
            &d.problems[..d.problems.len().min(10)]
        );
        let start = rig.run_starts()[0];
        let lost = missing(&d, start, before.next_seq);
        assert_eq!(
            lost,
            [flipped, torn],
            "only the damaged readings are missing\n{}",
            summary(&rig, &d)
        );
        let log = std::fs::read_to_string(rig.dir.path().join("gateway.log")).unwrap();
        let repaired: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Spool damage repaired."))
            .collect();
        assert_eq!(repaired.len(), 2, "{repaired:#?}");
        assert!(
            repaired.iter().any(|l| l.contains("checksum mismatch")),
            "{repaired:#?}"
        );
        assert!(
            repaired.iter().any(|l| l.contains("torn record")),
            "{repaired:#?}"
        );
        rig.hub.shutdown().await;
        rig.plc.shutdown().await;
    }
}
