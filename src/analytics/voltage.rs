//! Voltage quality (电压合格率): per meter, phase and local day, how long the voltage was
//! monitored, above the upper limit and below the lower limit, the qualification rate and the
//! extremes.
//!
//! How time is counted, between two consecutive reads of a phase at `t0` (voltage `v0`) and
//! `t1`:
//!
//! - the interval `[t0, t1)` is attributed to `v0`, the voltage read at its start (the state
//!   holds until the next read shows otherwise);
//! - an interval longer than `max_gap_s` is not monitored time at all (the gateway did not
//!   see the voltage), nor is the time after the last read;
//! - an interval whose `v0` is below `outage_pct` of nominal is outage time, kept apart and
//!   not monitored (an outage is not a quality fault; it is the area_outage / phase_loss
//!   alarms' business);
//! - an interval crossing local midnight is split between the two days.
//!
//! Days are local days of `[gateway] timezone` ([`crate::clock::LocalTime`]): from local
//! midnight to the next, 23 or 25 hours across a daylight-saving change.
//!
//! qualified_pct = (1 − (above + below) / monitored) × 100, `None` when nothing was monitored.
//!
//! **Months** (月电压合格率): the closed days of a meter's phase add up to its local month;
//! once every day of the month is closed, [`VoltageQuality::take_months`] returns the month's
//! [`MonthRecord`] (with the meter's last day), and once every meter's last day is closed,
//! [`VoltageQuality::take_completed_months`] returns the month of every meter, which
//! [`area_month`] sums by area (all their phases). A phase's months are summed in its series,
//! so they are saved in its meter's part of the snapshot (with the days that made them).
//! min_v and max_v are over the reads of the day, outage reads left out.
//!
//! A day closes `max_gap_s` after its end (no later read can still add to it); [`VoltageQuality::on_tick`]
//! then returns its records, once. [`VoltageQuality::on_tick_at_most`] returns those of a
//! given number of meters a call, the others' at the next calls (their days are closed all the
//! same: nothing is added to them), so that a thousand meters' days do not all go into one
//! transaction. Pure and deterministic like every analytic; the state survives restarts
//! through [`VoltageQuality::snapshot`] and [`VoltageQuality::restore`], which the gateway
//! saves in the transaction that holds the day messages (a restart returns the closed days not
//! yet returned).

use super::band::{BandPosition, VoltageBand};
use crate::clock::LocalTime;
use crate::model::Reading;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const PHASES: [(&str, &str); 3] = [
    ("l1", "voltage_l1_v"),
    ("l2", "voltage_l2_v"),
    ("l3", "voltage_l3_v"),
];

/// `[voltage_quality]` keys, and the voltage band the statistics count against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VoltageQualitySettings {
    /// The band time above / below is counted against. Not a key of `[voltage_quality]`: the
    /// loader fills it from `[alarms.voltage]`, the one source it shares with the voltage
    /// alarms.
    #[serde(skip)]
    pub band: VoltageBand,
    /// Reads further apart than this do not make monitored time. Default 300.
    pub max_gap_s: u64,
    /// Voltages below this share of nominal are outage, not monitored. Default 50 (110 V).
    pub outage_pct: f64,
    /// Whose midnights start the days. Not a key of `[voltage_quality]`: the loader fills it
    /// from `[gateway] timezone`. Default UTC.
    #[serde(skip)]
    pub zone: LocalTime,
}

impl Default for VoltageQualitySettings {
    fn default() -> Self {
        VoltageQualitySettings {
            band: VoltageBand::default(),
            max_gap_s: 300,
            outage_pct: 50.0,
            zone: LocalTime::default(),
        }
    }
}

impl VoltageQualitySettings {
    fn outage_v(&self) -> f64 {
        self.band.share_v(self.outage_pct)
    }
}

/// The figures of one meter, phase and local day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayRecord {
    pub meter: String,
    /// `"l1"`, `"l2"` or `"l3"`.
    pub phase: String,
    /// Start of the local day (local midnight), ms since the Unix epoch.
    pub day_start_ms: i64,
    /// Start of the next local day.
    pub day_end_ms: i64,
    /// The local day, `2026-11-22`.
    pub day: String,
    pub monitored_s: f64,
    pub above_s: f64,
    pub below_s: f64,
    pub outage_s: f64,
    /// (1 − (above + below) / monitored) × 100; `None` when nothing was monitored.
    pub qualified_pct: Option<f64>,
    pub min_v: Option<f64>,
    pub max_v: Option<f64>,
    /// Reads of the day (outage reads included).
    pub reads: u32,
    pub upper_v: f64,
    pub lower_v: f64,
    /// True once the day is over and final; false for [`VoltageQuality::current`].
    pub closed: bool,
}

impl DayRecord {
    /// The local day, `"2026-11-22"`.
    pub fn date(&self) -> String {
        self.day.clone()
    }
}

/// Accumulated figures of one day of one phase (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DayTally {
    pub day_start_ms: i64,
    pub monitored_ms: i64,
    pub above_ms: i64,
    pub below_ms: i64,
    pub outage_ms: i64,
    pub min_v: Option<f64>,
    pub max_v: Option<f64>,
    pub reads: u32,
}

/// One phase of one meter: its last read and its open days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseSeries {
    pub meter: String,
    pub phase: String,
    /// (ts ms, V) of the last read.
    pub last: Option<(i64, f64)>,
    /// Open days, oldest first.
    pub days: Vec<DayTally>,
    /// Months being summed from the closed days, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub months: Vec<PhaseMonth>,
}

