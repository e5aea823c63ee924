//! The DL/T 645 client transport: a deadline on every transaction, and framing that never
//! takes a stale, corrupt or foreign reply for a good one.
//!
//! [`Dlt645Transport`] speaks DL/T 645 over any byte stream: a serial port
//! ([`Dlt645Transport::open_serial`], `tcflush` on its fd), a TCP connection to a transparent
//! serial server ([`Dlt645Transport::connect`]), or anything `AsyncRead + AsyncWrite`. Its line
//! settings are its own [`Line`] (2400 baud 8E1 by default, any of 1200..19200), so this module
//! depends on no configuration type: the bus driver builds a [`Line`] from its bus.
//!
//! One transaction:
//!
//! 1. discard whatever is pending in the input (a reply that came after an earlier deadline,
//!    trailing `FF` of the last reply);
//! 2. send the preamble (`FE` × [`codec::DEFAULT_PREAMBLE_LEN`] unless set otherwise) and the
//!    request, within the transaction's deadline;
//! 3. read, scanning everything received for the expected reply at any offset
//!    ([`codec::scan_reply`]); a valid reply or abnormal reply ends the transaction at once;
//! 4. a complete frame that fails (bad checksum, another address, another control code) ends it
//!    as soon as the line has been silent for [`Line::silence_gap`], well before the deadline;
//! 5. at the deadline, report a timeout only after a drain window in which a late reply is read
//!    and thrown away (then `tcflush(TCIFLUSH)` on a serial fd), so it cannot be taken for the
//!    next request's answer.
//!
//! A read whose reply has D5 set ("more frames follow") continues with follow-up requests
//! (12H) until a frame without D5, each its own transaction with its own deadline, and returns
//! the value bytes of every frame in order. Logging is the caller's job; every failure is a
//! typed [`Dlt645Error`].

use super::Dlt645Error;
use super::codec::{self, Address, DataId, Frame, MeterTime, ReplyScan, Version};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_serial::SerialStream;

/// The longest a meter may take before it starts replying (the standard allows 500 ms).
pub const MAX_RESPONSE_DELAY: Duration = Duration::from_millis(500);
/// The shortest silence taken as the end of what a meter sends, whatever the baud rate: ptys
/// and USB adapters deliver a frame in chunks.
pub const MIN_SILENCE: Duration = Duration::from_millis(20);
/// Baud rates DL/T 645 meters use.
pub const BAUD_RATES: [u32; 5] = [1200, 2400, 4800, 9600, 19200];
/// Most follow-up frames one read collects before giving up (a meter stuck on D5).
pub const MAX_FOLLOW_UPS: u8 = 64;

/// Bytes kept while scanning for a reply before the oldest are dropped.
const RX_LIMIT: usize = 4096;
/// Longest frame (L = 255) with a generous preamble.
const MAX_FRAME: usize = codec::FRAME_OVERHEAD + 255 + 16;

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// The serial line of a DL/T 645 bus: rate and character framing. Also paces the wire-time
/// arithmetic of a serial server's line behind TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl Default for Line {
    fn default() -> Line {
        Line::DEFAULT
    }
}

impl Line {
    /// 2400 baud 8E1, the standard's default.
    pub const DEFAULT: Line = Line {
        baud: 2400,
        parity: Parity::Even,
        data_bits: 8,
        stop_bits: 1,
    };

    /// 8E1 at `baud` (a real RS-485 line).
    pub fn even(baud: u32) -> Line {
        Line {
            baud,
            ..Line::DEFAULT
        }
    }

    /// 8N1 at `baud`: what a pseudo-terminal carries (the kernel refuses parity on ptys), for
    /// tests and the simulator.
    pub fn pty(baud: u32) -> Line {
        Line {
            baud,
            parity: Parity::None,
            ..Line::DEFAULT
        }
    }

