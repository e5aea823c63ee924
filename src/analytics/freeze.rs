//! Daily and monthly freezes (日冻结 / 月冻结): every meter's energy registers at local 00:00,
//! and on the 1st of the month for the monthly freeze, taken from the reads around midnight.
//!
//! # How a freeze is taken
//!
//! At each local midnight `B` of `[gateway] timezone` (see [`crate::clock::LocalTime`]) every
//! configured meter gets a freeze of its energy registers — every quantity named `energy_*` or
//! `reactive_energy_*` its reads carry (import and export, totals and tariffs, reactive):
//!
//! - **interpolated** — as soon as the meter has a read at or before `B` and one after it, each
//!   register linearly between the two (a read exactly at `B` is used as is). When that happens
//!   after the day's decision (below) — the meter was silent over midnight and answered again —
//!   the freeze is still taken from the reads around midnight and marked `late`.
//! - **extrapolated** — at the day's decision, `decide_after_s` after midnight, a meter without
//!   a freeze whose nearest read is within `max_extrapolate_s` of midnight on one side only gets
//!   its registers extrapolated from that side at the rate of its two reads there (or held, with
//!   one read), marked so.
//! - otherwise the meter has no freeze for the day; the decision lists it as missing (the
//!   collection report). A meter with a read before midnight keeps waiting, up to
//!   [`KEEP_PENDING_DAYS`], for a read after it (the late freeze above).
//! - **meter** — a freeze read from the meter's own frozen data (DL/T 645-2007, read by the
//!   bus driver a few minutes after midnight), when a protocol provides one
//!   ([`FreezeEngine::on_meter_freeze`]); it takes precedence over an interpolation not yet
//!   taken. Once a meter has given one, its interpolation for a midnight waits for the
//!   meter's own freeze until the day's decision, and is taken then only if that did not come.
//!
//! The freeze of midnight `B` is named by the local date at `B` (`day`, the register values *at
//! the start of* that day; the energy of a day is the next day's freeze minus its own) and, for
//! the monthly freeze, by the local month at `B` (`month`).
//!
//! Daily line loss ([`FreezeEngine::daily_loss`]) follows from two consecutive daily freezes of
//! an area's meters with the loss engine's formula and its completeness rule.
//!
//! Pure and deterministic: readings and time in, [`FreezeEvent`]s out; the state survives a
//! restart through [`FreezeEngine::snapshot`] / [`FreezeEngine::restore`].

use super::values::Values;
use crate::analytics::loss::AreaSpec;
use crate::clock::LocalTime;
use crate::model::Reading;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How many days a meter silent over a midnight keeps waiting for the read after it (the
/// store keeps daily freezes as long).
pub const KEEP_PENDING_DAYS: i64 = 62;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: f64 = 3_600_000.0;

/// `[freeze]` keys, and the zone whose midnights are frozen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreezeSettings {
    /// Whose midnights. Not a key of `[freeze]`: the loader fills it from `[gateway]
    /// timezone`. Default UTC.
    #[serde(skip)]
    pub zone: LocalTime,
    /// Seconds after local midnight when the day's freezes are decided: extrapolated where
    /// they can only be, missing otherwise (and the collection report published). Not a key of
    /// `[freeze]`: the loader fills it from `[collection] report_at`. Default 3600 (01:00).
    #[serde(skip)]
    pub decide_after_s: u64,
    /// A meter's register may be extrapolated to midnight from a read at most this far from
    /// it. Default 900.
    pub max_extrapolate_s: u64,
}

impl Default for FreezeSettings {
    fn default() -> Self {
        FreezeSettings {
            zone: LocalTime::default(),
            decide_after_s: 3600,
            max_extrapolate_s: 900,
        }
    }
}

/// A daily or a monthly freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreezeKind {
    Day,
    Month,
}

impl FreezeKind {
    /// `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            FreezeKind::Day => "day",
            FreezeKind::Month => "month",
        }
    }
}

/// Where a freeze's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreezeSource {
    /// Between the reads just before and just after midnight.
    Interpolated,
    /// From reads on one side of midnight only.
    Extrapolated,
    /// The meter's own frozen data.
    Meter,
}

impl FreezeSource {
    /// `interpolated`, `extrapolated` or `meter`.
    pub fn as_str(self) -> &'static str {
        match self {
            FreezeSource::Interpolated => "interpolated",
            FreezeSource::Extrapolated => "extrapolated",
            FreezeSource::Meter => "meter",
        }
    }
}

