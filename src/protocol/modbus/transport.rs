//! Client transports: a deadline on every transaction, and framing that never takes a stale or
//! corrupt reply for a good one.

use super::ModbusError;
use crate::config::BusConfig;
use std::time::Duration;

/// Wire timing of a serial line (see `../shared/reference/modbus-rtu-timing.md`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RtuTiming {
    pub baud: u32,
    pub bits_per_char: u32,
}

/// A Modbus client on one bus (serial RTU, Modbus TCP or RTU over TCP).
pub struct ModbusClient {}

impl ModbusClient {
    /// Opens the bus's serial port or TCP connection.
    pub async fn open(_bus: &BusConfig) -> Result<Self, ModbusError> {
        todo!()
    }

    /// Reads `count` registers from `address` of unit `unit` with function 3 or 4.
    pub async fn read_registers(
        &mut self,
        _unit: u8,
        _function: u8,
        _address: u16,
        _count: u16,
        _timeout: Duration,
    ) -> Result<Vec<u16>, ModbusError> {
        todo!()
    }
}
