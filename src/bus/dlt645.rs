//! The DL/T 645 driver (2007 and 1997 meters, which may share a bus): a meter's poll planned as
//! data-identifier reads of its model (block identifiers where the meter takes them), energy
//! first; each read one transaction over [`crate::protocol::dlt645`]; DL/T 645 errors mapped to
//! [`PollOutcome`]; and which blocks a meter refuses, learned on the way.
//!
//! The deadline of a transaction is the bus's timeout (the meter's allowance; by default
//! [`Line::default_timeout`], which counts the standard's 500 ms response delay) plus the wire
//! time of the request and its reply at the line's baud rate ([`Dlt645Driver::deadline`]), as
//! for Modbus. Every request is preceded by the bus's `FE` preamble (`[[bus]] preamble`). The
//! daemon, `read` and `scan` all read through this one path.
//!
//! What a poll reads: every identifier of the model that holds a published quantity. A block
//! identifier is read as one transaction; its value bytes hold its items one after the other.
//! The meter's own items — date and time, status word 1, the power-down and cover-open counts
//! — are read apart ([`Driver::read_items`], every `[time_sync] read_interval_s`), and the
//! broadcast time sync (08H to `999999999999`, the local time of the bus's zone) is
//! [`Driver::time_sync`]; prepaid balances are not read yet. A relay order (费控) is
//! [`Driver::relay`]: the remote-control request 1CH to the meter's address with its password
//! and operator code, valid for [`RELAY_ORDER_VALID_S`], then status word 3 (`04000503`) read
//! back for the relay's state.
//!
//! How the plan learns what a meter accepts:
//!
//! - an abnormal reply "no such data item" to a block identifier: the meter does not take that
//!   block; its items are read one by one in this poll and every later one, and the set of
//!   refused blocks is reported ([`Learned::RefusedBlocks`], stored by the gateway and passed
//!   back as learned after a restart);
//! - "no such data item" for a single identifier, `unsupported_attempts` polls in a row (a
//!   single-phase meter asked for phase B): the meter does not have it; it is no longer read,
//!   with a warning naming meter, address and identifier.
//!
//! The meter's own daily freezes (日冻结, DL/T 645-2007 only: [`crate::protocol::dlt645::freeze`])
//! are read by [`Driver::read_freezes`] once after each local midnight of the bus's zone, at
//! least [`FREEZE_READ_AFTER_MS`] after it (the meters freeze at their own 00:00): the last
//! freeze's time and its forward and reverse energy blocks. The freeze time is the meter's
//! clock read in the bus's zone; one within [`FREEZE_SNAP_MS`] of a local midnight counts as
//! that midnight, any other is reported as it is. Re-reading (补抄): the driver remembers the
//! newest freeze it got from each meter; when the meter's last freeze is more than one day
//! newer (it was silent over midnights, or the gateway missed its read), the freezes in
//! between are read back too, up to the 62 a meter keeps, oldest first. After a restart the
//! driver starts from the last freeze only. A meter that answers the freeze time "no such data
//! item" keeps no freezes and is not asked again; DL/T 645-1997 meters have no daily freeze in
//! this form and are never asked (their freezes are interpolated from the reads).
//!
//! An abnormal reply is the meter's answer (it is alive): the poll goes on with the next read,
//! and ends `Partial` (some reads answered) or `Exception` (none did). Silence, a bad checksum
//! or a reply from another address ends the poll at once, as for Modbus.

use super::TimeSync;
use super::driver::{Driver, DriverFuture, FrozenDay, Poll, ReadFailure};
use super::health::OfflinePolicy;
use super::on_demand::{RelayAction, RelayOrder, RelayOutcome};
use super::{BusSettings, Endpoint, MeterSettings, Protocol};
use crate::clock::now_ms;
use crate::meter::{DiRead, DiValue, Dlt645Model};
use crate::model::{Learned, MeterId, MeterItems, PollOutcome, Ratios, Reading, is_quantity};
use crate::protocol::dlt645::codec::{self, ControlOrder, MeterTime, RelayStatus};
use crate::protocol::dlt645::freeze::{self as frozen, FREEZE_DAYS, FreezeItem};
use crate::protocol::dlt645::{
    Address, DataId, Dlt645Error, Dlt645Transport, Line, Parity, Version,
};
use crate::protocol::{self, SerialLine};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_serial::SerialStream;
use tracing::{debug, warn};

/// How long a relay order stays valid after it is sent (its N3..N8), s: a meter that takes
/// it late (a slow serial server) still acts, one that finds it stale refuses it.
pub const RELAY_ORDER_VALID_S: i64 = 300;

/// How long after a local midnight the meters' daily freezes are read: after the meters' own
/// freeze moment (00:00 by their clocks, which may be a little off).
pub const FREEZE_READ_AFTER_MS: i64 = 5 * 60_000;
/// A freeze time this close to a local midnight is taken as that midnight.
pub const FREEZE_SNAP_MS: i64 = 5 * 60_000;

/// The quantity a reading's timestamp follows: when the read holding it was sent.
const ENERGY: &str = "energy_import_kwh";

/// The open link of a DL/T 645 bus: a serial port, or a TCP connection to a transparent serial
/// server.
enum Transport {
    Serial(Dlt645Transport<SerialStream>),
    Tcp(Dlt645Transport<TcpStream>),
}

impl Transport {
    async fn read(
        &mut self,
        address: &Address,
        di: DataId,
        timeout: Duration,
    ) -> Result<Vec<u8>, Dlt645Error> {
        match self {
            Transport::Serial(t) => t.read(address, di, timeout).await,
            Transport::Tcp(t) => t.read(address, di, timeout).await,
        }
    }

    async fn read_address(&mut self, timeout: Duration) -> Result<Address, Dlt645Error> {
        match self {
            Transport::Serial(t) => t.read_address(timeout).await,
            Transport::Tcp(t) => t.read_address(timeout).await,
        }
    }

    async fn broadcast_time(
        &mut self,
        time: &MeterTime,
        timeout: Duration,
    ) -> Result<(), Dlt645Error> {
        match self {
            Transport::Serial(t) => t.broadcast_time(time, timeout).await,
            Transport::Tcp(t) => t.broadcast_time(time, timeout).await,
        }
    }

    async fn transact(
        &mut self,
        address: &Address,
        request: &[u8],
        function: u8,
        timeout: Duration,
    ) -> Result<(), Dlt645Error> {
        match self {
            Transport::Serial(t) => t.transact(address, request, function, timeout).await,
            Transport::Tcp(t) => t.transact(address, request, function, timeout).await,
        }
        .map(|_| ())
    }
}

/// The link of a DL/T 645 bus and the deadline rule of its transactions.
struct Dlt645Link {
    endpoint: Endpoint,
    line: Line,
    preamble: usize,
    timeout: Duration,
    transport: Option<Transport>,
}

impl Dlt645Link {
    /// The deadline of a read of `di` whose reply carries `value_len` value bytes.
    fn deadline(&self, di: DataId, value_len: usize) -> Duration {
        self.timeout + self.wire_time(di, value_len)
    }

    /// Wire time of a read with this bus's preamble: the request and a reply of `value_len`
    /// value bytes (with the `FE` × 4 most meters send).
    fn wire_time(&self, di: DataId, value_len: usize) -> Duration {
        let frame = crate::protocol::dlt645::codec::FRAME_OVERHEAD + di.len();
        let default = crate::protocol::dlt645::codec::DEFAULT_PREAMBLE_LEN;
        self.line
            .frame_time(self.preamble + frame + default + frame + value_len)
    }