/// One freeze of one meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreezeRecord {
    pub meter: String,
    pub kind: FreezeKind,
    /// The freeze moment: local midnight, ms since the epoch.
    pub ts_ms: i64,
    /// The local date at the freeze moment, `2026-11-23`.
    pub day: String,
    /// The local month at the freeze moment, `2026-11`.
    pub month: String,
    /// Energy registers at the freeze moment (primary side, as read).
    pub values: BTreeMap<String, f64>,
    pub source: FreezeSource,
    /// The reads it was taken from (the nearest before and after midnight), when any.
    pub before_ms: Option<i64>,
    pub after_ms: Option<i64>,
    /// Taken after the day's decision (the meter was silent over midnight and answered again).
    pub late: bool,
}

/// The day's decision: which configured meters have a daily freeze at midnight `ts_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreezeDay {
    /// The midnight, ms since the epoch.
    pub ts_ms: i64,
    /// The local date at it.
    pub day: String,
    /// Meters with a freeze, sorted.
    pub frozen: Vec<String>,
    /// Configured meters without one, sorted.
    pub missing: Vec<String>,
}

/// What the engine decided.
#[derive(Debug, Clone, PartialEq)]
pub enum FreezeEvent {
    Freeze(FreezeRecord),
    /// A day's freezes are decided ([`FreezeSettings::decide_after_s`] after its midnight).
    Decided(FreezeDay),
}

/// One area's energy over one local day from its meters' daily freezes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyLoss {
    pub area: String,
    /// The local day the energy flowed, `2026-11-22`.
    pub day: String,
    /// Its local midnights, ms since the epoch.
    pub start_ms: i64,
    pub end_ms: i64,
    pub supply_kwh: f64,
    pub sales_kwh: f64,
    pub loss_kwh: f64,
    /// `None` when nothing entered the area.
    pub loss_pct: Option<f64>,
    /// Share of the area's meters with a freeze at both midnights, %.
    pub coverage_pct: f64,
    pub complete: bool,
    /// Meters without a freeze at one of the midnights (left out of the sums).
    pub missing: Vec<String>,
    /// Meters whose freezes there were extrapolated.
    pub extrapolated: Vec<String>,
}

/// A read kept for freezing: its time and its energy registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Snap {
    ts_ms: i64,
    values: Values,
}

/// A midnight a meter has no freeze for yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pending {
    /// The last read at or before midnight, and the one before it.
    before: Option<(Snap, Option<Snap>)>,
    /// The first reads after midnight (at most two), when there was none before.
    after: Vec<Snap>,
    /// For a meter that keeps its own freezes: the interpolation waiting for the meter's
    /// freeze until the day's decision (values, before_ms, after_ms).
    #[serde(default)]
    held: Option<Taken>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct MeterTrack {
    prev: Option<Snap>,
    last: Option<Snap>,
    /// By midnight.
    pending: BTreeMap<i64, Pending>,
    /// The freezes taken, by midnight: source and values (the last few, for the daily loss).
    frozen: BTreeMap<i64, (FreezeSource, Values)>,
    /// The meter keeps its own daily freezes (one came, [`FreezeEngine::on_meter_freeze`]):
    /// its interpolation waits for them until the day's decision.
    #[serde(default)]
    own: bool,
}

/// The days between their midnight and their decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DayState {
    decided: bool,
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FreezeSnapshot {
    meters: BTreeMap<String, MeterTrack>,
    days: BTreeMap<i64, DayState>,
    next_midnight_ms: Option<i64>,
}

impl super::MeterParts for FreezeEngine {
    type Snapshot = FreezeSnapshot;
    fn snapshot_rest(&self) -> FreezeSnapshot {
        FreezeSnapshot {
            meters: BTreeMap::new(),
            days: self.state.days.clone(),
            next_midnight_ms: self.state.next_midnight_ms,
        }
    }
    fn part_meters(&self) -> Vec<&str> {
        self.state.meters.keys().map(String::as_str).collect()
    }
    fn part_json(&self, meter: &str) -> Option<String> {
        self.state.meters.get(meter).map(super::part_json)
    }
}

/// The daily and monthly freezes of the configured meters. See the module documentation.
#[derive(Debug, Clone)]
pub struct FreezeEngine {
    settings: FreezeSettings,
    state: FreezeSnapshot,
    ready: Vec<FreezeEvent>,
}

fn is_energy(name: &str) -> bool {
    name.starts_with("energy_") || name.starts_with("reactive_energy_")
}

impl FreezeEngine {
    /// An engine freezing `meters` (the configured ones, in any order).
    pub fn new(settings: FreezeSettings, meters: impl IntoIterator<Item = String>) -> Self {
        let state = FreezeSnapshot {
            meters: meters
                .into_iter()
                .map(|m| (m, MeterTrack::default()))
                .collect(),
            ..FreezeSnapshot::default()
        };
        FreezeEngine {
            settings,
            state,
            ready: Vec::new(),
        }
    }

