//! One simulated bus: its meters, and what they answer to a request — which meter (silence for
//! unit ids not on the bus, a silent bus, a missed read), which words or exception, when
//! (turnaround plus wire time at the bus's baud), and with which faults (no reply, late, bad
//! CRC, noise, wrong unit id).

use super::config::{Fault, SimBusConfig, SimProtocol};
use super::meter::SimMeter;
use crate::protocol::modbus::RtuTiming;
use crate::protocol::modbus::codec::{self, ReadRequest, Request};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Instructions from the [`super::SimHandle`] to the tasks serving a bus.
#[derive(Debug, Clone)]
pub(crate) enum LineControl {
    /// Close every TCP connection (a serial server rebooting). Ptys ignore it.
    Disconnect,
    /// Write these bytes onto the line unasked (noise, or a stray frame).
    Inject(Vec<u8>),
}

/// A reply decided, before framing.
struct Reply {
    unit: u8,
    function: u8,
    body: Result<Body, u8>,
    fault: Fault,
}

/// What a reply carries when it is no exception.
enum Body {
    /// Registers read.
    Words(Vec<u16>),
    /// The echo of a write.
    Echo([u8; 4]),
}

/// Framed bytes to write after `delay` (counted from the request's arrival).
pub(crate) struct Answer {
    pub delay: Duration,
    pub bytes: Vec<u8>,
}

/// A simulated bus and its meters.
pub(crate) struct SimBus {
    pub config: SimBusConfig,
    pub timing: RtuTiming,
    meters: Mutex<BTreeMap<u8, SimMeter>>,
    requests: AtomicU64,
    pub connections: AtomicU64,
    pub control: broadcast::Sender<LineControl>,
    /// No meter of the bus answers (`silent`).
    pub silent: AtomicBool,
}

impl SimBus {
    pub fn new(config: SimBusConfig, mut meters: BTreeMap<u8, SimMeter>) -> SimBus {
        let timing = RtuTiming::new(config.baud, config.bits_per_char());
        for (unit, meter) in meters.iter_mut() {
            meter.preset_setup(*unit, config.baud);
        }
        SimBus {
            timing,
            meters: Mutex::new(meters),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            control: broadcast::channel(16).0,
            silent: AtomicBool::new(config.silent),
            config,
        }
    }

    pub fn meters(&self) -> MutexGuard<'_, BTreeMap<u8, SimMeter>> {
        self.meters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests answered or ignored by a meter of this bus (requests to absent units excluded).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a request that reached a meter of this bus (DL/T 645 lines count their own).
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Decides the reply of the addressed meter, `None` for silence.
    fn reply(&self, request: &ReadRequest) -> Option<Reply> {
        let now = Instant::now();
        let mut meters = self.meters();
        let meter = meters.get_mut(&request.unit)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let fault = meter.fault.clone();
        if fault.no_reply || self.silent.load(Ordering::Relaxed) || meter.misses_request() {
            return None;
        }
        let body = if fault.exception != 0 {
            Err(fault.exception)
        } else if let Some(code) = codec::read_request_exception(request) {
            Err(code)
        } else if fault.max_block > 0 && request.count > fault.max_block {
            if fault.block_limit_silent {
                return None;
            }
            Err(codec::ILLEGAL_DATA_VALUE)
        } else {
            Ok(Body::Words(meter.registers(
                request.function,
                request.address,
                request.count,
                now,
            )))
        };
        Some(Reply {
            unit: if fault.reply_unit != 0 {
                fault.reply_unit
            } else {
                request.unit
            },
            function: request.function,
            body,
            fault,
        })
    }

    /// The reply of the addressed meter to a request other than a register read: a write of
    /// holding registers it has is kept (and a new unit id in its `[setup]` register moves the
    /// meter there once it answered from the old one); coils and discrete inputs it has none
    /// of (exception 01). `None` for silence.
    fn other_reply(&self, unit: u8, function: u8, request: Result<Request, u8>) -> Option<Reply> {
        let (address, values) = match request {
            Ok(Request::WriteRegister { address, value }) => (address, vec![value]),
            Ok(Request::WriteRegisters {
                address,
                ref values,
            }) => (address, values.clone()),
            Ok(_) => return self.refusal(unit, function, codec::ILLEGAL_FUNCTION),
            Err(code) => return self.refusal(unit, function, code),
        };
        let request = request.expect("a write, matched above");
        let mut meters = self.meters();
        let meter = meters.get_mut(&unit)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let fault = meter.fault.clone();
        if fault.no_reply || self.silent.load(Ordering::Relaxed) || meter.misses_request() {
            return None;
        }
        let body = match meter.write(address, &values) {
            Ok(()) => Ok(Body::Echo(request.echo().expect("a write has an echo"))),
            Err(code) => Err(code),
        };
        if let Some(new) = meter.written_unit_id()
            && new != unit
            && !meters.contains_key(&new)
            && let Some(moved) = meters.remove(&unit)
        {
            meters.insert(new, moved);
        }
        Some(Reply {
            unit,
            function,
            body,
            fault,
        })
    }

