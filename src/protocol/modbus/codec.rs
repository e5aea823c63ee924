//! Modbus frames as bytes: CRC-16, RTU and TCP (MBAP) framing of function 03/04 requests,
//! replies and exceptions, for both the client and the simulator's server side.

/// Human name of a Modbus exception code.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        10 => "gateway path unavailable",
        11 => "gateway target failed to respond",
        _ => "unknown exception",
    }
}