    pub fn settings(&self) -> &FreezeSettings {
        &self.settings
    }

    /// Opens every midnight up to `t_ms`: each meter's last read becomes its read before it.
    fn open_midnights(&mut self, t_ms: i64) {
        let zone = &self.settings.zone;
        let next = *self
            .state
            .next_midnight_ms
            .get_or_insert_with(|| zone.next_day_start_ms(t_ms));
        let mut b = next;
        while b <= t_ms {
            for track in self.state.meters.values_mut() {
                let before = track
                    .last
                    .clone()
                    .filter(|l| l.ts_ms <= b)
                    .map(|l| (l, track.prev.clone()));
                track.pending.insert(
                    b,
                    Pending {
                        before,
                        after: Vec::new(),
                        held: None,
                    },
                );
            }
            self.state.days.insert(b, DayState::default());
            b = zone.next_day_start_ms(b);
        }
        self.state.next_midnight_ms = Some(b);
    }

    /// Takes one reading (only good ones: the pipeline leaves out reads the loss engine
    /// rejected). Freezes it completes are returned by the next [`FreezeEngine::on_tick`].
    pub fn on_reading(&mut self, r: &Reading) {
        if !self.state.meters.contains_key(&r.meter) {
            return;
        }
        let values: Values = r
            .values
            .iter()
            .filter(|(k, v)| is_energy(k) && v.is_finite() && **v >= 0.0)
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        if values.is_empty() {
            return;
        }
        self.open_midnights(r.ts_ms);
        let decided: BTreeSet<i64> = self
            .state
            .days
            .iter()
            .filter(|(_, d)| d.decided)
            .map(|(b, _)| *b)
            .collect();
        let zone = self.settings.zone.clone();
        let track = self.state.meters.get_mut(&r.meter).expect("checked");
        if track.last.as_ref().is_some_and(|l| r.ts_ms <= l.ts_ms) {
            return;
        }
        let snap = Snap {
            ts_ms: r.ts_ms,
            values,
        };
        let mut taken = Vec::new();
        let own = track.own;
        for (&b, p) in track.pending.iter_mut() {
            if r.ts_ms <= b {
                // A read before midnight that reached the engine after midnight was opened.
                if p.after.is_empty() {
                    p.before = Some((snap.clone(), track.last.clone()));
                }
                continue;
            }
            match &p.before {
                Some((before, _)) => {
                    let values = interpolate(before, &snap, b);
                    if own && !decided.contains(&b) {
                        // The meter's own freeze of `b` is read a few minutes after it.
                        if p.held.is_none() {
                            p.held = Some((values, Some(before.ts_ms), Some(r.ts_ms)));
                        }
                        continue;
                    }
                    taken.push((b, values, Some(before.ts_ms)));
                }
                None if p.after.len() < 2 => p.after.push(snap.clone()),
                None => {}
            }
        }
        for (b, values, before_ms) in taken {
            track.pending.remove(&b);
            let late = decided.contains(&b);
            push_freezes(
                &mut self.ready,
                &zone,
                &r.meter,
                b,
                &values,
                FreezeSource::Interpolated,
                before_ms,
                Some(r.ts_ms),
                late,
            );
            track.frozen.insert(b, (FreezeSource::Interpolated, values));
        }
        track.prev = track.last.take();
        track.last = Some(snap);
    }

    /// A freeze the meter itself recorded (DL/T 645 daily-freeze items) for midnight `ts_ms`;
    /// taken unless the meter already has a freeze for that midnight.
    pub fn on_meter_freeze(&mut self, meter: &str, ts_ms: i64, values: BTreeMap<String, f64>) {
        let zone = self.settings.zone.clone();
        let decided = self.state.days.get(&ts_ms).is_some_and(|d| d.decided);
        let Some(track) = self.state.meters.get_mut(meter) else {
            return;
        };
        track.own = true;
        if track.frozen.contains_key(&ts_ms) {
            return;
        }
        track.pending.remove(&ts_ms);
        let values = Values::from(&values);
        push_freezes(
            &mut self.ready,
            &zone,
            meter,
            ts_ms,
            &values,
            FreezeSource::Meter,
            None,
            None,
            decided,
        );
        track.frozen.insert(ts_ms, (FreezeSource::Meter, values));
    }

