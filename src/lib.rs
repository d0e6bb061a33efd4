//! tagbridge: reads PLC tags over OPC UA and Modbus and streams them to Azure Event Hubs.
//!
//! Modules in data-flow order (blank lines keep rustfmt from sorting them):

#![forbid(unsafe_code)]

// The global allocator, by measurement (docs/benchmarks.md, "Allocator").
#[cfg(all(feature = "alloc-mimalloc", not(feature = "alloc-jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "alloc-jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// gateway.yaml and tag maps: parsing with positions, JSON Schemas.
pub mod config;

// What a source emits for one tag: the contract between sources and the mapping stage.
pub mod sample;

// Adapters that read devices and emit samples.
pub mod source;

// Tag maps applied: samples become readings.
pub mod mapping;

// The reading and its one JSON encoding.
pub mod reading;

// The durable on-disk log between the mapping stage and the sink.
pub mod spool;

// Where readings leave the gateway.
pub mod sink;

// The running gateway: tasks, channels, shutdown.
pub mod runtime;

// Logs, metrics and health.
pub mod telemetry;

// The test harness shipped with the product: a simulated PLC and an Event Hub emulator.
pub mod sim;

// The command line (the binary edge).
pub mod cli;
