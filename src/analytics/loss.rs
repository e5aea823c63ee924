//! Line loss of transformer areas: same-period intervals, a rolling real-time figure, robust
//! counters, high / negative loss verdicts and the customers that point at the cause.
//!
//! # How loss is computed
//!
//! For an area and a window `[start, end)`:
//!
//! ```text
//! supply_kwh = Σ supply import + Σ customer export     (energy entering the area)
//! sales_kwh  = Σ customer import + Σ supply export     (energy leaving it through meters)
//! loss_kwh   = supply_kwh − sales_kwh
//! loss_pct   = loss_kwh / supply_kwh × 100
//! ```
//!
//! from the `energy_import_kwh` and `energy_export_kwh` registers (a meter that never reports an
//! export register contributes nothing on that side). Values are primary-side already.
//!
//! **Same period.** Meters are read at different moments of a bus cycle, so each meter's
//! cumulative energy at a window boundary is interpolated between its reads just before and
//! just after the boundary (a read exactly on it is used as is): linearly, or, when both reads
//! carry the meter's `power_kw` and those powers agree with the energy the register advanced
//! between them (see [`register::POWER_AGREEMENT`]), along a monotone cubic whose slopes at the
//! reads are those powers (it still passes through both reads, so no energy is created or lost;
//! it follows a load that changed smoothly between the reads about twice as closely). Powers
//! that disagree (a power register with its own scale, a load that switched between the reads)
//! leave that gap linear, so the shaping is never worse than the straight line. Reads further apart than
//! `max_read_gap_s` still give a value but the meter counts as missing. Closed intervals are
//! aligned to wall-clock multiples of `interval_s` since the epoch (UTC).
//!
//! **Closing.** An interval is closed and emitted exactly once: as soon as every meter of the
//! area has reads around both boundaries *and* the read after the end boundary has itself been
//! followed by another read (so a later revision of that read, see below, cannot change the
//! figure); or, at the latest, when `now > end + grace` with whatever there is, `complete:
//! false` if any meter lacked bracketing reads. A meter without bracketing reads is listed in
//! `missing`; its energy is estimated by extrapolating its register at the recent rate (its
//! last quarter hour of reads), so that the figure stays usable, and `energy_coverage_pct`
//! says how much of the energy was measured rather than estimated.
//!
//! **Robust counters** ([`register`]): every accepted read is placed on a per-register energy
//! axis that never goes down. Glitches (NaN, zero, negative, a jump faster than the meter's
//! rate bound, a torn 32-bit word, a spike the next read contradicts) are rejected from the
//! loss and reported with [`Quality::Glitch`]; a fixed-width counter that wraps keeps counting
//! ([`Quality::Wrap`]); a persistently lower (or higher) value that then advances normally
//! starts a new segment ([`Quality::Reset`], reported as a revision of the read that started it,
//! since only the next read can tell a reset from a dip).
//!
//! **Real time.** [`LossEngine::rolling`] gives the loss over the last `rolling_window_s`,
//! between two common instants: the latest instant every (non-stale) meter has a read at or
//! after, and that minus the window.
//!
//! **Verdicts.** A closed complete interval above `high_loss_pct` raises `high_loss`, below
//! `negative_loss_pct` raises `negative_loss`; each clears after `clear_after_intervals`
//! consecutive complete intervals back in band. Incomplete intervals neither raise, clear nor
//! break a run.
//!
//! **Pointing at the cause** ([`suspects`]): customers whose metered consumption stepped down
//! while the loss stepped up by about as much, and customers whose current flows while their
//! energy register stands still.
//!
//! The engine is pure and synchronous: fed readings and ticks with timestamps, it never reads
//! the clock nor does I/O. [`LossEngine::snapshot`] / [`LossEngine::restore`] carry its state
//! across a restart.

pub mod register;
pub mod suspects;
#[cfg(test)]
mod tests;

use super::MeterParts;
use super::register::{self as rule, StoppedRegister};
use crate::clock::rfc3339_ms;
use crate::model::Reading;
use register::{Plausibility, RegisterTrack};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use suspects::{Consumption, WindowEntry};

const IMPORT: &str = "energy_import_kwh";
const EXPORT: &str = "energy_export_kwh";
const POWER: &str = "power_kw";
/// Reads kept per register at the least, whatever the boundaries need (rate estimates).
const MIN_POINTS: usize = 4;

