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
