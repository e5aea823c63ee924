//! Alarms a utility acts on: one lifecycle for every kind of event, the catalogue of kinds a
//! concentrator raises, and the MQTT messages that carry them.
//!
//! The headend cannot watch every reading; it acts on events. So an alarm is raised once,
//! with the values that triggered it, and cleared once when its condition is gone:
//!
//! - a condition must hold for `raise_after_s` before the alarm is raised, and be gone for
//!   `clear_after_s` before it is cleared; measured values additionally clear only beyond the
//!   threshold minus a hysteresis, so a value wobbling around a limit raises no storm
//!   (the `lifecycle` module);
//! - the catalogue ([`engine::AlarmEngine`]) turns readings, meter health and external
//!   verdicts (line loss) into conditions, per (kind, subject);
//! - the set of active alarms and a bounded history of recent events are part of the engine's
//!   [`AlarmSnapshot`], which the gateway saves in SQLite, so an alarm active before a restart
//!   is not raised a second time after it.
//!
//! Like every analytic, the engine is a pure, synchronous state machine fed with timestamps:
//! it never reads the clock, sleeps, or does I/O. Its output, [`AlarmChange`]s, becomes
//! messages through [`alarm_message`] (one per event, QoS 1, sequenced) and
//! [`active_alarms_message`] (the retained set of active alarms, re-sent on every change).
//!
//! Times in an alarm: `raised_ms` is the onset of the condition (the first observation of the
//! run that held for `raise_after_s`), `cleared_ms` the onset of normality (the first
//! observation of the run that held for `clear_after_s`); the `ts` of a message is when the
//! engine decided. So durations do not depend on the hold timers.

mod engine;
mod lifecycle;
mod settings;

#[cfg(test)]
mod tests;

pub use engine::{AlarmEngine, AlarmSnapshot, AreaRef, MeterRef, RegisterMemory, Topology};
pub use lifecycle::ActiveAlarm;
pub use settings::{
    AlarmSettings, CurrentUnbalanceSettings, LineLossAlarmSettings, MeterOfflineSettings,
    MeterStoppedSettings, OutageSettings, OverloadSettings, PhaseLossSettings, PowerOffSettings,
    ReadingDownSettings, ReverseEnergySettings, RunningFastSettings, VoltageLimitSettings,
};

use crate::clock::rfc3339_ms;
use crate::store::Message;
use crate::uplink::topics::{Topics, json_number};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Every kind of alarm the gateway raises. The snake-case name is part of the MQTT contract
/// (`alarm/{kind}/{subject}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// A meter stopped answering on its bus (RS-485 reading failure).
    MeterOffline,
    /// A phase voltage above the upper limit.
    VoltageHigh,
    /// A phase voltage below the lower limit.
    VoltageLow,
    /// One phase voltage absent while another phase is present.
    PhaseLoss,
    /// Three-phase current unbalance beyond the limit.
    CurrentUnbalance,
    /// The transformer of an area loaded beyond its rating.
    Overload,
    /// Export energy advancing on a meter configured consumption-only (reversed wiring).
    ReverseEnergy,
    /// An energy register went down.
    ReadingDown,
    /// An energy register advanced faster than the meter's rated power allows.
    RunningFast,
    /// The import register did not advance for a long time while load was present.
    MeterStopped,
    /// Line loss of an area above its band (verdict of the line-loss engine).
    HighLoss,
    /// Line loss of an area below its band (verdict of the line-loss engine).
    NegativeLoss,
    /// The supply of an area lost, or every meter of a bus silent at once.
    AreaOutage,
    /// The gateway itself was off (reported at start-up).
    PowerOff,
}

