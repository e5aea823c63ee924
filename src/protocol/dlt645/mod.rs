//! DL/T 645 (2007 and 1997): the codec and the client transport, with the same guarantees the
//! Modbus RTU transport gives the gateway:
//!
//! - every transaction has a deadline (a meter may take up to 500 ms to start replying:
//!   [`Line::default_timeout`] counts it);
//! - after a timeout no stale reply is ever taken for the next request's answer;
//! - a reply with a bad checksum or from another address is rejected at once, not after the
//!   deadline;
//! - `FE` preambles, line noise and trailing bytes (some meters append `FF`) never swallow a
//!   valid reply;
//! - an abnormal reply is reported as such, with its ERR byte in words;
//! - follow-up frames (D5 set) are collected into one value.
//!
//! [`codec`] holds the pure byte-level functions, [`transport`] times them on a serial port
//! (2400 baud 8E1 by default; ptys run 8N1, the kernel refuses parity on them), a TCP
//! connection to a transparent serial server, or any byte stream. The tests that prove each
//! guarantee run the transport against the simulator's DL/T 645 meters on real ptys.

pub mod codec;
pub mod freeze;
pub mod transport;

#[cfg(test)]
mod tests;

pub use codec::{Address, DataId, MeterTime, Version};
pub use transport::{Dlt645Transport, Line, Parity};

/// Why a DL/T 645 transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum Dlt645Error {
    #[error("no reply within {0} ms")]
    Timeout(u64),
    #[error("reply with a bad checksum")]
    BadChecksum,
    #[error("reply from address {got}, expected {expected}")]
    WrongAddress { expected: Address, got: Address },
    #[error("reply with control code {got:#04x} to a request with function {function:#04x}")]
    WrongControl { function: u8, got: u8 },
    #[error("reply for data identifier {got}, expected {expected}")]
    WrongDataId { expected: DataId, got: String },
    /// The meter answered with an abnormal reply; `err` is its ERR byte.
    #[error("abnormal reply, ERR {err:#04x}: {}", codec::error_meaning(*version, *err))]
    Abnormal { version: Version, err: u8 },
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The port refused a line setting (a pty refuses parity): device, setting, OS error.
    #[error("{device}: cannot set {setting}: {reason}")]
    LineSetting {
        device: String,
        setting: String,
        reason: String,
    },
    /// The request itself cannot be sent (a read to the broadcast address, a baud rate outside
    /// 1200..19200, data that does not fit a frame).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl Dlt645Error {
    /// True when the meter answered (even abnormally): the line and the address work. On a bus
    /// with outside DL/T 645 stacks an abnormal reply is no proof the address exists (see the
    /// reference: some answer any address with ERR bit 0).
    pub fn meter_answered(&self) -> bool {
        matches!(self, Dlt645Error::Abnormal { .. })
    }

    /// True for an abnormal reply with the ERR bit "no such data item": the meter does not know
    /// the identifier (a block identifier on a meter read item by item).
    pub fn no_such_data_item(&self) -> bool {
        matches!(self, Dlt645Error::Abnormal { err, .. } if err & codec::ERR_NO_SUCH_DATA_ITEM != 0)
    }
}
