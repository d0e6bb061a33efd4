//! Sinks: where readings leave the gateway. JSON lines on stdout or in a file for dry runs;
//! the Event Hub sink arrives with its own issue.

pub mod eventhub;
pub mod lines;

pub use lines::LinesSink;
