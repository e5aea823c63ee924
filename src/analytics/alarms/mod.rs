//! Alarms a utility acts on: one lifecycle for every kind of event and the catalogue of kinds a
//! concentrator raises, as typed alarms and changes (the uplink renders their messages).
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
//! it never reads the clock, sleeps, or does I/O. Its output, [`AlarmChange`]s, is typed; the
//! uplink's contract renders them as the event messages (one per event, QoS 1, sequenced) and
//! the retained set of active alarms (re-sent on every change).
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
    AlarmSettings, ClockSkewSettings, CurrentUnbalanceSettings, LineLossAlarmSettings,
    MeterItemSettings, MeterOfflineSettings, MeterStoppedSettings, OutageSettings,
    OverloadSettings, PhaseLossSettings, PowerOffSettings, ReadingDownSettings,
    ReverseEnergySettings, RunningFastSettings, StoreFaultSettings, VoltageLimitSettings,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// The gateway's store was damaged: moved aside, a fresh one started (an event: raised
    /// and cleared at once, with where the old file is and what was carried over).
    StoreRecovered,
    /// The store's filesystem is full: readings wait in memory (bounded) until it has room.
    DiskFull,
    /// The gateway's clock is not sane (before the build date, or not synchronised when
    /// `require_synced_clock`): readings are stamped `"clock": "unsynchronized"`.
    ClockUnsynchronized,
    /// A meter's clock off the gateway's beyond `[alarms.clock_skew] limit_s` (DL/T 645).
    ClockSkew,
    /// A meter's cover-open count went up (a theft sign; an event, one per increase).
    MeterCoverOpen,
    /// A meter's power-down count went up (an event, one per increase).
    MeterPowerDown,
    /// A meter's status word says its clock battery or its reading battery is low.
    MeterBatteryLow,
    /// A meter's status word says its clock has failed.
    MeterClockFault,
    /// A certificate of the link to the headend (`[mqtt] client_cert_file`, or the CA in
    /// `ca_file`) expires within `[mqtt] cert_expiry_warn_days`, or has expired: subject the
    /// `[mqtt]` key, details the file, the certificate's subject, `not_after`, `days_left`.
    CertificateExpiry,
}

impl AlarmKind {
    /// Every kind, in catalogue order.
    pub const ALL: [AlarmKind; 23] = [
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
        AlarmKind::StoreRecovered,
        AlarmKind::DiskFull,
        AlarmKind::ClockUnsynchronized,
        AlarmKind::ClockSkew,
        AlarmKind::MeterCoverOpen,
        AlarmKind::MeterPowerDown,
        AlarmKind::MeterBatteryLow,
        AlarmKind::MeterClockFault,
        AlarmKind::CertificateExpiry,
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
            AlarmKind::StoreRecovered => "store_recovered",
            AlarmKind::DiskFull => "disk_full",
            AlarmKind::ClockUnsynchronized => "clock_unsynchronized",
            AlarmKind::ClockSkew => "clock_skew",
            AlarmKind::MeterCoverOpen => "meter_cover_open",
            AlarmKind::MeterPowerDown => "meter_power_down",
            AlarmKind::MeterBatteryLow => "meter_battery_low",
            AlarmKind::MeterClockFault => "meter_clock_fault",
            AlarmKind::CertificateExpiry => "certificate_expiry",
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
            // Q/GDW 1376.1: ERC 12 meter time out of tolerance, ERC 37 meter cover opened,
            // ERC 33 meter run status word changed (the battery and clock-fault bits).
            AlarmKind::ClockSkew => Some(12),
            AlarmKind::MeterCoverOpen => Some(37),
            AlarmKind::MeterBatteryLow | AlarmKind::MeterClockFault => Some(33),
            AlarmKind::MeterPowerDown
            | AlarmKind::Overload
            | AlarmKind::ReverseEnergy
            | AlarmKind::AreaOutage
            | AlarmKind::StoreRecovered
            | AlarmKind::DiskFull
            | AlarmKind::ClockUnsynchronized
            | AlarmKind::CertificateExpiry => None,
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