    /// Refuses a baud rate outside [`BAUD_RATES`] or a framing other than 7/8 data bits and
    /// 1/2 stop bits.
    pub fn check(&self) -> Result<(), Dlt645Error> {
        if !BAUD_RATES.contains(&self.baud) {
            return Err(Dlt645Error::InvalidRequest(format!(
                "baud rate {} is not a DL/T 645 rate; use one of 1200, 2400, 4800, 9600, 19200",
                self.baud
            )));
        }
        if !(7..=8).contains(&self.data_bits) || !(1..=2).contains(&self.stop_bits) {
            return Err(Dlt645Error::InvalidRequest(format!(
                "{} data bits, {} stop bits; DL/T 645 lines are 8E1",
                self.data_bits, self.stop_bits
            )));
        }
        Ok(())
    }

    /// `2400 baud 8E1`.
    pub fn describe(&self) -> String {
        let p = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        format!(
            "{} baud {}{}{}",
            self.baud, self.data_bits, p, self.stop_bits
        )
    }

    /// Bits on the wire per character: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// Time on the wire of `bytes` characters.
    pub fn frame_time(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(
            bytes as f64 * f64::from(self.bits_per_char()) / f64::from(self.baud.max(1)),
        )
    }

    /// The silence after which what a meter sent is taken as complete: ten characters, at
    /// least [`MIN_SILENCE`]. DL/T 645 has no t3.5; a meter sends a frame without pauses.
    pub fn silence_gap(&self) -> Duration {
        self.frame_time(10).max(MIN_SILENCE)
    }

    /// Wire time of one read with the default preamble: the request (`FE` × 4 and a frame with
    /// the identifier) and a reply with `value_len` value bytes (`FE` × 4 too, as most meters
    /// send). Excludes the meter's response delay.
    pub fn read_wire_time(&self, version: Version, value_len: usize) -> Duration {
        let di = match version {
            Version::V1997 => 2,
            Version::V2007 => 4,
        };
        let request = codec::DEFAULT_PREAMBLE_LEN + codec::FRAME_OVERHEAD + di;
        let reply = codec::DEFAULT_PREAMBLE_LEN + codec::FRAME_OVERHEAD + di + value_len;
        self.frame_time(request + reply)
    }

    /// The default deadline of one transaction on this line: a meter's longest response
    /// delay ([`MAX_RESPONSE_DELAY`]), the wire time of a read of 50 value bytes (a block of
    /// the shipped models fits), and 200 ms of margin, rounded up to 100 ms. 1200 ms at
    /// 2400 8E1; 900 ms at 9600.
    pub fn default_timeout(&self) -> Duration {
        let ms = (MAX_RESPONSE_DELAY + self.read_wire_time(Version::V2007, 50)).as_millis() + 200;
        Duration::from_millis(ms.div_ceil(100) as u64 * 100)
    }
}

/// How pending input is thrown away before a request.
#[derive(Debug, Clone, Copy)]
enum InputQueue {
    /// A terminal: `tcflush(TCIFLUSH)` drops the kernel's input queue.
    Tty(RawFd),
    /// A socket: non-blocking `recv` until it would block (also detects a closed connection).
    Socket(RawFd),
    /// Any other stream: read whatever is ready without waiting.
    Stream,
}

/// DL/T 645 framing over a byte stream, with the guarantees listed in the module doc.
pub struct Dlt645Transport<S> {
    stream: S,
    line: Line,
    input: InputQueue,
    preamble: usize,
    /// Time spent reading and discarding after a timeout; `None`: the transaction's timeout.
    drain_window: Option<Duration>,
    rx: Vec<u8>,
}

impl Dlt645Transport<SerialStream> {
    /// Opens `device` with `line`'s settings. A setting the port refuses (a pty refuses
    /// parity: use [`Line::pty`] there) is [`Dlt645Error::LineSetting`], naming the device,
    /// the setting and the OS error.
    pub fn open_serial(device: &Path, line: Line) -> Result<Self, Dlt645Error> {
        use tokio_serial::SerialPortBuilderExt;
        line.check()?;
        let data_bits = if line.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        };
        let parity = match line.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let stop_bits = if line.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        let stream = tokio_serial::new(device.to_string_lossy(), line.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .open_native_async()
            .map_err(|e| {
                let io = io::Error::from(e.clone());
                let refused = matches!(e.kind, tokio_serial::ErrorKind::InvalidInput)
                    || io.raw_os_error() == Some(libc::EINVAL);
                if refused {
                    Dlt645Error::LineSetting {
                        device: device.display().to_string(),
                        setting: line.describe(),
                        reason: format!(
                            "{e}{}",
                            if line.parity != Parity::None {
                                " (a pseudo-terminal refuses parity; use 8N1 there)"
                            } else {
                                ""
                            }
                        ),
                    }
                } else {
                    Dlt645Error::Io(io::Error::new(
                        io.kind(),
                        format!("{}: {e}", device.display()),
                    ))
                }
            })?;
        let fd = stream.as_raw_fd();
        verify_line(fd, &line, device)?;
        Ok(Dlt645Transport {
            input: InputQueue::Tty(fd),
            ..Dlt645Transport::new(stream, line)
        })
    }
}

