//! The analytics' sections: `[loss]`, `[alarms]` with one `[alarms.<kind>]` table per alarm
//! kind, and `[voltage_quality]`.
//!
//! Every key is optional: the engines' settings structs ([`LossSettings`], [`AlarmSettings`],
//! [`VoltageQualitySettings`]) own the defaults through `#[serde(default)]`. The loader checks
//! each table key by key against a schema below — unknown keys with a "did you mean", wrong
//! types and out-of-range values, each at its `FILE:LINE:COL` — turns the valid keys into a
//! JSON object and lets serde fill the struct. A unit test keeps each schema and its struct's
//! fields in step.
//!
//! A rule shared by two engines has one source ([`MOVED`]): the voltage band is
//! `[alarms.voltage]`, the stopped-register rule `[alarms.meter_stopped]`. The keys that set
//! them elsewhere before (`[voltage_quality] nominal_v`, `[loss] stopped_current_a`, ...) are
//! still read and checked where they are, then applied where they now live, with a warning
//! that names the replacement; the loader hands each rule to both engines.

use crate::analytics::alarms::AlarmSettings;
use crate::analytics::curve::CurveSettings;
use crate::analytics::freeze::FreezeSettings;
use crate::analytics::loss::LossSettings;
use crate::analytics::voltage::VoltageQualitySettings;
use crate::diagnostic::{Report, Section, with_article};
use serde_json::{Map, Value, json};
use std::ops::Range;
use toml::de::{DeTable, DeValue};

/// The severities an alarm kind may be given.
pub const SEVERITIES: &[&str] = &["critical", "major", "minor", "info"];

/// Longest hold time accepted, seconds (30 days).
const MAX_HOLD_S: i128 = 30 * 86_400;

/// What a key holds and which values are allowed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// An integer in `min..=max`.
    Int(i128, i128),
    /// A finite number between `min` and `max`, each bound excluded when its `open_` flag is
    /// set (`max` = `f64::MAX`: no upper bound).
    Num {
        min: f64,
        max: f64,
        open_min: bool,
        open_max: bool,
    },
    Bool,
    /// `"critical"`, `"major"`, `"minor"` or `"info"`.
    Severity,
    /// An array of positive numbers.
    PositiveList,
    /// A table of positive numbers by area id (`[alarms.overload] rated_kva`).
    PositiveByArea,
}

/// One key of a table: its name, what it holds and the unit to name in range messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: &'static str,
}

const fn int(name: &'static str, min: i128, max: i128, unit: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Int(min, max),
        unit,
    }
}
const fn hold(name: &'static str) -> Key {
    int(name, 0, MAX_HOLD_S, " s")
}
const fn number(
    name: &'static str,
    (min, open_min): (f64, bool),
    (max, open_max): (f64, bool),
    unit: &'static str,
) -> Key {
    Key {
        name,
        kind: Kind::Num {
            min,
            max,
            open_min,
            open_max,
        },
        unit,
    }
}
/// A number > 0.
const fn positive(name: &'static str, unit: &'static str) -> Key {
    number(name, (0.0, true), (f64::MAX, false), unit)
}
/// A number in `[min, max]`.
const fn num(name: &'static str, min: f64, max: f64, unit: &'static str) -> Key {
    number(name, (min, false), (max, false), unit)
}
/// A number in `(min, max]`.
const fn above(name: &'static str, min: f64, max: f64, unit: &'static str) -> Key {
    number(name, (min, true), (max, false), unit)
}
/// A number in `[min, max)`.
const fn below(name: &'static str, min: f64, max: f64, unit: &'static str) -> Key {
    number(name, (min, false), (max, true), unit)
}
const fn flag(name: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Bool,
        unit: "",
    }
}
const fn severity(name: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Severity,
        unit: "",
    }
}

/// One table of the analytics' sections.
#[derive(Debug, Clone, Copy)]
pub(super) struct Table {
    /// Key in its parent (`loss`, `voltage`, ...).
    pub name: &'static str,
    /// How messages name it: `[loss]`, `[alarms.voltage]`.
    pub title: &'static str,
    pub keys: &'static [Key],
}

