//! Faults on demand: what reliability tests switch on and off while the simulator runs.
//!
//! [`Faults`] is a cheap clone shared by the servers; every switch takes effect on the next
//! request (Modbus) or at once (dropped connections, OPC UA restart, OPC UA statuses).
//!
//! OPC UA statuses ([`Faults::opcua_status`]) are deterministic: the server's updater writes
//! the variable at once with the new status, stamped with the instant it did so, and records
//! each change it wrote ([`Faults::opcua_status_changes`]) so a test can compare what a client
//! received with what the PLC did. While a variable is Bad its value is not updated (a failed
//! sensor has no value); while Uncertain its value keeps changing, each update carrying the
//! status; when the status ends the current value is written, Good, stamped with that instant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use opcua::types::StatusCode;
use tokio::sync::{mpsc, oneshot, Notify};
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
    /// OPC UA variables (by path or node id text) given a status other than Good, with an
    /// optional end.
    opcua_status: RwLock<HashMap<String, (StatusCode, Option<Instant>)>>,
    /// Wakes the OPC UA updater when `opcua_status` changed.
    opcua_status_changed: Notify,
    /// Every status change the OPC UA updater wrote, in order.
    opcua_status_log: Mutex<Vec<OpcUaStatusChange>>,
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
                opcua_status: RwLock::new(HashMap::new()),
                opcua_status_changed: Notify::new(),
                opcua_status_log: Mutex::new(Vec::new()),
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

    /// Gives the OPC UA variable `variable` (its path, e.g. `Line1/Temp`, or its node id text,
    /// e.g. `ns=2;s=Line1/Temp`) the status `status` (e.g. `BadSensorFailure`,
    /// `UncertainLastUsableValue`, `BadNodeIdUnknown` for a node that went away) for
    /// `duration`, or until cleared when `None`. `StatusCode::Good` ends a status at once.
    /// Takes effect at once; a later call for the same variable replaces it.
    pub fn opcua_status(&self, variable: &str, status: StatusCode, duration: Option<Duration>) {
        let key = variable.trim_matches('/').to_string();
        {
            let mut map = self
                .inner
                .opcua_status
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if status.is_good() {
                map.remove(&key);
            } else {
                map.insert(key, (status, duration.map(|d| Instant::now() + d)));
            }
        }
        self.inner.opcua_status_changed.notify_one();
    }

    /// Ends every status set with [`Faults::opcua_status`].
    pub fn clear_opcua_statuses(&self) {
        self.inner
            .opcua_status
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.inner.opcua_status_changed.notify_one();
    }

    /// The status changes the OPC UA server wrote so far, in order.
    pub fn opcua_status_changes(&self) -> Vec<OpcUaStatusChange> {
        self.inner
            .opcua_status_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The statuses in force now (expired ones left out), and the earliest end among them.
    pub(crate) fn opcua_statuses(&self) -> (HashMap<String, StatusCode>, Option<Instant>) {
        let map = self
            .inner
            .opcua_status
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut next_end: Option<Instant> = None;
        let mut active = HashMap::new();
        for (key, (status, until)) in map.iter() {
            match until {
                Some(until) if *until <= now => continue,
                Some(until) => next_end = Some(next_end.map_or(*until, |e| e.min(*until))),
                None => {}
            }
            active.insert(key.clone(), *status);
        }
        (active, next_end)
    }

    /// Resolves when [`Faults::opcua_status`] or [`Faults::clear_opcua_statuses`] was called.
    pub(crate) async fn opcua_status_changed(&self) {
        self.inner.opcua_status_changed.notified().await;
    }

    /// Records a status the OPC UA updater wrote.
    pub(crate) fn log_opcua_status(&self, change: OpcUaStatusChange) {
        self.inner
            .opcua_status_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change);
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

/// One status change the simulated OPC UA server wrote to a variable.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaStatusChange {
    /// The variable's path as configured (without surrounding slashes).
    pub path: String,
    /// The status written (`Good` when a fault ended).
    pub status: StatusCode,
    /// The source timestamp written with it: the instant of the change.
    pub at: DateTime<Utc>,
}
