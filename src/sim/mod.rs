//! The test harness shipped with the product: a simulated PLC (OPC UA and Modbus servers driven
//! by deterministic signals) and, beside it, a local Event Hub emulator.

pub mod hub;
pub mod plc;
pub mod signal;
