//! From gateway.yaml to a running gateway, one way for everyone: `tagbridge run`, `demo`, the
//! end-to-end tests and the benchmarks all go through [`prepare`] and [`Gateway::build`].
//!
//! [`prepare`] is also all of `tagbridge check -c`: it compiles gateway.yaml
//! ([`crate::config::plan`]), loads and compiles its tag maps, checks what only the two together
//! can tell (partition keys), and reads the Event Hub credentials and CA, so whatever `run` would
//! refuse is refused here first, at `file:line:col`. No message of it carries a secret.
//!
//! [`Gateway::build`] opens the spool (recovering it) and starts its task, builds the sink from
//! the plan, and [`Gateway::run`] runs until shutdown, then waits for the spool's last fsync.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::gateway::PartitionKeySpec;
use crate::config::plan::{check_partition_key, GatewayPlan, SinkPlan};
use crate::config::{Problem, Report};
use crate::mapping::TagMapPlan;
use crate::sink::eventhub::amqp::Target;
use crate::sink::eventhub::auth::Credential;
use crate::sink::eventhub::setup::SetupError;
use crate::sink::eventhub::sink::{EventHubSink, SinkOptions, SinkState, SinkStats};
use crate::spool::Spool;

use super::journal::Journal;
use super::reload::Reload;
use super::{Output, RunOptions, RunSummary, RuntimeError};

/// A checked configuration, ready to be built.
pub struct Prepared {
    pub plan: GatewayPlan,
    pub tag_maps: Vec<TagMapPlan>,
    /// The Event Hub connection and credential, when the sink is an Event Hub.
    pub event_hub: Option<(Target, Credential)>,
}

/// What [`prepare_with`] does with a secret file that only the running service can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read every secret: `run` needs them.
    Read,
    /// `check` from a shell: a missing file under systemd's credentials directory
    /// (`/run/credentials/<unit>/`, filled by `LoadCredential=` only while the service runs) is
    /// not an error; every other secret is read and checked.
    ServiceMayHold,
}

/// Where systemd puts a service's credentials (`LoadCredential=`, `SetCredential=`).
const SYSTEMD_CREDENTIALS: &str = "/run/credentials/";

/// Loads and checks gateway.yaml, its tag maps and the sink's credentials: every problem at once.
pub fn prepare(config: &Path) -> Result<Prepared, Report> {
    prepare_with(config, Secrets::Read).map(|(prepared, _)| prepared)
}

/// [`prepare`], with a choice about service-only secrets; also returns the secret file that was
/// left unread under [`Secrets::ServiceMayHold`], for `check` to mention.
pub fn prepare_with(config: &Path, secrets: Secrets) -> Result<(Prepared, Option<String>), Report> {
    let mut unread = None;
    let plan = crate::config::plan::load(config)?;
    let mut report = Report::default();
    let tag_maps = match crate::mapping::load_all(&plan.tag_maps) {
        Ok(mut tag_maps) => {
            // Every OPC UA source makes the gateway's certificate as gateway.yaml says.
            for map in &mut tag_maps {
                if let crate::mapping::SourcePlan::OpcUa(source) = &mut map.source {
                    source.certificate = Arc::clone(&plan.opcua_certificate);
                }
            }
            tag_maps
        }
        Err(problems) => {
            report = problems;
            Vec::new()
        }
    };
    let mut event_hub = None;
    if let SinkPlan::EventHub(hub) = &plan.sink {
        match crate::sink::eventhub::setup::build(&hub.spec, &plan.base) {
            Ok(built) => event_hub = Some(built),
            Err(SetupError::SecretFile { path, source })
                if secrets == Secrets::ServiceMayHold
                    && source.kind() == std::io::ErrorKind::NotFound
                    && path.starts_with(SYSTEMD_CREDENTIALS) =>
            {
                unread = Some(path);
            }
            Err(error) => report.push(Problem::new(hub.pos, error.to_string()).in_file(&plan.path)),
        }
        check_partition_keys(&hub.partition, &tag_maps, &mut report);
    }
    if plan.tag_maps.is_empty() && report.is_empty() {
        report.push(Problem::new(Default::default(), "no tag maps given").in_file(&plan.path));
    }
    report.sort();
    if report.is_empty() {
        let prepared = Prepared {
            plan,
            tag_maps,
            event_hub,
        };
        Ok((prepared, unread))
    } else {
        Err(report)
    }
}