    async fn open(&mut self) -> Result<(), Dlt645Error> {
        let mut transport = match &self.endpoint {
            Endpoint::Serial(device) => {
                Transport::Serial(Dlt645Transport::open_serial(device, self.line)?)
            }
            Endpoint::Tcp(address) => {
                Transport::Tcp(Dlt645Transport::connect(address, self.line, self.timeout).await?)
            }
        };
        match &mut transport {
            Transport::Serial(t) => t.set_preamble(self.preamble),
            Transport::Tcp(t) => t.set_preamble(self.preamble),
        }
        self.transport = Some(transport);
        Ok(())
    }

    fn transport(&mut self) -> Result<&mut Transport, Dlt645Error> {
        let endpoint = &self.endpoint;
        self.transport.as_mut().ok_or_else(|| {
            Dlt645Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("{endpoint} is not open"),
            ))
        })
    }

    async fn read(
        &mut self,
        address: &Address,
        di: DataId,
        value_len: usize,
    ) -> Result<Vec<u8>, Dlt645Error> {
        let deadline = self.deadline(di, value_len);
        self.transport()?.read(address, di, deadline).await
    }
}

/// What the driver knows about one meter: its address and model, the blocks it refuses, the
/// identifiers it turned out not to have, and the reads of its next poll.
struct MeterPlan {
    id: MeterId,
    /// The configured address, parsed; a bad one is reported on every poll.
    address: Result<Address, String>,
    ratios: Ratios,
    model: Arc<Dlt645Model>,
    /// Block identifiers the meter answered "no such data item".
    refused: BTreeSet<DataId>,
    /// Single identifiers refused polls in a row.
    refusals: BTreeMap<DataId, u32>,
    /// Single identifiers no longer read.
    skipped: BTreeSet<DataId>,
    reads: Vec<DiRead>,
    /// What the driver knows of the meter's own daily freezes.
    freeze: FreezeTrack,
}

/// The daily freezes read from one meter.
#[derive(Debug, Default)]
struct FreezeTrack {
    /// The meter answered "no such data item" for the freeze time: it is not asked again.
    refused: bool,
    /// Time of the newest freeze got from it (UTC ms).
    last_ms: Option<i64>,
    /// The local midnight after which its freezes were last read.
    read_after: Option<i64>,
}

impl MeterPlan {
    fn replan(&mut self) {
        self.reads = plan_reads(&self.model, &self.refused, &self.skipped);
    }

    /// The refused blocks as [`Learned::RefusedBlocks`].
    fn learned(&self) -> Learned {
        Learned::RefusedBlocks(self.refused.iter().map(ToString::to_string).collect())
    }

    /// Bytes of the value of `read`.
    fn value_len(&self, read: &DiRead) -> usize {
        read.items
            .iter()
            .filter_map(|di| self.model.entry(*di))
            .map(|e| e.format.len())
            .sum()
    }
}

/// The reads of one poll of `model`: every read holding a published quantity, blocks unless
/// `refused`, single identifiers of `skipped` left out, energy first (the read holding the
/// import energy, then the other energies, then the instantaneous values).
pub fn plan_reads(
    model: &Dlt645Model,
    refused: &BTreeSet<DataId>,
    skipped: &BTreeSet<DataId>,
) -> Vec<DiRead> {
    let quantity = |di: &DataId| model.entry(*di).is_some_and(|e| e.is_quantity());
    let mut reads: Vec<DiRead> = model
        .plan(true, refused)
        .into_iter()
        .filter(|r| r.items.iter().any(quantity))
        .filter(|r| r.is_block() || !skipped.contains(&r.di))
        .collect();
    reads.sort_by_key(|r| energy_rank(model, r));
    reads
}

/// 0 for the read holding the import energy, 1 for other energies, 2 for the rest.
fn energy_rank(model: &Dlt645Model, read: &DiRead) -> u8 {
    let names = || {
        read.items
            .iter()
            .filter_map(|di| model.entry(*di))
            .map(|e| e.name.as_str())
    };
    if names().any(|n| n == ENERGY) {
        0
    } else if names().any(|n| is_quantity(n) && crate::model::is_energy(n)) {
        1
    } else {
        2
    }
}

/// The DL/T 645 driver of one bus.
pub struct Dlt645Driver {
    bus: String,
    link: Dlt645Link,
    unsupported_attempts: u32,
    meters: Vec<MeterPlan>,
    /// The zone the meters keep their clocks in.
    time_sync: TimeSync,
}

impl Dlt645Driver {
    /// The driver of a DL/T 645 `bus` for `meters`, with the refused blocks `learned` earlier.
    pub fn new(
        bus: &BusSettings,
        meters: &[MeterSettings],
        learned: &[(MeterId, Learned)],
        policy: &OfflinePolicy,
    ) -> Result<Dlt645Driver, String> {
        if bus.protocol != Protocol::Dlt645 {
            return Err(format!(
                "bus {}: the DL/T 645 driver cannot run {}",
                bus.name,
                bus.protocol.name()
            ));
        }
        let line = line_of(&bus.line);
        line.check().map_err(|e| format!("bus {}: {e}", bus.name))?;
        let meters = meters
            .iter()
            .map(|m| {
                let Some(model) = m.model.dlt645() else {
                    return Err(format!(
                        "bus {}: meter {} has the Modbus model {}; a DL/T 645 bus reads DL/T 645 \
                         models (dlt645-2007, dlt645-1997)",
                        bus.name,
                        m.id,
                        m.model.name()
                    ));
                };
                let address = match &m.address {
                    Some(a) => Address::parse(a).map_err(|e| {
                        format!("meter {} address {a}: {}; give its 12 digits", m.id, e.0)
                    }),
                    None => Err(format!("meter {} has no DL/T 645 address", m.id)),
                };
                let refused: BTreeSet<DataId> = learned
                    .iter()
                    .filter(|(id, _)| *id == m.id)
                    .flat_map(|(_, l)| match l {
                        Learned::RefusedBlocks(dis) => dis.clone(),
                        Learned::BlockLimit(_) => Vec::new(),
                    })
                    .filter_map(|d| DataId::parse(&d))
                    .filter(|d| model.block(*d).is_some())
                    .collect();
                let mut plan = MeterPlan {
                    id: m.id.clone(),
                    address,
                    ratios: m.ratios,
                    model: model.clone(),
                    refused,
                    refusals: BTreeMap::new(),
                    skipped: BTreeSet::new(),
                    reads: Vec::new(),
                    freeze: FreezeTrack::default(),
                };
                plan.replan();
                Ok(plan)
            })
            .collect::<Result<_, String>>()?;
        Ok(Dlt645Driver {
            bus: bus.name.clone(),
            link: Dlt645Link {
                endpoint: bus.endpoint.clone(),
                line,
                preamble: bus.preamble,
                timeout: bus.timeout,
                transport: None,
            },
            unsupported_attempts: policy.unsupported_attempts,
            meters,
            time_sync: bus.time_sync.clone(),
        })
    }

    /// Opens the link (also what [`Driver::open`] does), with the typed error.
    pub async fn open_link(&mut self) -> Result<(), Dlt645Error> {
        self.link.open().await
    }

