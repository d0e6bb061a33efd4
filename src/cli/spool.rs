//! `tagbridge spool status`: what waits in the spool, read from its files without disturbing a
//! running gateway; and the translation of gateway.yaml's `spool:` into a [`SpoolConfig`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

use crate::config::gateway::{SpoolSpec, WhenFull as WhenFullSpec};
use crate::runtime::journal::Journal;
use crate::spool::{FsyncPolicy, Spool, SpoolConfig, SpoolStatus, WhenFull};

use super::{EXIT_FAILURE, EXIT_INVALID};

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Depth, size, age of the oldest reading and drops of a spool (also while the gateway runs).
    Status {
        /// The gateway configuration whose spool to look at.
        #[arg(short, long, conflicts_with = "dir")]
        config: Option<PathBuf>,
        /// The spool directory itself.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Default spool size: 1 GiB.
const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Default fsync interval.
const DEFAULT_FSYNC: Duration = Duration::from_millis(100);

/// The spool directory and configuration that gateway.yaml (in `base`) asks for.
pub(crate) fn settings(spec: &SpoolSpec, base: &Path) -> anyhow::Result<(PathBuf, SpoolConfig)> {
    let dir = base.join(spec.dir.as_deref().unwrap_or("spool"));
    let mut config = SpoolConfig::new(spec.max_bytes.unwrap_or(DEFAULT_MAX_BYTES));
    anyhow::ensure!(
        config.max_bytes >= 4096,
        "spool.max_bytes must be at least 4096 bytes, got {}",
        config.max_bytes
    );
    config.when_full = match spec.when_full {
        None | Some(WhenFullSpec::DropOldest) => WhenFull::DropOldest,
        Some(WhenFullSpec::DropNewest) => WhenFull::DropNewest,
    };
    config.max_age = spec.max_age.map(|s| s.as_duration());
    config.fsync = match spec.fsync.as_deref().map(str::trim) {
        None => FsyncPolicy::Interval(DEFAULT_FSYNC),
        Some("always") => FsyncPolicy::Always,
        Some("never") => FsyncPolicy::Never,
        Some(text) => FsyncPolicy::Interval(
            text.parse::<crate::config::duration::HumanDuration>()
                .map(|s| s.as_duration())
                .with_context(|| {
                    format!("spool.fsync must be `always`, `never` or a duration, got `{text}`")
                })?,
        ),
    };
    Ok((dir, config))
}

/// Opens (recovering) the spool gateway.yaml asks for and starts its task; logs what recovery
/// found. Returns the journal and the spool directory.
pub(crate) fn open(
    spec: &SpoolSpec,
    base: &Path,
    tracker: &tokio_util::task::TaskTracker,
) -> anyhow::Result<(Journal, PathBuf)> {
    let (dir, config) = settings(spec, base)?;
    let (spool, report) = Spool::open(&dir, config)
        .with_context(|| format!("cannot open the spool in {}", dir.display()))?;
    for problem in &report.problems {
        tracing::warn!(message = "Spool damage repaired.", problem = %problem);
    }
    tracing::info!(
        message = "Spool opened; unacknowledged readings are sent first.",
        dir = %dir.display(),
        readings = report.records,
        segments = report.segments,
        bytes_truncated = report.bytes_truncated,
        next_seq = report.next_seq
    );
    let handle =
        crate::spool::handle::spawn(spool, tracker, tokio_util::sync::CancellationToken::new());
    Ok((Journal::spool(handle), dir))
}

pub fn run(command: SpoolCommand) -> ExitCode {
    match command {
        SpoolCommand::Status { config, dir, json } => status(config, dir, json),
    }
}

fn status(config: Option<PathBuf>, dir: Option<PathBuf>, json: bool) -> ExitCode {
    let dir = match (config, dir) {
        (_, Some(dir)) => dir,
        (config, None) => {
            let path = config.unwrap_or_else(|| PathBuf::from("gateway.yaml"));
            let gateway = match crate::config::load_gateway(&path) {
                Ok(g) => g,
                Err(report) => {
                    eprint!("{}", report.render());
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            let base = path.parent().unwrap_or(Path::new("."));
            match settings(&gateway.spool, base) {
                Ok((dir, _)) => dir,
                Err(error) => {
                    eprintln!("{}: {error:#}", path.display());
                    return ExitCode::from(EXIT_INVALID);
                }
            }
        }
    };
    if !dir.is_dir() {
        eprintln!(
            "{}: no spool here (the gateway creates it on its first run with an Event Hub sink)",
            dir.display()
        );
        return ExitCode::from(EXIT_FAILURE);
    }
    match crate::spool::inspect(&dir) {
        Ok(s) if json => {
            println!("{}", to_json(&dir, &s));
            ExitCode::SUCCESS
        }
        Ok(s) => {
            print!("{}", render(&dir, &s));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn render(dir: &Path, s: &SpoolStatus) -> String {
    let age = s
        .oldest_age
        .map(|a| format!("{:.1}s", a.as_secs_f64()))
        .unwrap_or_else(|| "-".into());
    format!(
        "spool      {}\ndepth      {} readings\nbytes      {}\noldest     {}\ndropped    {}\nsegments   {}\nacked      {}\nnext seq   {}\n",
        dir.display(),
        s.depth,
        s.bytes,
        age,
        s.dropped,
        s.segments,
        s.acked,
        s.next_seq
    )
}

fn to_json(dir: &Path, s: &SpoolStatus) -> serde_json::Value {
    serde_json::json!({
        "dir": dir.display().to_string(),
        "depth": s.depth,
        "bytes": s.bytes,
        "oldest_age_seconds": s.oldest_age.map(|a| a.as_secs_f64()),
        "dropped": s.dropped,
        "segments": s.segments,
        "acked": s.acked,
        "next_seq": s.next_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml_fsync: Option<&str>) -> SpoolSpec {
        SpoolSpec {
            fsync: yaml_fsync.map(String::from),
            ..SpoolSpec::default()
        }
    }

    #[test]
    fn fsync_settings_parse_and_bad_ones_say_what_is_expected() {
        let base = Path::new("/etc/tagbridge");
        let (dir, cfg) = settings(&spec(None), base).unwrap();
        assert_eq!(dir, Path::new("/etc/tagbridge/spool"));
        assert_eq!(cfg.fsync, FsyncPolicy::Interval(DEFAULT_FSYNC));
        assert_eq!(cfg.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(cfg.when_full, WhenFull::DropOldest);
        let always = settings(&spec(Some("always")), base).unwrap().1;
        assert_eq!(always.fsync, FsyncPolicy::Always);
        let never = settings(&spec(Some("never")), base).unwrap().1;
        assert_eq!(never.fsync, FsyncPolicy::Never);
        let every = settings(&spec(Some("250ms")), base).unwrap().1;
        assert_eq!(
            every.fsync,
            FsyncPolicy::Interval(Duration::from_millis(250))
        );
        let err = settings(&spec(Some("sometimes")), base).unwrap_err();
        assert!(
            format!("{err:#}").contains("spool.fsync must be `always`, `never` or a duration"),
            "{err:#}"
        );
    }
}
