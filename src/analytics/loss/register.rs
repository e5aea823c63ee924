//! One cumulative energy register of one meter, made continuous and interpolable.
//!
//! A meter's register is read at arbitrary moments and may misbehave: a single absurd value
//! (NaN, zero, negative, a torn 32-bit word, a spike faster than the load allows), a wrap-around
//! of its fixed-width counter, or a replacement of the meter (the new one starts near zero).
//! The track maps every accepted read onto one *energy axis* that never goes down:
//!
//! - within a segment, axis = raw value + offset;
//! - a wrap adds the counter's modulus to the offset;
//! - a reset (meter replaced / register cleared) starts a new segment. A new meter starts near
//!   zero, so when its first value could have been counted since the old meter's last read,
//!   the new segment is taken to start at 0 right after that read; otherwise (a second-hand
//!   meter, a preset register) its start is unknown and the gap is bridged at the recent rate.
//!   Either way "old end − old value at window start + new value − new start" falls out of
//!   plain differences on the axis.
//!
//! A read that is neither plausible from the last accepted read nor a wrap is rejected as a
//! glitch and remembered as a *candidate*: when the next read continues from the candidate
//! rather than from the old trend, the candidate is re-qualified as a reset (a revision the
//! history can apply). A plausible read that the next read contradicts (the next one falls back
//! to the trend before it) is re-qualified as a glitch and removed.

use super::Quality;
use crate::analytics::register::{NOISE_KWH, drop_kwh};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// One accepted read on the energy axis. In a snapshot `[ts_ms, kwh, kw]` (a meter's loss
/// part holds a dozen of them per register, rewritten every interval: the names cost a third
/// of the bytes); snapshots written before with named fields still read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "PointForm", from = "PointForm")]
pub struct Point {
    pub ts_ms: i64,
    /// Axis value, kWh (primary side).
    pub kwh: f64,
    /// The meter's power in this register's direction at the read, kW, when it reports one;
    /// shapes the interpolation (see [`RegisterTrack::value_at`]).
    pub kw: Option<f64>,
}

/// How a [`Point`] is written (`Compact`) or was written before (`Named`).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum PointForm {
    Compact(i64, f64, Option<f64>),
    Named {
        ts_ms: i64,
        kwh: f64,
        #[serde(default)]
        kw: Option<f64>,
    },
}

impl From<Point> for PointForm {
    fn from(p: Point) -> PointForm {
        PointForm::Compact(p.ts_ms, p.kwh, p.kw)
    }
}

impl From<PointForm> for Point {
    fn from(f: PointForm) -> Point {
        match f {
            PointForm::Compact(ts_ms, kwh, kw) | PointForm::Named { ts_ms, kwh, kw } => {
                Point { ts_ms, kwh, kw }
            }
        }
    }
}

/// A [`Point`] as a track holds it: no power is NaN (never a power read: those are finite),
/// so a point is 24 bytes rather than 32 — a track keeps up to 30 of them, two per meter.
/// Written and read as a [`Point`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(into = "Point", from = "Point")]
struct HeldPoint {
    ts_ms: i64,
    kwh: f64,
    kw: f64,
}

impl From<Point> for HeldPoint {
    fn from(p: Point) -> HeldPoint {
        HeldPoint {
            ts_ms: p.ts_ms,
            kwh: p.kwh,
            kw: p.kw.unwrap_or(f64::NAN),
        }
    }
}

impl From<HeldPoint> for Point {
    fn from(h: HeldPoint) -> Point {
        Point {
            ts_ms: h.ts_ms,
            kwh: h.kwh,
            kw: (!h.kw.is_nan()).then_some(h.kw),
        }
    }
}

impl PartialEq for HeldPoint {
    fn eq(&self, other: &HeldPoint) -> bool {
        Point::from(*self) == Point::from(*other)
    }
}

