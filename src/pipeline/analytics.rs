//! The engines fed together, as the store writer uses them.
//!
//! [`Analytics`] is built from the [`PipelineSettings`], restored at start from the snapshots the
//! store keeps in `meta`, fed every reading and meter state, and ticked (at least every
//! second). Whatever the engines decide lands in the store [`Batch`] of that step, so the
//! history rows, the outbox messages, the records and the engines' state that produced them
//! are one transaction:
//!
//! - each reading's quality flag (and revisions of earlier readings' flags);
//! - closed loss intervals: a [`RecordKind::Loss`] record (body = the loss payload) and the
//!   loss message;
//! - loss verdicts carried into the alarm lifecycle as `high_loss` / `negative_loss`;
//! - alarm events: the event messages, the retained set of active alarms, a
//!   [`RecordKind::Alarm`] record per event, [`MetaKey::ActiveAlarms`] and — in the same batch, always — the alarm snapshot, so
//!   an alarm active before a restart is never raised twice;
//! - closed voltage-quality days: a [`RecordKind::VoltageDay`] record and the day message,
//!   the days of at most [`VOLTAGE_METERS_PER_TICK`] meters a tick; completed months, per
//!   meter's phase (with its last day) and per area (with the last meter's): a
//!   [`RecordKind::VoltageMonth`] record and the month message;
//! - daily and monthly freezes (from the readings the loss engine judged good): a
//!   [`RecordKind::FreezeDay`] / [`RecordKind::FreezeMonth`] record and the freeze message;
//! - at each day's decision (`[collection] report_at` after local midnight): the collection
//!   report ([`RecordKind::Collection`] and its message) and each area's daily loss over the
//!   day before from the freezes ([`RecordKind::LossDay`] and its message);
//! - [`MetaKey::LossRolling`] when the rolling figure moved;
//! - an engine's snapshot whenever it emitted something (so a record is never emitted twice
//!   across a restart: a batch carrying an engine's output always carries its snapshot), at
//!   least every [`PARTS_EVERY_MS`] (an hour) otherwise, and at a clean stop — never for
//!   readings taken alone: with a thousand meters the engines' state is megabytes, and even
//!   each meter's changed part written every 10 s cost most of the bytes a reading wrote
//!   (docs/benchmarks.md (h)). Each meter's part of a snapshot ([`meter_parts`]) has a key of
//!   its own ([`MetaKey::EngineMeter`]) and is written only when it changed. After a crash
//!   the engines continue from their last snapshot, at most [`PARTS_EVERY_MS`] old. The loss
//!   engine writes its own key (next interval, verdicts, suspect window) with each interval
//!   it closes, so none is emitted twice, and its meters' parts (about 1 KB each) with the
//!   first interval closed [`PARTS_EVERY_MS`] after they last went: its reads are at most an
//!   hour and one interval old after a crash. A newer rest with older parts is sound: the
//!   intervals after the rest's are computed from the reads either side of the silence (a
//!   cumulative, never-decreasing axis; `complete: false` when the silence is longer than
//!   `max_read_gap_s`), none before it is closed again. The
//!   readings taken since are in the history but not in the engines, which bridge them as a
//!   silence of the meters — a curve point is interpolated between the reads either side of
//!   it, a loss interval and a freeze take the next read (the registers are cumulative, so
//!   no energy is lost), a voltage day counts up to 60 fewer monitored minutes per phase;
//! - the heartbeat [`MetaKey::LastAlive`] in every tick's batch that carries anything and at
//!   least every [`SNAPSHOT_EVERY_MS`], from which the next start tells a power off (a batch
//!   of bus events alone, [`crate::pipeline::Writer::fold_events`], carries none: the tick
//!   follows within a second or so).
//!
//! Every message is rendered by the uplink's contract ([`crate::uplink::contract`]). Like the
//! engines, it never reads the clock: every call takes the time.

