//! Domain types shared by every part of the gateway: meter ids, quantity names, readings, and a
//! meter's status as its bus sees it (health counters, online/offline), and what a bus reports
//! ([`BusEvent`]).
//!
//! Quantity names are part of the MQTT contract: each carries its unit in its name
//! (`energy_import_kwh`, `voltage_l1_v`, ...). Meter models map registers onto these names,
//! the analytics read them, and the uplink publishes them unchanged.

use std::collections::BTreeMap;
use std::time::Duration;

/// A meter's id as given in the configuration (`[[meter]] id`).
pub type MeterId = String;

/// Every quantity name a meter model may produce. The unit is part of the name.
pub const QUANTITIES: &[&str] = &[
    "energy_import_kwh",
    "energy_export_kwh",
    "energy_import_t1_kwh",
    "energy_import_t2_kwh",
    "energy_import_t3_kwh",
    "energy_import_t4_kwh",
    "reactive_energy_import_kvarh",
    "reactive_energy_export_kvarh",
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "voltage_l12_v",
    "voltage_l23_v",
    "voltage_l31_v",
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "current_n_a",
    "power_kw",
    "power_l1_kw",
    "power_l2_kw",
    "power_l3_kw",
    "reactive_power_kvar",
    "apparent_power_kva",
    "power_factor",
    "frequency_hz",
];

/// True when `name` is one of the contract's quantity names.
pub fn is_quantity(name: &str) -> bool {
    QUANTITIES.contains(&name)
}

/// True for cumulative energy registers (they only ever go up on a healthy meter).
pub fn is_energy(name: &str) -> bool {
    name.ends_with("_kwh") || name.ends_with("_kvarh")
}

/// True for quantities multiplied by the meter's whole multiplier (CT ratio × PT ratio) to be
/// primary-side: energies and powers. Currents and voltages take one ratio each
/// ([`Ratios::primary`]).
pub fn scales_with_multiplier(name: &str) -> bool {
    is_energy(name) || name.ends_with("_kw") || name.ends_with("_kvar") || name.ends_with("_kva")
}

/// The instrument transformers a meter sits behind, as the utility writes them on the meter
/// card: the CT ratio (e.g. 60 for 300/5 A) and the PT ratio (e.g. 100 for 10 kV/100 V; 1 for a
/// low-voltage meter). The multiplier (倍率) is their product. The one rule that turns what a
/// meter registers (secondary side) into primary-side values is [`Ratios::primary`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    pub ct: f64,
    pub pt: f64,
}

impl Ratios {
    /// A direct-connected meter: nothing scaled.
    pub const DIRECT: Ratios = Ratios { ct: 1.0, pt: 1.0 };

    /// A low-voltage meter given by its multiplier alone: PT ratio 1, CT ratio = multiplier.
    pub fn from_multiplier(multiplier: f64) -> Ratios {
        Ratios {
            ct: multiplier,
            pt: 1.0,
        }
    }

    /// CT ratio × PT ratio.
    pub fn multiplier(self) -> f64 {
        self.ct * self.pt
    }

    /// The primary-side value of `quantity` from what the meter registered: currents × CT
    /// ratio, voltages × PT ratio, energies and powers × the multiplier; the rest (power
    /// factor, frequency) as registered.
    pub fn primary(self, quantity: &str, registered: f64) -> f64 {
        if quantity.starts_with("current_") {
            registered * self.ct
        } else if quantity.starts_with("voltage_") {
            registered * self.pt
        } else if scales_with_multiplier(quantity) {
            registered * self.multiplier()
        } else {
            registered
        }
    }
}

/// Which phase of the supply a meter is on (`[[meter]] phase`): a single-phase meter on L1, L2
/// or L3, or a three-phase meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    A,
    B,
    C,
    Abc,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::A, Phase::B, Phase::C, Phase::Abc];

    /// As written in the configuration: `a`, `b`, `c`, `abc`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::A => "a",
            Phase::B => "b",
            Phase::C => "c",
            Phase::Abc => "abc",
        }
    }

    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// One poll of one meter: every quantity its model produced, primary-side, at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub meter: MeterId,
    /// Milliseconds since the Unix epoch (UTC) when the meter sampled the reading: when the
    /// request of the block holding its energy register was sent (else its first block's).
    pub ts_ms: i64,
    pub values: BTreeMap<String, f64>,
}

