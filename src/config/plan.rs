//! `gateway.yaml` compiled: every default applied, every value checked and resolved, every
//! problem at `file:line:col`.
//!
//! Parse, then compile, as for tag maps: [`GatewayConfig`] mirrors the YAML, [`GatewayPlan`] is
//! what the gateway runs. `tagbridge check -c` and `tagbridge run` both call [`load`], so
//! whatever `run` would refuse, `check` refuses first, at the same place. This file is the one
//! home of gateway.yaml's defaults (the Event Hub sink's tuning defaults live in
//! `SinkOptions::default`, the spool's fsync default in `SpoolConfig::new`).

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

// The certificate's defaults live beside its checks (`config::certificate`, which this module
// uses, so they cannot live here without a cycle); re-exported so every default is found here.
pub use super::certificate::{
    default_application_uri, default_common_name, CertificatePlan, DEFAULT_KEY_SIZE,
    DEFAULT_VALID_DAYS,
};
use super::diagnostic::{Pos, Problem, Report};
use super::gateway::{
    EventEncoding, EventHubSpec, EventsSpec, GatewayConfig, LogFormat, PartitionKeySpec, SinkSpec,
    Transport, WhenFull,
};
use crate::spool::SpoolConfig;

/// Default spool size: 1 GiB.
pub const DEFAULT_SPOOL_BYTES: u64 = 1 << 30;
/// The smallest spool: one segment of 4 KiB.
pub const MIN_SPOOL_BYTES: u64 = 4096;
/// Default spool directory, beside gateway.yaml.
pub const DEFAULT_SPOOL_DIR: &str = "spool";
/// Default dead-letter file, in the spool directory.
pub const DEFAULT_DEAD_LETTER: &str = "dead-letter.jsonl";
/// Default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default period of the one-line summary.
pub const DEFAULT_SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// Default time the Event Hub sink may keep delivering after a stop is asked for.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Event Hubs refuses partition keys longer than this (characters).
pub const MAX_PARTITION_KEY_CHARS: usize = 128;
/// What the gateway runs.
#[derive(Debug, Clone)]
pub struct GatewayPlan {
    /// gateway.yaml itself.
    pub path: PathBuf,
    /// The directory relative paths are taken from (gateway.yaml's).
    pub base: PathBuf,
    /// The tag map files, folders expanded, in load order.
    pub tag_maps: Vec<PathBuf>,
    /// The files and folders named by `tag_maps` (live reload watches them and gateway.yaml).
    pub watch: Vec<PathBuf>,
    pub sink: SinkPlan,
    pub spool: SpoolPlan,
    pub telemetry: TelemetryPlan,
    /// Quality readings on (docs/quality.md).
    pub quality: bool,
    /// The identity of the gateway's OPC UA certificate (`opcua.certificate`).
    pub opcua_certificate: std::sync::Arc<CertificatePlan>,
}

/// Where readings go.
#[derive(Debug, Clone)]
pub enum SinkPlan {
    Stdout,
    File(PathBuf),
    EventHub(Box<EventHubPlan>),
}

/// The Event Hub sink, checked. Credentials are read when the gateway is built (they may live
/// in the environment of the service only).
#[derive(Debug, Clone)]
pub struct EventHubPlan {
    /// The section as written (connection, credentials, transport).
    pub spec: EventHubSpec,
    /// Where the `eventhub:` section starts, for problems found while connecting it up.
    pub pos: Pos,
    pub partition: PartitionKeySpec,
    /// Readings per event; `None`: the sink's default (one).
    pub readings_per_event: Option<NonZeroUsize>,
    /// How array events' bodies are encoded (`events: {array: N, encoding: gzip}`).
    pub encoding: EventEncoding,
    /// `None`: the sink's default.
    pub max_in_flight: Option<NonZeroUsize>,
    /// `None`: the sink's default.
    pub linger: Option<Duration>,
    pub dead_letter: PathBuf,
    pub shutdown_grace: Duration,
}

/// The spool between the tag maps and the Event Hub sink.
#[derive(Debug, Clone)]
pub struct SpoolPlan {
    pub dir: PathBuf,
    pub config: SpoolConfig,
}

/// Logs and metrics.
#[derive(Debug, Clone)]
pub struct TelemetryPlan {
    /// `None`: as the command line says (default human).
    pub log_format: Option<LogFormat>,
    /// A valid tracing filter.
    pub log_level: String,
    /// `None`: no metrics listener.
    pub metrics: Option<SocketAddr>,
    pub summary_every: Duration,
    /// Serve the live view (`/`, `/api/live`) on the metrics listener.
    pub live_view: bool,
}

