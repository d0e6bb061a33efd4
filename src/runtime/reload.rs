//! Live reload of tag maps: on SIGHUP, or when a watched file or folder changes, the tag maps
//! are loaded and checked again. A set with any error is rejected as a whole (with the same
//! file:line:column report `tagbridge check` prints) and the running maps keep going; a good set
//! is applied by [`TagMaps::apply`], which leaves unchanged files' sources connected.
//!
//! Changes are noticed by polling modification times and sizes (every `every`): no inotify
//! dependency, works on network and container mounts, and costs a few `stat` calls.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::tag_maps::TagMaps;
use crate::config::Report;
use crate::mapping::TagMapPlan;

/// Loads every tag map the gateway should run, checked.
pub type LoadFn = Arc<dyn Fn() -> Result<Vec<TagMapPlan>, Report> + Send + Sync>;

/// How to reload.
#[derive(Clone)]
pub struct Reload {
    pub load: LoadFn,
    /// Files and folders whose changes trigger a reload (gateway.yaml, tag map folders, files).
    pub watch: Vec<PathBuf>,
    pub every: Duration,
}

/// Runs until `shutdown`; owns the running tag maps (dropping them at the end lets the output
/// finish).
pub async fn run(reload: Option<Reload>, mut maps: TagMaps, shutdown: CancellationToken) {
    let Some(reload) = reload else {
        shutdown.cancelled().await;
        return;
    };
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = fingerprint(&reload.watch);
    let mut tick = tokio::time::interval(reload.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<()>();
        let why = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sighup => "SIGHUP",
            _ = tick.tick() => {
                let now = fingerprint(&reload.watch);
                if now == seen {
                    continue;
                }
                seen = now;
                "a file changed"
            }
        };
        let load = reload.load.clone();
        let loaded = tokio::task::spawn_blocking(move || load()).await;
        match loaded {
            Ok(Ok(plans)) => {
                let applied = maps.apply(plans);
                tracing::info!(
                    message = "Tag maps reloaded.",
                    reason = why,
                    started = applied.started,
                    restarted = applied.restarted,
                    stopped = applied.stopped,
                    unchanged = applied.unchanged
                );
            }
            Ok(Err(report)) => {
                tracing::error!(
                    message = "Tag maps not reloaded: they have errors; the running ones keep going.",
                    reason = why,
                    errors = %report.render()
                );
            }
            Err(error) => tracing::error!(message = "Tag map reload failed.", %error),
        }
    }
}

/// Modification time and size of every watched file, and of every file in watched folders.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    for path in paths {
        let stat = |p: &PathBuf| {
            std::fs::metadata(p)
                .map(|m| (m.modified().ok(), m.len()))
                .unwrap_or((None, 0))
        };
        let (modified, len) = stat(path);
        out.push((path.clone(), modified, len));
        if let Ok(entries) = std::fs::read_dir(path) {
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for file in files {
                let (modified, len) = stat(&file);
                out.push((file, modified, len));
            }
        }
    }
    out
}
