//! End-to-end tests: one binary (each test binary re-links ~1 GB), one module per capability.
//! Every test starts what it needs in-process on ephemeral loopback ports, and waits for
//! conditions with deadlines, never for fixed sleeps.

/// Shared helpers: Python peers, waiting with deadlines, running the CLI. Not every module
/// uses every helper.
#[allow(dead_code)]
mod support;

/// `tagbridge check` and `tagbridge schema` on shipped and broken tag maps.
mod check_cli;

/// The Event Hub sink: SAS tokens against Microsoft's SDK, delivery through the emulator.
mod eventhub_sink;

/// deploy/: the systemd unit and the install script.
mod deploy;

/// The Debian package, installed, upgraded, removed and purged in a throwaway root.
mod deb;

/// README, ARCHITECTURE.md and docs/: links resolve, named paths exist.
mod docs;

/// `tagbridge tags export|import`: CSV tables and Kepware exports into tag maps, end to end.
mod tags_csv;

/// The simulated PLC read by pymodbus and asyncua; faults on demand.
mod sim_plc;

/// The Event Hub emulator: Microsoft's SDK and REST clients against it; faults.
mod sim_hub;

/// Compressed array events (`events: {array: N, encoding: gzip}`) through outages and kill -9,
/// read back by Microsoft's `EventHubConsumerClient` from the emulator.
mod compression;

/// The Modbus source against the simulated PLC and pymodbus.
mod modbus_source;

/// The Modbus source against a hostile device next to a healthy one, through `tagbridge run`.
mod modbus_hostile;

/// The OPC UA source against the simulated PLC and asyncua.
mod opcua_source;

/// OPC UA structures (`members:`): one reading per field, against the simulator and asyncua.
mod opcua_structs;

/// The durable spool: crashes, outages, bounds, end to end.
mod spool;

/// Operations: /metrics and /readyz during a run; live reload of tag maps.
mod operations;

/// No reading twice: OPC UA server restart, tag-map reload, graceful restart and kill -9 of
/// the gateway binary, counted at the hub.
mod duplicates;

/// A panicking component stops the whole gateway (exit non-zero) and loses nothing spooled.
mod supervision;

/// Heartbeats only repeat a value the device still confirms.
mod heartbeats;

/// The live view: /api/live, the page in headless Chromium, `tagbridge watch` in tmux.
mod live_view;

/// Quality readings: off is the seed format byte for byte; on, one bad reading per gap.
mod quality;

/// Issue 17: OPC UA events and alarms through the gateway, spool and hub; refresh after every
/// connect; the same subscription against Python asyncua's event generator.
mod opcua_events;
