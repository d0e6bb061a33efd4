//! The benches' child processes: a bench starts itself again in a child mode (`--serve-hub`,
//! `--serve-plc …`) so that the simulator's and the emulator's CPU and memory are not counted
//! as the gateway's. A child prints one `READY …` line and lives until its stdin closes.

use std::io::{BufRead as _, Write as _};
use std::process::{Child, Command, Stdio};

use tagbridge::sim::hub::{Hub, HubConfig};

pub type BoxError = Box<dyn std::error::Error>;

/// Child: the emulator writing every accepted event to `dir/events.jsonl`, until stdin closes.
/// Its READY line carries the CA file and the connection string.
pub async fn serve_hub(dir: std::path::PathBuf) -> Result<(), BoxError> {
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

/// Returns once the parent closes this child's stdin (or exits).
pub async fn wait_for_stdin_close() {
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
pub fn child(args: &[&str]) -> Result<(Child, String), BoxError> {
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

/// Every reading in the emulator's output file (`serve_hub`'s `events.jsonl`) that arrived
/// between `from` and `to`: its `sensor_id` and the milliseconds from its `timestamp` to its
/// arrival at the hub.
pub fn hub_latencies(
    path: &std::path::Path,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<(String, f64)>, BoxError> {
    let rfc3339 = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for line in file.lines() {
        let line = line?;
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let Some(arrived) = rfc3339(&event["arrived"]).filter(|a| *a >= from && *a <= to) else {
            continue;
        };
        let body: serde_json::Value = event["body"]
            .as_str()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default();
        if let Some(ts) = rfc3339(&body["timestamp"]) {
            let ms = (arrived - ts).num_microseconds().unwrap_or(0) as f64 / 1000.0;
            let sensor = body["sensor_id"].as_str().unwrap_or_default().to_string();
            out.push((sensor, ms));
        }
    }
    Ok(out)
}
