//! The gateway's configuration: the TOML schema, its validation, and errors that point at
//! `FILE:LINE:COL`.
//!
//! The file is parsed into a spanned TOML tree and walked by hand, so that *every* problem in
//! a file is reported at once, each with its position, instead of stopping at the first one.
//!
//! - [`crate::diagnostic`] (not part of this module): positions, typed key readers, unknown keys
//!   with "did you mean".
//! - `sections`: one reader per section (`[gateway]`, `[[bus]]`, ...), defaults and ranges.
//! - `analytics`: `[loss]`, `[alarms]` / `[alarms.<kind>]` and `[voltage_quality]`, checked key
//!   by key and deserialized into the engines' settings structs.
//! - `checks`: checks across sections (a meter's bus and model, unit clashes, areas).
//! - `for_bus`: the settings of the buses and their protocols ([`Config::bus_settings`]).
//! - `load`: the entry points, [`load`], [`load_str`] and [`load_str_with`].
//!
//! `config/README.md` is the reference of every key; `config/example.toml` a field example.

mod analytics;
mod checks;
mod commands;
mod for_bus;
mod for_pipeline;
mod load;
mod relay_secrets;
mod sections;
#[cfg(test)]
mod tests;

pub use analytics::SEVERITIES;
pub use for_pipeline::{area_spec, topology};
pub use load::{load, load_str, load_str_with};
pub use relay_secrets::{RelayCredentials, RelaySecrets};
pub use sections::{STANDARD_BAUD_RATES, baud_problem, bits_problem};

use std::path::PathBuf;

/// One problem found in a configuration file, with its position (1-based line and column);
/// `Display` writes it `FILE:LINE:COL: message`.
pub type ConfigProblem = crate::diagnostic::Problem;

/// Every problem found in a file; `Display` prints one `FILE:LINE:COL: message` per line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    pub gateway: GatewayConfig,
    pub mqtt: MqttConfig,
    pub store: StoreConfig,
    /// `[health]`: the retained fleet-health message.
    pub health: HealthConfig,
    pub buses: Vec<BusConfig>,
    pub meters: Vec<MeterConfig>,
    pub areas: Vec<AreaConfig>,
    /// `[loss]`: settings of the line-loss engine common to all areas (its stopped-register
    /// rule from `[alarms.meter_stopped]`).
    pub loss: crate::analytics::loss::LossSettings,
    /// `[alarms]` and `[alarms.<kind>]`: every alarm kind's switch, severity, holds and limits.
    pub alarms: crate::analytics::alarms::AlarmSettings,
    /// `[voltage_quality]`: gaps and outage share of the daily voltage statistics (its band from
    /// `[alarms.voltage]`).
    pub voltage_quality: crate::analytics::voltage::VoltageQualitySettings,
    /// `[freeze]`: how far a freeze may be extrapolated (its zone from `[gateway] timezone`, its
    /// decision time from `[collection] report_at`, filled in by
    /// [`Config::pipeline_settings`]).
    pub freeze: crate::analytics::freeze::FreezeSettings,
    /// `[curve]`: load curves (their zone from `[gateway] timezone`).
    pub curve: crate::analytics::curve::CurveSettings,
    /// `[collection]`: when the day's collection report goes out.
    pub collection: crate::analytics::collection::CollectionSettings,
    /// `[time_sync]`: the daily broadcast time sync of DL/T 645 buses and how often the
    /// meters' clocks are read.
    pub time_sync: TimeSyncConfig,
    /// The meter models available to this configuration (built-in plus `models_dir`).
    pub models: crate::meter::ModelLibrary,
    /// `[[command_key]]` and `[commands]`: the keys signed commands are checked against.
    pub commands: crate::uplink::command::CommandPolicy,
    /// `[commands] relay_secrets_file`: the meters' relay passwords and operator codes.
    pub relay_secrets: RelaySecrets,
    /// What is valid but should change (an old key still accepted, naming its replacement),
    /// sorted by position: `check-config` prints them, `run` logs them.
    pub warnings: Vec<ConfigProblem>,
}

