//! The Modbus half of compiling a tag map: the device connection, tables, addresses and
//! Modicon references.

use super::*;

impl Compiler<'_> {
    pub(super) fn modbus_source(&mut self, pos: Pos, m: &ModbusSourceSpec) -> Option<ModbusPlan> {
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
    pub(super) fn modbus_connections(
        &mut self,
        m: &ModbusSourceSpec,
    ) -> Option<std::num::NonZeroU8> {
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

    pub(super) fn host_port(&mut self, addr: &Spanned<String>) -> Option<String> {
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

    /// A tag's Modbus address from `table`/`address` or `modicon`, with its type, word order,
    /// bit and length checked against the table. Long on purpose: every addressing rule of
    /// ARCHITECTURE.md's "Modbus addressing" in one function, each with its own message.
    pub(super) fn modbus_address(
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
    pub(super) fn modicon(&mut self, m: &Spanned<String>) -> Option<(Table, u16)> {
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
}
