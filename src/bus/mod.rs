//! Buses: one task per bus owns its serial port or TCP endpoint and polls its meters one
//! transaction at a time, each meter on its own interval; meter health and offline backoff.
//!
//! Dead meters are probed with growing intervals and, through the bus's [`ProbeBudget`], cost
//! it at most a bounded share of its time. A meter's blocks are read energy first (the line
//! loss needs energy; instantaneous values can wait for the next poll).
//!
//! A bus task never waits for the store or the broker: it hands readings to the store writer
//! over a channel and goes on polling.
//!
//! The bus is protocol-agnostic; a protocol reaches it through the [`Driver`] interface:
//!
//! - `poller`: the scheduler, once for every protocol — which meter is due, health, offline
//!   backoff, the probe budget, re-opening the link, "more than an interval behind", and the
//!   events ([`BusEvent`]) with readings, meter states and what was learned;
//! - `driver`: the interface ([`Driver`], [`Poll`], [`Learned`]) and the factory
//!   [`driver_for`] that picks a bus's driver by its [`Protocol`];
//! - `modbus`: the Modbus RTU / TCP / RTU-over-TCP driver — block planning, energy first,
//!   learning block limits and missing registers, the transaction deadline rule;
//! - `dlt645`: the DL/T 645 (2007 and 1997) driver — data-identifier plans with block
//!   identifiers, energy first, learning which blocks a meter refuses, the same deadline rule;
//! - `time_sync`: the meters' clocks — the daily broadcast sync's schedule and guards;
//! - `health`, `budget`, `lock`: meter health, the probe budget, exclusive use of a device.
//!
//! To add a protocol: write its codec and transport under `crate::protocol`, implement
//! [`Driver`] over them in a file of its own here (a plan per meter, `poll`, `probe`, mapping
//! its errors to [`PollOutcome`], reporting [`Learned`] facts), and add one line to
//! [`driver_for`]. The scheduler does not change.
//!
//! The bus imports only the leaf types (`model`, `clock`), `protocol`, `meter` and
//! `shutdown`; its settings ([`BusSettings`], [`MeterSettings`]) are built by the config
//! loader.

mod budget;
pub mod dlt645;
pub mod driver;
mod health;
mod lock;
pub mod modbus;
mod on_demand;
mod poller;
pub mod time_sync;

pub use crate::model::{BusEvent, Learned};
pub use crate::model::{HealthChange, MeterHealth, MeterStatus, PollOutcome};
pub use budget::ProbeBudget;
pub use dlt645::Dlt645Driver;
pub use driver::{Driver, DriverFuture, FrozenDay, Poll, ReadFailure, driver_for};
pub use health::OfflinePolicy;
pub use lock::{DeviceLock, DeviceLockError};
pub use modbus::{ModbusDriver, plan_meter};
pub use on_demand::{MeterRead, ReadRequest, RelayAction, RelayOrder, RelayOutcome};
pub use poller::{run_bus, run_bus_serving};
pub use time_sync::TimeSync;

use crate::meter::{Dlt645Model, MeterModel};
use crate::model::MeterId;
use crate::protocol::SerialLine;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The protocol a bus speaks: picks its [`Driver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    ModbusRtu,
    ModbusTcp,
    ModbusRtuOverTcp,
    Dlt645,
}

impl Protocol {
    /// As written in the configuration (`modbus-rtu`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::ModbusRtu => "modbus-rtu",
            Protocol::ModbusTcp => "modbus-tcp",
            Protocol::ModbusRtuOverTcp => "modbus-rtu-over-tcp",
            Protocol::Dlt645 => "dlt645",
        }
    }
}

/// Where a bus's link goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A serial device (`/dev/ttyUSB0`).
    Serial(PathBuf),
    /// `host:port` of a TCP meter, gateway or serial server.
    Tcp(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Serial(device) => write!(f, "{}", device.display()),
            Endpoint::Tcp(address) => f.write_str(address),
        }
    }
}

/// What a bus task needs to know about its bus.
#[derive(Debug, Clone, PartialEq)]
pub struct BusSettings {
    /// `[[bus]] name`, in every log line about the bus.
    pub name: String,
    pub protocol: Protocol,
    pub endpoint: Endpoint,
    /// The serial line (on TCP: the line behind the serial server or gateway).
    pub line: SerialLine,
    /// The meter's allowance for one transaction; the driver adds the transaction's wire time.
    pub timeout: Duration,
    /// How often a meter is polled unless it has its own interval.
    pub poll_interval: Duration,
    /// DL/T 645: `FE` wake-up bytes sent before each request (`[[bus]] preamble`, default 4).
    /// Other protocols ignore it.
    pub preamble: usize,
    /// The daily broadcast time sync and how often the meters' own items (clock, status word,
    /// event counters) are read; drivers without such items ignore it.
    pub time_sync: TimeSync,
}

/// What a bus task needs to know about one meter on it.
#[derive(Debug, Clone)]
pub struct MeterSettings {
    pub id: MeterId,
    /// Modbus unit id.
    pub unit: Option<u8>,
    /// DL/T 645 address (12 digits).
    pub address: Option<String>,
    pub model: ModelOf,
    /// The CT and PT ratios the meter sits behind: every quantity is reported primary-side
    /// ([`crate::model::Ratios::primary`]).
    pub ratios: crate::model::Ratios,
    /// The meter's own poll interval (else the bus's).
    pub poll_interval: Option<Duration>,
}

impl MeterSettings {
    /// A meter at Modbus `unit` with `model`, direct-connected, on the bus's interval.
    pub fn modbus(id: impl Into<MeterId>, unit: u8, model: Arc<MeterModel>) -> MeterSettings {
        MeterSettings {
            id: id.into(),
            unit: Some(unit),
            address: None,
            model: ModelOf::Modbus(model),
            ratios: crate::model::Ratios::DIRECT,
            poll_interval: None,
        }
    }

    /// A DL/T 645 meter at `address` (12 digits) with `model`, direct-connected, on the bus's
    /// interval.
    pub fn dlt645(
        id: impl Into<MeterId>,
        address: impl Into<String>,
        model: Arc<Dlt645Model>,
    ) -> MeterSettings {
        MeterSettings {
            id: id.into(),
            unit: None,
            address: Some(address.into()),
            model: ModelOf::Dlt645(model),
            ratios: crate::model::Ratios::DIRECT,
            poll_interval: None,
        }
    }
}

/// A meter's model, in the kind its bus's protocol reads: a Modbus register map or a DL/T 645
/// data-identifier map.
#[derive(Debug, Clone)]
pub enum ModelOf {
    Modbus(Arc<MeterModel>),
    Dlt645(Arc<Dlt645Model>),
}

impl ModelOf {
    /// The model's name (`[[meter]] model`).
    pub fn name(&self) -> &str {
        match self {
            ModelOf::Modbus(m) => &m.name,
            ModelOf::Dlt645(m) => &m.name,
        }
    }

    /// The register map, for a Modbus meter.
    pub fn modbus(&self) -> Option<&Arc<MeterModel>> {
        match self {
            ModelOf::Modbus(m) => Some(m),
            ModelOf::Dlt645(_) => None,
        }
    }

    /// The data-identifier map, for a DL/T 645 meter.
    pub fn dlt645(&self) -> Option<&Arc<Dlt645Model>> {
        match self {
            ModelOf::Dlt645(m) => Some(m),
            ModelOf::Modbus(_) => None,
        }
    }
}
