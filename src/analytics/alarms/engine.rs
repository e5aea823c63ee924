//! The catalogue: how readings, meter health and external verdicts become alarm conditions,
//! per (kind, subject), fed through the one lifecycle.
//!
//! | kind | subject | judged from | value / threshold |
//! |---|---|---|---|
//! | meter_offline | meter | meter health (`online == Some(false)`), re-judged on every tick | s since last good poll / hold s |
//! | voltage_high, voltage_low | `{meter}.l1`..`l3` | `voltage_lN_v` | V / limit V |
//! | phase_loss | `{meter}.lN` | one phase < absent V while another ≥ it | V / absent V |
//! | current_unbalance | meter (three-phase) | `current_l1_a`..`l3_a` | % / limit % |
//! | overload | area | supply meters' kVA | kVA / rated × limit kVA |
//! | reverse_energy | meter (consumption-only) | `energy_export_kwh` | kWh exported in the run / min kWh |
//! | reading_down | meter | import and export registers | kWh of the drop / tolerance kWh |
//! | running_fast | meter | import register between reads | implied kW / allowed kW |
//! | meter_stopped | meter | import register still while load | s still / stopped_after_s |
//! | high_loss, negative_loss | area | [`AlarmEngine::raise_external`] | as given |
//! | area_outage | area or bus | supply voltages; all meters of a bus offline | V / outage V; meters offline / meters |
//! | power_off | gateway | [`AlarmEngine::on_start`] | s down / min s |
//! | clock_skew | meter | meter items: clock | \|skew\| s / limit s |
//! | meter_cover_open, meter_power_down | meter | meter items: event counts (an event per increase) | count / previous count |
//! | meter_battery_low, meter_clock_fault | meter | meter items: status word 1 bits 2, 3 / 15 | 1 / 0 |

use super::lifecycle::{ActiveAlarm, Level, Lifecycle, Limit, Observation, Timing};
use super::{Alarm, AlarmChange, AlarmKind, AlarmSettings, AlarmState, SubjectKind, Transition};
use crate::analytics::register::{drop_kwh, largest_current_a, moved};
use crate::clock::rfc3339_ms;
use crate::model::Reading;
use crate::model::json_number;
use crate::model::{MeterItems, MeterStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// What the catalogue needs to know about one meter (from `[[meter]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct MeterRef {
    pub id: String,
    pub bus: String,
    /// `"a"`, `"b"`, `"c"` or `"abc"` as configured; informational.
    pub phase: Option<crate::model::Phase>,
    /// Three-phase meters are judged for current unbalance.
    pub three_phase: bool,
    /// Proposed `[[meter]] consumption_only`: export energy on this meter is an alarm.
    pub consumption_only: bool,
    /// Proposed `[[meter]] rated_kw`: rated power, primary kW, for running_fast.
    pub rated_kw: Option<f64>,
    /// CT ratio × PT ratio (energies arrive primary-side; the derived rated power scales).
    pub multiplier: f64,
}

impl MeterRef {
    /// A single-phase, bidirectional meter with multiplier 1 and a derived rated power.
    pub fn new(id: &str, bus: &str) -> MeterRef {
        MeterRef {
            id: id.to_string(),
            bus: bus.to_string(),
            phase: None,
            three_phase: false,
            consumption_only: false,
            rated_kw: None,
            multiplier: 1.0,
        }
    }
}

/// What the catalogue needs to know about one area (from `[[area]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AreaRef {
    pub id: String,
    pub supply: Vec<String>,
    pub customers: Vec<String>,
    /// Proposed `[[area]] rated_kva`: the transformer's rating; falls back to
    /// `[alarms.overload] rated_kva`.
    pub rated_kva: Option<f64>,
}

/// The meters and areas the gateway serves, and its own id (the power_off subject).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Topology {
    pub gateway: String,
    pub meters: Vec<MeterRef>,
    pub areas: Vec<AreaRef>,
}

/// Register values a meter's next reading is compared with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterMemory {
    /// Last import register (ts ms, kWh).
    pub import: Option<(i64, f64)>,
    /// Last export register (ts ms, kWh).
    pub export: Option<(i64, f64)>,
    /// When the import register last changed (or was first seen).
    pub import_changed_ms: Option<i64>,
    /// Export value where the current run of export advances began.
    pub export_mark_kwh: Option<f64>,
    /// When the export register last advanced (or was first seen).
    pub export_advanced_ms: Option<i64>,
    /// The meter's cover-open count last seen (DL/T 645 meters).
    #[serde(default)]
    pub cover_open_count: Option<u64>,
    /// The meter's power-down count last seen.
    #[serde(default)]
    pub power_down_count: Option<u64>,
}

/// A [`RegisterMemory`] as the engine holds it, one a meter: a missing register value or
/// mark as NaN (a register read is finite), a missing time as `i64::MIN` (no reading is
/// that old): 88 bytes rather than 128. Taken out as a [`RegisterMemory`] to judge a reading.
#[derive(Debug, Clone, Copy)]
struct HeldMemory {
    import: (i64, f64),
    export: (i64, f64),
    import_changed_ms: i64,
    export_mark_kwh: f64,
    export_advanced_ms: i64,
    cover_open_count: Option<u64>,
    power_down_count: Option<u64>,
}

const NO_TIME: i64 = i64::MIN;

impl From<&RegisterMemory> for HeldMemory {
    fn from(m: &RegisterMemory) -> HeldMemory {
        let reg = |r: Option<(i64, f64)>| r.unwrap_or((NO_TIME, f64::NAN));
        HeldMemory {
            import: reg(m.import),
            export: reg(m.export),
            import_changed_ms: m.import_changed_ms.unwrap_or(NO_TIME),
            export_mark_kwh: m.export_mark_kwh.unwrap_or(f64::NAN),
            export_advanced_ms: m.export_advanced_ms.unwrap_or(NO_TIME),
            cover_open_count: m.cover_open_count,
            power_down_count: m.power_down_count,
        }
    }
}

impl From<&HeldMemory> for RegisterMemory {
    fn from(m: &HeldMemory) -> RegisterMemory {
        let reg = |(t, v): (i64, f64)| (!v.is_nan()).then_some((t, v));
        let time = |t: i64| (t != NO_TIME).then_some(t);
        RegisterMemory {
            import: reg(m.import),
            export: reg(m.export),
            import_changed_ms: time(m.import_changed_ms),
            export_mark_kwh: (!m.export_mark_kwh.is_nan()).then_some(m.export_mark_kwh),
            export_advanced_ms: time(m.export_advanced_ms),
            cover_open_count: m.cover_open_count,
            power_down_count: m.power_down_count,
        }
    }
}

