//! DL/T 645 frames as bytes, for both editions (2007 and 1997): addresses, data identifiers,
//! the frame `68 A0..A5 68 C L DATA CS 16` with its `FE` wake-up preamble, the 0x33 data
//! offset and the checksum, read / follow-up / read-address / broadcast time-sync requests and
//! their replies, abnormal replies with their ERR byte in words, the 2007 remote-control
//! request (1CH: relay trip / close, alarm, keep power) with status word 3 that shows its
//! effect, and BCD values with decimals and sign.
//!
//! Everything here is a pure function on byte slices; [`super::transport`] decides *when* to
//! call them. [`scan_reply`] is the heart of the client's framing: it finds the expected reply
//! at any offset of what has been received so far, after any number of `FE` bytes, line noise
//! or an echo of the request, and before trailing bytes (some meters append `FF`), so that none
//! of these hide or impersonate the answer.

use std::fmt;

/// The wake-up byte sent before a request; a reader skips any number of them.
pub const PREAMBLE: u8 = 0xFE;
/// `FE` bytes a master sends before each request unless the bus says otherwise.
pub const DEFAULT_PREAMBLE_LEN: usize = 4;
/// Start byte, before the address and again after it.
pub const START: u8 = 0x68;
/// End byte, after the checksum.
pub const END: u8 = 0x16;
/// Added (mod 256) to every DATA byte on the wire, subtracted on receipt.
pub const DATA_OFFSET: u8 = 0x33;
/// Bytes of a frame besides DATA: `68`, six address bytes, `68`, C, L, CS, `16`.
pub const FRAME_OVERHEAD: usize = 12;
/// Longest DATA of a read reply the standard allows.
pub const MAX_READ_REPLY_DATA: usize = 200;

/// Control byte bit D7: the frame is a reply from a meter.
pub const REPLY: u8 = 0x80;
/// Control byte bit D6: the reply is abnormal (DATA is the ERR byte).
pub const ABNORMAL: u8 = 0x40;
/// Control byte bit D5: more frames follow (read them with a follow-up request).
pub const MORE_FRAMES: u8 = 0x20;
/// Control byte bits D4..D0: the function.
pub const FUNCTION: u8 = 0x1F;

/// 2007 function 11H: read data (DATA = DI, 4 bytes).
pub const READ_2007: u8 = 0x11;
/// 2007 function 12H: read a follow-up frame (DATA = DI + frame number).
pub const READ_FOLLOW_UP_2007: u8 = 0x12;
/// 2007 function 13H: read the communication address (sent to the wildcard address).
pub const READ_ADDRESS_2007: u8 = 0x13;
/// Function 08H (both editions): broadcast time sync, `ss mm hh DD MM YY`; no reply.
pub const TIME_SYNC: u8 = 0x08;
/// 1997 function 01H: read data (DATA = DI, 2 bytes).
pub const READ_1997: u8 = 0x01;
/// 2007 function 1CH: remote control (费控) — relay trip / close allowed, alarm, keep power.
/// DATA = password (4) + operator code (4) + N1 order + N2 reserved + validity end (6).
/// Normal reply 9CH without data, abnormal DCH + ERR.
pub const REMOTE_CONTROL_2007: u8 = 0x1C;
/// 2007 run status word 3 (`04000503`, 2 bytes, bit field): the relay's state.
pub const STATUS_WORD_3: u32 = 0x0400_0503;

/// The edition of the standard a meter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// DL/T 645-1997: 2-byte data identifiers, read with 01H.
    V1997,
    /// DL/T 645-2007: 4-byte data identifiers, read with 11H.
    V2007,
}

impl Version {
    /// The function code of a data read in this edition.
    pub fn read_function(self) -> u8 {
        match self {
            Version::V1997 => READ_1997,
            Version::V2007 => READ_2007,
        }
    }

    /// `"1997"` or `"2007"`.
    pub fn name(self) -> &'static str {
        match self {
            Version::V1997 => "1997",
            Version::V2007 => "2007",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DL/T 645-{}", self.name())
    }
}

/// A meter's communication address: 12 BCD digits, kept as the six bytes the wire carries,
/// low byte first. Written in a configuration as the 12 digits the meter's nameplate shows,
/// leading zeros kept (`"000012345678"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address([u8; 6]);

impl Address {
    /// `999999999999`: every meter listens (time sync, freeze); none replies.
    pub const BROADCAST: Address = Address([0x99; 6]);
    /// `AAAAAAAAAAAA`: any meter answers (read address 13H); only on a bus with one meter.
    pub const WILDCARD: Address = Address([0xAA; 6]);

    /// The address from its six wire bytes (low byte first).
    pub fn from_wire(bytes: [u8; 6]) -> Address {
        Address(bytes)
    }

    /// The six wire bytes, low byte first.
    pub fn wire(&self) -> [u8; 6] {
        self.0
    }

    /// Parses the 12 characters of an address as the nameplate shows them (most significant
    /// digit first). Each pair is two decimal digits, or `AA` (a wildcard byte).
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let t = text.as_bytes();
        if t.len() != 12 {
            return Err(AddressError(format!(
                "address \"{text}\" has {} characters; a DL/T 645 address is 12 digits, leading \
                 zeros kept (e.g. \"000012345678\")",
                text.chars().count()
            )));
        }
        let mut wire = [0u8; 6];
        for (k, pair) in t.chunks(2).enumerate() {
            let byte = match pair {
                [h, l] if h.is_ascii_digit() && l.is_ascii_digit() => {
                    ((h - b'0') << 4) | (l - b'0')
                }
                [b'A' | b'a', b'A' | b'a'] => 0xAA,
                _ => {
                    return Err(AddressError(format!(
                        "address \"{text}\" has \"{}\" at position {}; use only the digits \
                         0-9 (AA for a wildcard byte)",
                        String::from_utf8_lossy(pair),
                        2 * k + 1
                    )));
                }
            };
            // The first pair written is the most significant byte: last on the wire.
            wire[5 - k] = byte;
        }
        Ok(Address(wire))
    }

    /// True for [`Address::BROADCAST`].
    pub fn is_broadcast(&self) -> bool {
        *self == Address::BROADCAST
    }

    /// True when any byte is the `AA` wildcard (a reply may come from any matching address).
    pub fn has_wildcard(&self) -> bool {
        self.0.contains(&0xAA)
    }

    /// True when a reply from `from` answers a request to `self` (wildcard bytes match any).
    pub fn matches(&self, from: &Address) -> bool {
        self.0
            .iter()
            .zip(from.0.iter())
            .all(|(want, got)| *want == 0xAA || want == got)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Address, AddressError> {
        Address::parse(s)
    }
}

