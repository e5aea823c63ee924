//! The Modbus driver (RTU on a serial port, Modbus TCP, RTU over TCP): a meter's poll planned
//! as register blocks of its model, energy first; each block one transaction over
//! [`crate::protocol::modbus`]; Modbus errors mapped to [`PollOutcome`]; and what the meter
//! turned out to accept, learned on the way.
//!
//! The deadline of a transaction is the bus's timeout (the meter's allowance) plus the wire
//! time of the request and its reply at the line's baud rate ([`ModbusDriver::deadline`]), so
//! that a slow line (2400 baud: 750 ms for 80 registers) is not taken for a silent meter; after
//! a timeout an RTU link drains the line for as long again, so a late reply cannot answer the
//! next request. The daemon, `read` and `scan` all read through this one path.
//!
//! How the plan learns what a meter accepts:
//!
//! - exception 03 or 04 on a block wider than one value (the meter's own, CRC-checked word):
//!   the meter's block limit is halved, the meter re-planned, and the limit reported
//!   ([`Learned::BlockLimit`], stored by the gateway and passed back as learned after a
//!   restart);
//! - silence on a wide block is a refusal only when the meter refuses it while answering the
//!   narrower reads cleanly: the block's first value answers and the block is silent again
//!   (then the narrower blocks of the new plan are read, and judged the same way) — and only on
//!   a quiet line. A reply with a bad CRC, garbage, another unit's
//!   reply, or a wide block that answers when re-tried is line trouble: for
//!   [`LINE_QUIET_AFTER`] after it, silence teaches nothing (the block is read in halves for
//!   that poll, so its values still come in);
//! - a learned limit is re-tried after `relearn_after` ([`OfflinePolicy`], a day by default):
//!   the model's own blocks are planned again and reported, so a wrong lesson heals itself and a
//!   true limit costs one refused read per period;
//! - exception 02 on a wide block: that block alone is split in two (an unmapped or missing
//!   register inside it, or a gap the meter will not read across), down to single values;
//! - exception 01 or 02 on a single value, `unsupported_attempts` polls in a row: the meter does
//!   not have that register; it is no longer read, with a warning naming meter, unit and
//!   registers.

use super::driver::{Driver, DriverFuture, Poll, ReadFailure};
use super::health::OfflinePolicy;
use super::{BusSettings, Endpoint as BusEndpoint, MeterSettings, Protocol};
use crate::clock::now_ms;
use crate::meter::{MeterModel, ReadBlock, decode_block, plan_blocks};
use crate::model::Learned;
use crate::model::{MeterId, PollOutcome, Ratios, Reading};
use crate::protocol::modbus::{Endpoint, Link, ModbusClient, ModbusError, RtuTiming};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// A register of a model: (function, address).
type RegisterKey = (u8, u16);

/// A register range a meter refused: (function, first address, one past the last).
type Hole = (u8, u32, u32);

/// After line trouble on a meter (a bad CRC, garbage, another unit's reply, a wide block that
/// answered when re-tried), silence on its wide blocks teaches nothing for this long.
pub const LINE_QUIET_AFTER: Duration = Duration::from_secs(600);

/// The link of a Modbus bus and the deadline rule of its transactions.
struct ModbusLink {
    link: Link,
    client: Option<ModbusClient>,
    timeout: Duration,
    timing: RtuTiming,
}

impl ModbusLink {
    /// The deadline of a read of `count` registers: the meter's allowance plus the wire time.
    fn deadline(&self, count: u16) -> Duration {
        self.timeout + self.timing.read_wire_time(count)
    }

    /// Reads `block` of `unit` within [`ModbusLink::deadline`].
    async fn read_block(&mut self, unit: u8, block: &ReadBlock) -> Result<Vec<u16>, ModbusError> {
        let deadline = self.deadline(block.count);
        let Some(client) = self.client.as_mut() else {
            return Err(ModbusError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("{} is not open", self.link.endpoint),
            )));
        };
        client
            .read_registers(unit, block.function, block.address, block.count, deadline)
            .await
    }
}

