//! `tagbridge sim hub`: run the Event Hub emulator until Ctrl-C, printing its endpoints, the CA
//! to trust and a connection string; accepted events go to a JSON-lines file or stdout, and a
//! one-line summary (events/s, senders) goes to stderr every second.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::duration::HumanDuration;
use crate::config::gateway::LogFormat;
use crate::sim::hub::{Hub, HubConfig, DEFAULT_KEY, DEFAULT_KEY_NAME};

/// Run a local Event Hub emulator (AMQP 1.0 over TLS and TCP, HTTPS REST) until Ctrl-C.
#[derive(Debug, clap::Args)]
pub struct SimHubArgs {
    /// The event hub's name.
    #[arg(long, default_value = "telemetry")]
    pub hub: String,
    /// A shared access policy as NAME=KEY (repeatable). Default: RootManageSharedAccessKey with
    /// a fixed development key.
    #[arg(long = "key", value_name = "NAME=KEY")]
    pub keys: Vec<String>,
    /// An Entra ID service principal the token endpoint accepts, as CLIENT_ID=SECRET (repeatable).
    #[arg(long = "entra-client", value_name = "ID=SECRET")]
    pub entra_clients: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// AMQP over TLS port (0 = any free port).
    #[arg(long, default_value_t = 5671)]
    pub amqps_port: u16,
    /// Plain AMQP port (0 = any free port).
    #[arg(long, default_value_t = 5672)]
    pub amqp_port: u16,
    /// HTTPS port for REST and the token endpoint (0 = any free port).
    #[arg(long, default_value_t = 8443)]
    pub https_port: u16,
    /// AMQP over WebSockets (TLS) port, path /$servicebus/websocket (0 = any free port).
    #[arg(long, default_value_t = 9443)]
    pub wss_port: u16,
    /// Directory for the generated CA and server certificate (kept across runs).
    #[arg(long, default_value = "hub-certs")]
    pub cert_dir: PathBuf,
    /// Write accepted events as JSON lines to this file (`-` = stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Maximum message size in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_message_size: usize,
    /// Partition count.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Reject transfers with com.microsoft:server-busy above this many events/s (1 TU ≈ 1000).
    #[arg(long, value_name = "EVENTS_PER_S")]
    pub throttle_above: Option<u64>,
    /// Reject transfers with com.microsoft:server-busy above this many body bytes/s (1 TU ≈ 1 MB).
    #[arg(long, value_name = "BYTES_PER_S")]
    pub throttle_bytes_above: Option<u64>,
    /// Reject this fraction (0..1) of transfers with com.microsoft:server-busy.
    #[arg(long, value_name = "P")]
    pub throttle_fraction: Option<f64>,
    /// Reject every Nth transfer with com.microsoft:server-busy (one batch refused while those
    /// sent behind it are accepted).
    #[arg(long, value_name = "N")]
    pub refuse_every: Option<u64>,
    /// Exit after this long (for scripts).
    #[arg(long)]
    pub exit_after: Option<HumanDuration>,
    /// No summary line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

fn pairs(list: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    list.iter()
        .map(|s| match s.split_once('=') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
            _ => anyhow::bail!("{what} `{s}` must look like NAME=VALUE"),
        })
        .collect()
}

/// Runs the command; returns the process exit code.
pub fn run(args: SimHubArgs, format: LogFormat) -> ExitCode {
    crate::telemetry::init_logging(format, "warn");
    let mut keys = match pairs(&args.keys, "--key") {
        Ok(k) => k,
        Err(error) => {
            eprintln!("{error:#}");
            return ExitCode::from(super::EXIT_INVALID);
        }
    };
    if keys.is_empty() {
        keys.push((DEFAULT_KEY_NAME.to_string(), DEFAULT_KEY.to_string()));
    }
    let entra_clients = match pairs(&args.entra_clients, "--entra-client") {
        Ok(c) => c,
        Err(error) => {
            eprintln!("{error:#}");
            return ExitCode::from(super::EXIT_INVALID);
        }
    };
    let config = HubConfig {
        hub: args.hub.clone(),
        keys,
        max_message_size: args.max_message_size,
        partitions: args.partitions,
        cert_dir: Some(args.cert_dir.clone()),
        output: args.output.clone(),
        bind: args.bind,
        amqps_port: args.amqps_port,
        amqp_port: args.amqp_port,
        https_port: args.https_port,
        wss_port: args.wss_port,
        entra_clients,
        // The CLI streams events to the output; memory only keeps a few for nothing.
        retain_events: 0,
        consumer_retention_bytes: crate::sim::hub::DEFAULT_CONSUMER_RETENTION_BYTES,
        idle_timeout: crate::sim::hub::DEFAULT_IDLE_TIMEOUT,
        throttle_above: args.throttle_above,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    let throttles = (
        args.throttle_bytes_above,
        args.throttle_fraction,
        args.refuse_every,
    );
    runtime.block_on(serve(
        config,
        throttles,
        args.exit_after.map(|s| s.0),
        args.quiet,
        args.output.as_deref().is_some_and(|p| p.as_os_str() == "-"),
    ))
}

async fn serve(
    config: HubConfig,
    (bytes_above, fraction, every): (Option<u64>, Option<f64>, Option<u64>),
    exit_after: Option<Duration>,
    quiet: bool,
    stdout_output: bool,
) -> ExitCode {
    let key_name = config.keys[0].0.clone();
    let hub = match Hub::start(config).await {
        Ok(h) => h,
        Err(error) => {
            eprintln!("cannot start the emulator: {error}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    if let Some(b) = bytes_above {
        hub.faults().throttle_bytes_above(b);
    }
    if let Some(p) = fraction {
        hub.faults().throttle_fraction(p);
    }
    if let Some(n) = every {
        hub.faults().refuse_every(n);
    }
    // Endpoints go to stderr when stdout carries the events.
    let banner = format!(
        "Event Hub emulator for hub `{hub_name}`\n  amqps  {amqps}  (TLS; trust {ca})\n  amqp   {amqp}  (plain, development only)\n  wss    {wss}  (AMQP over WebSockets: wss://localhost:{wss_port}/$servicebus/websocket)\n  https  {https}  (POST /{hub_name}/messages; tokens at https://localhost:{https_port}/{{tenant}}/oauth2/v2.0/token)\n  connection string:\n    {cs}\n",
        hub_name = hub.hub(),
        amqps = hub.amqps_addr(),
        amqp = hub.amqp_addr(),
        https = hub.https_addr(),
        wss = hub.wss_addr(),
        wss_port = hub.wss_addr().port(),
        https_port = hub.https_addr().port(),
        ca = hub.ca_cert_path().display(),
        cs = hub.connection_string(&key_name),
    );
    if stdout_output {
        eprint!("{banner}");
    } else {
        print!("{banner}");
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(super::cancel_on_signal(shutdown.clone()));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if exit_after.is_some_and(|d| started.elapsed() >= d) {
                    break;
                }
                if quiet {
                    continue;
                }
                let s = hub.stats();
                let dt = last.0.elapsed().as_secs_f64().max(1e-3);
                let rate = (s.events - last.1) as f64 / dt;
                last = (Instant::now(), s.events);
                eprint!(
                    "\r{:>9.0} events/s  {} events  {} senders  {} connections  {} auth failures  {} throttled   ",
                    rate, s.events, s.senders, s.connections, s.auth_failures, s.throttled
                );
            }
        }
    }
    if !quiet {
        eprintln!();
    }
    hub.shutdown().await;
    ExitCode::SUCCESS
}
