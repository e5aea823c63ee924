//! The simulator's TOML file: buses (a pty link or a TCP listen address), meters with their
//! load, energy, scenario and staging knobs, per-meter faults, and the optional `[area]` the
//! meters form with its truth file. Every key is described in `docs/simulator.md`.

use super::SimError;
use crate::diagnostic::Report;
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
    /// The simulated transformer area, if any.
    pub area: Option<SimAreaConfig>,
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
    /// DL/T 645 (2007 and 1997 meters) on a pty, or over TCP as a transparent serial server.
    #[serde(rename = "dlt645")]
    Dlt645,
}

impl SimProtocol {
    pub fn name(self) -> &'static str {
        match self {
            SimProtocol::ModbusRtu => "modbus-rtu",
            SimProtocol::ModbusTcp => "modbus-tcp",
            SimProtocol::ModbusRtuOverTcp => "modbus-rtu-over-tcp",
            SimProtocol::Dlt645 => "dlt645",
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
    /// The gateway's timeout (default 1000): its deadline for a transaction is this plus the
    /// transaction's wire time, and `late_reply_ms` counts from that deadline.
    #[serde(default = "default_gateway_timeout")]
    pub gateway_timeout_ms: u64,
    /// No meter of the bus answers (a bus outage, a cut RS-485 line). Re-read on SIGHUP.
    #[serde(default)]
    pub silent: bool,
}

impl SimBusConfig {
    /// The line settings its meters answer at (on a pty, the gateway's end must match them).
    pub(crate) fn line_settings(&self) -> super::pty::LineSettings {
        super::pty::LineSettings {
            baud: self.baud,
            data_bits: self.data_bits,
            parity_odd: match self.parity {
                SimParity::None => None,
                SimParity::Even => Some(false),
                SimParity::Odd => Some(true),
            },
            stop_bits: self.stop_bits,
        }
    }

    /// Bits per character on the simulated line.
    pub fn bits_per_char(&self) -> u32 {
        1 + self.data_bits as u32
            + u32::from(self.parity != SimParity::None)
            + self.stop_bits as u32
    }
}

/// `[[meter]]`: one simulated meter. Read from the file through [`MeterFile`], so the knobs
/// that can change at run time arrive grouped as [`MeterConditions`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "MeterFile")]
pub struct SimMeterConfig {
    pub bus: String,
    /// The meter's handle in the simulator (its Modbus unit id; on a DL/T 645 bus given or
    /// numbered 1, 2, ... in file order).
    pub unit: u8,
    /// DL/T 645 address, 12 digits (meters on a `dlt645` bus only).
    pub address: Option<String>,
    /// Model name in the library (`[[meter]] model` of the gateway's configuration).
    pub model: String,
    /// Name in the truth file; default `"{bus}:{unit}"`.
    pub id: String,
    /// Part of the `[area]`: its supply meter or one of its customers; `None`: on its own.
    pub role: Option<Role>,
    /// CT ratio (× PT ratio) the meter sits behind: its registers hold primary / multiplier.
    pub multiplier: f64,
    /// How the customer's load varies over time (`load_kw` is its scale).
    pub profile: Profile,
    /// Seed of the profile and of missed reads.
    pub seed: u64,
    /// Energy register at start (import; export for a PV meter), kWh as the register holds it.
    pub energy_start_kwh: f64,
    /// A PV meter: exports `load_kw`; its export energy advances, its power is negative.
    pub export: bool,
    /// Seconds after the start at which the meter is replaced by a new one.
    pub replaced_at_s: Option<f64>,
    /// Import register of the new meter at replacement (export restarts at 0; the reverse for
    /// a PV meter).
    pub replacement_start_kwh: f64,
    /// Everything [`super::SimHandle::set_conditions`] and SIGHUP can change.
    pub conditions: MeterConditions,
    pub fault: Fault,
}

/// A meter's part in the `[area]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The area's supply meter (总表): measures every customer's load, the technical loss and
    /// the theft, minus PV export.
    Supply,
    /// A customer meter (户表).
    Customer,
}

