//! The Event Hubs sink: connection strings, tokens, and (as they land) batching and delivery
//! over AMQP 1.0.

pub mod amqp;
pub mod auth;
pub mod connection_string;
pub mod encoding;
pub mod entra;
pub mod event;
pub mod frame_guard;
pub mod health;
pub mod link;
pub mod proxy;
pub mod rest;
pub mod sas;
pub mod setup;
pub mod sink;
pub mod stats;
pub mod tls;
pub mod transport;
pub mod websocket;
pub mod window;

pub use connection_string::{ConnectionString, ConnectionStringError, SasCredential};
