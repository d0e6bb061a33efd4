//! Generated configurations: exactly what tag maps read (`--from`), or N synthetic tags for load
//! tests (`--opcua-tags N`, `--modbus-tags N`).
//!
//! Signals are chosen to look plausible and to change at the tag's own interval, so every poll
//! or sample sees a new value: floats follow sines with varied periods, integers count, booleans
//! toggle, tags with `states` cycle through their raw keys, strings are constant.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::config::{ModbusConfig, ModbusPoint, OpcUaConfig, OpcUaType, OpcUaUser, OpcUaVariable};
use super::PlcConfig;
use crate::config::duration::HumanDuration;
use crate::config::tagmap::{DataType, StateKey, Table, WordOrder};
use crate::mapping::plan::{ModbusTransport, SecretSource, TagAddress, UserPlan};
use crate::mapping::{SourcePlan, TagMapPlan, TagPlan};
use crate::sim::signal::{Signal, SignalValue};

/// The simulator's namespace index: 0 is OPC UA's, 1 the server's own.
pub const NAMESPACE_INDEX: u16 = 2;

impl PlcConfig {
    /// A simulator serving exactly what `plans` read, with plausible signals.
    ///
    /// Modbus: one server for all Modbus tag maps, listening on the first one's `tcp` address
    /// (`127.0.0.1:0` if it has none); units keep tag maps apart. OPC UA: one server on the
    /// first OPC UA tag map's endpoint host and port, accepting that tag map's user. Nodes
    /// outside namespace 2 are skipped with a warning. Tests override `listen` / `port` to get
    /// ephemeral ports.
    pub fn from_tag_maps(plans: &[TagMapPlan]) -> PlcConfig {
        let mut config = PlcConfig::default();
        let mut seen_modbus = HashSet::new();
        let mut seen_nodes = HashSet::new();
        let mut n = 0usize;
        for plan in plans {
            match &plan.source {
                SourcePlan::Modbus(m) => {
                    let modbus = config.modbus.get_or_insert_with(|| ModbusConfig {
                        listen: Some(match &m.transport {
                            ModbusTransport::Tcp(addr) => addr.clone(),
                            _ => "127.0.0.1:0".into(),
                        }),
                        ..Default::default()
                    });
                    if let ModbusTransport::RtuOverTcp(addr) = &m.transport {
                        modbus
                            .rtu_over_tcp_listen
                            .get_or_insert_with(|| addr.clone());
                    }
                    for tag in &plan.tags {
                        let TagAddress::Modbus(a) = &tag.address else {
                            continue;
                        };
                        if !seen_modbus.insert((a.unit, a.table, a.address, a.bit)) {
                            continue;
                        }
                        n += 1;
                        modbus.points.push(ModbusPoint {
                            unit: a.unit,
                            table: a.table,
                            address: a.address,
                            data_type: Some(a.data_type),
                            order: a.order,
                            bit: a.bit,
                            length: (a.data_type == DataType::String).then_some(a.length),
                            signal: plausible_modbus(tag, a.data_type, n),
                        });
                    }
                }
                SourcePlan::OpcUa(o) => {
                    let opcua = config.opcua.get_or_insert_with(|| {
                        let (host, port) = host_port(&o.endpoint);
                        OpcUaConfig {
                            host,
                            port,
                            ..Default::default()
                        }
                    });
                    if let UserPlan::Username { username, password } = &o.user {
                        match read_secret(password) {
                            Some(password) => opcua.users.push(OpcUaUser {
                                username: username.clone(),
                                password,
                            }),
                            None => tracing::warn!(
                                message = "Cannot read the tag map's OPC UA password; the simulator will not accept that user.",
                                username = %username
                            ),
                        }
                    }
                    for tag in &plan.tags {
                        let TagAddress::OpcUa { node } = &tag.address else {
                            continue;
                        };
                        if !seen_nodes.insert(node.clone()) {
                            continue;
                        }
                        let Some(rest) = node.strip_prefix(&format!("ns={NAMESPACE_INDEX};"))
                        else {
                            tracing::warn!(message = "Skipping a node outside the simulator's namespace 2.", %node);
                            continue;
                        };
                        n += 1;
                        let (path, node_id) = match rest.strip_prefix("s=") {
                            Some(path) => (path.to_string(), None),
                            None => (
                                format!("Other/{}", rest.replace('=', "_")),
                                Some(node.clone()),
                            ),
                        };
                        let (data_type, enum_strings, signal) = plausible_opcua(tag, n);
                        opcua.variables.push(OpcUaVariable {
                            path,
                            node_id,
                            data_type,
                            enum_strings,
                            signal,
                        });
                    }
                }
            }
        }
        config
    }
}

