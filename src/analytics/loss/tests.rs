//! Tests of the loss engine against a tiny synthetic area that knows the truth.
//!
//! The area model: customers whose load is piecewise linear between one-minute knots (a daily
//! swing, a few % of noise, appliances switching on), a supply meter that measures the sum of
//! the loads plus a technical loss `k·load²`, all energies integrated exactly. Meters are read
//! once per 60 s cycle, each at its own offset into the cycle, registers at 0.001 kWh.

use super::*;
use crate::uplink::contract::{Topics, loss_message};
use proptest::prelude::*;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a multiple of 900 s
const KNOT_MS: i64 = 60_000;
/// The grid of a model with switching loads.
const FINE_KNOT_MS: i64 = 2_000;
const CYCLE_MS: i64 = 60_000;
const INTERVAL_S: u64 = 900;
const HOUR_MS: f64 = 3_600_000.0;
const CUSTOMERS: usize = 20;
const K_TECH: f64 = 0.0005; // per kW: ~3 % at 60 kW

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform in [0, 1) from a seed and two coordinates.
fn unit(seed: u64, a: u64, b: u64) -> f64 {
    (mix(seed ^ mix(a.wrapping_mul(1_000_003) ^ b)) >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Clone, Copy, Debug)]
enum Glitch {
    Zero,
    NaN,
    Spike,
    Torn,
}

/// Scenario knobs. Customer indices are 0-based; the supply meter is `S`.
#[derive(Clone, Default)]
struct Knobs {
    seed: u64,
    /// Customer bypasses `share` of its load from this instant.
    theft: Option<(usize, i64, f64)>,
    /// Every customer register reads `scale ×` the truth until the meter file is fixed.
    wrong_scale: Option<(f64, Option<i64>)>,
    /// Customer's meter replaced by a new one (from 0) right after its read in this cycle.
    replace: Option<(usize, i64)>,
    /// Customer's register starts 0.5 kWh below this modulus.
    wrap: Option<(usize, f64)>,
    /// (customer, cycle number, kind).
    glitches: Vec<(usize, i64, Glitch)>,
    /// Customer does not answer in [from, to).
    missing: Option<(usize, i64, i64)>,
    /// Customer's register stops advancing from this instant while its load continues.
    stopped: Option<(usize, i64)>,
    /// Meters do not report `power_kw` (the engine interpolates linearly).
    no_power: bool,
    /// The power register of this meter (a customer, or the supply meter for `None`) reads
    /// `scale ×` its true power (a power register with its own scale); its energy register is
    /// right.
    power_scale: Option<(Option<usize>, f64)>,
    /// Customers `0..n` have loads that switch on and off at random minutes between 0 and this
    /// many kW, within seconds (loads that switch between reads).
    switching: Option<(usize, f64)>,
    /// Each meter is read at a random moment of every cycle (a bus cycle that jitters) rather
    /// than at its fixed offset.
    random_reads: bool,
    /// Only these meters report `power_kw` (a customer, or the supply meter for `None`); the
    /// others are interpolated linearly, so a comparison isolates them.
    power_only: Option<Vec<Option<usize>>>,
}

struct AreaModel {
    knobs: Knobs,
    /// Per customer, per knot: load kW.
    load: Vec<Vec<f64>>,
    /// Per customer, per knot: the share the meter sees.
    seen: Vec<Vec<f64>>,
    /// Per customer, per knot: cumulative metered kWh.
    metered: Vec<Vec<f64>>,
    /// Per knot: cumulative supply kWh.
    supply: Vec<f64>,
    knots: usize,
    /// Spacing of the knots: [`KNOT_MS`], or [`FINE_KNOT_MS`] with switching loads.
    knot_ms: i64,
}

fn customer_id(i: usize) -> String {
    format!("c{i:02}")
}

impl AreaModel {
    fn new(knobs: Knobs, hours: f64) -> Self {
        let knots = (hours * 60.0) as usize + 2;
        let mut load = vec![vec![0.0; knots]; CUSTOMERS];
        let mut seen = vec![vec![1.0; knots]; CUSTOMERS];
        for (i, row) in load.iter_mut().enumerate() {
            let base = 1.0 + 4.0 * unit(knobs.seed, i as u64, 7);
            let phase = std::f64::consts::TAU * unit(knobs.seed, i as u64, 8);
            let mut appliance_left = 0;
            for (j, p) in row.iter_mut().enumerate() {
                let t_h = j as f64 / 60.0;
                let swing = 1.0 + 0.3 * (std::f64::consts::TAU * t_h / 24.0 + phase).sin();
                let noise = 1.0 + 0.05 * (2.0 * unit(knobs.seed, i as u64, 1000 + j as u64) - 1.0);
                if appliance_left == 0 && unit(knobs.seed, i as u64, 500_000 + j as u64) < 0.03 {
                    appliance_left = 3;
                }
                let appliance = if appliance_left > 0 {
                    appliance_left -= 1;
                    2.0
                } else {
                    0.0
                };
                *p = base * swing * noise + appliance;
            }
        }
        // Switching loads need a finer grid: knots every 2 s, the minute loads resampled onto
        // it, and the switching customers on or off from one 2 s knot to the next (steps) with
        // a mean dwell of 40 s.
        let (knot_ms, knots) = match knobs.switching {
            None => (KNOT_MS, knots),
            Some((n, kw)) => {
                let per = (KNOT_MS / FINE_KNOT_MS) as usize;
                let fine = (knots - 1) * per + 1;
                let mut resampled: Vec<Vec<f64>> = load
                    .iter()
                    .map(|row| {
                        (0..fine)
                            .map(|k| {
                                let (j, r) = (k / per, (k % per) as f64 / per as f64);
                                let next = row.get(j + 1).copied().unwrap_or(row[j]);
                                row[j] + (next - row[j]) * r
                            })
                            .collect()
                    })
                    .collect();
                for (i, row) in resampled.iter_mut().enumerate().take(n) {
                    let mut on = false;
                    for (k, p) in row.iter_mut().enumerate() {
                        if unit(knobs.seed, i as u64, 900_000 + k as u64) < 0.05 {
                            on = !on;
                        }
                        *p = if on { kw } else { 0.0 };
                    }
                }
                load = resampled;
                seen = vec![vec![1.0; fine]; CUSTOMERS];
                (FINE_KNOT_MS, fine)
            }
        };
        if let Some((c, from, share)) = knobs.theft {
            for (j, seen) in seen[c].iter_mut().enumerate() {
                if T0 + j as i64 * knot_ms >= from {
                    *seen = 1.0 - share;
                }
            }
        }
        let dt_h = knot_ms as f64 / HOUR_MS;
        let mut metered = vec![vec![0.0; knots]; CUSTOMERS];
        for i in 0..CUSTOMERS {
            for j in 1..knots {
                let (a, b) = (load[i][j - 1] * seen[i][j - 1], load[i][j] * seen[i][j]);
                metered[i][j] = metered[i][j - 1] + (a + b) / 2.0 * dt_h;
            }
        }
        let mut supply = vec![0.0; knots];
        for j in 1..knots {
            let l0: f64 = (0..CUSTOMERS).map(|i| load[i][j - 1]).sum();
            let l1: f64 = (0..CUSTOMERS).map(|i| load[i][j]).sum();
            supply[j] = supply[j - 1] + supply_integral(l0, l1, dt_h, dt_h);
        }
        AreaModel {
            knobs,
            load,
            seen,
            metered,
            supply,
            knots,
            knot_ms,
        }
    }

