//! The local Event Hub emulator (`tagbridge sim hub`): the Event Hubs wire protocol, faithful
//! enough for Microsoft's SDKs and for our sink, with no Azure in reach.
//!
//! - AMQP 1.0 (fe2o3's acceptor) over direct TLS (what Event Hubs serves on 5671) and over
//!   plain TCP; SASL MSSBCBS or ANONYMOUS, then `$cbs` put-token with shared access signatures
//!   (checked against the configured keys) or JWTs from the emulator's own token endpoint;
//!   `$management` READ of the hub and its partitions. See [`amqp`].
//! - AMQP over WebSockets (`wss://…/$servicebus/websocket`, subprotocol `AMQPWSB10`). See [`ws`].
//! - HTTPS: `POST /{hub}/messages` (one event, or a JSON batch) and an Entra-style
//!   client-credentials token endpoint `POST /{tenant}/oauth2/v2.0/token`. See [`rest`].
//! - Output: accepted events in memory ([`HubHandle::events`], [`HubHandle::wait_for_events`])
//!   and as JSON lines in a file or on stdout.
//! - Faults on demand ([`Faults`]): throttling, dropped connections, outages, slow
//!   dispositions, early token expiry.
//!
//! Invariants: every listener is bound before [`Hub::start`] returns; every task is tracked and
//! ends on [`HubHandle::shutdown`] (or when the handle is dropped); an event is recorded before
//! the client is told it was accepted.

pub mod amqp;
pub mod auth;
pub mod certs;
pub mod client;
pub mod context;
pub mod decode;
pub mod events;
pub mod faults;
pub mod io;
pub mod nodes;
pub mod partitions;
pub mod receive;
pub mod rest;
pub mod store;
pub mod ws;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use faults::Faults;
pub use store::{HubStats, OutputTarget, ReceivedEvent};

use auth::{ConnAuth, Grant, TokenError};
use faults::FaultState;
use store::{lock, Counters, Store};

/// How the emulator runs. `HubConfig { hub: "plant".into(), ..Default::default() }`.
#[derive(Clone)]
pub struct HubConfig {
    /// The event hub's name (the entity path clients send to).
    pub hub: String,
    /// Shared access policies: (key name, key). Keys are used as text, as Azure's are.
    pub keys: Vec<(String, String)>,
    /// The largest transfer accepted, advertised at attach (Event Hubs Standard: 1 MiB).
    pub max_message_size: usize,
    /// Partition count, reported to `$management` and used to place events.
    pub partitions: u32,
    /// Where the CA and server certificate live (generated on first start); None: a fresh
    /// temporary directory removed at shutdown.
    pub cert_dir: Option<PathBuf>,
    /// JSON-lines output of accepted events; `-` is stdout; None: memory only.
    pub output: Option<PathBuf>,
    /// Address to listen on.
    pub bind: IpAddr,
    /// AMQP over TLS port (Event Hubs: 5671); 0 = any free port.
    pub amqps_port: u16,
    /// Plain AMQP port (Event Hubs: 5672, development only); 0 = any free port.
    pub amqp_port: u16,
    /// HTTPS port (REST and the token endpoint); 0 = any free port.
    pub https_port: u16,
    /// AMQP over WebSockets (TLS) port (Event Hubs: 443); 0 = any free port.
    pub wss_port: u16,
    /// Service principals the token endpoint knows: (client id, client secret).
    pub entra_clients: Vec<(String, String)>,
    /// Events kept in memory for [`HubHandle::events`] (the first this many; all are counted).
    pub retain_events: usize,
    /// Wire bytes of events each partition keeps for consumers (receive links); the oldest
    /// go first. Default 64 MiB.
    pub consumer_retention_bytes: usize,
    /// Start throttled above this many events/s (see [`Faults::throttle_above`]).
    pub throttle_above: Option<u64>,
    /// HTTPS: time allowed for the TLS handshake and for each request's headers (idle
    /// keep-alive included); a socket that sends nothing is closed after it.
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for HubConfig {
    /// Key names and client ids only: keys and secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        f.debug_struct("HubConfig")
            .field("hub", &self.hub)
            .field("keys", &names(&self.keys))
            .field("max_message_size", &self.max_message_size)
            .field("partitions", &self.partitions)
            .field("cert_dir", &self.cert_dir)
            .field("output", &self.output)
            .field("bind", &self.bind)
            .field("amqps_port", &self.amqps_port)
            .field("amqp_port", &self.amqp_port)
            .field("https_port", &self.https_port)
            .field("wss_port", &self.wss_port)
            .field("entra_clients", &names(&self.entra_clients))
            .field("retain_events", &self.retain_events)
            .field("consumer_retention_bytes", &self.consumer_retention_bytes)
            .field("throttle_above", &self.throttle_above)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// How long an HTTPS socket may stay silent in a handshake or before a request's headers.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Wire bytes per partition kept for consumers unless configured.
pub const DEFAULT_CONSUMER_RETENTION_BYTES: usize = 64 << 20;

/// The key name [`HubConfig::default`] configures.
pub const DEFAULT_KEY_NAME: &str = "RootManageSharedAccessKey";
/// The key [`HubConfig::default`] configures (base64 text, as Azure's keys look).
pub const DEFAULT_KEY: &str = "dGFnYnJpZGdlLWVtdWxhdG9yLWRldmVsb3BtZW50LWtleQ==";

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            hub: "telemetry".into(),
            keys: vec![(DEFAULT_KEY_NAME.into(), DEFAULT_KEY.into())],
            max_message_size: 1024 * 1024,
            partitions: 4,
            cert_dir: None,
            output: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            amqps_port: 0,
            amqp_port: 0,
            https_port: 0,
            wss_port: 0,
            entra_clients: Vec::new(),
            retain_events: 1_000_000,
            consumer_retention_bytes: DEFAULT_CONSUMER_RETENTION_BYTES,
            throttle_above: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Why the emulator could not start or a wait failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    #[error("invalid emulator configuration: {0}")]
    Config(String),
    #[error("waited {waited:?} for {wanted} events; {got} arrived")]
    Timeout {
        wanted: usize,
        got: u64,
        waited: Duration,
    },
}

/// Starts emulators.
pub struct Hub;

impl Hub {
    /// Binds every listener and starts serving.
    /// Long on purpose: one listener per transport (AMQP, AMQPS, WebSockets, HTTPS), bound
    /// and started in turn with the shared state they serve.
    pub async fn start(config: HubConfig) -> Result<HubHandle, HubError> {
        if config.hub.is_empty() || config.hub.contains('/') {
            return Err(HubError::Config(format!(
                "hub name `{}` must be non-empty and contain no `/`",
                config.hub
            )));
        }
        if config.partitions == 0 {
            return Err(HubError::Config("partitions must be at least 1".into()));
        }
        let (cert_dir, temp_dir) = match &config.cert_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "tagbridge-hub-{}-{:016x}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                (dir.clone(), Some(TempDir(dir)))
            }
        };
        let files = certs::ensure(&cert_dir, config.bind)?;
        let tls = certs::server_config(&files, &[])?;
        let https_tls = certs::server_config(&files, &[b"http/1.1"])?;

