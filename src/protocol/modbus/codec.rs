//! Modbus frames as bytes: CRC-16, RTU and TCP (MBAP) framing of function 03/04 requests,
//! replies and exceptions, for both the client and the simulator's server side; and the
//! requests of the field tools ([`Request`]: reads of coils and discrete inputs 01/02, writes of
//! a coil 05, a register 06 and several registers 16).
//!
//! Everything here is a pure function on byte slices; the transports in
//! [`super::transport`] decide *when* to call them. The RTU reply scanner,
//! [`scan_rtu_reply`], is the heart of the client's framing: it finds the expected reply at any
//! offset of what has been received so far, so that line noise before a reply, an echo of the
//! request, or a late reply from another unit never hide or impersonate the answer.

/// Largest register count one read may ask for (Modbus application protocol, 6.3 / 6.4).
pub const MAX_READ_COUNT: u16 = 125;

/// Function code: read holding registers.
pub const READ_HOLDING: u8 = 0x03;
/// Function code: read input registers.
pub const READ_INPUT: u8 = 0x04;

/// Function code: read coils.
pub const READ_COILS: u8 = 0x01;
/// Function code: read discrete inputs.
pub const READ_DISCRETE: u8 = 0x02;
/// Function code: write single coil.
pub const WRITE_COIL: u8 = 0x05;
/// Function code: write single register.
pub const WRITE_REGISTER: u8 = 0x06;
/// Function code: write multiple registers.
pub const WRITE_REGISTERS: u8 = 0x10;
/// Largest bit count one read of coils or discrete inputs may ask for (6.1 / 6.2).
pub const MAX_READ_BITS: u16 = 2000;
/// Largest register count one write of multiple registers may carry (6.12).
pub const MAX_WRITE_COUNT: u16 = 123;

/// Exception code 01: the function is not supported.
pub const ILLEGAL_FUNCTION: u8 = 0x01;
/// Exception code 02: the address range is not valid for this device.
pub const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
/// Exception code 03: a value in the request (e.g. the register count) is not acceptable.
pub const ILLEGAL_DATA_VALUE: u8 = 0x03;

/// Length of an RTU read request (unit, function, address, count, CRC).
pub const RTU_REQUEST_LEN: usize = 8;
/// Length of an RTU exception reply (unit, function | 0x80, code, CRC).
pub const RTU_EXCEPTION_LEN: usize = 5;
/// Length of the MBAP header (transaction, protocol, length, unit).
pub const MBAP_HEADER_LEN: usize = 7;

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

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial value 0xFFFF) of `data`.
/// On the wire the CRC is sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= b as u16;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// True when the last two bytes of `frame` are the CRC of the bytes before them.
pub fn crc_ok(frame: &[u8]) -> bool {
    if frame.len() < 3 {
        return false;
    }
    let (body, crc) = frame.split_at(frame.len() - 2);
    crc16(body) == u16::from_le_bytes([crc[0], crc[1]])
}

/// Appends the CRC (low byte first) to an RTU frame body.
pub fn append_crc(frame: &mut Vec<u8>) {
    let crc = crc16(frame);
    frame.extend_from_slice(&crc.to_le_bytes());
}

/// Length of the RTU reply to a read of `count` registers: unit, function, byte count, data,
/// CRC.
pub fn rtu_reply_len(count: u16) -> usize {
    5 + 2 * count as usize
}

/// A read request (function 03 or 04), as the server side sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    pub unit: u8,
    pub function: u8,
    pub address: u16,
    pub count: u16,
}

/// The PDU of a read request: function, address, count.
fn read_request_pdu(function: u8, address: u16, count: u16) -> [u8; 5] {
    let [ah, al] = address.to_be_bytes();
    let [ch, cl] = count.to_be_bytes();
    [function, ah, al, ch, cl]
}

/// The RTU frame of a read request: `unit fn addr_hi addr_lo cnt_hi cnt_lo crc_lo crc_hi`.
pub fn rtu_read_request(unit: u8, function: u8, address: u16, count: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(RTU_REQUEST_LEN);
    f.push(unit);
    f.extend_from_slice(&read_request_pdu(function, address, count));
    append_crc(&mut f);
    f
}

/// The PDU of a read reply: function, byte count, registers big-endian.
fn read_reply_pdu(function: u8, words: &[u16]) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + 2 * words.len());
    p.push(function);
    p.push((2 * words.len()) as u8);
    for w in words {
        p.extend_from_slice(&w.to_be_bytes());
    }
    p
}

/// The RTU frame of a read reply carrying `words` (server side).
pub fn rtu_read_reply(unit: u8, function: u8, words: &[u16]) -> Vec<u8> {
    let mut f = Vec::with_capacity(rtu_reply_len(words.len() as u16));
    f.push(unit);
    f.extend_from_slice(&read_reply_pdu(function, words));
    append_crc(&mut f);
    f
}

