//! Pointing at the cause of a loss: which customer's consumption moved against the area's loss.
//!
//! The signature of a bypass (part of a customer's load fed around its meter) is a step: from
//! some interval on, the customer's metered consumption drops and the area's loss rises by about
//! as much, because the supply meter still sees the whole load. Over a sliding window of closed
//! complete intervals, for every customer and every split of the window into "before" and
//! "after" (each side at least [`MIN_SIDE`] intervals):
//!
//! 1. The technical loss, which grows with the square of the load, is taken out first:
//!    `excess_i = loss_i − α·supply_i²`, with α the lower quartile of `loss_i / supply_i²` over
//!    the window (clamped at 0), so a load ramp does not look like a loss step.
//! 2. `drop` = mean consumption before − after, `rise` = mean excess after − before. Both must
//!    be positive, `rise` and `drop` within a factor of two of each other
//!    (`balance = min/max ≥ 0.5`), and the matched part `min(drop, rise)` at least
//!    `min_step_pct` % of the mean supply per interval.
//! 3. `score = balance × min(drop, rise) / (σ·√(1/n_before + 1/n_after) + floor)`: the matched
//!    step in units of its own standard error (σ = pooled standard deviation of the excess
//!    loss within the two sides; floor = 0.2 % of the mean supply, so a noise-free area does
//!    not divide by zero).
//!
//! A customer's score is its best split. Only customers at or above the threshold are
//! published, so with no theft nobody is singled out.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// The fewest intervals on each side of a split.
pub const MIN_SIDE: usize = 2;
/// The smallest share of the rise and the drop that must match (`min/max`).
const MIN_BALANCE: f64 = 0.5;
/// The noise floor of the excess loss, as a share of the mean supply per interval.
const FLOOR_SHARE: f64 = 0.002;

/// One closed complete interval as the suspect ranking remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowEntry {
    pub start_ms: i64,
    pub supply_kwh: f64,
    pub loss_kwh: f64,
    /// Net consumption of each customer over the interval, kWh.
    pub customers: Consumption,
}

/// Each customer's net consumption over one interval, kWh. Held as the area's customer ids,
/// sorted and shared by every entry of the window (a window of 16 intervals of 999
/// customers would otherwise hold 16 copies of every id), and one number each; read and
/// written as the map by meter id it was before (same keys, order and numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct Consumption {
    /// Sorted, without duplicates.
    meters: Arc<[String]>,
    kwh: Box<[f64]>,
}

impl Consumption {
    /// The consumption of each of `meters` (sorted, without duplicates) by `kwh_of`.
    pub fn of(meters: &Arc<[String]>, kwh_of: impl Fn(&str) -> f64) -> Consumption {
        debug_assert!(meters.windows(2).all(|w| w[0] < w[1]));
        Consumption {
            meters: meters.clone(),
            kwh: meters.iter().map(|m| kwh_of(m)).collect(),
        }
    }

    pub fn get(&self, meter: &str) -> Option<f64> {
        let i = self
            .meters
            .binary_search_by(|m| m.as_str().cmp(meter))
            .ok()?;
        Some(self.kwh[i])
    }

    /// Shares `meters` when they are this entry's ids (after a restart each entry read its
    /// own copy).
    pub fn share(&mut self, meters: &Arc<[String]>) {
        if !Arc::ptr_eq(&self.meters, meters) && self.meters == *meters {
            self.meters = meters.clone();
        }
    }
}

impl Serialize for Consumption {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.meters.iter().zip(self.kwh.iter()))
    }
}

impl<'de> Deserialize<'de> for Consumption {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Consumption, D::Error> {
        let map = BTreeMap::<String, f64>::deserialize(d)?;
        let kwh = map.values().copied().collect();
        Ok(Consumption {
            meters: map.into_keys().collect(),
            kwh,
        })
    }
}

/// A customer whose consumption stepped down as the area's loss stepped up.
#[derive(Debug, Clone, PartialEq)]
pub struct BypassSign {
    pub meter: String,
    pub score: f64,
    /// kWh per interval.
    pub drop_kwh: f64,
    /// kWh per interval.
    pub rise_kwh: f64,
    /// Start of the first interval after the step.
    pub since_ms: i64,
}