/// A load profile: a deterministic function of wall-clock time (see `profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// `load_kw` all the time.
    #[default]
    Flat,
    /// A household: low at night, peaks in the morning and the evening (UTC hours), appliances
    /// switching every few minutes.
    Residential,
    /// A bounded random walk around `load_kw`, changing over minutes.
    RandomWalk,
}

/// A phase of a three-phase meter (`"l1"`, `"l2"`, `"l3"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    L1,
    L2,
    L3,
}

impl Phase {
    /// 0, 1 or 2.
    pub fn index(self) -> usize {
        match self {
            Phase::L1 => 0,
            Phase::L2 => 1,
            Phase::L3 => 2,
        }
    }
}

/// The scenario and staging knobs of one meter: its load, theft, metering faults and the
/// electrical conditions alarms are made of. Changed at run time with
/// [`super::SimHandle::set_conditions`] or by editing the file and sending SIGHUP.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterConditions {
    /// Scale of the customer's load, kW (ignored for the supply meter, which measures the
    /// area). Raise it to stage an overload.
    pub load_kw: f64,
    /// Nominal phase voltage, V.
    pub voltage_v: f64,
    pub power_factor: f64,
    /// Share of the customer's load that bypasses the meter (theft), 0..1.
    pub theft_fraction: f64,
    /// Seconds after the start from which the theft happens.
    pub theft_from_s: f64,
    /// The registers (energy, power, current) read this many times the truth.
    pub register_scale: f64,
    /// The energy registers stand still while current flows.
    pub stopped: bool,
    /// Share of requests (percent) the meter silently ignores, deterministic by `seed`.
    pub miss_reads_pct: f64,
    /// Rooftop PV of the customer, kW: exported through the meter when above the load.
    pub pv_kw: f64,
    /// Per-phase voltage overrides, V.
    pub voltage_l1_v: Option<f64>,
    pub voltage_l2_v: Option<f64>,
    pub voltage_l3_v: Option<f64>,
    /// Voltage sag: phase voltages × this factor (0..1).
    pub sag: Option<f64>,
    /// Voltage swell: phase voltages × this factor (≥ 1).
    pub swell: Option<f64>,
    /// This phase's voltage and current are gone at the meter (a blown voltage fuse, a broken
    /// lead): the meter registers only the other phases; the load itself is still supplied.
    pub phase_loss: Option<Phase>,
    /// Split of the load across l1, l2, l3 (weights); equal thirds when absent.
    pub unbalance: Option<[f64; 3]>,
    /// Reversed wiring: the export register advances instead of import, power is negative.
    pub reversed: bool,
    /// No voltage at the meter: voltages, currents and power 0, registers still; the
    /// customer's load is not supplied. On the supply meter: the whole area is out.
    pub voltage_lost: bool,
}

impl Default for MeterConditions {
    fn default() -> Self {
        MeterConditions {
            load_kw: default_load(),
            voltage_v: default_voltage(),
            power_factor: default_pf(),
            theft_fraction: 0.0,
            theft_from_s: 0.0,
            register_scale: 1.0,
            stopped: false,
            miss_reads_pct: 0.0,
            pv_kw: 0.0,
            voltage_l1_v: None,
            voltage_l2_v: None,
            voltage_l3_v: None,
            sag: None,
            swell: None,
            phase_loss: None,
            unbalance: None,
            reversed: false,
            voltage_lost: false,
        }
    }
}