/// Reads, parses and compiles gateway.yaml and finds its tag map files: every problem at once.
pub fn load(path: &Path) -> Result<GatewayPlan, Report> {
    let config = super::load_gateway(path)?;
    let (plan, problems) = compile(&config, path);
    let mut report = Report::default();
    report.extend(path, problems);
    report.sort();
    match plan {
        Some(plan) if report.is_empty() => Ok(plan),
        _ => Err(report),
    }
}

/// Compiles a parsed gateway.yaml found at `path`: the plan when nothing is wrong, and every
/// problem (positions in gateway.yaml).
pub fn compile(config: &GatewayConfig, path: &Path) -> (Option<GatewayPlan>, Vec<Problem>) {
    let mut problems = Vec::new();
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let mut tag_maps = Vec::new();
    let mut watch = Vec::new();
    for listed in config.tag_maps.spanned(config.tag_maps.pos) {
        let full = resolve(listed.value);
        match super::expand_one(&full) {
            Ok(files) => tag_maps.extend(files),
            Err(why) => problems.push(Problem::new(
                listed.pos,
                format!("tag_maps `{}`: {why}", listed.value),
            )),
        }
        watch.push(full);
    }
    if watch.is_empty() {
        problems.push(
            Problem::new(config.tag_maps.pos, "tag_maps names no files")
                .with_hint("name a tag map file or a folder of them"),
        );
    }

    let spool = spool_plan(config, &resolve, &mut problems);
    let sink = match &config.sink {
        SinkSpec::Stdout {} => SinkPlan::Stdout,
        SinkSpec::File { path } => SinkPlan::File(resolve(path)),
        SinkSpec::Eventhub(spec) => SinkPlan::EventHub(Box::new(event_hub_plan(
            spec.pos,
            spec,
            &spool.dir,
            &resolve,
            &mut problems,
        ))),
    };
    let telemetry = telemetry_plan(config, &mut problems);
    let opcua_certificate = std::sync::Arc::new(super::certificate::compile(
        config.opcua.certificate.as_ref(),
        path,
        &mut problems,
    ));
    let plan = GatewayPlan {
        path: path.to_path_buf(),
        base: base.clone(),
        tag_maps,
        watch,
        sink,
        spool,
        telemetry,
        quality: config.quality,
        opcua_certificate,
    };
    problems.sort_by_key(|p| p.pos);
    (problems.is_empty().then_some(plan), problems)
}

fn spool_plan(
    config: &GatewayConfig,
    resolve: &dyn Fn(&str) -> PathBuf,
    problems: &mut Vec<Problem>,
) -> SpoolPlan {
    let spec = &config.spool;
    let max_bytes = match &spec.max_bytes {
        None => DEFAULT_SPOOL_BYTES,
        Some(m) if m.value < MIN_SPOOL_BYTES => {
            problems.push(
                Problem::new(
                    m.pos,
                    format!(
                        "spool.max_bytes {} is less than the smallest spool, {MIN_SPOOL_BYTES} bytes",
                        m.value
                    ),
                )
                .with_hint("the default is 1 GiB: 1073741824"),
            );
            MIN_SPOOL_BYTES
        }
        Some(m) => m.value,
    };
    let mut spool = SpoolConfig::new(max_bytes);
    spool.when_full = match spec.when_full {
        None | Some(WhenFull::DropOldest) => crate::spool::WhenFull::DropOldest,
        Some(WhenFull::DropNewest) => crate::spool::WhenFull::DropNewest,
    };
    spool.max_age = spec.max_age.map(|s| s.as_duration());
    if let Some(fsync) = spec.fsync {
        spool.fsync = fsync.0;
    }
    SpoolPlan {
        dir: resolve(spec.dir.as_deref().unwrap_or(DEFAULT_SPOOL_DIR)),
        config: spool,
    }
}