/// A snapshot of a meter's health as its bus reports it: the source of the retained meter
/// state message and of the alarm engine's view of the meter.
#[derive(Debug, Clone)]
pub struct MeterStatus {
    pub meter: MeterId,
    pub bus: String,
    pub unit: Option<u8>,
    /// DL/T 645 address (12 digits), for a meter that has one.
    pub address: Option<String>,
    pub health: MeterHealth,
    pub change: HealthChange,
    pub ts_ms: i64,
    /// What the meter last said about itself (DL/T 645: clock, status word, event counters),
    /// when its driver reads such items.
    pub items: Option<Box<MeterItems>>,
}

/// Meters take a broadcast time sync only when their clock is within this many seconds of the
/// time sent (DL/T 645-2007): a skew beyond it must be set on site.
pub const BROADCAST_SYNC_LIMIT_S: f64 = 300.0;

/// What a meter says about itself, as opposed to what it measures: its clock, its status
/// word and its event counters (DL/T 645 meters; `None` for an item the meter did not give).
/// Read by the bus every so often; judged by the alarm engine (clock_skew, meter_cover_open,
/// meter_power_down, meter_battery_low, meter_clock_fault) and published in the meter state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeterItems {
    /// When the items were read (the gateway's clock), ms since the epoch.
    pub ts_ms: i64,
    /// Meter clock minus gateway clock, seconds (positive: the meter is ahead).
    pub clock_skew_s: Option<f64>,
    /// DL/T 645-2007 `03110000`: power-down events, total count.
    pub power_down_count: Option<u64>,
    /// DL/T 645-2007 `03300D00`: meter-cover-open events, total count.
    pub cover_open_count: Option<u64>,
    /// DL/T 645 run status word 1 (`04000501`; 1997: `C020`).
    pub status_word_1: Option<u16>,
}

impl MeterItems {
    /// Status word 1, bit 2: the clock battery is low (DL/T 645-2007 A.6, 电表运行状态字1).
    pub fn clock_battery_low(&self) -> Option<bool> {
        self.status_word_1.map(|w| w & (1 << 2) != 0)
    }

    /// Status word 1, bit 3: the battery for reading while the power is off is low.
    pub fn reading_battery_low(&self) -> Option<bool> {
        self.status_word_1.map(|w| w & (1 << 3) != 0)
    }

    /// Status word 1, bit 15: clock fault (时钟故障; bits 8..15 were assigned by the 2013
    /// amendment of DL/T 645-2007 for smart meters).
    pub fn clock_fault(&self) -> Option<bool> {
        self.status_word_1.map(|w| w & (1 << 15) != 0)
    }
}

/// How a single poll of a meter ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    /// Every block answered.
    Ok,
    /// The meter answered, but some block with an exception (the meter is alive).
    Partial,
    Timeout,
    BadCrc,
    WrongUnit,
    Exception,
    /// Another transport failure (I/O, malformed reply).
    Failed,
}

impl PollOutcome {
    pub fn answered(self) -> bool {
        matches!(self, PollOutcome::Ok | PollOutcome::Partial)
    }
}

/// Counters and state of one meter, kept by its bus task and published in the meter state.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterHealth {
    /// `None` until the first poll ends.
    pub online: Option<bool>,
    pub consecutive_failures: u32,
    pub polls: u64,
    pub successes: u64,
    pub timeouts: u64,
    pub crc_errors: u64,
    pub wrong_unit: u64,
    pub exceptions: u64,
    /// Exponentially weighted mean reply latency of successful polls.
    pub latency_ms: Option<f64>,
    pub last_ok_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Current wait between probes while offline.
    pub probe_interval: Duration,
}

impl MeterHealth {
    /// Share of polls that were answered, in percent.
    pub fn success_rate_pct(&self) -> f64 {
        if self.polls == 0 {
            return 0.0;
        }
        self.successes as f64 * 100.0 / self.polls as f64
    }