    fn knot(&self, t: i64) -> (usize, f64) {
        let j = ((t - T0) / self.knot_ms) as usize;
        assert!(j + 1 < self.knots, "beyond the model's horizon");
        (j, (t - T0 - j as i64 * self.knot_ms) as f64 / HOUR_MS)
    }

    /// True metered energy of customer `i` since T0.
    fn metered_at(&self, i: usize, t: i64) -> f64 {
        let (j, x) = self.knot(t);
        let dt_h = self.knot_ms as f64 / HOUR_MS;
        let p0 = self.load[i][j] * self.seen[i][j];
        let p1 = self.load[i][j + 1] * self.seen[i][j + 1];
        self.metered[i][j] + p0 * x + (p1 - p0) * x * x / (2.0 * dt_h)
    }

    /// True supply energy since T0.
    fn supply_at(&self, t: i64) -> f64 {
        let (j, x) = self.knot(t);
        let l0: f64 = (0..CUSTOMERS).map(|i| self.load[i][j]).sum();
        let l1: f64 = (0..CUSTOMERS).map(|i| self.load[i][j + 1]).sum();
        self.supply[j] + supply_integral(l0, l1, self.knot_ms as f64 / HOUR_MS, x)
    }

    fn load_at(&self, i: usize, t: i64) -> f64 {
        let (j, x) = self.knot(t);
        let f = x / (self.knot_ms as f64 / HOUR_MS);
        self.load[i][j] + (self.load[i][j + 1] - self.load[i][j]) * f
    }

    /// The power customer `i`'s meter measures at `t`.
    fn metered_kw_at(&self, i: usize, t: i64) -> f64 {
        let (j, x) = self.knot(t);
        let f = x / (self.knot_ms as f64 / HOUR_MS);
        let (p0, p1) = (
            self.load[i][j] * self.seen[i][j],
            self.load[i][j + 1] * self.seen[i][j + 1],
        );
        let scale = match self.knobs.wrong_scale {
            Some((scale, fixed)) if fixed.is_none_or(|f| t < f) => scale,
            _ => 1.0,
        };
        let own = match self.knobs.power_scale {
            Some((Some(c), own)) if c == i => own,
            _ => 1.0,
        };
        (p0 + (p1 - p0) * f) * scale * own
    }

    /// The true loss over [s, e): (supply, sales, loss %).
    fn truth(&self, s: i64, e: i64) -> (f64, f64, f64) {
        let supply = self.supply_at(e) - self.supply_at(s);
        let sales: f64 = (0..CUSTOMERS)
            .map(|i| self.metered_at(i, e) - self.metered_at(i, s))
            .sum();
        (supply, sales, (supply - sales) / supply * 100.0)
    }

    fn offset_ms(meter: Option<usize>) -> i64 {
        match meter {
            None => 1_300,
            Some(i) => 3_700 + 2_817 * i as i64,
        }
    }

    /// The register value customer `i`'s meter shows at `t` (before read glitches).
    fn register(&self, i: usize, t: i64) -> f64 {
        let k = &self.knobs;
        let mut truth = self.metered_at(i, t);
        if let Some((c, from)) = k.stopped
            && c == i
            && t >= from
        {
            truth = self.metered_at(i, from);
        }
        let mut value = 1000.0 + 100.0 * i as f64 + truth;
        if let Some((scale, fixed)) = k.wrong_scale
            && fixed.is_none_or(|f| t < f)
        {
            value *= scale;
        }
        if let Some((c, at)) = k.replace
            && c == i
            && t > at
        {
            value = truth - self.metered_at(i, at);
        }
        if let Some((c, modulus)) = k.wrap
            && c == i
        {
            value = (modulus - 0.5 + truth) % modulus;
        }
        value
    }

    /// Every reading in [from, to), in time order.
    fn readings(&self, from: i64, to: i64) -> Vec<Reading> {
        let mut out = Vec::new();
        let first_cycle = (from - T0).div_euclid(CYCLE_MS);
        for cycle in first_cycle.. {
            let c0 = T0 + cycle * CYCLE_MS;
            if c0 >= to {
                break;
            }
            for meter in std::iter::once(None).chain((0..CUSTOMERS).map(Some)) {
                let ts = if self.knobs.random_reads {
                    let idx = meter.map_or(999, |i| i as u64);
                    c0 + 500
                        + (unit(self.knobs.seed, idx, 7_000_000 + cycle as u64) * 59_000.0) as i64
                } else {
                    c0 + Self::offset_ms(meter)
                };
                if ts < from || ts >= to {
                    continue;
                }
                let mut values = BTreeMap::new();
                let (id, kwh, kw) = match meter {
                    None => (
                        "S".to_string(),
                        50_000.0 + self.supply_at(ts),
                        (0..CUSTOMERS).map(|i| self.load_at(i, ts)).sum::<f64>()
                            * match self.knobs.power_scale {
                                Some((None, own)) => own,
                                _ => 1.0,
                            },
                    ),
                    Some(i) => {
                        if let Some((c, a, b)) = self.knobs.missing
                            && c == i
                            && ts >= a
                            && ts < b
                        {
                            continue;
                        }
                        let mut v = self.register(i, ts);
                        for &(c, n, g) in &self.knobs.glitches {
                            if c == i && n == cycle {
                                v = match g {
                                    Glitch::Zero => 0.0,
                                    Glitch::NaN => f64::NAN,
                                    Glitch::Spike => v + 5000.0,
                                    Glitch::Torn => v + 655.36,
                                };
                            }
                        }
                        (customer_id(i), v, self.metered_kw_at(i, ts))
                    }
                };
                let q = if kwh.is_finite() {
                    (kwh * 1000.0).round() / 1000.0
                } else {
                    kwh
                };
                values.insert(IMPORT.to_string(), q);
                let reports_power = match &self.knobs.power_only {
                    Some(only) => only.contains(&meter),
                    None => true,
                };
                if !self.knobs.no_power && reports_power {
                    values.insert("power_kw".to_string(), kw);
                }
                values.insert("current_l1_a".to_string(), kw / 0.23);
                out.push(Reading {
                    meter: id,
                    ts_ms: ts,
                    values,
                });
            }
        }
        out.sort_by_key(|r| r.ts_ms);
        out
    }