/// The closed days of one local month of one phase, summed (milliseconds); kept in its
/// meter's part of the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseMonth {
    pub month_start_ms: i64,
    pub monitored_ms: i64,
    pub above_ms: i64,
    pub below_ms: i64,
    pub outage_ms: i64,
    pub min_v: Option<f64>,
    pub max_v: Option<f64>,
    /// Days with at least one read.
    pub days: u32,
    /// Its record went out (every day of the month is closed); it stays until every meter's
    /// last day of the month is closed, for the areas' sums.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sent: bool,
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VoltageSnapshot {
    pub series: Vec<PhaseSeries>,
    /// Days starting before this are closed and published; nothing is added to them again.
    pub closed_before_ms: i64,
    /// Months being summed from closed days, as builds before 2026-11-30 kept them (this one
    /// keeps them in the series, [`PhaseSeries::months`], and writes this empty).
    #[serde(default)]
    pub months: Vec<MonthTally>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The closed days of one local month of one phase, summed (milliseconds), as the snapshot's
/// rest held them before 2026-11-30.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthTally {
    pub meter: String,
    pub phase: String,
    /// The same fields as a phase's month now (`sent` absent: not sent).
    #[serde(flatten)]
    pub month: PhaseMonth,
}

/// The figures of one meter, phase and local month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthRecord {
    pub meter: String,
    pub phase: String,
    /// The local month, `2026-11`.
    pub month: String,
    /// Its local midnights (the 1st and the next 1st), ms since the epoch.
    pub start_ms: i64,
    pub end_ms: i64,
    pub monitored_s: f64,
    pub above_s: f64,
    pub below_s: f64,
    pub outage_s: f64,
    /// (1 − (above + below) / monitored) × 100; `None` when nothing was monitored.
    pub qualified_pct: Option<f64>,
    pub min_v: Option<f64>,
    pub max_v: Option<f64>,
    pub days: u32,
    pub upper_v: f64,
    pub lower_v: f64,
}

/// One area's month: the months of its meters, every phase, summed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AreaMonth {
    pub area: String,
    pub month: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub monitored_s: f64,
    pub above_s: f64,
    pub below_s: f64,
    pub qualified_pct: Option<f64>,
    /// Meters with figures for the month.
    pub meters: usize,
}

/// The month of `area` from the months of its `meters` among `months` (one month's records);
/// `None` when none of its meters has one.
pub fn area_month(area: &str, meters: &[String], months: &[MonthRecord]) -> Option<AreaMonth> {
    let mine: Vec<&MonthRecord> = months
        .iter()
        .filter(|m| meters.contains(&m.meter))
        .collect();
    let first = mine.first()?;
    let sum = |f: fn(&MonthRecord) -> f64| mine.iter().map(|m| f(m)).sum::<f64>();
    let (monitored, above, below) = (
        sum(|m| m.monitored_s),
        sum(|m| m.above_s),
        sum(|m| m.below_s),
    );
    let mut ids: Vec<&str> = mine.iter().map(|m| m.meter.as_str()).collect();
    ids.dedup();
    Some(AreaMonth {
        area: area.to_string(),
        month: first.month.clone(),
        start_ms: first.start_ms,
        end_ms: first.end_ms,
        monitored_s: monitored,
        above_s: above,
        below_s: below,
        qualified_pct: (monitored > 0.0).then(|| (1.0 - (above + below) / monitored) * 100.0),
        meters: ids.len(),
    })
}

/// One phase of one meter as the engine holds it: a [`PhaseSeries`] without the names (the
/// meter is the key of [`VoltageQuality`]'s map, the phase the index into [`PHASES`]).
#[derive(Debug, Clone, Default)]
struct Held {
    last: Option<(i64, f64)>,
    days: Vec<HeldDay>,
    /// Months being summed, oldest first (one most of the time).
    months: Vec<HeldMonth>,
}

/// A [`PhaseMonth`] as the engine holds it (a missing extreme as NaN).
#[derive(Debug, Clone, Copy)]
struct HeldMonth {
    month_start_ms: i64,
    monitored_ms: i64,
    above_ms: i64,
    below_ms: i64,
    outage_ms: i64,
    min_v: f64,
    max_v: f64,
    days: u32,
    sent: bool,
}

impl From<&PhaseMonth> for HeldMonth {
    fn from(m: &PhaseMonth) -> HeldMonth {
        HeldMonth {
            month_start_ms: m.month_start_ms,
            monitored_ms: m.monitored_ms,
            above_ms: m.above_ms,
            below_ms: m.below_ms,
            outage_ms: m.outage_ms,
            min_v: m.min_v.unwrap_or(f64::NAN),
            max_v: m.max_v.unwrap_or(f64::NAN),
            days: m.days,
            sent: m.sent,
        }
    }
}

impl From<&HeldMonth> for PhaseMonth {
    fn from(m: &HeldMonth) -> PhaseMonth {
        PhaseMonth {
            month_start_ms: m.month_start_ms,
            monitored_ms: m.monitored_ms,
            above_ms: m.above_ms,
            below_ms: m.below_ms,
            outage_ms: m.outage_ms,
            min_v: (!m.min_v.is_nan()).then_some(m.min_v),
            max_v: (!m.max_v.is_nan()).then_some(m.max_v),
            days: m.days,
            sent: m.sent,
        }
    }
}

impl HeldMonth {
    /// Adds a closed day.
    fn add(&mut self, d: &HeldDay) {
        self.monitored_ms += i64::from(d.monitored_ms);
        self.above_ms += i64::from(d.above_ms);
        self.below_ms += i64::from(d.below_ms);
        self.outage_ms += i64::from(d.outage_ms);
        // NaN (none yet) gives way.
        self.min_v = self.min_v.min(d.min_v);
        self.max_v = self.max_v.max(d.max_v);
        if d.reads > 0 {
            self.days += 1;
        }
    }
}

/// A [`DayTally`] as the engine holds it: the times as u32 ms (a local day is at most 25
/// hours, 9.0e7 ms, and a phase's reads never overlap) and a missing extreme as NaN (a
/// voltage read is finite): 48 bytes rather than 72, three a meter.
#[derive(Debug, Clone, Copy)]
struct HeldDay {
    day_start_ms: i64,
    min_v: f64,
    max_v: f64,
    monitored_ms: u32,
    above_ms: u32,
    below_ms: u32,
    outage_ms: u32,
    reads: u32,
}