fn event_hub_plan(
    pos: Pos,
    spec: &EventHubSpec,
    spool_dir: &Path,
    resolve: &dyn Fn(&str) -> PathBuf,
    problems: &mut Vec<Problem>,
) -> EventHubPlan {
    let credentials = [
        spec.connection_string_env.is_some(),
        spec.connection_string_file.is_some(),
        spec.entra.is_some(),
    ];
    if credentials.iter().filter(|c| **c).count() != 1 {
        problems.push(
            Problem::new(
                pos,
                "the Event Hub sink needs exactly one of connection_string_env, connection_string_file or entra",
            )
            .with_hint("never write the key itself in gateway.yaml"),
        );
    }
    if let Some(entra) = &spec.entra {
        if spec.namespace.is_none() || spec.hub.is_none() {
            problems.push(Problem::new(
                pos,
                "`entra` needs `namespace` (e.g. plant-a.servicebus.windows.net) and `hub`",
            ));
        }
        if entra.client_secret_env.is_some() == entra.client_secret_file.is_some() {
            problems.push(Problem::new(
                pos,
                "`entra` needs exactly one of client_secret_env or client_secret_file",
            ));
        }
    }
    let partition = match &spec.partition_key {
        None => PartitionKeySpec::None,
        Some(key) => {
            if let PartitionKeySpec::Fixed(text) = &key.value {
                check_partition_key(key.pos, text, "partition_key fixed", problems);
            }
            key.value.clone()
        }
    };
    let (readings_per_event, encoding) = match spec.events.as_ref().map(|e| (e.pos, e.value)) {
        None | Some((_, EventsSpec::One)) => (None, EventEncoding::Json),
        Some((at, EventsSpec::Array(a))) => {
            if a.array.is_none() {
                problems.push(
                    Problem::new(at, "`events` needs `array: N`, the most readings per event")
                        .with_hint("e.g. `events: {array: 500, encoding: gzip}`"),
                );
            }
            (
                a.array
                    .and_then(|n| NonZeroUsize::new(usize::from(n.get()))),
                a.encoding.unwrap_or_default(),
            )
        }
    };
    if encoding == EventEncoding::Gzip && spec.transport == Some(Transport::Https) {
        problems.push(
            Problem::new(
                pos,
                "`encoding: gzip` needs an AMQP transport: Event Hubs' HTTPS batches carry text bodies only",
            )
            .with_hint("use `transport: amqp` (default) or `amqp_ws`, or drop `encoding: gzip`"),
        );
    }
    EventHubPlan {
        spec: spec.clone(),
        pos,
        partition,
        readings_per_event,
        encoding,
        max_in_flight: spec
            .max_in_flight
            .map(NonZeroU16::get)
            .and_then(|n| NonZeroUsize::new(usize::from(n))),
        linger: spec.linger.map(|l| l.as_duration()),
        dead_letter: spec
            .dead_letter
            .as_deref()
            .map_or_else(|| spool_dir.join(DEFAULT_DEAD_LETTER), resolve),
        shutdown_grace: spec
            .shutdown_grace
            .map_or(DEFAULT_SHUTDOWN_GRACE, |g| g.as_duration()),
    }
}

/// Refuses a partition key Event Hubs would refuse: empty or over 128 characters.
pub fn check_partition_key(pos: Pos, key: &str, what: &str, problems: &mut Vec<Problem>) {
    let chars = key.chars().count();
    if chars > MAX_PARTITION_KEY_CHARS {
        problems.push(
            Problem::new(
                pos,
                format!(
                    "{what} is {chars} characters long; Event Hubs takes partition keys of at most {MAX_PARTITION_KEY_CHARS}"
                ),
            )
            .with_hint("shorten it, or use another partition_key"),
        );
    } else if chars == 0 {
        problems.push(Problem::new(pos, format!("{what} is empty")));
    }
}

