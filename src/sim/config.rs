//! The simulator's TOML file: buses (a pty link or a TCP listen address), meters with their
//! load and energy, and per-meter faults.

use super::SimError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A whole simulator file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    #[serde(rename = "bus", default)]
    pub buses: Vec<SimBusConfig>,
    #[serde(rename = "meter", default)]
    pub meters: Vec<SimMeterConfig>,
}

/// How a simulated bus is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SimProtocol {
    #[serde(rename = "modbus-rtu")]
    ModbusRtu,
    #[serde(rename = "modbus-tcp")]
    ModbusTcp,
    #[serde(rename = "modbus-rtu-over-tcp")]
    ModbusRtuOverTcp,
}

impl SimProtocol {
    pub fn name(self) -> &'static str {
        match self {
            SimProtocol::ModbusRtu => "modbus-rtu",
            SimProtocol::ModbusTcp => "modbus-tcp",
            SimProtocol::ModbusRtuOverTcp => "modbus-rtu-over-tcp",
        }
    }
}

/// Parity of a simulated line (only its bit count matters: it paces replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimParity {
    None,
    Even,
    Odd,
}

/// `[[bus]]`: one pty (serial RTU) or one TCP listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimBusConfig {
    pub name: String,
    /// Path of a symlink to the pty slave (serial RTU). Relative paths are resolved against the
    /// file's directory.
    pub link: Option<PathBuf>,
    /// `host:port` to listen on (Modbus TCP or RTU over TCP); port 0 picks a free port.
    pub listen: Option<String>,
    #[serde(default = "default_protocol")]
    pub protocol: SimProtocol,
    /// Replies on RTU buses take the wire time of this rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_parity")]
    pub parity: SimParity,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Meters' processing time before replying.
    #[serde(default = "default_turnaround")]
    pub turnaround_ms: u64,
    /// The gateway's reply deadline, which `late_reply_ms` counts from (default 1000).
    #[serde(default = "default_gateway_timeout")]
    pub gateway_timeout_ms: u64,
}

impl SimBusConfig {
    /// Bits per character on the simulated line.
    pub fn bits_per_char(&self) -> u32 {
        1 + self.data_bits as u32
            + u32::from(self.parity != SimParity::None)
            + self.stop_bits as u32
    }
}

/// `[[meter]]`: one simulated meter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimMeterConfig {
    pub bus: String,
    pub unit: u8,
    /// Model name in the library (`[[meter]] model` of the gateway's configuration).
    pub model: String,
    /// Mean active power, kW; energy advances with it.
    #[serde(default = "default_load")]
    pub load_kw: f64,
    /// Energy register at start (import; export for a PV meter), kWh.
    #[serde(default)]
    pub energy_start_kwh: f64,
    #[serde(default = "default_voltage")]
    pub voltage_v: f64,
    #[serde(default = "default_pf")]
    pub power_factor: f64,
    /// A PV meter: exports `load_kw`; its export energy advances, its power is negative.
    #[serde(default)]
    pub export: bool,
    #[serde(default)]
    pub fault: Fault,
}

/// Faults of one meter; all off by default. Changed at run time with
/// [`super::SimHandle::set_fault`] or by editing the file and sending SIGHUP to `simulate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// Never answer.
    pub no_reply: bool,
    /// Answer this long after the gateway's deadline (`gateway_timeout_ms`) would have passed.
    pub late_reply_ms: u64,
    /// Answer with a corrupt CRC (RTU framing only).
    pub bad_crc: bool,
    /// Bytes of line noise sent just before the reply (RTU framing only).
    pub garbage_before: usize,
    /// Answer every read with this exception code.
    pub exception: u8,
    /// Reads of more registers than this get exception 03 (or silence, see below).
    pub max_block: u16,
    /// With `max_block`: stay silent instead of answering exception 03.
    pub block_limit_silent: bool,
    /// Answer with this unit id instead of the meter's own (a mis-addressed meter, a crossed
    /// serial-server mapping). 0: off.
    pub reply_unit: u8,
}

