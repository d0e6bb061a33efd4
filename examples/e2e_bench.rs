//! End-to-end benchmark (not a test): N OPC UA variables changing every second on the simulated
//! PLC → the gateway (OPC UA source, mapping, durable spool with `fsync: 100ms`, Event Hub sink)
//! → the Event Hub emulator over AMQP with TLS and a SAS token.
//!
//! ```text
//! cargo run --release --example e2e_bench                  # 10 000 and 100 000 tags, 15 s each
//! cargo run --release --example e2e_bench -- 50000 30      # N tags, 30 s measured
//! cargo run --release --example e2e_bench -- 100000 15 off  # spool off: an in-memory queue
//! ```
//! The simulator and the emulator run in child processes (this binary with `--serve-plc N` /
//! `--serve-hub DIR`), so the CPU time measured is the gateway's alone. Printed per N:
//! readings/s accepted by the hub, gateway CPU µs per reading (user + system over the window),
//! AMQP batch bytes per reading, and latency from the PLC's change (the reading's timestamp,
//! the OPC UA source timestamp) to the hub's acceptance (the emulator's arrival time), p50/p99
//! over every reading of the window.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bench_support::{cpu_seconds, rss_mb};
use tagbridge::runtime::journal::Journal;
use tagbridge::runtime::{Gateway, Tweaks};
use tagbridge::sim::hub::{Hub, HubConfig};
use tagbridge::sim::plc::generate::{load_path, opcua_load};
use tagbridge::sim::plc::{OpcUaConfig, Plc, PlcConfig};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.get(1).map(String::as_str) {
        Some("--serve-plc") => {
            let n: usize = args.get(2).ok_or("--serve-plc N")?.parse()?;
            return runtime.block_on(serve_plc(n));
        }
        Some("--serve-hub") => {
            let dir = args.get(2).ok_or("--serve-hub DIR")?;
            return runtime.block_on(serve_hub(dir.into()));
        }
        _ => {}
    }
    let sizes: Vec<usize> = match args.get(1) {
        Some(n) => vec![n.parse()?],
        None => vec![10_000, 100_000],
    };
    let seconds: u64 = args.get(2).map_or(Ok(15), |s| s.parse())?;
    let spool = args.get(3).map(String::as_str) != Some("off");
    let mut rows = Vec::new();
    for n in sizes {
        rows.push(runtime.block_on(measure(n, seconds, spool))?);
    }
    println!();
    println!(
        "End to end: simulated PLC (OPC UA, every tag changes each 1 s) → gateway ({}) → emulator over AMQP+TLS; release build, loopback",
        if spool { "spool on, fsync 100ms" } else { "spool off: in-memory queue" }
    );
    println!(
        "| tags | readings/s at the hub | gateway CPU µs/reading | CPU % of a core | bytes/reading on the link | latency p50 | latency p99 | RSS MB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} ms | {:.0} ms | {:.0} |",
            r.n, r.rate, r.cpu_us, r.cpu_pct, r.bytes, r.p50_ms, r.p99_ms, r.rss_mb
        );
    }
    Ok(())
}

struct Row {
    n: usize,
    rate: f64,
    cpu_us: f64,
    cpu_pct: f64,
    bytes: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mb: f64,
}

/// Child: the simulated PLC with `n` variables, until stdin closes.
async fn serve_plc(n: usize) -> Result<(), BoxError> {
    let plc = Plc::start(PlcConfig {
        opcua: Some(OpcUaConfig {
            variables: opcua_load(n, Duration::from_secs(1)),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    println!("READY {}", plc.opcua_endpoint().ok_or("no endpoint")?);
    std::io::stdout().flush()?;
    wait_for_stdin_close().await;
    plc.shutdown().await;
    Ok(())
}

/// Child: the emulator writing every accepted event to `dir/events.jsonl`, until stdin closes.
async fn serve_hub(dir: std::path::PathBuf) -> Result<(), BoxError> {
    let hub = Hub::start(HubConfig {
        output: Some(dir.join("events.jsonl")),
        cert_dir: Some(dir.join("certs")),
        retain_events: 0,
        ..Default::default()
    })
    .await?;
    println!(
        "READY {} {}",
        hub.ca_cert_path().display(),
        hub.connection_string(tagbridge::sim::hub::DEFAULT_KEY_NAME)
    );
    std::io::stdout().flush()?;
    wait_for_stdin_close().await;
    hub.shutdown().await;
    Ok(())
}

async fn wait_for_stdin_close() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|r| r > 0)
            .unwrap_or(false)
        {}
    })
    .await;
}

