//! Benchmark of OPC UA structure tags (not a test): N structures of the simulated PLC's
//! `SimRecipe` type, 10 fields each, every field changing every second, read through
//! `tagbridge::source::opcua` (types learned, each structure decoded per tag) and the mapping
//! stage (one reading per field, changes only), exactly as the gateway does.
//!
//! ```text
//! cargo run --release --example structs_bench                # 10 000 structures, 15 s
//! cargo run --release --example structs_bench -- 2000 10     # N structures, 10 s measured
//! ```
//! The simulator runs in a child process (this binary with `--serve N`), so CPU time and
//! memory are the gateway side's alone. Printed: set-up time (start until every structure is
//! monitored), readings/s over the measuring window, CPU µs per reading (user + system of this
//! process over the window), CPU % of one core, resident memory at the end, and fields that
//! could not be read (0 expected).

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::{children, rss_mb, Window};
use tagbridge::config::duration::HumanDuration;
use tagbridge::mapping::{load_all, Mapper, SourcePlan};
use tagbridge::sim::plc::{OpcUaConfig, OpcUaStructure, Plc, PlcConfig};
use tagbridge::sim::signal::Signal;
use tagbridge::source::opcua::{self, OpcUaCounters};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The ten fields read of each structure.
const FIELDS: [&str; 10] = [
    "temperature",
    "pressure",
    "count",
    "phase",
    "name",
    "setpoints[0]",
    "setpoints[1]",
    "setpoints[2]",
    "stage.duration",
    "stage.temperature",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    if args.get(1).map(String::as_str) == Some("--serve") {
        let n: usize = args.get(2).ok_or("--serve N")?.parse()?;
        return runtime.block_on(serve(n));
    }
    let n: usize = args.get(1).map_or(Ok(10_000), |s| s.parse())?;
    let seconds: u64 = args.get(2).map_or(Ok(15), |s| s.parse())?;
    let r = runtime.block_on(measure(n, seconds))?;
    println!();
    println!(
        "OPC UA structures of {} fields, every field changing every 1 s, publishing 1 s, {} build, loopback",
        FIELDS.len(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!("| structures | fields | set-up | readings/s | CPU µs/reading | CPU % of a core | RSS MB | unreadable |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.2} s | {:.0} | {:.2} | {:.1} | {:.0} | {} |",
        r.n,
        r.n * FIELDS.len(),
        r.setup,
        r.rate,
        r.cpu_us,
        r.cpu_pct,
        r.rss_mb,
        r.unsupported
    );
    Ok(())
}

struct Row {
    n: usize,
    setup: f64,
    rate: f64,
    cpu_us: f64,
    cpu_pct: f64,
    rss_mb: f64,
    unsupported: u64,
}

/// Structure `i`: every field a counter stepping once a second (offset by `i`, so values
/// differ between structures).
fn structure(i: usize) -> OpcUaStructure {
    let counter = |start: i64, wrap: Option<u64>| Signal::Counter {
        start,
        step: 1,
        wrap,
        update: Some(HumanDuration(Duration::from_secs(1))),
    };
    let i = i as i64;
    OpcUaStructure {
        path: format!("Bench/S{i}"),
        fields: FIELDS
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let wrap = (*f == "phase").then_some(4);
                (f.to_string(), counter(i + k as i64, wrap))
            })
            .collect(),
    }
}

/// The child: a simulator with `n` structures, until stdin closes.
async fn serve(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let plc = Plc::start(PlcConfig {
        opcua: Some(OpcUaConfig {
            structures: (0..n).map(structure).collect(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    println!("READY {}", plc.opcua_endpoint().ok_or("no endpoint")?);
    std::io::stdout().flush()?;
    children::wait_for_stdin_close().await;
    plc.shutdown().await;
    Ok(())
}

async fn measure(n: usize, seconds: u64) -> Result<Row, Box<dyn std::error::Error>> {
    let (mut child, endpoint) = children::child(&["--serve", &n.to_string()])?;
    eprintln!("{n} structures: simulator at {endpoint}");

    let dir = std::env::temp_dir().join(format!(
        "tagbridge-structs-bench-{}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let mut yaml = format!(
        "source:\n  opcua: {{endpoint: \"{endpoint}\", security_policy: none, publishing_interval: 1s, pki_dir: \"{}\"}}\ndefaults: {{interval: 1s}}\ntags:\n",
        dir.join("pki").display()
    );
    let members: Vec<String> = FIELDS.iter().map(|f| format!("\"{f}\": {{}}")).collect();
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{sensor_id: \"s{i}\", node: \"ns=2;s=Bench/S{i}\", members: {{{}}}}}\n",
            members.join(", ")
        ));
    }
    let path = dir.join("bench.yaml");
    std::fs::write(&path, yaml)?;
    let plan = load_all(&[path]).map_err(|r| r.render())?.remove(0);
    let SourcePlan::OpcUa(source) = &plan.source else {
        return Err("not OPC UA".into());
    };

    let (tx, mut rx) = mpsc::channel::<tagbridge::sample::SampleBatch>(64);
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let received = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&received);
    let mut mapper = Mapper::new(&plan);
    tracker.spawn(async move {
        let mut out = Vec::new();
        while let Some(batch) = rx.recv().await {
            out.clear();
            mapper.apply(&batch, &mut out);
            count.fetch_add(out.len() as u64, Ordering::Relaxed);
        }
    });
    let started = Instant::now();
    let counters = opcua::start(&plan, source, tx, cancel.clone(), &tracker);
    // Every field is a tag of the plan; followers count as monitored once their structure is.
    let total = plan.tags.len() as u64;
    while OpcUaCounters::get(&counters.items_monitored) < total
        || OpcUaCounters::get(&counters.items_failed) > 0
        || received.load(Ordering::Relaxed) == 0
    {
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "only {} of {total} tags after 300 s",
                OpcUaCounters::get(&counters.items_monitored)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let setup = started.elapsed().as_secs_f64();
    eprintln!("{n} structures: monitored in {setup:.2} s; warming up");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let window = Window::measure(&received, seconds).await;
    let row = Row {
        n,
        setup,
        rate: window.rate(),
        cpu_us: window.cpu_us_per_item(),
        cpu_pct: window.cpu_pct(),
        rss_mb: rss_mb(),
        unsupported: OpcUaCounters::get(&counters.unsupported),
    };
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    drop(child.stdin.take());
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}
