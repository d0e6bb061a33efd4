//! Events benchmark (not a test): OPC UA alarm transitions at a fixed rate on the simulated PLC
//! → the gateway (event subscription, one reading per event, durable spool with
//! `fsync: 100ms`, Event Hub sink) → the Event Hub emulator over AMQP with TLS.
//!
//! ```text
//! cargo run --release --example events_bench                 # 1 000 events/s, 15 s measured
//! cargo run --release --example events_bench -- 2000 30      # 2 000 events/s, 30 s
//! ```
//! The simulator declares 100 off-normal alarms, each on a two-state variable that changes at
//! every step (states are stepped in integers; a square wave's float phase misses some edges),
//! so the offered rate is exact (100 alarms × 1000 / step ms). The simulator and
//! the emulator run in child processes (`--serve-plc RATE`, `--serve-hub DIR`), so the CPU time
//! measured is the gateway's alone. Printed: events/s offered and accepted by the hub, gateway
//! CPU µs per event (user + system over the window), CPU % of a core, latency from the event's
//! Time to the hub's acceptance (p50/p99), resident memory; then the gateway's own counters
//! from `/metrics` (events received from the server, dropped, event readings), so a shortfall
//! at the hub can be placed.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bench_support::{rss_mb, Window};
use tagbridge::runtime::{Gateway, Tweaks};
use tagbridge::sim::plc::PlcConfig;
use tokio_util::sync::CancellationToken;

use bench_support::children::{child, hub_latencies, serve_hub, wait_for_stdin_close, BoxError};

/// Alarms in the simulator; each makes one event per step.
const ALARMS: u64 = 100;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.get(1).map(String::as_str) {
        Some("--serve-plc") => {
            let rate: u64 = args.get(2).ok_or("--serve-plc RATE")?.parse()?;
            return runtime.block_on(serve_plc(rate));
        }
        Some("--serve-hub") => {
            let dir = args.get(2).ok_or("--serve-hub DIR")?;
            return runtime.block_on(serve_hub(dir.into()));
        }
        _ => {}
    }
    let rate: u64 = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let seconds: u64 = args.get(2).map_or(Ok(15), |s| s.parse())?;
    let r = runtime.block_on(measure(rate, seconds))?;
    println!();
    println!("OPC UA events: simulated PLC ({ALARMS} alarms) → gateway (spool on, fsync 100ms) → emulator over AMQP+TLS; release build, loopback");
    println!("| events/s offered | events/s at the hub | gateway CPU µs/event | CPU % of a core | latency p50 | latency p99 | RSS MB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.0} | {:.1} | {:.1} | {:.0} ms | {:.0} ms | {:.0} |",
        r.offered, r.rate, r.cpu_us, r.cpu_pct, r.p50_ms, r.p99_ms, r.rss_mb
    );
    println!();
    println!("over the window: the gateway's counters from /metrics, and the hub's output");
    println!("{}", r.counters);
    Ok(())
}

/// The event counters of the gateway's `/metrics`: name with labels → value.
async fn scrape(
    addr: std::net::SocketAddr,
) -> Result<std::collections::BTreeMap<String, f64>, BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("tagbridge_opcua_events")
                    || l.starts_with("tagbridge_event_readings")
                    || l.starts_with("tagbridge_opcua_condition_refreshes"))
        })
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect())
}

struct Row {
    offered: u64,
    rate: f64,
    cpu_us: f64,
    cpu_pct: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mb: f64,
    /// The gateway's event counters at the end of the window, as `/metrics` printed them.
    counters: String,
}

/// The step (ms) that gives `rate` events/s from [`ALARMS`] alarms.
fn step_ms(rate: u64) -> u64 {
    (ALARMS * 1000 / rate.max(1)).max(1)
}