/// The limits a new read is judged against (already scaled by the meter's multiplier).
#[derive(Debug, Clone, Copy)]
pub struct Plausibility<'a> {
    /// Absolute rate bound, kW; `None` derives it from the meter's recent rate.
    pub max_kw: Option<f64>,
    /// Derived bound = headroom × the recent maximum rate ...
    pub headroom: f64,
    /// ... but never below this, kW.
    pub min_bound_kw: f64,
    /// Increment always allowed regardless of elapsed time (register resolution), kWh.
    pub slack_kwh: f64,
    /// Moduli of fixed-width counters, kWh (primary side), ascending.
    pub moduli_kwh: &'a [f64],
}

/// A later decision about an earlier read of the same register.
#[derive(Debug, Clone, PartialEq)]
pub struct Requalified {
    pub ts_ms: i64,
    pub quality: Quality,
    pub note: String,
}

/// The decision about one read.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub quality: Quality,
    pub note: String,
    pub revises: Option<Requalified>,
}

impl Judgement {
    fn new(quality: Quality, note: impl Into<String>) -> Self {
        Judgement {
            quality,
            note: note.into(),
            revises: None,
        }
    }
}

/// A value of the axis at an instant, and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AxisValue {
    pub kwh: f64,
    /// Reads exist on both sides of the instant (or exactly at it).
    pub measured: bool,
    /// The read after the instant has itself been followed by another accepted read, so no
    /// later revision can move it.
    pub settled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Candidate {
    ts_ms: i64,
    raw: f64,
}

/// The continuous track of one register. See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterTrack {
    points: VecDeque<HeldPoint>,
    offset: f64,
    /// Boxed: rarely there, 8 bytes rather than 24 in every track.
    candidate: Option<Box<Candidate>>,
    segment_start_ms: i64,
    segments: u32,
}

const HOUR_MS: f64 = 3_600_000.0;
/// Reads closer than this are combined when estimating a rate, so register resolution does not
/// look like a fast load.
const RATE_SPAN_MS: i64 = 60_000;
/// The span over which the current rate is estimated (bridging a reset, extrapolating).
const RECENT_RATE_SPAN_MS: i64 = 900_000;

