//! The settings the buses and their protocols run with, built from `[[bus]]` and `[[meter]]`:
//! the loader is the one place that knows both the file's schema and theirs, so neither `bus`
//! nor `protocol` imports the configuration.

use super::{BusConfig, BusProtocol, Config, MeterConfig, Parity, SerialSettings};
use crate::bus::{self, BusSettings, MeterSettings, ModelOf};
use crate::protocol::{self, SerialLine, modbus};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

impl Config {
    /// Every bus with the meters on it, in file order (the order a bus polls them), as the bus
    /// tasks take them, each meter with its model of the bus's kind (a register map on a Modbus
    /// bus, a data-identifier map on a DL/T 645 bus). A meter whose model is not in the library
    /// is left out (the loader reports it).
    pub fn bus_settings(&self) -> Vec<(BusSettings, Vec<MeterSettings>)> {
        // One copy of each model, shared by all its meters (a thousand meters of one model
        // hold one register map).
        let mut modbus_models = HashMap::new();
        let mut dlt645_models = HashMap::new();
        self.buses
            .iter()
            .map(|b| {
                let meters = self
                    .meters_on(&b.name)
                    .filter_map(|m| {
                        let name = m.model.as_str();
                        let model = match b.protocol {
                            BusProtocol::Dlt645 => ModelOf::Dlt645(shared(
                                &mut dlt645_models,
                                name,
                                self.models.get_dlt645(name)?,
                            )),
                            _ => ModelOf::Modbus(shared(
                                &mut modbus_models,
                                name,
                                self.models.get(name)?,
                            )),
                        };
                        Some(m.settings(model))
                    })
                    .collect();
                let mut settings = b.settings();
                if b.protocol == BusProtocol::Dlt645 {
                    settings.time_sync = self.time_sync_of_buses();
                }
                (settings, meters)
            })
            .collect()
    }

    /// The clock side of a DL/T 645 bus from `[time_sync]` and `[gateway] timezone`.
    pub fn time_sync_of_buses(&self) -> bus::TimeSync {
        let t = &self.time_sync;
        bus::TimeSync {
            at_minute: t.at_minute,
            zone: self.gateway.timezone.clone(),
            clock_synchronised: match t.gateway_clock {
                super::GatewayClock::Systemd => Arc::new(bus::time_sync::timesyncd_synchronised),
                super::GatewayClock::Trusted => Arc::new(|| true),
            },
            items_interval: Some(Duration::from_secs(t.read_interval_s)),
        }
    }
}

impl BusConfig {
    /// What the bus task needs of this bus.
    pub fn settings(&self) -> BusSettings {
        // A DL/T 645 bus with an `address` is behind a transparent serial server.
        let dlt645_tcp = self.protocol == BusProtocol::Dlt645 && self.address.is_some();
        let endpoint = if self.protocol.is_tcp() || dlt645_tcp {
            bus::Endpoint::Tcp(self.address.clone().unwrap_or_default())
        } else {
            bus::Endpoint::Serial(self.device.clone().unwrap_or_default())
        };
        BusSettings {
            name: self.name.clone(),
            protocol: self.protocol.into(),
            endpoint,
            line: self.serial.into(),
            timeout: Duration::from_millis(self.timeout_ms),
            poll_interval: Duration::from_secs(self.poll_interval_s),
            preamble: self.preamble,
            time_sync: Default::default(),
        }
    }

    /// The Modbus link of this bus; `None` on a bus of another protocol.
    pub fn modbus_link(&self) -> Option<modbus::Link> {
        let endpoint = match self.protocol {
            BusProtocol::ModbusRtu => modbus::Endpoint::Serial(self.device.clone()?),
            BusProtocol::ModbusTcp => modbus::Endpoint::Tcp(self.address.clone()?),
            BusProtocol::ModbusRtuOverTcp => modbus::Endpoint::RtuOverTcp(self.address.clone()?),
            BusProtocol::Dlt645 => return None,
        };
        Some(modbus::Link {
            endpoint,
            line: self.serial.into(),
        })
    }
}