impl Dlt645Transport<TcpStream> {
    /// Connects to a transparent serial server at `address` (`host:port`) within `timeout`;
    /// `line` is the serial line behind it.
    pub async fn connect(
        address: &str,
        line: Line,
        timeout: Duration,
    ) -> Result<Self, Dlt645Error> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| Dlt645Error::Timeout(timeout.as_millis() as u64))?
            .map_err(|e| io::Error::new(e.kind(), format!("{address}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        Ok(Dlt645Transport {
            input: InputQueue::Socket(fd),
            ..Dlt645Transport::new(stream, line)
        })
    }
}

/// The edition a function code belongs to (08H is both: 2007 is assumed).
fn edition_of(function: u8) -> Version {
    if (function & codec::FUNCTION) >= 0x10 || function & codec::FUNCTION == codec::TIME_SYNC {
        Version::V2007
    } else {
        Version::V1997
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Dlt645Transport<S> {
    /// DL/T 645 over any stream. Pending input is discarded by reading what is ready; prefer
    /// [`Dlt645Transport::open_serial`] or [`Dlt645Transport::connect`], which reach the
    /// kernel's queue.
    pub fn new(stream: S, line: Line) -> Self {
        Dlt645Transport {
            stream,
            line,
            input: InputQueue::Stream,
            preamble: codec::DEFAULT_PREAMBLE_LEN,
            drain_window: None,
            rx: Vec::with_capacity(512),
        }
    }

    /// Sets how many `FE` bytes precede each request (default 4; some meters want none).
    pub fn set_preamble(&mut self, count: usize) {
        self.preamble = count;
    }

    /// Sets how long to read and discard after a timeout (the worst-case lateness of a reply).
    /// `None` (the default) uses the transaction's own timeout.
    pub fn set_drain_window(&mut self, window: Option<Duration>) {
        self.drain_window = window;
    }

    /// The line's settings.
    pub fn line(&self) -> Line {
        self.line
    }

    /// Reads the data identifier `di` of the meter at `address` (11H for a 2007 identifier,
    /// 01H for a 1997 one) and returns its value bytes (identifier removed, offset removed,
    /// least significant byte first as the meter sent them). Follow-up frames (D5) are read
    /// with 12H and appended. Each frame exchange has `timeout` as its deadline.
    pub async fn read(
        &mut self,
        address: &Address,
        di: DataId,
        timeout: Duration,
    ) -> Result<Vec<u8>, Dlt645Error> {
        if address.is_broadcast() {
            return Err(Dlt645Error::InvalidRequest(
                "a read to the broadcast address 999999999999 gets no reply".into(),
            ));
        }
        let version = di.version();
        let function = version.read_function();
        let request = codec::read_request(address, di);
        let frame = self.transact(address, &request, function, timeout).await?;
        let mut value = value_after_di(&frame, di, 0)?;
        let mut more = frame.more_frames();
        let mut number: u8 = 1;
        while more {
            let DataId::V2007(raw) = di else {
                return Err(Dlt645Error::Malformed(
                    "a DL/T 645-1997 reply announced more frames; follow-up frames are read \
                     only in DL/T 645-2007"
                        .into(),
                ));
            };
            if number > MAX_FOLLOW_UPS {
                return Err(Dlt645Error::Malformed(format!(
                    "more than {MAX_FOLLOW_UPS} follow-up frames for {di}"
                )));
            }
            let request = codec::read_follow_up_request(address, raw, number);
            let frame = self
                .transact(address, &request, codec::READ_FOLLOW_UP_2007, timeout)
                .await?;
            // DATA = DI, value, frame number.
            let got = frame.data.last().copied();
            if got != Some(number) {
                return Err(Dlt645Error::Malformed(format!(
                    "follow-up frame number {got:?}, expected {number}"
                )));
            }
            value.extend(value_after_di(&frame, di, 1)?);
            more = frame.more_frames();
            number += 1;
        }
        Ok(value)
    }

    /// Asks the only meter on the bus for its address (13H to `AAAAAAAAAAAA`). On a bus with
    /// several meters their replies collide: use it on one meter at a time.
    pub async fn read_address(&mut self, timeout: Duration) -> Result<Address, Dlt645Error> {
        let request = codec::read_address_request();
        let frame = self
            .transact(
                &Address::WILDCARD,
                &request,
                codec::READ_ADDRESS_2007,
                timeout,
            )
            .await?;
        let Ok(wire) = <[u8; 6]>::try_from(frame.data.as_slice()) else {
            return Err(Dlt645Error::Malformed(format!(
                "read-address reply with {} data bytes, expected 6",
                frame.data.len()
            )));
        };
        let said = Address::from_wire(wire);
        if said != frame.address {
            return Err(Dlt645Error::Malformed(format!(
                "read-address reply from {} carries address {said}",
                frame.address
            )));
        }
        Ok(said)
    }

    /// Sends the broadcast time sync (08H to `999999999999`) with `time`. Meters do not reply;
    /// the call returns once the frame is written (within `timeout`).
    pub async fn broadcast_time(
        &mut self,
        time: &MeterTime,
        timeout: Duration,
    ) -> Result<(), Dlt645Error> {
        let deadline = Instant::now() + timeout;
        self.discard_pending().await?;
        let wire = codec::with_preamble(self.preamble, &codec::time_sync_request(time));
        self.send(&wire, deadline, timeout).await
    }

    /// One request/reply exchange: `request` (a frame without preamble) to `address`, and the
    /// reply to `function` from it, within `timeout`. Returns the reply frame (normal, D5 as
    /// the meter set it); an abnormal reply is [`Dlt645Error::Abnormal`].
    pub async fn transact(
        &mut self,
        address: &Address,
        request: &[u8],
        function: u8,
        timeout: Duration,
    ) -> Result<Frame, Dlt645Error> {
        let deadline = Instant::now() + timeout;
        self.discard_pending().await?;
        let wire = codec::with_preamble(self.preamble, request);
        self.send(&wire, deadline, timeout).await?;
        self.rx.clear();
        let gap = self.line.silence_gap();
        let mut rejection: Option<Dlt645Error> = None;
        let mut last_rx = Instant::now();
        let mut chunk = [0u8; 512];
        loop {
            let wake = match rejection {
                Some(_) => (last_rx + gap).min(deadline),
                None => deadline,
            };
            tokio::select! {
                read = self.stream.read(&mut chunk) => {
                    let n = read?;
                    if n == 0 {
                        return Err(closed("the line"));
                    }
                    self.rx.extend_from_slice(&chunk[..n]);
                    if self.rx.len() > RX_LIMIT {
                        // A flood of noise: keep the tail, which can still hold a whole frame.
                        self.rx.drain(..self.rx.len() - MAX_FRAME);
                    }
                    last_rx = Instant::now();
                    rejection = match codec::scan_reply(&self.rx, address, function) {
                        ReplyScan::Reply { frame, .. } => return Ok(frame),
                        ReplyScan::Abnormal { err, .. } => {
                            return Err(Dlt645Error::Abnormal {
                                version: edition_of(function),
                                err,
                            });
                        }
                        ReplyScan::NeedMore => None,
                        ReplyScan::BadChecksum => Some(Dlt645Error::BadChecksum),
                        ReplyScan::OtherAddress { address: got } => {
                            Some(Dlt645Error::WrongAddress { expected: *address, got })
                        }
                        ReplyScan::WrongControl { control } => {
                            Some(Dlt645Error::WrongControl { function, got: control })
                        }
                    };
                }
                _ = sleep_until(wake) => {
                    if let Some(e) = rejection.take() {
                        return Err(e);
                    }
                    let window = self.drain_window.unwrap_or(timeout);
                    self.drain(window).await;
                    return Err(Dlt645Error::Timeout(timeout.as_millis() as u64));
                }
            }
        }
    }

    async fn send(
        &mut self,
        wire: &[u8],
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), Dlt645Error> {
        match timeout_at(deadline, async {
            self.stream.write_all(wire).await?;
            self.stream.flush().await
        })
        .await
        {
            Ok(r) => Ok(r?),
            Err(_) => Err(Dlt645Error::Timeout(timeout.as_millis() as u64)),
        }
    }

    /// Drops every byte already received: a late reply must never answer this request.
    async fn discard_pending(&mut self) -> Result<(), Dlt645Error> {
        self.rx.clear();
        match self.input {
            InputQueue::Tty(fd) => {
                // SAFETY: fd belongs to self.stream, which is alive.
                if unsafe { libc::tcflush(fd, libc::TCIFLUSH) } != 0 {
                    return Err(io::Error::last_os_error().into());
                }
            }
            InputQueue::Socket(fd) => crate::protocol::line::discard_socket_input(fd)?,
            InputQueue::Stream => {
                let mut chunk = [0u8; 512];
                loop {
                    match timeout_at(Instant::now(), self.stream.read(&mut chunk)).await {
                        Ok(Ok(0)) => return Err(closed("the line")),
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => break,
                    }
                }
            }
        }
        Ok(())
    }

    /// After a timeout: reads and discards for `window`, then flushes a terminal's input.
    async fn drain(&mut self, window: Duration) {
        let until = Instant::now() + window;
        let mut chunk = [0u8; 512];
        loop {
            tokio::select! {
                read = self.stream.read(&mut chunk) => match read {
                    Ok(n) if n > 0 => continue,
                    _ => break,
                },
                _ = sleep_until(until) => break,
            }
        }
        if let InputQueue::Tty(fd) = self.input {
            // SAFETY: fd belongs to self.stream, which is alive.
            unsafe { libc::tcflush(fd, libc::TCIFLUSH) };
        }
    }
}

/// Checks that the port took `line`'s parity, data bits and stop bits: the serial crate does
/// not always report a setting the driver refused (a pty drops parity). A refused setting is
/// tried once more by hand to name the OS error.
fn verify_line(fd: RawFd, line: &Line, device: &Path) -> Result<(), Dlt645Error> {
    // SAFETY: termios calls on an open terminal fd into a zeroed struct.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut tio) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    let (want_enable, want_odd) = match line.parity {
        Parity::None => (0, 0),
        Parity::Even => (libc::PARENB, 0),
        Parity::Odd => (libc::PARENB, libc::PARODD),
    };
    let want_size = if line.data_bits == 7 {
        libc::CS7
    } else {
        libc::CS8
    };
    let want_stop = if line.stop_bits == 2 { libc::CSTOPB } else { 0 };
    let has_parity = tio.c_cflag & libc::PARENB;
    let parity_ok =
        has_parity == want_enable && (want_enable == 0 || tio.c_cflag & libc::PARODD == want_odd);
    let framing_ok =
        tio.c_cflag & libc::CSIZE == want_size && tio.c_cflag & libc::CSTOPB == want_stop;
    if parity_ok && framing_ok {
        return Ok(());
    }
    let mut wanted = tio;
    wanted.c_cflag &= !(libc::PARENB | libc::PARODD | libc::CSIZE | libc::CSTOPB);
    wanted.c_cflag |= want_enable | want_odd | want_size | want_stop;
    // SAFETY: as above.
    let reason = if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &wanted) } != 0 {
        io::Error::last_os_error().to_string()
    } else {
        "the setting did not stay".to_string()
    };
    let setting = if parity_ok {
        format!("{} (data or stop bits)", line.describe())
    } else {
        let name = match line.parity {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        };
        format!("parity {name} ({})", line.describe())
    };
    Err(Dlt645Error::LineSetting {
        device: device.display().to_string(),
        setting,
        reason: format!(
            "{reason}{}",
            if !parity_ok {
                "; a pseudo-terminal refuses parity: use 8N1 there"
            } else {
                ""
            }
        ),
    })
}