/// What the driver knows about one meter: its model, the registers it turned out not to
/// have, its block limit and the blocks of its next poll.
struct MeterPlan {
    id: MeterId,
    unit: Option<u8>,
    ratios: Ratios,
    /// The model as configured.
    model: Arc<MeterModel>,
    /// The model without the registers this meter turned out not to have; planned and decoded.
    /// The configured model itself (shared by every meter of it) until a register is skipped.
    active: Arc<MeterModel>,
    max_block: u16,
    blocks: Vec<ReadBlock>,
    /// Polls in a row in which a register was refused even when read alone.
    refused: BTreeMap<RegisterKey, u32>,
    /// Registers no longer read.
    skipped: BTreeSet<RegisterKey>,
    /// When the block limit was last narrowed (or taken over from the store): it is re-tried
    /// `relearn_after` later.
    narrowed_at: Option<Instant>,
    /// When line trouble was last seen on this meter's reads.
    line_trouble_at: Option<Instant>,
    /// Set by [`judge_silence`] when it narrowed the limit (reported by the poll).
    learned_now: bool,
}

/// The Modbus driver of one bus.
pub struct ModbusDriver {
    bus: String,
    link: ModbusLink,
    unsupported_attempts: u32,
    relearn_after: Duration,
    meters: Vec<MeterPlan>,
}

impl ModbusDriver {
    /// The driver of a Modbus `bus` for `meters`, with block limits `learned` earlier.
    pub fn new(
        bus: &BusSettings,
        meters: &[MeterSettings],
        learned: &[(MeterId, Learned)],
        policy: &OfflinePolicy,
    ) -> Result<ModbusDriver, String> {
        let endpoint = match (bus.protocol, &bus.endpoint) {
            (Protocol::ModbusRtu, BusEndpoint::Serial(device)) => Endpoint::Serial(device.clone()),
            (Protocol::ModbusTcp, BusEndpoint::Tcp(address)) => Endpoint::Tcp(address.clone()),
            (Protocol::ModbusRtuOverTcp, BusEndpoint::Tcp(address)) => {
                Endpoint::RtuOverTcp(address.clone())
            }
            (protocol, endpoint) => {
                return Err(format!(
                    "bus {}: {} cannot run on {endpoint}",
                    bus.name,
                    protocol.name()
                ));
            }
        };
        let meters = meters
            .iter()
            .map(|m| {
                let Some(model) = m.model.modbus() else {
                    return Err(format!(
                        "bus {}: meter {} has the DL/T 645 model {}; a Modbus bus reads \
                         Modbus models",
                        bus.name,
                        m.id,
                        m.model.name()
                    ));
                };
                let learned_max = learned.iter().find_map(|(id, l)| match l {
                    Learned::BlockLimit(max) if *id == m.id => Some(*max),
                    _ => None,
                });
                let max_block = learned_max.unwrap_or(model.max_block).min(model.max_block);
                Ok(MeterPlan {
                    id: m.id.clone(),
                    unit: m.unit,
                    ratios: m.ratios,
                    blocks: plan_meter(model, max_block),
                    active: model.clone(),
                    model: model.clone(),
                    max_block,
                    refused: BTreeMap::new(),
                    skipped: BTreeSet::new(),
                    narrowed_at: (max_block < model.max_block).then(Instant::now),
                    line_trouble_at: None,
                    learned_now: false,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ModbusDriver {
            bus: bus.name.clone(),
            link: ModbusLink {
                link: Link {
                    endpoint,
                    line: bus.line,
                },
                client: None,
                timeout: bus.timeout,
                timing: RtuTiming::from_serial(&bus.line),
            },
            unsupported_attempts: policy.unsupported_attempts,
            relearn_after: policy.relearn_after,
            meters,
        })
    }

    /// Opens the link (also what [`Driver::open`] does), with the typed error.
    pub async fn open_link(&mut self) -> Result<(), ModbusError> {
        let client = ModbusClient::open(&self.link.link, self.link.timeout).await?;
        self.link.client = Some(client);
        Ok(())
    }

    /// The deadline of a read of `count` registers: the bus's timeout (the meter's allowance)
    /// plus the wire time of the request and the reply at the line's baud rate.
    pub fn deadline(&self, count: u16) -> Duration {
        self.link.deadline(count)
    }

    /// One read of `block` from `unit`, within [`ModbusDriver::deadline`]: the transaction
    /// every poll is made of, for tools that need the typed answer (`scan`).
    pub async fn read(&mut self, unit: u8, block: &ReadBlock) -> Result<Vec<u16>, ModbusError> {
        self.link.read_block(unit, block).await
    }

    /// [`Driver::poll`] of meter `meter`.
    pub async fn poll_meter(&mut self, meter: usize, presumed_alive: bool) -> Poll {
        let (bus, attempts) = (self.bus.as_str(), self.unsupported_attempts);
        let relearned = self.meters[meter].relearn(self.relearn_after, bus);
        let mut poll = poll_meter(
            &mut self.link,
            &mut self.meters[meter],
            bus,
            attempts,
            presumed_alive,
        )
        .await;
        if let Some(limit) = relearned {
            // Reported before anything this poll learned, so a true limit found again wins.
            poll.learned.insert(0, limit);
        }
        poll
    }
}

impl Driver for ModbusDriver {
    fn open(&mut self) -> DriverFuture<'_, Result<(), String>> {
        Box::pin(async move { self.open_link().await.map_err(|e| e.to_string()) })
    }

    fn close(&mut self) {
        self.link.client = None;
    }

    fn poll(&mut self, meter: usize, presumed_alive: bool) -> DriverFuture<'_, Poll> {
        Box::pin(self.poll_meter(meter, presumed_alive))
    }

    fn probe(&mut self, meter: usize) -> DriverFuture<'_, Poll> {
        Box::pin(probe_meter(&mut self.link, &self.meters[meter]))
    }

