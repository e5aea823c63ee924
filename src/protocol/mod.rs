//! Wire protocols. Each is a codec (pure functions on byte vectors, unit-tested) separate from
//! the transport that times it on a serial line or a TCP connection, with its own link settings
//! ([`line`], [`modbus::Link`]).
//!
//! A protocol imports only the leaf types (`model`, `clock`); the bus's drivers
//! (`crate::bus`) run it, and the config loader builds its settings.

pub mod dlt645;
pub mod line;
pub mod modbus;

pub use line::{Parity, SerialLine};