        let bind = |what: &'static str, port: u16| {
            let addr = SocketAddr::new(config.bind, port);
            async move {
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| HubError::Bind { what, addr, source })
            }
        };
        let amqps = bind("AMQPS", config.amqps_port).await?;
        let amqp = bind("AMQP", config.amqp_port).await?;
        let https = bind("HTTPS", config.https_port).await?;
        let wss = bind("WSS", config.wss_port).await?;
        let local = |l: &TcpListener, what: &str| {
            l.local_addr().map_err(|source| HubError::Io {
                what: format!("read the {what} listener's address"),
                source,
            })
        };
        let amqps_addr = local(&amqps, "AMQPS")?;
        let amqp_addr = local(&amqp, "AMQP")?;
        let https_addr = local(&https, "HTTPS")?;
        let wss_addr = local(&wss, "WSS")?;

        let output = config.output.as_ref().map(|p| {
            if p.as_os_str() == "-" {
                OutputTarget::Stdout
            } else {
                OutputTarget::File(p.clone())
            }
        });
        let (store, writer) =
            Store::new(&config.hub, config.retain_events, config.partitions, output)?;
        let faults = FaultState::default();
        if let Some(n) = config.throttle_above {
            faults
                .throttle_above
                .store(n, std::sync::atomic::Ordering::Relaxed);
        }
        let shared = Arc::new(Shared {
            hub: config.hub.clone(),
            keys: config.keys.clone(),
            max_message_size: config.max_message_size,
            idle_timeout: config.idle_timeout,
            partitions: config.partitions,
            entra_clients: config.entra_clients.clone(),
            jwt_secret: rand::random::<[u8; 32]>(),
            token_issuer: format!("https://localhost:{}", https_addr.port()),
            store,
            logs: partitions::Partitions::new(config.partitions, config.consumer_retention_bytes),
            counters: Counters::default(),
            faults,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            created_at: Utc::now(),
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let writer = writer.map(|w| tokio::task::spawn_blocking(move || w.run()));
        shared.tracker.spawn(amqp::serve(
            amqps,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
            shared.clone(),
        ));
        shared
            .tracker
            .spawn(amqp::serve(amqp, None, shared.clone()));
        shared.tracker.spawn(rest::serve(
            https,
            tokio_rustls::TlsAcceptor::from(https_tls.clone()),
            shared.clone(),
        ));
        shared.tracker.spawn(ws::serve(
            wss,
            tokio_rustls::TlsAcceptor::from(https_tls),
            shared.clone(),
        ));
        Ok(HubHandle {
            shared,
            amqps_addr,
            amqp_addr,
            https_addr,
            wss_addr,
            ca_cert: files.ca_cert,
            cert_dir,
            writer,
            _temp_dir: temp_dir,
        })
    }
}