/// Everything the engine must keep across a restart: the standing alarms (so they are not
/// raised twice), the recent history, and the registers to compare the next readings with.
/// Serializable; the gateway saves it in the same transaction as the alarm messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlarmSnapshot {
    pub active: Vec<ActiveAlarm>,
    /// Oldest first, at most `[alarms] history` events.
    pub history: Vec<AlarmChange>,
    pub registers: BTreeMap<String, RegisterMemory>,
}

/// The last known health of a meter.
#[derive(Debug, Clone)]
struct Presence {
    online: bool,
    bus: String,
    /// When the meter was first reported offline, in its current offline spell.
    offline_since_ms: Option<i64>,
    last_ok_ms: Option<i64>,
    consecutive_failures: u32,
    last_error: Option<String>,
}

/// The last judgement of a supply meter.
#[derive(Debug, Clone, Default)]
struct SupplyState {
    voltage_level: Option<Level>,
    max_voltage_v: f64,
    /// (ts ms, kVA, kW)
    load: Option<(i64, f64, f64)>,
}

/// A clock_skew alarm clears only this far inside its limit, seconds.
const CLOCK_SKEW_HYSTERESIS_S: f64 = 10.0;

const PHASES: [(&str, &str, &str); 3] = [
    ("l1", "voltage_l1_v", "current_l1_a"),
    ("l2", "voltage_l2_v", "current_l2_a"),
    ("l3", "voltage_l3_v", "current_l3_a"),
];

impl crate::analytics::MeterParts for AlarmEngine {
    type Snapshot = AlarmSnapshot;
    fn snapshot_rest(&self) -> AlarmSnapshot {
        AlarmSnapshot {
            active: self.lifecycle.active().cloned().collect(),
            history: self.history(),
            registers: BTreeMap::new(),
        }
    }
    fn part_meters(&self) -> Vec<&str> {
        self.registers.keys().map(String::as_str).collect()
    }
    fn part_json(&self, meter: &str) -> Option<String> {
        let held = self.registers.get(meter)?;
        Some(crate::analytics::part_json(&RegisterMemory::from(held)))
    }
}

/// The alarm engine: feed it readings, meter health, ticks and external verdicts; it returns
/// the alarm events to publish. Pure and deterministic (timestamps come with the inputs).
#[derive(Debug, Clone)]
pub struct AlarmEngine {
    settings: AlarmSettings,
    gateway: String,
    meters: BTreeMap<String, MeterRef>,
    areas: Vec<AreaRef>,
    /// bus name → its meters
    buses: BTreeMap<String, Vec<String>>,
    lifecycle: Lifecycle,
    registers: BTreeMap<String, HeldMemory>,
    /// How many meters `registers` held when last rebuilt (see [`crate::analytics::pack`]).
    packed: usize,
    presence: BTreeMap<String, Presence>,
    supply: BTreeMap<String, SupplyState>,
}

impl AlarmEngine {
    pub fn new(settings: AlarmSettings, topology: Topology) -> AlarmEngine {
        let mut buses: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in &topology.meters {
            buses.entry(m.bus.clone()).or_default().push(m.id.clone());
        }
        // Built one meter at a time: rebuilt with full nodes and lists without spare room
        // (held for the gateway's life; see [`crate::analytics::pack`]).
        let buses: BTreeMap<_, _> = buses
            .into_iter()
            .map(|(k, mut v)| {
                v.shrink_to_fit();
                (k, v)
            })
            .collect();
        AlarmEngine {
            lifecycle: Lifecycle::new(settings.history),
            settings,
            gateway: topology.gateway,
            meters: topology
                .meters
                .into_iter()
                .map(|m| (m.id.clone(), m))
                .collect(),
            areas: topology.areas,
            buses,
            registers: BTreeMap::new(),
            packed: 0,
            presence: BTreeMap::new(),
            supply: BTreeMap::new(),
        }
    }

    pub fn settings(&self) -> &AlarmSettings {
        &self.settings
    }

    /// Judges one reading: voltage limits, phase loss, unbalance, registers (down, fast,
    /// stopped, reverse) and, for a supply meter, its area's outage and overload.
    pub fn on_reading(&mut self, r: &Reading) -> Vec<AlarmChange> {
        let meter = self
            .meters
            .get(&r.meter)
            .cloned()
            .unwrap_or_else(|| MeterRef::new(&r.meter, ""));
        let mut out = Vec::new();
        self.judge_voltages(&meter, r, &mut out);
        self.judge_unbalance(&meter, r, &mut out);
        self.judge_registers(&meter, r, &mut out);
        self.judge_supply(&meter, r, &mut out);
        out
    }

    /// Takes a meter's health from its bus: offline / online, then re-judges presence
    /// (meter_offline and silent buses) at the status time.
    pub fn on_meter_status(&mut self, s: &MeterStatus) -> Vec<AlarmChange> {
        let mut out = Vec::new();
        if let Some(items) = &s.items {
            self.judge_items(&s.meter, items, &mut out);
        }
        let Some(online) = s.health.online else {
            return out;
        };
        let p = self
            .presence
            .entry(s.meter.clone())
            .or_insert_with(|| Presence {
                online: true,
                bus: s.bus.clone(),
                offline_since_ms: None,
                last_ok_ms: None,
                consecutive_failures: 0,
                last_error: None,
            });
        if !online && p.online {
            p.offline_since_ms = Some(s.ts_ms);
        }
        if online {
            p.offline_since_ms = None;
        }
        p.online = online;
        p.bus = s.bus.clone();
        p.last_ok_ms = s.health.last_ok_ms.or(p.last_ok_ms);
        p.consecutive_failures = s.health.consecutive_failures;
        p.last_error = s.health.last_error.clone();
        out.extend(self.judge_presence(s.ts_ms));
        out
    }