impl MeterConditions {
    /// What is wrong with these knobs, if anything (the message names the key).
    pub fn check(&self) -> Result<(), String> {
        let c = self;
        if !(c.power_factor > 0.0 && c.power_factor <= 1.0) {
            return Err("power_factor must be in (0, 1]".into());
        }
        if !non_negative(c.load_kw) {
            return Err("load_kw must be >= 0 (use export = true or pv_kw for PV)".into());
        }
        if !non_negative(c.voltage_v) {
            return Err("voltage_v must be >= 0".into());
        }
        if !(0.0..=1.0).contains(&c.theft_fraction) {
            return Err("theft_fraction must be in 0..1".into());
        }
        if !non_negative(c.theft_from_s) {
            return Err("theft_from_s must be >= 0".into());
        }
        if !(c.register_scale > 0.0 && c.register_scale.is_finite()) {
            return Err("register_scale must be > 0".into());
        }
        if !(0.0..=100.0).contains(&c.miss_reads_pct) {
            return Err("miss_reads_pct must be in 0..100".into());
        }
        if !non_negative(c.pv_kw) {
            return Err("pv_kw must be >= 0".into());
        }
        for (key, v) in [
            ("voltage_l1_v", c.voltage_l1_v),
            ("voltage_l2_v", c.voltage_l2_v),
            ("voltage_l3_v", c.voltage_l3_v),
        ] {
            if v.is_some_and(|v| !non_negative(v)) {
                return Err(format!("{key} must be >= 0"));
            }
        }
        if c.sag.is_some_and(|f| !(f > 0.0 && f <= 1.0)) {
            return Err("sag is a factor in (0, 1], e.g. 0.85".into());
        }
        if c.swell.is_some_and(|f| !(f >= 1.0 && f.is_finite())) {
            return Err("swell is a factor >= 1, e.g. 1.1".into());
        }
        if let Some(w) = c.unbalance
            && (w.iter().any(|x| !non_negative(*x)) || w.iter().sum::<f64>() <= 0.0)
        {
            return Err(
                "unbalance needs three weights >= 0, not all 0, e.g. [1.0, 0.6, 0.3]".into(),
            );
        }
        Ok(())
    }
}

/// `[[meter]]` as written in the file: every key flat.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeterFile {
    bus: String,
    #[serde(default)]
    unit: u8,
    address: Option<String>,
    model: String,
    id: Option<String>,
    role: Option<Role>,
    #[serde(default = "one")]
    multiplier: f64,
    #[serde(default)]
    profile: Profile,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    energy_start_kwh: f64,
    #[serde(default)]
    export: bool,
    replaced_at_s: Option<f64>,
    #[serde(default)]
    replacement_start_kwh: f64,
    #[serde(default = "default_load")]
    load_kw: f64,
    #[serde(default = "default_voltage")]
    voltage_v: f64,
    #[serde(default = "default_pf")]
    power_factor: f64,
    #[serde(default)]
    theft_fraction: f64,
    #[serde(default)]
    theft_from_s: f64,
    #[serde(default = "one")]
    register_scale: f64,
    #[serde(default)]
    stopped: bool,
    #[serde(default)]
    miss_reads_pct: f64,
    #[serde(default)]
    pv_kw: f64,
    voltage_l1_v: Option<f64>,
    voltage_l2_v: Option<f64>,
    voltage_l3_v: Option<f64>,
    sag: Option<f64>,
    swell: Option<f64>,
    phase_loss: Option<Phase>,
    unbalance: Option<[f64; 3]>,
    #[serde(default)]
    reversed: bool,
    #[serde(default)]
    voltage_lost: bool,
    #[serde(default)]
    fault: Fault,
}

impl From<MeterFile> for SimMeterConfig {
    fn from(f: MeterFile) -> Self {
        SimMeterConfig {
            id: f.id.unwrap_or_else(|| match &f.address {
                Some(a) => format!("{}:{a}", f.bus),
                None => format!("{}:{}", f.bus, f.unit),
            }),
            bus: f.bus,
            unit: f.unit,
            address: f.address,
            model: f.model,
            role: f.role,
            multiplier: f.multiplier,
            profile: f.profile,
            seed: f.seed,
            energy_start_kwh: f.energy_start_kwh,
            export: f.export,
            replaced_at_s: f.replaced_at_s,
            replacement_start_kwh: f.replacement_start_kwh,
            conditions: MeterConditions {
                load_kw: f.load_kw,
                voltage_v: f.voltage_v,
                power_factor: f.power_factor,
                theft_fraction: f.theft_fraction,
                theft_from_s: f.theft_from_s,
                register_scale: f.register_scale,
                stopped: f.stopped,
                miss_reads_pct: f.miss_reads_pct,
                pv_kw: f.pv_kw,
                voltage_l1_v: f.voltage_l1_v,
                voltage_l2_v: f.voltage_l2_v,
                voltage_l3_v: f.voltage_l3_v,
                sag: f.sag,
                swell: f.swell,
                phase_loss: f.phase_loss,
                unbalance: f.unbalance,
                reversed: f.reversed,
                voltage_lost: f.voltage_lost,
            },
            fault: f.fault,
        }
    }
}