/// `[time_sync]`
#[derive(Debug, Clone, PartialEq)]
pub struct TimeSyncConfig {
    /// `at = "HH:MM"`: local time of the daily broadcast time sync, minutes after midnight
    /// (default 03:07); `None` for `at = "off"`.
    pub at_minute: Option<u16>,
    /// `gateway_clock`: how the gateway knows its own clock is right before it sends a sync.
    pub gateway_clock: GatewayClock,
    /// `read_interval_s`: how often each meter's clock, status word and event counters are
    /// read (default 900).
    pub read_interval_s: u64,
}

impl Default for TimeSyncConfig {
    fn default() -> Self {
        TimeSyncConfig {
            at_minute: Some(crate::bus::time_sync::DEFAULT_AT_MINUTE),
            gateway_clock: GatewayClock::Systemd,
            read_interval_s: crate::bus::time_sync::DEFAULT_ITEMS_INTERVAL.as_secs(),
        }
    }
}

/// `[time_sync] gateway_clock`: whether the gateway's clock may be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayClock {
    /// `"systemd"` (default): trusted while systemd-timesyncd says the clock is synchronised
    /// (`/run/systemd/timesync/synchronized` exists).
    Systemd,
    /// `"trusted"`: always (a clock kept right by other means: GPS, chrony without timesyncd).
    Trusted,
}

/// `[gateway]`
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Used in every MQTT topic: `{prefix}/{id}/...`.
    pub id: String,
    /// Where the SQLite store lives.
    pub data_dir: PathBuf,
    /// Extra meter model files (`*.toml`), added to the built-in library; same name overrides.
    pub models_dir: Option<PathBuf>,
    /// `error`, `warn`, `info`, `debug`, `trace` (default `info`).
    pub log_level: crate::logging::LogLevel,
    /// `timezone`: the IANA zone whose midnights start the gateway's days and months (freezes,
    /// voltage-quality days, collection statistics, daily loss). Default: the system's zone
    /// (`TZ`, else `/etc/localtime`).
    pub timezone: crate::clock::LocalTime,
    /// `log_format`: `plain` or `json` lines; `AMR_LOG_FORMAT` overrides it. `None`: plain.
    pub log_format: Option<crate::logging::LogFormat>,
    /// `require_synced_clock`: the clock counts as sane only once it is synchronised (NTP),
    /// not merely later than the build date (default false).
    pub require_synced_clock: bool,
}

/// `[health]` (optional section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Seconds between two retained `health` messages (default 60; 0: none).
    pub interval_s: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { interval_s: 60 }
    }
}

/// `[mqtt]`: the uplink's own settings type.
pub type MqttConfig = crate::uplink::MqttSettings;

/// `[store]` (optional section; all keys have defaults): the store's own settings type.
pub type StoreConfig = crate::store::StoreSettings;

/// Wire protocol of a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusProtocol {
    ModbusRtu,
    ModbusTcp,
    ModbusRtuOverTcp,
    Dlt645,
}

impl BusProtocol {
    /// Every protocol, in the order messages list them.
    pub const ALL: [BusProtocol; 4] = [
        BusProtocol::ModbusRtu,
        BusProtocol::ModbusTcp,
        BusProtocol::ModbusRtuOverTcp,
        BusProtocol::Dlt645,
    ];

    /// The protocol written `name` in the file (`"modbus-rtu"`, ...).
    pub fn from_name(name: &str) -> Option<BusProtocol> {
        BusProtocol::ALL.into_iter().find(|p| p.name() == name)
    }

    /// True for the Modbus protocols, whose meters have a `unit` id (DL/T 645 meters have an
    /// `address`).
    pub fn is_modbus(self) -> bool {
        self != BusProtocol::Dlt645
    }