    fn switch_pause(&self, previous: Option<usize>, meter: usize) -> Duration {
        let plan = &self.meters[meter];
        match (plan.unit, previous.and_then(|p| self.meters[p].unit)) {
            (Some(unit), Some(prev)) if unit != prev && plan.model.unit_switch_pause_ms > 0 => {
                Duration::from_millis(plan.model.unit_switch_pause_ms)
            }
            _ => Duration::ZERO,
        }
    }
}

/// The blocks of one poll of `model` with at most `max_block` registers each
/// ([`plan_blocks`]), the blocks holding energy first: the line loss needs the energy
/// registers, and if a later block fails the energy of this poll is already in.
pub fn plan_meter(model: &MeterModel, max_block: u16) -> Vec<ReadBlock> {
    plan_around(model, max_block, &[])
}

/// [`plan_meter`] for a model whose `holes` must not be read, not even across a gap.
fn plan_around(model: &MeterModel, max_block: u16, holes: &[Hole]) -> Vec<ReadBlock> {
    let mut blocks: Vec<ReadBlock> = plan_blocks(model, max_block)
        .into_iter()
        .flat_map(|b| cut_at_holes(model, b, holes))
        .collect();
    // Stable: address order within each group.
    blocks.sort_by_key(|b| !reads_energy(model, b));
    blocks
}

/// `block` cut so that no part reads a register of `holes`.
fn cut_at_holes(model: &MeterModel, block: ReadBlock, holes: &[Hole]) -> Vec<ReadBlock> {
    let crosses = |start: u32, end: u32| {
        holes
            .iter()
            .any(|&(f, a, b)| f == block.function && a < end && b > start)
    };
    if !crosses(u32::from(block.address), block.end()) {
        return vec![block];
    }
    regroup(model, &block, |first, new_end| !crosses(first, new_end))
}

fn reads_energy(model: &MeterModel, block: &ReadBlock) -> bool {
    block
        .registers
        .iter()
        .any(|&i| model.registers[i].quantity.contains("energy"))
}

/// A meter's refusal (an exception: the meter answered) or a dead, garbled or unreachable meter.
fn outcome_of(e: &ModbusError) -> PollOutcome {
    match e {
        ModbusError::Timeout(_) => PollOutcome::Timeout,
        ModbusError::BadCrc => PollOutcome::BadCrc,
        ModbusError::WrongUnit { .. } => PollOutcome::WrongUnit,
        ModbusError::Exception { .. } => PollOutcome::Exception,
        _ => PollOutcome::Failed,
    }
}

/// The failed read of `block`: as the meter's health keeps it, and as the tools list it.
fn failure(e: &ModbusError, block: &ReadBlock) -> (String, ReadFailure) {
    let last = block.end() - 1;
    let error = format!(
        "{} (registers {}..{last}, function {:02})",
        e, block.address, block.function
    );
    let failure = ReadFailure {
        what: format!(
            "registers {}..{last} (function {:02})",
            block.address, block.function
        ),
        error: e.to_string(),
    };
    (error, failure)
}

/// A poll that ended with `e` on `block`; an I/O error breaks the link.
fn failed(e: &ModbusError, block: &ReadBlock, outcome: PollOutcome, started: Instant) -> Poll {
    let (error, f) = failure(e, block);
    Poll {
        latency: started.elapsed(),
        link_broken: matches!(e, ModbusError::Io(_)),
        ..Poll::failed(outcome, f, error)
    }
}

