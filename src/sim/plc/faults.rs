//! Faults on demand: what reliability tests switch on and off while the simulator runs.
//!
//! [`Faults`] is a cheap clone shared by the servers; every switch takes effect on the next
//! request (Modbus) or at once (dropped connections, OPC UA restart).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;

use super::SimError;
use crate::config::tagmap::Table;

/// A request to restart the OPC UA server; the reply says when it is serving again.
pub(crate) type RestartRequest = oneshot::Sender<Result<(), SimError>>;

/// (unit, table, address) of one Modbus register or bit.
type ModbusAddr = (u8, Table, u16);

/// Switches for faults. Clone it freely; all clones share the same state.
#[derive(Clone, Debug)]
pub struct Faults {
    inner: Arc<State>,
}

#[derive(Debug)]
struct State {
    /// Every Modbus connection holds the token current when it was accepted; cancelling it
    /// closes them all. Replaced by a fresh token right after.
    connections: Mutex<CancellationToken>,
    /// The simulator's shutdown token, parent of every connection token.
    shutdown: CancellationToken,
    /// Until when the servers answer nothing.
    silent_until: Mutex<Option<Instant>>,
    /// Modbus exceptions for reads covering (unit, table, address), with an optional end.
    exceptions: RwLock<HashMap<ModbusAddr, (ExceptionCode, Option<Instant>)>>,
    /// Reaches the OPC UA supervisor task; `None` without an OPC UA server.
    /// Capacity 1: a second caller waits until the first restart was taken.
    opcua_restart: Option<mpsc::Sender<RestartRequest>>,
}

impl Faults {
    pub(crate) fn new(
        shutdown: &CancellationToken,
        opcua_restart: Option<mpsc::Sender<RestartRequest>>,
    ) -> Faults {
        Faults {
            inner: Arc::new(State {
                connections: Mutex::new(shutdown.child_token()),
                shutdown: shutdown.clone(),
                silent_until: Mutex::new(None),
                exceptions: RwLock::new(HashMap::new()),
                opcua_restart,
            }),
        }
    }

    /// Closes every open Modbus connection now. Clients may reconnect at once.
    pub fn drop_connections(&self) {
        let mut current = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        current.cancel();
        // A child of the shutdown token, so shutdown still closes connections accepted later.
        *current = self.inner.shutdown.child_token();
    }

    /// The token a newly accepted connection watches.
    pub(crate) fn connection_token(&self) -> CancellationToken {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops answering Modbus requests for `duration` (requests are read and ignored, so clients
    /// time out). A later call replaces the end time.
    pub fn go_silent(&self, duration: Duration) {
        *self
            .inner
            .silent_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + duration);
    }

    /// Answers again at once.
    pub fn end_silence(&self) {
        *self
            .inner
            .silent_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether the servers are silent now.
    pub fn is_silent(&self) -> bool {
        self.inner
            .silent_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Answers `code` to every read that covers `(unit, table, address)`, until cleared.
    pub fn modbus_exception(&self, unit: u8, table: Table, address: u16, code: ExceptionCode) {
        self.modbus_exception_until(unit, table, address, code, None);
    }

    /// Like [`Faults::modbus_exception`], ending by itself at `until` when given.
    pub fn modbus_exception_until(
        &self,
        unit: u8,
        table: Table,
        address: u16,
        code: ExceptionCode,
        until: Option<Instant>,
    ) {
        self.inner
            .exceptions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((unit, table, address), (code, until));
    }

    /// Removes every exception set with [`Faults::modbus_exception`].
    pub fn clear_modbus_exceptions(&self) {
        self.inner
            .exceptions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The exception to answer for a read of `count` items from `address`, if any.
    pub(crate) fn exception_for(
        &self,
        unit: u8,
        table: Table,
        address: u16,
        count: u16,
    ) -> Option<ExceptionCode> {
        let map = self
            .inner
            .exceptions
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return None;
        }
        let now = Instant::now();
        (u32::from(address)..u32::from(address) + u32::from(count)).find_map(|a| {
            let a = u16::try_from(a).ok()?;
            match map.get(&(unit, table, a)) {
                Some((code, until)) if until.is_none_or(|u| now < u) => Some(*code),
                _ => None,
            }
        })
    }

    /// Stops the OPC UA server and starts it again on the same endpoint; returns once it serves
    /// again. Sessions and subscriptions do not survive.
    pub async fn restart_opcua(&self) -> Result<(), SimError> {
        let Some(tx) = &self.inner.opcua_restart else {
            return Err(SimError::NoOpcUa);
        };
        let (reply, done) = oneshot::channel();
        tx.send(reply).await.map_err(|_| SimError::Stopped)?;
        done.await.map_err(|_| SimError::Stopped)?
    }
}