    /// Opens the midnights up to `now_ms`, decides the days whose decision time has come, and
    /// returns the freezes and decisions since the last tick, in order.
    pub fn on_tick(&mut self, now_ms: i64) -> Vec<FreezeEvent> {
        self.open_midnights(now_ms);
        let after = self.settings.decide_after_s as i64 * 1000;
        let reach = self.settings.max_extrapolate_s as i64 * 1000;
        let zone = self.settings.zone.clone();
        let due: Vec<i64> = self
            .state
            .days
            .iter()
            .filter(|(b, d)| !d.decided && now_ms >= **b + after)
            .map(|(b, _)| *b)
            .collect();
        for b in due {
            let mut frozen = Vec::new();
            let mut missing = Vec::new();
            for (meter, track) in self.state.meters.iter_mut() {
                if track.frozen.contains_key(&b) {
                    frozen.push(meter.clone());
                    continue;
                }
                if let Some((values, before_ms, after_ms)) =
                    track.pending.get(&b).and_then(|p| p.held.clone())
                {
                    // The meter's own freeze did not come: the interpolation it waited for.
                    track.pending.remove(&b);
                    push_freezes(
                        &mut self.ready,
                        &zone,
                        meter,
                        b,
                        &values,
                        FreezeSource::Interpolated,
                        before_ms,
                        after_ms,
                        false,
                    );
                    track.frozen.insert(b, (FreezeSource::Interpolated, values));
                    frozen.push(meter.clone());
                    continue;
                }
                let p = track.pending.get(&b);
                let extrapolated = p.and_then(|p| extrapolate(p, b, reach));
                match extrapolated {
                    Some((values, before_ms, after_ms)) => {
                        track.pending.remove(&b);
                        push_freezes(
                            &mut self.ready,
                            &zone,
                            meter,
                            b,
                            &values,
                            FreezeSource::Extrapolated,
                            before_ms,
                            after_ms,
                            false,
                        );
                        track.frozen.insert(b, (FreezeSource::Extrapolated, values));
                        frozen.push(meter.clone());
                    }
                    None => {
                        // Without a read before midnight no later read can interpolate it.
                        if p.is_some_and(|p| p.before.is_none()) {
                            track.pending.remove(&b);
                        }
                        missing.push(meter.clone());
                    }
                }
            }
            self.state.days.insert(b, DayState { decided: true });
            self.ready.push(FreezeEvent::Decided(FreezeDay {
                ts_ms: b,
                day: zone.day(b),
                frozen,
                missing,
            }));
        }
        self.prune(now_ms);
        std::mem::take(&mut self.ready)
    }

    fn prune(&mut self, now_ms: i64) {
        let oldest = now_ms - KEEP_PENDING_DAYS * DAY_MS;
        for track in self.state.meters.values_mut() {
            track.pending.retain(|b, _| *b >= oldest);
            // An emptied map keeps its node (about 2 kB with a `Pending`'s size) until dropped:
            // a thousand meters held 2 MB of empty nodes from their first midnight on.
            if track.pending.is_empty() {
                track.pending = BTreeMap::new();
            }
            while track.frozen.len() > 3 {
                track.frozen.pop_first();
            }
        }
        self.state
            .days
            .retain(|b, d| !d.decided || *b >= now_ms - 3 * DAY_MS);
    }

    /// The daily loss of `area` over the local day that ends at midnight `end_ms`, from its
    /// meters' daily freezes at the midnight before and at `end_ms` (the loss engine's formula:
    /// supply import + customer export in, customer import + supply export out). A meter
    /// without both freezes is missing and left out; the figure is `complete` only without
    /// missing meters.
    pub fn daily_loss(&self, area: &AreaSpec, end_ms: i64) -> DailyLoss {
        let zone = &self.settings.zone;
        let start_ms = zone.day_start_ms(end_ms - 1);
        let (mut supply, mut sales) = (0.0, 0.0);
        let mut missing = Vec::new();
        let mut extrapolated = Vec::new();
        let mut total = 0usize;
        for (meter, is_supply) in area
            .supply
            .iter()
            .map(|m| (m, true))
            .chain(area.customers.iter().map(|m| (m, false)))
        {
            total += 1;
            let at = |b: i64| self.state.meters.get(meter).and_then(|t| t.frozen.get(&b));
            let (Some((sa, a)), Some((sb, b))) = (at(start_ms), at(end_ms)) else {
                missing.push(meter.clone());
                continue;
            };
            if *sa == FreezeSource::Extrapolated || *sb == FreezeSource::Extrapolated {
                extrapolated.push(meter.clone());
            }
            let delta = |name: &str| match (a.get(name), b.get(name)) {
                (Some(x), Some(y)) => (y - x).max(0.0),
                _ => 0.0,
            };
            let (import, export) = (delta("energy_import_kwh"), delta("energy_export_kwh"));
            if is_supply {
                supply += import;
                sales += export;
            } else {
                supply += export;
                sales += import;
            }
        }
        let loss = supply - sales;
        DailyLoss {
            area: area.id.clone(),
            day: zone.day(start_ms),
            start_ms,
            end_ms,
            supply_kwh: supply,
            sales_kwh: sales,
            loss_kwh: loss,
            loss_pct: (supply > 0.0).then(|| loss / supply * 100.0),
            coverage_pct: if total == 0 {
                0.0
            } else {
                (total - missing.len()) as f64 / total as f64 * 100.0
            },
            complete: missing.is_empty(),
            missing,
            extrapolated,
        }
    }