/// Probes an offline meter with the smallest read that proves it alive: the first value of its
/// first block (an energy register where the model has one).
async fn probe_meter(link: &mut ModbusLink, plan: &MeterPlan) -> Poll {
    let started = Instant::now();
    let Some(block) = plan.blocks.first() else {
        return nothing_to_read();
    };
    let first = first_value(&plan.active, block);
    let unit = plan.unit.unwrap_or(1);
    match link.read_block(unit, &first).await {
        Ok(_) => Poll {
            outcome: PollOutcome::Ok,
            reading: None,
            error: None,
            failures: Vec::new(),
            requests: 1,
            latency: started.elapsed(),
            link_broken: false,
            learned: Vec::new(),
        },
        Err(e) => Poll {
            requests: 1,
            ..failed(&e, &first, outcome_of(&e), started)
        },
    }
}

fn nothing_to_read() -> Poll {
    let text = "no register left to read".to_string();
    Poll::failed(
        PollOutcome::Failed,
        ReadFailure {
            what: "meter".into(),
            error: text.clone(),
        },
        text,
    )
}

/// Reads every block of the meter once; learns on the way (see the module doc).
async fn poll_meter(
    link: &mut ModbusLink,
    plan: &mut MeterPlan,
    bus: &str,
    unsupported_attempts: u32,
    presumed_alive: bool,
) -> Poll {
    let unit = plan.unit.unwrap_or(1);
    let started = Instant::now();
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    let mut done = vec![false; plan.active.registers.len()];
    let mut answered = 0usize;
    let mut requests = 0usize;
    let mut first_sent_ms: Option<i64> = None;
    let mut energy_sent_ms: Option<i64> = None;
    let mut first_error: Option<String> = None;
    let mut failures: Vec<ReadFailure> = Vec::new();
    let mut learned: Vec<Learned> = Vec::new();
    let mut to_skip: Vec<RegisterKey> = Vec::new();
    let pause = Duration::from_millis(plan.model.inter_frame_pause_ms);
    let mut i = 0;
    while i < plan.blocks.len() {
        let block = plan.blocks[i].clone();
        if block.registers.iter().all(|&r| done[r]) {
            i += 1;
            continue;
        }
        if requests > 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        requests += 1;
        let sent_ms = now_ms();
        let e = match link.read_block(unit, &block).await {
            Ok(words) => {
                answered += 1;
                first_sent_ms.get_or_insert(sent_ms);
                if plan.take(&block, &words, &mut values, &mut done) {
                    energy_sent_ms = Some(sent_ms);
                }
                i += 1;
                continue;
            }
            Err(e) => e,
        };
        let wide = block.count > widest_value(&plan.active, &block);
        match &e {
            ModbusError::Exception { code: 3 | 4 } if wide => {
                if let Some(limit) = plan.narrow(&block, &e, bus) {
                    learned.push(limit);
                    // Values already read stay valid; blocks holding only those are skipped.
                    i = 0;
                    continue;
                }
            }
            ModbusError::Exception { code: 2 } if wide => {
                let parts = split_block(&plan.active, &block);
                debug!(bus = %bus, meter = %plan.id, unit,
                    "exception 02 on registers {}..{}: reading them in {} parts",
                    block.address, block.end() - 1, parts.len());
                plan.blocks.splice(i..=i, parts);
                continue;
            }
            // Silence on a wide block from a meter that just answered (in this poll, or its
            // last one): the meter's limit, or a reply lost to the line? See the module doc.
            ModbusError::Timeout(_) if wide && (answered > 0 || presumed_alive) => {
                let mut reads = Reads {
                    link: &mut *link,
                    unit,
                    pause,
                    requests: &mut requests,
                };
                match judge_silence(&mut reads, plan, &block, bus).await {
                    Silence::Refused(words_by_part) | Silence::LineTrouble(words_by_part) => {
                        // The block's values came in through its halves or the re-try (or
                        // come with the narrower blocks of the new plan).
                        answered += 1;
                        first_sent_ms.get_or_insert(sent_ms);
                        for (part, words) in &words_by_part {
                            if plan.take(part, words, &mut values, &mut done) {
                                energy_sent_ms = Some(sent_ms);
                            }
                        }
                        if plan.learned_now {
                            plan.learned_now = false;
                            learned.push(Learned::BlockLimit(plan.max_block));
                            i = 0;
                        } else {
                            i += 1;
                        }
                        continue;
                    }
                    Silence::Dead => {}
                }
            }
            ModbusError::Exception { code: 1 | 2 } if !wide => {
                let key = (block.function, block.address);
                let n = plan.refused.entry(key).or_insert(0);
                *n += 1;
                if *n >= unsupported_attempts {
                    to_skip.push(key);
                }
            }
            _ => {}
        }
        if is_line_trouble(&e) {
            plan.line_trouble_at = Some(Instant::now());
        }
        match e {
            ModbusError::Exception { .. } => {
                let (text, f) = failure(&e, &block);
                first_error.get_or_insert(text);
                failures.push(f);
            }
            // A silent, garbled or broken link: stop spending bus time on the meter this round.
            other => {
                let mut poll = failed(&other, &block, outcome_of(&other), started);
                failures.append(&mut poll.failures);
                return Poll {
                    failures,
                    requests,
                    learned,
                    ..poll
                };
            }
        }
        i += 1;
    }
    let latency = started.elapsed();
    // A register refused in one poll but read in the next was a passing refusal.
    plan.refused.retain(|k, _| {
        !plan
            .active
            .registers
            .iter()
            .enumerate()
            .any(|(r, def)| done[r] && (def.function, def.address) == *k)
    });
    plan.skip(&to_skip, bus, unsupported_attempts);
    // The reading is stamped with the moment the meter sampled its energy register — when the
    // request of the block holding it went out — not when the poll ended: the loss engine
    // interpolates registers at interval boundaries by this time, and a poll of several blocks
    // at a low baud rate ends hundreds of milliseconds after the meter sampled.
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
        latency,
        link_broken: false,
        learned,
    }
}

