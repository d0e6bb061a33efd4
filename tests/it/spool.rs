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