use super::PipelineSettings;
use super::parts;
use crate::analytics::MeterParts;
use crate::analytics::alarms::{AlarmChange, AlarmEngine, AlarmKind, AlarmSnapshot};
use crate::analytics::collection::{self, CollectionGroup};
use crate::analytics::curve::{CurveBlock, CurveEngine, CurveSnapshot};
use crate::analytics::freeze::{FreezeEngine, FreezeEvent, FreezeKind, FreezeSnapshot};
use crate::analytics::loss::AreaSpec;
use crate::analytics::loss::{
    LossEngine, LossEvent, LossSnapshot, RollingLoss, VerdictKind, VerdictState,
};
use crate::analytics::voltage::{VoltageQuality, VoltageSnapshot, area_month};
use crate::model::MeterStatus;
use crate::model::Reading;
use crate::store::{Batch, MetaKey, QualityRevision, RecordKind};
use crate::uplink::contract::{
    Topics, active_alarms_list, active_alarms_message, alarm_message, area_voltage_month_message,
    collection_message, curve_message, daily_loss_message, freeze_message, loss_message,
    loss_verdict_details, rolling_loss_body, voltage_day_message, voltage_month_message,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use tracing::warn;

/// How often, at the latest, the heartbeat ([`MetaKey::LastAlive`]) is written (ms). Keep it
/// well below `[alarms.power_off] min_down_s`.
pub const SNAPSHOT_EVERY_MS: i64 = 10_000;

/// How often, at the latest, an engine's snapshot is written when it emitted nothing (ms): the
/// most state a crash can cost an engine. Writing each meter's changed part at every reading
/// (every 10 s, as before) cost most of the bytes a reading wrote; an engine that emits (a
/// loss interval, a curve block, a freeze, a day, an alarm) writes its snapshot in that batch
/// anyway, so with the defaults this bounds the voltage, freeze and alarm engines, the
/// curve's (blocks of 60 min) and the loss engine's per-meter parts (its intervals carry only
/// its rest; the parts go with the first interval this long after they last did). One hour rather than 15 minutes: 1.7 KB rather than 2.3 KB
/// written per reading at 1000 meters (docs/benchmarks.md (h)).
pub const PARTS_EVERY_MS: i64 = 3_600_000;

/// Most curve blocks one tick sends; the rest go at the next ticks (a tick a second while the
/// buses are quiet). Each block's message and record are JSON trees of about 12 kB each until
/// committed: the thousand blocks of a thousand meters' hour in one batch held 24 MB at once
/// (docs/benchmarks.md (j)).
pub const CURVE_BLOCKS_PER_TICK: usize = 64;

/// Most meters whose closed voltage days (three a meter, one a phase) one tick sends, with
/// those meters' snapshot parts; the other meters' go at the next ticks. A thousand meters'
/// days in the tick of the day's decision, beside its collection report and freeze parts,
/// took the gateway over 30 MB for a moment (docs/benchmarks.md (j)).
pub const VOLTAGE_METERS_PER_TICK: usize = 128;

/// A loss verdict as last decided by the loss engine, re-observed on every tick so the
/// `[alarms.line_loss]` hold times apply (the engine reports a verdict only when it changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StandingVerdict {
    kind: VerdictKind,
    area: String,
    /// True while the verdict is raised; false once cleared, until the alarm has cleared.
    raised: bool,
    value: f64,
    threshold: f64,
    details: Value,
}

/// What [`MetaKey::LossEngine`] holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LossState {
    engine: LossSnapshot,
    #[serde(default)]
    verdicts: Vec<StandingVerdict>,
}

/// A meter's snapshot part as last written: a hash of its text, and when (`None`: found in the
/// store at start, not yet written by this run).
#[derive(Debug, Clone, Copy)]
struct Written {
    hash: u64,
    at_ms: Option<i64>,
}

/// The line-loss, alarm and voltage-quality engines of one gateway, wired to the store.
#[derive(Debug)]
pub struct Analytics {
    loss: LossEngine,
    alarms: AlarmEngine,
    voltage: VoltageQuality,
    freeze: FreezeEngine,
    curve: CurveEngine,
    areas: Vec<AreaSpec>,
    groups: Vec<CollectionGroup>,
    topics: Topics,
    verdicts: Vec<StandingVerdict>,
    /// The rolling figures as last written to `meta`.
    rolling: BTreeMap<String, RollingLoss>,
    /// Alarm events decided since the last tick, published at the tick.
    changes: Vec<AlarmChange>,
    /// When the heartbeat was last written.
    last_alive_ms: Option<i64>,
    /// When each engine's snapshot was last written (see [`PARTS_EVERY_MS`]).
    snapshot_ms: BTreeMap<MetaKey, i64>,
    loss_changed: bool,
    voltage_changed: bool,
    freeze_changed: bool,
    /// The meters whose curve block was sent since the curve snapshot was written: the parts
    /// that must go with the block (the other meters' parts may wait, see [`Analytics::push_parts`]).
    curve_sent: BTreeSet<String>,
    /// The meters whose closed voltage days were sent since the voltage snapshot was written:
    /// the parts that must go with them.
    voltage_sent: BTreeSet<String>,
    /// Per engine, each meter's snapshot part ([`MetaKey::EngineMeter`]) as last written, so
    /// a snapshot writes only the meters whose part changed. (Per engine and by a boxed id,
    /// not a full key per part in two maps: with a thousand meters these are five thousand
    /// entries, kept for the gateway's life.)
    written: BTreeMap<MetaKey, BTreeMap<Box<str>, Written>>,
    /// When each engine last wrote all its changed per-meter parts (see [`PARTS_EVERY_MS`]).
    parts_ms: BTreeMap<MetaKey, i64>,
}