fn default_protocol() -> SimProtocol {
    SimProtocol::ModbusRtu
}
fn default_baud() -> u32 {
    9600
}
fn default_parity() -> SimParity {
    SimParity::None
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_turnaround() -> u64 {
    10
}
fn default_gateway_timeout() -> u64 {
    1000
}
fn default_load() -> f64 {
    1.0
}
fn default_voltage() -> f64 {
    230.0
}
fn default_pf() -> f64 {
    0.95
}

impl SimConfig {
    /// Reads and validates a simulator file; relative `link` paths are resolved against the
    /// file's directory. Errors name the file.
    pub fn load(path: &Path) -> Result<SimConfig, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Config {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        SimConfig::parse(&text, &path.display().to_string(), base)
    }

    /// Parses and validates a simulator file's text; `source` names it in errors, `base` is the
    /// directory relative `link` paths are resolved against.
    pub fn parse(text: &str, source: &str, base: &Path) -> Result<SimConfig, SimError> {
        let problem = |message: String| SimError::Config {
            file: source.to_string(),
            message,
        };
        let mut config: SimConfig =
            toml::from_str(text).map_err(|e| problem(e.to_string().trim_end().to_string()))?;
        let mut names = std::collections::BTreeSet::new();
        for bus in &mut config.buses {
            if !names.insert(bus.name.clone()) {
                return Err(problem(format!("bus \"{}\" is defined twice", bus.name)));
            }
            match (&bus.link, &bus.listen, bus.protocol) {
                (Some(_), None, SimProtocol::ModbusRtu) => {}
                (None, Some(_), SimProtocol::ModbusTcp | SimProtocol::ModbusRtuOverTcp) => {}
                (Some(_), Some(_), _) | (None, None, _) => {
                    return Err(problem(format!(
                        "bus \"{}\": set exactly one of link (a pty) or listen (TCP)",
                        bus.name
                    )));
                }
                (Some(_), None, p) => {
                    return Err(problem(format!(
                        "bus \"{}\": protocol {} needs listen = \"host:port\", not link",
                        bus.name,
                        p.name()
                    )));
                }
                (None, Some(_), _) => {
                    return Err(problem(format!(
                        "bus \"{}\": listen needs protocol = \"modbus-tcp\" or \
                         \"modbus-rtu-over-tcp\"",
                        bus.name
                    )));
                }
            }
            if let Some(link) = &bus.link {
                if link.is_relative() {
                    bus.link = Some(base.join(link));
                }
            }
            if bus.baud == 0 {
                return Err(problem(format!("bus \"{}\": baud must be > 0", bus.name)));
            }
        }
        let mut units = std::collections::BTreeSet::new();
        for m in &config.meters {
            let at = format!("meter {} on bus \"{}\"", m.unit, m.bus);
            if !names.contains(&m.bus) {
                return Err(problem(format!("{at}: no such bus")));
            }
            if !(1..=247).contains(&m.unit) {
                return Err(problem(format!("{at}: unit must be 1..=247")));
            }
            if !units.insert((m.bus.clone(), m.unit)) {
                return Err(problem(format!("{at}: unit defined twice")));
            }
            if !(m.power_factor > 0.0 && m.power_factor <= 1.0) {
                return Err(problem(format!("{at}: power_factor must be in (0, 1]")));
            }
            if m.load_kw < 0.0 {
                return Err(problem(format!(
                    "{at}: load_kw must be >= 0 (use export = true for a PV meter)"
                )));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let text = r#"
            [[bus]]
            name = "bus1"
            link = "ttyBUS1"
            baud = 9600
            parity = "none"
            turnaround_ms = 10
            [[bus]]
            name = "bus2"
            listen = "127.0.0.1:5020"
            protocol = "modbus-tcp"
            [[meter]]
            bus = "bus1"
            unit = 1
            model = "eastron-sdm630"
            load_kw = 3.0
            energy_start_kwh = 1000.0
            [meter.fault]
            late_reply_ms = 300
        "#;
        let c = SimConfig::parse(text, "sim.toml", Path::new("/tmp/x")).unwrap();
        assert_eq!(
            c.buses[0].link.as_deref(),
            Some(Path::new("/tmp/x/ttyBUS1"))
        );
        assert_eq!(c.buses[1].protocol, SimProtocol::ModbusTcp);
        assert_eq!(c.meters[0].fault.late_reply_ms, 300);
        assert_eq!(c.meters[0].voltage_v, 230.0);
        assert_eq!(c.buses[0].bits_per_char(), 10);
    }

    #[test]
    fn errors_name_the_file_and_the_thing() {
        let e = SimConfig::parse(
            "[[bus]]\nname = \"b\"\n[[meter]]\nbus = \"b\"\nunit = 1\nmodel = \"m\"\n",
            "sim.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("sim.toml: bus \"b\""), "{e}");
        let e = SimConfig::parse("[[bus]]\nnam = \"b\"\n", "sim.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sim.toml") && e.contains("nam"), "{e}");
        let e = SimConfig::parse(
            "[[bus]]\nname = \"b\"\nlink = \"x\"\n[[meter]]\nbus = \"c\"\nunit = 1\nmodel = \"m\"\n",
            "sim.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("meter 1 on bus \"c\": no such bus"), "{e}");
    }
}