/// Milliseconds of one day as held (never more than a day; clamped all the same).
fn day_ms(ms: i64) -> u32 {
    ms.clamp(0, i64::from(u32::MAX)) as u32
}

impl From<&DayTally> for HeldDay {
    fn from(d: &DayTally) -> HeldDay {
        HeldDay {
            day_start_ms: d.day_start_ms,
            min_v: d.min_v.unwrap_or(f64::NAN),
            max_v: d.max_v.unwrap_or(f64::NAN),
            monitored_ms: day_ms(d.monitored_ms),
            above_ms: day_ms(d.above_ms),
            below_ms: day_ms(d.below_ms),
            outage_ms: day_ms(d.outage_ms),
            reads: d.reads,
        }
    }
}

impl From<&HeldDay> for DayTally {
    fn from(d: &HeldDay) -> DayTally {
        DayTally {
            day_start_ms: d.day_start_ms,
            monitored_ms: i64::from(d.monitored_ms),
            above_ms: i64::from(d.above_ms),
            below_ms: i64::from(d.below_ms),
            outage_ms: i64::from(d.outage_ms),
            min_v: (!d.min_v.is_nan()).then_some(d.min_v),
            max_v: (!d.max_v.is_nan()).then_some(d.max_v),
            reads: d.reads,
        }
    }
}

/// The snapshot's series of one meter: each phase it holds.
fn phase_series<'a>(
    meter: &'a str,
    phases: &'a [Option<Held>; 3],
) -> impl Iterator<Item = PhaseSeries> + 'a {
    PHASES
        .iter()
        .zip(phases)
        .filter_map(move |((phase, _), held)| {
            let h = held.as_ref()?;
            Some(PhaseSeries {
                meter: meter.to_string(),
                phase: phase.to_string(),
                last: h.last,
                days: h.days.iter().map(DayTally::from).collect(),
                months: h.months.iter().map(PhaseMonth::from).collect(),
            })
        })
}

impl super::MeterParts for VoltageQuality {
    type Snapshot = VoltageSnapshot;
    fn snapshot_rest(&self) -> VoltageSnapshot {
        VoltageSnapshot {
            series: Vec::new(),
            closed_before_ms: self.closed_before_ms,
            months: Vec::new(),
        }
    }
    fn part_meters(&self) -> Vec<&str> {
        self.series
            .iter()
            .filter(|(_, phases)| phases.iter().any(Option::is_some))
            .map(|(meter, _)| meter.as_str())
            .collect()
    }
    fn part_json(&self, meter: &str) -> Option<String> {
        let (meter, phases) = self.series.get_key_value(meter)?;
        let series: Vec<PhaseSeries> = phase_series(meter, phases).collect();
        (!series.is_empty()).then(|| super::part_json(&series))
    }
}

/// Voltage quality statistics of every meter and phase.
#[derive(Debug, Clone)]
pub struct VoltageQuality {
    settings: VoltageQualitySettings,
    /// By meter, its phases in the order of [`PHASES`] (the order of the phase names).
    series: BTreeMap<String, [Option<Held>; 3]>,
    /// How many meters `series` held when last rebuilt (see [`super::pack`]).
    packed: usize,
    closed_before_ms: i64,
    /// Some meters may still hold days before `closed_before_ms` (see
    /// [`VoltageQuality::on_tick_at_most`]); true after a restore until a tick finds none.
    closing: bool,
    ready_months: Vec<MonthRecord>,
    completed_months: Vec<MonthRecord>,
}

impl VoltageQuality {
    pub fn new(settings: VoltageQualitySettings) -> VoltageQuality {
        VoltageQuality {
            settings,
            series: BTreeMap::new(),
            packed: 0,
            closed_before_ms: i64::MIN,
            closing: false,
            ready_months: Vec::new(),
            completed_months: Vec::new(),
        }
    }

    pub fn settings(&self) -> &VoltageQualitySettings {
        &self.settings
    }

    /// Books the phase voltages of one reading. Reads not newer than the phase's last read
    /// are ignored; time falling in an already closed day is dropped.
    pub fn on_reading(&mut self, r: &Reading) {
        let volts = PHASES.map(|(_, name)| r.values.get(name).copied().filter(|v| v.is_finite()));
        if volts.iter().all(Option::is_none) {
            return;
        }
        let s = &self.settings;
        let closed_before = self.closed_before_ms;
        if !self.series.contains_key(&r.meter) {
            self.series.insert(r.meter.clone(), Default::default());
        }
        let phases = self.series.get_mut(&r.meter).expect("inserted");
        for (held, v) in phases.iter_mut().zip(volts) {
            let Some(v) = v else {
                continue;
            };
            let series = held.get_or_insert_default();
            if let Some((t0, v0)) = series.last {
                if r.ts_ms <= t0 {
                    continue;
                }
                if r.ts_ms - t0 <= s.max_gap_s as i64 * 1000 {
                    book_interval(series, s, t0, r.ts_ms, v0, closed_before);
                }
            }
            series.last = Some((r.ts_ms, v));
            let day = s.zone.day_start_ms(r.ts_ms);
            if day >= closed_before {
                let tally = tally_for(series, day);
                tally.reads += 1;
                if v >= s.outage_v() {
                    // NaN (none yet) gives way to `v`.
                    tally.min_v = tally.min_v.min(v);
                    tally.max_v = tally.max_v.max(v);
                }
            }
        }
    }

    /// Closes every day that ended at least `max_gap_s` before `now_ms` and returns its
    /// records (ordered by meter, phase, day). Each day is returned once.
    pub fn on_tick(&mut self, now_ms: i64) -> Vec<DayRecord> {
        self.on_tick_at_most(now_ms, usize::MAX)
    }