/// Why a text is not a DL/T 645 address (the message says what to write instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

/// A data identifier: `DI3 DI2 DI1 DI0` (2007, 4 bytes) or `DI1 DI0` (1997, 2 bytes), written
/// most significant first (`00010000`, `9010`) and sent `DI0` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataId {
    V1997(u16),
    V2007(u32),
}

impl DataId {
    /// The edition the identifier belongs to.
    pub fn version(&self) -> Version {
        match self {
            DataId::V1997(_) => Version::V1997,
            DataId::V2007(_) => Version::V2007,
        }
    }

    /// The identifier's bytes as DATA carries them (before the 0x33 offset), `DI0` first.
    pub fn wire(&self) -> Vec<u8> {
        match self {
            DataId::V1997(di) => di.to_le_bytes().to_vec(),
            DataId::V2007(di) => di.to_le_bytes().to_vec(),
        }
    }

    /// Bytes the identifier takes in DATA: 2 or 4.
    pub fn len(&self) -> usize {
        match self {
            DataId::V1997(_) => 2,
            DataId::V2007(_) => 4,
        }
    }

    /// Never true; for symmetry with [`DataId::len`].
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The identifier at the start of `data` (offset already removed) in `version`.
    pub fn from_wire(version: Version, data: &[u8]) -> Option<DataId> {
        match version {
            Version::V1997 => Some(DataId::V1997(u16::from_le_bytes(
                data.get(..2)?.try_into().ok()?,
            ))),
            Version::V2007 => Some(DataId::V2007(u32::from_le_bytes(
                data.get(..4)?.try_into().ok()?,
            ))),
        }
    }

    /// Parses 8 hex digits (2007) or 4 (1997), most significant first.
    pub fn parse(text: &str) -> Option<DataId> {
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        match text.len() {
            4 => u16::from_str_radix(text, 16).ok().map(DataId::V1997),
            8 => u32::from_str_radix(text, 16).ok().map(DataId::V2007),
            _ => None,
        }
    }
}

impl fmt::Display for DataId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataId::V1997(di) => write!(f, "{di:04X}"),
            DataId::V2007(di) => write!(f, "{di:08X}"),
        }
    }
}

/// The meaning of the ERR byte of an abnormal reply, bit by bit, in words
/// (e.g. `"no such data item"`, `"password error / unauthorised"`).
pub fn error_meaning(version: Version, err: u8) -> String {
    let bits: [&str; 8] = match version {
        Version::V2007 => [
            "other error",
            "no such data item",
            "password error / unauthorised",
            "baud rate cannot be changed",
            "year time zones exceeded",
            "daily time periods exceeded",
            "tariffs exceeded",
            "reserved bit 7",
        ],
        Version::V1997 => [
            "illegal data",
            "no such data item (data identifier error)",
            "password error",
            "reserved bit 3",
            "year time zones exceeded",
            "daily time periods exceeded",
            "tariffs exceeded",
            "reserved bit 7",
        ],
    };
    let words: Vec<&str> = (0..8)
        .filter(|b| err & (1 << b) != 0)
        .map(|b| bits[b])
        .collect();
    if words.is_empty() {
        "no error bit set".to_string()
    } else {
        words.join(", ")
    }
}

/// The ERR bit "no such data item" (bit 1 in both editions): the meter does not know the
/// identifier, e.g. a block identifier on a meter that is read item by item.
pub const ERR_NO_SUCH_DATA_ITEM: u8 = 0x02;
/// The ERR bit "password error / unauthorised" (bit 2 in both editions).
pub const ERR_PASSWORD: u8 = 0x04;
/// The ERR bit "other error" (2007) / "illegal data" (1997).
pub const ERR_OTHER: u8 = 0x01;

/// The checksum: the sum mod 256 of every byte from the first `68` through the last DATA byte.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// One frame, DATA without the 0x33 offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub address: Address,
    pub control: u8,
    pub data: Vec<u8>,
}

impl Frame {
    /// The frame's bytes on the wire (no preamble): offset added, checksum and end byte.
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(&self.address, self.control, &self.data)
    }

    /// D7: sent by a meter.
    pub fn is_reply(&self) -> bool {
        self.control & REPLY != 0
    }

    /// D6: an abnormal reply.
    pub fn is_abnormal(&self) -> bool {
        self.control & ABNORMAL != 0
    }

    /// D5: more frames follow.
    pub fn more_frames(&self) -> bool {
        self.control & MORE_FRAMES != 0
    }

    /// D4..D0.
    pub fn function(&self) -> u8 {
        self.control & FUNCTION
    }
}

/// The wire bytes of a frame (no preamble); `data` is given without the offset. DATA longer
/// than 255 bytes cannot be framed: the caller keeps to [`MAX_READ_REPLY_DATA`].
pub fn encode_frame(address: &Address, control: u8, data: &[u8]) -> Vec<u8> {
    debug_assert!(data.len() <= 255, "DATA of {} bytes", data.len());
    let mut f = Vec::with_capacity(FRAME_OVERHEAD + data.len());
    f.push(START);
    f.extend_from_slice(&address.wire());
    f.push(START);
    f.push(control);
    f.push(data.len() as u8);
    f.extend(data.iter().map(|b| b.wrapping_add(DATA_OFFSET)));
    f.push(checksum(&f));
    f.push(END);
    f
}

/// `frame` after `count` `FE` wake-up bytes: what a master writes.
pub fn with_preamble(count: usize, frame: &[u8]) -> Vec<u8> {
    let mut out = vec![PREAMBLE; count];
    out.extend_from_slice(frame);
    out
}

/// A read request for `di` (11H for a 2007 identifier, 01H for a 1997 one).
pub fn read_request(address: &Address, di: DataId) -> Vec<u8> {
    encode_frame(address, di.version().read_function(), &di.wire())
}

