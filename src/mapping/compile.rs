//! Tag map files → validated plans. Every check reports at the value's position, and every
//! problem of every file is collected before giving up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::de::Spanned;
use crate::config::diagnostic::{did_you_mean, Pos, Problem, Report};
use crate::config::tagmap::*;
use crate::reading::write_json_str;

use super::plan::*;

/// Default Modbus poll interval and OPC UA sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default Modbus unit id.
pub const DEFAULT_UNIT: u8 = 1;
/// Default for joining two Modbus tags into one read across unused registers.
pub const DEFAULT_MAX_GAP: u16 = 8;
/// Members every reading has; extra fields may not reuse their names.
const RESERVED_FIELDS: [&str; 3] = ["sensor_id", "timestamp", "value"];
use crate::config::diagnostic::shown;

/// The longest sensor_id, in bytes of UTF-8: a name, not a payload (every reading carries it).
pub const MAX_SENSOR_ID_BYTES: usize = 256;

/// Keys that only make sense for one protocol.
const MODBUS_TAG_KEYS: [&str; 8] = [
    "table", "address", "modicon", "type", "order", "bit", "length", "unit",
];

/// Loads, parses and compiles tag map files; reports every problem in every file, including a
/// `sensor_id` used in two files.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<TagMapPlan>, Report> {
    let mut report = Report::default();
    let mut plans = Vec::new();
    let mut first_seen: HashMap<Arc<str>, (PathBuf, u32)> = HashMap::new();
    for path in paths {
        let parsed = match crate::config::read_file(path) {
            Ok(text) => crate::config::parse_str::<TagMapFile>(&text),
            Err(problem) => crate::config::de::Parsed {
                value: None,
                problems: vec![problem],
                dropped: Vec::new(),
            },
        };
        report.extend(path, parsed.problems);
        let Some(file) = parsed.value else { continue };
        let (plan, problems) = compile(&file, path, &parsed.dropped);
        report.extend(path, problems);
        for tag in &plan.tags {
            if let Some((other, line)) = first_seen.get(&tag.sensor_id) {
                if other != path {
                    report.push(
                        Problem::new(
                            tag.pos,
                            format!("sensor_id `{}` is used in two tag maps", tag.sensor_id),
                        )
                        .with_hint(format!(
                            "also at {}:{line}; sensor_ids must be unique across all tag maps",
                            other.display()
                        ))
                        .in_file(path),
                    );
                }
            } else {
                first_seen.insert(tag.sensor_id.clone(), (path.clone(), tag.pos.line));
            }
        }
        plans.push(plan);
    }
    report.sort();
    if report.is_empty() {
        Ok(plans)
    } else {
        Err(report)
    }
}

