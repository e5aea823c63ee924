//! Where a Modbus client talks: the endpoint (a serial device, a Modbus TCP endpoint, or a
//! serial server carrying RTU over TCP) and the serial line's settings.

use crate::protocol::line::SerialLine;
use std::fmt;
use std::path::PathBuf;

/// The link settings of one Modbus bus; [`super::ModbusClient::open`] opens them.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub endpoint: Endpoint,
    /// The serial line: the port's settings (RTU), the line behind a serial server (RTU over
    /// TCP); on every link its wire time is what a transaction's deadline adds to the timeout.
    pub line: SerialLine,
}

/// Where the bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// RTU on a serial device (`/dev/ttyUSB0`).
    Serial(PathBuf),
    /// Modbus TCP (MBAP) to `host:port`.
    Tcp(String),
    /// RTU frames through a serial server at `host:port`.
    RtuOverTcp(String),
}

impl fmt::Display for Endpoint {
    /// The device path or `host:port`, as log lines name the bus's endpoint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Serial(device) => write!(f, "{}", device.display()),
            Endpoint::Tcp(address) | Endpoint::RtuOverTcp(address) => f.write_str(address),
        }
    }
}