impl MeterPlan {
    /// Decodes `words` of `block` into `values` and marks its registers read. True when the
    /// block held the import energy register.
    fn take(
        &self,
        block: &ReadBlock,
        words: &[u16],
        values: &mut BTreeMap<String, f64>,
        done: &mut [bool],
    ) -> bool {
        let mut energy = false;
        for (q, v) in decode_block(&self.active, block, words) {
            energy |= q == "energy_import_kwh";
            let v = self.ratios.primary(&q, v);
            values.insert(q, v);
        }
        for &r in &block.registers {
            done[r] = true;
        }
        energy
    }

    /// Halves the meter's block limit below `block` and re-plans; the new limit, or `None`
    /// when it cannot go lower.
    fn narrow(&mut self, block: &ReadBlock, error: &ModbusError, bus: &str) -> Option<Learned> {
        let new_max = (block.count / 2).max(widest_value(&self.active, block));
        if new_max >= self.max_block {
            return None;
        }
        warn!(bus = %bus, meter = %self.id, unit = self.unit.unwrap_or(0), error = %error,
            "meter rejected a block of {} registers at {}; narrowing to {}",
            block.count, block.address, new_max);
        self.max_block = new_max;
        self.narrowed_at = Some(Instant::now());
        self.blocks = plan_around(&self.active, new_max, &self.holes());
        Some(Learned::BlockLimit(new_max))
    }

    /// A limit learned `relearn_after` ago or longer is re-tried: the model's own blocks are
    /// planned again. Returns the limit to report (the model's) when it did.
    fn relearn(&mut self, relearn_after: Duration, bus: &str) -> Option<Learned> {
        let since = self.narrowed_at?;
        if self.max_block >= self.model.max_block || since.elapsed() < relearn_after {
            return None;
        }
        info!(bus = %bus, meter = %self.id, unit = self.unit.unwrap_or(0),
            "re-trying blocks of {} registers (the model's) after a limit of {} learned {} s ago",
            self.model.max_block, self.max_block, since.elapsed().as_secs());
        self.max_block = self.model.max_block;
        self.narrowed_at = None;
        self.blocks = plan_around(&self.active, self.max_block, &self.holes());
        Some(Learned::BlockLimit(self.max_block))
    }

    /// True when line trouble was seen on this meter within [`LINE_QUIET_AFTER`].
    fn line_noisy(&self) -> bool {
        self.line_trouble_at
            .is_some_and(|t| t.elapsed() < LINE_QUIET_AFTER)
    }

    /// The register ranges no longer read.
    fn holes(&self) -> Vec<Hole> {
        self.model
            .registers
            .iter()
            .filter(|d| self.skipped.contains(&(d.function, d.address)))
            .map(|d| {
                let a = u32::from(d.address);
                (d.function, a, a + u32::from(d.data_type.words()))
            })
            .collect()
    }

