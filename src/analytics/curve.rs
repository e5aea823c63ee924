//! Load curves (负荷曲线): every meter's energy registers at each curve point (default every
//! 15 minutes of local time, 96 points a day) and its instantaneous values nearest the point,
//! gathered into blocks (default one an hour) so that a meter's curve is a handful of messages
//! a day, not one per point.
//!
//! # How a point is taken
//!
//! Curve points lie on a grid of `interval_min` minutes from each local midnight of `[gateway]
//! timezone` (a day with a daylight-saving change has 92 or 100 points at 15 minutes). When a
//! meter's read arrives after a point `P` and its read before was at or before `P`:
//!
//! - every energy register (`*_kwh`, `*_kvarh`) present in both reads is interpolated linearly
//!   at `P` (a read exactly at `P` is used as is): the registers are cumulative, so the energy
//!   between two points is the difference of their values, whatever the meter's load did;
//! - the instantaneous values (voltages, currents, powers, power factor, frequency) are those of
//!   the read nearer to `P` (the earlier on a tie), with that read's time (`instant_ts`): an
//!   instantaneous value is never interpolated, it was measured.
//!
//! Only when the two reads are at most `max_bridge_s` apart: across a longer silence the curve
//! has no points (the headend sees the gap in the points' times) rather than a straight line
//! nobody measured.
//!
//! # Blocks
//!
//! The grid is cut into blocks of `block_min` minutes from local midnight. A block goes out as
//! soon as its last point is taken, or — when the meter fell silent inside it — as soon as no
//! later read could still bridge to one of its points. A block holds only the points taken.
//!
//! Pure and deterministic: readings and time in, [`CurveBlock`]s out; the state survives a
//! restart through [`CurveEngine::snapshot`] / [`CurveEngine::restore`].

use super::values::Values;
use crate::clock::LocalTime;
use crate::model::{Reading, is_energy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

const MINUTE_MS: i64 = 60_000;

/// `[curve]` keys, and the zone whose days the grid starts at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurveSettings {
    /// Whose midnights. Not a key of `[curve]`: the loader fills it from `[gateway]
    /// timezone`. Default UTC.
    #[serde(skip)]
    pub zone: LocalTime,
    /// Curves are taken at all. Default true.
    pub enabled: bool,
    /// Minutes between curve points, a divisor of 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30,
    /// 60). Default 15 (96 points a day).
    pub interval_min: u32,
    /// Minutes of curve per message, a multiple of `interval_min` dividing 1440. Default 60.
    pub block_min: u32,
    /// A point is taken only between reads at most this far apart, s. Default 3600.
    pub max_bridge_s: u64,
}

impl Default for CurveSettings {
    fn default() -> Self {
        CurveSettings {
            zone: LocalTime::default(),
            enabled: true,
            interval_min: 15,
            block_min: 60,
            max_bridge_s: 3600,
        }
    }
}

impl CurveSettings {
    /// Why these settings cannot make a grid, when they cannot.
    pub fn problem(&self) -> Option<String> {
        let iv = self.interval_min;
        if iv == 0 || iv > 60 || 60 % iv != 0 {
            return Some(format!(
                "interval_min {iv} does not divide the hour; use 1, 2, 3, 4, 5, 6, 10, 12, 15, \
                 20, 30 or 60"
            ));
        }
        let block = self.block_min;
        if block == 0 || block % iv != 0 || 1440 % block != 0 {
            return Some(format!(
                "block_min {block} must be a multiple of interval_min {iv} that divides the day \
                 (1440 minutes), e.g. 60"
            ));
        }
        None
    }
}

/// One curve point of one meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The point, ms since the epoch.
    pub ts_ms: i64,
    /// Energy registers at the point, interpolated (primary side, as read).
    pub energy: BTreeMap<String, f64>,
    /// Instantaneous values of the read nearest the point.
    pub instant: BTreeMap<String, f64>,
    /// When those were read.
    pub instant_ts_ms: i64,
}

