//! The poll loop of one bus: picks the meter that is due, reads its blocks (energy first),
//! decodes them into a [`Reading`], keeps its health, and probes offline meters with growing
//! intervals within the bus's [`ProbeBudget`].
//!
//! How the plan learns what a meter accepts:
//!
//! - exception 03 or 04 on a block wider than one value, or silence on it while the meter still
//!   answers a read of the block's first value: the meter's block limit is halved, the meter
//!   re-planned, and the limit reported ([`BusEvent::BlockLimit`], stored by the gateway and
//!   passed back as `learned` after a restart);
//! - exception 02 on a wide block: that block alone is split in two (an unmapped or missing
//!   register inside it, or a gap the meter will not read across), down to single values;
//! - exception 01 or 02 on a single value, `unsupported_attempts` polls in a row: the meter does
//!   not have that register; it is no longer read, with a warning naming meter, unit and
//!   registers.

use super::budget::ProbeBudget;
use super::health::OfflinePolicy;
use crate::clock::now_ms;
use crate::config::{BusConfig, MeterConfig};
use crate::meter::{MeterModel, ReadBlock, decode_block, plan_blocks};
use crate::model::{
    HealthChange, MeterHealth, MeterStatus, PollOutcome, Reading, scales_with_multiplier,
};
use crate::protocol::modbus::{ModbusClient, ModbusError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// What a bus task reports.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A complete poll of a meter.
    Reading(Reading),
    /// A meter's health, sent when it goes online/offline and after every `state_every` polls.
    MeterState(MeterStatus),
    /// The gateway learned that a meter rejects blocks larger than `max_block`.
    BlockLimit { meter: String, max_block: u16 },
}

/// A register of a model: (function, address).
type RegisterKey = (u8, u16);

/// One meter as its bus sees it.
struct MeterSlot {
    cfg: MeterConfig,
    /// The model as configured.
    model: Arc<MeterModel>,
    /// The model without the registers this meter turned out not to have; planned and decoded.
    active: MeterModel,
    max_block: u16,
    blocks: Vec<ReadBlock>,
    interval: Duration,
    next_due: Instant,
    health: MeterHealth,
    polls_since_state: u32,
    /// Polls in a row in which a register was refused even when read alone.
    refused: BTreeMap<RegisterKey, u32>,
    /// Registers no longer read.
    skipped: BTreeSet<RegisterKey>,
}

/// Meter state is re-sent after this many polls even without a change.
const STATE_EVERY_POLLS: u32 = 10;

/// The blocks of one poll of `model` with at most `max_block` registers each
/// ([`plan_blocks`]), the blocks holding energy first: the line loss needs the energy
/// registers, and if a later block fails the energy of this poll is already in.
pub fn plan_meter(model: &MeterModel, max_block: u16) -> Vec<ReadBlock> {
    plan_around(model, max_block, &[])
}

/// A register range a meter refused: (function, first address, one past the last).
type Hole = (u8, u32, u32);

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