/// With `partition_key: sensor_id` or `tag_map`, each sensor id or tag map name becomes a
/// partition key: Event Hubs refuses those over 128 characters.
fn check_partition_keys(
    partition: &PartitionKeySpec,
    tag_maps: &[TagMapPlan],
    report: &mut Report,
) {
    for map in tag_maps {
        let mut problems = Vec::new();
        match partition {
            PartitionKeySpec::SensorId => {
                for tag in &map.tags {
                    check_partition_key(
                        tag.pos,
                        &tag.sensor_id,
                        "this sensor_id (the partition key with `partition_key: sensor_id`)",
                        &mut problems,
                    );
                }
            }
            PartitionKeySpec::TagMap => {
                check_partition_key(
                    Default::default(),
                    &map.name(),
                    "the tag map's name (the partition key with `partition_key: tag_map`)",
                    &mut problems,
                );
            }
            PartitionKeySpec::None | PartitionKeySpec::Fixed(_) => {}
        }
        report.extend(&map.path, problems);
    }
}

/// A change to the connection built from the plan (token lifetime, a proxy).
pub type TargetTweak = Box<dyn FnOnce(&mut Target) + Send>;

/// What tests, the demo and benchmarks may change on top of gateway.yaml.
#[derive(Default)]
pub struct Tweaks {
    /// Adjusts the connection after it is built from the plan.
    pub target: Option<TargetTweak>,
    /// Replaces the credential read from the plan.
    pub credential: Option<Credential>,
    /// Replaces the spool with this journal (e.g. an in-memory queue for a benchmark).
    pub journal: Option<Journal>,
    /// Told the metrics address actually bound (with port 0 in `telemetry.metrics`).
    pub metrics_bound: Option<oneshot::Sender<SocketAddr>>,
    /// Live reload of the tag maps.
    pub reload: Option<Reload>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot open the spool in {dir}: {source}")]
    Spool {
        dir: std::path::PathBuf,
        source: crate::spool::SpoolError,
    },
    #[error("the Event Hub sink has no connection: build from what `prepare` returned")]
    NoConnection,
}

/// The Event Hub sink's handles, for progress lines and tests.
#[derive(Clone)]
pub struct SinkHandles {
    pub stats: Arc<SinkStats>,
    pub state: watch::Receiver<SinkState>,
    pub journal: Arc<Journal>,
}

/// A gateway assembled from its plan, ready to run.
pub struct Gateway {
    tag_maps: Vec<TagMapPlan>,
    output: Output,
    options: RunOptions,
    /// The spool's task, and how to stop it once the runtime is done with it.
    spool_tasks: TaskTracker,
    spool_cancel: CancellationToken,
    sink: Option<SinkHandles>,
}

impl Gateway {
    /// Opens the spool (recovering what a previous run left) and builds the sink.
    ///
    /// # Panics
    /// Outside a Tokio runtime: the spool's task is spawned here.
    pub fn build(prepared: Prepared, tweaks: Tweaks) -> Result<Gateway, BuildError> {
        let Prepared {
            plan,
            tag_maps,
            event_hub,
        } = prepared;
        let spool_tasks = TaskTracker::new();
        let spool_cancel = CancellationToken::new();
        let mut sink = None;
        let output = match (&plan.sink, event_hub) {
            (SinkPlan::Stdout, _) => Output::Stdout,
            (SinkPlan::File(path), _) => Output::File(path.clone()),
            (SinkPlan::EventHub(hub), Some((mut target, credential))) => {
                if let Some(tune) = tweaks.target {
                    tune(&mut target);
                }
                let mut options = SinkOptions {
                    dead_letter: Some(hub.dead_letter.clone()),
                    ..SinkOptions::default()
                };
                if let Some(n) = hub.readings_per_event {
                    options.readings_per_event = n.get();
                }
                if hub.encoding == crate::config::gateway::EventEncoding::Gzip {
                    options.encoding = crate::sink::eventhub::encoding::BodyEncoding::Gzip;
                }
                if let Some(n) = hub.max_in_flight {
                    options.max_in_flight = n.get();
                }
                if let Some(linger) = hub.linger {
                    options.linger = linger;
                }
                if let Ok(host) = std::env::var("HOSTNAME") {
                    options.message_id_prefix = host;
                }
                let (journal, last_sent) = match tweaks.journal {
                    Some(journal) => (journal, super::last_sent::LastSent::in_memory()),
                    None => {
                        // First: it reads (and saves) what the segments hold before the spool
                        // may delete any of them, and holds their release until saved.
                        let last_sent = super::last_sent::LastSent::open(&plan.spool.dir);
                        let fence = last_sent.fence();
                        (
                            open_spool(&plan, &spool_tasks, &spool_cancel, fence)?,
                            last_sent,
                        )
                    }
                };
                let journal = Arc::new(journal);
                let event_hub = match tweaks.credential {
                    Some(fixed) => EventHubSink::new(target, fixed, options),
                    // The secret is read again on refusals and SIGHUP (key rotation).
                    None => EventHubSink::new(target, credential, options).with_credential_source(
                        crate::sink::eventhub::setup::CredentialSource::new(&hub.spec, &plan.base),
                    ),
                };
                sink = Some(SinkHandles {
                    stats: event_hub.stats.clone(),
                    state: event_hub.state.subscribe(),
                    journal: journal.clone(),
                });
                Output::EventHub {
                    sink: Box::new(event_hub),
                    journal,
                    partition: hub.partition.clone(),
                    grace: hub.shutdown_grace,
                    last_sent: Arc::new(last_sent),
                }
            }
            (SinkPlan::EventHub(_), None) => return Err(BuildError::NoConnection),
        };
        let options = RunOptions {
            metrics: plan.telemetry.metrics,
            metrics_bound: tweaks.metrics_bound,
            summary_every: plan.telemetry.summary_every,
            reload: tweaks.reload,
            live_view: plan.telemetry.live_view,
            quality: plan.quality,
        };
        Ok(Gateway {
            tag_maps,
            output,
            options,
            spool_tasks,
            spool_cancel,
            sink,
        })
    }