    /// Stops reading the registers of `keys` (refused `attempts` times even when read alone),
    /// unless that would leave nothing to read.
    fn skip(&mut self, keys: &[RegisterKey], bus: &str, attempts: u32) {
        let mut changed = false;
        for &key in keys {
            let left = self.model.registers.len() - self.skipped.len();
            if left <= 1 || self.skipped.contains(&key) {
                continue;
            }
            let Some(def) = self
                .model
                .registers
                .iter()
                .find(|d| (d.function, d.address) == key)
            else {
                continue;
            };
            warn!(bus = %bus, meter = %self.id, unit = self.unit.unwrap_or(0),
                "meter {} (unit {}) refuses registers {}..{} (function {:02}, {}) even when read \
                 alone, {} polls in a row; no longer reading them. The model {} may list a \
                 register this meter or its firmware does not have",
                self.id, self.unit.map_or("-".into(), |u| u.to_string()),
                def.address, u32::from(def.address) + u32::from(def.data_type.words()) - 1,
                def.function, def.quantity, attempts, self.model.name);
            self.skipped.insert(key);
            self.refused.remove(&key);
            changed = true;
        }
        if changed {
            let mut active = (*self.model).clone();
            active
                .registers
                .retain(|d| !self.skipped.contains(&(d.function, d.address)));
            self.active = Arc::new(active);
            self.blocks = plan_around(&self.active, self.max_block, &self.holes());
        }
    }
}

/// Errors that say the line is bad, not the meter: a garbled reply, garbage, another unit's
/// reply.
fn is_line_trouble(e: &ModbusError) -> bool {
    matches!(
        e,
        ModbusError::BadCrc | ModbusError::Malformed(_) | ModbusError::WrongUnit { .. }
    )
}

/// What a silence on a wide block turned out to be.
enum Silence {
    /// The meter refuses the block: the first value answered and the block was silent again.
    /// The limit was narrowed (`plan.learned_now`); the new plan's narrower blocks are read
    /// next.
    Refused(Vec<(ReadBlock, Vec<u16>)>),
    /// Line trouble (the re-try answered, or the line was noisy lately): the block's words, read
    /// whole or in halves; nothing learned.
    LineTrouble(Vec<(ReadBlock, Vec<u16>)>),
    /// The meter does not answer even narrow reads: a failed poll.
    Dead,
}

/// The reads [`judge_silence`] makes, with the poll's pause and request count.
struct Reads<'a> {
    link: &'a mut ModbusLink,
    unit: u8,
    pause: Duration,
    requests: &'a mut usize,
}

impl Reads<'_> {
    async fn read(&mut self, block: &ReadBlock) -> Result<Vec<u16>, ModbusError> {
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
        *self.requests += 1;
        self.link.read_block(self.unit, block).await
    }

    /// Reads `parts`, every one of them; `None` when one fails.
    async fn read_all(&mut self, parts: Vec<ReadBlock>) -> Option<Vec<(ReadBlock, Vec<u16>)>> {
        let mut out = Vec::with_capacity(parts.len());
        for part in parts {
            let words = self.read(&part).await.ok()?;
            out.push((part, words));
        }
        Some(out)
    }
}

/// Silence on `block` (wider than one value): a refusal only when the meter answers its first
/// value, is silent on the block again and answers its halves, on a line quiet lately.
async fn judge_silence(
    reads: &mut Reads<'_>,
    plan: &mut MeterPlan,
    block: &ReadBlock,
    bus: &str,
) -> Silence {
    let halves = split_block(&plan.active, block);
    if plan.line_noisy() {
        // Nothing is learned on a noisy line; the values still come in, in halves.
        return match reads.read_all(halves).await {
            Some(words) => Silence::LineTrouble(words),
            None => Silence::Dead,
        };
    }
    let first = first_value(&plan.active, block);
    if reads.read(&first).await.is_err() {
        return Silence::Dead;
    }
    match reads.read(block).await {
        Ok(words) => {
            // Answered when re-tried: the silence was the line's.
            debug!(bus = %bus, meter = %plan.id,
                "registers {}..{} answered when re-tried: line trouble, not the meter's limit",
                block.address, block.end() - 1);
            plan.line_trouble_at = Some(Instant::now());
            Silence::LineTrouble(vec![(block.clone(), words)])
        }
        Err(e @ (ModbusError::Timeout(_) | ModbusError::Exception { code: 3 | 4 })) => {
            // Silent again around a clean narrow read: the meter's limit. The narrower blocks
            // of the new plan are read next (and judged the same way if they are silent too).
            if plan.narrow(block, &e, bus).is_some() {
                plan.learned_now = true;
                Silence::Refused(Vec::new())
            } else {
                Silence::Dead
            }
        }
        Err(e) => {
            if is_line_trouble(&e) {
                plan.line_trouble_at = Some(Instant::now());
            }
            Silence::Dead
        }
    }
}

