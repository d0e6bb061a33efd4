//! The simulated PLC: an OPC UA server and a Modbus TCP server whose values follow
//! deterministic [`Signal`](crate::sim::signal::Signal)s.
//!
//! Invariants:
//! - All signals share one epoch ([`PlcHandle::epoch`]): the value a variable or register held
//!   at wall-clock instant `ts` is `signal.value_at(ts - epoch)`, so a test can compute what the
//!   PLC held and compare it with what reached the hub.
//! - Servers bind before [`Plc::start`] returns: the addresses in the handle accept connections.
//! - Every task is tracked; [`PlcHandle::shutdown`] cancels and waits for them all.
//!
//! Starting it in a test:
//! ```no_run
//! # async fn demo() -> Result<(), tagbridge::sim::plc::SimError> {
//! use tagbridge::config::tagmap::{DataType, Table, WordOrder};
//! use tagbridge::sim::plc::{ModbusConfig, ModbusPoint, Plc, PlcConfig};
//! use tagbridge::sim::signal::{Signal, SignalValue};
//!
//! let config = PlcConfig {
//!     modbus: Some(ModbusConfig {
//!         listen: Some("127.0.0.1:0".into()), // an ephemeral port
//!         points: vec![ModbusPoint {
//!             unit: 1,
//!             table: Table::HoldingRegister,
//!             address: 0,
//!             data_type: Some(DataType::Float32),
//!             order: WordOrder::CDAB,
//!             bit: None,
//!             length: None,
//!             signal: Signal::Constant(SignalValue::Float(42.5)),
//!         }],
//!         ..Default::default()
//!     }),
//!     ..Default::default()
//! };
//! // Or: let config = tagbridge::sim::plc::PlcConfig::from_tag_maps(&plans);
//! let plc = Plc::start(config).await?;
//! let addr = plc.modbus_addr().expect("modbus configured"); // point the gateway here
//! plc.faults().drop_connections(); // inject faults while the test runs
//! plc.shutdown().await;
//! # Ok(()) }
//! ```

pub mod alarms;
mod config;
mod faults;
pub mod generate;
mod modbus;
mod opcua;
pub mod registers;
pub mod structs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{
    FaultSpec, ModbusConfig, ModbusPoint, OpcUaConfig, OpcUaSecurity, OpcUaStructure, OpcUaType,
    OpcUaUser, OpcUaVariable, PlcConfig, ScheduledFault,
};
pub use faults::{Faults, OpcUaStatusChange};

/// The JSON Schema of the simulated PLC's configuration: its file name under `schema/` and text.
pub fn schema() -> (&'static str, String) {
    (
        "sim-plc.schema.json",
        crate::config::schema::render::<PlcConfig>("tagbridge simulated PLC"),
    )
}

/// Why the simulator could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("OPC UA server: {0}")]
    OpcUa(String),
    #[error("the simulator has no OPC UA server")]
    NoOpcUa,
    #[error("the simulator has stopped")]
    Stopped,
}

/// Starts simulated PLCs.
pub struct Plc;

