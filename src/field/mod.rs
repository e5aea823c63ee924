//! Field tools for the engineer on site: `read` (one reading of one meter), `scan` (which unit
//! ids answer on a bus, and which model they look like) and `status` (what a running or stopped
//! gateway's store says about every bus and meter). Each prints a table, or JSON with `--json`.
//! For the headend's side: `keygen` and `command` (signed commands, [`command`]).
//!
//! `read` and `scan` talk to meters through the bus's driver ([`crate::bus::ModbusDriver`],
//! [`crate::bus::Dlt645Driver`]): the same read path and the same transaction deadline as the
//! daemon. With `--protocol dlt645` a meter is named by its 12-digit address instead of a unit
//! id, and `scan` asks a lone meter for its address (or tries a list of addresses).

pub mod command;
pub mod read;
pub mod scan;
pub mod status;

use crate::bus::{BusSettings, Endpoint, Protocol};
use crate::protocol::{Parity, SerialLine};
use std::path::PathBuf;
use std::time::Duration;

/// Where a tool talks to meters: a serial device or a TCP endpoint, as given on the command line.
#[derive(Debug, Clone)]
pub struct LinkArgs {
    pub device: Option<PathBuf>,
    pub address: Option<String>,
    /// For `--address`: `modbus-tcp` (default) or `modbus-rtu-over-tcp`; for `--device`:
    /// `modbus-rtu` (default) or `dlt645`.
    pub protocol: Option<String>,
    pub baud: u32,
    pub parity: Parity,
    pub timeout_ms: u64,
}

impl LinkArgs {
    /// A one-off bus for the tool, read with the daemon's driver and deadline rule.
    pub fn bus(&self) -> Result<BusSettings, String> {
        let (protocol, endpoint) = match (&self.device, &self.address, self.protocol.as_deref()) {
            (Some(d), None, None | Some("modbus-rtu")) => {
                (Protocol::ModbusRtu, Endpoint::Serial(d.clone()))
            }
            (None, Some(a), None | Some("modbus-tcp")) => {
                (Protocol::ModbusTcp, Endpoint::Tcp(a.clone()))
            }
            (None, Some(a), Some("modbus-rtu-over-tcp")) => {
                (Protocol::ModbusRtuOverTcp, Endpoint::Tcp(a.clone()))
            }
            (Some(d), None, Some("dlt645")) => (Protocol::Dlt645, Endpoint::Serial(d.clone())),
            (Some(_), Some(_), _) => {
                return Err("give either --device or --address, not both".into());
            }
            (None, None, _) => {
                return Err("give --device DEV (serial) or --address HOST:PORT (TCP)".into());
            }
            (_, _, Some(p)) => {
                return Err(format!(
                    "--protocol {p} does not fit; use modbus-rtu or dlt645 with --device, modbus-tcp or modbus-rtu-over-tcp with --address"
                ));
            }
        };
        Ok(BusSettings {
            name: "cli".into(),
            protocol,
            endpoint,
            line: SerialLine {
                baud: self.baud,
                parity: self.parity,
                data_bits: 8,
                stop_bits: 1,
            },
            timeout: Duration::from_millis(self.timeout_ms),
            poll_interval: Duration::from_secs(60),
            preamble: 4,
            time_sync: Default::default(),
        })
    }
}

/// Parses `none` / `even` / `odd` (also `n`, `e`, `o`).
pub fn parse_parity(s: &str) -> Result<Parity, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" | "n" => Ok(Parity::None),
        "even" | "e" => Ok(Parity::Even),
        "odd" | "o" => Ok(Parity::Odd),
        _ => Err(format!("parity `{s}`: use none, even or odd")),
    }
}

/// The unit printed beside a quantity, from its name's suffix.
pub fn unit_of(quantity: &str) -> &'static str {
    let suffix = quantity.rsplit('_').next().unwrap_or("");
    match suffix {
        "kwh" => "kWh",
        "kvarh" => "kvarh",
        "v" => "V",
        "a" => "A",
        "kw" => "kW",
        "kvar" => "kvar",
        "kva" => "kVA",
        "hz" => "Hz",
        _ => "",
    }
}
