//! The live view's cost at scale (not a test): 100 000 tags in 100 tag maps of 1 000.
//!
//! ```text
//! cargo run --release --example live_bench            # 100 000 tags, 20 rounds
//! cargo run --release --example live_bench -- 10000 50
//! cargo run --release --example live_bench -- gateway           # whole gateway, 100 000 tags, 20 s
//! cargo run --release --example live_bench -- gateway 50000 30
//! ```
//! The mapping stage's per-sample work (what a mapping task does for each sample) is run with
//! the live view off and on, every tag changing every round; the only difference between a
//! gateway with and without the live view is this path, one history point a second and the
//! snapshots served. Printed: CPU µs per sample off/on, RSS of the live slots, and the time and
//! size of one `/api/live` snapshot (every tag, and the page's 2 000-row answer).
//!
//! `gateway` mode measures the whole gateway instead: the simulated PLC (a child process) serves
//! N OPC UA variables changing every second; the gateway (another child process, so its CPU and
//! memory are its own: `Gateway::build` as `tagbridge run` does, OPC UA source → mapping → JSON
//! lines to /dev/null) runs once with `telemetry.live_view: false` and once with it on. Printed
//! per run: readings/s, CPU % of one core and µs per reading over the window, RSS and peak RSS;
//! with the live view on, the time and size of one `/api/live` answer over HTTP on loopback
//! (every tag, and the page's 2 000-row answer) while the gateway is under that load.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::{cpu_seconds, rss_mb};
use tagbridge::config::tagmap::{DataType, Table, WordOrder};
use tagbridge::config::Pos;
use tagbridge::mapping::plan::{
    ModbusAddress, ModbusPlan, ModbusTransport, SourcePlan, TagAddress, TagMapPlan, TagPlan,
    Transform,
};
use tagbridge::mapping::Mapper;
use tagbridge::sample::{RawValue, Sample};
use tagbridge::telemetry::live::{LiveMap, LiveView, Query};

const PER_MAP: usize = 1_000;

fn plan(map: usize, n: usize) -> TagMapPlan {
    TagMapPlan {
        path: format!("tag-maps/line-{map}.yaml").into(),
        source: SourcePlan::Modbus(ModbusPlan {
            transport: ModbusTransport::Tcp(format!("10.0.{}.{}:502", map / 250, map % 250)),
            timeout: Duration::from_secs(1),
            max_gap: 8,
            connections: std::num::NonZeroU8::MIN,
        }),
        tags: (0..n)
            .map(|i| TagPlan {
                sensor_id: format!("line-{map}:tag-{i}").into(),
                address: TagAddress::Modbus(ModbusAddress {
                    unit: 1,
                    table: Table::HoldingRegister,
                    address: (i * 2) as u16,
                    data_type: DataType::Float32,
                    order: WordOrder::ABCD,
                    bit: None,
                    length: 2,
                }),
                interval: Duration::from_secs(1),
                transform: Transform::default(),
                extra: ",\"site\":\"plant-a\"".into(),
                pos: Pos {
                    line: 10 + i as u32,
                    col: 5,
                },
            })
            .collect(),
        disabled: 0,
    }
}

