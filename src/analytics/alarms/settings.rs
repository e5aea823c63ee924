//! The tuning of every alarm kind: on/off, severity, hold times and limits, with the defaults a
//! field engineer gets when the configuration says nothing.
//!
//! Proposed TOML layout: `[alarms] history = 300` and one table per kind,
//! `[alarms.voltage]`, `[alarms.meter_offline]`, ... with the field names below as keys
//! (every key optional). Hold times are in seconds: a condition must hold `raise_after_s`
//! before its alarm is raised and be gone `clear_after_s` before it is cleared.
//!
//! Per-meter and per-area facts the catalogue needs live with the meter and the area, not
//! here: `[[meter]] consumption_only`, `rated_kw`; `[[area]] rated_kva` (see
//! [`super::Topology`]).

use super::Severity;
use crate::analytics::band::VoltageBand;
use crate::analytics::register::StoppedRegister;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every alarm kind's settings (`[alarms]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlarmSettings {
    /// `history`: how many recent raise/clear events the engine keeps (and snapshots).
    /// Default 300, the "most recent few hundred" a concentrator keeps.
    pub history: usize,
    pub meter_offline: MeterOfflineSettings,
    /// `[alarms.voltage]`: voltage_high and voltage_low.
    pub voltage: VoltageLimitSettings,
    pub phase_loss: PhaseLossSettings,
    pub current_unbalance: CurrentUnbalanceSettings,
    pub overload: OverloadSettings,
    pub reverse_energy: ReverseEnergySettings,
    pub reading_down: ReadingDownSettings,
    pub running_fast: RunningFastSettings,
    pub meter_stopped: MeterStoppedSettings,
    /// `[alarms.line_loss]`: high_loss and negative_loss (the verdicts come from the line-loss
    /// engine; its thresholds are `[[area]] high_loss_pct`, `negative_loss_pct`).
    pub line_loss: LineLossAlarmSettings,
    /// `[alarms.outage]`: area_outage.
    pub outage: OutageSettings,
    pub power_off: PowerOffSettings,
    /// `[alarms.store_recovered]`: the store was damaged, moved aside and started afresh.
    pub store_recovered: StoreFaultSettings,
    /// `[alarms.disk_full]`: the store's filesystem is full.
    pub disk_full: StoreFaultSettings,
    /// `[alarms.clock_unsynchronized]`: the gateway's clock is not sane.
    pub clock_unsynchronized: StoreFaultSettings,
    /// `[alarms.clock_skew]`: a meter's clock off the gateway's.
    pub clock_skew: ClockSkewSettings,
    /// `[alarms.meter_cover_open]`: a meter's cover-open count went up.
    pub meter_cover_open: MeterItemSettings,
    /// `[alarms.meter_power_down]`: a meter's power-down count went up.
    pub meter_power_down: MeterItemSettings,
    /// `[alarms.meter_battery_low]`: a meter's clock or reading battery low.
    pub meter_battery_low: MeterItemSettings,
    /// `[alarms.meter_clock_fault]`: a meter's clock failed.
    pub meter_clock_fault: MeterItemSettings,
    /// `[alarms.certificate_expiry]`: a certificate of the MQTT link expires soon.
    pub certificate_expiry: StoreFaultSettings,
}

impl Default for AlarmSettings {
    fn default() -> Self {
        AlarmSettings {
            history: 300,
            meter_offline: Default::default(),
            voltage: Default::default(),
            phase_loss: Default::default(),
            current_unbalance: Default::default(),
            overload: Default::default(),
            reverse_energy: Default::default(),
            reading_down: Default::default(),
            running_fast: Default::default(),
            meter_stopped: Default::default(),
            line_loss: Default::default(),
            outage: Default::default(),
            power_off: Default::default(),
            store_recovered: Default::default(),
            disk_full: Default::default(),
            clock_unsynchronized: Default::default(),
            clock_skew: Default::default(),
            meter_cover_open: MeterItemSettings::with(Severity::Major),
            meter_power_down: MeterItemSettings::with(Severity::Info),
            meter_battery_low: MeterItemSettings::with(Severity::Minor),
            meter_clock_fault: MeterItemSettings::with(Severity::Major),
            certificate_expiry: Default::default(),
        }
    }
}