/// Settings of the loss engine common to all areas. Every field has a default; the proposed
/// configuration section is `[loss]` with the same key names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossSettings {
    /// Seconds after an interval's end before it is closed without every meter
    /// (`complete: false`). Default: a third of the interval, at most 300 s.
    pub grace_s: Option<u64>,
    /// Span of the rolling real-time figure. Default 300 s.
    pub rolling_window_s: u64,
    /// A meter whose last read is this much older than the newest read of its area no longer
    /// holds back the rolling figure (it is extrapolated and counted as not covered).
    /// Default 300 s.
    pub stale_after_s: u64,
    /// Consecutive complete intervals back in band before a verdict clears. Default 2.
    pub clear_after_intervals: u32,
    /// Closed complete intervals the suspect ranking looks at. Default 16.
    pub suspect_window: usize,
    /// Lowest score published as a suspect. Default 4.0 (a matched step four standard errors
    /// above the noise).
    pub suspect_threshold: f64,
    /// The matched drop / rise must be at least this share of the mean supply per interval, %.
    /// Default 1.0.
    pub suspect_min_step_pct: f64,
    /// When registers standing still while load flows flag a `stopped_register` suspect. Not a
    /// key of `[loss]`: the loader fills it from `[alarms.meter_stopped]`, the one source it
    /// shares with the meter_stopped alarm.
    #[serde(skip)]
    pub stopped: StoppedRegister,
    /// Absolute rate bound for every meter, kW; above it a jump is a glitch. Default none:
    /// derived per register as `rate_headroom` × its recent maximum rate, at least
    /// `min_rate_bound_kw`.
    pub max_kw: Option<f64>,
    /// Default 10.
    pub rate_headroom: f64,
    /// Default 1000 kW: a low-voltage area rarely draws a megawatt, while a torn word or a
    /// spike of a register usually means tens of megawatts.
    pub min_rate_bound_kw: f64,
    /// Increment always accepted regardless of time (register resolution), kWh on the meter's
    /// secondary side, multiplied by its multiplier. Default 0.05.
    pub resolution_slack_kwh: f64,
    /// Moduli of fixed-width counters, kWh on the secondary side (multiplied by the meter's
    /// multiplier). Default 10⁴ … 10⁹ (decimal registers such as 99999.99) and 2³² counts of
    /// 1, 0.1, 0.01 and 0.001 kWh.
    pub counter_moduli_kwh: Vec<f64>,
    /// Reads around a boundary further apart than this still give an interpolated value, but
    /// the meter counts as not measured (`missing`). Default: the area's interval.
    pub max_read_gap_s: Option<u64>,
    /// Hard bound on the reads kept per register. Default 4096.
    pub max_reads_per_meter: usize,
    /// After a long outage, intervals older than this many are skipped rather than emitted.
    /// Default 96.
    pub max_catch_up_intervals: u32,
}

impl Default for LossSettings {
    fn default() -> Self {
        let mut moduli: Vec<f64> = (4..=9).map(|k| 10f64.powi(k)).collect();
        moduli.extend((0..=3).map(|d| 4_294_967_296.0 / 10f64.powi(d)));
        moduli.sort_by(f64::total_cmp);
        LossSettings {
            grace_s: None,
            rolling_window_s: 300,
            stale_after_s: 300,
            clear_after_intervals: 2,
            suspect_window: 16,
            suspect_threshold: 4.0,
            suspect_min_step_pct: 1.0,
            stopped: StoppedRegister::default(),
            max_kw: None,
            rate_headroom: 10.0,
            min_rate_bound_kw: 1000.0,
            resolution_slack_kwh: 0.05,
            counter_moduli_kwh: moduli,
            max_read_gap_s: None,
            max_reads_per_meter: 4096,
            max_catch_up_intervals: 96,
        }
    }
}

impl LossSettings {
    fn grace_ms(&self, interval_s: u64) -> i64 {
        self.grace_s.unwrap_or((interval_s / 3).min(300)) as i64 * 1000
    }
    fn max_gap_ms(&self, interval_s: u64) -> i64 {
        self.max_read_gap_s.unwrap_or(interval_s) as i64 * 1000
    }
}