/// A 2007 follow-up read (12H): the identifier and the number of the frame wanted (the first
/// follow-up is 1).
pub fn read_follow_up_request(address: &Address, di: u32, frame_number: u8) -> Vec<u8> {
    let mut data = di.to_le_bytes().to_vec();
    data.push(frame_number);
    encode_frame(address, READ_FOLLOW_UP_2007, &data)
}

/// The read-address request (13H to `AAAAAAAAAAAA`).
pub fn read_address_request() -> Vec<u8> {
    encode_frame(&Address::WILDCARD, READ_ADDRESS_2007, &[])
}

/// A calendar time as a meter keeps it (local time of the area, no zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MeterTime {
    /// 2000..=2099.
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl MeterTime {
    /// The calendar time `secs` seconds after the Unix epoch, shifted by `offset_s` (e.g.
    /// 8 × 3600 for China Standard Time).
    pub fn from_unix(secs: i64, offset_s: i64) -> MeterTime {
        let t = secs + offset_s;
        let days = t.div_euclid(86_400);
        let rem = t.rem_euclid(86_400);
        // Civil date from days (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
        MeterTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// Seconds since the Unix epoch of this calendar time read with `offset_s`.
    pub fn to_unix(&self, offset_s: i64) -> i64 {
        let (y, m) = if self.month <= 2 {
            (i64::from(self.year) - 1, i64::from(self.month) + 9)
        } else {
            (i64::from(self.year), i64::from(self.month) - 3)
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - offset_s
    }
}

/// `n` (0..=99) as one BCD byte.
fn bcd_byte(n: u8) -> u8 {
    ((n / 10) << 4) | (n % 10)
}

/// One BCD byte as a number, `None` for a nibble above 9.
fn byte_value(b: u8) -> Option<u8> {
    let (h, l) = (b >> 4, b & 0x0F);
    (h <= 9 && l <= 9).then_some(h * 10 + l)
}

/// The DATA of a time sync: `ss mm hh DD MM YY`, seconds first (every multi-byte field of the
/// standard is sent low byte first; see the reference's note on an outside stack that differs).
pub fn time_sync_data(time: &MeterTime) -> [u8; 6] {
    [
        bcd_byte(time.second),
        bcd_byte(time.minute),
        bcd_byte(time.hour),
        bcd_byte(time.day),
        bcd_byte(time.month),
        bcd_byte((time.year % 100) as u8),
    ]
}

/// The broadcast time sync (08H to `999999999999`, the same in both editions); meters do not
/// reply.
pub fn time_sync_request(time: &MeterTime) -> Vec<u8> {
    encode_frame(&Address::BROADCAST, TIME_SYNC, &time_sync_data(time))
}

/// The time a time-sync DATA carries; `None` for bytes that are not a valid BCD time.
pub fn parse_time_sync_data(data: &[u8]) -> Option<MeterTime> {
    let [s, mi, h, d, mo, y] = data else {
        return None;
    };
    let t = MeterTime {
        second: byte_value(*s)?,
        minute: byte_value(*mi)?,
        hour: byte_value(*h)?,
        day: byte_value(*d)?,
        month: byte_value(*mo)?,
        year: 2000 + u16::from(byte_value(*y)?),
    };
    let valid = t.second < 60
        && t.minute < 60
        && t.hour < 24
        && (1..=31).contains(&t.day)
        && (1..=12).contains(&t.month);
    valid.then_some(t)
}

/// The order N1 of a remote-control request (1CH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOrder {
    /// 1AH 跳闸: open the relay (the customer's supply is cut).
    Trip,
    /// 1BH 合闸允许: the relay may close (the customer, or the meter, closes it).
    CloseAllowed,
    /// 2AH 报警: the pre-trip alarm on.
    Alarm,
    /// 2BH 报警解除: the alarm off.
    AlarmOff,
    /// 3AH 保电: keep power — every trip is refused until keep-power is off.
    KeepPower,
    /// 3BH 保电解除: keep power off.
    KeepPowerOff,
}

impl ControlOrder {
    /// The N1 byte.
    pub fn code(self) -> u8 {
        match self {
            ControlOrder::Trip => 0x1A,
            ControlOrder::CloseAllowed => 0x1B,
            ControlOrder::Alarm => 0x2A,
            ControlOrder::AlarmOff => 0x2B,
            ControlOrder::KeepPower => 0x3A,
            ControlOrder::KeepPowerOff => 0x3B,
        }
    }

    /// The order of an N1 byte; `None` for a byte the standard does not define.
    pub fn from_code(code: u8) -> Option<ControlOrder> {
        Some(match code {
            0x1A => ControlOrder::Trip,
            0x1B => ControlOrder::CloseAllowed,
            0x2A => ControlOrder::Alarm,
            0x2B => ControlOrder::AlarmOff,
            0x3A => ControlOrder::KeepPower,
            0x3B => ControlOrder::KeepPowerOff,
            _ => return None,
        })
    }
}

/// What a remote-control request (1CH) carries, as a meter reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteControl {
    /// PA (the password's level) then P0..P2 (low byte first), as on the wire.
    pub password: [u8; 4],
    /// C0..C3, low byte first.
    pub operator: [u8; 4],
    /// N1 as sent (see [`ControlOrder::from_code`]).
    pub order: u8,
    /// N3..N8: until when the order is valid; `None` when the bytes are not a valid time.
    pub valid_until: Option<MeterTime>,
}

/// The 16 DATA bytes of a remote-control request (before the 0x33 offset): password,
/// operator code, N1, N2 = 00, validity end `ss mm hh DD MM YY`.
pub fn remote_control_data(
    password: [u8; 4],
    operator: [u8; 4],
    order: ControlOrder,
    valid_until: &MeterTime,
) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..4].copy_from_slice(&password);
    d[4..8].copy_from_slice(&operator);
    d[8] = order.code();
    d[9] = 0x00;
    d[10..].copy_from_slice(&time_sync_data(valid_until));
    d
}

/// The remote-control request (1CH) to `address`.
pub fn remote_control_request(
    address: &Address,
    password: [u8; 4],
    operator: [u8; 4],
    order: ControlOrder,
    valid_until: &MeterTime,
) -> Vec<u8> {
    encode_frame(
        address,
        REMOTE_CONTROL_2007,
        &remote_control_data(password, operator, order, valid_until),
    )
}

