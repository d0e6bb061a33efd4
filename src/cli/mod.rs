//! The `tagbridge` command line. The binary edge: errors here are `anyhow`, and each command
//! maps to an exit code: 0 ok, 1 runtime failure, 2 invalid configuration.

mod browse;
mod check;
mod check_estimate;
mod demo;
mod generate;
mod opcua;
mod send_test;
mod sim_hub;
mod sim_plc;
mod spool;
mod status;
mod tags;
mod watch;

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
        /// Tag map files or directories; a directory holding gateway.yaml (/etc/tagbridge) is
        /// checked as `-c DIR/gateway.yaml`.
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
    /// The live table of every tag of the running gateway, in the terminal (`/api/live`).
    Watch(watch::WatchArgs),
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
    /// Tag lists as spreadsheets: export a tag map's tags to CSV, import a CSV table or a
    /// Kepware tag export into a tag map (docs/tag-maps.md, "From a spreadsheet").
    Tags {
        #[command(subcommand)]
        command: tags::TagsCommand,
    },
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
        Command::Watch(args) => watch::run(args),
        Command::Schema { dir, check } => schema(&dir, check),
        Command::Spool { command } => spool::run(command),
        Command::Browse(args) => browse::run(args),
        Command::Tags { command } => tags::run(command),
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

/// Loads and checks tag map files and folders (`check` without `-c`).
pub(crate) fn load_tag_maps(paths: &[PathBuf]) -> Result<Vec<TagMapPlan>, Report> {
    let files = config::expand_tag_map_paths(paths.iter().map(PathBuf::as_path), Path::new(""))?;
    if files.is_empty() {
        let mut report = Report::default();
        report.push(
            config::Problem::new(config::Pos::default(), "no tag maps given")
                .with_hint("name files or folders, or -c gateway.yaml")
                .in_file(Path::new(".")),
        );
        return Err(report);
    }
    crate::mapping::load_all(&files)
}

fn run(config_path: &Path, format: LogFormat) -> ExitCode {
    // The same checks as `tagbridge check -c`.
    let prepared = match crate::runtime::prepare(config_path) {
        Ok(prepared) => prepared,
        Err(report) => {
            eprint!("{}", report.render());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let telemetry = &prepared.plan.telemetry;
    crate::telemetry::init_logging(telemetry.log_format.unwrap_or(format), &telemetry.log_level);
    let reload = reload_of(&prepared.plan);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(message = "Cannot start the async runtime.", %error);
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        let tweaks = crate::runtime::Tweaks {
            reload: Some(reload),
            ..Default::default()
        };
        let gateway = match crate::runtime::Gateway::build(prepared, tweaks) {
            Ok(gateway) => gateway,
            Err(error) => {
                tracing::error!(message = "Cannot set up the sink.", %error);
                return Err(ExitCode::from(EXIT_FAILURE));
            }
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        gateway.run(shutdown).await.map_err(|error| {
            tracing::error!(message = "Gateway failed.", %error);
            ExitCode::from(EXIT_FAILURE)
        })
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
        Err(code) => code,
    }
}

/// Live reload: gateway.yaml's tag maps are loaded again on SIGHUP or when gateway.yaml, a tag
/// map or a tag-map folder changes, through the same loader as `check` and `run`.
fn reload_of(plan: &config::GatewayPlan) -> crate::runtime::reload::Reload {
    let mut watch = vec![plan.path.clone()];
    watch.extend(plan.watch.iter().cloned());
    let path = plan.path.clone();
    crate::runtime::reload::Reload {
        load: std::sync::Arc::new(move || crate::runtime::prepare(&path).map(|p| p.tag_maps)),
        watch,
        every: std::time::Duration::from_secs(2),
    }
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