    /// What a meter says about itself: its clock (clock_skew), its event counters (an event
    /// per increase: meter_cover_open, meter_power_down) and its status word's bits
    /// (meter_battery_low, meter_clock_fault). Items already judged (the same `ts_ms`, repeated
    /// with later states) change nothing.
    fn judge_items(&mut self, meter: &str, items: &MeterItems, out: &mut Vec<AlarmChange>) {
        let ts = items.ts_ms;
        if let Some(skew) = items.clock_skew_s {
            let limit = self.settings.clock_skew.limit_s;
            let correctable = skew.abs() <= crate::model::BROADCAST_SYNC_LIMIT_S;
            // A clock read to the second wobbles: cleared only 10 s inside the limit.
            let level = if skew.abs() > limit {
                Level::Violated
            } else if skew.abs() > limit - CLOCK_SKEW_HYSTERESIS_S {
                Level::Band
            } else {
                Level::Normal
            };
            let action = if correctable {
                "the daily broadcast time sync corrects it"
            } else {
                "broadcast time sync cannot correct it; set the clock on site"
            };
            let obs = Observation::new(
                AlarmKind::ClockSkew,
                meter,
                SubjectKind::Meter,
                ts,
                level,
                skew.abs(),
                limit,
            )
            .details(json!({
                "meter": meter,
                "skew_s": json_number(skew),
                "correctable": correctable,
                "action": action,
            }));
            self.observe(out, obs);
        }
        for (kind, bit) in [
            (
                AlarmKind::MeterBatteryLow,
                match (items.clock_battery_low(), items.reading_battery_low()) {
                    (None, None) => None,
                    (c, r) => Some((c.unwrap_or(false), r.unwrap_or(false))),
                },
            ),
            (
                AlarmKind::MeterClockFault,
                items.clock_fault().map(|f| (f, false)),
            ),
        ] {
            let Some((a, b)) = bit else { continue };
            let set = a || b;
            let mut details = json!({
                "meter": meter,
                "status_word_1": format!("{:04X}", items.status_word_1.unwrap_or(0)),
            });
            if kind == AlarmKind::MeterBatteryLow {
                details["clock_battery_low"] = json!(a);
                details["reading_battery_low"] = json!(b);
            }
            let level = if set { Level::Violated } else { Level::Normal };
            let obs = Observation::new(
                kind,
                meter,
                SubjectKind::Meter,
                ts,
                level,
                f64::from(u8::from(set)),
                0.0,
            )
            .details(details);
            self.observe(out, obs);
        }
        let mut mem = self.take_memory(meter);
        for (kind, now, before) in [
            (
                AlarmKind::MeterCoverOpen,
                items.cover_open_count,
                &mut mem.cover_open_count,
            ),
            (
                AlarmKind::MeterPowerDown,
                items.power_down_count,
                &mut mem.power_down_count,
            ),
        ] {
            let Some(now) = now else { continue };
            let previous = before.replace(now);
            if let Some(prev) = previous
                && now > prev
            {
                let details = json!({
                    "meter": meter,
                    "previous_count": prev,
                    "count": now,
                    "increase": now - prev,
                });
                out.extend(self.event(kind, meter, now as f64, prev as f64, details, ts));
            }
        }
        self.registers.insert(meter.to_string(), (&mem).into());
    }

    /// An event about `meter`: raised and cleared at once, so the headend sees one complete
    /// event; it never stands among the active alarms.
    fn event(
        &mut self,
        kind: AlarmKind,
        meter: &str,
        value: f64,
        threshold: f64,
        details: Value,
        ts_ms: i64,
    ) -> Vec<AlarmChange> {
        let Some(timing) = self.timing(kind) else {
            return Vec::new();
        };
        let raised = Alarm {
            id: format!("{}/{meter}", kind.as_str()),
            kind,
            subject: meter.to_string(),
            subject_kind: SubjectKind::Meter,
            severity: timing.severity,
            state: AlarmState::Active,
            raised_ms: ts_ms,
            cleared_ms: None,
            value,
            threshold,
            details,
        };
        let cleared = Alarm {
            state: AlarmState::Cleared,
            cleared_ms: Some(ts_ms),
            ..raised.clone()
        };
        let changes = vec![
            AlarmChange {
                alarm: raised,
                transition: Transition::Raised,
                ts_ms,
            },
            AlarmChange {
                alarm: cleared,
                transition: Transition::Cleared,
                ts_ms,
            },
        ];
        for c in &changes {
            self.lifecycle.remember(c.clone());
        }
        changes
    }

    /// Advances the hold timers of conditions that persist without new readings (meters
    /// offline, silent buses) to `now_ms`.
    pub fn on_tick(&mut self, now_ms: i64) -> Vec<AlarmChange> {
        crate::analytics::pack(&mut self.registers, &mut self.packed);
        self.judge_presence(now_ms)
    }

    /// At start-up: when the gateway's last heartbeat (`last_alive_ms`, persisted regularly)
    /// is more than `[alarms.power_off] min_down_s` before `now_ms`, reports a power_off of the
    /// gateway as a raised event immediately followed by its clear: raised at `down_from`,
    /// cleared at `down_to`, so the headend sees one complete event with its duration. It is
    /// never among the active alarms.
    pub fn on_start(&mut self, now_ms: i64, last_alive_ms: Option<i64>) -> Vec<AlarmChange> {
        let (Some(timing), Some(from)) = (self.timing(AlarmKind::PowerOff), last_alive_ms) else {
            return Vec::new();
        };
        let min_down_s = self.settings.power_off.min_down_s;
        let down_s = (now_ms - from) as f64 / 1000.0;
        if now_ms - from <= min_down_s as i64 * 1000 {
            return Vec::new();
        }
        let raised = Alarm {
            id: format!("{}/{}", AlarmKind::PowerOff.as_str(), self.gateway),
            kind: AlarmKind::PowerOff,
            subject: self.gateway.clone(),
            subject_kind: SubjectKind::Gateway,
            severity: timing.severity,
            state: AlarmState::Active,
            raised_ms: from,
            cleared_ms: None,
            value: down_s,
            threshold: min_down_s as f64,
            details: json!({
                "down_from": rfc3339_ms(from),
                "down_to": rfc3339_ms(now_ms),
                "duration_s": json_number(down_s),
            }),
        };
        // Like every clear, it carries the value at raise and the worst seen (the same here).
        let mut details = raised.details.clone();
        details["raised_value"] = json_number(down_s);
        details["peak"] = json_number(down_s);
        let cleared = Alarm {
            state: AlarmState::Cleared,
            cleared_ms: Some(now_ms),
            details,
            ..raised.clone()
        };
        let changes = vec![
            AlarmChange {
                alarm: raised,
                transition: Transition::Raised,
                ts_ms: now_ms,
            },
            AlarmChange {
                alarm: cleared,
                transition: Transition::Cleared,
                ts_ms: now_ms,
            },
        ];
        for c in &changes {
            self.lifecycle.remember(c.clone());
        }
        changes
    }

