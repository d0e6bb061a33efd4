//! On-demand fuzzing on stable Rust: each target gets generated and mutated inputs for as long
//! as asked, and any panic, hang or runaway memory is reported with the input that caused it.
//!
//! ```text
//! cargo run --release --example fuzz -- --minutes 10                # every target, in turn
//! cargo run --release --example fuzz -- --minutes 2 --target tag_map
//! cargo run --release --example fuzz -- --list
//! ```
//! Options: `--seed N` repeats a run; `--out DIR` (default `fuzz-findings/`) receives each
//! failing input as `<target>-<n>.bin`. A hang (one input over `--hang-seconds`, default 10)
//! or memory over `--max-rss-mb` (default 2048) prints the input's file and exits 1.
//!
//! To add a target: a `pub fn name(data: &[u8])` in the library that panics only on a bug,
//! and a line in [`TARGETS`] naming it and the inputs it starts from.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench_support::rss_mb;
use rand::{Rng, SeedableRng};

/// A fuzz target: its name, the function, and the files its first inputs come from.
struct Target {
    name: &'static str,
    run: fn(&[u8]),
    /// Files and folders (every file inside) whose contents seed the mutations.
    seeds: &'static [&'static str],
    /// Whether generated hostile YAML suits this target.
    yaml: bool,
}

/// Every target. Add yours here.
const TARGETS: &[Target] = &[
    Target {
        name: "yaml_tree",
        run: tagbridge::mapping::fuzz::yaml_tree,
        seeds: &["tag-maps", "tests/fixtures/broken", "examples/gateway.yaml"],
        yaml: true,
    },
    Target {
        name: "tag_map",
        run: tagbridge::mapping::fuzz::tag_map,
        seeds: &["tag-maps", "tests/fixtures/broken"],
        yaml: true,
    },
    Target {
        name: "gateway",
        run: tagbridge::mapping::fuzz::gateway,
        seeds: &["examples/gateway.yaml", "tests/fixtures/gateway-broken"],
        yaml: true,
    },
    Target {
        name: "modbus_response",
        run: tagbridge::source::modbus::fuzz::response,
        seeds: &["tests/fixtures/modbus-answers"],
        yaml: false,
    },
    Target {
        name: "hub_amqp",
        run: tagbridge::sim::hub::amqp::fuzz_opening,
        seeds: &[],
        yaml: false,
    },
    Target {
        name: "hub_ws",
        run: tagbridge::sim::hub::ws::fuzz_websocket,
        seeds: &[],
        yaml: false,
    },
];

struct Options {
    minutes: f64,
    target: Option<String>,
    seed: u64,
    out: PathBuf,
    hang: Duration,
    max_rss_mb: f64,
}

