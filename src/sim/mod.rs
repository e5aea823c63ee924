//! The simulator: meters of the shipped models served over pseudo-terminals (one pty pair per
//! bus, with a link at a configured path) and over Modbus TCP, paced by the wire time of the
//! configured baud rate plus a meter turnaround, with energy that advances with a configured
//! load, faults that can be switched on per meter, and conditions an alarm is made of (sag,
//! swell, phase loss, unbalance, reversed wiring, a stopped register, a silent bus). With an
//! `[area]` section the meters form a transformer area: a supply meter that measures every
//! customer's load plus a technical loss growing with the square of the load, minus PV
//! export, with theft, wrong scales and replacements as knobs, and a truth file with the
//! true energies per interval. Tests, the demo and benchmarks use it; `docs/simulator.md`
//! describes the file.
//!
//! - [`config`]: the TOML file ([`SimConfig`], [`MeterConditions`], [`Fault`]).
//! - `area`: the electrical truth of every meter, integrated exactly; `profile`: load
//!   profiles; `truth`: the truth file ([`TruthRecord`]).
//! - `meter`: one meter's register image; `bus`: who answers what, when;
//!   `pty` / `serve`: the pseudo-terminals and the server loops.
//!
//! In a test (inside a tokio runtime):
//!
//! ```no_run
//! # async fn f(library: &amr_gateway::meter::ModelLibrary) {
//! use amr_gateway::sim::{self, SimConfig};
//! let dir = tempfile::tempdir().unwrap();
//! let config = SimConfig::parse(r#"
//!     [[bus]]
//!     name = "bus1"
//!     link = "ttyBUS1"
//!     [[meter]]
//!     bus = "bus1"
//!     unit = 1
//!     model = "eastron-sdm630"
//! "#, "test", dir.path()).unwrap();
//! let sim = sim::start(config, library).unwrap();
//! let link = sim.link("bus1").unwrap(); // the Modbus link that reaches this bus
//! let timeout = std::time::Duration::from_secs(1);
//! let mut client = amr_gateway::protocol::modbus::ModbusClient::open(&link, timeout).await.unwrap();
//! # }
//! ```

pub mod config;

mod area;
mod bus;
mod dlt645;
mod meter;
mod profile;
mod pty;
mod serve;
mod truth;

#[cfg(test)]
pub(crate) mod fixtures;

pub use config::{
    Fault, MeterConditions, Phase, Profile, Role, SimAreaConfig, SimBusConfig, SimConfig,
    SimMeterConfig, SimParity, SimProtocol,
};
pub use dlt645::SimFreeze;
pub use truth::{TruthRecord, read_truth};

use crate::bus::{self as gateway_bus, BusSettings, Protocol};
use crate::config::{BusConfig, BusProtocol, Parity, SerialSettings};
use crate::meter::ModelLibrary;
use crate::protocol::modbus::{Endpoint, Link};
use crate::protocol::{self, SerialLine};
use area::Area;
use bus::{LineControl, SimBus};
use meter::SimMeter;
use serve::OnDisconnect;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// Why the simulator could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A problem in a simulator file.
    #[error("{file}: {message}")]
    Config { file: String, message: String },
    /// A problem in a simulator file at its position (`FILE:LINE:COL: message`).
    #[error("{0}")]
    At(crate::diagnostic::Problem),
    #[error("meter {unit} on bus \"{bus}\": unknown model \"{model}\"; available: {available}")]
    UnknownModel {
        bus: String,
        unit: u8,
        model: String,
        available: String,
    },
    #[error("no meter {unit} on bus \"{bus}\" in the simulator")]
    NoSuchMeter { bus: String, unit: u8 },
    #[error("no bus \"{bus}\" in the simulator")]
    NoSuchBus { bus: String },
    #[error("meter {unit} on bus \"{bus}\": {message}")]
    Conditions {
        bus: String,
        unit: u8,
        message: String,
    },
    #[error("truth file {}: {source}", path.display())]
    Truth {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bus \"{bus}\": {context}: {source}")]
    Io {
        bus: String,
        context: String,
        source: std::io::Error,
    },
}