impl Analytics {
    /// Fresh engines for the areas, meters and settings of `settings`.
    pub fn new(settings: &PipelineSettings, topics: Topics) -> Analytics {
        Analytics {
            loss: LossEngine::new(settings.areas.clone(), settings.loss.clone()),
            alarms: AlarmEngine::new(settings.alarms.clone(), settings.topology.clone()),
            voltage: VoltageQuality::new(settings.voltage.clone()),
            freeze: FreezeEngine::new(settings.freeze.clone(), settings.models.keys().cloned()),
            curve: CurveEngine::new(settings.curve.clone(), settings.models.keys().cloned()),
            areas: settings.areas.clone(),
            groups: settings.collection_groups.clone(),
            topics,
            verdicts: Vec::new(),
            rolling: BTreeMap::new(),
            changes: Vec::new(),
            last_alive_ms: None,
            snapshot_ms: BTreeMap::new(),
            loss_changed: false,
            voltage_changed: false,
            freeze_changed: false,
            curve_sent: BTreeSet::new(),
            voltage_sent: BTreeSet::new(),
            written: BTreeMap::new(),
            parts_ms: BTreeMap::new(),
        }
    }

    /// Continues from the snapshots in `meta` (a lookup of the store's `meta` table), then
    /// reports a power off when the heartbeat there is older than `[alarms.power_off]
    /// min_down_s`. The returned batch holds the alarm events of the start (power off, clears
    /// of kinds disabled since), the retained set of active alarms (always: a broker that
    /// lost it gets it back), every snapshot and the heartbeat.
    pub fn start(&mut self, meta: impl Fn(&MetaKey) -> Option<String>, now_ms: i64) -> Batch {
        if let Some(state) = parse::<LossState>(&meta, &MetaKey::LossEngine) {
            self.loss.restore(state.engine);
            let areas: Vec<String> = self.loss.areas().map(|a| a.id.clone()).collect();
            self.verdicts = state
                .verdicts
                .into_iter()
                .filter(|v| areas.contains(&v.area))
                .collect();
        }
        let mut changes = Vec::new();
        if let Some(snapshot) = parse::<AlarmSnapshot>(&meta, &MetaKey::AlarmEngine) {
            changes.extend(self.alarms.restore(snapshot, now_ms));
        }
        if let Some(snapshot) = parse::<VoltageSnapshot>(&meta, &MetaKey::VoltageEngine) {
            self.voltage.restore(snapshot);
        }
        if let Some(snapshot) = parse::<FreezeSnapshot>(&meta, &MetaKey::FreezeEngine) {
            self.freeze.restore(snapshot);
        }
        if let Some(snapshot) = parse::<CurveSnapshot>(&meta, &MetaKey::CurveEngine) {
            self.curve.restore(snapshot);
        }
        let last_alive = meta(&MetaKey::LastAlive).and_then(|v| v.parse::<i64>().ok());
        changes.extend(self.alarms.on_start(now_ms, last_alive));

        let mut batch = Batch::default();
        for c in &changes {
            push_alarm_event(&self.topics, c, &mut batch);
        }
        self.push_active_alarms(now_ms, &mut batch);
        self.snapshot_all(now_ms, &mut batch);
        batch
    }

    /// The store was damaged and replaced: the `store_recovered` event (raised and cleared)
    /// goes into `batch` with `details` (where the old file is, what was carried over).
    pub fn on_store_recovered(&mut self, details: Value, now_ms: i64, batch: &mut Batch) {
        let changes = self.alarms.on_store_recovered(now_ms, details);
        for c in &changes {
            push_alarm_event(&self.topics, c, batch);
        }
        if !changes.is_empty() {
            self.push_active_alarms(now_ms, batch);
            self.push_snapshot(MetaKey::AlarmEngine, now_ms, batch);
        }
    }

    /// The gateway's clock became sane (`sane`) or stopped being so: `clock_unsynchronized`
    /// cleared or raised (`details`: the clock's figures).
    pub fn on_clock(&mut self, sane: bool, details: Value, now_ms: i64, batch: &mut Batch) {
        let gateway = self.alarms.gateway().to_string();
        let kind = AlarmKind::ClockUnsynchronized;
        let change = if sane {
            self.alarms
                .clear_external(kind, &gateway, 0.0, details, now_ms)
        } else {
            self.alarms
                .raise_external(kind, &gateway, 1.0, 0.0, details, now_ms)
        };
        if let Some(c) = change {
            push_alarm_event(&self.topics, &c, batch);
            self.push_active_alarms(now_ms, batch);
            self.push_snapshot(MetaKey::AlarmEngine, now_ms, batch);
        }
    }