/// Compiles one parsed file. The plan holds every tag that passed its checks, so a caller that
/// tolerates problems (live reload of other files) still learns what is healthy. Tags that
/// contain a position in `broken` (problems found while parsing) are left out unchecked: their
/// bad values were dropped while parsing, and checking what remains would only report echoes.
pub fn compile(file: &TagMapFile, path: &Path, broken: &[Pos]) -> (TagMapPlan, Vec<Problem>) {
    let mut c = Compiler {
        problems: Vec::new(),
        base: path.parent().unwrap_or(Path::new(".")),
    };
    let source = c.source(&file.source);
    let is_modbus = matches!(file.source.value, SourceSpec::Modbus(_));
    let map_extra = c.fields(&file.fields);
    // The file's defaults are checked once, here; tags that would use bad ones are left out.
    let defaults_ok =
        c.deadband(file.defaults.deadband.as_ref()) & c.decimals(file.defaults.decimals.as_ref());

    let mut tags = Vec::new();
    let mut disabled = 0;
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut addresses: HashMap<String, (u32, &str)> = HashMap::new();
    let mut monitoring = Vec::new();
    for spanned in file.tags.iter() {
        if broken.iter().any(|p| spanned.contains(*p)) {
            continue;
        }
        let tag = &spanned.value;
        let line = spanned.pos.line;
        let id_fits = tag.sensor_id.len() <= MAX_SENSOR_ID_BYTES;
        if let Some(first) = ids.insert(&tag.sensor_id.value, line).filter(|_| id_fits) {
            c.problem(
                Problem::new(
                    tag.sensor_id.pos,
                    format!(
                        "sensor_id `{}` is used twice in this file",
                        tag.sensor_id.value
                    ),
                )
                .with_hint(format!("the first is at line {first}")),
            );
        }
        if !tag.enabled.or(file.defaults.enabled).unwrap_or(true) {
            disabled += 1;
            continue;
        }
        let address = match &file.source.value {
            SourceSpec::Modbus(m) => c
                .modbus_address(spanned, &file.defaults, m)
                .map(TagAddress::Modbus),
            SourceSpec::OpcUa(_) => c
                .opcua_address(spanned)
                .map(|node| TagAddress::OpcUa { node }),
        };
        let sensor_id = c.sensor_id(&tag.sensor_id);
        let transform = c.transform(tag, &file.defaults).filter(|_| defaults_ok);
        let mut extra = map_extra.clone();
        for (k, v) in c.fields(&tag.fields) {
            extra.insert(k, v);
        }
        let (Some(address), Some(sensor_id), Some(transform)) = (address, sensor_id, transform)
        else {
            continue;
        };
        let key = match &address {
            TagAddress::OpcUa { node } => node.clone(),
            TagAddress::Modbus(a) => format!(
                "unit {} {} {} bit {:?}",
                a.unit,
                a.table.name(),
                a.address,
                a.bit
            ),
        };
        if let Some((first, other)) = addresses.get(&key) {
            let what = if is_modbus { "address" } else { "node" };
            c.problem(
                Problem::new(
                    spanned.pos,
                    format!("this tag reads the same {what} as `{other}`"),
                )
                .with_hint(format!(
                    "line {first}; read it once and derive the other value downstream"
                )),
            );
            continue;
        }
        addresses.insert(key, (line, &tag.sensor_id.value));
        let interval = tag
            .interval
            .or(file.defaults.interval)
            .map(|s| s.as_duration())
            .unwrap_or(DEFAULT_INTERVAL);
        if !is_modbus {
            let Some(m) = c.monitoring(tag) else { continue };
            // An array node read per element: one tag `sensor_id[i]` per element.
            if let Some(n) = tag.elements.as_ref().map(|e| e.value) {
                let extra = encode_extra(&extra);
                for i in 0..n {
                    monitoring.push(MonitoringPlan {
                        index: Some(i),
                        ..m
                    });
                    tags.push(TagPlan {
                        sensor_id: format!("{sensor_id}[{i}]").into(),
                        address: address.clone(),
                        interval,
                        transform: transform.clone(),
                        extra: extra.clone(),
                        pos: tag.sensor_id.pos,
                    });
                }
                continue;
            }
            monitoring.push(m);
        }
        tags.push(TagPlan {
            sensor_id,
            address,
            interval,
            transform,
            extra: encode_extra(&extra),
            pos: tag.sensor_id.pos,
        });
    }
    let mut source = source;
    if let Some(SourcePlan::OpcUa(o)) = &mut source {
        o.monitoring = monitoring;
    }
    if file.tags.is_empty() && file.tags.failed == 0 {
        c.problem(
            Problem::new(file.source.pos, "this tag map has no tags")
                .with_hint("add at least one entry under `tags:`"),
        );
    }
    let source = source.unwrap_or(SourcePlan::Modbus(ModbusPlan {
        transport: ModbusTransport::Tcp(String::new()),
        timeout: DEFAULT_INTERVAL,
        max_gap: DEFAULT_MAX_GAP,
        connections: std::num::NonZeroU8::MIN,
    }));
    (
        TagMapPlan {
            path: path.to_path_buf(),
            source,
            tags,
            disabled,
        },
        c.problems,
    )
}