    /// The gateway's store was damaged and replaced (`details`: where the old file is, what
    /// was carried over): reported like a power off, as a raised event immediately followed by
    /// its clear, so the headend sees one complete event; it never stands among the active
    /// alarms (the store works again).
    pub fn on_store_recovered(&mut self, now_ms: i64, details: Value) -> Vec<AlarmChange> {
        let Some(timing) = self.timing(AlarmKind::StoreRecovered) else {
            return Vec::new();
        };
        let raised = Alarm {
            id: format!("{}/{}", AlarmKind::StoreRecovered.as_str(), self.gateway),
            kind: AlarmKind::StoreRecovered,
            subject: self.gateway.clone(),
            subject_kind: SubjectKind::Gateway,
            severity: timing.severity,
            state: AlarmState::Active,
            raised_ms: now_ms,
            cleared_ms: None,
            value: 1.0,
            threshold: 0.0,
            details,
        };
        let cleared = Alarm {
            state: AlarmState::Cleared,
            cleared_ms: Some(now_ms),
            ..raised.clone()
        };
        let changes = vec![
            AlarmChange {
                alarm: raised,
                transition: Transition::Raised,
                ts_ms: now_ms,
            },
            AlarmChange {
                alarm: cleared,
                transition: Transition::Cleared,
                ts_ms: now_ms,
            },
        ];
        for c in &changes {
            self.lifecycle.remember(c.clone());
        }
        changes
    }

    /// The gateway id (the subject of the gateway's own alarms).
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// A verdict computed elsewhere (the line-loss engine's high_loss / negative_loss for an
    /// area): the condition holds at `ts_ms`. Goes through the same lifecycle and payload;
    /// with a non-zero `raise_after_s` the verdict must be repeated until the hold elapses.
    pub fn raise_external(
        &mut self,
        kind: AlarmKind,
        subject: &str,
        value: f64,
        threshold: f64,
        details: Value,
        ts_ms: i64,
    ) -> Option<AlarmChange> {
        let obs = Observation::new(
            kind,
            subject,
            external_subject_kind(kind),
            ts_ms,
            Level::Violated,
            value,
            threshold,
        )
        .details(details);
        self.observe_one(obs)
    }

    /// The verdict is back to normal at `ts_ms` (value: the figure that is now normal).
    pub fn clear_external(
        &mut self,
        kind: AlarmKind,
        subject: &str,
        value: f64,
        details: Value,
        ts_ms: i64,
    ) -> Option<AlarmChange> {
        let obs = Observation::new(
            kind,
            subject,
            external_subject_kind(kind),
            ts_ms,
            Level::Normal,
            value,
            0.0,
        )
        .details(details);
        self.observe_one(obs)
    }

    /// Every standing alarm, ordered by (kind, subject).
    pub fn active(&self) -> Vec<Alarm> {
        self.lifecycle.active().map(|a| a.alarm.clone()).collect()
    }

    /// Recent events, oldest first.
    pub fn history(&self) -> Vec<AlarmChange> {
        self.lifecycle.history().cloned().collect()
    }

    pub fn snapshot(&self) -> AlarmSnapshot {
        AlarmSnapshot {
            registers: self
                .registers
                .iter()
                .map(|(k, m)| (k.clone(), m.into()))
                .collect(),
            ..crate::analytics::MeterParts::snapshot_rest(self)
        }
    }

    /// Takes back a snapshot: its alarms stand again without being raised. Alarms of kinds
    /// the settings now disable are cleared at `now_ms` (detail `"reason": "disabled"`); those
    /// clears are returned so the headend is told.
    pub fn restore(&mut self, snapshot: AlarmSnapshot, now_ms: i64) -> Vec<AlarmChange> {
        let (keep, drop): (Vec<ActiveAlarm>, Vec<ActiveAlarm>) = snapshot
            .active
            .into_iter()
            .partition(|a| self.timing(a.alarm.kind).is_some());
        self.lifecycle.restore(keep, snapshot.history);
        self.registers = snapshot
            .registers
            .iter()
            .map(|(k, m)| (k.clone(), m.into()))
            .collect();
        let mut out = Vec::new();
        for a in drop {
            let mut alarm = a.alarm;
            alarm.state = AlarmState::Cleared;
            alarm.cleared_ms = Some(now_ms);
            if let Value::Object(m) = &mut alarm.details {
                m.insert("reason".into(), json!("disabled"));
            }
            let change = AlarmChange {
                alarm,
                transition: Transition::Cleared,
                ts_ms: now_ms,
            };
            self.lifecycle.remember(change.clone());
            out.push(change);
        }
        out
    }

    // ----- timing -----