/// Where a simulated bus can be reached.
#[derive(Debug, Clone, PartialEq)]
pub enum BusEndpoint {
    /// A pty: the configured link and the slave it points to.
    Pty { link: PathBuf, device: PathBuf },
    /// A TCP listener (Modbus TCP or RTU over TCP), with the actual port.
    Tcp { address: SocketAddr },
}

struct SimInner {
    buses: BTreeMap<String, (Arc<SimBus>, BusEndpoint)>,
    area: Arc<Area>,
    tasks: Vec<AbortHandle>,
}

impl Drop for SimInner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, endpoint) in self.buses.values() {
            if let BusEndpoint::Pty { link, device } = endpoint {
                pty::remove_link(link, device);
            }
        }
    }
}

/// A running simulator. Clones share it; when the last clone is dropped its tasks stop, its
/// ptys close and its links are removed.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<SimInner>,
}

impl SimHandle {
    fn bus(&self, bus: &str) -> Option<&Arc<SimBus>> {
        self.inner.buses.get(bus).map(|(b, _)| b)
    }

    fn with_meter<T>(
        &self,
        bus: &str,
        unit: u8,
        f: impl FnOnce(&mut SimMeter) -> T,
    ) -> Result<T, SimError> {
        let missing = || SimError::NoSuchMeter {
            bus: bus.to_string(),
            unit,
        };
        let b = self.bus(bus).ok_or_else(missing)?;
        let mut meters = b.meters();
        let m = meters.get_mut(&unit).ok_or_else(missing)?;
        Ok(f(m))
    }

    /// The daily freezes DL/T 645-2007 meter `unit` on `bus` recorded so far (its clock's
    /// midnights, China Standard Time), oldest first: the truth its `0506xxxx` answers carry.
    pub fn daily_freezes(&self, bus: &str, unit: u8) -> Result<Vec<SimFreeze>, SimError> {
        self.with_meter(bus, unit, |m| {
            m.daily_freezes.days.iter().cloned().collect()
        })
    }

    /// Replaces the faults of meter `unit` on `bus`; takes effect from its next request.
    pub fn set_fault(&self, bus: &str, unit: u8, fault: Fault) -> Result<(), SimError> {
        self.with_meter(bus, unit, |m| m.set_fault(fault))
    }

    /// DL/T 645: how far the meter's clock is ahead of true time now, seconds.
    pub fn clock_offset_s(&self, bus: &str, unit: u8) -> Result<f64, SimError> {
        self.with_meter(bus, unit, |m| m.clock_offset_ms as f64 / 1000.0)
    }

    /// DL/T 645: the relay state of meter `unit` on `bus` (what remote control set).
    pub fn relay_state(
        &self,
        bus: &str,
        unit: u8,
    ) -> Result<crate::protocol::dlt645::codec::RelayStatus, SimError> {
        self.with_meter(bus, unit, |m| m.relay)
    }

    /// The current faults of meter `unit` on `bus`.
    pub fn fault(&self, bus: &str, unit: u8) -> Result<Fault, SimError> {
        self.with_meter(bus, unit, |m| m.fault.clone())
    }

    /// Changes the load scale (kW) of a meter from now on; energy so far is kept.
    pub fn set_load(&self, bus: &str, unit: u8, load_kw: f64) -> Result<(), SimError> {
        let mut c = self.conditions(bus, unit)?;
        c.load_kw = load_kw.max(0.0);
        self.set_conditions(bus, unit, c)
    }

    /// The scenario and staging knobs of meter `unit` on `bus`.
    pub fn conditions(&self, bus: &str, unit: u8) -> Result<MeterConditions, SimError> {
        let index = self.with_meter(bus, unit, |m| m.index)?;
        Ok(self.inner.area.conditions(index))
    }

    /// Replaces the scenario and staging knobs of meter `unit` on `bus` from now on (energy
    /// so far is kept): theft, sag, phase loss, reversed wiring, a stopped register...
    pub fn set_conditions(
        &self,
        bus: &str,
        unit: u8,
        conditions: MeterConditions,
    ) -> Result<(), SimError> {
        conditions.check().map_err(|message| SimError::Conditions {
            bus: bus.to_string(),
            unit,
            message,
        })?;
        let index = self.with_meter(bus, unit, |m| m.index)?;
        self.inner
            .area
            .set_conditions(index, conditions, Instant::now());
        Ok(())
    }

