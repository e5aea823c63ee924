//! The rules about a meter's cumulative energy registers read after read, shared by the
//! line-loss engine and the alarm catalogue:
//!
//! - a register **went down** when a read is below the one before by more than a tolerance
//!   (`reading_down` alarms; the loss engine's robust counters, which take no tolerance beyond
//!   float noise because their energy axis never goes down);
//! - a register **stood still** when it did not move beyond float noise;
//! - a meter is **stopped** when its registers stood still for `stopped_after_s` while load
//!   flowed ([`StoppedRegister`]: the `meter_stopped` alarm, the loss engine's
//!   `stopped_register` suspect).
//!
//! The one settings source of the stopped-register rule is `[alarms.meter_stopped]`
//! (`min_current_a`, `min_power_kw`, `stopped_after_s`); the loader hands the same rule to the
//! loss engine.

use crate::model::Reading;
use serde::{Deserialize, Serialize};

/// Register differences up to this are float noise, not a change, kWh.
pub const NOISE_KWH: f64 = 1e-9;

const CURRENTS: [&str; 3] = ["current_l1_a", "current_l2_a", "current_l3_a"];

/// How far `current` is below `previous`, when it is more than `tolerance_kwh` below (the
/// register went down); `None` otherwise.
pub fn drop_kwh(previous: f64, current: f64, tolerance_kwh: f64) -> Option<f64> {
    let drop = previous - current;
    (drop > tolerance_kwh).then_some(drop)
}

/// True when a register moved (either way) between two reads, beyond float noise.
pub fn moved(previous: f64, current: f64) -> bool {
    (current - previous).abs() > NOISE_KWH
}

/// When a register standing still means a stopped meter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StoppedRegister {
    /// Load flows when a phase current is at least this, A as the meter reports it. Default 0.5.
    pub min_current_a: f64,
    /// ... or when |power_kw| is at least this, kW (primary). Default 0.1.
    pub min_power_kw: f64,
    /// How long the registers must stand still while load flows. Default 1800 (two 15-minute
    /// loss intervals).
    pub stopped_after_s: u64,
}

impl Default for StoppedRegister {
    fn default() -> Self {
        StoppedRegister {
            min_current_a: 0.5,
            min_power_kw: 0.1,
            stopped_after_s: 1800,
        }
    }
}

impl StoppedRegister {
    /// Whether the reading shows load flowing: `None` when it carries neither a phase current
    /// nor `power_kw` (nothing to judge by).
    pub fn load_flows(&self, r: &Reading) -> Option<bool> {
        let power = finite(r, "power_kw");
        let mut currents = CURRENTS.iter().filter_map(|c| finite(r, c)).peekable();
        if currents.peek().is_none() && power.is_none() {
            return None;
        }
        Some(
            currents.any(|a| a >= self.min_current_a)
                || power.is_some_and(|p| p.abs() >= self.min_power_kw),
        )
    }

    /// The hold in milliseconds.
    pub fn stopped_after_ms(&self) -> i64 {
        self.stopped_after_s as i64 * 1000
    }
}

/// The largest finite phase current of a reading, A.
pub fn largest_current_a(r: &Reading) -> Option<f64> {
    CURRENTS
        .iter()
        .filter_map(|c| finite(r, c))
        .fold(None, |m: Option<f64>, c| Some(m.map_or(c, |m| m.max(c))))
}

fn finite(r: &Reading, name: &str) -> Option<f64> {
    r.values.get(name).copied().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(values: &[(&str, f64)]) -> Reading {
        Reading {
            meter: "m".into(),
            ts_ms: 0,
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn load_flows_by_current_or_power() {
        let rule = StoppedRegister::default();
        assert_eq!(
            rule.load_flows(&reading(&[("energy_import_kwh", 1.0)])),
            None
        );
        assert_eq!(
            rule.load_flows(&reading(&[("current_l2_a", 0.5)])),
            Some(true)
        );
        assert_eq!(
            rule.load_flows(&reading(&[("current_l1_a", 0.4)])),
            Some(false)
        );
        assert_eq!(rule.load_flows(&reading(&[("power_kw", -0.2)])), Some(true));
        assert_eq!(
            largest_current_a(&reading(&[("current_l1_a", 1.0), ("current_l3_a", 2.0)])),
            Some(2.0)
        );
    }

    #[test]
    fn down_and_still() {
        assert_eq!(drop_kwh(10.0, 9.0, 0.01), Some(1.0));
        assert_eq!(drop_kwh(10.0, 9.995, 0.01), None);
        assert_eq!(drop_kwh(10.0, 11.0, 0.0), None);
        assert!(!moved(5.0, 5.0));
        assert!(moved(5.0, 5.01));
        assert!(moved(5.0, 4.99));
    }
}