/// The value bytes of a read reply `frame` for `di`: DATA after the identifier, without the
/// `trailer` bytes at its end (1 for the frame number of a follow-up reply).
fn value_after_di(frame: &Frame, di: DataId, trailer: usize) -> Result<Vec<u8>, Dlt645Error> {
    let n = di.len();
    if frame.data.len() < n + trailer {
        return Err(Dlt645Error::Malformed(format!(
            "reply with {} data bytes, shorter than its identifier",
            frame.data.len()
        )));
    }
    let got = DataId::from_wire(di.version(), &frame.data).expect("length checked");
    if got != di {
        return Err(Dlt645Error::WrongDataId {
            expected: di,
            got: got.to_string(),
        });
    }
    Ok(frame.data[n..frame.data.len() - trailer].to_vec())
}

/// An orderly close of the line or connection by the other end.
fn closed(what: &str) -> Dlt645Error {
    Dlt645Error::Io(crate::protocol::line::closed(what))
}

#[cfg(test)]
mod line_tests {
    use super::*;

    #[test]
    fn default_line_and_timeouts() {
        assert_eq!(Line::default().describe(), "2400 baud 8E1");
        assert_eq!(Line::DEFAULT.bits_per_char(), 11);
        assert_eq!(Line::pty(2400).bits_per_char(), 10);
        assert_eq!(Line::DEFAULT.default_timeout(), Duration::from_millis(1200));
        assert_eq!(
            Line::even(9600).default_timeout(),
            Duration::from_millis(900)
        );
        assert!(Line::even(1200).default_timeout() > Line::DEFAULT.default_timeout());
        for baud in BAUD_RATES {
            assert!(Line::even(baud).check().is_ok());
            assert!(Line::even(baud).default_timeout() > MAX_RESPONSE_DELAY);
        }
        assert!(Line::even(115_200).check().is_err());
        // A read of 00010000 at 2400 8E1: 20 + 24 characters of 11 bits.
        let t = Line::DEFAULT.read_wire_time(Version::V2007, 4);
        assert!((t.as_secs_f64() - 44.0 * 11.0 / 2400.0).abs() < 1e-9);
        assert_eq!(
            Line::DEFAULT.silence_gap(),
            Duration::from_secs_f64(110.0 / 2400.0)
        );
        assert_eq!(Line::pty(19_200).silence_gap(), MIN_SILENCE);
    }

