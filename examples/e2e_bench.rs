//! End-to-end benchmark (not a test): a simulated PLC → the gateway (source, mapping, durable
//! spool with `fsync: 100ms`, Event Hub sink) → the Event Hub emulator over AMQP with TLS and a
//! SAS token; tag maps loaded from YAML files, as `tagbridge run` loads them.
//!
//! ```text
//! cargo run --release --example e2e_bench                   # 1 000, 10 000, 100 000 OPC UA tags, 10 000 Modbus tags, 15 s each
//! cargo run --release --example e2e_bench -- 50000 30       # N OPC UA tags, 30 s measured
//! cargo run --release --example e2e_bench -- 100000 15 off  # spool off: an in-memory queue
//! cargo run --release --example e2e_bench -- modbus 10000 15
//! cargo run --release --example e2e_bench -- python 10000 15  # the same OPC UA load: tagbridge, then the Python script
//! cargo run --release --example e2e_bench -- ceiling 10000 10 # Modbus polled every 1 s … 10 ms: where delivery saturates
//! ```
//! Every tag changes each second (OPC UA: 1 s publishing interval; Modbus: 1 s poll), except in
//! `ceiling`. The simulator and the emulator run in child processes (this binary with
//! `--serve-plc …` / `--serve-hub DIR`), so the CPU time and memory measured are the gateway's
//! alone (plus this harness, which is small). Printed per row: readings/s accepted by the hub,
//! gateway CPU µs per reading and % of one core (user + system over the window), AMQP batch
//! bytes per reading, RSS in the window (median and highest of samples every 250 ms), peak RSS
//! from start to the second full round at the hub and during a live reload (gateway.yaml
//! touched, every tag map loaded and compared again), time and CPU from start to the first reading at the hub, the load average, and
//! latency p50/p99 from the reading's timestamp to the hub's acceptance (the emulator's arrival
//! time) over every reading of the window. For Modbus the timestamp is the poll's response, so
//! that is the latency the gateway adds; for OPC UA it is the PLC's change, so it also holds the
//! server's wait for its 1 s publishing interval, and 1 tag in 100 sits in a second tag map with
//! `timestamps: gateway` (stamped on arrival), whose latency is the part the gateway adds.
//!
//! `ceiling` polls 10 000 Modbus tags ever faster and prints, per step, the offered and the
//! delivered rate with the CPU of the gateway, the simulator and the emulator, which share the
//! box's cores: the last step where delivery keeps up is the ceiling.
//!
//! `python` runs the same load through `examples/python/opcua_to_eventhub.py` (asyncua's
//! subscription example + Microsoft's Event Hubs quick start, the script a user would write)
//! after tagbridge, and prints both side by side; the script's CPU and RSS are read from
//! `/proc/<pid>`. Its Python comes from the venv the tests create (`~/.cache/tagbridge/pyenv-*`,
//! or `TAGBRIDGE_PYTHON`); without one, a venv with `tests/python/requirements.txt` is made.
//!
//! The allocator is the build's (jemalloc by default; `--no-default-features` for glibc's, with
//! `MALLOC_ARENA_MAX` from the environment, adding `--features alloc-mimalloc` for mimalloc) and
//! is named above each table.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::{cpu_seconds, peak_rss_mb, process_cpu_seconds, reset_peak_rss, RssSamples};
use tagbridge::runtime::journal::Journal;
use tagbridge::runtime::reload::Reload;
use tagbridge::runtime::{Gateway, Tweaks};
use tagbridge::sim::plc::generate::{load_path, modbus_load, opcua_load};
use tagbridge::sim::plc::{ModbusConfig, OpcUaConfig, Plc, PlcConfig};
use tokio_util::sync::CancellationToken;