impl AlarmKind {
    /// Every kind, in catalogue order.
    pub const ALL: [AlarmKind; 14] = [
        AlarmKind::MeterOffline,
        AlarmKind::VoltageHigh,
        AlarmKind::VoltageLow,
        AlarmKind::PhaseLoss,
        AlarmKind::CurrentUnbalance,
        AlarmKind::Overload,
        AlarmKind::ReverseEnergy,
        AlarmKind::ReadingDown,
        AlarmKind::RunningFast,
        AlarmKind::MeterStopped,
        AlarmKind::HighLoss,
        AlarmKind::NegativeLoss,
        AlarmKind::AreaOutage,
        AlarmKind::PowerOff,
    ];

    /// The name used in topics and payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::MeterOffline => "meter_offline",
            AlarmKind::VoltageHigh => "voltage_high",
            AlarmKind::VoltageLow => "voltage_low",
            AlarmKind::PhaseLoss => "phase_loss",
            AlarmKind::CurrentUnbalance => "current_unbalance",
            AlarmKind::Overload => "overload",
            AlarmKind::ReverseEnergy => "reverse_energy",
            AlarmKind::ReadingDown => "reading_down",
            AlarmKind::RunningFast => "running_fast",
            AlarmKind::MeterStopped => "meter_stopped",
            AlarmKind::HighLoss => "high_loss",
            AlarmKind::NegativeLoss => "negative_loss",
            AlarmKind::AreaOutage => "area_outage",
            AlarmKind::PowerOff => "power_off",
        }
    }

    /// The kind named `name` (as in [`AlarmKind::as_str`]).
    pub fn from_name(name: &str) -> Option<AlarmKind> {
        AlarmKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The event number of the Chinese master-station protocol (ERC), where one exists, so a
    /// headend that speaks it can map the alarm.
    pub fn erc(self) -> Option<u8> {
        match self {
            AlarmKind::MeterOffline => Some(31),
            AlarmKind::VoltageHigh | AlarmKind::VoltageLow => Some(24),
            AlarmKind::PhaseLoss => Some(10),
            AlarmKind::CurrentUnbalance => Some(17),
            AlarmKind::ReadingDown => Some(27),
            AlarmKind::RunningFast => Some(29),
            AlarmKind::MeterStopped => Some(30),
            AlarmKind::HighLoss | AlarmKind::NegativeLoss => Some(22),
            AlarmKind::PowerOff => Some(14),
            AlarmKind::Overload | AlarmKind::ReverseEnergy | AlarmKind::AreaOutage => None,
        }
    }
}

impl std::fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an alarm is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Meter,
    Bus,
    Area,
    Gateway,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Meter => "meter",
            SubjectKind::Bus => "bus",
            SubjectKind::Area => "area",
            SubjectKind::Gateway => "gateway",
        }
    }
}

/// How urgently the utility should act; configurable per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Major,
    Minor,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
            Severity::Info => "info",
        }
    }
}

/// Whether an alarm is still standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    Active,
    Cleared,
}

/// One alarm: what, about whom, how bad, since when, and the values behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// `"{kind}/{subject}"`: stable over the alarm's life and across restarts, so the headend
    /// can pair a clear with its raise.
    pub id: String,
    pub kind: AlarmKind,
    /// A meter id, `"{meter}.l1"` for per-phase kinds, a bus name, an area id, or the gateway id.
    pub subject: String,
    pub subject_kind: SubjectKind,
    pub severity: Severity,
    pub state: AlarmState,
    /// Onset of the condition (ms since the Unix epoch, UTC).
    pub raised_ms: i64,
    /// Onset of normality, once cleared.
    pub cleared_ms: Option<i64>,
    /// The measured value: at raise the one that triggered, at clear the one that cleared.
    pub value: f64,
    /// The limit the value was compared with.
    pub threshold: f64,
    /// Kind-specific values (a JSON object), merged into the payload.
    pub details: Value,
}

/// An alarm changing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Raised,
    Cleared,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Raised => "raised",
            Transition::Cleared => "cleared",
        }
    }
}

