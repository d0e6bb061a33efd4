//! `tagbridge status -c gateway.yaml`: what a person at the box needs at a glance. Asks the
//! running gateway's `/readyz` and `/metrics` (at `telemetry.metrics`), and reads the spool on
//! disk (read-only, so it works whether or not the gateway runs).
//!
//! Exit code: 0 when the gateway answers and is ready, 1 otherwise.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::{EXIT_FAILURE, EXIT_INVALID};

pub fn status(config: &Path) -> ExitCode {
    let plan = match crate::config::plan::load(config) {
        Ok(plan) => plan,
        Err(report) => {
            eprint!("{}", report.render());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let addr = plan.telemetry.metrics;
    let mut ready = false;
    match addr {
        None => println!(
            "gateway    metrics are off in {} (telemetry.metrics: off); only the spool is shown",
            config.display()
        ),
        Some(addr) => match (get(addr, "/readyz"), get(addr, "/metrics")) {
            (Ok(readyz), Ok(metrics)) => {
                ready = print_live(addr, &readyz, &metrics);
            }
            (Err(error), _) | (_, Err(error)) => println!(
                "gateway    no answer at http://{addr} ({error}): is `tagbridge run` running with this gateway.yaml?"
            ),
        },
    }
    print_spool(&plan.spool.dir);
    if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// Prints the live part; returns whether the gateway is ready.
fn print_live(addr: SocketAddr, readyz: &str, metrics: &str) -> bool {
    let detail: serde_json::Value = serde_json::from_str(readyz.trim()).unwrap_or_default();
    let ready = detail["ready"].as_bool().unwrap_or(false);
    let samples = parse(metrics);
    println!(
        "gateway    http://{addr}  {}",
        if ready { "READY" } else { "NOT READY" }
    );
    let sink = &detail["detail"]["sink"];
    println!("hub        {}", sink["state"].as_str().unwrap_or("-"));
    let one = |name: &str| samples.get(&(name.to_string(), String::new())).copied();
    if let Some(accepted) = one("tagbridge_eventhub_events_accepted_total") {
        println!(
            "           {accepted:.0} events accepted in {:.0} batches, {:.0} throttled, {:.0} auth failures, {:.0} reconnects",
            one("tagbridge_eventhub_batches_sent_total").unwrap_or(0.0),
            one("tagbridge_eventhub_throttled_total").unwrap_or(0.0),
            one("tagbridge_eventhub_auth_failures_total").unwrap_or(0.0),
            one("tagbridge_eventhub_reconnects_total").unwrap_or(0.0),
        );
    }
    println!();
    println!(
        "{:<28} {:<9} {:<10} {:>12} {:>12}",
        "tag map", "protocol", "connected", "readings", "suppressed"
    );
    let mut maps: Vec<(String, &String)> = samples
        .keys()
        .filter(|(name, _)| name == "tagbridge_source_connected")
        .filter_map(|(_, labels)| Some((label(labels, "tag_map")?, labels)))
        .collect();
    maps.sort();
    for (map, labels) in maps {
        let per = |name: &str| {
            samples
                .get(&(name.to_string(), format!("tag_map=\"{map}\"")))
                .copied()
                .unwrap_or(0.0)
        };
        let connected = samples
            .get(&("tagbridge_source_connected".to_string(), labels.clone()))
            .is_some_and(|v| *v > 0.0);
        println!(
            "{:<28} {:<9} {:<10} {:>12.0} {:>12.0}",
            map,
            label(labels, "protocol").unwrap_or_else(|| "-".into()),
            if connected { "yes" } else { "NO" },
            per("tagbridge_readings_total"),
            per("tagbridge_readings_suppressed_total"),
        );
        if let Some(reason) = detail["detail"]["sources"]["reasons"][map.as_str()].as_str() {
            println!("  why not connected: {reason}");
        }
    }
    println!();
    ready
}

fn print_spool(dir: &Path) {
    if !dir.is_dir() {
        println!("spool      {}: not created yet", dir.display());
        return;
    }
    match crate::spool::inspect(dir) {
        Ok(s) => println!(
            "spool      {}: {} readings waiting, {} bytes, oldest {}, {} dropped",
            dir.display(),
            s.depth,
            s.bytes,
            s.oldest_age
                .map_or_else(|| "-".to_string(), |a| format!("{:.1} s", a.as_secs_f64())),
            s.dropped
        ),
        Err(error) => println!("spool      {}: {error}", dir.display()),
    }
}

/// `(name, labels as written)` → value, from the Prometheus text format.
fn parse(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        out.insert((name.to_string(), labels.to_string()), value);
    }
    out
}

/// The value of `key` in `a="x",b="y"`.
fn label(labels: &str, key: &str) -> Option<String> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.trim_matches('"').to_string())
    })
}

/// A plain HTTP/1.1 GET on loopback with a short timeout.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}