    /// The read time of customer `i` in cycle `n`.
    fn read_time(i: usize, cycle: i64) -> i64 {
        T0 + cycle * CYCLE_MS + Self::offset_ms(Some(i))
    }
}

/// ∫₀ˣ (L + k·L²) dτ for L linear from l0 to l1 over `span` hours.
fn supply_integral(l0: f64, l1: f64, span: f64, x: f64) -> f64 {
    let b = (l1 - l0) / span;
    let lin = l0 * x + b * x * x / 2.0;
    let sq = l0 * l0 * x + l0 * b * x * x + b * b * x * x * x / 3.0;
    lin + K_TECH * sq
}

fn spec() -> AreaSpec {
    AreaSpec {
        id: "t1".into(),
        supply: vec!["S".into()],
        customers: (0..CUSTOMERS).map(customer_id).collect(),
        interval_s: INTERVAL_S,
        high_loss_pct: 10.0,
        negative_loss_pct: -1.0,
        multipliers: BTreeMap::new(),
    }
}

#[derive(Default)]
struct Run {
    records: Vec<LossRecord>,
    verdicts: Vec<LossVerdict>,
    judged: Vec<(Reading, ReadingVerdict)>,
}

/// Feeds readings in [from, to) with a tick after each, and a final tick at `to`.
fn feed(engine: &mut LossEngine, model: &AreaModel, from: i64, to: i64, run: &mut Run) {
    let take = |events: Vec<LossEvent>, run: &mut Run| {
        for e in events {
            match e {
                LossEvent::Record(r) => run.records.push(r),
                LossEvent::Verdict(v) => run.verdicts.push(v),
            }
        }
    };
    for r in model.readings(from, to) {
        let v = engine.on_reading(&r);
        let events = engine.on_tick(r.ts_ms);
        run.judged.push((r, v));
        take(events, run);
    }
    let events = engine.on_tick(to);
    take(events, run);
}

fn simulate(knobs: Knobs, hours: f64) -> (AreaModel, Run) {
    let model = AreaModel::new(knobs, hours + 0.1);
    let mut engine = LossEngine::new(vec![spec()], LossSettings::default());
    let mut run = Run::default();
    let end = T0 + (hours * HOUR_MS) as i64;
    feed(&mut engine, &model, T0, end, &mut run);
    (model, run)
}

/// The naive figure: the latest read of each meter at or before each boundary.
fn naive_pct(run: &Run, s: i64, e: i64) -> f64 {
    let at = |meter: &str, t: i64| {
        run.judged
            .iter()
            .filter(|(r, v)| r.meter == meter && r.ts_ms <= t && v.quality == Quality::Good)
            .map(|(r, _)| r.values[IMPORT])
            .next_back()
            .unwrap()
    };
    let supply = at("S", e) - at("S", s);
    let sales: f64 = (0..CUSTOMERS)
        .map(|i| at(&customer_id(i), e) - at(&customer_id(i), s))
        .sum();
    (supply - sales) / supply * 100.0
}

fn assert_matches_truth(model: &AreaModel, rec: &LossRecord, tol_pp: f64) {
    let (supply, sales, pct) = model.truth(rec.start_ms, rec.end_ms);
    let got = rec.loss_pct.unwrap();
    assert!(
        (got - pct).abs() < tol_pp,
        "interval {}: loss {got:.4} % vs true {pct:.4} % (supply {:.4}/{supply:.4}, sales {:.4}/{sales:.4})",
        rfc3339_ms(rec.start_ms),
        rec.supply_kwh,
        rec.sales_kwh
    );
}

#[test]
fn aligned_intervals_match_the_truth_and_beat_the_naive_method() {
    // Meters reporting `power_kw` (the engine shapes the interpolation with it), and not
    // (straight-line interpolation); the naive figure is computed beside, not asserted.
    for (seed, no_power, tolerance) in [
        (0, false, 0.05),
        (7, false, 0.05),
        (0, true, 0.1),
        (7, true, 0.1),
    ] {
        let (model, run) = simulate(
            Knobs {
                seed,
                no_power,
                ..Knobs::default()
            },
            6.0,
        );
        assert!(run.records.len() >= 22, "{} records", run.records.len());
        let (mut worst_aligned, mut worst_naive, mut sum_aligned, mut sum_naive) =
            (0f64, 0f64, 0.0, 0.0);
        if seed == 0 && !no_power {
            println!("interval start            true %   aligned %   naive %");
        }
        for rec in &run.records {
            assert!(rec.complete, "{rec:?}");
            assert_eq!(rec.coverage_pct, 100.0);
            assert!(rec.missing.is_empty() && rec.suspects.is_empty());
            assert_eq!(rec.per_meter.len(), CUSTOMERS + 1);
            let (_, _, truth) = model.truth(rec.start_ms, rec.end_ms);
            let aligned = rec.loss_pct.unwrap();
            let naive = naive_pct(&run, rec.start_ms, rec.end_ms);
            if seed == 0 && !no_power {
                println!(
                    "{}  {truth:7.3}  {aligned:9.3}  {naive:8.3}",
                    rfc3339_ms(rec.start_ms)
                );
            }
            worst_aligned = worst_aligned.max((aligned - truth).abs());
            worst_naive = worst_naive.max((naive - truth).abs());
            sum_aligned += (aligned - truth).abs();
            sum_naive += (naive - truth).abs();
            assert_matches_truth(&model, rec, tolerance);
        }
        let n = run.records.len() as f64;
        println!(
            "seed {seed}, {} intervals, {}: deviation from the true loss, percentage points: \
             aligned mean {:.4} worst {:.4}; naive mean {:.4} worst {:.4}",
            run.records.len(),
            if no_power {
                "energy only (linear)"
            } else {
                "with power_kw (shaped)"
            },
            sum_aligned / n,
            worst_aligned,
            sum_naive / n,
            worst_naive
        );
        assert!(run.verdicts.is_empty());
        assert!(run.judged.iter().all(|(_, v)| v.quality == Quality::Good));
        // Intervals are consecutive and each emitted once.
        for w in run.records.windows(2) {
            assert_eq!(w[0].end_ms, w[1].start_ms);
        }
    }
}

/// Mean and worst deviation from the true loss over the records, percentage points.
fn deviation(model: &AreaModel, run: &Run) -> (f64, f64) {
    let errs: Vec<f64> = run
        .records
        .iter()
        .map(|r| (r.loss_pct.unwrap() - model.truth(r.start_ms, r.end_ms).2).abs())
        .collect();
    assert!(errs.len() >= 22, "{} records", errs.len());
    let mean = errs.iter().sum::<f64>() / errs.len() as f64;
    (mean, errs.iter().copied().fold(0.0, f64::max))
}