use bench_support::children::{child, hub_latencies, serve_hub, wait_for_stdin_close, BoxError};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    OpcUa,
    Modbus,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::OpcUa => "opcua",
            Source::Modbus => "modbus",
        }
    }
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(1) {
        Some("--serve-plc") => {
            // `--serve-plc N` (OPC UA, as before) or `--serve-plc opcua|modbus N [MS]`: every
            // tag changes each MS milliseconds (default 1 000).
            let (source, n) = match (arg(2), arg(3)) {
                (Some("modbus"), Some(n)) => (Source::Modbus, n),
                (Some("opcua"), Some(n)) => (Source::OpcUa, n),
                (Some(n), _) => (Source::OpcUa, n),
                _ => return Err("--serve-plc [opcua|modbus] N [MS]".into()),
            };
            let every = Duration::from_millis(arg(4).map_or(Ok(1000), str::parse)?);
            return runtime.block_on(serve_plc(source, n.parse()?, every));
        }
        Some("--serve-hub") => {
            let dir = args.get(2).ok_or("--serve-hub DIR")?;
            return runtime.block_on(serve_hub(dir.into()));
        }
        _ => {}
    }
    let second = Duration::from_secs(1);
    match arg(1) {
        Some("python") => {
            let n: usize = arg(2).unwrap_or("10000").parse()?;
            let seconds: u64 = arg(3).map_or(Ok(15), str::parse)?;
            let ours = runtime.block_on(measure(Source::OpcUa, n, second, seconds, true))?;
            let theirs = runtime.block_on(measure_python(n, seconds))?;
            print_python(n, seconds, &ours, &theirs);
        }
        Some("ceiling") => {
            let n: usize = arg(2).unwrap_or("10000").parse()?;
            let seconds: u64 = arg(3).map_or(Ok(10), str::parse)?;
            let mut rows = Vec::new();
            for ms in [1000, 200, 100, 50, 25, 10] {
                let every = Duration::from_millis(ms);
                rows.push(runtime.block_on(measure(Source::Modbus, n, every, seconds, true))?);
            }
            print_ceiling(n, seconds, &rows);
        }
        _ => {
            let (runs, rest): (Vec<(Source, usize)>, usize) = match arg(1) {
                Some("modbus") => (
                    vec![(Source::Modbus, arg(2).unwrap_or("10000").parse()?)],
                    3,
                ),
                Some(n) => (vec![(Source::OpcUa, n.parse()?)], 2),
                None => (
                    vec![
                        (Source::OpcUa, 1_000),
                        (Source::OpcUa, 10_000),
                        (Source::OpcUa, 100_000),
                        (Source::Modbus, 10_000),
                    ],
                    2,
                ),
            };
            let seconds: u64 = arg(rest).map_or(Ok(15), str::parse)?;
            let spool = arg(rest + 1) != Some("off");
            let mut rows = Vec::new();
            for (source, n) in runs {
                match runtime.block_on(measure(source, n, second, seconds, spool)) {
                    Ok(row) => rows.push(row),
                    Err(error) => {
                        // What was measured still counts.
                        print_rows(spool, &rows);
                        return Err(error);
                    }
                }
            }
            print_rows(spool, &rows);
        }
    }
    Ok(())
}

/// What this build and this environment allocate with.
fn allocator() -> String {
    let compiled = if cfg!(feature = "alloc-jemalloc") {
        "jemalloc"
    } else if cfg!(feature = "alloc-mimalloc") {
        "mimalloc"
    } else {
        "glibc malloc"
    };
    match std::env::var("MALLOC_ARENA_MAX") {
        Ok(arenas) if compiled == "glibc malloc" => {
            format!("{compiled}, MALLOC_ARENA_MAX={arenas}")
        }
        _ => compiled.to_string(),
    }
}