/// One round: every tag of every map gets a new value. Returns samples mapped.
fn round(mappers: &mut [Mapper], live: Option<&[Arc<LiveMap>]>, r: usize) -> u64 {
    let now = chrono::Utc::now();
    let now_ms = now.timestamp_millis();
    let mut n = 0;
    for (m, mapper) in mappers.iter_mut().enumerate() {
        let batch: Vec<Sample> = (0..PER_MAP)
            .map(|tag| Sample {
                tag,
                timestamp: now,
                value: RawValue::Float((r * 7 + tag) as f64 * 0.5),
            })
            .collect();
        let mut out = Vec::with_capacity(batch.len());
        for s in &batch {
            let reading = mapper.map(s);
            if let Some(live) = live {
                live[m].observe(s.tag, reading.as_ref(), false, now_ms);
            }
            out.extend(reading);
        }
        n += batch.len() as u64;
        std::hint::black_box(out);
    }
    n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gateway") => return gateway::compare(&args[2..]),
        Some("--serve-plc") => return gateway::serve_plc(&args[2..]),
        Some("--run-gateway") => return gateway::run_gateway(&args[2..]),
        _ => {}
    }
    let tags: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let maps = tags.div_ceil(PER_MAP);
    let plans: Vec<TagMapPlan> = (0..maps).map(|m| plan(m, PER_MAP)).collect();
    let mut mappers: Vec<Mapper> = plans.iter().map(Mapper::new).collect();
    round(&mut mappers, None, 0);

    let cpu = cpu_seconds();
    let mut samples = 0;
    for r in 1..=rounds {
        samples += round(&mut mappers, None, r);
    }
    let off_us = (cpu_seconds() - cpu) * 1e6 / samples as f64;

    let rss_before = rss_mb();
    let view = LiveView::new();
    let live: Vec<Arc<LiveMap>> = plans
        .iter()
        .enumerate()
        .map(|(m, p)| {
            let map = Arc::new(LiveMap::for_plan(
                p,
                format!("line-{m}").into(),
                Box::new(|| true),
            ));
            view.add(map.clone());
            map
        })
        .collect();
    round(&mut mappers, Some(&live), rounds + 1);
    let rss_after = rss_mb();

    let cpu = cpu_seconds();
    let mut samples = 0;
    for r in rounds + 2..=2 * rounds + 1 {
        samples += round(&mut mappers, Some(&live), r);
    }
    let on_us = (cpu_seconds() - cpu) * 1e6 / samples as f64;

    let time = |q: &Query| {
        let started = Instant::now();
        let json = view.snapshot_json(q);
        (started.elapsed(), json.len())
    };
    time(&Query::default());
    let (full_t, full_len) = time(&Query::default());
    let page = Query {
        limit: Some(2_000),
        ..Default::default()
    };
    let (page_t, page_len) = time(&page);
    let one = Query {
        filter: format!("line-{}:tag-999", maps - 1),
        ..Default::default()
    };
    let (one_t, _) = time(&one);

    println!("| tags | mapping CPU µs/sample, live view off | on | overhead | live slots RSS MB | snapshot, every tag | page answer (2 000 rows) | filtered to 1 tag |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {tags} | {off_us:.3} | {on_us:.3} | {:+.0} % | {:.1} | {:.0} ms, {:.1} MB | {:.1} ms, {:.0} KB | {:.1} ms |",
        (on_us / off_us - 1.0) * 100.0,
        rss_after - rss_before,
        full_t.as_secs_f64() * 1e3,
        full_len as f64 / 1e6,
        page_t.as_secs_f64() * 1e3,
        page_len as f64 / 1e3,
        one_t.as_secs_f64() * 1e3,
    );
}

/// `gateway` mode: the whole gateway with the live view off and on (see the module docs).
mod gateway {
    use std::io::{BufRead, Read, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::bench_support::{cpu_seconds, peak_rss_mb, rss_mb};
    use tagbridge::runtime::{Gateway, Tweaks};
    use tagbridge::sim::plc::generate::{load_path, opcua_load};
    use tagbridge::sim::plc::{OpcUaConfig, Plc, PlcConfig};
    use tokio_util::sync::CancellationToken;

    type BoxError = Box<dyn std::error::Error>;

    /// Parent: one simulator, then the gateway without and with the live view; prints a table.
    pub fn compare(args: &[String]) {
        let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
        let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
        if let Err(error) = compare_inner(n, seconds) {
            eprintln!("live_bench gateway: {error}");
            std::process::exit(1);
        }
    }

    fn compare_inner(n: usize, seconds: u64) -> Result<(), BoxError> {
        let exe = std::env::current_exe()?;
        let mut plc = Command::new(&exe)
            .args(["--serve-plc", &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let endpoint = std::io::BufReader::new(plc.stdout.take().ok_or("no stdout")?)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("READY ").map(str::to_string))
            .ok_or("the simulator did not start")?;
        eprintln!("{n} tags: simulator at {endpoint}");
        let mut rows = Vec::new();
        for live in ["off", "on"] {
            let out = Command::new(&exe)
                .args([
                    "--run-gateway",
                    &n.to_string(),
                    &seconds.to_string(),
                    &endpoint,
                    live,
                ])
                .stderr(Stdio::inherit())
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let row = text
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .ok_or_else(|| format!("the gateway run ({live}) printed no result: {text}"))?
                .to_string();
            rows.push((live, row));
        }
        drop(plc.stdin.take());
        let _ = plc.wait();
        println!();
        println!("Whole gateway, {n} OPC UA tags changing every 1 s (simulated PLC in another process), JSON lines to /dev/null; release build, loopback, {seconds} s window");
        println!("| live view | readings/s | CPU % of a core | CPU µs/reading | RSS MB | peak RSS MB | /api/live every tag | /api/live page (2 000 rows) |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (live, row) in rows {
            println!("| {live} | {row} |");
        }
        Ok(())
    }

    /// Child: the simulated PLC with `n` variables changing every second, until stdin closes.
    pub fn serve_plc(args: &[String]) {
        let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
        let run = || -> Result<(), BoxError> {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
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
                let _ = tokio::task::spawn_blocking(|| {
                    let mut sink = Vec::new();
                    let _ = std::io::stdin().read_to_end(&mut sink);
                })
                .await;
                plc.shutdown().await;
                Ok(())
            })
        };
        if let Err(error) = run() {
            eprintln!("simulator: {error}");
            std::process::exit(1);
        }
    }

