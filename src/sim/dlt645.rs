//! Simulated DL/T 645 meters (2007 and 1997) on a line: a pty, or a TCP connection to a
//! transparent serial server. Requests are found at any offset after any preamble; the
//! addressed meter answers from its data-identifier model with values of the simulated meter
//! (energy advancing with its load, as for Modbus meters), paced by the wire time at the bus's
//! baud rate plus its response delay (`turnaround_ms`), with `FE` × 4 before each reply.
//!
//! What a meter does: 11H / 01H reads of a single or block identifier of its model (abnormal
//! reply "no such data item" for one it lacks, and for every block with `refuse_blocks`);
//! 13H read address to the wildcard (answered when the bus has one meter; several meters
//! collide into noise); 08H broadcast time sync (no reply; a meter whose clock is within ±5
//! minutes of the time sent takes it); 1CH remote control on a 2007 meter (its password is
//! `relay_password`, default `02123456`; a wrong one gets "password error / unauthorised", an
//! order past its validity end or a trip while keep-power is on gets "other error"; trip opens
//! the relay, close-allowed closes it at once, alarm and keep-power set their state), shown in
//! status word 3 (bit 4 relay open, bit 6 command open, bit 7 alarm, bit 12 keep power); other
//! functions to its address get the abnormal reply "other error". Faults: no reply, late reply, bad checksum,
//! reply from another address, noise before the reply, `FF` after it, an abnormal reply with a
//! given ERR byte for every read, missed reads, a silent bus. The meter's own items come from
//! its faults too: a clock off by `clock_offset_s`, `status_word_1`, the power-down and
//! meter-cover-open counts.
//!
//! Daily freezes (日冻结, 2007 meters): at every midnight of its own clock (China Standard
//! Time, as every simulated meter's clock) a meter records its energy registers as they were
//! at that moment, and keeps the last 62, answering `050600nn` (the n-th last freeze's time),
//! `050601nn` / `050602nn` (its forward / reverse energy, total + tariffs 1..4); a freeze it
//! does not have yet reads as zeros. The midnights are noticed at the meter's next request
//! (answered or not): the registers are taken at the moment its clock passed midnight, or at
//! its previous request when its clock was set across midnight in between.

use super::bus::{Answer, LineControl, SimBus};
use super::config::Fault;
use super::serve::{SharedWriter, schedule};
use crate::meter::{DiEntry, DiValue, Dlt645Model};
use crate::protocol::dlt645::codec::{self, Address, DataId, Frame, RequestScan, Version};
use crate::protocol::dlt645::freeze::{self as frozen, FREEZE_DAYS, FreezeItem};
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, broadcast};
use tokio::task::JoinSet;

/// Offset of the meters' clocks from UTC: China Standard Time.
const METER_UTC_OFFSET_S: i64 = 8 * 3600;
/// A meter takes a broadcast time sync only within this much of its own clock (±5 min).
const TIME_SYNC_LIMIT_MS: i64 = 300_000;
/// Bytes kept of an unfinished request before the oldest are dropped (line noise).
const RX_LIMIT: usize = 1024;

/// One daily freeze a simulated meter recorded: its time (the meter's clock) and its forward
/// and reverse active energy, total + tariffs 1..4, kWh (as registered, before ratios).
#[derive(Debug, Clone, PartialEq)]
pub struct SimFreeze {
    pub time: codec::MeterTime,
    pub import: [f64; 5],
    pub export: [f64; 5],
}

/// The daily freezes of a meter, and when it last looked at its clock.
#[derive(Debug, Default)]
pub struct FreezeHistory {
    /// Oldest first, at most 62.
    pub days: VecDeque<SimFreeze>,
    /// (true time, the meter's local time) at its last request, ms.
    seen: Option<(i64, i64)>,
}

const DAY_MS: i64 = 86_400_000;

