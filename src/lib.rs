//! tagbridge: reads PLC tags over OPC UA and Modbus and streams them to Azure Event Hubs.
//!
//! Modules in data-flow order:

/// The command line (the binary edge).
pub mod cli;
/// gateway.yaml and tag maps: parsing with positions, JSON Schemas.
pub mod config;
/// Tag maps applied: samples become readings.
pub mod mapping;
/// The reading and its one JSON encoding.
pub mod reading;
/// The running gateway: tasks, channels, shutdown.
pub mod runtime;
/// Where readings leave the gateway.
pub mod sink;
/// Adapters that read devices and emit samples.
pub mod source;
/// Logs, later metrics and health.
pub mod telemetry;