    /// Child: one gateway run; prints `RESULT <table cells>`.
    pub fn run_gateway(args: &[String]) {
        let run = || -> Result<String, BoxError> {
            let n: usize = args.first().ok_or("N")?.parse()?;
            let seconds: u64 = args.get(1).ok_or("SECONDS")?.parse()?;
            let endpoint = args.get(2).ok_or("ENDPOINT")?;
            let live = args.get(3).map(String::as_str) == Some("on");
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(measure(n, seconds, endpoint, live))
        };
        match run() {
            Ok(row) => println!("RESULT {row}"),
            Err(error) => {
                eprintln!("gateway: {error}");
                std::process::exit(1);
            }
        }
    }

    async fn measure(
        n: usize,
        seconds: u64,
        endpoint: &str,
        live: bool,
    ) -> Result<String, BoxError> {
        let dir =
            std::env::temp_dir().join(format!("tagbridge-live-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
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
        let gateway_yaml = dir.join("gateway.yaml");
        std::fs::write(
            &gateway_yaml,
            format!(
                "tag_maps: bench.yaml\nsink:\n  file: {{path: /dev/null}}\ntelemetry:\n  metrics: \"127.0.0.1:0\"\n  live_view: {live}\n  summary_every: 1h\n"
            ),
        )?;
        let prepared = tagbridge::runtime::prepare(&gateway_yaml).map_err(|r| r.render())?;
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let gateway = Gateway::build(
            prepared,
            Tweaks {
                metrics_bound: Some(bound_tx),
                ..Default::default()
            },
        )?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway.run(shutdown.clone()));
        let addr = bound_rx.await?;

        // Warm up: every item subscribed and two full rounds of changes mapped.
        let started = Instant::now();
        while readings(addr).await? < 2 * n as u64 {
            if started.elapsed() > Duration::from_secs(300) {
                return Err("two rounds of changes did not arrive within 300 s".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "live view {}: flowing after {:.1} s; measuring {seconds} s",
            if live { "on" } else { "off" },
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (r0, c0, t0) = (readings(addr).await?, cpu_seconds(), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (r1, c1, t1) = (readings(addr).await?, cpu_seconds(), Instant::now());
        let rss = rss_mb();
        let peak = peak_rss_mb();
        let snapshots = if live {
            // One answer each, as the page and a script would ask, under the same load.
            get(addr, "/api/live?limit=1").await?;
            let (full_t, full_len) = get(addr, "/api/live").await?;
            let (page_t, page_len) = get(addr, "/api/live?limit=2000").await?;
            format!(
                "{:.0} ms, {:.1} MB | {:.0} ms, {:.0} KB",
                full_t.as_secs_f64() * 1e3,
                full_len as f64 / 1e6,
                page_t.as_secs_f64() * 1e3,
                page_len as f64 / 1e3
            )
        } else {
            "(off) | (off)".to_string()
        };
        shutdown.cancel();
        let _ = task.await;
        let _ = std::fs::remove_dir_all(&dir);
        let wall = (t1 - t0).as_secs_f64();
        let mapped = (r1 - r0) as f64;
        Ok(format!(
            "{:.0} | {:.1} | {:.2} | {rss:.0} | {peak:.0} | {snapshots}",
            mapped / wall,
            (c1 - c0) / wall * 100.0,
            (c1 - c0) * 1e6 / mapped.max(1.0),
        ))
    }

    /// Readings mapped so far (the sum of `tagbridge_readings_total` over the tag maps).
    async fn readings(addr: std::net::SocketAddr) -> Result<u64, BoxError> {
        let (_, body) = fetch(addr, "/metrics").await?;
        let text = String::from_utf8_lossy(&body);
        Ok(text
            .lines()
            .filter(|l| l.starts_with("tagbridge_readings_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// Time to the last byte and body size of one GET.
    async fn get(addr: std::net::SocketAddr, path: &str) -> Result<(Duration, usize), BoxError> {
        let started = Instant::now();
        let (status, body) = fetch(addr, path).await?;
        let took = started.elapsed();
        if status != 200 {
            return Err(format!("GET {path}: status {status}").into());
        }
        Ok((took, body.len()))
    }

    /// One HTTP/1.1 GET with `Connection: close`: status and body.
    async fn fetch(addr: std::net::SocketAddr, path: &str) -> Result<(u16, Vec<u8>), BoxError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no HTTP header")?;
        let head = String::from_utf8_lossy(&response[..split]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut body = response[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Ok((status, body))
    }

    /// The payload of a chunked body.
    fn dechunk(mut raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len());
        while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&raw[..eol])
                .ok()
                .and_then(|s| {
                    usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok()
                })
                .unwrap_or(0);
            if size == 0 || raw.len() < eol + 2 + size {
                break;
            }
            out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
            raw = &raw[(eol + 4 + size).min(raw.len())..];
        }
        out
    }
}