/// The remote control a 1CH DATA carries (meter side); `None` unless it is 16 bytes.
pub fn parse_remote_control_data(data: &[u8]) -> Option<RemoteControl> {
    if data.len() != 16 {
        return None;
    }
    Some(RemoteControl {
        password: data[..4].try_into().ok()?,
        operator: data[4..8].try_into().ok()?,
        order: data[8],
        valid_until: parse_time_sync_data(&data[10..16]),
    })
}

/// The normal reply to a remote control (9CH, no data).
pub fn remote_control_reply(address: &Address) -> Vec<u8> {
    encode_frame(address, REMOTE_CONTROL_2007 | REPLY, &[])
}

/// A password as written in a secrets file, `"02123456"`: 8 hex digits, the level PA first,
/// then the password P2 P1 P0 as read; returned as the wire order PA P0 P1 P2.
pub fn parse_password(text: &str) -> Option<[u8; 4]> {
    let b = hex4(text)?;
    Some([b[0], b[3], b[2], b[1]])
}

/// An operator code as written, `"00000000"`: 8 hex digits C3..C0 as read; returned low byte
/// first (C0..C3).
pub fn parse_operator(text: &str) -> Option<[u8; 4]> {
    let b = hex4(text)?;
    Some([b[3], b[2], b[1], b[0]])
}

/// 8 hex digits as 4 bytes, most significant first.
fn hex4(text: &str) -> Option<[u8; 4]> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 4];
    for (k, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * k..2 * k + 2], 16).ok()?;
    }
    Some(out)
}

/// Status word 3 bit 4: the relay is open (断; 0 closed, 通).
pub const SW3_RELAY_OPEN: u16 = 1 << 4;
/// Status word 3 bit 6: the relay command state (1: the last order was to open).
pub const SW3_RELAY_COMMAND_OPEN: u16 = 1 << 6;
/// Status word 3 bit 7: the pre-trip alarm is on.
pub const SW3_PRE_TRIP_ALARM: u16 = 1 << 7;
/// Status word 3 bit 12: keep power (保电) is on. UNVERIFIED: not in the project's reference;
/// meters after the 2013 amendment show it here.
pub const SW3_KEEP_POWER: u16 = 1 << 12;

/// The relay's state as status word 3 shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStatus {
    /// Bit 4: the relay is open (the supply is cut).
    pub open: bool,
    /// Bit 6: the last order was to open it.
    pub command_open: bool,
    /// Bit 7: the pre-trip alarm.
    pub alarm: bool,
    /// Bit 12: keep power (UNVERIFIED bit).
    pub keep_power: bool,
}

impl RelayStatus {
    /// The state a status word 3 shows.
    pub fn from_word(word: u16) -> RelayStatus {
        RelayStatus {
            open: word & SW3_RELAY_OPEN != 0,
            command_open: word & SW3_RELAY_COMMAND_OPEN != 0,
            alarm: word & SW3_PRE_TRIP_ALARM != 0,
            keep_power: word & SW3_KEEP_POWER != 0,
        }
    }

    /// The bits of status word 3 this state sets (meter side).
    pub fn word(&self) -> u16 {
        let bit = |on: bool, b: u16| if on { b } else { 0 };
        bit(self.open, SW3_RELAY_OPEN)
            | bit(self.command_open, SW3_RELAY_COMMAND_OPEN)
            | bit(self.alarm, SW3_PRE_TRIP_ALARM)
            | bit(self.keep_power, SW3_KEEP_POWER)
    }
}

/// A normal read reply (server side): 91H / 81H (with D5 when `more` frames follow), DATA =
/// identifier + `value`.
pub fn read_reply(address: &Address, di: DataId, value: &[u8], more: bool) -> Vec<u8> {
    let mut data = di.wire();
    data.extend_from_slice(value);
    let more = if more { MORE_FRAMES } else { 0 };
    encode_frame(address, di.version().read_function() | REPLY | more, &data)
}

/// A 2007 follow-up reply (92H, B2H when more follow): identifier, value, frame number.
pub fn read_follow_up_reply(
    address: &Address,
    di: u32,
    value: &[u8],
    frame_number: u8,
    more: bool,
) -> Vec<u8> {
    let mut data = di.to_le_bytes().to_vec();
    data.extend_from_slice(value);
    data.push(frame_number);
    let more = if more { MORE_FRAMES } else { 0 };
    encode_frame(address, READ_FOLLOW_UP_2007 | REPLY | more, &data)
}

/// The read-address reply (93H), DATA = the meter's address.
pub fn read_address_reply(address: &Address) -> Vec<u8> {
    encode_frame(address, READ_ADDRESS_2007 | REPLY, &address.wire())
}

/// An abnormal reply to `function` carrying `err` (D1H for a 2007 read, C1H for a 1997 one).
pub fn abnormal_reply(address: &Address, function: u8, err: u8) -> Vec<u8> {
    encode_frame(address, function | REPLY | ABNORMAL, &[err])
}

/// What [`parse_frame`] makes of the bytes at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameParse {
    /// A frame with a valid checksum and end byte; `end` is the offset just past it.
    Frame { frame: Frame, end: usize },
    /// The bytes so far are the beginning of a frame (or `FE` bytes).
    Incomplete,
    /// A frame shape (`68`, address, `68`, C, L, DATA, CS, `16`) with a wrong checksum.
    BadChecksum { address: Address, control: u8 },
    /// Not a frame at this offset.
    NotAFrame,
}

/// Parses the frame at the start of `buf`, after any number of `FE` bytes.
pub fn parse_frame(buf: &[u8]) -> FrameParse {
    let skip = buf.iter().take_while(|&&b| b == PREAMBLE).count();
    let rest = &buf[skip..];
    let Some(&first) = rest.first() else {
        return FrameParse::Incomplete;
    };
    if first != START {
        return FrameParse::NotAFrame;
    }
    if rest.len() < 10 {
        return if rest.len() > 7 && rest[7] != START {
            FrameParse::NotAFrame
        } else {
            FrameParse::Incomplete
        };
    }
    if rest[7] != START {
        return FrameParse::NotAFrame;
    }
    let len = rest[9] as usize;
    let total = FRAME_OVERHEAD + len;
    if rest.len() < total {
        return FrameParse::Incomplete;
    }
    if rest[total - 1] != END {
        return FrameParse::NotAFrame;
    }
    let address = Address(rest[1..7].try_into().expect("six bytes"));
    let control = rest[8];
    if checksum(&rest[..total - 2]) != rest[total - 2] {
        return FrameParse::BadChecksum { address, control };
    }
    FrameParse::Frame {
        frame: Frame {
            address,
            control,
            data: rest[10..10 + len]
                .iter()
                .map(|b| b.wrapping_sub(DATA_OFFSET))
                .collect(),
        },
        end: skip + total,
    }
}

