//! The simulated Modbus TCP server: a register model computed on demand from signals.
//!
//! Invariants:
//! - Nothing is stored: every read computes the value of each point it covers at the instant the
//!   request arrives ([`Signal::value_at`] of the time since the epoch) and encodes it with
//!   [`super::registers::encode`]. 50 000 registers cost memory for their map only.
//! - Each (unit, table) serves the span from its lowest configured address to the end of its
//!   highest point; unconfigured addresses inside the span read as 0 (as in a PLC's memory area,
//!   so reads that join neighbouring tags across gaps work). A read reaching outside the span
//!   answers IllegalDataAddress (0x02); a read of a table the unit does not have, too.
//! - A unit id that is not configured answers GatewayTargetDevice (0x0B).
//! - Reads larger than the spec allows answer IllegalDataValue (0x03). Writes answer
//!   IllegalFunction (0x01): the simulator is read-only.
//! - Faults ([`super::Faults`]) are checked on every request.

use std::collections::HashMap;
use std::future::{ready, Future, Ready};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::config::ModbusPoint;
use super::registers::encode;
use super::{Faults, SimError};
use crate::config::tagmap::{DataType, Table};

/// Modbus Application Protocol V1.1b3, 6.1/6.2: 1..=2000 coils or inputs per read.
const MAX_BITS: u16 = 2000;
/// Modbus Application Protocol V1.1b3, 6.3/6.4: 1..=125 registers per read.
const MAX_REGISTERS: u16 = 125;

/// What one address of a table holds.
#[derive(Debug, Clone)]
enum Cell {
    /// Register `offset` of a multi-register point.
    Word { point: u32, offset: u16 },
    /// Packed booleans: (bit, point) pairs OR-ed into one register.
    Bits(Vec<(u8, u32)>),
    /// One coil or discrete input.
    Bit { point: u32 },
}

/// One table of one unit.
#[derive(Debug, Default)]
struct TableMap {
    cells: HashMap<u16, Cell>,
    /// First served address.
    lo: u16,
    /// One past the last served address.
    hi: u32,
}

/// The register model: which point each address shows.
#[derive(Debug)]
pub(crate) struct Model {
    points: Vec<ModbusPoint>,
    tables: HashMap<(u8, Table), TableMap>,
    units: Vec<u8>,
}

impl Model {
    /// Builds the model, refusing overlapping points and points past address 65535.
    pub(crate) fn new(points: Vec<ModbusPoint>) -> Result<Model, SimError> {
        let mut tables: HashMap<(u8, Table), TableMap> = HashMap::new();
        let mut units = Vec::new();
        for (i, p) in points.iter().enumerate() {
            let index = u32::try_from(i).map_err(|_| SimError::Config("too many points".into()))?;
            let dt = p.data_type();
            let count = p.count();
            if !units.contains(&p.unit) {
                units.push(p.unit);
            }
            let end = u32::from(p.address) + u32::from(count);
            if end > 0x1_0000 {
                return Err(SimError::Config(format!(
                    "unit {} {} {}: {count} registers do not fit below 65536",
                    p.unit,
                    p.table.name(),
                    p.address
                )));
            }
            if p.table.is_bits() && dt != DataType::Bool {
                return Err(SimError::Config(format!(
                    "unit {} {} {}: bit tables hold bool only, not {dt:?}",
                    p.unit,
                    p.table.name(),
                    p.address
                )));
            }
            let table = tables.entry((p.unit, p.table)).or_insert(TableMap {
                cells: HashMap::new(),
                lo: p.address,
                hi: end,
            });
            table.lo = table.lo.min(p.address);
            table.hi = table.hi.max(end);
            let overlap = || {
                SimError::Config(format!(
                    "unit {} {} {}: overlaps another point",
                    p.unit,
                    p.table.name(),
                    p.address
                ))
            };
            if p.table.is_bits() {
                if table
                    .cells
                    .insert(p.address, Cell::Bit { point: index })
                    .is_some()
                {
                    return Err(overlap());
                }
            } else if let (DataType::Bool, Some(bit)) = (dt, p.bit) {
                if bit > 15 {
                    return Err(SimError::Config(format!(
                        "unit {} {} {}: bit {bit} is not in 0..=15",
                        p.unit,
                        p.table.name(),
                        p.address
                    )));
                }
                match table
                    .cells
                    .entry(p.address)
                    .or_insert_with(|| Cell::Bits(Vec::new()))
                {
                    Cell::Bits(bits) if !bits.iter().any(|(b, _)| *b == bit) => {
                        bits.push((bit, index))
                    }
                    _ => return Err(overlap()),
                }
            } else {
                for offset in 0..count {
                    if table
                        .cells
                        .insert(
                            p.address + offset,
                            Cell::Word {
                                point: index,
                                offset,
                            },
                        )
                        .is_some()
                    {
                        return Err(overlap());
                    }
                }
            }
        }
        Ok(Model {
            points,
            tables,
            units,
        })
    }