    /// Makes every meter of `bus` stop answering (`true`, a bus outage) or answer again.
    pub fn set_bus_silent(&self, bus: &str, silent: bool) -> Result<(), SimError> {
        let b = self.bus(bus).ok_or_else(|| SimError::NoSuchBus {
            bus: bus.to_string(),
        })?;
        b.silent.store(silent, Ordering::Relaxed);
        Ok(())
    }

    /// The true energies of the `[area]` from the start until now (cumulative; subtract two
    /// of them for a span); `None` without an `[area]`.
    pub fn area_truth(&self) -> Option<TruthRecord> {
        self.inner.area.truth_until(Instant::now())
    }

    /// The value a meter would report for `quantity` (a contract name) right now; `None` for an
    /// unknown meter or quantity. For comparing with what the gateway read.
    pub fn value_now(&self, bus: &str, unit: u8, quantity: &str) -> Option<f64> {
        self.with_meter(bus, unit, |m| m.value(quantity, Instant::now()))
            .ok()
            .flatten()
    }

    /// Where `bus` can be reached.
    pub fn endpoint(&self, bus: &str) -> Option<&BusEndpoint> {
        self.inner.buses.get(bus).map(|(_, e)| e)
    }

    /// The address a TCP bus listens on (with the actual port when configured as port 0).
    pub fn tcp_address(&self, bus: &str) -> Option<SocketAddr> {
        match self.endpoint(bus)? {
            BusEndpoint::Tcp { address } => Some(*address),
            BusEndpoint::Pty { .. } => None,
        }
    }

    /// A gateway [`BusConfig`] that reaches `bus`: device = the pty link, or address = the
    /// listener; the line settings of the simulated bus; `timeout_ms` = `gateway_timeout_ms`.
    pub fn bus_config(&self, bus: &str) -> Option<BusConfig> {
        let (b, endpoint) = self.inner.buses.get(bus)?;
        let c = &b.config;
        let (device, address) = match endpoint {
            BusEndpoint::Pty { link, .. } => (Some(link.clone()), None),
            BusEndpoint::Tcp { address } => (None, Some(address.to_string())),
        };
        Some(BusConfig {
            name: c.name.clone(),
            protocol: match c.protocol {
                SimProtocol::ModbusRtu => BusProtocol::ModbusRtu,
                SimProtocol::ModbusTcp => BusProtocol::ModbusTcp,
                SimProtocol::ModbusRtuOverTcp => BusProtocol::ModbusRtuOverTcp,
                SimProtocol::Dlt645 => BusProtocol::Dlt645,
            },
            device,
            address,
            serial: SerialSettings {
                baud: c.baud,
                parity: match c.parity {
                    SimParity::None => Parity::None,
                    SimParity::Even => Parity::Even,
                    SimParity::Odd => Parity::Odd,
                },
                data_bits: c.data_bits,
                stop_bits: c.stop_bits,
            },
            timeout_ms: c.gateway_timeout_ms,
            poll_interval_s: 60,
            preamble: crate::protocol::dlt645::codec::DEFAULT_PREAMBLE_LEN,
            line: 0,
        })
    }

    /// The Modbus [`Link`] that reaches `bus`: its pty link or its listener, and the line
    /// settings of the simulated bus.
    pub fn link(&self, bus: &str) -> Option<Link> {
        let (b, endpoint) = self.inner.buses.get(bus)?;
        let c = &b.config;
        let endpoint = match (endpoint, c.protocol) {
            (BusEndpoint::Pty { link, .. }, _) => Endpoint::Serial(link.clone()),
            (BusEndpoint::Tcp { address }, SimProtocol::ModbusRtuOverTcp) => {
                Endpoint::RtuOverTcp(address.to_string())
            }
            (BusEndpoint::Tcp { address }, _) => Endpoint::Tcp(address.to_string()),
        };
        Some(Link {
            endpoint,
            line: SerialLine {
                baud: c.baud,
                parity: match c.parity {
                    SimParity::None => protocol::Parity::None,
                    SimParity::Even => protocol::Parity::Even,
                    SimParity::Odd => protocol::Parity::Odd,
                },
                data_bits: c.data_bits,
                stop_bits: c.stop_bits,
            },
        })
    }

