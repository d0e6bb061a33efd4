//! The whole chain in-process: a simulated PLC serving a Modbus counter and a level, the
//! gateway reading it through a tag map, and the Event Hub emulator receiving over AMQP+TLS.
//!
//! The counter is what the loss checks use: it steps by one every [`COUNTER_UPDATE`], and the
//! gateway polls far faster, so the PLC's sequence of values is known exactly and every value
//! must reach the hub (and, when nothing fails, exactly once).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tagbridge::config::gateway::Transport;
use tagbridge::config::tagmap::{DataType, Table, WordOrder};
use tagbridge::runtime::journal::Journal;
use tagbridge::runtime::{Gateway, RunSummary, RuntimeError, Tweaks};
use tagbridge::sim::hub::{Hub, HubConfig, HubHandle, ReceivedEvent};
use tagbridge::sim::plc::{ModbusConfig, ModbusPoint, Plc, PlcConfig, PlcHandle};
use tagbridge::sim::signal::{Signal, SignalValue};
use tagbridge::sink::eventhub::amqp::Target;
use tagbridge::sink::eventhub::auth::SAS_TOKEN_LIFETIME;
use tagbridge::sink::eventhub::encoding::BodyEncoding;
use tagbridge::sink::eventhub::sink::{SinkOptions, SinkState, SinkStats};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const COUNTER: &str = "chain:counter";
pub const LEVEL: &str = "chain:level";
/// How often the PLC's counter steps.
pub const COUNTER_UPDATE: Duration = Duration::from_millis(400);

/// What to vary between tests.
pub struct ChainOptions {
    pub hub: HubConfig,
    /// Key name used by the gateway (must be in `hub.keys` to be accepted).
    pub key_name: String,
    /// Replace the key the gateway uses (a wrong key).
    pub key_override: Option<String>,
    /// `Some`: authenticate with Entra ID as (tenant, client id, secret) instead of SAS.
    pub entra: Option<(String, String, String)>,
    pub token_lifetime: Duration,
    pub transport: Transport,
    pub sink: SinkOptions,
    /// Serve /metrics and /readyz on an ephemeral port.
    pub metrics: bool,
    /// gateway.yaml `quality: true`.
    pub quality: bool,
    /// Reach the hub through this HTTP CONNECT proxy (AMQP over WebSockets).
    pub proxy: Option<tagbridge::sink::eventhub::proxy::Proxy>,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            hub: HubConfig::default(),
            key_name: tagbridge::sim::hub::DEFAULT_KEY_NAME.into(),
            key_override: None,
            entra: None,
            token_lifetime: SAS_TOKEN_LIFETIME,
            proxy: None,
            transport: Transport::Amqp,
            sink: SinkOptions {
                linger: Duration::from_millis(10),
                ..Default::default()
            },
            metrics: false,
            quality: false,
        }
    }
}

pub struct Chain {
    pub plc: PlcHandle,
    pub hub: HubHandle,
    pub stats: Arc<SinkStats>,
    pub state: watch::Receiver<SinkState>,
    pub journal: Arc<Journal>,
    /// Where /metrics, /healthz and /readyz are served, when asked for.
    pub metrics: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    gateway: JoinHandle<Result<RunSummary, RuntimeError>>,
    _dir: tempfile::TempDir,
}