/// A meter's curve points of one block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveBlock {
    pub meter: String,
    /// The block's start and end (exclusive), ms since the epoch.
    pub start_ms: i64,
    pub end_ms: i64,
    /// The local date of the block's start.
    pub day: String,
    pub interval_min: u32,
    /// The points taken, in time order (a silent meter's block has fewer).
    pub points: Vec<CurvePoint>,
}

/// A read kept for the next point: its energy registers and its instantaneous values in one
/// [`Values`] (the names tell which are which, [`is_energy`]). Written as before, as two maps
/// `energy` and `instant`.
#[derive(Debug, Clone, PartialEq)]
struct Snap {
    ts_ms: i64,
    values: Values,
}

/// A point of the block being filled: a [`CurvePoint`] with its values held as a [`Snap`]'s
/// (the same shape in a snapshot).
#[derive(Debug, Clone, PartialEq)]
struct HeldPoint {
    ts_ms: i64,
    values: Values,
    instant_ts_ms: i64,
}

impl HeldPoint {
    fn to_point(&self) -> CurvePoint {
        CurvePoint {
            ts_ms: self.ts_ms,
            energy: part(&self.values, true).collect(),
            instant: part(&self.values, false).collect(),
            instant_ts_ms: self.instant_ts_ms,
        }
    }
}

/// The energy registers (`energy`) or the instantaneous values (not) of `values`.
fn part(values: &Values, energy: bool) -> impl Iterator<Item = (String, f64)> + '_ {
    values
        .iter()
        .filter(move |(k, _)| is_energy(k) == energy)
        .map(|(k, v)| (k.to_string(), v))
}

/// Writes one part of a [`Values`] as a map.
struct Part<'a>(&'a Values, bool);

impl Serialize for Part<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let energy = self.1;
        s.collect_map(self.0.iter().filter(|(k, _)| is_energy(k) == energy))
    }
}

/// The two maps of a snapshot written before, as one [`Values`].
fn joined(energy: &BTreeMap<String, f64>, instant: &BTreeMap<String, f64>) -> Values {
    energy
        .iter()
        .chain(instant)
        .map(|(k, v)| (k.as_str(), *v))
        .collect()
}

impl Serialize for Snap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Form<'a> {
            ts_ms: i64,
            energy: Part<'a>,
            instant: Part<'a>,
        }
        Form {
            ts_ms: self.ts_ms,
            energy: Part(&self.values, true),
            instant: Part(&self.values, false),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Snap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Snap, D::Error> {
        #[derive(Deserialize)]
        struct Form {
            ts_ms: i64,
            energy: BTreeMap<String, f64>,
            instant: BTreeMap<String, f64>,
        }
        let f = Form::deserialize(d)?;
        Ok(Snap {
            ts_ms: f.ts_ms,
            values: joined(&f.energy, &f.instant),
        })
    }
}