/// A running emulator. Dropping it stops the emulator (without waiting); prefer
/// [`HubHandle::shutdown`].
pub struct HubHandle {
    shared: Arc<Shared>,
    amqps_addr: SocketAddr,
    amqp_addr: SocketAddr,
    https_addr: SocketAddr,
    wss_addr: SocketAddr,
    ca_cert: PathBuf,
    cert_dir: PathBuf,
    writer: Option<tokio::task::JoinHandle<()>>,
    _temp_dir: Option<TempDir>,
}

impl HubHandle {
    /// AMQP over TLS.
    pub fn amqps_addr(&self) -> SocketAddr {
        self.amqps_addr
    }

    /// Plain AMQP.
    pub fn amqp_addr(&self) -> SocketAddr {
        self.amqp_addr
    }

    /// HTTPS (REST and the token endpoint).
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// AMQP over WebSockets (TLS): `wss://localhost:PORT/$servicebus/websocket`, subprotocol
    /// `AMQPWSB10`.
    pub fn wss_addr(&self) -> SocketAddr {
        self.wss_addr
    }

    /// The CA certificate (PEM) clients must trust; it signed the server certificate for
    /// `localhost`, `127.0.0.1` and `::1`.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// The directory holding the CA and server certificate.
    pub fn cert_dir(&self) -> &Path {
        &self.cert_dir
    }

    /// The hub's name.
    pub fn hub(&self) -> &str {
        &self.shared.hub
    }

    /// A connection string for the TLS listener with key `key_name` (an unknown name gets an
    /// empty key, which the hub will refuse).
    pub fn connection_string(&self, key_name: &str) -> String {
        let key = self
            .shared
            .keys
            .iter()
            .find(|(n, _)| n == key_name)
            .map(|(_, k)| k.as_str())
            .unwrap_or("");
        format!(
            "Endpoint=sb://localhost:{}/;SharedAccessKeyName={key_name};SharedAccessKey={key};EntityPath={}",
            self.amqps_addr.port(),
            self.shared.hub
        )
    }

    /// The token endpoint's authority (`https://localhost:PORT`): tokens come from
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_authority(&self) -> String {
        self.shared.token_issuer.clone()
    }

    /// Every accepted event so far (up to `retain_events`), in arrival order.
    pub fn events(&self) -> Vec<ReceivedEvent> {
        self.shared.store.events()
    }

    /// Waits until at least `n` events have arrived, then returns them all.
    pub async fn wait_for_events(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedEvent>, HubError> {
        let mut count = self.shared.store.subscribe();
        let wanted = n as u64;
        let reached = tokio::time::timeout(timeout, count.wait_for(|c| *c >= wanted))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(self.events())
        } else {
            Err(HubError::Timeout {
                wanted: n,
                got: self.shared.store.count(),
                waited: timeout,
            })
        }
    }

    /// Counters.
    pub fn stats(&self) -> HubStats {
        let mut s = self.shared.counters.snapshot();
        s.events = self.shared.store.count();
        s
    }

    /// Sockets of the AMQP and WebSocket listeners registered now (handshakes included): back
    /// to 0 once every peer has gone, however it behaved.
    pub fn open_sockets(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Fault switches.
    pub fn faults(&self) -> Faults {
        Faults {
            shared: self.shared.clone(),
        }
    }

    /// Stops listening, cuts every connection, waits for every task and flushes the output.
    pub async fn shutdown(mut self) {
        self.shared.root.cancel();
        self.shared.cut_all_connections();
        self.shared.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(message = "Hub emulator tasks did not all stop within 10 s.");
        }
        self.shared.store.close_output();
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        self.shared.root.cancel();
        self.shared.cut_all_connections();
        self.shared.store.close_output();
    }
}