/// The 1-minute load average: the machine is shared, so every table says how busy it was.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn print_rows(spool: bool, rows: &[Row]) {
    println!();
    println!(
        "End to end: simulated PLC (every tag changes each 1 s) → gateway ({}) → emulator over AMQP+TLS; tag maps from YAML; release build, loopback; {}",
        if spool { "spool on, fsync 100ms" } else { "spool off: in-memory queue" },
        allocator()
    );
    println!(
        "| source | tags | readings/s at the hub | gateway CPU µs/reading | CPU % of a core | bytes/reading on the link | latency p50 / p99 end to end | added by the gateway p50 / p99 | RSS median / max in the window MB | RSS peak at start-up MB | RSS peak at reload MB | start-up to first reading | CPU to first reading | simulator / emulator % of a core | load average |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} / {:.0} ms | {:.1} / {:.1} ms | {:.0} / {:.0} | {:.0} | {:.0} | {:.2} s | {:.2} s | {:.0} / {:.0} | {:.1} |",
            r.source.name(),
            r.n,
            r.rate,
            r.cpu_us,
            r.cpu_pct,
            r.bytes,
            r.p50_ms,
            r.p99_ms,
            r.added_p50_ms,
            r.added_p99_ms,
            r.rss_mb,
            r.rss_max_mb,
            r.peak_start_mb,
            r.peak_reload_mb,
            r.first_s,
            r.first_cpu_s,
            r.plc_pct,
            r.hub_pct,
            r.load
        );
    }
    println!(
        "End to end: from the reading's timestamp to the hub's arrival time. Modbus: the timestamp is the poll's response, so all of it is added by the gateway (20 ms linger included). OPC UA: the PLC's change, so it includes the server's wait for its 1 s publishing interval; 1 tag in {STAMP_EVERY} is stamped by the gateway on arrival (a tag map with `timestamps: gateway`), and its latency is the \"added by the gateway\" column."
    );
}

fn print_python(n: usize, seconds: u64, ours: &Row, theirs: &Row) {
    println!();
    println!(
        "{n} OPC UA tags changing each 1 s → Event Hub emulator over AMQP+TLS, {seconds} s window; release build, loopback; {}; load average {:.1}",
        allocator(),
        theirs.load
    );
    println!("| | readings/s at the hub | CPU µs/reading | CPU % of a core | RSS median / max MB | latency p50 | latency p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| tagbridge (spool on, fsync 100ms) | {:.0} | {:.2} | {:.1} | {:.0} / {:.0} | {:.0} ms | {:.0} ms |",
        ours.rate, ours.cpu_us, ours.cpu_pct, ours.rss_mb, ours.rss_max_mb, ours.p50_ms, ours.p99_ms
    );
    println!(
        "| Python: asyncua + azure-eventhub | {:.0} | {:.2} | {:.1} | {:.0} / {:.0} | {:.0} ms | {:.0} ms |",
        theirs.rate, theirs.cpu_us, theirs.cpu_pct, theirs.rss_mb, theirs.rss_max_mb, theirs.p50_ms, theirs.p99_ms
    );
    println!(
        "tagbridge uses 1/{:.0} of the script's CPU per reading and 1/{:.1} of its memory.",
        theirs.cpu_us / ours.cpu_us,
        theirs.rss_mb / ours.rss_mb
    );
}

fn print_ceiling(n: usize, seconds: u64, rows: &[Row]) {
    println!();
    println!(
        "Throughput ceiling: {n} Modbus tags polled ever faster → gateway (spool on, fsync 100ms) → emulator over AMQP+TLS, {seconds} s per step; the simulator and the emulator share the box's cores; release build, loopback; {}",
        allocator()
    );
    println!("| poll every | offered readings/s | readings/s at the hub | gateway CPU µs/reading | gateway % of a core | simulator % | emulator % | added latency p50 / p99 | RSS median MB | load average |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} ms | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} ms | {:.0} | {:.1} |",
            r.every.as_millis(),
            r.n as f64 / r.every.as_secs_f64(),
            r.rate,
            r.cpu_us,
            r.cpu_pct,
            r.plc_pct,
            r.hub_pct,
            r.added_p50_ms,
            r.added_p99_ms,
            r.rss_mb,
            r.load
        );
    }
    println!(
        "The ceiling is the last step where the hub's rate keeps up with the offered rate; the three processes' % of a core say which one ran out of CPU (2 cores = 200 %)."
    );
}

