//! Benchmark of the OPC UA source (not a test): N monitored items changing every second on the
//! simulated PLC, read through `tagbridge::source::opcua` exactly as the gateway does.
//!
//! ```text
//! cargo run --release --example opcua_bench                 # 10 000 and 100 000 items
//! cargo run --release --example opcua_bench -- 50000 20     # N items, 20 s measured
//! ```
//! The simulator runs in a child process (this binary with `--serve N`), so CPU time and
//! memory are the gateway side's alone. Printed per N: subscription set-up time (start until
//! every item exists), readings/s over the measuring window, CPU µs per reading (user +
//! system of this process over the window), resident memory at the end, and samples dropped
//! for lack of a consumer (always 0 here: the consumer just counts).

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::{children, rss_mb, Window};
use tagbridge::mapping::{load_all, SourcePlan};
use tagbridge::sim::plc::generate::{load_path, opcua_load};
use tagbridge::sim::plc::{OpcUaConfig, Plc, PlcConfig};
use tagbridge::source::opcua::{self, OpcUaCounters};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    if args.get(1).map(String::as_str) == Some("--serve") {
        let n: usize = args.get(2).ok_or("--serve N")?.parse()?;
        return runtime.block_on(serve(n));
    }
    let sizes: Vec<usize> = match args.get(1) {
        Some(n) => vec![n.parse()?],
        None => vec![10_000, 100_000],
    };
    let seconds: u64 = args.get(2).map_or(Ok(15), |s| s.parse())?;
    let mut rows = Vec::new();
    for n in sizes {
        rows.push(runtime.block_on(measure(n, seconds))?);
    }
    println!();
    println!(
        "OPC UA source, items changing every 1 s, publishing 1 s, {} build, loopback",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "| items | set-up | readings/s | CPU µs/reading | CPU % of a core | RSS MB | dropped |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.2} s | {:.0} | {:.2} | {:.1} | {:.0} | {} |",
            r.n, r.setup, r.rate, r.cpu_us, r.cpu_pct, r.rss_mb, r.dropped
        );
    }
    Ok(())
}

struct Row {
    n: usize,
    setup: f64,
    rate: f64,
    cpu_us: f64,
    cpu_pct: f64,
    rss_mb: f64,
    dropped: u64,
}

/// The child: a simulator with `n` load variables, until stdin closes.
async fn serve(n: usize) -> Result<(), Box<dyn std::error::Error>> {
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
    children::wait_for_stdin_close().await;
    plc.shutdown().await;
    Ok(())
}

async fn measure(n: usize, seconds: u64) -> Result<Row, Box<dyn std::error::Error>> {
    let (mut child, endpoint) = children::child(&["--serve", &n.to_string()])?;
    eprintln!("{n} items: simulator at {endpoint}");

    let dir =
        std::env::temp_dir().join(format!("tagbridge-opcua-bench-{}-{n}", std::process::id()));
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
    tracker.spawn(async move {
        while let Some(batch) = rx.recv().await {
            let batch: Vec<_> = batch.samples;
            count.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    });
    let started = Instant::now();
    let counters = opcua::start(&plan, source, tx, cancel.clone(), &tracker);
    while OpcUaCounters::get(&counters.items_monitored) < n as u64 {
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "only {} of {n} items after 300 s",
                OpcUaCounters::get(&counters.items_monitored)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let setup = started.elapsed().as_secs_f64();
    eprintln!("{n} items: created in {setup:.2} s; warming up");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let window = Window::measure(&received, seconds).await;
    let row = Row {
        n,
        setup,
        rate: window.rate(),
        cpu_us: window.cpu_us_per_item(),
        cpu_pct: window.cpu_pct(),
        rss_mb: rss_mb(),
        dropped: OpcUaCounters::get(&counters.overflow_dropped),
    };
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    drop(child.stdin.take());
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}
