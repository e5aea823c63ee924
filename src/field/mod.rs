//! Field tools for the engineer on site: `read` (one reading of one meter), `scan` (which unit
//! ids answer on a bus, and which model they look like), `register` (raw register reads and
//! writes, as mbpoll / modpoll do, [`register`]), `setup` (a new meter's unit id and baud rate,
//! [`setup`]), `test` (every meter of a configuration read once, [`test`]) and `status` (what a
//! running or stopped gateway's store says about every bus and meter). Each prints a table, or
//! JSON with `--json`. For the headend's side: `keygen` and `command` (signed commands,
//! [`command`]).
//!
//! `read` and `scan` talk to meters through the bus's driver ([`crate::bus::ModbusDriver`],
//! [`crate::bus::Dlt645Driver`]): the same read path and the same transaction deadline as the
//! daemon. With `--protocol dlt645` a meter is named by its 12-digit address instead of a unit
//! id, and `scan` asks a lone meter for its address (or tries a list of addresses).

pub mod command;
pub mod read;
pub mod register;
pub mod scan;
pub mod setup;
pub mod status;
pub mod test;

use crate::bus::{BusSettings, DeviceLock, Endpoint, Protocol};
use crate::protocol::modbus::{self, ModbusError, RtuTiming};
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
    pub data_bits: u8,
    pub stop_bits: u8,
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
                data_bits: self.data_bits,
                stop_bits: self.stop_bits,
            },
            timeout: Duration::from_millis(self.timeout_ms),
            poll_interval: Duration::from_secs(60),
            preamble: 4,
            time_sync: Default::default(),
        })
    }
}

impl LinkArgs {
    /// A Modbus client on the link, opened (a serial device checked for the daemon's lock
    /// first), and the line's timing for deadlines.
    pub async fn modbus_client(&self) -> Result<(modbus::ModbusClient, RtuTiming), String> {
        let bus = self.bus()?;
        let endpoint = match (bus.protocol, &bus.endpoint) {
            (Protocol::ModbusRtu, Endpoint::Serial(device)) => {
                DeviceLock::check(device).map_err(|e| e.to_string())?;
                modbus::Endpoint::Serial(device.clone())
            }
            (Protocol::ModbusTcp, Endpoint::Tcp(a)) => modbus::Endpoint::Tcp(a.clone()),
            (Protocol::ModbusRtuOverTcp, Endpoint::Tcp(a)) => {
                modbus::Endpoint::RtuOverTcp(a.clone())
            }
            _ => {
                return Err(
                    "this tool speaks Modbus: --protocol modbus-rtu, modbus-tcp or \
                 modbus-rtu-over-tcp"
                        .into(),
                );
            }
        };
        let link = modbus::Link {
            endpoint,
            line: bus.line,
        };
        let client = modbus::ModbusClient::open(&link, bus.timeout)
            .await
            .map_err(|e| format!("cannot open {}: {e}", link.endpoint))?;
        Ok((client, RtuTiming::from_serial(&bus.line)))
    }

    /// True for a Modbus TCP link (`--address` without `--protocol modbus-rtu-over-tcp`).
    pub fn is_modbus_tcp(&self) -> bool {
        self.address.is_some() && matches!(self.protocol.as_deref(), None | Some("modbus-tcp"))
    }

    /// What to check when a unit gave no valid answer (`error`, e.g. no reply): on Modbus TCP
    /// the port may be a serial server in RTU-over-TCP mode; on a serial line the unit id, the
    /// line settings and the wiring.
    pub fn advice(&self, error: &str) -> String {
        if self.is_modbus_tcp() {
            format!(
                "no valid Modbus TCP reply ({error}): this port may be a serial server in \
                 RTU-over-TCP mode; try --protocol modbus-rtu-over-tcp (else check the unit id \
                 the gateway routes to)"
            )
        } else {
            format!(
                "{error}: check the unit id, the baud rate and parity, and the wiring (A/B \
                 swapped? termination?)"
            )
        }
    }
}

/// True when a Modbus error means no valid answer came (silence, or bytes that are no reply).
pub fn no_valid_answer(e: &ModbusError) -> bool {
    matches!(e, ModbusError::Timeout(_) | ModbusError::Malformed(_))
}

/// Parses a register or coil address: decimal, or hex with `0x`.
pub fn parse_address(s: &str) -> Result<u16, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => t.parse::<u16>(),
    };
    parsed.map_err(|_| format!("address `{s}`: write 0..65535, or hex such as 0x001C"))
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