/// `[alarms.clock_skew]` — ERC 12, a meter's clock off the gateway's (DL/T 645 meters, whose
/// date and time the bus reads every `[time_sync] read_interval_s`). Raised and cleared as the
/// reads show it: no hold time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockSkewSettings {
    /// Default true.
    pub enabled: bool,
    /// Default minor.
    pub severity: Severity,
    /// Default 300: the 5 minutes of Q/GDW's meter clock-error event, which is also the most a
    /// broadcast time sync can correct (meters refuse one further off).
    pub limit_s: f64,
}

impl Default for ClockSkewSettings {
    fn default() -> Self {
        ClockSkewSettings {
            enabled: true,
            severity: Severity::Minor,
            limit_s: 300.0,
        }
    }
}

/// `[alarms.meter_cover_open]`, `[alarms.meter_power_down]`, `[alarms.meter_battery_low]`,
/// `[alarms.meter_clock_fault]` — what a meter reports about itself: its event counters (an
/// event per increase, raised and cleared at once) and its status word's bits (raised while
/// set, cleared when the meter clears them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeterItemSettings {
    /// Default true.
    pub enabled: bool,
    /// Defaults: cover open major, power down info, battery low minor, clock fault major.
    pub severity: Severity,
}

impl MeterItemSettings {
    pub fn with(severity: Severity) -> MeterItemSettings {
        MeterItemSettings {
            enabled: true,
            severity,
        }
    }
}

impl Default for MeterItemSettings {
    fn default() -> Self {
        MeterItemSettings::with(Severity::Minor)
    }
}

/// `[alarms.meter_offline]` — ERC 31, a meter not answering on its bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeterOfflineSettings {
    /// Default true.
    pub enabled: bool,
    /// Default major.
    pub severity: Severity,
    /// Default 600. The bus already needs a few failed polls to call a meter offline; this
    /// hold is on top of that. The engine never uses less than `outage.bus_window_s +
    /// outage.raise_after_s`, so that when a whole bus goes silent the one outage alarm is
    /// raised before any meter's own offline alarm.
    pub raise_after_s: u64,
    /// Default 0: the first successful poll clears.
    pub clear_after_s: u64,
}

impl Default for MeterOfflineSettings {
    fn default() -> Self {
        MeterOfflineSettings {
            enabled: true,
            severity: Severity::Major,
            raise_after_s: 600,
            clear_after_s: 0,
        }
    }
}

/// `[alarms.voltage]` — ERC 24, voltage beyond limits per phase (voltage_high, voltage_low).
/// Its `nominal_v`, `upper_pct` and `lower_pct` are the one source of the supply voltage band
/// ([`VoltageBand`]): the nominal the phase-loss and outage percentages refer to, and the band
/// of the voltage-quality statistics (the loader hands it over), whether or not these alarms
/// are enabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VoltageLimitSettings {
    /// Default true.
    pub enabled: bool,
    /// Default minor.
    pub severity: Severity,
    /// Nominal phase voltage, V. Default 220 (GB/T 12325 single-phase supply).
    pub nominal_v: f64,
    /// Upper limit in percent of nominal. Default +7 (235.4 V).
    pub upper_pct: f64,
    /// Lower limit in percent of nominal (negative). Default −10 (198 V).
    pub lower_pct: f64,
    /// A high (low) voltage clears only below upper − hysteresis (above lower + hysteresis).
    /// Default 2 V.
    pub hysteresis_v: f64,
    /// Default 60.
    pub raise_after_s: u64,
    /// Default 60.
    pub clear_after_s: u64,
}

impl Default for VoltageLimitSettings {
    fn default() -> Self {
        let band = VoltageBand::default();
        VoltageLimitSettings {
            enabled: true,
            severity: Severity::Minor,
            nominal_v: band.nominal_v,
            upper_pct: band.upper_pct,
            lower_pct: band.lower_pct,
            hysteresis_v: 2.0,
            raise_after_s: 60,
            clear_after_s: 60,
        }
    }
}

impl VoltageLimitSettings {
    /// The supply voltage band these keys set.
    pub fn band(&self) -> VoltageBand {
        VoltageBand {
            nominal_v: self.nominal_v,
            upper_pct: self.upper_pct,
            lower_pct: self.lower_pct,
        }
    }
}