/// The same reads with and without `power_kw`: (shaped mean, worst; linear mean, worst).
fn shaped_against_linear(knobs: Knobs, label: &str) -> (f64, f64, f64, f64) {
    let (model, shaped) = simulate(knobs.clone(), 6.0);
    let (_, linear) = simulate(
        Knobs {
            no_power: true,
            ..knobs
        },
        6.0,
    );
    let (sm, sw) = deviation(&model, &shaped);
    let (lm, lw) = deviation(&model, &linear);
    println!(
        "{label}: deviation from the true loss, percentage points: with power_kw mean {sm:.4} \
         worst {sw:.4}; linear (same reads) mean {lm:.4} worst {lw:.4}"
    );
    (sm, sw, lm, lw)
}

#[test]
fn a_power_register_that_disagrees_with_its_energy_is_no_worse_than_linear() {
    // A power register with its own scale (its energy register is right): a customer's, and
    // the supply meter's, ten times too high or too low.
    let mut failures = Vec::new();
    for (seed, meter, scale) in [
        (0, Some(3), 10.0),
        (7, Some(3), 0.1),
        (0, None, 10.0),
        (7, None, 10.0),
        (0, None, 0.1),
        (7, None, 0.1),
    ] {
        let (sm, sw, lm, lw) = shaped_against_linear(
            Knobs {
                seed,
                power_scale: Some((meter, scale)),
                random_reads: true,
                power_only: Some(vec![meter]),
                ..Knobs::default()
            },
            &format!(
                "seed {seed}, {} power register ×{scale}",
                meter.map_or("supply".to_string(), customer_id)
            ),
        );
        if sm > lm + 1e-6 || sw > lw + 1e-6 {
            failures.push((seed, sm, sw, lm, lw));
        }
    }
    assert!(
        failures.is_empty(),
        "worse than linear (seed, mean, worst, linear mean, worst): {failures:?}"
    );
}

#[test]
fn a_load_switching_between_reads_is_no_worse_than_linear() {
    // Six customers' 8 kW loads switch on and off (steps, a mean dwell of 40 s): the power at a
    // read says little about the energy until the next.
    let mut failures = Vec::new();
    for seed in [0, 7] {
        let (sm, sw, lm, lw) = shaped_against_linear(
            Knobs {
                seed,
                switching: Some((6, 8.0)),
                random_reads: true,
                power_only: Some((0..6).map(Some).collect()),
                ..Knobs::default()
            },
            &format!("seed {seed}, six loads switching 0/8 kW"),
        );
        if sm > lm + 1e-6 || sw > lw + 1e-6 {
            failures.push((seed, sm, sw, lm, lw));
        }
    }
    assert!(
        failures.is_empty(),
        "worse than linear (seed, mean, worst, linear mean, worst): {failures:?}"
    );
}

#[test]
fn honest_powers_keep_their_gain_over_linear() {
    for (seed, random_reads) in [(0, false), (7, false), (0, true), (7, true)] {
        let (sm, sw, lm, lw) = shaped_against_linear(
            Knobs {
                seed,
                random_reads,
                ..Knobs::default()
            },
            &format!(
                "seed {seed}, honest powers, {}",
                if random_reads {
                    "random read moments"
                } else {
                    "fixed read offsets"
                }
            ),
        );
        if random_reads {
            assert!(sm < lm, "{sm} {sw} vs {lm} {lw}");
        } else {
            assert!(sm < lm * 0.75 && sw < lw, "{sm} {sw} vs {lm} {lw}");
        }
    }
}

#[test]
fn rolling_figure_follows_the_truth() {
    let model = AreaModel::new(Knobs::default(), 1.2);
    let mut engine = LossEngine::new(vec![spec()], LossSettings::default());
    let mut run = Run::default();
    assert!(engine.rolling("t1").is_none());
    let mut checked = 0;
    for step in 1..=12 {
        let t = T0 + step * 5 * 60_000 + 30_000;
        feed(&mut engine, &model, t - 5 * 60_000, t, &mut run);
        let r = engine.rolling("t1").unwrap();
        assert_eq!(r.end_ms - r.start_ms, 300_000);
        assert!(r.end_ms <= t);
        if r.start_ms >= T0 + 60_000 {
            assert_eq!(r.coverage_pct, 100.0);
            let (_, _, pct) = model.truth(r.start_ms, r.end_ms);
            assert!((r.loss_pct.unwrap() - pct).abs() < 0.1, "{r:?} vs {pct}");
            checked += 1;
        }
    }
    assert!(checked >= 10);
    assert!(engine.rolling("nope").is_none());
}

#[test]
fn theft_is_ranked_first_and_nobody_is_singled_out_without_it() {
    // Without theft: nobody passes the threshold in any interval.
    for seed in [3, 5, 11] {
        let (_, clean) = simulate(
            Knobs {
                seed,
                ..Knobs::default()
            },
            8.0,
        );
        for rec in &clean.records {
            assert!(
                rec.suspects.is_empty(),
                "{}: {:?}",
                rfc3339_ms(rec.start_ms),
                rec.suspects
            );
        }
    }
    // A customer bypasses half of its load from the start of interval 8. The thief is the
    // first customer from `from` whose mean load is at least 2 kW (so ≥ 1 kW, about 1.7 % of
    // the area's supply, goes unmetered: below that a customer whose consumption happens to
    // drop at the same time can score as high as the thief).
    for (seed, from) in [(3, 7), (11, 15), (5, 2), (8, 0)] {
        let onset = T0 + 8 * INTERVAL_S as i64 * 1000;
        let probe = AreaModel::new(
            Knobs {
                seed,
                ..Knobs::default()
            },
            0.1,
        );
        let thief = (from..CUSTOMERS)
            .chain(0..from)
            .find(|&i| probe.load[i].iter().sum::<f64>() / probe.knots as f64 >= 2.0)
            .unwrap();
        let knobs = Knobs {
            seed,
            theft: Some((thief, onset, 0.5)),
            ..Knobs::default()
        };
        let (model, run) = simulate(knobs, 8.0);
        let first = run
            .records
            .iter()
            .find(|r| {
                r.suspects
                    .first()
                    .is_some_and(|s| s.meter == customer_id(thief))
            })
            .expect("thief ranked first");
        let after = (first.end_ms - onset) / (INTERVAL_S as i64 * 1000);
        println!(
            "seed {seed}: thief {} ranked first {after} intervals after the onset: {:?}",
            customer_id(thief),
            first.suspects
        );
        assert!(after <= 3, "ranked after {after} intervals");
        assert_eq!(first.suspects[0].reason, SuspectReason::BypassSignature);
        // Nobody else is singled out, before or after.
        for rec in &run.records {
            assert!(
                rec.suspects.iter().all(|s| s.meter == customer_id(thief)),
                "{:?}",
                rec.suspects
            );
            if rec.end_ms <= onset {
                assert!(rec.suspects.is_empty());
            }
            assert_matches_truth(&model, rec, 0.05);
        }
    }
}

