//! `tagbridge spool status`: what waits in the spool, read from its files without disturbing a
//! running gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::spool::SpoolStatus;

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
            match crate::config::plan::load(&path) {
                Ok(plan) => plan.spool.dir,
                Err(report) => {
                    eprint!("{}", report.render());
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