impl FreezeHistory {
    /// Records the freezes of the midnights the meter's clock passed since its last request;
    /// `energy(ms_ago)` gives its registers that long before now.
    fn advance(
        &mut self,
        true_ms: i64,
        clock_offset_ms: i64,
        energy: impl Fn(i64) -> ([f64; 5], [f64; 5]),
    ) {
        let local = true_ms + clock_offset_ms + METER_UTC_OFFSET_S * 1000;
        if let Some((seen_true, seen_local)) = self.seen {
            let mut midnight = seen_local.div_euclid(DAY_MS) * DAY_MS + DAY_MS;
            while midnight <= local {
                // Passed `local - midnight` ago, but not before the last request.
                let ago = (local - midnight).min(true_ms - seen_true).max(0);
                let (import, export) = energy(ago);
                self.days.push_back(SimFreeze {
                    time: codec::MeterTime::from_unix(midnight / 1000, 0),
                    import,
                    export,
                });
                if self.days.len() > usize::from(FREEZE_DAYS) {
                    self.days.pop_front();
                }
                midnight += DAY_MS;
            }
        }
        self.seen = Some((true_ms, local));
    }

    /// The `n`-th last freeze (1 = the last).
    fn nth_last(&self, n: u8) -> Option<&SimFreeze> {
        self.days
            .len()
            .checked_sub(usize::from(n))
            .map(|i| &self.days[i])
    }
}

/// A DL/T 645 meter of a bus: its handle among the bus's meters and its model.
pub(crate) struct Dlt645Meter {
    pub unit: u8,
    pub model: Arc<Dlt645Model>,
}

/// The DL/T 645 meters of one bus, by address.
pub(crate) type Dlt645Meters = Arc<BTreeMap<Address, Dlt645Meter>>;

