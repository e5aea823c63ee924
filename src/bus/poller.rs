//! The poll loop of one bus: picks the meter that is due, reads its blocks, decodes them into a
//! [`Reading`], keeps its health, narrows block reads a meter rejects, and probes offline meters
//! with growing intervals.

use super::health::{HealthChange, MeterHealth, OfflinePolicy, PollOutcome};
use crate::clock::now_ms;
use crate::config::{BusConfig, MeterConfig};
use crate::meter::{MeterModel, ReadBlock, decode_block, plan_blocks};
use crate::model::{Reading, scales_with_multiplier};
use crate::protocol::modbus::{ModbusClient, ModbusError};
use std::collections::BTreeMap;
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

/// A snapshot of a meter's health for the meter state message.
#[derive(Debug, Clone)]
pub struct MeterStatus {
    pub meter: String,
    pub bus: String,
    pub unit: Option<u8>,
    pub health: MeterHealth,
    pub change: HealthChange,
    pub ts_ms: i64,
}

/// One meter as its bus sees it.
struct MeterSlot {
    cfg: MeterConfig,
    model: Arc<MeterModel>,
    max_block: u16,
    blocks: Vec<ReadBlock>,
    interval: Duration,
    next_due: Instant,
    health: MeterHealth,
    polls_since_state: u32,
}

