//! The protocol-driver interface: everything about polling a meter that differs per protocol.
//!
//! A [`Driver`] owns a bus's link and what it knows about each meter on it: how a poll is
//! planned, how it runs over the link within each transaction's deadline, how a meter's
//! refusal is told from a dead meter (the [`PollOutcome`] of a [`Poll`]), how an offline meter
//! is probed, what was learned about a meter (reported as [`Learned`] facts) and the pause a
//! meter needs when the bus turns to it. The bus's scheduler (`poller`) does the rest, once for
//! every protocol: when each meter is due, its health, backoff, the probe budget, re-opening a
//! broken link, and reporting.
//!
//! Adding a protocol: implement [`Driver`] in a file of its own under `src/bus/` (over the
//! protocol's codec and transport in `crate::protocol`), and add its line to [`driver_for`].

use super::dlt645::Dlt645Driver;
use super::health::OfflinePolicy;
use super::modbus::ModbusDriver;
use super::on_demand::{RelayOrder, RelayOutcome};
use super::{BusSettings, MeterSettings, Protocol};
use crate::model::{Learned, MeterId, MeterItems, PollOutcome, Reading};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The future a [`Driver`] returns: boxed, so that the scheduler holds any driver as a
/// `Box<dyn Driver>`.
pub type DriverFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One protocol on one bus. Meters are named by their index in the `meters` the driver was
/// made with (the bus's configuration order).
pub trait Driver: Send {
    /// Opens the link (serial port, TCP connection). The scheduler retries with backoff until
    /// it succeeds, and polls nothing meanwhile.
    fn open(&mut self) -> DriverFuture<'_, Result<(), String>>;

    /// Drops the link after a poll reported [`Poll::link_broken`]; the next [`Driver::open`]
    /// opens it anew.
    fn close(&mut self);

    /// Reads every quantity of `meter` once, energy first, learning on the way what the meter
    /// accepts. `presumed_alive`: the meter answered its last poll (or was never polled), so
    /// silence on a large request is worth one small request to tell a refusal from a dead
    /// meter.
    fn poll(&mut self, meter: usize, presumed_alive: bool) -> DriverFuture<'_, Poll>;

    /// The smallest request that proves an offline `meter` alive. The reading is not kept:
    /// an answered probe is followed by a full poll at once.
    fn probe(&mut self, meter: usize) -> DriverFuture<'_, Poll>;

    /// The pause the bus makes before talking to `meter` after talking to `previous` (some
    /// meters need a quiet line after another address was talked to).
    fn switch_pause(&self, previous: Option<usize>, meter: usize) -> Duration;

    /// Reads what `meter` says about itself — its clock, status word and event counters —
    /// as [`MeterItems`] (the scheduler reads them every `[time_sync] read_interval_s` and
    /// after a time sync). `None`: the protocol has no such items (the default) or the meter
    /// gave none.
    fn read_items(&mut self, _meter: usize) -> DriverFuture<'_, Option<MeterItems>> {
        Box::pin(async { None })
    }

    /// Sends a broadcast time sync carrying the time `now_ms` to every meter of the bus (no
    /// meter replies). The scheduler decides when ([`super::time_sync`]). The default: the
    /// protocol has none.
    fn time_sync(&mut self, _now_ms: i64) -> DriverFuture<'_, Result<(), String>> {
        Box::pin(async { Err("this bus's protocol has no broadcast time sync".to_string()) })
    }

    /// The daily freezes `meter` itself recorded (DL/T 645-2007 日冻结) that are due at
    /// `now_ms`: once after each local midnight the last one, and after a silence every one
    /// missed since the last read (up to the meter's history), oldest first. The scheduler
    /// asks after every answered poll; the driver decides from `now_ms` whether it is time.
    /// The default: the protocol keeps no freezes.
    fn read_freezes(&mut self, _meter: usize, _now_ms: i64) -> DriverFuture<'_, Vec<FrozenDay>> {
        Box::pin(async { Vec::new() })
    }

    /// Gives `meter` the relay `order` (trip, close, alarm, keep power) and reads back the
    /// relay's state; `now_ms` dates the order's validity. The default: the protocol has no
    /// remote control.
    fn relay(
        &mut self,
        _meter: usize,
        _order: &RelayOrder,
        _now_ms: i64,
    ) -> DriverFuture<'_, Result<RelayOutcome, String>> {
        Box::pin(async { Err("relay control needs a DL/T 645 meter".to_string()) })
    }
}

