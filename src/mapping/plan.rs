//! The validated, resolved form of a tag map: what the runtime sees. Every value here has been
//! checked (addresses in range, node ids parsed, intervals positive, names unique).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::tagmap::{
    DataChangeTrigger, DataType, OpcUaTimestamps, Parity, SecurityMode, SecurityPolicy,
    ServerDeadband, StateKey, Table, UncertainPolicy, WordOrder,
};

/// One tag map, ready to run.
#[derive(Debug, Clone)]
pub struct TagMapPlan {
    /// The file it came from.
    pub path: PathBuf,
    pub source: SourcePlan,
    /// Enabled tags only; a [`crate::sample::Sample`]'s `tag` indexes this list.
    pub tags: Vec<TagPlan>,
    /// Tags present in the file with `enabled: false`.
    pub disabled: usize,
}

impl TagMapPlan {
    /// The tag map's name: its file name without the extension (logs, metrics labels and
    /// `partition_key: tag_map` use it).
    pub fn name(&self) -> std::sync::Arc<str> {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
            .into()
    }
}

/// The source half of a tag map's plan. One per tag map, built once per load and never in a hot
/// path, so the size difference between the variants costs nothing worth a box.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum SourcePlan {
    OpcUa(OpcUaPlan),
    Modbus(ModbusPlan),
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaPlan {
    pub endpoint: String,
    pub security_policy: SecurityPolicy,
    pub security_mode: SecurityMode,
    pub user: UserPlan,
    pub publishing_interval: Duration,
    pub pki_dir: Option<PathBuf>,
    pub trust_on_first_use: bool,
    pub timestamps: OpcUaTimestamps,
    pub uncertain: UncertainPolicy,
    /// 0: as many as the server accepts.
    pub max_items_per_subscription: u32,
    /// The subscriptions' MaxNotificationsPerPublish; 0: no limit.
    pub max_notifications_per_publish: u32,
    /// Monitoring settings per tag, indexed like [`TagMapPlan::tags`].
    pub monitoring: Vec<MonitoringPlan>,
    /// The identity of the gateway's own certificate, from gateway.yaml (`opcua.certificate`;
    /// every default for a tag map checked alone): used when the certificate is made.
    pub certificate: std::sync::Arc<crate::config::plan::CertificatePlan>,
    /// Event subscriptions (`events:`), enabled ones only.
    pub events: Vec<super::event_plan::EventPlan>,
    /// Structure tags (`members:`): which tags are fields of which monitored structure.
    pub structures: super::members::StructurePlan,
}

/// How the server watches one OPC UA tag.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MonitoringPlan {
    /// For one element of an array node (`elements:`): its index.
    pub index: Option<u32>,
    /// None: derived from the sampling and publishing intervals.
    pub queue_size: Option<u32>,
    /// None: the server's default (status or value changes, no deadband).
    pub trigger: Option<DataChangeTrigger>,
    pub deadband: Option<ServerDeadband>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserPlan {
    Anonymous,
    /// The password is read when connecting, so a rotated secret needs no reload.
    Username {
        username: String,
        password: SecretSource,
    },
    Certificate {
        cert: PathBuf,
        key: PathBuf,
    },
}

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModbusPlan {
    pub transport: ModbusTransport,
    pub timeout: Duration,
    /// Unused registers one read may span to join two tags.
    pub max_gap: u16,
    /// Connections polling this device side by side (1 for serial lines).
    pub connections: std::num::NonZeroU8,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModbusTransport {
    Tcp(String),
    RtuOverTcp(String),
    Serial {
        port: String,
        baud: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
    },
}

/// One enabled tag.
#[derive(Debug, Clone, PartialEq)]
pub struct TagPlan {
    pub sensor_id: Arc<str>,
    pub address: TagAddress,
    /// Modbus poll interval, or OPC UA sampling interval.
    pub interval: Duration,
    pub transform: Transform,
    /// Extra JSON members for every reading, pre-encoded with a leading comma, or empty.
    pub extra: Arc<str>,
    /// Where its `sensor_id` is written, for messages that point back at the file.
    pub pos: crate::config::Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TagAddress {
    /// An OPC UA node id in its canonical text form (`ns=2;s=…`).
    OpcUa {
        node: String,
    },
    Modbus(ModbusAddress),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModbusAddress {
    pub unit: u8,
    pub table: Table,
    /// 0-based address of the first register or bit.
    pub address: u16,
    pub data_type: DataType,
    pub order: WordOrder,
    /// For `bool` read from a register: which bit, 0 = least significant.
    pub bit: Option<u8>,
    /// For `string`: number of registers.
    pub length: u16,
}

impl ModbusAddress {
    /// Registers (or bits) this tag reads, starting at `address`.
    pub fn count(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else if self.data_type == DataType::String {
            self.length
        } else {
            self.data_type.registers()
        }
    }
}

/// What the mapping stage does to each value of a tag.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transform {
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub states: Option<BTreeMap<StateKey, Arc<str>>>,
    /// Suppress changes smaller than this; 0 suppresses only equal values.
    pub deadband: f64,
    pub heartbeat: Option<Duration>,
    pub decimals: Option<u8>,
}