/// One transformer area as the loss engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AreaSpec {
    pub id: String,
    /// Supply (transformer-side) meters.
    pub supply: Vec<String>,
    /// Customer meters.
    pub customers: Vec<String>,
    /// Length of the closed intervals, seconds (aligned to multiples since the epoch, UTC).
    pub interval_s: u64,
    /// Above this loss, % → `high_loss`.
    pub high_loss_pct: f64,
    /// Below this loss, % → `negative_loss`.
    pub negative_loss_pct: f64,
    /// CT × PT ratio per meter (default 1); scales counter moduli and the resolution slack,
    /// which are secondary-side properties of the register.
    pub multipliers: BTreeMap<String, f64>,
}

impl AreaSpec {
    /// Every meter of the area, supply first.
    pub fn meters(&self) -> impl Iterator<Item = &String> {
        self.supply.iter().chain(self.customers.iter())
    }

    fn interval_ms(&self) -> i64 {
        self.interval_s as i64 * 1000
    }
}

/// The decision about one register read, for the history's quality flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Used for the loss.
    Good,
    /// Rejected from the loss: an absurd single value.
    Glitch,
    /// Start of a new segment (meter replaced or register reset); counted from here on.
    Reset,
    /// A fixed-width counter wrapped; counting continues across.
    Wrap,
    /// Not newer than the last accepted read of the meter; ignored.
    Stale,
    /// The meter is in no area or the reading has no energy register.
    Unjudged,
}

impl Quality {
    /// The flag's name in the history and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Glitch => "glitch",
            Quality::Reset => "reset",
            Quality::Wrap => "wrap",
            Quality::Stale => "stale",
            Quality::Unjudged => "unjudged",
        }
    }
    /// The flag's code in the history's `quality` column: 0 good (or not judged: a meter in no
    /// area, a reading without energy registers), 1 stale, 2 wrap, 3 reset, 4 glitch.
    pub fn code(self) -> u8 {
        match self {
            Quality::Good | Quality::Unjudged => 0,
            Quality::Stale => 1,
            Quality::Wrap => 2,
            Quality::Reset => 3,
            Quality::Glitch => 4,
        }
    }
    fn severity(self) -> u8 {
        match self {
            Quality::Unjudged | Quality::Good => 0,
            Quality::Stale => 1,
            Quality::Wrap => 2,
            Quality::Reset => 3,
            Quality::Glitch => 4,
        }
    }
}

/// A later decision about an earlier reading of the same meter: apply it to that reading's
/// history row.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub meter: String,
    /// The earlier reading's timestamp.
    pub ts_ms: i64,
    /// `energy_import_kwh` or `energy_export_kwh`.
    pub register: &'static str,
    pub quality: Quality,
    pub note: String,
}

/// What the engine decided about a reading.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingVerdict {
    /// The worst decision over the reading's energy registers.
    pub quality: Quality,
    /// Why, per register (`energy_import_kwh: zero`); empty when good.
    pub note: String,
    /// Earlier readings this one re-qualified (a dip that turned out to start a new segment,
    /// a spike the trend did not follow).
    pub revisions: Vec<Revision>,
}

/// One closed interval of one area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossRecord {
    pub area: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Energy entering the area: supply import + customer export, kWh.
    pub supply_kwh: f64,
    /// Energy leaving it through meters: customer import + supply export, kWh.
    pub sales_kwh: f64,
    pub loss_kwh: f64,
    /// `None` when nothing entered the area, or when no meter was measured (see `no_loss_pct`).
    pub loss_pct: Option<f64>,
    /// Why `loss_pct` is `None`: no meter measured, or no energy supplied.
    #[serde(default)]
    pub no_loss_pct: Option<String>,
    /// Share of the area's meters with reads around both boundaries, %.
    pub coverage_pct: f64,
    /// Share of the energy (all meters, import + export) that was measured rather than
    /// extrapolated, %.
    pub energy_coverage_pct: f64,
    pub complete: bool,
    /// Meters without reads around both boundaries.
    pub missing: Vec<String>,
    /// Net energy of each meter over the interval (import − export), kWh; estimated for the
    /// missing ones that had any read at all.
    pub per_meter: BTreeMap<String, f64>,
    /// Customers pointing at the cause, best first, only those at or above the threshold.
    pub suspects: Vec<Suspect>,
}