impl MeterConfig {
    /// What the bus task needs of this meter, which is a `model`.
    pub fn settings(&self, model: ModelOf) -> MeterSettings {
        MeterSettings {
            id: self.id.clone(),
            unit: self.unit,
            address: self.address.clone(),
            model,
            ratios: self.ratios,
            poll_interval: self.poll_interval_s.map(Duration::from_secs),
        }
    }
}

impl From<BusProtocol> for bus::Protocol {
    fn from(p: BusProtocol) -> bus::Protocol {
        match p {
            BusProtocol::ModbusRtu => bus::Protocol::ModbusRtu,
            BusProtocol::ModbusTcp => bus::Protocol::ModbusTcp,
            BusProtocol::ModbusRtuOverTcp => bus::Protocol::ModbusRtuOverTcp,
            BusProtocol::Dlt645 => bus::Protocol::Dlt645,
        }
    }
}

impl From<Parity> for protocol::Parity {
    fn from(p: Parity) -> protocol::Parity {
        match p {
            Parity::None => protocol::Parity::None,
            Parity::Even => protocol::Parity::Even,
            Parity::Odd => protocol::Parity::Odd,
        }
    }
}

impl From<SerialSettings> for SerialLine {
    fn from(s: SerialSettings) -> SerialLine {
        SerialLine {
            baud: s.baud,
            parity: s.parity.into(),
            data_bits: s.data_bits,
            stop_bits: s.stop_bits,
        }
    }
}

/// The one shared copy of the model `name` in `copies`, made from `model` the first time.
fn shared<'a, M: Clone>(copies: &mut HashMap<&'a str, Arc<M>>, name: &'a str, model: &M) -> Arc<M> {
    copies
        .entry(name)
        .or_insert_with(|| Arc::new(model.clone()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bus_with_its_meters_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
[gateway]
id = "gw"
data_dir = "data"
[mqtt]
host = "127.0.0.1"
[[bus]]
name = "rs485"
protocol = "modbus-rtu"
device = "/dev/ttyS1"
baud = 2400
parity = "even"
timeout_ms = 500
poll_interval_s = 30
[[bus]]
name = "tcp"
protocol = "modbus-rtu-over-tcp"
address = "10.0.0.2:4001"
[[meter]]
id = "b"
bus = "rs485"
unit = 2
model = "eastron-sdm120"
multiplier = 40
poll_interval_s = 10
[[meter]]
id = "a"
bus = "rs485"
unit = 1
model = "eastron-sdm120"
"#;
        let config = crate::config::load_str(text, &dir.path().join("g.toml")).unwrap();
        let buses = config.bus_settings();
        assert_eq!(buses.len(), 2);
        let (rs485, meters) = &buses[0];
        assert_eq!(rs485.protocol, bus::Protocol::ModbusRtu);
        assert_eq!(rs485.endpoint, bus::Endpoint::Serial("/dev/ttyS1".into()));
        assert_eq!(rs485.line.baud, 2400);
        assert_eq!(rs485.line.parity, protocol::Parity::Even);
        assert_eq!(rs485.timeout, Duration::from_millis(500));
        assert_eq!(rs485.poll_interval, Duration::from_secs(30));
        let ids: Vec<&str> = meters.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(meters[0].unit, Some(2));
        assert_eq!(
            meters[0].ratios,
            crate::model::Ratios::from_multiplier(40.0)
        );
        assert_eq!(meters[0].poll_interval, Some(Duration::from_secs(10)));
        assert_eq!(meters[1].poll_interval, None);
        let (tcp, meters) = &buses[1];
        assert_eq!(tcp.endpoint, bus::Endpoint::Tcp("10.0.0.2:4001".into()));
        assert!(meters.is_empty());
        assert_eq!(
            config.buses[1].modbus_link().unwrap().endpoint,
            modbus::Endpoint::RtuOverTcp("10.0.0.2:4001".into())
        );
    }
}