/// `[area]`: the transformer area the supply and customer meters form, and where its truth
/// goes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimAreaConfig {
    /// Name in the truth records.
    #[serde(default = "default_area_id")]
    pub id: String,
    /// Technical loss, kW = `loss_coeff` × (total customer load, kW)².
    #[serde(default)]
    pub loss_coeff: f64,
    /// Technical loss present at any load (the transformer's no-load loss), kW.
    #[serde(default)]
    pub no_load_loss_kw: f64,
    /// JSON-lines file the true energies are appended to (relative to the file's directory).
    pub truth: Option<PathBuf>,
    /// Length of a truth interval, s; intervals are aligned to wall-clock multiples.
    #[serde(default = "default_truth_interval")]
    pub truth_interval_s: u64,
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
    /// DL/T 645: answer from this address (12 digits) instead of the meter's own. "": off.
    pub reply_address: String,
    /// DL/T 645: `FF` bytes appended after the reply (some meters do).
    pub trailing_ff: usize,
    /// DL/T 645: answer block identifiers (`0001FF00`, ...) with the abnormal reply "no such
    /// data item", as meters (and outside stacks) that are read item by item do.
    pub refuse_blocks: bool,
    /// DL/T 645: the meter's clock runs this many seconds ahead of true time (negative:
    /// behind), from when the fault is set; a broadcast time sync (08H) sets it right when it
    /// is within ±300 s, as meters do, and leaves it otherwise.
    pub clock_offset_s: i64,
    /// DL/T 645: run status word 1 (`04000501`, 1997 `C020`): bit 2 clock battery low, bit 3
    /// reading battery low, bit 15 clock fault.
    pub status_word_1: u16,
    /// DL/T 645: the power-down event count (`03110000`).
    pub power_down_count: u32,
    /// DL/T 645: the meter-cover-open event count (`03300D00`).
    pub cover_open_count: u32,
    /// DL/T 645-2007: the password a remote control (1CH, relay) must carry, 8 hex digits,
    /// level first; "" is `02123456` (level 02, password 123456). Any other password gets
    /// the abnormal reply "password error / unauthorised".
    pub relay_password: String,
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
/// `x >= 0`, false for NaN.
fn non_negative(x: f64) -> bool {
    x >= 0.0
}
fn one() -> f64 {
    1.0
}
fn default_area_id() -> String {
    "area".to_string()
}
fn default_truth_interval() -> u64 {
    900
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
        let mut config: SimConfig = toml::from_str(text).map_err(|e: toml::de::Error| {
            let at = e.span().map_or(0, |s| s.start);
            SimError::At(Report::new(source.to_string(), text).problem(at, e.message().trim_end()))
        })?;
        let mut names = std::collections::BTreeSet::new();
        for bus in &mut config.buses {
            if !names.insert(bus.name.clone()) {
                return Err(problem(format!("bus \"{}\" is defined twice", bus.name)));
            }
            match (&bus.link, &bus.listen, bus.protocol) {
                (Some(_), None, SimProtocol::ModbusRtu | SimProtocol::Dlt645) => {}
                (
                    None,
                    Some(_),
                    SimProtocol::ModbusTcp | SimProtocol::ModbusRtuOverTcp | SimProtocol::Dlt645,
                ) => {}
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
                        "bus \"{}\": listen needs protocol = \"modbus-tcp\", \
                         \"modbus-rtu-over-tcp\" or \"dlt645\"",
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
        check_dlt645_meters(&mut config, &problem)?;
        let mut units = std::collections::BTreeSet::new();
        let mut ids = std::collections::BTreeSet::new();
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
            m.conditions
                .check()
                .map_err(|message| problem(format!("{at}: {message}")))?;
            if !(m.multiplier > 0.0 && m.multiplier.is_finite()) {
                return Err(problem(format!("{at}: multiplier must be > 0")));
            }
            if m.replaced_at_s.is_some_and(|s| !non_negative(s)) {
                return Err(problem(format!("{at}: replaced_at_s must be >= 0")));
            }
            if !ids.insert(m.id.clone()) {
                return Err(problem(format!("{at}: id \"{}\" is used twice", m.id)));
            }
        }
        let supplies = config
            .meters
            .iter()
            .filter(|m| m.role == Some(Role::Supply))
            .count();
        match &config.area {
            Some(area) => {
                if supplies != 1 {
                    return Err(problem(format!(
                        "[area]: needs exactly one meter with role = \"supply\", found {supplies}"
                    )));
                }
                if area.truth_interval_s == 0 {
                    return Err(problem("[area]: truth_interval_s must be >= 1".into()));
                }
                if !(area.loss_coeff >= 0.0 && area.no_load_loss_kw >= 0.0) {
                    return Err(problem(
                        "[area]: loss_coeff and no_load_loss_kw must be >= 0".into(),
                    ));
                }
            }
            None => {
                if let Some(m) = config.meters.iter().find(|m| m.role.is_some()) {
                    return Err(problem(format!(
                        "meter {} on bus \"{}\": a role needs an [area] section",
                        m.unit, m.bus
                    )));
                }
            }
        }
        if let Some(area) = &mut config.area
            && let Some(truth) = &area.truth
            && truth.is_relative()
        {
            area.truth = Some(base.join(truth));
        }
        Ok(config)
    }
}