    /// A certificate of the MQTT link (`subject`: its `[mqtt]` key) expires within the warning
    /// time (`days_left`: Some) or no longer does: `certificate_expiry` raised or cleared.
    pub fn on_certificate(
        &mut self,
        subject: &str,
        days_left: Option<i64>,
        details: Value,
        now_ms: i64,
        batch: &mut Batch,
    ) {
        let kind = AlarmKind::CertificateExpiry;
        let change = match days_left {
            Some(days) => {
                let warn = details["warn_days"].as_f64().unwrap_or(0.0);
                self.alarms
                    .raise_external(kind, subject, days as f64, warn, details, now_ms)
            }
            None => self
                .alarms
                .clear_external(kind, subject, 0.0, details, now_ms),
        };
        if let Some(c) = change {
            push_alarm_event(&self.topics, &c, batch);
            self.push_active_alarms(now_ms, batch);
            self.push_snapshot(MetaKey::AlarmEngine, now_ms, batch);
        }
    }

    /// The store's filesystem became full (`full`) or has room again: `disk_full` raised or
    /// cleared (`details`: the condition's figures).
    pub fn on_disk_full(&mut self, full: bool, details: Value, now_ms: i64, batch: &mut Batch) {
        let gateway = self.alarms.gateway().to_string();
        let change = if full {
            self.alarms
                .raise_external(AlarmKind::DiskFull, &gateway, 1.0, 0.0, details, now_ms)
        } else {
            self.alarms
                .clear_external(AlarmKind::DiskFull, &gateway, 0.0, details, now_ms)
        };
        if let Some(c) = change {
            push_alarm_event(&self.topics, &c, batch);
            self.push_active_alarms(now_ms, batch);
            self.push_snapshot(MetaKey::AlarmEngine, now_ms, batch);
        }
    }

    /// Judges one reading: returns its quality flag for the history (see
    /// [`crate::analytics::loss::Quality::code`]) and adds revisions of earlier readings to `batch`.
    /// Alarm events it causes are published at the next [`Analytics::on_tick`].
    pub fn on_reading(&mut self, r: &Reading, batch: &mut Batch) -> u8 {
        let verdict = self.loss.on_reading(r);
        for rev in &verdict.revisions {
            batch.quality_revisions.push(QualityRevision {
                meter: rev.meter.clone(),
                ts_ms: rev.ts_ms,
                quality: rev.quality.code(),
            });
        }
        let changes = self.alarms.on_reading(r);
        self.changes.extend(changes);
        self.voltage.on_reading(r);
        if verdict.quality.code() == 0 {
            self.freeze.on_reading(r);
            // No snapshot for a reading alone (see [`SNAPSHOT_EVERY_MS`]): only for a block.
            self.curve.on_reading(r);
        }
        verdict.quality.code()
    }

    /// Takes a daily freeze the meter itself recorded (DL/T 645 日冻结, `source` `meter`);
    /// published with the next tick's freezes.
    pub fn on_meter_freeze(&mut self, meter: &str, ts_ms: i64, values: BTreeMap<String, f64>) {
        self.freeze.on_meter_freeze(meter, ts_ms, values);
        self.freeze_changed = true;
    }

    /// Takes a meter's health from its bus (meter_offline, silent buses).
    pub fn on_meter_status(&mut self, s: &MeterStatus) {
        let changes = self.alarms.on_meter_status(s);
        self.changes.extend(changes);
    }