    /// The deadline of a read of `di` with `value_len` value bytes: the bus's timeout (the
    /// meter's allowance) plus the wire time of the request and the reply.
    pub fn deadline(&self, di: DataId, value_len: usize) -> Duration {
        self.link.deadline(di, value_len)
    }

    /// One read of `di` from `address` within [`Dlt645Driver::deadline`] (a reply of
    /// `value_len` value bytes expected): the transaction every poll is made of, for tools that
    /// need the typed answer (`scan`).
    pub async fn read(
        &mut self,
        address: &Address,
        di: DataId,
        value_len: usize,
    ) -> Result<Vec<u8>, Dlt645Error> {
        self.link.read(address, di, value_len).await
    }

    /// The address of the only meter on the bus (13H to `AAAAAAAAAAAA`), within the deadline
    /// of a short read.
    pub async fn read_address(&mut self) -> Result<Address, Dlt645Error> {
        let deadline = self.link.deadline(DataId::V2007(0), 2);
        self.link.transport()?.read_address(deadline).await
    }

    /// The reads the next poll of `meter` makes.
    pub fn reads(&self, meter: usize) -> &[DiRead] {
        &self.meters[meter].reads
    }

    /// [`Driver::poll`] of meter `meter`.
    pub async fn poll_meter(&mut self, meter: usize, _presumed_alive: bool) -> Poll {
        let (bus, attempts) = (self.bus.as_str(), self.unsupported_attempts);
        poll_meter(&mut self.link, &mut self.meters[meter], bus, attempts).await
    }
}

impl Driver for Dlt645Driver {
    fn open(&mut self) -> DriverFuture<'_, Result<(), String>> {
        Box::pin(async move { self.open_link().await.map_err(|e| e.to_string()) })
    }

    fn close(&mut self) {
        self.link.transport = None;
    }

    fn poll(&mut self, meter: usize, presumed_alive: bool) -> DriverFuture<'_, Poll> {
        Box::pin(self.poll_meter(meter, presumed_alive))
    }

    fn probe(&mut self, meter: usize) -> DriverFuture<'_, Poll> {
        Box::pin(probe_meter(&mut self.link, &self.meters[meter]))
    }

    fn switch_pause(&self, _previous: Option<usize>, _meter: usize) -> Duration {
        Duration::ZERO
    }

    fn read_items(&mut self, meter: usize) -> DriverFuture<'_, Option<MeterItems>> {
        let zone = self.time_sync.zone.clone();
        Box::pin(read_items(&mut self.link, &self.meters[meter], zone))
    }

    fn relay(
        &mut self,
        meter: usize,
        order: &RelayOrder,
        now_ms: i64,
    ) -> DriverFuture<'_, Result<RelayOutcome, String>> {
        let order = order.clone();
        Box::pin(async move {
            let offset = super::time_sync::utc_offset_s(&self.time_sync.zone, now_ms);
            let until = MeterTime::from_unix(now_ms.div_euclid(1000) + RELAY_ORDER_VALID_S, offset);
            relay(&mut self.link, &self.meters[meter], &order, &until).await
        })
    }

    fn read_freezes(&mut self, meter: usize, now_ms: i64) -> DriverFuture<'_, Vec<FrozenDay>> {
        let zone = self.time_sync.zone.clone();
        let bus = self.bus.clone();
        Box::pin(async move {
            read_freezes(&mut self.link, &mut self.meters[meter], &bus, &zone, now_ms).await
        })
    }

    fn time_sync(&mut self, now_ms: i64) -> DriverFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let secs = now_ms.div_euclid(1000);
            let offset = super::time_sync::utc_offset_s(&self.time_sync.zone, now_ms);
            let time = MeterTime::from_unix(secs, offset);
            let frame = crate::protocol::dlt645::codec::FRAME_OVERHEAD + 6;
            let timeout = self.link.timeout + self.link.line.frame_time(self.link.preamble + frame);
            let transport = self.link.transport().map_err(|e| e.to_string())?;
            transport
                .broadcast_time(&time, timeout)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Sends `order` to the meter of `plan` (1CH, valid until `until`) and reads status word 3
/// back. `Err` when the meter did not answer the order (its relay state is then unknown).
async fn relay(
    link: &mut Dlt645Link,
    plan: &MeterPlan,
    order: &RelayOrder,
    until: &MeterTime,
) -> Result<RelayOutcome, String> {
    let address = plan.address.clone()?;
    let who = format!("meter {} ({address})", plan.id);
    if plan.model.version != Version::V2007 {
        return Err(format!(
            "{who} speaks DL/T 645-1997; relay control (control code 1CH) needs a DL/T 645-2007 \
             meter"
        ));
    }
    let code = match order.action {
        RelayAction::Trip => ControlOrder::Trip,
        RelayAction::Close => ControlOrder::CloseAllowed,
        RelayAction::Alarm => ControlOrder::Alarm,
        RelayAction::AlarmOff => ControlOrder::AlarmOff,
        RelayAction::KeepPower => ControlOrder::KeepPower,
        RelayAction::KeepPowerOff => ControlOrder::KeepPowerOff,
    };
    let request =
        codec::remote_control_request(&address, order.password, order.operator, code, until);
    // The request (16 data bytes) and a reply of at most one ERR byte.
    let timeout = link.timeout
        + link.line.frame_time(
            link.preamble + request.len() + codec::DEFAULT_PREAMBLE_LEN + codec::FRAME_OVERHEAD + 1,
        );
    let sent = link
        .transport()
        .map_err(|e| e.to_string())?
        .transact(&address, &request, codec::REMOTE_CONTROL_2007, timeout)
        .await;
    let (accepted, reply) = match sent {
        Ok(()) => (true, "ok".to_string()),
        Err(Dlt645Error::Abnormal { err, .. }) => (
            false,
            format!(
                "refused (ERR {err:#04x}: {})",
                codec::error_meaning(Version::V2007, err)
            ),
        ),
        Err(e) => {
            return Err(format!(
                "{who}: no answer to the relay order {}: {e}; whether it acted is unknown, \
                 read its state again",
                order.action.name()
            ));
        }
    };
    let mut outcome = RelayOutcome {
        accepted,
        reply,
        relay: None,
        alarm: None,
        keep_power: None,
        command_open: None,
        read_back_error: None,
    };
    let di = DataId::V2007(codec::STATUS_WORD_3);
    match link.read(&address, di, 2).await {
        Ok(bytes) if bytes.len() == 2 => {
            let status = RelayStatus::from_word(u16::from_le_bytes([bytes[0], bytes[1]]));
            outcome.relay = Some(if status.open { "open" } else { "closed" });
            outcome.alarm = Some(status.alarm);
            outcome.keep_power = Some(status.keep_power);
            outcome.command_open = Some(status.command_open);
        }
        Ok(bytes) => {
            outcome.read_back_error = Some(format!(
                "status word 3 ({di}) with {} bytes, expected 2",
                bytes.len()
            ))
        }
        Err(e) => outcome.read_back_error = Some(format!("status word 3 ({di}) not read: {e}")),
    }
    Ok(outcome)
}