struct Row {
    source: Source,
    n: usize,
    /// How often every tag changes (and is polled or published).
    every: Duration,
    rate: f64,
    cpu_us: f64,
    cpu_pct: f64,
    bytes: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Latency of the readings the gateway stamped (Modbus: every reading).
    added_p50_ms: f64,
    added_p99_ms: f64,
    /// Median and highest of the samples over the window.
    rss_mb: f64,
    rss_max_mb: f64,
    peak_start_mb: f64,
    peak_reload_mb: f64,
    first_s: f64,
    first_cpu_s: f64,
    /// The simulator's and the emulator's CPU over the window, % of a core.
    plc_pct: f64,
    hub_pct: f64,
    load: f64,
}

/// Child: the simulated PLC with `n` tags changing each `every`, until stdin closes.
async fn serve_plc(source: Source, n: usize, every: Duration) -> Result<(), BoxError> {
    let config = match source {
        Source::OpcUa => PlcConfig {
            opcua: Some(OpcUaConfig {
                variables: opcua_load(n, every),
                ..Default::default()
            }),
            ..Default::default()
        },
        Source::Modbus => PlcConfig {
            modbus: Some(ModbusConfig {
                points: modbus_load(n, every),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    let plc = Plc::start(config).await?;
    let address = match source {
        Source::OpcUa => plc.opcua_endpoint().ok_or("no endpoint")?.to_string(),
        Source::Modbus => plc.modbus_addr().ok_or("no Modbus address")?.to_string(),
    };
    println!("READY {address}");
    std::io::stdout().flush()?;
    wait_for_stdin_close().await;
    plc.shutdown().await;
    Ok(())
}

/// Every how many OPC UA tags one is stamped by the gateway on arrival (`timestamps: gateway`,
/// in a tag map of its own, `sensor_id` `stamp:<i>`): its latency at the hub is what the
/// gateway adds. The others carry the PLC's change time: their latency is end to end.
const STAMP_EVERY: usize = 100;

/// The tag maps the gateway loads, as (file name, YAML): `n` tags of the load the simulator
/// serves, polled or published every `interval`.
fn tag_maps(
    source: Source,
    n: usize,
    interval: Duration,
    address: &str,
    dir: &std::path::Path,
) -> Vec<(&'static str, String)> {
    let every = format!("{}ms", interval.as_millis());
    let opcua_head = |stamps: &str| {
        format!(
            "source:\n  opcua: {{endpoint: \"{address}\", security_policy: none, publishing_interval: {every}, pki_dir: \"{}\"{stamps}}}\ndefaults: {{interval: {every}}}\ntags:\n",
            dir.join("pki").display()
        )
    };
    match source {
        Source::OpcUa => {
            let (mut load, mut stamped) = (opcua_head(""), opcua_head(", timestamps: gateway"));
            for i in 0..n {
                let node = load_path(i);
                if i % STAMP_EVERY == STAMP_EVERY / 2 {
                    stamped.push_str(&format!(
                        "  - {{sensor_id: \"stamp:{i}\", node: \"ns=2;s={node}\"}}\n"
                    ));
                } else {
                    load.push_str(&format!(
                        "  - {{sensor_id: \"load:{i}\", node: \"ns=2;s={node}\"}}\n"
                    ));
                }
            }
            let mut maps = vec![("load.yaml", load)];
            if n >= STAMP_EVERY {
                maps.push(("stamped.yaml", stamped));
            }
            maps
        }
        Source::Modbus => {
            let mut yaml = format!(
                "source:\n  modbus: {{tcp: \"{address}\", unit: 1, timeout: 1s}}\ndefaults: {{interval: {every}, type: uint16}}\ntags:\n"
            );
            for i in 0..n {
                yaml.push_str(&format!(
                    "  - {{sensor_id: \"load:{i}\", table: holding_register, address: {i}}}\n"
                ));
            }
            vec![("load.yaml", yaml)]
        }
    }
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), BoxError> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return Err(format!("{what} did not happen within {} s", limit.as_secs()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Long on purpose: one run is one sequence (children, files, start, warm-up, window,
/// reload, stop, latencies) whose steps share the clocks they read.
async fn measure(
    source: Source,
    n: usize,
    every: Duration,
    seconds: u64,
    spool_on: bool,
) -> Result<Row, BoxError> {
    let dir = std::env::temp_dir().join(format!(
        "tagbridge-e2e-bench-{}-{}-{n}",
        std::process::id(),
        source.name()
    ));
    std::fs::create_dir_all(&dir)?;
    let ms = every.as_millis().to_string();
    let (mut plc, address) = child(&["--serve-plc", source.name(), &n.to_string(), &ms])?;
    let (mut hub, ready) = child(&["--serve-hub", &dir.display().to_string()])?;
    let (ca, connection_string) = ready.split_once(' ').ok_or("bad READY line")?;
    eprintln!(
        "{} {n} tags every {ms} ms: simulator at {address}",
        source.name()
    );
    std::fs::create_dir_all(dir.join("maps"))?;
    for (name, yaml) in tag_maps(source, n, every, &address, &dir) {
        std::fs::write(dir.join("maps").join(name), yaml)?;
    }
    // gateway.yaml, built the way `tagbridge run` builds it: 1 GiB spool, fsync every 100 ms
    // (the shipped defaults).
    std::fs::write(dir.join("connection-string"), connection_string)?;
    let gateway_yaml = dir.join("gateway.yaml");
    let gateway_text = format!(
        "tag_maps: maps\nsink:\n  eventhub:\n    connection_string_file: connection-string\n    ca_file: \"{ca}\"\n    shutdown_grace: 5s\nspool:\n  dir: spool\ntelemetry:\n  metrics: \"off\"\n"
    );
    std::fs::write(&gateway_yaml, &gateway_text)?;

    // Start-up: from loading gateway.yaml and the tag map to the first reading at the hub.
    reset_peak_rss();
    let (start, start_cpu) = (Instant::now(), cpu_seconds());
    let prepared = tagbridge::runtime::prepare(&gateway_yaml).map_err(|r| r.render())?;
    // Live reload as `tagbridge run` does it (the same loader), counting the loads.
    let loads = Arc::new(AtomicU64::new(0));
    let reload = Reload {
        load: {
            let (path, loads) = (gateway_yaml.clone(), loads.clone());
            Arc::new(move || {
                let plans = tagbridge::runtime::prepare(&path).map(|p| p.tag_maps);
                loads.fetch_add(1, Ordering::SeqCst);
                plans
            })
        },
        watch: vec![gateway_yaml.clone()],
        every: Duration::from_millis(500),
    };
    let tweaks = Tweaks {
        // Spool off: an in-memory queue in its place.
        journal: (!spool_on).then(|| Journal::memory(1 << 20)),
        reload: Some(reload),
        ..Default::default()
    };
    let gateway = Gateway::build(prepared, tweaks)?;
    let stats = gateway.sink().ok_or("no Event Hub sink")?.stats.clone();
    let accepted = move || stats.events_accepted.load(Ordering::Relaxed);
    let bytes_sent = {
        let stats = gateway.sink().ok_or("no Event Hub sink")?.stats.clone();
        move || stats.bytes_sent.load(Ordering::Relaxed)
    };
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(gateway.run(shutdown.clone()));

    wait_for("the first reading", Duration::from_secs(300), || {
        accepted() > 0
    })
    .await?;
    let (first_s, first_cpu_s) = (start.elapsed().as_secs_f64(), cpu_seconds() - start_cpu);
    // Warm up: every item subscribed and a full second of changes delivered.
    wait_for("two rounds of changes", Duration::from_secs(300), || {
        accepted() >= 2 * n as u64
    })
    .await?;
    let peak_start_mb = peak_rss_mb();
    eprintln!(
        "{} {n} tags: flowing after {:.1} s; measuring {seconds} s",
        source.name(),
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window_start = chrono::Utc::now();
    let children = || (process_cpu_seconds(plc.id()), process_cpu_seconds(hub.id()));
    let (e0, b0, c0, t0) = (accepted(), bytes_sent(), cpu_seconds(), Instant::now());
    let (plc0, hub0) = children();
    let rss = RssSamples::over(None, seconds).await;
    let (e1, b1, c1, t1) = (accepted(), bytes_sent(), cpu_seconds(), Instant::now());
    let (plc1, hub1) = children();
    let window_end = chrono::Utc::now();
    let load = load_average();

    // A live reload: gateway.yaml touched, so every tag map is loaded and checked again (the
    // tag map is unchanged, so its source stays connected).
    reset_peak_rss();
    let before = loads.load(Ordering::SeqCst);
    std::fs::write(&gateway_yaml, format!("{gateway_text}# touched\n"))?;
    wait_for("the reload", Duration::from_secs(120), || {
        loads.load(Ordering::SeqCst) > before
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak_reload_mb = peak_rss_mb();

    shutdown.cancel();
    let _ = gateway.await;
    drop(hub.stdin.take());
    let _ = hub.wait();
    drop(plc.stdin.take());
    let _ = plc.wait();

    let (end_to_end, stamped) = latencies(&dir.join("events.jsonl"), window_start, window_end)?;
    // Modbus readings carry the poll's response time: every one is stamped by the gateway.
    let added = if source == Source::Modbus {
        &end_to_end
    } else {
        &stamped
    };
    let wall = (t1 - t0).as_secs_f64();
    let events = (e1 - e0) as f64;
    let row = Row {
        source,
        n,
        every,
        rate: events / wall,
        cpu_us: (c1 - c0) * 1e6 / events.max(1.0),
        cpu_pct: (c1 - c0) / wall * 100.0,
        bytes: (b1 - b0) as f64 / events.max(1.0),
        p50_ms: percentile(&end_to_end, 0.50),
        p99_ms: percentile(&end_to_end, 0.99),
        added_p50_ms: percentile(added, 0.50),
        added_p99_ms: percentile(added, 0.99),
        rss_mb: rss.median(),
        rss_max_mb: rss.max(),
        peak_start_mb,
        peak_reload_mb,
        first_s,
        first_cpu_s,
        plc_pct: (plc1 - plc0) / wall * 100.0,
        hub_pct: (hub1 - hub0) / wall * 100.0,
        load,
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}

/// The Python script's run: what [`Row`] has for tagbridge, where it applies.
async fn measure_python(n: usize, seconds: u64) -> Result<Row, BoxError> {
    let dir = std::env::temp_dir().join(format!(
        "tagbridge-e2e-bench-{}-python-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let python = python_venv()?;
    let (mut plc, endpoint) = child(&["--serve-plc", "opcua", &n.to_string()])?;
    let (mut hub, ready) = child(&["--serve-hub", &dir.display().to_string()])?;
    let (ca, connection_string) = ready.split_once(' ').ok_or("bad READY line")?;
    let nodes = dir.join("nodes.txt");
    let list: String = (0..n)
        .map(|i| format!("load:{i} ns=2;s={}\n", load_path(i)))
        .collect();
    std::fs::write(&nodes, list)?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/python/opcua_to_eventhub.py");
    eprintln!("python {n} tags: {} {}", python.display(), script.display());
    let start = Instant::now();
    let mut script = Command::new(&python)
        .arg(&script)
        .args([
            endpoint.as_str(),
            &nodes.display().to_string(),
            connection_string,
            ca,
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("python.log"))?)
        .spawn()?;
    let pid = script.id();
    let stdout = script.stdout.take().ok_or("no stdout")?;
    let ready = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l == "READY")
    })
    .await?;
    if !ready {
        let log = std::fs::read_to_string(dir.join("python.log")).unwrap_or_default();
        return Err(format!("the Python script did not start:\n{log}").into());
    }
    // Warm up as for tagbridge: every item subscribed, then a few rounds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!(
        "python {n} tags: subscribed after {:.1} s; measuring {seconds} s",
        start.elapsed().as_secs_f64()
    );
    let window_start = chrono::Utc::now();
    let (c0, t0) = (process_cpu_seconds(pid), Instant::now());
    let rss = RssSamples::over(Some(pid), seconds).await;
    let (c1, t1) = (process_cpu_seconds(pid), Instant::now());
    let window_end = chrono::Utc::now();
    let _ = script.kill();
    let _ = script.wait();
    drop(hub.stdin.take());
    let _ = hub.wait();
    drop(plc.stdin.take());
    let _ = plc.wait();
    let load = load_average();
    let (latencies, _) = latencies(&dir.join("events.jsonl"), window_start, window_end)?;
    let wall = (t1 - t0).as_secs_f64();
    let events = latencies.len() as f64;
    let row = Row {
        source: Source::OpcUa,
        n,
        every: Duration::from_secs(1),
        rate: events / wall,
        cpu_us: (c1 - c0) * 1e6 / events.max(1.0),
        cpu_pct: (c1 - c0) / wall * 100.0,
        bytes: f64::NAN,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        added_p50_ms: f64::NAN,
        added_p99_ms: f64::NAN,
        rss_mb: rss.median(),
        rss_max_mb: rss.max(),
        peak_start_mb: f64::NAN,
        peak_reload_mb: f64::NAN,
        first_s: f64::NAN,
        first_cpu_s: f64::NAN,
        plc_pct: f64::NAN,
        hub_pct: f64::NAN,
        load,
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}

/// The Python of the tests' venv (`~/.cache/tagbridge/pyenv-*`), `TAGBRIDGE_PYTHON`, or a venv
/// made here with the tests' requirements.
fn python_venv() -> Result<std::path::PathBuf, BoxError> {
    if let Ok(python) = std::env::var("TAGBRIDGE_PYTHON") {
        return Ok(python.into());
    }
    let home = std::env::var("HOME").map_err(|_| "HOME is not set")?;
    let cache = std::path::Path::new(&home).join(".cache/tagbridge");
    if let Ok(entries) = std::fs::read_dir(&cache) {
        for entry in entries.flatten() {
            let python = entry.path().join("bin/python");
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("pyenv-") && python.exists() {
                return Ok(python);
            }
        }
    }
    let venv = cache.join("pyenv-bench");
    let requirements =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/requirements.txt");
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?
        .success()
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "-r"])
            .arg(&requirements)
            .status()?
            .success();
    if !ok {
        return Err("cannot make a Python venv with tests/python/requirements.txt".into());
    }
    Ok(venv.join("bin/python"))
}

/// The `p` quantile (0..=1) of sorted `values`; NaN when there are none.
fn percentile(values: &[f64], p: f64) -> f64 {
    values
        .get(((values.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Milliseconds from each reading's timestamp to its arrival at the hub, for readings that
/// arrived within the window, sorted: the PLC-stamped readings, then the gateway-stamped ones
/// (`sensor_id` `stamp:…`).
fn latencies(
    path: &std::path::Path,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<(Vec<f64>, Vec<f64>), BoxError> {
    let (mut plc, mut gateway) = (Vec::new(), Vec::new());
    for (sensor, ms) in hub_latencies(path, from, to)? {
        if sensor.starts_with("stamp:") {
            &mut gateway
        } else {
            &mut plc
        }
        .push(ms);
    }
    plc.sort_by(f64::total_cmp);
    gateway.sort_by(f64::total_cmp);
    Ok((plc, gateway))
}