fn main() {
    let options = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let chosen: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| options.target.as_deref().is_none_or(|n| n == t.name))
        .collect();
    if chosen.is_empty() {
        eprintln!(
            "error: no target named {:?}; --list shows them",
            options.target
        );
        std::process::exit(2);
    }
    // Panics are findings, reported below with their input; keep the default hook quiet. The
    // hook counts every panic, also those inside tasks a target's runtime spawned, which the
    // runtime catches itself (a hostile frame that panics a library's connection task is a
    // finding even though the target returns normally).
    std::panic::set_hook(Box::new(|_| {
        PANICS.fetch_add(1, Ordering::Relaxed);
    }));
    let per_target = Duration::from_secs_f64(options.minutes * 60.0 / chosen.len() as f64);
    println!(
        "{:<12} {:>10} {:>10} {:>9} {:>8}",
        "target", "inputs", "inputs/s", "findings", "seed"
    );
    let mut total_findings = 0;
    for target in chosen {
        let (inputs, findings) = fuzz(target, per_target, &options);
        total_findings += findings;
        println!(
            "{:<12} {inputs:>10} {:>10.0} {findings:>9} {:>8}",
            target.name,
            inputs as f64 / per_target.as_secs_f64(),
            options.seed
        );
    }
    if total_findings > 0 {
        println!("findings written to {}", options.out.display());
        std::process::exit(1);
    }
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut options = Options {
        minutes: 1.0,
        target: None,
        seed: rand::random(),
        out: PathBuf::from("fuzz-findings"),
        hang: Duration::from_secs(10),
        max_rss_mb: 2048.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--minutes" => options.minutes = value()?.parse().map_err(|e| format!("{e}"))?,
            "--target" => options.target = Some(value()?),
            "--seed" => options.seed = value()?.parse().map_err(|e| format!("{e}"))?,
            "--out" => options.out = PathBuf::from(value()?),
            "--hang-seconds" => {
                options.hang = Duration::from_secs(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--max-rss-mb" => options.max_rss_mb = value()?.parse().map_err(|e| format!("{e}"))?,
            "--list" => {
                for t in TARGETS {
                    println!("{}", t.name);
                }
                return Ok(None);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Some(options))
}

/// Every panic of the process so far, on any thread (see the hook in `main`).
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Runs one target for `time`; returns (inputs tried, findings).
fn fuzz(target: &Target, time: Duration, options: &Options) -> (u64, u64) {
    let seeds = seed_inputs(target.seeds);
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    // The watchdog sees the input being run and when it started; a hang is reported from there.
    let current: Arc<Mutex<(Vec<u8>, Instant)>> =
        Arc::new(Mutex::new((Vec::new(), Instant::now())));
    let running = Arc::new(AtomicU64::new(1));
    let watchdog = {
        let (current, running) = (current.clone(), running.clone());
        let (hang, max_rss, out, name) = (
            options.hang,
            options.max_rss_mb,
            options.out.clone(),
            target.name,
        );
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) == 1 {
                std::thread::park_timeout(Duration::from_millis(200));
                let Ok(guard) = current.lock() else { return };
                let (input, started) = &*guard;
                let why = if started.elapsed() > hang {
                    Some(format!("hang: one input ran over {} s", hang.as_secs()))
                } else if rss_mb() > max_rss {
                    Some(format!("memory: over {max_rss} MB resident"))
                } else {
                    None
                };
                if let Some(why) = why {
                    let file = save(&out, name, "stuck", input);
                    eprintln!("{name}: {why}; input in {}", file.display());
                    std::process::exit(1);
                }
            }
        })
    };
    let end = Instant::now() + time;
    let (mut inputs, mut findings) = (0u64, 0u64);
    while Instant::now() < end {
        let data = next_input(&mut rng, target, &seeds);
        if let Ok(mut guard) = current.lock() {
            *guard = (data.clone(), Instant::now());
        }
        inputs += 1;
        let panics_before = PANICS.load(Ordering::Relaxed);
        let unwound = std::panic::catch_unwind(|| (target.run)(&data)).is_err();
        if unwound || PANICS.load(Ordering::Relaxed) != panics_before {
            findings += 1;
            let file = save(&options.out, target.name, &findings.to_string(), &data);
            eprintln!("{}: panic; input in {}", target.name, file.display());
        }
    }
    running.store(0, Ordering::Relaxed);
    watchdog.thread().unpark();
    let _ = watchdog.join();
    (inputs, findings)
}

fn next_input(rng: &mut impl Rng, target: &Target, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.gen_range(0..3) {
        0 if target.yaml => {
            let budget = rng.gen_range(16..20_000);
            tagbridge::mapping::fuzz::hostile_yaml(rng, budget).into_bytes()
        }
        1 if !seeds.is_empty() => {
            let mut data = seeds[rng.gen_range(0..seeds.len())].clone();
            tagbridge::mapping::fuzz::mutate(rng, &mut data);
            data
        }
        _ => (0..rng.gen_range(0..2048)).map(|_| rng.gen()).collect(),
    }
}

/// The contents of every seed file (folders: each file inside), from the repository root.
fn seed_inputs(paths: &[&str]) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for p in paths {
        let path = root.join(p);
        let files: Vec<PathBuf> = match std::fs::read_dir(&path) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => vec![path],
        };
        out.extend(files.iter().filter_map(|f| std::fs::read(f).ok()));
    }
    out
}

fn save(dir: &Path, target: &str, n: &str, data: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{target}-{n}.bin"));
    if let Ok(mut f) = std::fs::File::create(&path) {
        let _ = f.write_all(data);
    }
    path
}
