//! Benchmark of the Modbus source: 10 000 contiguous tags on one device (the simulated PLC, in
//! this process on its own runtime), polled back to back over loopback Modbus TCP.
//!
//! ```text
//! cargo run --release --example modbus_bench -- [SECONDS per row, default 5] [TAGS, default 10000]
//! ```
//!
//! For each data type it prints: reads per cycle as planned, the minimum the 125-register limit
//! allows for contiguous tags of that size (`ceil(tags / floor(125 / registers))`, since a tag
//! never straddles two reads), the reads the last measured cycle actually sent, cycle time, readings/s, and the
//! CPU time of the source per reading. The source runs alone on one thread (a current-thread
//! runtime) whose CPU clock is read, so the simulator's work is not counted. The poll interval
//! is 1 ms, so cycles run back to back (every cycle is an overrun, by design here).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tagbridge::config::tagmap::{DataType, Table, WordOrder};
use tagbridge::config::Pos;
use tagbridge::mapping::plan::{
    ModbusAddress, ModbusPlan, ModbusTransport, SourcePlan, TagAddress, TagMapPlan, TagPlan,
    Transform,
};
use tagbridge::sample::SampleBatch;
use tagbridge::sim::plc::{ModbusConfig, ModbusPoint, Plc, PlcConfig};
use tagbridge::sim::signal::{Signal, SignalValue};
use tagbridge::source::modbus::{self, planner, Tuning};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Row {
    data_type: DataType,
    tags: usize,
    planned: usize,
    minimum: usize,
    sent_per_cycle: u64,
    cycle_ms: f64,
    readings_per_s: f64,
    cpu_us_per_reading: f64,
    cpu_share: f64,
    samples_per_cycle: f64,
}

fn addresses(data_type: DataType, n: usize) -> Vec<ModbusAddress> {
    (0..n)
        .map(|i| ModbusAddress {
            unit: 1,
            table: Table::HoldingRegister,
            address: (i * usize::from(data_type.registers())) as u16,
            data_type,
            order: WordOrder::ABCD,
            bit: None,
            length: 1,
        })
        .collect()
}

fn run_row(
    sim: &tokio::runtime::Runtime,
    data_type: DataType,
    n: usize,
    seconds: u64,
) -> Result<Row, Box<dyn std::error::Error>> {
    let tags = addresses(data_type, n);
    let points = tags
        .iter()
        .map(|a| ModbusPoint {
            unit: a.unit,
            table: a.table,
            address: a.address,
            data_type: Some(a.data_type),
            order: a.order,
            bit: None,
            length: None,
            signal: Signal::Constant(SignalValue::Int(i64::from(a.address % 1000))),
        })
        .collect();
    let plc = sim.block_on(Plc::start(PlcConfig {
        modbus: Some(ModbusConfig {
            listen: Some("127.0.0.1:0".into()),
            points,
            ..Default::default()
        }),
        ..Default::default()
    }))?;
    let addr = plc.modbus_addr().ok_or("no Modbus address")?;
    let source = ModbusPlan {
        transport: ModbusTransport::Tcp(addr.to_string()),
        timeout: Duration::from_secs(2),
        max_gap: 8,
        connections: std::num::NonZeroU8::MIN,
    };
    let plan = TagMapPlan {
        path: "bench.yaml".into(),
        source: SourcePlan::Modbus(source.clone()),
        tags: tags
            .iter()
            .enumerate()
            .map(|(i, a)| TagPlan {
                sensor_id: format!("bench:{i}").into(),
                address: TagAddress::Modbus(*a),
                interval: Duration::from_millis(1),
                transform: Transform::default(),
                extra: "".into(),
                pos: Pos { line: 1, col: 1 },
            })
            .collect(),
        disabled: 0,
    };
    let indexed: Vec<(usize, ModbusAddress)> = tags.iter().copied().enumerate().collect();
    let planned = planner::plan(
        &indexed,
        planner::Limits::for_plan(&source),
        &planner::Blocked::default(),
    )
    .len();
    let per_read = usize::from(planner::MAX_REGISTERS / data_type.registers());
    let minimum = n.div_ceil(per_read);

    // The collector lives on the simulator's runtime, so it is not billed to the source.
    // Capacity 4 batches: the source waits when the collector is behind.
    let (tx, mut rx) = mpsc::channel::<SampleBatch>(4);
    let received = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&received);
    sim.spawn(async move {
        while let Some(batch) = rx.recv().await {
            counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    });

    let handle = std::thread::spawn(move || -> Result<_, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let cancel = CancellationToken::new();
            let tracker = TaskTracker::new();
            let counters = modbus::start(
                &plan,
                &source,
                Tuning::default(),
                tx,
                cancel.child_token(),
                &tracker,
            );
            // Warm up: connect and run a few cycles.
            while counters.snapshot().cycles < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (c0, cpu0, t0) = (counters.snapshot(), thread_cpu(), Instant::now());
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let (c1, cpu1, elapsed) = (counters.snapshot(), thread_cpu(), t0.elapsed());
            cancel.cancel();
            tracker.close();
            tracker.wait().await;
            Ok((c0, c1, cpu1.saturating_sub(cpu0), elapsed))
        })
    });
    let (c0, c1, cpu, elapsed) = handle.join().map_err(|_| "source thread panicked")??;
    sim.block_on(plc.shutdown());
    let cycles = (c1.cycles - c0.cycles).max(1) as f64;
    let samples = (c1.samples - c0.samples) as f64;
    let secs = elapsed.as_secs_f64();
    Ok(Row {
        data_type,
        tags: n,
        planned,
        minimum,
        sent_per_cycle: c1.last_cycle_reads,
        cycle_ms: secs * 1000.0 / cycles,
        readings_per_s: samples / secs,
        cpu_us_per_reading: cpu.as_secs_f64() * 1e6 / samples.max(1.0),
        cpu_share: cpu.as_secs_f64() / secs * 100.0,
        samples_per_cycle: samples / cycles,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let n: usize = args.get(2).map_or(Ok(10_000), |s| s.parse())?;
    let sim = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!(
        "Modbus source, {n} contiguous holding registers tags on one device, loopback TCP, {seconds} s per row"
    );
    println!(
        "| type    | tags   | reads/cycle planned | minimum | sent/cycle | cycle ms | readings/s | CPU µs/reading | source CPU % | values/cycle |"
    );
    println!(
        "|---------|--------|---------------------|---------|------------|----------|------------|----------------|--------------|--------------|"
    );
    for data_type in [DataType::Uint16, DataType::Float32, DataType::Float64] {
        let r = run_row(&sim, data_type, n, seconds)?;
        println!(
            "| {:<7} | {:>6} | {:>19} | {:>7} | {:>10} | {:>8.2} | {:>10.0} | {:>14.3} | {:>12.1} | {:>12.0} |",
            r.data_type.name(),
            r.tags,
            r.planned,
            r.minimum,
            r.sent_per_cycle,
            r.cycle_ms,
            r.readings_per_s,
            r.cpu_us_per_reading,
            r.cpu_share,
            r.samples_per_cycle,
        );
        if r.planned != r.minimum || r.sent_per_cycle != r.minimum as u64 {
            return Err(format!(
                "{}: the planner plans {} reads per cycle and {} were sent, the minimum is {}",
                r.data_type.name(),
                r.planned,
                r.sent_per_cycle,
                r.minimum
            )
            .into());
        }
    }
    Ok(())
}