    /// The reply of a meter of this bus to a request it refuses by its shape (exception 01 for
    /// an unsupported function, 03 for a malformed read).
    fn refusal(&self, unit: u8, function: u8, code: u8) -> Option<Reply> {
        let meters = self.meters();
        let meter = meters.get(&unit)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        (!meter.fault.no_reply && !self.silent.load(Ordering::Relaxed)).then(|| Reply {
            unit,
            function,
            body: Err(code),
            fault: meter.fault.clone(),
        })
    }

    /// When a reply of `bytes` length goes out, counted from the request's arrival: the whole
    /// transaction's wire time on RTU lines (the request's characters and t3.5 before the
    /// meter sees it, its turnaround, the reply's characters), the turnaround alone on Modbus
    /// TCP; a late meter answers `late_reply_ms` after the gateway's deadline instead (its
    /// timeout plus the transaction's wire time at the bus's baud rate, as the gateway's
    /// drivers reckon it).
    fn delay(&self, fault: &Fault, bytes: usize) -> Duration {
        if fault.late_reply_ms > 0 {
            let wire = self.timing.frame_time(codec::RTU_REQUEST_LEN + bytes)
                + self.timing.inter_frame_gap() * 2;
            return Duration::from_millis(self.config.gateway_timeout_ms + fault.late_reply_ms)
                + wire;
        }
        let turnaround = Duration::from_millis(self.config.turnaround_ms);
        match self.config.protocol {
            SimProtocol::ModbusTcp => turnaround,
            SimProtocol::ModbusRtu | SimProtocol::ModbusRtuOverTcp | SimProtocol::Dlt645 => {
                self.timing.frame_time(codec::RTU_REQUEST_LEN)
                    + self.timing.inter_frame_gap()
                    + turnaround
                    + self.timing.frame_time(bytes)
            }
        }
    }

    fn frame_rtu(&self, reply: Reply) -> Answer {
        let mut bytes = line_noise(reply.fault.garbage_before, reply.unit);
        let mut frame = match &reply.body {
            Ok(Body::Words(words)) => codec::rtu_read_reply(reply.unit, reply.function, words),
            Ok(Body::Echo(echo)) => codec::rtu_echo_reply(reply.unit, reply.function, *echo),
            Err(code) => codec::rtu_exception_reply(reply.unit, reply.function, *code),
        };
        if reply.fault.bad_crc {
            let n = frame.len();
            frame[n - 1] ^= 0x5A;
            frame[n - 2] ^= 0xA5;
        }
        bytes.extend(frame);
        Answer {
            delay: self.delay(&reply.fault, bytes.len()),
            bytes,
        }
    }

    /// The framed, timed answer to an RTU read request; `None` for silence.
    pub fn answer_rtu(&self, request: &ReadRequest) -> Option<Answer> {
        self.reply(request).map(|r| self.frame_rtu(r))
    }

    /// The answer to a well-formed RTU frame (`frame`, CRC included) of a function other
    /// than a register read: a write, or a refusal; `None` for silence.
    pub fn answer_rtu_other(&self, frame: &[u8]) -> Option<Answer> {
        let (unit, function) = codec::rtu_other_function(frame)?;
        let request = codec::parse_request_pdu(&frame[1..frame.len() - 2]);
        self.other_reply(unit, function, request)
            .map(|r| self.frame_rtu(r))
    }

    /// The framed, timed answer to a Modbus TCP request whose PDU is `pdu`; `None` for
    /// silence. Noise and CRC faults do not apply to TCP.
    pub fn answer_tcp(&self, transaction: u16, unit: u8, pdu: &[u8]) -> Option<Answer> {
        let reply = match codec::parse_read_request_pdu(unit, pdu) {
            Ok(request) => self.reply(&request)?,
            Err(_) => {
                let function = pdu.first().copied()? & 0x7F;
                self.other_reply(unit, function, codec::parse_request_pdu(pdu))?
            }
        };
        let bytes = match &reply.body {
            Ok(Body::Words(words)) => {
                codec::tcp_read_reply(transaction, reply.unit, reply.function, words)
            }
            Ok(Body::Echo(echo)) => {
                codec::tcp_echo_reply(transaction, reply.unit, reply.function, *echo)
            }
            Err(code) => codec::tcp_exception_reply(transaction, reply.unit, reply.function, *code),
        };
        Some(Answer {
            delay: self.delay(&reply.fault, bytes.len()),
            bytes,
        })
    }
}

/// Deterministic line noise of `n` bytes (a linear congruential sequence seeded by the unit).
fn line_noise(n: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x2545_F491 ^ seed as u32;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}