/// The RTU frame of an exception reply to `function` (server side).
pub fn rtu_exception_reply(unit: u8, function: u8, code: u8) -> Vec<u8> {
    let mut f = vec![unit, function | 0x80, code];
    append_crc(&mut f);
    f
}

/// Any request the client sends: the daemon's register reads and the field tools' reads of
/// bits and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Functions 01/02 (bits) and 03/04 (registers): `count` of them from `address`.
    Read {
        function: u8,
        address: u16,
        count: u16,
    },
    /// Function 05: one coil on (`FF00`) or off (`0000`).
    WriteCoil { address: u16, on: bool },
    /// Function 06: one holding register.
    WriteRegister { address: u16, value: u16 },
    /// Function 16: consecutive holding registers from `address`.
    WriteRegisters { address: u16, values: Vec<u16> },
}

/// The shape of a reply's data after its function code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    /// A byte count, then that many bytes (functions 01..04).
    Counted(u8),
    /// Four bytes echoing the request's address and value or count (05, 06, 16).
    Echo,
}

impl ReplyShape {
    /// Length of the RTU reply frame (unit, function, data, CRC).
    pub fn rtu_len(self) -> usize {
        match self {
            ReplyShape::Counted(n) => 5 + n as usize,
            ReplyShape::Echo => 8,
        }
    }
}

impl Request {
    pub fn function(&self) -> u8 {
        match self {
            Request::Read { function, .. } => *function,
            Request::WriteCoil { .. } => WRITE_COIL,
            Request::WriteRegister { .. } => WRITE_REGISTER,
            Request::WriteRegisters { .. } => WRITE_REGISTERS,
        }
    }

    /// Why the request cannot be sent (an unknown function, a count out of range), if so.
    pub fn check(&self) -> Result<(), String> {
        let in_range = |what: &str, n: u16, max: u16| {
            if n == 0 || n > max {
                Err(format!("{what} count {n} outside 1..={max}"))
            } else {
                Ok(())
            }
        };
        match self {
            Request::Read {
                function: READ_HOLDING | READ_INPUT,
                count,
                ..
            } => in_range("register", *count, MAX_READ_COUNT),
            Request::Read {
                function: READ_COILS | READ_DISCRETE,
                count,
                ..
            } => in_range("bit", *count, MAX_READ_BITS),
            Request::Read { function, .. } => Err(format!(
                "function {function:#04x}; reads are 01, 02, 03 and 04"
            )),
            Request::WriteRegisters { values, .. } => {
                in_range("register", values.len() as u16, MAX_WRITE_COUNT)
            }
            Request::WriteCoil { .. } | Request::WriteRegister { .. } => Ok(()),
        }
    }

    /// The PDU: function code and data.
    pub fn pdu(&self) -> Vec<u8> {
        let be = |v: u16| v.to_be_bytes();
        match self {
            Request::Read {
                function,
                address,
                count,
            } => read_request_pdu(*function, *address, *count).to_vec(),
            Request::WriteCoil { address, on } => {
                let [ah, al] = be(*address);
                vec![WRITE_COIL, ah, al, if *on { 0xFF } else { 0 }, 0]
            }
            Request::WriteRegister { address, value } => {
                let ([ah, al], [vh, vl]) = (be(*address), be(*value));
                vec![WRITE_REGISTER, ah, al, vh, vl]
            }
            Request::WriteRegisters { address, values } => {
                let ([ah, al], [ch, cl]) = (be(*address), be(values.len() as u16));
                let mut p = vec![WRITE_REGISTERS, ah, al, ch, cl, (2 * values.len()) as u8];
                for v in values {
                    p.extend_from_slice(&be(*v));
                }
                p
            }
        }
    }

    /// What the reply's data looks like.
    pub fn reply_shape(&self) -> ReplyShape {
        match self {
            Request::Read {
                function: READ_COILS | READ_DISCRETE,
                count,
                ..
            } => ReplyShape::Counted(count.div_ceil(8) as u8),
            Request::Read { count, .. } => ReplyShape::Counted((2 * *count) as u8),
            _ => ReplyShape::Echo,
        }
    }

    /// The data a correct reply to a write carries: the request's address and value (05, 06)
    /// or address and count (16). `None` for reads.
    pub fn echo(&self) -> Option<[u8; 4]> {
        let p = self.pdu();
        match self {
            Request::Read { .. } => None,
            _ => Some([p[1], p[2], p[3], p[4]]),
        }
    }
}

/// The RTU frame of any request.
pub fn rtu_request(unit: u8, request: &Request) -> Vec<u8> {
    let mut f = vec![unit];
    f.extend_from_slice(&request.pdu());
    append_crc(&mut f);
    f
}