impl RegisterTrack {
    /// The accepted reads kept, oldest first.
    pub fn points(&self) -> impl ExactSizeIterator<Item = Point> + '_ {
        self.points.iter().map(|&p| Point::from(p))
    }

    /// The accepted read `i` (0 the oldest kept).
    fn point(&self, i: usize) -> Option<Point> {
        self.points.get(i).map(|&p| Point::from(p))
    }

    /// The last accepted read.
    pub fn last(&self) -> Option<Point> {
        self.points.back().map(|&p| Point::from(p))
    }

    /// Number of segments started after the first (resets seen).
    pub fn resets(&self) -> u32 {
        self.segments
    }

    /// Judges one raw read and, when accepted, adds it to the axis.
    pub fn judge(&mut self, ts_ms: i64, raw: f64, kw: Option<f64>, p: &Plausibility) -> Judgement {
        let kw = kw.filter(|k| k.is_finite()).map(|k| k.max(0.0));
        if !raw.is_finite() {
            return Judgement::new(Quality::Glitch, "not a number");
        }
        if raw < 0.0 {
            return Judgement::new(Quality::Glitch, format!("negative value {raw}"));
        }
        let Some(last) = self.last() else {
            self.offset = 0.0;
            self.segment_start_ms = ts_ms;
            self.points.push_back(HeldPoint::from(Point {
                ts_ms,
                kwh: raw,
                kw,
            }));
            return Judgement::new(Quality::Good, "first read");
        };
        if ts_ms <= last.ts_ms {
            return Judgement::new(Quality::Stale, "not newer than the last accepted read");
        }
        let axis = raw + self.offset;
        let bound = self.bound_kw(p);

        // 1. Continues the trend.
        if plausible(last, ts_ms, axis, bound, p.slack_kwh) {
            self.candidate = None;
            self.points.push_back(HeldPoint::from(Point {
                ts_ms,
                kwh: axis,
                kw,
            }));
            return Judgement::new(Quality::Good, "");
        }
        let last_raw = last.kwh - self.offset;

        // 2. A fixed-width counter wrapped.
        if raw < last_raw {
            let allowed = bound * (ts_ms - last.ts_ms) as f64 / HOUR_MS + p.slack_kwh;
            if let Some(&m) = p
                .moduli_kwh
                .iter()
                .find(|&&m| m > last_raw && raw + m - last_raw <= allowed)
            {
                self.offset += m;
                self.candidate = None;
                self.points.push_back(HeldPoint::from(Point {
                    ts_ms,
                    kwh: raw + self.offset,
                    kw,
                }));
                return Judgement::new(
                    Quality::Wrap,
                    format!("counter wrapped at {m} kWh ({last_raw} -> {raw})"),
                );
            }
        }

        // 3. The previous rejected read was the start of a new segment (replacement / reset).
        if let Some(c) = self.candidate.as_deref().copied()
            && ts_ms > c.ts_ms
            && plausible(
                Point {
                    ts_ms: c.ts_ms,
                    kwh: c.raw,
                    kw: None,
                },
                ts_ms,
                raw,
                bound,
                p.slack_kwh,
            )
        {
            // A new meter starts near zero: when the first value could have been counted since
            // the last read of the old one, the new segment starts at 0 right after that read
            // (the reference's "old end − old start + new value − new start" with start 0).
            // Otherwise (a second-hand meter, a register preset) its start is unknown: the gap
            // is bridged at the recent rate.
            let gap_h = (c.ts_ms - last.ts_ms) as f64 / HOUR_MS;
            let (start, how) = if c.raw <= bound * gap_h + p.slack_kwh {
                (last.kwh + c.raw, "counted from 0".to_string())
            } else {
                let bridge = self.recent_rate_kw().unwrap_or(0.0) * gap_h;
                (
                    last.kwh + bridge,
                    format!(
                        "{} kWh bridged over the gap at the recent rate",
                        round3(bridge)
                    ),
                )
            };
            self.offset = start - c.raw;
            self.segment_start_ms = c.ts_ms;
            self.segments += 1;
            self.candidate = None;
            self.points.push_back(HeldPoint::from(Point {
                ts_ms: c.ts_ms,
                kwh: start,
                kw: None,
            }));
            self.points.push_back(HeldPoint::from(Point {
                ts_ms,
                kwh: raw + self.offset,
                kw,
            }));
            return Judgement {
                quality: Quality::Good,
                note: "continues the new segment".into(),
                revises: Some(Requalified {
                    ts_ms: c.ts_ms,
                    quality: Quality::Reset,
                    note: format!(
                        "new segment from {} kWh (was {last_raw} kWh, {} s before); {how}",
                        c.raw,
                        (c.ts_ms - last.ts_ms) / 1000
                    ),
                }),
            };
        }

        // 4. The last accepted read was the odd one out: this one continues the trend before it.
        if axis < last.kwh && self.points.len() >= 2 && last.ts_ms > self.segment_start_ms {
            let prev = self.point(self.points.len() - 2).expect("two points");
            if plausible(prev, ts_ms, axis, bound, p.slack_kwh) {
                self.points.pop_back();
                self.points.push_back(HeldPoint::from(Point {
                    ts_ms,
                    kwh: axis,
                    kw,
                }));
                self.candidate = None;
                return Judgement {
                    quality: Quality::Good,
                    note: "back on the trend".into(),
                    revises: Some(Requalified {
                        ts_ms: last.ts_ms,
                        quality: Quality::Glitch,
                        note: format!(
                            "spike: {} kWh above the trend the next read returned to",
                            round3(last.kwh - axis)
                        ),
                    }),
                };
            }
        }

        // 5. Rejected; remembered in case it starts a new segment.
        self.candidate = Some(Box::new(Candidate { ts_ms, raw }));
        let dev = axis - last.kwh;
        let mut note = if raw == 0.0 {
            "zero".to_string()
        } else if dev < 0.0 {
            format!("register went down by {} kWh", round3(-dev))
        } else {
            let rate = dev / ((ts_ms - last.ts_ms) as f64 / HOUR_MS);
            format!(
                "jump of {} kWh in {} s ({} kW, bound {} kW)",
                round3(dev),
                (ts_ms - last.ts_ms) / 1000,
                round3(rate),
                round3(bound)
            )
        };
        if let Some(hint) = torn_word_hint(dev) {
            note.push_str("; ");
            note.push_str(&hint);
        }
        Judgement::new(Quality::Glitch, note)
    }

    /// The rate bound applying to the next read, kW.
    fn bound_kw(&self, p: &Plausibility) -> f64 {
        if let Some(m) = p.max_kw {
            return m;
        }
        (p.headroom * self.recent_max_kw()).max(p.min_bound_kw)
    }

    /// The largest rate seen over spans of at least a minute within the current segment.
    fn recent_max_kw(&self) -> f64 {
        let mut max: f64 = 0.0;
        let mut anchor: Option<Point> = None;
        for pt in self.points().filter(|pt| pt.ts_ms >= self.segment_start_ms) {
            match anchor {
                None => anchor = Some(pt),
                Some(a) if pt.ts_ms - a.ts_ms >= RATE_SPAN_MS => {
                    max = max.max((pt.kwh - a.kwh) / ((pt.ts_ms - a.ts_ms) as f64 / HOUR_MS));
                    anchor = Some(pt);
                }
                Some(_) => {}
            }
        }
        max
    }

    /// The rate over the last quarter hour of the current segment (or what there is of it), kW.
    pub fn recent_rate_kw(&self) -> Option<f64> {
        let last = self.last()?;
        let from = self.points().find(|pt| {
            pt.ts_ms >= self.segment_start_ms && pt.ts_ms >= last.ts_ms - RECENT_RATE_SPAN_MS
        })?;
        if last.ts_ms <= from.ts_ms {
            return None;
        }
        Some(((last.kwh - from.kwh) / ((last.ts_ms - from.ts_ms) as f64 / HOUR_MS)).max(0.0))
    }

    /// The axis value at `t_ms`: interpolated between the reads just before and after it (or
    /// the read exactly at it), otherwise extrapolated from the nearest rate. `measured` is
    /// false when extrapolated or when the two reads are more than `max_gap_ms` apart.
    pub fn value_at(&self, t_ms: i64, max_gap_ms: i64) -> Option<AxisValue> {
        let n = self.points.len();
        let last = self.last()?;
        let idx = self.points.partition_point(|pt| pt.ts_ms < t_ms);
        if idx == n {
            let rate = self.recent_rate_kw().unwrap_or(0.0);
            return Some(AxisValue {
                kwh: last.kwh + rate * (t_ms - last.ts_ms) as f64 / HOUR_MS,
                measured: false,
                settled: false,
            });
        }
        let after = self.point(idx).expect("idx < n");
        let settled = idx + 1 < n;
        if after.ts_ms == t_ms {
            return Some(AxisValue {
                kwh: after.kwh,
                measured: true,
                settled,
            });
        }
        if idx == 0 {
            let rate = match self.point(1) {
                Some(next) if next.ts_ms > after.ts_ms => ((next.kwh - after.kwh)
                    / ((next.ts_ms - after.ts_ms) as f64 / HOUR_MS))
                    .max(0.0),
                _ => 0.0,
            };
            return Some(AxisValue {
                kwh: after.kwh - rate * (after.ts_ms - t_ms) as f64 / HOUR_MS,
                measured: false,
                settled,
            });
        }
        let before = self.point(idx - 1).expect("idx > 0");
        Some(AxisValue {
            kwh: between(before, after, t_ms),
            measured: after.ts_ms - before.ts_ms <= max_gap_ms,
            settled,
        })
    }

    /// Forgets reads no longer needed: keeps the last read at or before `keep_from_ms` and
    /// everything after it, at least `min_points`, at most `max_points`.
    pub fn prune(&mut self, keep_from_ms: i64, min_points: usize, max_points: usize) {
        while self.points.len() > min_points.max(1) && self.points[1].ts_ms <= keep_from_ms {
            self.points.pop_front();
        }
        while self.points.len() > max_points.max(2) {
            self.points.pop_front();
        }
    }
}

