//! Collection success (采集成功率): per local day, per bus and per area, how many configured
//! meters have that day's daily freeze, the rate, and which meters failed.
//!
//! The day's report is drawn from the freeze engine's decision ([`FreezeDay`], taken
//! `[collection] report_at` after local midnight): a meter counts as collected when it has a
//! daily freeze for that midnight, interpolated, extrapolated or its own. Pure: the decision
//! and the groups in, a [`CollectionReport`] out.

use super::freeze::FreezeDay;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// `[collection]` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectionSettings {
    /// When the day's report is published, seconds after local midnight (the key is
    /// `report_at = "HH:MM"`, local time). The freezes of the day are decided then. Default
    /// 3600 (01:00).
    pub report_at_s: u64,
}

impl Default for CollectionSettings {
    fn default() -> Self {
        CollectionSettings { report_at_s: 3600 }
    }
}

/// A group of meters the rate is reported for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    Bus,
    Area,
}

impl GroupKind {
    /// `bus` or `area`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Bus => "bus",
            GroupKind::Area => "area",
        }
    }
}

/// A bus or an area and its meters, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionGroup {
    pub kind: GroupKind,
    pub id: String,
    pub meters: Vec<String>,
}

/// One group's figures of one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSuccess {
    pub kind: GroupKind,
    pub id: String,
    /// Meters configured in the group.
    pub configured: usize,
    /// Of them, meters with the day's freeze.
    pub frozen: usize,
    /// frozen / configured × 100; 100 for an empty group.
    pub rate_pct: f64,
    /// Meters without the day's freeze, sorted.
    pub failed: Vec<String>,
}

/// The day's collection success, whole and per group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionReport {
    /// The local day, `2026-11-23`, whose midnight freeze was collected.
    pub day: String,
    /// Its midnight, ms since the epoch.
    pub ts_ms: i64,
    pub configured: usize,
    pub frozen: usize,
    pub rate_pct: f64,
    pub failed: Vec<String>,
    /// Buses first, then areas, in configuration order.
    pub groups: Vec<GroupSuccess>,
}

fn rate(frozen: usize, configured: usize) -> f64 {
    if configured == 0 {
        100.0
    } else {
        frozen as f64 / configured as f64 * 100.0
    }
}

/// The report of the decided day `day` for `groups`.
pub fn report(day: &FreezeDay, groups: &[CollectionGroup]) -> CollectionReport {
    let frozen: BTreeSet<&str> = day.frozen.iter().map(String::as_str).collect();
    let groups = groups
        .iter()
        .map(|g| {
            let failed: BTreeSet<String> = g
                .meters
                .iter()
                .filter(|m| !frozen.contains(m.as_str()))
                .cloned()
                .collect();
            let configured = g.meters.len();
            GroupSuccess {
                kind: g.kind,
                id: g.id.clone(),
                configured,
                frozen: configured - failed.len(),
                rate_pct: rate(configured - failed.len(), configured),
                failed: failed.into_iter().collect(),
            }
        })
        .collect();
    let configured = day.frozen.len() + day.missing.len();
    CollectionReport {
        day: day.day.clone(),
        ts_ms: day.ts_ms,
        configured,
        frozen: day.frozen.len(),
        rate_pct: rate(day.frozen.len(), configured),
        failed: day.missing.clone(),
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_with_failures_per_bus_and_area() {
        let day = FreezeDay {
            ts_ms: 1_795_449_600_000,
            day: "2026-11-23".into(),
            frozen: vec!["a1".into(), "a2".into(), "b1".into()],
            missing: vec!["b2".into()],
        };
        let groups = [
            CollectionGroup {
                kind: GroupKind::Bus,
                id: "rs485-1".into(),
                meters: vec!["a1".into(), "a2".into()],
            },
            CollectionGroup {
                kind: GroupKind::Bus,
                id: "rs485-2".into(),
                meters: vec!["b1".into(), "b2".into()],
            },
            CollectionGroup {
                kind: GroupKind::Area,
                id: "t1".into(),
                meters: vec!["a1".into(), "a2".into(), "b1".into(), "b2".into()],
            },
        ];
        let r = report(&day, &groups);
        assert_eq!((r.configured, r.frozen, r.rate_pct), (4, 3, 75.0));
        assert_eq!(r.failed, ["b2"]);
        assert_eq!(r.groups[0].rate_pct, 100.0);
        assert!(r.groups[0].failed.is_empty());
        assert_eq!((r.groups[1].frozen, r.groups[1].rate_pct), (1, 50.0));
        assert_eq!(r.groups[1].failed, ["b2"]);
        assert_eq!(
            (r.groups[2].kind, r.groups[2].rate_pct),
            (GroupKind::Area, 75.0)
        );
    }
}