/// The Modbus TCP frame of any request.
pub fn tcp_request(transaction: u16, unit: u8, request: &Request) -> Vec<u8> {
    let pdu = request.pdu();
    let mut f = mbap(transaction, unit, pdu.len());
    f.extend_from_slice(&pdu);
    f
}

/// The bits of a read-coils / read-discrete-inputs reply's data, first bit first.
pub fn unpack_bits(data: &[u8], count: u16) -> Vec<bool> {
    (0..count as usize)
        .map(|i| data.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1))
        .collect()
}

/// Registers from the big-endian bytes of a reply's data.
pub fn words_of(data: &[u8]) -> Vec<u16> {
    data.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect()
}

/// What [`scan_rtu_reply`] found in the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtuScan {
    /// The expected reply: the registers, and the offset just past the frame.
    Reply { words: Vec<u16>, end: usize },
    /// The expected reply of [`scan_rtu_frame`]: its data, and the offset just past the frame.
    Data { data: Vec<u8>, end: usize },
    /// A valid exception reply from the expected unit to the expected function.
    Exception { code: u8, end: usize },
    /// No valid reply yet, and more bytes may still complete one (also when everything so far
    /// is noise). The transport keeps reading until its deadline.
    NeedMore,
    /// A frame of the expected unit and function is complete in length but its CRC fails, and
    /// no other candidate is still incomplete. Final once the line falls silent.
    BadCrc,
    /// A frame with a valid CRC from another unit id answered this function. Final once the
    /// line falls silent.
    OtherUnit { unit: u8 },
    /// A valid frame from the expected unit and function whose byte count does not match the
    /// request. Final once the line falls silent.
    WrongLength { byte_count: u8 },
}

/// Scans `buf` (every byte received since the request was sent) for the reply of `unit` to a
/// read of `count` registers with `function`, at any offset.
///
/// A valid reply or exception anywhere in `buf` wins. Otherwise a frame that starts like the
/// expected one but is not complete yet means [`RtuScan::NeedMore`]; then a complete frame that
/// fails is reported ([`RtuScan::BadCrc`], [`RtuScan::WrongLength`], [`RtuScan::OtherUnit`]).
/// Bytes that look like no frame at all are noise: [`RtuScan::NeedMore`]. An echo of the request
/// is skipped like noise (its third byte is an address byte, not `2 × count`).
pub fn scan_rtu_reply(buf: &[u8], unit: u8, function: u8, count: u16) -> RtuScan {
    match scan_rtu_frame(buf, unit, function, ReplyShape::Counted((2 * count) as u8)) {
        RtuScan::Data { data, end } => RtuScan::Reply {
            words: words_of(&data),
            end,
        },
        other => other,
    }
}

/// [`scan_rtu_reply`] for a reply of any shape: [`RtuScan::Data`] carries its data (after the
/// byte count, for a counted reply). For an echo-shaped reply (writes) a frame with a bad CRC
/// is skipped like noise: it may be the echo of a longer request (function 16).
pub fn scan_rtu_frame(buf: &[u8], unit: u8, function: u8, shape: ReplyShape) -> RtuScan {
    let reply_len = shape.rtu_len();
    let mut incomplete = false;
    let mut rejection: Option<RtuScan> = None;
    for i in 0..buf.len() {
        let rest = &buf[i..];
        let Some(&u) = rest.first() else { break };
        let Some(&f) = rest.get(1) else {
            // A lone last byte may be the start of the reply.
            if u == unit {
                incomplete = true;
            }
            break;
        };
        if f == function | 0x80 {
            if rest.len() < RTU_EXCEPTION_LEN {
                incomplete |= u == unit;
                continue;
            }
            let frame = &rest[..RTU_EXCEPTION_LEN];
            if u == unit {
                if crc_ok(frame) {
                    return RtuScan::Exception {
                        code: frame[2],
                        end: i + RTU_EXCEPTION_LEN,
                    };
                }
                rejection.get_or_insert(RtuScan::BadCrc);
            } else if (1..=247).contains(&u) && crc_ok(frame) {
                rejection.get_or_insert(RtuScan::OtherUnit { unit: u });
            }
            continue;
        }
        if f != function {
            continue;
        }
        let Some(&bc) = rest.get(2) else {
            incomplete |= u == unit;
            continue;
        };
        let (fits, data_at) = match shape {
            ReplyShape::Counted(n) => (bc == n, 3),
            ReplyShape::Echo => (true, 2),
        };
        if fits {
            if rest.len() < reply_len {
                incomplete |= u == unit;
                continue;
            }
            let frame = &rest[..reply_len];
            if u == unit {
                if crc_ok(frame) {
                    return RtuScan::Data {
                        data: frame[data_at..reply_len - 2].to_vec(),
                        end: i + reply_len,
                    };
                }
                if shape != ReplyShape::Echo {
                    rejection.get_or_insert(RtuScan::BadCrc);
                }
            } else if (1..=247).contains(&u) && crc_ok(frame) {
                rejection.get_or_insert(RtuScan::OtherUnit { unit: u });
            }
        } else if u == unit && bc > 0 && (bc % 2 == 0 || matches!(function, 1 | 2)) {
            // Our unit and function with another length: a meter that returned fewer or more
            // registers than asked for (or noise that looks like it).
            let len = 5 + bc as usize;
            if rest.len() >= len && crc_ok(&rest[..len]) {
                rejection.get_or_insert(RtuScan::WrongLength { byte_count: bc });
            }
        }
    }
    if incomplete {
        return RtuScan::NeedMore;
    }
    rejection.unwrap_or(RtuScan::NeedMore)
}