/// `opc.tcp://host:port/path` → (host, port); port 4840 when absent.
fn host_port(endpoint: &str) -> (String, u16) {
    let rest = endpoint.strip_prefix("opc.tcp://").unwrap_or(endpoint);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().unwrap_or(4840)),
        None => (authority.to_string(), 4840),
    }
}

fn read_secret(source: &SecretSource) -> Option<String> {
    match source {
        SecretSource::Env(var) => std::env::var(var).ok(),
        SecretSource::File(path) => std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string()),
    }
}

/// The raw integer keys of a tag's states, when there are any.
fn state_keys(tag: &TagPlan) -> Option<Vec<i64>> {
    let states = tag.transform.states.as_ref()?;
    let keys: Vec<i64> = states
        .keys()
        .map(|k| match k {
            StateKey::Int(i) => *i,
            StateKey::Bool(b) => i64::from(*b),
        })
        .collect();
    (!keys.is_empty()).then_some(keys)
}

/// A counter that cycles through `keys` if they are 0..n, else a constant first key.
fn cycle(keys: &[i64], update: Duration) -> Signal {
    let contiguous = keys.iter().enumerate().all(|(i, k)| *k == i as i64);
    if contiguous {
        Signal::Counter {
            start: 0,
            step: 1,
            wrap: Some(keys.len() as u64),
            update: Some(HumanDuration(update)),
        }
    } else {
        Signal::Constant(SignalValue::Int(keys[0]))
    }
}

/// A float sine, varied by `n` so neighbouring tags differ. The period is an odd number of
/// updates, so two consecutive samples are never equal (an even period repeats the value on
/// either side of each peak, and OPC UA sends no notification for an unchanged value).
fn sine_for(n: usize, update: Duration) -> Signal {
    let offset = 10.0 * (1 + n % 10) as f64;
    let steps = 21 + 2 * (n % 20) as u32;
    Signal::Sine {
        offset,
        amplitude: offset / 2.0,
        period: HumanDuration(update * steps),
        update: Some(HumanDuration(update)),
    }
}

fn plausible_modbus(tag: &TagPlan, data_type: DataType, n: usize) -> Signal {
    let update = tag.interval;
    if let Some(keys) = state_keys(tag) {
        return cycle(&keys, update);
    }
    match data_type {
        DataType::Bool => Signal::Square {
            low: 0.0,
            high: 1.0,
            period: HumanDuration(update * 2),
            duty: None,
            update: Some(HumanDuration(update)),
        },
        DataType::Float32 | DataType::Float64 => sine_for(n, update),
        DataType::String => Signal::Constant(SignalValue::Text(format!("SIM{n}"))),
        dt => Signal::Counter {
            start: if matches!(dt, DataType::Int16 | DataType::Int32 | DataType::Int64) {
                -5
            } else {
                0
            },
            step: 1,
            wrap: (dt == DataType::Uint16 || dt == DataType::Int16).then_some(1000),
            update: Some(HumanDuration(update)),
        },
    }
}

fn plausible_opcua(tag: &TagPlan, n: usize) -> (OpcUaType, Option<Vec<String>>, Signal) {
    let update = tag.interval;
    if let Some(states) = &tag.transform.states {
        let bools = states.keys().all(|k| matches!(k, StateKey::Bool(_)));
        if bools {
            let signal = Signal::Square {
                low: 0.0,
                high: 1.0,
                period: HumanDuration(update * 2),
                duty: None,
                update: Some(HumanDuration(update)),
            };
            return (OpcUaType::Boolean, None, signal);
        }
        let keys = state_keys(tag).unwrap_or_default();
        let contiguous = keys.iter().enumerate().all(|(i, k)| *k == i as i64);
        let names: BTreeMap<i64, String> = states
            .iter()
            .filter_map(|(k, v)| match k {
                StateKey::Int(i) => Some((*i, v.to_string())),
                StateKey::Bool(_) => None,
            })
            .collect();
        let enum_strings = contiguous.then(|| names.values().cloned().collect());
        let ty = if contiguous {
            OpcUaType::Enum
        } else {
            OpcUaType::Int32
        };
        return (ty, enum_strings, cycle(&keys, update));
    }
    (OpcUaType::Double, None, sine_for(n, update))
}