    /// The hold and severity of a kind; None when the kind is disabled.
    fn timing(&self, kind: AlarmKind) -> Option<Timing> {
        let s = &self.settings;
        let (enabled, severity, raise, clear) = match kind {
            AlarmKind::MeterOffline => (
                s.meter_offline.enabled,
                s.meter_offline.severity,
                self.offline_hold_s(),
                s.meter_offline.clear_after_s,
            ),
            AlarmKind::VoltageHigh | AlarmKind::VoltageLow => (
                s.voltage.enabled,
                s.voltage.severity,
                s.voltage.raise_after_s,
                s.voltage.clear_after_s,
            ),
            AlarmKind::PhaseLoss => (
                s.phase_loss.enabled,
                s.phase_loss.severity,
                s.phase_loss.raise_after_s,
                s.phase_loss.clear_after_s,
            ),
            AlarmKind::CurrentUnbalance => (
                s.current_unbalance.enabled,
                s.current_unbalance.severity,
                s.current_unbalance.raise_after_s,
                s.current_unbalance.clear_after_s,
            ),
            AlarmKind::Overload => (
                s.overload.enabled,
                s.overload.severity,
                s.overload.raise_after_s,
                s.overload.clear_after_s,
            ),
            AlarmKind::ReverseEnergy => (
                s.reverse_energy.enabled,
                s.reverse_energy.severity,
                s.reverse_energy.raise_after_s,
                s.reverse_energy.clear_after_s,
            ),
            AlarmKind::ReadingDown => (
                s.reading_down.enabled,
                s.reading_down.severity,
                0,
                s.reading_down.clear_after_s,
            ),
            AlarmKind::RunningFast => (
                s.running_fast.enabled,
                s.running_fast.severity,
                s.running_fast.raise_after_s,
                s.running_fast.clear_after_s,
            ),
            AlarmKind::MeterStopped => (
                s.meter_stopped.enabled,
                s.meter_stopped.severity,
                s.meter_stopped.stopped_after_s,
                s.meter_stopped.clear_after_s,
            ),
            AlarmKind::HighLoss => (
                s.line_loss.high_enabled,
                s.line_loss.high_severity,
                s.line_loss.raise_after_s,
                s.line_loss.clear_after_s,
            ),
            AlarmKind::NegativeLoss => (
                s.line_loss.negative_enabled,
                s.line_loss.negative_severity,
                s.line_loss.raise_after_s,
                s.line_loss.clear_after_s,
            ),
            AlarmKind::AreaOutage => (
                s.outage.enabled,
                s.outage.severity,
                s.outage.raise_after_s,
                s.outage.clear_after_s,
            ),
            AlarmKind::PowerOff => (s.power_off.enabled, s.power_off.severity, 0, 0),
            AlarmKind::StoreRecovered => {
                (s.store_recovered.enabled, s.store_recovered.severity, 0, 0)
            }
            AlarmKind::DiskFull => (s.disk_full.enabled, s.disk_full.severity, 0, 0),
            AlarmKind::ClockUnsynchronized => (
                s.clock_unsynchronized.enabled,
                s.clock_unsynchronized.severity,
                0,
                0,
            ),
            AlarmKind::ClockSkew => (s.clock_skew.enabled, s.clock_skew.severity, 0, 0),
            AlarmKind::MeterCoverOpen => (
                s.meter_cover_open.enabled,
                s.meter_cover_open.severity,
                0,
                0,
            ),
            AlarmKind::MeterPowerDown => (
                s.meter_power_down.enabled,
                s.meter_power_down.severity,
                0,
                0,
            ),
            AlarmKind::MeterBatteryLow => (
                s.meter_battery_low.enabled,
                s.meter_battery_low.severity,
                0,
                0,
            ),
            AlarmKind::MeterClockFault => (
                s.meter_clock_fault.enabled,
                s.meter_clock_fault.severity,
                0,
                0,
            ),
            AlarmKind::CertificateExpiry => (
                s.certificate_expiry.enabled,
                s.certificate_expiry.severity,
                0,
                0,
            ),
        };
        enabled.then(|| Timing::new(severity, raise, clear))
    }

    /// The meter_offline hold, never shorter than what a silent bus needs to be recognised,
    /// so that a whole-bus outage is raised before any of its meters' own alarms.
    fn offline_hold_s(&self) -> u64 {
        let own = self.settings.meter_offline.raise_after_s;
        let o = &self.settings.outage;
        if o.enabled {
            own.max(o.bus_window_s + o.raise_after_s)
        } else {
            own
        }
    }

    fn observe(&mut self, out: &mut Vec<AlarmChange>, obs: Observation) {
        out.extend(self.observe_one(obs));
    }

    fn observe_one(&mut self, obs: Observation) -> Option<AlarmChange> {
        let timing = self.timing(obs.kind)?;
        self.lifecycle.observe(obs, timing)
    }

    // ----- readings -----

    fn judge_voltages(&mut self, meter: &MeterRef, r: &Reading, out: &mut Vec<AlarmChange>) {
        let volts = voltages(r);
        if volts.is_empty() {
            return;
        }
        let v = self.settings.voltage.clone();
        let band = v.band();
        let pl = self.settings.phase_loss.clone();
        let absent_v = band.share_v(pl.absent_pct);
        let all: Map<String, Value> = volts
            .iter()
            .map(|(p, x)| (p.to_string(), json_number(*x)))
            .collect();
        for &(phase, volt) in &volts {
            let subject = format!("{}.{}", meter.id, phase);
            let details =
                json!({"meter": meter.id, "phase": phase, "voltage_v": json_number(volt)});
            let high = Limit::above(band.upper_v(), v.hysteresis_v);
            self.observe(
                out,
                Observation::new(
                    AlarmKind::VoltageHigh,
                    &subject,
                    SubjectKind::Meter,
                    r.ts_ms,
                    high.level(volt),
                    volt,
                    band.upper_v(),
                )
                .details(with(&details, "limit_pct", json_number(v.upper_pct))),
            );
            // A phase that is absent is a phase loss or an outage, not an under-voltage.
            let low = Limit::below(band.lower_v(), v.hysteresis_v);
            let level = if volt < absent_v {
                Level::Band
            } else {
                low.level(volt)
            };
            self.observe(
                out,
                Observation::new(
                    AlarmKind::VoltageLow,
                    &subject,
                    SubjectKind::Meter,
                    r.ts_ms,
                    level,
                    volt,
                    band.lower_v(),
                )
                .below()
                .details(with(&details, "limit_pct", json_number(v.lower_pct))),
            );
            if volts.len() >= 2 {
                let others_present = volts.iter().any(|(p, x)| *p != phase && *x >= absent_v);
                let lim = Limit::below(absent_v, band.share_v(pl.hysteresis_pct));
                let level = match lim.level(volt) {
                    Level::Violated if !others_present => Level::Band,
                    l => l,
                };
                let current = r
                    .values
                    .get(&format!("current_{phase}_a"))
                    .map(|a| json_number(*a))
                    .unwrap_or(Value::Null);
                let mut d = with(&details, "voltages_v", Value::Object(all.clone()));
                d = with(&d, "current_a", current);
                self.observe(
                    out,
                    Observation::new(
                        AlarmKind::PhaseLoss,
                        &subject,
                        SubjectKind::Meter,
                        r.ts_ms,
                        level,
                        volt,
                        absent_v,
                    )
                    .below()
                    .details(d),
                );
            }
        }
    }