    #[tokio::test]
    async fn reads_over_any_stream_with_follow_ups_and_a_wrong_identifier() {
        let a = Address::parse("000000000001").unwrap();
        let di = DataId::V2007(0x0506_0101);
        let (client, mut meter) = tokio::io::duplex(4096);
        let mut t = Dlt645Transport::new(client, Line::pty(9600));
        let server = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 256];
            let mut answered = 0;
            while answered < 3 {
                let n = meter.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                while let codec::RequestScan::Request { frame, end } = codec::scan_request(&buf) {
                    buf.drain(..end);
                    let reply = match (answered, frame.control) {
                        (0, codec::READ_2007) => codec::read_reply(&a, di, &[1, 2], true),
                        (1, codec::READ_FOLLOW_UP_2007) => {
                            assert_eq!(frame.data[4], 1);
                            codec::read_follow_up_reply(&a, 0x0506_0101, &[3, 4], 1, false)
                        }
                        (2, codec::READ_2007) => {
                            codec::read_reply(&a, DataId::V2007(0x0001_0000), &[0; 4], false)
                        }
                        other => panic!("{other:?}"),
                    };
                    let mut wire = codec::with_preamble(2, &reply);
                    wire.extend([0xFF, 0xFF]);
                    meter.write_all(&wire).await.unwrap();
                    answered += 1;
                }
            }
        });
        let second = Duration::from_secs(1);
        assert_eq!(t.read(&a, di, second).await.unwrap(), vec![1, 2, 3, 4]);
        match t.read(&a, di, second).await {
            Err(Dlt645Error::WrongDataId { got, .. }) => assert_eq!(got, "00010000"),
            other => panic!("{other:?}"),
        }
        server.await.unwrap();
        assert!(matches!(
            t.read(&Address::BROADCAST, di, second).await,
            Err(Dlt645Error::InvalidRequest(_))
        ));
    }
}
