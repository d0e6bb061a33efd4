//! The OPC UA source: one client session per tag map, monitored items in subscriptions, data
//! change notifications turned into [`Sample`](crate::sample::Sample) batches.
//!
//! Invariants:
//! - Secure by default: the plan says Basic256Sha256 + SignAndEncrypt unless the tag map asks
//!   for `none`; server certificates are trusted only from `<pki>/trusted/` (see
//!   [`connect`]), and an untrusted server is refused with a message naming the file to move.
//! - A tag's monitored item carries client handle `tag index + 1`; a notification is mapped
//!   back to its tag by that handle alone.
//! - Monitored items are created in chunks no larger than the server's
//!   `MaxMonitoredItemsPerCall` (1 000 when it does not say), into as many subscriptions as
//!   needed: a subscription that answers `BadTooManyMonitoredItems` (or reaches the tag map's
//!   `max_items_per_subscription`) is full and the next chunk goes into a new one.
//! - Subscriptions ask for at most `max_notifications_per_publish` values per publish response
//!   (5000 by default, so a response is 150–250 KB); the server sends the rest in the next
//!   responses at once, and `OpcUaCounters::messages` counts them.
//! - A tag whose item cannot be created (unknown node id, refused filter, …) is reported once,
//!   retried every [`RETRY_INTERVAL`], and never holds up the other tags.
//! - Reconnects: async-opcua keeps the session alive (keep-alives, endless reconnects with
//!   backoff up to 30 s), first tries TransferSubscriptions with initial values, and else
//!   recreates the subscriptions and their items. After every reconnect the source triggers a
//!   publish at once (without it an async-opcua client can sit idle until the next keep-alive)
//!   and checks every tag is monitored again, re-creating the missing ones. A gap in a
//!   subscription's sequence numbers (a publish response lost with the connection) is filled
//!   with Republish; what the server no longer has is counted in
//!   [`OpcUaCounters::lost_messages`].
//! - Status policy (documented in README): Good values are emitted; Uncertain values are emitted
//!   (`uncertain: pass`, the default) or dropped (`uncertain: skip`) and counted; Bad values are
//!   never emitted, counted, and logged once when a tag turns bad and once when it recovers.
//! - Structures are read per field for tags with `members:` ([`structure`]): the fields of
//!   one node share the monitored item of the first field (the others have none).
//! - Values that have no reading form (arrays, structures, null) are counted and logged once
//!   per tag; see [`convert`].
//! - Backpressure: notifications arrive in a synchronous callback that cannot wait, so it
//!   appends to a bounded in-memory queue and a forwarding task sends batches on the bounded
//!   channel (waiting when the mapping stage is behind). When the queue is full the oldest
//!   samples are dropped and counted in [`OpcUaCounters::overflow_dropped`].
//! - Shutdown: cancelling the token closes the session (deleting its subscriptions) and ends
//!   every task; the sample sender is dropped last.

pub mod browse;
pub mod connect;
pub mod convert;
mod data_change;
mod events;
pub mod notifiers;
mod notify;
pub mod own_certificate;
mod source;
pub mod stats;
pub mod structure;
mod subscribe;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mapping::{OpcUaPlan, TagMapPlan};
use crate::sample::SampleBatch;