/// What [`scan_reply`] found in the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyScan {
    /// A valid normal reply to the request's function from the addressed meter; `end` is the
    /// offset just past it.
    Reply { frame: Frame, end: usize },
    /// A valid abnormal reply from the addressed meter: its ERR byte.
    Abnormal { err: u8, end: usize },
    /// No verdict yet: more bytes may complete a reply (also when everything so far is noise,
    /// preamble or an echo of the request). The transport keeps reading until its deadline.
    NeedMore,
    /// A frame of the addressed meter with a wrong checksum, and no other candidate is still
    /// incomplete. Final once the line falls silent.
    BadChecksum,
    /// A valid reply to this function from another address. Final once the line falls silent.
    OtherAddress { address: Address },
    /// A valid reply from the addressed meter with another control code. Final once the line
    /// falls silent.
    WrongControl { control: u8 },
}

/// Scans `buf` (every byte received since the request was sent) for the reply of `address` to
/// a request with `function`, at any offset.
///
/// A valid reply or abnormal reply anywhere in `buf` wins. Otherwise a frame of the addressed
/// meter that is not complete yet means [`ReplyScan::NeedMore`]; then a complete frame that
/// fails is reported ([`ReplyScan::BadChecksum`], [`ReplyScan::OtherAddress`],
/// [`ReplyScan::WrongControl`]). `FE` bytes, noise, trailing bytes and frames without the
/// reply bit (an echo of the request) are skipped. With a wildcard `address`, a reply from any
/// matching address is the reply.
pub fn scan_reply(buf: &[u8], address: &Address, function: u8) -> ReplyScan {
    let function = function & FUNCTION;
    let mut incomplete = false;
    let mut rejection: Option<ReplyScan> = None;
    let ours = |a: &Address| address.matches(a);
    for i in 0..buf.len() {
        if buf[i] != START {
            continue;
        }
        match parse_frame(&buf[i..]) {
            FrameParse::Frame { frame, end } => {
                if !frame.is_reply() {
                    continue; // an echo of a request, or another master's request
                }
                let end = i + end;
                if !ours(&frame.address) {
                    if frame.function() == function {
                        rejection.get_or_insert(ReplyScan::OtherAddress {
                            address: frame.address,
                        });
                    }
                    continue;
                }
                if frame.function() != function {
                    rejection.get_or_insert(ReplyScan::WrongControl {
                        control: frame.control,
                    });
                    continue;
                }
                if frame.is_abnormal() {
                    let Some(&err) = frame.data.first() else {
                        rejection.get_or_insert(ReplyScan::WrongControl {
                            control: frame.control,
                        });
                        continue;
                    };
                    return ReplyScan::Abnormal { err, end };
                }
                return ReplyScan::Reply { frame, end };
            }
            FrameParse::Incomplete => {
                // Only a frame that may still turn out to be ours keeps the transaction open.
                let have = &buf[i + 1..buf.len().min(i + 7)];
                let wire = address.wire();
                if have
                    .iter()
                    .zip(wire.iter())
                    .all(|(got, want)| *want == 0xAA || got == want)
                {
                    incomplete = true;
                }
            }
            FrameParse::BadChecksum {
                address: from,
                control,
            } => {
                if ours(&from) && control & REPLY != 0 {
                    rejection.get_or_insert(ReplyScan::BadChecksum);
                }
            }
            FrameParse::NotAFrame => {}
        }
    }
    if incomplete {
        return ReplyScan::NeedMore;
    }
    rejection.unwrap_or(ReplyScan::NeedMore)
}

/// What [`scan_request`] found in the bytes a meter received (server side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestScan {
    /// A request frame (reply bit clear) with a valid checksum, and the offset just past it.
    Request { frame: Frame, end: usize },
    /// No complete request in `buf` yet.
    NeedMore,
}

/// Scans `buf` for the first valid request frame at any offset (server side); noise and `FE`
/// before it are skipped, the caller drops bytes up to `end`.
pub fn scan_request(buf: &[u8]) -> RequestScan {
    for i in 0..buf.len() {
        if buf[i] != START {
            continue;
        }
        if let FrameParse::Frame { frame, end } = parse_frame(&buf[i..]) {
            if !frame.is_reply() {
                return RequestScan::Request {
                    frame,
                    end: i + end,
                };
            }
        }
    }
    RequestScan::NeedMore
}

/// Why value bytes are not the BCD number a data identifier promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BcdError {
    #[error("byte {byte:#04x} is not BCD")]
    NotBcd { byte: u8 },
    #[error("{got} value bytes, expected {expected}")]
    Length { expected: usize, got: usize },
}

/// A BCD number of `bytes` (least significant byte first, offset removed) with `decimals`
/// decimal places; with `signed`, the top bit of the most significant byte is the sign.
pub fn decode_bcd(bytes: &[u8], decimals: u8, signed: bool) -> Result<f64, BcdError> {
    let mut negative = false;
    let mut n: u64 = 0;
    for (k, &b) in bytes.iter().enumerate().rev() {
        let mut b = b;
        if signed && k == bytes.len() - 1 {
            negative = b & 0x80 != 0;
            b &= 0x7F;
        }
        let v = byte_value(b).ok_or(BcdError::NotBcd { byte: bytes[k] })?;
        n = n * 100 + u64::from(v);
    }
    let v = n as f64 / 10f64.powi(i32::from(decimals));
    Ok(if negative { -v } else { v })
}

/// `value` as `len` BCD bytes (least significant first) with `decimals` decimal places,
/// rounded; with `signed`, a negative value sets the top bit of the most significant byte.
/// Digits beyond `len` bytes are dropped (the register wraps, as a meter's does).
pub fn encode_bcd(value: f64, len: usize, decimals: u8, signed: bool) -> Vec<u8> {
    let negative = signed && value < 0.0;
    let mut n = (value.abs() * 10f64.powi(i32::from(decimals))).round() as u64;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        out.push(bcd_byte((n % 100) as u8));
        n /= 100;
    }
    if let Some(top) = out.last_mut() {
        if signed {
            *top &= 0x7F;
        }
        if negative {
            *top |= 0x80;
        }
    }
    out
}

