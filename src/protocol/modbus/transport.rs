//! Client transports: a deadline on every transaction, and framing that never takes a stale or
//! corrupt reply for a good one.
//!
//! - [`RtuTransport`] speaks RTU over any byte stream: a serial port (with `tcflush` on its fd),
//!   a TCP connection to a serial server (RTU over TCP), or anything `AsyncRead + AsyncWrite`.
//! - [`TcpTransport`] speaks Modbus TCP (MBAP) and checks transaction ids.
//! - [`ModbusClient`] opens the right one for a [`Link`] and reconnects TCP endpoints with
//!   backoff.
//!
//! One RTU transaction:
//!
//! 1. keep the standard's silence: t3.5 (1.75 ms above 19200 baud) since the line last carried
//!    a byte, ours or a meter's, before sending;
//! 2. discard whatever is pending in the input (a reply that came after an earlier deadline);
//! 3. send the request, all within the transaction's deadline;
//! 4. read, scanning everything received for the expected reply at any offset
//!    ([`codec::scan_rtu_reply`]); a valid reply or exception ends the transaction at once;
//! 5. a complete frame that fails (bad CRC, another unit id, wrong length) ends it as soon as the
//!    line has been silent for [`RtuTiming::silence_gap`], well before the deadline;
//! 6. at the deadline, report a timeout only after a drain window in which a late reply is read
//!    and thrown away (then `tcflush(TCIFLUSH)` on a serial fd), so it cannot be taken for the
//!    next request's answer.
//!
//! Logging is the caller's job; every failure is a typed [`ModbusError`].

use super::ModbusError;
use super::codec::{self, Request, RtuScan};
use super::link::{Endpoint, Link};
use crate::protocol::line::{Parity, SerialLine};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_serial::SerialStream;

/// The shortest silence taken as the end of a frame, whatever the baud rate: pseudo-terminals
/// and USB adapters deliver a frame in chunks with gaps longer than t3.5 at high baud rates.
pub const MIN_SILENCE: Duration = Duration::from_millis(5);

/// Longest RTU frame (256 bytes by the standard).
const MAX_RTU_FRAME: usize = 256;
/// Bytes kept while scanning for a reply before the oldest are dropped.
const RX_LIMIT: usize = 4096;