pub(super) const LOSS: Table = Table {
    name: "loss",
    title: "[loss]",
    keys: &[
        int("grace_s", 0, 86_400, " s"),
        int("rolling_window_s", 10, 86_400, " s"),
        int("stale_after_s", 1, 86_400, " s"),
        int("clear_after_intervals", 1, 10_000, " intervals"),
        int("suspect_window", 2, 10_000, " intervals"),
        positive("suspect_threshold", ""),
        num("suspect_min_step_pct", 0.0, 100.0, " %"),
        num("stopped_current_a", 0.0, 1e6, " A"),
        int("stopped_after_s", 1, MAX_HOLD_S, " s"),
        positive("max_kw", " kW"),
        num("rate_headroom", 1.0, 1e6, ""),
        positive("min_rate_bound_kw", " kW"),
        num("resolution_slack_kwh", 0.0, 1e6, " kWh"),
        Key {
            name: "counter_moduli_kwh",
            kind: Kind::PositiveList,
            unit: " kWh",
        },
        int("max_read_gap_s", 1, 86_400, " s"),
        int("max_reads_per_meter", 16, 1_000_000, " reads"),
        int("max_catch_up_intervals", 1, 100_000, " intervals"),
    ],
};

pub(super) const VOLTAGE_QUALITY: Table = Table {
    name: "voltage_quality",
    title: "[voltage_quality]",
    keys: &[
        positive("nominal_v", " V"),
        above("upper_pct", 0.0, 100.0, " %"),
        below("lower_pct", -100.0, 0.0, " %"),
        int("max_gap_s", 1, 86_400, " s"),
        above("outage_pct", 0.0, 100.0, " %"),
    ],
};

pub(super) const FREEZE: Table = Table {
    name: "freeze",
    title: "[freeze]",
    keys: &[int("max_extrapolate_s", 0, 86_400, " s")],
};

pub(super) const CURVE: Table = Table {
    name: "curve",
    title: "[curve]",
    keys: &[
        flag("enabled"),
        int("interval_min", 1, 60, " min"),
        int("block_min", 1, 1440, " min"),
        int("max_bridge_s", 60, 86_400, " s"),
    ],
};

/// `[alarms]` itself (its kinds' tables are [`ALARM_KINDS`]).
pub(super) const ALARMS: Table = Table {
    name: "alarms",
    title: "[alarms]",
    keys: &[int("history", 0, 100_000, " events")],
};