/// What [`scan_rtu_request`] found in the bytes a server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtuRequestScan {
    /// A read request with a valid CRC, and the offset just past it.
    Read { request: ReadRequest, end: usize },
    /// No read request in `buf` yet.
    NeedMore,
}

/// Scans `buf` for a function 03/04 read request with a valid CRC at any offset (server side).
/// Noise before it is skipped; the caller drops bytes up to `end`.
pub fn scan_rtu_request(buf: &[u8]) -> RtuRequestScan {
    if buf.len() < RTU_REQUEST_LEN {
        return RtuRequestScan::NeedMore;
    }
    for i in 0..=buf.len() - RTU_REQUEST_LEN {
        let frame = &buf[i..i + RTU_REQUEST_LEN];
        if (frame[1] == READ_HOLDING || frame[1] == READ_INPUT) && crc_ok(frame) {
            return RtuRequestScan::Read {
                request: ReadRequest {
                    unit: frame[0],
                    function: frame[1],
                    address: u16::from_be_bytes([frame[2], frame[3]]),
                    count: u16::from_be_bytes([frame[4], frame[5]]),
                },
                end: i + RTU_REQUEST_LEN,
            };
        }
    }
    RtuRequestScan::NeedMore
}

/// For a silence-delimited frame that holds no read request: `(unit, function)` when it is a
/// well-formed frame of another function (the server answers exception 01), `None` for noise.
pub fn rtu_other_function(frame: &[u8]) -> Option<(u8, u8)> {
    (frame.len() >= 4 && crc_ok(frame) && frame[1] & 0x80 == 0).then(|| (frame[0], frame[1]))
}

/// The MBAP header: transaction id, protocol id 0, length of what follows (unit + PDU), unit.
fn mbap(transaction: u16, unit: u8, pdu_len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(MBAP_HEADER_LEN + pdu_len);
    f.extend_from_slice(&transaction.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&((pdu_len + 1) as u16).to_be_bytes());
    f.push(unit);
    f
}

/// The Modbus TCP frame of a read request.
pub fn tcp_read_request(
    transaction: u16,
    unit: u8,
    function: u8,
    address: u16,
    count: u16,
) -> Vec<u8> {
    let pdu = read_request_pdu(function, address, count);
    let mut f = mbap(transaction, unit, pdu.len());
    f.extend_from_slice(&pdu);
    f
}

/// The Modbus TCP frame of a read reply (server side).
pub fn tcp_read_reply(transaction: u16, unit: u8, function: u8, words: &[u16]) -> Vec<u8> {
    let pdu = read_reply_pdu(function, words);
    let mut f = mbap(transaction, unit, pdu.len());
    f.extend_from_slice(&pdu);
    f
}

/// The Modbus TCP frame of an exception reply (server side).
pub fn tcp_exception_reply(transaction: u16, unit: u8, function: u8, code: u8) -> Vec<u8> {
    let mut f = mbap(transaction, unit, 2);
    f.extend_from_slice(&[function | 0x80, code]);
    f
}

/// One Modbus TCP frame cut from a stream by its MBAP length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpFrame {
    pub transaction: u16,
    pub unit: u8,
    /// Function code and data.
    pub pdu: Vec<u8>,
}

/// Why bytes on a Modbus TCP stream are not a frame. The stream is out of step and must be
/// closed: there is no way to find the next frame boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpFrameError {
    ProtocolId(u16),
    Length(u16),
}

impl std::fmt::Display for TcpFrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcpFrameError::ProtocolId(p) => write!(f, "MBAP protocol id {p}, expected 0"),
            TcpFrameError::Length(l) => write!(f, "MBAP length {l} out of range 2..=254"),
        }
    }
}