/// Reads the meter's own items its model has (date and time, status word 1, the power-down
/// and meter-cover-open counts), one identifier at a time; an item the meter does not give is
/// left `None`. `None` when it gave none (silent, or no such items in its model).
async fn read_items(
    link: &mut Dlt645Link,
    plan: &MeterPlan,
    zone: crate::clock::LocalTime,
) -> Option<MeterItems> {
    let address = plan.address.as_ref().ok().copied()?;
    let mut items = MeterItems {
        ts_ms: now_ms(),
        ..MeterItems::default()
    };
    let mut any = false;
    let mut read = async |name: &str| -> Option<(DiValue, i64)> {
        let entry = plan.model.entry_named(name)?;
        let sent = now_ms();
        let bytes = match link.read(&address, entry.di, entry.format.len()).await {
            Ok(b) => b,
            Err(e) => {
                debug!(meter = %plan.id, address = %address, error = %e, "item {name} not read");
                return None;
            }
        };
        let at = (sent + now_ms()) / 2;
        crate::meter::dlt645_model::decode_value(entry, &bytes)
            .ok()
            .map(|v| (v, at))
    };
    let mut date = read("meter_date").await;
    let time = read("meter_time").await;
    if let Some((
        DiValue::Time {
            hour: 0,
            minute: 0,
            second,
        },
        _,
    )) = &time
        && *second < 10
    {
        // Midnight may have passed between the two reads: the date of the time is the new one.
        date = read("meter_date").await;
    }
    if let (
        Some((
            DiValue::Date {
                year, month, day, ..
            },
            _,
        )),
        Some((
            DiValue::Time {
                hour,
                minute,
                second,
            },
            at,
        )),
    ) = (&date, &time)
    {
        let meter = MeterTime {
            year: *year,
            month: *month,
            day: *day,
            hour: *hour,
            minute: *minute,
            second: *second,
        };
        let offset = super::time_sync::utc_offset_s(&zone, *at);
        // The meter's clock counts whole seconds: compare with the gateway's at the middle of
        // the exchange that read it.
        let skew = meter.to_unix(offset) as f64 - *at as f64 / 1000.0 + 0.5;
        items.clock_skew_s = Some((skew * 10.0).round() / 10.0);
        any = true;
    }
    if let Some((DiValue::Bits(w), _)) = read("status_word_1").await {
        items.status_word_1 = Some(w as u16);
        any = true;
    }
    if let Some((DiValue::Number(n), _)) = read("power_down_count").await {
        items.power_down_count = Some(n.max(0.0) as u64);
        any = true;
    }
    if let Some((DiValue::Number(n), _)) = read("cover_open_count").await {
        items.cover_open_count = Some(n.max(0.0) as u64);
        any = true;
    }
    any.then_some(items)
}

/// The local midnight whose freezes are due at `now_ms`: today's from
/// [`FREEZE_READ_AFTER_MS`] after it, yesterday's before.
fn freeze_due(zone: &crate::clock::LocalTime, now_ms: i64) -> i64 {
    let today = zone.day_start_ms(now_ms);
    if now_ms - today >= FREEZE_READ_AFTER_MS {
        today
    } else {
        zone.day_start_ms(today - 1)
    }
}

/// A meter's calendar time read in `zone`, UTC ms; within [`FREEZE_SNAP_MS`] of a local
/// midnight, that midnight.
fn freeze_ts_ms(zone: &crate::clock::LocalTime, t: &MeterTime) -> i64 {
    let naive_ms = t.to_unix(0) * 1000;
    let first = super::time_sync::utc_offset_s(zone, naive_ms);
    let offset = super::time_sync::utc_offset_s(zone, naive_ms - first * 1000);
    let ts = t.to_unix(offset) * 1000;
    let midnight = zone.day_start_ms(ts + FREEZE_SNAP_MS);
    if (ts - midnight).abs() <= FREEZE_SNAP_MS {
        midnight
    } else {
        ts
    }
}

/// Reads the meter's daily freezes due at `now_ms` (see the module doc): none when they were
/// read after the due midnight already, the meter keeps none, or it is silent (then they are
/// read when it answers again).
async fn read_freezes(
    link: &mut Dlt645Link,
    plan: &mut MeterPlan,
    bus: &str,
    zone: &crate::clock::LocalTime,
    now_ms: i64,
) -> Vec<FrozenDay> {
    let due = freeze_due(zone, now_ms);
    if plan.model.version != Version::V2007
        || plan.freeze.refused
        || plan.freeze.read_after == Some(due)
    {
        return Vec::new();
    }
    let Ok(address) = plan.address.clone() else {
        return Vec::new();
    };
    let read_time = async |link: &mut Dlt645Link, n: u8| {
        let di = FreezeItem::Time.di(n);
        link.read(&address, di, FreezeItem::Time.value_len())
            .await
            .map(|bytes| frozen::decode_time(&bytes))
    };
    // The freezes newer than the last one got, newest first: (history index, time).
    let mut wanted: Vec<(u8, i64)> = Vec::new();
    for n in 1..=FREEZE_DAYS {
        let t = match read_time(link, n).await {
            Ok(Some(t)) => t,
            // Never frozen yet (a new meter answers zeros), or no such old freeze.
            Ok(None) => break,
            Err(e) if n == 1 && e.no_such_data_item() => {
                warn!(bus = %bus, meter = %plan.id, address = %address,
                    "the meter has no daily freeze (05060001: no such data item); its freezes                      are interpolated from the reads");
                plan.freeze.refused = true;
                return Vec::new();
            }
            Err(e) if n == 1 => {
                debug!(bus = %bus, meter = %plan.id, error = %e, "daily freeze not read");
                return Vec::new();
            }
            // No such old freeze.
            Err(e) if e.meter_answered() => break,
            // Silent half-way: all of them when it answers again.
            Err(_) => return Vec::new(),
        };
        let ts = freeze_ts_ms(zone, &t);
        if plan.freeze.last_ms.is_some_and(|last| ts <= last) {
            break;
        }
        wanted.push((n, ts));
        if plan.freeze.last_ms.is_none() {
            // Nothing got before (a start): the last freeze only.
            break;
        }
    }
    let mut out = Vec::new();
    for (n, ts) in wanted.into_iter().rev() {
        let energy = async |link: &mut Dlt645Link, item: FreezeItem| {
            link.read(&address, item.di(n), item.value_len())
                .await
                .map(|bytes| frozen::decode_energy(&bytes))
        };
        let import = match energy(link, FreezeItem::Import).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                warn!(bus = %bus, meter = %plan.id, address = %address,
                    "daily freeze {}: the energy block is not BCD; skipped", FreezeItem::Import.di(n));
                continue;
            }
            Err(e) => {
                debug!(bus = %bus, meter = %plan.id, error = %e, "daily freeze energy not read");
                return out;
            }
        };
        let names = [
            "energy_import_kwh",
            "energy_import_t1_kwh",
            "energy_import_t2_kwh",
            "energy_import_t3_kwh",
            "energy_import_t4_kwh",
        ];
        let mut values: BTreeMap<String, f64> = names
            .iter()
            .zip(import)
            .map(|(q, v)| (q.to_string(), plan.ratios.primary(q, v)))
            .collect();
        match energy(link, FreezeItem::Export).await {
            Ok(Some(e)) => {
                let q = "energy_export_kwh";
                values.insert(q.to_string(), plan.ratios.primary(q, e[0]));
            }
            Ok(None) => {}
            Err(e) if e.meter_answered() => {}
            Err(e) => {
                debug!(bus = %bus, meter = %plan.id, error = %e, "daily freeze energy not read");
                return out;
            }
        }
        plan.freeze.last_ms = Some(ts);
        out.push(FrozenDay { ts_ms: ts, values });
    }
    plan.freeze.read_after = Some(due);
    out
}