/// `[alarms.phase_loss]` — ERC 10, one phase voltage absent while another is present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhaseLossSettings {
    /// Default true.
    pub enabled: bool,
    /// Default major.
    pub severity: Severity,
    /// A phase is absent below this share of `voltage.nominal_v`, present at or above it.
    /// Default 60 (132 V). Voltages below it never count as voltage_low.
    pub absent_pct: f64,
    /// Clears only at or above `absent_pct + hysteresis_pct`. Default 10 (154 V).
    pub hysteresis_pct: f64,
    /// Default 60.
    pub raise_after_s: u64,
    /// Default 60.
    pub clear_after_s: u64,
}

impl Default for PhaseLossSettings {
    fn default() -> Self {
        PhaseLossSettings {
            enabled: true,
            severity: Severity::Major,
            absent_pct: 60.0,
            hysteresis_pct: 10.0,
            raise_after_s: 60,
            clear_after_s: 60,
        }
    }
}

/// `[alarms.current_unbalance]` — ERC 17, three-phase meters only:
/// unbalance = (max − min) / max × 100 over the phase currents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurrentUnbalanceSettings {
    /// Default true.
    pub enabled: bool,
    /// Default minor.
    pub severity: Severity,
    /// Default 30 %.
    pub limit_pct: f64,
    /// Clears below limit − hysteresis. Default 5 (points of percent).
    pub hysteresis_pct: f64,
    /// Unbalance is judged only when the largest phase current is at least this, in A as the
    /// meter reports it (secondary amps for a CT-connected meter). Default 0.5 A.
    pub min_current_a: f64,
    /// Default 900.
    pub raise_after_s: u64,
    /// Default 900.
    pub clear_after_s: u64,
}

impl Default for CurrentUnbalanceSettings {
    fn default() -> Self {
        CurrentUnbalanceSettings {
            enabled: true,
            severity: Severity::Minor,
            limit_pct: 30.0,
            hysteresis_pct: 5.0,
            min_current_a: 0.5,
            raise_after_s: 900,
            clear_after_s: 900,
        }
    }
}

/// `[alarms.overload]` — the transformer of an area loaded beyond its rating, from its supply
/// meters. Load kVA per supply meter: `apparent_power_kva` when the meter gives it, otherwise
/// |`power_kw`| / |`power_factor`| (when |pf| ≥ 0.1), otherwise |`power_kw`| / `assumed_pf`;
/// summed over the area's supply meters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverloadSettings {
    /// Default true (an area without a rated kVA is simply not judged).
    pub enabled: bool,
    /// Default major.
    pub severity: Severity,
    /// Load in percent of rated kVA beyond which the area is overloaded. Default 100.
    pub limit_pct: f64,
    /// Clears below limit − hysteresis. Default 10 (points of percent).
    pub hysteresis_pct: f64,
    /// Power factor assumed when a meter gives neither kVA nor pf. Default 0.9.
    pub assumed_pf: f64,
    /// Rated kVA per area id, for areas whose `[[area]] rated_kva` is not set. Default empty.
    pub rated_kva: BTreeMap<String, f64>,
    /// A supply meter's last load older than this (against the newest) is not summed; the
    /// area is then not judged. Default 300.
    pub stale_after_s: u64,
    /// Default 600 (transformers carry short overloads).
    pub raise_after_s: u64,
    /// Default 600.
    pub clear_after_s: u64,
}

impl Default for OverloadSettings {
    fn default() -> Self {
        OverloadSettings {
            enabled: true,
            severity: Severity::Major,
            limit_pct: 100.0,
            hysteresis_pct: 10.0,
            assumed_pf: 0.9,
            rated_kva: BTreeMap::new(),
            stale_after_s: 300,
            raise_after_s: 600,
            clear_after_s: 600,
        }
    }
}

