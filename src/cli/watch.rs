//! `tagbridge watch -c gateway.yaml [FILTER]`: the live view in a terminal, for a box reached
//! over SSH without a browser. Reads `/api/live` of the running gateway (at
//! `telemetry.metrics`) once a second and redraws the table with plain ANSI escapes: no
//! terminal library, works in any terminal, tmux or `watch`-style log capture.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;

use super::{EXIT_FAILURE, EXIT_INVALID};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The gateway configuration (its telemetry.metrics address).
    #[arg(short, long, default_value = "gateway.yaml")]
    config: PathBuf,
    /// The gateway's telemetry address instead of the one in the configuration (e.g. the local
    /// end of an SSH tunnel).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Show only tags whose sensor_id or tag map contains this text (case-insensitive).
    filter: Option<String>,
    /// Show only tags with this status: good, stale, bad, uncertain, waiting, or problem
    /// (anything but good).
    #[arg(long)]
    status: Option<String>,
    /// Print the table once and exit (for scripts); without it, redraw until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Seconds between redraws.
    #[arg(long, default_value_t = 1.0)]
    every: f64,
    /// Rows of tags at most (default: the terminal's height from $LINES, else 40).
    #[arg(long)]
    rows: Option<usize>,
}

pub fn run(args: WatchArgs) -> ExitCode {
    if let Some(addr) = args.addr {
        return finish(watch(addr, &args));
    }
    let plan = match crate::config::plan::load(&args.config) {
        Ok(plan) => plan,
        Err(report) => {
            eprint!("{}", report.render());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let Some(addr) = plan.telemetry.metrics else {
        eprintln!(
            "error: telemetry.metrics is off in {}; the live view is served on that listener",
            args.config.display()
        );
        return ExitCode::from(EXIT_INVALID);
    };
    finish(watch(addr, &args))
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn watch(addr: SocketAddr, args: &WatchArgs) -> anyhow::Result<()> {
    let rows = args.rows.unwrap_or_else(|| {
        std::env::var("LINES")
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .map_or(40, |l| l.saturating_sub(6).max(5))
    });
    let mut query = format!("/api/live?limit={rows}");
    if let Some(filter) = &args.filter {
        query.push_str("&q=");
        query.push_str(&encode(filter));
    }
    if let Some(status) = &args.status {
        query.push_str("&status=");
        query.push_str(&encode(status));
    }
    let every = Duration::from_secs_f64(args.every.clamp(0.1, 3600.0));
    let mut stdout = std::io::stdout().lock();
    loop {
        let screen = match get(addr, &query) {
            Ok(body) => {
                let data: serde_json::Value = serde_json::from_str(&body)
                    .with_context(|| format!("http://{addr}/api/live did not answer JSON"))?;
                render(addr, &data, args.filter.as_deref())
            }
            Err(error) if args.once => {
                bail!("no answer at http://{addr} ({error}): is `tagbridge run` running with this gateway.yaml, with telemetry.live_view on?")
            }
            Err(error) => format!("no answer at http://{addr} ({error}); retrying\n"),
        };
        if args.once {
            stdout.write_all(screen.as_bytes())?;
            return Ok(());
        }
        // Home, the new screen, then clear what is left of the old one.
        stdout.write_all(b"\x1b[H")?;
        for line in screen.lines() {
            stdout.write_all(line.as_bytes())?;
            stdout.write_all(b"\x1b[K\n")?;
        }
        stdout.write_all(b"\x1b[J")?;
        stdout.flush()?;
        // A plain loop on the command's own thread, outside any async runtime: sleeping here
        // blocks nothing else.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(every);
    }
}

/// One screen: a header, then one line per tag.
fn render(addr: SocketAddr, data: &serde_json::Value, filter: Option<&str>) -> String {
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let mut out = String::new();
    let counts = &data["counts"];
    let spool = match data["spool_depth"].as_u64() {
        Some(d) => format!("{d} readings"),
        None => "off".into(),
    };
    out.push_str(&format!(
        "tagbridge watch  http://{addr}  hub: {}  spool: {spool}  {}\n",
        str_of(&data["hub"]),
        str_of(&data["now"]),
    ));
    out.push_str(&format!(
        "{} tags: {} good, {} stale, {} bad, {} uncertain, {} waiting; {} match{}, {} shown\n",
        data["tags_total"],
        counts["good"],
        counts["stale"],
        counts["bad"],
        counts["uncertain"],
        counts["waiting"],
        data["tags_matched"],
        filter.map_or(String::new(), |f| format!(" `{f}`")),
        data["tags_listed"],
    ));
    out.push_str(&format!(
        "{:<16} {:<32} {:>14} {:>9} {:<10} {:>8} {:>8}  {}\n",
        "TAG MAP", "SENSOR_ID", "VALUE", "AGE", "STATUS", "SENT", "SUPPR", "FILE:LINE"
    ));
    for map in data["maps"].as_array().into_iter().flatten() {
        let name = str_of(&map["name"]);
        let file = str_of(&map["file"]);
        for tag in map["tags"].as_array().into_iter().flatten() {
            let status = str_of(&tag["status"]);
            let value = match &tag["value"] {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let age = tag["age_s"]
                .as_f64()
                .map_or("-".to_string(), |a| format!("{a:.1}s"));
            let reason = tag["reason"]
                .as_str()
                .map_or(String::new(), |r| format!("  ({r})"));
            let line = format!(
                "{:<16} {:<32} {:>14} {:>9} {:<10} {:>8} {:>8}  {}:{}{}",
                clip(&name, 16),
                clip(&str_of(&tag["sensor_id"]), 32),
                clip(&value, 14),
                age,
                status,
                tag["sent"],
                tag["suppressed"],
                file,
                tag["line"],
                reason,
            );
            let paint = match status.as_str() {
                "stale" => Some("33"),
                "bad" => Some("31"),
                "uncertain" => Some("34"),
                "waiting" => Some("2"),
                _ => None,
            };
            match paint.filter(|_| color) {
                Some(code) => out.push_str(&format!("\x1b[{code}m{line}\x1b[0m\n")),
                None => {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
    }
    out
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut clipped: String = s.chars().take(width.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("an incomplete HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("GET {path} answered {status} (is telemetry.live_view off?)");
    }
    Ok(body.to_string())
}