impl Plc {
    /// Binds the configured servers and starts serving. See the module docs for an example.
    pub async fn start(config: PlcConfig) -> Result<PlcHandle, SimError> {
        for item in &config.faults {
            if let FaultSpec::OpcuaStatus { status, .. } = &item.fault {
                if opcua_status_code(status).is_none() {
                    return Err(SimError::Config(format!(
                        "`{status}` is not an OPC UA status name (e.g. BadSensorFailure)"
                    )));
                }
            }
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let epoch_instant = Instant::now();
        let epoch = Utc::now();

        let mut opcua_parts = None;
        let mut restart_tx = None;
        if let Some(cfg) = config.opcua.clone() {
            // Capacity 1: a second restart request waits until the first was taken.
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            restart_tx = Some(tx);
            opcua_parts = Some((cfg, rx));
        }
        let faults = Faults::new(&shutdown, restart_tx);

        let mut modbus_addr = None;
        if let Some(cfg) = &config.modbus {
            let model = Arc::new(modbus::Model::new(cfg.points.clone())?);
            let listen = cfg.listen.as_deref().unwrap_or("127.0.0.1:0");
            let listener = bind(listen).await?;
            modbus_addr = listener.local_addr().ok();
            tracker.spawn(modbus::serve(
                listener,
                Arc::clone(&model),
                faults.clone(),
                epoch_instant,
                shutdown.child_token(),
            ));
            if let Some(listen) = &cfg.rtu_over_tcp_listen {
                let listener = bind(listen).await?;
                tracker.spawn(modbus::serve_rtu_over_tcp(
                    listener,
                    model,
                    faults.clone(),
                    epoch_instant,
                    shutdown.child_token(),
                ));
            }
        }

        let mut opcua_endpoint = None;
        let mut pki_cleanup = None;
        if let Some((cfg, restart_rx)) = opcua_parts {
            let started = opcua::start(
                cfg,
                epoch_instant,
                epoch,
                restart_rx,
                faults.clone(),
                &tracker,
                shutdown.child_token(),
            )
            .await;
            match started {
                Ok(info) => {
                    opcua_endpoint = Some(info.endpoint);
                    pki_cleanup = info.temp_pki;
                }
                Err(e) => {
                    shutdown.cancel();
                    tracker.close();
                    tracker.wait().await;
                    return Err(e);
                }
            }
        }

        if !config.faults.is_empty() {
            tracker.spawn(run_schedule(
                config.faults.clone(),
                faults.clone(),
                epoch_instant,
                shutdown.child_token(),
            ));
        }

        Ok(PlcHandle {
            modbus_addr,
            opcua_endpoint,
            epoch,
            epoch_instant,
            faults,
            shutdown,
            tracker,
            pki_cleanup,
        })
    }
}

async fn bind(addr: &str) -> Result<TcpListener, SimError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Applies the configured fault schedule.
async fn run_schedule(
    mut schedule: Vec<ScheduledFault>,
    faults: Faults,
    epoch: Instant,
    shutdown: CancellationToken,
) {
    schedule.sort_by_key(|f| f.at);
    for item in schedule {
        tokio::select! {
            // Shutdown ends the schedule early.
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until((epoch + item.at.0).into()) => {}
        }
        tracing::info!(message = "Injecting a scheduled fault.", fault = ?item.fault);
        apply(&faults, &item.fault).await;
    }
}

/// Applies one fault now.
pub async fn apply(faults: &Faults, fault: &FaultSpec) {
    match fault {
        FaultSpec::DropConnections {} => faults.drop_connections(),
        FaultSpec::Silence { duration } => faults.go_silent(duration.0),
        FaultSpec::ModbusException {
            unit,
            table,
            address,
            code,
            duration,
        } => faults.modbus_exception_until(
            *unit,
            *table,
            *address,
            ExceptionCode::new(*code),
            duration.map(|d| Instant::now() + d.0),
        ),
        FaultSpec::RestartOpcua {} => {
            if let Err(error) = faults.restart_opcua().await {
                tracing::warn!(message = "Cannot restart the OPC UA server.", %error);
            }
        }
        FaultSpec::OpcuaStatus {
            variable,
            status,
            duration,
        } => match opcua_status_code(status) {
            Some(code) => faults.opcua_status(variable, code, duration.map(|d| d.0)),
            None => {
                tracing::warn!(message = "Not an OPC UA status name; fault ignored.", %status)
            }
        },
    }
}

/// The OPC UA status code named `name` (`BadSensorFailure`, `UncertainLastUsableValue`, `Good`).
pub fn opcua_status_code(name: &str) -> Option<::opcua::types::StatusCode> {
    let sub: ::opcua::types::status_code::SubStatusCode = name.parse().ok()?;
    let code = ::opcua::types::StatusCode::from(sub as u32);
    (code.validate().is_ok() && !name.eq_ignore_ascii_case("invalid")).then_some(code)
}

/// A running simulator. Dropping it without [`PlcHandle::shutdown`] cancels its tasks too.
pub struct PlcHandle {
    modbus_addr: Option<SocketAddr>,
    opcua_endpoint: Option<String>,
    epoch: DateTime<Utc>,
    epoch_instant: Instant,
    faults: Faults,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// A PKI directory the simulator created itself and removes on shutdown.
    pki_cleanup: Option<PathBuf>,
}

impl PlcHandle {
    /// Where the Modbus TCP server listens.
    pub fn modbus_addr(&self) -> Option<SocketAddr> {
        self.modbus_addr
    }

    /// The OPC UA endpoint URL, e.g. `opc.tcp://127.0.0.1:PORT/`.
    pub fn opcua_endpoint(&self) -> Option<String> {
        self.opcua_endpoint.clone()
    }

    /// t = 0 of every signal.
    pub fn epoch(&self) -> DateTime<Utc> {
        self.epoch
    }

    /// Time since the epoch now, by the monotonic clock the servers use.
    pub fn elapsed(&self) -> Duration {
        self.epoch_instant.elapsed()
    }

    /// The signal time of a wall-clock instant (0 before the epoch).
    pub fn t_at(&self, at: DateTime<Utc>) -> Duration {
        (at - self.epoch).to_std().unwrap_or(Duration::ZERO)
    }

    /// Switches for faults.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Stops every server and waits for their tasks.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Some(dir) = &self.pki_cleanup {
            remove_dir(dir);
        }
    }
}

impl Drop for PlcHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn remove_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir) {
        tracing::debug!(message = "Cannot remove the simulator's PKI directory.", dir = %dir.display(), %error);
    }
}