/// `[alarms.reverse_energy]` — export energy advancing on a meter configured
/// `consumption_only` (reversed wiring, or generation nobody declared).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReverseEnergySettings {
    /// Default true.
    pub enabled: bool,
    /// Default major.
    pub severity: Severity,
    /// Raised when the export register has advanced by more than this (kWh, primary) in one
    /// run of advances. Default 0.1 kWh.
    pub min_increase_kwh: f64,
    /// A run of advances ends when the register stays still this long; the next advance
    /// starts counting from zero. Default 3600.
    pub window_s: u64,
    /// Default 0: the increment is the evidence.
    pub raise_after_s: u64,
    /// Cleared once the export register stayed still this long. Default 3600.
    pub clear_after_s: u64,
}

impl Default for ReverseEnergySettings {
    fn default() -> Self {
        ReverseEnergySettings {
            enabled: true,
            severity: Severity::Major,
            min_increase_kwh: 0.1,
            window_s: 3600,
            raise_after_s: 0,
            clear_after_s: 3600,
        }
    }
}

/// `[alarms.reading_down]` — ERC 27, an energy register (import or export) went down (a
/// meter replaced, reset, or a wrong reply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadingDownSettings {
    /// Default true.
    pub enabled: bool,
    /// Default major.
    pub severity: Severity,
    /// Decreases up to this much are register noise, kWh (primary). Default 0.01.
    pub tolerance_kwh: f64,
    /// Cleared once the registers went on without decreasing this long. Default 3600.
    pub clear_after_s: u64,
}

impl Default for ReadingDownSettings {
    fn default() -> Self {
        ReadingDownSettings {
            enabled: true,
            severity: Severity::Major,
            tolerance_kwh: 0.01,
            clear_after_s: 3600,
        }
    }
}

/// `[alarms.running_fast]` — ERC 29, the import register advanced more between two reads than
/// the meter's rated power allows: increment > rated_kw × (1 + margin_pct/100) × hours +
/// slack_kwh.
///
/// Rated power is `[[meter]] rated_kw` (primary kW) when set; otherwise `max_current_a ×
/// voltage_v` per phase (× 3 for a three-phase meter) × the meter's multiplier / 1000 —
/// 60 A × 230 V = 13.8 kW single-phase, 41.4 kW three-phase. For CT-connected meters the
/// derived value is generous (their secondary is rated a few amps): set `rated_kw`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunningFastSettings {
    /// Default true.
    pub enabled: bool,
    /// Default major.
    pub severity: Severity,
    /// Allowance above rated power, percent. Default 20.
    pub margin_pct: f64,
    /// Default 60 A (the usual maximum of a direct-connected 5(60) A meter).
    pub max_current_a: f64,
    /// Default 230 V.
    pub voltage_v: f64,
    /// Register resolution allowance per interval, kWh (primary). Default 0.02.
    pub slack_kwh: f64,
    /// Default 0.
    pub raise_after_s: u64,
    /// Default 900.
    pub clear_after_s: u64,
}

impl Default for RunningFastSettings {
    fn default() -> Self {
        RunningFastSettings {
            enabled: true,
            severity: Severity::Major,
            margin_pct: 20.0,
            max_current_a: 60.0,
            voltage_v: 230.0,
            slack_kwh: 0.02,
            raise_after_s: 0,
            clear_after_s: 900,
        }
    }
}

/// `[alarms.meter_stopped]` — ERC 30, the import register unchanged for `stopped_after_s`
/// while load was present all along (a phase current ≥ `min_current_a`, or |power_kw| ≥
/// `min_power_kw`). At the defaults a healthy single-phase meter advances ≥ 0.05 kWh in that
/// time, five counts of a 0.01 kWh register. These three keys are the one source of the
/// stopped-register rule ([`StoppedRegister`]), which the loader also hands to the loss
/// engine's `stopped_register` suspects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeterStoppedSettings {
    /// Default true.
    pub enabled: bool,
    /// Default major.
    pub severity: Severity,
    /// Default 1800 (this is the raise hold).
    pub stopped_after_s: u64,
    /// Default 0.5 A (as the meter reports it).
    pub min_current_a: f64,
    /// Default 0.1 kW (primary).
    pub min_power_kw: f64,
    /// Default 0: the first advance clears.
    pub clear_after_s: u64,
}

