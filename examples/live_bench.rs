//! The live view's cost at scale (not a test): 100 000 tags in 100 tag maps of 1 000.
//!
//! ```text
//! cargo run --release --example live_bench            # 100 000 tags, 20 rounds
//! cargo run --release --example live_bench -- 10000 50
//! ```
//! The mapping stage's per-sample work (what a mapping task does for each sample) is run with
//! the live view off and on, every tag changing every round; the only difference between a
//! gateway with and without the live view is this path, one history point a second and the
//! snapshots served. Printed: CPU µs per sample off/on, RSS of the live slots, and the time and
//! size of one `/api/live` snapshot (every tag, and the page's 2 000-row answer).

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
