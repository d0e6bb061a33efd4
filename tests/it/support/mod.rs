//! Helpers shared by the end-to-end tests.

pub mod chain;
pub mod child_chain;
pub mod python;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The built `tagbridge` binary.
pub fn tagbridge() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"));
    cmd.current_dir(repo());
    cmd
}

/// Polls `condition` until it holds or `deadline` passes; returns whether it held.
pub async fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_until`] for a condition that must await (an HTTP request, a lock, a query):
/// polls it until it holds or `deadline` passes; returns whether it held.
pub async fn wait_for<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        let remaining = end.saturating_duration_since(Instant::now());
        // A condition that hangs counts as not holding once the deadline has passed.
        if tokio::time::timeout(remaining, condition()).await == Ok(true) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