    /// Advances every engine to `now_ms` and adds to `batch` what they decided since the last
    /// tick (see the module documentation), the snapshots that are due and the heartbeat.
    pub fn on_tick(&mut self, now_ms: i64, batch: &mut Batch) {
        self.tick_loss(now_ms, batch);
        let changes = self.alarms.on_tick(now_ms);
        self.changes.extend(changes);
        for d in self
            .voltage
            .on_tick_at_most(now_ms, VOLTAGE_METERS_PER_TICK)
        {
            let m = voltage_day_message(&self.topics, &d);
            batch.push_kept(RecordKind::VoltageDay, &d.meter, d.day_start_ms, m);
            self.voltage_changed = true;
            if !self.voltage_sent.contains(&d.meter) {
                self.voltage_sent.insert(d.meter);
            }
        }
        self.push_voltage_months(batch);
        self.tick_freeze(now_ms, batch);
        let blocks = self.curve.on_tick_at_most(now_ms, CURVE_BLOCKS_PER_TICK);
        self.push_curve(blocks, batch);
        self.write_rolling(batch);

        let changes = std::mem::take(&mut self.changes);
        if !changes.is_empty() {
            for c in &changes {
                push_alarm_event(&self.topics, c, batch);
            }
            self.push_active_alarms(now_ms, batch);
        }

        let alarms_changed = !changes.is_empty();
        for (key, changed) in [
            (MetaKey::LossEngine, self.loss_changed),
            (MetaKey::AlarmEngine, alarms_changed),
            (MetaKey::VoltageEngine, self.voltage_changed),
            (MetaKey::FreezeEngine, self.freeze_changed),
            (MetaKey::CurveEngine, !self.curve_sent.is_empty()),
        ] {
            let due = self
                .snapshot_ms
                .get(&key)
                .is_none_or(|t| now_ms - t >= PARTS_EVERY_MS);
            let parts_due = self
                .parts_ms
                .get(&key)
                .is_none_or(|t| now_ms - t >= PARTS_EVERY_MS);
            if changed && key == MetaKey::CurveEngine {
                // Only the parts of the meters whose block went out must go with it.
                let sent = std::mem::take(&mut self.curve_sent);
                self.push_parts(key, now_ms, Some(&sent), batch);
            } else if changed && key == MetaKey::VoltageEngine && !parts_due {
                // The parts of the meters whose days went out must go with them (so a
                // restart does not send them again); a meter whose days wait keeps its part
                // as last written, its closed days in it.
                let sent = std::mem::take(&mut self.voltage_sent);
                self.push_parts(key, now_ms, Some(&sent), batch);
            } else if changed && key == MetaKey::LossEngine && !parts_due {
                // A closed interval needs only the engine's rest (which interval is next,
                // the verdicts, the suspect window) in its batch, so that it is never emitted
                // twice; the meters' reads go with the first interval closed an hour or more
                // after they last did — just after a close the engine has pruned the reads
                // the closed interval needed, so the parts are at their smallest (see the
                // module documentation).
                self.push_parts(key, now_ms, Some(&BTreeSet::new()), batch);
            } else if changed || due {
                self.push_snapshot(key, now_ms, batch);
            }
        }
        let alive_due = self
            .last_alive_ms
            .is_none_or(|t| now_ms - t >= SNAPSHOT_EVERY_MS);
        if alive_due || !batch.is_empty() {
            batch.meta.push((MetaKey::LastAlive, now_ms.to_string()));
            self.last_alive_ms = Some(now_ms);
        }
        self.loss_changed = false;
        self.voltage_changed = false;
        self.freeze_changed = false;
        self.curve_sent.clear();
        self.voltage_sent.clear();
    }

    /// The curve blocks' messages and records, their meters noted for the snapshot.
    fn push_curve(&mut self, blocks: Vec<CurveBlock>, batch: &mut Batch) {
        for b in blocks {
            let m = curve_message(&self.topics, &b);
            batch.push_kept(RecordKind::Curve, &b.meter, b.start_ms, m);
            self.curve_sent.insert(b.meter.clone());
        }
    }

    /// Adds every snapshot and the heartbeat to `batch` (also at shutdown), with the curve
    /// blocks still waiting to go out (their meters' parts are written with them).
    pub fn snapshot_all(&mut self, now_ms: i64, batch: &mut Batch) {
        let blocks = self.curve.take_waiting();
        self.push_curve(blocks, batch);
        self.curve_sent.clear();
        self.push_snapshot(MetaKey::LossEngine, now_ms, batch);
        self.push_snapshot(MetaKey::AlarmEngine, now_ms, batch);
        self.push_snapshot(MetaKey::VoltageEngine, now_ms, batch);
        self.push_snapshot(MetaKey::FreezeEngine, now_ms, batch);
        self.push_snapshot(MetaKey::CurveEngine, now_ms, batch);
        batch.meta.push((MetaKey::LastAlive, now_ms.to_string()));
        self.last_alive_ms = Some(now_ms);
    }

    /// The rolling loss of every area that has one, in configuration order.
    pub fn rolling(&self) -> Vec<RollingLoss> {
        self.loss
            .areas()
            .filter_map(|a| self.loss.rolling(&a.id))
            .collect()
    }

    /// How many alarms stand.
    pub fn active_alarm_count(&self) -> usize {
        self.alarms.active().len()
    }

