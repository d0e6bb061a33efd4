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
