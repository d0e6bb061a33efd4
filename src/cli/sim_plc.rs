//! `tagbridge sim plc`: run the simulated PLC until Ctrl-C, printing its endpoints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::duration::HumanDuration;
use crate::config::gateway::LogFormat;
use crate::sim::plc::{generate, ModbusConfig, OpcUaConfig, Plc, PlcConfig};

/// Default OPC UA port when the simulator is not configured from a file (IANA: opc-ua-tcp).
const DEFAULT_OPCUA_PORT: u16 = 4840;
/// Default Modbus listen address (502 needs root).
const DEFAULT_MODBUS_LISTEN: &str = "127.0.0.1:5020";

/// Run a simulated PLC (OPC UA and Modbus TCP servers) until Ctrl-C.
#[derive(Debug, clap::Args)]
pub struct SimPlcArgs {
    /// Simulator configuration, e.g. examples/sim-plc.yaml.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Serve exactly what these tag maps (files or folders) read, with plausible signals, on
    /// the endpoints they name.
    #[arg(long = "from", value_name = "TAG_MAP")]
    pub from: Vec<PathBuf>,
    /// Add N generated Double variables `ns=2;s=Load/B0001/T000001`… for load tests.
    #[arg(long, value_name = "N")]
    pub opcua_tags: Option<usize>,
    /// Add N generated uint16 holding registers (unit 1 from address 0, then unit 2…).
    #[arg(long, value_name = "N")]
    pub modbus_tags: Option<usize>,
    /// Update period of generated tags.
    #[arg(long, default_value = "1s")]
    pub update: HumanDuration,
    /// OPC UA host for the endpoint URL and to bind (clients must use the same literal).
    #[arg(long)]
    pub opcua_host: Option<String>,
    /// OPC UA port (0 = any free port).
    #[arg(long)]
    pub opcua_port: Option<u16>,
    /// Modbus TCP listen address, e.g. 0.0.0.0:502.
    #[arg(long)]
    pub modbus_listen: Option<String>,
    /// Exit after this long (for benchmarks and scripts).
    #[arg(long)]
    pub exit_after: Option<HumanDuration>,
}

/// Runs the command; returns the process exit code.
pub fn run(args: SimPlcArgs, format: LogFormat) -> ExitCode {
    crate::telemetry::init_logging(format, "info");
    let config = match build_config(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error:#}");
            return ExitCode::from(super::EXIT_INVALID);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    match runtime.block_on(serve(config, args.exit_after.map(|s| s.0))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error:#}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

fn build_config(args: &SimPlcArgs) -> anyhow::Result<PlcConfig> {
    let mut config = match &args.config {
        Some(path) => crate::config::load_file::<PlcConfig>(path)
            .map_err(|report| anyhow::anyhow!("{}", report.render()))?,
        None => PlcConfig::default(),
    };
    if !args.from.is_empty() {
        let plans = super::load_tag_maps(&args.from)
            .map_err(|report| anyhow::anyhow!("{}", report.render()))?;
        let generated = PlcConfig::from_tag_maps(&plans);
        if let Some(g) = generated.modbus {
            let m = config.modbus.get_or_insert_with(|| ModbusConfig {
                listen: g.listen.clone(),
                ..Default::default()
            });
            m.points.extend(g.points);
            if m.rtu_over_tcp_listen.is_none() {
                m.rtu_over_tcp_listen = g.rtu_over_tcp_listen;
            }
        }
        if let Some(g) = generated.opcua {
            let o = config.opcua.get_or_insert_with(|| OpcUaConfig {
                host: g.host.clone(),
                port: g.port,
                ..Default::default()
            });
            o.variables.extend(g.variables);
            o.users.extend(g.users);
        }
    }
    if let Some(n) = args.opcua_tags {
        let o = config.opcua.get_or_insert_with(|| OpcUaConfig {
            port: DEFAULT_OPCUA_PORT,
            ..Default::default()
        });
        o.variables.extend(generate::opcua_load(n, args.update.0));
    }
    if let Some(n) = args.modbus_tags {
        anyhow::ensure!(
            n <= 247 * 65_536,
            "at most {} Modbus registers",
            247 * 65_536
        );
        let m = config.modbus.get_or_insert_with(|| ModbusConfig {
            listen: Some(DEFAULT_MODBUS_LISTEN.into()),
            ..Default::default()
        });
        m.points.extend(generate::modbus_load(n, args.update.0));
    }
    if let Some(o) = config.opcua.as_mut() {
        if let Some(host) = &args.opcua_host {
            o.host = host.clone();
        }
        if let Some(port) = args.opcua_port {
            o.port = port;
        }
    }
    if let Some(m) = config.modbus.as_mut() {
        if let Some(listen) = &args.modbus_listen {
            m.listen = Some(listen.clone());
        }
    }
    anyhow::ensure!(
        config.opcua.is_some() || config.modbus.is_some(),
        "nothing to simulate: give -c examples/sim-plc.yaml, --from <tag map>, --opcua-tags N or --modbus-tags N"
    );
    Ok(config)
}

async fn serve(config: PlcConfig, exit_after: Option<Duration>) -> anyhow::Result<()> {
    let opcua_vars = config.opcua.as_ref().map_or(0, |o| o.variables.len());
    let opcua_structs = match config.opcua.as_ref().map_or(0, |o| o.structures.len()) {
        0 => String::new(),
        1 => ", 1 structure".to_string(),
        n => format!(", {n} structures"),
    };
    let modbus_points = config.modbus.as_ref().map_or(0, |m| m.points.len());
    let started = Instant::now();
    let plc = Plc::start(config)
        .await
        .context("cannot start the simulated PLC")?;
    let ready = started.elapsed();
    if let Some(endpoint) = plc.opcua_endpoint() {
        println!("opcua: {endpoint} ({opcua_vars} variables{opcua_structs}, namespace 2)");
    }
    if let Some(addr) = plc.modbus_addr() {
        println!("modbus: {addr} ({modbus_points} points)");
    }
    println!(
        "epoch: {}",
        plc.epoch()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    println!("ready in {} ms", ready.as_millis());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(super::cancel_on_signal(shutdown.clone()));
    match exit_after {
        Some(after) => {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(after) => {}
            }
        }
        None => shutdown.cancelled().await,
    }
    plc.shutdown().await;
    Ok(())
}
