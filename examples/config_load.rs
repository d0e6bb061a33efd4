//! Memory and time to load a large tag map, stage by stage: what `tagbridge check` and `run`
//! pay per tag before the first reading.
//!
//! ```text
//! cargo run --release --example config_load -- 100000 1000000
//! ```
//! Each stage runs in a fresh child process and reports its peak resident memory (VmHWM), so
//! stages do not hide each other's peaks. Stages: the file read as text; the positioned YAML
//! tree; the tree deserialized into the tag map's types; all of `load_all` (parse, check,
//! compile into the plan the runtime uses).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const STAGES: [&str; 4] = ["text", "tree", "deserialize", "load_all"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--stage") {
        return stage(&args[1], Path::new(&args[2]));
    }
    let counts: Vec<usize> = if args.is_empty() {
        vec![100_000]
    } else {
        args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?
    };
    let dir = tempfile::tempdir()?;
    println!(
        "{:>9} {:>8} {:>12} {:>9} {:>10} {:>8}",
        "tags", "file MB", "stage", "peak MB", "bytes/tag", "seconds"
    );
    for n in counts {
        let path = dir.path().join(format!("tags-{n}.yaml"));
        write_tag_map(&path, n)?;
        let file_mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
        for stage in STAGES {
            let out = Command::new(std::env::current_exe()?)
                .args(["--stage", stage])
                .arg(&path)
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut fields = text.split_whitespace();
            let (Some(peak_kb), Some(seconds)) = (fields.next(), fields.next()) else {
                return Err(format!(
                    "stage {stage} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            };
            let peak_kb: f64 = peak_kb.parse()?;
            println!(
                "{n:>9} {file_mb:>8.1} {stage:>12} {:>9.1} {:>10.0} {seconds:>8}",
                peak_kb / 1024.0,
                peak_kb * 1024.0 / n as f64
            );
        }
    }
    Ok(())
}

/// An OPC UA tag map of `n` tags, about 85 bytes each.
fn write_tag_map(path: &Path, n: usize) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "source:\n  opcua: {{endpoint: \"opc.tcp://127.0.0.1:4840\"}}\ndefaults: {{interval: 1s}}\ntags:"
    )?;
    for i in 0..n {
        let line = i / 1000;
        writeln!(
            out,
            "  - {{sensor_id: \"plant:line-{line}:s{i}\", node: \"ns=2;s=Plant/Line{line}/Sensor{i}\"}}"
        )?;
    }
    out.flush()
}

/// Runs one stage and prints its peak resident memory (KB) and seconds.
fn stage(name: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    match name {
        "text" => {
            let text = tagbridge::config::read_file(path).map_err(|p| p.message)?;
            std::hint::black_box(&text);
        }
        "tree" => {
            let text = tagbridge::config::read_file(path).map_err(|p| p.message)?;
            let tree = tagbridge::config::yaml::parse(&text).map_err(|p| p.message)?;
            std::hint::black_box(&tree);
        }
        "deserialize" => {
            let text = tagbridge::config::read_file(path).map_err(|p| p.message)?;
            let parsed = tagbridge::config::parse_tag_map(text);
            std::hint::black_box(&parsed);
        }
        _ => {
            let plans =
                tagbridge::mapping::load_all(&[path.to_path_buf()]).map_err(|r| r.to_string())?;
            std::hint::black_box(&plans);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_kb = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .ok_or("no VmHWM in /proc/self/status")?;
    println!("{peak_kb} {seconds:.2}");
    Ok(())
}