/// `n` Double variables `Load/B0001/T000001`… (1 000 per folder), each a sine updated every
/// `update`, for load tests.
pub fn opcua_load(n: usize, update: Duration) -> Vec<OpcUaVariable> {
    (0..n)
        .map(|i| OpcUaVariable {
            path: load_path(i),
            node_id: None,
            data_type: OpcUaType::Double,
            enum_strings: None,
            signal: sine_for(i, update),
        })
        .collect()
}

/// The path of generated load variable `i` (0-based): node id `ns=2;s=<path>`.
pub fn load_path(i: usize) -> String {
    format!("Load/B{:04}/T{:06}", i / 1000 + 1, i + 1)
}

/// `n` Modbus registers for load tests: uint16 counters in holding registers 0.. of unit 1,
/// continuing in unit 2, 3, … every 65 536 registers; each counts at `update`, wrapping at
/// 60 000, starting at its own offset.
pub fn modbus_load(n: usize, update: Duration) -> Vec<ModbusPoint> {
    (0..n)
        .map(|i| ModbusPoint {
            unit: (i / 65_536 + 1).min(247) as u8,
            table: Table::HoldingRegister,
            address: (i % 65_536) as u16,
            data_type: Some(DataType::Uint16),
            order: WordOrder::ABCD,
            bit: None,
            length: None,
            signal: Signal::Counter {
                start: (i % 1000) as i64,
                step: 1,
                wrap: Some(60_000),
                update: Some(HumanDuration(update)),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_host_and_port() {
        assert_eq!(
            host_port("opc.tcp://127.0.0.1:4841/"),
            ("127.0.0.1".into(), 4841)
        );
        assert_eq!(host_port("opc.tcp://plc7"), ("plc7".into(), 4840));
    }

    #[test]
    fn serves_every_address_a_tag_map_reads() {
        let dir = std::env::temp_dir().join(format!("tb-sim-gen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let modbus = dir.join("m.yaml");
        std::fs::write(
            &modbus,
            "source: {modbus: {tcp: \"127.0.0.1:15020\"}}\ntags:\n\
             - {sensor_id: a, table: holding_register, address: 0, type: float32, order: CDAB}\n\
             - {sensor_id: b, table: coil, address: 3}\n\
             - {sensor_id: c, table: input_register, address: 7, bit: 2, type: bool}\n\
             - {sensor_id: d, table: holding_register, address: 10, type: uint16, states: {0: Stopped, 1: Running}}\n",
        )
        .unwrap();
        let opcua = dir.join("o.yaml");
        std::fs::write(
            &opcua,
            "source: {opcua: {endpoint: \"opc.tcp://127.0.0.1:14840/\", security_policy: none}}\ntags:\n\
             - {sensor_id: e, node: \"ns=2;s=Line1/Compressor7/VibeX\"}\n\
             - {sensor_id: f, node: \"ns=2;s=Line1/Compressor7/State\", states: {0: Stopped, 1: Running, 2: Fault}}\n",
        )
        .unwrap();
        let plans = crate::mapping::load_all(&[modbus, opcua]).expect("valid tag maps");
        let config = PlcConfig::from_tag_maps(&plans);
        let m = config.modbus.unwrap();
        assert_eq!(m.listen.as_deref(), Some("127.0.0.1:15020"));
        assert_eq!(m.points.len(), 4);
        assert_eq!(m.points[0].order, WordOrder::CDAB);
        assert_eq!(m.points[2].bit, Some(2));
        let o = config.opcua.unwrap();
        assert_eq!(o.port, 14840);
        assert_eq!(o.variables[0].path, "Line1/Compressor7/VibeX");
        assert_eq!(o.variables[1].data_type, OpcUaType::Enum);
        assert_eq!(
            o.variables[1].enum_strings.as_deref(),
            Some(&["Stopped".to_string(), "Running".into(), "Fault".into()][..])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