    /// The engines, for inspection.
    pub fn loss(&self) -> &LossEngine {
        &self.loss
    }
    pub fn alarms(&self) -> &AlarmEngine {
        &self.alarms
    }
    pub fn voltage(&self) -> &VoltageQuality {
        &self.voltage
    }
    pub fn freeze(&self) -> &FreezeEngine {
        &self.freeze
    }
    pub fn curve(&self) -> &CurveEngine {
        &self.curve
    }

    /// The voltage-quality months completed at this tick: per meter's phase (with the
    /// meter's last day) and per area (once every meter's last day closed).
    fn push_voltage_months(&mut self, batch: &mut Batch) {
        for m in self.voltage.take_months() {
            let msg = voltage_month_message(&self.topics, &m);
            batch.push_kept(RecordKind::VoltageMonth, &m.meter, m.start_ms, msg);
            self.voltage_changed = true;
        }
        let months = self.voltage.take_completed_months();
        if months.is_empty() {
            return;
        }
        self.voltage_changed = true;
        let mut starts: Vec<i64> = months.iter().map(|m| m.start_ms).collect();
        starts.sort_unstable();
        starts.dedup();
        for start in starts {
            let of_month: Vec<_> = months
                .iter()
                .filter(|m| m.start_ms == start)
                .cloned()
                .collect();
            for area in &self.areas {
                let ids: Vec<String> = area.meters().cloned().collect();
                if let Some(a) = area_month(&area.id, &ids, &of_month) {
                    let msg = area_voltage_month_message(&self.topics, &a);
                    batch.push_kept(RecordKind::VoltageMonth, &a.area, a.start_ms, msg);
                }
            }
        }
    }

    /// Freezes, and at a day's decision its collection report and the areas' daily loss over
    /// the day before.
    fn tick_freeze(&mut self, now_ms: i64, batch: &mut Batch) {
        for ev in self.freeze.on_tick(now_ms) {
            self.freeze_changed = true;
            match ev {
                FreezeEvent::Freeze(f) => {
                    let kind = match f.kind {
                        FreezeKind::Day => RecordKind::FreezeDay,
                        FreezeKind::Month => RecordKind::FreezeMonth,
                    };
                    let m = freeze_message(&self.topics, &f);
                    batch.push_kept(kind, &f.meter, f.ts_ms, m);
                }
                FreezeEvent::Decided(day) => {
                    let report = collection::report(&day, &self.groups);
                    let m = collection_message(&self.topics, &report);
                    let gateway = self.topics.gateway.clone();
                    batch.push_kept(RecordKind::Collection, &gateway, day.ts_ms, m);
                    for area in &self.areas {
                        let l = self.freeze.daily_loss(area, day.ts_ms);
                        // Nothing to say before the first two midnights of any meter.
                        if l.missing.len() == area.meters().count() {
                            continue;
                        }
                        let m = daily_loss_message(&self.topics, &l);
                        batch.push_kept(RecordKind::LossDay, &l.area, l.end_ms, m);
                    }
                }
            }
        }
    }

    /// Closes loss intervals; carries verdicts into the alarm lifecycle.
    fn tick_loss(&mut self, now_ms: i64, batch: &mut Batch) {
        for ev in self.loss.on_tick(now_ms) {
            match ev {
                LossEvent::Record(rec) => {
                    let m = loss_message(&self.topics, &rec);
                    batch.push_kept(RecordKind::Loss, &rec.area, rec.end_ms, m);
                    self.loss_changed = true;
                }
                LossEvent::Verdict(v) => {
                    let standing = StandingVerdict {
                        kind: v.kind,
                        area: v.area.clone(),
                        raised: v.state == VerdictState::Raised,
                        value: v.value,
                        threshold: v.threshold,
                        details: loss_verdict_details(&v),
                    };
                    self.verdicts
                        .retain(|s| !(s.kind == v.kind && s.area == v.area));
                    self.verdicts.push(standing);
                    self.loss_changed = true;
                }
            }
        }
        if self.verdicts.is_empty() {
            return;
        }
        let mut done = Vec::new();
        for (i, v) in self.verdicts.iter().enumerate() {
            let kind = match v.kind {
                VerdictKind::HighLoss => AlarmKind::HighLoss,
                VerdictKind::NegativeLoss => AlarmKind::NegativeLoss,
            };
            let change = if v.raised {
                self.alarms.raise_external(
                    kind,
                    &v.area,
                    v.value,
                    v.threshold,
                    v.details.clone(),
                    now_ms,
                )
            } else {
                self.alarms
                    .clear_external(kind, &v.area, v.value, v.details.clone(), now_ms)
            };
            self.changes.extend(change);
            let active = self
                .alarms
                .active()
                .iter()
                .any(|a| a.kind == kind && a.subject == v.area);
            if !v.raised && !active {
                done.push(i);
            }
        }
        if !done.is_empty() {
            self.loss_changed = true;
            for i in done.into_iter().rev() {
                self.verdicts.remove(i);
            }
        }
    }