/// Meters on `dlt645` buses: each has a valid, unique 12-digit address, and a unit (the
/// simulator's handle) numbered in file order unless given; `address` is refused elsewhere.
fn check_dlt645_meters(
    config: &mut SimConfig,
    problem: &dyn Fn(String) -> SimError,
) -> Result<(), SimError> {
    let dlt645: std::collections::BTreeSet<String> = config
        .buses
        .iter()
        .filter(|b| b.protocol == SimProtocol::Dlt645)
        .map(|b| b.name.clone())
        .collect();
    let mut addresses = std::collections::BTreeSet::new();
    let mut next_unit: std::collections::BTreeMap<String, u8> = Default::default();
    for m in &mut config.meters {
        match (&m.address, dlt645.contains(&m.bus)) {
            (Some(a), true) => {
                let at = format!("meter {a} on bus \"{}\"", m.bus);
                let parsed = crate::protocol::dlt645::Address::parse(a)
                    .map_err(|e| problem(format!("{at}: {e}")))?;
                if parsed.is_broadcast() || parsed.has_wildcard() {
                    return Err(problem(format!(
                        "{at}: the broadcast and wildcard addresses are not a meter's"
                    )));
                }
                if !addresses.insert((m.bus.clone(), parsed)) {
                    return Err(problem(format!("{at}: address defined twice")));
                }
                let next = next_unit.entry(m.bus.clone()).or_insert(1);
                if m.unit == 0 {
                    m.unit = *next;
                }
                *next = m.unit.max(*next).saturating_add(1);
            }
            (None, true) => {
                return Err(problem(format!(
                    "meter on bus \"{}\": a dlt645 meter needs address = \"12 digits\"",
                    m.bus
                )));
            }
            (Some(_), false) => {
                return Err(problem(format!(
                    "meter {} on bus \"{}\": address is for dlt645 buses; use unit",
                    m.unit, m.bus
                )));
            }
            (None, false) => {}
        }
    }
    Ok(())
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
        assert_eq!(c.meters[0].conditions.voltage_v, 230.0);
        assert_eq!(c.buses[0].bits_per_char(), 10);
    }

    #[test]
    fn dlt645_buses_and_addresses() {
        let bus = "[[bus]]\nname = \"d\"\nlink = \"x\"\nprotocol = \"dlt645\"\nbaud = 2400\n\
                   parity = \"even\"\n";
        let meter = |a: &str| {
            format!("[[meter]]\nbus = \"d\"\naddress = \"{a}\"\nmodel = \"dlt645-2007\"\n")
        };
        let c = SimConfig::parse(
            &format!("{bus}{}{}", meter("000000000001"), meter("000000000002")),
            "s.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.buses[0].protocol, SimProtocol::Dlt645);
        assert_eq!(c.buses[0].bits_per_char(), 11);
        assert_eq!((c.meters[0].unit, c.meters[1].unit), (1, 2));
        assert_eq!(c.meters[1].id, "d:000000000002");
        let error = |text: String| {
            SimConfig::parse(&text, "s.toml", Path::new("."))
                .unwrap_err()
                .to_string()
        };
        let e = error(format!("{bus}{}", meter("12345")));
        assert!(e.contains("12 digits"), "{e}");
        let e = error(format!(
            "{bus}{}{}",
            meter("000000000001"),
            meter("000000000001")
        ));
        assert!(e.contains("address defined twice"), "{e}");
        let e = error(format!(
            "{bus}[[meter]]\nbus = \"d\"\nunit = 1\nmodel = \"m\"\n"
        ));
        assert!(e.contains("needs address"), "{e}");
        let modbus = "[[bus]]\nname = \"d\"\nlink = \"x\"\n";
        let e = error(format!("{modbus}{}", meter("000000000001")));
        assert!(e.contains("address is for dlt645 buses"), "{e}");
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
        assert!(e.starts_with("sim.toml:2:1: unknown field `nam`"), "{e}");
        let e = SimConfig::parse(
            "[[bus]]\nname = \"b\"\nlink = \"x\"\n[[meter]]\nbus = \"c\"\nunit = 1\nmodel = \"m\"\n",
            "sim.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("meter 1 on bus \"c\": no such bus"), "{e}");
    }

    #[test]
    fn area_keys_and_their_checks() {
        let base = "[[bus]]\nname = \"b\"\nlink = \"x\"\n";
        let supply = "[[meter]]\nbus = \"b\"\nunit = 1\nmodel = \"m\"\nrole = \"supply\"\n\
                      multiplier = 60.0\nphase_loss = \"l2\"\nunbalance = [1.0, 0.5, 0.5]\n";
        let area = "[area]\ntruth = \"t.jsonl\"\ntruth_interval_s = 60\nloss_coeff = 0.001\n";
        let c =
            SimConfig::parse(&format!("{base}{area}{supply}"), "s.toml", Path::new("/d")).unwrap();
        let a = c.area.unwrap();
        assert_eq!(a.truth.as_deref(), Some(Path::new("/d/t.jsonl")));
        assert_eq!((a.truth_interval_s, a.id.as_str()), (60, "area"));
        let m = &c.meters[0];
        assert_eq!(
            (m.id.as_str(), m.role, m.multiplier),
            ("b:1", Some(Role::Supply), 60.0)
        );
        assert_eq!(m.conditions.phase_loss, Some(Phase::L2));
        assert_eq!(m.conditions.unbalance, Some([1.0, 0.5, 0.5]));

        let error = |text: String| {
            SimConfig::parse(&text, "s.toml", Path::new("."))
                .unwrap_err()
                .to_string()
        };
        let e = error(format!("{base}{supply}"));
        assert!(e.contains("a role needs an [area] section"), "{e}");
        let e = error(format!("{base}{area}"));
        assert!(
            e.contains("exactly one meter with role = \"supply\""),
            "{e}"
        );
        let e = error(format!("{base}{area}{supply}sag = 1.5\n"));
        assert!(e.contains("meter 1 on bus \"b\": sag"), "{e}");
        let e = error(format!("{base}{area}{supply}theft_fraction = 2.0\n"));
        assert!(e.contains("theft_fraction"), "{e}");
        let e = error(format!("{base}{area}{supply}profile = \"spiky\"\n"));
        assert!(e.contains("spiky"), "{e}");
        let e = error(format!("{base}{area}{supply}bogus = 1\n"));
        assert!(e.contains("bogus"), "{e}");
    }
}