/// Cuts the first Modbus TCP frame from `buf`: `Ok(Some((frame, consumed)))`, `Ok(None)` when
/// more bytes are needed, or an error when the header is impossible.
pub fn split_tcp_frame(buf: &[u8]) -> Result<Option<(TcpFrame, usize)>, TcpFrameError> {
    if buf.len() < MBAP_HEADER_LEN {
        return Ok(None);
    }
    let transaction = u16::from_be_bytes([buf[0], buf[1]]);
    let protocol = u16::from_be_bytes([buf[2], buf[3]]);
    let length = u16::from_be_bytes([buf[4], buf[5]]);
    if protocol != 0 {
        return Err(TcpFrameError::ProtocolId(protocol));
    }
    if !(2..=254).contains(&length) {
        return Err(TcpFrameError::Length(length));
    }
    let total = 6 + length as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        TcpFrame {
            transaction,
            unit: buf[6],
            pdu: buf[MBAP_HEADER_LEN..total].to_vec(),
        },
        total,
    )))
}

/// The meaning of a reply PDU to a read of `count` registers with `function`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    Words(Vec<u16>),
    Exception(u8),
    /// Not a reply to this request (other function, wrong byte count, truncated).
    Malformed(String),
}

/// Interprets the PDU of a reply (Modbus TCP) to a read of `count` registers with `function`.
pub fn parse_read_reply_pdu(pdu: &[u8], function: u8, count: u16) -> ReadOutcome {
    match pdu {
        [f, code] if *f == function | 0x80 => ReadOutcome::Exception(*code),
        [f, bc, data @ ..] if *f == function => {
            if *bc as usize != 2 * count as usize || data.len() != *bc as usize {
                return ReadOutcome::Malformed(format!(
                    "byte count {} with {} data bytes, expected {}",
                    bc,
                    data.len(),
                    2 * count
                ));
            }
            ReadOutcome::Words(
                data.chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect(),
            )
        }
        [f, ..] => ReadOutcome::Malformed(format!(
            "function {f:#04x} in reply, expected {function:#04x}"
        )),
        [] => ReadOutcome::Malformed("empty PDU".into()),
    }
}

/// Interprets the PDU of a Modbus TCP reply of `shape` to `function`: the data (after the byte
/// count, for a counted reply), an exception, or why it is not a reply.
pub fn parse_reply_pdu(
    pdu: &[u8],
    function: u8,
    shape: ReplyShape,
) -> Result<Vec<u8>, super::ModbusError> {
    use super::ModbusError::{Exception, Malformed};
    match (pdu, shape) {
        ([f, code], _) if *f == function | 0x80 => Err(Exception { code: *code }),
        ([f, bc, data @ ..], ReplyShape::Counted(n)) if *f == function => {
            if *bc != n || data.len() != n as usize {
                return Err(Malformed(format!(
                    "byte count {bc} with {} data bytes, expected {n}",
                    data.len()
                )));
            }
            Ok(data.to_vec())
        }
        ([f, data @ ..], ReplyShape::Echo) if *f == function && data.len() == 4 => {
            Ok(data.to_vec())
        }
        ([f, ..], _) if *f == function => Err(Malformed(format!(
            "{} data bytes, expected 4",
            pdu.len() - 1
        ))),
        ([f, ..], _) => Err(Malformed(format!(
            "function {f:#04x} in reply, expected {function:#04x}"
        ))),
        ([], _) => Err(Malformed("empty PDU".into())),
    }
}

/// Interprets the PDU of a request received by a Modbus TCP server: a read request, or the
/// exception code to answer with.
pub fn parse_read_request_pdu(unit: u8, pdu: &[u8]) -> Result<ReadRequest, u8> {
    match pdu {
        [f @ (READ_HOLDING | READ_INPUT), ah, al, ch, cl] => Ok(ReadRequest {
            unit,
            function: *f,
            address: u16::from_be_bytes([*ah, *al]),
            count: u16::from_be_bytes([*ch, *cl]),
        }),
        [READ_HOLDING | READ_INPUT, ..] => Err(ILLEGAL_DATA_VALUE),
        _ => Err(ILLEGAL_FUNCTION),
    }
}