    /// `meta loss_rolling/{area}` for every area whose rolling figure moved.
    fn write_rolling(&mut self, batch: &mut Batch) {
        for r in self.rolling() {
            if self.rolling.get(&r.area) == Some(&r) {
                continue;
            }
            batch.meta.push((
                MetaKey::LossRolling(r.area.clone()),
                rolling_loss_body(&r).to_string(),
            ));
            self.rolling.insert(r.area.clone(), r);
        }
    }

    /// Adds the snapshot of the engine of `key` to `batch`: under `key` without its per-meter
    /// parts (see [`meter_parts`]), and under [`MetaKey::EngineMeter`] each meter's part that
    /// changed since it was last written.
    fn push_snapshot(&mut self, key: MetaKey, now_ms: i64, batch: &mut Batch) {
        self.push_parts(key, now_ms, None, batch);
    }

    /// [`Analytics::push_snapshot`], writing of the changed per-meter parts only those of the
    /// meters in `only` (when given) and those last written twice [`PARTS_EVERY_MS`] ago or
    /// more. The curve engine, when blocks went out, writes the parts of the meters they came
    /// from in the same batch (so a restart does not send them again); another meter's part
    /// may stay as it was (its readings since are a silence after a crash, as for any part).
    /// With hourly blocks every meter's part is so written with its own block, about hourly,
    /// instead of every part at every meter's block (1000 parts of three points each, most
    /// of the curve's bytes); an engine that sent nothing for [`PARTS_EVERY_MS`] writes all.
    /// Each meter's part must not depend on another's: the curve engine's do not.
    fn push_parts(
        &mut self,
        key: MetaKey,
        now_ms: i64,
        only: Option<&BTreeSet<String>>,
        batch: &mut Batch,
    ) {
        self.snapshot_ms.insert(key.clone(), now_ms);
        // A part not written by this run (its meter came after the engine's last write of all
        // its parts, or its part is one the store held at start) counts as written then: the
        // next write of all takes it. (Counted as never written, the first voltage days after
        // a start wrote every meter's part: 1000 parts at once.)
        let all_ms = self.parts_ms.get(&key).copied().unwrap_or(now_ms);
        if only.is_none() {
            self.parts_ms.insert(key.clone(), now_ms);
        }
        let (rest, meters) = match key {
            MetaKey::LossEngine => (
                json_of(&LossState {
                    engine: self.loss.snapshot_rest(),
                    verdicts: self.verdicts.clone(),
                }),
                self.loss.part_meters(),
            ),
            MetaKey::AlarmEngine => (
                json_of(&self.alarms.snapshot_rest()),
                self.alarms.part_meters(),
            ),
            MetaKey::FreezeEngine => (
                json_of(&self.freeze.snapshot_rest()),
                self.freeze.part_meters(),
            ),
            MetaKey::CurveEngine => (
                json_of(&self.curve.snapshot_rest()),
                self.curve.part_meters(),
            ),
            MetaKey::VoltageEngine => (
                json_of(&self.voltage.snapshot_rest()),
                self.voltage.part_meters(),
            ),
            _ => unreachable!("not an engine split by meter: {key}"),
        };
        let mut written = self.written.remove(&key).unwrap_or_default();
        // A part written before whose meter the engine no longer holds: a tombstone, so
        // that a restart does not bring it back.
        written.retain(|meter, _| {
            let held = meters.binary_search(&&**meter).is_ok();
            if !held {
                let part_key = MetaKey::EngineMeter(Box::new(key.clone()), meter.to_string());
                batch.meta.push((part_key, "null".into()));
            }
            held
        });
        // A meter whose curve block waits for a later tick keeps its part as last written
        // (with the block's points), until the block goes out.
        let waiting = match key {
            MetaKey::CurveEngine => self.curve.waiting(),
            _ => BTreeSet::new(),
        };
        for &meter in &meters {
            if waiting.contains(meter) {
                continue;
            }
            let last = written.get(meter).copied();
            let wanted = only.is_none_or(|only| {
                only.contains(meter)
                    || now_ms - last.and_then(|w| w.at_ms).unwrap_or(all_ms) >= 2 * PARTS_EVERY_MS
            });
            if !wanted {
                continue;
            }
            let Some(mut text) = self.part_json(&key, meter) else {
                continue;
            };
            // Serializing leaves up to twice the text's length allocated; a first write of
            // every meter's part holds a thousand of them until the commit.
            text.shrink_to_fit();
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(text.as_str(), &mut h);
            let hash = std::hash::Hasher::finish(&h);
            if last.is_none_or(|w| w.hash != hash) {
                let at_ms = Some(now_ms);
                match written.get_mut(meter) {
                    Some(w) => *w = Written { hash, at_ms },
                    None => {
                        written.insert(meter.into(), Written { hash, at_ms });
                    }
                }
                let part_key = MetaKey::EngineMeter(Box::new(key.clone()), meter.to_string());
                batch.meta.push((part_key, text));
            }
        }
        self.written.insert(key.clone(), written);
        batch.meta.push((key, rest));
    }