    /// [`VoltageQuality::on_tick`], returning the closed days of at most `meters` meters (by
    /// meter id); the other meters' closed days are returned by the next calls, before any
    /// later day. A meter's months are complete with its last day; every meter's, for
    /// [`VoltageQuality::take_completed_months`], once the call returned the last meter's.
    pub fn on_tick_at_most(&mut self, now_ms: i64, meters: usize) -> Vec<DayRecord> {
        super::pack(&mut self.series, &mut self.packed);
        let grace = self.settings.max_gap_s as i64 * 1000;
        // Day d closes when d + DAY + grace <= now, i.e. when d < day_start(now - grace).
        let closable_before = self.settings.zone.day_start_ms(now_ms - grace);
        if closable_before > self.closed_before_ms {
            self.closed_before_ms = closable_before;
            self.closing = true;
        }
        if !self.closing {
            return Vec::new();
        }
        let closed_before = self.closed_before_ms;
        let zone = &self.settings.zone;
        let complete = |m: &HeldMonth| zone.next_month_start_ms(m.month_start_ms) <= closed_before;
        let mut out = Vec::new();
        let mut drained = 0;
        let mut more = false;
        for (meter, phases) in self.series.iter_mut() {
            let holds_closed = phases.iter().flatten().any(|s| {
                s.days
                    .first()
                    .is_some_and(|d| d.day_start_ms < closed_before)
            });
            if holds_closed {
                if drained == meters {
                    more = true;
                    continue;
                }
                drained += 1;
            }
            for ((phase, _), held) in PHASES.iter().zip(phases.iter_mut()) {
                let Some(series) = held else {
                    continue;
                };
                // The days are in order: the closed ones first.
                let n = series
                    .days
                    .partition_point(|d| d.day_start_ms < closed_before);
                if n > 0 {
                    for d in series.days.drain(..n) {
                        out.push(record(meter, phase, &(&d).into(), &self.settings, true));
                        add_to_month(&mut series.months, zone, &d);
                    }
                    series.days.shrink_to_fit();
                    // The phase's months are complete with its last day.
                    for m in series.months.iter_mut().filter(|m| !m.sent && complete(m)) {
                        m.sent = true;
                        self.ready_months
                            .push(month_record(meter, phase, m, &self.settings));
                    }
                }
                // Forget phases that have neither open days and months nor a recent read.
                if series.days.is_empty()
                    && series.months.is_empty()
                    && series.last.is_none_or(|(t, _)| now_ms - t > grace)
                {
                    *held = None;
                }
            }
        }
        if !more {
            // Every meter's last day of the complete months is closed: those of phases that
            // had no day to close (a silent meter) go out now, and every one is summed by
            // area.
            self.closing = false;
            for (meter, phases) in self.series.iter_mut() {
                for ((phase, _), held) in PHASES.iter().zip(phases.iter_mut()) {
                    let Some(series) = held else {
                        continue;
                    };
                    for m in series.months.iter().filter(|m| complete(m)) {
                        let r = month_record(meter, phase, m, &self.settings);
                        if !m.sent {
                            self.ready_months.push(r.clone());
                        }
                        self.completed_months.push(r);
                    }
                    series.months.retain(|m| !complete(m));
                    if series.days.is_empty()
                        && series.months.is_empty()
                        && series.last.is_none_or(|(t, _)| now_ms - t > grace)
                    {
                        *held = None;
                    }
                }
            }
        }
        self.series
            .retain(|_, phases| phases.iter().any(Option::is_some));
        out
    }

    /// The months completed since the last call (every day of them closed), by meter, phase.
    pub fn take_months(&mut self) -> Vec<MonthRecord> {
        let mut out = std::mem::take(&mut self.ready_months);
        out.sort_by(|a, b| (&a.meter, &a.phase).cmp(&(&b.meter, &b.phase)));
        out
    }

    /// Every meter's months completed since the last call, once the last meter's last day of
    /// them closed (their records went out by [`VoltageQuality::take_months`] before or with
    /// it): what [`area_month`] sums. By meter, phase.
    pub fn take_completed_months(&mut self) -> Vec<MonthRecord> {
        let mut out = std::mem::take(&mut self.completed_months);
        out.sort_by(|a, b| (&a.meter, &a.phase).cmp(&(&b.meter, &b.phase)));
        out
    }

    /// The figures so far of the meter's open days (for `status`), by phase then day.
    pub fn current(&self, meter: &str) -> Vec<DayRecord> {
        let Some(phases) = self.series.get(meter) else {
            return Vec::new();
        };
        PHASES
            .iter()
            .zip(phases)
            .filter_map(|((phase, _), held)| Some((phase, held.as_ref()?)))
            .flat_map(|(phase, s)| {
                s.days
                    .iter()
                    .map(|d| record(meter, phase, &d.into(), &self.settings, false))
            })
            .collect()
    }

    pub fn snapshot(&self) -> VoltageSnapshot {
        VoltageSnapshot {
            series: self
                .series
                .iter()
                .flat_map(|(meter, phases)| phase_series(meter, phases))
                .collect(),
            ..super::MeterParts::snapshot_rest(self)
        }
    }

    pub fn restore(&mut self, snapshot: VoltageSnapshot) {
        self.closed_before_ms = snapshot.closed_before_ms;
        // Closed days not yet returned before the stop are returned by the next tick.
        self.closing = true;
        self.series.clear();
        for s in snapshot.series {
            // Only the phases of [`PHASES`] were ever written.
            let Some(i) = PHASES.iter().position(|(p, _)| *p == s.phase) else {
                continue;
            };
            let phases = self.series.entry(s.meter).or_default();
            phases[i] = Some(Held {
                last: s.last,
                days: s.days.iter().map(HeldDay::from).collect(),
                months: s.months.iter().map(HeldMonth::from).collect(),
            });
        }
        // Months a build before 2026-11-30 kept apart.
        for m in snapshot.months {
            let Some(i) = PHASES.iter().position(|(p, _)| *p == m.phase) else {
                continue;
            };
            let phases = self.series.entry(m.meter.clone()).or_default();
            let held = phases[i].get_or_insert_default();
            held.months.push(HeldMonth::from(&m.month));
            held.months.sort_by_key(|m| m.month_start_ms);
        }
    }
}

