//! Modbus: the RTU and TCP codecs, and the client transports (RTU on a serial port, Modbus TCP,
//! RTU over TCP through a serial server) with the guarantees the gateway relies on:
//!
//! - every transaction has a deadline;
//! - after a timeout no stale reply is ever taken for the next request's answer;
//! - a reply with a bad CRC or from the wrong unit id is rejected at once, not after the deadline;
//! - garbage on the line does not swallow the next valid reply;
//! - an exception reply is reported as such.
//!
//! tokio-modbus gives none of these on RTU (see `../shared/reference/rust-crates.md`), so the
//! framing is our own: [`codec`] holds the pure byte-level functions, [`transport`] times them,
//! and [`link`] holds the settings of a link ([`Link`]: endpoint and serial line), which the
//! config loader builds.
//! The tests that prove each guarantee run the transports against the simulator ([`crate::sim`])
//! on a real pseudo-terminal and on real loopback TCP.

pub mod codec;
pub mod link;
pub mod transport;

#[cfg(test)]
mod tests;

pub use link::{Endpoint, Link};
pub use transport::{ModbusClient, RtuTiming, RtuTransport, TcpTransport};

/// Why a Modbus transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    #[error("no reply within {0} ms")]
    Timeout(u64),
    #[error("reply with a bad CRC")]
    BadCrc,
    #[error("reply from unit {got}, expected unit {expected}")]
    WrongUnit { expected: u8, got: u8 },
    #[error("exception {code:#04x} ({})", codec::exception_name(*code))]
    Exception { code: u8 },
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The request itself cannot be sent (function other than 03/04, count outside 1..=125).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A TCP endpoint is unreachable; the client waits `retry_in_ms` before trying again, and
    /// fails fast until then so that the bus task is not held up by a dead serial server.
    #[error("not connected to {address}: {reason}; next attempt in {retry_in_ms} ms")]
    NotConnected {
        address: String,
        reason: String,
        retry_in_ms: u64,
    },
}

impl ModbusError {
    /// True when the meter answered (even with an exception): the line and the unit id work.
    pub fn meter_answered(&self) -> bool {
        matches!(self, ModbusError::Exception { .. })
    }
}