/// How often tags whose monitored item could not be created are tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Why connecting or setting up failed. Per-tag problems are logged, not returned.
#[derive(Debug, thiserror::Error)]
pub enum OpcUaError {
    #[error("cannot reach OPC UA server {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("OPC UA server {endpoint} offers no endpoint with {wanted} (it offers: {offered}); {advice}")]
    NoEndpoint {
        endpoint: String,
        wanted: String,
        offered: String,
        /// What to change: the tag map's settings, or a command's flags.
        advice: &'static str,
    },
    #[error(
        "OPC UA server {endpoint} does not accept {wanted} user tokens on the chosen endpoint"
    )]
    UserTokenRefused { endpoint: String, wanted: String },
    #[error("{0}")]
    Untrusted(Box<UntrustedServer>),
    #[error(
        "OPC UA server {endpoint} refused the gateway's certificate ({status}). Trust the gateway on the server: \
         copy {cert} (thumbprint {thumbprint}) into the server's trusted certificates \
         (or accept it in the server's certificate list); the gateway connects on its own once it is trusted",
        cert = cert.display()
    )]
    ClientUntrusted {
        endpoint: String,
        status: String,
        /// The gateway's certificate, `<pki>/own/cert.der`.
        cert: PathBuf,
        thumbprint: String,
    },
    #[error(
        "OPC UA server {endpoint} refused the login of {user} ({status}): check the user name and the password, \
         and that the server allows this user"
    )]
    LoginRefused {
        endpoint: String,
        status: String,
        /// Who logged in, and where the password came from (never the password).
        user: String,
    },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("cannot read the OPC UA password from {what}: {reason}")]
    Secret { what: String, reason: String },
    #[error("OPC UA client: {0}")]
    Client(String),
    #[error("OPC UA request failed: {0}")]
    Request(String),
}

impl OpcUaError {
    /// The same error with advice for a command's flags instead of a tag map's settings
    /// (`tagbridge browse`, `tagbridge opcua trust opc.tcp://…`).
    pub fn for_flags(self) -> OpcUaError {
        match self {
            OpcUaError::NoEndpoint {
                endpoint,
                wanted,
                offered,
                ..
            } => OpcUaError::NoEndpoint {
                endpoint,
                wanted,
                offered,
                advice: connect::ADVICE_FLAGS,
            },
            other => other,
        }
    }
}

/// An OPC UA server whose certificate is not in `<pki>/trusted/`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the certificate of OPC UA server {endpoint} is not trusted (subject {subject}, thumbprint {thumbprint}). \
     After checking the thumbprint with the server's administrator, move {rejected} into {trusted_dir}/ \
     (`mv {rejected_q} {trusted_q}/`) or run `tagbridge opcua trust {tag_map_q} --thumbprint {thumbprint}`",
    rejected = rejected.display(),
    trusted_dir = trusted_dir.display(),
    rejected_q = shell_quote(&rejected.display().to_string()),
    trusted_q = shell_quote(&trusted_dir.display().to_string()),
    tag_map_q = shell_quote(&tag_map.display().to_string()),
)]
pub struct UntrustedServer {
    pub endpoint: String,
    pub subject: String,
    pub thumbprint: String,
    /// Where the certificate was written.
    pub rejected: PathBuf,
    /// Where it must go to be trusted.
    pub trusted_dir: PathBuf,
    /// The tag map, for the `tagbridge opcua trust` command.
    pub tag_map: PathBuf,
}

/// How often a refused login is tried again: servers lock accounts after a few failures.
pub const LOGIN_RETRY: Duration = Duration::from_secs(60);

