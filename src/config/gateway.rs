//! `gateway.yaml`: where the tag maps are, where readings go, the spool and telemetry.
//!
//! Secrets are referenced, never written here: a connection string comes from an environment
//! variable or a file (`connection_string_env`, `connection_string_file`).

use schemars::JsonSchema;
use serde::Deserialize;

use super::de::Spanned;
use super::duration::HumanDuration;

pub use crate::spool::FsyncPolicy;

/// The gateway's configuration.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Tag map files or directories (every `*.yaml`/`*.yml` inside), relative to this file.
    pub tag_maps: Spanned<PathList>,
    /// Where readings go.
    pub sink: SinkSpec,
    /// The on-disk queue between the tag maps and the sink.
    #[serde(default)]
    pub spool: SpoolSpec,
    /// Logs and metrics.
    #[serde(default)]
    pub telemetry: TelemetrySpec,
    /// Quality in every reading (`"quality":"good"`), and one `"quality":"bad"` reading with
    /// `"value":null` and the cause when a tag stops being readable. Default false: readings
    /// keep the plain `{sensor_id, timestamp, value}` format. See docs/quality.md.
    #[serde(default)]
    pub quality: bool,
    /// Settings shared by every OPC UA tag map: the gateway's own certificate.
    #[serde(default)]
    pub opcua: OpcUaSpec,
}

/// `opcua:`: what every OPC UA tag map shares.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcUaSpec {
    /// The gateway's application certificate, as it is made when `<pki>/own/cert.der` does not
    /// exist yet (first start, or after `tagbridge opcua certificate --renew`). An existing
    /// certificate is never changed: when it no longer matches these settings, the gateway
    /// says so and keeps using it. See docs/sources.md.
    pub certificate: Option<CertificateSpec>,
}

/// The identity in the gateway's OPC UA application certificate. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// The gateway's application URI, sent in every session and written into the certificate
    /// (some servers check that the two match). Default `urn:<this host's name>:tagbridge`.
    #[schemars(
        length(min = 3, max = 1024),
        pattern(r"^[A-Za-z][A-Za-z0-9+.-]*:[!-~]+$")
    )]
    pub application_uri: Option<Spanned<String>>,
    /// Subject common name (CN), at most 64 characters. Default `tagbridge@<this host's name>`.
    #[schemars(length(min = 1, max = 64))]
    pub common_name: Option<Spanned<String>>,
    /// Subject organisation (O), at most 64 characters. Default none.
    #[schemars(length(max = 64))]
    pub organization: Option<Spanned<String>>,
    /// Subject organisational unit (OU), at most 64 characters. Default none.
    #[schemars(length(max = 64))]
    pub organizational_unit: Option<Spanned<String>>,
    /// Subject state or province (ST), at most 128 characters. Default none.
    #[schemars(length(max = 128))]
    pub state: Option<Spanned<String>>,
    /// Subject country (C): two capital letters (ISO 3166), e.g. `DE`. Default none.
    #[schemars(pattern(r"^[A-Z]{2}$"))]
    pub country: Option<Spanned<String>>,
    /// DNS names and IP addresses of the gateway, in the certificate's subject alternative
    /// names beside the application URI. Default: `localhost`, 127.0.0.1, ::1 and this
    /// host's name and addresses.
    pub host_names: Option<Vec<Spanned<String>>>,
    /// RSA key size: 2048 (default), 3072 or 4096 bits.
    #[schemars(extend("enum" = [2048, 3072, 4096]))]
    pub key_size: Option<Spanned<u32>>,
    /// How long the certificate is valid, in days from its creation (1 to 36500). Default
    /// 1825 (five years).
    #[schemars(range(min = 1, max = 36500))]
    pub valid_days: Option<Spanned<u32>>,
}

/// One path or a list of paths.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(untagged)]
pub enum PathList {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl PathList {
    pub fn paths(&self) -> Vec<&str> {
        match self {
            PathList::One(p) => vec![p.as_str()],
            PathList::Many(ps) => ps.iter().map(|p| p.value.as_str()).collect(),
        }
    }

    /// Each path with where it was written; a single path takes `whole`, the position of the
    /// `tag_maps` value.
    pub fn spanned(&self, whole: super::Pos) -> Vec<Spanned<&str>> {
        match self {
            PathList::One(p) => vec![Spanned::new(whole, p.as_str())],
            PathList::Many(ps) => ps
                .iter()
                .map(|p| Spanned::new(p.pos, p.value.as_str()))
                .collect(),
        }
    }
}

impl<'de> Deserialize<'de> for PathList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PathsVisitor;

        impl<'de> serde::de::Visitor<'de> for PathsVisitor {
            type Value = PathList;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a path or a list of paths")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PathList, E> {
                Ok(PathList::One(v.to_string()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PathList, A::Error> {
                let mut paths = Vec::new();
                while let Some(p) = seq.next_element::<Spanned<String>>()? {
                    paths.push(p);
                }
                Ok(PathList::Many(paths))
            }
        }

        deserializer.deserialize_any(PathsVisitor)
    }
}

/// Where readings are delivered.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkSpec {
    /// JSON lines on standard output (logs go to standard error).
    Stdout {},
    /// JSON lines appended to a file.
    File {
        /// The file, relative to gateway.yaml.
        path: String,
    },
    /// An Azure Event Hub.
    Eventhub(Spanned<Box<EventHubSpec>>),
}