    /// The bus settings of a gateway bus that polls `bus`: [`SimHandle::link`],
    /// `timeout` = `gateway_timeout_ms`, a poll interval of 60 s; a DL/T 645 bus on a pty at
    /// 8N1 (ptys refuse parity).
    pub fn bus_settings(&self, bus: &str) -> Option<BusSettings> {
        let (b, _) = self.inner.buses.get(bus)?;
        let link = self.link(bus)?;
        let dlt645 = b.config.protocol == SimProtocol::Dlt645;
        let mut line = link.line;
        if dlt645 && matches!(link.endpoint, Endpoint::Serial(_)) {
            // A pty refuses parity: the gateway's end runs 8N1 (the simulator paces the wire
            // time of the configured framing).
            line.parity = protocol::Parity::None;
        }
        Some(BusSettings {
            name: b.config.name.clone(),
            protocol: match &link.endpoint {
                _ if dlt645 => Protocol::Dlt645,
                Endpoint::Serial(_) => Protocol::ModbusRtu,
                Endpoint::Tcp(_) => Protocol::ModbusTcp,
                Endpoint::RtuOverTcp(_) => Protocol::ModbusRtuOverTcp,
            },
            endpoint: match link.endpoint {
                Endpoint::Serial(d) => gateway_bus::Endpoint::Serial(d),
                Endpoint::Tcp(a) | Endpoint::RtuOverTcp(a) => gateway_bus::Endpoint::Tcp(a),
            },
            line,
            timeout: std::time::Duration::from_millis(b.config.gateway_timeout_ms),
            poll_interval: std::time::Duration::from_secs(60),
            preamble: 4,
            time_sync: Default::default(),
        })
    }

    /// Requests that reached a meter of `bus` (answered or not).
    pub fn requests(&self, bus: &str) -> u64 {
        self.bus(bus).map_or(0, |b| b.requests())
    }

    /// TCP connections accepted on `bus` so far.
    pub fn connections(&self, bus: &str) -> u64 {
        self.bus(bus)
            .map_or(0, |b| b.connections.load(Ordering::Relaxed))
    }

    /// Closes every open TCP connection of `bus`, as a rebooting serial server would.
    pub fn disconnect_clients(&self, bus: &str) {
        if let Some(b) = self.bus(bus) {
            let _ = b.control.send(LineControl::Disconnect);
        }
    }

    /// Writes `bytes` onto `bus` unasked (noise, or a stray frame), to every open connection of
    /// a TCP bus. Asynchronous: the bytes are on the line a moment later.
    pub fn inject(&self, bus: &str, bytes: &[u8]) {
        if let Some(b) = self.bus(bus) {
            let _ = b.control.send(LineControl::Inject(bytes.to_vec()));
        }
    }

    /// Applies the faults and conditions of `config`'s meters and the `silent` flag of its
    /// buses to the running simulator (SIGHUP). Buses and meters cannot be added or removed at
    /// run time: one not running is an error. Conditions that did not change are left alone.
    pub fn apply(&self, config: &SimConfig) -> Result<(), SimError> {
        for b in &config.buses {
            self.set_bus_silent(&b.name, b.silent)?;
        }
        for m in &config.meters {
            self.with_meter(&m.bus, m.unit, |meter| meter.set_fault(m.fault.clone()))?;
            if self.conditions(&m.bus, m.unit)? != m.conditions {
                self.set_conditions(&m.bus, m.unit, m.conditions.clone())?;
            }
        }
        Ok(())
    }

