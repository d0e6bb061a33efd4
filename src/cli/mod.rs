//! The `tagbridge` command line. The binary edge: errors here are `anyhow`, and each command
//! maps to an exit code: 0 ok, 1 runtime failure, 2 invalid configuration.

mod browse;
mod check;
mod demo;
mod generate;
mod opcua;
mod send_test;
mod sim_hub;
mod sim_plc;
mod spool;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::gateway::LogFormat;
use crate::config::{self, Report};
use crate::mapping::TagMapPlan;

/// Invalid configuration.
pub const EXIT_INVALID: u8 = 2;
/// Runtime failure.
pub const EXIT_FAILURE: u8 = 1;

/// Reads PLC tags over OPC UA and Modbus and streams them to Azure Event Hubs.
#[derive(Debug, Parser)]
#[command(name = "tagbridge", version = generate::VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole chain on this machine, nothing to configure: a simulated PLC read through the
    /// shipped tag maps, delivered over AMQP+TLS to a local Event Hub emulator.
    Demo(demo::DemoArgs),
    /// Run the gateway until Ctrl-C or SIGTERM.
    Run {
        /// The gateway configuration.
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Validate tag maps (and gateway.yaml) and print what they will read.
    ///
    /// Exits 0 when everything is valid, 2 with every error as file:line:column otherwise.
    Check {
        /// A gateway configuration whose tag maps to check.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Tag map files or directories.
        paths: Vec<PathBuf>,
    },
    /// What the running gateway is doing: readiness, hub, each tag map's source, the spool.
    ///
    /// Exits 0 when the gateway answers and is ready, 1 otherwise.
    Status {
        /// The gateway configuration (its telemetry.metrics address and spool directory).
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Send one marked test event with the configured credentials and say whether the hub
    /// accepted it (sensor_id `tagbridge:send-test`).
    SendTest {
        /// The gateway configuration.
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Write the JSON Schemas for gateway.yaml and tag maps (for editor completion).
    Schema {
        /// Directory to write `gateway.schema.json` and `tag-map.schema.json` into.
        #[arg(long, default_value = "schema")]
        dir: PathBuf,
        /// Do not write; exit 1 if the files differ from what this version generates.
        #[arg(long)]
        check: bool,
    },
    /// The durable spool: what waits to be delivered.
    Spool {
        #[command(subcommand)]
        command: spool::SpoolCommand,
    },
    /// Walk an OPC UA server's address space and write a tag map for its variables.
    Browse(browse::BrowseArgs),
    /// OPC UA helpers: trust a server certificate.
    Opcua {
        #[command(subcommand)]
        command: opcua::OpcUaCommand,
    },
    /// Simulators for trying tag maps and testing without a plant.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
    /// Man pages and shell completions from these definitions (for packagers).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        command: generate::GenerateCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// A simulated PLC: OPC UA and Modbus TCP servers driven by deterministic signals.
    Plc(sim_plc::SimPlcArgs),
    /// A local Event Hub emulator: AMQP 1.0 over TLS and TCP, HTTPS REST, faults on demand.
    Hub(sim_hub::SimHubArgs),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format.unwrap_or_default();
    match cli.command {
        Command::Demo(args) => demo::run(args, format),
        Command::Run { config } => run(&config, format),
        Command::Check { config, paths } => check::check(config.as_deref(), &paths),
        Command::SendTest { config } => send_test::send_test(&config),
        Command::Status { config } => status::status(&config),
        Command::Schema { dir, check } => schema(&dir, check),
        Command::Spool { command } => spool::run(command),
        Command::Browse(args) => browse::run(args),
        Command::Opcua { command } => opcua::run(command),
        Command::Generate { command } => generate::run(command),
        Command::Sim {
            command: SimCommand::Plc(args),
        } => sim_plc::run(args, format),
        Command::Sim {
            command: SimCommand::Hub(args),
        } => sim_hub::run(args, format),
    }
}

/// Loads gateway.yaml (if given) and the tag maps it names plus `extra`, all checked.
pub(crate) fn load(
    config_path: Option<&Path>,
    extra: &[PathBuf],
) -> Result<(Option<config::GatewayConfig>, Vec<TagMapPlan>), Report> {
    let mut paths = Vec::new();
    let mut gateway = None;
    if let Some(path) = config_path {
        let cfg = config::load_gateway(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let listed = cfg.tag_maps.paths();
        paths.extend(config::expand_tag_map_paths(
            listed.iter().map(Path::new),
            base,
        )?);
        gateway = Some(cfg);
    }
    paths.extend(config::expand_tag_map_paths(
        extra.iter().map(PathBuf::as_path),
        Path::new(""),
    )?);
    if paths.is_empty() {
        let mut report = Report::default();
        report.push(
            config::Problem::new(config::Pos::default(), "no tag maps given")
                .with_hint("name files or folders, or -c gateway.yaml")
                .in_file(Path::new(".")),
        );
        return Err(report);
    }
    let plans = crate::mapping::load_all(&paths)?;
    Ok((gateway, plans))
}

fn run(config_path: &Path, format: LogFormat) -> ExitCode {
    let (gateway, plans) = match load(Some(config_path), &[]) {
        Ok(loaded) => loaded,
        Err(report) => {
            eprint!("{}", report.render());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let Some(gateway) = gateway else {
        return ExitCode::from(EXIT_INVALID);
    };
    let telemetry = &gateway.telemetry;
    crate::telemetry::init_logging(
        telemetry.log_format.unwrap_or(format),
        telemetry.log_level.as_deref().unwrap_or("info"),
    );
    let base = config_path.parent().unwrap_or(Path::new("."));
    let run_options = match run_options(&gateway.telemetry) {
        Ok(mut o) => {
            o.reload = Some(reload_of(config_path, &gateway));
            o
        }
        Err(error) => {
            tracing::error!(message = "Invalid telemetry settings.", %error);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(message = "Cannot start the async runtime.", %error);
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // The spool's task is spawned while the output is set up.
    let _entered = runtime.enter();
    let spool_tasks = tokio_util::task::TaskTracker::new();
    let output = match output(&gateway, base, &spool_tasks) {
        Ok(o) => o,
        Err(error) => {
            tracing::error!(message = "Cannot set up the sink.", error = %format!("{error:#}"));
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let result = crate::runtime::run(plans, output, run_options, shutdown).await;
        // The spool task ends once the runtime has dropped its handles: wait for its last
        // commit and fsync.
        spool_tasks.close();
        spool_tasks.wait().await;
        result
    });
    match result {
        Ok(summary) => {
            tracing::info!(
                message = "Gateway stopped.",
                delivered = summary.delivered,
                last_acked_seq = summary.last_acked_seq,
                non_finite = summary.mapping.non_finite
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(message = "Gateway failed.", %error);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Live reload: gateway.yaml's tag maps are loaded again on SIGHUP or when gateway.yaml, a tag
/// map or a tag-map folder changes.
fn reload_of(
    config_path: &Path,
    gateway: &config::GatewayConfig,
) -> crate::runtime::reload::Reload {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let mut watch = vec![config_path.to_path_buf()];
    watch.extend(gateway.tag_maps.paths().iter().map(|p| base.join(p)));
    let path = config_path.to_path_buf();
    crate::runtime::reload::Reload {
        load: std::sync::Arc::new(move || load(Some(&path), &[]).map(|(_, plans)| plans)),
        watch,
        every: std::time::Duration::from_secs(2),
    }
}

/// Metrics address (default 127.0.0.1:9898, `off` for none) and summary period.
fn run_options(
    telemetry: &config::gateway::TelemetrySpec,
) -> anyhow::Result<crate::runtime::RunOptions> {
    let metrics = telemetry.metrics_addr().map_err(anyhow::Error::msg)?;
    Ok(crate::runtime::RunOptions {
        metrics,
        metrics_bound: None,
        summary_every: telemetry
            .summary_every
            .map_or(std::time::Duration::from_secs(60), |s| s.as_duration()),
        reload: None,
    })
}

/// The output named by gateway.yaml's `sink`.
fn output(
    gateway: &config::GatewayConfig,
    base: &Path,
    spool_tasks: &tokio_util::task::TaskTracker,
) -> anyhow::Result<crate::runtime::Output> {
    use crate::runtime::Output;
    use crate::sink::eventhub::sink::{EventHubSink, SinkOptions};
    Ok(match &gateway.sink {
        config::gateway::SinkSpec::Stdout {} => Output::Stdout,
        config::gateway::SinkSpec::File { path } => Output::File(base.join(path)),
        config::gateway::SinkSpec::Eventhub(spec) => {
            let (target, credential) = crate::sink::eventhub::setup::build(spec, base)?;
            let mut options = SinkOptions::default();
            if let Some(config::gateway::EventsSpec::Array(n)) = spec.events {
                anyhow::ensure!(
                    n >= 1,
                    "sink.eventhub.events: array needs at least 1 reading per event"
                );
                options.readings_per_event = usize::from(n);
            }
            if let Some(n) = spec.max_in_flight {
                options.max_in_flight = usize::from(n.max(1));
            }
            if let Some(linger) = spec.linger {
                options.linger = linger.as_duration();
            }
            let journal = spool::open(&gateway.spool, base, spool_tasks)?;
            options.dead_letter = Some(match spec.dead_letter.as_deref() {
                Some(p) => base.join(p),
                None => journal.1.join("dead-letter.jsonl"),
            });
            if let Ok(host) = std::env::var("HOSTNAME") {
                options.message_id_prefix = host;
            }
            Output::EventHub {
                sink: Box::new(EventHubSink::new(target, credential, options)),
                journal: std::sync::Arc::new(journal.0),
                partition: spec
                    .partition_key
                    .clone()
                    .unwrap_or(config::gateway::PartitionKeySpec::None),
                grace: std::time::Duration::from_secs(10),
            }
        }
    })
}

/// Cancels `token` on Ctrl-C or SIGTERM.
async fn cancel_on_signal(token: tokio_util::sync::CancellationToken) {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(message = "Cannot listen for SIGTERM; Ctrl-C still stops the gateway.", %error);
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!(message = "Stopping: draining what is in flight.");
    token.cancel();
}

fn schema(dir: &Path, check: bool) -> ExitCode {
    let mut drift = false;
    let mut schemas = config::schema::all();
    schemas.push(crate::sim::plc::schema());
    for (name, text) in schemas {
        let path = dir.join(name);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                eprintln!(
                    "{} differs from what this version generates; run `tagbridge schema --dir {}`",
                    path.display(),
                    dir.display()
                );
                drift = true;
            }
            continue;
        }
        if let Err(error) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, text)) {
            eprintln!("cannot write {}: {error}", path.display());
            return ExitCode::from(EXIT_FAILURE);
        }
        println!("wrote {}", path.display());
    }
    if drift {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}
