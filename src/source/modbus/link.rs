//! One Modbus connection: opening it (TCP, RTU over TCP, RTU over a serial line) and one read at
//! a time on it, with a timeout.
//!
//! Two layers of failure stay apart: [`LinkError`] means the link failed (closed, timed out,
//! garbled); the caller drops the connection and reconnects. A Modbus exception is the device
//! saying no to one read, returned as `Ok(Err(code))`; the link stays up.
//!
//! After a timeout the stream may still deliver the late answer, which would be taken for the
//! answer to the next request; so a timeout is a [`LinkError`] too, and the caller reconnects.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use crate::config::tagmap::{Parity, Table};
use crate::mapping::plan::ModbusTransport;

/// The link failed; reconnect.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("cannot open serial port {port}: {source}")]
    Serial {
        port: String,
        source: tokio_serial::Error,
    },
    #[error("no connection to {target} within {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid response: {0}")]
    Protocol(String),
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Items {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

/// An open connection. One request at a time: [`Link::read`] takes `&mut self`.
pub struct Link {
    ctx: Context,
    /// Modbus over serial line V1.02, 2.5.1.1: at least 3.5 character times of silence before
    /// a frame. Zero on TCP.
    turnaround: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("turnaround", &self.turnaround)
            .finish_non_exhaustive()
    }
}

/// Where a transport points, for logs.
pub fn describe(transport: &ModbusTransport) -> String {
    match transport {
        ModbusTransport::Tcp(a) => format!("tcp://{a}"),
        ModbusTransport::RtuOverTcp(a) => format!("rtu+tcp://{a}"),
        ModbusTransport::Serial { port, baud, .. } => format!("rtu://{port}@{baud}"),
    }
}

/// Opens the connection, giving up after `timeout`.
pub async fn connect(transport: &ModbusTransport, timeout: Duration) -> Result<Link, LinkError> {
    match transport {
        ModbusTransport::Tcp(addr) | ModbusTransport::RtuOverTcp(addr) => {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr.as_str()))
                .await
                .map_err(|_| LinkError::ConnectTimeout {
                    target: addr.clone(),
                    timeout,
                })?
                .map_err(|source| LinkError::Connect {
                    target: addr.clone(),
                    source,
                })?;
            // Requests are small and answered one at a time: never wait for Nagle.
            let _ = stream.set_nodelay(true);
            let ctx = if matches!(transport, ModbusTransport::Tcp(_)) {
                tokio_modbus::client::tcp::attach_slave(stream, Slave(1))
            } else {
                tokio_modbus::client::rtu::attach_slave(stream, Slave(1))
            };
            Ok(Link {
                ctx,
                turnaround: Duration::ZERO,
            })
        }
        ModbusTransport::Serial {
            port,
            baud,
            parity,
            data_bits,
            stop_bits,
        } => {
            let builder = tokio_serial::new(port, *baud)
                .parity(match parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(match data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                })
                .stop_bits(if *stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                });
            let stream =
                tokio_serial::SerialStream::open(&builder).map_err(|source| LinkError::Serial {
                    port: port.clone(),
                    source,
                })?;
            Ok(Link {
                ctx: tokio_modbus::client::rtu::attach_slave(stream, Slave(1)),
                turnaround: turnaround(*baud),
            })
        }
    }
}

/// Modbus over serial line V1.02, 2.5.1.1: 3.5 character times (11 bits each) between frames,
/// fixed at 1.75 ms above 19 200 baud.
fn turnaround(baud: u32) -> Duration {
    if baud > 19_200 || baud == 0 {
        Duration::from_micros(1750)
    } else {
        // 3.5 characters × 11 bits = 38.5 bit times.
        Duration::from_micros(38_500_000 / u64::from(baud))
    }
}

impl Link {
    /// Reads `count` items of `table` at `address` from `unit`. `Ok(Err(code))` is a Modbus
    /// exception; `Err` means the link must be dropped.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        address: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Result<Items, ExceptionCode>, LinkError> {
        if !self.turnaround.is_zero() {
            tokio::time::sleep(self.turnaround).await;
        }
        self.ctx.set_slave(Slave(unit));
        let request = match table {
            Table::Coil => Request::ReadCoils(address, count),
            Table::DiscreteInput => Request::ReadDiscreteInputs(address, count),
            Table::InputRegister => Request::ReadInputRegisters(address, count),
            Table::HoldingRegister => Request::ReadHoldingRegisters(address, count),
        };
        let response = tokio::time::timeout(timeout, self.ctx.call(request))
            .await
            .map_err(|_| LinkError::Timeout(timeout))?
            .map_err(|e| match e {
                tokio_modbus::Error::Transport(io) => LinkError::Io(io),
                tokio_modbus::Error::Protocol(p) => LinkError::Protocol(p.to_string()),
            })?;
        let response = match response {
            Ok(r) => r,
            Err(code) => return Ok(Err(code)),
        };
        let n = usize::from(count);
        let items = match (table, response) {
            // Bits come padded to whole bytes (6.1, 6.2: the byte count is N/8 rounded up): more
            // bytes than that is a malformed answer, not a longer read.
            (Table::Coil, Response::ReadCoils(mut bits))
            | (Table::DiscreteInput, Response::ReadDiscreteInputs(mut bits))
                if bits.len() == n.div_ceil(8) * 8 =>
            {
                bits.truncate(n);
                Items::Bits(bits)
            }
            (Table::InputRegister, Response::ReadInputRegisters(words))
            | (Table::HoldingRegister, Response::ReadHoldingRegisters(words))
                if words.len() == n =>
            {
                Items::Words(words)
            }
            (_, other) => {
                return Err(LinkError::Protocol(format!(
                    "asked for {count} item(s) of {}, got {}",
                    table.name(),
                    describe_response(&other)
                )))
            }
        };
        Ok(Ok(items))
    }
}

/// A response in a log line: its function and how many items it carries, never its values.
fn describe_response(response: &Response) -> String {
    match response {
        Response::ReadCoils(bits) => format!("{} coil bit(s)", bits.len()),
        Response::ReadDiscreteInputs(bits) => format!("{} discrete input bit(s)", bits.len()),
        Response::ReadHoldingRegisters(words) => format!("{} holding register(s)", words.len()),
        Response::ReadInputRegisters(words) => format!("{} input register(s)", words.len()),
        other => format!("another function's answer ({other:?})"),
    }
}

/// A Modbus exception code as a log shows it: its number and, when the specification defines
/// it, its name (`0x02 illegal data address`; a device's own code: `0xFF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception(pub ExceptionCode);

impl std::fmt::Display for Exception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = u8::from(self.0);
        let Some(name) = crate::sample::modbus_exception_name(code) else {
            return write!(
                f,
                "exception 0x{code:02X} (not defined by the Modbus specification)"
            );
        };
        write!(f, "exception 0x{code:02X} {name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_show_their_number_and_name() {
        assert_eq!(
            Exception(ExceptionCode::IllegalDataAddress).to_string(),
            "exception 0x02 illegal data address"
        );
        assert_eq!(
            Exception(ExceptionCode::new(0xFF)).to_string(),
            "exception 0xFF (not defined by the Modbus specification)"
        );
    }

    #[test]
    fn serial_turnaround_follows_the_baud_rate() {
        // 9600 baud: 38.5 bits ≈ 4.01 ms.
        assert_eq!(turnaround(9600), Duration::from_micros(4010));
        assert_eq!(turnaround(115_200), Duration::from_micros(1750));
    }
}
