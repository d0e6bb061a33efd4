//! Sinks: where readings leave the gateway. The Event Hub sink (AMQP over TLS or WebSockets,
//! HTTPS REST) behind the durable spool, and JSON lines on stdout or in a file for dry runs.

pub mod eventhub;
pub mod lines;

pub use lines::LinesSink;