#[test]
fn wrong_multiplier_raises_negative_loss_and_fixing_it_clears() {
    let fixed = T0 + 2 * 3_600_000 + 7 * 60_000; // 02:07
    let knobs = Knobs {
        wrong_scale: Some((1.5, Some(fixed))),
        ..Knobs::default()
    };
    let (model, run) = simulate(knobs, 4.0);
    let raised: Vec<_> = run
        .verdicts
        .iter()
        .filter(|v| v.state == VerdictState::Raised)
        .collect();
    assert_eq!(raised.len(), 1, "{:?}", run.verdicts);
    let r = raised[0];
    assert_eq!(r.kind, VerdictKind::NegativeLoss);
    assert_eq!(r.kind.as_str(), "negative_loss");
    assert_eq!(r.area, "t1");
    assert_eq!(r.threshold, -1.0);
    assert!(r.value < -40.0, "{r:?}");
    assert_eq!(r.start_ms, run.records[0].start_ms);
    // The fix is a register step down on every customer: a reset, counted across.
    let resets = run
        .judged
        .iter()
        .flat_map(|(_, v)| &v.revisions)
        .filter(|rev| rev.quality == Quality::Reset)
        .count();
    assert_eq!(resets, CUSTOMERS);
    // Back in band from the interval after the fix; cleared after two such intervals.
    let cleared: Vec<_> = run
        .verdicts
        .iter()
        .filter(|v| v.state == VerdictState::Cleared)
        .collect();
    assert_eq!(cleared.len(), 1);
    let c = cleared[0];
    assert_eq!(c.kind, VerdictKind::NegativeLoss);
    let first_good = fixed.div_euclid(900_000) * 900_000 + 900_000;
    assert_eq!(
        c.start_ms,
        first_good + 900_000,
        "cleared by the second interval in band"
    );
    for rec in run.records.iter().filter(|r| r.start_ms >= first_good) {
        assert_matches_truth(&model, rec, 0.05);
    }
}

#[test]
fn high_loss_raises_and_clears_after_two_intervals_in_band() {
    let mut engine = LossEngine::new(
        vec![AreaSpec {
            customers: vec!["c".into()],
            ..spec()
        }],
        LossSettings::default(),
    );
    // Supply 10 kWh per interval; customer 9.5, then 8 (20 % loss) for 3 intervals, then 9.5.
    let per_interval = [9.5, 9.5, 8.0, 8.0, 8.0, 9.5, 9.5, 9.5];
    let (mut s, mut c) = (0.0, 0.0);
    let mut verdicts = Vec::new();
    for (k, sales) in per_interval.iter().enumerate() {
        for step in 0..15 {
            let t = T0 + k as i64 * 900_000 + step * 60_000;
            for (meter, kwh) in [("S", s), ("c", c)] {
                let mut values = BTreeMap::new();
                values.insert(IMPORT.to_string(), kwh);
                engine.on_reading(&Reading {
                    meter: meter.into(),
                    ts_ms: t,
                    values,
                });
            }
            s += 10.0 / 15.0;
            c += sales / 15.0;
            for e in engine.on_tick(t) {
                if let LossEvent::Verdict(v) = e {
                    verdicts.push(v);
                }
            }
        }
    }
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    assert_eq!(verdicts[0].kind, VerdictKind::HighLoss);
    assert_eq!(verdicts[0].state, VerdictState::Raised);
    assert!((verdicts[0].value - 20.0).abs() < 1e-6);
    assert_eq!(verdicts[0].start_ms, T0 + 2 * 900_000);
    assert_eq!(verdicts[1].state, VerdictState::Cleared);
    assert_eq!(verdicts[1].start_ms, T0 + 6 * 900_000);
    assert!((verdicts[1].value - 5.0).abs() < 1e-6);
}

#[test]
fn meter_replacement_starts_a_new_segment() {
    let cycle = 70;
    let at = AreaModel::read_time(4, cycle) + 1;
    let knobs = Knobs {
        replace: Some((4, at)),
        ..Knobs::default()
    };
    let (model, run) = simulate(knobs, 3.0);
    let judged: Vec<_> = run
        .judged
        .iter()
        .filter(|(r, _)| r.meter == "c04")
        .collect();
    let first_new = judged.iter().position(|(r, _)| r.ts_ms > at).unwrap();
    assert_eq!(judged[first_new].1.quality, Quality::Glitch);
    let rev = &judged[first_new + 1].1.revisions;
    assert_eq!(rev.len(), 1, "{:?}", judged[first_new + 1].1);
    assert_eq!(rev[0].quality, Quality::Reset);
    assert_eq!(rev[0].ts_ms, judged[first_new].0.ts_ms);
    assert_eq!(rev[0].register, IMPORT);
    assert!(rev[0].note.contains("counted from 0"), "{}", rev[0].note);
    assert!(run.records.iter().all(|r| r.complete));
    for rec in &run.records {
        assert_matches_truth(&model, rec, 0.05);
        let (s, e) = (rec.start_ms, rec.end_ms);
        let truth_c04 = model.metered_at(4, e) - model.metered_at(4, s);
        assert!((rec.per_meter["c04"] - truth_c04).abs() < 0.01);
    }
}

#[test]
fn counter_wrap_keeps_counting() {
    let knobs = Knobs {
        wrap: Some((9, 100_000.0)),
        ..Knobs::default()
    };
    let (model, run) = simulate(knobs, 2.0);
    let wraps: Vec<_> = run
        .judged
        .iter()
        .filter(|(_, v)| v.quality == Quality::Wrap)
        .collect();
    assert_eq!(wraps.len(), 1);
    assert_eq!(wraps[0].0.meter, "c09");
    assert!(wraps[0].1.note.contains("100000"), "{}", wraps[0].1.note);
    for rec in &run.records {
        assert!(rec.complete);
        assert_matches_truth(&model, rec, 0.05);
    }
}