fn telemetry_plan(config: &GatewayConfig, problems: &mut Vec<Problem>) -> TelemetryPlan {
    let spec = &config.telemetry;
    let log_level = match &spec.log_level {
        None => DEFAULT_LOG_LEVEL.to_string(),
        Some(level) => {
            if let Err(error) = tracing_subscriber::EnvFilter::try_new(level.value.as_str()) {
                problems.push(
                    Problem::new(
                        level.pos,
                        format!("log_level `{}` is not a log filter: {error}", level.value),
                    )
                    .with_hint("write a level (error, warn, info, debug, trace) or e.g. `info,tagbridge=debug`"),
                );
            }
            level.value.clone()
        }
    };
    TelemetryPlan {
        log_format: spec.log_format,
        log_level,
        metrics: spec.metrics_addr(),
        summary_every: spec
            .summary_every
            .map_or(DEFAULT_SUMMARY_EVERY, |s| s.as_duration()),
        live_view: spec.live_view.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_text(text: &str) -> (Option<GatewayPlan>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), "x").unwrap();
        let path = dir.path().join("gateway.yaml");
        let parsed = crate::config::parse_str::<GatewayConfig>(text);
        let mut problems: Vec<String> = parsed
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.pos, p.message))
            .collect();
        let Some(config) = parsed.value else {
            return (None, problems);
        };
        let (plan, more) = compile(&config, &path);
        problems.extend(more.iter().map(|p| format!("{}: {}", p.pos, p.message)));
        (plan, problems)
    }

    #[test]
    fn defaults_have_one_home() {
        let (plan, problems) = compile_text("tag_maps: m.yaml\nsink: {stdout: {}}\n");
        assert!(problems.is_empty(), "{problems:?}");
        let plan = plan.unwrap();
        assert_eq!(plan.spool.config.max_bytes, DEFAULT_SPOOL_BYTES);
        assert_eq!(
            plan.spool.config.fsync,
            SpoolConfig::new(DEFAULT_SPOOL_BYTES).fsync
        );
        assert!(plan.spool.dir.ends_with(DEFAULT_SPOOL_DIR));
        assert_eq!(plan.telemetry.log_level, DEFAULT_LOG_LEVEL);
        assert_eq!(
            plan.telemetry.metrics,
            Some(crate::config::gateway::DEFAULT_METRICS_ADDR)
        );
        assert_eq!(plan.telemetry.summary_every, DEFAULT_SUMMARY_EVERY);
        assert_eq!(plan.tag_maps.len(), 1);
    }

    #[test]
    fn every_gateway_mistake_is_positioned() {
        let text = format!(
            "tag_maps: [m.yaml, nowhere.yaml]\n\
             sink:\n  eventhub:\n    connection_string_env: HUB\n    partition_key: {{fixed: {}}}\n\
             spool:\n  max_bytes: 1\n  fsync: sometimes\n\
             telemetry:\n  log_level: \"info,[\"\n  metrics: localhost\n",
            "k".repeat(129)
        );
        let (plan, problems) = compile_text(&text);
        assert!(plan.is_none());
        let expected = [
            "1:20: tag_maps `nowhere.yaml`: no such file or directory",
            "5:20: partition_key fixed is 129 characters long; Event Hubs takes partition keys of at most 128",
            "7:14: spool.max_bytes 1 is less than the smallest spool, 4096 bytes",
            "8:10: `sometimes` is not `always`, `never` or a duration such as `100ms`",
            "11:12: `localhost` is not host:port (e.g. 127.0.0.1:9898) or `off`",
        ];
        for e in expected {
            assert!(problems.iter().any(|p| p == e), "{e} not in {problems:#?}");
        }
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("10:14: log_level `info,[` is not a log filter")),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_credential_is_needed_exactly_once() {
        let (_, problems) = compile_text(
            "tag_maps: m.yaml\nsink:\n  eventhub:\n    connection_string_env: A\n    connection_string_file: b\n",
        );
        assert_eq!(
            problems,
            ["4:5: the Event Hub sink needs exactly one of connection_string_env, connection_string_file or entra"]
        );
    }

    #[test]
    fn events_take_an_array_and_an_encoding() {
        let plan_of = |events: &str| {
            let (plan, problems) = compile_text(&format!(
                "tag_maps: m.yaml\nsink:\n  eventhub:\n    connection_string_env: A\n    events: {events}\n"
            ));
            match plan.map(|p| p.sink) {
                Some(SinkPlan::EventHub(hub)) if problems.is_empty() => {
                    Ok((hub.readings_per_event.map(|n| n.get()), hub.encoding))
                }
                _ => Err(problems),
            }
        };
        assert_eq!(plan_of("one"), Ok((None, EventEncoding::Json)));
        assert_eq!(
            plan_of("{array: 500}"),
            Ok((Some(500), EventEncoding::Json))
        );
        assert_eq!(
            plan_of("{array: 500, encoding: gzip}"),
            Ok((Some(500), EventEncoding::Gzip))
        );
        assert_eq!(
            plan_of("{array: 2, encoding: json}"),
            Ok((Some(2), EventEncoding::Json))
        );
        for bad in [
            "{array: 0}",
            "{array: 500, encoding: zstd}",
            "{encoding: gzip}",
            "{array: 5, compress: gzip}",
            "many",
            "[1]",
        ] {
            let problems = plan_of(bad).expect_err(bad);
            assert!(
                !problems.is_empty() && problems.iter().all(|p| p.starts_with("5:")),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn gzip_needs_an_amqp_transport() {
        let (plan, problems) = compile_text(
            "tag_maps: m.yaml\nsink:\n  eventhub:\n    connection_string_env: A\n    transport: https\n    events: {array: 5, encoding: gzip}\n",
        );
        assert!(plan.is_none());
        assert_eq!(
            problems,
            ["4:5: `encoding: gzip` needs an AMQP transport: Event Hubs' HTTPS batches carry text bodies only"]
        );
    }
}