/// The decimal digits of BCD `bytes` (least significant byte first) written most significant
/// first, e.g. a date `YYMMDDWW` or a time `hhmmss`; `None` if a nibble is not a digit.
pub fn bcd_digits(bytes: &[u8]) -> Option<String> {
    let mut s = String::with_capacity(2 * bytes.len());
    for &b in bytes.iter().rev() {
        let v = byte_value(b)?;
        s.push(char::from(b'0' + v / 10));
        s.push(char::from(b'0' + v % 10));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    #[test]
    fn reference_vector_read_address_with_the_wildcard() {
        assert_eq!(
            read_address_request(),
            hex("68 AA AA AA AA AA AA 68 13 00 DF 16")
        );
    }

    #[test]
    fn reference_vector_address_low_byte_first() {
        let a = Address::parse("123456781012").unwrap();
        assert_eq!(a.wire(), [0x12, 0x10, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(a.to_string(), "123456781012");
        // Leading zeros are kept both ways.
        let z = Address::parse("000012345678").unwrap();
        assert_eq!(z.wire(), [0x78, 0x56, 0x34, 0x12, 0x00, 0x00]);
        assert_eq!(z.to_string(), "000012345678");
        assert_eq!(Address::parse("999999999999").unwrap(), Address::BROADCAST);
        assert_eq!(Address::parse("AAAAAAAAAAAA").unwrap(), Address::WILDCARD);
        assert!(Address::BROADCAST.is_broadcast());
        for bad in [
            "12345678901",
            "1234567890123",
            "12345678901X",
            "12345678901A",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        let e = Address::parse("1234").unwrap_err().to_string();
        assert!(e.contains("12 digits"), "{e}");
    }

    #[test]
    fn reference_vector_read_energy_di_on_the_wire() {
        let a = Address::parse("123456781012").unwrap();
        let f = read_request(&a, DataId::V2007(0x0001_0000));
        assert_eq!(
            &f[..14],
            &hex("68 12 10 78 56 34 12 68 11 04 33 33 34 33")[..]
        );
        assert_eq!(f[14], checksum(&f[..14]));
        assert_eq!(f[15], END);
    }

    #[test]
    fn reference_vector_request_with_preamble() {
        let wire = hex("FE FE FE FE 68 02 00 31 08 22 20 68 11 04 32 55 B3 35 D1 16");
        let a = Address::parse("202208310002").unwrap();
        let di = DataId::parse("028022FF").unwrap();
        assert_eq!(with_preamble(4, &read_request(&a, di)), wire);
        // The meter's side finds it after the preamble.
        match scan_request(&wire) {
            RequestScan::Request { frame, end } => {
                assert_eq!(end, wire.len());
                assert_eq!(frame.address, a);
                assert_eq!(frame.control, READ_2007);
                assert_eq!(DataId::from_wire(Version::V2007, &frame.data), Some(di));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reference_vector_captured_reply() {
        let a = Address::parse("123456781012").unwrap();
        let mut reply = hex("68 12 10 78 56 34 12 68 91 08 33 33 34 33 9A 78 56 34");
        reply.push(checksum(&reply));
        reply.push(END);
        assert_eq!(
            reply,
            read_reply(
                &a,
                DataId::V2007(0x0001_0000),
                &[0x67, 0x45, 0x23, 0x01],
                false
            )
        );
        match scan_reply(&reply, &a, READ_2007) {
            ReplyScan::Reply { frame, end } => {
                assert_eq!(end, reply.len());
                assert_eq!(frame.data[..4], [0x00, 0x00, 0x01, 0x00]);
                let v = decode_bcd(&frame.data[4..], 2, false).unwrap();
                assert!((v - 12345.67).abs() < 1e-9, "{v}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_round_trip_and_any_preamble_is_skipped() {
        let a = Address::parse("000000000001").unwrap();
        let f = read_reply(&a, DataId::V2007(0x0201_0100), &[0x00, 0x22], false);
        for n in [0, 1, 2, 4, 9] {
            let wire = with_preamble(n, &f);
            match parse_frame(&wire) {
                FrameParse::Frame { frame, end } => {
                    assert_eq!(end, wire.len());
                    assert_eq!(frame.encode(), f);
                    assert!(frame.is_reply() && !frame.is_abnormal() && !frame.more_frames());
                    assert_eq!(frame.function(), READ_2007);
                }
                other => panic!("{n}: {other:?}"),
            }
        }
        for k in 0..f.len() {
            assert_eq!(parse_frame(&f[..k]), FrameParse::Incomplete, "{k}");
        }
    }

    #[test]
    fn data_offset_and_checksum() {
        let f = encode_frame(&Address::WILDCARD, 0x11, &[0x00, 0xCD, 0xFF]);
        assert_eq!(&f[10..13], &[0x33, 0x00, 0x32]);
        let mut bad = f.clone();
        bad[11] ^= 1;
        assert!(matches!(parse_frame(&bad), FrameParse::BadChecksum { .. }));
        let mut no_end = f.clone();
        *no_end.last_mut().unwrap() = 0x17;
        assert_eq!(parse_frame(&no_end), FrameParse::NotAFrame);
    }

    #[test]
    fn scanner_needs_more_for_every_prefix() {
        let a = Address::parse("000000000007").unwrap();
        let reply = with_preamble(
            4,
            &read_reply(&a, DataId::V2007(0x0001_0000), &[1, 2, 3, 4], false),
        );
        for n in 0..reply.len() {
            assert_eq!(
                scan_reply(&reply[..n], &a, READ_2007),
                ReplyScan::NeedMore,
                "{n}"
            );
        }
    }

    #[test]
    fn scanner_skips_garbage_echo_and_trailing_ff() {
        let a = Address::parse("000000000007").unwrap();
        let mut buf = vec![0x00, 0x68, 0x07, 0x16, 0xFF, 0x68];
        buf.extend(with_preamble(
            4,
            &read_request(&a, DataId::V2007(0x0001_0000)),
        ));
        buf.extend([0xFE, 0xFE]);
        let reply = read_reply(
            &a,
            DataId::V2007(0x0001_0000),
            &[0x67, 0x45, 0x23, 0x01],
            false,
        );
        let start = buf.len();
        buf.extend(&reply);
        buf.extend([0xFF, 0xFF]);
        match scan_reply(&buf, &a, READ_2007) {
            ReplyScan::Reply { end, .. } => assert_eq!(end, start + reply.len()),
            other => panic!("{other:?}"),
        }
        // Noise alone is never a verdict.
        assert_eq!(scan_reply(&buf[..6], &a, READ_2007), ReplyScan::NeedMore);
    }

    #[test]
    fn scanner_rejects_bad_checksum_other_address_wrong_control() {
        let a = Address::parse("000000000007").unwrap();
        let b = Address::parse("000000000008").unwrap();
        let di = DataId::V2007(0x0001_0000);
        let mut bad = read_reply(&a, di, &[1, 2, 3, 4], false);
        let n = bad.len();
        bad[n - 2] ^= 0x5A;
        assert_eq!(scan_reply(&bad, &a, READ_2007), ReplyScan::BadChecksum);
        // A valid reply after the corrupt one still wins.
        let mut both = bad.clone();
        both.extend(read_reply(&a, di, &[1, 2, 3, 4], false));
        assert!(matches!(
            scan_reply(&both, &a, READ_2007),
            ReplyScan::Reply { .. }
        ));
        let other = read_reply(&b, di, &[1, 2, 3, 4], false);
        assert_eq!(
            scan_reply(&other, &a, READ_2007),
            ReplyScan::OtherAddress { address: b }
        );
        let wrong = read_address_reply(&a);
        assert_eq!(
            scan_reply(&wrong, &a, READ_2007),
            ReplyScan::WrongControl { control: 0x93 }
        );
        // The wildcard takes any address.
        match scan_reply(&other, &Address::WILDCARD, READ_2007) {
            ReplyScan::Reply { frame, .. } => assert_eq!(frame.address, b),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn abnormal_replies_in_both_editions() {
        let a = Address::parse("000000000007").unwrap();
        let d1 = abnormal_reply(&a, READ_2007, ERR_NO_SUCH_DATA_ITEM);
        assert_eq!(d1[8], 0xD1);
        assert_eq!(
            scan_reply(&d1, &a, READ_2007),
            ReplyScan::Abnormal {
                err: 0x02,
                end: d1.len()
            }
        );
        let c1 = abnormal_reply(&a, READ_1997, ERR_PASSWORD);
        assert_eq!(c1[8], 0xC1);
        assert!(matches!(
            scan_reply(&c1, &a, READ_1997),
            ReplyScan::Abnormal { err: 0x04, .. }
        ));
        assert_eq!(error_meaning(Version::V2007, 0x02), "no such data item");
        assert_eq!(
            error_meaning(Version::V2007, 0x05),
            "other error, password error / unauthorised"
        );
        assert!(error_meaning(Version::V1997, 0x02).contains("no such data item"));
        assert_eq!(error_meaning(Version::V2007, 0), "no error bit set");
    }

    #[test]
    fn follow_up_frames_2007() {
        let a = Address::parse("000000000007").unwrap();
        let first = read_reply(&a, DataId::V2007(0x0506_0101), &[1, 2], true);
        assert_eq!(first[8], 0xB1);
        match scan_reply(&first, &a, READ_2007) {
            ReplyScan::Reply { frame, .. } => assert!(frame.more_frames()),
            o => panic!("{o:?}"),
        }
        let req = read_follow_up_request(&a, 0x0506_0101, 1);
        assert_eq!(req[8], 0x12);
        assert_eq!(req[9], 5);
        let follow = read_follow_up_reply(&a, 0x0506_0101, &[3, 4], 1, false);
        match scan_reply(&follow, &a, READ_FOLLOW_UP_2007) {
            ReplyScan::Reply { frame, .. } => {
                assert_eq!(frame.control, 0x92);
                assert_eq!(frame.data, vec![0x01, 0x01, 0x06, 0x05, 3, 4, 1]);
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn edition_1997_read() {
        let a = Address::parse("000000000042").unwrap();
        let di = DataId::parse("9010").unwrap();
        assert_eq!(di, DataId::V1997(0x9010));
        let req = read_request(&a, di);
        // 68 42 00 00 00 00 00 68 01 02 43 C3 CS 16 (DI 10 90 + 33).
        assert_eq!(&req[..12], &hex("68 42 00 00 00 00 00 68 01 02 43 C3")[..]);
        assert_eq!(req[12], checksum(&req[..12]));
        let reply = read_reply(&a, di, &encode_bcd(1234.56, 4, 2, false), false);
        assert_eq!(reply[8], 0x81);
        match scan_reply(&reply, &a, READ_1997) {
            ReplyScan::Reply { frame, .. } => {
                assert_eq!(DataId::from_wire(Version::V1997, &frame.data), Some(di));
                assert_eq!(decode_bcd(&frame.data[2..], 2, false), Ok(1234.56));
            }
            o => panic!("{o:?}"),
        }
        // A 2007 read of the same meter is another function: not its reply.
        assert!(matches!(
            scan_reply(&reply, &a, READ_2007),
            ReplyScan::WrongControl { control: 0x81 }
        ));
    }

    #[test]
    fn time_sync_seconds_first() {
        let t = MeterTime {
            year: 2026,
            month: 11,
            day: 29,
            hour: 15,
            minute: 4,
            second: 5,
        };
        let f = time_sync_request(&t);
        assert_eq!(&f[1..7], &[0x99; 6]);
        assert_eq!(f[8], 0x08);
        assert_eq!(f[9], 6);
        // 05 04 15 29 11 26 + 0x33.
        assert_eq!(&f[10..16], &hex("38 37 48 5C 44 59")[..]);
        assert_eq!(parse_time_sync_data(&time_sync_data(&t)), Some(t));
        // 2026-11-29T15:04:05Z and back.
        let secs = t.to_unix(0);
        assert_eq!(secs, 1_795_964_645);
        assert_eq!(MeterTime::from_unix(secs, 0), t);
        let cst = MeterTime::from_unix(secs, 8 * 3600);
        assert_eq!((cst.day, cst.hour), (29, 23));
        assert_eq!(MeterTime::from_unix(951_782_400, 0).day, 29); // 2000-02-29
    }

    #[test]
    fn remote_control_trip_vector() {
        let a = Address::parse("000000000001").unwrap();
        let until = MeterTime {
            year: 2026,
            month: 11,
            day: 29,
            hour: 15,
            minute: 4,
            second: 5,
        };
        let password = parse_password("02123456").unwrap();
        assert_eq!(password, [0x02, 0x56, 0x34, 0x12]);
        let operator = parse_operator("00000000").unwrap();
        let f = remote_control_request(&a, password, operator, ControlOrder::Trip, &until);
        // Password 02 56 34 12, operator 00 00 00 00, N1 1A, N2 00, 05 04 15 29 11 26: +33H.
        assert_eq!(
            f,
            hex(
                "68 01 00 00 00 00 00 68 1C 10 35 89 67 45 33 33 33 33 4D 33 38 37 48 5C 44 59 63 16"
            )
        );
        // The meter's side reads it back.
        let RequestScan::Request { frame, .. } = scan_request(&f) else {
            panic!("no request")
        };
        assert_eq!(frame.function(), REMOTE_CONTROL_2007);
        let rc = parse_remote_control_data(&frame.data).unwrap();
        assert_eq!(rc.password, password);
        assert_eq!(rc.operator, [0; 4]);
        assert_eq!(ControlOrder::from_code(rc.order), Some(ControlOrder::Trip));
        assert_eq!(rc.valid_until, Some(until));
        assert_eq!(parse_remote_control_data(&frame.data[..15]), None);
        // Operator code low byte first.
        assert_eq!(parse_operator("12345678"), Some([0x78, 0x56, 0x34, 0x12]));
        for bad in ["0212345", "021234567", "0212345G", ""] {
            assert_eq!(parse_password(bad), None, "{bad}");
        }
    }

    #[test]
    fn remote_control_orders_and_replies() {
        let codes: Vec<u8> = [
            ControlOrder::Trip,
            ControlOrder::CloseAllowed,
            ControlOrder::Alarm,
            ControlOrder::AlarmOff,
            ControlOrder::KeepPower,
            ControlOrder::KeepPowerOff,
        ]
        .iter()
        .map(|o| o.code())
        .collect();
        assert_eq!(codes, vec![0x1A, 0x1B, 0x2A, 0x2B, 0x3A, 0x3B]);
        for c in codes {
            assert_eq!(ControlOrder::from_code(c).unwrap().code(), c);
        }
        assert_eq!(ControlOrder::from_code(0x1C), None);
        let a = Address::parse("000000000001").unwrap();
        // Normal reply 9CH without data.
        let ok = remote_control_reply(&a);
        assert_eq!(ok, hex("68 01 00 00 00 00 00 68 9C 00 6D 16"));
        assert!(matches!(
            scan_reply(&ok, &a, REMOTE_CONTROL_2007),
            ReplyScan::Reply { .. }
        ));
        // Abnormal DCH with ERR bit 2: the password is wrong.
        let refused = abnormal_reply(&a, REMOTE_CONTROL_2007, ERR_PASSWORD);
        assert_eq!(refused, hex("68 01 00 00 00 00 00 68 DC 01 37 E5 16"));
        match scan_reply(&refused, &a, REMOTE_CONTROL_2007) {
            ReplyScan::Abnormal { err, .. } => {
                assert_eq!(
                    error_meaning(Version::V2007, err),
                    "password error / unauthorised"
                )
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn status_word_3_relay_bits() {
        assert_eq!(STATUS_WORD_3, 0x0400_0503);
        let s = RelayStatus::from_word(0x0010);
        assert!(s.open && !s.command_open && !s.alarm && !s.keep_power);
        let all = RelayStatus::from_word(0x10D0);
        assert_eq!(
            all,
            RelayStatus {
                open: true,
                command_open: true,
                alarm: true,
                keep_power: true
            }
        );
        assert_eq!(all.word(), 0x10D0);
        assert_eq!(RelayStatus::from_word(0x0F2F), RelayStatus::default());
    }

    #[test]
    fn bcd_values_with_decimals_and_sign() {
        assert_eq!(
            decode_bcd(&[0x67, 0x45, 0x23, 0x01], 2, false),
            Ok(12345.67)
        );
        // Voltage XXX.X: 220.5 V = 05 22.
        assert_eq!(decode_bcd(&[0x05, 0x22], 1, false), Ok(220.5));
        // Current XXX.XXX signed: -1.234 A = 34 12 80.
        assert_eq!(decode_bcd(&[0x34, 0x12, 0x80], 3, true), Ok(-1.234));
        assert_eq!(encode_bcd(-1.234, 3, 3, true), vec![0x34, 0x12, 0x80]);
        // Unsigned: the top bit is a digit (8).
        assert_eq!(decode_bcd(&[0x00, 0x80], 0, false), Ok(8000.0));
        assert_eq!(
            decode_bcd(&[0x1A], 0, false),
            Err(BcdError::NotBcd { byte: 0x1A })
        );
        assert_eq!(
            encode_bcd(12345.674, 4, 2, false),
            vec![0x67, 0x45, 0x23, 0x01]
        );
        assert_eq!(encode_bcd(1_000_000.0, 4, 2, false), vec![0, 0, 0, 0]);
        for v in [0.0, 0.001, 9.999, -7.5, 79.999] {
            let b = encode_bcd(v, 3, 3, true);
            assert!((decode_bcd(&b, 3, true).unwrap() - v).abs() < 1e-9, "{v}");
        }
        assert_eq!(bcd_digits(&[0x07, 0x29, 0x11, 0x26]).unwrap(), "26112907");
        assert_eq!(bcd_digits(&[0xFF]), None);
    }

    #[test]
    fn data_identifiers() {
        assert_eq!(DataId::parse("0001FF00"), Some(DataId::V2007(0x0001_FF00)));
        assert_eq!(
            DataId::V2007(0x0001_FF00).wire(),
            vec![0x00, 0xFF, 0x01, 0x00]
        );
        assert_eq!(DataId::V2007(0x0201_0100).to_string(), "02010100");
        assert_eq!(DataId::V1997(0xB611).to_string(), "B611");
        assert_eq!(DataId::parse("901"), None);
        assert_eq!(DataId::parse("9O10"), None);
    }
}