    pub fn is_offline(&self) -> bool {
        self.online == Some(false)
    }
}

/// A change worth telling the headend about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    None,
    WentOnline,
    WentOffline,
}

/// A measured value as a JSON number, rounded to 6 significant decimals to avoid float noise;
/// non-finite values become `null`. Every number the gateway writes in JSON goes through this
/// (payloads, alarm details), so the same value always reads the same.
pub fn json_number(v: f64) -> serde_json::Value {
    if !v.is_finite() {
        return serde_json::Value::Null;
    }
    let rounded = (v * 1e6).round() / 1e6;
    serde_json::Number::from_f64(rounded)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// What a bus task reports.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A complete poll of a meter.
    Reading(Reading),
    /// A meter's health, sent when it goes online/offline and after every `state_every` polls.
    MeterState(MeterStatus),
    /// The driver learned something about a meter that should survive a restart (for Modbus,
    /// that it rejects blocks larger than [`Learned::BlockLimit`]; for DL/T 645, which block
    /// identifiers it refuses, [`Learned::RefusedBlocks`]).
    Learned { meter: MeterId, learned: Learned },
    /// A daily freeze the meter itself recorded (DL/T 645-2007 日冻结), read back from it:
    /// `ts_ms` is the freeze's own time (the meter's clock, read in the bus's zone), `values`
    /// its energy registers by quantity name (`energy_import_kwh`, `energy_import_t1_kwh`,
    /// ..., `energy_export_kwh`, ...).
    MeterFreeze {
        meter: MeterId,
        ts_ms: i64,
        values: BTreeMap<String, f64>,
    },
}

/// Something learned about a meter that outlives a poll: reported as
/// [`BusEvent::Learned`], kept by the gateway, and handed back to the driver after a
/// restart so it starts with what it knew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    /// The meter rejects reads of more than this many registers (Modbus).
    BlockLimit(u16),
    /// The block data identifiers the meter answers "no such data item" (DL/T 645, written
    /// `0001FF00`, sorted): their items are read one by one.
    RefusedBlocks(Vec<String>),
}

impl Learned {
    /// Learned block limits as the store keeps them (meter id → registers).
    pub fn from_block_limits(limits: &BTreeMap<MeterId, u16>) -> Vec<(MeterId, Learned)> {
        limits
            .iter()
            .map(|(meter, &max)| (meter.clone(), Learned::BlockLimit(max)))
            .collect()
    }

    /// Learned refused block identifiers as the store keeps them (meter id → identifiers).
    pub fn from_refused_blocks(
        refused: &BTreeMap<MeterId, Vec<String>>,
    ) -> Vec<(MeterId, Learned)> {
        refused
            .iter()
            .map(|(meter, dis)| (meter.clone(), Learned::RefusedBlocks(dis.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_side_values_take_their_ratio() {
        // 10 kV / 100 V PTs and 300/5 A CTs: multiplier 6000.
        let r = Ratios {
            ct: 60.0,
            pt: 100.0,
        };
        assert_eq!(r.multiplier(), 6000.0);
        assert_eq!(r.primary("current_l1_a", 0.5), 30.0);
        assert_eq!(r.primary("current_n_a", 0.1), 6.0);
        assert_eq!(r.primary("voltage_l12_v", 100.0), 10_000.0);
        assert_eq!(r.primary("power_kw", 0.05), 300.0);
        assert_eq!(r.primary("energy_import_kwh", 1.0), 6000.0);
        assert_eq!(r.primary("reactive_energy_export_kvarh", 1.0), 6000.0);
        assert_eq!(r.primary("power_factor", 0.9), 0.9);
        assert_eq!(r.primary("frequency_hz", 50.0), 50.0);
        // A multiplier alone is a low-voltage meter behind CTs.
        let lv = Ratios::from_multiplier(60.0);
        assert_eq!(lv.primary("current_l1_a", 0.6), 36.0);
        assert_eq!(lv.primary("voltage_l1_v", 230.0), 230.0);
        assert_eq!(lv.primary("power_kw", 0.4), 24.0);
    }
}