    /// The midnights a meter still waits for a read after (silent over them), oldest first.
    pub fn waiting(&self, meter: &str) -> Vec<i64> {
        self.state
            .meters
            .get(meter)
            .map(|t| t.pending.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> FreezeSnapshot {
        self.state.clone()
    }

    /// Continues from a snapshot; meters no longer configured are dropped, new ones start
    /// afresh.
    pub fn restore(&mut self, snapshot: FreezeSnapshot) {
        let mut meters = snapshot.meters;
        for (id, track) in self.state.meters.iter_mut() {
            if let Some(saved) = meters.remove(id) {
                *track = saved;
            }
        }
        self.state.days = snapshot.days;
        self.state.next_midnight_ms = snapshot.next_midnight_ms;
    }
}

/// The registers of both reads, each linearly at `b`.
fn interpolate(a: &Snap, b_snap: &Snap, b: i64) -> Values {
    let span = (b_snap.ts_ms - a.ts_ms) as f64;
    let s = if span > 0.0 {
        (b - a.ts_ms) as f64 / span
    } else {
        1.0
    };
    a.values
        .iter()
        .filter_map(|(k, va)| {
            let vb = b_snap.values.get(k)?;
            Some((k, va + (vb - va) * s))
        })
        .collect()
}

/// Registers at a midnight, and the reads before and after it they came from.
type Taken = (Values, Option<i64>, Option<i64>);

/// Values at `b` from one side only, when the nearest read there is within `reach` ms:
/// (values, before_ms, after_ms).
fn extrapolate(p: &Pending, b: i64, reach: i64) -> Option<Taken> {
    if let Some((last, prev)) = &p.before {
        if b - last.ts_ms > reach {
            return None;
        }
        let values = last
            .values
            .iter()
            .map(|(k, v)| {
                let rate = prev
                    .as_ref()
                    .and_then(|pr| rate_kw(pr, last, k))
                    .unwrap_or(0.0);
                (k, v + rate * (b - last.ts_ms) as f64 / HOUR_MS)
            })
            .collect();
        return Some((values, Some(last.ts_ms), None));
    }
    let first = p.after.first()?;
    if first.ts_ms - b > reach {
        return None;
    }
    let second = p.after.get(1);
    let values = first
        .values
        .iter()
        .map(|(k, v)| {
            let rate = second.and_then(|s| rate_kw(first, s, k)).unwrap_or(0.0);
            (k, (v - rate * (first.ts_ms - b) as f64 / HOUR_MS).max(0.0))
        })
        .collect();
    Some((values, None, Some(first.ts_ms)))
}

/// The rate of register `k` between two reads, kW (never negative).
fn rate_kw(a: &Snap, b: &Snap, k: &str) -> Option<f64> {
    let (va, vb) = (a.values.get(k)?, b.values.get(k)?);
    let h = (b.ts_ms - a.ts_ms) as f64 / HOUR_MS;
    (h > 0.0).then(|| ((vb - va) / h).max(0.0))
}

/// The daily freeze at `b`, and the monthly one when `b` starts a month.
#[allow(clippy::too_many_arguments)]
fn push_freezes(
    out: &mut Vec<FreezeEvent>,
    zone: &LocalTime,
    meter: &str,
    b: i64,
    values: &Values,
    source: FreezeSource,
    before_ms: Option<i64>,
    after_ms: Option<i64>,
    late: bool,
) {
    let record = |kind| FreezeRecord {
        meter: meter.to_string(),
        kind,
        ts_ms: b,
        day: zone.day(b),
        month: zone.month(b),
        values: values.to_map(),
        source,
        before_ms,
        after_ms,
        late,
    };
    out.push(FreezeEvent::Freeze(record(FreezeKind::Day)));
    if zone.is_month_start(b) {
        out.push(FreezeEvent::Freeze(record(FreezeKind::Month)));
    }
}

#[cfg(test)]
mod tests;