    /// One line per bus: `bus1: pty /tmp/.. -> /dev/pts/5, units 1,2,3`.
    pub fn describe(&self) -> Vec<String> {
        self.inner
            .buses
            .iter()
            .map(|(name, (b, endpoint))| {
                let units: Vec<String> = b.meters().keys().map(u8::to_string).collect();
                let at = match endpoint {
                    BusEndpoint::Pty { link, device } => {
                        format!("pty {} -> {}", link.display(), device.display())
                    }
                    BusEndpoint::Tcp { address } => {
                        format!("{} {}", b.config.protocol.name(), address)
                    }
                };
                format!("{name}: {at}, units {}", units.join(","))
            })
            .collect()
    }
}

/// Starts the simulator described by `config` with meter models from `library`, spawning its
/// tasks on the current tokio runtime (call it from inside one). Ptys are created and linked,
/// TCP listeners bound, before it returns.
pub fn start(config: SimConfig, library: &ModelLibrary) -> Result<SimHandle, SimError> {
    let now = Instant::now();
    let mut models = Vec::with_capacity(config.meters.len());
    // DL/T 645 meters by bus and address, with their data-identifier models.
    let mut dlt645_meters: BTreeMap<String, BTreeMap<_, _>> = BTreeMap::new();
    for m in &config.meters {
        if let Some(address) = &m.address {
            let model = library
                .get_dlt645(&m.model)
                .ok_or_else(|| SimError::UnknownModel {
                    bus: m.bus.clone(),
                    unit: m.unit,
                    model: m.model.clone(),
                    available: library
                        .dlt645
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            // The area model needs only the phases of a DL/T 645 meter.
            models.push(Arc::new(crate::meter::MeterModel {
                name: model.name.clone(),
                vendor: model.vendor.clone(),
                description: model.description.clone(),
                phases: model.phases,
                max_block: 1,
                max_gap: 0,
                unit_switch_pause_ms: 0,
                inter_frame_pause_ms: 0,
                registers: Vec::new(),
                setup: None,
                source: model.source.clone(),
            }));
            let address =
                crate::protocol::dlt645::Address::parse(address).map_err(|e| SimError::Config {
                    file: "-".into(),
                    message: e.to_string(),
                })?;
            let meter = dlt645::Dlt645Meter {
                unit: m.unit,
                model: Arc::new(model.clone()),
            };
            dlt645_meters
                .entry(m.bus.clone())
                .or_default()
                .insert(address, meter);
            continue;
        }
        let model = library
            .get(&m.model)
            .ok_or_else(|| SimError::UnknownModel {
                bus: m.bus.clone(),
                unit: m.unit,
                model: m.model.clone(),
                available: library.names().join(", "),
            })?;
        models.push(Arc::new(model.clone()));
    }
    let three_phase: Vec<bool> = models.iter().map(|m| m.phases != 1).collect();
    let area = Area::new(
        &config.meters,
        &three_phase,
        config.area.as_ref(),
        now,
        crate::clock::now_ms(),
    )
    .map_err(|source| SimError::Truth {
        path: config
            .area
            .as_ref()
            .and_then(|a| a.truth.clone())
            .unwrap_or_default(),
        source,
    })?;
    let area = Arc::new(area);
    let mut inner = SimInner {
        buses: BTreeMap::new(),
        area: area.clone(),
        tasks: Vec::new(),
    };
    if config.area.as_ref().is_some_and(|a| a.truth.is_some()) {
        // Truth intervals are written on time even when nobody reads.
        let area = area.clone();
        let tick = tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                every.tick().await;
                area.advance(Instant::now());
            }
        });
        inner.tasks.push(tick.abort_handle());
    }
    for bus_config in config.buses {
        let name = bus_config.name.clone();
        let io_error = |context: &str, source: std::io::Error| SimError::Io {
            bus: name.clone(),
            context: context.to_string(),
            source,
        };
        let mut meters = BTreeMap::new();
        for (index, m) in config.meters.iter().enumerate() {
            if m.bus == name {
                let meter = SimMeter::new(
                    models[index].clone(),
                    m.fault.clone(),
                    index,
                    area.clone(),
                    m.seed ^ (u64::from(m.unit) << 32),
                );
                meters.insert(m.unit, meter);
            }
        }
        let bus = Arc::new(SimBus::new(bus_config.clone(), meters));
        let dlt645_line = (bus_config.protocol == SimProtocol::Dlt645)
            .then(|| Arc::new(dlt645_meters.remove(&name).unwrap_or_default()));
        let endpoint = if let Some(link) = &bus_config.link {
            let pty = pty::Pty::open().map_err(|e| io_error("cannot open a pty", e))?;
            pty::create_link(link, &pty.slave_path)
                .map_err(|e| io_error(&format!("cannot create link {}", link.display()), e))?;
            let endpoint = BusEndpoint::Pty {
                link: link.clone(),
                device: pty.slave_path.clone(),
            };
            // Registered before spawning, so the link is removed even if a later bus fails.
            inner
                .buses
                .insert(name.clone(), (bus.clone(), endpoint.clone()));
            let master = pty::PtyMaster::new(pty.master)
                .map_err(|e| io_error("cannot register the pty with tokio", e))?;
            let slave = pty.slave;
            let control = bus.control.subscribe();
            let task_bus = bus.clone();
            let own = bus_config.line_settings();
            let task = tokio::spawn(async move {
                // Kept open while the line is served; the gateway's settings are read on it.
                let slave = std::sync::Arc::new(slave);
                let watched = slave.clone();
                let line_matches = Box::new(move || {
                    use std::os::fd::AsRawFd;
                    pty::LineSettings::of(watched.as_raw_fd()).is_ok_and(|l| l.reaches(&own))
                });
                let (reader, writer) = tokio::io::split(master);
                let _ = match dlt645_line {
                    Some(meters) => {
                        dlt645::serve_line(
                            task_bus,
                            meters,
                            reader,
                            writer,
                            control,
                            false,
                            Some(line_matches),
                        )
                        .await
                    }
                    None => {
                        serve::serve_rtu_line(
                            task_bus,
                            reader,
                            writer,
                            control,
                            OnDisconnect::Ignore,
                            Some(line_matches),
                        )
                        .await
                    }
                };
                drop(slave);
            });
            inner.tasks.push(task.abort_handle());
            endpoint
        } else {
            let listen = bus_config.listen.as_deref().unwrap_or("127.0.0.1:0");
            let listener = std::net::TcpListener::bind(listen)
                .map_err(|e| io_error(&format!("cannot listen on {listen}"), e))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| io_error("set_nonblocking", e))?;
            let address = listener
                .local_addr()
                .map_err(|e| io_error("local_addr", e))?;
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| io_error("cannot register the listener with tokio", e))?;
            let rtu = bus_config.protocol == SimProtocol::ModbusRtuOverTcp;
            let task = match dlt645_line {
                Some(meters) => tokio::spawn(dlt645::serve_listener(bus.clone(), meters, listener)),
                None => tokio::spawn(serve::serve_listener(bus.clone(), listener, rtu)),
            };
            inner.tasks.push(task.abort_handle());
            BusEndpoint::Tcp { address }
        };
        inner.buses.insert(name, (bus, endpoint));
    }
    Ok(SimHandle {
        inner: Arc::new(inner),
    })
}

/// `amr-gateway simulate --config FILE`: starts the simulator of `path` with the built-in
/// models, prints one line per bus, re-applies the file's faults, conditions and silent buses
/// on SIGHUP, and runs
/// until `shutdown` turns true (or its sender is dropped).
pub async fn run_from_file(path: &Path, shutdown: watch::Receiver<bool>) -> Result<(), SimError> {
    run_with_library(path, &ModelLibrary::builtin(), shutdown).await
}

/// [`run_from_file`] with models from `library` (a configuration's own, or a test's).
pub async fn run_with_library(
    path: &Path,
    library: &ModelLibrary,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SimError> {
    let config = SimConfig::load(path)?;
    let sim = start(config, library)?;
    for line in sim.describe() {
        println!("{line}");
    }
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| SimError::Io {
            bus: "-".into(),
            context: "cannot install the SIGHUP handler".into(),
            source: e,
        })?;
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = hangup.recv() => {
                match SimConfig::load(path).and_then(|c| sim.apply(&c)) {
                    Ok(()) => println!("{}: faults and conditions reloaded", path.display()),
                    Err(e) => eprintln!("{e}"),
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