/// One event for the headend: an alarm raised or cleared, as the engine decided at `ts_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmChange {
    /// The alarm as it is after the transition.
    pub alarm: Alarm,
    pub transition: Transition,
    /// When the engine decided (the observation's timestamp), ms since the Unix epoch.
    pub ts_ms: i64,
}

/// The event message on `{prefix}/{gateway}/alarm/{kind}/{subject}`: QoS 1, sequenced.
///
/// Payload: `{"id", "kind", "subject", "subject_kind", "state": "raised"|"cleared",
/// "severity", "ts", "value", "threshold", "raised", "cleared" (null while raised),
/// "duration_s" (on clear: cleared − raised), "erc" (where the kind has one)}`, plus the kind's
/// details (keys that would shadow these are dropped). The store adds `"seq"`.
pub fn alarm_message(topics: &Topics, change: &AlarmChange) -> Message {
    let a = &change.alarm;
    let mut payload = alarm_fields(a);
    payload.insert("state".into(), json!(change.transition.as_str()));
    payload.insert("ts".into(), json!(rfc3339_ms(change.ts_ms)));
    if change.transition == Transition::Cleared {
        let end = a.cleared_ms.unwrap_or(change.ts_ms);
        payload.insert(
            "duration_s".into(),
            json_number((end - a.raised_ms) as f64 / 1000.0),
        );
    }
    Message {
        topic: topics.alarm(a.kind.as_str(), &a.subject),
        payload: Value::Object(payload),
        qos: 1,
        retain: false,
        sequenced: true,
    }
}

/// The topic of the retained set of active alarms: `{prefix}/{gateway}/alarm/active`.
/// (It cannot clash with an event topic, which has two levels below `alarm`.)
pub fn active_alarms_topic(topics: &Topics) -> String {
    topics.alarm_active()
}

/// The retained message listing every active alarm, for a headend that connects later. Send it
/// again after every change (an empty list once nothing is active). QoS 1, not sequenced: it is
/// a state, not an event.
///
/// Payload: `{"ts", "count", "alarms": [{"id", "kind", "subject", "subject_kind", "severity",
/// "raised", "value", "threshold", "erc", ...details}]}`, ordered by id.
pub fn active_alarms_message(topics: &Topics, active: &[Alarm], now_ms: i64) -> Message {
    let mut sorted: Vec<&Alarm> = active.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let alarms: Vec<Value> = sorted
        .into_iter()
        .map(|a| {
            let mut fields = alarm_fields(a);
            fields.remove("cleared");
            Value::Object(fields)
        })
        .collect();
    Message {
        topic: active_alarms_topic(topics),
        payload: json!({"ts": rfc3339_ms(now_ms), "count": alarms.len(), "alarms": alarms}),
        qos: 1,
        retain: true,
        sequenced: false,
    }
}

/// The fields every alarm payload shares, with the details merged in.
fn alarm_fields(a: &Alarm) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(a.id));
    m.insert("kind".into(), json!(a.kind.as_str()));
    m.insert("subject".into(), json!(a.subject));
    m.insert("subject_kind".into(), json!(a.subject_kind.as_str()));
    m.insert("severity".into(), json!(a.severity.as_str()));
    m.insert("value".into(), json_number(a.value));
    m.insert("threshold".into(), json_number(a.threshold));
    m.insert("raised".into(), json!(rfc3339_ms(a.raised_ms)));
    m.insert(
        "cleared".into(),
        a.cleared_ms
            .map(|t| json!(rfc3339_ms(t)))
            .unwrap_or(Value::Null),
    );
    if let Some(erc) = a.kind.erc() {
        m.insert("erc".into(), json!(erc));
    }
    if let Value::Object(details) = &a.details {
        for (k, v) in details {
            if !RESERVED_KEYS.contains(&k.as_str()) && !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    m
}

/// Payload keys owned by the envelope; details never shadow them.
const RESERVED_KEYS: &[&str] = &["seq", "state", "ts"];