#[test]
fn single_glitches_are_rejected_and_flagged() {
    let knobs = Knobs {
        glitches: vec![
            (1, 20, Glitch::Zero),
            (2, 31, Glitch::NaN),
            (3, 44, Glitch::Spike),
            (5, 52, Glitch::Torn),
            (6, 59, Glitch::Zero),
            (6, 60, Glitch::Spike),
        ],
        ..Knobs::default()
    };
    let (model, run) = simulate(knobs, 2.0);
    let flagged: Vec<_> = run
        .judged
        .iter()
        .filter(|(_, v)| v.quality != Quality::Good)
        .map(|(r, v)| {
            (
                r.meter.as_str(),
                (r.ts_ms - T0) / CYCLE_MS,
                v.quality,
                v.note.as_str(),
            )
        })
        .collect();
    println!("{flagged:#?}");
    assert_eq!(flagged.len(), 6);
    assert!(flagged.iter().all(|f| f.2 == Quality::Glitch));
    assert_eq!((flagged[0].0, flagged[0].1), ("c01", 20));
    assert!(flagged[0].3.contains("zero"));
    assert!(flagged[1].3.contains("not a number"));
    assert!(flagged[2].3.contains("jump"));
    assert!(flagged[3].3.contains("torn 32-bit"), "{}", flagged[3].3);
    assert!(run.judged.iter().all(|(_, v)| v.revisions.is_empty()));
    for rec in &run.records {
        assert!(rec.complete);
        assert_matches_truth(&model, rec, 0.05);
    }
}

#[test]
fn a_plausible_spike_the_trend_contradicts_is_requalified() {
    let mut track = RegisterTrack::default();
    let p = Plausibility {
        max_kw: None,
        headroom: 10.0,
        min_bound_kw: 1000.0,
        slack_kwh: 0.05,
        moduli_kwh: &[100_000.0],
    };
    for (k, v) in [100.0, 100.05, 100.10, 100.6, 100.2, 100.25]
        .iter()
        .enumerate()
    {
        let j = track.judge(T0 + k as i64 * 60_000, *v, None, &p);
        if k == 4 {
            let rev = j.revises.expect("spike requalified");
            assert_eq!(rev.quality, Quality::Glitch);
            assert_eq!(rev.ts_ms, T0 + 3 * 60_000);
        } else {
            assert_eq!(j.quality, Quality::Good, "{k}: {j:?}");
            assert!(j.revises.is_none());
        }
    }
    let kwh: Vec<f64> = track.points().map(|p| p.kwh).collect();
    assert_eq!(kwh, vec![100.0, 100.05, 100.10, 100.2, 100.25]);
}

#[test]
fn a_missing_meter_makes_intervals_incomplete_after_grace() {
    let from = T0 + 1_800_000 + 200_000; // 00:33:20
    let to = T0 + 3_600_000 + 400_000; // 01:06:40
    let knobs = Knobs {
        missing: Some((12, from, to)),
        ..Knobs::default()
    };
    let (model, run) = simulate(knobs, 2.0);
    for rec in &run.records {
        let touched = rec.end_ms > from - 60_000 && rec.start_ms < to;
        if touched {
            assert!(!rec.complete, "{}", rfc3339_ms(rec.start_ms));
            assert_eq!(rec.missing, vec!["c12".to_string()]);
            assert!((rec.coverage_pct - 100.0 * 20.0 / 21.0).abs() < 1e-9);
            assert!(rec.energy_coverage_pct < 100.0 && rec.energy_coverage_pct > 90.0);
            // The estimate from the recent rate keeps the figure usable.
            let (_, _, pct) = model.truth(rec.start_ms, rec.end_ms);
            println!(
                "incomplete {}: {:.3} % vs true {pct:.3} %, energy coverage {:.2} %",
                rfc3339_ms(rec.start_ms),
                rec.loss_pct.unwrap(),
                rec.energy_coverage_pct
            );
            assert!((rec.loss_pct.unwrap() - pct).abs() < 2.0);
        } else {
            assert!(rec.complete, "{}", rfc3339_ms(rec.start_ms));
            assert_matches_truth(&model, rec, 0.05);
        }
    }
    assert!(run.records.iter().filter(|r| !r.complete).count() >= 2);
    assert!(run.verdicts.is_empty(), "incomplete intervals do not raise");
    let msg = loss_message(
        &Topics::new("amr", "gw1"),
        run.records.iter().find(|r| !r.complete).unwrap(),
    );
    assert_eq!(msg.topic, "amr/gw1/loss/t1");
    assert_eq!(msg.payload["complete"], false);
    assert_eq!(msg.payload["missing"][0], "c12");
}

#[test]
fn incomplete_interval_waits_for_the_grace_time() {
    let model = AreaModel::new(
        Knobs {
            missing: Some((0, T0 + 600_000, T0 + 3_600_000)),
            ..Knobs::default()
        },
        0.6,
    );
    let mut engine = LossEngine::new(vec![spec()], LossSettings::default());
    let mut run = Run::default();
    feed(&mut engine, &model, T0, T0 + 900_000 + 299_000, &mut run);
    // First interval starts at 00:15 (the first boundary after the first read).
    assert!(run.records.is_empty());
    feed(
        &mut engine,
        &model,
        T0 + 900_000 + 299_000,
        T0 + 1_800_000 + 299_000,
        &mut run,
    );
    assert!(run.records.is_empty(), "not before end + grace");
    let events = engine.on_tick(T0 + 1_800_000 + 300_001);
    assert_eq!(events.len(), 1);
    let LossEvent::Record(rec) = &events[0] else {
        panic!()
    };
    assert!(!rec.complete);
    assert_eq!(rec.start_ms, T0 + 900_000);
    assert!(
        engine.on_tick(T0 + 1_800_000 + 400_000).is_empty(),
        "emitted once"
    );
}

#[test]
fn stopped_register_with_current_is_flagged() {
    let knobs = Knobs {
        stopped: Some((8, T0 + 1_800_000)),
        ..Knobs::default()
    };
    let (_, run) = simulate(knobs, 3.0);
    let flagged = run
        .records
        .iter()
        .find(|r| {
            r.suspects
                .iter()
                .any(|s| s.reason == SuspectReason::StoppedRegister)
        })
        .expect("stopped register flagged");
    assert!(flagged.end_ms - (T0 + 1_800_000) <= 3 * 900_000);
    assert!(flagged.end_ms - (T0 + 1_800_000) >= 2 * 900_000);
    assert!(flagged.suspects.iter().all(|s| s.meter == "c08"));
}