/// `text` quoted for a POSIX shell when it needs it, so a printed command can be pasted as is
/// (certificate file names hold spaces, brackets and colons).
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=,@%".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Live counters of one OPC UA source, read by telemetry and tests.
#[derive(Debug, Default)]
pub struct OpcUaCounters {
    /// Samples handed to the forwarding queue.
    pub readings: AtomicU64,
    /// Notifications with a Bad status (not emitted).
    pub bad: AtomicU64,
    /// Notifications with an Uncertain status (emitted or dropped per policy).
    pub uncertain: AtomicU64,
    /// Values with no reading form (arrays, structures, null).
    pub unsupported: AtomicU64,
    /// Samples dropped because the forwarding queue was full.
    pub overflow_dropped: AtomicU64,
    /// Session re-establishments after a lost connection.
    pub reconnects: AtomicU64,
    /// Failed connection attempts (including untrusted certificates).
    pub connect_failures: AtomicU64,
    /// Tags with a monitored item now.
    pub items_monitored: AtomicU64,
    /// Tags whose monitored item could not be created now.
    pub items_failed: AtomicU64,
    /// Tags whose last value had a Bad status (e.g. a server that accepts an unknown node id
    /// and reports `BadNodeIdUnknown` in its values).
    pub tags_bad: AtomicU64,
    /// Publish responses with data (republished messages count in `republished`): `readings`
    /// over this is about how many values the server puts into one response.
    pub messages: AtomicU64,
    /// Notification messages lost in transit and recovered with Republish.
    pub republished: AtomicU64,
    /// Notification messages lost in transit that the server could not republish.
    pub lost_messages: AtomicU64,
    /// Subscriptions created by this source (cumulative).
    pub subscriptions_created: AtomicU64,
    /// Tags whose node no longer exists on the server (BadNodeIdUnknown in their values).
    pub tags_gone: AtomicU64,
    /// OPC UA events queued for the mapping stage (`events:`).
    pub events: AtomicU64,
    /// Events dropped because the mapping stage was far behind.
    pub events_dropped: AtomicU64,
    /// ConditionRefresh calls the server accepted (one per connect with `events:`).
    pub event_refreshes: AtomicU64,
    /// Whether the session is connected.
    pub connected: AtomicBool,
    /// Why the source is not connected, with the next step; `None` while connected or before
    /// the first attempt. Read by `/readyz` and `tagbridge status`.
    pub reason: std::sync::Mutex<Option<String>>,
}

impl OpcUaCounters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Tags monitored and delivering now: items created, less those whose node is gone.
    pub fn monitored_items(&self) -> u64 {
        Self::get(&self.items_monitored).saturating_sub(Self::get(&self.tags_gone))
    }

    /// Tags not read now: items that could not be created, and nodes that are gone.
    pub fn failed_items(&self) -> u64 {
        Self::get(&self.items_failed) + Self::get(&self.tags_gone)
    }

    /// Why the source is not connected now, if it said.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().map(|r| r.clone()).unwrap_or(None)
    }

    pub(crate) fn set_reason(&self, reason: Option<String>) {
        if let Ok(mut r) = self.reason.lock() {
            *r = reason;
        }
    }
}

pub use source::Tuning;

/// Starts the source for one tag map and returns its counters; see [`super::spawn`].
pub fn start(
    plan: &TagMapPlan,
    source: &OpcUaPlan,
    tx: mpsc::Sender<SampleBatch>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Arc<OpcUaCounters> {
    start_tuned(plan, source, Tuning::default(), tx, cancel, tracker)
}

/// [`start`] with its retries timed by `tuning`.
pub fn start_tuned(
    plan: &TagMapPlan,
    source: &OpcUaPlan,
    tuning: Tuning,
    tx: mpsc::Sender<SampleBatch>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Arc<OpcUaCounters> {
    let counters = Arc::new(OpcUaCounters::default());
    source::start(
        Arc::new(plan.clone()),
        Arc::new(source.clone()),
        tx,
        cancel,
        tracker,
        Arc::clone(&counters),
        tuning,
    );
    counters
}

/// A minimal plan (security none, anonymous) for the unit tests of this module's files.
#[cfg(test)]
pub(crate) fn test_plan() -> OpcUaPlan {
    OpcUaPlan {
        endpoint: "opc.tcp://127.0.0.1:4840/".into(),
        security_policy: crate::config::tagmap::SecurityPolicy::None,
        security_mode: crate::config::tagmap::SecurityMode::None,
        user: crate::mapping::plan::UserPlan::Anonymous,
        publishing_interval: Duration::from_secs(1),
        pki_dir: None,
        trust_on_first_use: false,
        timestamps: Default::default(),
        uncertain: Default::default(),
        max_items_per_subscription: 0,
        max_notifications_per_publish:
            crate::mapping::compile::DEFAULT_MAX_NOTIFICATIONS_PER_PUBLISH,
        monitoring: Vec::new(),
        certificate: Default::default(),
        events: Vec::new(),
        structures: Default::default(),
    }
}