/// How far the energy a read gap's two powers imply (their mean × the gap) may differ from the
/// energy the register actually advanced over it, as a share of the latter, for the powers to
/// shape the curve between the reads.
pub const POWER_AGREEMENT: f64 = 0.25;

/// The axis between two reads at `t_ms`. Linear, unless both reads carry the meter's power
/// *and those powers agree with the energy the register advanced between them*: then a cubic
/// (Hermite with the powers as slopes), which follows a load that changed smoothly between the
/// reads more closely than a straight line. The powers agree when the energy they imply,
/// (p₁ + p₂) / 2 × gap, is within [`POWER_AGREEMENT`] of the register's advance, and the
/// cubic they give is monotone (Fritsch–Carlson: α² + β² ≤ 9 for the slopes relative to the
/// secant). A power register with its own scale, a power read at another moment than the
/// energy, a load that switched between the reads: each fails the test and gets the straight
/// line, so a refinement is never worse than what it refines. Either way the value passes
/// through both reads.
fn between(a: Point, b: Point, t_ms: i64) -> f64 {
    let s = (t_ms - a.ts_ms) as f64 / (b.ts_ms - a.ts_ms) as f64;
    let rise = b.kwh - a.kwh;
    let linear = a.kwh + rise * s;
    let (Some(ka), Some(kb)) = (a.kw, b.kw) else {
        return linear;
    };
    let h = (b.ts_ms - a.ts_ms) as f64 / HOUR_MS;
    if rise <= 0.0 || h <= 0.0 {
        return linear;
    }
    let implied = (ka + kb) / 2.0 * h;
    if (implied - rise).abs() > POWER_AGREEMENT * rise {
        return linear;
    }
    let secant = rise / h;
    let (ma, mb) = (ka / secant, kb / secant);
    if ma < 0.0 || mb < 0.0 || ma * ma + mb * mb > 9.0 {
        return linear;
    }
    let (s2, s3) = (s * s, s * s * s);
    let shape = (-2.0 * s3 + 3.0 * s2) + (s3 - 2.0 * s2 + s) * ma + (s3 - s2) * mb;
    a.kwh + rise * shape.clamp(0.0, 1.0)
}

/// True when going from `from` to (`ts_ms`, `kwh`) is a non-negative increment within the rate
/// bound (plus the resolution slack).
fn plausible(from: Point, ts_ms: i64, kwh: f64, bound_kw: f64, slack_kwh: f64) -> bool {
    let d = kwh - from.kwh;
    let dt_h = (ts_ms - from.ts_ms) as f64 / HOUR_MS;
    drop_kwh(from.kwh, kwh, NOISE_KWH).is_none() && d <= bound_kw * dt_h + slack_kwh
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A deviation of (nearly) a whole number of 65536-count steps at a decimal resolution is the
/// mark of a 32-bit register read as two 16-bit words that changed in between.
fn torn_word_hint(dev: f64) -> Option<String> {
    let dev = dev.abs();
    (0..=4).find_map(|d| {
        let step = 65_536.0 / 10f64.powi(d);
        let k = dev / step;
        let whole = k.round();
        ((1.0..=4.0).contains(&whole) && (k - whole).abs() < 0.01).then(|| {
            format!(
                "{whole} × 65536 counts of {} kWh: torn 32-bit read?",
                1.0 / 10f64.powi(d)
            )
        })
    })
}