#[test]
fn snapshot_restore_continues_identically() {
    let knobs = Knobs {
        theft: Some((5, T0 + 6 * 900_000, 0.5)),
        replace: Some((3, AreaModel::read_time(3, 150) + 1)),
        glitches: vec![(1, 140, Glitch::Zero)],
        ..Knobs::default()
    };
    let model = AreaModel::new(knobs, 5.1);
    let split = T0 + 2 * 3_600_000 + 31_234 + 33 * 60_000; // mid-interval, mid-cycle
    let end = T0 + 5 * 3_600_000;

    let mut straight = LossEngine::new(vec![spec()], LossSettings::default());
    let mut a = Run::default();
    feed(&mut straight, &model, T0, split, &mut a);
    let before = a.records.len();
    feed(&mut straight, &model, split, end, &mut a);

    let mut first = LossEngine::new(vec![spec()], LossSettings::default());
    let mut b = Run::default();
    feed(&mut first, &model, T0, split, &mut b);
    let json = serde_json::to_string(&first.snapshot()).unwrap();
    drop(first);
    let mut second = LossEngine::new(vec![spec()], LossSettings::default());
    second.restore(serde_json::from_str(&json).unwrap());
    feed(&mut second, &model, split, end, &mut b);

    assert!(a.records.len() > before + 8);
    assert_eq!(a.records.len(), b.records.len());
    assert_eq!(a.verdicts.len(), b.verdicts.len());
    for (x, y) in a.records.iter().zip(&b.records) {
        assert_eq!(
            (x.start_ms, x.complete, &x.missing),
            (y.start_ms, y.complete, &y.missing)
        );
        assert!((x.loss_kwh - y.loss_kwh).abs() < 1e-9);
        assert!((x.supply_kwh - y.supply_kwh).abs() < 1e-9);
        let sx: Vec<_> = x.suspects.iter().map(|s| &s.meter).collect();
        let sy: Vec<_> = y.suspects.iter().map(|s| &s.meter).collect();
        assert_eq!(sx, sy);
    }
    for ((_, x), (_, y)) in a.judged.iter().zip(&b.judged) {
        assert_eq!(x.quality, y.quality);
        assert_eq!(x.revisions.len(), y.revisions.len());
    }
    assert!(
        a.records.iter().any(|r| !r.suspects.is_empty()),
        "the theft was seen"
    );
    // A snapshot round trip is exact without serialization.
    let snap = straight.snapshot();
    let mut copy = LossEngine::new(vec![spec()], LossSettings::default());
    copy.restore(snap.clone());
    assert_eq!(copy.snapshot(), snap);
}

#[test]
fn memory_stays_bounded() {
    let (_, _) = simulate(Knobs::default(), 0.1);
    let model = AreaModel::new(Knobs::default(), 3.1);
    let mut engine = LossEngine::new(vec![spec()], LossSettings::default());
    let mut run = Run::default();
    feed(&mut engine, &model, T0, T0 + 3 * 3_600_000, &mut run);
    let snap = engine.snapshot();
    let most = snap
        .meters
        .values()
        .map(|m| m.import.points().len())
        .max()
        .unwrap();
    // One interval plus the rolling window and staleness at one read a minute, and a margin.
    assert!(most <= 15 + 10 + 4, "{most} reads kept");
}

#[test]
fn pv_export_enters_the_area() {
    // Supply imports 10, customer a imports 12, customer b exports 3: loss = 10 + 3 − 12 = 1.
    let mut engine = LossEngine::new(
        vec![AreaSpec {
            customers: vec!["a".into(), "b".into()],
            ..spec()
        }],
        LossSettings::default(),
    );
    let mut records = Vec::new();
    for step in 0..40 {
        let t = T0 + step * 60_000;
        let f = step as f64 / 15.0;
        for (meter, imp, exp) in [
            ("S", 10.0 * f, None),
            ("a", 12.0 * f, None),
            ("b", 0.0, Some(3.0 * f)),
        ] {
            let mut values = BTreeMap::new();
            values.insert(IMPORT.to_string(), 500.0 + imp);
            if let Some(e) = exp {
                values.insert(EXPORT.to_string(), 20.0 + e);
            }
            engine.on_reading(&Reading {
                meter: meter.into(),
                ts_ms: t,
                values,
            });
        }
        for e in engine.on_tick(t) {
            if let LossEvent::Record(r) = e {
                records.push(r);
            }
        }
    }
    let r = &records[0];
    assert!((r.supply_kwh - 13.0).abs() < 1e-6 && (r.sales_kwh - 12.0).abs() < 1e-6);
    assert!((r.loss_pct.unwrap() - 100.0 / 13.0).abs() < 1e-6);
    assert!((r.per_meter["b"] + 3.0).abs() < 1e-6);
}

#[test]
fn readings_outside_areas_are_not_judged() {
    let mut engine = LossEngine::new(vec![spec()], LossSettings::default());
    let r = Reading {
        meter: "other".into(),
        ts_ms: T0,
        values: [(IMPORT.to_string(), 1.0)].into(),
    };
    assert_eq!(engine.on_reading(&r).quality, Quality::Unjudged);
    let r = Reading {
        meter: "S".into(),
        ts_ms: T0,
        values: [("voltage_l1_v".to_string(), 230.0)].into(),
    };
    assert_eq!(engine.on_reading(&r).quality, Quality::Unjudged);
}

#[derive(Debug, Clone)]
enum Step {
    Advance(f64),
    Zero,
    NaN,
    Negative,
    Absurd(f64),
    Drop(f64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0.0..2.0f64).prop_map(Step::Advance),
        1 => Just(Step::Zero),
        1 => Just(Step::NaN),
        1 => Just(Step::Negative),
        1 => (0.0..1e7f64).prop_map(Step::Absurd),
        1 => (0.0..1.0f64).prop_map(Step::Drop),
    ]
}

proptest! {
    /// Whatever the register does, the axis never goes down, so interpolation never yields
    /// negative consumption.
    #[test]
    fn interpolation_never_yields_negative_consumption(
        steps in proptest::collection::vec(
            (step(), 1_000i64..300_000, proptest::option::of(0.0..500.0f64)),
            1..80,
        ),
        probes in proptest::collection::vec(0i64..30_000_000, 2..20),
    ) {
        let mut track = RegisterTrack::default();
        let moduli = [100_000.0];
        let p = Plausibility {
            max_kw: None,
            headroom: 10.0,
            min_bound_kw: 1000.0,
            slack_kwh: 0.05,
            moduli_kwh: &moduli,
        };
        let (mut t, mut truth) = (T0, 99_000.0);
        for (s, dt, kw) in steps {
            t += dt;
            let raw = match s {
                Step::Advance(d) => { truth += d; truth % 100_000.0 }
                Step::Zero => 0.0,
                Step::NaN => f64::NAN,
                Step::Negative => -truth,
                Step::Absurd(v) => v,
                Step::Drop(f) => { truth *= f; truth }
            };
            track.judge(t, raw, kw, &p);
        }
        let pts = track.points();
        for w in pts.collect::<Vec<_>>().windows(2) {
            prop_assert!(w[1].ts_ms > w[0].ts_ms);
            prop_assert!(w[1].kwh >= w[0].kwh - 1e-9);
        }
        let mut probes: Vec<i64> = probes.into_iter().map(|d| T0 + d).collect();
        probes.sort();
        let values: Vec<f64> = probes.iter().filter_map(|&t| track.value_at(t, i64::MAX)).map(|v| v.kwh).collect();
        for w in values.windows(2) {
            prop_assert!(w[1] >= w[0] - 1e-9, "{:?}", values);
        }
    }
}