/// The serial line of a bus as the DL/T 645 transport takes it.
fn line_of(line: &SerialLine) -> Line {
    Line {
        baud: line.baud,
        parity: match line.parity {
            protocol::Parity::None => Parity::None,
            protocol::Parity::Even => Parity::Even,
            protocol::Parity::Odd => Parity::Odd,
        },
        data_bits: line.data_bits,
        stop_bits: line.stop_bits,
    }
}

/// The meter answered (an abnormal reply) or is dead, garbled or unreachable.
fn outcome_of(e: &Dlt645Error) -> PollOutcome {
    match e {
        Dlt645Error::Timeout(_) => PollOutcome::Timeout,
        Dlt645Error::BadChecksum => PollOutcome::BadCrc,
        Dlt645Error::WrongAddress { .. } => PollOutcome::WrongUnit,
        Dlt645Error::Abnormal { .. } => PollOutcome::Exception,
        _ => PollOutcome::Failed,
    }
}

/// The failed read of `di`: as the meter's health keeps it, and as the tools list it.
fn failure(e: &dyn std::fmt::Display, di: DataId) -> (String, ReadFailure) {
    (
        format!("{e} (data identifier {di})"),
        ReadFailure {
            what: format!("data identifier {di}"),
            error: e.to_string(),
        },
    )
}

/// A poll that ended with `e` on `di`; an I/O error breaks the link.
fn failed(e: &Dlt645Error, di: DataId, started: Instant) -> Poll {
    let (error, f) = failure(e, di);
    Poll {
        latency: started.elapsed(),
        link_broken: matches!(e, Dlt645Error::Io(_)),
        ..Poll::failed(outcome_of(e), f, error)
    }
}

/// A meter whose address cannot be used.
fn bad_address(error: &str) -> Poll {
    Poll::failed(
        PollOutcome::Failed,
        ReadFailure {
            what: "address".into(),
            error: error.to_string(),
        },
        error.to_string(),
    )
}

/// Probes an offline meter with the smallest read that proves it alive: its import energy
/// alone (else its first identifier). An abnormal reply proves it alive too.
async fn probe_meter(link: &mut Dlt645Link, plan: &MeterPlan) -> Poll {
    let started = Instant::now();
    let address = match &plan.address {
        Ok(a) => *a,
        Err(e) => return bad_address(e),
    };
    let Some(entry) = plan
        .model
        .entry_named(ENERGY)
        .or_else(|| plan.model.entries.first())
    else {
        return bad_address("the model has no data identifier");
    };
    let outcome = match link.read(&address, entry.di, entry.format.len()).await {
        Ok(_) => PollOutcome::Ok,
        Err(e) if e.meter_answered() => PollOutcome::Exception,
        Err(e) => {
            return Poll {
                requests: 1,
                ..failed(&e, entry.di, started)
            };
        }
    };
    Poll {
        outcome,
        reading: None,
        error: None,
        failures: Vec::new(),
        requests: 1,
        latency: started.elapsed(),
        link_broken: false,
        learned: Vec::new(),
    }
}

/// Reads every planned identifier of the meter once; learns on the way (see the module doc).
async fn poll_meter(
    link: &mut Dlt645Link,
    plan: &mut MeterPlan,
    bus: &str,
    unsupported_attempts: u32,
) -> Poll {
    let started = Instant::now();
    let address = match &plan.address {
        Ok(a) => *a,
        Err(e) => return bad_address(e),
    };
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    let mut queue: VecDeque<DiRead> = plan.reads.iter().cloned().collect();
    let mut answered = 0usize;
    let mut requests = 0usize;
    let mut first_sent_ms: Option<i64> = None;
    let mut energy_sent_ms: Option<i64> = None;
    let mut first_error: Option<String> = None;
    let mut failures: Vec<ReadFailure> = Vec::new();
    let mut learned: Vec<Learned> = Vec::new();
    let mut refused_now: BTreeSet<DataId> = BTreeSet::new();
    let mut read_ok: BTreeSet<DataId> = BTreeSet::new();
    let refused_before = plan.refused.len();
    while let Some(read) = queue.pop_front() {
        requests += 1;
        let sent_ms = now_ms();
        let e = match link.read(&address, read.di, plan.value_len(&read)).await {
            Ok(bytes) => match plan.model.decode(&read, &bytes) {
                Ok(decoded) => {
                    answered += 1;
                    first_sent_ms.get_or_insert(sent_ms);
                    read_ok.extend(read.items.iter().copied());
                    for (entry, value) in decoded {
                        let DiValue::Number(v) = value else { continue };
                        if !entry.is_quantity() {
                            continue;
                        }
                        if entry.name == ENERGY {
                            energy_sent_ms = Some(sent_ms);
                        }
                        let v = plan.ratios.primary(&entry.name, v);
                        values.insert(entry.name.clone(), v);
                    }
                    continue;
                }
                // The meter answered with bytes that are not the model's value: its model is
                // wrong for it, or the reply was garbled in a way the checksum missed.
                Err(bad) => {
                    answered += 1;
                    let (text, f) = failure(&bad, read.di);
                    first_error.get_or_insert(text);
                    failures.push(f);
                    continue;
                }
            },
            Err(e) => e,
        };
        if e.no_such_data_item() && read.is_block() {
            debug!(bus = %bus, meter = %plan.id, address = %address,
                "block {} refused (no such data item): reading its items one by one", read.di);
            plan.refused.insert(read.di);
            // Its items next, in place of the block (the energy stays first).
            let model = plan.model.clone();
            for single in read.fallback().into_iter().rev() {
                let wanted = model.entry(single.di).is_some_and(|e| e.is_quantity())
                    && !plan.skipped.contains(&single.di);
                if wanted {
                    queue.push_front(single);
                }
            }
            continue;
        }
        if e.meter_answered() {
            if e.no_such_data_item() {
                refused_now.insert(read.di);
            }
            let (text, f) = failure(&e, read.di);
            first_error.get_or_insert(text);
            failures.push(f);
            continue;
        }
        // A silent, garbled or broken link: stop spending bus time on the meter this round.
        let mut poll = failed(&e, read.di, started);
        failures.append(&mut poll.failures);
        if plan.refused.len() != refused_before {
            learned.push(plan.learned());
            plan.replan();
        }
        return Poll {
            failures,
            requests,
            learned,
            ..poll
        };
    }
    if plan.refused.len() != refused_before {
        warn!(bus = %bus, meter = %plan.id, address = %address,
            "meter refuses block identifiers {} (no such data item); reading their items one \
             by one from now on", plan.refused.iter().map(ToString::to_string)
                .collect::<Vec<_>>().join(", "));
        learned.push(plan.learned());
        plan.replan();
    }
    skip_refused_items(plan, &refused_now, &read_ok, bus, unsupported_attempts);
    let reading = (!values.is_empty()).then(|| Reading {
        meter: plan.id.clone(),
        ts_ms: energy_sent_ms.or(first_sent_ms).unwrap_or_else(now_ms),
        values,
    });
    let outcome = match &first_error {
        None => PollOutcome::Ok,
        Some(_) if answered > 0 => PollOutcome::Partial,
        Some(_) => PollOutcome::Exception,
    };
    Poll {
        outcome,
        reading,
        error: first_error,
        failures,
        requests,
        latency: started.elapsed(),
        link_broken: false,
        learned,
    }
}