/// The simulated PLC serving [`points`] over Modbus TCP on an ephemeral loopback port, and that
/// port's address.
pub async fn modbus_plc() -> (PlcHandle, std::net::SocketAddr) {
    let plc = Plc::start(PlcConfig {
        modbus: Some(ModbusConfig {
            listen: Some("127.0.0.1:0".into()),
            points: points(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("simulated PLC starts");
    let modbus = plc.modbus_addr().expect("modbus configured");
    (plc, modbus)
}

pub async fn start(options: ChainOptions) -> Chain {
    let (plc, modbus) = modbus_plc().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("chain.yaml");
    std::fs::write(
        &path,
        format!(
            "source:\n  modbus:\n    tcp: {modbus}\n    unit: 1\n    timeout: 1s\n\
             defaults:\n  interval: 50ms\n\
             tags:\n\
             \x20 - {{sensor_id: {COUNTER}, table: holding_register, address: 0, type: uint32}}\n\
             \x20 - {{sensor_id: {LEVEL}, table: holding_register, address: 4, type: float32}}\n"
        ),
    )
    .expect("write tag map");

    let hub = Hub::start(options.hub).await.expect("emulator starts");
    // The gateway is configured by a gateway.yaml and built the way `tagbridge run` builds it:
    // the connection string in a file, the emulator's CA trusted, the durable spool on disk.
    let secret = dir.path().join("hub-connection-string");
    let mut connection_string = hub.connection_string(&options.key_name);
    if let Some(key) = &options.key_override {
        let at = connection_string
            .find("SharedAccessKey=")
            .expect("the emulator's connection string has a key");
        let rest = &connection_string[at + "SharedAccessKey=".len()..];
        let end = rest
            .find(';')
            .map_or(connection_string.len(), |i| at + 16 + i);
        connection_string.replace_range(at + "SharedAccessKey=".len()..end, key);
    }
    std::fs::write(&secret, &connection_string).expect("write the connection string");
    let credential = match &options.entra {
        Some((tenant, client, client_secret)) => {
            let secret_file = dir.path().join("entra-secret");
            std::fs::write(&secret_file, client_secret).expect("write the client secret");
            format!(
                "    entra:\n      tenant_id: {tenant}\n      client_id: {client}\n      client_secret_file: {}\n      authority: {}\n    namespace: localhost\n    hub: {}\n",
                secret_file.display(),
                hub.token_authority(),
                hub.hub(),
            )
        }
        None => format!("    connection_string_file: {}\n", secret.display()),
    };
    let transport = match options.transport {
        Transport::Amqp => "amqp",
        Transport::AmqpWs => "amqp_ws",
        Transport::Https => "https",
    };
    let events = match (options.sink.readings_per_event, options.sink.encoding) {
        (0 | 1, _) => "one".to_string(),
        (n, BodyEncoding::Gzip) => format!("{{array: {n}, encoding: gzip}}"),
        (n, BodyEncoding::Json) => format!("{{array: {n}}}"),
    };
    let gateway_yaml = dir.path().join("gateway.yaml");
    std::fs::write(
        &gateway_yaml,
        format!(
            "tag_maps: chain.yaml\n\
             sink:\n  eventhub:\n{credential}    ca_file: {ca}\n    transport: {transport}\n\
             \x20   linger: {linger}ms\n    max_in_flight: {in_flight}\n    events: {events}\n    shutdown_grace: 10s\n\
             spool:\n  dir: spool\n\
             telemetry:\n  metrics: {metrics}\n\
             quality: {quality}\n",
            ca = hub.ca_cert_path().display(),
            linger = options.sink.linger.as_millis().max(1),
            in_flight = options.sink.max_in_flight.max(1),
            metrics = if options.metrics { "127.0.0.1:0" } else { "\"off\"" },
            quality = options.quality,
        ),
    )
    .expect("write gateway.yaml");
    let prepared = tagbridge::runtime::prepare(&gateway_yaml).unwrap_or_else(|r| {
        panic!(
            "{}\n{}",
            r.render(),
            std::fs::read_to_string(&gateway_yaml).unwrap_or_default()
        )
    });
    let port = match options.transport {
        Transport::Https => hub.https_addr().port(),
        Transport::AmqpWs => hub.wss_addr().port(),
        _ => hub.amqps_addr().port(),
    };
    let (token_lifetime, proxy) = (options.token_lifetime, options.proxy.clone());
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let tweaks = Tweaks {
        target: Some(Box::new(move |target: &mut Target| {
            target.port = port;
            target.token_lifetime = token_lifetime;
            target.proxy = proxy;
        })),
        metrics_bound: Some(bound_tx),
        ..Default::default()
    };
    let gateway = Gateway::build(prepared, tweaks).expect("the gateway builds");
    let handles = gateway.sink().cloned().expect("an Event Hub sink");
    let (stats, state, journal) = (handles.stats, handles.state, handles.journal);
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(gateway.run(shutdown.clone()));
    let metrics = if options.metrics {
        Some(
            bound_rx
                .await
                .expect("the gateway reports its metrics address"),
        )
    } else {
        None
    };
    Chain {
        plc,
        hub,
        stats,
        state,
        journal,
        metrics,
        shutdown,
        gateway,
        _dir: dir,
    }
}

/// The PLC's points: the counter at holding register 0, the level at 4.
pub fn points() -> Vec<ModbusPoint> {
    vec![
        point(
            0,
            DataType::Uint32,
            Signal::Counter {
                start: 1000,
                step: 1,
                wrap: None,
                update: Some(tagbridge::config::duration::HumanDuration(COUNTER_UPDATE)),
            },
        ),
        point(
            4,
            DataType::Float32,
            Signal::Constant(SignalValue::Float(12.5)),
        ),
    ]
}

fn point(address: u16, data_type: DataType, signal: Signal) -> ModbusPoint {
    ModbusPoint {
        unit: 1,
        table: Table::HoldingRegister,
        address,
        data_type: Some(data_type),
        order: WordOrder::ABCD,
        bit: None,
        length: None,
        signal,
    }
}

impl Chain {
    /// Waits until the hub holds a counter value at least `n` steps past the first one seen.
    pub async fn wait_for_counter_steps(&self, n: u64, deadline: Duration) -> bool {
        super::wait_until(deadline, || {
            let values = counter_values(&self.hub.events());
            match (values.iter().min(), values.iter().max()) {
                (Some(lo), Some(hi)) => hi - lo >= n,
                _ => false,
            }
        })
        .await
    }

    /// Stops the gateway (it flushes within the grace period) and returns its summary.
    pub async fn stop(self) -> (RunSummary, Vec<ReceivedEvent>, PlcHandle, HubHandle) {
        drop(self.journal);
        self.shutdown.cancel();
        let summary = tokio::time::timeout(Duration::from_secs(30), self.gateway)
            .await
            .expect("gateway stops within 30 s")
            .expect("gateway task")
            .expect("gateway run");
        let events = self.hub.events();
        (summary, events, self.plc, self.hub)
    }
}

/// The counter values in the hub, in arrival order (array events expanded).
pub fn counter_values(events: &[ReceivedEvent]) -> Vec<u64> {
    values_of(events, COUNTER)
}

/// Every reading in the hub's events, in arrival order; an array event
/// (`events: {array: N}`) counts as the readings it carries.
pub fn readings(events: &[ReceivedEvent]) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&e.body).ok())
        .flat_map(|v| match v {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        })
        .collect()
}

/// The integer values of one sensor's readings, in arrival order.
pub fn values_of(events: &[ReceivedEvent], sensor: &str) -> Vec<u64> {
    readings(events)
        .iter()
        .filter(|v| v["sensor_id"] == sensor)
        .filter_map(|v| v["value"].as_u64())
        .collect()
}

/// What the counter held at `at` (the simulator's signal is a pure function of time).
fn counter_at(plc: &PlcHandle, at: chrono::DateTime<chrono::Utc>) -> i64 {
    let elapsed = plc.t_at(at);
    1000 + (elapsed.as_millis() / COUNTER_UPDATE.as_millis()) as i64
}

/// Checks the counter readings at the hub against the gateway and the PLC:
/// - every value the gateway produced reached the hub (`produced` counter readings, all
///   distinct since unchanged values are held back): nothing lost between gateway and hub;
/// - with `exactly_once`, none arrived twice;
/// - each value is what the PLC's signal held just before the reading's timestamp (the time
///   the Modbus response arrived), so the chain delivered the PLC's data, not something else;
/// - the values form a run with no gap, i.e. the gateway saw every value the PLC produced
///   while it was polling (it polls 8x faster than the counter steps).
pub fn assert_counter_complete(
    events: &[ReceivedEvent],
    produced: u64,
    exactly_once: bool,
    plc: &PlcHandle,
) {
    let readings: Vec<serde_json::Value> = readings(events)
        .into_iter()
        .filter(|v| v["sensor_id"] == COUNTER)
        .collect();
    let values: Vec<u64> = readings
        .iter()
        .filter_map(|v| v["value"].as_u64())
        .collect();
    assert!(!values.is_empty(), "no counter values reached the hub");
    let mut distinct = values.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len() as u64,
        produced,
        "the gateway produced {produced} counter readings, the hub has {} distinct ones: {values:?}",
        distinct.len()
    );
    if exactly_once {
        assert_eq!(
            distinct.len(),
            values.len(),
            "counter values arrived more than once: {values:?}"
        );
    }
    for reading in &readings {
        let ts = reading["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .expect("RFC 3339 timestamp")
            .with_timezone(&chrono::Utc);
        // Timestamps are cut to the millisecond: the response arrived up to 1 ms after `ts`.
        let held = counter_at(plc, ts + chrono::Duration::milliseconds(1));
        let value = reading["value"].as_i64().unwrap_or(-1);
        // The value was read up to a second before the response's timestamp.
        let earliest = counter_at(plc, ts - chrono::Duration::seconds(1));
        assert!(
            (earliest..=held).contains(&value),
            "reading {reading} does not match the PLC, which held {earliest}..={held}"
        );
    }
    let (lo, hi) = (distinct[0], distinct[distinct.len() - 1]);
    let missing: Vec<u64> = (lo..=hi)
        .filter(|v| distinct.binary_search(v).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "the gateway missed counter values {missing:?} between {lo} and {hi} (a poll stalled?)"
    );
}

/// Counter readings the gateway produced: all readings but the constant level's one.
pub fn produced_counter_readings(summary: &RunSummary) -> u64 {
    summary.mapping.readings.saturating_sub(1)
}

/// `GET path` on the gateway's operations endpoint: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one Prometheus sample line `name{labels} value` (labels as written).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}
