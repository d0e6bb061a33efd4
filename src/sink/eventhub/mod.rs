//! The Event Hubs sink: connection strings, tokens, and (as they land) batching and delivery
//! over AMQP 1.0.

pub mod connection_string;
pub mod event;
pub mod sas;

pub use connection_string::{ConnectionString, ConnectionStringError, SasCredential};
