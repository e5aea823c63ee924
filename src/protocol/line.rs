//! Line settings every protocol on a serial line shares: baud rate, parity, data and stop bits.
//! The protocols own these types (the config loader builds them from `[[bus]]`), so that no
//! wire code depends on the configuration file's schema. Also what every transport does to a
//! socket's input the same way (discarding what is pending, telling a close).

use std::io;
use std::os::fd::RawFd;

/// Reads and drops whatever a socket holds without waiting (a serial server's late bytes); an
/// orderly close by the peer is an error, so that the caller reconnects before sending.
pub(crate) fn discard_socket_input(fd: RawFd) -> io::Result<()> {
    let mut chunk = [0u8; 512];
    loop {
        // SAFETY: fd is an open socket owned by the caller's stream; chunk is a valid buffer.
        let n = unsafe {
            libc::recv(
                fd,
                chunk.as_mut_ptr() as *mut libc::c_void,
                chunk.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return Err(closed("the connection")),
            n if n > 0 => continue,
            _ => {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
        }
    }
}

/// The error of a line or connection `what` closed by the other end.
pub(crate) fn closed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{what} was closed by the other end"),
    )
}

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// A serial line's framing: what paces the wire and what a serial port is opened with. A link
/// through a serial server (RTU over TCP) has one too: the line behind the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SerialLine {
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl SerialLine {
    /// 9600 8N1, the usual Modbus RTU line.
    pub const MODBUS_DEFAULT: SerialLine = SerialLine {
        baud: 9600,
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
    };

    /// Bits on the wire per character: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + self.data_bits as u32 + u32::from(self.parity != Parity::None) + self.stop_bits as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_per_char_counts_parity_and_stop_bits() {
        assert_eq!(SerialLine::MODBUS_DEFAULT.bits_per_char(), 10);
        let even = SerialLine {
            parity: Parity::Even,
            ..SerialLine::MODBUS_DEFAULT
        };
        assert_eq!(even.bits_per_char(), 11);
    }
}