    pub fn name(self) -> &'static str {
        match self {
            BusProtocol::ModbusRtu => "modbus-rtu",
            BusProtocol::ModbusTcp => "modbus-tcp",
            BusProtocol::ModbusRtuOverTcp => "modbus-rtu-over-tcp",
            BusProtocol::Dlt645 => "dlt645",
        }
    }
    /// Whether this build can poll a bus of this protocol: the bus's driver factory says
    /// ([`crate::bus::Protocol::has_driver`]). `check-config` refuses the others.
    pub fn has_driver(self) -> bool {
        crate::bus::Protocol::from(self).has_driver()
    }

    /// True when the bus is a TCP endpoint (`address`) rather than a serial `device`.
    pub fn is_tcp(self) -> bool {
        matches!(self, BusProtocol::ModbusTcp | BusProtocol::ModbusRtuOverTcp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    /// As written in the file: `"none"`, `"even"`, `"odd"`.
    pub fn name(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}

/// Serial line settings (for serial buses, and for wire-time pacing of RTU over TCP).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SerialSettings {
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl SerialSettings {
    /// 9600 8N1, the default of Modbus buses.
    pub const MODBUS_DEFAULT: SerialSettings = SerialSettings {
        baud: 9600,
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
    };

    /// 2400 8E1, the default of DL/T 645-2007 buses.
    pub const DLT645_DEFAULT: SerialSettings = SerialSettings {
        baud: 2400,
        parity: Parity::Even,
        data_bits: 8,
        stop_bits: 1,
    };

    /// Bits on the wire per character: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + self.data_bits as u32 + u32::from(self.parity != Parity::None) + self.stop_bits as u32
    }
}

/// `[[bus]]`
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub name: String,
    pub protocol: BusProtocol,
    /// Serial device (serial buses).
    pub device: Option<PathBuf>,
    /// `host:port` (TCP buses).
    pub address: Option<String>,
    /// Defaults 9600 8N1 (DL/T 645: 2400 8E1).
    pub serial: SerialSettings,
    /// Reply deadline per transaction (default 1000 ms; DL/T 645: the line's
    /// [`crate::protocol::dlt645::Line::default_timeout`], 1200 ms at 2400 8E1).
    pub timeout_ms: u64,
    /// Default poll interval of the bus's meters (default 60 s).
    pub poll_interval_s: u64,
    /// DL/T 645: `FE` wake-up bytes before each request (default 4).
    pub preamble: usize,
    /// Line number of the `[[bus]]` header, for messages.
    pub line: usize,
}

/// `[[meter]]`
#[derive(Debug, Clone)]
pub struct MeterConfig {
    pub id: String,
    pub bus: String,
    /// Modbus unit id (1..=247).
    pub unit: Option<u8>,
    /// DL/T 645 address, 12 digits.
    pub address: Option<String>,
    /// Model name, as in `protocols/*.toml` (`[model] name`).
    pub model: String,
    /// CT ratio × PT ratio (default 1): `ratios.multiplier()`.
    pub multiplier: f64,
    /// `ct_ratio` and `pt_ratio` (a `multiplier` alone: CT ratio = multiplier, PT ratio 1).
    pub ratios: crate::model::Ratios,
    /// `"a"`, `"b"`, `"c"` or `"abc"` (default from the model).
    pub phase: Option<crate::model::Phase>,
    /// Overrides the bus's poll interval for this meter.
    pub poll_interval_s: Option<u64>,
    /// The meter only ever imports: export energy on it raises `reverse_energy` (default false).
    pub consumption_only: bool,
    /// Rated power, primary kW, for `running_fast` (default: derived from the model's phases).
    pub rated_kw: Option<f64>,
    /// Line number of the `[[meter]]` header, for messages.
    pub line: usize,
}

/// `[[area]]`
#[derive(Debug, Clone)]
pub struct AreaConfig {
    pub id: String,
    pub supply: Vec<String>,
    pub customers: Vec<String>,
    /// Default 900.
    pub loss_interval_s: u64,
    /// Default 10.
    pub high_loss_pct: f64,
    /// Default -1.
    pub negative_loss_pct: f64,
    /// The transformer's rating, kVA, for `overload` (default: `[alarms.overload] rated_kva`).
    pub rated_kva: Option<f64>,
    pub line: usize,
}

impl Config {
    /// The meters on bus `bus`, in file order (the order the bus polls them).
    pub fn meters_on(&self, bus: &str) -> impl Iterator<Item = &MeterConfig> {
        self.meters.iter().filter(move |m| m.bus == bus)
    }
    pub fn area(&self, id: &str) -> Option<&AreaConfig> {
        self.areas.iter().find(|a| a.id == id)
    }
    pub fn meter(&self, id: &str) -> Option<&MeterConfig> {
        self.meters.iter().find(|m| m.id == id)
    }
    pub fn bus(&self, name: &str) -> Option<&BusConfig> {
        self.buses.iter().find(|b| b.name == name)
    }
    /// The store's database file.
    pub fn db_path(&self) -> PathBuf {
        self.gateway.data_dir.join("amr-gateway.db")
    }
}