/// Interprets the PDU of any request a server receives (functions 01..06 and 16): the request,
/// or the exception to answer with (01 for another function, 03 for a malformed one).
pub fn parse_request_pdu(pdu: &[u8]) -> Result<Request, u8> {
    let word = |i: usize| u16::from_be_bytes([pdu[i], pdu[i + 1]]);
    match pdu.first().copied() {
        Some(f @ (READ_COILS | READ_DISCRETE | READ_HOLDING | READ_INPUT)) if pdu.len() == 5 => {
            Ok(Request::Read {
                function: f,
                address: word(1),
                count: word(3),
            })
        }
        Some(WRITE_COIL) if pdu.len() == 5 => match word(3) {
            0xFF00 => Ok(Request::WriteCoil {
                address: word(1),
                on: true,
            }),
            0x0000 => Ok(Request::WriteCoil {
                address: word(1),
                on: false,
            }),
            _ => Err(ILLEGAL_DATA_VALUE),
        },
        Some(WRITE_REGISTER) if pdu.len() == 5 => Ok(Request::WriteRegister {
            address: word(1),
            value: word(3),
        }),
        Some(WRITE_REGISTERS) if pdu.len() >= 6 => {
            let count = word(3) as usize;
            let bytes = pdu[5] as usize;
            if count == 0
                || count > MAX_WRITE_COUNT as usize
                || bytes != 2 * count
                || pdu.len() != 6 + bytes
            {
                return Err(ILLEGAL_DATA_VALUE);
            }
            Ok(Request::WriteRegisters {
                address: word(1),
                values: (0..count).map(|k| word(6 + 2 * k)).collect(),
            })
        }
        Some(
            READ_COILS | READ_DISCRETE | READ_HOLDING | READ_INPUT | WRITE_COIL | WRITE_REGISTER
            | WRITE_REGISTERS,
        ) => Err(ILLEGAL_DATA_VALUE),
        _ => Err(ILLEGAL_FUNCTION),
    }
}

/// The RTU frame of a reply to a write (server side): the function and the four echoed bytes.
pub fn rtu_echo_reply(unit: u8, function: u8, echo: [u8; 4]) -> Vec<u8> {
    let mut f = vec![unit, function];
    f.extend_from_slice(&echo);
    append_crc(&mut f);
    f
}

/// The Modbus TCP frame of a reply to a write (server side).
pub fn tcp_echo_reply(transaction: u16, unit: u8, function: u8, echo: [u8; 4]) -> Vec<u8> {
    let mut f = mbap(transaction, unit, 5);
    f.push(function);
    f.extend_from_slice(&echo);
    f
}

