//! The tag map file as written: one file per source, a list of tags, defaults and extra fields.
//!
//! These types mirror the YAML one to one and carry positions ([`Spanned`]) where checks after
//! parsing need to point at a value. They are deliberately flat (no tagged enums per tag) so that
//! every error lands on the key that caused it. [`crate::mapping::compile()`] turns them into the
//! validated plan that the runtime uses.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::de::{Items, Spanned};
use super::duration::HumanDuration;
// A leaf of its own: the key type and its lenient parsing are one concept.
pub use super::state_key::StateKey;

/// A tag map: which tags to read from one OPC UA server or one Modbus connection, and the
/// `sensor_id` each reading carries.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagMapFile {
    /// The server or device this file reads: `opcua:` or `modbus:`.
    pub source: Spanned<SourceSpec>,
    /// Settings that apply to every tag of this file unless the tag sets its own.
    #[serde(default)]
    pub defaults: TagDefaults,
    /// Extra fields added to every reading of this file, e.g. `site: plant-a`. They never
    /// replace `sensor_id`, `timestamp` or `value`.
    #[serde(default)]
    pub fields: BTreeMap<Spanned<String>, serde_json::Value>,
    /// The tags to read. May be left out when the file lists `events`.
    #[serde(default)]
    pub tags: Items<Box<Spanned<TagSpec>>>,
    /// OPC UA only: event and alarm subscriptions, one reading per event (docs/tag-maps.md).
    #[serde(default)]
    pub events: Option<Spanned<Items<Spanned<super::events::EventSpec>>>>,
}

/// Where the tags of this file come from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// An OPC UA server, read through subscriptions.
    #[serde(rename = "opcua")]
    OpcUa(OpcUaSourceSpec),
    /// A Modbus device or gateway, polled.
    Modbus(ModbusSourceSpec),
}

/// An OPC UA server.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcUaSourceSpec {
    /// The server's endpoint URL, e.g. `opc.tcp://10.0.0.5:4840`.
    pub endpoint: Spanned<String>,
    /// Security policy. Must be chosen explicitly; `none` sends everything in clear text.
    pub security_policy: Option<SecurityPolicy>,
    /// Security mode; `sign_and_encrypt` unless the policy is `none`.
    pub security_mode: Option<SecurityMode>,
    /// How the gateway logs in. Anonymous when absent.
    pub user: Option<OpcUaUser>,
    /// How often the server sends collected changes. Default 1s.
    pub publishing_interval: Option<HumanDuration>,
    /// Directory holding the gateway's certificate and the trusted/rejected server certificates.
    pub pki_dir: Option<String>,
    /// Trust the server's certificate the first time it is seen. Off by default: an operator
    /// should move the certificate into `trusted/` after checking it.
    #[serde(default)]
    pub trust_on_first_use: bool,
    /// Which time readings carry: the device's `source` timestamp (default; the server's when
    /// absent), the `server`'s, or the `gateway`'s clock on arrival.
    pub timestamps: Option<OpcUaTimestamps>,
    /// Values with an Uncertain status: `pass` (default) or `skip`. Bad values are never sent.
    pub uncertain: Option<UncertainPolicy>,
    /// Put at most this many monitored items into one subscription (more subscriptions are
    /// created). Default: as many as the server accepts.
    pub max_items_per_subscription: Option<u32>,
    /// Ask the server for at most this many values per publish response; the rest follow in
    /// the next responses at once. Bounds the size of one response (and the gateway's memory
    /// for it) on servers with many tags. Default 5000; 0: no limit.
    pub max_notifications_per_publish: Option<u32>,
}

/// Which timestamp OPC UA readings carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpcUaTimestamps {
    /// The SourceTimestamp (the server's when absent, then the gateway's).
    #[default]
    Source,
    /// The ServerTimestamp (the gateway's when absent).
    Server,
    /// The gateway's clock when the notification arrived.
    Gateway,
}

/// What to do with OPC UA values whose status is Uncertain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UncertainPolicy {
    /// Send them like Good values.
    #[default]
    Pass,
    /// Drop them.
    Skip,
}

/// OPC UA data change trigger (Part 4, 7.22.2): which changes the server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataChangeTrigger {
    /// Only status changes.
    Status,
    /// Status or value changes (the OPC UA default).
    StatusValue,
    /// Status, value or source timestamp changes (every new sample, even if equal).
    StatusValueTimestamp,
}

/// A deadband the OPC UA server applies before reporting (Part 4, 7.22.2).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerDeadband {
    /// Report only changes larger than this, in the node's units.
    Absolute(f64),
    /// Report only changes larger than this percentage of the node's EURange.
    Percent(f64),
}

/// OPC UA security policies the gateway can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecurityPolicy {
    None,
    #[serde(rename = "basic256sha256")]
    Basic256Sha256,
    #[serde(rename = "aes128_sha256_rsaoaep")]
    Aes128Sha256RsaOaep,
    #[serde(rename = "aes256_sha256_rsapss")]
    Aes256Sha256RsaPss,
}