/// Removes a directory the emulator created for itself.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// State every task of one emulator shares.
pub(crate) struct Shared {
    pub hub: String,
    pub keys: Vec<(String, String)>,
    pub max_message_size: usize,
    /// See [`HubConfig::idle_timeout`].
    pub idle_timeout: Duration,
    pub partitions: u32,
    pub entra_clients: Vec<(String, String)>,
    /// Signs the token endpoint's JWTs.
    pub jwt_secret: [u8; 32],
    pub token_issuer: String,
    pub store: Store,
    /// What consumers read, per partition (`partitions`, `receive`).
    pub logs: partitions::Partitions,
    pub counters: Counters,
    pub faults: FaultState,
    /// Open AMQP connections: their cut switch and their tokens.
    conns: Mutex<HashMap<u64, (CancellationToken, Arc<ConnAuth>)>>,
    next_conn: AtomicU64,
    pub created_at: DateTime<Utc>,
    /// Cancelled at shutdown: listeners stop, connections are cut.
    pub root: CancellationToken,
    pub tracker: TaskTracker,
}

impl Shared {
    /// Registers a new connection.
    pub(crate) fn open_connection(self: &Arc<Self>, peer: String) -> (u64, Arc<context::ConnCtx>) {
        let id = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cut = self.root.child_token();
        let auth = Arc::new(ConnAuth::default());
        lock(&self.conns).insert(id, (cut.clone(), auth.clone()));
        (id, context::ConnCtx::new(self.clone(), cut, auth, peer))
    }

    pub(crate) fn close_connection(&self, id: u64) {
        if let Some((cut, _)) = lock(&self.conns).remove(&id) {
            cut.cancel();
        }
    }

    pub(crate) fn cut_all_connections(&self) {
        for (cut, _) in lock(&self.conns).values() {
            cut.cancel();
        }
    }

    pub(crate) fn cap_all_grants(&self, after: Duration) {
        let latest = Utc::now().timestamp_millis() + after.as_millis() as i64;
        for (_, auth) in lock(&self.conns).values() {
            auth.cap(latest);
        }
    }

    /// Checks a token of CBS type `kind` for `audience`; applies the early-expiry fault.
    pub(crate) fn check_token(
        &self,
        kind: &str,
        token: &str,
        audience: &str,
    ) -> Result<Grant, TokenError> {
        let now = Utc::now().timestamp();
        let mut grant = match kind {
            auth::SAS_TOKEN_TYPE => auth::check_sas(token, &self.keys, now)?,
            auth::JWT_TOKEN_TYPE => auth::check_jwt(token, &self.jwt_secret, now)?,
            other => return Err(TokenError::UnsupportedType(other.to_string())),
        };
        let wanted = auth::entity_path(audience);
        if !auth::covers(&grant.scope, &wanted) {
            return Err(TokenError::Audience {
                token: grant.scope,
                wanted,
            });
        }
        if let Some(cap) = self.faults.token_cap() {
            grant.expires_at_ms = grant
                .expires_at_ms
                .min(Utc::now().timestamp_millis() + cap.as_millis() as i64);
        }
        Ok(grant)
    }

    /// Records accepted events and counts them: bytes as they arrived, into the partition
    /// logs consumers read, then decoded (gzip) into the store and the output.
    pub(crate) async fn accept_events(&self, mut events: Vec<ReceivedEvent>) {
        events.iter_mut().for_each(decode::decode_body);
        self.accept_decoded(events, None).await;
    }

    /// [`Shared::accept_events`] for events whose bodies are already decoded
    /// ([`decode::decode_body`]), with their output lines when already rendered
    /// ([`Store::lines`]).
    pub(crate) async fn accept_decoded(
        &self,
        events: Vec<ReceivedEvent>,
        lines: Option<Vec<String>>,
    ) {
        let bytes: usize = events.iter().map(|e| e.wire_body().len()).sum();
        self.counters
            .bytes
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        Counters::inc(&self.counters.batches);
        self.logs.append(&events);
        self.store.record(events, lines).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_keys_and_secrets() {
        let config = HubConfig {
            entra_clients: vec![("app".into(), "hunter2".into())],
            ..Default::default()
        };
        let shown = format!("{config:?}");
        assert!(shown.contains(DEFAULT_KEY_NAME) && shown.contains("app"));
        assert!(!shown.contains(DEFAULT_KEY) && !shown.contains("hunter2"));
    }

    #[tokio::test]
    async fn refuses_unusable_configurations() {
        for config in [
            HubConfig {
                hub: "a/b".into(),
                ..Default::default()
            },
            HubConfig {
                partitions: 0,
                ..Default::default()
            },
        ] {
            assert!(matches!(Hub::start(config).await, Err(HubError::Config(_))));
        }
    }
}