/// The exception a server owes a read request whose shape is unacceptable, if any: count
/// 1..=125 (03), and an address range that does not wrap past 0xFFFF (02).
pub fn read_request_exception(request: &ReadRequest) -> Option<u8> {
    if request.count == 0 || request.count > MAX_READ_COUNT {
        return Some(ILLEGAL_DATA_VALUE);
    }
    if request.address as u32 + request.count as u32 > 0x1_0000 {
        return Some(ILLEGAL_DATA_ADDRESS);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_known_request() {
        // Read 10 holding registers from address 0 of unit 1.
        assert_eq!(
            rtu_read_request(1, 3, 0, 10),
            vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
        );
        // Read 2 input registers from 0x0000 of unit 1 (Eastron's voltage).
        assert_eq!(
            rtu_read_request(1, 4, 0, 2),
            vec![0x01, 0x04, 0x00, 0x00, 0x00, 0x02, 0x71, 0xCB]
        );
        assert_eq!(crc16(b"123456789"), 0x4B37);
        assert!(crc_ok(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]));
        assert!(!crc_ok(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCE]));
    }

    #[test]
    fn known_reply_and_exception_frames() {
        // Unit 1, function 3, two registers 0x000A 0x0102.
        let reply = rtu_read_reply(1, 3, &[0x000A, 0x0102]);
        assert_eq!(&reply[..7], &[0x01, 0x03, 0x04, 0x00, 0x0A, 0x01, 0x02]);
        assert!(crc_ok(&reply));
        // Exception 02 to function 3 from unit 1: 01 83 02 C0 F1.
        assert_eq!(
            rtu_exception_reply(1, 3, 2),
            vec![0x01, 0x83, 0x02, 0xC0, 0xF1]
        );
    }

    #[test]
    fn scanner_finds_reply() {
        let reply = rtu_read_reply(7, 4, &[1, 2, 3]);
        assert_eq!(
            scan_rtu_reply(&reply, 7, 4, 3),
            RtuScan::Reply {
                words: vec![1, 2, 3],
                end: reply.len()
            }
        );
    }

    #[test]
    fn scanner_needs_more_for_every_prefix() {
        let reply = rtu_read_reply(7, 4, &[1, 2, 3]);
        for n in 0..reply.len() {
            assert_eq!(
                scan_rtu_reply(&reply[..n], 7, 4, 3),
                RtuScan::NeedMore,
                "{n}"
            );
        }
    }

    #[test]
    fn scanner_skips_garbage_and_echo() {
        let mut buf = vec![0x00, 0xFF, 0x07, 0x12, 0x07, 0x04, 0x99, 0x55];
        buf.extend(rtu_read_request(7, 4, 0, 3)); // echo of the request
        let reply = rtu_read_reply(7, 4, &[0xAAAA, 0xBBBB, 0xCCCC]);
        buf.extend(&reply);
        buf.extend([0x00, 0x00]); // trailing noise
        assert_eq!(
            scan_rtu_reply(&buf, 7, 4, 3),
            RtuScan::Reply {
                words: vec![0xAAAA, 0xBBBB, 0xCCCC],
                end: buf.len() - 2
            }
        );
        // Garbage alone is "need more", never a verdict.
        assert_eq!(scan_rtu_reply(&buf[..8], 7, 4, 3), RtuScan::NeedMore);
    }

    #[test]
    fn scanner_reports_bad_crc_once_complete() {
        let mut reply = rtu_read_reply(1, 3, &[10, 20]);
        let n = reply.len();
        reply[n - 1] ^= 0xFF;
        assert_eq!(scan_rtu_reply(&reply[..n - 1], 1, 3, 2), RtuScan::NeedMore);
        assert_eq!(scan_rtu_reply(&reply, 1, 3, 2), RtuScan::BadCrc);
        // A valid reply after the corrupt one still wins.
        let mut both = reply.clone();
        both.extend(rtu_read_reply(1, 3, &[10, 20]));
        assert!(matches!(
            scan_rtu_reply(&both, 1, 3, 2),
            RtuScan::Reply { .. }
        ));
    }

    #[test]
    fn scanner_reports_other_unit_and_wrong_length() {
        let other = rtu_read_reply(2, 3, &[10, 20]);
        assert_eq!(
            scan_rtu_reply(&other, 1, 3, 2),
            RtuScan::OtherUnit { unit: 2 }
        );
        let short = rtu_read_reply(1, 3, &[10]);
        assert_eq!(
            scan_rtu_reply(&short, 1, 3, 2),
            RtuScan::WrongLength { byte_count: 2 }
        );
        let exc_other = rtu_exception_reply(2, 3, 2);
        assert_eq!(
            scan_rtu_reply(&exc_other, 1, 3, 2),
            RtuScan::OtherUnit { unit: 2 }
        );
    }

    #[test]
    fn scanner_reports_exception() {
        let mut buf = vec![0x55];
        buf.extend(rtu_exception_reply(1, 4, 2));
        assert_eq!(
            scan_rtu_reply(&buf, 1, 4, 80),
            RtuScan::Exception { code: 2, end: 6 }
        );
        let mut bad = rtu_exception_reply(1, 4, 2);
        bad[4] ^= 1;
        assert_eq!(scan_rtu_reply(&bad, 1, 4, 80), RtuScan::BadCrc);
    }

    #[test]
    fn server_scans_requests_after_noise() {
        let mut buf = vec![0xFF, 0x01, 0x03];
        buf.extend(rtu_read_request(1, 3, 0, 10));
        assert_eq!(
            scan_rtu_request(&buf),
            RtuRequestScan::Read {
                request: ReadRequest {
                    unit: 1,
                    function: 3,
                    address: 0,
                    count: 10
                },
                end: 11
            }
        );
        assert_eq!(scan_rtu_request(&buf[..10]), RtuRequestScan::NeedMore);
        let mut write = vec![1, 6, 0, 1, 0, 3];
        append_crc(&mut write);
        assert_eq!(scan_rtu_request(&write), RtuRequestScan::NeedMore);
        assert_eq!(rtu_other_function(&write), Some((1, 6)));
        assert_eq!(rtu_other_function(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn tcp_request_and_reply_frames() {
        assert_eq!(
            tcp_read_request(0x1234, 1, 3, 0x0010, 2),
            vec![0x12, 0x34, 0, 0, 0, 6, 1, 3, 0x00, 0x10, 0x00, 0x02]
        );
        let reply = tcp_read_reply(0x1234, 1, 3, &[0xABCD, 0x0001]);
        assert_eq!(
            reply,
            vec![0x12, 0x34, 0, 0, 0, 7, 1, 3, 4, 0xAB, 0xCD, 0x00, 0x01]
        );
        let mut stream = reply.clone();
        stream.extend(tcp_exception_reply(0x1235, 1, 3, 2));
        let (frame, used) = split_tcp_frame(&stream).unwrap().unwrap();
        assert_eq!(used, reply.len());
        assert_eq!(frame.transaction, 0x1234);
        assert_eq!(
            parse_read_reply_pdu(&frame.pdu, 3, 2),
            ReadOutcome::Words(vec![0xABCD, 1])
        );
        let (exc, used2) = split_tcp_frame(&stream[used..]).unwrap().unwrap();
        assert_eq!(used2, 9);
        assert_eq!(exc.transaction, 0x1235);
        assert_eq!(
            parse_read_reply_pdu(&exc.pdu, 3, 2),
            ReadOutcome::Exception(2)
        );
        assert!(matches!(
            parse_read_reply_pdu(&frame.pdu, 3, 3),
            ReadOutcome::Malformed(_)
        ));
        assert_eq!(split_tcp_frame(&stream[..12]).unwrap(), None);
        assert_eq!(
            split_tcp_frame(&[0, 1, 0, 9, 0, 6, 1]),
            Err(TcpFrameError::ProtocolId(9))
        );
    }

    #[test]
    fn tcp_server_side_requests() {
        let req = tcp_read_request(5, 9, 4, 100, 80);
        let (frame, _) = split_tcp_frame(&req).unwrap().unwrap();
        let r = parse_read_request_pdu(frame.unit, &frame.pdu).unwrap();
        assert_eq!(
            r,
            ReadRequest {
                unit: 9,
                function: 4,
                address: 100,
                count: 80
            }
        );
        assert_eq!(read_request_exception(&r), None);
        assert_eq!(parse_read_request_pdu(1, &[6, 0, 1, 0, 3]), Err(1));
        let big = ReadRequest { count: 126, ..r };
        assert_eq!(read_request_exception(&big), Some(3));
        let wrap = ReadRequest {
            address: 0xFFF0,
            count: 20,
            ..r
        };
        assert_eq!(read_request_exception(&wrap), Some(2));
    }

    #[test]
    fn tool_requests_frame_and_parse_back() {
        let requests = [
            Request::Read {
                function: READ_COILS,
                address: 0x13,
                count: 19,
            },
            Request::WriteCoil {
                address: 0xAC,
                on: true,
            },
            Request::WriteRegister {
                address: 1,
                value: 3,
            },
            Request::WriteRegisters {
                address: 0x14,
                values: vec![0x4140, 0],
            },
        ];
        for r in &requests {
            assert_eq!(r.check(), Ok(()));
            let frame = rtu_request(7, r);
            assert!(crc_ok(&frame));
            assert_eq!(
                parse_request_pdu(&frame[1..frame.len() - 2]).as_ref(),
                Ok(r)
            );
        }
        // The specification's example of function 05 (coil 173 on).
        assert_eq!(requests[1].pdu(), [0x05, 0x00, 0xAC, 0xFF, 0x00]);
        assert_eq!(requests[0].reply_shape(), ReplyShape::Counted(3));
        assert_eq!(
            requests[3].pdu(),
            [0x10, 0x00, 0x14, 0x00, 0x02, 0x04, 0x41, 0x40, 0x00, 0x00]
        );
        assert!(
            Request::Read {
                function: 3,
                address: 0,
                count: 126
            }
            .check()
            .is_err()
        );
        assert!(
            Request::Read {
                function: 7,
                address: 0,
                count: 1
            }
            .check()
            .is_err()
        );
        assert_eq!(
            parse_request_pdu(&[0x05, 0, 1, 0x12, 0x34]),
            Err(ILLEGAL_DATA_VALUE)
        );
        assert_eq!(parse_request_pdu(&[0x11]), Err(ILLEGAL_FUNCTION));
    }

    #[test]
    fn write_echo_and_bit_replies_are_found() {
        let write = Request::WriteRegisters {
            address: 0x14,
            values: vec![0x4140, 0],
        };
        let echo = write.echo().unwrap();
        let reply = rtu_echo_reply(7, WRITE_REGISTERS, echo);
        // After the local echo of the longer request (an adapter that hears itself).
        let mut buf = rtu_request(7, &write);
        buf.extend_from_slice(&reply);
        assert_eq!(
            scan_rtu_frame(&buf, 7, WRITE_REGISTERS, ReplyShape::Echo),
            RtuScan::Data {
                data: echo.to_vec(),
                end: buf.len()
            }
        );
        // Coils: 19 bits in 3 bytes, first bit first.
        let mut bits = vec![7, READ_COILS, 3, 0xCD, 0x6B, 0x05];
        append_crc(&mut bits);
        let RtuScan::Data { data, .. } =
            scan_rtu_frame(&bits, 7, READ_COILS, ReplyShape::Counted(3))
        else {
            panic!("no reply found");
        };
        let got = unpack_bits(&data, 19);
        assert_eq!(&got[..4], [true, false, true, true]);
        assert!(got[16] && !got[17] && got[18]);
        // Over TCP: an echo, an exception, a wrong shape.
        assert_eq!(
            parse_reply_pdu(&[0x06, 0, 1, 0, 3], WRITE_REGISTER, ReplyShape::Echo).unwrap(),
            [0, 1, 0, 3]
        );
        assert!(matches!(
            parse_reply_pdu(&[0x86, 2], WRITE_REGISTER, ReplyShape::Echo),
            Err(super::super::ModbusError::Exception { code: 2 })
        ));
        assert!(parse_reply_pdu(&[0x06, 0, 1], WRITE_REGISTER, ReplyShape::Echo).is_err());
    }
}