/// Runs the bus until `shutdown` turns true. `learned` holds block limits learned earlier
/// (meter id → max block), e.g. from the store.
pub async fn run_bus(
    bus: BusConfig,
    meters: Vec<(MeterConfig, Arc<MeterModel>)>,
    learned: BTreeMap<String, u16>,
    policy: OfflinePolicy,
    events: mpsc::Sender<BusEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let start = Instant::now();
    let n = meters.len().max(1) as u32;
    let mut slots: Vec<MeterSlot> = meters
        .into_iter()
        .enumerate()
        .map(|(i, (cfg, model))| {
            let max_block = learned
                .get(&cfg.id)
                .copied()
                .unwrap_or(model.max_block)
                .min(model.max_block);
            let interval =
                Duration::from_secs(cfg.poll_interval_s.unwrap_or(bus.poll_interval_s).max(1));
            // Spread first polls over a fraction of a second so that the bus starts at once but
            // meters keep a stable order.
            let next_due = start + Duration::from_millis(i as u64 * 10 / n as u64);
            MeterSlot {
                blocks: plan_meter(&model, max_block),
                active: (*model).clone(),
                max_block,
                interval,
                next_due,
                health: MeterHealth::new(&policy),
                polls_since_state: 0,
                refused: BTreeMap::new(),
                skipped: BTreeSet::new(),
                cfg,
                model,
            }
        })
        .collect();
    if slots.is_empty() {
        info!(bus = %bus.name, "bus has no meters; not opening it");
        return;
    }
    let timeout = Duration::from_millis(bus.timeout_ms);
    let mut budget = ProbeBudget::new(&policy, timeout);
    let mut client: Option<ModbusClient> = None;
    let mut open_backoff = Duration::from_secs(1);
    let mut last_unit: Option<u8> = None;

    loop {
        if *shutdown.borrow() {
            break;
        }
        if client.is_none() {
            match ModbusClient::open(&bus).await {
                Ok(c) => {
                    info!(bus = %bus.name, endpoint = %endpoint(&bus), "bus open");
                    client = Some(c);
                    open_backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    warn!(bus = %bus.name, endpoint = %endpoint(&bus), error = %e,
                        "cannot open bus; retrying in {} s", open_backoff.as_secs());
                    if sleep_or_shutdown(open_backoff, &mut shutdown).await {
                        break;
                    }
                    open_backoff = (open_backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
            }
        }
        // The meter that is due first (ties: configuration order).
        let idx = (0..slots.len()).min_by_key(|&i| slots[i].next_due).unwrap();
        let due = slots[idx].next_due;
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = shutdown.changed() => continue,
            }
        }
        if slots[idx].health.is_offline() {
            // Defer the probe while dead meters have used their share of the bus.
            let now = Instant::now();
            let at = budget.next_probe_at(now, budget.probe_cost());
            if at > now {
                debug!(bus = %bus.name, meter = %slots[idx].cfg.id,
                    "probe deferred {} ms: dead meters used their share of the bus",
                    (at - now).as_millis());
                slots[idx].next_due = at;
                continue;
            }
        }
        let c = client.as_mut().unwrap();
        let slot = &mut slots[idx];
        if let (Some(unit), Some(prev)) = (slot.cfg.unit, last_unit)
            && unit != prev
            && slot.model.unit_switch_pause_ms > 0
        {
            tokio::time::sleep(Duration::from_millis(slot.model.unit_switch_pause_ms)).await;
        }
        last_unit = slot.cfg.unit;
        let was_offline = slot.health.is_offline();
        let poll = if was_offline {
            probe_meter(c, slot, timeout).await
        } else {
            poll_meter(c, slot, timeout, &events, &bus, &policy).await
        };
        if poll.io_broken {
            client = None;
        }
        if !poll.outcome.answered() {
            budget.book(Instant::now(), poll.latency);
        }
        let now = now_ms();
        let change =
            slot.health
                .record(poll.outcome, poll.latency, now, poll.error.clone(), &policy);
        match change {
            HealthChange::WentOffline => warn!(
                bus = %bus.name, meter = %slot.cfg.id, unit = slot.cfg.unit.unwrap_or(0),
                error = poll.error.as_deref().unwrap_or(""),
                "meter offline after {} failed polls; probing every {} s and longer",
                slot.health.consecutive_failures, slot.health.probe_interval.as_secs()
            ),
            HealthChange::WentOnline => info!(
                bus = %bus.name, meter = %slot.cfg.id, unit = slot.cfg.unit.unwrap_or(0), "meter online"
            ),
            HealthChange::None => {
                if let Some(e) = &poll.error {
                    debug!(bus = %bus.name, meter = %slot.cfg.id, unit = slot.cfg.unit.unwrap_or(0), error = %e, "poll failed");
                }
            }
        }
        // Next due time: keep the meter's phase when online; back off when offline.
        let now_i = Instant::now();
        if was_offline && change == HealthChange::WentOnline {
            // The probe answered: poll it fully right away.
            slot.next_due = now_i;
        } else if slot.health.is_offline() {
            slot.next_due = now_i + slot.health.probe_interval;
        } else {
            slot.next_due += slot.interval;
            if slot.next_due + slot.interval <= now_i {
                // More than an interval behind (a saturated bus, or a stall): forget the missed
                // polls and poll again as soon as the bus is free, after the meters waiting
                // longer. Skipping ahead to the next slot instead would leave the bus idle while
                // every meter is late.
                slot.next_due = now_i;
            }
        }
        if let Some(r) = poll.reading
            && events.send(BusEvent::Reading(r)).await.is_err()
        {
            break;
        }
        slot.polls_since_state += 1;
        if change != HealthChange::None || slot.polls_since_state >= STATE_EVERY_POLLS {
            slot.polls_since_state = 0;
            let status = MeterStatus {
                meter: slot.cfg.id.clone(),
                bus: bus.name.clone(),
                unit: slot.cfg.unit,
                health: slot.health.clone(),
                change,
                ts_ms: now,
            };
            if events.send(BusEvent::MeterState(status)).await.is_err() {
                break;
            }
        }
    }
    debug!(bus = %bus.name, "bus task stopped");
}

fn endpoint(bus: &BusConfig) -> String {
    bus.device
        .as_ref()
        .map(|d| d.display().to_string())
        .or_else(|| bus.address.clone())
        .unwrap_or_default()
}

/// Sleeps; returns true when shutdown was requested meanwhile.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// How one poll (or probe) of a meter ended.
struct Poll {
    outcome: PollOutcome,
    /// When every block answered, or some answered and the others raised exceptions.
    reading: Option<Reading>,
    error: Option<String>,
    latency: Duration,
    /// The link must be re-opened.
    io_broken: bool,
}