/// Starts this binary in a child mode and returns it with its READY line.
fn child(args: &[&str]) -> Result<(Child, String), BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let ready = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("READY ").map(str::to_string))
        .ok_or("the child did not start")?;
    Ok((child, ready))
}

async fn measure(n: usize, seconds: u64, spool_on: bool) -> Result<Row, BoxError> {
    let dir = std::env::temp_dir().join(format!("tagbridge-e2e-bench-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (mut plc, endpoint) = child(&["--serve-plc", &n.to_string()])?;
    let (mut hub, ready) = child(&["--serve-hub", &dir.display().to_string()])?;
    let (ca, connection_string) = ready.split_once(' ').ok_or("bad READY line")?;
    eprintln!("{n} tags: simulator at {endpoint}");

    let mut yaml = format!(
        "source:\n  opcua: {{endpoint: \"{endpoint}\", security_policy: none, publishing_interval: 1s, pki_dir: \"{}\"}}\ndefaults: {{interval: 1s}}\ntags:\n",
        dir.join("pki").display()
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{sensor_id: \"load:{i}\", node: \"ns=2;s={}\"}}\n",
            load_path(i)
        ));
    }
    std::fs::write(dir.join("bench.yaml"), yaml)?;
    // gateway.yaml, built the way `tagbridge run` builds it: 1 GiB spool, fsync every 100 ms
    // (the shipped defaults).
    std::fs::write(dir.join("connection-string"), connection_string)?;
    let gateway_yaml = dir.join("gateway.yaml");
    std::fs::write(
        &gateway_yaml,
        format!(
            "tag_maps: bench.yaml\nsink:\n  eventhub:\n    connection_string_file: connection-string\n    ca_file: \"{ca}\"\n    shutdown_grace: 5s\nspool:\n  dir: spool\ntelemetry:\n  metrics: \"off\"\n"
        ),
    )?;
    let prepared = tagbridge::runtime::prepare(&gateway_yaml).map_err(|r| r.render())?;
    let tweaks = Tweaks {
        // Spool off: an in-memory queue in its place.
        journal: (!spool_on).then(|| Journal::memory(1 << 20)),
        ..Default::default()
    };
    let gateway = Gateway::build(prepared, tweaks)?;
    let stats = gateway.sink().ok_or("no Event Hub sink")?.stats.clone();
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(gateway.run(shutdown.clone()));

    // Warm up: every item subscribed and a full second of changes delivered.
    let started = Instant::now();
    while stats.events_accepted.load(Ordering::Relaxed) < 2 * n as u64 {
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the hub did not receive two rounds of changes within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{n} tags: flowing after {:.1} s; measuring {seconds} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window_start = chrono::Utc::now();
    let (e0, b0, c0, t0) = (
        stats.events_accepted.load(Ordering::Relaxed),
        stats.bytes_sent.load(Ordering::Relaxed),
        cpu_seconds(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (e1, b1, c1, t1) = (
        stats.events_accepted.load(Ordering::Relaxed),
        stats.bytes_sent.load(Ordering::Relaxed),
        cpu_seconds(),
        Instant::now(),
    );
    let window_end = chrono::Utc::now();
    let rss = rss_mb();
    shutdown.cancel();
    let _ = gateway.await;
    drop(hub.stdin.take());
    let _ = hub.wait();
    drop(plc.stdin.take());
    let _ = plc.wait();

    let latencies = latencies(&dir.join("events.jsonl"), window_start, window_end)?;
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let wall = (t1 - t0).as_secs_f64();
    let events = (e1 - e0) as f64;
    let row = Row {
        n,
        rate: events / wall,
        cpu_us: (c1 - c0) * 1e6 / events.max(1.0),
        cpu_pct: (c1 - c0) / wall * 100.0,
        bytes: (b1 - b0) as f64 / events.max(1.0),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        rss_mb: rss,
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}

/// Milliseconds from each reading's timestamp to its arrival at the hub, for readings that
/// arrived within the window, sorted.
fn latencies(
    path: &std::path::Path,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<f64>, BoxError> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for line in file.lines() {
        let line = line?;
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let arrived = event["arrived"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let Some(arrived) = arrived.map(|t| t.with_timezone(&chrono::Utc)) else {
            continue;
        };
        if arrived < from || arrived > to {
            continue;
        }
        let body: serde_json::Value = event["body"]
            .as_str()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default();
        if let Some(ts) = body["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        {
            out.push(
                (arrived - ts.with_timezone(&chrono::Utc))
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1000.0,
            );
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}
