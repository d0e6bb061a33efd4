//! Logs, metrics and health. Logs always go to standard error, so standard output can carry
//! readings; metrics and health are served on loopback.

pub mod http;
pub mod live;
pub mod metrics;

use tracing_subscriber::EnvFilter;

use crate::config::gateway::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `level` when set. Calling it twice is
/// harmless (the second call does nothing), which keeps tests that start a gateway simple.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // The OPC UA library's own lines only at debug: the source reports what matters.
        let quiet = crate::source::opcua::library_log_directives(level);
        quiet
            .iter()
            .filter_map(|d| d.parse().ok())
            .fold(EnvFilter::new(level), |f, d| f.add_directive(d))
    });
    // Colour only for a person at a terminal: a log file or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