/// Attributes `[t0, t1)` at voltage `v0`, split at local midnights.
fn book_interval(
    series: &mut Held,
    s: &VoltageQualitySettings,
    t0: i64,
    t1: i64,
    v0: f64,
    closed_before: i64,
) {
    let mut start = t0;
    while start < t1 {
        let day = s.zone.day_start_ms(start);
        let end = t1.min(s.zone.next_day_start_ms(start));
        if day >= closed_before {
            let span = end - start;
            let tally = tally_for(series, day);
            let span = day_ms(span);
            if v0 < s.outage_v() {
                tally.outage_ms = tally.outage_ms.saturating_add(span);
            } else {
                tally.monitored_ms = tally.monitored_ms.saturating_add(span);
                match s.band.position(v0) {
                    BandPosition::Above => tally.above_ms = tally.above_ms.saturating_add(span),
                    BandPosition::Below => tally.below_ms = tally.below_ms.saturating_add(span),
                    BandPosition::Within => {}
                }
            }
        }
        start = end;
    }
}

fn tally_for(series: &mut Held, day: i64) -> &mut HeldDay {
    let i = match series.days.binary_search_by_key(&day, |d| d.day_start_ms) {
        Ok(i) => i,
        Err(i) => {
            // One day open most of the time: no room for four.
            series.days.reserve_exact(1);
            series.days.insert(
                i,
                HeldDay {
                    day_start_ms: day,
                    min_v: f64::NAN,
                    max_v: f64::NAN,
                    monitored_ms: 0,
                    above_ms: 0,
                    below_ms: 0,
                    outage_ms: 0,
                    reads: 0,
                },
            );
            i
        }
    };
    &mut series.days[i]
}

/// Adds a closed day to its month among `months` (oldest first).
fn add_to_month(months: &mut Vec<HeldMonth>, zone: &LocalTime, d: &HeldDay) {
    let month_start_ms = zone.month_start_ms(d.day_start_ms);
    let i = match months.binary_search_by_key(&month_start_ms, |m| m.month_start_ms) {
        Ok(i) => i,
        Err(i) => {
            months.reserve_exact(1);
            months.insert(
                i,
                HeldMonth {
                    month_start_ms,
                    monitored_ms: 0,
                    above_ms: 0,
                    below_ms: 0,
                    outage_ms: 0,
                    min_v: f64::NAN,
                    max_v: f64::NAN,
                    days: 0,
                    sent: false,
                },
            );
            i
        }
    };
    months[i].add(d);
}

/// The record of a phase's month.
fn month_record(
    meter: &str,
    phase: &str,
    m: &HeldMonth,
    s: &VoltageQualitySettings,
) -> MonthRecord {
    let zone = &s.zone;
    MonthRecord {
        meter: meter.to_string(),
        phase: phase.to_string(),
        month: zone.month(m.month_start_ms),
        start_ms: m.month_start_ms,
        end_ms: zone.next_month_start_ms(m.month_start_ms),
        monitored_s: m.monitored_ms as f64 / 1000.0,
        above_s: m.above_ms as f64 / 1000.0,
        below_s: m.below_ms as f64 / 1000.0,
        outage_s: m.outage_ms as f64 / 1000.0,
        qualified_pct: (m.monitored_ms > 0)
            .then(|| (1.0 - (m.above_ms + m.below_ms) as f64 / m.monitored_ms as f64) * 100.0),
        min_v: (!m.min_v.is_nan()).then_some(m.min_v),
        max_v: (!m.max_v.is_nan()).then_some(m.max_v),
        days: m.days,
        upper_v: s.band.upper_v(),
        lower_v: s.band.lower_v(),
    }
}