    fn judge_unbalance(&mut self, meter: &MeterRef, r: &Reading, out: &mut Vec<AlarmChange>) {
        if !meter.three_phase {
            return;
        }
        let currents = currents(r);
        if currents.len() < 3 {
            return;
        }
        let cu = &self.settings.current_unbalance;
        let max = currents.iter().map(|c| c.1).fold(f64::MIN, f64::max);
        let min = currents.iter().map(|c| c.1).fold(f64::MAX, f64::min);
        let unbalance = if max > 0.0 {
            (max - min) / max * 100.0
        } else {
            0.0
        };
        // Unbalance at negligible load is not judged: an active alarm stands until load returns.
        let level = if max < cu.min_current_a {
            Level::Band
        } else {
            Limit::above(cu.limit_pct, cu.hysteresis_pct).level(unbalance)
        };
        let all: Map<String, Value> = currents
            .iter()
            .map(|(p, x)| (p.to_string(), json_number(*x)))
            .collect();
        let obs = Observation::new(
            AlarmKind::CurrentUnbalance,
            &meter.id,
            SubjectKind::Meter,
            r.ts_ms,
            level,
            unbalance,
            cu.limit_pct,
        )
        .details(json!({
            "meter": meter.id,
            "currents_a": all,
            "max_a": json_number(max),
            "min_a": json_number(min),
        }));
        self.observe(out, obs);
    }

    fn judge_registers(&mut self, meter: &MeterRef, r: &Reading, out: &mut Vec<AlarmChange>) {
        let import = finite(r, "energy_import_kwh");
        let export = finite(r, "energy_export_kwh");
        if import.is_none() && export.is_none() {
            return;
        }
        let mut mem = self.take_memory(&meter.id);
        let last_ts = mem
            .import
            .iter()
            .chain(mem.export.iter())
            .map(|x| x.0)
            .max();
        if last_ts.is_some_and(|t| t >= r.ts_ms) {
            // An older or repeated reading: nothing to compare.
            self.registers.insert(meter.id.clone(), (&mem).into());
            return;
        }
        let ts = r.ts_ms;
        let s = self.settings.clone();

        // reading_down
        let mut judged = false;
        let mut worst: Option<(&str, f64, f64, i64)> = None;
        for (name, cur, prev) in [
            ("energy_import_kwh", import, mem.import),
            ("energy_export_kwh", export, mem.export),
        ] {
            if let (Some(c), Some((pts, p))) = (cur, prev) {
                judged = true;
                if let Some(drop) = drop_kwh(p, c, s.reading_down.tolerance_kwh)
                    && worst.is_none_or(|w| drop > w.1 - w.2)
                {
                    worst = Some((name, p, c, pts));
                }
            }
        }
        if judged {
            let obs = match worst {
                Some((name, p, c, pts)) => Observation::new(
                    AlarmKind::ReadingDown,
                    &meter.id,
                    SubjectKind::Meter,
                    ts,
                    Level::Violated,
                    p - c,
                    s.reading_down.tolerance_kwh,
                )
                .details(json!({
                    "meter": meter.id,
                    "register": name,
                    "previous_kwh": json_number(p),
                    "current_kwh": json_number(c),
                    "previous_ts": rfc3339_ms(pts),
                })),
                None => Observation::new(
                    AlarmKind::ReadingDown,
                    &meter.id,
                    SubjectKind::Meter,
                    ts,
                    Level::Normal,
                    0.0,
                    s.reading_down.tolerance_kwh,
                )
                .details(json!({"meter": meter.id})),
            };
            self.observe(out, obs);
        }

        // running_fast
        if let (Some(c), Some((pts, p))) = (import, mem.import) {
            let rf = &s.running_fast;
            let hours = (ts - pts) as f64 / 3_600_000.0;
            let phases = if meter.three_phase { 3.0 } else { 1.0 };
            let rated_kw = meter
                .rated_kw
                .unwrap_or(rf.max_current_a * rf.voltage_v * phases * meter.multiplier / 1000.0);
            let allowed_kw = rated_kw * (1.0 + rf.margin_pct / 100.0);
            let increment = c - p;
            let level = if increment < 0.0 {
                Level::Band
            } else if increment > allowed_kw * hours + rf.slack_kwh {
                Level::Violated
            } else {
                Level::Normal
            };
            let obs = Observation::new(
                AlarmKind::RunningFast,
                &meter.id,
                SubjectKind::Meter,
                ts,
                level,
                increment / hours,
                allowed_kw,
            )
            .details(json!({
                "meter": meter.id,
                "increment_kwh": json_number(increment),
                "interval_s": json_number((ts - pts) as f64 / 1000.0),
                "rated_kw": json_number(rated_kw),
            }));
            self.observe(out, obs);
        }

        // meter_stopped: the meter counts when either register moves — a PV customer exporting
        // or a reversed meter has a still import register while current flows, yet it is not
        // stopped (reverse flow on a consumption-only meter is reverse_energy's business).
        if let Some(c) = import {
            let export_moved =
                matches!((export, mem.export), (Some(e), Some((_, p))) if moved(p, e));
            let changed = export_moved || mem.import.is_none_or(|(_, p)| moved(p, c));
            if changed {
                mem.import_changed_ms = Some(ts);
            }
            let rule = s.meter_stopped.rule();
            let load = rule.load_flows(r);
            let level = if changed {
                Level::Normal
            } else if load == Some(true) {
                Level::Violated
            } else {
                Level::Band
            };
            let still_since = mem.import_changed_ms.unwrap_or(ts);
            let max_a = largest_current_a(r).unwrap_or(0.0).max(0.0);
            let obs = Observation::new(
                AlarmKind::MeterStopped,
                &meter.id,
                SubjectKind::Meter,
                ts,
                level,
                (ts - still_since) as f64 / 1000.0,
                rule.stopped_after_s as f64,
            )
            .details(json!({
                "meter": meter.id,
                "energy_import_kwh": json_number(c),
                "unchanged_since": rfc3339_ms(still_since),
                "current_a": json_number(max_a),
                "power_kw": finite(r, "power_kw").map(json_number).unwrap_or(Value::Null),
            }));
            self.observe(out, obs);
        }

        // reverse_energy
        if let (true, Some(e)) = (meter.consumption_only, export) {
            let re = &s.reverse_energy;
            match mem.export {
                None => {
                    mem.export_mark_kwh = Some(e);
                    mem.export_advanced_ms = Some(ts);
                }
                Some((_, p)) => {
                    let level = if e < p - 1e-9 {
                        // The register went down (replacement, reset): start over.
                        mem.export_mark_kwh = Some(e);
                        mem.export_advanced_ms = Some(ts);
                        Level::Band
                    } else if e > p + 1e-9 {
                        let last_advance = mem.export_advanced_ms.unwrap_or(ts);
                        if ts - last_advance > re.window_s as i64 * 1000 {
                            mem.export_mark_kwh = Some(p);
                        }
                        mem.export_advanced_ms = Some(ts);
                        let mark = *mem.export_mark_kwh.get_or_insert(p);
                        if e - mark > re.min_increase_kwh {
                            Level::Violated
                        } else {
                            Level::Band
                        }
                    } else {
                        Level::Normal
                    };
                    let mark = mem.export_mark_kwh.unwrap_or(e);
                    let obs = Observation::new(
                        AlarmKind::ReverseEnergy,
                        &meter.id,
                        SubjectKind::Meter,
                        ts,
                        level,
                        e - mark,
                        re.min_increase_kwh,
                    )
                    .details(json!({
                        "meter": meter.id,
                        "energy_export_kwh": json_number(e),
                        "increase_kwh": json_number(e - mark),
                    }));
                    self.observe(out, obs);
                }
            }
        }

        if let Some(c) = import {
            mem.import = Some((ts, c));
        }
        if let Some(e) = export {
            mem.export = Some((ts, e));
        }
        self.registers.insert(meter.id.clone(), (&mem).into());
    }