/// Serves DL/T 645 on a line until the reader ends (or a disconnect, when `close_on_disconnect`).
/// `line_matches` as in [`super::serve::serve_rtu_line`]: bytes received while the gateway's
/// end is at other settings are dropped.
pub(crate) async fn serve_line<R, W>(
    bus: Arc<SimBus>,
    meters: Dlt645Meters,
    mut reader: R,
    writer: W,
    mut control: broadcast::Receiver<LineControl>,
    close_on_disconnect: bool,
    line_matches: Option<Box<dyn Fn() -> bool + Send>>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer: SharedWriter<W> = Arc::new(Mutex::new(writer));
    let mut replies = JoinSet::new();
    let gap = bus.timing.silence_gap().max(Duration::from_millis(20));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        while replies.try_join_next().is_some() {}
        let waiting = !buf.is_empty();
        tokio::select! {
            read = reader.read(&mut chunk) => {
                let n = match read {
                    Ok(n) => n,
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    return Ok(());
                }
                if line_matches.as_ref().is_some_and(|matches| !matches()) {
                    buf.clear();
                    continue;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let RequestScan::Request { frame, end } = codec::scan_request(&buf) {
                    buf.drain(..end);
                    if let Some(answer) = answer(&bus, &meters, &frame, end) {
                        schedule(&mut replies, &writer, answer);
                    }
                }
                if buf.len() > RX_LIMIT {
                    buf.drain(..buf.len() - RX_LIMIT / 2);
                }
            }
            _ = tokio::time::sleep(gap), if waiting => buf.clear(),
            msg = control.recv() => match msg {
                Ok(LineControl::Disconnect) if close_on_disconnect => return Ok(()),
                Ok(LineControl::Disconnect) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Ok(LineControl::Inject(bytes)) => {
                    let mut w = writer.lock().await;
                    w.write_all(&bytes).await?;
                    w.flush().await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

/// Accepts connections for a DL/T 645 bus over TCP (a transparent serial server), one task per
/// connection; dropping this future closes them all.
pub(crate) async fn serve_listener(bus: Arc<SimBus>, meters: Dlt645Meters, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        bus.connections.fetch_add(1, Ordering::Relaxed);
        let control = bus.control.subscribe();
        let (bus, meters) = (bus.clone(), meters.clone());
        connections.spawn(async move {
            let (reader, writer) = stream.into_split();
            let _ = serve_line(bus, meters, reader, writer, control, true, None).await;
        });
    }
}

/// What the meters of `bus` answer to `request` (which took `request_len` bytes on the wire);
/// `None` for silence.
fn answer(
    bus: &SimBus,
    meters: &BTreeMap<Address, Dlt645Meter>,
    request: &Frame,
    request_len: usize,
) -> Option<Answer> {
    let function = request.function();
    if request.address.is_broadcast() {
        if function == codec::TIME_SYNC {
            // Every meter within ±5 minutes takes the time; none replies.
            let sent = codec::parse_time_sync_data(&request.data);
            let mut all = bus.meters();
            for meter in meters.values() {
                bus.count_request();
                if let (Some(t), Some(m)) = (sent, all.get_mut(&meter.unit)) {
                    let true_ms = crate::clock::now_ms();
                    let meter_ms = true_ms + m.clock_offset_ms;
                    let sent_ms = t.to_unix(METER_UTC_OFFSET_S) * 1000;
                    if (sent_ms - meter_ms).abs() <= TIME_SYNC_LIMIT_MS {
                        m.clock_offset_ms = sent_ms - true_ms;
                    }
                }
            }
        }
        return None;
    }
    let addressed: Vec<(&Address, &Dlt645Meter)> = meters
        .iter()
        .filter(|(a, _)| request.address.matches(a))
        .collect();
    let (&address, meter) = *addressed.first()?;
    bus.count_request();
    let now = Instant::now();
    let fault = {
        let mut all = bus.meters();
        let m = all.get_mut(&meter.unit)?;
        if meter.model.version == Version::V2007 {
            let offset = m.clock_offset_ms;
            let mut history = std::mem::take(&mut m.daily_freezes);
            let energy = |ago: i64| {
                let at = now
                    .checked_sub(Duration::from_millis(ago as u64))
                    .unwrap_or(now);
                let q = |name: &str| m.value(name, at).unwrap_or(0.0);
                let import = [
                    q("energy_import_kwh"),
                    q("energy_import_t1_kwh"),
                    q("energy_import_t2_kwh"),
                    q("energy_import_t3_kwh"),
                    q("energy_import_t4_kwh"),
                ];
                let e = q("energy_export_kwh");
                let export = [e, e * 0.4, e * 0.3, e * 0.2, e * 0.1];
                (import, export)
            };
            history.advance(crate::clock::now_ms(), offset, energy);
            m.daily_freezes = history;
        }
        let fault = m.fault.clone();
        if fault.no_reply || bus.silent.load(Ordering::Relaxed) || m.misses_request() {
            return None;
        }
        fault
    };
    let version = meter.model.version;
    let reply = match function {
        codec::READ_ADDRESS_2007 if request.address == Address::WILDCARD => {
            if addressed.len() > 1 {
                // Several meters answer at once: their replies collide on the line.
                let len = codec::FRAME_OVERHEAD + 6;
                return Some(timed(bus, &fault, request_len, line_noise(len, 0x13)));
            }
            codec::read_address_reply(&address)
        }
        f if f == version.read_function() => {
            match DataId::from_wire(version, &request.data).filter(|_| {
                request.data.len()
                    == match version {
                        Version::V1997 => 2,
                        Version::V2007 => 4,
                    }
            }) {
                None => codec::abnormal_reply(&address, f, codec::ERR_OTHER),
                Some(di) => read_reply(bus, meter, &address, di, &fault, now),
            }
        }
        codec::REMOTE_CONTROL_2007 if version == Version::V2007 => {
            remote_control(bus, meter, &address, request, &fault)
        }
        // A 1997 meter does not understand 2007 reads and stays silent (and the reverse).
        codec::READ_1997 | codec::READ_2007 => return None,
        f => codec::abnormal_reply(&address, f, codec::ERR_OTHER),
    };
    let mut frame = reply;
    if !fault.reply_address.is_empty() {
        if let Ok(other) = Address::parse(&fault.reply_address) {
            // Re-frame the same reply from the other address.
            if let codec::FrameParse::Frame { frame: f, .. } = codec::parse_frame(&frame) {
                frame = codec::encode_frame(&other, f.control, &f.data);
            }
        }
    }
    if fault.bad_crc {
        let n = frame.len();
        frame[n - 2] ^= 0x5A;
    }
    let mut bytes = line_noise(fault.garbage_before, meter.unit);
    bytes.extend(codec::with_preamble(codec::DEFAULT_PREAMBLE_LEN, &frame));
    bytes.extend(std::iter::repeat_n(0xFF, fault.trailing_ff));
    Some(timed(bus, &fault, request_len, bytes))
}

/// The reply of `meter` to a read of `di`: its value, or an abnormal reply.
fn read_reply(
    bus: &SimBus,
    meter: &Dlt645Meter,
    address: &Address,
    di: DataId,
    fault: &Fault,
    now: Instant,
) -> Vec<u8> {
    let function = di.version().read_function();
    if fault.exception != 0 {
        return codec::abnormal_reply(address, function, fault.exception);
    }
    let model = &meter.model;
    if fault.refuse_blocks && model.block(di).is_some() {
        return codec::abnormal_reply(address, function, codec::ERR_NO_SUCH_DATA_ITEM);
    }
    let all = bus.meters();
    let Some(sim) = all.get(&meter.unit) else {
        return codec::abnormal_reply(address, function, codec::ERR_OTHER);
    };
    let wall = (crate::clock::now_ms() + sim.clock_offset_ms).div_euclid(1000);
    let clock = codec::MeterTime::from_unix(wall, METER_UTC_OFFSET_S);
    if let Some((item, n)) = FreezeItem::of(di) {
        let day = sim.daily_freezes.nth_last(n);
        let value = match (item, day) {
            (_, None) => vec![0; item.value_len()],
            (FreezeItem::Time, Some(d)) => frozen::encode_time(&d.time),
            (FreezeItem::Import, Some(d)) => frozen::encode_energy(&d.import),
            (FreezeItem::Export, Some(d)) => frozen::encode_energy(&d.export),
        };
        return codec::read_reply(address, di, &value, false);
    }
    let number = |q: &str| sim.value(q, now).unwrap_or(0.0);
    let value_of = |e: &DiEntry| {
        match e.name.as_str() {
            "status_word_1" => return DiValue::Bits(u32::from(fault.status_word_1)),
            "status_word_3" => return DiValue::Bits(u32::from(sim.relay.word())),
            "power_down_count" => return DiValue::Number(f64::from(fault.power_down_count)),
            "cover_open_count" => return DiValue::Number(f64::from(fault.cover_open_count)),
            _ => {}
        }
        item_value(e, &number, &clock, wall + METER_UTC_OFFSET_S)
    };
    match model.encode(di, value_of) {
        Some(value) if value.len() + di.len() <= codec::MAX_READ_REPLY_DATA => {
            codec::read_reply(address, di, &value, false)
        }
        Some(_) => codec::abnormal_reply(address, function, codec::ERR_OTHER),
        None => codec::abnormal_reply(address, function, codec::ERR_NO_SUCH_DATA_ITEM),
    }
}

/// The reply of `meter` to a remote control (1CH): the order taken (9CH) or refused (DCH).
fn remote_control(
    bus: &SimBus,
    meter: &Dlt645Meter,
    address: &Address,
    request: &Frame,
    fault: &Fault,
) -> Vec<u8> {
    let f = codec::REMOTE_CONTROL_2007;
    let Some(rc) = codec::parse_remote_control_data(&request.data) else {
        return codec::abnormal_reply(address, f, codec::ERR_OTHER);
    };
    let want = if fault.relay_password.is_empty() {
        "02123456"
    } else {
        fault.relay_password.as_str()
    };
    if codec::parse_password(want) != Some(rc.password) {
        return codec::abnormal_reply(address, f, codec::ERR_PASSWORD);
    }
    let mut all = bus.meters();
    let Some(sim) = all.get_mut(&meter.unit) else {
        return codec::abnormal_reply(address, f, codec::ERR_OTHER);
    };
    let meter_s = (crate::clock::now_ms() + sim.clock_offset_ms).div_euclid(1000);
    let stale = rc
        .valid_until
        .is_none_or(|t| t.to_unix(METER_UTC_OFFSET_S) < meter_s);
    if stale {
        return codec::abnormal_reply(address, f, codec::ERR_OTHER);
    }
    let relay = &mut sim.relay;
    match codec::ControlOrder::from_code(rc.order) {
        Some(codec::ControlOrder::Trip) if relay.keep_power => {
            return codec::abnormal_reply(address, f, codec::ERR_OTHER);
        }
        Some(codec::ControlOrder::Trip) => {
            relay.open = true;
            relay.command_open = true;
        }
        Some(codec::ControlOrder::CloseAllowed) => {
            relay.open = false;
            relay.command_open = false;
        }
        Some(codec::ControlOrder::Alarm) => relay.alarm = true,
        Some(codec::ControlOrder::AlarmOff) => relay.alarm = false,
        Some(codec::ControlOrder::KeepPower) => relay.keep_power = true,
        Some(codec::ControlOrder::KeepPowerOff) => relay.keep_power = false,
        None => return codec::abnormal_reply(address, f, codec::ERR_OTHER),
    }
    codec::remote_control_reply(address)
}

/// The value a simulated meter reports for `entry`: its contract quantities from the area
/// model, meter items derived from them or fixed.
fn item_value(
    entry: &DiEntry,
    number: &dyn Fn(&str) -> f64,
    clock: &codec::MeterTime,
    local_secs: i64,
) -> DiValue {
    let export_share = |t: usize| number("energy_export_kwh") * [0.4, 0.3, 0.2, 0.1][t - 1];
    let v = match entry.name.as_str() {
        "meter_date" => {
            return DiValue::Date {
                year: clock.year,
                month: clock.month,
                day: clock.day,
                // 1970-01-01 was a Thursday.
                weekday: ((local_secs.div_euclid(86_400) + 4) % 7) as u8,
            };
        }
        "meter_time" => {
            return DiValue::Time {
                hour: clock.hour,
                minute: clock.minute,
                second: clock.second,
            };
        }
        n if n.starts_with("status_word_") => return DiValue::Bits(0),
        "energy_combined_kwh" => number("energy_import_kwh") + number("energy_export_kwh"),
        "energy_export_t1_kwh" => export_share(1),
        "energy_export_t2_kwh" => export_share(2),
        "energy_export_t3_kwh" => export_share(3),
        "energy_export_t4_kwh" => export_share(4),
        "power_factor_l1" | "power_factor_l2" | "power_factor_l3" => number("power_factor"),
        "remaining_energy_kwh" => 500.0,
        "remaining_money" => 250.0,
        "ct_ratio" | "pt_ratio" => 1.0,
        n if n.ends_with("_count") => 0.0,
        n => number(n),
    };
    DiValue::Number(v)
}

/// `bytes` to write after the wire time of the request and the reply plus the response delay
/// (`turnaround_ms`), or `late_reply_ms` after the gateway's deadline.
fn timed(bus: &SimBus, fault: &Fault, request_len: usize, bytes: Vec<u8>) -> Answer {
    let delay = if fault.late_reply_ms > 0 {
        Duration::from_millis(bus.config.gateway_timeout_ms + fault.late_reply_ms)
    } else {
        bus.timing.frame_time(request_len)
            + Duration::from_millis(bus.config.turnaround_ms)
            + bus.timing.frame_time(bytes.len())
    };
    Answer { delay, bytes }
}

/// Deterministic line noise of `n` bytes (a linear congruential sequence seeded by the unit);
/// it may hold `68`, `FE` and `16` like real noise.
fn line_noise(n: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x1F35_A7C3 ^ u32::from(seed);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}