fn record(
    meter: &str,
    phase: &str,
    d: &DayTally,
    s: &VoltageQualitySettings,
    closed: bool,
) -> DayRecord {
    let qualified_pct = (d.monitored_ms > 0)
        .then(|| (1.0 - (d.above_ms + d.below_ms) as f64 / d.monitored_ms as f64) * 100.0);
    DayRecord {
        meter: meter.to_string(),
        phase: phase.to_string(),
        day_start_ms: d.day_start_ms,
        day_end_ms: s.zone.next_day_start_ms(d.day_start_ms),
        day: s.zone.day(d.day_start_ms),
        monitored_s: d.monitored_ms as f64 / 1000.0,
        above_s: d.above_ms as f64 / 1000.0,
        below_s: d.below_ms as f64 / 1000.0,
        outage_s: d.outage_ms as f64 / 1000.0,
        qualified_pct,
        min_v: d.min_v,
        max_v: d.max_v,
        reads: d.reads,
        upper_v: s.band.upper_v(),
        lower_v: s.band.lower_v(),
        closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{day_start_ms, parse_rfc3339, rfc3339_ms};
    use crate::uplink::contract::{Topics, voltage_day_message};

    const MIN: i64 = 60_000;
    const DAY_MS: i64 = 86_400_000;

    fn in_zone(name: &str) -> VoltageQualitySettings {
        VoltageQualitySettings {
            zone: LocalTime::named(name).unwrap(),
            ..VoltageQualitySettings::default()
        }
    }

    #[test]
    fn a_snapshot_of_named_series_loads_and_writes_the_same() {
        // As the build holding a series per (meter, phase) wrote it: m1 with l1 and l3, m2
        // with l2 only.
        let day = |v: f64| {
            format!(
                r#"[{{"day_start_ms":1795363200000,"monitored_ms":600000,"above_ms":0,"below_ms":60000,"outage_ms":0,"min_v":{v},"max_v":231.5,"reads":11}}]"#
            )
        };
        let old = format!(
            r#"{{"series":[{{"meter":"m1","phase":"l1","last":[1795363800000,230.5],"days":{}}},{{"meter":"m1","phase":"l3","last":[1795363800000,229.0],"days":{}}},{{"meter":"m2","phase":"l2","last":null,"days":{}}}],"closed_before_ms":1795276800000,"months":[]}}"#,
            day(195.5),
            day(199.25),
            day(210.5)
        );
        let snap: VoltageSnapshot = serde_json::from_str(&old).unwrap();
        let mut q = VoltageQuality::new(in_zone("Asia/Shanghai"));
        q.restore(snap);
        assert_eq!(serde_json::to_string(&q.snapshot()).unwrap(), old);
        let now = q.current("m1");
        let phases: Vec<&str> = now.iter().map(|d| d.phase.as_str()).collect();
        assert_eq!(phases, ["l1", "l3"]);
        assert_eq!(now[1].min_v, Some(199.25));
        assert_eq!(q.current("m2")[0].phase, "l2");
        assert!(q.current("m3").is_empty());
    }

    #[test]
    fn days_are_local_days_in_shanghai() {
        // Local midnight 2026-11-23 in Shanghai is 16:00 UTC the day before.
        let m = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
        let mut q = VoltageQuality::new(in_zone("Asia/Shanghai"));
        for t in [-4, -2, 0, 2, 4] {
            read(&mut q, m + t * MIN, 240.0);
        }
        let days = q.on_tick(m + DAY_MS + 10 * MIN);
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].day, "2026-11-22");
        assert_eq!(days[0].day_end_ms, m);
        assert_eq!(days[0].above_s, 240.0);
        assert_eq!(days[1].day, "2026-11-23");
        assert_eq!(days[1].day_start_ms, m);
        assert_eq!(days[1].above_s, 240.0);
        let p = voltage_day_message(&Topics::new("amr", "gw1"), &days[1]).payload;
        assert_eq!(p["day"], "2026-11-23");
        assert_eq!(p["start"], "2026-11-22T16:00:00.000Z");
        assert_eq!(p["end"], "2026-11-23T16:00:00.000Z");
    }

    #[test]
    fn a_month_in_shanghai_sums_its_closed_days_and_areas_sum_their_meters() {
        // February 2026, local: 2026-01-31T16:00Z .. 2026-02-28T16:00Z, 28 days.
        let start = parse_rfc3339("2026-01-31T16:00:00Z").unwrap();
        let end = parse_rfc3339("2026-02-28T16:00:00Z").unwrap();
        let mut q = VoltageQuality::new(in_zone("Asia/Shanghai"));
        let mut months = Vec::new();
        let mut t = start - 8 * MIN;
        while t <= end + 8 * MIN {
            // Two hours above the band on the 1st, for m1 only.
            let v = if t >= start && t < start + 120 * MIN {
                240.0
            } else {
                230.0
            };
            read(&mut q, t, v);
            q.on_reading(&Reading {
                meter: "m2".into(),
                ts_ms: t,
                values: [("voltage_l1_v".to_string(), 230.0)].into_iter().collect(),
            });
            q.on_tick(t);
            let done = q.take_months();
            assert!(
                t >= end + 5 * MIN || done.iter().all(|m| m.month != "2026-02"),
                "not before its last day closed"
            );
            months.extend(done);
            t += 4 * MIN;
        }
        q.on_tick(end + 10 * MIN);
        months.extend(q.take_months());
        let feb: Vec<&MonthRecord> = months.iter().filter(|m| m.month == "2026-02").collect();
        assert_eq!(feb.len(), 2, "{months:?}");
        let m1 = feb.iter().find(|m| m.meter == "m1").unwrap();
        assert_eq!((m1.start_ms, m1.end_ms), (start, end));
        assert_eq!(m1.monitored_s, 28.0 * 86_400.0);
        assert_eq!(m1.above_s, 7_200.0);
        assert_eq!(m1.days, 28);
        let want = (1.0 - 7_200.0 / (28.0 * 86_400.0)) * 100.0;
        assert!((m1.qualified_pct.unwrap() - want).abs() < 1e-9);
        assert_eq!((m1.min_v, m1.max_v), (Some(230.0), Some(240.0)));
        let owned: Vec<MonthRecord> = feb.iter().map(|m| (*m).clone()).collect();
        let a = area_month("T1", &["m1".to_string(), "m2".to_string()], &owned).unwrap();
        assert_eq!((a.meters, a.month.as_str()), (2, "2026-02"));
        assert_eq!(a.monitored_s, 2.0 * 28.0 * 86_400.0);
        let want = (1.0 - 7_200.0 / (2.0 * 28.0 * 86_400.0)) * 100.0;
        assert!((a.qualified_pct.unwrap() - want).abs() < 1e-9);
        assert!(area_month("T2", &["x".to_string()], &owned).is_none());
        assert!(q.take_months().is_empty(), "each month once");
    }

    #[test]
    fn a_berlin_day_across_the_autumn_change_has_25_hours() {
        // 2026-10-25 in Berlin: 22:00 UTC on the 24th to 23:00 UTC on the 25th.
        let start = parse_rfc3339("2026-10-24T22:00:00Z").unwrap();
        let end = parse_rfc3339("2026-10-25T23:00:00Z").unwrap();
        let mut q = VoltageQuality::new(in_zone("Europe/Berlin"));
        let mut t = start - 2 * MIN;
        while t <= end + 2 * MIN {
            read(&mut q, t, 230.0);
            t += 4 * MIN;
        }
        let days = q.on_tick(end + 10 * MIN);
        let d = days.iter().find(|d| d.day == "2026-10-25").unwrap();
        assert_eq!((d.day_start_ms, d.day_end_ms), (start, end));
        assert_eq!(d.monitored_s, 25.0 * 3600.0);
        let p = voltage_day_message(&Topics::new("amr", "gw1"), d).payload;
        assert_eq!(p["start"], "2026-10-24T22:00:00.000Z");
        assert_eq!(p["end"], "2026-10-25T23:00:00.000Z");
    }

    /// A few meters' days a call, the others' at the next calls (across a restart), each
    /// meter's month with its last day, every meter's once the last meter's day closed: the
    /// same days and months as all at once.
    #[test]
    fn days_close_a_few_meters_a_call_and_the_months_with_them() {
        // 2026-03-01T00:00Z ends February.
        let m = parse_rfc3339("2026-03-01T00:00:00Z").unwrap();
        let ids = ["a", "b", "c", "d", "e"];
        let feed = |q: &mut VoltageQuality| {
            for t in -10..=3 {
                for (i, id) in ids.iter().enumerate() {
                    q.on_reading(&Reading {
                        meter: id.to_string(),
                        ts_ms: m + t * MIN,
                        values: [("voltage_l1_v".to_string(), 225.0 + i as f64)]
                            .into_iter()
                            .collect(),
                    });
                }
            }
        };
        let meters =
            |days: &[DayRecord]| -> Vec<String> { days.iter().map(|d| d.meter.clone()).collect() };
        let month_meters = |months: &[MonthRecord]| -> Vec<String> {
            months.iter().map(|m| m.meter.clone()).collect()
        };
        let mut whole = VoltageQuality::new(VoltageQualitySettings::default());
        feed(&mut whole);
        let want_days = whole.on_tick(m + 6 * MIN);
        let want_months = whole.take_months();
        assert_eq!(meters(&want_days), ids);
        assert_eq!(whole.take_completed_months(), want_months);

        let mut q = VoltageQuality::new(VoltageQualitySettings::default());
        feed(&mut q);
        assert!(
            q.on_tick_at_most(m + 4 * MIN, 2).is_empty(),
            "not before 00:05"
        );
        let mut days = q.on_tick_at_most(m + 6 * MIN, 2);
        assert_eq!(meters(&days), ["a", "b"]);
        let mut months = q.take_months();
        assert_eq!(month_meters(&months), ["a", "b"]);
        assert!(q.take_completed_months().is_empty());
        // A restart: the meters whose days wait keep them in the snapshot.
        let mut r = VoltageQuality::new(VoltageQualitySettings::default());
        r.restore(q.snapshot());
        let more = r.on_tick_at_most(m + 6 * MIN + 1_000, 2);
        assert_eq!(meters(&more), ["c", "d"]);
        days.extend(more);
        let more = r.take_months();
        assert_eq!(month_meters(&more), ["c", "d"]);
        months.extend(more);
        assert!(r.take_completed_months().is_empty());
        days.extend(r.on_tick_at_most(m + 6 * MIN + 2_000, 2));
        months.extend(r.take_months());
        assert_eq!(days, want_days);
        assert_eq!(months, want_months);
        assert_eq!(
            r.take_completed_months(),
            want_months,
            "every meter's, once"
        );
        assert!(r.on_tick_at_most(m + 6 * MIN + 3_000, 2).is_empty());
        assert!(r.take_months().is_empty() && r.take_completed_months().is_empty());
        assert_eq!(r.current("e").len(), 1, "March is open");
    }

    /// A month a build before 2026-11-30 kept in the snapshot's rest is read into its phase's
    /// series, and goes out at the month's end even for a meter that no longer reads.
    #[test]
    fn months_kept_apart_by_an_older_build_are_read_into_their_phases() {
        let feb = parse_rfc3339("2026-02-01T00:00:00Z").unwrap();
        let mar = parse_rfc3339("2026-03-01T00:00:00Z").unwrap();
        let old = format!(
            r#"{{"series":[],"closed_before_ms":{},"months":[{{"meter":"m9","phase":"l2","month_start_ms":{feb},"monitored_ms":86400000,"above_ms":3600000,"below_ms":0,"outage_ms":0,"min_v":200.0,"max_v":240.0,"days":27}}]}}"#,
            mar - DAY_MS
        );
        let mut q = VoltageQuality::new(VoltageQualitySettings::default());
        q.restore(serde_json::from_str(&old).unwrap());
        let snap = q.snapshot();
        assert!(snap.months.is_empty(), "written in the series now");
        assert_eq!((snap.series.len(), snap.series[0].months.len()), (1, 1));
        assert_eq!(
            (snap.series[0].meter.as_str(), snap.series[0].phase.as_str()),
            ("m9", "l2")
        );
        assert!(q.on_tick(mar + 6 * MIN).is_empty(), "no day to close");
        let months = q.take_months();
        assert_eq!(months.len(), 1);
        let m = &months[0];
        assert_eq!(
            (m.meter.as_str(), m.phase.as_str(), m.month.as_str()),
            ("m9", "l2", "2026-02")
        );
        assert_eq!((m.monitored_s, m.above_s, m.days), (86_400.0, 3_600.0, 27));
        assert_eq!((m.min_v, m.max_v), (Some(200.0), Some(240.0)));
        assert_eq!(q.take_completed_months(), months);
        assert!(q.snapshot().series.is_empty(), "nothing is left of m9");
    }

    fn read(q: &mut VoltageQuality, ts_ms: i64, v: f64) {
        q.on_reading(&Reading {
            meter: "m1".into(),
            ts_ms,
            values: [("voltage_l1_v".to_string(), v)].into_iter().collect(),
        });
    }

    /// The profile, around midnight M between day 0 and day 1 (limits 198 .. 235.4 V,
    /// outage below 110 V, max gap 300 s):
    ///
    /// | read at | V | interval it starts | counts as |
    /// |---|---|---|---|
    /// | M−10 min | 230 | 120 s | day 0 monitored |
    /// | M−8 min | 240 | 180 s | day 0 above |
    /// | M−5 min | 195 | 180 s | day 0 below |
    /// | M−2 min | 220 | 180 s, split | day 0 120 s, day 1 60 s monitored |
    /// | M+1 min | 225 | 19 min | gap: nothing |
    /// | M+20 min | 230 | 120 s | day 1 monitored |
    /// | M+22 min | 100 | 120 s | day 1 outage |
    /// | M+24 min | 230 | — | (last read) |
    ///
    /// Day 0: monitored 600 s, above 180, below 180 → (1 − 360/600) × 100 = 40 %; min 195,
    /// max 240, 4 reads. Day 1: monitored 180 s, outage 120 s, 100 %; min 225 (the outage
    /// read left out), max 230, 4 reads.
    #[test]
    fn figures_match_a_hand_computed_profile_with_a_gap_and_a_midnight() {
        let m = day_start_ms(1_795_000_000_000) + DAY_MS;
        let mut q = VoltageQuality::new(VoltageQualitySettings::default());
        for (t, v) in [
            (-10, 230.0),
            (-8, 240.0),
            (-5, 195.0),
            (-2, 220.0),
            (1, 225.0),
        ] {
            read(&mut q, m + t * MIN, v);
        }
        // Day 0 is not closed before M + max_gap: a read could still add to it.
        assert!(q.on_tick(m + 4 * MIN).is_empty());
        let open = q.current("m1");
        assert_eq!(open.len(), 2);
        assert!(!open[0].closed);

        let day0 = q.on_tick(m + 5 * MIN);
        assert_eq!(day0.len(), 1);
        let d = &day0[0];
        assert_eq!((d.meter.as_str(), d.phase.as_str()), ("m1", "l1"));
        assert_eq!(d.day_start_ms, m - DAY_MS);
        assert_eq!(d.monitored_s, 600.0);
        assert_eq!(d.above_s, 180.0);
        assert_eq!(d.below_s, 180.0);
        assert_eq!(d.outage_s, 0.0);
        assert!((d.qualified_pct.unwrap() - 40.0).abs() < 1e-9);
        assert_eq!((d.min_v, d.max_v, d.reads), (Some(195.0), Some(240.0), 4));
        assert!(d.closed);
        assert!(q.on_tick(m + 6 * MIN).is_empty(), "each day once");

        // A restart in the middle of day 1.
        let saved = serde_json::to_string(&q.snapshot()).unwrap();
        let mut q = VoltageQuality::new(VoltageQualitySettings::default());
        q.restore(serde_json::from_str(&saved).unwrap());
        assert!(
            q.on_tick(m + 7 * MIN).is_empty(),
            "not again after a restart"
        );

        for (t, v) in [(20, 230.0), (22, 100.0), (24, 230.0)] {
            read(&mut q, m + t * MIN, v);
        }
        let now = q.current("m1");
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].monitored_s, 180.0);

        let day1 = q.on_tick(m + DAY_MS + 5 * MIN);
        assert_eq!(day1.len(), 1);
        let d = &day1[0];
        assert_eq!(d.day_start_ms, m);
        assert_eq!(d.monitored_s, 180.0);
        assert_eq!((d.above_s, d.below_s), (0.0, 0.0));
        assert_eq!(d.outage_s, 120.0);
        assert_eq!(d.qualified_pct, Some(100.0));
        assert_eq!((d.min_v, d.max_v, d.reads), (Some(225.0), Some(230.0), 4));
        assert!(q.on_tick(m + 2 * DAY_MS).is_empty());
        assert!(q.current("m1").is_empty());

        let msg = voltage_day_message(&Topics::new("amr", "gw1"), &day0[0]);
        assert_eq!(msg.topic, "amr/gw1/voltage/m1");
        assert_eq!((msg.qos, msg.retain, msg.sequenced), (1, false, true));
        let p = &msg.payload;
        assert_eq!(p["day"], day0[0].date());
        assert_eq!(p["start"], rfc3339_ms(m - DAY_MS));
        assert_eq!(p["end"], rfc3339_ms(m));
        assert_eq!(p["qualified_pct"], 40.0);
        assert_eq!(p["above_s"], 180.0);
        assert_eq!(p["upper_v"], 235.4);
        assert_eq!(p["lower_v"], 198.0);
        assert_eq!(p["phase"], "l1");
    }

    #[test]
    fn each_phase_is_counted_apart_and_stale_reads_are_ignored() {
        let d = day_start_ms(1_795_000_000_000);
        let mut q = VoltageQuality::new(VoltageQualitySettings::default());
        for i in 0..3 {
            q.on_reading(&Reading {
                meter: "m2".into(),
                ts_ms: d + i * MIN,
                values: [
                    ("voltage_l1_v".to_string(), 240.0),
                    ("voltage_l2_v".to_string(), 220.0),
                ]
                .into_iter()
                .collect(),
            });
        }
        read(&mut q, d + 2 * MIN, 250.0); // other meter, unrelated
        q.on_reading(&Reading {
            meter: "m2".into(),
            ts_ms: d + MIN, // older than the last read: ignored
            values: [("voltage_l1_v".to_string(), 100.0)].into_iter().collect(),
        });
        let cur = q.current("m2");
        assert_eq!(cur.len(), 2);
        assert_eq!(
            (cur[0].phase.as_str(), cur[0].above_s, cur[0].monitored_s),
            ("l1", 120.0, 120.0)
        );
        assert_eq!(cur[0].qualified_pct, Some(0.0));
        assert_eq!((cur[1].phase.as_str(), cur[1].above_s), ("l2", 0.0));
        assert_eq!(cur[1].qualified_pct, Some(100.0));
        assert_eq!(cur[0].reads, 3);
    }
}