    /// The meter's register memory, out of the map while a reading is judged.
    fn take_memory(&mut self, meter: &str) -> RegisterMemory {
        self.registers
            .remove(meter)
            .map(|m| RegisterMemory::from(&m))
            .unwrap_or_default()
    }

    fn judge_supply(&mut self, meter: &MeterRef, r: &Reading, out: &mut Vec<AlarmChange>) {
        let areas: Vec<AreaRef> = self
            .areas
            .iter()
            .filter(|a| a.supply.contains(&meter.id))
            .cloned()
            .collect();
        if areas.is_empty() {
            return;
        }
        let band = self.settings.voltage.band();
        let o = self.settings.outage.clone();
        let outage_v = band.share_v(o.outage_pct);
        let volts = voltages(r);
        let state = self.supply.entry(meter.id.clone()).or_default();
        if !volts.is_empty() {
            let lim = Limit::below(outage_v, band.share_v(o.hysteresis_pct));
            let levels: Vec<Level> = volts.iter().map(|(_, v)| lim.level(*v)).collect();
            state.voltage_level = Some(if levels.iter().all(|l| *l == Level::Violated) {
                Level::Violated
            } else if levels.contains(&Level::Normal) {
                Level::Normal
            } else {
                Level::Band
            });
            state.max_voltage_v = volts.iter().map(|v| v.1).fold(0.0, f64::max);
        }
        if let Some(kva) = load_kva(r, self.settings.overload.assumed_pf) {
            state.load = Some((r.ts_ms, kva, finite(r, "power_kw").unwrap_or(0.0)));
        }
        let voltages: Map<String, Value> = volts
            .iter()
            .map(|(p, x)| (p.to_string(), json_number(*x)))
            .collect();

        for area in areas {
            // area_outage from the supply voltage
            if !volts.is_empty() {
                let known: Vec<&SupplyState> = area
                    .supply
                    .iter()
                    .filter_map(|m| self.supply.get(m))
                    .filter(|s| s.voltage_level.is_some())
                    .collect();
                let level = if known
                    .iter()
                    .all(|s| s.voltage_level == Some(Level::Violated))
                {
                    Level::Violated
                } else if known.iter().any(|s| s.voltage_level == Some(Level::Normal)) {
                    Level::Normal
                } else {
                    Level::Band
                };
                let max_v = known.iter().map(|s| s.max_voltage_v).fold(0.0, f64::max);
                let obs = Observation::new(
                    AlarmKind::AreaOutage,
                    &area.id,
                    SubjectKind::Area,
                    r.ts_ms,
                    level,
                    max_v,
                    outage_v,
                )
                .below()
                .details(json!({
                    "cause": "supply_voltage_lost",
                    "area": area.id,
                    "supply": area.supply,
                    "voltages_v": voltages,
                    "meters_affected": area.supply.len() + area.customers.len(),
                }));
                self.observe(out, obs);
            }

            // overload
            let ov = self.settings.overload.clone();
            let Some(rated) = area
                .rated_kva
                .or_else(|| ov.rated_kva.get(&area.id).copied())
            else {
                continue;
            };
            let stale_before = r.ts_ms - ov.stale_after_s as i64 * 1000;
            let loads: Option<Vec<(f64, f64)>> = area
                .supply
                .iter()
                .map(|m| {
                    self.supply
                        .get(m)
                        .and_then(|s| s.load)
                        .filter(|l| l.0 >= stale_before)
                        .map(|l| (l.1, l.2))
                })
                .collect();
            let Some(loads) = loads else { continue };
            if rated <= 0.0 {
                continue;
            }
            let kva: f64 = loads.iter().map(|l| l.0).sum();
            let kw: f64 = loads.iter().map(|l| l.1).sum();
            let limit_kva = rated * ov.limit_pct / 100.0;
            let lim = Limit::above(limit_kva, rated * ov.hysteresis_pct / 100.0);
            let obs = Observation::new(
                AlarmKind::Overload,
                &area.id,
                SubjectKind::Area,
                r.ts_ms,
                lim.level(kva),
                kva,
                limit_kva,
            )
            .details(json!({
                "area": area.id,
                "load_kva": json_number(kva),
                "load_pct": json_number(kva / rated * 100.0),
                "rated_kva": json_number(rated),
                "power_kw": json_number(kw),
                "supply": area.supply,
            }));
            self.observe(out, obs);
        }
    }

    // ----- presence -----