/// A customer that stops answering is missing, not "stopped": its register is not judged
/// standing still on reads that never came.
#[test]
fn a_silent_meter_is_not_flagged_as_stopped() {
    let spec = AreaSpec {
        id: "T1".into(),
        supply: vec!["s".into()],
        customers: vec!["c".into()],
        interval_s: 60,
        high_loss_pct: 10.0,
        negative_loss_pct: -1.0,
        multipliers: Default::default(),
    };
    // Two intervals, the hold this test was written with.
    let settings = LossSettings {
        stopped: crate::analytics::register::StoppedRegister {
            stopped_after_s: 120,
            ..Default::default()
        },
        ..LossSettings::default()
    };
    let mut e = LossEngine::new(vec![spec], settings);
    let t0 = 1_800_000_000_000i64;
    let (mut es, mut ec) = (100.0, 50.0);
    let mut suspects = Vec::new();
    for step in 0..600 {
        let t = t0 + step * 2_000;
        let read = |energy: f64, current: f64| {
            let mut v = std::collections::BTreeMap::new();
            v.insert("energy_import_kwh".to_string(), energy);
            v.insert("current_l1_a".to_string(), current);
            v
        };
        e.on_reading(&Reading {
            meter: "s".into(),
            ts_ms: t,
            values: read(es, 9.0),
        });
        if step < 100 {
            e.on_reading(&Reading {
                meter: "c".into(),
                ts_ms: t + 500,
                values: read(ec, 8.0),
            });
        }
        for ev in e.on_tick(t + 600) {
            if let LossEvent::Record(r) = ev {
                suspects.extend(r.suspects);
            }
        }
        es += 2.0 * 2.0 / 3600.0;
        ec += 1.8 * 2.0 / 3600.0;
    }
    assert!(
        suspects
            .iter()
            .all(|s| s.reason != SuspectReason::StoppedRegister),
        "{suspects:?}"
    );
}

/// Intervals of an hour the gateway was off: no meter was read around their ends, so whatever
/// the registers' extrapolation gives is no loss figure — `loss_pct` is null and the record
/// says why; the measured intervals around them keep theirs.
#[test]
fn an_interval_with_no_meter_measured_has_no_loss_figure() {
    let model = AreaModel::new(Knobs::default(), 3.1);
    let mut engine = LossEngine::new(vec![spec()], LossSettings::default());
    let mut run = Run::default();
    let hour = HOUR_MS as i64;
    feed(&mut engine, &model, T0, T0 + hour, &mut run);
    feed(&mut engine, &model, T0 + 2 * hour, T0 + 3 * hour, &mut run);
    let blind: Vec<&LossRecord> = run
        .records
        .iter()
        .filter(|r| r.coverage_pct == 0.0)
        .collect();
    assert!(!blind.is_empty(), "no interval inside the gap was closed");
    for r in &blind {
        assert_eq!(r.loss_pct, None, "{}", rfc3339_ms(r.start_ms));
        assert_eq!(r.no_loss_pct.as_deref(), Some(NO_METER_MEASURED));
    }
    let msg = loss_message(&Topics::new("amr", "gw1"), blind[0]);
    assert!(msg.payload["loss_pct"].is_null());
    assert_eq!(msg.payload["no_loss_pct"], NO_METER_MEASURED);
    let measured: Vec<&LossRecord> = run.records.iter().filter(|r| r.complete).collect();
    assert!(!measured.is_empty());
    assert!(
        measured
            .iter()
            .all(|r| r.loss_pct.is_some() && r.no_loss_pct.is_none())
    );
    let msg = loss_message(&Topics::new("amr", "gw1"), measured[0]);
    assert!(msg.payload.get("no_loss_pct").is_none());
}

/// The gateway's wall clock jumps back an hour (an NTP correction of a clock that ran ahead)
/// and later forwards again: the meters' registers keep advancing, their reads are stamped an
/// hour early for a while. No interval is negative, none is closed twice, and the energy of the
/// intervals never exceeds what really flowed: nothing is counted twice.
#[test]
fn a_clock_that_jumps_back_gives_no_negative_interval_and_counts_no_energy_twice() {
    const H: i64 = 3_600_000;
    let model = AreaModel::new(
        Knobs {
            seed: 11,
            ..Knobs::default()
        },
        3.2,
    );
    let mut engine = LossEngine::new(vec![spec()], LossSettings::default());
    let mut records = Vec::new();
    let mut take = |events: Vec<LossEvent>| {
        for e in events {
            if let LossEvent::Record(r) = e {
                records.push(r);
            }
        }
    };
    // Hour 1 at the true time; hour 2 stamped an hour early (the clock went back); hour 3 at
    // the true time again (it went forwards).
    for (from, shift) in [(T0, 0), (T0 + H, -H), (T0 + 2 * H, 0)] {
        for mut r in model.readings(from, from + H) {
            r.ts_ms += shift;
            engine.on_reading(&r);
            take(engine.on_tick(r.ts_ms));
        }
    }
    take(engine.on_tick(T0 + 3 * H));
    assert!(!records.is_empty());
    let len = INTERVAL_S as i64 * 1000;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.end_ms - r.start_ms, len, "interval {i}");
        assert!(r.supply_kwh >= 0.0 && r.sales_kwh >= 0.0, "{r:?}");
        if i > 0 {
            assert!(
                r.start_ms >= records[i - 1].end_ms,
                "interval {} closed again or overlapping",
                rfc3339_ms(r.start_ms)
            );
        }
    }
    let counted: f64 = records.iter().map(|r| r.supply_kwh).sum();
    let (flowed, _, _) = model.truth(T0, T0 + 3 * H);
    assert!(
        counted <= flowed * 1.01,
        "counted {counted} kWh of supply, {flowed} kWh flowed"
    );
}

#[test]
fn a_snapshot_point_is_compact_and_the_named_form_still_reads() {
    use super::register::Point;
    let p = Point {
        ts_ms: T0,
        kwh: 1005.25,
        kw: Some(0.5),
    };
    let text = serde_json::to_string(&p).unwrap();
    assert_eq!(text, format!("[{T0},1005.25,0.5]"));
    assert_eq!(serde_json::from_str::<Point>(&text).unwrap(), p);
    let none = Point { kw: None, ..p };
    let text = serde_json::to_string(&none).unwrap();
    assert_eq!(serde_json::from_str::<Point>(&text).unwrap(), none);
    // As snapshots before wrote it (kw missing in the oldest).
    let named = format!(r#"{{"kw":0.5,"kwh":1005.25,"ts_ms":{T0}}}"#);
    assert_eq!(serde_json::from_str::<Point>(&named).unwrap(), p);
    let oldest = format!(r#"{{"kwh":1005.25,"ts_ms":{T0}}}"#);
    assert_eq!(serde_json::from_str::<Point>(&oldest).unwrap(), none);
}