/// A daily freeze read from a meter's own frozen data: its time (the meter's clock read in
/// the bus's zone, UTC ms) and its energy registers, primary-side, by quantity name.
#[derive(Debug, Clone, PartialEq)]
pub struct FrozenDay {
    pub ts_ms: i64,
    pub values: std::collections::BTreeMap<String, f64>,
}

/// A request of a poll that failed for good, in the words of the protocol: what was read
/// (`registers 0..79 (function 04)`) and why it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadFailure {
    pub what: String,
    pub error: String,
}

/// How one poll (or probe) of a meter ended.
#[derive(Debug, Clone)]
pub struct Poll {
    pub outcome: PollOutcome,
    /// The values read, when any request answered (primary-side, stamped when the meter
    /// sampled its energy).
    pub reading: Option<Reading>,
    /// The first error, as the meter's health keeps it (`last_error`).
    pub error: Option<String>,
    /// Every request that failed for good, in order (the field tools list them).
    pub failures: Vec<ReadFailure>,
    /// Requests sent.
    pub requests: usize,
    pub latency: Duration,
    /// The link must be re-opened before the next poll.
    pub link_broken: bool,
    /// What this poll taught about the meter.
    pub learned: Vec<Learned>,
}

impl Poll {
    /// A poll that failed with `outcome`; the failure is also its error.
    pub fn failed(outcome: PollOutcome, failure: ReadFailure, error: String) -> Poll {
        Poll {
            outcome,
            reading: None,
            error: Some(error),
            failures: vec![failure],
            requests: 0,
            latency: Duration::ZERO,
            link_broken: false,
            learned: Vec::new(),
        }
    }
}

impl Protocol {
    /// Whether this build has a driver for the protocol ([`driver_for`] opens one): the
    /// configuration check refuses a bus of any other, at its line, rather than let `run` start
    /// and read nothing from it.
    pub fn has_driver(self) -> bool {
        match self {
            Protocol::ModbusRtu | Protocol::ModbusTcp | Protocol::ModbusRtuOverTcp => true,
            Protocol::Dlt645 => true,
        }
    }
}

/// The driver of `bus`'s protocol for `meters`, starting from what was `learned` about them
/// before. One line per protocol.
pub fn driver_for(
    bus: &BusSettings,
    meters: &[MeterSettings],
    learned: &[(MeterId, Learned)],
    policy: &OfflinePolicy,
) -> Result<Box<dyn Driver>, String> {
    match bus.protocol {
        Protocol::ModbusRtu | Protocol::ModbusTcp | Protocol::ModbusRtuOverTcp => {
            Ok(Box::new(ModbusDriver::new(bus, meters, learned, policy)?))
        }
        Protocol::Dlt645 => Ok(Box::new(Dlt645Driver::new(bus, meters, learned, policy)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Endpoint, RelayAction};
    use crate::protocol::SerialLine;

    #[tokio::test]
    async fn a_modbus_bus_has_no_relay_control() {
        let bus = BusSettings {
            name: "b".into(),
            protocol: Protocol::ModbusRtu,
            endpoint: Endpoint::Serial("/dev/ttyS9".into()),
            line: SerialLine::MODBUS_DEFAULT,
            timeout: Duration::from_millis(300),
            poll_interval: Duration::from_secs(60),
            preamble: 4,
            time_sync: Default::default(),
        };
        let mut driver = driver_for(&bus, &[], &[], &OfflinePolicy::default()).unwrap();
        let order = RelayOrder {
            action: RelayAction::Trip,
            password: [2, 0x56, 0x34, 0x12],
            operator: [0; 4],
        };
        let e = driver.relay(0, &order, 0).await.unwrap_err();
        assert_eq!(e, "relay control needs a DL/T 645 meter");
        // The order's secrets never show in a debug print.
        assert_eq!(format!("{order:?}"), "RelayOrder { action: Trip, .. }");
    }
}