    /// Silent buses first (so their outage suppresses the meters' own alarms), then every
    /// meter's offline condition.
    fn judge_presence(&mut self, now_ms: i64) -> Vec<AlarmChange> {
        let mut out = Vec::new();
        let o = self.settings.outage.clone();
        if o.enabled {
            let buses: Vec<(String, Vec<String>)> = self
                .buses
                .iter()
                .filter(|(_, m)| m.len() >= o.min_bus_meters.max(1))
                .map(|(b, m)| (b.clone(), m.clone()))
                .collect();
            for (bus, meters) in buses {
                if let Some(obs) = self.bus_observation(&bus, &meters, now_ms, &o) {
                    self.observe(&mut out, obs);
                }
            }
        }
        let hold_s = self.offline_hold_s();
        let meters: Vec<(String, Presence)> = self
            .presence
            .iter()
            .map(|(m, p)| (m.clone(), p.clone()))
            .collect();
        for (meter, p) in meters {
            if p.online {
                if self.lifecycle.is_tracked(AlarmKind::MeterOffline, &meter) {
                    let obs = self.offline_observation(&meter, &p, now_ms, Level::Normal, hold_s);
                    self.observe(&mut out, obs);
                }
            } else if self.offline_suppressed(&meter, &p.bus) {
                self.lifecycle.suppress(AlarmKind::MeterOffline, &meter);
            } else {
                let obs = self.offline_observation(&meter, &p, now_ms, Level::Violated, hold_s);
                self.observe(&mut out, obs);
            }
        }
        out
    }

    fn offline_observation(
        &self,
        meter: &str,
        p: &Presence,
        now_ms: i64,
        level: Level,
        hold_s: u64,
    ) -> Observation {
        let silent_s = p
            .last_ok_ms
            .or(p.offline_since_ms)
            .map_or(0.0, |t| (now_ms - t) as f64 / 1000.0);
        Observation::new(
            AlarmKind::MeterOffline,
            meter,
            SubjectKind::Meter,
            now_ms,
            level,
            silent_s,
            hold_s as f64,
        )
        .onset(p.offline_since_ms)
        .details(json!({
            "meter": meter,
            "bus": p.bus,
            "last_ok": p.last_ok_ms.map(rfc3339_ms),
            "consecutive_failures": p.consecutive_failures,
            "last_error": p.last_error,
        }))
    }

    /// A bus is silent when every meter on it is offline and those not already alarmed on
    /// their own — at least `min_bus_meters` of them — went offline within `bus_window_s` of
    /// each other. (The last answering meter of a bus failing alone is a meter_offline.)
    fn bus_observation(
        &self,
        bus: &str,
        meters: &[String],
        now_ms: i64,
        o: &super::OutageSettings,
    ) -> Option<Observation> {
        let known: Vec<(&String, &Presence)> = meters
            .iter()
            .filter_map(|m| self.presence.get(m).map(|p| (m, p)))
            .collect();
        let any_online = known.iter().any(|(_, p)| p.online);
        let all_offline = known.len() == meters.len() && !any_online;
        if !any_online && !all_offline {
            return None;
        }
        let fresh: Vec<i64> = known
            .iter()
            .filter(|(m, _)| !self.lifecycle.is_active(AlarmKind::MeterOffline, m))
            .filter_map(|(_, p)| p.offline_since_ms)
            .collect();
        let first = fresh.iter().min().copied();
        let last = fresh.iter().max().copied();
        let level = if any_online {
            Level::Normal
        } else {
            match (first, last) {
                (Some(f), Some(l))
                    if fresh.len() >= o.min_bus_meters.max(1)
                        && l - f <= o.bus_window_s as i64 * 1000 =>
                {
                    Level::Violated
                }
                _ => Level::Band,
            }
        };
        let offline = known.iter().filter(|(_, p)| !p.online).count();
        let last_heard = known.iter().filter_map(|(_, p)| p.last_ok_ms).max();
        Some(
            Observation::new(
                AlarmKind::AreaOutage,
                bus,
                SubjectKind::Bus,
                now_ms,
                level,
                offline as f64,
                meters.len() as f64,
            )
            .onset(first)
            .details(json!({
                "cause": "bus_silent",
                "bus": bus,
                "meters": meters,
                "meters_affected": meters.len(),
                "last_heard": last_heard.map(rfc3339_ms),
            })),
        )
    }

    /// True while an outage covering the meter (its bus, or an area it belongs to) stands.
    fn offline_suppressed(&self, meter: &str, bus: &str) -> bool {
        let bus = self.meters.get(meter).map_or(bus, |m| m.bus.as_str());
        self.lifecycle.is_active(AlarmKind::AreaOutage, bus)
            || self.areas.iter().any(|a| {
                // An area the meter belongs to (as supply or customer).
                self.lifecycle.is_active(AlarmKind::AreaOutage, &a.id)
                    && a.supply.iter().chain(&a.customers).any(|m| m == meter)
            })
    }
}

/// The subject kind of an externally judged alarm.
fn external_subject_kind(kind: AlarmKind) -> SubjectKind {
    match kind {
        AlarmKind::HighLoss | AlarmKind::NegativeLoss | AlarmKind::Overload => SubjectKind::Area,
        AlarmKind::AreaOutage => SubjectKind::Area,
        AlarmKind::PowerOff
        | AlarmKind::StoreRecovered
        | AlarmKind::DiskFull
        | AlarmKind::ClockUnsynchronized
        | AlarmKind::CertificateExpiry => SubjectKind::Gateway,
        _ => SubjectKind::Meter,
    }
}

/// Present, finite phase voltages, as ("l1", V).
fn voltages(r: &Reading) -> Vec<(&'static str, f64)> {
    PHASES
        .iter()
        .filter_map(|p| finite(r, p.1).map(|v| (p.0, v)))
        .collect()
}

/// Present, finite phase currents, as ("l1", A).
fn currents(r: &Reading) -> Vec<(&'static str, f64)> {
    PHASES
        .iter()
        .filter_map(|p| finite(r, p.2).map(|v| (p.0, v)))
        .collect()
}

fn finite(r: &Reading, name: &str) -> Option<f64> {
    r.values.get(name).copied().filter(|v| v.is_finite())
}

/// The apparent load of a reading, kVA (see `OverloadSettings`).
fn load_kva(r: &Reading, assumed_pf: f64) -> Option<f64> {
    if let Some(kva) = finite(r, "apparent_power_kva") {
        return Some(kva.abs());
    }
    let kw = finite(r, "power_kw")?.abs();
    match finite(r, "power_factor") {
        Some(pf) if pf.abs() >= 0.1 => Some(kw / pf.abs()),
        _ if assumed_pf > 0.0 => Some(kw / assumed_pf),
        _ => Some(kw),
    }
}

/// `details` with one more key.
fn with(details: &Value, key: &str, value: Value) -> Value {
    let mut d = details.clone();
    if let Value::Object(m) = &mut d {
        m.insert(key.to_string(), value);
    }
    d
}
