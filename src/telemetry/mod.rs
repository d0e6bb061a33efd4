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
        library_directives(level)
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

/// Log directives that quiet async-opcua below `debug`. Its messages repeat what the OPC UA
/// source reports itself, with a reason and a next step (and some are not problems at all:
/// `BadNoSubscription` before the first subscription, "Endpoint config contains no endpoints"
/// for every client), so a clean start logs no WARN and no ERROR. At `debug` and `trace` they
/// are all shown.
fn library_directives(level: &str) -> &'static [&'static str] {
    let verbose = ["debug", "trace"].iter().any(|l| level.contains(l));
    if verbose {
        &[]
    } else {
        &[
            "opcua_client=off",
            "opcua_core=off",
            "opcua_crypto=off",
            "opcua_types=off",
            "opcua_nodes=off",
        ]
    }
}