impl Poll {
    fn failed(outcome: PollOutcome, error: String, latency: Duration, io_broken: bool) -> Poll {
        Poll {
            outcome,
            reading: None,
            error: Some(error),
            latency,
            io_broken,
        }
    }
}

fn outcome_of(e: &ModbusError) -> PollOutcome {
    match e {
        ModbusError::Timeout(_) => PollOutcome::Timeout,
        ModbusError::BadCrc => PollOutcome::BadCrc,
        ModbusError::WrongUnit { .. } => PollOutcome::WrongUnit,
        ModbusError::Exception { .. } => PollOutcome::Exception,
        _ => PollOutcome::Failed,
    }
}

fn describe(e: &ModbusError, block: &ReadBlock) -> String {
    format!(
        "{} (registers {}..{}, function {:02})",
        e,
        block.address,
        block.end() - 1,
        block.function
    )
}

/// Probes an offline meter with the smallest read that proves it alive: the first value of its
/// first block (an energy register where the model has one).
async fn probe_meter(client: &mut ModbusClient, slot: &MeterSlot, timeout: Duration) -> Poll {
    let started = Instant::now();
    let Some(block) = slot.blocks.first() else {
        return Poll::failed(
            PollOutcome::Failed,
            "no register left to read".into(),
            started.elapsed(),
            false,
        );
    };
    let first = first_value(&slot.active, block);
    let unit = slot.cfg.unit.unwrap_or(1);
    match client
        .read_registers(unit, first.function, first.address, first.count, timeout)
        .await
    {
        Ok(_) => Poll {
            outcome: PollOutcome::Ok,
            reading: None,
            error: None,
            latency: started.elapsed(),
            io_broken: false,
        },
        Err(e) => Poll::failed(
            outcome_of(&e),
            describe(&e, &first),
            started.elapsed(),
            matches!(e, ModbusError::Io(_)),
        ),
    }
}

/// Reads every block of one meter, learning its limits on the way (see the module doc).
async fn poll_meter(
    client: &mut ModbusClient,
    slot: &mut MeterSlot,
    timeout: Duration,
    events: &mpsc::Sender<BusEvent>,
    bus: &BusConfig,
    policy: &OfflinePolicy,
) -> Poll {
    let unit = slot.cfg.unit.unwrap_or(1);
    let started = Instant::now();
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    let mut done = vec![false; slot.active.registers.len()];
    let mut answered = 0usize;
    let mut requests = 0usize;
    let mut first_sent_ms: Option<i64> = None;
    let mut energy_sent_ms: Option<i64> = None;
    let mut first_error: Option<String> = None;
    let mut to_skip: Vec<RegisterKey> = Vec::new();
    let pause = Duration::from_millis(slot.model.inter_frame_pause_ms);
    let mut i = 0;
    while i < slot.blocks.len() {
        let block = slot.blocks[i].clone();
        if block.registers.iter().all(|&r| done[r]) {
            i += 1;
            continue;
        }
        if requests > 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        requests += 1;
        let sent_ms = now_ms();
        let e = match client
            .read_registers(unit, block.function, block.address, block.count, timeout)
            .await
        {
            Ok(words) => {
                answered += 1;
                first_sent_ms.get_or_insert(sent_ms);
                if slot.take(&block, &words, &mut values, &mut done) {
                    energy_sent_ms = Some(sent_ms);
                }
                i += 1;
                continue;
            }
            Err(e) => e,
        };
        let wide = block.count > widest_value(&slot.active, &block);
        match &e {
            ModbusError::Exception { code: 3 | 4 } if wide => {
                let narrowed = slot.narrow(&block, &e, bus, events).await;
                if narrowed {
                    // Values already read stay valid; blocks holding only those are skipped.
                    i = 0;
                    continue;
                }
            }
            ModbusError::Exception { code: 2 } if wide => {
                let parts = split_block(&slot.active, &block);
                debug!(bus = %bus.name, meter = %slot.cfg.id, unit,
                    "exception 02 on registers {}..{}: reading them in {} parts",
                    block.address, block.end() - 1, parts.len());
                slot.blocks.splice(i..=i, parts);
                continue;
            }
            // Silence on a wide block from a meter that just answered (in this poll, or its
            // last one): is the meter alive? One read of the block's first value tells.
            ModbusError::Timeout(_)
                if wide && (answered > 0 || slot.health.consecutive_failures == 0) =>
            {
                let first = first_value(&slot.active, &block);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                requests += 1;
                let sent_ms = now_ms();
                if let Ok(words) = client
                    .read_registers(unit, first.function, first.address, first.count, timeout)
                    .await
                {
                    answered += 1;
                    first_sent_ms.get_or_insert(sent_ms);
                    if slot.take(&first, &words, &mut values, &mut done) {
                        energy_sent_ms = Some(sent_ms);
                    }
                    if slot.narrow(&block, &e, bus, events).await {
                        i = 0;
                        continue;
                    }
                }
            }
            ModbusError::Exception { code: 1 | 2 } if !wide => {
                let key = (block.function, block.address);
                let n = slot.refused.entry(key).or_insert(0);
                *n += 1;
                if *n >= policy.unsupported_attempts {
                    to_skip.push(key);
                }
            }
            _ => {}
        }
        let text = describe(&e, &block);
        match e {
            ModbusError::Io(_) => {
                return Poll::failed(PollOutcome::Failed, text, started.elapsed(), true);
            }
            ModbusError::Exception { .. } => {
                first_error.get_or_insert(text);
            }
            // A silent or garbled meter: stop spending bus time on it this round.
            other => {
                return Poll::failed(outcome_of(&other), text, started.elapsed(), false);
            }
        }
        i += 1;
    }
    let latency = started.elapsed();
    // A register refused in one poll but read in the next was a passing refusal.
    slot.refused.retain(|k, _| {
        !slot
            .active
            .registers
            .iter()
            .enumerate()
            .any(|(r, def)| done[r] && (def.function, def.address) == *k)
    });
    slot.skip(&to_skip, bus, policy);
    // The reading is stamped with the moment the meter sampled its energy register — when the
    // request of the block holding it went out — not when the poll ended: the loss engine
    // interpolates registers at interval boundaries by this time, and a poll of several blocks
    // at a low baud rate ends hundreds of milliseconds after the meter sampled.
    let reading = (!values.is_empty()).then(|| Reading {
        meter: slot.cfg.id.clone(),
        ts_ms: energy_sent_ms.or(first_sent_ms).unwrap_or_else(now_ms),
        values,
    });
    match first_error {
        None => Poll {
            outcome: PollOutcome::Ok,
            reading,
            error: None,
            latency,
            io_broken: false,
        },
        Some(t) if answered > 0 => Poll {
            outcome: PollOutcome::Partial,
            reading,
            error: Some(t),
            latency,
            io_broken: false,
        },
        Some(t) => Poll::failed(PollOutcome::Exception, t, latency, false),
    }
}