/// Scores every customer over the window (see the module documentation); returns all
/// customers with a positive score, best first.
pub fn bypass_signs(
    window: &VecDeque<WindowEntry>,
    customers: &[String],
    min_step_pct: f64,
) -> Vec<BypassSign> {
    let n = window.len();
    if n < 2 * MIN_SIDE {
        return Vec::new();
    }
    let mean_supply = window.iter().map(|w| w.supply_kwh).sum::<f64>() / n as f64;
    if mean_supply <= 0.0 {
        return Vec::new();
    }
    let mut ratios: Vec<f64> = window
        .iter()
        .filter(|w| w.supply_kwh > 0.0)
        .map(|w| w.loss_kwh / (w.supply_kwh * w.supply_kwh))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let alpha = ratios
        .get(ratios.len() / 4)
        .copied()
        .unwrap_or(0.0)
        .max(0.0);
    let excess: Vec<f64> = window
        .iter()
        .map(|w| w.loss_kwh - alpha * w.supply_kwh * w.supply_kwh)
        .collect();
    let floor = FLOOR_SHARE * mean_supply;
    let min_step = min_step_pct / 100.0 * mean_supply;

    let mut signs = Vec::new();
    for meter in customers {
        let consumption: Vec<f64> = window
            .iter()
            .map(|w| w.customers.get(meter).unwrap_or(0.0))
            .collect();
        let mut best: Option<BypassSign> = None;
        for (k, first_after) in window
            .iter()
            .enumerate()
            .take(n - MIN_SIDE + 1)
            .skip(MIN_SIDE)
        {
            let (eb, ea) = excess.split_at(k);
            let (cb, ca) = consumption.split_at(k);
            let drop = mean(cb) - mean(ca);
            let rise = mean(ea) - mean(eb);
            if drop <= 0.0 || rise <= 0.0 {
                continue;
            }
            let matched = drop.min(rise);
            let balance = matched / drop.max(rise);
            if balance < MIN_BALANCE || matched < min_step {
                continue;
            }
            let ss = sum_sq_dev(eb) + sum_sq_dev(ea);
            let sigma = if n > 2 {
                (ss / (n - 2) as f64).sqrt()
            } else {
                0.0
            };
            let se = sigma * (1.0 / k as f64 + 1.0 / (n - k) as f64).sqrt();
            let score = balance * matched / (se + floor);
            if best.as_ref().is_none_or(|b| score > b.score) {
                best = Some(BypassSign {
                    meter: meter.clone(),
                    score,
                    drop_kwh: drop,
                    rise_kwh: rise,
                    since_ms: first_after.start_ms,
                });
            }
        }
        signs.extend(best);
    }
    signs.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.meter.cmp(&b.meter)));
    signs
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn sum_sq_dev(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m) * (x - m)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_entry_reads_and_writes_its_map_by_meter_as_before() {
        let old = r#"{"start_ms":1795363200000,"supply_kwh":120.5,"loss_kwh":3.25,"customers":{"c1":1.5,"c10":0.0,"c2":2.75}}"#;
        let w: WindowEntry = serde_json::from_str(old).unwrap();
        assert_eq!(serde_json::to_string(&w).unwrap(), old);
        assert_eq!(w.customers.get("c10"), Some(0.0));
        assert_eq!(w.customers.get("c2"), Some(2.75));
        assert_eq!(w.customers.get("c3"), None);
        // Built from the area's customers (in configuration order, sorted once), the same.
        let mut ids = vec!["c2".to_string(), "c1".into(), "c10".into()];
        ids.sort();
        let ids: Arc<[String]> = ids.into();
        let kwh = BTreeMap::from([("c1", 1.5), ("c2", 2.75)]);
        let mut built = WindowEntry {
            start_ms: 1_795_363_200_000,
            supply_kwh: 120.5,
            loss_kwh: 3.25,
            customers: Consumption::of(&ids, |c| kwh.get(c).copied().unwrap_or(0.0)),
        };
        assert_eq!(built, w);
        let mut restored = w.clone();
        restored.customers.share(&ids);
        assert!(Arc::ptr_eq(&restored.customers.meters, &ids));
        built.customers.share(&ids);
        assert_eq!(built, restored);
    }
}
