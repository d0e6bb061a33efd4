//! The simulator's configuration as written in YAML (`examples/sim-plc.yaml`), also
//! constructible in code. Every field is documented; unknown keys are errors.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::duration::HumanDuration;
use crate::config::tagmap::{DataType, Table, WordOrder};
use crate::sim::signal::Signal;

/// What the simulated PLC serves. Either part may be absent.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlcConfig {
    /// The OPC UA server, when present.
    pub opcua: Option<OpcUaConfig>,
    /// The Modbus TCP server, when present.
    pub modbus: Option<ModbusConfig>,
    /// Faults to inject at fixed times after start, for soak tests without code.
    #[serde(default)]
    pub faults: Vec<ScheduledFault>,
}

/// The Modbus TCP server.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// `host:port` to listen on. Default `127.0.0.1:0` (an ephemeral port; read it from
    /// [`super::PlcHandle::modbus_addr`]).
    pub listen: Option<String>,
    /// Also serve RTU frames over TCP (serial device servers) on this `host:port`.
    pub rtu_over_tcp_listen: Option<String>,
    /// The values served.
    #[serde(default)]
    pub points: Vec<ModbusPoint>,
}

/// One value in one Modbus table.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusPoint {
    /// Unit id (slave address). Default 1.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// The table.
    pub table: Table,
    /// 0-based address of the first register or bit, as sent on the wire.
    pub address: u16,
    /// How the registers hold the value. Default `uint16` for registers, `bool` for bits.
    #[serde(rename = "type")]
    pub data_type: Option<DataType>,
    /// Byte and word order of the registers (see [`super::registers`]). Default `ABCD`.
    #[serde(default)]
    pub order: WordOrder,
    /// For a `bool` in a register: the bit it sets, 0 = least significant.
    pub bit: Option<u8>,
    /// For `string`: number of registers (two ASCII characters each).
    pub length: Option<u16>,
    /// What drives the value.
    pub signal: Signal,
}

fn default_unit() -> u8 {
    1
}

impl ModbusPoint {
    /// The data type, with the table's default.
    pub fn data_type(&self) -> DataType {
        self.data_type.unwrap_or(if self.table.is_bits() {
            DataType::Bool
        } else {
            DataType::Uint16
        })
    }

    /// Registers (or bits) the point occupies.
    pub fn count(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else if self.data_type() == DataType::String {
            self.length.unwrap_or(1).max(1)
        } else {
            self.data_type().registers()
        }
    }
}

/// The OPC UA server.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcUaConfig {
    /// Host name or address in the endpoint URL and to bind. Clients must use the same literal
    /// host (async-opcua compares it). Default `127.0.0.1`.
    #[serde(default = "default_host")]
    pub host: String,
    /// TCP port. Default 0: a free port is chosen; read it from
    /// [`super::PlcHandle::opcua_endpoint`].
    #[serde(default)]
    pub port: u16,
    /// Namespace URI of the simulated variables. Default `urn:tagbridge:sim`; it gets index 2.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Security offered. Default: all of `none`, `basic256sha256_sign`,
    /// `basic256sha256_sign_and_encrypt`.
    #[serde(default = "default_security")]
    pub security: Vec<OpcUaSecurity>,
    /// Accept anonymous sessions. Default true.
    #[serde(default = "yes")]
    pub anonymous: bool,
    /// Users who may log in with a password.
    #[serde(default)]
    pub users: Vec<OpcUaUser>,
    /// Certificate store. Default: a fresh directory under the system temp dir per instance
    /// (removed on shutdown). Client certificates are trusted automatically.
    pub pki_dir: Option<PathBuf>,
    /// The variables served.
    #[serde(default)]
    pub variables: Vec<OpcUaVariable>,
    /// Structured variables of the custom type `SimRecipe` (see [`super::structs`]).
    #[serde(default)]
    pub structures: Vec<OpcUaStructure>,
    /// The revision of `SimRecipe`, to act a PLC whose program changed across a restart: 2
    /// appends a field `batch: UInt32` (signal path `batch`). 0 (the default) and 1 are the
    /// first revision.
    #[serde(default)]
    pub recipe_revision: u32,
    /// Write new values in slices of this many variables, so one update never holds the node
    /// store for long. Default 10 000.
    pub update_slice: Option<usize>,
    /// Conditions (limit and off-normal alarms) on the variables, sent as OPC UA events
    /// (`sim::plc::alarms`).
    #[serde(default)]
    pub alarms: Vec<AlarmConfig>,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_namespace() -> String {
    "urn:tagbridge:sim".into()
}
fn default_security() -> Vec<OpcUaSecurity> {
    vec![
        OpcUaSecurity::None,
        OpcUaSecurity::Basic256Sha256Sign,
        OpcUaSecurity::Basic256Sha256SignAndEncrypt,
    ]
}
fn yes() -> bool {
    true
}