/// Child: the simulated PLC with the alarms, until stdin closes.
async fn serve_plc(rate: u64) -> Result<(), BoxError> {
    let step = step_ms(rate);
    let mut yaml = String::from("opcua:\n  variables:\n");
    for i in 0..ALARMS {
        yaml.push_str(&format!(
            "    - {{path: Bench/V{i}, type: enum, signal: {{states: {{names: [Normal, Off], period: {step}ms}}}}}}\n"
        ));
    }
    yaml.push_str("  alarms:\n");
    for i in 0..ALARMS {
        yaml.push_str(&format!(
            "    - {{name: A{i}, source: Bench/V{i}, off_normal: {{normal: Normal}}, severity: 500}}\n"
        ));
    }
    let parsed = tagbridge::config::parse_str::<PlcConfig>(&yaml);
    let config = parsed.value.ok_or("the benchmark's PLC configuration")?;
    let plc = tagbridge::sim::plc::Plc::start(config).await?;
    println!("READY {}", plc.opcua_endpoint().ok_or("no endpoint")?);
    std::io::stdout().flush()?;
    wait_for_stdin_close().await;
    plc.shutdown().await;
    Ok(())
}

async fn measure(rate: u64, seconds: u64) -> Result<Row, BoxError> {
    let dir = std::env::temp_dir().join(format!("tagbridge-events-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (mut plc, endpoint) = child(&["--serve-plc", &rate.to_string()])?;
    let (mut hub, ready) = child(&["--serve-hub", &dir.display().to_string()])?;
    let (ca, connection_string) = ready.split_once(' ').ok_or("bad READY line")?;
    eprintln!("{rate} events/s: simulator at {endpoint}");
    // Publishing every 50 ms keeps each publish well under the simulator's item queue (100).
    std::fs::write(
        dir.join("bench.yaml"),
        format!(
            "source:\n  opcua: {{endpoint: \"{endpoint}\", security_policy: none, publishing_interval: 50ms, pki_dir: \"{}\"}}\n\
             events:\n  - sensor_id: \"bench:{{ConditionName}}\"\n    types: [AlarmConditionType]\n    value: state\n",
            dir.join("pki").display()
        ),
    )?;
    std::fs::write(dir.join("connection-string"), connection_string)?;
    let gateway_yaml = dir.join("gateway.yaml");
    // A free port for /metrics (bound, then released for the gateway).
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    std::fs::write(
        &gateway_yaml,
        format!(
            "tag_maps: bench.yaml\nsink:\n  eventhub:\n    connection_string_file: connection-string\n    ca_file: \"{ca}\"\n    shutdown_grace: 5s\nspool:\n  dir: spool\ntelemetry:\n  metrics: \"{metrics}\"\n  live_view: false\n"
        ),
    )?;
    let prepared = tagbridge::runtime::prepare(&gateway_yaml).map_err(|r| r.render())?;
    let gateway = Gateway::build(prepared, Tweaks::default())?;
    let stats = gateway.sink().ok_or("no Event Hub sink")?.stats.clone();
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(gateway.run(shutdown.clone()));

    // Warm up: two seconds' worth of events delivered.
    let started = Instant::now();
    while stats.events_accepted.load(Ordering::Relaxed) < 2 * rate {
        if started.elapsed() > Duration::from_secs(120) {
            return Err("the hub did not receive two seconds of events within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "flowing after {:.1} s; measuring {seconds} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window_start = chrono::Utc::now();
    let before = scrape(metrics).await.unwrap_or_default();
    let window = Window::measure(&stats.events_accepted, seconds).await;
    let window_end = chrono::Utc::now();
    let rss = rss_mb();
    let after = scrape(metrics).await.unwrap_or_default();
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
    let wall = window.wall;
    let counters = after
        .iter()
        .map(|(name, v)| {
            let was = before.get(name).copied().unwrap_or(0.0);
            format!("  {name}: {:.0}/s", (v - was) / wall)
        })
        .chain([format!(
            "  readings in the hub's output that arrived in the window: {:.0}/s",
            latencies.len() as f64 / wall
        )])
        .collect::<Vec<_>>()
        .join("\n");
    let row = Row {
        offered: ALARMS * 1000 / step_ms(rate),
        rate: window.rate(),
        cpu_us: window.cpu_us_per_item(),
        cpu_pct: window.cpu_pct(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        rss_mb: rss,
        counters,
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}

/// Milliseconds from each event's Time (the reading's timestamp) to its arrival at the hub,
/// for readings that arrived within the window, sorted.
fn latencies(
    path: &std::path::Path,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<f64>, BoxError> {
    let mut out: Vec<f64> = hub_latencies(path, from, to)?
        .into_iter()
        .map(|(_, ms)| ms)
        .collect();
    out.sort_by(f64::total_cmp);
    Ok(out)
}