    /// One meter's part of the snapshot of the engine of `key`, as JSON.
    fn part_json(&self, key: &MetaKey, meter: &str) -> Option<String> {
        match key {
            MetaKey::LossEngine => self.loss.part_json(meter),
            MetaKey::AlarmEngine => self.alarms.part_json(meter),
            MetaKey::FreezeEngine => self.freeze.part_json(meter),
            MetaKey::CurveEngine => self.curve.part_json(meter),
            MetaKey::VoltageEngine => self.voltage.part_json(meter),
            _ => None,
        }
    }

    /// Forgets which per-meter snapshot parts were written: the next snapshot writes them all
    /// (the store was replaced).
    pub fn forget_written(&mut self) {
        self.written.clear();
    }

    /// The per-meter snapshot parts the store holds (read at start): the next snapshot
    /// rewrites them, or marks gone those of meters the engine no longer holds.
    pub fn saved_parts(&mut self, keys: impl IntoIterator<Item = MetaKey>) {
        for k in keys {
            if let MetaKey::EngineMeter(engine, meter) = k {
                self.written
                    .entry(*engine)
                    .or_default()
                    .entry(meter.into_boxed_str())
                    .or_insert(Written {
                        hash: 0,
                        at_ms: None,
                    });
            }
        }
    }

    /// The retained set of active alarms, and the same list in [`MetaKey::ActiveAlarms`].
    fn push_active_alarms(&self, now_ms: i64, batch: &mut Batch) {
        let active = self.alarms.active();
        batch
            .messages
            .push(active_alarms_message(&self.topics, &active, now_ms));
        let list = Value::Array(active_alarms_list(&active)).to_string();
        batch.meta.push((MetaKey::ActiveAlarms, list));
    }
}

/// An alarm event: its message and its `alarm` record (body = the event payload).
fn push_alarm_event(topics: &Topics, c: &AlarmChange, batch: &mut Batch) {
    let m = alarm_message(topics, c);
    batch.push_kept(RecordKind::Alarm, &c.alarm.subject, c.ts_ms, m);
}

/// Where, in the snapshot JSON of an engine's `key`, its per-meter parts are (an object by
/// meter id, or a list whose items name their `meter`), for the engines whose state grows with the number of meters. Each part is kept
/// under its own [`MetaKey::EngineMeter`] and written only when it changed: with a thousand
/// meters the whole state is megabytes, while a meter's part changes once per reading.
pub fn meter_parts(key: &MetaKey) -> Option<&'static str> {
    match key {
        MetaKey::LossEngine => Some("/engine/meters"),
        MetaKey::AlarmEngine => Some("/registers"),
        MetaKey::FreezeEngine => Some("/meters"),
        MetaKey::CurveEngine => Some("/meters"),
        // A list of series, each naming its meter: a meter's part is the list of its own.
        MetaKey::VoltageEngine => Some("/series"),
        _ => None,
    }
}

/// The whole snapshot of the engine of `key` from its own value `base` and its per-meter
/// `parts` (a snapshot written whole, before the parts existed, is read as it is; a part that
/// cannot be read is left out and logged: that meter starts afresh).
pub fn join_meter_parts(key: &MetaKey, base: &str, parts: Vec<(String, String)>) -> String {
    let Some(pointer) = meter_parts(key) else {
        return base.to_string();
    };
    parts::join(base, pointer, &parts, &mut |meter, reason| {
        warn!(key = %key, meter = %meter, error = %reason,
            "cannot read a meter's saved analytics state; that meter starts afresh");
    })
}

fn json_of<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("snapshots serialize")
}

/// A snapshot from `meta`; a missing one is `None`, an unreadable one is logged and `None`
/// (the engine starts afresh rather than not at all).
fn parse<T: serde::de::DeserializeOwned>(
    meta: &impl Fn(&MetaKey) -> Option<String>,
    key: &MetaKey,
) -> Option<T> {
    let text = meta(key)?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(key = %key, error = %e, "cannot read the saved analytics state; starting afresh");
            None
        }
    }
}