/// A customer pointing at the cause of a loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspect {
    pub meter: String,
    /// `bypass_signature`: the matched step in standard errors (see [`suspects`]).
    /// `stopped_register`: threshold × (time stood still / `stopped_after_s`).
    pub score: f64,
    pub reason: SuspectReason,
    /// The figures behind it, for people.
    pub detail: String,
}

/// Why a customer is named a suspect (in payloads: `bypass_signature`, `stopped_register`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuspectReason {
    /// Its consumption fell in step with the rise of the loss (a bypass).
    BypassSignature,
    /// Its register stood still while current flowed.
    StoppedRegister,
}

/// Which verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    HighLoss,
    NegativeLoss,
}

impl VerdictKind {
    /// The alarm kind: `high_loss` or `negative_loss`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::HighLoss => "high_loss",
            VerdictKind::NegativeLoss => "negative_loss",
        }
    }
}

/// Raised or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictState {
    Raised,
    Cleared,
}

/// A change of a loss verdict, for the alarm machinery to turn into an alarm message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossVerdict {
    pub kind: VerdictKind,
    pub state: VerdictState,
    /// The alarm's subject.
    pub area: String,
    /// Loss of the interval that changed the verdict, %.
    pub value: f64,
    /// The threshold crossed, %.
    pub threshold: f64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub supply_kwh: f64,
    pub sales_kwh: f64,
    pub loss_kwh: f64,
}

/// What [`LossEngine::on_tick`] produces, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum LossEvent {
    Record(LossRecord),
    Verdict(LossVerdict),
}