/// An Azure Event Hub and how to authenticate to it: a send-only SAS connection string, or an
/// Entra ID service principal with `namespace` and `hub`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventHubSpec {
    /// Environment variable holding a send-only SAS connection string.
    pub connection_string_env: Option<String>,
    /// File holding the connection string (e.g. `/run/credentials/tagbridge.service/hub`).
    pub connection_string_file: Option<String>,
    /// An Entra ID service principal, instead of a connection string.
    pub entra: Option<EntraSpec>,
    /// The namespace host, e.g. `plant-a.servicebus.windows.net` (needed with `entra`; with a
    /// connection string it comes from `Endpoint`). A `:port` may follow.
    pub namespace: Option<String>,
    /// The hub name, when the connection string has no `EntityPath`.
    pub hub: Option<String>,
    /// `amqp` (TLS on 5671, default), `amqp_ws` (WebSockets on 443) or `https`.
    pub transport: Option<Transport>,
    /// An extra CA certificate (PEM) to trust besides the system roots.
    pub ca_file: Option<String>,
    /// Which readings share a partition: `none` (default: the hub spreads them), `sensor_id`,
    /// `tag_map`, or `{fixed: <key>}`.
    pub partition_key: Option<Spanned<PartitionKeySpec>>,
    /// Batches sent and not yet acknowledged, at most (1 or more). Default 16.
    pub max_in_flight: Option<std::num::NonZeroU16>,
    /// How long a reading may wait for a fuller batch, counted from when the gateway received
    /// it from its source (so the gateway adds about this much latency at most). Default 20ms.
    pub linger: Option<HumanDuration>,
    /// Where events too large for the hub are written. Default `dead-letter.jsonl` in the spool
    /// directory.
    pub dead_letter: Option<String>,
    /// `one` (default): one event per reading. `{array: N}`: up to N readings per event, as a
    /// JSON array; fewer events (Event Hubs bills per event), but every consumer must expect
    /// arrays. `{array: N, encoding: gzip}`: the array gzip-compressed, marked for Azure Data
    /// Explorer (`Compression: GZip`, `Format: MULTIJSON`); fewer bytes (docs/sink.md).
    pub events: Option<Spanned<EventsSpec>>,
    /// After a stop is asked for (SIGTERM, Ctrl-C), how long the sink may keep delivering what
    /// is spooled before the gateway exits; what is left stays in the spool. Default 10s.
    pub shutdown_grace: Option<HumanDuration>,
}

/// How readings become events: `one`, or `{array: N}` with an optional `encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsSpec {
    One,
    Array(ArrayEventsSpec),
}

/// `events: {array: N, encoding: gzip}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArrayEventsSpec {
    /// Up to this many readings per event (1 or more).
    // Required, but `Option` so that a bad value is reported once (the second pass of the
    // reader sees it pruned); `check` asks for it when it is missing.
    #[schemars(with = "std::num::NonZeroU16")]
    pub array: Option<std::num::NonZeroU16>,
    /// `json` (default): the array as JSON text. `gzip`: the gzip of that text, with
    /// `content-encoding: gzip` and the properties Azure Data Explorer reads
    /// (`Compression: GZip`, `Format: MULTIJSON`). Not with `transport: https`.
    pub encoding: Option<EventEncoding>,
}

/// How an array event's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventEncoding {
    #[default]
    Json,
    Gzip,
}

impl<'de> Deserialize<'de> for EventsSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventsVisitor;

        impl<'de> serde::de::Visitor<'de> for EventsVisitor {
            type Value = EventsSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`one` or `{array: N}` (optionally with `encoding: gzip`)")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EventsSpec, E> {
                match v {
                    "one" => Ok(EventsSpec::One),
                    other => Err(E::unknown_variant(other, &["one", "{array: N}"])),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<EventsSpec, A::Error> {
                ArrayEventsSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(EventsSpec::Array)
            }
        }

        deserializer.deserialize_any(EventsVisitor)
    }
}

impl JsonSchema for EventsSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EventsSpec".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let array = generator.subschema_for::<ArrayEventsSpec>();
        schemars::json_schema!({
            "description": "How readings become events.",
            "oneOf": [
                {"type": "string", "enum": ["one"]},
                array,
            ]
        })
    }
}

/// An Entra ID (Azure AD) application allowed to send ("Azure Event Hubs Data Sender").
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntraSpec {
    pub tenant_id: String,
    pub client_id: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// File holding the client secret.
    pub client_secret_file: Option<String>,
    /// The token authority. Default `https://login.microsoftonline.com`; sovereign clouds and
    /// tests set their own.
    pub authority: Option<String>,
}