impl Default for OpcUaConfig {
    fn default() -> Self {
        OpcUaConfig {
            host: default_host(),
            port: 0,
            namespace: default_namespace(),
            security: default_security(),
            anonymous: true,
            users: Vec::new(),
            pki_dir: None,
            variables: Vec::new(),
            structures: Vec::new(),
            recipe_revision: 0,
            update_slice: None,
            alarms: Vec::new(),
        }
    }
}

/// A security policy and mode the server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpcUaSecurity {
    None,
    #[serde(rename = "basic256sha256_sign")]
    Basic256Sha256Sign,
    #[serde(rename = "basic256sha256_sign_and_encrypt")]
    Basic256Sha256SignAndEncrypt,
}

/// A user name and password the server accepts.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcUaUser {
    pub username: String,
    pub password: String,
}

/// One variable.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcUaVariable {
    /// Where it lives: a path of folders ending in the variable's name, e.g.
    /// `Line1/Compressor7/VibeX`. The node id is the string id `ns=2;s=<path>`.
    pub path: String,
    /// Another node id in the simulator's namespace (index 2) instead of `ns=2;s=<path>`,
    /// e.g. `ns=2;i=1001`. The variable still appears at `path` in the folders.
    pub node_id: Option<String>,
    /// Its data type.
    #[serde(rename = "type")]
    pub data_type: OpcUaType,
    /// For `enum`: the names of the values 0, 1, 2, … (published as EnumStrings). Default: the
    /// names of a `states` signal.
    pub enum_strings: Option<Vec<String>>,
    /// What drives the value.
    pub signal: Signal,
}

/// A structured variable of the custom type `SimRecipe` (nested `SimStage`, enumeration
/// `SimPhase`, array `setpoints`), published with its DataTypeDefinition.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcUaStructure {
    /// Where it lives, like a variable's path; the node id is `ns=2;s=<path>`.
    pub path: String,
    /// What drives each field, by field path: `temperature`, `pressure`, `count`, `running`,
    /// `phase` (0 Idle, 1 Heating, 2 Pressing, 3 Cooling), `name`, `setpoints[0]` to
    /// `setpoints[2]`, `stage.duration`, `stage.temperature`. Fields not given hold 0, false
    /// or "".
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, Signal>,
}

/// OPC UA built-in types the simulator serves, plus an enumeration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OpcUaType {
    Boolean,
    Int16,
    Int32,
    Int64,
    UInt16,
    UInt32,
    UInt64,
    Float,
    Double,
    String,
    /// An Int32-valued enumeration with its own DataType node carrying EnumStrings.
    Enum,
}

/// A fault injected at a fixed time after start.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduledFault {
    /// Time after start.
    pub at: HumanDuration,
    /// What happens.
    pub fault: FaultSpec,
}

/// A fault as written in YAML.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    /// Close every open Modbus connection (clients must reconnect).
    DropConnections {},
    /// Answer nothing (Modbus requests are read and ignored) for this long.
    Silence { duration: HumanDuration },
    /// Answer a Modbus exception for reads covering this address, until `duration` passes
    /// (forever when absent).
    ModbusException {
        #[serde(default = "default_unit")]
        unit: u8,
        table: Table,
        address: u16,
        /// Exception code, e.g. 2 (illegal data address) or 4 (server device failure).
        code: u8,
        duration: Option<HumanDuration>,
    },
    /// Stop the OPC UA server and start it again on the same endpoint: subscriptions die.
    RestartOpcua {},
    /// Give an OPC UA variable a status other than Good (a failed sensor, an uncertain value, a
    /// node that went away) until `duration` passes (forever when absent).
    OpcuaStatus {
        /// The variable's path (`Line1/Temp`) or node id (`ns=2;s=Line1/Temp`).
        variable: String,
        /// An OPC UA status name: `BadSensorFailure`, `UncertainLastUsableValue`,
        /// `BadNodeIdUnknown`, …
        status: String,
        duration: Option<HumanDuration>,
    },
}

/// One condition as written in the simulator's YAML (evaluated by [`super::alarms`]).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// ConditionName, unique among the alarms.
    pub name: String,
    /// The `path` of the variable it watches (SourceName; SourceNode is its node id).
    pub source: String,
    /// A limit alarm (ExclusiveLevelAlarmType): active above `high` or below `low`.
    pub limit: Option<LimitConfig>,
    /// An off-normal alarm (OffNormalAlarmType): active while the value is not `normal`.
    pub off_normal: Option<OffNormalConfig>,
    /// Severity 1 to 1000. Default 500.
    pub severity: Option<u16>,
    /// The Message of its activation. Default `<name> active`; clearing says
    /// `<name> returned to normal`.
    pub message: Option<String>,
}

/// Limits of a limit alarm; at least one.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub high: Option<f64>,
    pub low: Option<f64>,
}

/// The normal value of an off-normal alarm: a state's name, text, or a number.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OffNormalConfig {
    pub normal: serde_json::Value,
}