impl MeterStoppedSettings {
    /// The stopped-register rule these keys set.
    pub fn rule(&self) -> StoppedRegister {
        StoppedRegister {
            min_current_a: self.min_current_a,
            min_power_kw: self.min_power_kw,
            stopped_after_s: self.stopped_after_s,
        }
    }
}

impl Default for MeterStoppedSettings {
    fn default() -> Self {
        let rule = StoppedRegister::default();
        MeterStoppedSettings {
            enabled: true,
            severity: Severity::Major,
            stopped_after_s: rule.stopped_after_s,
            min_current_a: rule.min_current_a,
            min_power_kw: rule.min_power_kw,
            clear_after_s: 0,
        }
    }
}

/// `[alarms.line_loss]` — ERC 22, high_loss and negative_loss. The line-loss engine judges
/// each interval; these alarms carry its verdicts through the same lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LineLossAlarmSettings {
    /// Default true.
    pub high_enabled: bool,
    /// Default true.
    pub negative_enabled: bool,
    /// Default major.
    pub high_severity: Severity,
    /// Default minor (a metering or meter-file error, not lost energy).
    pub negative_severity: Severity,
    /// Default 0: a verdict is already over a whole loss interval.
    pub raise_after_s: u64,
    /// Default 0.
    pub clear_after_s: u64,
}

impl Default for LineLossAlarmSettings {
    fn default() -> Self {
        LineLossAlarmSettings {
            high_enabled: true,
            negative_enabled: true,
            high_severity: Severity::Major,
            negative_severity: Severity::Minor,
            raise_after_s: 0,
            clear_after_s: 0,
        }
    }
}

/// `[alarms.outage]` — area_outage: every phase of an area's supply meter(s) below
/// `outage_pct` of nominal, or every meter of a bus gone offline together. One alarm for the
/// area or the bus; while it stands, the meter_offline alarms of its meters are not raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutageSettings {
    /// Default true.
    pub enabled: bool,
    /// Default critical.
    pub severity: Severity,
    /// Supply voltage is lost below this share of `voltage.nominal_v` on every phase.
    /// Default 50 (110 V).
    pub outage_pct: f64,
    /// Restored when a phase reaches `outage_pct + hysteresis_pct`. Default 10 (132 V).
    pub hysteresis_pct: f64,
    /// A bus is silent "at once" when all its meters are offline and those whose own
    /// meter_offline alarm does not already stand — at least `min_bus_meters` of them — went
    /// offline within this span. Default 300.
    pub bus_window_s: u64,
    /// Buses with fewer meters are never judged silent, and at least this many must go
    /// offline together (one meter alone is a meter_offline). Default 2.
    pub min_bus_meters: usize,
    /// Default 0.
    pub raise_after_s: u64,
    /// Default 60 (reclosing sequences); the reported duration still ends at the first
    /// restored observation.
    pub clear_after_s: u64,
}

impl Default for OutageSettings {
    fn default() -> Self {
        OutageSettings {
            enabled: true,
            severity: Severity::Critical,
            outage_pct: 50.0,
            hysteresis_pct: 10.0,
            bus_window_s: 300,
            min_bus_meters: 2,
            raise_after_s: 0,
            clear_after_s: 60,
        }
    }
}

/// `[alarms.power_off]` — ERC 14, the gateway itself was off. Reported at start-up from the
/// heartbeat the gateway persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerOffSettings {
    /// Default true.
    pub enabled: bool,
    /// Default info (the outage it may reveal is its own alarm).
    pub severity: Severity,
    /// Shorter gaps between the last heartbeat and the start are a restart, not a power
    /// loss. Default 120. Keep it above the heartbeat period.
    pub min_down_s: u64,
}

impl Default for PowerOffSettings {
    fn default() -> Self {
        PowerOffSettings {
            enabled: true,
            severity: Severity::Info,
            min_down_s: 120,
        }
    }
}

/// `[alarms.store_recovered]` and `[alarms.disk_full]` — faults of the gateway's own store,
/// reported the moment they are found (no hold time: the gateway itself observed them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreFaultSettings {
    /// Default true.
    pub enabled: bool,
    /// Default major.
    pub severity: Severity,
}

impl Default for StoreFaultSettings {
    fn default() -> Self {
        StoreFaultSettings {
            enabled: true,
            severity: Severity::Major,
        }
    }
}