/// The `[alarms.<kind>]` tables, in the order of [`AlarmSettings`].
pub(super) const ALARM_KINDS: &[Table] = &[
    Table {
        name: "meter_offline",
        title: "[alarms.meter_offline]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            hold("raise_after_s"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "voltage",
        title: "[alarms.voltage]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            positive("nominal_v", " V"),
            above("upper_pct", 0.0, 100.0, " %"),
            below("lower_pct", -100.0, 0.0, " %"),
            num("hysteresis_v", 0.0, 1e6, " V"),
            hold("raise_after_s"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "phase_loss",
        title: "[alarms.phase_loss]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            above("absent_pct", 0.0, 100.0, " %"),
            num("hysteresis_pct", 0.0, 100.0, " %"),
            hold("raise_after_s"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "current_unbalance",
        title: "[alarms.current_unbalance]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            above("limit_pct", 0.0, 100.0, " %"),
            num("hysteresis_pct", 0.0, 100.0, " %"),
            num("min_current_a", 0.0, 1e6, " A"),
            hold("raise_after_s"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "overload",
        title: "[alarms.overload]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            positive("limit_pct", " %"),
            num("hysteresis_pct", 0.0, 1000.0, " %"),
            above("assumed_pf", 0.0, 1.0, ""),
            Key {
                name: "rated_kva",
                kind: Kind::PositiveByArea,
                unit: " kVA",
            },
            int("stale_after_s", 1, 86_400, " s"),
            hold("raise_after_s"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "reverse_energy",
        title: "[alarms.reverse_energy]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            num("min_increase_kwh", 0.0, 1e9, " kWh"),
            int("window_s", 1, MAX_HOLD_S, " s"),
            hold("raise_after_s"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "reading_down",
        title: "[alarms.reading_down]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            num("tolerance_kwh", 0.0, 1e9, " kWh"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "running_fast",
        title: "[alarms.running_fast]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            num("margin_pct", 0.0, 10_000.0, " %"),
            positive("max_current_a", " A"),
            positive("voltage_v", " V"),
            num("slack_kwh", 0.0, 1e9, " kWh"),
            hold("raise_after_s"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "meter_stopped",
        title: "[alarms.meter_stopped]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            int("stopped_after_s", 1, MAX_HOLD_S, " s"),
            num("min_current_a", 0.0, 1e6, " A"),
            num("min_power_kw", 0.0, 1e9, " kW"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "line_loss",
        title: "[alarms.line_loss]",
        keys: &[
            flag("high_enabled"),
            flag("negative_enabled"),
            severity("high_severity"),
            severity("negative_severity"),
            hold("raise_after_s"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "outage",
        title: "[alarms.outage]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            above("outage_pct", 0.0, 100.0, " %"),
            num("hysteresis_pct", 0.0, 100.0, " %"),
            int("bus_window_s", 1, 86_400, " s"),
            int("min_bus_meters", 1, 100_000, " meters"),
            hold("raise_after_s"),
            hold("clear_after_s"),
        ],
    },
    Table {
        name: "power_off",
        title: "[alarms.power_off]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            int("min_down_s", 1, MAX_HOLD_S, " s"),
        ],
    },
    Table {
        name: "store_recovered",
        title: "[alarms.store_recovered]",
        keys: &[flag("enabled"), severity("severity")],
    },
    Table {
        name: "disk_full",
        title: "[alarms.disk_full]",
        keys: &[flag("enabled"), severity("severity")],
    },
    Table {
        name: "clock_unsynchronized",
        title: "[alarms.clock_unsynchronized]",
        keys: &[flag("enabled"), severity("severity")],
    },
    Table {
        name: "clock_skew",
        title: "[alarms.clock_skew]",
        keys: &[
            flag("enabled"),
            severity("severity"),
            above("limit_s", 0.0, 86_400.0, " s"),
        ],
    },
    Table {
        name: "meter_cover_open",
        title: "[alarms.meter_cover_open]",
        keys: &[flag("enabled"), severity("severity")],
    },
    Table {
        name: "meter_power_down",
        title: "[alarms.meter_power_down]",
        keys: &[flag("enabled"), severity("severity")],
    },
    Table {
        name: "meter_battery_low",
        title: "[alarms.meter_battery_low]",
        keys: &[flag("enabled"), severity("severity")],
    },
    Table {
        name: "meter_clock_fault",
        title: "[alarms.meter_clock_fault]",
        keys: &[flag("enabled"), severity("severity")],
    },
    Table {
        name: "certificate_expiry",
        title: "[alarms.certificate_expiry]",
        keys: &[flag("enabled"), severity("severity")],
    },
];

/// A key that moved to the `[alarms.<kind>]` table of the one rule it sets.
#[derive(Debug)]
pub(super) struct Moved {
    /// The table it was in (`[loss]`) and its name there.
    pub from: &'static str,
    pub key: &'static str,
    /// The alarm kind's table (`meter_stopped`) and the key's name there.
    pub kind: &'static str,
    pub to: &'static str,
    /// What the new key sets, for the warning.
    pub sets: &'static str,
}

const STOPPED_RULE: &str = "the stopped-register rule of both the meter_stopped alarm and the \
                            loss engine's stopped_register suspects";
const VOLTAGE_BAND: &str = "the voltage band of both the voltage alarms and the voltage-quality \
                            statistics";

/// Every moved key. Its old table's schema still lists it (so it is checked as before).
pub(super) const MOVED: &[Moved] = &[
    Moved {
        from: "[loss]",
        key: "stopped_current_a",
        kind: "meter_stopped",
        to: "min_current_a",
        sets: STOPPED_RULE,
    },
    Moved {
        from: "[loss]",
        key: "stopped_after_s",
        kind: "meter_stopped",
        to: "stopped_after_s",
        sets: STOPPED_RULE,
    },
    Moved {
        from: "[voltage_quality]",
        key: "nominal_v",
        kind: "voltage",
        to: "nominal_v",
        sets: VOLTAGE_BAND,
    },
    Moved {
        from: "[voltage_quality]",
        key: "upper_pct",
        kind: "voltage",
        to: "upper_pct",
        sets: VOLTAGE_BAND,
    },
    Moved {
        from: "[voltage_quality]",
        key: "lower_pct",
        kind: "voltage",
        to: "lower_pct",
        sets: VOLTAGE_BAND,
    },
];

/// A moved key as written: its checked value and where it stands.
pub(super) struct Carried {
    moved: &'static Moved,
    value: Value,
    at: usize,
}

/// Takes the moved keys of the table `title` out of its checked keys.
fn take_moved(object: &mut Map<String, Value>, table: &DeTable, title: &str) -> Vec<Carried> {
    MOVED
        .iter()
        .filter(|m| m.from == title)
        .filter_map(|moved| {
            let value = object.remove(moved.key)?;
            let (key, _) = table.get_key_value(moved.key)?;
            Some(Carried {
                moved,
                value,
                at: key.span().start,
            })
        })
        .collect()
}

/// `[alarms]` as read, with the spans of `[alarms.overload] rated_kva` entries (checked
/// against the areas later).
pub(super) struct AlarmsEntry {
    pub settings: AlarmSettings,
    pub rated_kva_areas: Vec<(String, Range<usize>)>,
}

/// `[loss]`, and its moved keys (for [`alarms`]). The stopped-register rule is filled in by
/// the loader.
pub(super) fn loss(
    report: &mut Report,
    table: &DeTable,
    start: usize,
) -> (LossSettings, Vec<Carried>) {
    let (mut settings, carried): (LossSettings, _) = engine_table(report, table, start, &LOSS);
    // The engine tries the smallest modulus that explains a drop first.
    settings.counter_moduli_kwh.sort_by(f64::total_cmp);
    (settings, carried)
}

/// `[voltage_quality]`, and its moved keys (for [`alarms`]). The band is filled in by the
/// loader.
pub(super) fn voltage_quality(
    report: &mut Report,
    table: &DeTable,
    start: usize,
) -> (VoltageQualitySettings, Vec<Carried>) {
    engine_table(report, table, start, &VOLTAGE_QUALITY)
}

/// `[freeze]`. The zone and the decision time are filled in by the loader from `[gateway]
/// timezone` and `[collection] report_at`.
pub(super) fn freeze(report: &mut Report, table: &DeTable, start: usize) -> FreezeSettings {
    engine_table(report, table, start, &FREEZE).0
}

/// `[curve]`; its zone is filled in by the loader from `[gateway] timezone`. Minutes that make
/// no grid (an interval that does not divide the hour, a block that is not a whole number of
/// intervals or does not divide the day) are a problem at the table.
pub(super) fn curve(report: &mut Report, table: &DeTable, start: usize) -> CurveSettings {
    let settings: CurveSettings = engine_table(report, table, start, &CURVE).0;
    if let Some(problem) = settings.problem() {
        let at = table
            .get("interval_min")
            .or_else(|| table.get("block_min"))
            .map_or(start, |v| v.span().start);
        report.at(at, format!("[curve] {problem}"));
    }
    settings
}

/// An engine's own table: its settings from the checked keys, and the moved keys apart.
fn engine_table<T: serde::de::DeserializeOwned + Default>(
    report: &mut Report,
    table: &DeTable,
    start: usize,
    schema: &Table,
) -> (T, Vec<Carried>) {
    let mut object = read_table(report, table, start, schema, &[], &mut Vec::new());
    let carried = take_moved(&mut object, table, schema.title);
    (into_settings(report, object, start, schema.title), carried)
}

/// `[alarms]` and its `[alarms.<kind>]` tables (`found`: the table and its offset, when the
/// file has one), with the `carried` keys of other tables applied where the file does not set
/// their new key itself; each carried key gets a warning naming its replacement.
pub(super) fn alarms(
    report: &mut Report,
    found: Option<(&DeTable, usize)>,
    carried: Vec<Carried>,
) -> AlarmsEntry {
    let mut rated_kva_areas = Vec::new();
    let (mut object, start) = match found {
        Some((table, start)) => (
            alarm_tables(report, table, start, &mut rated_kva_areas),
            start,
        ),
        None => (Map::new(), 0),
    };
    for c in carried {
        let m = c.moved;
        let kind = object
            .entry(m.kind)
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(kind) = kind else {
            continue;
        };
        if kind.contains_key(m.to) {
            report.warn(
                c.at,
                format!(
                    "`{}` in {} is replaced by `{}` in [alarms.{}], which this file sets and \
                     which applies ({}); remove `{}` here",
                    m.key, m.from, m.to, m.kind, m.sets, m.key
                ),
            );
        } else {
            kind.insert(m.to.into(), c.value);
            report.warn(
                c.at,
                format!(
                    "`{}` in {} is replaced by `{}` in [alarms.{}] ({}); it still applies from \
                     here, but move it there",
                    m.key, m.from, m.to, m.kind, m.sets
                ),
            );
        }
    }
    AlarmsEntry {
        settings: into_settings(report, object, start, ALARMS.title),
        rated_kva_areas,
    }
}

/// The checked keys of `[alarms]` and its `[alarms.<kind>]` tables.
fn alarm_tables(
    report: &mut Report,
    table: &DeTable,
    start: usize,
    rated_kva_areas: &mut Vec<(String, Range<usize>)>,
) -> Map<String, Value> {
    let kinds: Vec<&str> = ALARM_KINDS.iter().map(|t| t.name).collect();
    let mut object = read_table(report, table, start, &ALARMS, &kinds, rated_kva_areas);
    for kind in ALARM_KINDS {
        let Some(value) = table.get(kind.name) else {
            continue;
        };
        match value.get_ref() {
            DeValue::Table(t) => {
                let sub = read_table(report, t, value.span().start, kind, &[], rated_kva_areas);
                object.insert(kind.name.into(), Value::Object(sub));
            }
            other => report.at(
                value.span().start,
                format!(
                    "`{}` in [alarms] must be a table written {}, found {}",
                    kind.name,
                    kind.title,
                    with_article(other.type_str())
                ),
            ),
        }
    }
    object
}

/// Checks every key of `table` against `schema` (keys in `subtables` are known too and left
/// to the caller) and returns the valid ones as JSON.
fn read_table(
    report: &mut Report,
    table: &DeTable,
    start: usize,
    schema: &Table,
    subtables: &[&str],
    by_area: &mut Vec<(String, Range<usize>)>,
) -> Map<String, Value> {
    let known: Vec<&str> = schema
        .keys
        .iter()
        .map(|k| k.name)
        .chain(subtables.iter().copied())
        .collect();
    let s = Section::new(report, schema.title, table, start, &known);
    let mut out = Map::new();
    for key in schema.keys {
        if let Some(v) = read_key(report, &s, key, by_area) {
            out.insert(key.name.into(), v);
        }
    }
    out
}

/// One key's value as JSON, or `None` when absent or wrong (and reported).
fn read_key(
    report: &mut Report,
    s: &Section,
    key: &Key,
    by_area: &mut Vec<(String, Range<usize>)>,
) -> Option<Value> {
    let name = key.name;
    let unit = key.unit;
    match key.kind {
        Kind::Int(min, max) => s
            .integer_in(report, name, min, max, unit)
            .map(|n| json!(*n.get_ref() as i64)),
        Kind::Num {
            min,
            max,
            open_min,
            open_max,
        } => {
            let n = s.number(report, name)?;
            let x = *n.get_ref();
            let ok = x.is_finite()
                && (x > min || (!open_min && x == min))
                && (x < max || (!open_max && x == max));
            if ok {
                return Some(json!(x));
            }
            report.at(
                n.span().start,
                format!(
                    "`{name}` in {} must be {}, found {}",
                    s.title,
                    range_text(min, max, open_min, open_max, unit),
                    report.source(n.span())
                ),
            );
            None
        }
        Kind::Bool => s.boolean(report, name).map(|b| json!(*b.get_ref())),
        Kind::Severity => {
            let v = s.string(report, name)?;
            if SEVERITIES.contains(&v.get_ref().as_str()) {
                Some(json!(v.get_ref()))
            } else {
                report.at(
                    v.span().start,
                    format!(
                        "unknown severity `{}` in {}; use one of: {}",
                        v.get_ref(),
                        s.title,
                        SEVERITIES.join(", ")
                    ),
                );
                None
            }
        }
        Kind::PositiveList => {
            let value = s.get(name)?;
            let DeValue::Array(items) = value.get_ref() else {
                report.at(
                    value.span().start,
                    format!(
                        "`{name}` must be an array of positive numbers, found {}",
                        with_article(value.get_ref().type_str())
                    ),
                );
                return None;
            };
            let mut out = Vec::new();
            let mut ok = true;
            for item in items.iter() {
                match positive_number(item.get_ref()) {
                    Some(x) => out.push(json!(x)),
                    None => {
                        report.at(
                            item.span().start,
                            format!(
                                "`{name}` must hold positive numbers{}, found {}",
                                unit,
                                report.source(item.span())
                            ),
                        );
                        ok = false;
                    }
                }
            }
            if ok && out.is_empty() {
                report.at(
                    value.span().start,
                    format!("`{name}` must not be empty; remove it to use the defaults"),
                );
                ok = false;
            }
            ok.then_some(Value::Array(out))
        }
        Kind::PositiveByArea => {
            let value = s.get(name)?;
            let DeValue::Table(t) = value.get_ref() else {
                report.at(
                    value.span().start,
                    format!(
                        "`{name}` must be a table of area id = number{unit}, e.g. \
                         `{name} = {{ tx-0412 = 400 }}`, found {}",
                        with_article(value.get_ref().type_str())
                    ),
                );
                return None;
            };
            let mut out = Map::new();
            for (k, v) in t.iter() {
                match positive_number(v.get_ref()) {
                    Some(x) => {
                        out.insert(k.get_ref().to_string(), json!(x));
                        by_area.push((k.get_ref().to_string(), k.span()));
                    }
                    None => report.at(
                        v.span().start,
                        format!(
                            "`{name}` of area `{}` must be a positive number{unit}, found {}",
                            k.get_ref(),
                            report.source(v.span())
                        ),
                    ),
                }
            }
            Some(Value::Object(out))
        }
    }
}

/// A finite number > 0 (integer or float), if `v` is one.
fn positive_number(v: &DeValue) -> Option<f64> {
    let x = match v {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok()? as f64,
        DeValue::Float(f) => f.as_str().parse::<f64>().ok()?,
        _ => return None,
    };
    (x.is_finite() && x > 0.0).then_some(x)
}

/// "a number above 0 %", "a number from -100 to below 0 %", ... for range messages.
fn range_text(min: f64, max: f64, open_min: bool, open_max: bool, unit: &str) -> String {
    let low = if open_min {
        format!("above {min}")
    } else {
        format!("at least {min}")
    };
    if max >= f64::MAX {
        return format!("a number {low}{unit}");
    }
    let high = if open_max {
        format!("below {max}")
    } else {
        format!("at most {max}")
    };
    format!("a number {low} and {high}{unit}")
}

/// Fills a settings struct from the checked keys; the struct's defaults fill the rest.
fn into_settings<T: serde::de::DeserializeOwned + Default>(
    report: &mut Report,
    object: Map<String, Value>,
    start: usize,
    title: &str,
) -> T {
    match serde_json::from_value(Value::Object(object)) {
        Ok(t) => t,
        Err(e) => {
            // The schema checks every value first, so this means the schema and the settings
            // struct disagree: a bug, but the engineer still gets a position.
            report.at(start, format!("{title}: {e}"));
            T::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn fields<T: serde::Serialize + Default>() -> BTreeSet<String> {
        match serde_json::to_value(T::default()).unwrap() {
            Value::Object(m) => m.keys().cloned().collect(),
            _ => unreachable!(),
        }
    }

    fn keys(t: &Table) -> BTreeSet<String> {
        t.keys.iter().map(|k| k.name.to_string()).collect()
    }

    /// A table's keys, less those that moved to another table.
    fn own_keys(t: &Table) -> BTreeSet<String> {
        let mut k = keys(t);
        for m in MOVED.iter().filter(|m| m.from == t.title) {
            assert!(k.remove(m.key), "{} lists {}", t.title, m.key);
        }
        k
    }

    #[test]
    fn schemas_match_the_settings_structs() {
        assert_eq!(own_keys(&LOSS), fields::<LossSettings>());
        assert_eq!(
            own_keys(&VOLTAGE_QUALITY),
            fields::<VoltageQualitySettings>()
        );
        for m in MOVED {
            let kind = ALARM_KINDS.iter().find(|t| t.name == m.kind).unwrap();
            assert!(keys(kind).contains(m.to), "{m:?}");
        }
        let mut alarms = keys(&ALARMS);
        alarms.extend(ALARM_KINDS.iter().map(|t| t.name.to_string()));
        assert_eq!(alarms, fields::<AlarmSettings>());
        let defaults = serde_json::to_value(AlarmSettings::default()).unwrap();
        for kind in ALARM_KINDS {
            let Value::Object(m) = &defaults[kind.name] else {
                panic!("{} is not a table", kind.name)
            };
            let expected: BTreeSet<String> = m.keys().cloned().collect();
            assert_eq!(keys(kind), expected, "{}", kind.title);
        }
    }
}