/// The real-time figure over the last `rolling_window_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollingLoss {
    pub area: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub supply_kwh: f64,
    pub sales_kwh: f64,
    pub loss_kwh: f64,
    pub loss_pct: Option<f64>,
    /// Share of meters read around both instants, %.
    pub coverage_pct: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Still {
    since_ms: i64,
    /// The latest read that still showed it (a meter that stops answering is not "stopped").
    #[serde(default)]
    last_ms: i64,
    kwh: f64,
    current_a: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct MeterTrack {
    import: RegisterTrack,
    export: Option<RegisterTrack>,
    /// Current flowing with the energy standing still since.
    still: Option<Still>,
}

impl MeterTrack {
    fn registers(&self) -> impl Iterator<Item = &RegisterTrack> {
        std::iter::once(&self.import).chain(self.export.iter())
    }
    fn total_kwh(&self) -> f64 {
        self.registers()
            .filter_map(|r| r.last())
            .map(|p| p.kwh)
            .sum()
    }
    fn last_ts(&self) -> Option<i64> {
        self.registers()
            .filter_map(|r| r.last())
            .map(|p| p.ts_ms)
            .max()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Band {
    raised: bool,
    in_band: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AreaSnapshot {
    next_start_ms: Option<i64>,
    high: Band,
    negative: Band,
    window: VecDeque<WindowEntry>,
}

#[derive(Debug, Clone)]
struct AreaState {
    spec: AreaSpec,
    state: AreaSnapshot,
    /// The customers' ids, sorted, shared by the entries of the suspect window.
    customers: Arc<[String]>,
}

impl AreaState {
    fn new(spec: AreaSpec) -> AreaState {
        let mut customers = spec.customers.clone();
        customers.sort();
        customers.dedup();
        AreaState {
            spec,
            state: AreaSnapshot::default(),
            customers: customers.into(),
        }
    }
}

/// Everything a restart needs to continue: per meter the reads kept, segments and candidates;
/// per area the next interval, the verdicts and the suspect window. Serialize it with serde.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossSnapshot {
    latest_ms: i64,
    meters: BTreeMap<String, MeterTrack>,
    areas: BTreeMap<String, AreaSnapshot>,
}

impl super::MeterParts for LossEngine {
    type Snapshot = LossSnapshot;
    fn snapshot_rest(&self) -> LossSnapshot {
        LossSnapshot {
            latest_ms: self.latest_ms,
            meters: BTreeMap::new(),
            areas: self
                .areas
                .iter()
                .map(|a| (a.spec.id.clone(), a.state.clone()))
                .collect(),
        }
    }
    fn part_meters(&self) -> Vec<&str> {
        self.meters.keys().map(String::as_str).collect()
    }
    fn part_json(&self, meter: &str) -> Option<String> {
        self.meters.get(meter).map(super::part_json)
    }
}

/// The line-loss engine of all areas. See the module documentation.
#[derive(Debug, Clone)]
pub struct LossEngine {
    settings: LossSettings,
    areas: Vec<AreaState>,
    meters: BTreeMap<String, MeterTrack>,
    /// How many meters `meters` held when last rebuilt (see [`super::pack`]).
    packed: usize,
    /// Newest timestamp seen (reading or tick).
    latest_ms: i64,
}

impl LossEngine {
    pub fn new(areas: Vec<AreaSpec>, settings: LossSettings) -> Self {
        LossEngine {
            settings,
            areas: areas.into_iter().map(AreaState::new).collect(),
            meters: BTreeMap::new(),
            packed: 0,
            latest_ms: i64::MIN,
        }
    }

    /// The areas, as configured.
    pub fn areas(&self) -> impl Iterator<Item = &AreaSpec> {
        self.areas.iter().map(|a| &a.spec)
    }

    fn multiplier(&self, meter: &str) -> f64 {
        self.areas
            .iter()
            .find_map(|a| a.spec.multipliers.get(meter))
            .copied()
            .filter(|m| *m > 0.0)
            .unwrap_or(1.0)
    }

    /// Judges a reading's energy registers and remembers the accepted ones.
    pub fn on_reading(&mut self, r: &Reading) -> ReadingVerdict {
        let in_area: Vec<usize> = (0..self.areas.len())
            .filter(|&i| self.areas[i].spec.meters().any(|m| *m == r.meter))
            .collect();
        let unjudged = |note: &str| ReadingVerdict {
            quality: Quality::Unjudged,
            note: note.to_string(),
            revisions: Vec::new(),
        };
        if in_area.is_empty() {
            return unjudged("meter in no area");
        }
        if !r.values.contains_key(IMPORT) && !r.values.contains_key(EXPORT) {
            return unjudged("no energy register");
        }
        self.latest_ms = self.latest_ms.max(r.ts_ms);
        for &i in &in_area {
            let area = &mut self.areas[i];
            if area.state.next_start_ms.is_none() {
                let len = area.spec.interval_ms();
                area.state.next_start_ms = Some(r.ts_ms.div_euclid(len) * len + len);
            }
        }
        let mult = self.multiplier(&r.meter);
        let moduli: Vec<f64> = self
            .settings
            .counter_moduli_kwh
            .iter()
            .map(|m| m * mult)
            .collect();
        let p = Plausibility {
            max_kw: self.settings.max_kw,
            headroom: self.settings.rate_headroom,
            min_bound_kw: self.settings.min_rate_bound_kw,
            slack_kwh: self.settings.resolution_slack_kwh * mult,
            moduli_kwh: &moduli,
        };
        let track = self.meters.entry(r.meter.clone()).or_default();
        let mut verdict = ReadingVerdict {
            quality: Quality::Good,
            note: String::new(),
            revisions: Vec::new(),
        };
        for name in [IMPORT, EXPORT] {
            let Some(&raw) = r.values.get(name) else {
                continue;
            };
            let reg = if name == IMPORT {
                &mut track.import
            } else {
                track.export.get_or_insert_with(RegisterTrack::default)
            };
            // `power_kw` is positive importing, negative exporting.
            let kw = r
                .values
                .get(POWER)
                .map(|&w| if name == IMPORT { w } else { -w });
            let j = reg.judge(r.ts_ms, raw, kw, &p);
            if j.quality.severity() > verdict.quality.severity() {
                verdict.quality = j.quality;
            }
            if j.quality != Quality::Good && !j.note.is_empty() {
                if !verdict.note.is_empty() {
                    verdict.note.push_str("; ");
                }
                verdict.note.push_str(&format!("{name}: {}", j.note));
            }
            if let Some(rev) = j.revises {
                verdict.revisions.push(Revision {
                    meter: r.meter.clone(),
                    ts_ms: rev.ts_ms,
                    register: name,
                    quality: rev.quality,
                    note: rev.note,
                });
            }
        }

        // Load flowing while the energy stands still.
        let flows = self.settings.stopped.load_flows(r) == Some(true);
        let current_a = rule::largest_current_a(r).unwrap_or(0.0);
        let total = track.total_kwh();
        track.still = match track.still {
            Some(s) if flows && !rule::moved(s.kwh, total) => Some(Still {
                current_a,
                last_ms: r.ts_ms,
                ..s
            }),
            _ if flows => Some(Still {
                since_ms: r.ts_ms,
                last_ms: r.ts_ms,
                kwh: total,
                current_a,
            }),
            _ => None,
        };
        verdict
    }

    /// Closes every interval that is ready (or overdue) at `now_ms`; returns the records and
    /// the verdict changes they caused, in time order per area.
    pub fn on_tick(&mut self, now_ms: i64) -> Vec<LossEvent> {
        self.latest_ms = self.latest_ms.max(now_ms);
        let mut events = Vec::new();
        for i in 0..self.areas.len() {
            self.close_ready(i, now_ms, &mut events);
        }
        self.prune();
        super::pack(&mut self.meters, &mut self.packed);
        events
    }

    fn close_ready(&mut self, i: usize, now_ms: i64, events: &mut Vec<LossEvent>) {
        let settings = &self.settings;
        let area = &mut self.areas[i];
        let len = area.spec.interval_ms();
        let grace = settings.grace_ms(area.spec.interval_s);
        while let Some(mut start) = area.state.next_start_ms {
            let oldest =
                now_ms.div_euclid(len) * len - settings.max_catch_up_intervals as i64 * len;
            if start < oldest {
                start = oldest;
            }
            let end = start + len;
            if now_ms < end {
                area.state.next_start_ms = Some(start);
                break;
            }
            let f = figures(
                &area.spec,
                &self.meters,
                start,
                end,
                settings.max_gap_ms(area.spec.interval_s),
            );
            let ready = f.all_measured && f.all_settled;
            if !ready && now_ms <= end + grace {
                area.state.next_start_ms = Some(start);
                break;
            }
            area.state.next_start_ms = Some(end);
            let complete = f.all_measured;
            let spec = &area.spec;
            let st = &mut area.state;
            let mut verdicts = Vec::new();
            if complete {
                if let Some(pct) = f.loss_pct {
                    let verdict = |kind, state, threshold| LossVerdict {
                        kind,
                        state,
                        area: spec.id.clone(),
                        value: pct,
                        threshold,
                        start_ms: start,
                        end_ms: end,
                        supply_kwh: f.supply_kwh,
                        sales_kwh: f.sales_kwh,
                        loss_kwh: f.loss_kwh,
                    };
                    let clear_after = settings.clear_after_intervals.max(1);
                    for (band, kind, threshold, outside) in [
                        (
                            &mut st.high,
                            VerdictKind::HighLoss,
                            spec.high_loss_pct,
                            pct > spec.high_loss_pct,
                        ),
                        (
                            &mut st.negative,
                            VerdictKind::NegativeLoss,
                            spec.negative_loss_pct,
                            pct < spec.negative_loss_pct,
                        ),
                    ] {
                        if outside {
                            band.in_band = 0;
                            if !band.raised {
                                band.raised = true;
                                verdicts.push(verdict(kind, VerdictState::Raised, threshold));
                            }
                        } else if band.raised {
                            band.in_band += 1;
                            if band.in_band >= clear_after {
                                *band = Band::default();
                                verdicts.push(verdict(kind, VerdictState::Cleared, threshold));
                            }
                        }
                    }
                }
                st.window.push_back(WindowEntry {
                    start_ms: start,
                    supply_kwh: f.supply_kwh,
                    loss_kwh: f.loss_kwh,
                    customers: Consumption::of(&area.customers, |c| {
                        f.per_meter.get(c).copied().unwrap_or(0.0)
                    }),
                });
                while st.window.len() > settings.suspect_window.max(1) {
                    st.window.pop_front();
                }
            }
            let suspects = rank_suspects(spec, &st.window, &self.meters, settings);
            events.push(LossEvent::Record(LossRecord {
                area: spec.id.clone(),
                start_ms: start,
                end_ms: end,
                supply_kwh: f.supply_kwh,
                sales_kwh: f.sales_kwh,
                loss_kwh: f.loss_kwh,
                // A closed interval in which no meter was measured (the gateway off, every
                // meter silent) has no loss figure, whatever the extrapolation says.
                loss_pct: f
                    .loss_pct
                    .filter(|_| f.no_loss_pct != Some(NO_METER_MEASURED)),
                no_loss_pct: f.no_loss_pct.map(str::to_string),
                coverage_pct: f.coverage_pct,
                energy_coverage_pct: f.energy_coverage_pct,
                complete,
                missing: f.missing,
                per_meter: f.per_meter,
                suspects,
            }));
            events.extend(verdicts.into_iter().map(LossEvent::Verdict));
        }
    }

    /// Forgets reads that no open interval and no rolling figure can need any more.
    fn prune(&mut self) {
        let rolling_from = self.latest_ms.saturating_sub(
            (self.settings.rolling_window_s + self.settings.stale_after_s) as i64 * 1000,
        );
        for (id, track) in self.meters.iter_mut() {
            let keep_from = self
                .areas
                .iter()
                .filter(|a| a.spec.meters().any(|m| m == id))
                .filter_map(|a| a.state.next_start_ms)
                .fold(rolling_from, i64::min);
            let max = self.settings.max_reads_per_meter;
            track.import.prune(keep_from, MIN_POINTS, max);
            if let Some(e) = track.export.as_mut() {
                e.prune(keep_from, MIN_POINTS, max);
            }
        }
    }

    /// The loss over the last `rolling_window_s` ending at the latest instant every non-stale
    /// meter of the area has a read at or after; `None` for an unknown area or one without any
    /// read yet.
    pub fn rolling(&self, area: &str) -> Option<RollingLoss> {
        let spec = &self.areas.iter().find(|a| a.spec.id == area)?.spec;
        let lasts: Vec<i64> = spec
            .meters()
            .filter_map(|m| self.meters.get(m))
            .filter_map(MeterTrack::last_ts)
            .collect();
        let newest = *lasts.iter().max()?;
        let stale = self.settings.stale_after_s as i64 * 1000;
        let end = lasts
            .iter()
            .copied()
            .filter(|t| *t >= newest - stale)
            .min()?;
        let start = end - self.settings.rolling_window_s as i64 * 1000;
        let f = figures(
            spec,
            &self.meters,
            start,
            end,
            self.settings.max_gap_ms(spec.interval_s),
        );
        Some(RollingLoss {
            area: spec.id.clone(),
            start_ms: start,
            end_ms: end,
            supply_kwh: f.supply_kwh,
            sales_kwh: f.sales_kwh,
            loss_kwh: f.loss_kwh,
            loss_pct: f.loss_pct,
            coverage_pct: f.coverage_pct,
        })
    }

    /// The state a restart needs; see [`LossSnapshot`].
    pub fn snapshot(&self) -> LossSnapshot {
        LossSnapshot {
            meters: self.meters.clone(),
            ..self.snapshot_rest()
        }
    }

    /// Continues from a snapshot. Areas and meters no longer configured are dropped; a changed
    /// interval length restarts the area's intervals at the next boundary.
    pub fn restore(&mut self, mut snapshot: LossSnapshot) {
        self.latest_ms = snapshot.latest_ms;
        for area in &mut self.areas {
            if let Some(mut st) = snapshot.areas.remove(&area.spec.id) {
                let len = area.spec.interval_ms();
                if let Some(s) = st.next_start_ms
                    && s.rem_euclid(len) != 0
                {
                    st.next_start_ms = Some(s.div_euclid(len) * len + len);
                }
                for w in st.window.iter_mut() {
                    w.customers.share(&area.customers);
                }
                area.state = st;
            }
        }
        let areas = &self.areas;
        self.meters = snapshot
            .meters
            .into_iter()
            .filter(|(id, _)| areas.iter().any(|a| a.spec.meters().any(|m| m == id)))
            .collect();
    }
}

/// Why an interval has no `loss_pct`: no meter of the area was read around both of its ends.
pub const NO_METER_MEASURED: &str = "no meter of the area was read around both ends of the \
     interval (the gateway was off, or every meter silent): its figures are estimates, not a loss";
/// Why an interval has no `loss_pct`: nothing entered the area.
pub const NO_ENERGY_SUPPLIED: &str = "no energy entered the area";

/// The figures of one window of one area.
struct Figures {
    supply_kwh: f64,
    sales_kwh: f64,
    loss_kwh: f64,
    loss_pct: Option<f64>,
    no_loss_pct: Option<&'static str>,
    coverage_pct: f64,
    energy_coverage_pct: f64,
    missing: Vec<String>,
    per_meter: BTreeMap<String, f64>,
    all_measured: bool,
    all_settled: bool,
}

fn figures(
    spec: &AreaSpec,
    meters: &BTreeMap<String, MeterTrack>,
    start: i64,
    end: i64,
    max_gap_ms: i64,
) -> Figures {
    let (mut supply, mut sales) = (0.0, 0.0);
    let (mut measured_energy, mut all_energy) = (0.0, 0.0);
    let mut measured_meters = 0usize;
    let mut total_meters = 0usize;
    let mut missing = Vec::new();
    let mut per_meter = BTreeMap::new();
    let mut all_settled = true;
    for (meter, is_supply) in spec
        .supply
        .iter()
        .map(|m| (m, true))
        .chain(spec.customers.iter().map(|m| (m, false)))
    {
        total_meters += 1;
        let Some(track) = meters
            .get(meter)
            .filter(|t| t.import.last().is_some() || t.export.is_some())
        else {
            missing.push(meter.clone());
            continue;
        };
        let mut measured = true;
        let mut delta = |reg: Option<&RegisterTrack>| -> f64 {
            let Some(reg) = reg else { return 0.0 };
            match (
                reg.value_at(start, max_gap_ms),
                reg.value_at(end, max_gap_ms),
            ) {
                (Some(a), Some(b)) => {
                    measured &= a.measured && b.measured;
                    all_settled &= b.settled;
                    (b.kwh - a.kwh).max(0.0)
                }
                _ => {
                    measured = false;
                    0.0
                }
            }
        };
        let import = delta(Some(&track.import).filter(|r| r.last().is_some()));
        let export = delta(track.export.as_ref());
        if is_supply {
            supply += import;
            sales += export;
        } else {
            supply += export;
            sales += import;
        }
        all_energy += import + export;
        if measured {
            measured_meters += 1;
            measured_energy += import + export;
        } else {
            missing.push(meter.clone());
        }
        per_meter.insert(meter.clone(), import - export);
    }
    let loss = supply - sales;
    let coverage_pct = if total_meters == 0 {
        0.0
    } else {
        measured_meters as f64 / total_meters as f64 * 100.0
    };
    Figures {
        supply_kwh: supply,
        sales_kwh: sales,
        loss_kwh: loss,
        loss_pct: (supply > 0.0).then(|| loss / supply * 100.0),
        no_loss_pct: if measured_meters == 0 {
            Some(NO_METER_MEASURED)
        } else if supply <= 0.0 {
            Some(NO_ENERGY_SUPPLIED)
        } else {
            None
        },
        coverage_pct,
        energy_coverage_pct: if all_energy > 0.0 {
            measured_energy / all_energy * 100.0
        } else {
            coverage_pct
        },
        all_measured: missing.is_empty(),
        all_settled,
        missing,
        per_meter,
    }
}

fn rank_suspects(
    spec: &AreaSpec,
    window: &VecDeque<WindowEntry>,
    meters: &BTreeMap<String, MeterTrack>,
    settings: &LossSettings,
) -> Vec<Suspect> {
    let threshold = settings.suspect_threshold;
    let mut out: Vec<Suspect> = suspects::bypass_signs(
        window,
        &spec.customers,
        settings.suspect_min_step_pct,
    )
    .into_iter()
    .filter(|s| s.score >= threshold)
    .map(|s| Suspect {
        detail: format!(
            "metered consumption down {:.3} kWh and loss up {:.3} kWh per interval since {}",
            s.drop_kwh,
            s.rise_kwh,
            rfc3339_ms(s.since_ms)
        ),
        meter: s.meter,
        score: s.score,
        reason: SuspectReason::BypassSignature,
    })
    .collect();
    let after = settings.stopped.stopped_after_ms().max(1);
    for c in &spec.customers {
        if let Some(still) = meters.get(c).and_then(|t| t.still) {
            let stood = still.last_ms - still.since_ms;
            if stood >= after {
                out.push(Suspect {
                    meter: c.clone(),
                    score: threshold * stood as f64 / after as f64,
                    reason: SuspectReason::StoppedRegister,
                    detail: format!(
                        "{:.2} A flowing, energy register unchanged at {:.3} kWh since {}",
                        still.current_a,
                        still.kwh,
                        rfc3339_ms(still.since_ms)
                    ),
                });
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.meter.cmp(&b.meter)));
    out
}