    /// The Event Hub sink's statistics, state and journal; `None` for stdout and file sinks.
    pub fn sink(&self) -> Option<&SinkHandles> {
        self.sink.as_ref()
    }

    /// Runs until `shutdown` is cancelled (or every source has ended), drains within the
    /// sink's grace period, then waits for the spool's last commit and fsync.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunSummary, RuntimeError> {
        let Gateway {
            tag_maps,
            output,
            options,
            spool_tasks,
            spool_cancel,
            sink,
        } = self;
        drop(sink);
        let result = super::run(tag_maps, output, options, shutdown).await;
        // The runtime is done with the spool: its task commits what is queued, syncs and ends.
        spool_cancel.cancel();
        spool_tasks.close();
        spool_tasks.wait().await;
        result
    }
}

/// Opens (recovering) the spool the plan asks for and starts its task; logs what recovery found.
fn open_spool(
    plan: &GatewayPlan,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    fence: crate::spool::ReleaseFence,
) -> Result<Journal, BuildError> {
    let dir = &plan.spool.dir;
    let (mut spool, report) =
        Spool::open(dir, plan.spool.config.clone()).map_err(|source| BuildError::Spool {
            dir: dir.clone(),
            source,
        })?;
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
    spool.set_release_fence(fence);
    let handle = crate::spool::handle::spawn(spool, tracker, cancel.clone());
    Ok(Journal::spool(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway_with_secret_file(secret: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tag-maps")).unwrap();
        std::fs::write(
            dir.path().join("tag-maps/line.yaml"),
            "source: {modbus: {tcp: 127.0.0.1:502}}\ntags:\n  - {sensor_id: a, modicon: 40001, type: uint16}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("gateway.yaml"),
            format!(
                "tag_maps: tag-maps\nsink:\n  eventhub:\n    connection_string_file: {secret}\n"
            ),
        )
        .unwrap();
        dir
    }

    #[test]
    fn check_passes_over_a_systemd_credential_that_only_the_service_has() {
        let dir = gateway_with_secret_file("/run/credentials/tagbridge-test.service/eventhub");
        let config = dir.path().join("gateway.yaml");
        let (prepared, unread) =
            prepare_with(&config, Secrets::ServiceMayHold).expect("check passes");
        assert_eq!(
            unread.as_deref(),
            Some("/run/credentials/tagbridge-test.service/eventhub")
        );
        assert!(prepared.event_hub.is_none());
        // `run` needs the secret.
        assert!(prepare(&config).is_err());
    }

    #[test]
    fn check_still_refuses_any_other_missing_secret_file() {
        let dir = gateway_with_secret_file("/etc/tagbridge-test/missing");
        let config = dir.path().join("gateway.yaml");
        let report = prepare_with(&config, Secrets::ServiceMayHold)
            .err()
            .expect("refused");
        assert!(report.render().contains("cannot read secret file"));
    }
}