/// Meter state is re-sent after this many polls even without a change.
const STATE_EVERY_POLLS: u32 = 10;

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
                blocks: plan_blocks(&model, max_block),
                max_block,
                interval,
                next_due,
                health: MeterHealth::new(&policy),
                polls_since_state: 0,
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
        let (outcome, reading, error, latency, io_broken) =
            poll_meter(c, slot, timeout, &events, &bus).await;
        if io_broken {
            client = None;
        }
        let now = now_ms();
        let change = slot
            .health
            .record(outcome, latency, now, error.clone(), &policy);
        match change {
            HealthChange::WentOffline => warn!(
                bus = %bus.name, meter = %slot.cfg.id, unit = ?slot.cfg.unit,
                error = error.as_deref().unwrap_or(""),
                "meter offline after {} failed polls; probing every {} s and longer",
                slot.health.consecutive_failures, slot.health.probe_interval.as_secs()
            ),
            HealthChange::WentOnline => info!(
                bus = %bus.name, meter = %slot.cfg.id, unit = ?slot.cfg.unit, "meter online"
            ),
            HealthChange::None => {
                if let Some(e) = &error {
                    debug!(bus = %bus.name, meter = %slot.cfg.id, unit = ?slot.cfg.unit, error = %e, "poll failed");
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
            if slot.next_due <= now_i {
                let behind = now_i - slot.next_due;
                let skip = behind.as_nanos() / slot.interval.as_nanos() + 1;
                slot.next_due += slot.interval * skip as u32;
            }
        }
        if let Some(r) = reading
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

/// Reads every block of one meter. An offline meter is probed with its first block only.
/// Returns the outcome, the reading (when every block answered, or some answered and the
/// others raised exceptions), the error text, the latency, and whether the link must be
/// re-opened.
async fn poll_meter(
    client: &mut ModbusClient,
    slot: &mut MeterSlot,
    timeout: Duration,
    events: &mpsc::Sender<BusEvent>,
    bus: &BusConfig,
) -> (PollOutcome, Option<Reading>, Option<String>, Duration, bool) {
    let unit = slot.cfg.unit.unwrap_or(1);
    let started = Instant::now();
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    let mut answered = 0usize;
    let mut first_error: Option<(PollOutcome, String)> = None;
    let probing = slot.health.is_offline();
    // The reading is stamped with the moment the meter sampled its energy register — when the
    // request of the block holding it went out — not when the poll ended: the loss engine
    // interpolates registers at interval boundaries by this time, and a poll of several
    // blocks at a low baud rate ends hundreds of milliseconds after the meter sampled.
    let mut first_sent_ms: Option<i64> = None;
    let mut energy_sent_ms: Option<i64> = None;
    let mut i = 0;
    while i < slot.blocks.len() {
        if i > 0 && slot.model.inter_frame_pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(slot.model.inter_frame_pause_ms)).await;
        }
        let block = slot.blocks[i].clone();
        let sent_ms = now_ms();
        let result = client
            .read_registers(unit, block.function, block.address, block.count, timeout)
            .await;
        match result {
            Ok(words) => {
                answered += 1;
                first_sent_ms.get_or_insert(sent_ms);
                for (q, v) in decode_block(&slot.model, &block, &words) {
                    if q == "energy_import_kwh" {
                        energy_sent_ms = Some(sent_ms);
                    }
                    let v = if scales_with_multiplier(&q) {
                        v * slot.cfg.multiplier
                    } else {
                        v
                    };
                    values.insert(q, v);
                }
            }
            Err(e) => {
                let narrowable = block.count > widest_value(&slot.model, &block)
                    && match &e {
                        ModbusError::Exception { code } => matches!(code, 2..=4),
                        // Silence on a large block from a meter that answered a block of
                        // this very poll. A meter that answered earlier polls and is silent
                        // now has most likely stopped answering (power, wiring): narrowing
                        // would cost a timeout per halving and keep its plan narrow forever.
                        ModbusError::Timeout(_) => answered > 0,
                        _ => false,
                    };
                if narrowable && !probing {
                    let new_max = (block.count / 2).max(widest_value(&slot.model, &block));
                    if new_max < slot.max_block {
                        warn!(bus = %bus.name, meter = %slot.cfg.id, unit, error = %e,
                            "meter rejected a block of {} registers at {}; narrowing to {}",
                            block.count, block.address, new_max);
                        slot.max_block = new_max;
                        slot.blocks = plan_blocks(&slot.model, new_max);
                        let _ = events
                            .send(BusEvent::BlockLimit {
                                meter: slot.cfg.id.clone(),
                                max_block: new_max,
                            })
                            .await;
                        // Start over with the new plan; values already read stay valid.
                        i = 0;
                        continue;
                    }
                }
                let kind = match &e {
                    ModbusError::Timeout(_) => PollOutcome::Timeout,
                    ModbusError::BadCrc => PollOutcome::BadCrc,
                    ModbusError::WrongUnit { .. } => PollOutcome::WrongUnit,
                    ModbusError::Exception { .. } => PollOutcome::Exception,
                    _ => PollOutcome::Failed,
                };
                let text = format!(
                    "{} (registers {}..{}, function {:02})",
                    e,
                    block.address,
                    block.address as u32 + block.count as u32 - 1,
                    block.function
                );
                if matches!(e, ModbusError::Io(_)) {
                    return (
                        PollOutcome::Failed,
                        None,
                        Some(text),
                        started.elapsed(),
                        true,
                    );
                }
                if kind == PollOutcome::Exception {
                    first_error.get_or_insert((kind, text));
                } else {
                    // A silent or garbled meter: stop spending bus time on it this round.
                    return (kind, None, Some(text), started.elapsed(), false);
                }
            }
        }
        if probing {
            break;
        }
        i += 1;
    }
    let latency = started.elapsed();
    if probing {
        return match first_error {
            None => (PollOutcome::Ok, None, None, latency, false),
            Some((k, t)) => (k, None, Some(t), latency, false),
        };
    }
    let reading = (!values.is_empty()).then(|| Reading {
        meter: slot.cfg.id.clone(),
        ts_ms: energy_sent_ms.or(first_sent_ms).unwrap_or_else(now_ms),
        values,
    });
    match first_error {
        None => (PollOutcome::Ok, reading, None, latency, false),
        Some((_, t)) if answered > 0 => (PollOutcome::Partial, reading, Some(t), latency, false),
        Some((k, t)) => (k, None, Some(t), latency, false),
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