fn encode_extra(fields: &BTreeMap<String, serde_json::Value>) -> Arc<str> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.push(b',');
        write_json_str(&mut out, k);
        out.push(b':');
        // Writing a `serde_json::Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, v);
    }
    String::from_utf8(out).unwrap_or_default().into()
}

struct Compiler<'a> {
    problems: Vec<Problem>,
    base: &'a Path,
}

impl Compiler<'_> {
    fn problem(&mut self, p: Problem) {
        self.problems.push(p);
    }

    fn err<T>(
        &mut self,
        pos: Pos,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Option<T> {
        self.problems
            .push(Problem::new(pos, message).with_hint(hint));
        None
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn source(&mut self, spec: &Spanned<SourceSpec>) -> Option<SourcePlan> {
        match &spec.value {
            SourceSpec::OpcUa(o) => self.opcua_source(o).map(SourcePlan::OpcUa),
            SourceSpec::Modbus(m) => self.modbus_source(spec.pos, m).map(SourcePlan::Modbus),
        }
    }

    fn opcua_source(&mut self, o: &OpcUaSourceSpec) -> Option<OpcUaPlan> {
        if !o.endpoint.starts_with("opc.tcp://") {
            return self.err(
                o.endpoint.pos,
                format!("{} is not an OPC UA endpoint", shown(&o.endpoint.value)),
                "write it as opc.tcp://host:port, e.g. opc.tcp://10.0.0.5:4840",
            );
        }
        // Secure by default: no security must be asked for by name.
        let policy = o.security_policy.unwrap_or(SecurityPolicy::Basic256Sha256);
        let mode = o
            .security_mode
            .unwrap_or(if policy == SecurityPolicy::None {
                SecurityMode::None
            } else {
                SecurityMode::SignAndEncrypt
            });
        if (policy == SecurityPolicy::None) != (mode == SecurityMode::None) {
            return self.err(
                o.endpoint.pos,
                format!("security_policy {policy:?} does not go with security_mode {mode:?}"),
                "use policy none with mode none, or a real policy with sign or sign_and_encrypt",
            );
        }
        let user = match &o.user {
            None | Some(OpcUaUser::Anonymous) => UserPlan::Anonymous,
            Some(OpcUaUser::Username {
                username,
                password_env,
                password_file,
            }) => {
                let password = match (password_env, password_file) {
                    (Some(env), None) => SecretSource::Env(env.clone()),
                    (None, Some(file)) => SecretSource::File(self.path(file)),
                    _ => return self.err(
                        o.endpoint.pos,
                        "user `username` needs exactly one of `password_env` or `password_file`",
                        "passwords are never written in tag maps",
                    ),
                };
                UserPlan::Username {
                    username: username.clone(),
                    password,
                }
            }
            Some(OpcUaUser::Certificate { cert, key }) => UserPlan::Certificate {
                cert: self.path(cert),
                key: self.path(key),
            },
        };
        Some(OpcUaPlan {
            endpoint: o.endpoint.value.clone(),
            security_policy: policy,
            security_mode: mode,
            user,
            publishing_interval: o
                .publishing_interval
                .map(|s| s.as_duration())
                .unwrap_or(DEFAULT_INTERVAL),
            pki_dir: o.pki_dir.as_deref().map(|p| self.path(p)),
            trust_on_first_use: o.trust_on_first_use,
            timestamps: o.timestamps.unwrap_or_default(),
            uncertain: o.uncertain.unwrap_or_default(),
            max_items_per_subscription: o.max_items_per_subscription.unwrap_or(0),
            monitoring: Vec::new(),
        })
    }

    /// OPC UA monitoring settings of one tag.
    fn monitoring(&mut self, tag: &TagSpec) -> Option<MonitoringPlan> {
        if let Some(q) = &tag.queue_size {
            if q.value == 0 {
                return self.err(
                    q.pos,
                    "queue_size must be at least 1",
                    "leave it out for a queue sized to the publishing interval",
                );
            }
        }
        if let Some(d) = &tag.server_deadband {
            let bad = match d.value {
                ServerDeadband::Absolute(v) => !(v.is_finite() && v >= 0.0),
                ServerDeadband::Percent(v) => !(0.0..=100.0).contains(&v),
            };
            if bad {
                return self.err(
                    d.pos,
                    "server_deadband is out of range",
                    "absolute must be 0 or more, percent between 0 and 100",
                );
            }
        }
        if let Some(e) = &tag.elements {
            if !(1..=100_000).contains(&e.value) {
                return self.err(
                    e.pos,
                    "elements must be between 1 and 100000",
                    "the number of array elements to read, each as `sensor_id[i]`",
                );
            }
        }
        Some(MonitoringPlan {
            index: None,
            queue_size: tag.queue_size.as_ref().map(|q| q.value),
            trigger: tag.trigger,
            deadband: tag.server_deadband.as_ref().map(|d| d.value),
        })
    }

    fn modbus_source(&mut self, pos: Pos, m: &ModbusSourceSpec) -> Option<ModbusPlan> {
        let transport = match (&m.tcp, &m.rtu_over_tcp, &m.serial) {
            (Some(addr), None, None) => ModbusTransport::Tcp(self.host_port(addr)?),
            (None, Some(addr), None) => ModbusTransport::RtuOverTcp(self.host_port(addr)?),
            (None, None, Some(s)) => {
                let data_bits = s.data_bits.unwrap_or(8);
                let stop_bits = s.stop_bits.unwrap_or(1);
                if !(5..=8).contains(&data_bits) || !(1..=2).contains(&stop_bits) {
                    return self.err(
                        s.pos,
                        format!(
                            "{data_bits} data bits / {stop_bits} stop bits is not a serial setting"
                        ),
                        "data_bits is 5 to 8, stop_bits 1 or 2",
                    );
                }
                ModbusTransport::Serial {
                    port: s.port.clone(),
                    baud: s.baud.unwrap_or(9600),
                    parity: s.parity.unwrap_or(Parity::Even),
                    data_bits,
                    stop_bits,
                }
            }
            _ => {
                return self.err(
                    pos,
                    "a Modbus source needs exactly one of `tcp`, `rtu_over_tcp` or `serial`",
                    "e.g. `tcp: 10.0.0.7:502`",
                )
            }
        };
        Some(ModbusPlan {
            transport,
            timeout: m
                .timeout
                .map(|s| s.as_duration())
                .unwrap_or(DEFAULT_INTERVAL),
            max_gap: m.max_gap.unwrap_or(DEFAULT_MAX_GAP),
            connections: self.modbus_connections(m)?,
        })
    }

    /// Modbus `connections`: 1 to 16, and 1 on a serial line.
    fn modbus_connections(&mut self, m: &ModbusSourceSpec) -> Option<std::num::NonZeroU8> {
        let Some(n) = &m.connections else {
            return Some(std::num::NonZeroU8::MIN);
        };
        if m.serial.is_some() && n.value != 1 {
            return self.err(
                n.pos,
                format!("`connections: {}` on a serial line", n.value),
                "a serial bus carries one request at a time; remove it",
            );
        }
        match std::num::NonZeroU8::new(n.value) {
            Some(c) if n.value <= 16 => Some(c),
            _ => self.err(
                n.pos,
                format!("`connections: {}` is out of range", n.value),
                "1 to 16; most devices accept only a few clients",
            ),
        }
    }

    fn host_port(&mut self, addr: &Spanned<String>) -> Option<String> {
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Some(addr.value.clone())
            }
            _ => self.err(
                addr.pos,
                format!("{} is not host:port", shown(&addr.value)),
                "e.g. 10.0.0.7:502; Modbus TCP's usual port is 502",
            ),
        }
    }

    fn sensor_id(&mut self, id: &Spanned<String>) -> Option<Arc<str>> {
        if id.len() > MAX_SENSOR_ID_BYTES {
            return self.err(
                id.pos,
                format!(
                    "sensor_id is {} bytes long; at most {MAX_SENSOR_ID_BYTES} are allowed",
                    id.len()
                ),
                "a sensor_id names a tag; keep it short, e.g. `compressor-7:vibe_x`",
            );
        }
        if id.trim().is_empty() {
            return self.err(
                id.pos,
                "sensor_id is empty",
                "give every tag a name such as `compressor-7:vibe_x`",
            );
        }
        if id.trim() != id.as_str() || id.chars().any(char::is_control) {
            return self.err(
                id.pos,
                format!(
                    "sensor_id {:?} has leading/trailing spaces or control characters",
                    id.value
                ),
                "downstream queries match sensor_ids exactly; remove them",
            );
        }
        Some(id.value.as_str().into())
    }

    fn opcua_address(&mut self, tag: &Spanned<TagSpec>) -> Option<String> {
        self.foreign_keys(tag, false);
        let Some(node) = &tag.node else {
            return self.err(
                tag.pos,
                "missing required key `node`",
                "OPC UA tags name their node, e.g. `node: ns=2;s=Line1/Compressor7/VibeX`",
            );
        };
        match opcua::types::NodeId::from_str(node.trim()) {
            Ok(id) => Some(id.to_string()),
            Err(_) => self.err(
                node.pos,
                format!("{} is not an OPC UA node id", shown(&node.value)),
                "write ns=<index>;s=<name>, ns=<index>;i=<number>, ns=<index>;g=<guid> or ns=<index>;b=<base64>",
            ),
        }
    }

    /// Reports keys of the other protocol on a tag.
    fn foreign_keys(&mut self, tag: &Spanned<TagSpec>, modbus: bool) {
        let t = &tag.value;
        if modbus {
            if let Some(node) = &t.node {
                self.problem(
                    Problem::new(
                        node.pos,
                        "`node` is an OPC UA key, and this tag map reads a Modbus device",
                    )
                    .with_hint("address Modbus tags with `table` + `address`, or `modicon`"),
                );
            }
            return;
        }
        // Point at the key's value where it is spanned, otherwise at the tag.
        let present = [
            t.table.as_ref().map(|v| v.pos),
            t.address.as_ref().map(|v| v.pos),
            t.modicon.as_ref().map(|v| v.pos),
            t.data_type.as_ref().map(|v| v.pos),
            t.order.map(|_| tag.pos),
            t.bit.as_ref().map(|v| v.pos),
            t.length.as_ref().map(|v| v.pos),
            t.unit.map(|_| tag.pos),
        ];
        for (key, pos) in MODBUS_TAG_KEYS
            .iter()
            .zip(present)
            .filter_map(|(k, p)| Some((k, p?)))
        {
            self.problem(
                Problem::new(
                    pos,
                    format!("`{key}` is a Modbus key, and this tag map reads an OPC UA server"),
                )
                .with_hint("OPC UA tags are addressed with `node`"),
            );
        }
    }

    fn modbus_address(
        &mut self,
        tag: &Spanned<TagSpec>,
        defaults: &TagDefaults,
        source: &ModbusSourceSpec,
    ) -> Option<ModbusAddress> {
        self.foreign_keys(tag, true);
        let t = &tag.value;
        let (table, address, at) = match (&t.modicon, &t.table, &t.address) {
            (Some(m), None, None) => {
                let (table, address) = self.modicon(m)?;
                (table, address, m.pos)
            }
            (None, Some(table), Some(address)) => (table.value, address.value, address.pos),
            (Some(m), _, _) => return self.err(m.pos, "use either `modicon` or `table` + `address`, not both", "`modicon: 40001` is the same register as `table: holding_register, address: 0`"),
            (None, None, Some(a)) => return self.err(a.pos, format!("`address: {}` needs a `table`", a.value), "`address` is the 0-based offset sent on the wire; to use the 1-based 40001 notation of PLC manuals, write `modicon: 40001` instead"),
            (None, Some(t), None) => return self.err(t.pos, "`table` needs an `address`", "the 0-based offset within the table, e.g. `address: 0`"),
            (None, None, None) => return self.err(tag.pos, "missing the Modbus address", "write `table: holding_register` and `address: 0`, or `modicon: 40001`"),
        };
        let default_type = if table.is_bits() || t.bit.is_some() {
            DataType::Bool
        } else {
            DataType::Uint16
        };
        let data_type = t
            .data_type
            .as_ref()
            .map(|d| d.value)
            .or(defaults.data_type)
            .unwrap_or(default_type);
        let type_pos = t.data_type.as_ref().map_or(at, |d| d.pos);
        if table.is_bits() && data_type != DataType::Bool {
            return self.err(
                type_pos,
                format!(
                    "a {} holds one bit; it cannot be read as {}",
                    table.name(),
                    data_type.name()
                ),
                "use `type: bool`, or a register table",
            );
        }
        if let Some(bit) = &t.bit {
            if table.is_bits() || data_type != DataType::Bool || bit.value > 15 {
                return self.err(
                    bit.pos,
                    format!(
                        "`bit: {}` needs a register table, type bool and a bit from 0 to 15",
                        bit.value
                    ),
                    "bit 0 is the least significant bit of the register",
                );
            }
        } else if !table.is_bits() && data_type == DataType::Bool {
            return self.err(
                type_pos,
                "a bool from a register needs `bit`",
                "e.g. `bit: 0` for the least significant bit",
            );
        }
        let length = match (data_type, &t.length) {
            (DataType::String, Some(l)) if l.value > 0 && l.value <= 125 => l.value,
            (DataType::String, Some(l)) => {
                return self.err(
                    l.pos,
                    format!("`length: {}` is out of range", l.value),
                    "a string spans 1 to 125 registers (two characters each)",
                )
            }
            (DataType::String, None) => {
                return self.err(
                    type_pos,
                    "a `string` needs `length`, its number of registers",
                    "two characters per register, e.g. `length: 10` for up to 20 characters",
                )
            }
            (_, Some(l)) => {
                return self.err(
                    l.pos,
                    "`length` only applies to `type: string`",
                    "remove it",
                )
            }
            (_, None) => 1,
        };
        let plan = ModbusAddress {
            unit: t
                .unit
                .or(defaults.unit)
                .or(source.unit)
                .unwrap_or(DEFAULT_UNIT),
            table,
            address,
            data_type,
            order: t.order.or(defaults.order).unwrap_or_default(),
            bit: t.bit.as_ref().map(|b| b.value),
            length,
        };
        if u32::from(address) + u32::from(plan.count()) - 1 > u32::from(u16::MAX) {
            return self.err(
                at,
                format!(
                    "{} at address {address} runs past the last address 65535",
                    data_type.name()
                ),
                "check the address and type",
            );
        }
        Some(plan)
    }

    /// `40001` → holding register 0. Five digits address 1..=9999, six digits 1..=65536.
    fn modicon(&mut self, m: &Spanned<String>) -> Option<(Table, u16)> {
        let text = m.trim();
        let hint = "write 5 or 6 digits whose first names the table: 0 coil, 1 discrete input, 3 input register, 4 holding register, e.g. 40001; for a 0-based offset use `table` + `address`";
        if !(5..=6).contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_digit()) {
            return self.err(m.pos, format!("`{text}` is not a Modicon reference"), hint);
        }
        let table = match text.as_bytes()[0] {
            b'0' => Table::Coil,
            b'1' => Table::DiscreteInput,
            b'3' => Table::InputRegister,
            b'4' => Table::HoldingRegister,
            _ => {
                return self.err(
                    m.pos,
                    format!("`{text}` does not start with a table digit"),
                    hint,
                )
            }
        };
        let number: u32 = text[1..].parse().unwrap_or(0);
        let max = if text.len() == 5 { 9999 } else { 65536 };
        if number == 0 || number > max {
            return self.err(
                m.pos,
                format!("`{text}` is out of range"),
                format!(
                    "references count from 1 (e.g. 40001 is the first holding register) to {max}"
                ),
            );
        }
        // 1..=65536 minus one fits in u16.
        Some((table, (number - 1) as u16))
    }

    fn transform(&mut self, t: &TagSpec, d: &TagDefaults) -> Option<Transform> {
        let mut ok = true;
        if let Some(scale) = &t.scale {
            if scale.value == 0.0 || !scale.is_finite() {
                let why = if scale.value == 0.0 {
                    "would erase every value"
                } else {
                    "is not a finite number"
                };
                self.problem(
                    Problem::new(scale.pos, format!("scale {} {why}", scale.value))
                        .with_hint("use a finite, non-zero factor"),
                );
                ok = false;
            }
        }
        if let Some(offset) = &t.offset {
            if !offset.is_finite() {
                self.problem(
                    Problem::new(
                        offset.pos,
                        format!("offset {} would make every value infinite", offset.value),
                    )
                    .with_hint("use a finite number"),
                );
                ok = false;
            }
        }
        // Checked here for the tag's own value; the file's defaults are checked once, by
        // `defaults`.
        ok &= self.deadband(t.deadband.as_ref());
        ok &= self.decimals(t.decimals.as_ref());
        let mut states = None;
        if let Some(map) = &t.states {
            if map.is_empty() || map.values().any(|s| s.trim().is_empty()) {
                self.problem(
                    Problem::new(
                        t.sensor_id.pos,
                        "`states` needs at least one entry and no empty names",
                    )
                    .with_hint("e.g. `states: {0: Stopped, 1: Running}`"),
                );
                ok = false;
            }
            states = Some(
                map.iter()
                    .map(|(k, v)| (*k, Arc::from(v.as_str())))
                    .collect(),
            );
        }
        ok.then(|| Transform {
            scale: t.scale.as_ref().map(|s| s.value),
            offset: t.offset.as_ref().map(|o| o.value),
            states,
            deadband: t
                .deadband
                .as_ref()
                .or(d.deadband.as_ref())
                .map_or(0.0, |s| s.value),
            heartbeat: t.heartbeat.or(d.heartbeat).map(|s| s.as_duration()),
            decimals: t.decimals.as_ref().or(d.decimals.as_ref()).map(|s| s.value),
        })
    }

    /// A deadband must be a finite number, zero or more.
    fn deadband(&mut self, deadband: Option<&Spanned<f64>>) -> bool {
        match deadband {
            Some(d) if !(d.value >= 0.0 && d.value.is_finite()) => {
                self.problem(
                    Problem::new(d.pos, format!("deadband {} must be zero or more", d.value))
                        .with_hint("it is the smallest change that is sent"),
                );
                false
            }
            _ => true,
        }
    }

    /// Decimals: 0 to 12, what a float holds.
    fn decimals(&mut self, decimals: Option<&Spanned<u8>>) -> bool {
        match decimals {
            Some(d) if d.value > 12 => {
                self.problem(
                    Problem::new(
                        d.pos,
                        format!("decimals {} is more than a float holds", d.value),
                    )
                    .with_hint("use 0 to 12"),
                );
                false
            }
            _ => true,
        }
    }

    fn fields(
        &mut self,
        fields: &BTreeMap<Spanned<String>, serde_json::Value>,
    ) -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        for (name, value) in fields {
            if RESERVED_FIELDS.contains(&name.as_str()) {
                self.problem(
                    Problem::new(
                        name.pos,
                        format!(
                            "field `{}` would replace a reading's own member",
                            name.value
                        ),
                    )
                    .with_hint(
                        "sensor_id, timestamp and value are set by the gateway; pick another name",
                    ),
                );
                continue;
            }
            if let Some(s) = did_you_mean(name, RESERVED_FIELDS) {
                if s != name.as_str() && name.eq_ignore_ascii_case(s) {
                    self.problem(
                        Problem::new(
                            name.pos,
                            format!("field `{}` is too close to the reading's `{s}`", name.value),
                        )
                        .with_hint("consumers would confuse them; pick another name"),
                    );
                    continue;
                }
            }
            out.insert(name.value.clone(), value.clone());
        }
        out
    }
}