    /// Reads `count` registers or bits at instant `t` (since the epoch).
    fn read(
        &self,
        unit: u8,
        table: Table,
        address: u16,
        count: u16,
        t: std::time::Duration,
    ) -> Result<Vec<u16>, ExceptionCode> {
        let max = if table.is_bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        };
        if count == 0 || count > max {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if !self.units.contains(&unit) {
            return Err(ExceptionCode::GatewayTargetDevice);
        }
        let map = self
            .tables
            .get(&(unit, table))
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        let end = u32::from(address) + u32::from(count);
        if address < map.lo || end > map.hi {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let mut out = Vec::with_capacity(usize::from(count));
        // The last point encoded, so a 4-register value is computed once per read.
        let mut last: Option<(u32, Vec<u16>)> = None;
        for a in address..=(end - 1) as u16 {
            let word = match map.cells.get(&a) {
                None => 0,
                Some(Cell::Bit { point }) => {
                    u16::from(self.points[*point as usize].signal.value_at(t).as_bool())
                }
                Some(Cell::Bits(bits)) => bits.iter().fold(0u16, |acc, (bit, point)| {
                    let on = self.points[*point as usize].signal.value_at(t).as_bool();
                    acc | (u16::from(on) << bit)
                }),
                Some(Cell::Word { point, offset }) => {
                    let words = match &last {
                        Some((p, words)) if p == point => words,
                        _ => {
                            let p = &self.points[*point as usize];
                            let words =
                                encode(&p.signal.value_at(t), p.data_type(), p.order, p.count());
                            &last.insert((*point, words)).1
                        }
                    };
                    words.get(usize::from(*offset)).copied().unwrap_or(0)
                }
            };
            out.push(word);
        }
        Ok(out)
    }
}

/// One connection's request handler.
pub(crate) struct PlcService {
    model: Arc<Model>,
    faults: Faults,
    /// The simulator's epoch (t = 0 of every signal).
    epoch: Instant,
}

impl tokio_modbus::server::Service for PlcService {
    type Request = SlaveRequest<'static>;
    /// `None` sends nothing: how a silent device behaves.
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        if self.faults.is_silent() {
            return ready(Ok(None));
        }
        let unit = req.slave;
        let t = self.epoch.elapsed();
        let (table, address, count) = match req.request {
            Request::ReadCoils(a, n) => (Table::Coil, a, n),
            Request::ReadDiscreteInputs(a, n) => (Table::DiscreteInput, a, n),
            Request::ReadInputRegisters(a, n) => (Table::InputRegister, a, n),
            Request::ReadHoldingRegisters(a, n) => (Table::HoldingRegister, a, n),
            _ => return ready(Err(ExceptionCode::IllegalFunction)),
        };
        if let Some(code) = self.faults.exception_for(unit, table, address, count) {
            return ready(Err(code));
        }
        let words = match self.model.read(unit, table, address, count, t) {
            Ok(words) => words,
            Err(code) => return ready(Err(code)),
        };
        let bits = || words.iter().map(|w| *w != 0).collect::<Vec<bool>>();
        ready(Ok(Some(match table {
            Table::Coil => Response::ReadCoils(bits()),
            Table::DiscreteInput => Response::ReadDiscreteInputs(bits()),
            Table::InputRegister => Response::ReadInputRegisters(words),
            Table::HoldingRegister => Response::ReadHoldingRegisters(words),
        })))
    }
}

/// A TCP stream that fails its next read once `killed` is cancelled, which ends the
/// connection's task in tokio-modbus and closes the socket.
struct KillableStream<S> {
    inner: S,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    dead: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for KillableStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        if self.dead {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped by the simulator",
            )));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for KillableStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Builds the per-connection service and transport; shared by both listeners.