/// First wait after a failed TCP connect; doubles on each failure.
pub const RECONNECT_BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait between TCP connect attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Wire timing of a serial line (see `../shared/reference/modbus-rtu-timing.md`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RtuTiming {
    pub baud: u32,
    pub bits_per_char: u32,
}

impl RtuTiming {
    /// Timing of `baud` with `bits_per_char` bits per character (10 for 8N1, 11 for 8E1/8N2).
    pub fn new(baud: u32, bits_per_char: u32) -> RtuTiming {
        RtuTiming {
            baud,
            bits_per_char,
        }
    }

    /// Timing of a serial line.
    pub fn from_serial(serial: &SerialLine) -> RtuTiming {
        RtuTiming::new(serial.baud, serial.bits_per_char())
    }

    /// Seconds on the wire of one character.
    fn char_secs(&self) -> f64 {
        self.bits_per_char as f64 / self.baud.max(1) as f64
    }

    /// Seconds of t3.5.
    fn gap_secs(&self) -> f64 {
        if self.baud <= 19_200 {
            3.5 * self.char_secs()
        } else {
            0.00175
        }
    }

    /// Time on the wire of one character.
    pub fn char_time(&self) -> Duration {
        Duration::from_secs_f64(self.char_secs())
    }

    /// The inter-frame silence t3.5: 3.5 characters up to 19200 baud, 1.75 ms above.
    pub fn inter_frame_gap(&self) -> Duration {
        Duration::from_secs_f64(self.gap_secs())
    }

    /// Time on the wire of `bytes` characters.
    pub fn frame_time(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 * self.char_secs())
    }

    /// Wire time of one read of `count` registers: request (8 bytes) and reply (5 + 2N bytes),
    /// each followed by t3.5. Excludes the meter's turnaround.
    pub fn read_wire_time(&self, count: u16) -> Duration {
        let chars = (codec::RTU_REQUEST_LEN + codec::rtu_reply_len(count)) as f64;
        Duration::from_secs_f64(chars * self.char_secs() + 2.0 * self.gap_secs())
    }

    /// Wire time of one transaction of `request`: the request and its reply, each followed by
    /// t3.5. Excludes the meter's turnaround.
    pub fn wire_time(&self, request: &Request) -> Duration {
        let chars = (codec::rtu_request(0, request).len() + request.reply_shape().rtu_len()) as f64;
        Duration::from_secs_f64(chars * self.char_secs() + 2.0 * self.gap_secs())
    }

    /// The silence after which a received frame is taken as complete: t3.5, but at least
    /// [`MIN_SILENCE`].
    pub fn silence_gap(&self) -> Duration {
        self.inter_frame_gap().max(MIN_SILENCE)
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

/// RTU framing over a byte stream, with the guarantees listed in the module doc.
pub struct RtuTransport<S> {
    stream: S,
    timing: RtuTiming,
    input: InputQueue,
    /// Time spent reading and discarding after a timeout; `None`: the transaction's timeout.
    drain_window: Option<Duration>,
    rx: Vec<u8>,
    /// When the line last carried a byte of ours or of a meter's (the end of our last request
    /// on the wire, the arrival of the last byte read): the next request waits t3.5 after it.
    line_active_at: Option<Instant>,
}

impl RtuTransport<SerialStream> {
    /// RTU on a serial port; the port's fd is flushed with `tcflush` before each request and
    /// after each drain window.
    pub fn serial(stream: SerialStream, timing: RtuTiming) -> Self {
        let fd = stream.as_raw_fd();
        RtuTransport {
            input: InputQueue::Tty(fd),
            ..RtuTransport::new(stream, timing)
        }
    }
}

impl RtuTransport<TcpStream> {
    /// RTU over a TCP connection to a serial server; `timing` is the serial line's behind it.
    pub fn tcp(stream: TcpStream, timing: RtuTiming) -> Self {
        let fd = stream.as_raw_fd();
        RtuTransport {
            input: InputQueue::Socket(fd),
            ..RtuTransport::new(stream, timing)
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RtuTransport<S> {
    /// RTU over any stream. Pending input is discarded by reading what is ready; prefer
    /// [`RtuTransport::serial`] or [`RtuTransport::tcp`], which reach the kernel's queue.
    pub fn new(stream: S, timing: RtuTiming) -> Self {
        RtuTransport {
            stream,
            timing,
            input: InputQueue::Stream,
            drain_window: None,
            rx: Vec::with_capacity(512),
            line_active_at: None,
        }
    }

    /// Sets how long to read and discard after a timeout (the worst-case lateness of a reply).
    /// `None` (the default) uses the transaction's own timeout.
    pub fn set_drain_window(&mut self, window: Option<Duration>) {
        self.drain_window = window;
    }

    /// The line's timing.
    pub fn timing(&self) -> RtuTiming {
        self.timing
    }

    /// Reads `count` registers from `address` of `unit` with function 3 or 4, within `timeout`.
    pub async fn read_registers(
        &mut self,
        unit: u8,
        function: u8,
        address: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Vec<u16>, ModbusError> {
        check_read(function, count)?;
        let request = Request::Read {
            function,
            address,
            count,
        };
        let data = self.transact(unit, &request, timeout).await?;
        Ok(codec::words_of(&data))
    }

    /// Sends `request` to `unit` and returns the data of its reply (after the byte count, for
    /// a read), within `timeout`.
    pub async fn transact(
        &mut self,
        unit: u8,
        request: &Request,
        timeout: Duration,
    ) -> Result<Vec<u8>, ModbusError> {
        request.check().map_err(ModbusError::InvalidRequest)?;
        let (function, shape) = (request.function(), request.reply_shape());
        // The standard's silence before every frame: t3.5 after the line last carried a byte,
        // so a meter never takes our request for the tail of the previous frame.
        if let Some(active) = self.line_active_at {
            sleep_until(active + self.timing.inter_frame_gap()).await;
        }
        let deadline = Instant::now() + timeout;
        self.discard_pending().await?;
        let request = codec::rtu_request(unit, request);
        match timeout_at(deadline, async {
            self.stream.write_all(&request).await?;
            self.stream.flush().await
        })
        .await
        {
            Ok(r) => r?,
            Err(_) => return Err(ModbusError::Timeout(timeout.as_millis() as u64)),
        }
        // The bytes leave the port's buffer at the line's pace.
        self.line_active_at = Some(Instant::now() + self.timing.frame_time(request.len()));
        self.rx.clear();
        let gap = self.timing.silence_gap();
        let mut rejection: Option<ModbusError> = None;
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
                        self.rx.drain(..self.rx.len() - MAX_RTU_FRAME);
                    }
                    last_rx = Instant::now();
                    self.line_active_at = Some(last_rx);
                    rejection = match codec::scan_rtu_frame(&self.rx, unit, function, shape) {
                        RtuScan::Reply { words, .. } => {
                            return Ok(words.iter().flat_map(|w| w.to_be_bytes()).collect());
                        }
                        RtuScan::Data { data, .. } => return Ok(data),
                        RtuScan::Exception { code, .. } => {
                            return Err(ModbusError::Exception { code });
                        }
                        RtuScan::NeedMore => None,
                        RtuScan::BadCrc => Some(ModbusError::BadCrc),
                        RtuScan::OtherUnit { unit: got } => {
                            Some(ModbusError::WrongUnit { expected: unit, got })
                        }
                        RtuScan::WrongLength { byte_count } => Some(ModbusError::Malformed(
                            format!("byte count {byte_count}, expected {}", shape.rtu_len() - 5),
                        )),
                    };
                }
                _ = sleep_until(wake) => {
                    if let Some(e) = rejection.take() {
                        return Err(e);
                    }
                    let window = self.drain_window.unwrap_or(timeout);
                    self.drain(window).await;
                    return Err(ModbusError::Timeout(timeout.as_millis() as u64));
                }
            }
        }
    }

    /// Drops every byte already received: a late reply must never answer this request.
    async fn discard_pending(&mut self) -> Result<(), ModbusError> {
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
                    let now = Instant::now();
                    match timeout_at(now, self.stream.read(&mut chunk)).await {
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
                    Ok(n) if n > 0 => {
                        self.line_active_at = Some(Instant::now());
                        continue;
                    }
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

/// An orderly close of the line or connection by the other end.
fn closed(what: &str) -> ModbusError {
    ModbusError::Io(crate::protocol::line::closed(what))
}

fn check_read(function: u8, count: u16) -> Result<(), ModbusError> {
    if function != codec::READ_HOLDING && function != codec::READ_INPUT {
        return Err(ModbusError::InvalidRequest(format!(
            "function {function:#04x}; only 03 and 04 are supported"
        )));
    }
    if count == 0 || count > codec::MAX_READ_COUNT {
        return Err(ModbusError::InvalidRequest(format!(
            "register count {count} outside 1..={}",
            codec::MAX_READ_COUNT
        )));
    }
    Ok(())
}

/// A TCP endpoint with reconnect backoff: after a failed connect, attempts wait
/// [`RECONNECT_BACKOFF_START`], doubling up to [`RECONNECT_BACKOFF_MAX`]; until then callers
/// fail fast with [`ModbusError::NotConnected`].
#[derive(Debug)]
struct TcpEndpoint {
    address: String,
    failures: u32,
    not_before: Option<Instant>,
    last_error: String,
}

impl TcpEndpoint {
    fn new(address: &str) -> TcpEndpoint {
        TcpEndpoint {
            address: address.to_string(),
            failures: 0,
            not_before: None,
            last_error: String::new(),
        }
    }

    async fn connect(&mut self, deadline: Instant) -> Result<TcpStream, ModbusError> {
        let now = Instant::now();
        if let Some(t) = self.not_before.filter(|t| *t > now) {
            return Err(ModbusError::NotConnected {
                address: self.address.clone(),
                reason: self.last_error.clone(),
                retry_in_ms: (t - now).as_millis() as u64,
            });
        }
        let result = match timeout_at(deadline, TcpStream::connect(&self.address)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".to_string()),
        };
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                self.failures = 0;
                self.not_before = None;
                Ok(stream)
            }
            Err(reason) => {
                self.failures += 1;
                let wait = RECONNECT_BACKOFF_START
                    .saturating_mul(1 << (self.failures - 1).min(16))
                    .min(RECONNECT_BACKOFF_MAX);
                self.not_before = Some(Instant::now() + wait);
                self.last_error = reason.clone();
                Err(ModbusError::NotConnected {
                    address: self.address.clone(),
                    reason,
                    retry_in_ms: wait.as_millis() as u64,
                })
            }
        }
    }
}

/// Modbus TCP (MBAP) on one connection, re-opened after a timeout, a broken stream, or a
/// closed connection; reconnects back off while the endpoint is unreachable.
pub struct TcpTransport {
    endpoint: TcpEndpoint,
    stream: Option<TcpStream>,
    transaction: u16,
    rx: Vec<u8>,
    connects: u64,
}

impl TcpTransport {
    /// A transport to `address` (`host:port`); connects on the first request.
    pub fn new(address: &str) -> TcpTransport {
        TcpTransport {
            endpoint: TcpEndpoint::new(address),
            stream: None,
            transaction: 0,
            rx: Vec::with_capacity(512),
            connects: 0,
        }
    }

    /// Connects now (unless connected), within `timeout`.
    pub async fn connect(&mut self, timeout: Duration) -> Result<(), ModbusError> {
        if self.stream.is_none() {
            let stream = self.endpoint.connect(Instant::now() + timeout).await?;
            self.stream = Some(stream);
            self.connects += 1;
        }
        Ok(())
    }

    /// How many connections were opened so far (re-opens after a timeout included).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Reads `count` registers from `address` of `unit` with function 3 or 4, within `timeout`.
    /// Replies carrying another transaction id (late replies to earlier requests) are skipped;
    /// after a timeout the connection is closed so none can arrive later.
    pub async fn read_registers(
        &mut self,
        unit: u8,
        function: u8,
        address: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Vec<u16>, ModbusError> {
        check_read(function, count)?;
        let request = Request::Read {
            function,
            address,
            count,
        };
        Ok(codec::words_of(
            &self.transact(unit, &request, timeout).await?,
        ))
    }

    /// Sends `request` to `unit` and returns the data of its reply (after the byte count, for
    /// a read), within `timeout`.
    pub async fn transact(
        &mut self,
        unit: u8,
        request: &Request,
        timeout: Duration,
    ) -> Result<Vec<u8>, ModbusError> {
        request.check().map_err(ModbusError::InvalidRequest)?;
        let deadline = Instant::now() + timeout;
        let result = self.exchange(unit, request, timeout, deadline).await;
        if matches!(
            result,
            Err(ModbusError::Timeout(_) | ModbusError::Io(_) | ModbusError::Malformed(_))
        ) {
            self.stream = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        unit: u8,
        request: &Request,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Vec<u8>, ModbusError> {
        let (function, shape) = (request.function(), request.reply_shape());
        let timed_out = || ModbusError::Timeout(timeout.as_millis() as u64);
        if let Some(s) = &self.stream {
            if crate::protocol::line::discard_socket_input(s.as_raw_fd()).is_err() {
                self.stream = None;
            }
        }
        if self.stream.is_none() {
            self.stream = Some(self.endpoint.connect(deadline).await?);
            self.connects += 1;
        }
        let stream = self.stream.as_mut().expect("connected above");
        self.transaction = self.transaction.wrapping_add(1);
        let tid = self.transaction;
        let request = codec::tcp_request(tid, unit, request);
        match timeout_at(deadline, stream.write_all(&request)).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out()),
        }
        self.rx.clear();
        let mut chunk = [0u8; 512];
        loop {
            while let Some((frame, used)) = codec::split_tcp_frame(&self.rx)
                .map_err(|e| ModbusError::Malformed(e.to_string()))?
            {
                self.rx.drain(..used);
                if frame.transaction != tid {
                    continue; // a reply to an earlier request
                }
                if frame.unit != unit {
                    return Err(ModbusError::WrongUnit {
                        expected: unit,
                        got: frame.unit,
                    });
                }
                return codec::parse_reply_pdu(&frame.pdu, function, shape);
            }
            match timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err(closed("the connection")),
                Ok(Ok(n)) => self.rx.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(timed_out()),
            }
        }
    }
}

/// RTU over TCP: [`RtuTransport`] on a connection that is re-opened when the serial server
/// closes it or it breaks. A timeout keeps the connection (the drain window handles late
/// replies), since the serial line behind it stays in step.
struct RtuOverTcp {
    endpoint: TcpEndpoint,
    timing: RtuTiming,
    drain_window: Option<Duration>,
    transport: Option<RtuTransport<TcpStream>>,
}

impl RtuOverTcp {
    async fn ensure_connected(&mut self, deadline: Instant) -> Result<(), ModbusError> {
        if self.transport.is_none() {
            let stream = self.endpoint.connect(deadline).await?;
            self.transport = Some(RtuTransport::tcp(stream, self.timing));
        }
        Ok(())
    }

    async fn read_registers(
        &mut self,
        unit: u8,
        function: u8,
        address: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Vec<u16>, ModbusError> {
        check_read(function, count)?;
        let request = Request::Read {
            function,
            address,
            count,
        };
        Ok(codec::words_of(
            &self.transact(unit, &request, timeout).await?,
        ))
    }

    async fn transact(
        &mut self,
        unit: u8,
        request: &Request,
        timeout: Duration,
    ) -> Result<Vec<u8>, ModbusError> {
        let deadline = Instant::now() + timeout;
        // A connection the server closed since the last request is noticed here, before
        // anything is sent, and re-opened once.
        for _ in 0..2 {
            self.ensure_connected(deadline).await?;
            let t = self.transport.as_mut().expect("connected above");
            t.set_drain_window(Some(self.drain_window.unwrap_or(timeout)));
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = t.transact(unit, request, remaining).await;
            match result {
                Err(ModbusError::Timeout(_)) => {
                    return Err(ModbusError::Timeout(timeout.as_millis() as u64));
                }
                Err(ModbusError::Io(e)) => {
                    self.transport = None;
                    if e.kind() != io::ErrorKind::UnexpectedEof || Instant::now() >= deadline {
                        return Err(ModbusError::Io(e));
                    }
                }
                other => return other,
            }
        }
        Err(closed("the connection"))
    }
}

/// The open transport a [`ModbusClient`] talks over.
enum Connection {
    Serial(RtuTransport<SerialStream>),
    RtuOverTcp(RtuOverTcp),
    Tcp(TcpTransport),
    Stream(RtuTransport<Box<dyn ByteStream>>),
}

/// A byte stream RTU can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// A Modbus client on one bus (serial RTU, Modbus TCP or RTU over TCP).
pub struct ModbusClient {
    link: Connection,
}

impl ModbusClient {
    /// Opens `link`'s serial port, or connects to its TCP endpoint within `connect_timeout`.
    pub async fn open(link: &Link, connect_timeout: Duration) -> Result<Self, ModbusError> {
        let timing = RtuTiming::from_serial(&link.line);
        let connect_timeout = connect_timeout.max(Duration::from_millis(1));
        let link = match &link.endpoint {
            Endpoint::Serial(device) => Connection::Serial(RtuTransport::serial(
                open_serial(device, &link.line)?,
                timing,
            )),
            Endpoint::Tcp(address) => {
                let mut t = TcpTransport::new(address);
                t.connect(connect_timeout).await?;
                Connection::Tcp(t)
            }
            Endpoint::RtuOverTcp(address) => {
                let mut r = RtuOverTcp {
                    endpoint: TcpEndpoint::new(address),
                    timing,
                    drain_window: None,
                    transport: None,
                };
                r.ensure_connected(Instant::now() + connect_timeout).await?;
                Connection::RtuOverTcp(r)
            }
        };
        Ok(ModbusClient { link })
    }

    /// RTU over an already-open stream (tests, or a transport the caller set up).
    pub fn over_stream(stream: impl ByteStream + 'static, timing: RtuTiming) -> ModbusClient {
        let stream: Box<dyn ByteStream> = Box::new(stream);
        ModbusClient {
            link: Connection::Stream(RtuTransport::new(stream, timing)),
        }
    }

    /// Sets how long an RTU link reads and discards after a timeout (the worst-case lateness of
    /// a reply); `None`, the default, uses each transaction's timeout. No effect on Modbus TCP,
    /// which closes the connection instead.
    pub fn set_drain_window(&mut self, window: Option<Duration>) {
        match &mut self.link {
            Connection::Serial(t) => t.set_drain_window(window),
            Connection::Stream(t) => t.set_drain_window(window),
            Connection::RtuOverTcp(r) => r.drain_window = window,
            Connection::Tcp(_) => {}
        }
    }

    /// Reads `count` registers from `address` of unit `unit` with function 3 or 4.
    pub async fn read_registers(
        &mut self,
        unit: u8,
        function: u8,
        address: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Vec<u16>, ModbusError> {
        match &mut self.link {
            Connection::Serial(t) => {
                t.read_registers(unit, function, address, count, timeout)
                    .await
            }
            Connection::Stream(t) => {
                t.read_registers(unit, function, address, count, timeout)
                    .await
            }
            Connection::RtuOverTcp(r) => {
                r.read_registers(unit, function, address, count, timeout)
                    .await
            }
            Connection::Tcp(t) => {
                t.read_registers(unit, function, address, count, timeout)
                    .await
            }
        }
    }
}

impl ModbusClient {
    /// Sends any `request` (a read of bits or registers, a write) to `unit` and returns its
    /// reply's data: the bytes after the byte count for a read, the four echoed bytes for a
    /// write. The field tools' transaction; the daemon reads with [`Self::read_registers`].
    pub async fn transact(
        &mut self,
        unit: u8,
        request: &Request,
        timeout: Duration,
    ) -> Result<Vec<u8>, ModbusError> {
        match &mut self.link {
            Connection::Serial(t) => t.transact(unit, request, timeout).await,
            Connection::Stream(t) => t.transact(unit, request, timeout).await,
            Connection::RtuOverTcp(r) => r.transact(unit, request, timeout).await,
            Connection::Tcp(t) => t.transact(unit, request, timeout).await,
        }
    }
}

/// Opens a serial port with the line's settings; errors name the device.
fn open_serial(device: &std::path::Path, serial: &SerialLine) -> Result<SerialStream, io::Error> {
    use tokio_serial::SerialPortBuilderExt;
    let data_bits = match serial.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match serial.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = if serial.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    tokio_serial::new(device.to_string_lossy(), serial.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .open_native_async()
        .map_err(|e| {
            let kind = io::Error::from(e.clone()).kind();
            io::Error::new(kind, format!("{}: {}", device.display(), e))
        })
}

#[cfg(test)]
mod timing_tests {
    use super::*;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    #[test]
    fn wire_time_matches_the_table() {
        // modbus-rtu-timing.md, 8N1.
        let table = [
            (2400, [100.0, 416.7, 750.0]),
            (9600, [25.0, 104.2, 187.5]),
            (19200, [12.5, 52.1, 93.8]),
            (115200, [5.0, 11.6, 18.5]),
        ];
        for (baud, row) in table {
            let t = RtuTiming::new(baud, 10);
            for (n, want) in [2u16, 40, 80].into_iter().zip(row) {
                // The table rounds to 0.1 ms (93.75 is printed 93.8).
                let got = ms(t.read_wire_time(n));
                assert!(
                    (got - want).abs() <= 0.05 + 1e-6,
                    "{baud} baud, N = {n}: {got}"
                );
            }
        }
    }

    #[test]
    fn char_time_and_gap() {
        let t = RtuTiming::new(9600, 10);
        assert!((t.char_time().as_secs_f64() - 1.0 / 960.0).abs() < 1e-8);
        assert!((t.inter_frame_gap().as_secs_f64() - 3.5 / 960.0).abs() < 1e-8);
        assert_eq!(t.silence_gap(), MIN_SILENCE);
        let slow = RtuTiming::new(2400, 10);
        assert_eq!(slow.silence_gap(), slow.inter_frame_gap());
        let fast = RtuTiming::new(115_200, 10);
        assert_eq!(fast.inter_frame_gap(), Duration::from_micros(1750));
        assert_eq!(fast.silence_gap(), MIN_SILENCE);
        let even = RtuTiming::from_serial(&SerialLine {
            baud: 2400,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 1,
        });
        assert_eq!(even.bits_per_char, 11);
    }
}