/// OPC UA message security modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    None,
    Sign,
    SignAndEncrypt,
}

/// How the gateway identifies itself to an OPC UA server.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OpcUaUser {
    /// No user identity.
    Anonymous,
    /// A user name and a password read from the environment or a file.
    Username {
        username: String,
        /// Environment variable holding the password.
        password_env: Option<String>,
        /// File holding the password (e.g. a systemd credential).
        password_file: Option<String>,
    },
    /// An X.509 user certificate and its private key (PEM or DER files).
    Certificate { cert: String, key: String },
}

/// A Modbus connection: TCP, RTU over a serial line, or RTU framed over TCP.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusSourceSpec {
    /// Modbus TCP: `host:port`, e.g. `10.0.0.7:502`.
    pub tcp: Option<Spanned<String>>,
    /// RTU frames over a TCP connection (serial device servers): `host:port`.
    pub rtu_over_tcp: Option<Spanned<String>>,
    /// RTU over a serial port.
    pub serial: Option<Spanned<SerialSpec>>,
    /// Unit id (slave address) for tags that do not set their own. Default 1.
    pub unit: Option<u8>,
    /// How long to wait for a response. Default 1s.
    pub timeout: Option<HumanDuration>,
    /// Largest number of unused registers one read may span to join two tags. Default 8.
    pub max_gap: Option<u16>,
    /// TCP transports: connections to open to the device, each with one request in flight; a
    /// cycle's reads are spread over them. For devices and gateways that accept several
    /// clients, when round trips are slow. Default 1.
    pub connections: Option<Spanned<u8>>,
}

/// Serial line settings for Modbus RTU.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialSpec {
    /// The device, e.g. `/dev/ttyUSB0`.
    pub port: String,
    /// Baud rate. Default 9600.
    pub baud: Option<u32>,
    /// Parity. Default `even`, as the Modbus serial line spec asks.
    pub parity: Option<Parity>,
    /// Data bits. Default 8.
    pub data_bits: Option<u8>,
    /// Stop bits. Default 1.
    pub stop_bits: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// Settings shared by the tags of one file.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagDefaults {
    /// Modbus: how often to poll. OPC UA: how often the server samples. Default 1s.
    pub interval: Option<HumanDuration>,
    /// Modbus unit id. Overrides the source's `unit`.
    pub unit: Option<u8>,
    /// Modbus data type.
    #[serde(rename = "type")]
    pub data_type: Option<DataType>,
    /// Modbus byte and word order of multi-register values.
    pub order: Option<WordOrder>,
    /// Suppress changes smaller than this (in scaled units). Default 0: only equal values are
    /// suppressed.
    pub deadband: Option<Spanned<f64>>,
    /// Re-send an unchanged value this often, so consumers see the tag is alive.
    pub heartbeat: Option<HumanDuration>,
    /// Round numbers to this many decimals (0 to 12).
    pub decimals: Option<Spanned<u8>>,
    /// Set to false to keep the tags in the file but not read them.
    pub enabled: Option<bool>,
}

/// One tag: where to read it, what to call it, and how to transform its value.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagSpec {
    /// The name readings carry, unique across all tag maps, e.g. `compressor-7:vibe_x`.
    pub sensor_id: Spanned<String>,
    /// Set to false to keep the tag in the file but not read it.
    pub enabled: Option<bool>,

    /// OPC UA: the node id, e.g. `ns=2;s=Line1/Compressor7/VibeX` or `ns=3;i=1001`.
    pub node: Option<Spanned<String>>,
    /// OPC UA: how many samples the server keeps between publishes. Default: enough for one
    /// publishing interval at this tag's sampling interval (at least 2).
    pub queue_size: Option<Spanned<u32>>,
    /// OPC UA: which changes the server reports. Default `status_value`.
    pub trigger: Option<DataChangeTrigger>,
    /// OPC UA: a deadband the server applies, `{absolute: 0.5}` or `{percent: 2}`.
    pub server_deadband: Option<Spanned<ServerDeadband>>,
    /// OPC UA: the node holds an array; read its first N elements, each as its own tag
    /// `sensor_id[i]` (0-based). Without it, an array value is reported and not sent.
    pub elements: Option<Spanned<u32>>,
    /// OPC UA: the node holds a structure; read these of its fields, each as its own tag
    /// `sensor_id.path` (with `elements`: `sensor_id[i].path`). docs/tag-maps.md, "Structures".
    pub members: Option<Spanned<Members>>,

    /// Modbus: the table, with `address`.
    pub table: Option<Spanned<Table>>,
    /// Modbus: 0-based address within `table`, as sent on the wire (holding register 40001 is
    /// `table: holding_register, address: 0`).
    pub address: Option<Spanned<u16>>,
    /// Modbus: the 1-based reference printed in PLC manuals (00001 coils, 10001 discrete
    /// inputs, 30001 input registers, 40001 holding registers; six digits also accepted).
    /// Use either this or `table` + `address`.
    pub modicon: Option<Spanned<String>>,
    /// Modbus: unit id (slave address) of this tag.
    pub unit: Option<u8>,
    /// Modbus: how the registers hold the value. Default `uint16` for registers, `bool` for bits.
    #[serde(rename = "type")]
    pub data_type: Option<Spanned<DataType>>,
    /// Modbus: byte and word order of 32- and 64-bit values. Default `ABCD` (big endian).
    pub order: Option<WordOrder>,
    /// Modbus: read one bit (0 = least significant) of a register as a boolean.
    pub bit: Option<Spanned<u8>>,
    /// Modbus: number of registers holding a `string` (two ASCII characters each).
    pub length: Option<Spanned<u16>>,

    /// Modbus: poll interval. OPC UA: sampling interval.
    pub interval: Option<HumanDuration>,
    /// Multiply the raw value by this.
    pub scale: Option<Spanned<f64>>,
    /// Add this after scaling (a finite number).
    pub offset: Option<Spanned<f64>>,
    /// Map raw numbers or booleans to state strings, e.g. `{0: Stopped, 1: Running, 2: Fault}`.
    pub states: Option<BTreeMap<StateKey, String>>,
    /// Suppress changes smaller than this (in scaled units).
    pub deadband: Option<Spanned<f64>>,
    /// Re-send an unchanged value this often.
    pub heartbeat: Option<HumanDuration>,
    /// Round the value to this many decimals.
    pub decimals: Option<Spanned<u8>>,
    /// Extra fields on this tag's readings, e.g. `unit: mm/s`.
    #[serde(default)]
    pub fields: BTreeMap<Spanned<String>, serde_json::Value>,
}

/// Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Read/write bits (function 1).
    Coil,
    /// Read-only bits (function 2).
    DiscreteInput,
    /// Read-only 16-bit registers (function 4).
    InputRegister,
    /// Read/write 16-bit registers (function 3).
    HoldingRegister,
}

impl Table {
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
            Table::InputRegister => "input_register",
            Table::HoldingRegister => "holding_register",
        }
    }
}

/// How a Modbus value is laid out in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    Bool,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Float32,
    Float64,
    /// ASCII text, two characters per register, `length` registers.
    String,
}

impl DataType {
    /// The name as written in tag maps.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Int16 => "int16",
            DataType::Uint16 => "uint16",
            DataType::Int32 => "int32",
            DataType::Uint32 => "uint32",
            DataType::Int64 => "int64",
            DataType::Uint64 => "uint64",
            DataType::Float32 => "float32",
            DataType::Float64 => "float64",
            DataType::String => "string",
        }
    }

    /// Registers one value occupies (strings: per `length`).
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::Int16 | DataType::Uint16 | DataType::String => 1,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 2,
            DataType::Int64 | DataType::Uint64 | DataType::Float64 => 4,
        }
    }
}

/// Byte and word order of multi-register values, named by where bytes A (most significant)
/// to D land. For 64-bit values the same names apply word-wise: `ABCD` = ABCDEFGH (big endian),
/// `DCBA` = HGFEDCBA (little endian), `CDAB` = GHEFCDAB (words swapped), `BADC` = BADCFEHG
/// (bytes swapped in each word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, JsonSchema)]
pub enum WordOrder {
    #[default]
    #[serde(alias = "ABCDEFGH")]
    ABCD,
    #[serde(alias = "GHEFCDAB")]
    CDAB,
    #[serde(alias = "BADCFEHG")]
    BADC,
    #[serde(alias = "HGFEDCBA")]
    DCBA,
}

/// The fields of a structure tag to read: field path → options (`{}` or empty for none).
/// A path names a field (`temperature`), a field of a nested structure (`stage.duration`), or
/// an element of an array field (`setpoints[0]`, `stages[1].duration`); see
/// [`super::structure::parse_path`].
pub type Members = BTreeMap<Spanned<String>, Option<MemberSpec>>;

/// One field of a structure tag, read as its own tag `sensor_id.path`. Options a field leaves
/// out come from its tag (`deadband`, `heartbeat`, `decimals`) and then the file's `defaults`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// Set to false to keep the field in the file but never read or send it.
    pub enabled: Option<bool>,
    /// Multiply the raw value by this.
    pub scale: Option<Spanned<f64>>,
    /// Add this after scaling (a finite number).
    pub offset: Option<Spanned<f64>>,
    /// Map raw numbers or booleans to state strings. An enumeration field is sent by its
    /// names from the server unless this is given (then the number is mapped).
    pub states: Option<BTreeMap<StateKey, String>>,
    /// Suppress changes smaller than this (in scaled units).
    pub deadband: Option<Spanned<f64>>,
    /// Re-send an unchanged value this often.
    pub heartbeat: Option<HumanDuration>,
    /// Round the value to this many decimals.
    pub decimals: Option<Spanned<u8>>,
    /// Extra fields on this field's readings, e.g. `unit: degC`.
    #[serde(default)]
    pub fields: BTreeMap<Spanned<String>, serde_json::Value>,
}