impl Serialize for HeldPoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Form<'a> {
            ts_ms: i64,
            energy: Part<'a>,
            instant: Part<'a>,
            instant_ts_ms: i64,
        }
        Form {
            ts_ms: self.ts_ms,
            energy: Part(&self.values, true),
            instant: Part(&self.values, false),
            instant_ts_ms: self.instant_ts_ms,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for HeldPoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HeldPoint, D::Error> {
        #[derive(Deserialize)]
        struct Form {
            ts_ms: i64,
            energy: BTreeMap<String, f64>,
            instant: BTreeMap<String, f64>,
            instant_ts_ms: i64,
        }
        let f = Form::deserialize(d)?;
        Ok(HeldPoint {
            ts_ms: f.ts_ms,
            values: joined(&f.energy, &f.instant),
            instant_ts_ms: f.instant_ts_ms,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct MeterCurve {
    last: Option<Snap>,
    /// The block being filled: its start, and its points so far.
    block_start_ms: Option<i64>,
    points: Vec<HeldPoint>,
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CurveSnapshot {
    meters: BTreeMap<String, MeterCurve>,
}

impl super::MeterParts for CurveEngine {
    type Snapshot = CurveSnapshot;
    fn snapshot_rest(&self) -> CurveSnapshot {
        CurveSnapshot::default()
    }
    fn part_meters(&self) -> Vec<&str> {
        self.state.meters.keys().map(String::as_str).collect()
    }
    fn part_json(&self, meter: &str) -> Option<String> {
        self.state.meters.get(meter).map(super::part_json)
    }
}

/// The load curves of the configured meters. See the module documentation.
#[derive(Debug, Clone)]
pub struct CurveEngine {
    settings: CurveSettings,
    state: CurveSnapshot,
    ready: Vec<Waiting>,
}

/// A completed block waiting for a tick, its points still in their compact form (a
/// [`CurvePoint`]'s two maps of names are several times larger).
#[derive(Debug, Clone)]
struct Waiting {
    meter: String,
    start_ms: i64,
    points: Vec<HeldPoint>,
}

/// Instantaneous quantities a curve point carries.
fn is_instant(name: &str) -> bool {
    name.starts_with("voltage_")
        || name.starts_with("current_")
        || name.starts_with("power_")
        || name.starts_with("reactive_power_")
        || name.starts_with("apparent_power_")
        || name.starts_with("frequency_")
}

impl CurveEngine {
    /// An engine drawing the curves of `meters` (the configured ones, in any order). Settings
    /// that cannot make a grid (see [`CurveSettings::problem`]; the loader refuses them) take
    /// no curves.
    pub fn new(settings: CurveSettings, meters: impl IntoIterator<Item = String>) -> Self {
        let state = CurveSnapshot {
            meters: meters
                .into_iter()
                .map(|m| (m, MeterCurve::default()))
                .collect(),
        };
        CurveEngine {
            settings,
            state,
            ready: Vec::new(),
        }
    }

    pub fn settings(&self) -> &CurveSettings {
        &self.settings
    }

    fn active(&self) -> bool {
        self.settings.enabled && self.settings.problem().is_none()
    }

    /// The first grid point after `t_ms`.
    fn next_point_after(&self, t_ms: i64) -> i64 {
        let zone = &self.settings.zone;
        let iv = i64::from(self.settings.interval_min) * MINUTE_MS;
        let day = zone.day_start_ms(t_ms);
        let b = day + ((t_ms - day).div_euclid(iv) + 1) * iv;
        b.min(zone.next_day_start_ms(t_ms))
    }

    /// The block a point belongs to: (start, end).
    fn block_of(&self, p_ms: i64) -> (i64, i64) {
        let zone = &self.settings.zone;
        let len = i64::from(self.settings.block_min) * MINUTE_MS;
        let day = zone.day_start_ms(p_ms);
        let start = day + (p_ms - day).div_euclid(len) * len;
        (start, (start + len).min(zone.next_day_start_ms(p_ms)))
    }

    /// Takes one reading (only good ones: the pipeline leaves out reads the loss engine
    /// rejected). Blocks it completes are returned by the next [`CurveEngine::on_tick`].
    pub fn on_reading(&mut self, r: &Reading) {
        if !self.active() || !self.state.meters.contains_key(&r.meter) {
            return;
        }
        // Energy registers that can be (not negative), instantaneous values.
        let kept = |k: &str, v: f64| v.is_finite() && ((is_energy(k) && v >= 0.0) || is_instant(k));
        let snap = Snap {
            ts_ms: r.ts_ms,
            values: r
                .values
                .iter()
                .filter(|(k, v)| kept(k, **v))
                .map(|(k, v)| (k.as_str(), *v))
                .collect(),
        };
        let bridge_ms = self.settings.max_bridge_s as i64 * 1000;
        let interval_ms = i64::from(self.settings.interval_min) * MINUTE_MS;
        let last = self
            .state
            .meters
            .get_mut(&r.meter)
            .expect("checked")
            .last
            .take();
        let Some(last) = last else {
            self.state.meters.get_mut(&r.meter).expect("checked").last = Some(snap);
            return;
        };
        if r.ts_ms <= last.ts_ms {
            self.state.meters.get_mut(&r.meter).expect("checked").last = Some(last);
            return;
        }
        if r.ts_ms - last.ts_ms <= bridge_ms && last.values.iter().any(|(k, _)| is_energy(k)) {
            let mut p = self.next_point_after(last.ts_ms);
            while p <= r.ts_ms {
                let point = take_point(&last, &snap, p);
                let (start, end) = self.block_of(p);
                self.add_point(&r.meter, start, point);
                if p + interval_ms >= end {
                    self.flush(&r.meter);
                }
                p = self.next_point_after(p);
            }
        }
        // A block this read can no longer add to goes out.
        let m = &self.state.meters[&r.meter];
        if m.block_start_ms.is_some_and(|s| {
            let (_, end) = self.block_of(s);
            self.next_point_after(r.ts_ms) >= end
        }) {
            self.flush(&r.meter);
        }
        self.state.meters.get_mut(&r.meter).expect("checked").last = Some(snap);
    }

    fn add_point(&mut self, meter: &str, block_start: i64, point: HeldPoint) {
        if self.state.meters[meter]
            .block_start_ms
            .is_some_and(|s| s != block_start)
        {
            self.flush(meter);
        }
        let m = self.state.meters.get_mut(meter).expect("configured");
        m.block_start_ms = Some(block_start);
        m.points.push(point);
    }

    /// Sends the meter's block being filled, when it has points.
    fn flush(&mut self, meter: &str) {
        let m = self.state.meters.get_mut(meter).expect("configured");
        let Some(start) = m.block_start_ms.take() else {
            return;
        };
        let held = std::mem::take(&mut m.points);
        if held.is_empty() {
            return;
        }
        self.ready.push(Waiting {
            meter: meter.to_string(),
            start_ms: start,
            points: held,
        });
    }

    /// The block of a waiting one.
    fn block(&self, w: Waiting) -> CurveBlock {
        let (_, end) = self.block_of(w.start_ms);
        CurveBlock {
            day: self.settings.zone.day(w.start_ms),
            meter: w.meter,
            start_ms: w.start_ms,
            end_ms: end,
            interval_min: self.settings.interval_min,
            points: w.points.iter().map(HeldPoint::to_point).collect(),
        }
    }

    /// Sends the blocks of meters silent for longer than `max_bridge_s` (no later read could
    /// add a point to them) and returns every block completed since the last tick, in order.
    pub fn on_tick(&mut self, now_ms: i64) -> Vec<CurveBlock> {
        self.on_tick_at_most(now_ms, usize::MAX)
    }

    /// [`CurveEngine::on_tick`], returning at most `max` blocks, the oldest first: the others
    /// wait for the next tick ([`CurveEngine::waiting`]). A thousand meters complete their
    /// hour's block within the same second, and each block's message is a JSON tree of some
    /// ten kilobytes until it is stored.
    pub fn on_tick_at_most(&mut self, now_ms: i64, max: usize) -> Vec<CurveBlock> {
        let bridge_ms = self.settings.max_bridge_s as i64 * 1000;
        let silent: Vec<String> = self
            .state
            .meters
            .iter()
            .filter(|(_, m)| {
                !m.points.is_empty()
                    && m.last
                        .as_ref()
                        .is_some_and(|l| now_ms - l.ts_ms > bridge_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for meter in silent {
            self.flush(&meter);
        }
        let taken: Vec<Waiting> = if max >= self.ready.len() {
            std::mem::take(&mut self.ready)
        } else {
            self.ready.drain(..max).collect()
        };
        taken.into_iter().map(|w| self.block(w)).collect()
    }

    /// The meters with a completed block not yet returned by a tick. Their points have left
    /// their state: a part of the snapshot written now would lose the block after a crash.
    pub fn waiting(&self) -> std::collections::BTreeSet<&str> {
        self.ready.iter().map(|b| b.meter.as_str()).collect()
    }

    /// Every completed block not yet returned by a tick (at a stop, before the snapshot).
    pub fn take_waiting(&mut self) -> Vec<CurveBlock> {
        let taken = std::mem::take(&mut self.ready);
        taken.into_iter().map(|w| self.block(w)).collect()
    }

    pub fn snapshot(&self) -> CurveSnapshot {
        self.state.clone()
    }

    /// Continues from a snapshot; meters no longer configured are dropped, new ones start
    /// afresh.
    pub fn restore(&mut self, snapshot: CurveSnapshot) {
        let mut meters = snapshot.meters;
        for (id, curve) in self.state.meters.iter_mut() {
            if let Some(saved) = meters.remove(id) {
                *curve = saved;
            }
        }
    }
}

/// The point at `p` between reads `a` (at or before it) and `b` (after it, or at it).
fn take_point(a: &Snap, b: &Snap, p: i64) -> HeldPoint {
    let span = (b.ts_ms - a.ts_ms) as f64;
    let s = if span > 0.0 {
        (p - a.ts_ms) as f64 / span
    } else {
        1.0
    };
    let energy = a
        .values
        .iter()
        .filter(|(k, _)| is_energy(k))
        .filter_map(|(k, va)| {
            let vb = b.values.get(k)?;
            Some((k, va + (vb - va) * s))
        });
    let nearer = if p - a.ts_ms <= b.ts_ms - p { a } else { b };
    let instant = nearer.values.iter().filter(|(k, _)| !is_energy(k));
    HeldPoint {
        ts_ms: p,
        values: energy.chain(instant).collect(),
        instant_ts_ms: nearer.ts_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const M: i64 = 60_000;
    /// 2026-11-23 00:00 in Asia/Shanghai (2026-11-22T16:00Z).
    const MIDNIGHT: i64 = 1_795_363_200_000;

    fn settings() -> CurveSettings {
        CurveSettings {
            zone: LocalTime::named("Asia/Shanghai").unwrap(),
            ..CurveSettings::default()
        }
    }

    fn read(meter: &str, ts_ms: i64, kwh: f64, kw: f64) -> Reading {
        Reading {
            meter: meter.into(),
            ts_ms,
            values: BTreeMap::from([
                ("energy_import_kwh".to_string(), kwh),
                ("power_kw".to_string(), kw),
                ("voltage_l1_v".to_string(), 230.0),
            ]),
        }
    }

    #[test]
    fn the_local_midnight_is_the_assumed_one() {
        let z = LocalTime::named("Asia/Shanghai").unwrap();
        assert_eq!(z.day_start_ms(MIDNIGHT + 5 * H), MIDNIGHT);
        assert_eq!(z.day(MIDNIGHT), "2026-11-23");
    }

    #[test]
    fn a_minute_poll_gives_four_points_an_hour_in_one_block() {
        let mut e = CurveEngine::new(settings(), ["m1".to_string()]);
        // A read every minute from 23:58 to 01:02 at 6 kW (0.1 kWh a minute).
        let mut blocks = Vec::new();
        for i in -2..=62 {
            e.on_reading(&read("m1", MIDNIGHT + i * M, 100.0 + 0.1 * i as f64, 6.0));
            blocks.extend(e.on_tick(MIDNIGHT + i * M));
        }
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        let b = &blocks[0];
        assert_eq!((b.start_ms, b.end_ms), (MIDNIGHT, MIDNIGHT + H));
        assert_eq!(b.day, "2026-11-23");
        let ts: Vec<i64> = b.points.iter().map(|p| p.ts_ms).collect();
        assert_eq!(
            ts,
            vec![
                MIDNIGHT,
                MIDNIGHT + 15 * M,
                MIDNIGHT + 30 * M,
                MIDNIGHT + 45 * M
            ]
        );
        for p in &b.points {
            let k = (p.ts_ms - MIDNIGHT) / M;
            let want = 100.0 + 0.1 * k as f64;
            assert!((p.energy["energy_import_kwh"] - want).abs() < 1e-9);
            assert_eq!(p.instant["power_kw"], 6.0);
            assert_eq!(
                p.instant_ts_ms, p.ts_ms,
                "a read exactly at the point is nearest"
            );
        }
    }

    #[test]
    fn registers_are_interpolated_and_instants_taken_from_the_nearer_read() {
        let mut e = CurveEngine::new(settings(), ["m1".to_string()]);
        e.on_reading(&read("m1", MIDNIGHT + 10 * M, 10.0, 1.0));
        e.on_reading(&read("m1", MIDNIGHT + 40 * M, 13.0, 9.0));
        // Silent after 00:40: the block goes out once no read can bridge to 00:45 any more.
        assert!(e.on_tick(MIDNIGHT + H).is_empty());
        let blocks = e.on_tick(MIDNIGHT + 40 * M + H + 1);
        assert_eq!(blocks.len(), 1);
        let p = &blocks[0].points;
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].ts_ms, MIDNIGHT + 15 * M);
        assert!((p[0].energy["energy_import_kwh"] - 10.5).abs() < 1e-9);
        assert_eq!(p[0].instant["power_kw"], 1.0);
        assert_eq!(p[0].instant_ts_ms, MIDNIGHT + 10 * M);
        assert!((p[1].energy["energy_import_kwh"] - 12.0).abs() < 1e-9);
        assert_eq!(p[1].instant["power_kw"], 9.0);
    }

    #[test]
    fn no_points_across_a_long_silence_and_the_old_block_still_goes_out() {
        let mut e = CurveEngine::new(settings(), ["m1".to_string()]);
        e.on_reading(&read("m1", MIDNIGHT + 10 * M, 10.0, 1.0));
        e.on_reading(&read("m1", MIDNIGHT + 20 * M, 11.0, 1.0));
        // Three hours of silence, then reads again.
        e.on_reading(&read("m1", MIDNIGHT + 200 * M, 20.0, 1.0));
        let blocks = e.on_tick(MIDNIGHT + 200 * M);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].points.len(), 1, "only 00:15 was bridged");
        e.on_reading(&read("m1", MIDNIGHT + 240 * M, 24.0, 1.0));
        let blocks = e.on_tick(MIDNIGHT + 240 * M);
        assert_eq!(blocks.len(), 1, "03:00..04:00 complete at 04:00's read");
        let ts: Vec<i64> = blocks[0].points.iter().map(|p| p.ts_ms).collect();
        assert_eq!(ts, vec![MIDNIGHT + 210 * M, MIDNIGHT + 225 * M]);
    }

    #[test]
    fn a_daylight_saving_day_has_its_own_number_of_points() {
        // Europe/Berlin, 2026-10-25: 25 hours; local midnight is 2026-10-24T22:00Z.
        let zone = LocalTime::named("Europe/Berlin").unwrap();
        let start = crate::clock::parse_rfc3339("2026-10-24T22:00:00Z").unwrap();
        let end = zone.next_day_start_ms(start);
        assert_eq!(end - start, 25 * H);
        let mut e = CurveEngine::new(
            CurveSettings {
                zone,
                ..CurveSettings::default()
            },
            ["m1".to_string()],
        );
        let mut points = 0;
        let mut t = start - 5 * M;
        while t <= end + 5 * M {
            e.on_reading(&read("m1", t, 10.0 + (t - start) as f64 / H as f64, 1.0));
            for b in e.on_tick(t) {
                if b.day == "2026-10-25" {
                    points += b.points.len();
                }
            }
            t += 5 * M;
        }
        assert_eq!(points, 100);
    }

    #[test]
    fn a_restart_continues_the_block() {
        let mut e = CurveEngine::new(settings(), ["m1".to_string()]);
        e.on_reading(&read("m1", MIDNIGHT - M, 10.0, 1.0));
        e.on_reading(&read("m1", MIDNIGHT + 20 * M, 12.0, 1.0));
        let snap = e.snapshot();
        let mut again = CurveEngine::new(settings(), ["m1".to_string()]);
        again.restore(serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap());
        again.on_reading(&read("m1", MIDNIGHT + 61 * M, 16.0, 1.0));
        let blocks = again.on_tick(MIDNIGHT + 61 * M);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].points.len(), 4);
    }

    #[test]
    fn a_snapshot_written_with_maps_of_names_still_loads_and_writes_the_same() {
        // As the build holding `BTreeMap<String, f64>` values wrote it (and a register name
        // outside the contract, which only a snapshot can bring).
        let old = r#"{"meters":{"m1":{"last":{"ts_ms":1795364400000,"energy":{"energy_export_kwh":0.5,"energy_import_kwh":12.0,"odd_register_kwh":3.0},"instant":{"power_kw":1.0,"voltage_l1_v":230.0}},"block_start_ms":1795363200000,"points":[{"ts_ms":1795363200000,"energy":{"energy_export_kwh":0.5,"energy_import_kwh":10.0,"odd_register_kwh":3.0},"instant":{"power_kw":1.0,"voltage_l1_v":230.0},"instant_ts_ms":1795363140000}]}}}"#;
        let snap: CurveSnapshot = serde_json::from_str(old).unwrap();
        assert_eq!(serde_json::to_string(&snap).unwrap(), old);
        let mut e = CurveEngine::new(settings(), ["m1".to_string()]);
        e.restore(snap);
        assert_eq!(serde_json::to_string(&e.snapshot()).unwrap(), old);
        e.on_reading(&read("m1", MIDNIGHT + 61 * M, 16.0, 2.0));
        let blocks = e.on_tick(MIDNIGHT + 61 * M);
        assert_eq!(blocks.len(), 1);
        let p = &blocks[0].points;
        let ts: Vec<i64> = p.iter().map(|p| p.ts_ms).collect();
        assert_eq!(ts, vec![MIDNIGHT, MIDNIGHT + 30 * M, MIDNIGHT + 45 * M]);
        let names = |m: &BTreeMap<String, f64>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&p[0].energy),
            ["energy_export_kwh", "energy_import_kwh", "odd_register_kwh"]
        );
        assert_eq!(p[0].energy["energy_import_kwh"], 10.0);
        assert_eq!(p[0].instant_ts_ms, MIDNIGHT - M);
        // 00:30 between 12.0 at 00:20 and 16.0 at 01:01; only registers of both reads.
        assert_eq!(names(&p[1].energy), ["energy_import_kwh"]);
        let want = 12.0 + 4.0 * 10.0 / 41.0;
        assert!((p[1].energy["energy_import_kwh"] - want).abs() < 1e-12);
        assert_eq!(p[1].instant["power_kw"], 1.0, "00:20 is nearer");
        assert_eq!(p[2].instant["power_kw"], 2.0, "01:01 is nearer");
    }

    #[test]
    fn settings_that_cannot_make_a_grid_are_named() {
        let s = |interval_min, block_min| CurveSettings {
            interval_min,
            block_min,
            ..CurveSettings::default()
        };
        assert!(s(15, 60).problem().is_none());
        assert!(s(7, 60).problem().unwrap().contains("interval_min 7"));
        assert!(s(15, 50).problem().unwrap().contains("block_min 50"));
        assert!(s(60, 1440).problem().is_none());
    }
}
