//! Wire protocols. Each is a codec (pure functions on byte vectors, unit-tested) separate from
//! the transport that times it on a serial line or a TCP connection.

pub mod dlt645;
pub mod modbus;
