//! `tagbridge demo`: the whole chain on one machine, nothing to configure. A simulated PLC serves
//! exactly what the shipped tag maps read (OPC UA and Modbus), the gateway reads it through those
//! tag maps, and the local Event Hub emulator receives the events over AMQP with TLS and a SAS
//! token, as Azure would. A line every two seconds shows readings flowing; the events land as
//! JSON lines in a file.
//!
//! Everything listens on ephemeral loopback ports; the shipped tag maps are embedded and their
//! endpoints rewritten to the simulator's, so the demo runs from any directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::gateway::LogFormat;
use crate::sim::hub::{Hub, HubConfig};
use crate::sim::plc::{Plc, PlcConfig};

/// The shipped tag maps, with the addresses the simulator replaces.
const TAG_MAPS: [(&str, &str); 2] = [
    (
        "line1-compressor7.yaml",
        include_str!("../../tag-maps/line1-compressor7.yaml"),
    ),
    ("press-3.yaml", include_str!("../../tag-maps/press-3.yaml")),
];
const SHIPPED_OPCUA_ENDPOINT: &str = "opc.tcp://127.0.0.1:4840/";
const SHIPPED_MODBUS_ADDR: &str = "127.0.0.1:5020";
const HUB_NAME: &str = "telemetry";
const KEY_NAME: &str = "demo-send";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Where the emulator writes every accepted event (JSON lines).
    #[arg(long, default_value = "demo-events.jsonl")]
    pub events: PathBuf,
}