/// Widest single value in a block (a block is never narrowed below it).
fn widest_value(model: &MeterModel, block: &ReadBlock) -> u16 {
    block
        .registers
        .iter()
        .map(|&i| model.registers[i].data_type.words())
        .max()
        .unwrap_or(1)
}

/// The first value of `block` as a block of its own.
fn first_value(model: &MeterModel, block: &ReadBlock) -> ReadBlock {
    let first = block
        .registers
        .iter()
        .copied()
        .min_by_key(|&i| model.registers[i].address)
        .unwrap_or(0);
    let def = &model.registers[first];
    ReadBlock {
        function: def.function,
        address: def.address,
        count: def.data_type.words(),
        registers: vec![first],
    }
}

/// `block` cut into parts of at most half its width (never splitting a value).
fn split_block(model: &MeterModel, block: &ReadBlock) -> Vec<ReadBlock> {
    let limit = u32::from((block.count / 2).max(widest_value(model, block)));
    regroup(model, block, |first, new_end| new_end - first <= limit)
}

/// The values of `block` regrouped in address order: a value joins the part before it while
/// `fits(part start, new part end)` holds, otherwise it starts a new part. A value is never split.
fn regroup(
    model: &MeterModel,
    block: &ReadBlock,
    fits: impl Fn(u32, u32) -> bool,
) -> Vec<ReadBlock> {
    let mut regs = block.registers.clone();
    regs.sort_by_key(|&i| model.registers[i].address);
    let mut parts: Vec<ReadBlock> = Vec::new();
    for i in regs {
        let def = &model.registers[i];
        let start = u32::from(def.address);
        let end = start + u32::from(def.data_type.words());
        if let Some(p) = parts.last_mut() {
            let new_end = end.max(p.end());
            if fits(u32::from(p.address), new_end) {
                p.count = (new_end - u32::from(p.address)) as u16;
                p.registers.push(i);
                continue;
            }
        }
        parts.push(ReadBlock {
            function: block.function,
            address: def.address,
            count: (end - start) as u16,
            registers: vec![i],
        });
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::ModelLibrary;
    use crate::protocol::SerialLine;

    fn rtu_bus(baud: u32) -> BusSettings {
        BusSettings {
            name: "b".into(),
            protocol: Protocol::ModbusRtu,
            endpoint: BusEndpoint::Serial("/dev/ttyS9".into()),
            line: SerialLine {
                baud,
                ..SerialLine::MODBUS_DEFAULT
            },
            timeout: Duration::from_millis(300),
            poll_interval: Duration::from_secs(60),
            preamble: 4,
            time_sync: Default::default(),
        }
    }

    #[test]
    fn a_transaction_gets_its_wire_time_on_top_of_the_timeout() {
        let policy = OfflinePolicy::default();
        let driver = ModbusDriver::new(&rtu_bus(2400), &[], &[], &policy).unwrap();
        let wire = RtuTiming::new(2400, 10).read_wire_time(80);
        assert_eq!(driver.deadline(80), Duration::from_millis(300) + wire);
        assert!(wire > Duration::from_millis(700), "{wire:?}");
    }

    #[test]
    fn learned_limits_and_unit_switch_pauses_apply_per_meter() {
        let library = ModelLibrary::builtin();
        let mut model = library.get("eastron-sdm630").unwrap().clone();
        model.unit_switch_pause_ms = 40;
        let model = Arc::new(model);
        let meters = [
            MeterSettings::modbus("a", 1, model.clone()),
            MeterSettings::modbus("b", 2, model.clone()),
        ];
        let learned = [("b".to_string(), Learned::BlockLimit(20))];
        let policy = OfflinePolicy::default();
        let driver = ModbusDriver::new(&rtu_bus(9600), &meters, &learned, &policy).unwrap();
        assert_eq!(driver.meters[0].max_block, model.max_block);
        assert_eq!(driver.meters[1].max_block, 20);
        assert!(driver.meters[1].blocks.iter().all(|b| b.count <= 20));
        assert_eq!(driver.switch_pause(None, 1), Duration::ZERO);
        assert_eq!(driver.switch_pause(Some(1), 1), Duration::ZERO);
        assert_eq!(driver.switch_pause(Some(0), 1), Duration::from_millis(40));
    }

    #[test]
    fn a_modbus_protocol_on_the_wrong_endpoint_is_refused() {
        let bus = BusSettings {
            protocol: Protocol::ModbusTcp,
            ..rtu_bus(9600)
        };
        let err = ModbusDriver::new(&bus, &[], &[], &OfflinePolicy::default())
            .err()
            .unwrap();
        assert!(err.contains("modbus-tcp"), "{err}");
        let dlt = BusSettings {
            protocol: Protocol::Dlt645,
            ..rtu_bus(2400)
        };
        let library = ModelLibrary::builtin();
        let sdm = Arc::new(library.get("eastron-sdm120").unwrap().clone());
        let meters = [MeterSettings::modbus("m", 1, sdm)];
        let err = crate::bus::driver_for(&dlt, &meters, &[], &OfflinePolicy::default())
            .err()
            .unwrap();
        assert!(err.contains("DL/T 645 bus"), "{err}");
        let dlt645 = Arc::new(library.get_dlt645("dlt645-2007").unwrap().clone());
        let meters = [MeterSettings::dlt645("d", "000000000001", dlt645)];
        let err = ModbusDriver::new(&rtu_bus(9600), &meters, &[], &OfflinePolicy::default())
            .err()
            .unwrap();
        assert!(err.contains("DL/T 645 model dlt645-2007"), "{err}");
    }

    #[test]
    fn energy_blocks_come_first_and_nothing_is_lost() {
        let library = ModelLibrary::builtin();
        for model in library.models.values() {
            for max_block in [4, 10, 40, 125] {
                let plain = plan_blocks(model, max_block);
                let ordered = plan_meter(model, max_block);
                assert_eq!(plain.len(), ordered.len(), "{}", model.name);
                for b in &plain {
                    assert!(ordered.contains(b), "{}: {b:?} lost", model.name);
                }
                let energy: Vec<bool> = ordered.iter().map(|b| reads_energy(model, b)).collect();
                let first_other = energy.iter().position(|e| !e).unwrap_or(energy.len());
                assert!(
                    energy[first_other..].iter().all(|e| !e),
                    "{} at {max_block}: energy block after an instantaneous one",
                    model.name
                );
            }
        }
    }

    #[test]
    fn a_split_halves_a_block_without_cutting_values() {
        let library = ModelLibrary::builtin();
        let model = library.get("eastron-sdm630").unwrap();
        for block in plan_blocks(model, 80) {
            if block.count <= widest_value(model, &block) {
                continue;
            }
            let parts = split_block(model, &block);
            assert!(parts.len() >= 2, "{block:?}");
            let mut regs: Vec<usize> = parts.iter().flat_map(|p| p.registers.clone()).collect();
            regs.sort_unstable();
            let mut want = block.registers.clone();
            want.sort_unstable();
            assert_eq!(regs, want);
            for p in &parts {
                assert!(p.count <= (block.count / 2).max(2), "{p:?}");
                assert!(p.address >= block.address && p.end() <= block.end());
            }
        }
    }

    #[test]
    fn no_block_reads_across_a_hole() {
        let library = ModelLibrary::builtin();
        let model = library.get("eastron-sdm120").unwrap();
        let freq = model
            .registers
            .iter()
            .find(|r| r.quantity == "frequency_hz")
            .unwrap();
        let mut active = model.clone();
        active.registers.retain(|r| r.quantity != "frequency_hz");
        let a = u32::from(freq.address);
        let holes = [(freq.function, a, a + 2)];
        assert_eq!(plan_meter(&active, 80).len(), 1, "reads across the gap");
        let blocks = plan_around(&active, 80, &holes);
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        for b in &blocks {
            assert!(b.end() <= a || u32::from(b.address) >= a + 2, "{b:?}");
        }
        assert!(reads_energy(&active, &blocks[0]));
        let n: usize = blocks.iter().map(|b| b.registers.len()).sum();
        assert_eq!(n, active.registers.len());
    }

    #[test]
    fn the_first_value_is_one_register_wide_value() {
        let library = ModelLibrary::builtin();
        let model = library.get("abb-b23").unwrap();
        let blocks = plan_meter(model, 125);
        let first = first_value(model, &blocks[0]);
        assert_eq!(first.address, blocks[0].address);
        assert_eq!(first.registers.len(), 1);
        assert_eq!(
            first.count,
            model.registers[first.registers[0]].data_type.words()
        );
        assert!(reads_energy(model, &blocks[0]));
    }
}