/// Counts the single identifiers the meter refused in this poll; stops reading one refused
/// `attempts` polls in a row (unless nothing else would be left). One read in between forgives.
fn skip_refused_items(
    plan: &mut MeterPlan,
    refused_now: &BTreeSet<DataId>,
    read_ok: &BTreeSet<DataId>,
    bus: &str,
    attempts: u32,
) {
    plan.refusals.retain(|di, _| !read_ok.contains(di));
    let mut changed = false;
    for &di in refused_now {
        let n = plan.refusals.entry(di).or_insert(0);
        *n += 1;
        if *n < attempts || plan.reads.len() <= 1 {
            continue;
        }
        let name = plan.model.entry(di).map_or("", |e| e.name.as_str());
        warn!(bus = %bus, meter = %plan.id,
            "meter {} ({}) answers \"no such data item\" for {di} ({name}) {attempts} polls in a \
             row; no longer reading it. The model {} may list an item this meter does not have \
             (a single-phase meter has no phase B or C)",
            plan.id,
            plan.address.as_ref().map_or_else(|e| e.clone(), ToString::to_string),
            plan.model.name);
        plan.refusals.remove(&di);
        plan.skipped.insert(di);
        changed = true;
    }
    if changed {
        plan.replan();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::ModelLibrary;

    fn dlt_bus(baud: u32) -> BusSettings {
        BusSettings {
            name: "d".into(),
            protocol: Protocol::Dlt645,
            endpoint: Endpoint::Serial("/dev/ttyS9".into()),
            line: SerialLine {
                baud,
                parity: protocol::Parity::Even,
                data_bits: 8,
                stop_bits: 1,
            },
            timeout: Line::even(baud).default_timeout(),
            poll_interval: Duration::from_secs(60),
            preamble: 4,
            time_sync: Default::default(),
        }
    }

    fn model(name: &str) -> Arc<Dlt645Model> {
        Arc::new(ModelLibrary::builtin().get_dlt645(name).unwrap().clone())
    }

    #[test]
    fn a_poll_reads_every_quantity_energy_first_with_blocks() {
        for name in ["dlt645-2007", "dlt645-1997"] {
            let model = model(name);
            let reads = plan_reads(&model, &BTreeSet::new(), &BTreeSet::new());
            assert_eq!(energy_rank(&model, &reads[0]), 0, "{name}: {reads:?}");
            let covered: BTreeSet<DataId> = reads.iter().flat_map(|r| r.items.clone()).collect();
            for e in model.entries.iter().filter(|e| e.is_quantity()) {
                assert!(covered.contains(&e.di), "{name}: {} not read", e.name);
            }
            assert!(reads.iter().any(DiRead::is_block), "{name}: no block read");
        }
        let model = model("dlt645-2007");
        let refused: BTreeSet<DataId> = model.blocks.iter().map(|b| b.di).collect();
        let reads = plan_reads(&model, &refused, &BTreeSet::new());
        assert!(reads.iter().all(|r| !r.is_block()));
        assert_eq!(reads[0].di, DataId::parse("00010000").unwrap());
    }

    #[test]
    fn learned_refused_blocks_apply_per_meter_and_the_deadline_counts_the_wire() {
        let model = model("dlt645-2007");
        let meters = [
            MeterSettings::dlt645("a", "000000000001", model.clone()),
            MeterSettings::dlt645("b", "000000000002", model.clone()),
        ];
        let learned = [(
            "b".to_string(),
            Learned::RefusedBlocks(vec!["0001FF00".into(), "0201FF00".into()]),
        )];
        let bus = dlt_bus(2400);
        let driver = Dlt645Driver::new(&bus, &meters, &learned, &OfflinePolicy::default()).unwrap();
        let blocks = |m: usize| driver.reads(m).iter().filter(|r| r.is_block()).count();
        assert_eq!(blocks(0), blocks(1) + 2);
        assert_eq!(
            driver.meters[1].learned(),
            Learned::RefusedBlocks(vec!["0001FF00".into(), "0201FF00".into()])
        );
        let di = DataId::parse("0001FF00").unwrap();
        // 4 FE + 16-byte request, 4 FE + 16 + 20 reply: 60 characters of 11 bits at 2400 baud.
        let wire = Line::even(2400).frame_time(60);
        assert_eq!(driver.deadline(di, 20), bus.timeout + wire);
    }

    #[test]
    fn a_modbus_model_or_a_bad_address_is_refused() {
        let sdm = Arc::new(
            ModelLibrary::builtin()
                .get("eastron-sdm120")
                .unwrap()
                .clone(),
        );
        let bus = dlt_bus(2400);
        let policy = OfflinePolicy::default();
        let err = Dlt645Driver::new(&bus, &[MeterSettings::modbus("m", 1, sdm)], &[], &policy)
            .err()
            .unwrap();
        assert!(err.contains("Modbus model eastron-sdm120"), "{err}");
        let bad = MeterSettings::dlt645("x", "12345", model("dlt645-2007"));
        let mut driver = Dlt645Driver::new(&bus, &[bad], &[], &policy).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let poll = rt.block_on(driver.poll_meter(0, true));
        assert_eq!(poll.outcome, PollOutcome::Failed);
        assert!(poll.error.unwrap().contains("12345"));
        let modbus = BusSettings {
            protocol: Protocol::ModbusRtu,
            ..bus
        };
        assert!(Dlt645Driver::new(&modbus, &[], &[], &policy).is_err());
    }

    /// Two 2007 meters and a 1997 one on a simulated pty bus (8N1: ptys refuse parity).
    const SIM: &str = r#"
[[bus]]
name = "b"
link = "ttyD"
protocol = "dlt645"
baud = 9600
parity = "none"
turnaround_ms = 20
gateway_timeout_ms = 500
[[meter]]
bus = "b"
unit = 1
address = "000000000001"
model = "dlt645-2007"
load_kw = 3.0
energy_start_kwh = 1000.0
[[meter]]
bus = "b"
unit = 2
address = "202208310002"
model = "dlt645-2007"
load_kw = 6.0
energy_start_kwh = 2000.0
[[meter]]
bus = "b"
unit = 3
address = "000000001997"
model = "dlt645-1997"
load_kw = 1.5
energy_start_kwh = 300.0
"#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn polls_read_every_quantity_and_learn_refused_blocks() {
        use crate::sim::Fault;
        let t = crate::sim::fixtures::start(SIM);
        t.sim
            .set_fault(
                "b",
                1,
                Fault {
                    refuse_blocks: true,
                    ..Fault::default()
                },
            )
            .unwrap();
        let bus = t.sim.bus_settings("b").unwrap();
        assert_eq!(bus.protocol, Protocol::Dlt645);
        let meters = [
            MeterSettings {
                ratios: Ratios::from_multiplier(40.0),
                ..MeterSettings::dlt645("a", "000000000001", model("dlt645-2007"))
            },
            MeterSettings::dlt645("b", "202208310002", model("dlt645-2007")),
            MeterSettings::dlt645("c", "000000001997", model("dlt645-1997")),
        ];
        let policy = OfflinePolicy::default();
        let mut driver = Dlt645Driver::new(&bus, &meters, &[], &policy).unwrap();
        driver.open_link().await.unwrap();
        for (i, unit, mult) in [(0, 1, 40.0), (1, 2, 1.0), (2, 3, 1.0)] {
            let before = now_ms();
            let poll = driver.poll_meter(i, true).await;
            assert_eq!(poll.outcome, PollOutcome::Ok, "{:?}", poll.failures);
            let reading = poll.reading.unwrap();
            // Stamped when the energy request went out: the first read of the poll.
            assert!(reading.ts_ms >= before && reading.ts_ms <= before + 1000);
            let quantities = meters[i]
                .model
                .dlt645()
                .unwrap()
                .entries
                .iter()
                .filter(|e| e.is_quantity())
                .count();
            assert_eq!(reading.values.len(), quantities, "meter {i}");
            for (q, v) in &reading.values {
                let ratios = Ratios::from_multiplier(mult);
                let want = ratios.primary(q, t.sim.value_now("b", unit, q).unwrap());
                let entry = meters[i].model.dlt645().unwrap().entry_named(q).unwrap();
                let crate::meter::dlt645_model::ValueFormat::Bcd { decimals, .. } = entry.format
                else {
                    unreachable!()
                };
                let scale = ratios.primary(q, 1.0);
                let tolerance = (0.5 * 10f64.powi(-i32::from(decimals)) + 0.01) * scale;
                assert!(
                    (v - want).abs() <= tolerance,
                    "meter {i} {q}: {v} vs {want}"
                );
            }
            if i == 0 {
                let Learned::RefusedBlocks(dis) = &poll.learned[0] else {
                    panic!("{:?}", poll.learned)
                };
                assert!(dis.contains(&"0001FF00".to_string()), "{dis:?}");
                assert!(driver.reads(0).iter().all(|r| !r.is_block()));
                assert!(poll.requests > driver.reads(0).len());
            } else {
                assert!(poll.learned.is_empty());
                assert!(driver.reads(i).iter().any(DiRead::is_block));
            }
        }
        // The next poll of the learning meter asks no block, learns nothing new.
        let poll = driver.poll_meter(0, true).await;
        assert_eq!(poll.outcome, PollOutcome::Ok);
        assert!(poll.learned.is_empty());
        assert_eq!(poll.requests, driver.reads(0).len());

        // An abnormal reply is the meter's answer; silence is not.
        t.sim
            .set_fault(
                "b",
                2,
                Fault {
                    exception: 0x01,
                    ..Fault::default()
                },
            )
            .unwrap();
        let poll = driver.poll_meter(1, true).await;
        assert_eq!(poll.outcome, PollOutcome::Exception);
        assert!(poll.error.unwrap().contains("abnormal reply"));
        let probe = driver.probe(1).await;
        assert_eq!(probe.outcome, PollOutcome::Exception);
        t.sim
            .set_fault(
                "b",
                2,
                Fault {
                    no_reply: true,
                    ..Fault::default()
                },
            )
            .unwrap();
        let poll = driver.poll_meter(1, true).await;
        assert_eq!(poll.outcome, PollOutcome::Timeout);
        assert_eq!(poll.requests, 1);
        let probe = driver.probe(2).await;
        assert_eq!(probe.outcome, PollOutcome::Ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn meter_items_and_the_broadcast_time_sync() {
        use crate::sim::Fault;
        let t = crate::sim::fixtures::start(SIM);
        for (unit, offset) in [(1, 90), (2, -400), (3, 30)] {
            let fault = Fault {
                clock_offset_s: offset,
                cover_open_count: 2,
                status_word_1: 1 << 2,
                ..Fault::default()
            };
            t.sim.set_fault("b", unit, fault).unwrap();
        }
        let mut bus = t.sim.bus_settings("b").unwrap();
        bus.time_sync.zone = crate::clock::LocalTime::named("Asia/Shanghai").unwrap();
        let meters = [
            MeterSettings::dlt645("a", "000000000001", model("dlt645-2007")),
            MeterSettings::dlt645("b", "202208310002", model("dlt645-2007")),
            MeterSettings::dlt645("c", "000000001997", model("dlt645-1997")),
        ];
        let mut driver = Dlt645Driver::new(&bus, &meters, &[], &OfflinePolicy::default()).unwrap();
        driver.open_link().await.unwrap();
        let skew = |i: &MeterItems| i.clock_skew_s.unwrap();
        let a = Driver::read_items(&mut driver, 0).await.unwrap();
        assert!((skew(&a) - 90.0).abs() <= 1.5, "{a:?}");
        assert_eq!(a.cover_open_count, Some(2));
        assert_eq!(a.power_down_count, Some(0));
        assert_eq!(a.clock_battery_low(), Some(true));
        assert_eq!(a.clock_fault(), Some(false));
        let c = Driver::read_items(&mut driver, 2).await.unwrap();
        assert!((skew(&c) - 30.0).abs() <= 1.5, "1997: {c:?}");
        assert_eq!(c.cover_open_count, None, "no such 1997 item");

        Driver::time_sync(&mut driver, now_ms()).await.unwrap();
        // Let the simulated meters take it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let a = Driver::read_items(&mut driver, 0).await.unwrap();
        assert!(skew(&a).abs() <= 1.5, "synced: {a:?}");
        let b = Driver::read_items(&mut driver, 1).await.unwrap();
        assert!(
            (skew(&b) + 400.0).abs() <= 1.5,
            "beyond 5 minutes, refused: {b:?}"
        );
        let c = Driver::read_items(&mut driver, 2).await.unwrap();
        assert!(skew(&c).abs() <= 1.5, "1997 synced: {c:?}");
    }

    #[tokio::test]
    async fn relay_orders_trip_keep_power_and_a_wrong_password() {
        use crate::bus::{RelayAction, RelayOrder};
        use crate::protocol::dlt645::codec::{parse_operator, parse_password};
        let t = crate::sim::fixtures::start(SIM);
        let mut bus = t.sim.bus_settings("b").unwrap();
        bus.time_sync.zone = crate::clock::LocalTime::named("Asia/Shanghai").unwrap();
        let meters = [
            MeterSettings::dlt645("a", "000000000001", model("dlt645-2007")),
            MeterSettings::dlt645("b", "202208310002", model("dlt645-2007")),
            MeterSettings::dlt645("c", "000000001997", model("dlt645-1997")),
        ];
        let mut driver = Dlt645Driver::new(&bus, &meters, &[], &OfflinePolicy::default()).unwrap();
        driver.open_link().await.unwrap();
        let order = |action, password: &str| RelayOrder {
            action,
            password: parse_password(password).unwrap(),
            operator: parse_operator("00000000").unwrap(),
        };
        let right = "02123456";

        // Trip: the meter takes it, status word 3 shows the relay open.
        let o = Driver::relay(&mut driver, 0, &order(RelayAction::Trip, right), now_ms())
            .await
            .unwrap();
        assert!(o.accepted, "{o:?}");
        assert_eq!(o.reply, "ok");
        assert_eq!(o.relay, Some("open"), "{o:?}");
        assert_eq!(o.command_open, Some(true));
        assert!(t.sim.relay_state("b", 1).unwrap().open);
        // The other meter is untouched.
        assert!(!t.sim.relay_state("b", 2).unwrap().open);

        // Close, then keep power: a trip is refused and the relay stays closed.
        let o = Driver::relay(&mut driver, 0, &order(RelayAction::Close, right), now_ms())
            .await
            .unwrap();
        assert_eq!((o.accepted, o.relay), (true, Some("closed")), "{o:?}");
        let o = Driver::relay(
            &mut driver,
            0,
            &order(RelayAction::KeepPower, right),
            now_ms(),
        )
        .await
        .unwrap();
        assert_eq!(o.keep_power, Some(true), "{o:?}");
        let o = Driver::relay(&mut driver, 0, &order(RelayAction::Trip, right), now_ms())
            .await
            .unwrap();
        assert!(!o.accepted, "{o:?}");
        assert!(o.reply.contains("other error"), "{o:?}");
        assert_eq!(o.relay, Some("closed"));
        assert!(!t.sim.relay_state("b", 1).unwrap().open);

        // Alarm on shows in bit 7.
        let o = Driver::relay(&mut driver, 1, &order(RelayAction::Alarm, right), now_ms())
            .await
            .unwrap();
        assert_eq!(o.alarm, Some(true), "{o:?}");

        // A wrong password: refused in words, nothing changes.
        let o = Driver::relay(
            &mut driver,
            1,
            &order(RelayAction::Trip, "02999999"),
            now_ms(),
        )
        .await
        .unwrap();
        assert!(!o.accepted);
        assert!(o.reply.contains("password error / unauthorised"), "{o:?}");
        assert_eq!(o.relay, Some("closed"));

        // An order whose validity ended (sent as if an hour ago) is refused by the meter.
        let late = now_ms() - 3_600_000;
        let o = Driver::relay(&mut driver, 1, &order(RelayAction::Trip, right), late)
            .await
            .unwrap();
        assert!(!o.accepted, "{o:?}");

        // A 1997 meter has no remote control.
        let e = Driver::relay(&mut driver, 2, &order(RelayAction::Trip, right), now_ms())
            .await
            .unwrap_err();
        assert!(e.contains("DL/T 645-2007"), "{e}");
    }

    /// The clock offset (s) that puts a simulated meter whose clock is now `offset_s` ahead
    /// two seconds before its next midnight (its clock keeps China Standard Time).
    fn before_next_midnight(offset_s: i64) -> i64 {
        let local = now_ms().div_euclid(1000) + 8 * 3600;
        let meter = local + offset_s;
        (meter.div_euclid(86_400) + 1) * 86_400 - 2 - local
    }

    /// Polls until the simulated meter's clock has passed the midnight it was set before.
    async fn past_midnight(driver: &mut Dlt645Driver) {
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        // A request lets the meter notice its midnight (answered or not).
        let _ = driver.poll_meter(0, true).await;
    }

    /// The freeze read back equals the simulator's truth; once per midnight; after a meter
    /// was silent over two midnights both freezes are read back when it answers, oldest
    /// first; a 1997 meter is never asked, and a meter answering "no such data item" once is
    /// not asked again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn daily_freezes_read_back_equal_the_meters_own_and_missed_days_are_re_read() {
        use crate::sim::Fault;
        let t = crate::sim::fixtures::start(SIM);
        let shanghai = crate::clock::LocalTime::named("Asia/Shanghai").unwrap();
        let mut bus = t.sim.bus_settings("b").unwrap();
        bus.time_sync.zone = shanghai.clone();
        let meters = [
            MeterSettings {
                ratios: Ratios::from_multiplier(40.0),
                ..MeterSettings::dlt645("a", "000000000001", model("dlt645-2007"))
            },
            MeterSettings::dlt645("b", "202208310002", model("dlt645-2007")),
            MeterSettings::dlt645("c", "000000001997", model("dlt645-1997")),
        ];
        let mut driver = Dlt645Driver::new(&bus, &meters, &[], &OfflinePolicy::default()).unwrap();
        driver.open_link().await.unwrap();
        let mut fault = Fault {
            clock_offset_s: before_next_midnight(0),
            ..Fault::default()
        };
        t.sim.set_fault("b", 1, fault.clone()).unwrap();
        assert_eq!(driver.poll_meter(0, true).await.outcome, PollOutcome::Ok);
        past_midnight(&mut driver).await;

        let truth = |n: usize| t.sim.daily_freezes("b", 1).unwrap()[n].clone();
        let check = |got: &FrozenDay, want: &crate::sim::SimFreeze| {
            let ts = want.time.to_unix(8 * 3600) * 1000;
            assert_eq!(got.ts_ms, ts, "{got:?} vs {want:?}");
            assert_eq!(shanghai.since_midnight_ms(got.ts_ms), 0);
            let names = [
                "energy_import_kwh",
                "energy_import_t1_kwh",
                "energy_import_t2_kwh",
                "energy_import_t3_kwh",
                "energy_import_t4_kwh",
            ];
            for (q, v) in names.iter().zip(want.import) {
                assert!(
                    (got.values[*q] - 40.0 * v).abs() <= 40.0 * 0.0051,
                    "{q}: {got:?}"
                );
            }
            let export = got.values["energy_export_kwh"];
            assert!((export - 40.0 * want.export[0]).abs() <= 40.0 * 0.0051);
        };

        // A gateway time 00:06 local: the freeze of the midnight just passed.
        let day = 86_400_000;
        let now = shanghai.day_start_ms(now_ms()) + 6 * 60_000;
        let got = driver.read_freezes(0, now).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(t.sim.daily_freezes("b", 1).unwrap().len(), 1);
        check(&got[0], &truth(0));
        // Once per midnight: no request at all the second time.
        let requests = t.sim.requests("b");
        assert!(driver.read_freezes(0, now + 3_600_000).await.is_empty());
        assert_eq!(t.sim.requests("b"), requests);

        // Silent over two of its midnights.
        fault.no_reply = true;
        for _ in 0..2 {
            fault.clock_offset_s = before_next_midnight(fault.clock_offset_s);
            t.sim.set_fault("b", 1, fault.clone()).unwrap();
            past_midnight(&mut driver).await;
        }
        assert_eq!(t.sim.daily_freezes("b", 1).unwrap().len(), 3);
        assert!(driver.read_freezes(0, now + day).await.is_empty());
        // It answers again: both missed freezes, oldest first.
        fault.no_reply = false;
        t.sim.set_fault("b", 1, fault.clone()).unwrap();
        let got = driver.read_freezes(0, now + day).await;
        assert_eq!(got.len(), 2, "{got:?}");
        check(&got[0], &truth(1));
        check(&got[1], &truth(2));
        assert_eq!(got[1].ts_ms - got[0].ts_ms, day);

        // The 1997 meter is never asked.
        let requests = t.sim.requests("b");
        assert!(driver.read_freezes(2, now).await.is_empty());
        assert_eq!(t.sim.requests("b"), requests);
        // A meter that has no daily freeze says so once and is not asked again.
        let refuses = Fault {
            exception: codec::ERR_NO_SUCH_DATA_ITEM,
            ..Fault::default()
        };
        t.sim.set_fault("b", 2, refuses).unwrap();
        assert!(driver.read_freezes(1, now).await.is_empty());
        t.sim.set_fault("b", 2, Fault::default()).unwrap();
        let requests = t.sim.requests("b");
        assert!(driver.read_freezes(1, now + day).await.is_empty());
        assert_eq!(t.sim.requests("b"), requests);
    }
}