impl MeterSlot {
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
            let v = if scales_with_multiplier(&q) {
                v * self.cfg.multiplier
            } else {
                v
            };
            values.insert(q, v);
        }
        for &r in &block.registers {
            done[r] = true;
        }
        energy
    }

    /// Halves the meter's block limit below `block` and re-plans; reports the new limit.
    /// False when it cannot go lower.
    async fn narrow(
        &mut self,
        block: &ReadBlock,
        error: &ModbusError,
        bus: &BusConfig,
        events: &mpsc::Sender<BusEvent>,
    ) -> bool {
        let new_max = (block.count / 2).max(widest_value(&self.active, block));
        if new_max >= self.max_block {
            return false;
        }
        warn!(bus = %bus.name, meter = %self.cfg.id, unit = self.cfg.unit.unwrap_or(0), error = %error,
            "meter rejected a block of {} registers at {}; narrowing to {}",
            block.count, block.address, new_max);
        self.max_block = new_max;
        self.blocks = plan_around(&self.active, new_max, &self.holes());
        let _ = events
            .send(BusEvent::BlockLimit {
                meter: self.cfg.id.clone(),
                max_block: new_max,
            })
            .await;
        true
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

    /// Stops reading the registers of `keys` (refused `unsupported_attempts` times even when
    /// read alone), unless that would leave nothing to read.
    fn skip(&mut self, keys: &[RegisterKey], bus: &BusConfig, policy: &OfflinePolicy) {
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
            warn!(bus = %bus.name, meter = %self.cfg.id, unit = self.cfg.unit.unwrap_or(0),
                "meter {} (unit {}) refuses registers {}..{} (function {:02}, {}) even when read \
                 alone, {} polls in a row; no longer reading them. The model {} may list a \
                 register this meter or its firmware does not have",
                self.cfg.id, self.cfg.unit.map_or("-".into(), |u| u.to_string()),
                def.address, u32::from(def.address) + u32::from(def.data_type.words()) - 1,
                def.function, def.quantity, policy.unsupported_attempts, self.model.name);
            self.skipped.insert(key);
            self.refused.remove(&key);
            changed = true;
        }
        if changed {
            let mut active = (*self.model).clone();
            active
                .registers
                .retain(|d| !self.skipped.contains(&(d.function, d.address)));
            self.active = active;
            self.blocks = plan_around(&self.active, self.max_block, &self.holes());
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