pub fn run(args: DemoArgs, format: LogFormat) -> ExitCode {
    // The OPC UA stack logs protocol chatter (e.g. a publish before the first subscription) at
    // error level; the demo shows the gateway's own view.
    crate::telemetry::init_logging(
        format,
        "warn,tagbridge=info,opcua_client=off,opcua_core=off",
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

/// The demo: simulated PLC, emulator and gateway in one process, printing what the hub got.
/// Long on purpose: a script read top to bottom (start, write the files, run, report, stop),
/// as the README tells it.
async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let work = tempfile_dir()?;
    // 1. The simulated PLC, generated from the shipped tag maps, on ephemeral ports.
    let shipped = write_tag_maps(
        &work.join("shipped"),
        SHIPPED_OPCUA_ENDPOINT,
        SHIPPED_MODBUS_ADDR,
    )?;
    let plans = crate::mapping::load_all(&shipped)
        .map_err(|report| anyhow::anyhow!("embedded tag maps: {}", report.render()))?;
    let mut plc_config = PlcConfig::from_tag_maps(&plans);
    if let Some(m) = plc_config.modbus.as_mut() {
        m.listen = Some("127.0.0.1:0".into());
    }
    if let Some(o) = plc_config.opcua.as_mut() {
        o.port = 0;
    }
    let plc = Plc::start(plc_config)
        .await
        .context("starting the simulated PLC")?;
    let opcua = plc
        .opcua_endpoint()
        .context("the simulator has no OPC UA server")?;
    let modbus = plc
        .modbus_addr()
        .context("the simulator has no Modbus server")?;

    // 2. The Event Hub emulator with TLS and a send key.
    let key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    };
    let hub = Hub::start(HubConfig {
        hub: HUB_NAME.into(),
        keys: vec![(KEY_NAME.into(), key.clone())],
        output: Some(args.events.clone()),
        cert_dir: Some(work.join("hub-pki")),
        retain_events: 10,
        ..Default::default()
    })
    .await
    .context("starting the Event Hub emulator")?;

    // 3. The gateway, reading the same tag maps pointed at the simulator, configured by a
    //    gateway.yaml and built exactly as `tagbridge run` builds it: the connection string in a
    //    file, the emulator's CA trusted, the durable spool in the scratch folder.
    write_tag_maps(&work.join("live"), &opcua, &modbus.to_string())?;
    let secret = work.join("hub-connection-string");
    std::fs::write(&secret, hub.connection_string(KEY_NAME))
        .with_context(|| format!("writing {}", secret.display()))?;
    let gateway_yaml = work.join("gateway.yaml");
    std::fs::write(
        &gateway_yaml,
        format!(
            "tag_maps: live\n\
             sink:\n  eventhub:\n    connection_string_file: {secret}\n    ca_file: {ca}\n    linger: 50ms\n    shutdown_grace: 5s\n\
             spool:\n  dir: spool\n\
             telemetry:\n  metrics: \"off\"\n",
            secret = secret.display(),
            ca = hub.ca_cert_path().display(),
        ),
    )
    .with_context(|| format!("writing {}", gateway_yaml.display()))?;
    let prepared = crate::runtime::prepare(&gateway_yaml)
        .map_err(|report| anyhow::anyhow!("the demo's gateway.yaml: {}", report.render()))?;
    let gateway = crate::runtime::Gateway::build(prepared, Default::default())?;
    let handles = gateway
        .sink()
        .cloned()
        .context("the demo's gateway has an Event Hub sink")?;
    let (stats, journal) = (handles.stats, Arc::downgrade(&handles.journal));
    println!("tagbridge demo: simulated PLC → gateway → local Event Hub emulator");
    println!("  OPC UA server  {opcua}");
    println!("  Modbus server  {modbus}");
    println!(
        "  Event Hub      amqps://localhost:{}/{HUB_NAME} (TLS, SAS key `{KEY_NAME}`)",
        hub.amqps_addr().port()
    );
    println!("  tag maps       tag-maps/line1-compressor7.yaml, tag-maps/press-3.yaml (embedded)");
    println!("  events         {}", args.events.display());
    println!("Ctrl-C stops.\n");

    let shutdown = CancellationToken::new();
    tokio::spawn(super::cancel_on_signal(shutdown.clone()));
    if let Some(seconds) = args.seconds {
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            s.cancel();
        });
    }
    let progress = async {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        let mut last = (Instant::now(), 0u64);
        let mut shown_sample = false;
        loop {
            tick.tick().await;
            let accepted = stats.events_accepted.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = (accepted - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, accepted);
            let hub_stats = hub.stats();
            println!(
                "{:>5.0}s  gateway: {accepted:>7} events accepted ({rate:>6.1}/s, {} waiting)   hub: {} events in {} batches",
                started.elapsed().as_secs_f64(),
                journal.upgrade().map_or(0, |j| j.depth()),
                hub_stats.events,
                hub_stats.batches,
            );
            if !shown_sample {
                if let Some(event) = hub.events().first() {
                    println!(
                        "       first event: {}",
                        String::from_utf8_lossy(&event.body)
                    );
                    shown_sample = true;
                }
            }
        }
    };
    let gateway = gateway.run(shutdown);
    let result = tokio::select! {
        result = gateway => result,
        () = progress => unreachable!("the progress loop never ends"),
    };
    let summary = result.context("the gateway failed")?;
    println!(
        "\nStopped. {} readings produced, {} events accepted by the hub, written to {}.",
        summary.mapping.readings,
        stats.events_accepted.load(Ordering::Relaxed),
        args.events.display()
    );
    hub.shutdown().await;
    plc.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A private working directory for the demo's tag maps and certificates.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "tagbridge-demo-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes the shipped tag maps into `dir` with their endpoints replaced.
fn write_tag_maps(dir: &Path, opcua: &str, modbus: &str) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut paths = Vec::new();
    for (name, text) in TAG_MAPS {
        // The gateway's OPC UA certificate goes to the demo's scratch folder, not the cwd.
        let pki = dir.join("opcua-pki");
        let text = text
            .replacen(
                "\n  opcua:\n",
                &format!("\n  opcua:\n    pki_dir: {}\n", pki.display()),
                1,
            )
            .replace(SHIPPED_OPCUA_ENDPOINT, opcua)
            .replace(SHIPPED_MODBUS_ADDR, modbus)
            .replace("$schema=../schema/", "$schema=");
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}