/// How readings are assigned partition keys.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKeySpec {
    None,
    SensorId,
    TagMap,
    Fixed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Amqp,
    AmqpWs,
    Https,
}

/// The durable queue between the tag maps and the sink.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpoolSpec {
    /// Directory for spool segments. Default `spool/` beside gateway.yaml.
    pub dir: Option<String>,
    /// Largest size on disk, in bytes: at least 4096. Default 1 GiB.
    #[schemars(range(min = 4096))]
    pub max_bytes: Option<Spanned<u64>>,
    /// What to drop when full: `drop_oldest` (default) or `drop_newest`.
    pub when_full: Option<WhenFull>,
    /// How often to fsync: a duration such as `100ms` (default; a power cut may lose the
    /// readings of the last interval), `always` (after every group commit; loses nothing that
    /// was appended, costs an fsync per group), or `never` (the OS decides; tests only). A
    /// process crash loses nothing with any of them.
    pub fsync: Option<Fsync>,
    /// Readings older than this are dropped (and counted), e.g. `7d`. Default: no limit.
    pub max_age: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    DropOldest,
    DropNewest,
}

/// Logs and metrics.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySpec {
    /// `human` (default) or `json`. Logs always go to standard error.
    pub log_format: Option<LogFormat>,
    /// A tracing filter, e.g. `info` or `tagbridge=debug`. Default `info`.
    pub log_level: Option<Spanned<String>>,
    /// Prometheus metrics, `/healthz` and `/readyz` address. Default `127.0.0.1:9898`; `off` for none.
    pub metrics: Option<MetricsAddr>,
    /// How often to log a one-line summary. Default 1m.
    pub summary_every: Option<HumanDuration>,
    /// The live view of every tag (`/` and `/api/live`) on the metrics listener. Default true.
    pub live_view: Option<bool>,
}

/// Where `/metrics` is served when `telemetry.metrics` is not written.
pub const DEFAULT_METRICS_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9898);

impl TelemetrySpec {
    /// The metrics address: the default when unset, `None` for `off`.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        match self.metrics {
            None => Some(DEFAULT_METRICS_ADDR),
            Some(MetricsAddr::Off) => None,
            Some(MetricsAddr::At(addr)) => Some(addr),
        }
    }
}

/// `telemetry.metrics`: `host:port` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    At(std::net::SocketAddr),
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "off" => Ok(MetricsAddr::Off),
            addr => addr
                .parse()
                .map(MetricsAddr::At)
                .map_err(|_| format!("`{addr}` is not host:port (e.g. 127.0.0.1:9898) or `off`")),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for MetricsAddr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MetricsAddr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "An IP address and port, e.g. 127.0.0.1:9898, or `off`.",
            "anyOf": [
                {"const": "off"},
                {"pattern": "^(\\[[0-9A-Fa-f:.]+\\]|[0-9.]+):[0-9]{1,5}$"}
            ],
            "examples": ["127.0.0.1:9898", "0.0.0.0:9100", "off"]
        })
    }
}

/// `spool.fsync`: `always`, `never` or a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fsync(pub FsyncPolicy);

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "always" => Ok(Fsync(FsyncPolicy::Always)),
            "never" => Ok(Fsync(FsyncPolicy::Never)),
            other => other
                .parse::<HumanDuration>()
                .map(|s| Fsync(FsyncPolicy::Interval(s.as_duration())))
                .map_err(|_| {
                    format!("`{other}` is not `always`, `never` or a duration such as `100ms`")
                }),
        }
    }
}

impl<'de> Deserialize<'de> for Fsync {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Fsync {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Fsync".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`always`, `never`, or a duration such as `100ms` (at most that long after an append).",
            "anyOf": [
                {"enum": ["always", "never"]},
                {"pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|min|h|d)$"}
            ],
            "examples": ["100ms", "always", "never"]
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_address_defaults_turns_off_and_names_a_bad_value() {
        let spec = |m: Option<&str>| TelemetrySpec {
            metrics: m.map(|m| m.parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(spec(None).metrics_addr(), Some(DEFAULT_METRICS_ADDR));
        assert_eq!(spec(Some(" off ")).metrics_addr(), None);
        assert_eq!(
            spec(Some("0.0.0.0:9100")).metrics_addr(),
            Some("0.0.0.0:9100".parse().unwrap())
        );
        assert!("localhost"
            .parse::<MetricsAddr>()
            .is_err_and(|e| e.contains("`localhost` is not host:port")));
    }

    #[test]
    fn fsync_parses_always_never_and_durations() {
        assert_eq!("always".parse(), Ok(Fsync(FsyncPolicy::Always)));
        assert_eq!(" never".parse(), Ok(Fsync(FsyncPolicy::Never)));
        assert_eq!(
            "250ms".parse(),
            Ok(Fsync(FsyncPolicy::Interval(
                std::time::Duration::from_millis(250)
            )))
        );
        assert!("sometimes"
            .parse::<Fsync>()
            .is_err_and(|e| e.contains("`sometimes` is not `always`, `never` or a duration")));
    }
}
