//! tagbridge: reads PLC tags over OPC UA and Modbus and streams them to Azure Event Hubs.
//!
//! Modules in data-flow order (blank lines keep rustfmt from sorting them):

// gateway.yaml and tag maps: parsing with positions, JSON Schemas.
pub mod config;

// Adapters that read devices and emit samples.
pub mod source;

// Tag maps applied: samples become readings.
pub mod mapping;

// The reading and its one JSON encoding.
pub mod reading;

// Where readings leave the gateway.
pub mod sink;

// The running gateway: tasks, channels, shutdown.
pub mod runtime;

// Logs, later metrics and health.
pub mod telemetry;

// The command line (the binary edge).
pub mod cli;