fn connection(
    stream: tokio::net::TcpStream,
    model: &Arc<Model>,
    faults: &Faults,
    epoch: Instant,
) -> (PlcService, KillableStream<tokio::net::TcpStream>) {
    let _ = stream.set_nodelay(true);
    let service = PlcService {
        model: Arc::clone(model),
        faults: faults.clone(),
        epoch,
    };
    let killed = Box::pin(faults.connection_token().cancelled_owned());
    (
        service,
        KillableStream {
            inner: stream,
            killed,
            dead: false,
        },
    )
}

fn on_error(error: io::Error) {
    tracing::debug!(message = "Modbus connection ended.", %error);
}

/// Serves Modbus TCP on `listener` until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    model: Arc<Model>,
    faults: Faults,
    epoch: Instant,
    shutdown: CancellationToken,
) {
    let on_connected = |stream, _peer| {
        let pair = connection(stream, &model, &faults, epoch);
        async move { Ok(Some(pair)) }
    };
    // serve_until drops every connection task when shutdown fires.
    if let Err(error) = Server::new(listener)
        .serve_until(&on_connected, on_error, shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(message = "Simulated Modbus server stopped.", %error);
    }
}

/// Serves Modbus RTU frames over TCP on `listener` until `shutdown` is cancelled.
pub(crate) async fn serve_rtu_over_tcp(
    listener: TcpListener,
    model: Arc<Model>,
    faults: Faults,
    epoch: Instant,
    shutdown: CancellationToken,
) {
    let on_connected = |stream, _peer| {
        let pair = connection(stream, &model, &faults, epoch);
        async move { Ok(Some(pair)) }
    };
    // serve_until drops every connection task when shutdown fires.
    if let Err(error) = tokio_modbus::server::rtu_over_tcp::Server::new(listener)
        .serve_until(&on_connected, on_error, shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(message = "Simulated Modbus RTU-over-TCP server stopped.", %error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tagmap::WordOrder;
    use crate::sim::signal::{Signal, SignalValue};
    use std::time::Duration;

    fn point(unit: u8, table: Table, address: u16, dt: DataType, v: SignalValue) -> ModbusPoint {
        ModbusPoint {
            unit,
            table,
            address,
            data_type: Some(dt),
            order: WordOrder::ABCD,
            bit: None,
            length: None,
            signal: Signal::Constant(v),
        }
    }

    #[test]
    fn gaps_read_zero_and_edges_are_illegal() {
        let model = Model::new(vec![
            point(
                1,
                Table::HoldingRegister,
                10,
                DataType::Uint16,
                SignalValue::Int(7),
            ),
            point(
                1,
                Table::HoldingRegister,
                14,
                DataType::Uint32,
                SignalValue::Int(0x10002),
            ),
        ])
        .unwrap();
        let t = Duration::ZERO;
        let read = |a, n| model.read(1, Table::HoldingRegister, a, n, t);
        assert_eq!(read(10, 6), Ok(vec![7, 0, 0, 0, 1, 2]));
        assert_eq!(read(9, 1), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(read(15, 2), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(read(10, 0), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(
            model.read(1, Table::InputRegister, 10, 1, t),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            model.read(2, Table::HoldingRegister, 10, 1, t),
            Err(ExceptionCode::GatewayTargetDevice)
        );
    }

    #[test]
    fn packed_bits_share_a_register_and_overlaps_are_refused() {
        let mut a = point(
            1,
            Table::InputRegister,
            0,
            DataType::Bool,
            SignalValue::Bool(true),
        );
        a.bit = Some(0);
        let mut b = a.clone();
        b.bit = Some(15);
        let mut c = a.clone();
        c.bit = Some(3);
        c.signal = Signal::Constant(SignalValue::Bool(false));
        let model = Model::new(vec![a.clone(), b, c]).unwrap();
        assert_eq!(
            model.read(1, Table::InputRegister, 0, 1, Duration::ZERO),
            Ok(vec![0x8001])
        );
        assert!(Model::new(vec![a.clone(), a]).is_err());
        let wide = point(
            1,
            Table::HoldingRegister,
            0,
            DataType::Int64,
            SignalValue::Int(1),
        );
        let inside = point(
            1,
            Table::HoldingRegister,
            3,
            DataType::Int16,
            SignalValue::Int(1),
        );
        assert!(Model::new(vec![wide, inside]).is_err());
    }
}
